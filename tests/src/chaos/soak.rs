//! Soak: one cluster of three `twill controller` processes lives for hours under a churn of
//! short-lived simulated agents with a short lease TTL, so that thousands of leases expire and
//! their subnets are handed out again. Faults are mild (a member paused with SIGSTOP, an agent
//! stalled past its TTL) and never restart a member, so each member is one process for the whole
//! soak and anything it leaks shows in its own RSS and open file descriptors, read from /proc.
//!
//! The series are judged by [`judge`]; the history by the usual checkers, run node by node on a
//! window of reads around each agent's life so the cost grows linearly with the soak's length.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use twill_client::Client;

use super::check::{self, Violation};
use super::history::{Call, History, Micros, Observation, Op, Outcome, Ret, Seen};
use super::{
    agent_loop, excerpt, lock, reader_loop, short_client, table, watcher_loop, Agent, AgentMode,
    Controllers, View, PAUSE, STALL_AGENT,
};

/// A soak's settings.
#[derive(Clone, Debug)]
pub struct Soak {
    pub seed: u64,
    pub duration: Duration,
    /// How often each member is sampled.
    pub interval: Duration,
    /// Agents alive at any moment; each lives `lifetime` and leaves without releasing.
    pub live_agents: usize,
    pub lifetime: (Duration, Duration),
    pub ttl: Duration,
    /// Time between two faults, drawn in this range.
    pub fault_gap: (Duration, Duration),
    /// The members' `--snapshot-every` and `--watch-history`: both bound buffers (the Raft log
    /// behind the last snapshot, the events kept for resuming watchers) that fill for the first
    /// N entries. At the defaults (10,000) that takes ~10 min of this churn, which would read as
    /// growth in a short soak; at 1,000 they are full within a minute and a snapshot is taken
    /// every minute or so, so what still grows after that is a leak.
    pub snapshot_every: u64,
    pub watch_history: u64,
}

impl Soak {
    /// `hours` of soak on 3 members, 2 s TTL, a sample every 30 s (or a fortieth of a short
    /// soak, so even a validation run has enough samples to judge).
    pub fn new(seed: u64, hours: f64) -> Self {
        let duration = Duration::from_secs_f64(hours * 3600.0);
        let interval = (duration / 40).clamp(Duration::from_secs(1), Duration::from_secs(30));
        Soak {
            seed,
            duration,
            interval,
            // Ten live agents plus the leases of those that just left (held for one TTL) fill
            // most of the 16-subnet pool, so every expired subnet is soon handed out again.
            live_agents: 10,
            lifetime: (Duration::from_secs(2), Duration::from_secs(10)),
            ttl: Duration::from_secs(2),
            fault_gap: (Duration::from_secs(10), Duration::from_secs(40)),
            snapshot_every: 1_000,
            watch_history: 1_000,
        }
    }
}

/// One member at one sample. `None`: could not be read (process gone, or no answer in time).
#[derive(Clone, Debug, Default)]
pub struct MemberSample {
    pub pid: Option<u32>,
    pub rss_kib: Option<u64>,
    /// The anonymous part of the RSS (`RssAnon`): the heap and stacks, what a leak grows. The
    /// rest is mostly the binary's own pages, which grow as more of its code runs for the
    /// first time (tens of MB for a debug build) and are given back under pressure.
    pub anon_kib: Option<u64>,
    pub fds: Option<u64>,
    pub threads: Option<u64>,
    pub applied: Option<u64>,
    pub leases: Option<u64>,
    /// Answers kept for retries (see [`verdicts`] for why it matters to the memory verdict).
    pub retry_answers: Option<u64>,
    /// Whether it led at the sample: the leader holds the agents' connections, some 30 fds.
    pub leading: Option<bool>,
}

#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds since the soak began.
    pub at: f64,
    pub members: Vec<MemberSample>,
    /// Lease instances seen expiring by any watcher, so far.
    pub expiries: usize,
    /// Acknowledged acquisitions of a subnet that another node held before, so far.
    pub reuses: usize,
    pub acquired: usize,
    /// This harness's own RSS: its history grows by design, so it is shown, not judged.
    pub harness_rss_kib: Option<u64>,
}

/// The `VmRSS` and `RssAnon` (KiB) and `Threads` fields of a /proc/<pid>/status text.
pub fn parse_status(status: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    (field("VmRSS:"), field("RssAnon:"), field("Threads:"))
}

/// RSS and its anonymous part (KiB), open fds and threads of `pid` ("self" for this
/// process), each `None` when /proc does not say (the process is gone, or the kernel hides it).
fn proc_sample(pid: &str) -> (Option<u64>, Option<u64>, Option<u64>, Option<u64>) {
    let (rss, anon, threads) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| parse_status(&s))
        .unwrap_or((None, None, None));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()
        .map(|d| d.filter(|e| e.is_ok()).count() as u64);
    (rss, anon, fds, threads)
}

/// How a series is allowed to grow.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    /// By this fraction of the second quarter's mean (RSS: allocators keep what they took).
    Relative(f64),
    /// By this many units (fds: a handful come and go with connections).
    Absolute(f64),
}

/// RSS may grow 20 % after warm-up: caches, allocator arenas and Raft's in-memory log until a
/// snapshot settle within the first half. More than that *and still rising* is a leak.
/// The capacity of the controller's table of retry answers.
const RETRY_ANSWERS: usize = twill_controller::allocator::DEDUP_CAPACITY;

pub const RSS_LIMIT: Limit = Limit::Relative(0.20);
/// Fds may grow by 16: one connection per agent or watcher more at the end is noise, a leak of
/// one per expiry or per connection would be hundreds.
pub const FD_LIMIT: Limit = Limit::Absolute(16.0);

/// What [`judge`] concluded about one series.
#[derive(Clone, Debug, PartialEq)]
pub struct Growth {
    pub first: f64,
    pub last: f64,
    /// Mean of the second quarter (the first is warm-up) and of the last.
    pub q2: f64,
    pub q4: f64,
    /// Least-squares slope after warm-up, and over the last quarter alone, per hour.
    pub slope_per_hour: f64,
    pub tail_slope_per_hour: f64,
    pub grows: bool,
}

fn mean(v: &[(f64, f64)]) -> f64 {
    v.iter().map(|p| p.1).sum::<f64>() / v.len().max(1) as f64
}

/// Least-squares slope of `y` over `x` (seconds), per hour; 0 for fewer than two points.
pub fn slope_per_hour(v: &[(f64, f64)]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mx = v.iter().map(|p| p.0).sum::<f64>() / v.len() as f64;
    let my = mean(v);
    let sxy: f64 = v.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = v.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx * 3600.0
    }
}

/// Judges a series of (seconds, value): it grows if the last quarter's mean exceeds the second
/// quarter's by more than `limit` and it is still rising (the last quarter's slope is at least
/// a quarter of the slope after warm-up), so a one-off step that then stays flat passes.
/// `None` with fewer than 8 points: too short to tell warm-up from growth.
pub fn judge(series: &[(f64, f64)], limit: Limit) -> Option<Growth> {
    let n = series.len();
    if n < 8 {
        return None;
    }
    let q = n / 4;
    let q2 = mean(&series[q..2 * q]);
    let q4 = mean(&series[n - q..]);
    let slope = slope_per_hour(&series[q..]);
    let tail = slope_per_hour(&series[n - q..]);
    let over = match limit {
        Limit::Relative(f) => q4 - q2 > f * q2,
        Limit::Absolute(d) => q4 - q2 > d,
    };
    let rising = slope > 0.0 && tail > 0.0 && tail >= slope / 4.0;
    Some(Growth {
        first: series[0].1,
        last: series[n - 1].1,
        q2,
        q4,
        slope_per_hour: slope,
        tail_slope_per_hour: tail,
        grows: over && rising,
    })
}

/// One member's verdict over the soak.
#[derive(Clone, Debug)]
pub struct MemberVerdict {
    pub member: usize,
    pub pids: Vec<u32>,
    pub rss: Option<Growth>,
    /// When its table of retry answers was first seen full (seconds), from which RSS is judged;
    /// `None`: never, and then the last count seen.
    pub steady_from: Option<f64>,
    pub retry_answers: Option<u64>,
    /// Fds over the samples where the member led, and where it followed (see [`verdicts`]).
    pub fds_leading: Option<Growth>,
    pub fds_following: Option<Growth>,
}

impl MemberVerdict {
    pub fn grows(&self) -> bool {
        [&self.rss, &self.fds_leading, &self.fds_following]
            .iter()
            .any(|g| g.as_ref().is_some_and(|g| g.grows))
    }

    fn line(&self) -> String {
        let show = |g: &Option<Growth>, unit: &str, rel: bool| {
            match g {
            None => "too few samples to judge".to_string(),
            Some(g) => format!(
                "{:.0} → {:.0} {unit} (2nd-quarter mean {:.0}, last-quarter mean {:.0}, {}; slope {:+.0}/h, last quarter {:+.0}/h): {}",
                g.first,
                g.last,
                g.q2,
                g.q4,
                if rel {
                    format!("{:+.1} %", (g.q4 - g.q2) / g.q2.max(1.0) * 100.0)
                } else {
                    format!("{:+.1}", g.q4 - g.q2)
                },
                g.slope_per_hour,
                g.tail_slope_per_hour,
                if g.grows { "GROWS" } else { "ok" }
            ),
        }
        };
        let rss = match (self.steady_from, &self.rss) {
            (None, _) => format!(
                "not judged: its table of retry answers never filled ({} of {RETRY_ANSWERS}), and until it does the heap is meant to grow; soak longer",
                opt(self.retry_answers)
            ),
            (Some(from), g) => format!(
                "from {:.1} min, when its table of retry answers was full: {}",
                from / 60.0,
                show(g, "KiB (anonymous)", true)
            ),
        };
        format!(
            "member {} (pid {:?}): RSS {}; fds while leading {}; fds while following {}",
            self.member + 1,
            self.pids,
            rss,
            show(&self.fds_leading, "", false),
            show(&self.fds_following, "", false)
        )
    }
}

/// Judges each member's RSS and fd series. Fds are judged apart for the samples where the
/// member led and where it followed: leadership moves with every pause of the leader, and the
/// leader's share of the agents' connections would read as growth or shrinkage. Samples where
/// the member did not answer (paused) have no role and are left out of the fd series. A member
/// restarted mid-soak (which this soak does not do) would have several pids; only its last
/// process's samples are judged. RSS is judged only from the first sample at which the member's
/// table of retry answers was full: it is the largest bounded structure, fills at the write rate
/// (some 17 minutes at this soak's), and until then the heap grows by design.
pub fn verdicts(samples: &[Sample]) -> Vec<MemberVerdict> {
    let members = samples.first().map(|s| s.members.len()).unwrap_or(0);
    (0..members)
        .map(|m| {
            let mut pids: Vec<u32> = Vec::new();
            for p in samples.iter().filter_map(|s| s.members.get(m)?.pid) {
                if pids.last() != Some(&p) {
                    pids.push(p);
                }
            }
            let last = pids.last().copied();
            let ours = |s: &&Sample| s.members.get(m).is_some_and(|x| x.pid == last);
            let steady = samples.iter().filter(ours).position(|s| {
                s.members[m]
                    .retry_answers
                    .is_some_and(|r| r >= RETRY_ANSWERS as u64)
            });
            let steady_from = steady
                .and_then(|i| samples.iter().filter(ours).nth(i))
                .map(|s| s.at);
            let retry_answers = samples
                .iter()
                .filter_map(|s| s.members.get(m)?.retry_answers)
                .next_back();
            let series = |f: fn(&MemberSample) -> Option<u64>, role: Option<bool>| {
                samples
                    .iter()
                    .filter_map(|s| {
                        let ms = s.members.get(m)?;
                        (ms.pid == last && (role.is_none() || ms.leading == role)).then_some(())?;
                        Some((s.at, f(ms)? as f64))
                    })
                    .collect::<Vec<(f64, f64)>>()
            };
            let rss: Vec<(f64, f64)> = series(|s| s.anon_kib, None)
                .into_iter()
                .filter(|(at, _)| steady_from.is_some_and(|f| *at >= f))
                .collect();
            MemberVerdict {
                member: m,
                rss: judge(&rss, RSS_LIMIT),
                steady_from,
                retry_answers,
                fds_leading: judge(&series(|s| s.fds, Some(true)), FD_LIMIT),
                fds_following: judge(&series(|s| s.fds, Some(false)), FD_LIMIT),
                pids,
            }
        })
        .collect()
}

/// Expired lease instances (each once, by any watcher), acknowledged acquisitions, and those of
/// them that handed out a subnet another node held before.
pub fn churn_counts(ops: &[Op], observed: &[Observation]) -> (usize, usize, usize) {
    let mut expired: std::collections::HashSet<(&str, u64)> = Default::default();
    for o in observed {
        if let Seen::Delete {
            node,
            lease,
            expired: true,
            ..
        } = &o.seen
        {
            expired.insert((node.as_str(), lease.create_revision));
        }
    }
    let mut acks: Vec<(Micros, &str, ipnet::Ipv4Net)> = ops
        .iter()
        .filter(|o| matches!(o.call, Call::Acquire { .. }))
        .filter_map(|o| match (&o.outcome, o.complete) {
            (Some(Outcome::Ok(Ret::Lease(l))), Some(c)) => Some((c, o.node.as_str(), l.subnet)),
            _ => None,
        })
        .collect();
    acks.sort();
    let mut holder: HashMap<ipnet::Ipv4Net, &str> = HashMap::new();
    let mut reuses = 0;
    for (_, node, subnet) in &acks {
        if holder
            .insert(*subnet, node)
            .is_some_and(|prev| prev != *node)
        {
            reuses += 1;
        }
    }
    (expired.len(), acks.len(), reuses)
}

/// The checkers (b), (c) and (e) of [`check`], node by node, each over the reads taken from
/// shortly before that node's first call until well after its lease must have expired (a read
/// outside that window cannot show the node's lease without (a) or the drain check seeing it
/// too). Checking each node against the whole history would cost reads × operations.
/// Returns the number of nodes checked and of histories too large to decide.
pub fn per_node(
    ops: &[Op],
    observed: &[Observation],
    ttl: Micros,
    out: &mut Vec<Violation>,
) -> (usize, usize) {
    let reads: Vec<&Op> = ops.iter().filter(|o| o.call == Call::Read).collect();
    let mut by_node: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for o in ops.iter().filter(|o| !o.node.is_empty()) {
        by_node.entry(&o.node).or_default().push(o);
    }
    let mut seen_by: HashMap<&str, Vec<Observation>> = HashMap::new();
    for o in observed {
        if let Seen::Put { node, .. } | Seen::Delete { node, .. } = &o.seen {
            seen_by.entry(node).or_default().push(o.clone());
        }
    }
    let mut undecided = 0;
    for (node, nops) in &by_node {
        let first = nops.iter().map(|o| o.invoke).min().unwrap_or(0);
        let last = nops
            .iter()
            .map(|o| o.complete.unwrap_or(o.invoke))
            .max()
            .unwrap_or(0);
        // A read takes at most a few seconds; a lease outlives its last renewal by the TTL and
        // a new leader's grace.
        let from = first.saturating_sub(10_000_000);
        let to = last + ttl + 30_000_000;
        let lo = reads.partition_point(|r| r.invoke < from);
        let hi = reads.partition_point(|r| r.invoke <= to);
        let mut local: Vec<Op> = nops.iter().map(|o| (*o).clone()).collect();
        local.extend(reads[lo..hi].iter().map(|r| (*r).clone()));
        local.sort_by_key(|o| o.invoke);
        let seen = seen_by.get(node).map(Vec::as_slice).unwrap_or(&[]);
        check::deadlines(&local, seen, ttl, 50_000, out);
        let (_, u) = check::linearizable(&local, seen, 2_000_000, out);
        undecided += u;
    }
    (by_node.len(), undecided)
}

pub struct SoakReport {
    pub samples: Vec<Sample>,
    pub verdicts: Vec<MemberVerdict>,
    pub faults: BTreeMap<&'static str, usize>,
    pub agents: usize,
    pub operations: usize,
    pub observations: usize,
    pub nodes_checked: usize,
    pub undecided: usize,
    pub violations: Vec<Violation>,
    pub excerpt: String,
    pub minutes: f64,
}

/// One agent incarnation: it leaves at `leaves`, and its task is dropped once it has surely
/// stopped calling.
struct Live {
    agent: Arc<Agent>,
    leaves: Instant,
    task: tokio::task::JoinHandle<()>,
}

fn member_pid(c: &Controllers, i: usize) -> Option<u32> {
    match c {
        Controllers::Processes { procs, .. } => procs.pid(i),
        Controllers::InProcess { .. } => None,
    }
}

async fn sample(c: &Controllers, h: &History, started: Instant) -> Sample {
    let mut members = Vec::new();
    for (i, url) in c.urls().iter().enumerate() {
        let pid = member_pid(c, i);
        let (rss_kib, anon_kib, fds, threads) = match pid {
            Some(p) => proc_sample(&p.to_string()),
            None => (None, None, None, None),
        };
        // A paused member does not answer; its /proc figures are still good.
        let status = tokio::time::timeout(
            Duration::from_secs(1),
            Client::status_of(url, Some(crate::admin_tls())),
        )
        .await
        .ok()
        .and_then(|r| r.ok());
        members.push(MemberSample {
            pid,
            rss_kib,
            anon_kib,
            fds,
            threads,
            applied: status.as_ref().map(|s| s.applied_index),
            leases: status.as_ref().map(|s| s.leases),
            retry_answers: status.as_ref().map(|s| s.retry_answers),
            leading: status.as_ref().map(|s| s.id != 0 && s.leader == s.id),
        });
    }
    let (expiries, acquired, reuses) = churn_counts(&h.ops(), &h.observations());
    Sample {
        at: started.elapsed().as_secs_f64(),
        members,
        expiries,
        reuses,
        acquired,
        harness_rss_kib: proc_sample("self").0,
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn sample_line(s: &Sample) -> String {
    let members: Vec<String> = s
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                "m{}{} rss {} KiB (anon {}) fds {} thr {} applied {} leases {}",
                i + 1,
                if m.leading == Some(true) { "*" } else { "" },
                opt(m.rss_kib),
                opt(m.anon_kib),
                opt(m.fds),
                opt(m.threads),
                opt(m.applied),
                opt(m.leases)
            )
        })
        .collect();
    format!(
        "[{:>6.0}s] {} | acquired {} expired {} reused {} | harness rss {} KiB",
        s.at,
        members.join(" | "),
        s.acquired,
        s.expiries,
        s.reuses,
        opt(s.harness_rss_kib)
    )
}

/// Three `twill controller` processes as [`Controllers::start`] makes them, with the soak's
/// snapshot and watch-history sizes.
async fn start(s: &Soak) -> Result<Controllers> {
    let dir = tempfile::tempdir()?;
    let bin = crate::twill_binary()?;
    let (ttl, snap, watch) = (
        format!("{}ms", s.ttl.as_millis()),
        s.snapshot_every.to_string(),
        s.watch_history.to_string(),
    );
    // The pool of every chaos run: the sixteen /28s of cluster::NETWORK.
    let (first, last) = ("10.99.0.0", "10.99.0.240");
    let procs = crate::procs::TwillProcs::start(
        &bin,
        3,
        dir.path(),
        &[
            "--network",
            super::cluster::NETWORK,
            "--subnet-len",
            &super::cluster::SUBNET_LEN.to_string(),
            "--subnet-min",
            first,
            "--subnet-max",
            last,
            "--lease-ttl",
            &ttl,
            "--write-timeout",
            "2s",
            "--snapshot-every",
            &snap,
            "--watch-history",
            &watch,
        ],
    )
    .await?;
    Ok(Controllers::Processes {
        procs,
        disks: Vec::new(),
        _dir: dir,
    })
}

/// Runs the soak, printing a line per sample.
pub async fn run(s: &Soak) -> Result<SoakReport> {
    let mut rng = StdRng::seed_from_u64(s.seed);
    let mut c = start(s).await?;
    // The soak's time starts once the cluster is up (building `twill` may take minutes).
    let started = Instant::now();
    let urls = c.urls();
    let h = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = vec![tokio::spawn(reader_loop(
        short_client(urls.clone())?,
        h.clone(),
        stop.clone(),
        None,
    ))];
    // One watcher per member, each following its own member's stream.
    let views: Vec<Arc<Mutex<View>>> = urls.iter().map(|_| Arc::default()).collect();
    for (n, (u, v)) in urls.iter().zip(&views).enumerate() {
        let w = watcher_loop(n, u.clone(), h.clone(), v.clone(), stop.clone());
        tasks.push(tokio::spawn(w));
    }

    let mut live: Vec<Live> = Vec::new();
    let mut leaving: Vec<(Instant, tokio::task::JoinHandle<()>)> = Vec::new();
    let mut born = 0usize;
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut violations = Vec::new();
    let mut next_sample = Instant::now();
    let gap = |rng: &mut StdRng| rng.random_range(s.fault_gap.0..=s.fault_gap.1);
    let mut next_fault = Instant::now() + gap(&mut rng);
    let mut resume: Option<(Instant, usize)> = None;
    let end = started + s.duration;
    let result: Result<()> = async {
        while Instant::now() < end {
            let now = Instant::now();
            // Churn: agents past their lifetime leave without releasing; new ones take their place.
            for l in live.iter().filter(|l| now >= l.leaves) {
                *lock(&l.agent.mode) = AgentMode::Departed;
            }
            let (gone, stay): (Vec<Live>, Vec<Live>) =
                live.drain(..).partition(|l| now >= l.leaves);
            live = stay;
            // A call lasts at most ~3 s (1 s attempts retried for 2 s): past that, the departed
            // loop only sleeps and its task can go.
            leaving.extend(
                gone.into_iter()
                    .map(|l| (now + Duration::from_secs(10), l.task)),
            );
            leaving.retain(|(at, t)| {
                if now >= *at {
                    t.abort();
                    false
                } else {
                    true
                }
            });
            while live.len() < s.live_agents {
                let a = Arc::new(Agent {
                    name: format!("soak-{born}"),
                    mode: Mutex::new(AgentMode::Run),
                    held: Mutex::new(None),
                });
                let task = tokio::spawn(agent_loop(
                    a.clone(),
                    short_client(urls.clone())?,
                    h.clone(),
                    s.ttl,
                    s.seed.wrapping_mul(1_000_003).wrapping_add(born as u64),
                    stop.clone(),
                ));
                live.push(Live {
                    agent: a,
                    leaves: now + rng.random_range(s.lifetime.0..=s.lifetime.1),
                    task,
                });
                born += 1;
            }
            if let Some((at, m)) = resume {
                if now >= at {
                    c.signal_pause(m, false);
                    h.fault(format!("{PAUSE}: member {} SIGCONT", m + 1));
                    resume = None;
                }
            }
            if now >= next_fault && resume.is_none() {
                next_fault = now + gap(&mut rng);
                if rng.random_ratio(1, 2) {
                    // Long enough for the others to elect a new leader; never a restart.
                    let leader = c.leader().await;
                    let m = match leader {
                        Some(l) if rng.random_ratio(2, 3) => l,
                        _ => rng.random_range(0..c.len()),
                    };
                    let hold = Duration::from_millis(rng.random_range(1500..4000));
                    h.fault(format!("{PAUSE}: member {} SIGSTOP for {hold:?}", m + 1));
                    if c.signal_pause(m, true) {
                        resume = Some((Instant::now() + hold, m));
                        *faults.entry(PAUSE).or_default() += 1;
                    }
                } else if let Some(l) = live.get(rng.random_range(0..live.len().max(1))) {
                    let mut mode = lock(&l.agent.mode);
                    if *mode == AgentMode::Run {
                        // Past the TTL, so the lease expires and the agent must notice.
                        let quiet = s.ttl + Duration::from_millis(rng.random_range(500..2500));
                        h.fault(format!(
                            "{STALL_AGENT}: {} silent for {quiet:?}",
                            l.agent.name
                        ));
                        *mode = AgentMode::Stalled(Instant::now() + quiet);
                        *faults.entry(STALL_AGENT).or_default() += 1;
                    }
                }
            }
            if now >= next_sample {
                next_sample += s.interval;
                if let Controllers::Processes { procs, .. } = &mut c {
                    for i in 0..urls.len() {
                        if let Some(st) = procs.exited(i) {
                            bail!("member {} exited during the soak: {st}", i + 1);
                        }
                    }
                }
                let smp = sample(&c, &h, started).await;
                println!("{}", sample_line(&smp));
                samples.push(smp);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
    .await;
    if let Some((_, m)) = resume {
        c.signal_pause(m, false);
    }

    // Drain: every agent leaves; within the TTL and a leader's grace the table must be empty,
    // and every watcher's view must equal a read at the same revision.
    for l in &live {
        *lock(&l.agent.mode) = AgentMode::Departed;
    }
    h.fault("soak over: every agent left".into());
    if result.is_ok() {
        drain(&urls, &h, &views, s.ttl, &mut violations).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in live
        .into_iter()
        .map(|l| l.task)
        .chain(leaving.into_iter().map(|l| l.1))
    {
        t.abort();
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    c.shutdown().await;
    result?;

    let ops = h.ops();
    let observed = h.observations();
    check::reads_and_watchers(&ops, &observed, &mut violations);
    let (nodes_checked, undecided) = per_node(
        &ops,
        &observed,
        s.ttl.as_micros() as Micros,
        &mut violations,
    );
    violations.sort_by_key(|v| v.at);
    let excerpt = violations
        .first()
        .map(|v| excerpt(&h, v))
        .unwrap_or_default();
    Ok(SoakReport {
        verdicts: verdicts(&samples),
        samples,
        faults,
        agents: born,
        operations: ops.len(),
        observations: observed.len(),
        nodes_checked,
        undecided,
        violations,
        excerpt,
        minutes: started.elapsed().as_secs_f64() / 60.0,
    })
}

/// After every agent left: the lease table empties, and the watchers converge to it.
async fn drain(
    urls: &[String],
    h: &History,
    views: &[Arc<Mutex<View>>],
    ttl: Duration,
    out: &mut Vec<Violation>,
) {
    let Ok(client) = short_client(urls.to_vec()) else {
        return;
    };
    let bound = ttl * 3 + Duration::from_secs(25);
    let deadline = Instant::now() + bound;
    let mut last = None;
    loop {
        if let Ok(r) = client.list_leases().await {
            let t = table(&r.leases);
            if t.is_empty() {
                let settle = Instant::now() + Duration::from_secs(15);
                let mut pending: Vec<usize> = (0..views.len()).collect();
                while !pending.is_empty() && Instant::now() < settle {
                    pending.retain(|w| {
                        let v = lock(&views[*w]);
                        !(v.revision >= r.revision && v.leases.is_empty())
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                for w in pending {
                    let v = lock(&views[w]);
                    out.push(Violation {
                        check: "watch-converge",
                        at: h.now(),
                        node: String::new(),
                        detail: format!(
                            "watcher of member {} never reached the empty table of revision {}: it is at revision {} with {} leases",
                            w + 1,
                            r.revision,
                            v.revision,
                            v.leases.len()
                        ),
                    });
                }
                return;
            }
            last = Some(t);
        }
        if Instant::now() > deadline {
            out.push(Violation {
                check: "drain",
                at: h.now(),
                node: String::new(),
                detail: format!(
                    "{bound:?} after every agent left, leases remain: {:?}",
                    last.map(|t| t.into_keys().collect::<Vec<_>>())
                ),
            });
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl SoakReport {
    /// About ten rows evenly spread over the soak.
    pub fn table(&self) -> String {
        let n = self.samples.len();
        let mut rows: Vec<usize> = (0..10.min(n))
            .map(|k| if n < 2 { 0 } else { k * (n - 1) / 9.min(n - 1) })
            .collect();
        rows.dedup();
        let members = self.samples.first().map(|s| s.members.len()).unwrap_or(0);
        let mut out = String::from("   time");
        for m in 1..=members {
            out += &format!(" | m{m} RSS / anon KiB  fds   applied");
        }
        out += " | leases | acquired | expired | reused | retry answers   (* leader)\n";
        for i in rows {
            let s = &self.samples[i];
            out += &format!("{:>6.0}s", s.at);
            for m in &s.members {
                out += &format!(
                    " | {:>8} / {:>6} {:>4}{} {:>8}",
                    opt(m.rss_kib),
                    opt(m.anon_kib),
                    opt(m.fds),
                    if m.leading == Some(true) { "*" } else { " " },
                    opt(m.applied)
                );
            }
            let leases = s.members.iter().find_map(|m| m.leases);
            let retry = s.members.iter().filter_map(|m| m.retry_answers).min();
            out += &format!(
                " | {:>6} | {:>8} | {:>7} | {:>6} | {:>6}\n",
                opt(leases),
                s.acquired,
                s.expiries,
                s.reuses,
                opt(retry)
            );
        }
        out
    }

    pub fn failed(&self) -> bool {
        !self.violations.is_empty() || self.verdicts.iter().any(MemberVerdict::grows)
    }

    pub fn print(&self) {
        println!(
            "--- soak over {:.1} min, {} samples ---",
            self.minutes,
            self.samples.len()
        );
        print!("{}", self.table());
        for v in &self.verdicts {
            println!("{}", v.line());
        }
        let last = self.samples.last();
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "agents: {}, leases acquired: {}, expired: {}, subnets reused: {}, faults [{}], operations checked: {}, watch events: {}, nodes checked: {}{}, violations: {}",
            self.agents,
            last.map(|s| s.acquired).unwrap_or(0),
            last.map(|s| s.expiries).unwrap_or(0),
            last.map(|s| s.reuses).unwrap_or(0),
            faults.join(" "),
            self.operations,
            self.observations,
            self.nodes_checked,
            if self.undecided > 0 {
                format!(" ({} too large to decide)", self.undecided)
            } else {
                String::new()
            },
            self.violations.len()
        );
        for v in self.violations.iter().take(12) {
            println!("  {v}");
        }
        if !self.violations.is_empty() {
            println!("  --- history around the first violation ---");
            for l in self.excerpt.lines() {
                println!("  {l}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(usize) -> f64) -> Vec<(f64, f64)> {
        (0..40).map(|i| (i as f64 * 30.0, f(i))).collect()
    }

    #[test]
    fn a_flat_series_passes() {
        let g = judge(&series(|_| 30_000.0), RSS_LIMIT).expect("enough points");
        assert!(!g.grows);
        assert_eq!(g.slope_per_hour, 0.0);
        // Noise of ±2 fds around 40 is not growth either.
        let g = judge(&series(|i| 40.0 + [0.0, 2.0, -2.0, 1.0][i % 4]), FD_LIMIT).expect("points");
        assert!(!g.grows, "{g:?}");
    }

    #[test]
    fn a_steady_climb_is_flagged() {
        // RSS +2 % of the start per sample (+31 % from the second quarter to the last).
        let g = judge(&series(|i| 30_000.0 + 600.0 * i as f64), RSS_LIMIT).expect("points");
        assert!(g.grows, "{g:?}");
        assert!((g.slope_per_hour - 600.0 * 120.0).abs() < 1e-6, "{g:?}");
        // One fd more per sample.
        let g = judge(&series(|i| 40.0 + i as f64), FD_LIMIT).expect("points");
        assert!(g.grows, "{g:?}");
    }

    #[test]
    fn a_step_then_flat_passes() {
        // A cache filled once, well after warm-up: +50 %, then nothing more.
        let g = judge(
            &series(|i| if i < 24 { 30_000.0 } else { 45_000.0 }),
            RSS_LIMIT,
        )
        .expect("points");
        assert!(g.q4 > g.q2 * 1.2 && g.slope_per_hour > 0.0, "{g:?}");
        assert!(!g.grows, "{g:?}");
        let g = judge(&series(|i| if i < 24 { 40.0 } else { 80.0 }), FD_LIMIT).expect("points");
        assert!(!g.grows, "{g:?}");
    }

    #[test]
    fn slow_growth_under_the_limits_passes() {
        // +10 % over the soak, still rising: under the 20 % a leak must show.
        let g = judge(&series(|i| 30_000.0 + 75.0 * i as f64), RSS_LIMIT).expect("points");
        assert!(g.tail_slope_per_hour > 0.0 && !g.grows, "{g:?}");
        // +10 fds over the soak.
        let g = judge(&series(|i| 40.0 + i as f64 / 4.0), FD_LIMIT).expect("points");
        assert!(!g.grows, "{g:?}");
    }

    fn sampled(at: usize, rss: u64, fds: u64, leading: bool) -> Sample {
        Sample {
            at: at as f64 * 30.0,
            members: vec![MemberSample {
                pid: Some(7),
                rss_kib: Some(rss),
                anon_kib: Some(rss),
                fds: Some(fds),
                leading: Some(leading),
                ..Default::default()
            }],
            expiries: 0,
            reuses: 0,
            acquired: 0,
            harness_rss_kib: None,
        }
    }

    #[test]
    fn leadership_moving_is_not_fd_growth_but_a_leak_in_one_role_is() {
        // Follower for the first half (16 fds), leader after (45): not a leak.
        let moved: Vec<Sample> = (0..80)
            .map(|i| sampled(i, 30_000, if i < 40 { 16 } else { 45 }, i >= 40))
            .collect();
        let v = &verdicts(&moved)[0];
        assert!(!v.grows(), "{v:?}");
        // Alternating roles, one fd more per sample while following.
        let leaking: Vec<Sample> = (0..80)
            .map(|i| {
                let leading = i % 2 == 0;
                sampled(i, 30_000, if leading { 45 } else { 16 + i as u64 }, leading)
            })
            .collect();
        let v = &verdicts(&leaking)[0];
        assert!(v.fds_following.as_ref().is_some_and(|g| g.grows), "{v:?}");
        assert!(v.fds_leading.as_ref().is_some_and(|g| !g.grows), "{v:?}");
        assert!(v.grows());
    }

    #[test]
    fn memory_is_judged_once_the_table_of_retry_answers_is_full() {
        let full = RETRY_ANSWERS as u64;
        // Growing while the table fills (the first 70 samples), flat after: ok, judged from
        // the 70th sample's time.
        let filling = |i: usize, after: f64| {
            let mut s = sampled(i, 0, 20, true);
            let m = &mut s.members[0];
            m.retry_answers = Some((full * i as u64 / 70).min(full));
            m.anon_kib = Some(if i < 70 {
                10_000 + 300 * i as u64
            } else {
                (31_000.0 + after * (i - 70) as f64) as u64
            });
            s
        };
        let v = &verdicts(&(0..80).map(|i| filling(i, 0.0)).collect::<Vec<_>>())[0];
        assert_eq!(v.steady_from, Some(70.0 * 30.0), "{v:?}");
        assert!(v.rss.as_ref().is_some_and(|g| !g.grows), "{v:?}");
        // Judged over the whole series the filling would read as growth.
        let whole: Vec<(f64, f64)> = (0..80)
            .map(|i| {
                (
                    i as f64,
                    filling(i, 0.0).members[0].anon_kib.unwrap_or(0) as f64,
                )
            })
            .collect();
        assert!(judge(&whole, RSS_LIMIT).is_some_and(|g| g.grows));
        // Still growing once full: a leak.
        let v = &verdicts(&(0..90).map(|i| filling(i, 2_000.0)).collect::<Vec<_>>())[0];
        assert!(v.grows(), "{v:?}");
        // Never full: not judged, and said so.
        let v = &verdicts(&(0..30).map(|i| filling(i, 0.0)).collect::<Vec<_>>())[0];
        assert!(
            v.rss.is_none() && v.steady_from.is_none() && !v.grows(),
            "{v:?}"
        );
        assert!(v.line().contains("not judged"), "{}", v.line());
    }

    #[test]
    fn too_short_a_series_is_not_judged() {
        assert_eq!(judge(&series(|i| i as f64)[..7], RSS_LIMIT), None);
    }

    #[test]
    fn status_fields_are_parsed_or_none() {
        let text = "Name:\ttwill\nState:\tS (sleeping)\nVmRSS:\t   28412 kB\nRssAnon:\t   20100 kB\nThreads:\t9\n";
        assert_eq!(parse_status(text), (Some(28412), Some(20100), Some(9)));
        assert_eq!(
            parse_status("Name:\tx\nVmRSS:\tlots kB\n"),
            (None, None, None)
        );
        assert_eq!(parse_status(""), (None, None, None));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let (rss, anon, fds, threads) = proc_sample("self");
        assert!(anon.is_some_and(|a| a > 0 && rss.is_some_and(|r| a <= r)));
        assert!(rss.is_some_and(|r| r > 0));
        assert!(fds.is_some_and(|f| f >= 3));
        assert!(threads.is_some_and(|t| t >= 1));
    }

    fn op(node: &str, call: Call, invoke: Micros, ret: Ret) -> Op {
        Op {
            node: node.into(),
            call,
            invoke,
            complete: Some(invoke + 1000),
            outcome: Some(Outcome::Ok(ret)),
        }
    }

    #[test]
    fn expiries_and_reuses_are_counted() {
        use super::super::history::Held;
        let s: ipnet::Ipv4Net = "10.99.0.0/28".parse().expect("literal");
        let t: ipnet::Ipv4Net = "10.99.0.16/28".parse().expect("literal");
        let acq = Call::Acquire { wanted: None };
        let l = |subnet, create_revision| {
            Ret::Lease(Held {
                subnet,
                create_revision,
            })
        };
        let ops = vec![
            op("a", acq.clone(), 0, l(s, 1)),
            op("b", acq.clone(), 10, l(t, 2)),
            op("a", Call::Renew { create_revision: 1 }, 20, l(s, 1)),
            op("c", acq.clone(), 5_000_000, l(s, 5)),
            op("a", acq, 6_000_000, l(t, 6)),
        ];
        let gone = |node: &str, subnet, create_revision, watcher| Observation {
            watcher,
            at: 4_000_000,
            seen: Seen::Delete {
                revision: 4,
                node: node.into(),
                lease: Held {
                    subnet,
                    create_revision,
                },
                expired: true,
            },
        };
        // Two watchers see the same expiry: counted once.
        let observed = vec![gone("a", s, 1, 0), gone("a", s, 1, 1), gone("b", t, 2, 0)];
        assert_eq!(churn_counts(&ops, &observed), (2, 4, 2));
    }

    #[test]
    fn per_node_finds_a_lost_lease() {
        use super::super::history::Held;
        let s: ipnet::Ipv4Net = "10.99.0.0/28".parse().expect("literal");
        let held = Ret::Lease(Held {
            subnet: s,
            create_revision: 1,
        });
        let read = |at, with: bool| {
            let mut t = BTreeMap::new();
            if with {
                t.insert("a".to_string(), s);
            }
            op("", Call::Read, at, Ret::Table(t))
        };
        let ttl = 2_000_000;
        let good = vec![
            op("a", Call::Acquire { wanted: None }, 0, held.clone()),
            read(500_000, true),
            read(1_000_000, true),
            read(3_000_000, false),
        ];
        // The lease expired (as a watcher saw) after its deadline, so the last read lacks it.
        let expired = Observation {
            watcher: 0,
            at: 2_500_000,
            seen: Seen::Delete {
                revision: 3,
                node: "a".into(),
                lease: Held {
                    subnet: s,
                    create_revision: 1,
                },
                expired: true,
            },
        };
        let mut out = Vec::new();
        assert_eq!(per_node(&good, &[expired], ttl, &mut out), (1, 0));
        assert!(out.is_empty(), "{out:?}");
        // The lease gone from a read well before its deadline.
        let bad = vec![
            op("a", Call::Acquire { wanted: None }, 0, held),
            read(500_000, false),
        ];
        per_node(&bad, &[], ttl, &mut out);
        assert!(out.iter().any(|v| v.check == "lost-lease"), "{out:?}");
    }
}
