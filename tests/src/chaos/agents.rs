//! Chaos with real `twill agent` processes in network namespaces (needs root): the controller
//! and the agents are killed, paused and restarted, agents are cut off from the controller or
//! from each other by nftables in their namespace, and the controller's wall clock is stepped
//! (libfaketime), while a reader and a watcher in the controller's namespace record the lease
//! table. After healing, one agent leaves for good and a new node joins a pool that has no
//! other free subnet.
//!
//! The cuts count the packets they drop and the clock steps measure the controller's time
//! against the harness's: a fault that did not happen is reported (`fault-missed`), not
//! counted as tested.
//!
//! The agents' own calls happen in other processes and are not in the history, so this mode
//! checks what can be seen from outside: (a) no overlap in any read or watcher state, (d) the
//! watch stream in order and converged, and (f) every agent leased, its subnet.env and every
//! peer's routes matching the lease table. The pool has three subnets for the three live
//! nodes, so every node leased means the departed node's subnet was handed out again.
//! (b), (c) and (e), which need each holder's view, are checked in the other modes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::check::{self, Violation};
use super::history::{History, Outcome, Ret};
use super::{excerpt, reader_loop, short_client, watcher_loop, Campaign, Report, View};
use crate::netns::{
    cut_between, cut_dropped, in_netns, leases, reconnect, Dropped, LeaseSeen, Topology,
    CONTROLLER_ADDR,
};

/// Three subnets for three nodes: once one leaves, the newcomer (or a node that lost its own
/// lease while stalled) can only have the subnet it freed.
const CONTROLLER_FLAGS: &[&str] = &[
    "--network",
    "10.98.0.0/24",
    "--subnet-len",
    "28",
    "--subnet-min",
    "10.98.0.16",
    "--subnet-max",
    "10.98.0.48",
    "--lease-ttl",
    "3s",
    "--backend",
    "host-gw",
];
const TTL: Duration = Duration::from_secs(3);

pub const KILL_CONTROLLER: &str = "kill-controller";
pub const PAUSE_CONTROLLER: &str = "pause-controller";
pub const KILL_AGENT: &str = "kill-agent";
pub const STALL_AGENT: &str = "stall-agent";
/// One agent's namespace drops its traffic with the controller, for less or more than the TTL.
pub const CUT_CONTROLLER: &str = "cut-controller";
/// One node's namespace drops its traffic with another node's underlay address.
pub const CUT_UNDERLAY: &str = "cut-underlay";
/// The controller process's wall clock stepped by 2..30 s either way, then the controller
/// restarted on it (as after an NTP step and a reboot); the machine's clock is untouched.
pub const CLOCK_STEP_CONTROLLER: &str = "clock-step-controller";
/// Every fault kind of this mode.
pub const KINDS: [&str; 7] = [
    KILL_CONTROLLER,
    PAUSE_CONTROLLER,
    KILL_AGENT,
    STALL_AGENT,
    CUT_CONTROLLER,
    CUT_UNDERLAY,
    CLOCK_STEP_CONTROLLER,
];
/// The kinds whose happening is measured (packets dropped, clock offset seen).
pub const CUT_AND_CLOCK_KINDS: [&str; 3] = [CUT_CONTROLLER, CUT_UNDERLAY, CLOCK_STEP_CONTROLLER];

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// A cut that ends this long before the lease's deadline must not cost the lease: the agent
/// renews with a third of the TTL left, and TCP's retransmission after the cut takes up to
/// about a second.
const RENEW_SLACK: Duration = Duration::from_millis(1500);
/// How long the controller may take to answer the nemesis, a restart included.
const ANSWER: Duration = Duration::from_secs(20);

/// What the measured faults were seen to do, beyond their count.
#[derive(Clone, Debug, Default)]
pub struct Evidence {
    /// Packets dropped by the cuts' nftables counters, by kind, the probes' included.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Of those, the TCP packets: the agents' own traffic with the controller (gRPC) for
    /// cut-controller; there is none between host-gw nodes.
    pub tcp_dropped: BTreeMap<&'static str, u64>,
    /// Faults that did not happen (a cut that dropped nothing, a clock step the controller did
    /// not run on), by kind; each is also a `fault-missed` violation.
    pub missed: BTreeMap<&'static str, usize>,
    /// Per clock step: the controller's wall clock offset set, and the offset of its leader time
    /// from the harness's clock measured after its restart, in ms.
    pub clock_offsets_ms: Vec<(i64, i64)>,
    /// Cut-controller faults shorter than the TTL after which the node held the same lease,
    /// and those after which it held a new one.
    pub short_cut_leases: (usize, usize),
    /// The same for cuts longer than the TTL.
    pub long_cut_leases: (usize, usize),
}

impl Evidence {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.dropped.is_empty() {
            let d: Vec<String> = self
                .dropped
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let tcp: Vec<String> = self
                .tcp_dropped
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(format!(
                "packets dropped {} (TCP {})",
                d.join(" "),
                tcp.join(" ")
            ));
        }
        let ((ks, ns), (kl, nl)) = (self.short_cut_leases, self.long_cut_leases);
        if ks + ns + kl + nl > 0 {
            parts.push(format!(
                "leases kept/new after cut-controller: short {ks}/{ns}, long {kl}/{nl}"
            ));
        }
        if !self.clock_offsets_ms.is_empty() {
            let o: Vec<String> = self
                .clock_offsets_ms
                .iter()
                .map(|(set, seen)| format!("{:+.1}/{:+.1}", *set as f64 / 1e3, *seen as f64 / 1e3))
                .collect();
            parts.push(format!("clock offsets set/seen (s) {}", o.join(" ")));
        }
        if !self.missed.is_empty() {
            parts.push(format!("faults missed {:?}", self.missed));
        }
        parts
            .iter()
            .map(|p| format!("; {p}"))
            .collect::<Vec<_>>()
            .concat()
    }
}

/// The controller's wall clock under libfaketime: `twill controller` is started through a
/// wrapper that preloads it, reading the offset from a file the nemesis rewrites. Monotonic
/// time is left alone (DONT_FAKE_MONOTONIC), as an NTP step leaves it; other `twill` commands
/// go through the wrapper unfaked.
struct FakeClock {
    dir: tempfile::TempDir,
    offset_ms: i64,
}

impl FakeClock {
    fn new(bin: &Path) -> Result<FakeClock> {
        if !Path::new(LIBFAKETIME).exists() {
            bail!("{CLOCK_STEP_CONTROLLER} needs {LIBFAKETIME} (apt-get install faketime)");
        }
        let dir = tempfile::tempdir()?;
        let c = FakeClock { dir, offset_ms: 0 };
        c.write()?;
        let (file, bin) = (c.file(), bin.display().to_string());
        let shown = file.display().to_string();
        if bin.contains('\'') || shown.contains('\'') {
            bail!("a quote in {bin} or {shown}");
        }
        let script = format!(
            "#!/bin/sh\nif [ \"$1\" = controller ]; then\n    \
             export LD_PRELOAD='{LIBFAKETIME}' FAKETIME_TIMESTAMP_FILE='{shown}' \
             FAKETIME_NO_CACHE=1 DONT_FAKE_MONOTONIC=1\nfi\nexec '{bin}' \"$@\"\n"
        );
        let wrapper = c.wrapper();
        std::fs::write(&wrapper, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
        Ok(c)
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("offset")
    }

    fn wrapper(&self) -> PathBuf {
        self.dir.path().join("twill")
    }

    /// Writes the offset, as libfaketime reads it: "+5.000" or "-3.250" seconds.
    fn write(&self) -> Result<()> {
        let o = self.offset_ms;
        let sign = if o < 0 { '-' } else { '+' };
        let text = format!("{sign}{}.{:03}\n", o.abs() / 1000, o.abs() % 1000);
        std::fs::write(self.file(), text).context("write the fake clock's offset")
    }
}

/// How far the controller's leader time is from the harness's wall clock, in ms, and the
/// measurement's uncertainty: a token made now expires an hour after the leader's now.
fn leader_offset_ms(t: &Topology) -> Result<(i64, i64)> {
    let before = twill_proto::now_ms() as i64;
    let out = t.twill(&["token", "create", "--json", "--ttl", "1h"])?;
    let after = twill_proto::now_ms() as i64;
    let v: serde_json::Value = serde_json::from_str(out.trim())
        .with_context(|| format!("token create printed {out:?}"))?;
    let Some(expires) = v["expires_at_ms"].as_u64() else {
        bail!("token create printed no expires_at_ms: {out:?}");
    };
    Ok((
        expires as i64 - 3_600_000 - (before + after) / 2,
        (after - before) / 2,
    ))
}

/// `f`'s first success, tried every 200 ms for up to `within`: the controller may still be
/// starting after a restart.
fn retry<T>(within: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `node`'s lease once it holds one, polled for up to `within`.
fn wait_lease(t: &Topology, node: &str, within: Duration) -> Option<LeaseSeen> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(l) = leases(t).ok().and_then(|mut ls| ls.remove(node)) {
            return Some(l);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Where the nemesis records what it saw.
struct Seen<'a> {
    h: &'a History,
    ev: &'a mut Evidence,
    out: &'a mut Vec<Violation>,
}

impl Seen<'_> {
    fn violation(&mut self, check: &'static str, node: &str, detail: String) {
        self.out.push(Violation {
            check,
            at: self.h.now(),
            node: node.to_string(),
            detail,
        });
    }

    /// A fault that did not happen: counted apart, and a violation, as it tested nothing.
    fn missed(&mut self, kind: &'static str, node: &str, detail: String) {
        *self.ev.missed.entry(kind).or_default() += 1;
        self.violation("fault-missed", node, format!("{kind}: {detail}"));
    }
}

/// Cuts node namespace `ns` from `peer` for `hold` while it pings `peer` five times a second,
/// so that the cut has packets to drop even when the agents are quiet; heals it and returns
/// what it dropped.
fn cut_with_probe(ns: &str, peer: &str, hold: Duration) -> Result<Dropped> {
    cut_between(ns, peer)?;
    let ping = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-q", "-i", "0.2", "-w"])
        .arg((hold.as_secs() + 2).to_string())
        .arg(peer)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    std::thread::sleep(hold);
    let dropped = cut_dropped(ns);
    if let Ok(mut p) = ping {
        let _ = p.kill();
        let _ = p.wait();
    }
    reconnect(ns)?;
    dropped
}

/// Records a cut's dropped packets; a cut that dropped none did not happen.
fn count_cut(s: &mut Seen, kind: &'static str, node: &str, hold: Duration, d: Dropped) {
    *s.ev.dropped.entry(kind).or_default() += d.total();
    *s.ev.tcp_dropped.entry(kind).or_default() += d.tcp;
    if d.total() == 0 {
        s.missed(kind, node, format!("no packet dropped in {hold:?}"));
    }
}

/// Cuts node `i` off from the controller for less or more than the TTL, then heals it. The
/// node must hold a lease again afterwards, on the same subnet (the pool has no other for it);
/// a cut that ended well before the lease's deadline must not have cost the lease.
fn cut_controller(t: &Topology, i: usize, rng: &mut StdRng, s: &mut Seen) -> Result<()> {
    let (name, ns) = (t.nodes[i].name.clone(), t.nodes[i].ns.clone());
    let short = rng.random_bool(0.5);
    let hold = if short {
        Duration::from_millis(rng.random_range(300..TTL.as_millis() as u64))
    } else {
        Duration::from_millis(
            rng.random_range(TTL.as_millis() as u64 + 1000..=TTL.as_millis() as u64 * 3),
        )
    };
    let before = wait_lease(t, &name, Duration::from_secs(10));
    // The lease's time left, in leader time, as the cut begins.
    let left = match (&before, leader_offset_ms(t)) {
        (Some(l), Ok((offset, _))) => {
            Some(l.expires_at_ms as i64 - (twill_proto::now_ms() as i64 + offset))
        }
        _ => None,
    };
    s.h.fault(format!(
        "{CUT_CONTROLLER}: {name} cut off for {hold:?} ({} the {TTL:?} TTL), its lease {}",
        if short { "less than" } else { "more than" },
        match left {
            Some(ms) => format!("with {ms} ms left"),
            None => "unknown".into(),
        }
    ));
    let dropped = cut_with_probe(&ns, CONTROLLER_ADDR, hold)?;
    count_cut(s, CUT_CONTROLLER, &name, hold, dropped);
    let after = wait_lease(t, &name, TTL * 3 + Duration::from_secs(10));
    let kept = match (&before, &after) {
        (Some(b), Some(a)) => Some(a.create_revision == b.create_revision),
        _ => None,
    };
    s.h.fault(format!(
        "{CUT_CONTROLLER}: {name} back after {:.1} s: {} packets dropped ({} TCP); lease {}",
        hold.as_secs_f64(),
        dropped.total(),
        dropped.tcp,
        match (&after, kept) {
            (None, _) => "none".to_string(),
            (Some(a), Some(true)) => format!("{} kept", a.subnet),
            (Some(a), _) => format!("{} (rev {})", a.subnet, a.create_revision),
        }
    ));
    let tally = if short {
        &mut s.ev.short_cut_leases
    } else {
        &mut s.ev.long_cut_leases
    };
    match kept {
        Some(true) => tally.0 += 1,
        Some(false) => tally.1 += 1,
        None => {}
    }
    let (Some(b), Some(a)) = (&before, &after) else {
        if after.is_none() {
            s.violation(
                "cut-controller",
                &name,
                format!(
                    "no lease within {:?} of the cut's end",
                    TTL * 3 + Duration::from_secs(10)
                ),
            );
        }
        return Ok(());
    };
    if a.subnet != b.subnet {
        s.violation(
            "cut-controller",
            &name,
            format!("subnet {} before the cut, {} after", b.subnet, a.subnet),
        );
    }
    let safe = left.is_some_and(|ms| ms > (hold + RENEW_SLACK).as_millis() as i64);
    if short && safe && kept == Some(false) {
        s.violation(
            "cut-controller",
            &name,
            format!(
                "a {hold:?} cut ending {} ms before the lease's deadline cost the lease",
                left.unwrap_or_default() - hold.as_millis() as i64
            ),
        );
    }
    Ok(())
}

/// Cuts the underlay between nodes `a` and `b` (in `a`'s namespace) while `a` pings `b`: host-gw
/// agents send nothing to each other. Neither node's lease may change for it.
fn cut_underlay(t: &Topology, a: usize, b: usize, rng: &mut StdRng, s: &mut Seen) -> Result<()> {
    let hold = Duration::from_millis(rng.random_range(1000..4000));
    let (na, nb) = (t.nodes[a].name.clone(), t.nodes[b].name.clone());
    let before: Vec<Option<LeaseSeen>> = [&na, &nb]
        .iter()
        .map(|n| wait_lease(t, n, Duration::from_secs(10)))
        .collect();
    s.h.fault(format!(
        "{CUT_UNDERLAY}: {na} and {nb} cut apart for {hold:?}"
    ));
    let dropped = cut_with_probe(&t.nodes[a].ns, &t.nodes[b].addr, hold)?;
    s.h.fault(format!(
        "{CUT_UNDERLAY}: {na} and {nb} joined again after {:.1} s: {} packets dropped",
        hold.as_secs_f64(),
        dropped.total()
    ));
    count_cut(s, CUT_UNDERLAY, &na, hold, dropped);
    let now = retry(ANSWER, || leases(t))?;
    for (n, b) in [&na, &nb].into_iter().zip(before) {
        let Some(b) = b else { continue };
        let a = now.get(n.as_str());
        if a.is_none_or(|a| (&a.subnet, a.create_revision) != (&b.subnet, b.create_revision)) {
            s.violation(
                "cut-underlay",
                n,
                format!(
                    "lease changed across an underlay cut: {} (rev {}) before, {:?} after",
                    b.subnet, b.create_revision, a
                ),
            );
        }
    }
    Ok(())
}

/// Steps the controller's wall clock by 2..30 s either way and restarts the controller on it.
/// The sitting controller's leader time must not follow the step (it advances by monotonic
/// time from its start); the restarted one's must be off the harness's by the new offset,
/// which shows the step happened.
fn clock_step(
    t: &mut Topology,
    clock: &mut FakeClock,
    rng: &mut StdRng,
    s: &mut Seen,
) -> Result<()> {
    let mut step = rng.random_range(2000..=30_000);
    if rng.random_bool(0.5) {
        step = -step;
    }
    // Kept within a minute of the machine's clock, far inside the certificates' backdating.
    if (clock.offset_ms + step).abs() > 60_000 {
        step = -step;
    }
    let hold = Duration::from_millis(rng.random_range(500..2500));
    let before = retry(ANSWER, || leader_offset_ms(t))?;
    clock.offset_ms += step;
    clock.write()?;
    s.h.fault(format!(
        "{CLOCK_STEP_CONTROLLER}: wall clock stepped {:+.3} s (now {:+.3} s off the machine's), restarted after {hold:?}",
        step as f64 / 1e3,
        clock.offset_ms as f64 / 1e3
    ));
    std::thread::sleep(hold);
    let sitting = retry(ANSWER, || leader_offset_ms(t))?;
    t.stop_controller();
    t.start_controller(CONTROLLER_FLAGS)?;
    let after = retry(ANSWER, || leader_offset_ms(t))
        .context("the controller restarted on a stepped clock")?;
    s.ev.clock_offsets_ms.push((clock.offset_ms, after.0));
    s.h.fault(format!(
        "{CLOCK_STEP_CONTROLLER}: leader time off the harness's by {} ms before, {} ms with the step under the sitting controller, {} ms after the restart (±{} ms)",
        before.0, sitting.0, after.0, after.1.max(sitting.1)
    ));
    let tolerance = 500 + before.1 + sitting.1;
    if (sitting.0 - before.0).abs() > tolerance {
        s.violation(
            "clock-step",
            "controller",
            format!(
                "leader time moved {} ms with a {step} ms wall clock step, without a restart",
                sitting.0 - before.0
            ),
        );
    }
    if (after.0 - clock.offset_ms).abs() > 500 + after.1 {
        s.missed(
            CLOCK_STEP_CONTROLLER,
            "controller",
            format!(
                "restarted on a clock {} ms off, its leader time is {} ms off",
                clock.offset_ms, after.0
            ),
        );
    }
    Ok(())
}

fn signal(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process this harness started and still owns.
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
}

/// The newest linearizable read of the lease table.
fn last_table(h: &History) -> Option<BTreeMap<String, Ipv4Net>> {
    h.ops().into_iter().rev().find_map(|o| match o.outcome {
        Some(Outcome::Ok(Ret::Table(t))) => Some(t),
        _ => None,
    })
}

/// Runs one campaign with `nodes` agents (plus one newcomer) for `faults_for`, every kind of
/// fault. Blocking.
pub fn run(seed: u64, nodes: usize, faults_for: Duration, bin: &Path) -> Result<Report> {
    let c = Campaign::new(seed, super::Mode::Processes, 1, faults_for);
    run_campaign(&c, nodes, bin).map(|(r, _)| r)
}

/// Runs `c` with `nodes` agents: its seed, its time of faults and its kinds (`None`: [`KINDS`]);
/// the rest of `c` is for the other modes. Returns the report and what the measured faults
/// were seen to do. Blocking.
pub fn run_campaign(c: &Campaign, nodes: usize, bin: &Path) -> Result<(Report, Evidence)> {
    let (seed, faults_for) = (c.seed, c.faults_for);
    let kinds = c.kinds.clone().unwrap_or_else(|| KINDS.to_vec());
    if let Some(k) = kinds.iter().find(|k| !KINDS.contains(k)) {
        bail!("{k} is not a fault kind of agents mode");
    }
    if kinds.is_empty() || nodes < 2 {
        bail!("agents mode needs a fault kind and two nodes at least");
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clock = if kinds.contains(&CLOCK_STEP_CONTROLLER) {
        Some(FakeClock::new(bin)?)
    } else {
        None
    };
    let bin = clock
        .as_ref()
        .map(FakeClock::wrapper)
        .unwrap_or(bin.to_path_buf());
    // Runs in one process (tests side by side) need namespaces of their own.
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let mut t = Topology::new(&format!("ch{run}-"), nodes + 1, &bin)?;
    t.agent_resync = "1s".into();
    // The tests' CA, so the observer's admin credential is good for this controller.
    t.ca_file = Some(crate::write_ca(&t.dir)?);
    t.start_controller(CONTROLLER_FLAGS)?;
    for i in 0..nodes {
        t.start_agent(i)?;
    }
    let h = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let view = Arc::new(Mutex::new(View::default()));
    let read = Arc::new(Mutex::new(View::default()));
    let observer = {
        let (h, stop, view, read) = (h.clone(), stop.clone(), view.clone(), read.clone());
        let ns = t.ctl_ns.clone();
        let url = t.controller_url();
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                Box::pin(async move {
                    let Ok(client) = short_client(vec![url.clone()]) else {
                        return;
                    };
                    let reader =
                        tokio::spawn(reader_loop(client, h.clone(), stop.clone(), Some(read)));
                    watcher_loop(0, url, h, view, stop).await;
                    let _ = reader.await;
                })
            })
        })
    };

    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut evidence = Evidence::default();
    let mut violations = Vec::new();
    // Dealt from a shuffled deck, as in the other modes: every kind once before any twice.
    let mut deck: Vec<&'static str> = Vec::new();
    let until = Instant::now() + faults_for;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..1500)));
        if deck.is_empty() {
            deck = kinds.clone();
            deck.shuffle(&mut rng);
        }
        let Some(kind) = deck.pop() else { break };
        let hold = Duration::from_millis(rng.random_range(500..2500));
        let node = rng.random_range(0..nodes);
        let mut seen = Seen {
            h: &h,
            ev: &mut evidence,
            out: &mut violations,
        };
        match kind {
            KILL_CONTROLLER => {
                h.fault(format!("{kind}: SIGKILL, restarted after {hold:?}"));
                t.stop_controller();
                std::thread::sleep(hold);
                t.start_controller(CONTROLLER_FLAGS)?;
            }
            PAUSE_CONTROLLER => {
                h.fault(format!("{kind}: SIGSTOP for {hold:?}"));
                if let Some(c) = &t.controller {
                    signal(c, libc::SIGSTOP);
                    std::thread::sleep(hold);
                    signal(c, libc::SIGCONT);
                }
            }
            KILL_AGENT => {
                h.fault(format!(
                    "{kind}: {} SIGKILL, restarted after {hold:?}",
                    t.nodes[node].name
                ));
                t.stop_agent(node);
                std::thread::sleep(hold);
                t.start_agent(node)?;
            }
            STALL_AGENT => {
                // Past the TTL: the lease expires under a live agent, which must notice.
                let quiet = TTL + hold;
                h.fault(format!(
                    "{kind}: {} SIGSTOP for {quiet:?}",
                    t.nodes[node].name
                ));
                if let Some(c) = &t.nodes[node].agent {
                    signal(c, libc::SIGSTOP);
                    std::thread::sleep(quiet);
                    signal(c, libc::SIGCONT);
                }
            }
            CUT_CONTROLLER => cut_controller(&t, node, &mut rng, &mut seen)?,
            CUT_UNDERLAY => {
                let other = (node + rng.random_range(1..nodes)) % nodes;
                cut_underlay(&t, node, other, &mut rng, &mut seen)?;
            }
            _ => {
                let Some(clock) = clock.as_mut() else {
                    bail!("{kind} drawn without a fake clock");
                };
                clock_step(&mut t, clock, &mut rng, &mut seen)?;
            }
        }
        *faults.entry(kind).or_default() += 1;
    }

    // Heal is implicit (every fault above ends itself). Node 0 leaves; the newcomer joins.
    let healed = Instant::now();
    let departed = t.nodes[0].name.clone();
    t.stop_agent(0);
    let newcomer = nodes;
    t.start_agent(newcomer)?;
    h.fault(format!(
        "healed; {departed} left, {} joined",
        t.nodes[newcomer].name
    ));
    let live: Vec<usize> = (1..=nodes).collect();
    let wanted: BTreeSet<String> = live.iter().map(|i| t.nodes[*i].name.clone()).collect();

    let bound = TTL * 3 + Duration::from_secs(30);
    let mut recovered = None;
    let mut why = String::from("no read yet");
    while healed.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(200));
        let Some(table) = last_table(&h) else {
            continue;
        };
        let holders: BTreeSet<String> = table.keys().cloned().collect();
        if holders != wanted {
            why = format!("leases held by {holders:?}, wanted {wanted:?}");
            continue;
        }
        // Each agent's subnet.env names its lease, and every peer routes to it, once.
        let mut ok = true;
        for i in &live {
            let subnet = table[&t.nodes[*i].name];
            let env =
                std::fs::read_to_string(t.nodes[*i].dir.join("subnet.env")).unwrap_or_default();
            let gw = env
                .lines()
                .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
                .and_then(|v| v.parse::<ipnet::Ipv4Net>().ok());
            if gw.is_none_or(|g| !subnet.contains(&g.addr())) {
                why = format!(
                    "{}: subnet.env says {gw:?}, lease is {subnet}",
                    t.nodes[*i].name
                );
                ok = false;
                break;
            }
            for j in live.iter().filter(|j| *j != i) {
                let peer = table[&t.nodes[*j].name].to_string();
                let routes = t.routes(*i);
                let n = routes
                    .iter()
                    .filter(|r| r.starts_with(&format!("{peer} ")))
                    .count();
                if n != 1 || routes.len() != live.len() - 1 {
                    why = format!(
                        "{}: routes {routes:?}, want one to {peer}",
                        t.nodes[*i].name
                    );
                    ok = false;
                }
            }
        }
        if ok {
            recovered = Some(healed.elapsed());
            break;
        }
    }
    if recovered.is_none() {
        violations.push(Violation {
            check: "liveness",
            at: h.now(),
            node: String::new(),
            detail: format!("{bound:?} after healing: {why}"),
        });
    }

    // (d) The watcher converges to a read: the same leases at the same revision.
    let deadline = Instant::now() + Duration::from_secs(10);
    let differs = loop {
        let read = read.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let views = BTreeMap::from([(0, view.lock().unwrap_or_else(|p| p.into_inner()).clone())]);
        let differs = check::unconverged(&views, &read);
        if differs.is_empty() || Instant::now() > deadline {
            break differs;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for why in differs.values() {
        violations.push(Violation {
            check: "watch-converge",
            at: h.now(),
            node: String::new(),
            detail: format!("the watcher's view never matched a read of the lease table: {why}"),
        });
    }
    stop.store(true, Ordering::Relaxed);
    observer
        .join()
        .map_err(|_| anyhow::anyhow!("observer thread panicked"))?
        .context("observer")?;
    drop(t);

    let ops = h.ops();
    let observed = h.observations();
    check::reads_and_watchers(&ops, &observed, &mut violations);
    violations.sort_by_key(|v| v.at);
    let report = Report {
        seed,
        setting: format!(
            "real agents, {nodes} nodes, 1 controller{}",
            evidence.describe()
        ),
        faults,
        disk: Default::default(),
        operations: ops.len(),
        observations: observed.len(),
        undecided: 0,
        recovered_in: recovered,
        excerpt: violations
            .first()
            .map(|v| excerpt(&h, v))
            .unwrap_or_default(),
        violations,
    };
    Ok((report, evidence))
}
