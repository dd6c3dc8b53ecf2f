//! Namespace test helpers: the sandbox topology and the root check from twill-sandbox.

pub use twill_sandbox::*;

/// Polls `f` every 100 ms until it holds; fails the test naming `what` after `within`.
pub fn wait_until(what: &str, within: std::time::Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} not reached within {within:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Runs `ip -n NS -batch -` with `batch` (one command per line), so several changes land
/// between two of the agent's looks at the kernel.
pub fn ip_batch(ns: &str, batch: &str) {
    use std::io::Write;
    let mut ip = std::process::Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("ip -batch");
    ip.stdin
        .take()
        .expect("stdin")
        .write_all(batch.as_bytes())
        .expect("write batch");
    assert!(ip.wait().expect("ip").success(), "ip -batch {batch}");
}

/// Puts a foreign VXLAN device `name` on VNI 1, port 8472 in place of the agent's `twill.1`,
/// which the kernel then refuses to make again. The agent follows netlink events and may make
/// `twill.1` again between the deletion and the addition, so both are retried until the foreign
/// device is there.
pub fn foreign_device_takes_twills_vni(ns: &str, name: &str) {
    wait_until(
        &format!("{name} in twill.1's place"),
        std::time::Duration::from_secs(10),
        || {
            let _ = std::process::Command::new("ip")
                .args(["-n", ns, "link", "del", "twill.1"])
                .stderr(std::process::Stdio::null())
                .status();
            let _ = std::process::Command::new("ip")
                .args(["-n", ns, "link", "add", name, "type", "vxlan", "id", "1"])
                .args(["dstport", "8472", "dev", "eth0"])
                .stderr(std::process::Stdio::null())
                .status();
            ip_out(&["-n", ns, "-o", "link", "show", name]).contains(name)
        },
    );
}

/// The address part of a CIDR such as FLANNEL_SUBNET (the pod gateway).
pub fn gw_addr(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}

/// GET `path` from the agent's `--metrics-addr 127.0.0.1:9421` inside namespace `ns`; the whole
/// HTTP answer, or "" if nothing listens.
pub fn agent_http_get(ns: &str, path: &str) -> String {
    http_get(ns, "127.0.0.1:9421", path)
}

/// GET `path` from `addr` (host:port) inside namespace `ns`; the whole HTTP answer, or "" if
/// nothing listens.
pub fn http_get(ns: &str, addr: &str, path: &str) -> String {
    let (addr, path) = (addr.to_string(), path.to_string());
    in_netns(ns, move || {
        Box::pin(async move {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(&addr) else {
                return String::new();
            };
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
    })
    .unwrap_or_default()
}

/// The nftables table a cut lives in, in the cut node's namespace (one cut at a time).
const CUT_TABLE: &str = "cut";

/// Drops everything between node namespace `ns` and `peer`, both ways, counting the packets
/// dropped (TCP apart from the rest) so that a cut which met no traffic can be told from one
/// that did, and the agents' own traffic (TCP) from a probe's.
pub fn cut_between(ns: &str, peer: &str) -> anyhow::Result<()> {
    let rules = format!(
        "add table inet {CUT_TABLE}; \
         add chain inet {CUT_TABLE} out {{ type filter hook output priority 0; }}; \
         add rule inet {CUT_TABLE} out ip daddr {peer} meta l4proto tcp counter drop; \
         add rule inet {CUT_TABLE} out ip daddr {peer} counter drop; \
         add chain inet {CUT_TABLE} in {{ type filter hook input priority 0; }}; \
         add rule inet {CUT_TABLE} in ip saddr {peer} meta l4proto tcp counter drop; \
         add rule inet {CUT_TABLE} in ip saddr {peer} counter drop"
    );
    nft(ns, &[&rules])
}

/// Drops everything between node namespace `ns` and the controller, both ways.
pub fn cut_off(ns: &str) -> anyhow::Result<()> {
    cut_between(ns, CONTROLLER_ADDR)
}

/// Packets a cut dropped, both ways together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub tcp: u64,
    /// Everything else (a ping's probes, for instance).
    pub other: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.tcp + self.other
    }
}

/// The packets the cut in `ns` has dropped so far.
pub fn cut_dropped(ns: &str) -> anyhow::Result<Dropped> {
    let out = std::process::Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "list", "table", "inet", CUT_TABLE,
        ])
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{ns}: nft list table: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(counted_packets(&String::from_utf8_lossy(&out.stdout)))
}

/// The `packets N` of the counters in `nft list` output, summed by whether the rule is TCP's.
fn counted_packets(listing: &str) -> Dropped {
    let mut d = Dropped::default();
    for line in listing.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(n) = words
            .windows(2)
            .find(|w| w[0] == "packets")
            .and_then(|w| w[1].parse::<u64>().ok())
        else {
            continue;
        };
        if line.contains("l4proto tcp") {
            d.tcp += n;
        } else {
            d.other += n;
        }
    }
    d
}

/// Ends the cut in node namespace `ns`.
pub fn reconnect(ns: &str) -> anyhow::Result<()> {
    nft(ns, &["delete", "table", "inet", CUT_TABLE])
}

/// Runs `script` through `nft -f -` in namespace `ns`, as the agent writes its table.
pub fn nft_script(ns: &str, script: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("{ns}: ip netns exec ... nft -f -"))?;
    child
        .stdin
        .take()
        .context("nft's stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        // A missing nft shows here, as the exec's error.
        anyhow::bail!(
            "{ns}: nft -f (apt-get install nftables): {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn nft(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "{ns}: nft {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A lease as `twill leases --json` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSeen {
    pub subnet: String,
    pub create_revision: u64,
    /// In the controller leader's time.
    pub expires_at_ms: u64,
}

/// The lease table by node, from `twill leases --json` in the controller's namespace.
pub fn leases(t: &Topology) -> anyhow::Result<std::collections::BTreeMap<String, LeaseSeen>> {
    let out = t.twill(&["leases", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let Some(list) = v["leases"].as_array() else {
        anyhow::bail!("twill leases --json printed no leases array: {out:?}");
    };
    Ok(list
        .iter()
        .filter_map(|l| {
            Some((
                l["node"].as_str()?.to_string(),
                LeaseSeen {
                    subnet: l["subnet"].as_str()?.to_string(),
                    create_revision: l["create_revision"].as_u64()?,
                    expires_at_ms: l["expires_at_ms"].as_u64()?,
                },
            ))
        })
        .collect())
}

/// A node's lease: (subnet, create revision).
pub fn lease_of(t: &Topology, node: &str) -> Option<(String, u64)> {
    let l = leases(t).ok()?.remove(node)?;
    Some((l.subnet, l.create_revision))
}

/// As [`in_netns`], on a multi-threaded runtime such as the agent's: its worker threads are
/// started by the thread that entered the namespace, so they are in it too.
pub fn in_netns_multi_thread<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>> + Send + 'static,
) -> anyhow::Result<T> {
    use anyhow::Context;
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || -> anyhow::Result<T> {
        let file = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: a valid namespace fd; only this new thread changes namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(f()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn counted_packets_sums_every_counter_tcp_apart() {
        let listing = "table inet cut {\n chain out {\n  ip daddr 192.0.2.100 meta l4proto tcp counter packets 37 bytes 3108 drop\n  ip daddr 192.0.2.100 counter packets 2 bytes 168 drop\n }\n chain in {\n  ip saddr 192.0.2.100 meta l4proto tcp counter packets 5 bytes 300 drop\n  ip saddr 192.0.2.100 counter packets 0 bytes 0 drop\n }\n}\n";
        let d = super::counted_packets(listing);
        assert_eq!((d.tcp, d.other, d.total()), (42, 2, 44));
        assert_eq!(
            super::counted_packets("table inet cut {\n}\n"),
            super::Dropped::default()
        );
    }
}
