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
