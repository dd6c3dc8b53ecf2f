//! Chaos with real `twill agent` processes in network namespaces (needs root): the controller
//! and the agents are killed, paused and restarted while a reader and a watcher in the
//! controller's namespace record the lease table. After healing, one agent leaves for good and
//! a new node joins a pool that has no other free subnet.
//!
//! The agents' own calls happen in other processes and are not in the history, so this mode
//! checks what can be seen from outside: (a) no overlap in any read or watcher state, (d) the
//! watch stream in order and converged, and (f) every agent leased, its subnet.env and every
//! peer's routes matching the lease table. The pool has three subnets for the three live
//! nodes, so every node leased means the departed node's subnet was handed out again.
//! (b), (c) and (e), which need each holder's view, are checked in the other modes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::check::{self, Violation};
use super::history::{History, Outcome, Ret};
use super::{excerpt, reader_loop, short_client, watcher_loop, Report, View};
use crate::netns::{in_netns, Topology};

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

/// Runs one campaign with `nodes` agents (plus one newcomer) for `faults_for`. Blocking.
pub fn run(seed: u64, nodes: usize, faults_for: Duration, bin: &std::path::Path) -> Result<Report> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Topology::new("ch", nodes + 1, bin)?;
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
    let observer = {
        let (h, stop, view) = (h.clone(), stop.clone(), view.clone());
        let ns = t.ctl_ns.clone();
        let url = t.controller_url();
        std::thread::spawn(move || {
            in_netns(&ns, move || {
                Box::pin(async move {
                    let Ok(client) = short_client(vec![url.clone()]) else {
                        return;
                    };
                    let reader = tokio::spawn(reader_loop(client, h.clone(), stop.clone()));
                    watcher_loop(0, url, h, view, stop).await;
                    let _ = reader.await;
                })
            })
        })
    };

    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    let until = Instant::now() + faults_for;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..1500)));
        let hold = Duration::from_millis(rng.random_range(500..2500));
        let kind =
            [KILL_CONTROLLER, PAUSE_CONTROLLER, KILL_AGENT, STALL_AGENT][rng.random_range(0..4)];
        let node = rng.random_range(0..nodes);
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
            _ => {
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

    let mut violations = Vec::new();
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

    // (d) The watcher converges to a read at the same revision.
    let deadline = Instant::now() + Duration::from_secs(10);
    let converged = loop {
        let last = last_table(&h);
        let v = view.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_ref() == Some(&v.leases) {
            break true;
        }
        drop(v);
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !converged {
        violations.push(Violation {
            check: "watch-converge",
            at: h.now(),
            node: String::new(),
            detail: "the watcher's view never matched a read of the lease table".into(),
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
    Ok(Report {
        seed,
        setting: format!("real agents, {nodes} nodes, 1 controller"),
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
    })
}
