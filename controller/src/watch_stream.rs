//! One watcher's `Watch` stream: a snapshot or the events after its revision, then every
//! change as this member applies it, with progress notes when quiet.
//!
//! The stream is polled by the connection's own task for that stream, with no task or channel
//! of ours between: a change wakes each watcher once, not twice, which is what fan-out to a
//! thousand watchers costs. A watcher that stops reading stops being polled once its HTTP/2
//! window is full, so it holds no more than that window on this member. An event the same for
//! every watcher is sent as the bytes encoded when it was applied.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use twill_proto::frame::WatchFrame;
use twill_proto::v1::{self as pb, watch_response};

use crate::allocator as alloc;
use crate::authz::{self, Caller};
use crate::convert::{config_to_proto, lease_to_proto};
use crate::node::Member;
use twill_proto::PAGE_LEASES;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchFrame, Status>> + Send>>;

/// The stream of one watcher that asked to start after revision `start` (0: from a snapshot),
/// with or without renewals. `permit` is its place under `--max-watches`, given back when the
/// stream is dropped.
pub fn serve(
    m: Arc<Member>,
    start: u64,
    omit_renewals: bool,
    caller: Caller,
    permit: OwnedSemaphorePermit,
) -> WatchStream {
    // Boxed, as is the rare wait in `catch_up` below: each message moves the stream's state and
    // its next future, which should not carry a whole watcher and an inline Raft read. (Alone,
    // this and the shared encoding cut members' CPU by 3-5 % in the scale bench.)
    let w = Box::new(Watcher {
        changed: if omit_renewals {
            m.applied.subscribe_changes()
        } else {
            m.applied.subscribe()
        },
        omit_renewals,
        stopping: m.stopping(),
        progress: Box::pin(tokio::time::sleep(m.opts.watch_progress)),
        _open: WatcherGauge::new(m.clone(), caller.is_member(), omit_renewals),
        _permit: permit,
        m,
        caller,
        start,
        sent: start,
        phase: Phase::CatchUp,
        queue: VecDeque::new(),
    });
    Box::pin(futures::stream::unfold(w, |mut w| async move {
        let msg = w.next().await?;
        Some((msg, w))
    }))
}

enum Phase {
    /// Before the first message: wait until this member has the watcher's revision.
    CatchUp,
    /// The first message: a snapshot, or the events after the watcher's revision.
    First,
    /// Every change after that.
    Follow,
    Ended,
}

struct Watcher {
    m: Arc<Member>,
    caller: Caller,
    start: u64,
    /// The last revision this watcher has been sent.
    sent: u64,
    phase: Phase,
    /// Renewals are left out, and the watcher is woken only by other changes.
    omit_renewals: bool,
    /// Messages made but not yet taken by the connection.
    queue: VecDeque<Result<WatchFrame, Status>>,
    changed: watch::Receiver<u64>,
    stopping: watch::Receiver<bool>,
    /// Reset rather than made anew on every change: a thousand watchers each arming a fresh
    /// timer per write is measurable.
    progress: Pin<Box<Sleep>>,
    _open: WatcherGauge,
    _permit: OwnedSemaphorePermit,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<WatchFrame, Status>> {
        loop {
            if let Some(msg) = self.queue.pop_front() {
                return Some(msg);
            }
            match self.phase {
                Phase::Ended => return None,
                Phase::CatchUp => {
                    self.phase = Phase::First;
                    if let Err(s) = Box::pin(self.catch_up()).await {
                        self.phase = Phase::Ended;
                        return Some(Err(s));
                    }
                }
                Phase::First => {
                    self.phase = Phase::Follow;
                    self.collect(true);
                    self.rearm(self.m.opts.watch_progress);
                }
                Phase::Follow => self.wait().await,
            }
        }
    }

    /// A member that restarted or lagged may not have reached the revision the watcher already
    /// saw. Serving its older state would take the watcher back in time (an agent would drop
    /// routes it just installed), so wait for it to catch up. Only a leader still behind, which
    /// knows everything committed, may answer with a snapshot: the watcher's revision then
    /// comes from an earlier incarnation of the cluster.
    async fn catch_up(&mut self) -> Result<(), Status> {
        if self.start == 0 {
            return Ok(());
        }
        let sm = self.m.sm.clone();
        let start = self.start;
        // Every applied revision, renewals too: the one asked for may be a renewal's.
        let mut changed = self.m.applied.subscribe();
        let caught_up = async {
            while sm.read().alloc.revision() < start {
                if changed.changed().await.is_err() {
                    return false;
                }
            }
            true
        };
        let wait = self.m.opts.write_timeout;
        if tokio::time::timeout(wait, caught_up).await.unwrap_or(false)
            || self.m.linearizable().await.is_ok()
        {
            return Ok(());
        }
        let rev = self.m.sm.read().alloc.revision();
        Err(Status::unavailable(format!(
            "this member is at revision {rev}, behind the requested {start}; resume the watch on another member"
        )))
    }

    /// Queues what the watcher has not been sent: on the first call a snapshot when it asked
    /// for one or when its revision is ahead of this member's (a leader of a later incarnation),
    /// else the events after [`Self::sent`], or a snapshot when they are no longer retained.
    fn collect(&mut self, first: bool) {
        let d = self.m.sm.read();
        let rev = d.alloc.revision();
        let history = if self.omit_renewals {
            &d.changes
        } else {
            &d.history
        };
        let events = if first && (self.start == 0 || self.start > rev) {
            None
        } else {
            history.since(self.sent)
        };
        match events {
            Some(evs) => {
                let before = self.sent;
                for e in evs {
                    self.sent = e.revision();
                    self.queue.push_back(Ok(frame(e, &self.caller)));
                }
                // Read under the same lock as `rev`: whatever else happened up to `rev` was a
                // renewal this watcher does not want, so it has had everything up to there.
                if self.omit_renewals {
                    self.sent = rev.max(before);
                }
            }
            None => {
                self.sent = rev;
                self.queue.extend(
                    snapshot_chunks(&d.alloc, &self.caller)
                        .into_iter()
                        .map(|m| Ok(m.into())),
                );
            }
        }
        // Then what the leader's stream brought beyond this member's own log. Everything up to
        // `rev` came from the log above; the feed is read under the same lock, so none of what
        // it holds beyond `rev` can have been let go meanwhile.
        let feed = self.m.feeds.lock(self.omit_renewals);
        let mut ahead = 0;
        for e in feed.after(self.sent.max(rev)) {
            self.sent = e.revision();
            self.queue.push_back(Ok(frame(e, &self.caller)));
            ahead += 1;
        }
        if ahead > 0 {
            self.m.metrics.events_ahead(ahead);
        }
    }

    /// Waits for a change, a quiet period (a progress note) or shutdown, and queues what it
    /// brings.
    async fn wait(&mut self) {
        let quiet = self.m.opts.watch_progress;
        tokio::select! {
            r = self.changed.changed() => match r {
                Ok(()) => {
                    self.collect(false);
                    self.rearm(quiet);
                }
                Err(_) => self.phase = Phase::Ended,
            },
            _ = self.progress.as_mut() => {
                // A watcher that omits renewals is not woken by them; this moves its revision
                // past them, so a resume does not ask for them again.
                if self.omit_renewals {
                    self.collect(false);
                }
                self.queue.push_back(Ok(watch_response::Msg::Progress(pb::WatchProgress {
                    revision: self.sent,
                })
                .into()));
                self.rearm(quiet);
            }
            _ = self.stopping.changed() => {
                self.queue.push_back(Err(Status::unavailable(
                    "controller member is shutting down; resume the watch on another member",
                )));
                self.phase = Phase::Ended;
            }
        }
    }

    fn rearm(&mut self, quiet: Duration) {
        self.progress.as_mut().reset(Instant::now() + quiet);
    }
}

/// An event as this watcher is sent it: the shared bytes, or a configuration with the secrets
/// it may not see left out.
fn frame(e: &crate::watch::Event, caller: &Caller) -> WatchFrame {
    match &e.encoded {
        Some(shared) => WatchFrame::Encoded(shared.clone()),
        None => {
            let mut ev = e.proto.clone();
            if let Some(cfg) = ev.config.as_mut() {
                authz::redact_config(cfg, caller);
            }
            watch_response::Msg::Event(Box::new(ev)).into()
        }
    }
}

/// The whole table at one revision, cut into chunks of [`PAGE_LEASES`] so that no message
/// grows with the table; an empty table is one chunk.
fn snapshot_chunks(a: &alloc::Allocator, caller: &Caller) -> Vec<pb::WatchResponse> {
    let leases: Vec<pb::Lease> = a.leases().map(lease_to_proto).collect();
    let mut config = a.config().map(config_to_proto);
    if let Some(cfg) = config.as_mut() {
        authz::redact_config(cfg, caller);
    }
    let mut chunks: Vec<Vec<pb::Lease>> = Vec::new();
    let mut it = leases.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(PAGE_LEASES).collect());
    }
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, leases)| pb::WatchResponse {
            msg: Some(watch_response::Msg::Snapshot(Box::new(pb::WatchSnapshot {
                revision: a.revision(),
                leases,
                config: config.clone(),
                config_present: config.is_some(),
                more: i + 1 < n,
            }))),
        })
        .collect()
}

/// Counts an open watch stream for as long as it is served: a client's, by kind, which is what
/// keeps this member's feed of that kind ([`crate::feed`]), or another member's feed, in a gauge
/// of its own.
struct WatcherGauge {
    m: Arc<Member>,
    feed: bool,
    omit_renewals: bool,
}

impl WatcherGauge {
    fn new(m: Arc<Member>, feed: bool, omit_renewals: bool) -> Self {
        m.metrics.watch_opened(feed);
        if !feed {
            m.feeds.watcher_opened(omit_renewals);
        }
        WatcherGauge {
            m,
            feed,
            omit_renewals,
        }
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        self.m.metrics.watch_closed(self.feed);
        if !self.feed {
            self.m.feeds.watcher_closed(self.omit_renewals);
        }
    }
}
