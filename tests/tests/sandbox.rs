//! `twill sandbox --check`, the README's "run it" command, as a user runs it.

use std::process::Command;

use twill_tests::netns::root_or_skip;
use twill_tests::{cni_binary, twill_binary};

/// Runs `twill sandbox ARGS --check`; returns its output and the sandbox's namespace tag.
fn run_sandbox(args: &[&str]) -> (std::process::Output, String) {
    let bin = twill_binary().expect("twill");
    cni_binary().expect("twill-cni next to twill");
    let child = Command::new(bin)
        .arg("sandbox")
        .args(args)
        .arg("--check")
        .env("TWILL_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run twill sandbox");
    let tag = format!("sb{}", child.id());
    (child.wait_with_output().expect("wait"), tag)
}

/// Runs `twill sandbox ARGS --check`; returns success, output, and the sandbox's namespace tag.
fn sandbox(args: &[&str]) -> (bool, String, String) {
    let (out, tag) = run_sandbox(args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        tag,
    )
}

#[test]
fn sandbox_check_passes_for_five_vxlan_nodes_and_cleans_up() {
    if !root_or_skip("sandbox_check_passes_for_five_vxlan_nodes_and_cleans_up") {
        return;
    }
    let (ok, out, tag) = sandbox(&["--nodes", "5", "--pods-per-node", "2"]);
    assert!(ok, "{out}");
    assert!(out.contains("every pod reaches every other pod"), "{out}");
    // 10 pods: 90 ordered pairs, every one reachable.
    assert_eq!(out.matches(" ok").count(), 90, "{out}");
    // Agents that start before the configuration is in place wait quietly: no warning.
    assert!(!out.contains("cannot acquire a lease"), "{out}");
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.lines().any(|l| l.contains(&tag)),
        "namespaces left behind: {left}"
    );
}

#[test]
fn sandbox_check_passes_for_host_gw() {
    if !root_or_skip("sandbox_check_passes_for_host_gw") {
        return;
    }
    let (ok, out, _) = sandbox(&["--nodes", "3", "--backend", "host-gw"]);
    assert!(ok, "{out}");
}

#[test]
fn sandbox_check_passes_for_bgp() {
    if !root_or_skip("sandbox_check_passes_for_bgp") {
        return;
    }
    let (ok, out, _) = sandbox(&["--nodes", "3", "--backend", "bgp"]);
    assert!(ok, "{out}");
    assert!(out.contains("every pod reaches every other pod"), "{out}");
}

/// `--dual-stack --check` on two nodes: the lease table has IPv6 subnets, there is a matrix per
/// family, each with both ordered pairs reachable, and the check covers both.
fn dual_stack(backend: &[&str]) {
    let mut args = vec!["--dual-stack", "--nodes", "2"];
    args.extend(backend);
    let (ok, out, _) = sandbox(&args);
    assert!(ok, "{out}");
    assert!(out.contains("IPV6 SUBNET"), "{out}");
    // Provenance: why each node has its subnet, and since when.
    assert!(
        out.contains("REASON") && out.contains("SINCE") && out.matches("lowest free").count() == 2,
        "{out}"
    );
    // One /64 of fd00:10:244::/56 per node in the lease table, and the pods' addresses in them.
    assert!(out.matches("fd00:10:244:").count() >= 4, "{out}");
    assert!(
        out.contains("\nIPv4:\n") && out.contains("\nIPv6:\n"),
        "{out}"
    );
    // 2 pods: 2 ordered pairs per family.
    assert_eq!(out.matches(" ok").count(), 4, "{out}");
    assert!(
        out.contains("every pod reaches every other pod over IPv4 and IPv6"),
        "{out}"
    );
}

#[test]
fn sandbox_dual_stack_check_passes_for_vxlan() {
    if !root_or_skip("sandbox_dual_stack_check_passes_for_vxlan") {
        return;
    }
    dual_stack(&[]);
}

#[test]
fn sandbox_dual_stack_check_passes_for_host_gw() {
    if !root_or_skip("sandbox_dual_stack_check_passes_for_host_gw") {
        return;
    }
    dual_stack(&["--backend", "host-gw"]);
}

#[test]
fn sandbox_dual_stack_check_passes_for_bgp() {
    if !root_or_skip("sandbox_dual_stack_check_passes_for_bgp") {
        return;
    }
    dual_stack(&["--backend", "bgp"]);
}
