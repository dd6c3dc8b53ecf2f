//! Agent benchmark (root): issue 15's targets 4b, 6 and 8, each printed as a table of the
//! median and the spread (min to max) over rounds. Figures are printed, never asserted.
//!
//! - `program`: one reconciler (the agent's own `Kernel`, on a multi-thread runtime as in the
//!   agent) programming 1,000 and 5,000 VXLAN peers into an empty namespace, then a no-op
//!   resync, then removing them all; the batches whose acknowledgements the kernel dropped
//!   (ENOBUFS overruns) are counted.
//! - `table`: the same reconciler with a BGP table of 100,000 routes via one gateway (as the
//!   BGP backend makes them from a ToR router's full table): add, no-op resync, remove all,
//!   alternating with `ip -batch` adding and deleting the same routes one request at a time.
//! - `memory`: the real `twill agent` process in a sandbox node while the controller holds
//!   5,000 other leases: from its start to all 5,000 routes in its namespace, its RSS (VmRSS
//!   and RssAnon from /proc) once they are, and again after 10 s of resyncs (one a second), and
//!   its peak (VmHWM). Each round starts a fresh agent on a node emptied of twill's device.
//! - `churn`: the same agent, kept running, while 5,000 more nodes join (32 acquisitions at a
//!   time) and then leave, each an event on its lease stream: the time until its routes
//!   follow and the CPU time the agent used meanwhile (/proc/PID/stat), and its peak RSS.
//! - `converge`: 5 and 50 node namespaces with real agents (vxlan, the default 5 s resync) and
//!   a controller; 20 nodes join one after another, a quarter second apart: from each Acquire
//!   being sent (its Raft commit included) until the new subnet's route is in every node, as a
//!   netlink route monitor in each node namespace sees it (and until it is in half of them).
//! - `dataplane`: iperf3 pod to pod (3 s after 1 s omitted) through twill's vxlan and host-gw,
//!   next to the same path made by hand with `ip`: a pod namespace on a veth whose other end is
//!   on a cni0 bridge holding the pod gateway, in a node namespace on the same underlay bridge,
//!   then a VXLAN device (learning off, MTU 1450) with the peer's neighbour, FDB entry and
//!   onlink route, or a route via the peer node; and that path again with twill's masquerade
//!   table on both nodes, the netfilter state twill's nodes run with by default (the kernel
//!   then tracks every connection through the node). 7 rounds, the three taking turns at going
//!   first.
//!
//! Everything runs in namespaces made here, none connected to the root namespace; traffic only
//! goes to addresses inside them. `TWILL_BIN` names another `twill` binary to run as agent and
//! controller (an older build, for before and after). Run it with `scripts/bench-agent
//! [program|table|memory|churn|converge|dataplane]...` (all when none is named).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use twill_agent::desired::{compute, Backend, Desired, Input, LocalFacts, NodeLease};
use twill_agent::reconcile::Kernel;
use twill_agent::vtep;
use twill_client::{Client, ClientOptions};
use twill_proto::v1 as pb;
use twill_sandbox::{attach_to_bridge, in_netns, ip, ip_out, is_root, Topology};
use twill_tests::netns::{in_netns_multi_thread, nft_script};

const PROGRAM_ROUNDS: usize = 5;
const MEMORY_ROUNDS: usize = 3;
const MEMORY_PEERS: usize = 5_000;
const CHURN_ROUNDS: usize = 3;
const JOINS: usize = 20;
const DATAPLANE_ROUNDS: usize = 7;

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

/// The `twill` binary run as controller and agent: `TWILL_BIN`, else the one built beside us.
fn twill_bin() -> Result<PathBuf> {
    match std::env::var_os("TWILL_BIN") {
        Some(p) => Ok(PathBuf::from(p)),
        None => sibling("twill"),
    }
}

/// Median, min and max of samples.
fn spread(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (median, v[0], v[v.len() - 1])
}

/// One table row: the label, then median, min and max of `xs` with `decimals` decimals.
fn row(label: &str, xs: &[f64], decimals: usize, note: &str) {
    let (m, lo, hi) = spread(xs);
    println!(
        "  {label:<40} {m:>9.decimals$} {lo:>9.decimals$} {hi:>9.decimals$}  {note}",
        decimals = decimals
    );
}

fn header(title: &str, unit: &str) {
    println!();
    println!("{title}");
    println!(
        "  {:<40} {:>9} {:>9} {:>9}  ({unit})",
        "", "median", "min", "max"
    );
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
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

struct Programmed {
    add: Duration,
    resync: Duration,
    remove: Duration,
    overruns: usize,
}

/// The facts of a node whose uplink is eth0 with `ip` on 192.0.2.0/24.
fn uplink_facts(ip: Ipv4Addr) -> LocalFacts {
    LocalFacts {
        iface: "eth0".into(),
        mtu: 1500,
        public_ip: ip,
        local_ip: ip,
        connected: vec!["192.0.2.0/24".parse().expect("valid")],
        v6: None,
    }
}

/// One reconciler's three passes in the namespace `ns`, each timed: `want` from an empty
/// namespace (`enough` operations at least), `want` again (must do nothing), then `after`.
fn three_passes(ns: &str, want: Desired, after: Desired, enough: usize) -> Result<Programmed> {
    in_netns_multi_thread(ns, move || {
        Box::pin(async move {
            let k = Kernel::connect()?;
            let t = Instant::now();
            let added = k.reconcile_reporting(&want).await?;
            let add = t.elapsed();
            if added.ops.len() < enough || !added.conflicts.is_empty() {
                bail!(
                    "expected at least {enough} operations and no conflict, made {} with {} conflicts",
                    added.ops.len(),
                    added.conflicts.len()
                );
            }
            let t = Instant::now();
            let noop = k.reconcile_reporting(&want).await?;
            let resync = t.elapsed();
            if !noop.ops.is_empty() {
                bail!("second pass was not a no-op: {} operations", noop.ops.len());
            }
            let t = Instant::now();
            let removed = k.reconcile_reporting(&after).await?;
            Ok::<_, anyhow::Error>(Programmed {
                add,
                resync,
                remove: t.elapsed(),
                overruns: added.overruns + noop.overruns + removed.overruns,
            })
        })
    })?
}

/// One agent's reconciler programming `n` VXLAN peers from scratch, then a no-op resync, then
/// removing them all (desired states computed before the clock starts).
fn program_peers(n: u32) -> Result<Programmed> {
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
        facts: uplink_facts(own.public_ip),
        sources: Default::default(),
    };
    let want = compute(&input);
    input.peers.clear();
    let after = compute(&input);
    let ns = uplink_ns(&format!("program-{n}"))?;
    let result = three_passes(&ns, want, after, 3 * n as usize);
    let _ = ip(&["netns", "del", &ns]);
    result
}

fn bench_program() -> Result<()> {
    header(
        &format!(
            "program: one reconciler, VXLAN peers into an empty namespace, {PROGRAM_ROUNDS} rounds"
        ),
        "ms",
    );
    for n in [1_000u32, 5_000] {
        let mut runs = Vec::new();
        for _ in 0..PROGRAM_ROUNDS {
            runs.push(program_peers(n)?);
        }
        let col = |f: fn(&Programmed) -> Duration| -> Vec<f64> {
            runs.iter().map(|r| millis(f(r))).collect()
        };
        let adds = col(|r| r.add);
        let (m, _, _) = spread(&adds);
        row(
            &format!("{n} peers: add"),
            &adds,
            1,
            &format!("{:.0} peers/s", n as f64 / (m / 1000.0)),
        );
        row(
            &format!("{n} peers: no-op resync"),
            &col(|r| r.resync),
            1,
            "",
        );
        row(&format!("{n} peers: remove all"), &col(|r| r.remove), 1, "");
        let overruns: usize = runs.iter().map(|r| r.overruns).sum();
        println!("  {n} peers: batches lost to ENOBUFS (overruns), all rounds: {overruns}");
    }
    Ok(())
}

/// Routes in the `table` section: a full table's worth, as from a ToR router.
const TABLE_ROUTES: u32 = 100_000;
const TABLE_ROUNDS: usize = 5;

/// The `i`th /24 of the table, from 11.0.0.0.
fn table_prefix(i: u32) -> ipnet::Ipv4Net {
    ipnet::Ipv4Net::new(Ipv4Addr::from(0x0b00_0000 + (i << 8)), 24).expect("/24 is valid")
}

/// A fresh namespace with an uplink (eth0, 192.0.2.1/24) whose far end is eth1, both up.
fn uplink_ns(tag: &str) -> Result<String> {
    let ns = format!("tw-bench-{tag}-{}", std::process::id());
    ip(&["netns", "add", &ns])?;
    let made = (|| {
        ip(&[
            "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
        ])?;
        ip(&["-n", &ns, "addr", "add", "192.0.2.1/24", "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", &ns, "link", "set", "eth1", "up"])
    })();
    if let Err(e) = made {
        let _ = ip(&["netns", "del", &ns]);
        return Err(e);
    }
    Ok(ns)
}

/// One agent's reconciler with a BGP table of `n` routes via 192.0.2.2: from an empty
/// namespace to every route in it, a no-op resync, removing them all. The desired state is
/// computed before the clock starts (the `ip` side has its file written beforehand too).
fn table_by_twill(n: u32) -> Result<Programmed> {
    let via = vec![std::net::IpAddr::from(Ipv4Addr::new(192, 0, 2, 2))];
    let routes = (0..n)
        .map(|i| (ipnet::IpNet::V4(table_prefix(i)), via.clone()))
        .collect();
    let own = NodeLease {
        node: "me".into(),
        subnet: "172.16.2.0/24".parse().expect("valid"),
        public_ip: Ipv4Addr::new(192, 0, 2, 1),
        vtep_mac: None,
        v6: None,
    };
    let want = compute(&Input {
        own: own.clone(),
        peers: vec![],
        backend: Backend::Bgp { routes },
        facts: uplink_facts(own.public_ip),
        sources: Default::default(),
    });
    if want.routes.len() != n as usize {
        bail!("{} routes desired of {n}", want.routes.len());
    }
    let ns = uplink_ns("table")?;
    let result = three_passes(&ns, want, Desired::default(), n as usize);
    let _ = ip(&["netns", "del", &ns]);
    result
}

/// The same table through `ip -batch` (one request a route, each answered before the next, as
/// iproute2 and BIRD send them): adding every route, then deleting every route.
fn table_by_ip(n: u32) -> Result<(Duration, Duration)> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let (add, del) = (dir.path().join("add"), dir.path().join("del"));
    let mut a = std::io::BufWriter::new(std::fs::File::create(&add)?);
    let mut d = std::io::BufWriter::new(std::fs::File::create(&del)?);
    for i in 0..n {
        let p = table_prefix(i);
        writeln!(a, "route add {p} via 192.0.2.2 dev eth0 proto 186")?;
        writeln!(d, "route del {p} via 192.0.2.2 dev eth0 proto 186")?;
    }
    a.flush()?;
    d.flush()?;
    drop((a, d));
    let ns = uplink_ns("table-ip")?;
    let result = (|| {
        let batch = |file: &std::path::Path| -> Result<Duration> {
            let t = Instant::now();
            ip(&["-n", &ns, "-batch", &file.to_string_lossy()])?;
            Ok(t.elapsed())
        };
        let added = batch(&add)?;
        let there = ip_out(&["-n", &ns, "route", "show", "proto", "186"])
            .lines()
            .count();
        if there != n as usize {
            bail!("ip -batch left {there} routes of {n}");
        }
        Ok((added, batch(&del)?))
    })();
    let _ = ip(&["netns", "del", &ns]);
    result
}

fn bench_table() -> Result<()> {
    header(
        &format!(
            "table: {TABLE_ROUTES} routes via one gateway into an empty namespace, twill's reconciler and ip -batch alternating, {TABLE_ROUNDS} rounds"
        ),
        "ms",
    );
    let (mut twill, mut by_ip) = (Vec::new(), Vec::new());
    for round in 0..TABLE_ROUNDS {
        if round % 2 == 0 {
            twill.push(table_by_twill(TABLE_ROUTES)?);
            by_ip.push(table_by_ip(TABLE_ROUTES)?);
        } else {
            by_ip.push(table_by_ip(TABLE_ROUTES)?);
            twill.push(table_by_twill(TABLE_ROUTES)?);
        }
    }
    let per_route = |ms: f64| format!("{:.2} µs a route", ms * 1000.0 / TABLE_ROUTES as f64);
    let twill_add: Vec<f64> = twill.iter().map(|r| millis(r.add)).collect();
    let ip_add: Vec<f64> = by_ip.iter().map(|r| millis(r.0)).collect();
    let twill_remove: Vec<f64> = twill.iter().map(|r| millis(r.remove)).collect();
    let ip_remove: Vec<f64> = by_ip.iter().map(|r| millis(r.1)).collect();
    row(
        "twill: add",
        &twill_add,
        1,
        &per_route(spread(&twill_add).0),
    );
    row("ip -batch: add", &ip_add, 1, &per_route(spread(&ip_add).0));
    let ratios =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    row(
        "twill / ip -batch, add (per round)",
        &ratios(&twill_add, &ip_add),
        3,
        "",
    );
    let resync: Vec<f64> = twill.iter().map(|r| millis(r.resync)).collect();
    row("twill: no-op resync", &resync, 1, "");
    row("twill: remove all", &twill_remove, 1, "");
    row("ip -batch: delete each", &ip_remove, 1, "");
    row(
        "twill / ip -batch, remove (per round)",
        &ratios(&twill_remove, &ip_remove),
        3,
        "",
    );
    let overruns: usize = twill.iter().map(|r| r.overruns).sum();
    println!("  twill: batches lost to ENOBUFS (overruns), all rounds: {overruns}");
    Ok(())
}

/// What an admin client of the sandbox's controller needs: its URL and the admin credential.
fn admin_of(t: &Topology) -> Result<(String, twill_pki::Credentials)> {
    Ok((
        t.controller_url(),
        twill_pki::Credentials::load(&t.admin_credentials())?,
    ))
}

/// An admin client; made inside the runtime (and namespace) it is used in.
fn admin_client((url, admin): (String, twill_pki::Credentials)) -> Result<Client> {
    Ok(Client::with_options(
        [url],
        ClientOptions {
            tls: Some(admin.client_tls()),
            retry_for: Duration::from_secs(60),
            ..Default::default()
        },
    )?)
}

fn acquire_request(name: &str, public_ip: &str) -> pb::AcquireRequest {
    let mut req = pb::AcquireRequest {
        node: name.to_string(),
        public_ip: public_ip.to_string(),
        ..Default::default()
    };
    req.backend_data
        .insert("vtep_mac".into(), vtep::derive(name).to_string());
    req
}

/// A field of /proc/PID/status in KiB (VmRSS, RssAnon, VmHWM).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn routes_in(ns: &str) -> usize {
    ip_out(&["-n", ns, "-4", "route", "show", "proto", "151"])
        .lines()
        .count()
}

/// Acquires (or, with `acquire` false, releases) the leases of `MEMORY_PEERS` nodes named
/// `{prefix}-00000` on, 32 calls at a time, as an admin client in the controller's namespace.
fn leases(t: &Topology, prefix: &str, acquire: bool) -> Result<()> {
    let admin = admin_of(t)?;
    let prefix = prefix.to_string();
    in_netns(&t.ctl_ns.clone(), move || {
        Box::pin(async move {
            use futures::StreamExt;
            let c = Arc::new(admin_client(admin)?);
            let mut calls = futures::stream::iter(0..MEMORY_PEERS)
                .map(|n| {
                    let c = c.clone();
                    let name = format!("{prefix}-{n:05}");
                    async move {
                        if acquire {
                            let ip = format!("198.51.100.{}", n % 250 + 2);
                            c.acquire(acquire_request(&name, &ip)).await.map(|_| ())
                        } else {
                            c.release(&name).await.map(|_| ())
                        }
                    }
                })
                .buffer_unordered(32);
            while let Some(r) = calls.next().await {
                r?;
            }
            Ok::<_, anyhow::Error>(())
        })
    })?
}

/// Waits until the node's twill routes number `want` (counted every 50 ms).
fn wait_routes(ns: &str, want: usize, within: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let n = routes_in(ns);
        if n == want {
            return Ok(());
        }
        if started.elapsed() > within {
            bail!("{n} routes, not {want}, after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One node namespace (no agent yet) and a vxlan controller holding `MEMORY_PEERS` other leases.
fn one_full_node(name: &str, resync: &str) -> Result<Topology> {
    let twill = twill_bin()?;
    let mut t = Topology::new(name, 1, &twill)?;
    t.agent_resync = resync.into();
    t.start_controller(&[
        "--backend",
        "vxlan",
        "--network",
        "10.0.0.0/8",
        "--subnet-len",
        "24",
    ])?;
    // The join token is made first: it waits for the controller to answer.
    t.join_token()?;
    leases(&t, "peer", true)?;
    Ok(t)
}

struct Churn {
    join_routes: Duration,
    join_cpu: Duration,
    leave_routes: Duration,
    leave_cpu: Duration,
}

/// A running agent with `MEMORY_PEERS` peers while as many nodes again join, then leave: every
/// one is an event on its lease stream. What the agent spends on them, and how long until its
/// routes follow.
fn bench_churn() -> Result<()> {
    let mut t = one_full_node("bc", "5s")?;
    let ns = t.nodes[0].ns.clone();
    t.start_agent(0)?;
    let pid = t.nodes[0].agent.as_ref().map(|c| c.id()).context("agent")?;
    wait_routes(&ns, MEMORY_PEERS, Duration::from_secs(120))?;
    let cpu = || twill_tests::scale::cpu_time(pid).context("the agent's CPU time");
    let mut rounds = Vec::new();
    for _ in 0..CHURN_ROUNDS {
        let (before, started) = (cpu()?, Instant::now());
        leases(&t, "join", true)?;
        wait_routes(&ns, 2 * MEMORY_PEERS, Duration::from_secs(300))?;
        let (join_routes, join_cpu) = (started.elapsed(), cpu()? - before);
        let (before, started) = (cpu()?, Instant::now());
        leases(&t, "join", false)?;
        wait_routes(&ns, MEMORY_PEERS, Duration::from_secs(300))?;
        rounds.push(Churn {
            join_routes,
            join_cpu,
            leave_routes: started.elapsed(),
            leave_cpu: cpu()? - before,
        });
    }
    let peak = status_kib(pid, "VmHWM").context("agent's VmHWM")?;
    t.stop_agent(0);
    header(
        &format!(
            "churn: a twill agent with {MEMORY_PEERS} peers while {MEMORY_PEERS} more nodes join (32 acquisitions at a time), then leave; {CHURN_ROUNDS} rounds"
        ),
        "ms, s",
    );
    let col = |f: fn(&Churn) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
    row(
        "join: first acquisition -> routes (ms)",
        &col(|c| millis(c.join_routes)),
        0,
        "every new subnet routed on the node",
    );
    row(
        "join: the agent's CPU (s)",
        &col(|c| c.join_cpu.as_secs_f64()),
        2,
        "user + system, /proc/PID/stat",
    );
    row(
        "leave: first release -> routes gone (ms)",
        &col(|c| millis(c.leave_routes)),
        0,
        "",
    );
    row(
        "leave: the agent's CPU (s)",
        &col(|c| c.leave_cpu.as_secs_f64()),
        2,
        "",
    );
    println!(
        "  the agent's peak RSS over all rounds: {:.1} MB",
        peak as f64 / 1024.0
    );
    Ok(())
}

struct AgentMemory {
    to_routes: Duration,
    programmed_rss: u64,
    steady_rss: u64,
    steady_anon: u64,
    peak: u64,
}

fn bench_memory() -> Result<()> {
    let mut t = one_full_node("bm", "1s")?;
    let ns = t.nodes[0].ns.clone();
    let mut rounds = Vec::new();
    for _ in 0..MEMORY_ROUNDS {
        // Twill's device takes its neighbours, FDB entries and routes with it: an empty node.
        let _ = ip(&["-n", &ns, "link", "del", "twill.1"]);
        let started = Instant::now();
        t.start_agent(0)?;
        let pid = t.nodes[0].agent.as_ref().map(|c| c.id()).context("agent")?;
        wait_routes(&ns, MEMORY_PEERS, Duration::from_secs(120))?;
        let to_routes = started.elapsed();
        let programmed_rss = status_kib(pid, "VmRSS").context("agent's VmRSS")?;
        std::thread::sleep(Duration::from_secs(10));
        let m = AgentMemory {
            to_routes,
            programmed_rss,
            steady_rss: status_kib(pid, "VmRSS").context("agent's VmRSS")?,
            steady_anon: status_kib(pid, "RssAnon").context("agent's RssAnon")?,
            peak: status_kib(pid, "VmHWM").context("agent's VmHWM")?,
        };
        t.stop_agent(0);
        rounds.push(m);
    }
    header(
        &format!(
            "memory: the twill agent process with {MEMORY_PEERS} peers' leases (vxlan, resync 1 s), {MEMORY_ROUNDS} rounds"
        ),
        "ms, MB",
    );
    let col = |f: fn(&AgentMemory) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
    row(
        &format!("agent start -> {MEMORY_PEERS} routes (ms)"),
        &col(|m| millis(m.to_routes)),
        0,
        "join, lease, watch snapshot, programming",
    );
    row(
        "RSS once programmed (MB)",
        &col(|m| m.programmed_rss as f64 / 1024.0),
        1,
        "VmRSS",
    );
    row(
        "RSS after 10 s of resyncs (MB)",
        &col(|m| m.steady_rss as f64 / 1024.0),
        1,
        "VmRSS",
    );
    row(
        "anonymous RSS after 10 s (MB)",
        &col(|m| m.steady_anon as f64 / 1024.0),
        1,
        "RssAnon",
    );
    row(
        "peak RSS (MB)",
        &col(|m| m.peak as f64 / 1024.0),
        1,
        "VmHWM",
    );
    Ok(())
}

/// A netlink route monitor in each of some namespaces: every twill route (proto 151) added,
/// as (namespace's position, destination, when seen).
struct RouteMonitors {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

type RouteSeen = (usize, String, Instant);

impl RouteMonitors {
    fn start(
        namespaces: &[String],
    ) -> Result<(
        RouteMonitors,
        tokio::sync::mpsc::UnboundedReceiver<RouteSeen>,
    )> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        for (i, ns) in namespaces.iter().enumerate() {
            let (tx, stop, ready) = (tx.clone(), stop.clone(), ready_tx.clone());
            let ns = ns.clone();
            threads.push(std::thread::spawn(move || {
                let r = in_netns(&ns, move || {
                    Box::pin(async move { watch_routes(i, tx, stop, ready).await })
                });
                if let Err(e) = r {
                    eprintln!("route monitor in {ns}: {e:#}");
                }
            }));
        }
        drop(ready_tx);
        for _ in namespaces {
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .context("a route monitor did not start")??;
        }
        Ok((RouteMonitors { stop, threads }, rx))
    }
}

impl Drop for RouteMonitors {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn watch_routes(
    i: usize,
    tx: tokio::sync::mpsc::UnboundedSender<RouteSeen>,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    use futures::StreamExt;
    use rtnetlink::packet_core::NetlinkPayload;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteProtocol};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    use rtnetlink::sys::{AsyncSocket, SocketAddr};
    let opened = (|| {
        let (mut conn, handle, messages) = rtnetlink::new_connection()?;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_IPV4_ROUTE))?;
        Ok::<_, std::io::Error>((conn, handle, messages))
    })();
    let (conn, _handle, mut messages) = match opened {
        Ok(o) => o,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    tokio::spawn(conn);
    let _ = ready.send(Ok(()));
    while !stop.load(Ordering::Relaxed) {
        let m = match tokio::time::timeout(Duration::from_millis(200), messages.next()).await {
            Ok(Some((m, _))) => m,
            Ok(None) => return,
            Err(_) => continue,
        };
        let seen = Instant::now();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) = m.payload else {
            continue;
        };
        if r.header.protocol != RouteProtocol::Other(151) {
            continue;
        }
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        });
        if let Some(d) = dst {
            let _ = tx.send((
                i,
                format!("{d}/{}", r.header.destination_prefix_length),
                seen,
            ));
        }
    }
}

/// One join, timed from the Acquire being sent.
struct Join {
    /// Until the new route is in the last node.
    last: Duration,
    /// Until it is in half of them.
    median: Duration,
    /// Until the Acquire was acknowledged.
    acked: Duration,
}

/// `joins` joins to `nodes` agents, one after another.
fn join_latency(nodes: usize, joins: usize) -> Result<Vec<Join>> {
    let mut t = Topology::new(&format!("bj{nodes}-"), nodes, &twill_bin()?)?;
    t.agent_resync = "5s".into();
    t.start_controller(&["--backend", "vxlan"])?;
    for i in 0..nodes {
        t.start_agent(i)?;
    }
    for i in 0..nodes {
        t.wait_subnet(i, Duration::from_secs(120))?;
    }
    // A quiet cluster first: every node has every other's route.
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in &t.nodes {
        while routes_in(&n.ns) < nodes - 1 {
            if Instant::now() > deadline {
                bail!("{}: {} of {} routes", n.ns, routes_in(&n.ns), nodes - 1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let node_ns: Vec<String> = t.nodes.iter().map(|n| n.ns.clone()).collect();
    let (monitors, mut seen) = RouteMonitors::start(&node_ns)?;
    let admin = admin_of(&t)?;
    let out = in_netns(&t.ctl_ns.clone(), move || {
        Box::pin(async move {
            let c = admin_client(admin)?;
            let mut lat = Vec::new();
            for j in 0..joins {
                while seen.try_recv().is_ok() {}
                let name = format!("joiner-{j}");
                let sent = Instant::now();
                let r = c
                    .acquire(acquire_request(&name, &format!("192.0.2.{}", 150 + j)))
                    .await?;
                let acked = sent.elapsed();
                let subnet = r.lease.context("lease")?.subnet;
                let mut at: Vec<Option<Instant>> = vec![None; nodes];
                while at.iter().any(Option::is_none) {
                    let left = Duration::from_secs(30).saturating_sub(sent.elapsed());
                    match tokio::time::timeout(left, seen.recv()).await {
                        Ok(Some((i, dst, when))) if dst == subnet => {
                            at[i].get_or_insert(when);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => bail!("the route monitors stopped"),
                        Err(_) => {
                            let missing = at.iter().filter(|a| a.is_none()).count();
                            bail!("{subnet} not on {missing} of {nodes} nodes after 30 s");
                        }
                    }
                }
                let mut each: Vec<Duration> = at
                    .iter()
                    .flatten()
                    .map(|w| w.saturating_duration_since(sent))
                    .collect();
                each.sort();
                let last = each.last().copied().unwrap_or_default();
                lat.push(Join {
                    last,
                    median: each[each.len() / 2],
                    acked,
                });
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok::<_, anyhow::Error>(lat)
        })
    })??;
    drop(monitors);
    Ok(out)
}

fn bench_converge() -> Result<()> {
    let mut results = Vec::new();
    for nodes in [5usize, 50] {
        results.push((nodes, join_latency(nodes, JOINS)?));
    }
    header(
        &format!(
            "converge: a new node's lease -> its route on every node (vxlan), {JOINS} joins each"
        ),
        "ms",
    );
    for (nodes, lat) in &results {
        let mut last: Vec<Duration> = lat.iter().map(|l| l.last).collect();
        last.sort();
        let p = |q| millis(twill_tests::bench::quantile(&last, q));
        let lasts: Vec<f64> = last.iter().map(|d| millis(*d)).collect();
        let medians: Vec<f64> = lat.iter().map(|l| millis(l.median)).collect();
        let acks: Vec<f64> = lat.iter().map(|l| millis(l.acked)).collect();
        row(
            &format!("{nodes} nodes: route on the last node"),
            &lasts,
            1,
            &format!("p50 {:.1}, p99 {:.1}", p(0.5), p(0.99)),
        );
        row(
            &format!("{nodes} nodes: route on half the nodes"),
            &medians,
            1,
            "",
        );
        row(
            &format!("{nodes} nodes: Acquire acknowledged"),
            &acks,
            1,
            "",
        );
    }
    Ok(())
}

fn iperf(client_ns: &str, server_ns: &str, server_addr: &str) -> Result<f64> {
    let mut server = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args(["netns", "exec", client_ns, "iperf3", "-c", server_addr])
        .args(["-t", "3", "-O", "1", "-J"])
        .output();
    let _ = server.kill();
    let _ = server.wait();
    let out = out?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 output")?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .with_context(|| format!("iperf3 gave no throughput: {}", v["error"]))
}

/// A 2-node sandbox running twill with `backend`, a pod on each node; (client pod, server pod,
/// server address).
fn twill_path(backend: &str) -> Result<(Topology, String, String, String)> {
    let mut t = Topology::new(&format!("d{}", &backend[..1]), 2, &twill_bin()?)?;
    t.agent_resync = "5s".into();
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
            bail!("twill {backend}: pods never reached each other");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (a, b, addr) = (
        t.pods[0].ns.clone(),
        t.pods[1].ns.clone(),
        t.pods[1].addr.clone(),
    );
    Ok((t, a, b, addr))
}

/// The same two-node pod path made by hand with `ip`; its namespaces go on drop.
struct HandPath {
    namespaces: Vec<String>,
}

impl Drop for HandPath {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sysctl(ns: &str, kv: &str) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w", kv])
        .output()?;
    if !out.status.success() {
        bail!(
            "{ns}: sysctl {kv}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Node `i` (1, 2) at 192.0.2.i with pod subnet 10.244.i.0/24: cni0 = 10.244.i.1, its pod at
/// 10.244.i.2 behind a veth of `mtu`; between the nodes a VXLAN device as twill makes it
/// (flannel's layout) or a route via the other node. With `masquerade`, each node also gets
/// the nftables table twill's agent writes by default, so the kernel tracks every connection
/// through the node as it does on twill's nodes.
fn hand_path(vxlan: bool, masquerade: bool) -> Result<HandPath> {
    let id = std::process::id();
    let kind = hand_kind(vxlan, masquerade);
    let underlay = format!("tw-hand-ul{kind}{id}");
    let node = |i| format!("tw-hand-n{i}{kind}{id}");
    let pod = |i| format!("tw-hand-p{i}{kind}{id}");
    let mut h = HandPath {
        namespaces: vec![underlay.clone()],
    };
    ip(&["netns", "add", &underlay])?;
    ip(&["-n", &underlay, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &underlay, "link", "set", "br0", "up"])?;
    let mtu = if vxlan { "1450" } else { "1500" };
    let mac = |i: u8| format!("0a:58:0a:f4:{i:02x}:00");
    for i in [1u8, 2] {
        let (n, p) = (node(i), pod(i));
        h.namespaces.push(n.clone());
        attach_to_bridge(&n, i, &underlay)?;
        sysctl(&n, "net.ipv4.ip_forward=1")?;
        if masquerade {
            nft_script(&n, &masquerade_table())?;
        }
        ip(&[
            "-n", &n, "link", "add", "cni0", "mtu", mtu, "type", "bridge",
        ])?;
        ip(&[
            "-n",
            &n,
            "addr",
            "add",
            &format!("10.244.{i}.1/24"),
            "dev",
            "cni0",
        ])?;
        ip(&["-n", &n, "link", "set", "cni0", "up"])?;
        h.namespaces.push(p.clone());
        ip(&["netns", "add", &p])?;
        ip(&["-n", &p, "link", "set", "lo", "up"])?;
        ip(&[
            "-n", &n, "link", "add", "veth0", "mtu", mtu, "type", "veth", "peer", "name", "eth0",
            "mtu", mtu, "netns", &p,
        ])?;
        ip(&["-n", &n, "link", "set", "veth0", "master", "cni0"])?;
        ip(&["-n", &n, "link", "set", "veth0", "up"])?;
        ip(&[
            "-n",
            &p,
            "addr",
            "add",
            &format!("10.244.{i}.2/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &p, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &p,
            "route",
            "add",
            "default",
            "via",
            &format!("10.244.{i}.1"),
        ])?;
        if vxlan {
            let local = format!("192.0.2.{i}");
            ip(&[
                "-n",
                &n,
                "link",
                "add",
                "vx.1",
                "address",
                &mac(i),
                "mtu",
                "1450",
                "type",
                "vxlan",
                "id",
                "1",
                "local",
                &local,
                "dev",
                "eth0",
                "dstport",
                "8472",
                "nolearning",
            ])?;
            ip(&[
                "-n",
                &n,
                "addr",
                "add",
                &format!("10.244.{i}.0/32"),
                "dev",
                "vx.1",
            ])?;
            ip(&["-n", &n, "link", "set", "vx.1", "up"])?;
        }
    }
    for (i, j) in [(1u8, 2u8), (2, 1)] {
        let n = node(i);
        let (remote_subnet, remote_gw, remote_node) = (
            format!("10.244.{j}.0/24"),
            format!("10.244.{j}.0"),
            format!("192.0.2.{j}"),
        );
        if vxlan {
            ip(&[
                "-n",
                &n,
                "neigh",
                "add",
                &remote_gw,
                "lladdr",
                &mac(j),
                "dev",
                "vx.1",
                "nud",
                "permanent",
            ])?;
            let out = Command::new("bridge")
                .args(["-n", &n, "fdb", "append", &mac(j), "dev", "vx.1"])
                .args(["dst", &remote_node, "self", "permanent"])
                .output()?;
            if !out.status.success() {
                bail!(
                    "{n}: bridge fdb append: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            ip(&[
                "-n",
                &n,
                "route",
                "add",
                &remote_subnet,
                "via",
                &remote_gw,
                "dev",
                "vx.1",
                "onlink",
            ])?;
        } else {
            ip(&[
                "-n",
                &n,
                "route",
                "add",
                &remote_subnet,
                "via",
                &remote_node,
                "dev",
                "eth0",
            ])?;
        }
    }
    let ping = Command::new("ip")
        .args(["netns", "exec", &pod(1), "ping", "-c", "1", "-W", "2"])
        .arg("10.244.2.2")
        .output()?;
    if !ping.status.success() {
        bail!("by hand ({kind}): the pods do not reach each other");
    }
    Ok(h)
}

/// The namespaces' tag of a hand-made path: v(xlan) or g(ateway), m when masqueraded.
fn hand_kind(vxlan: bool, masquerade: bool) -> String {
    let k = if vxlan { "v" } else { "g" };
    if masquerade {
        format!("{k}m")
    } else {
        k.to_string()
    }
}

/// What twill's agent writes for the topology's cluster network, 10.244.0.0/16.
fn masquerade_table() -> String {
    twill_agent::masquerade::ruleset(&twill_agent::masquerade::Networks {
        v4: Some("10.244.0.0/16".parse().expect("a valid network")),
        v6: None,
    })
}

fn bench_dataplane() -> Result<()> {
    if Command::new("iperf3").arg("--version").output().is_err() {
        println!();
        println!("dataplane: iperf3 is not installed (apt-get install iperf3); not measured");
        return Ok(());
    }
    let id = std::process::id();
    let (_tv, tv_a, tv_b, tv_addr) = twill_path("vxlan")?;
    let (_tg, tg_a, tg_b, tg_addr) = twill_path("host-gw")?;
    // By hand as a plain path, and with twill's masquerade table (the same netfilter state as
    // twill's nodes): vxlan, then host-gw.
    let _paths = [
        hand_path(true, false)?,
        hand_path(true, true)?,
        hand_path(false, false)?,
        hand_path(false, true)?,
    ];
    let pods = |vxlan: bool, masquerade: bool| {
        let k = hand_kind(vxlan, masquerade);
        (format!("tw-hand-p1{k}{id}"), format!("tw-hand-p2{k}{id}"))
    };
    // Per round and backend: (twill, by hand, by hand with the masquerade table).
    let mut vx: Vec<[f64; 3]> = Vec::new();
    let mut gw: Vec<[f64; 3]> = Vec::new();
    for round in 0..DATAPLANE_ROUNDS {
        // Each of the three goes first, second and third in turn.
        let measure = |paths: [(&str, &str, &str); 3]| -> Result<[f64; 3]> {
            let mut got = [0.0; 3];
            for k in 0..3 {
                let i = (round + k) % 3;
                let (a, b, addr) = paths[i];
                got[i] = iperf(a, b, addr)?;
            }
            Ok(got)
        };
        let (hv, hvm) = (pods(true, false), pods(true, true));
        vx.push(measure([
            (&tv_a, &tv_b, &tv_addr),
            (&hv.0, &hv.1, "10.244.2.2"),
            (&hvm.0, &hvm.1, "10.244.2.2"),
        ])?);
        let (hg, hgm) = (pods(false, false), pods(false, true));
        gw.push(measure([
            (&tg_a, &tg_b, &tg_addr),
            (&hg.0, &hg.1, "10.244.2.2"),
            (&hgm.0, &hgm.1, "10.244.2.2"),
        ])?);
    }
    header(
        &format!(
            "dataplane: iperf3 pod to pod, 3 s after 1 s omitted, {DATAPLANE_ROUNDS} rounds, the order rotating"
        ),
        "Gbit/s; ratios per round",
    );
    let all = |xs: &[f64]| {
        xs.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (name, runs) in [("vxlan", &vx), ("host-gw", &gw)] {
        let col = |i: usize| runs.iter().map(|r| r[i]).collect::<Vec<f64>>();
        let (twill, hand, masq) = (col(0), col(1), col(2));
        row(&format!("{name}: twill"), &twill, 2, &all(&twill));
        row(&format!("{name}: by hand"), &hand, 2, &all(&hand));
        row(
            &format!("{name}: by hand + masquerade table"),
            &masq,
            2,
            &all(&masq),
        );
        for (label, other) in [("by hand", &hand), ("by hand + masq.", &masq)] {
            let ratios: Vec<f64> = twill.iter().zip(other.iter()).map(|(t, h)| t / h).collect();
            row(
                &format!("{name}: twill / {label}"),
                &ratios,
                3,
                &format!("ratio of medians {:.3}", spread(&twill).0 / spread(other).0),
            );
        }
        let cost: Vec<f64> = masq.iter().zip(hand.iter()).map(|(m, h)| m / h).collect();
        row(
            &format!("{name}: masq. table's own cost, by hand"),
            &cost,
            3,
            "by hand + masquerade table / by hand",
        );
    }
    Ok(())
}

const SECTIONS: [&str; 6] = [
    "program",
    "table",
    "memory",
    "churn",
    "converge",
    "dataplane",
];

fn main() -> Result<()> {
    if !is_root() {
        bail!("bench-agent creates network namespaces: run it as root");
    }
    let mut chosen: Vec<String> = std::env::args().skip(1).collect();
    if let Some(bad) = chosen.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        bail!("unknown section {bad:?}; sections: {}", SECTIONS.join(", "));
    }
    if chosen.is_empty() {
        chosen = SECTIONS.iter().map(|s| s.to_string()).collect();
    }
    println!(
        "agent benchmark, {} cores, twill binary {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        twill_bin()?.display()
    );
    for s in &chosen {
        match s.as_str() {
            "program" => bench_program()?,
            "table" => bench_table()?,
            "memory" => bench_memory()?,
            "churn" => bench_churn()?,
            "converge" => bench_converge()?,
            _ => bench_dataplane()?,
        }
    }
    Ok(())
}
