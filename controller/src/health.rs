//! What each node agent last said about itself. Reports are frequent and only matter for a
//! while, so the leader keeps them in memory instead of writing each one through Raft; a new
//! leader knows a node again at its next report. Pure: the service passes the time in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use twill_proto::v1 as pb;

use crate::convert::InputError;

pub const MAX_PROBLEMS: usize = 16;
pub const MAX_PROBLEM_LEN: usize = 512;
pub const MAX_SESSIONS: usize = 256;
pub const MAX_FIELD_LEN: usize = 256;
/// A node is stale after this many of its own reporting intervals without a report.
pub const STALE_AFTER_INTERVALS: u32 = 3;
/// Reports of nodes that hold no lease are forgotten after this long, so a caller cannot
/// grow the board without bound by reporting for names that never hold a subnet.
pub const FORGET_UNLEASED_AFTER: Duration = Duration::from_secs(600);
/// How often the board is swept for such reports. A sweep looks up every node's lease; at every
/// report, 5,000 nodes reporting each 10 s made 2.5 million lookups a second and took most of a
/// core on the leader. Reports kept 10 s longer than 600 s change nothing.
pub const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Shortest and longest interval an agent may announce: the staleness verdict is derived
/// from it, and a huge one would keep a dead node looking fresh for ever.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

fn bad(field: &'static str, why: String) -> InputError {
    InputError { field, why }
}

/// Refuses a report outside the documented limits (proto `NodeHealth`).
pub fn validate(h: &pb::NodeHealth) -> Result<(), InputError> {
    if h.problems.len() > MAX_PROBLEMS {
        return Err(bad(
            "health.problems",
            format!("{} entries; at most {MAX_PROBLEMS}", h.problems.len()),
        ));
    }
    if let Some(p) = h.problems.iter().find(|p| p.len() > MAX_PROBLEM_LEN) {
        return Err(bad(
            "health.problems",
            format!("an entry of {} bytes; at most {MAX_PROBLEM_LEN}", p.len()),
        ));
    }
    if h.bgp_sessions.len() > MAX_SESSIONS {
        return Err(bad(
            "health.bgp_sessions",
            format!("{} entries; at most {MAX_SESSIONS}", h.bgp_sessions.len()),
        ));
    }
    let fields = [
        ("health.backend", &h.backend),
        ("health.version", &h.version),
    ];
    let sessions = h.bgp_sessions.iter().flat_map(|s| {
        [
            ("health.bgp_sessions.peer", &s.peer),
            ("health.bgp_sessions.state", &s.state),
            ("health.bgp_sessions.last_error", &s.last_error),
        ]
    });
    for (name, v) in fields.into_iter().chain(sessions) {
        if v.len() > MAX_FIELD_LEN {
            return Err(bad(
                name,
                format!("{} bytes; at most {MAX_FIELD_LEN}", v.len()),
            ));
        }
    }
    let interval = Duration::from_millis(h.interval_ms);
    if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        return Err(bad(
            "health.interval_ms",
            format!(
                "{} ms; between {} and {} ms",
                h.interval_ms,
                MIN_INTERVAL.as_millis(),
                MAX_INTERVAL.as_millis()
            ),
        ));
    }
    Ok(())
}

struct Report {
    health: pb::NodeHealth,
    at: Instant,
}

/// The last report per node.
#[derive(Default)]
pub struct Board {
    reports: BTreeMap<String, Report>,
    pruned_at: Option<Instant>,
}

impl Board {
    /// Keeps a report that [`validate`] accepted.
    pub fn record(&mut self, node: String, health: pb::NodeHealth, now: Instant) {
        self.reports.insert(node, Report { health, at: now });
    }

    /// Drops reports of nodes without a lease that have been silent for
    /// [`FORGET_UNLEASED_AFTER`], unless the last sweep was less than [`PRUNE_EVERY`] ago;
    /// returns whether it swept.
    pub fn prune(&mut self, has_lease: impl Fn(&str) -> bool, now: Instant) -> bool {
        if self
            .pruned_at
            .is_some_and(|at| now.saturating_duration_since(at) < PRUNE_EVERY)
        {
            return false;
        }
        self.pruned_at = Some(now);
        self.reports.retain(|node, r| {
            has_lease(node) || now.saturating_duration_since(r.at) < FORGET_UNLEASED_AFTER
        });
        true
    }

    pub fn len(&self) -> usize {
        self.reports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reports.is_empty()
    }

    /// Every node's last report, with its age and whether it is stale, by node name.
    pub fn list(&self, now: Instant) -> Vec<pb::NodeHealthEntry> {
        self.reports
            .iter()
            .map(|(node, r)| {
                let age = now.saturating_duration_since(r.at);
                let interval = Duration::from_millis(r.health.interval_ms);
                pb::NodeHealthEntry {
                    node: node.clone(),
                    health: Some(r.health.clone()),
                    age_ms: age.as_millis().try_into().unwrap_or(u64::MAX),
                    stale: age > interval * STALE_AFTER_INTERVALS,
                }
            })
            .collect()
    }
}

/// Whether an entry needs an operator's eye, and why, in a few words: stale, not ready, or a
/// BGP session down, except one to a peer `excused` says is itself at fault (a dead node takes
/// its sessions down with it; the nodes at the other end are not to blame). `None`: healthy.
pub fn verdict(e: &pb::NodeHealthEntry, excused: impl Fn(&str) -> bool) -> Option<String> {
    if e.stale {
        return Some(format!("no report for {} s", e.age_ms / 1000));
    }
    let h = e.health.as_ref()?;
    if !h.ready {
        return Some(match h.problems.first() {
            Some(p) => format!("not ready: {p}"),
            None => "not ready".into(),
        });
    }
    let down: Vec<&str> = h
        .bgp_sessions
        .iter()
        .filter(|s| s.state != "Established" && !excused(&s.peer))
        .map(|s| s.peer.as_str())
        .collect();
    if !down.is_empty() {
        return Some(format!("BGP down with {}", down.join(", ")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ready: bool) -> pb::NodeHealth {
        pb::NodeHealth {
            ready,
            problems: if ready {
                vec![]
            } else {
                vec!["last reconcile failed: File exists".into()]
            },
            reconcile_ok: ready,
            backend: "vxlan".into(),
            version: "0.1.0".into(),
            interval_ms: 1000,
            ..Default::default()
        }
    }

    #[test]
    fn a_node_goes_stale_after_three_missed_reports_and_unready_shows_why() {
        let t0 = Instant::now();
        let mut b = Board::default();
        b.record("a".into(), report(true), t0);
        b.record("b".into(), report(false), t0);
        let l = b.list(t0 + Duration::from_millis(2_900));
        assert!(l.iter().all(|e| !e.stale));
        assert_eq!(verdict(&l[0], |_| false), None);
        assert_eq!(
            verdict(&l[1], |_| false).as_deref(),
            Some("not ready: last reconcile failed: File exists")
        );
        let l = b.list(t0 + Duration::from_millis(3_100));
        assert!(l.iter().all(|e| e.stale));
        assert!(verdict(&l[0], |_| false).is_some_and(|v| v.starts_with("no report for")));
    }

    #[test]
    fn a_session_that_is_not_established_is_named() {
        let mut h = report(true);
        h.bgp_sessions = vec![
            pb::BgpSessionHealth {
                peer: "192.0.2.2".into(),
                state: "Established".into(),
                last_error: String::new(),
            },
            pb::BgpSessionHealth {
                peer: "192.0.2.254".into(),
                state: "Down".into(),
                last_error: "connection refused".into(),
            },
        ];
        let mut b = Board::default();
        let t0 = Instant::now();
        b.record("a".into(), h, t0);
        assert_eq!(
            verdict(&b.list(t0)[0], |_| false).as_deref(),
            Some("BGP down with 192.0.2.254")
        );
        assert_eq!(verdict(&b.list(t0)[0], |p| p == "192.0.2.254"), None);
    }

    #[test]
    fn oversized_reports_are_refused_field_by_field() {
        assert!(validate(&report(true)).is_ok());
        let mut h = report(true);
        h.problems = vec!["x".into(); MAX_PROBLEMS + 1];
        assert_eq!(validate(&h).unwrap_err().field, "health.problems");
        let mut h = report(true);
        h.problems = vec!["x".repeat(5 << 20)];
        assert_eq!(validate(&h).unwrap_err().field, "health.problems");
        let mut h = report(true);
        h.version = "v".repeat(MAX_FIELD_LEN + 1);
        assert_eq!(validate(&h).unwrap_err().field, "health.version");
        let mut h = report(true);
        h.bgp_sessions = vec![pb::BgpSessionHealth::default(); MAX_SESSIONS + 1];
        assert_eq!(validate(&h).unwrap_err().field, "health.bgp_sessions");
        for ms in [0, 99, 3_600_001, u64::MAX] {
            let mut h = report(true);
            h.interval_ms = ms;
            assert_eq!(
                validate(&h).unwrap_err().field,
                "health.interval_ms",
                "{ms}"
            );
        }
    }

    #[test]
    fn silent_nodes_without_a_lease_are_forgotten_and_leased_ones_kept() {
        let t0 = Instant::now();
        let mut b = Board::default();
        b.record("leased".into(), report(true), t0);
        b.record("gone".into(), report(true), t0);
        b.prune(|n| n == "leased", t0 + Duration::from_secs(60));
        assert_eq!(b.len(), 2);
        b.prune(|n| n == "leased", t0 + FORGET_UNLEASED_AFTER);
        let l = b.list(t0 + FORGET_UNLEASED_AFTER);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].node, "leased");
    }

    #[test]
    fn the_board_is_swept_once_per_interval_not_at_every_report() {
        let t0 = Instant::now();
        let mut b = Board::default();
        b.record("gone".into(), report(true), t0);
        assert!(b.prune(|_| false, t0));
        let late = t0 + FORGET_UNLEASED_AFTER;
        b.record("other".into(), report(true), late);
        // Due to be forgotten, but the last sweep was a moment ago by the clock it is given.
        assert!(!b.prune(|_| false, t0 + PRUNE_EVERY / 2));
        assert!(b.prune(|_| false, late));
        assert_eq!(b.len(), 1);
        assert!(!b.prune(|_| false, late + PRUNE_EVERY - Duration::from_millis(1)));
        assert!(b.prune(|_| false, late + PRUNE_EVERY));
    }
}
