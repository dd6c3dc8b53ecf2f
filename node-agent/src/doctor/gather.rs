//! The doctor's I/O: reads what [`super::diagnose`] judges and changes nothing — netlink
//! dumps and gets only, `nft list`, `ping`, files, and read-only calls to the controller with
//! the node's own certificate.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use twill_client::{Client, ClientOptions};

use super::{Cluster, Facts, Mtus, Probe, ProbeTarget, Readyz};
use crate::agent::POD_BRIDGE;
use crate::masquerade::{Masquerade, NftError};
use crate::reconcile::{Kernel, KernelError};
use crate::settings::{Settings, SettingsError};

/// Where the agent keeps its state, and a controller to ask instead of the agent's.
#[derive(Clone, Debug)]
pub struct Options {
    pub state_dir: PathBuf,
    pub controllers: Option<Vec<String>>,
}

/// Why the doctor cannot examine this node at all (as opposed to what it finds wrong).
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    #[error("twill doctor must run as root: it reads netlink and nft state only root may read")]
    NotRoot,
    #[error("no agent settings: {0}; has twill agent run on this node with this --state-dir?")]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Whether this process runs with effective uid 0, from /proc (no libc call needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The controller's answers for the node: leases, configuration, health reports.
async fn ask_controller(s: &Settings, o: &Options) -> Result<Cluster, String> {
    let tls = if s.tls {
        let file = o.state_dir.join("node.pem");
        let c = twill_client::certs::load_valid(&file).ok_or_else(|| {
            format!(
                "no valid node certificate at {} (expired or missing)",
                file.display()
            )
        })?;
        Some(c.client_tls())
    } else {
        None
    };
    let controllers = o
        .controllers
        .clone()
        .unwrap_or_else(|| s.controllers.clone());
    let client = Client::with_options(
        &controllers,
        ClientOptions {
            attempt_timeout: Duration::from_secs(3),
            retry_for: Duration::from_secs(5),
            tls,
            fail_when_none_listens: true,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let leases = client.list_leases().await.map_err(|e| e.to_string())?;
    let config = client.get_config().await.map_err(|e| e.to_string())?;
    let health = client.list_health().await.map_err(|e| e.to_string())?;
    Ok(Cluster {
        config: config.config.filter(|_| config.present),
        leases: leases.leases,
        health: health.nodes,
    })
}

/// One probe with the system's ping: three echoes 200 ms apart, any answer counts.
async fn probe(t: ProbeTarget) -> Probe {
    let mut cmd = tokio::process::Command::new("ping");
    cmd.args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-w", "2"]);
    if let Some(i) = &t.iface {
        cmd.args(["-I", i]);
    }
    cmd.arg(t.addr.to_string())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let answered = match cmd.output().await {
        Err(e) => Err(format!("cannot run ping: {e}")),
        Ok(out) => match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(format!(
                "ping failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        },
    };
    Probe {
        target: t,
        answered,
    }
}

/// GET /readyz from the agent's metrics address: status code and body.
async fn readyz(addr: std::net::SocketAddr) -> Result<(u16, String), String> {
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: twill\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(3), get)
        .await
        .map_err(|_| "no answer within 3 s".to_string())?
        .map_err(|e| e.to_string())?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", text.lines().next()))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Reads everything the doctor judges. Fails only when it cannot look at all (not root, no
/// agent settings, no netlink socket); everything else that cannot be read becomes a fact.
pub async fn gather(o: &Options) -> Result<Facts, GatherError> {
    if !is_root() {
        return Err(GatherError::NotRoot);
    }
    let settings = Settings::load(&o.state_dir)?;
    let specs = settings.table_specs(&o.state_dir.join(crate::settings::FILE))?;
    let kernel = Kernel::connect()?;
    let local = crate::facts::discover(&kernel, &settings.choice())
        .await
        .map(|s| s.facts)
        .map_err(|e| e.to_string());
    let cluster = ask_controller(&settings, o).await;
    let observed = kernel.observe().await.map_err(|e| e.to_string());
    let vxlan_devices = kernel.vxlan_devices().await.unwrap_or_default();
    let sources = crate::agent::source_tables_now(&kernel, &specs)
        .await
        .map_err(|e| e.to_string());
    let subnet_env = crate::cni::read_subnet_env(&settings.subnet_file).map_err(|e| {
        if e.details.is_empty() {
            e.msg
        } else {
            format!("{}: {}", e.msg, e.details)
        }
    });
    let mtus = kernel
        .bridge_ports(POD_BRIDGE)
        .await
        .map(|b| match b {
            Some((mtu, ports)) => Mtus {
                bridge: Some(mtu),
                ports,
            },
            None => Mtus::default(),
        })
        .map_err(|e| e.to_string());
    let targets = match (&cluster, &local) {
        (Ok(c), Ok(l)) => super::expected(&settings.node_name, c)
            .map(|e| super::probe_targets(&e, l))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let probes = futures::future::join_all(targets.into_iter().map(probe)).await;
    let masquerade = Masquerade::listing().await.map_err(|e| match e {
        NftError::Missing(e) => format!("cannot run nft: {e}"),
        e => e.to_string(),
    });
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .map(|v| v.trim() == "1")
        .map_err(|e| e.to_string());
    let readyz = match settings.metrics_addr {
        Some(addr) => Some(Readyz {
            addr: addr.to_string(),
            answer: readyz(addr).await,
        }),
        None => None,
    };
    Ok(Facts {
        node: settings.node_name.clone(),
        controllers: o
            .controllers
            .clone()
            .unwrap_or(settings.controllers.clone()),
        ip_masq: settings.ip_masq,
        subnet_file: settings.subnet_file.display().to_string(),
        now_ms: twill_proto::now_ms(),
        cluster,
        local,
        observed,
        vxlan_devices,
        sources,
        subnet_env,
        mtus,
        probes,
        masquerade,
        forwarding,
        readyz,
    })
}
