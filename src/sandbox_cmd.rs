//! `twill sandbox`: a whole cluster on one machine, in network namespaces: an underlay bridge
//! (192.0.2.0/24), a controller, N nodes each running `twill agent`, and pods made through
//! `twill-cni`. Prints the lease table and a pod-to-pod reachability matrix.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use twill_sandbox::{is_root, Topology};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SandboxBackend {
    Vxlan,
    HostGw,
    /// Each agent runs a BGP speaker (iBGP full mesh, AS 64512)
    Bgp,
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
    /// Exit 0 if every pod reaches every other pod, 1 otherwise (cleans up either way)
    #[arg(long)]
    check: bool,
    /// Leave the namespaces and processes running at exit
    #[arg(long)]
    keep: bool,
    /// Where the reference CNI plugins (bridge, host-local) are
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/cni")]
    cni_path: String,
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

fn matrix(t: &Topology) -> (Vec<Vec<bool>>, bool) {
    let n = t.pods.len();
    let mut m = vec![vec![true; n]; n];
    let mut all = true;
    for (a, row) in m.iter_mut().enumerate() {
        for (b, cell) in row.iter_mut().enumerate() {
            if a != b {
                *cell = t.pod_ping(a, b);
                all &= *cell;
            }
        }
    }
    (m, all)
}

fn print_matrix(t: &Topology, m: &[Vec<bool>]) {
    let label = |i: usize| format!("{}/{}", t.nodes[t.pods[i].node].name, t.pods[i].addr);
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
    let mut t = Topology::new("sb", n, &twill)?;
    let backend: &[&str] = match a.backend {
        SandboxBackend::Vxlan => &["--backend", "vxlan"],
        SandboxBackend::HostGw => &["--backend", "host-gw"],
        SandboxBackend::Bgp => &["--backend", "bgp", "--bgp-asn", "64512"],
    };
    println!(
        "starting a controller and {n} agents ({:?}) in namespaces...",
        a.backend
    );
    t.start_controller(backend)?;
    for i in 0..n {
        t.start_agent(i)?;
    }
    for i in 0..n {
        t.wait_subnet(i, Duration::from_secs(60))?;
    }
    for i in 0..n {
        for k in 0..a.pods_per_node as usize {
            t.add_pod(i, k, &cni, &a.cni_path)?;
        }
    }
    println!();
    print!("{}", t.twill(&["leases"])?);
    // Routes reach every node within a resync or two; give the matrix a few seconds to settle.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (m, all) = loop {
        let (m, all) = matrix(&t);
        if all || Instant::now() > deadline {
            break (m, all);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!();
    print_matrix(&t, &m);
    println!(
        "\n{}",
        if all {
            "every pod reaches every other pod"
        } else {
            "SOME PODS CANNOT REACH EACH OTHER"
        }
    );
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
