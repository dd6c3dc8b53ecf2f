//! Namespace test helpers: the sandbox topology from the agent crate, and the root check.

pub use twill_agent::sandbox::*;

/// True when running as root; in CI (CI=true) not being root is a failure, elsewhere the test
/// prints "skipped" and passes.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root, and CI runs as root: failing instead of skipping");
    }
    eprintln!("skipped: {test} needs root (network namespaces)");
    false
}

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

/// The address part of a CIDR such as FLANNEL_SUBNET (the pod gateway).
pub fn gw_addr(cidr: &str) -> &str {
    cidr.split('/').next().unwrap_or(cidr)
}
