//! BGP ingest benchmark (root): which receiver takes a full table fastest.
//!
//! An injector ([`twill_tests::inject`]) in its own namespace (192.0.2.200, AS 65000) has N
//! prefixes (default 100,000 /24s in 10.0.0.0/7) encoded before the session starts, packed as
//! a router sends a table (1,013 NLRI per UPDATE under one set of attributes, each message at
//! most 4,096 bytes, then End-of-RIB), and writes them in one go once the session is
//! established: a few milliseconds, so the receiver sets the pace. The session is eBGP, as from
//! a top-of-rack router, the outside peer a node takes a large table from (the nodes' own iBGP
//! mesh carries one subnet per node).
//!
//! Receivers, one at a time in each round, each in its own namespace on the same segment (AS
//! 64512): twill (the agent's own BGP path: `twill_agent::bgp::Runner` with the plan the agent
//! makes for an outside peer, and the agent's install path, `desired::compute` and
//! `Kernel::reconcile_reporting`, run whenever the speaker's routes change as the agent's bgp
//! backend does), BIRD 2 (a `kernel` protocol exporting into the main table) and GoBGP (no
//! kernel column: it installs routes only through FRR's zebra, which this bench does not run).
//!
//! Two times per receiver, both from the injector's first byte (the receiver's first prefix
//! follows it within the injector's send time, printed too):
//! - RIB: every prefix in the receiver's table. twill: the speaker's best paths as the agent
//!   sees them (exact); BIRD: `birdc show protocols all` (the protocol's imported-route counter,
//!   which costs BIRD no table walk); GoBGP: `gobgp global rib summary`. The two CLIs are
//!   polled back to back, so the figure is late by at most one query (its longest is printed);
//! - kernel: every route in the namespace's main table, seen on the rtnetlink route
//!   notifications as they happen ([`twill_tests::routewatch`]).
//!
//! Run it with `scripts/bench-bgp [--prefixes N] [--rounds R]`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use twill_agent::bgp::{plan, Local, Runner};
use twill_agent::desired::{compute, Backend, Input, LocalFacts, NodeLease};
use twill_agent::reconcile::{Kernel, ROUTE_PROTOCOL};
use twill_proto::settings::{BgpPeer, BgpSettings};
use twill_tests::bgp::{gobgp_conf, output_of, Lan};
use twill_tests::inject::{self, Injector, Sent, TABLE_RANGE};
use twill_tests::netns::{in_netns, in_netns_multi_thread, ip, is_root};
use twill_tests::routewatch::{self, Filled, Filter};

const LIMIT: Duration = Duration::from_secs(180);
const INJECTOR: u8 = 200;
const INJECTOR_AS: u32 = 65000;
const RECEIVER_AS: u32 = 64512;
const TWILL: u8 = 2;
const BIRD: u8 = 3;
const GOBGP: u8 = 4;
/// BIRD's route protocol number in the kernel (RTPROT_BIRD).
const BIRD_PROTOCOL: u8 = 12;

fn addr(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, host)
}

fn range() -> Ipv4Net {
    TABLE_RANGE.parse().expect("a valid prefix")
}

/// One receiver's round, times from the injector's first byte.
struct Round {
    sent: Sent,
    rib: Duration,
    rib_first: Option<Duration>,
    kernel: Option<Filled>,
    /// The longest RIB query (polled receivers).
    query: Option<Duration>,
}

impl Round {
    fn kernel(&self) -> Option<Duration> {
        self.kernel
            .map(|k| k.all.saturating_duration_since(self.sent.first_byte))
    }
}

/// The injector running in its namespace: when it sent, and how to stop it.
struct Running {
    sent: mpsc::Receiver<Sent>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<()>>,
}

fn start_injector(lan: &Lan, n: u32, to: u8) -> Result<Running> {
    let table = inject::table(n)?;
    let (sent_tx, sent) = mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let inj = Injector {
        local_as: INJECTOR_AS,
        router_id: addr(INJECTOR),
        peer: addr(to),
        hold_time: 90,
    };
    let ns = lan.ns(INJECTOR);
    let thread = std::thread::spawn(move || {
        in_netns(&ns, move || {
            Box::pin(inject::run(inj, table, sent_tx, stop_rx))
        })?
    });
    Ok(Running { sent, stop, thread })
}

impl Running {
    fn sent(&self) -> Result<Sent> {
        self.sent
            .recv_timeout(LIMIT)
            .context("the injector did not report its send")
    }

    fn finish(self) -> Result<()> {
        let _ = self.stop.send(());
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("injector thread panicked"))?
            .context("injector")
    }
}

/// Watches `host`'s main table for the injected routes of `protocol`; subscribed on return.
fn watch_kernel(
    lan: &Lan,
    host: u8,
    protocol: u8,
    n: u32,
) -> Result<(std::thread::JoinHandle<Result<Filled>>, Arc<AtomicBool>)> {
    let f = Filter {
        protocol,
        range: range(),
    };
    let ns = lan.ns(host);
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = mpsc::channel();
    let give_up = stop.clone();
    let t = std::thread::spawn(move || {
        in_netns(&ns, move || {
            Box::pin(async move { routewatch::watch(f, n as usize, ready_tx, &give_up) })
        })?
    });
    if ready.recv_timeout(Duration::from_secs(10)).is_err() {
        return match t.join() {
            Ok(Err(e)) => Err(e),
            _ => bail!("the kernel watch did not start"),
        };
    }
    Ok((t, stop))
}

fn join_kernel(
    (t, stop): (std::thread::JoinHandle<Result<Filled>>, Arc<AtomicBool>),
    deadline: Instant,
) -> Result<Filled> {
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    t.join()
        .map_err(|_| anyhow::anyhow!("kernel watch panicked"))?
}

/// Removes the routes a receiver left in `host`'s kernel.
fn flush(lan: &Lan, host: u8, protocol: u8) -> Result<()> {
    ip(&[
        "-n",
        &lan.ns(host),
        "route",
        "flush",
        "proto",
        &protocol.to_string(),
    ])
}

/// The agent's BGP path in host .2's namespace: the speaker the agent runs for an outside peer,
/// and its install loop (the bgp backend's: wait for the speaker's routes to change, let a
/// burst settle 20 ms, compute the desired state, reconcile), until `stop`. Sends when the
/// speaker's routes first appeared and when all `n` were there.
async fn twill_receiver(
    n: usize,
    rib: mpsc::Sender<(Instant, Instant)>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    let settings = BgpSettings {
        asn: RECEIVER_AS,
        peers: vec![BgpPeer {
            address: addr(INJECTOR).into(),
            asn: INJECTOR_AS,
            password: None,
            node: None,
        }],
        allowed_prefixes: vec![range()],
        ..Default::default()
    };
    let me = NodeLease {
        node: "receiver".into(),
        subnet: "172.16.2.0/24".parse()?,
        public_ip: addr(TWILL),
        vtep_mac: None,
        v6: None,
    };
    let p = plan(&settings, "172.16.0.0/16".parse()?, &me, &[]).with_local(&Local::default());
    let facts = LocalFacts {
        iface: "eth0".into(),
        mtu: 1500,
        public_ip: addr(TWILL),
        local_ip: addr(TWILL),
        connected: vec!["192.0.2.0/24".parse()?],
        v6: None,
    };
    let kernel = Kernel::connect()?;
    let runner = Runner::start(p, (addr(TWILL), 179).into(), None, false);
    let mut seen = runner.learned.clone();
    tokio::spawn(async move {
        let mut first = None;
        while seen.changed().await.is_ok() {
            let len = seen.borrow_and_update().len();
            if len > 0 {
                first.get_or_insert_with(Instant::now);
            }
            if len >= n {
                let _ = rib.send((first.unwrap_or_else(Instant::now), Instant::now()));
                return;
            }
        }
    });
    let mut learned = runner.learned.clone();
    let r = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            c = learned.changed() => {
                if c.is_err() {
                    break Err(anyhow::anyhow!("the speaker stopped"));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let routes = learned.borrow_and_update().clone();
                let want = compute(&Input {
                    own: me.clone(),
                    peers: vec![],
                    backend: Backend::Bgp { routes },
                    facts: facts.clone(),
                    sources: Default::default(),
                });
                if let Err(e) = kernel.reconcile_reporting(&want).await {
                    break Err(e).context("reconcile");
                }
            }
        }
    };
    runner.stop().await;
    r
}

fn twill_round(lan: &Lan, n: u32) -> Result<Round> {
    let kw = watch_kernel(lan, TWILL, ROUTE_PROTOCOL, n)?;
    let (rib_tx, rib_rx) = mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel();
    let ns = lan.ns(TWILL);
    let receiver = std::thread::spawn(move || {
        in_netns_multi_thread(&ns, move || {
            Box::pin(twill_receiver(n as usize, rib_tx, stop_rx))
        })?
    });
    let inj = start_injector(lan, n, TWILL)?;
    let result = (|| -> Result<Round> {
        let (first, all) = rib_rx
            .recv_timeout(LIMIT)
            .context("twill's speaker did not get every prefix")?;
        let sent = inj.sent()?;
        let kernel = join_kernel(kw, Instant::now() + LIMIT).context("twill's kernel routes")?;
        Ok(Round {
            sent,
            rib: all.saturating_duration_since(sent.first_byte),
            rib_first: Some(first.saturating_duration_since(sent.first_byte)),
            kernel: Some(kernel),
            query: None,
        })
    })();
    let injected = inj.finish();
    let _ = stop.send(());
    let stopped = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("twill thread panicked"))?;
    flush(lan, TWILL, ROUTE_PROTOCOL)?;
    let round = result?;
    injected?;
    stopped.context("twill receiver")?;
    Ok(round)
}

/// Queries `count` back to back until it reaches `n`: when it first was nonzero, when it
/// reached `n`, and the longest query.
fn poll(
    what: &str,
    n: u32,
    mut count: impl FnMut() -> u32,
) -> Result<(Option<Instant>, Instant, Duration)> {
    let start = Instant::now();
    let mut first = None;
    let mut longest = Duration::ZERO;
    while start.elapsed() < LIMIT {
        let q = Instant::now();
        let c = count();
        let now = Instant::now();
        longest = longest.max(now - q);
        if c > 0 {
            first.get_or_insert(now);
        }
        if c >= n {
            return Ok((first, now, longest));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("{what} did not get every prefix within {LIMIT:?}")
}

/// The number after `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u32> {
    let rest = text.split(key).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())?
        .parse()
        .ok()
}

/// Stops the daemon whose pid file is `f` at once (no graceful withdrawal of 100,000 routes),
/// and waits until it is gone.
fn kill_now(f: &std::path::Path) {
    let Ok(pid) = std::fs::read_to_string(f) else {
        return;
    };
    let pid = pid.trim();
    let _ = Command::new("kill").args(["-KILL", pid]).status();
    for _ in 0..200 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn bird_round(lan: &mut Lan, n: u32) -> Result<Round> {
    let conf = format!(
        "router id {b};\nprotocol device {{}}\nprotocol kernel {{\n  ipv4 {{ export all; }};\n}}\nprotocol bgp from_injector {{\n  local {b} as {RECEIVER_AS};\n  neighbor {i} as {INJECTOR_AS};\n  ipv4 {{ import all; export none; }};\n}}\n",
        b = addr(BIRD),
        i = addr(INJECTOR),
    );
    let kw = watch_kernel(lan, BIRD, BIRD_PROTOCOL, n)?;
    let sock = lan.start_bird(BIRD, &conf)?;
    let inj = start_injector(lan, n, BIRD)?;
    let result = (|| -> Result<Round> {
        let (first, all, query) = poll("BIRD", n, || {
            let out = output_of(Command::new("birdc").arg("-s").arg(&sock).args([
                "show",
                "protocols",
                "all",
                "from_injector",
            ]));
            // "  Routes:         100000 imported, 0 exported, 100000 preferred"
            number_after(&out, "Routes:").unwrap_or(0)
        })?;
        let sent = inj.sent()?;
        let kernel = join_kernel(kw, Instant::now() + LIMIT).context("BIRD's kernel routes")?;
        Ok(Round {
            sent,
            rib: all.saturating_duration_since(sent.first_byte),
            rib_first: first.map(|f| f.saturating_duration_since(sent.first_byte)),
            kernel: Some(kernel),
            query: Some(query),
        })
    })();
    let injected = inj.finish();
    if let Some(f) = lan.pid_files.pop() {
        kill_now(&f);
        let _ = std::fs::remove_file(&f);
    }
    flush(lan, BIRD, BIRD_PROTOCOL)?;
    let round = result?;
    injected?;
    Ok(round)
}

fn gobgp_round(lan: &mut Lan, n: u32) -> Result<Round> {
    lan.start_gobgp(
        GOBGP,
        &gobgp_conf(GOBGP, RECEIVER_AS, &addr(INJECTOR).to_string(), INJECTOR_AS),
    )?;
    let inj = start_injector(lan, n, GOBGP)?;
    let result = (|| -> Result<Round> {
        let (first, all, query) = poll("GoBGP", n, || {
            let out = lan.gobgp(GOBGP, &["global", "rib", "summary", "-a", "ipv4"]);
            // "Table ipv4-unicast\nDestination: 100000, Path: 100000"
            number_after(&out, "Destination:").unwrap_or(0)
        })?;
        let sent = inj.sent()?;
        Ok(Round {
            sent,
            rib: all.saturating_duration_since(sent.first_byte),
            rib_first: first.map(|f| f.saturating_duration_since(sent.first_byte)),
            kernel: None,
            query: Some(query),
        })
    })();
    let injected = inj.finish();
    lan.stop_children();
    let round = result?;
    injected?;
    Ok(round)
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

/// "median [min–max]" in seconds, or "n/a".
fn summary(v: &[Duration]) -> String {
    if v.is_empty() {
        return "n/a".into();
    }
    let (lo, hi) = (
        v.iter().min().copied().unwrap_or_default(),
        v.iter().max().copied().unwrap_or_default(),
    );
    format!("{} [{}–{}]", secs(median(v)), secs(lo), secs(hi))
}

fn ratio(a: &[Duration], b: &[Duration]) -> String {
    if a.is_empty() || b.is_empty() {
        return "n/a".into();
    }
    format!(
        "{:.2}",
        median(a).as_secs_f64() / median(b).as_secs_f64().max(1e-9)
    )
}

fn round_line(name: &str, r: &Round) -> String {
    let first = r.rib_first.map(secs).unwrap_or_else(|| "?".into());
    let kernel = match (r.kernel(), r.kernel) {
        (Some(k), Some(f)) => format!(
            ", kernel {} s (first route {} s{})",
            secs(k),
            secs(f.first.saturating_duration_since(r.sent.first_byte)),
            match f.dumped_every {
                Some(d) => format!(", notifications overflowed: dumps up to {} s", secs(d)),
                None => String::new(),
            }
        ),
        _ => String::new(),
    };
    let acked = r.sent.acked.map(secs).unwrap_or_else(|| "?".into());
    let query = r
        .query
        .map(|q| format!(", longest RIB query {} s", secs(q)))
        .unwrap_or_default();
    format!(
        "  {name:<6} sent in {} s (acked {acked} s), RIB {} s (first prefix {first} s){kernel}{query}",
        secs(r.sent.written),
        secs(r.rib),
    )
}

fn main() -> Result<()> {
    let mut n: u32 = 100_000;
    let mut rounds = 3usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--prefixes" => n = args.next().context("--prefixes N")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds R")?.parse()?,
            "-h" | "--help" => {
                println!(
                    "bench-bgp [--prefixes N (100000)] [--rounds R (3)]: needs root, bird2, gobgpd"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other} (see --help)"),
        }
    }
    if rounds == 0 || n == 0 {
        bail!("--rounds and --prefixes must be at least 1");
    }
    if !is_root() {
        bail!("needs root (network namespaces)");
    }
    let packed = inject::pack(
        &inject::table(n)?,
        &inject::ebgp_attributes(INJECTOR_AS, addr(INJECTOR)),
        true,
    )?;
    println!(
        "injector: {n} prefixes in {} UPDATEs + End-of-RIB, {} bytes, eBGP AS {INJECTOR_AS} → AS {RECEIVER_AS}; {rounds} rounds",
        packed.updates,
        packed.bytes.len()
    );
    let mut lan = Lan::new("bb", &[TWILL, BIRD, GOBGP, INJECTOR])?;
    let names = ["twill", "BIRD", "GoBGP"];
    let mut all: [Vec<Round>; 3] = Default::default();
    for r in 0..rounds {
        println!("round {}:", r + 1);
        let got = [
            twill_round(&lan, n)?,
            bird_round(&mut lan, n)?,
            gobgp_round(&mut lan, n)?,
        ];
        for (i, g) in got.into_iter().enumerate() {
            println!("{}", round_line(names[i], &g));
            all[i].push(g);
        }
    }
    let rib: Vec<Vec<Duration>> = all
        .iter()
        .map(|v| v.iter().map(|r| r.rib).collect())
        .collect();
    let kernel: Vec<Vec<Duration>> = all
        .iter()
        .map(|v| v.iter().filter_map(Round::kernel).collect())
        .collect();
    let send: Vec<Vec<Duration>> = all
        .iter()
        .map(|v| v.iter().map(|r| r.sent.written).collect())
        .collect();
    println!();
    println!(
        "{n} prefixes, seconds from the injector's first byte, median [min–max] of {rounds} rounds:"
    );
    println!(
        "{:<8} {:<26} {:<26} {:<26}",
        "receiver", "RIB", "kernel", "injector send"
    );
    for i in 0..3 {
        println!(
            "{:<8} {:<26} {:<26} {:<26}",
            names[i],
            summary(&rib[i]),
            summary(&kernel[i]),
            summary(&send[i])
        );
    }
    println!(
        "twill/BIRD: RIB {}, kernel {}; twill/GoBGP: RIB {}, kernel n/a (GoBGP installs through zebra only)",
        ratio(&rib[0], &rib[1]),
        ratio(&kernel[0], &kernel[1]),
        ratio(&rib[0], &rib[2]),
    );
    Ok(())
}
