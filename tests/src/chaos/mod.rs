//! The chaos harness: a controller cluster, simulated agents holding leases, a reader and one
//! watcher per member, all recorded; a nemesis that injects faults on a seeded schedule; then
//! the checkers of [`check`] over the history.
//!
//! Faults are injected into the real stack (openraft, tonic, redb on tokio and real sockets)
//! rather than run under a deterministic simulator such as turmoil or madsim: those would need
//! tonic's transport and redb's I/O replaced, and would then test something other than what
//! users run. The price: a seed fixes the fault schedule and every client's choices, not the
//! interleaving of threads, so a rerun of a failing seed repeats its faults, not always its
//! failure.

pub mod agents;
pub mod check;
pub mod cluster;
pub mod history;
pub mod soak;
pub mod wgl;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tonic::Code;
use twill_client::{Client, ClientError, ClientOptions};
use twill_controller::disk::{FaultCounts, WriteFault};
use twill_proto::v1 as pb;

pub use cluster::{Controllers, Mode};
use history::{secs, Call, Held, History, Micros, Outcome, Ret, Seen};

/// One chaos run's settings.
#[derive(Clone, Debug)]
pub struct Campaign {
    pub seed: u64,
    pub mode: Mode,
    pub members: usize,
    /// Agents present from the start; `departing` of them leave after the faults, and
    /// `newcomers` join then, so that the pool is full and freed subnets must be reused.
    pub agents: usize,
    pub departing: usize,
    pub newcomers: usize,
    pub faults_for: Duration,
    pub ttl: Duration,
    /// The fault kinds the nemesis draws from; `None`: every kind the mode has.
    pub kinds: Option<Vec<&'static str>>,
}

impl Campaign {
    pub fn new(seed: u64, mode: Mode, members: usize, faults_for: Duration) -> Self {
        Campaign {
            seed,
            mode,
            members,
            agents: 12,
            departing: 4,
            newcomers: cluster::POOL - 12 + 4,
            faults_for,
            ttl: Duration::from_secs(3),
            kinds: None,
        }
    }

    /// The same run with the nemesis drawing only from `kinds`.
    pub fn only(mut self, kinds: &[&'static str]) -> Self {
        self.kinds = Some(kinds.to_vec());
        self
    }
}

/// Fault kinds, by the name used in reports.
pub const KILL: &str = "kill-member";
pub const PARTITION: &str = "partition";
pub const LOSSY: &str = "lossy-network";
pub const PAUSE: &str = "pause-member";
pub const CLOCK: &str = "clock-step";
pub const CRASH_AGENT: &str = "crash-agent";
pub const STALL_AGENT: &str = "stall-agent";
/// A member's fsync fails with EIO until the nemesis clears it: the member must stop.
pub const DISK_FSYNC: &str = "disk-fsync-fail";
/// A member's writes fail with ENOSPC until the nemesis clears it: the member must stop.
pub const DISK_FULL: &str = "disk-full";
/// A member's fsync is held back 100 ms – 2 s for a while: the member must not stop.
pub const DISK_SLOW: &str = "disk-slow";
/// A member's write is torn at a random byte and its disk then refuses everything (power lost):
/// the member must stop; it is restarted on a healthy disk.
pub const DISK_TORN: &str = "disk-torn";
pub const DISK_KINDS: [&str; 4] = [DISK_FSYNC, DISK_FULL, DISK_SLOW, DISK_TORN];
/// A member process SIGKILLed while it writes a snapshot (its temporary file opened or first
/// written, not yet renamed), then restarted from its data directory. Processes only.
pub const KILL_MID_SNAPSHOT: &str = "kill-mid-snapshot";
/// A member process's tmpfs shrunk to what it uses, so that its next write fails with ENOSPC:
/// it must exit non-zero saying so; the tmpfs is enlarged and the member restarted from its
/// data directory. Processes only, as root (members then run on tmpfs of their own).
pub const DISK_FULL_REAL: &str = "disk-full-real";
/// How long `disk-full-real` waits for the member to exit.
const FULL_DISK_WAIT: Duration = Duration::from_secs(15);

/// The fault kinds of each mode (agents mode has its own, in [`agents`]).
pub fn kinds_of(mode: Mode) -> &'static [&'static str] {
    match mode {
        Mode::InProcess => &[
            KILL,
            PARTITION,
            LOSSY,
            CLOCK,
            CRASH_AGENT,
            STALL_AGENT,
            DISK_FSYNC,
            DISK_FULL,
            DISK_SLOW,
            DISK_TORN,
        ],
        Mode::Processes if crate::netns::is_root() => &[
            KILL,
            PAUSE,
            CRASH_AGENT,
            STALL_AGENT,
            KILL_MID_SNAPSHOT,
            DISK_FULL_REAL,
        ],
        Mode::Processes => &[KILL, PAUSE, CRASH_AGENT, STALL_AGENT, KILL_MID_SNAPSHOT],
    }
}

/// The disk counter that shows a fault of `kind` really reached the disk.
fn disk_counter(kind: &str, c: &FaultCounts) -> u64 {
    match kind {
        DISK_FSYNC => c.failed_syncs,
        DISK_FULL => c.failed_writes,
        DISK_SLOW => c.delayed_syncs,
        DISK_TORN => c.torn_writes,
        _ => 0,
    }
}

/// What the disk faults of a run did.
#[derive(Clone, Debug, Default)]
pub struct DiskTally {
    /// By kind: the faults injected whose counter rose, i.e. that really hit the disk (an
    /// fsync failed or was delayed, a write failed or was torn). Every injected kind has an
    /// entry, zero included.
    pub hit: BTreeMap<&'static str, usize>,
    /// By kind: the faults after which the member stopped on the storage error (and was
    /// restarted from its data directory on a healthy disk).
    pub stopped: BTreeMap<&'static str, usize>,
    /// The disks' own counters, summed over the members and the run.
    pub counts: FaultCounts,
    /// `disk-full-real`: how long each member that exited took, from the shrink to its exit.
    pub full_disk_exits: Vec<Duration>,
}

impl DiskTally {
    pub fn add(&mut self, other: &DiskTally) {
        for (k, v) in &other.hit {
            *self.hit.entry(k).or_default() += v;
        }
        for (k, v) in &other.stopped {
            *self.stopped.entry(k).or_default() += v;
        }
        let (a, b) = (&mut self.counts, &other.counts);
        a.failed_syncs += b.failed_syncs;
        a.failed_writes += b.failed_writes;
        a.delayed_syncs += b.delayed_syncs;
        a.torn_writes += b.torn_writes;
        a.refused_after_crash += b.refused_after_crash;
        self.full_disk_exits.extend(&other.full_disk_exits);
    }

    /// `kind=hit/injected stopped=N` for each disk kind in `faults`, and the counters; then
    /// `kill-mid-snapshot=landed/injected mid-write` if that kind was injected (its kills
    /// count as hit when they landed in the middle of a snapshot write); empty when none of
    /// these was injected.
    /// Then `disk-full-real=hit/injected (stopped N, exited after MIN–MAX s)` if that kind was
    /// injected (hit: the member's log named ENOSPC).
    pub fn describe(&self, faults: &BTreeMap<&'static str, usize>) -> String {
        let mut parts = vec![self.describe_disk(faults)];
        if let Some(kills) = faults.get(KILL_MID_SNAPSHOT) {
            parts.push(format!(
                "{KILL_MID_SNAPSHOT}={}/{kills} mid-write",
                self.hit.get(KILL_MID_SNAPSHOT).copied().unwrap_or(0)
            ));
        }
        if let Some(fills) = faults.get(DISK_FULL_REAL) {
            let exits = match (
                self.full_disk_exits.iter().min(),
                self.full_disk_exits.iter().max(),
            ) {
                (Some(lo), Some(hi)) => format!(
                    ", exited after {:.1}–{:.1} s",
                    lo.as_secs_f64(),
                    hi.as_secs_f64()
                ),
                _ => String::new(),
            };
            parts.push(format!(
                "{DISK_FULL_REAL}={}/{fills} (stopped {}{exits})",
                self.hit.get(DISK_FULL_REAL).copied().unwrap_or(0),
                self.stopped.get(DISK_FULL_REAL).copied().unwrap_or(0)
            ));
        }
        parts.retain(|p| !p.is_empty());
        parts.join("; ")
    }

    fn describe_disk(&self, faults: &BTreeMap<&'static str, usize>) -> String {
        let kinds: Vec<String> = DISK_KINDS
            .iter()
            .filter_map(|k| {
                let injected = *faults.get(k)?;
                Some(format!(
                    "{k}={}/{injected} (stopped {})",
                    self.hit.get(k).copied().unwrap_or(0),
                    self.stopped.get(k).copied().unwrap_or(0)
                ))
            })
            .collect();
        if kinds.is_empty() {
            return String::new();
        }
        let c = &self.counts;
        format!(
            "{}; disk counters: fsyncs failed {}, writes failed {}, fsyncs delayed {}, writes torn {}, refused after a tear {}",
            kinds.join(" "),
            c.failed_syncs,
            c.failed_writes,
            c.delayed_syncs,
            c.torn_writes,
            c.refused_after_crash
        )
    }
}

pub struct Report {
    pub seed: u64,
    /// Where the run ran, e.g. "in-process, 3 members".
    pub setting: String,
    pub faults: BTreeMap<&'static str, usize>,
    pub disk: DiskTally,
    pub operations: usize,
    pub observations: usize,
    pub undecided: usize,
    /// How long after the faults healed every agent held a lease again.
    pub recovered_in: Option<Duration>,
    pub violations: Vec<check::Violation>,
    /// The part of the history around the first violation.
    pub excerpt: String,
}

impl Report {
    pub fn line(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let disk = self.disk.describe(&self.faults);
        format!(
            "seed {} ({}): {} operations, {} watch events, faults [{}]{}, recovered in {}, violations: {}{}",
            self.seed,
            self.setting,
            self.operations,
            self.observations,
            faults.join(" "),
            if disk.is_empty() {
                String::new()
            } else {
                format!(", disk faults that hit [{disk}]")
            },
            self.recovered_in
                .map(|d| format!("{:.1}s", d.as_secs_f64()))
                .unwrap_or_else(|| "never".into()),
            self.violations.len(),
            if self.undecided > 0 {
                format!(" ({} histories too large to decide)", self.undecided)
            } else {
                String::new()
            }
        )
    }

    /// Prints the report and, if anything was violated, the history around the first one.
    pub fn print(&self) {
        println!("{}", self.line());
        // The first few tell the story; the rest are counted by checker.
        for v in self.violations.iter().take(12) {
            println!("  {v}");
        }
        if self.violations.len() > 12 {
            let mut by: BTreeMap<&str, usize> = BTreeMap::new();
            for v in &self.violations {
                *by.entry(v.check).or_default() += 1;
            }
            println!("  ... {} in all, by checker: {by:?}", self.violations.len());
        }
        if !self.violations.is_empty() {
            println!(
                "  --- history around the first violation (seed {}) ---",
                self.seed
            );
            for l in self.excerpt.lines() {
                println!("  {l}");
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgentMode {
    Run,
    /// Down (state forgotten but the wanted subnet, as in the agent's state file) until then.
    Crashed(Instant),
    /// Alive but not renewing until then.
    Stalled(Instant),
    /// Gone for good: never renews again.
    Departed,
}

struct Agent {
    name: String,
    mode: Mutex<AgentMode>,
    /// The lease the agent believes it holds.
    held: Mutex<Option<Held>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn short_client(urls: Vec<String>) -> Result<Client> {
    Ok(Client::with_options(
        urls,
        ClientOptions {
            attempt_timeout: Duration::from_secs(1),
            retry_for: Duration::from_secs(2),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(300),
            tls: Some(crate::admin_tls()),
            fail_when_none_listens: false,
        },
    )?)
}

fn held_of(l: &pb::Lease) -> Option<Held> {
    Some(Held {
        subnet: l.subnet.parse().ok()?,
        create_revision: l.create_revision,
    })
}

/// A definite answer, or `None` when the call may or may not have taken effect.
fn definite(e: &ClientError, call: &Call) -> Option<Ret> {
    let ClientError::Status(s) = e else {
        return None;
    };
    match (s.code(), call) {
        (Code::NotFound, Call::Renew { .. } | Call::Release) => Some(Ret::NoLease),
        (Code::FailedPrecondition, Call::Renew { .. }) => Some(Ret::Mismatch),
        (Code::ResourceExhausted | Code::InvalidArgument, Call::Acquire { .. }) => {
            Some(Ret::Refused(s.message().to_string()))
        }
        _ => None,
    }
}

async fn agent_loop(
    a: Arc<Agent>,
    client: Client,
    h: Arc<History>,
    ttl: Duration,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut wanted: Option<Ipv4Net> = None;
    let public_ip = format!("192.0.2.{}", 1 + seed % 250);
    while !stop.load(Ordering::Relaxed) {
        let mode = *lock(&a.mode);
        match mode {
            AgentMode::Departed => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            AgentMode::Crashed(until) | AgentMode::Stalled(until) if Instant::now() < until => {
                if matches!(mode, AgentMode::Crashed(_)) {
                    *lock(&a.held) = None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            AgentMode::Crashed(_) | AgentMode::Stalled(_) => *lock(&a.mode) = AgentMode::Run,
            AgentMode::Run => {}
        }
        let held = *lock(&a.held);
        let (call, result) = match held {
            None => {
                let call = Call::Acquire { wanted };
                let id = h.invoke(&a.name, call.clone());
                let req = pb::AcquireRequest {
                    node: a.name.clone(),
                    public_ip: public_ip.clone(),
                    wanted_subnet: wanted.map(|w| w.to_string()).unwrap_or_default(),
                    ..Default::default()
                };
                let r = client
                    .acquire(req)
                    .await
                    .map(|r| r.lease.as_ref().and_then(held_of));
                (call, (id, r.map(|l| l.map(Ret::Lease))))
            }
            Some(_) if rng.random_ratio(1, 40) => {
                let id = h.invoke(&a.name, Call::Release);
                let r = client.release(&a.name).await.map(|_| Some(Ret::Released));
                (Call::Release, (id, r))
            }
            Some(l) => {
                let call = Call::Renew {
                    create_revision: l.create_revision,
                };
                let id = h.invoke(&a.name, call.clone());
                let r = client
                    .renew(&a.name, l.create_revision)
                    .await
                    .map(|r| r.lease.as_ref().and_then(held_of).map(Ret::Lease));
                (call, (id, r))
            }
        };
        let (id, r) = result;
        let outcome = match &r {
            Ok(Some(ret)) => Outcome::Ok(ret.clone()),
            Ok(None) => Outcome::Unknown("answer without a lease".into()),
            Err(e) => match definite(e, &call) {
                Some(ret) => Outcome::Ok(ret),
                None => Outcome::Unknown(e.to_string()),
            },
        };
        h.complete(id, outcome.clone());
        // What the agent believes now.
        match (&call, &outcome) {
            (_, Outcome::Ok(Ret::Lease(l))) => {
                wanted = Some(l.subnet);
                *lock(&a.held) = Some(*l);
            }
            (Call::Release, _) | (_, Outcome::Ok(Ret::NoLease | Ret::Mismatch)) => {
                *lock(&a.held) = None
            }
            _ => {}
        }
        let pause = match (&call, &outcome) {
            (Call::Renew { .. }, Outcome::Ok(Ret::Lease(_))) => ttl / 3,
            (Call::Acquire { .. }, Outcome::Ok(Ret::Lease(_))) => ttl / 3,
            _ => Duration::from_millis(200),
        };
        tokio::time::sleep(pause).await;
    }
}

/// Reads the lease table every 250 ms into the history; with `latest`, also keeps the newest
/// read with its revision there, for a convergence check that has no client of its own.
pub(crate) async fn reader_loop(
    client: Client,
    h: Arc<History>,
    stop: Arc<AtomicBool>,
    latest: Option<Arc<Mutex<View>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let id = h.invoke("", Call::Read);
        let outcome = match client.list_leases().await {
            Ok(r) => {
                let leases = table(&r.leases);
                if let Some(l) = &latest {
                    *lock(l) = View {
                        revision: r.revision,
                        leases: leases.clone(),
                    };
                }
                Outcome::Ok(Ret::Table(leases))
            }
            Err(e) => Outcome::Unknown(e.to_string()),
        };
        h.complete(id, outcome);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn table(leases: &[pb::Lease]) -> BTreeMap<String, Ipv4Net> {
    leases
        .iter()
        .filter_map(|l| Some((l.node.clone(), l.subnet.parse().ok()?)))
        .collect()
}

/// A watcher's current view, for the convergence check.
pub(crate) use check::View;

fn seen_of(ev: &pb::LeaseEvent) -> Option<Seen> {
    let revision = ev.revision;
    match pb::EventKind::try_from(ev.kind).ok()? {
        pb::EventKind::Put => {
            let l = ev.lease.as_ref()?;
            Some(Seen::Put {
                revision,
                node: l.node.clone(),
                lease: held_of(l)?,
            })
        }
        pb::EventKind::Delete => {
            let l = ev.lease.as_ref()?;
            Some(Seen::Delete {
                revision,
                node: l.node.clone(),
                lease: held_of(l)?,
                expired: ev.reason == "expired",
            })
        }
        pb::EventKind::Config => Some(Seen::Config { revision }),
        pb::EventKind::Unspecified => None,
    }
}

pub(crate) async fn watcher_loop(
    n: usize,
    url: String,
    h: Arc<History>,
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
) {
    let Ok(client) = short_client(vec![url]) else {
        return;
    };
    let mut last = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match client.watch(last).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            // Progress comes every second; silence past that means a dead stream.
            let msg = match tokio::time::timeout(Duration::from_secs(6), stream.message()).await {
                Ok(Ok(Some(m))) => m,
                _ => break,
            };
            let seen = match msg.msg {
                Some(pb::watch_response::Msg::Snapshot(s)) => Some(Seen::Snapshot {
                    revision: s.revision,
                    leases: s
                        .leases
                        .iter()
                        .filter_map(|l| Some((l.node.clone(), held_of(l)?)))
                        .collect(),
                }),
                Some(pb::watch_response::Msg::Event(e)) => seen_of(&e),
                _ => None,
            };
            let Some(seen) = seen else { continue };
            last = seen.revision();
            {
                let mut v = lock(&view);
                v.revision = last;
                match &seen {
                    Seen::Snapshot { leases, .. } => {
                        v.leases = leases.iter().map(|(n, l)| (n.clone(), l.subnet)).collect()
                    }
                    Seen::Put { node, lease, .. } => {
                        v.leases.insert(node.clone(), lease.subnet);
                    }
                    Seen::Delete { node, .. } => {
                        v.leases.remove(node);
                    }
                    Seen::Config { .. } => {}
                }
            }
            h.observe(n, seen);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Restarts every member whose Raft stopped on a storage error although no disk fault of its
/// own explains it, and reports each as a violation: only a failing disk may stop a member.
async fn restart_stopped(
    c: &mut Controllers,
    h: &History,
    out: &mut Vec<check::Violation>,
) -> Result<()> {
    for i in 0..c.len() {
        let Some(why) = c.fatal(i, Duration::ZERO).await else {
            continue;
        };
        out.push(check::Violation {
            check: "disk-fatal",
            at: h.now(),
            node: String::new(),
            detail: format!(
                "member {} stopped on a storage error no disk fault explains: {why}",
                i + 1
            ),
        });
        h.fault(format!("member {} found stopped ({why}); restarted", i + 1));
        c.kill(i).await;
        c.restart(i)
            .await
            .with_context(|| format!("restart stopped member {}", i + 1))?;
    }
    Ok(())
}

/// A disk fault on member `target`: armed, then (for a failing disk) the member must stop, is
/// stopped for good, the disk is cleared and the member restarted from its data directory. The
/// counters say whether the fault really reached the disk.
#[allow(clippy::too_many_arguments)]
async fn disk_fault(
    c: &mut Controllers,
    h: &History,
    rng: &mut StdRng,
    kind: &'static str,
    target: usize,
    hold: Duration,
    tally: &mut DiskTally,
    out: &mut Vec<check::Violation>,
) -> Result<bool> {
    let Some(disk) = c.disk(target).cloned() else {
        return Ok(false);
    };
    // Everything random is drawn before waiting, so the schedule does not depend on timing.
    let delay = Duration::from_millis(rng.random_range(100..2000));
    let tear_at: u64 = rng.random_range(0..16_384);
    let down = Duration::from_millis(rng.random_range(300..1500));
    let member = target + 1;
    let before = disk_counter(kind, &disk.counts());
    match kind {
        DISK_FSYNC => {
            h.fault(format!("{DISK_FSYNC}: member {member} fsync → EIO"));
            disk.fail_fsync(true);
        }
        DISK_FULL => {
            h.fault(format!("{DISK_FULL}: member {member} writes → ENOSPC"));
            disk.fail_writes(Some(WriteFault::Enospc));
        }
        DISK_SLOW => {
            h.fault(format!(
                "{DISK_SLOW}: member {member} fsync +{delay:?} for {hold:?}"
            ));
            disk.slow_fsync(delay);
        }
        DISK_TORN => {
            h.fault(format!(
                "{DISK_TORN}: member {member} write torn after {tear_at} more bytes, then a dead disk"
            ));
            disk.tear_next_write_at(tear_at);
        }
        _ => return Ok(false),
    }
    let hit = |d: &twill_controller::disk::DiskFaults| disk_counter(kind, &d.counts()) > before;
    // A slow disk is slow for `hold`; a failing one is given at least 4 s to be written to
    // (a member idle that long may never touch it: that shows as a fault that never hit).
    let wait = if kind == DISK_SLOW {
        hold
    } else {
        hold.max(Duration::from_secs(4))
    };
    let mut stopped = c.fatal(target, wait).await;
    if stopped.is_none() && kind != DISK_SLOW {
        if !hit(&disk) {
            // Nothing reached the disk in time: disarm. A write that slipped in meanwhile
            // still has to stop the member.
            disk.clear();
        }
        if hit(&disk) {
            stopped = c.fatal(target, Duration::from_secs(10)).await;
        }
    }
    disk.clear();
    let was_hit = hit(&disk);
    if let Some(problem) = check::disk_fault(kind, was_hit, stopped.as_deref()) {
        out.push(check::Violation {
            check: "disk-fatal",
            at: h.now(),
            node: String::new(),
            detail: format!("member {member} after {kind}: {problem}"),
        });
    }
    *tally.hit.entry(kind).or_default() += usize::from(was_hit);
    if let Some(why) = stopped {
        *tally.stopped.entry(kind).or_default() += 1;
        h.fault(format!(
            "{kind}: member {member} stopped ({why}); restarted from its data dir on a healthy disk in {down:?}"
        ));
        c.kill(target).await;
        tokio::time::sleep(down).await;
        c.restart(target)
            .await
            .with_context(|| format!("restart member {member} after {kind}"))?;
    } else {
        h.fault(format!(
            "{kind}: member {member} disk healthy again, {}",
            if was_hit {
                "the fault hit"
            } else {
                "the fault never hit"
            }
        ));
    }
    Ok(true)
}

/// A real full disk under member process `target`: its tmpfs shrunk to what it uses, then
/// the member must exit non-zero within [`FULL_DISK_WAIT`] naming ENOSPC, unless it wrote
/// nothing meanwhile (injected, not hit). Then it is killed if it still runs, its tmpfs given
/// its room back, and it is restarted from its data directory after `hold`. `false` without
/// real disks (not root).
async fn full_disk_fault(
    c: &mut Controllers,
    h: &History,
    target: usize,
    leader: Option<usize>,
    hold: Duration,
    tally: &mut DiskTally,
    out: &mut Vec<check::Violation>,
) -> Result<bool> {
    let member = target + 1;
    h.fault(format!(
        "{DISK_FULL_REAL}: member {member} (leader {leader:?}) tmpfs shrunk to what it uses, waiting up to {FULL_DISK_WAIT:?} for it to exit"
    ));
    let Some(f) = c.fill_disk(target, FULL_DISK_WAIT).await? else {
        return Ok(false);
    };
    let hit = f.said_enospc();
    let last_words = f
        .log
        .lines()
        .rev()
        .find(|l| l.contains("No space left on device"))
        .or_else(|| f.log.lines().last())
        .unwrap_or("(nothing logged)")
        .to_string();
    let problem = match (f.exited, hit) {
        (Some(s), _) if s.success() => Some(format!("exited successfully ({s}) on a full disk")),
        (Some(s), false) => Some(format!(
            "exited ({s}) without naming the full disk; last words: {last_words}"
        )),
        (None, true) => Some(format!(
            "a write failed with ENOSPC but it still runs after {FULL_DISK_WAIT:?}: {last_words}"
        )),
        (Some(_), true) | (None, false) => None,
    };
    if let Some(problem) = problem {
        out.push(check::Violation {
            check: "disk-fatal",
            at: h.now(),
            node: String::new(),
            detail: format!("member {member} after {DISK_FULL_REAL}: {problem}"),
        });
    }
    *tally.hit.entry(DISK_FULL_REAL).or_default() += usize::from(hit);
    if f.exited.is_some() {
        *tally.stopped.entry(DISK_FULL_REAL).or_default() += 1;
        tally.full_disk_exits.push(f.waited);
    }
    h.fault(format!(
        "{DISK_FULL_REAL}: member {member} on {} bytes: {}; room again, restarted from its data dir in {hold:?}",
        f.size,
        match f.exited {
            Some(s) => format!("exited ({s}) after {:?}: {last_words}", f.waited),
            None if hit => format!("still runs after {:?}, killed", f.waited),
            None => format!("wrote nothing in {:?} (never hit), killed", f.waited),
        }
    ));
    c.kill(target).await;
    c.unfill_disk(target)?;
    tokio::time::sleep(hold).await;
    c.restart(target)
        .await
        .with_context(|| format!("restart member {member} after {DISK_FULL_REAL}"))?;
    Ok(true)
}

/// The fault schedule, run until `until`; returns how many faults of each kind it injected.
/// Kinds come from a shuffled deck, dealt again when empty, so every kind is drawn once before
/// any is drawn twice.
#[allow(clippy::too_many_arguments)]
async fn nemesis(
    c: &mut Controllers,
    agents: &[Arc<Agent>],
    h: &History,
    rng: &mut StdRng,
    ttl: Duration,
    until: Instant,
    kinds: &[&'static str],
    tally: &mut DiskTally,
    out: &mut Vec<check::Violation>,
) -> Result<BTreeMap<&'static str, usize>> {
    let mut count: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut deck: Vec<&'static str> = Vec::new();
    let n = c.len();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        if deck.is_empty() {
            deck = kinds.to_vec();
            deck.shuffle(rng);
        }
        let Some(kind) = deck.pop() else { break };
        // Most faults hit the leader: that is where they hurt.
        let leader = c.leader().await;
        let target = match leader {
            Some(l) if rng.random_ratio(2, 3) => l,
            _ => rng.random_range(0..n),
        };
        let hold = Duration::from_millis(rng.random_range(800..3000));
        match kind {
            KILL => {
                h.fault(format!(
                    "{KILL}: member {} (leader {leader:?}) for {hold:?}",
                    target + 1
                ));
                c.kill(target).await;
                tokio::time::sleep(hold).await;
                c.restart(target)
                    .await
                    .with_context(|| format!("restart member {}", target + 1))?;
            }
            KILL_MID_SNAPSHOT => {
                let at = if rng.random_ratio(1, 2) {
                    crate::procs::KillAt::Open
                } else {
                    crate::procs::KillAt::FirstBytes
                };
                h.fault(format!(
                    "{KILL_MID_SNAPSHOT}: member {} (leader {leader:?}) to be SIGKILLed at {at:?} of its next snapshot write (waiting up to 10 s)",
                    target + 1
                ));
                let Some(k) = c
                    .kill_mid_snapshot(target, Duration::from_secs(10), at)
                    .await?
                else {
                    continue;
                };
                // A kill that did not land mid-write is still a kill; it counts as injected,
                // not as hit.
                *tally.hit.entry(kind).or_default() += usize::from(k.mid_write());
                h.fault(format!(
                    "{KILL_MID_SNAPSHOT}: member {} killed after waiting {:?}: {}; {}; down for {hold:?}",
                    target + 1,
                    k.waited,
                    if k.mid_write() {
                        "landed mid-write"
                    } else if k.during_write {
                        "missed (the write had finished)"
                    } else {
                        "no write began in 10 s, killed anyway (not mid-write)"
                    },
                    k.files
                ));
                tokio::time::sleep(hold).await;
                c.restart(target)
                    .await
                    .with_context(|| format!("restart member {}", target + 1))?;
            }
            PARTITION => {
                // The target alone, or a whole minority.
                let mut side = vec![target];
                let minority = (n - 1) / 2;
                while side.len() < minority && rng.random_ratio(1, 2) {
                    let x = rng.random_range(0..n);
                    if !side.contains(&x) {
                        side.push(x);
                    }
                }
                h.fault(format!(
                    "{PARTITION}: members {side:?} (0-based) cut off for {hold:?}"
                ));
                c.partition(&side);
                tokio::time::sleep(hold).await;
                c.heal_network();
            }
            LOSSY => {
                let per_mille = rng.random_range(50..300);
                let delay = Duration::from_millis(rng.random_range(0..80));
                h.fault(format!(
                    "{LOSSY}: {per_mille}‰ lost, up to {delay:?} delay, for {hold:?}"
                ));
                c.degrade(per_mille, delay);
                tokio::time::sleep(hold).await;
                c.heal_network();
            }
            PAUSE => {
                // Long enough for the others to elect a new leader.
                let hold = hold.max(Duration::from_millis(1500));
                h.fault(format!(
                    "{PAUSE}: member {} SIGSTOP for {hold:?}",
                    target + 1
                ));
                c.signal_pause(target, true);
                tokio::time::sleep(hold).await;
                c.signal_pause(target, false);
            }
            CLOCK => {
                let ms: i64 = if rng.random_ratio(3, 4) {
                    rng.random_range(5_000..120_000)
                } else {
                    -rng.random_range(5_000..60_000)
                };
                h.fault(format!(
                    "{CLOCK}: member {} wall clock {ms:+} ms",
                    target + 1
                ));
                c.step_clock(target, ms);
            }
            CRASH_AGENT | STALL_AGENT => {
                let a = &agents[rng.random_range(0..agents.len())];
                let mut mode = lock(&a.mode);
                if *mode != AgentMode::Run {
                    continue;
                }
                if kind == CRASH_AGENT {
                    let down = Duration::from_millis(rng.random_range(200..2000));
                    h.fault(format!("{CRASH_AGENT}: {} down for {down:?}", a.name));
                    *mode = AgentMode::Crashed(Instant::now() + down);
                } else {
                    // Past the TTL, so the lease expires and the agent must notice.
                    let quiet = ttl + Duration::from_millis(rng.random_range(500..2500));
                    h.fault(format!("{STALL_AGENT}: {} silent for {quiet:?}", a.name));
                    *mode = AgentMode::Stalled(Instant::now() + quiet);
                }
            }
            DISK_FULL_REAL => {
                if !full_disk_fault(c, h, target, leader, hold, tally, out).await? {
                    continue;
                }
            }
            DISK_FSYNC | DISK_FULL | DISK_SLOW | DISK_TORN => {
                if !disk_fault(c, h, rng, kind, target, hold, tally, out).await? {
                    continue;
                }
            }
            _ => continue,
        }
        *count.entry(kind).or_default() += 1;
        restart_stopped(c, h, out).await?;
    }
    Ok(count)
}

/// Runs one campaign and checks its history.
pub async fn run(campaign: &Campaign) -> Result<Report> {
    let mut rng = StdRng::seed_from_u64(campaign.seed);
    let kinds = campaign
        .kinds
        .clone()
        .unwrap_or_else(|| kinds_of(campaign.mode).to_vec());
    // Members on tmpfs of their own only when a full disk may be drawn (root only).
    let real_disks = campaign.mode == Mode::Processes
        && kinds.contains(&DISK_FULL_REAL)
        && crate::netns::is_root();
    let mut controllers = Controllers::start(
        campaign.mode,
        campaign.members,
        campaign.ttl,
        campaign.seed,
        real_disks,
    )
    .await?;
    let urls = controllers.urls();
    let h = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();

    let spawn_agent = |name: String, seed: u64, tasks: &mut Vec<tokio::task::JoinHandle<()>>| {
        let a = Arc::new(Agent {
            name,
            mode: Mutex::new(AgentMode::Run),
            held: Mutex::new(None),
        });
        let client = short_client(urls.clone())?;
        tasks.push(tokio::spawn(agent_loop(
            a.clone(),
            client,
            h.clone(),
            campaign.ttl,
            seed,
            stop.clone(),
        )));
        anyhow::Ok(a)
    };
    let mut agents = Vec::new();
    for i in 0..campaign.agents {
        agents.push(spawn_agent(
            format!("node-{i}"),
            campaign.seed.wrapping_mul(1000) + i as u64,
            &mut tasks,
        )?);
    }
    tasks.push(tokio::spawn(reader_loop(
        short_client(urls.clone())?,
        h.clone(),
        stop.clone(),
        None,
    )));
    let mut views = Vec::new();
    for (n, u) in urls.iter().enumerate() {
        let v = Arc::new(Mutex::new(View::default()));
        views.push(v.clone());
        tasks.push(tokio::spawn(watcher_loop(
            n,
            u.clone(),
            h.clone(),
            v,
            stop.clone(),
        )));
    }

    let until = Instant::now() + campaign.faults_for;
    let mut disk = DiskTally::default();
    let mut runtime_violations = Vec::new();
    let faults = nemesis(
        &mut controllers,
        &agents,
        &h,
        &mut rng,
        campaign.ttl,
        until,
        &kinds,
        &mut disk,
        &mut runtime_violations,
    )
    .await;
    disk.counts = controllers.disk_counts();
    let outcome = match faults {
        Ok(faults) => {
            let r = heal_and_verify(
                campaign,
                &controllers,
                &agents,
                &h,
                &views,
                &mut rng,
                &mut runtime_violations,
                |name, seed| spawn_agent(name, seed, &mut tasks),
            )
            .await;
            r.map(|recovered| (faults, recovered))
        }
        Err(e) => Err(e),
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    controllers.shutdown().await;
    let (faults, recovered_in) = outcome?;

    let ops = h.ops();
    let observed = h.observations();
    let mut violations = runtime_violations;
    let ttl_us = campaign.ttl.as_micros() as Micros;
    check::reads_and_watchers(&ops, &observed, &mut violations);
    check::deadlines(&ops, &observed, ttl_us, 50_000, &mut violations);
    let (_, undecided) = check::linearizable(&ops, &observed, 2_000_000, &mut violations);
    violations.sort_by_key(|v| v.at);
    let excerpt = violations
        .first()
        .map(|v| excerpt(&h, v))
        .unwrap_or_default();
    Ok(Report {
        seed: campaign.seed,
        setting: format!(
            "{}, {} members{}",
            campaign.mode,
            campaign.members,
            if campaign.mode == Mode::Processes && !crate::netns::is_root() {
                format!(", {DISK_FULL_REAL} not offered: not root")
            } else {
                String::new()
            }
        ),
        faults,
        disk,
        operations: ops.len(),
        observations: observed.len(),
        undecided,
        recovered_in,
        violations,
        excerpt,
    })
}

/// Heals every fault, lets `departing` agents go and `newcomers` come, and checks (f): every
/// agent that wants a lease gets one within a bound, freed subnets are handed out again, and
/// (d) every watcher's view converges to the leader's state.
#[allow(clippy::too_many_arguments)]
async fn heal_and_verify(
    campaign: &Campaign,
    controllers: &Controllers,
    agents: &[Arc<Agent>],
    h: &History,
    views: &[Arc<Mutex<View>>],
    rng: &mut StdRng,
    out: &mut Vec<check::Violation>,
    mut spawn_agent: impl FnMut(String, u64) -> Result<Arc<Agent>>,
) -> Result<Option<Duration>> {
    controllers.heal_network();
    for a in agents {
        let mut m = lock(&a.mode);
        if *m != AgentMode::Departed {
            *m = AgentMode::Run;
        }
    }
    h.fault("healed: network whole, every agent running".into());
    let healed = Instant::now();
    let mut leaving: BTreeSet<String> = BTreeSet::new();
    while leaving.len() < campaign.departing.min(agents.len()) {
        let a = &agents[rng.random_range(0..agents.len())];
        if leaving.insert(a.name.clone()) {
            *lock(&a.mode) = AgentMode::Departed;
        }
    }
    h.fault(format!("departed: {leaving:?}"));
    let mut everyone: Vec<Arc<Agent>> = agents.to_vec();
    for i in 0..campaign.newcomers {
        everyone.push(spawn_agent(
            format!("late-{i}"),
            campaign.seed.wrapping_mul(7919) + i as u64,
        )?);
    }
    let client = short_client(controllers.urls())?;
    // Every departed lease must expire (TTL, plus a new leader's grace) and be handed out.
    let bound = campaign.ttl * 3 + Duration::from_secs(25);
    let wanted: BTreeSet<String> = everyone
        .iter()
        .map(|a| a.name.clone())
        .filter(|n| !leaving.contains(n))
        .collect();
    let departed_subnets: BTreeSet<Ipv4Net> = {
        let r = client.list_leases().await.ok();
        r.map(|r| {
            table(&r.leases)
                .into_iter()
                .filter(|(n, _)| leaving.contains(n))
                .map(|(_, s)| s)
                .collect()
        })
        .unwrap_or_default()
    };
    let mut recovered = None;
    let mut last_table = BTreeMap::new();
    let mut last_leases: Vec<pb::Lease> = Vec::new();
    while healed.elapsed() < bound {
        if let Ok(r) = client.list_leases().await {
            last_table = table(&r.leases);
            last_leases = r.leases;
            if check::liveness(&wanted, &last_table).is_none() {
                recovered = Some(healed.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if recovered.is_none() {
        let unsettled = check::liveness(&wanted, &last_table).unwrap_or_default();
        // The deadlines of leases that should have gone, and who leads, for the diagnosis.
        let extra: Vec<String> = last_leases
            .iter()
            .filter(|l| unsettled.lingering.contains(&l.node))
            .map(|l| format!("{} (deadline {} ms)", l.node, l.expires_at_ms))
            .collect();
        let leader = match client.status().await {
            Ok(s) => format!(
                "leader {} in term {}, its clock {} ms",
                s.leader,
                s.term,
                twill_controller::now_ms()
            ),
            Err(e) => format!("no status: {e}"),
        };
        out.push(check::Violation {
            check: "liveness",
            at: h.now(),
            node: String::new(),
            detail: format!(
                "{bound:?} after healing: without a lease {:?}, still holding after leaving {extra:?}; {leader}",
                unsettled.without
            ),
        });
    } else if let Some(detail) = check::reuse(&departed_subnets, &last_table) {
        out.push(check::Violation {
            check: "reuse",
            at: h.now(),
            node: String::new(),
            detail,
        });
    }

    // (d) Each watcher's view equals a linearizable read at the same revision.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut pending: BTreeMap<usize, String> = (0..views.len())
        .map(|w| (w, "no read of the lease table succeeded".to_string()))
        .collect();
    while !pending.is_empty() && Instant::now() < deadline {
        let Ok(r) = client.list_leases().await else {
            continue;
        };
        let truth = View {
            revision: r.revision,
            leases: table(&r.leases),
        };
        let settle = Instant::now() + Duration::from_secs(2);
        while Instant::now() < settle && !pending.is_empty() {
            let seen: BTreeMap<usize, View> = pending
                .keys()
                .map(|w| (*w, lock(&views[*w]).clone()))
                .collect();
            pending = check::unconverged(&seen, &truth);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    for (w, why) in pending {
        out.push(check::Violation {
            check: "watch-converge",
            at: h.now(),
            node: String::new(),
            detail: format!(
                "watcher of member {} never matched a read of the leader: {why}",
                w + 1
            ),
        });
    }
    Ok(recovered)
}

/// The history around a violation: that node's operations, watcher events and the faults,
/// three seconds either side.
pub(crate) fn excerpt(h: &History, v: &check::Violation) -> String {
    let from = v.at.saturating_sub(3_000_000);
    let to = v.at + 3_000_000;
    let mut lines: Vec<(Micros, String)> = Vec::new();
    for (at, f) in h.faults() {
        if at >= from && at <= to {
            lines.push((at, format!("{} FAULT {f}", secs(at))));
        }
    }
    for op in h.ops() {
        let relevant = v.node.is_empty() || op.node == v.node || op.call == Call::Read;
        if relevant && op.invoke >= from && op.invoke <= to {
            let outcome = match &op.outcome {
                Some(Outcome::Ok(Ret::Table(t))) => match t.get(&v.node) {
                    Some(s) if !v.node.is_empty() => format!("table with {} → {s}", v.node),
                    _ if !v.node.is_empty() => format!("table without {}", v.node),
                    _ => format!("table of {}", t.len()),
                },
                other => format!("{other:?}"),
            };
            lines.push((
                op.invoke,
                format!(
                    "{} .. {} {} {:?} → {outcome}",
                    secs(op.invoke),
                    op.complete.map(secs).unwrap_or_else(|| "?".into()),
                    if op.node.is_empty() {
                        "reader"
                    } else {
                        &op.node
                    },
                    op.call
                ),
            ));
        }
    }
    for o in h.observations() {
        let about = match &o.seen {
            Seen::Put { node, .. } | Seen::Delete { node, .. } => node == &v.node,
            _ => false,
        };
        if about && o.at >= from && o.at <= to {
            lines.push((
                o.at,
                format!("{} watcher {} {:?}", secs(o.at), o.watcher, o.seen),
            ));
        }
    }
    lines.sort_by_key(|l| l.0);
    lines
        .into_iter()
        .map(|l| l.1)
        .collect::<Vec<_>>()
        .join("\n")
}
