//! `twill sandbox`: a whole cluster on one machine, in network namespaces: an underlay bridge
//! (192.0.2.0/24), a controller, N nodes each running `twill agent`, and pods made through
//! `twill-cni`. Prints the lease table and a pod-to-pod reachability matrix. With `--dual-stack`
//! the underlay also has IPv6 (2001:db8::N/64), the pod network has an IPv6 half
//! ([`IPV6_NETWORK`]), and there is a matrix per family.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use twill_sandbox::{is_root, Topology};

use crate::progress::Progress;

/// The IPv6 pod network of a `--dual-stack` sandbox (a /64 per node).
pub const IPV6_NETWORK: &str = "fd00:10:244::/56";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SandboxBackend {
    Vxlan,
    HostGw,
    /// Each agent runs a BGP speaker (iBGP full mesh, AS 64512)
    Bgp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

#[derive(Args, Debug)]
pub struct SandboxArgs {
    /// Number of nodes
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=50))]
    nodes: u8,
    /// How nodes carry pod traffic
    #[arg(long, value_enum, default_value = "vxlan")]
    backend: SandboxBackend,
    /// Pods per node
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=20))]
    pods_per_node: u8,
    /// Exit 0 if every pod reaches every other pod (over both families with --dual-stack), 1
    /// otherwise (cleans up either way)
    #[arg(long)]
    check: bool,
    /// IPv6 as well as IPv4: each node's underlay gets 2001:db8::N/64, the controller leases a
    /// /64 per node from fd00:10:244::/56, every pod gets an address of each family, and an IPv6
    /// reachability matrix follows the IPv4 one (every backend); with --check both must pass
    #[arg(long)]
    dual_stack: bool,
    /// Leave the namespaces and processes running at exit
    #[arg(long)]
    keep: bool,
    /// Where the reference CNI plugins (bridge, host-local) are
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    cni_path: String,
    /// Say nothing on stderr while building and checking (the results still go to stdout)
    #[arg(long, short)]
    quiet: bool,
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the twill binary")?;
    let p = exe.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found next to {} (build it: cargo build --release --bin {name})",
            p.display(),
            exe.display()
        );
    }
    Ok(p)
}

/// Pings every ordered pair of pods over `family`, counting the pairs on `progress`; the
/// matrix, and whether every pair answered.
fn matrix(
    t: &Topology,
    family: Family,
    progress: &mut Progress,
    label: &str,
) -> (Vec<Vec<bool>>, bool) {
    let n = t.pods.len();
    let pairs = n * n.saturating_sub(1);
    let mut done = 0;
    let mut m = vec![vec![true; n]; n];
    let mut all = true;
    for (a, row) in m.iter_mut().enumerate() {
        for (b, cell) in row.iter_mut().enumerate() {
            if a != b {
                *cell = match family {
                    Family::V4 => t.pod_ping(a, b),
                    Family::V6 => t.pod_ping6(a, b),
                };
                all &= *cell;
                done += 1;
                progress.count(label, done, pairs, "pairs");
            }
        }
    }
    (m, all)
}

fn print_matrix(t: &Topology, m: &[Vec<bool>], family: Family) {
    let label = |i: usize| {
        let p = &t.pods[i];
        let addr = match family {
            Family::V4 => p.addr.as_str(),
            Family::V6 => p.addr6.as_deref().unwrap_or("-"),
        };
        format!("{}/{addr}", t.nodes[p.node].name)
    };
    let w = (0..t.pods.len()).map(|i| label(i).len()).max().unwrap_or(4);
    print!("{:w$}", "FROM \\ TO");
    for b in 0..t.pods.len() {
        print!("  {:>3}", b + 1);
    }
    println!();
    for (a, row) in m.iter().enumerate() {
        print!("{:w$}", label(a));
        for (b, ok) in row.iter().enumerate() {
            print!(
                "  {:>3}",
                if a == b {
                    "-"
                } else if *ok {
                    "ok"
                } else {
                    "NO"
                }
            );
        }
        println!("   ({})", a + 1);
    }
}

pub async fn run(a: SandboxArgs) -> Result<()> {
    if !is_root() {
        bail!("twill sandbox creates network namespaces: run it as root");
    }
    if !PathBuf::from(&a.cni_path).join("bridge").exists() {
        bail!(
            "the reference CNI plugins are not in {} (Debian: apt-get install containernetworking-plugins)",
            a.cni_path
        );
    }
    let twill = std::env::current_exe()?;
    let cni = sibling("twill-cni")?;
    let n = a.nodes as usize;
    println!(
        "starting a controller and {n} agents ({:?}{}) in namespaces...",
        a.backend,
        if a.dual_stack { ", dual-stack" } else { "" }
    );
    let mut progress = Progress::new(a.quiet);
    progress.step(&format!("building the underlay and {n} node namespaces..."));
    let mut t = Topology::new_reporting("sb", n, &twill, |made| {
        progress.count("node namespaces", made, n, "")
    })?;
    let mut flags: Vec<&str> = match a.backend {
        SandboxBackend::Vxlan => vec!["--backend", "vxlan"],
        SandboxBackend::HostGw => vec!["--backend", "host-gw"],
        SandboxBackend::Bgp => vec!["--backend", "bgp", "--bgp-asn", "64512"],
    };
    let families: &[Family] = if a.dual_stack {
        // Before the agents start: each takes its interface's IPv6 address at start.
        progress.step("adding IPv6 to the underlay...");
        t.enable_ipv6()?;
        flags.extend(["--ipv6-network", IPV6_NETWORK]);
        &[Family::V4, Family::V6]
    } else {
        &[Family::V4]
    };
    t.start_controller(&flags)?;
    progress.step("controller started, waiting for it to answer...");
    // The agents' join token is the first thing asked of it.
    t.join_token()?;
    progress.step(&format!("starting {n} agents..."));
    for i in 0..n {
        t.start_agent(i)?;
    }
    for i in 0..n {
        t.wait_subnet(i, Duration::from_secs(60))?;
        progress.count("agents", i + 1, n, "have a subnet");
    }
    let pods = n * a.pods_per_node as usize;
    for i in 0..n {
        for k in 0..a.pods_per_node as usize {
            t.add_pod(i, k, &cni, &a.cni_path)?;
            progress.count("pods", t.pods.len(), pods, "");
        }
    }
    println!();
    print!("{}", t.twill(&["leases"])?);
    // Routes reach every node within a resync or two; give the matrix a few seconds to settle.
    let deadline = Instant::now() + Duration::from_secs(15);
    let matrices = loop {
        let ms: Vec<_> = families
            .iter()
            .map(|f| {
                let label = if a.dual_stack {
                    format!("checking {} reachability", f.name())
                } else {
                    "checking reachability".to_string()
                };
                matrix(&t, *f, &mut progress, &label)
            })
            .collect();
        if ms.iter().all(|(_, ok)| *ok) || Instant::now() > deadline {
            break ms;
        }
        progress.step("some pods do not answer yet; checking again...");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for ((m, _), family) in matrices.iter().zip(families) {
        println!();
        if a.dual_stack {
            println!("{}:", family.name());
        }
        print_matrix(&t, m, *family);
    }
    let failed: Vec<&str> = (matrices.iter().zip(families))
        .filter(|((_, ok), _)| !ok)
        .map(|(_, f)| f.name())
        .collect();
    let all = failed.is_empty();
    let over = if a.dual_stack {
        " over IPv4 and IPv6"
    } else {
        ""
    };
    if all {
        println!("\nevery pod reaches every other pod{over}");
    } else if a.dual_stack {
        println!(
            "\nSOME PODS CANNOT REACH EACH OTHER (over {})",
            failed.join(" and ")
        );
    } else {
        println!("\nSOME PODS CANNOT REACH EACH OTHER");
    }
    if a.keep {
        let names = t.keep();
        println!(
            "kept running; remove with: for ns in {}; do ip netns del $ns; done",
            names.join(" ")
        );
        return if all || !a.check {
            Ok(())
        } else {
            bail!("reachability check failed")
        };
    }
    if a.check {
        progress.step("removing the namespaces...");
        drop(t);
        return if all {
            Ok(())
        } else {
            bail!("reachability check failed")
        };
    }
    println!(
        "sandbox running (namespaces: ip netns list | grep {}); Ctrl-C to stop and clean up",
        t.tag
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("cleaning up");
    drop(t);
    Ok(())
}
