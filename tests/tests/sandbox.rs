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

/// Runs `twill sandbox ARGS --check`, which must pass; its stdout and stderr apart.
fn passing_sandbox(args: &[&str]) -> (String, String) {
    let (out, _) = run_sandbox(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("every pod reaches every other pod"),
        "{stdout}"
    );
    (stdout, stderr)
}

/// The lines the sandbox writes on stderr for a two-node run, in this order (stderr is not a
/// terminal here, so each count has a line per quarter and no carriage returns).
const TWO_NODE_PROGRESS: &[&str] = &[
    "building the underlay and 2 node namespaces...",
    "node namespaces: 2/2",
    "controller started, waiting for it to answer...",
    "starting 2 agents...",
    "agents: 2/2 have a subnet",
    "pods: 2/2",
    "checking reachability: 2/2 pairs",
    "removing the namespaces...",
];

#[test]
fn sandbox_says_what_it_is_doing_on_stderr_in_order() {
    if !root_or_skip("sandbox_says_what_it_is_doing_on_stderr_in_order") {
        return;
    }
    let (stdout, stderr) = passing_sandbox(&["--nodes", "2"]);
    let lines: Vec<&str> = stderr.lines().collect();
    let mut from = 0;
    for want in TWO_NODE_PROGRESS {
        match lines[from..].iter().position(|l| l == want) {
            Some(at) => from += at + 1,
            None => panic!("{want:?} missing from stderr, or out of order:\n{stderr}"),
        }
    }
    assert!(!stderr.contains('\r'), "stderr is no terminal: {stderr:?}");
    // A count of two prints at half and at the end: no more than a line per quarter.
    for label in ["agents:", "pods:", "checking reachability:"] {
        let n = lines.iter().filter(|l| l.starts_with(label)).count();
        assert!((1..=4).contains(&n), "{n} lines of {label}\n{stderr}");
    }
    // The results stay on stdout, and only they.
    assert_eq!(stdout.matches(" ok").count(), 2, "{stdout}");
    for progress in TWO_NODE_PROGRESS {
        assert!(
            !stdout.contains(progress),
            "{progress:?} on stdout:\n{stdout}"
        );
    }
}

#[test]
fn sandbox_check_passes_for_host_gw_and_quiet_prints_no_progress() {
    if !root_or_skip("sandbox_check_passes_for_host_gw_and_quiet_prints_no_progress") {
        return;
    }
    let (_, stderr) = passing_sandbox(&["--nodes", "3", "--backend", "host-gw", "--quiet"]);
    let counts = [
        "node namespaces:",
        "agents:",
        "pods:",
        "checking reachability:",
    ];
    assert!(
        !stderr
            .lines()
            .any(|l| l.ends_with("...") || counts.iter().any(|c| l.starts_with(c))),
        "--quiet printed progress:\n{stderr}"
    );
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
