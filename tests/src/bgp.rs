//! The twill side of BGP interop tests: one session from a namespace to a peer, announcing a
//! prefix and collecting what the peer announces.

use std::time::Duration;

use anyhow::{bail, Result};
use twill_bgp::attribute::{Attributes, Origin};
use twill_bgp::driver::{self, Report};
use twill_bgp::fsm::Config;
use twill_bgp::open::{Capability, AFI_IPV4, SAFI_UNICAST};
use twill_bgp::update::Update;

/// Runs inside namespace `ns`: connects to `peer` (port 179) as `local` in AS `asn` (iBGP),
/// announces `prefix` with ourselves as next hop, and returns the prefixes the peer announced,
/// after `check` (run while the session is still up) has said what it saw.
pub fn exchange<T: Send + 'static>(
    ns: &str,
    local: &str,
    peer: &str,
    asn: u32,
    prefix: &str,
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<(Vec<String>, T)> {
    let (local, peer, prefix) = (local.to_string(), peer.to_string(), prefix.to_string());
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
            };
            let addr = format!("{peer}:179").parse()?;
            let session = tokio::spawn(driver::run(cfg, addr, None, rx, rtx));
            let mut learned = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
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
                    Ok(None) | Err(_) => bail!("no session or no prefix from {peer} within 60 s"),
                }
            }
            let seen = tokio::task::spawn_blocking(check).await?;
            session.abort();
            Ok((learned, seen))
        })
    })?
}

/// Two namespaces on a veth pair: `a` (twill, 192.0.2.1) and `b` (the peer daemon,
/// 192.0.2.2), with a temporary directory for the daemon. On drop the daemon named by
/// `dir/peer.pid` is killed and the namespaces are removed.
pub struct PeerPair {
    pub a: String,
    pub b: String,
    pub dir: tempfile::TempDir,
}

impl PeerPair {
    pub fn new(tag: &str) -> Result<PeerPair> {
        use crate::netns::ip;
        let id = std::process::id();
        let p = PeerPair {
            a: format!("tw-{tag}-a{id}"),
            b: format!("tw-{tag}-b{id}"),
            dir: tempfile::tempdir()?,
        };
        for ns in [&p.a, &p.b] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n", &p.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &p.b,
        ])?;
        for (ns, addr) in [(&p.a, "192.0.2.1/24"), (&p.b, "192.0.2.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(p)
    }

    pub fn pid_file(&self) -> std::path::PathBuf {
        self.dir.path().join("peer.pid")
    }
}

impl Drop for PeerPair {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
        for ns in [&self.a, &self.b] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
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
