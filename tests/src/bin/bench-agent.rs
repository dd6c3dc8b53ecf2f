//! Agent benchmark (root): time for one agent to program 1,000 and 5,000 peers; time from a new
//! node's lease to its route on every other node (20 joins, 5 nodes); pod-to-pod iperf3
//! throughput through twill's vxlan and host-gw next to the same paths configured by hand.
//! Run it with `scripts/bench-agent`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use twill_agent::desired::{compute, Backend, Input, LocalFacts, NodeLease};
use twill_agent::reconcile::Kernel;
use twill_agent::vtep;
use twill_client::Client;
use twill_proto::v1 as pb;
use twill_sandbox::{in_netns, ip, is_root, Topology};
use twill_tests::bench::{ms, quantile};

fn sibling(name: &str) -> Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name(name);
    if !p.exists() {
        bail!(
            "{} not found: build it first (scripts/bench-agent does)",
            p.display()
        );
    }
    Ok(p)
}

fn peer(i: u32) -> NodeLease {
    let subnet = Ipv4Addr::from(0x0a00_0000 + ((i + 2) << 8));
    NodeLease {
        node: format!("peer-{i}"),
        subnet: ipnet::Ipv4Net::new(subnet, 24).expect("valid"),
        public_ip: Ipv4Addr::from(0xc000_0200 + (i % 250) + 2),
        vtep_mac: Some(vtep::derive(&format!("peer-{i}"))),
        v6: None,
    }
}

/// One agent's reconciler programming `n` VXLAN peers from scratch, then a no-op resync, then
/// removing them all.
fn program_peers(n: u32) -> Result<(Duration, Duration, Duration)> {
    let ns = format!("tw-bench-{}-{n}", std::process::id());
    ip(&["netns", "add", &ns])?;
    let result = (|| {
        ip(&[
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])?;
        ip(&["-n", &ns, "addr", "add", "192.0.2.1/24", "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "eth1", "up"])?;
        in_netns(&ns, move || {
            Box::pin(async move {
                let own = NodeLease {
                    node: "me".into(),
                    subnet: "10.0.1.0/24".parse().expect("valid"),
                    public_ip: "192.0.2.1".parse().expect("valid"),
                    vtep_mac: Some(vtep::derive("me")),
                    v6: None,
                };
                let mut input = Input {
                    own: own.clone(),
                    peers: (0..n).map(peer).collect(),
                    backend: Backend::Vxlan {
                        vni: 1,
                        port: 8472,
                        direct_routing: false,
                    },
                    facts: LocalFacts {
                        iface: "eth0".into(),
                        mtu: 1500,
                        public_ip: own.public_ip,
                        local_ip: own.public_ip,
                        connected: vec!["192.0.2.0/24".parse().expect("valid")],
                        v6: None,
                    },
                    sources: Default::default(),
                };
                let k = Kernel::connect()?;
                let t = Instant::now();
                let ops = k.reconcile(&compute(&input)).await?;
                let add = t.elapsed();
                if ops.len() < 3 * n as usize {
                    bail!("expected at least {} operations, made {}", 3 * n, ops.len());
                }
                let t = Instant::now();
                let noop = k.reconcile(&compute(&input)).await?;
                let resync = t.elapsed();
                if !noop.is_empty() {
                    bail!("second pass was not a no-op: {} operations", noop.len());
                }
                input.peers.clear();
                let t = Instant::now();
                k.reconcile(&compute(&input)).await?;
                Ok::<_, anyhow::Error>((add, resync, t.elapsed()))
            })
        })?
    })();
    let _ = ip(&["netns", "del", &ns]);
    result
}

/// Time from an acknowledged Acquire of a new node to its route on all of `nodes` agents.
fn join_latency(nodes: usize, joins: usize) -> Result<Vec<Duration>> {
    let mut t = Topology::new("bj", nodes, &sibling("twill")?)?;
    t.start_controller(&["--backend", "vxlan"])?;
    for i in 0..nodes {
        t.start_agent(i)?;
    }
    for i in 0..nodes {
        t.wait_subnet(i, Duration::from_secs(60))?;
    }
    let url = t.controller_url();
    let admin = twill_pki::Credentials::load(&t.admin_credentials())?;
    let node_ns: Vec<String> = t.nodes.iter().map(|n| n.ns.clone()).collect();
    let out = in_netns(&t.ctl_ns.clone(), move || {
        Box::pin(async move {
            let c = Client::with_options(
                [url],
                twill_client::ClientOptions {
                    tls: Some(admin.client_tls()),
                    ..Default::default()
                },
            )?;
            let mut lat = Vec::new();
            for j in 0..joins {
                let name = format!("joiner-{j}");
                let mut req = pb::AcquireRequest {
                    node: name.clone(),
                    public_ip: format!("192.0.2.{}", 150 + j),
                    ..Default::default()
                };
                req.backend_data
                    .insert("vtep_mac".into(), vtep::derive(&name).to_string());
                let r = c.acquire(req).await?;
                let acked = Instant::now();
                let subnet = r.lease.context("lease")?.subnet;
                let mut waiting: Vec<&String> = node_ns.iter().collect();
                while !waiting.is_empty() {
                    if acked.elapsed() > Duration::from_secs(30) {
                        bail!("{subnet} not on {waiting:?} after 30s");
                    }
                    waiting.retain(|ns| {
                        let o = Command::new("ip")
                            .args(["-n", ns, "route", "show", "proto", "151"])
                            .output();
                        !o.map(|o| String::from_utf8_lossy(&o.stdout).contains(&subnet))
                            .unwrap_or(false)
                    });
                }
                lat.push(acked.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        })
    })??;
    Ok(out)
}

fn iperf(client_ns: &str, server_ns: &str, server_addr: &str) -> Result<f64> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            client_ns,
            "iperf3",
            "-c",
            server_addr,
            "-t",
            "3",
            "-J",
        ])
        .output()?;
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .context("iperf3 gave no throughput")
}

/// iperf3 between the pods of a 2-node sandbox.
fn iperf_twill(backend: &str) -> Result<f64> {
    let mut t = Topology::new(&format!("bi{}", &backend[..1]), 2, &sibling("twill")?)?;
    t.start_controller(&["--backend", backend])?;
    t.start_agent(0)?;
    t.start_agent(1)?;
    t.wait_subnet(0, Duration::from_secs(60))?;
    t.wait_subnet(1, Duration::from_secs(60))?;
    let cni = sibling("twill-cni")?;
    t.add_pod(0, 0, &cni, "/usr/lib/cni")?;
    t.add_pod(1, 0, &cni, "/usr/lib/cni")?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !t.pod_ping(0, 1) {
        if Instant::now() > deadline {
            bail!("pods never reached each other");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    iperf(&t.pods[0].ns, &t.pods[1].ns, &t.pods[1].addr.clone())
}

/// The same two paths by hand: a veth pair with a VXLAN device on each side, or plain routing
/// between the veth ends (host-gw's data path without the pod hop).
fn iperf_by_hand(vxlan: bool) -> Result<f64> {
    let id = std::process::id();
    let (a, b) = (format!("tw-hand-a{id}"), format!("tw-hand-b{id}"));
    ip(&["netns", "add", &a])?;
    ip(&["netns", "add", &b])?;
    let r = (|| {
        ip(&[
            "-n", &a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b,
        ])?;
        for (ns, addr) in [(&a, "192.0.2.1"), (&b, "192.0.2.2")] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        if !vxlan {
            return iperf(&a, &b, "192.0.2.2");
        }
        for (ns, local, remote, inner) in [
            (&a, "192.0.2.1", "192.0.2.2", "10.99.0.1/24"),
            (&b, "192.0.2.2", "192.0.2.1", "10.99.0.2/24"),
        ] {
            ip(&[
                "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local,
                "remote", remote, "dstport", "8472", "dev", "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "vx0", "mtu", "1450"])?;
            ip(&["-n", ns, "addr", "add", inner, "dev", "vx0"])?;
            ip(&["-n", ns, "link", "set", "vx0", "up"])?;
        }
        iperf(&a, &b, "10.99.0.2")
    })();
    let _ = ip(&["netns", "del", &a]);
    let _ = ip(&["netns", "del", &b]);
    r
}

fn main() -> Result<()> {
    if !is_root() {
        bail!("bench-agent creates network namespaces: run it as root");
    }
    println!(
        "agent benchmark, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    for n in [1_000u32, 5_000] {
        let (add, resync, del) = program_peers(n)?;
        println!(
            "  program {n:>5} vxlan peers: {} ({:.0} peers/s); no-op resync {}; remove all {}",
            ms(add),
            n as f64 / add.as_secs_f64(),
            ms(resync),
            ms(del)
        );
    }
    let mut lat = join_latency(5, 20)?;
    lat.sort();
    println!(
        "  new node's lease -> route on all 5 nodes (20 joins): p50 {}, p99 {}, max {}",
        ms(quantile(&lat, 0.5)),
        ms(quantile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );
    if Command::new("iperf3").arg("--version").output().is_err() {
        println!("  iperf3: not installed (apt-get install iperf3), throughput not measured");
        return Ok(());
    }
    let tv = iperf_twill("vxlan")?;
    let hv = iperf_by_hand(true)?;
    let tg = iperf_twill("host-gw")?;
    let hg = iperf_by_hand(false)?;
    println!("  iperf3 pod to pod, twill vxlan:   {tv:.2} Gbit/s   by hand, host to host without the pod and bridge hop (veth + vxlan): {hv:.2} Gbit/s  ratio {:.2}", tv / hv);
    println!("  iperf3 pod to pod, twill host-gw: {tg:.2} Gbit/s   by hand, host to host without the pod and bridge hop (veth): {hg:.2} Gbit/s  ratio {:.2}", tg / hg);
    Ok(())
}
