//! What happened in a chaos run, as the clients saw it: every operation with its invocation and
//! completion times and outcome, what each watcher was told, and when each fault began.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use ipnet::Ipv4Net;

/// Microseconds since the run began.
pub type Micros = u64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Acquire {
        wanted: Option<Ipv4Net>,
    },
    Renew {
        create_revision: u64,
    },
    Release,
    /// A linearizable read of the whole lease table.
    Read,
}

/// One lease as a client was told of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Held {
    pub subnet: Ipv4Net,
    pub create_revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    Lease(Held),
    /// Renew or Release of a node that holds no lease.
    NoLease,
    /// Renew of a lease instance other than the node's current one.
    Mismatch,
    Released,
    /// The pool had no free subnet (or another definite refusal that changed nothing).
    Refused(String),
    Table(BTreeMap<String, Ipv4Net>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok(Ret),
    /// Timed out or unavailable: it may or may not have taken effect.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct Op {
    /// The node the operation is about; empty for reads.
    pub node: String,
    pub call: Call,
    pub invoke: Micros,
    /// `None` while running or when the outcome is unknown.
    pub complete: Option<Micros>,
    pub outcome: Option<Outcome>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A full state: the view restarts from it.
    Snapshot {
        revision: u64,
        leases: BTreeMap<String, Held>,
    },
    Put {
        revision: u64,
        node: String,
        lease: Held,
    },
    Delete {
        revision: u64,
        node: String,
        lease: Held,
        expired: bool,
    },
    Config {
        revision: u64,
    },
}

impl Seen {
    pub fn revision(&self) -> u64 {
        match self {
            Seen::Snapshot { revision, .. }
            | Seen::Put { revision, .. }
            | Seen::Delete { revision, .. }
            | Seen::Config { revision } => *revision,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Observation {
    pub watcher: usize,
    pub at: Micros,
    pub seen: Seen,
}

pub struct History {
    start: Instant,
    ops: Mutex<Vec<Op>>,
    observed: Mutex<Vec<Observation>>,
    faults: Mutex<Vec<(Micros, String)>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            start: Instant::now(),
            ops: Mutex::default(),
            observed: Mutex::default(),
            faults: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl History {
    pub fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    /// Records an invocation; complete it with [`History::complete`].
    pub fn invoke(&self, node: &str, call: Call) -> usize {
        let mut ops = lock(&self.ops);
        ops.push(Op {
            node: node.to_string(),
            call,
            invoke: self.now(),
            complete: None,
            outcome: None,
        });
        ops.len() - 1
    }

    pub fn complete(&self, id: usize, outcome: Outcome) {
        let now = self.now();
        let mut ops = lock(&self.ops);
        let op = &mut ops[id];
        if !matches!(outcome, Outcome::Unknown(_)) {
            op.complete = Some(now);
        }
        op.outcome = Some(outcome);
    }

    pub fn observe(&self, watcher: usize, seen: Seen) {
        let at = self.now();
        lock(&self.observed).push(Observation { watcher, at, seen });
    }

    pub fn fault(&self, what: String) {
        let at = self.now();
        lock(&self.faults).push((at, what));
    }

    pub fn ops(&self) -> Vec<Op> {
        lock(&self.ops).clone()
    }

    pub fn observations(&self) -> Vec<Observation> {
        lock(&self.observed).clone()
    }

    pub fn faults(&self) -> Vec<(Micros, String)> {
        lock(&self.faults).clone()
    }
}

/// Seconds with milliseconds, for reports.
pub fn secs(t: Micros) -> String {
    format!("{:.3}s", t as f64 / 1e6)
}
