//! The twill side of BGP interop tests: one session from a namespace to a peer, announcing a
//! prefix and collecting what the peer announces.

use std::time::Duration;

use anyhow::{bail, Result};
use twill_bgp::attribute::{Attributes, Origin};
use twill_bgp::driver::{self, Report};
use twill_bgp::fsm::Config;
use twill_bgp::open::{Capability, AFI_IPV4, SAFI_UNICAST};
use twill_bgp::update::Update;

/// Runs inside namespace `ns`: connects to `peer` (port 179) as `local` in AS `asn` (iBGP,
/// TCP-MD5 signed when a password is given), announces `prefix` with ourselves as next hop, and
/// returns the prefixes the peer announced, after `check` (run while the session is still up)
/// has said what it saw.
pub fn exchange<T: Send + 'static>(
    ns: &str,
    local: &str,
    peer: &str,
    asn: u32,
    prefix: &str,
    md5_password: Option<&str>,
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<(Vec<String>, T)> {
    exchange_inner(
        ns,
        local,
        peer,
        asn,
        prefix,
        md5_password,
        Duration::from_secs(60),
        check,
    )
}

/// As [`exchange`], giving up after `within`; returns what the peer announced.
pub fn exchange_within(
    ns: &str,
    local: &str,
    peer: &str,
    asn: u32,
    prefix: &str,
    md5_password: Option<&str>,
    within: Duration,
) -> Result<Vec<String>> {
    exchange_inner(ns, local, peer, asn, prefix, md5_password, within, || ()).map(|(l, ())| l)
}

#[allow(clippy::too_many_arguments)]
fn exchange_inner<T: Send + 'static>(
    ns: &str,
    local: &str,
    peer: &str,
    asn: u32,
    prefix: &str,
    md5_password: Option<&str>,
    within: Duration,
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<(Vec<String>, T)> {
    let (local, peer, prefix) = (local.to_string(), peer.to_string(), prefix.to_string());
    let md5_password = md5_password.map(str::to_string);
    crate::netns::in_netns(ns, move || {
        Box::pin(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let (rtx, mut reports) = tokio::sync::mpsc::channel(16);
            let cfg = Config {
                local_as: asn,
                peer_as: asn,
                router_id: local.parse()?,
                hold_time: 30,
                connect_retry: 1,
                passive: false,
                capabilities: vec![
                    Capability::Multiprotocol {
                        afi: AFI_IPV4,
                        safi: SAFI_UNICAST,
                    },
                    Capability::RouteRefresh,
                ],
                md5_password,
            };
            let addr = format!("{peer}:179").parse()?;
            let session = tokio::spawn(driver::run(cfg, addr, None, rx, rtx));
            let mut learned = Vec::new();
            let deadline = tokio::time::Instant::now() + within;
            while learned.is_empty() {
                match tokio::time::timeout_at(deadline, reports.recv()).await {
                    Ok(Some(Report::Up { .. })) => {
                        let announce = Update {
                            attrs: Attributes {
                                origin: Some(Origin::Igp),
                                as_path: Some(vec![]),
                                next_hop: Some(local.parse()?),
                                local_pref: Some(100),
                                ..Default::default()
                            },
                            nlri: vec![prefix.parse()?],
                            ..Default::default()
                        };
                        tx.send(announce).await?;
                    }
                    Ok(Some(Report::Received(u))) => {
                        learned.extend(u.nlri.iter().map(|p| p.to_string()))
                    }
                    Ok(Some(Report::Down(why))) => bail!("session went down: {why}"),
                    Ok(None) | Err(_) => {
                        bail!("no session or no prefix from {peer} within {within:?}")
                    }
                }
            }
            let seen = tokio::task::spawn_blocking(check).await?;
            session.abort();
            Ok((learned, seen))
        })
    })?
}

/// Namespaces `tw-<tag>-<host>` each with `eth0` = 192.0.2.<host>/24 on one bridge (in its own
/// namespace). On drop, daemons whose pid files were registered are killed and everything is
/// removed.
pub struct Lan {
    pub tag: String,
    pub dir: tempfile::TempDir,
    bridge: String,
    hosts: Vec<String>,
    pub pid_files: Vec<std::path::PathBuf>,
}

impl Lan {
    pub fn new(tag: &str, hosts: &[u8]) -> Result<Lan> {
        use crate::netns::ip;
        let id = std::process::id();
        let mut lan = Lan {
            tag: format!("{tag}{id}"),
            dir: tempfile::tempdir()?,
            bridge: format!("tw-{tag}{id}-br"),
            hosts: Vec::new(),
            pid_files: Vec::new(),
        };
        ip(&["netns", "add", &lan.bridge])?;
        ip(&["-n", &lan.bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.bridge, "link", "set", "br0", "up"])?;
        for h in hosts {
            let ns = lan.ns(*h);
            lan.hosts.push(ns.clone());
            crate::netns::attach_to_bridge(&ns, *h, &lan.bridge)?;
        }
        Ok(lan)
    }

    pub fn ns(&self, host: u8) -> String {
        format!("tw-{}-{host}", self.tag)
    }

    /// Starts BIRD 2 in host `host`'s namespace with `conf`; returns its control socket.
    pub fn start_bird(&mut self, host: u8, conf: &str) -> Result<std::path::PathBuf> {
        let dir = self.dir.path().join(format!("bird{host}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bird.conf"), conf)?;
        self.pid_files.push(dir.join("bird.pid"));
        let ok = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "bird", "-c"])
            .arg(dir.join("bird.conf"))
            .arg("-s")
            .arg(dir.join("bird.ctl"))
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .status()?;
        if !ok.success() {
            bail!("bird did not start (Debian package bird2)");
        }
        Ok(dir.join("bird.ctl"))
    }

    /// Starts FRR's bgpd alone (no zebra) in host `host`'s namespace with `conf`; returns the
    /// directory of its vty socket, for `vtysh --vty_socket`.
    pub fn start_frr(&mut self, host: u8, conf: &str) -> Result<std::path::PathBuf> {
        let dir = self.dir.path().join(format!("frr{host}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bgpd.conf"), conf)?;
        // bgpd drops privileges to the frr user: it must be able to read and write here.
        let _ = std::process::Command::new("chown")
            .args(["-R", "frr:frr"])
            .arg(self.dir.path())
            .status();
        self.pid_files.push(dir.join("bgpd.pid"));
        let ok = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns(host),
                "/usr/lib/frr/bgpd",
                "-d",
                "-Z",
                "-S",
                "-P",
                "0",
                "-f",
            ])
            .arg(dir.join("bgpd.conf"))
            .arg("-i")
            .arg(dir.join("bgpd.pid"))
            .arg("--vty_socket")
            .arg(&dir)
            .arg("--log")
            .arg(format!("file:{}", dir.join("bgpd.log").display()))
            .status()?;
        if !ok.success() {
            bail!("bgpd did not start (Debian package frr)");
        }
        Ok(dir)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for f in &self.pid_files {
            if let Ok(pid) = std::fs::read_to_string(f) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
        }
        for ns in self.hosts.iter().chain([&self.bridge]) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// A BIRD configuration for host `.host`: router id, its connected network, a static
/// 10.244.<host>.0/24 to announce, and one BGP protocol `to_twill` with `session` inside.
pub fn bird_conf(host: u8, session: &str) -> String {
    format!(
        "router id 192.0.2.{host};\nprotocol device {{}}\nprotocol direct {{ ipv4; interface \"eth0\"; }}\nprotocol static pods {{ ipv4; route 10.244.{host}.0/24 blackhole; }}\nprotocol bgp to_twill {{\n{session}}}\n"
    )
}

/// `birdc show route all <prefix>` through `sock`, polled for up to 5 s until it contains `want`;
/// the last output either way.
pub fn birdc_route(sock: &std::path::Path, prefix: &str, want: &str) -> String {
    let mut out = String::new();
    for _ in 0..50 {
        out = std::process::Command::new("birdc")
            .arg("-s")
            .arg(sock)
            .args(["show", "route", "all", prefix])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if out.contains(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out
}
