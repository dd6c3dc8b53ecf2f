//! Controller benchmark on a 3-member loopback cluster of real processes, twill and etcd in
//! the same run. Run it with `scripts/bench [SCENARIO]` (release builds of this and of `twill`);
//! `all`, the default, runs every scenario in turn:
//!
//! - `acquisitions`: acquisitions/s and latency with 1 and 64 clients, leader SIGKILL → next
//!   acknowledged write (5 rounds), the leader's RSS at 10,000 leases.
//! - `failover [ROUNDS] [-- MEMBER FLAGS]`: leader SIGKILL → next acknowledged write only, with
//!   the election's time and terms, and the spread over the rounds.
//! - `memory [MEMBERS [SNAPSHOT_EVERY]]`: fills a cluster of MEMBERS (default 3) to 65,535
//!   leases and prints each member's RSS along the way, the highest RSS seen between two lines
//!   (where snapshots are built) and the snapshots each member wrote. Members snapshot every
//!   SNAPSHOT_EVERY log entries (default 4,096): 64 clients' writes share entries, so at the
//!   members' default of 10,000 a fill may end before the first snapshot. twill only.
//! - `watch [WATCHERS [WRITES [CONNECTIONS]]]`: watch fan-out (see [`twill_tests::fanout`]).
//! - `scale [AGENTS [CONNECTIONS [TTL_SECONDS]]] [-- MEMBER FLAGS]`: simulated agents (see
//!   [`twill_tests::scale`]), each member's CPU, and acquisitions under that load; etcd alone
//!   and under the same number of flannel agents.
//!
//! `--rounds N` repeats acquisitions, watch or scale (3, 3 and 1 times by default) and ends with
//! each figure's median and extremes over the rounds, and of each round's own ratio to etcd
//! (see [`twill_tests::rounds`]).
//!
//! Figures, never verdicts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use twill_client::{Client, ClientOptions};
use twill_proto::v1 as pb;
use twill_tests::bench::{self, ms, rss_kib, LoadResult};
use twill_tests::etcd::{EtcdCluster, FlannelEtcd};
use twill_tests::fanout;
use twill_tests::procs::TwillProcs;
use twill_tests::rounds::{Rounds, Sample};
use twill_tests::scale;

const SINGLE_OPS: usize = 1_000;
const CONCURRENT: usize = 64;
const TOTAL_LEASES: usize = 10_000;
const KILL_ROUNDS: usize = 5;

fn twill_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no directory")?;
    let bin = dir.join("twill");
    if !bin.exists() {
        bail!(
            "{} not found: build it first with `cargo build --release --bin twill` (scripts/bench does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Each member's worker threads: its share of the machine's cores, at least one. Three members
/// sized to the whole machine (two threads each on two cores, besides Raft's) spend their time
/// handing work between threads that wait for a core; a deployment gives each member a
/// machine of its own, or a share of one.
fn member_threads(members: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / members.max(1)).max(1)
}

/// Starts `members` members with the `extra` flags, each on [`member_threads`] unless `extra`
/// sets `--threads`; with `logs`, each member's log goes to a file.
async fn cluster(
    members: usize,
    dir: &std::path::Path,
    extra: &[&str],
    logs: bool,
) -> Result<TwillProcs> {
    let threads = member_threads(members).to_string();
    let mut flags = extra.to_vec();
    if !flags.iter().any(|f| f.starts_with("--threads")) {
        flags.extend(["--threads", threads.as_str()]);
    }
    TwillProcs::start_with(&twill_bin()?, members, dir, &flags, logs).await
}

/// How long the benchmark's clients give one call before trying again. Under thousands of
/// watchers (`scale`) an acquisition waits seconds in either system's queue, where the bound
/// decides how often a call is abandoned and sent again, so etcd's clients there get the same
/// bound as twill's.
const CLIENT_ATTEMPT: Duration = Duration::from_secs(5);

fn client(urls: &[String]) -> Result<Client> {
    Ok(Client::with_options(
        urls,
        ClientOptions {
            retry_for: Duration::from_secs(60),
            attempt_timeout: CLIENT_ATTEMPT,
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            tls: Some(twill_tests::admin_tls()),
            fail_when_none_listens: false,
        },
    )?)
}

async fn twill_acquire(c: &Client, node: String) -> Result<()> {
    let r = c
        .acquire(pb::AcquireRequest {
            node,
            public_ip: "192.0.2.1".into(),
            ..Default::default()
        })
        .await?;
    if r.lease.is_none() {
        bail!("answer without a lease");
    }
    Ok(())
}

struct Figures {
    single: LoadResult,
    many: LoadResult,
    failover: Vec<Duration>,
    elections: Vec<Duration>,
    rss_kib: Vec<Option<u64>>,
}

async fn bench_twill() -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let mut cl = cluster(
        3,
        dir.path(),
        &["--network", "10.0.0.0/8", "--subnet-len", "24"],
        false,
    )
    .await?;
    let urls = cl.urls();

    let single = bench::run(vec![client(&urls)?], SINGLE_OPS, |c, n| async move {
        twill_acquire(&c, format!("single-{n:06}")).await
    })
    .await?;
    let clients = (0..CONCURRENT)
        .map(|_| client(&urls))
        .collect::<Result<Vec<_>>>()?;
    let many = bench::run(clients, TOTAL_LEASES - SINGLE_OPS, |c, n| async move {
        twill_acquire(&c, format!("many-{n:06}")).await
    })
    .await?;

    let leader = cl.wait_leader(Duration::from_secs(10)).await?;
    let listed = client(&urls)?.list_leases().await?.leases.len();
    if listed != TOTAL_LEASES {
        bail!("expected {TOTAL_LEASES} leases, the cluster lists {listed}");
    }
    let rss_kib: Vec<Option<u64>> = (0..3).map(|i| cl.pid(i).and_then(rss_kib)).collect();
    let rss_leader = rss_kib[leader];

    let (failover, elections, _) = failover_twill(&mut cl, KILL_ROUNDS).await?;
    let mut rss_kib = rss_kib;
    rss_kib.push(rss_leader);
    Ok(Figures {
        single,
        many,
        failover,
        elections,
        rss_kib,
    })
}

/// Leader SIGKILL → next acknowledged write, and → a new leader elected, `rounds` times; and
/// the terms each election took (more than one: a split vote or a failed election).
async fn failover_twill(
    cl: &mut TwillProcs,
    rounds: usize,
) -> Result<(Vec<Duration>, Vec<Duration>, Vec<u64>)> {
    let urls = cl.urls();
    let mut failover = Vec::new();
    let mut elections = Vec::new();
    let mut terms = Vec::new();
    let c = client(&urls)?;
    for round in 0..rounds {
        let leader = cl.wait_leader(Duration::from_secs(30)).await?;
        // Warm the client's connection to every member first.
        twill_acquire(&c, format!("warm-{round}")).await?;
        let survivors: Vec<String> = (0..3)
            .filter(|i| *i != leader)
            .map(|i| urls[i].clone())
            .collect();
        let old_id = leader as u64 + 1;
        let old_term = Client::status_of(&urls[leader], Some(twill_tests::admin_tls()))
            .await?
            .term;
        let killed = Instant::now();
        cl.kill(leader);
        let elected = tokio::spawn(async move {
            loop {
                for u in &survivors {
                    if let Ok(s) = Client::status_of(u, Some(twill_tests::admin_tls())).await {
                        if s.state == "leader" && s.id != old_id {
                            return (killed.elapsed(), s.term);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        twill_acquire(&c, format!("after-kill-{round}")).await?;
        failover.push(killed.elapsed());
        let (took, term) = elected.await?;
        elections.push(took);
        terms.push(term.saturating_sub(old_term));
        cl.restart(leader)?;
        cl.wait_caught_up(Duration::from_secs(30)).await?;
    }
    Ok((failover, elections, terms))
}

async fn bench_etcd() -> Result<Figures> {
    let dir = tempfile::tempdir()?;
    let mut cl = EtcdCluster::start(3, dir.path()).await?;
    let eps = cl.endpoints();
    // 10.0.0.0/8 in /24s: room for the 10,000 leases with few random collisions.
    let network: ipnet::Ipv4Net = "10.0.0.0/8".parse()?;
    let client = || FlannelEtcd::new(eps.clone(), network, 24);
    let single = bench::run(vec![client()?], SINGLE_OPS, |c, n| async move {
        c.acquire(&format!("single-{n:06}")).await.map(|_| ())
    })
    .await?;
    let clients = (0..CONCURRENT).map(|_| client()).collect::<Result<_>>()?;
    let many = bench::run(clients, TOTAL_LEASES - SINGLE_OPS, |c, n| async move {
        c.acquire(&format!("many-{n:06}")).await.map(|_| ())
    })
    .await?;
    let leader = cl.wait_leader(Duration::from_secs(10)).await?;
    let mut rss_kib: Vec<Option<u64>> = (0..3).map(|i| cl.pid(i).and_then(rss_kib)).collect();
    let rss_leader = rss_kib[leader];

    let failover = failover_etcd(&mut cl, &client()?, KILL_ROUNDS).await?;
    rss_kib.push(rss_leader);
    Ok(Figures {
        single,
        many,
        failover,
        // Not measured for etcd: the figure that matters is the next acknowledged write.
        elections: Vec::new(),
        rss_kib,
    })
}

async fn failover_etcd(
    cl: &mut EtcdCluster,
    c: &FlannelEtcd,
    rounds: usize,
) -> Result<Vec<Duration>> {
    let mut failover = Vec::new();
    for round in 0..rounds {
        let leader = cl.wait_leader(Duration::from_secs(30)).await?;
        c.acquire(&format!("warm-{round}")).await?;
        let killed = Instant::now();
        cl.kill(leader);
        c.acquire(&format!("after-kill-{round}")).await?;
        failover.push(killed.elapsed());
        cl.restart(leader).await?;
        cl.wait_leader(Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(failover)
}

/// `bench-controller failover [ROUNDS] [-- MEMBER FLAGS…]`: leader SIGKILL → next acknowledged
/// write only, on a cluster holding a few leases, twill (with the member flags given, e.g.
/// `--election-timeout 150ms`) then etcd, and the spread over the rounds.
async fn failover_only(rounds: usize, flags: &[String]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut extra: Vec<&str> = vec!["--network", "10.0.0.0/8", "--subnet-len", "24"];
    extra.extend(flags.iter().map(String::as_str));
    let mut cl = cluster(3, dir.path(), &extra, false).await?;
    let (t, el, terms) = failover_twill(&mut cl, rounds).await?;
    drop(cl);
    println!(
        "twill (member flags: {}):",
        if flags.is_empty() {
            "defaults".to_string()
        } else {
            flags.join(" ")
        }
    );
    spread("leader SIGKILL -> next acknowledged write", &t);
    spread("leader SIGKILL -> new leader elected", &el);
    println!(
        "  elections won in the first term: {} of {}; terms taken: {:?}",
        terms.iter().filter(|t| **t == 1).count(),
        terms.len(),
        terms
    );
    if !EtcdCluster::available() {
        println!("etcd: not installed (apt-get install etcd-server); no comparison in this run");
        return Ok(());
    }
    let edir = tempfile::tempdir()?;
    let mut ecl = EtcdCluster::start(3, edir.path()).await?;
    let network: ipnet::Ipv4Net = "10.0.0.0/8".parse()?;
    let c = FlannelEtcd::new(ecl.endpoints(), network, 24)?;
    let e = failover_etcd(&mut ecl, &c, rounds).await?;
    println!("etcd 3.4:");
    spread("leader SIGKILL -> next acknowledged write", &e);
    let med = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        bench::quantile(&v, 0.5).as_secs_f64() * 1000.0
    };
    println!("same run, twill vs etcd:");
    ratio(
        "leader SIGKILL -> next write (median)",
        med(&t),
        med(&e),
        "ms",
    );
    Ok(())
}

/// Watch fan-out (see [`twill_tests::fanout`]), twill then etcd, same run: one round.
async fn bench_watch(watchers: usize, writes: usize, connections: usize) -> Result<Vec<Sample>> {
    let show = |name: &str, f: &fanout::Fanout| {
        println!(
            "{name}: {} watchers on {connections} connections, {} writes ({:.0}/s): ack -> last watcher's receipt p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; writes some watcher missed: {}",
            f.watchers,
            f.lag_ms.len() + f.missed,
            f.writes_per_s,
            f.quantile(0.5),
            f.quantile(0.99),
            f.quantile(1.0),
            f.missed
        );
        let members: Vec<String> = f
            .member_ms
            .iter()
            .enumerate()
            .map(|(i, (p50, p99))| format!("member {} {p50:.1} / {p99:.1} ms", i + 1))
            .collect();
        println!(
            "  p50 / p99 to the last watcher of each member: {}",
            members.join(", ")
        );
    };
    let dir = tempfile::tempdir()?;
    let cl = cluster(
        3,
        dir.path(),
        &["--network", "10.0.0.0/8", "--subnet-len", "24"],
        false,
    )
    .await?;
    let t = fanout::twill(
        &cl.urls(),
        twill_tests::admin_tls(),
        watchers,
        writes,
        connections,
    )
    .await
    .context("twill watch fan-out")?;
    drop(cl);
    show("twill", &t);
    let samples = |e: Option<&fanout::Fanout>| {
        vec![
            Sample::new(
                "ack -> last watcher, p50",
                "ms",
                t.quantile(0.5),
                e.map(|e| e.quantile(0.5)),
            ),
            Sample::new(
                "ack -> last watcher, p99",
                "ms",
                t.quantile(0.99),
                e.map(|e| e.quantile(0.99)),
            ),
        ]
    };
    if !EtcdCluster::available() {
        println!("etcd: not installed (apt-get install etcd-server); no comparison in this run");
        return Ok(samples(None));
    }
    let edir = tempfile::tempdir()?;
    let ecl = EtcdCluster::start(3, edir.path()).await?;
    let e = fanout::etcd(&ecl.endpoints(), watchers, writes, connections)
        .await
        .context("etcd watch fan-out")?;
    drop(ecl);
    show("etcd 3.4", &e);
    println!("same run, twill vs etcd:");
    ratio(
        "ack -> last watcher, p50",
        t.quantile(0.5),
        e.quantile(0.5),
        "ms",
    );
    ratio(
        "ack -> last watcher, p99",
        t.quantile(0.99),
        e.quantile(0.99),
        "ms",
    );
    Ok(samples(Some(&e)))
}

/// `scale`: AGENTS simulated agents (see [`twill_tests::scale`]) on a 3-member cluster with a
/// lease TTL of `ttl` (renewals when a third is left), each member's CPU over a quiet window,
/// then 64 clients' acquisitions while the agents go on; then etcd alone, and etcd under the
/// same agents as flannel's put on it, same run.
async fn bench_scale(
    agents: usize,
    connections: usize,
    ttl: Duration,
    flags: &[String],
) -> Result<Vec<Sample>> {
    let ttl_flag = format!("{}s", ttl.as_secs());
    let dir = tempfile::tempdir()?;
    let mut extra: Vec<&str> = vec![
        "--network",
        "10.0.0.0/8",
        "--subnet-len",
        "24",
        "--lease-ttl",
        &ttl_flag,
    ];
    extra.extend(flags.iter().map(String::as_str));
    let cl = cluster(3, dir.path(), &extra, true).await?;
    let urls = cl.urls();
    if !flags.is_empty() {
        println!("twill member flags: {}", flags.join(" "));
    }
    let sim = scale::start(&urls, twill_tests::admin_tls(), agents, connections, ttl).await?;
    let leader = cl.wait_leader(Duration::from_secs(10)).await?;
    println!(
        "twill: {agents} agents over {} connections joined (lease + watch) in {:.1} s; lease TTL {} s, health every {} s",
        connections.min(agents),
        sim.joined_in.as_secs_f64(),
        ttl.as_secs(),
        scale::HEALTH_EVERY.as_secs()
    );
    let clients = (0..CONCURRENT)
        .map(|_| client(&urls))
        .collect::<Result<Vec<_>>>()?;
    let pids: Vec<Option<u32>> = (0..3).map(|i| cl.pid(i)).collect();
    let t = under_load(
        &pids,
        leader,
        &sim.counters,
        true,
        clients,
        |c, n| async move { twill_acquire(&c, format!("load-{n:06}")).await },
    )
    .await;
    let joined_in = sim.joined_in;
    sim.finish().context("twill's agents")?;
    drop(cl);
    let t = t?;
    let samples = |alone: Option<&LoadResult>, loaded: Option<&LoadResult>| {
        let p99 = |l: &LoadResult| l.p99.as_secs_f64() * 1e3;
        vec![
            Sample::new(
                format!("acquisitions/s, {CONCURRENT} clients, both under the agents"),
                "/s",
                t.per_sec(),
                loaded.map(LoadResult::per_sec),
            ),
            Sample::new(
                format!("p99 latency, {CONCURRENT} clients, both under the agents"),
                "ms",
                p99(&t),
                loaded.map(p99),
            ),
            Sample::new(
                format!("acquisitions/s, {CONCURRENT} clients, twill under the agents, etcd alone"),
                "/s",
                t.per_sec(),
                alone.map(LoadResult::per_sec),
            ),
        ]
    };
    if !EtcdCluster::available() {
        println!("etcd: not installed (apt-get install etcd-server); no comparison in this run");
        return Ok(samples(None, None));
    }
    let network: ipnet::Ipv4Net = "10.0.0.0/8".parse()?;
    let etcd_clients = |eps: &[String]| {
        (0..CONCURRENT)
            .map(|_| {
                FlannelEtcd::new(eps.to_vec(), network, 24)
                    .map(|c| c.with_attempt_timeout(CLIENT_ATTEMPT))
            })
            .collect::<Result<Vec<_>>>()
    };
    let etcd_acquire = |c: Arc<FlannelEtcd>, n: usize| async move {
        c.acquire(&format!("load-{n:06}")).await.map(|_| ())
    };
    // etcd alone, on a cluster of its own.
    let e = {
        let edir = tempfile::tempdir()?;
        let ecl = EtcdCluster::start(3, edir.path()).await?;
        bench::run(etcd_clients(&ecl.endpoints())?, LOADED_OPS, etcd_acquire).await?
    };
    println!(
        "etcd 3.4, no other load: acquisitions/s, {CONCURRENT} clients: {:.0} (p50 {}, p99 {})",
        e.per_sec(),
        ms(e.p50),
        ms(e.p99)
    );
    // etcd under the same agents, on a fresh cluster.
    let edir = tempfile::tempdir()?;
    let ecl = EtcdCluster::start(3, edir.path()).await?;
    let eps = ecl.endpoints();
    let esim = scale::start_etcd(&eps, agents, connections, network, 24).await?;
    let eleader = ecl.wait_leader(Duration::from_secs(10)).await?;
    println!(
        "etcd 3.4: {agents} flannel agents over {} connections joined (lease + watch of the subnets) in {:.1} s (twill {:.1} s)",
        connections.min(agents),
        esim.joined_in.as_secs_f64(),
        joined_in.as_secs_f64()
    );
    let pids: Vec<Option<u32>> = (0..3).map(|i| ecl.pid(i)).collect();
    let l = under_load(
        &pids,
        eleader,
        &esim.counters,
        false,
        etcd_clients(&eps)?,
        etcd_acquire,
    )
    .await;
    esim.finish().context("etcd's agents")?;
    drop(ecl);
    let l = l?;
    compare(&format!("same run, both under {agents} agents:"), &t, &l);
    compare(
        &format!("same run, twill under {agents} agents vs etcd alone:"),
        &t,
        &e,
    );
    Ok(samples(Some(&e), Some(&l)))
}

/// Acquisitions/s and p99, twill's against etcd's, under a heading.
fn compare(heading: &str, t: &LoadResult, e: &LoadResult) {
    println!("{heading}");
    ratio(
        &format!("acquisitions/s, {CONCURRENT} clients"),
        t.per_sec(),
        e.per_sec(),
        "/s",
    );
    ratio(
        &format!("p99 latency, {CONCURRENT} clients"),
        t.p99.as_secs_f64() * 1e3,
        e.p99.as_secs_f64() * 1e3,
        "ms",
    );
}

/// Acquisitions 64 clients make while simulated agents run (each one is an event to every
/// watcher).
const LOADED_OPS: usize = 3_000;

/// With simulated agents joined: past the joining, each member's CPU (`pids`, the leader at
/// `leader`) and the agents' own process over a quiet window, then [`LOADED_OPS`] acquisitions
/// by `clients` while the agents go on, with the CPU again. `renewing`: the agents renew and
/// report (twill's); flannel's on etcd do neither within a run.
async fn under_load<C, F, Fut>(
    pids: &[Option<u32>],
    leader: usize,
    counters: &scale::Counters,
    renewing: bool,
    clients: Vec<C>,
    op: F,
) -> Result<LoadResult>
where
    C: Send + Sync + 'static,
    F: Fn(Arc<C>, usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    const WINDOW: Duration = Duration::from_secs(30);
    type Sample = (Vec<Option<Duration>>, Option<Duration>, Instant);
    let sample = || -> Sample {
        (
            pids.iter().map(|p| p.and_then(scale::cpu_time)).collect(),
            scale::cpu_time(std::process::id()),
            Instant::now(),
        )
    };
    let show = |what: &str, a: &Sample, b: &Sample| {
        let secs = (b.2 - a.2).as_secs_f64();
        let used = |x: Option<Duration>, y: Option<Duration>| match (x, y) {
            (Some(x), Some(y)) => format!("{:.2}", (y - x).as_secs_f64() / secs),
            _ => "?".to_string(),
        };
        let members: Vec<String> = (0..pids.len())
            .map(|i| {
                format!(
                    "member {}{} {}",
                    i + 1,
                    if i == leader { " (leader)" } else { "" },
                    used(a.0[i], b.0[i])
                )
            })
            .collect();
        println!(
            "  {what}, cores used over {secs:.0} s: {}; the agents' own process {}",
            members.join(", "),
            used(a.1, b.1)
        );
    };
    let count = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (r0, h0, e0) = (
        count(&counters.renewals),
        count(&counters.reports),
        count(&counters.events),
    );
    let a = sample();
    tokio::time::sleep(WINDOW).await;
    let b = sample();
    show("agents alone", &a, &b);
    let secs = (b.2 - a.2).as_secs_f64();
    let per_s = |x: usize, y: usize| (y - x) as f64 / secs;
    let events = per_s(e0, count(&counters.events));
    if renewing {
        println!(
            "  per second: {:.0} renewals, {:.0} health reports, {events:.0} watch events delivered",
            per_s(r0, count(&counters.renewals)),
            per_s(h0, count(&counters.reports)),
        );
    } else {
        println!("  per second: {events:.0} watch events delivered");
    }
    println!(
        "  since the start: {} watches resumed, {} renewals or reports failed, {} agents failed",
        count(&counters.resumed),
        count(&counters.refused),
        count(&counters.failures)
    );
    let a = sample();
    let e0 = count(&counters.events);
    let t = bench::run(clients, LOADED_OPS, op).await?;
    let b = sample();
    show(&format!("{CONCURRENT} clients acquiring"), &a, &b);
    println!(
        "  acquisitions/s, {CONCURRENT} clients, under the agents' load: {:.0} (p50 {}, p99 {}); {:.0} watch events delivered a second meanwhile",
        t.per_sec(),
        ms(t.p50),
        ms(t.p99),
        (count(&counters.events) - e0) as f64 / (b.2 - a.2).as_secs_f64()
    );
    Ok(t)
}

/// Median, 10th and 90th percentiles and the extremes of a set of durations.
fn spread(name: &str, v: &[Duration]) {
    let mut v = v.to_vec();
    v.sort();
    println!(
        "  {name:<44} median {:>9}  p10 {:>9}  p90 {:>9}  min {:>9}  max {:>9}  ({} rounds)",
        ms(bench::quantile(&v, 0.5)),
        ms(bench::quantile(&v, 0.1)),
        ms(bench::quantile(&v, 0.9)),
        ms(v.first().copied().unwrap_or_default()),
        ms(v.last().copied().unwrap_or_default()),
        v.len()
    );
}

fn ratio(name: &str, twill: f64, etcd: f64, unit: &str) {
    println!(
        "  {name:<44} twill {twill:>9.1} {unit:<5} etcd {etcd:>9.1} {unit:<5} ratio {:.2}",
        twill / etcd
    );
}

fn print(name: &str, f: &Figures) {
    let mut fo = f.failover.clone();
    fo.sort();
    println!("{name}:");
    println!(
        "  1 client:    {:>8.0} acquisitions/s  p50 {:>9}  p99 {:>9}  ({} ops)",
        f.single.per_sec(),
        ms(f.single.p50),
        ms(f.single.p99),
        f.single.ops
    );
    println!(
        "  {CONCURRENT} clients:  {:>8.0} acquisitions/s  p50 {:>9}  p99 {:>9}  ({} ops)",
        f.many.per_sec(),
        ms(f.many.p50),
        ms(f.many.p99),
        f.many.ops
    );
    println!(
        "  leader SIGKILL -> next acknowledged write: median {}, max {} ({} rounds)",
        ms(bench::quantile(&fo, 0.5)),
        ms(fo.last().copied().unwrap_or_default()),
        fo.len()
    );
    if !f.elections.is_empty() {
        let mut el = f.elections.clone();
        el.sort();
        println!(
            "  leader SIGKILL -> new leader elected:     median {}, max {}",
            ms(bench::quantile(&el, 0.5)),
            ms(el.last().copied().unwrap_or_default())
        );
    }
    let rss: Vec<String> = f
        .rss_kib
        .iter()
        .take(3)
        .map(|r| {
            r.map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                .unwrap_or("-".into())
        })
        .collect();
    println!(
        "  RSS at {TOTAL_LEASES} leases: leader {}, members [{}]",
        f.rss_kib
            .last()
            .copied()
            .flatten()
            .map(|k| format!("{:.1} MB", k as f64 / 1024.0))
            .unwrap_or("-".into()),
        rss.join(", ")
    );
}

/// Leases of the memory fill: every /24 of 10.0.0.0/8 the allocator hands out (65,536 less
/// one it keeps back), issue 15's figure.
const MEMORY_LEASES: usize = 65_535;
/// Lease counts at which `memory` prints a line.
const MEMORY_MARKS: &[usize] = &[
    1_000,
    5_000,
    10_000,
    15_000,
    20_000,
    25_000,
    30_000,
    35_000,
    40_000,
    45_000,
    50_000,
    55_000,
    60_000,
    62_000,
    63_000,
    64_000,
    65_000,
    MEMORY_LEASES,
];

/// What the sampler has seen of one member since the last printed line.
#[derive(Clone, Copy, Default)]
struct MemberMemory {
    rss_kib: u64,
    peak_kib: u64,
    snapshots: usize,
    snapshot_mtime: Option<SystemTime>,
}

fn mb(kib: u64) -> String {
    format!("{:>6.1}", kib as f64 / 1024.0)
}

async fn bench_memory(members: usize, snapshot_every: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let every = snapshot_every.to_string();
    let cl = cluster(
        members,
        dir.path(),
        &[
            "--network",
            "10.0.0.0/8",
            "--subnet-len",
            "24",
            "--snapshot-every",
            &every,
        ],
        false,
    )
    .await?;
    let urls = cl.urls();
    let pids: Vec<Option<u32>> = (0..members).map(|i| cl.pid(i)).collect();
    let snapshot_files: Vec<PathBuf> = (0..members)
        .map(|i| cl.data_dir(i).join("snapshot.bin"))
        .collect();
    let seen = Arc::new(Mutex::new(vec![MemberMemory::default(); members]));
    let stop = Arc::new(AtomicBool::new(false));
    // Sampled often enough to catch a snapshot build, which lasts a fraction of a second.
    let sampler = {
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                {
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    for (i, m) in seen.iter_mut().enumerate() {
                        if let Some(k) = pids[i].and_then(rss_kib) {
                            m.rss_kib = k;
                            m.peak_kib = m.peak_kib.max(k);
                        }
                        let mtime = std::fs::metadata(&snapshot_files[i])
                            .and_then(|md| md.modified())
                            .ok();
                        if mtime.is_some() && mtime != m.snapshot_mtime {
                            m.snapshots += 1;
                            m.snapshot_mtime = mtime;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let print_line = |label: &str| {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let cols: Vec<String> = seen
            .iter()
            .map(|m| {
                format!(
                    "{} (peak {}, {} snap)",
                    mb(m.rss_kib),
                    mb(m.peak_kib),
                    m.snapshots
                )
            })
            .collect();
        println!("{label:>10}  {}", cols.join("  "));
        for m in seen.iter_mut() {
            m.peak_kib = m.rss_kib;
        }
    };
    println!(
        "memory over a fill to {MEMORY_LEASES} leases, {members} member(s) snapshotting every \
         {snapshot_every} log entries, RSS in MB per member (the peak is the highest sample \
         since the line before; snap = snapshots written so far)"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    print_line("start");
    let clients = (0..CONCURRENT)
        .map(|_| client(&urls))
        .collect::<Result<Vec<_>>>()?;
    let clients: Vec<Arc<Client>> = clients.into_iter().map(Arc::new).collect();
    let done = Arc::new(AtomicUsize::new(0));
    for &mark in MEMORY_MARKS {
        let base = done.load(Ordering::Relaxed);
        bench::run(clients.clone(), mark - base, move |c, n| async move {
            twill_acquire(&c, format!("node-{:06}", base + n)).await
        })
        .await?;
        done.store(mark, Ordering::Relaxed);
        print_line(&mark.to_string());
    }
    cl.wait_caught_up(Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    print_line("5 s idle");
    let listed = client(&urls)?.list_leases().await?.leases.len();
    println!("the cluster lists {listed} leases");
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    Ok(())
}

const USAGE: &str = "usage: bench-controller [all | acquisitions | failover [ROUNDS] [-- TWILL MEMBER FLAGS...] | memory [MEMBERS [SNAPSHOT_EVERY]] | watch [WATCHERS [WRITES [CONNECTIONS]]] | scale [AGENTS [CONNECTIONS [TTL_SECONDS]]] [-- TWILL MEMBER FLAGS...]] [--rounds N]
  all       every scenario below but scale in turn, with its defaults (memory with a snapshot
            every 300 entries) (the default)
  acquisitions  acquisitions/s and latency (1 and 64 clients), 5 leader kills, RSS at 10,000
            leases; twill then etcd
  failover  leader SIGKILL -> next acknowledged write only, ROUNDS times (20), twill then etcd;
            flags after -- go to every twill member (e.g. --election-timeout 150ms)
  memory    each member's RSS over a fill to 65,535 leases (3 members, a snapshot every 4,096
            entries), with the peak between lines; twill only
  watch     WATCHERS (1,000) watch streams over CONNECTIONS connections (one per watcher, as
            agents have) spread over the 3 members, one client writing WRITES (300) one at a
            time: from each write's acknowledgement to the last watcher's receipt; twill then
            etcd
  scale     AGENTS (10,000) simulated agents over CONNECTIONS (200) connections, each holding a
            lease (TTL_SECONDS, 86,400 as the cluster's default; renewed with a third left),
            watching and reporting health every 10 s: each member's CPU, then 64 clients'
            acquisitions under that load; then etcd's alone, and under as many flannel
            agents (each takes a subnet, then watches every subnet key)
  --rounds N  for acquisitions, watch and scale: run the scenario N times (twill then etcd
            in each round; 3 for acquisitions and watch, 1 for scale, whose round at 10,000
            agents took 12 - 14 minutes with etcd on 2 cores), then print each figure's median and extremes
            over the rounds and of each round's own ratio. failover's rounds are its ROUNDS";

/// `--rounds N` taken out of `args` (before any `--`, after which member flags begin).
fn take_rounds(args: &mut Vec<String>) -> Result<Option<usize>> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let Some(i) = args[..end].iter().position(|a| a == "--rounds") else {
        return Ok(None);
    };
    let n = args
        .get(i + 1)
        .filter(|_| i + 1 < end)
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .with_context(|| format!("--rounds needs a positive number\n{USAGE}"))?;
    args.drain(i..i + 2);
    Ok(Some(n))
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = take_rounds(&mut args)?;
    println!(
        "twill controller benchmark: 3 members on loopback, {} cores, each member on {} worker thread(s) (--threads) unless its flags say otherwise",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        member_threads(3)
    );
    match args.first().map(String::as_str) {
        None | Some("all" | "acquisitions") => {}
        Some("failover" | "memory") if rounds.is_some() => {
            bail!("--rounds is for acquisitions, watch and scale (failover's rounds are its ROUNDS; memory is one fill)\n{USAGE}")
        }
        Some("failover") => {
            let (ours, flags) = match args.iter().position(|a| a == "--") {
                Some(i) => (&args[1..i], &args[i + 1..]),
                None => (&args[1..], &args[args.len()..]),
            };
            let rounds = match ours.first() {
                None => 20,
                Some(n) => n
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("ROUNDS {n:?} is not a positive number\n{USAGE}"))?,
            };
            return failover_only(rounds, flags).await;
        }
        Some(s @ ("memory" | "watch" | "scale")) => {
            // Numbers end where member flags begin.
            let positional = &args[..args.iter().position(|a| a == "--").unwrap_or(args.len())];
            let number =
                |i: usize, what: &str, default: u64| -> Result<u64> {
                    match positional.get(i) {
                        None => Ok(default),
                        Some(n) => n.parse::<u64>().ok().filter(|n| *n > 0).with_context(|| {
                            format!("{what} {n:?} is not a positive number\n{USAGE}")
                        }),
                    }
                };
            if s == "scale" {
                let agents = number(1, "AGENTS", 10_000)? as usize;
                let connections = number(2, "CONNECTIONS", 200)? as usize;
                // The cluster's default TTL, 24 h, unless a shorter one is asked for.
                let ttl = Duration::from_secs(number(3, "TTL_SECONDS", 86_400)?);
                let flags = match args.iter().position(|a| a == "--") {
                    Some(i) => &args[i + 1..],
                    None => &args[args.len()..],
                };
                return in_rounds(rounds.unwrap_or(1), || {
                    bench_scale(agents, connections, ttl, flags)
                })
                .await;
            }
            if s == "watch" {
                let watchers = number(1, "WATCHERS", 1_000)? as usize;
                let writes = number(2, "WRITES", 300)? as usize;
                let connections = number(3, "CONNECTIONS", watchers as u64)? as usize;
                return in_rounds(rounds.unwrap_or(3), || {
                    bench_watch(watchers, writes, connections)
                })
                .await;
            }
            let members = number(1, "MEMBERS", 3)? as usize;
            let snapshot_every = number(2, "SNAPSHOT_EVERY", 4_096)?;
            return bench_memory(members, snapshot_every).await;
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        Some(other) => bail!("unknown scenario {other:?}\n{USAGE}"),
    }
    if args.is_empty() || args[0] == "all" {
        // Every scenario in turn, each with its defaults.
        println!("== acquisitions, 5 leader kills, RSS at {TOTAL_LEASES} leases");
        in_rounds(rounds.unwrap_or(3), bench_acquisitions).await?;
        println!("== failover, 20 rounds");
        failover_only(20, &[]).await?;
        println!("== watch fan-out");
        in_rounds(rounds.unwrap_or(3), || bench_watch(1_000, 300, 1_000)).await?;
        // A snapshot every 300 entries: at 4,096 a fill by 64 clients, whose writes share
        // entries, ends before the first snapshot, and snapshots are what memory is judged on.
        println!("== memory, a snapshot every 300 log entries");
        return bench_memory(3, 300).await;
    }
    in_rounds(rounds.unwrap_or(3), bench_acquisitions).await
}

/// Acquisitions with 1 and 64 clients, 5 leader kills and the leader's RSS at
/// [`TOTAL_LEASES`] leases, twill then etcd, and the ratios: one round.
async fn bench_acquisitions() -> Result<Vec<Sample>> {
    let t = bench_twill().await.context("twill benchmark")?;
    print("twill", &t);
    let e = if EtcdCluster::available() {
        Some(bench_etcd().await.context("etcd benchmark")?)
    } else {
        println!("etcd: not installed (apt-get install etcd-server); no comparison in this run");
        None
    };
    if let Some(e) = &e {
        print("etcd 3.4 (flannel's lease grant + create-if-absent txn)", e);
    }
    let med = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        bench::quantile(&v, 0.5).as_secs_f64() * 1000.0
    };
    let mb = |f: &Figures| f.rss_kib.last().copied().flatten().unwrap_or(0) as f64 / 1024.0;
    let p99 = |l: &LoadResult| l.p99.as_secs_f64() * 1e3;
    let both = |f: &dyn Fn(&Figures) -> f64| (f(&t), e.as_ref().map(f));
    let samples = [
        (
            "acquisitions/s, 1 client".to_string(),
            "/s",
            both(&|f| f.single.per_sec()),
        ),
        (
            "p99 latency, 1 client".to_string(),
            "ms",
            both(&|f| p99(&f.single)),
        ),
        (
            format!("acquisitions/s, {CONCURRENT} clients"),
            "/s",
            both(&|f| f.many.per_sec()),
        ),
        (
            format!("p99 latency, {CONCURRENT} clients"),
            "ms",
            both(&|f| p99(&f.many)),
        ),
        (
            "leader SIGKILL -> next write (median)".to_string(),
            "ms",
            both(&|f| med(&f.failover)),
        ),
        (
            format!("leader RSS at {TOTAL_LEASES} leases"),
            "MB",
            both(&mb),
        ),
    ]
    .into_iter()
    .map(|(name, unit, (t, e))| Sample::new(name, unit, t, e))
    .collect();
    let Some(e) = e else {
        return Ok(samples);
    };
    println!("same run, twill vs etcd:");
    ratio(
        "acquisitions/s, 1 client",
        t.single.per_sec(),
        e.single.per_sec(),
        "/s",
    );
    ratio(
        &format!("acquisitions/s, {CONCURRENT} clients"),
        t.many.per_sec(),
        e.many.per_sec(),
        "/s",
    );
    ratio(
        &format!("p99 latency, {CONCURRENT} clients"),
        t.many.p99.as_secs_f64() * 1e3,
        e.many.p99.as_secs_f64() * 1e3,
        "ms",
    );
    ratio(
        "leader SIGKILL -> next write (median)",
        med(&t.failover),
        med(&e.failover),
        "ms",
    );
    ratio(
        &format!("leader RSS at {TOTAL_LEASES} leases"),
        mb(&t),
        mb(&e),
        "MB",
    );
    Ok(samples)
}

/// Runs a scenario `rounds` times, twill then etcd in each, each round printed as it ends,
/// then the table over the rounds.
async fn in_rounds<F, Fut>(rounds: usize, mut one: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Sample>>>,
{
    let mut all = Rounds::default();
    for r in 0..rounds {
        if rounds > 1 {
            println!("-- round {} of {rounds}", r + 1);
        }
        all.add(one().await?);
    }
    print!("{}", all.table("etcd 3.4"));
    Ok(())
}
