//! Prometheus metrics for what an operator graphs: leadership, Raft progress, lease counts and
//! capacity, write rate, errors and latency, and how well writes batch.
//!
//! Counters and the latency histogram are updated where things happen; gauges are read from
//! Raft's own metrics and the state machine just before each scrape, so they are never stale.
//! Serving is `twill-telemetry`'s, shared with the agent.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use twill_telemetry::{prometheus_client, Endpoints};

use crate::node::Member;

/// Upper bounds (seconds) of the write latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Why a write was not committed: the `reason` label of `twill_controller_write_errors_total`.
#[derive(Clone, Copy, Debug)]
pub enum WriteError {
    NotLeader,
    NoQuorum,
    Fatal,
}

type ReasonLabel = Vec<(&'static str, &'static str)>;

impl WriteError {
    const ALL: [WriteError; 3] = [
        WriteError::NotLeader,
        WriteError::NoQuorum,
        WriteError::Fatal,
    ];

    fn label(self) -> ReasonLabel {
        let reason = match self {
            WriteError::NotLeader => "not_leader",
            WriteError::NoQuorum => "no_quorum",
            WriteError::Fatal => "fatal",
        };
        vec![("reason", reason)]
    }
}

/// What the member counts as it works (each handle shares its value with the registry).
pub struct Metrics {
    writes: Counter,
    write_errors: Family<ReasonLabel, Counter>,
    batches: Counter,
    batched_writes: Counter,
    watchers: Gauge,
    feeds_served: Gauge,
    events_ahead: Counter,
    write_seconds: Histogram,
    denied: Family<ReasonLabel, Counter>,
    /// Leases taken without their agent's instance because a member reads an older log format.
    pub older_member_acquires: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            writes: Counter::default(),
            write_errors: Family::default(),
            batches: Counter::default(),
            batched_writes: Counter::default(),
            watchers: Gauge::default(),
            feeds_served: Gauge::default(),
            events_ahead: Counter::default(),
            write_seconds: Histogram::new(BUCKETS),
            denied: Family::default(),
            older_member_acquires: Counter::default(),
        };
        // Every reason is served from the start, at 0: a graph of errors shows none instead of
        // no data, and `rate()` sees the first one (a series born at 1 has no increase).
        for why in WriteError::ALL {
            let _ = m.write_errors.get_or_create(&why.label());
        }
        m
    }
}

impl Metrics {
    pub fn proposed(&self) {
        self.writes.inc();
    }

    pub fn committed(&self, took: Duration) {
        self.write_seconds.observe(took.as_secs_f64());
    }

    pub fn failed(&self, why: WriteError) {
        self.write_errors.get_or_create(&why.label()).inc();
    }

    /// One Raft entry carrying `writes` client writes.
    pub fn batch(&self, writes: usize) {
        self.batches.inc();
        self.batched_writes.inc_by(writes as u64);
    }

    /// A call refused for its caller: `role` is the certificate's role, or "none".
    pub fn denied(&self, method: &'static str, role: &'static str) {
        self.denied
            .get_or_create(&vec![("method", method), ("role", role)])
            .inc();
    }

    /// A watch stream opened: a client's, or another member's feed.
    pub fn watch_opened(&self, feed: bool) {
        if feed {
            &self.feeds_served
        } else {
            &self.watchers
        }
        .inc();
    }

    pub fn watch_closed(&self, feed: bool) {
        if feed {
            &self.feeds_served
        } else {
            &self.watchers
        }
        .dec();
    }

    /// Events sent to this follower's watchers from the leader's stream, before it applied them.
    pub fn events_ahead(&self, n: u64) {
        self.events_ahead.inc_by(n);
    }

    /// Other members' feeds this member serves now.
    pub fn feeds_served(&self) -> i64 {
        self.feeds_served.get()
    }

    pub fn events_ahead_total(&self) -> u64 {
        self.events_ahead.get()
    }

    /// The watch streams this member serves now.
    pub fn watchers_open(&self) -> i64 {
        self.watchers.get()
    }
}

/// Values read from Raft and the state machine at scrape time.
#[derive(Default)]
struct Gauges {
    is_leader: Gauge,
    has_leader: Gauge,
    term: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    snapshot_index: Gauge,
    voters: Gauge,
    revision: Gauge,
    leases: Gauge,
    reservations: Gauge,
    retry_answers: Gauge,
    subnets: Gauge,
    nodes_reporting: Gauge,
    nodes_unhealthy: Gauge,
    peer_plain: Family<Vec<(&'static str, String)>, Gauge>,
}

fn int(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

impl Gauges {
    fn read(&self, m: &Member) {
        let x = m.raft.metrics().borrow().clone();
        let d = m.sm.read();
        self.is_leader
            .set(i64::from(x.state == ServerState::Leader));
        self.has_leader.set(i64::from(x.current_leader.is_some()));
        self.term.set(int(x.current_term));
        self.last_log_index.set(int(x.last_log_index.unwrap_or(0)));
        self.applied_index
            .set(int(x.last_applied.map(|l| l.index).unwrap_or(0)));
        self.snapshot_index
            .set(int(x.snapshot.map(|l| l.index).unwrap_or(0)));
        self.voters
            .set(int(x.membership_config.membership().voter_ids().count()));
        self.revision.set(int(d.alloc.revision()));
        self.leases.set(int(d.alloc.lease_count()));
        self.reservations.set(int(d.alloc.reservations().count()));
        self.retry_answers.set(int(d.alloc.retry_answers()));
        self.subnets
            .set(int(d.alloc.config().map(|c| c.v4_capacity()).unwrap_or(0)));
        // Health reports live on the leader only; elsewhere both read 0.
        let (reporting, unhealthy) = if x.state == ServerState::Leader {
            let reports = m
                .health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .list(std::time::Instant::now());
            let leases: Vec<_> = d
                .alloc
                .leases()
                .map(crate::convert::lease_to_proto)
                .collect();
            let bad = crate::picture::node_problems(&leases, &reports)
                .values()
                .filter(|p| p.is_some())
                .count();
            (reports.iter().filter(|r| !r.stale).count(), bad)
        } else {
            (0, 0)
        };
        self.nodes_reporting.set(int(reporting));
        self.nodes_unhealthy.set(int(unhealthy));
        // Only peers this member calls now: one removed from the cluster is dropped.
        self.peer_plain.clear();
        if x.state == ServerState::Leader {
            for (peer, plain) in m.formats.ways() {
                if x.membership_config.membership().get_node(&peer).is_some() {
                    self.peer_plain
                        .get_or_create(&vec![("peer", peer.to_string())])
                        .set(i64::from(plain));
                }
            }
        }
    }
}

/// The member's `/metrics` and `/healthz` (a controller has no readiness beyond answering).
pub fn endpoints(m: Arc<Member>) -> Endpoints {
    let mut r = Registry::default();
    let g = Gauges::default();
    for (name, help, gauge) in [
        (
            "twill_controller_is_leader",
            "1 if this member is the Raft leader",
            &g.is_leader,
        ),
        (
            "twill_controller_has_leader",
            "1 if this member knows a leader",
            &g.has_leader,
        ),
        ("twill_controller_term", "Current Raft term", &g.term),
        (
            "twill_controller_last_log_index",
            "Index of the last Raft log entry",
            &g.last_log_index,
        ),
        (
            "twill_controller_applied_index",
            "Index of the last applied Raft log entry",
            &g.applied_index,
        ),
        (
            "twill_controller_snapshot_index",
            "Index covered by the latest snapshot",
            &g.snapshot_index,
        ),
        (
            "twill_controller_voters",
            "Voting members in the cluster configuration",
            &g.voters,
        ),
        (
            "twill_controller_revision",
            "Allocator revision (bumped by every lease or config change)",
            &g.revision,
        ),
        ("twill_controller_leases", "Live subnet leases", &g.leases),
        (
            "twill_controller_reservations",
            "Subnet reservations",
            &g.reservations,
        ),
        (
            "twill_controller_retry_answers",
            "Answers kept so a retried write gets its first answer (fills to 16384, then stays)",
            &g.retry_answers,
        ),
        (
            "twill_controller_subnets",
            "IPv4 subnets the configuration can hand out",
            &g.subnets,
        ),
        (
            "twill_controller_nodes_reporting",
            "Nodes whose agent reported its health recently (on the leader; 0 elsewhere)",
            &g.nodes_reporting,
        ),
        (
            "twill_controller_nodes_unhealthy",
            "Nodes that need attention as twill status flags them (on the leader; 0 elsewhere)",
            &g.nodes_unhealthy,
        ),
    ] {
        r.register(name, help, gauge.clone());
    }
    r.register(
        "twill_controller_raft_peer_plain",
        "On the leader, per peer: 1 when its last Raft answer came over the main server because it took no Raft connections of its own (an older release mid-upgrade), 0 when on its Raft lane",
        g.peer_plain.clone(),
    );
    let k = &m.metrics;
    r.register(
        "twill_controller_watchers",
        "Open Watch streams on this member",
        k.watchers.clone(),
    );
    r.register(
        "twill_controller_watch_feeds_served",
        "Watch streams this member serves to other members, which pass the events on to their own watchers before applying them",
        k.feeds_served.clone(),
    );
    // Counters are named without `_total`: the encoder adds it.
    r.register(
        "twill_controller_watch_events_ahead",
        "Events this follower sent its watchers from the leader's stream, before applying them itself",
        k.events_ahead.clone(),
    );
    r.register(
        "twill_controller_writes",
        "Writes proposed on this member",
        k.writes.clone(),
    );
    r.register(
        "twill_controller_write_errors",
        "Writes this member could not commit, by reason",
        k.write_errors.clone(),
    );
    r.register(
        "twill_controller_batches",
        "Raft entries carrying client writes",
        k.batches.clone(),
    );
    r.register(
        "twill_controller_batched_writes",
        "Client writes carried in those entries",
        k.batched_writes.clone(),
    );
    r.register(
        "twill_controller_write_seconds",
        "Time from proposal to applied answer",
        k.write_seconds.clone(),
    );
    r.register(
        "twill_controller_denied_calls",
        "API calls refused for their caller's identity, by method and role",
        k.denied.clone(),
    );
    r.register(
        "twill_controller_older_member_acquires",
        "Leases taken without recording the agent's instance because a member runs an older release (mid-upgrade)",
        k.older_member_acquires.clone(),
    );
    Endpoints::new(r).with_refresh(move || g.read(&m))
}
