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
