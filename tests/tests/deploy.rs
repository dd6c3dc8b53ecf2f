//! What ships for installing twill: the systemd units pass `systemd-analyze verify` without a
//! single warning, are hardened (`systemd-analyze security` rates them), and give the agent
//! exactly the capabilities it needs.

use std::path::{Path, PathBuf};
use std::process::Command;

use twill_tests::{tool_or_skip, twill_binary, workspace_root};

const UNITS: [&str; 2] = ["twill-controller.service", "twill-agent.service"];

/// A root directory for `systemd-analyze --root`: the host's system units (targets the units
/// refer to), the built binary at /usr/bin/twill, and `units` in /etc/systemd/system.
fn root_with(units: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("dir");
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/bin")).expect("usr/bin");
    std::fs::copy(twill_binary().expect("twill"), r.join("usr/bin/twill")).expect("binary");
    std::fs::create_dir_all(r.join("usr/lib/systemd")).expect("usr/lib/systemd");
    let cp = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .expect("cp");
    assert!(cp.success(), "copy the host's system units");
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).expect("etc");
    for (name, text) in units {
        std::fs::write(etc.join(name), text).expect("unit");
    }
    root
}

fn shipped(name: &str) -> String {
    std::fs::read_to_string(workspace_root().join("deploy/systemd").join(name)).expect("unit")
}

/// `Err(what systemd-analyze said)` unless it accepts every unit without a word.
fn verify(root: &Path, names: &[&str]) -> Result<(), String> {
    let paths: Vec<PathBuf> = names
        .iter()
        .map(|n| Path::new("/etc/systemd/system").join(n))
        .collect();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(&paths)
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}

/// systemd's own exposure rating, 0 (locked down) to 10 (unprotected).
fn exposure(root: &Path, name: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg(Path::new("/etc/systemd/system").join(name))
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let rest = l.split("Overall exposure level for").nth(1)?;
            rest.split(':')
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level for {name}: {text}"))
}

#[test]
fn systemd_units_verify_cleanly_and_are_hardened() {
    if !tool_or_skip(
        "systemd_units_verify_cleanly_and_are_hardened",
        "systemd-analyze",
    ) {
        return;
    }
    let units: Vec<(&str, String)> = UNITS.iter().map(|n| (*n, shipped(n))).collect();
    let root = root_with(&units);
    verify(root.path(), &UNITS).expect("systemd-analyze verify is silent about the units");
    for name in UNITS {
        let e = exposure(root.path(), name);
        eprintln!("{name}: systemd-analyze security exposure {e}");
        // "OK" in systemd's words is below 5; an unhardened service rates 9.6.
        assert!(e < 5.0, "{name} exposure {e}");
    }

    // The checker is not deaf: a misspelt key and a bad value are each caught.
    for (from, to) in [
        ("ProtectSystem=strict", "ProtecSystem=strict"),
        ("Restart=always", "Restart=sometimes"),
    ] {
        let broken = units[1].1.replace(from, to);
        assert_ne!(broken, units[1].1);
        let root = root_with(&[("twill-agent.service", broken)]);
        let said = verify(root.path(), &["twill-agent.service"]).expect_err(to);
        assert!(said.contains("twill-agent.service"), "{said}");
    }
}

#[test]
fn the_agent_unit_grants_exactly_the_capabilities_the_agent_needs() {
    let unit = shipped("twill-agent.service");
    let caps = |key: &str| -> Vec<String> {
        let mut v: Vec<String> = unit
            .lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    let want = ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"];
    assert_eq!(caps("CapabilityBoundingSet"), want);
    assert_eq!(caps("AmbientCapabilities"), want);
    let controller = shipped("twill-controller.service");
    assert!(controller.lines().any(|l| l == "CapabilityBoundingSet="));
    // subnet.env outlives an agent restart, so pods can be made meanwhile.
    assert!(unit.lines().any(|l| l == "RuntimeDirectoryPreserve=yes"));
}
