//! The twill side of BGP interop tests: one session (or a whole speaker) in a namespace facing
//! real daemons (BIRD, FRR, GoBGP) on a shared segment, announcing prefixes and collecting what
//! the peers announce.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use ipnet::IpNet;
use twill_bgp::attribute::{Attributes, Origin};
use twill_bgp::driver::{self, Report};
use twill_bgp::fsm::Config;
use twill_bgp::open::{Capability, AFI_IPV4, SAFI_UNICAST};
use twill_bgp::rib::{Change, Peer};
use twill_bgp::speaker::{self, PeerConfig, SpeakerConfig};
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
                gtsm: false,
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
                    Ok(Some(Report::Down { why, .. })) => bail!("session went down: {why}"),
                    // The peer's table is sent once, with the first report; nothing to redo.
                    Ok(Some(Report::Refresh { .. } | Report::Connected)) => {}
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
    /// Daemons that stay in the foreground (gobgpd), killed on drop.
    children: Vec<std::process::Child>,
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
            children: Vec::new(),
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
        self.pid_files.push(dir.join("bgpd.pid"));
        start_bgpd(&self.ns(host), &dir, conf)
    }
}

/// Starts FRR's bgpd alone (no zebra) in namespace `ns` with `conf`, its files in `dir` (its
/// pid file `bgpd.pid`); returns `dir`, where its vty socket is, for `vtysh --vty_socket`.
pub fn start_bgpd(ns: &str, dir: &std::path::Path, conf: &str) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("bgpd.conf"), conf)?;
    // bgpd drops privileges to the frr user: it must be able to read and write here, and to
    // get here (the test's temporary directory is root's, mode 0700).
    let _ = std::process::Command::new("chown")
        .args(["-R", "frr:frr"])
        .arg(dir)
        .status();
    if let Some(parent) = dir.parent() {
        let _ = std::process::Command::new("chown")
            .args(["frr:frr"])
            .arg(parent)
            .status();
    }
    let ok = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
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
        .arg(dir)
        .arg("--log")
        .arg(format!("file:{}", dir.join("bgpd.log").display()))
        .status()?;
    if !ok.success() {
        bail!("bgpd did not start (Debian package frr)");
    }
    Ok(dir.to_path_buf())
}

/// Stops the daemon whose pid file is `f` (BIRD and bgpd write one), if it is still there.
pub fn kill_pid_file(f: &std::path::Path) {
    if let Ok(pid) = std::fs::read_to_string(f) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        self.stop_children();
        for f in &self.pid_files {
            kill_pid_file(f);
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

/// Runs `show` every 100 ms, for up to 5 s, until its output contains `want`; the last output
/// either way (daemons take a moment to take a route and show it).
pub fn poll_output(want: &str, mut show: impl FnMut() -> String) -> String {
    let mut out = String::new();
    for _ in 0..50 {
        out = show();
        if out.contains(want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out
}

/// Standard output of a command, or "" if it could not run.
pub fn output_of(cmd: &mut std::process::Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `birdc show route all <prefix>` through `sock`, polled until it contains `want`.
pub fn birdc_route(sock: &std::path::Path, prefix: &str, want: &str) -> String {
    poll_output(want, || {
        output_of(
            std::process::Command::new("birdc")
                .arg("-s")
                .arg(sock)
                .args(["show", "route", "all", prefix]),
        )
    })
}

/// FRR's `show bgp ipv4 unicast <prefix> json` through its vty socket directory, polled until it
/// contains `want`.
pub fn vtysh_route(vty: &std::path::Path, prefix: &str, want: &str) -> String {
    let cmd = format!("show bgp ipv4 unicast {prefix} json");
    poll_output(want, || {
        output_of(
            std::process::Command::new("vtysh")
                .arg("--vty_socket")
                .arg(vty)
                .args(["-c", &cmd]),
        )
    })
}

/// A peer on host `.last` of a [`Lan`], connected to actively.
pub fn peer(last: u8, asn: u32) -> PeerConfig {
    let peer = Peer {
        addr: std::net::IpAddr::from([192, 0, 2, last]),
        router_id: std::net::Ipv4Addr::new(192, 0, 2, last),
        asn,
        rr_client: false,
    };
    PeerConfig::new(peer, 30)
}

/// Runs a speaker on host .1 until `done` (polled with the best paths seen so far) says so,
/// then runs `check` while the sessions are still up.
pub fn run_speaker<T: Send + 'static>(
    lan: &Lan,
    cfg: SpeakerConfig,
    done: impl Fn(&[(IpNet, Change)]) -> bool + Send + 'static,
    check: impl FnOnce() -> T + Send + 'static,
) -> (Vec<(IpNet, Change)>, T) {
    crate::netns::in_netns(&lan.ns(1), move || {
        Box::pin(async move {
            let (changes_tx, mut changes) = tokio::sync::mpsc::channel(1024);
            let (stop_tx, stop) = tokio::sync::mpsc::channel(1);
            let s = tokio::spawn(speaker::run(cfg, changes_tx, stop, Default::default()));
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done(&seen) && Instant::now() < deadline {
                if let Ok(Some(c)) =
                    tokio::time::timeout(Duration::from_millis(200), changes.recv()).await
                {
                    let p = match &c {
                        Change::Best(p, _) | Change::Gone(p) | Change::NextHops(p, _) => *p,
                    };
                    seen.push((p, c));
                }
            }
            let checked = tokio::task::spawn_blocking(check).await.expect("check");
            let _ = stop_tx.send(speaker::Control::Stop).await;
            let _ = s.await;
            (seen, checked)
        })
    })
    .expect("namespace thread")
}

/// A GoBGP configuration for host `.host` in AS `asn` with one neighbour.
pub fn gobgp_conf(host: u8, asn: u32, neighbor: &str, neighbor_as: u32) -> String {
    format!(
        "[global.config]\n  as = {asn}\n  router-id = \"192.0.2.{host}\"\n  local-address-list = [\"192.0.2.{host}\"]\n\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{neighbor}\"\n    peer-as = {neighbor_as}\n  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv4-unicast\"\n"
    )
}

impl Lan {
    /// Starts gobgpd in host `host`'s namespace with `conf` (its API on the namespace's own
    /// 127.0.0.1, where [`Lan::gobgp`] finds it).
    pub fn start_gobgp(&mut self, host: u8, conf: &str) -> Result<()> {
        let dir = self.dir.path().join(format!("gobgp{host}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("gobgpd.toml"), conf)?;
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns(host), "gobgpd", "-f"])
            .arg(dir.join("gobgpd.toml"))
            .args(["-p", "--pprof-disable", "--api-hosts=127.0.0.1:50051"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("gobgpd.log"))?)
            .spawn()
            .map_err(|e| anyhow::anyhow!("gobgpd did not start (Debian package gobgpd): {e}"))?;
        self.children.push(child);
        // Wait for its API.
        for _ in 0..50 {
            if self.gobgp(host, &["global"]).contains("AS:") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("gobgpd's API did not come up")
    }

    /// Stops the foreground daemons (gobgpd) started so far.
    pub fn stop_children(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the `gobgp` CLI against host `host`'s gobgpd; its output (the CLI's exit codes are
    /// unreliable, so callers look at what it printed).
    pub fn gobgp(&self, host: u8, args: &[&str]) -> String {
        output_of(
            std::process::Command::new("ip")
                .args(["netns", "exec", &self.ns(host), "gobgp", "-p", "50051"])
                .args(args),
        )
    }
}

/// The best path `run_speaker` saw for `prefix`, if any.
pub fn best_path(seen: &[(IpNet, Change)], prefix: &str) -> Option<twill_bgp::rib::Path> {
    let want: IpNet = prefix.parse().ok()?;
    seen.iter().find_map(|(p, c)| match c {
        Change::Best(_, path) if *p == want => Some(path.clone()),
        _ => None,
    })
}

/// A path's AS numbers, in order, segments flattened.
pub fn as_path(path: &twill_bgp::rib::Path) -> Vec<u32> {
    path.attrs
        .as_path
        .iter()
        .flatten()
        .flat_map(|s| s.asns.clone())
        .collect()
}

/// The configuration of a speaker on host .1 of a [`Lan`]: AS `asn`, `peers`, originating
/// `originate`, connecting out only.
pub fn speaker_on_host_1(asn: u32, peers: Vec<PeerConfig>, originate: &[&str]) -> SpeakerConfig {
    SpeakerConfig {
        local_as: asn,
        router_id: std::net::Ipv4Addr::new(192, 0, 2, 1),
        cluster_id: None,
        local_address: std::net::IpAddr::from([192, 0, 2, 1]),
        local_address_v6: None,
        peers,
        originate: originate.iter().filter_map(|p| p.parse().ok()).collect(),
        advertise: vec![],
        listen: None,
        import: Default::default(),
        graceful_restart: None,
    }
}
