//! A follower's watchers served from the leader's own Watch stream, ahead of this member's log.
//!
//! A follower applies an entry after its own log sync and then one more round trip: openraft
//! keeps one append in flight per follower, so the commit index comes with the next append,
//! sent once the follower has answered the last. Under 1,000 watchers that put a follower's
//! watchers 3 ms behind the leader's at the median and 10 ms at p99. The leader streams every
//! event it has applied, committed by then, so a follower that holds such a stream may hand its
//! watchers what it brings before its own apply does: every member applies the same log, so
//! the events and their revisions are the same.
//!
//! A follower holds two streams, all events and changes only, because whether an event is only
//! a renewal is known where the lease's previous state is, and this member may not have it yet.
//! Each is held only while the follower serves watchers of its kind (agents watch changes only,
//! so the stream of every renewal is usually not held at all), and let go after a quiet spell
//! without them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::watch;
use tonic::metadata::MetadataValue;
use twill_proto::v1 as pb;
use twill_proto::v1::watch_response::Msg;

use crate::node::Member;
use crate::watch::Event;

/// How many events a feed holds ahead of this member's own apply; a member further behind
/// serves its watchers from its own log alone until it catches up.
pub const CAPACITY: usize = 10_000;

/// How long a feed is kept after the last watcher of its kind went: agents that reconnect
/// (a rolling restart, a member restarting) find it still there.
pub const IDLE: Duration = Duration::from_secs(30);

/// Events received from the leader's stream and not yet applied here.
#[derive(Debug)]
pub struct Ahead {
    /// The revision the stream started after: every event from there up to `last` was
    /// received. None: no stream, or one that ended.
    covered: Option<u64>,
    last: u64,
    events: VecDeque<Arc<Event>>,
    capacity: usize,
}

impl Ahead {
    pub fn new(capacity: usize) -> Self {
        Ahead {
            covered: None,
            last: 0,
            events: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// A stream that brings every event after `rev`.
    pub fn begin(&mut self, rev: u64) {
        self.events.clear();
        self.covered = Some(rev);
        self.last = rev;
    }

    /// The stream ended: what comes next may not follow on from what it brought.
    pub fn end(&mut self) {
        self.events.clear();
        self.covered = None;
    }

    pub fn is_open(&self) -> bool {
        self.covered.is_some()
    }

    /// Takes the stream's next event, dropping what `applied` (this member's revision) already
    /// holds. An event out of order ends the feed and is refused: a stream is in revision order.
    pub fn push(&mut self, ev: Arc<Event>, applied: u64) -> Result<(), OutOfOrder> {
        if self.covered.is_none() {
            return Err(OutOfOrder {
                got: ev.revision(),
                last: None,
            });
        }
        if ev.revision() <= self.last {
            let last = self.last;
            self.end();
            return Err(OutOfOrder {
                got: ev.revision(),
                last: Some(last),
            });
        }
        self.last = ev.revision();
        self.applied(applied);
        if ev.revision() <= applied {
            return Ok(());
        }
        if self.events.len() >= self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.covered = Some(old.revision());
            }
        }
        self.events.push_back(ev);
        Ok(())
    }

    /// Lets go of what this member has applied itself.
    pub fn applied(&mut self, rev: u64) {
        while self.events.front().is_some_and(|e| e.revision() <= rev) {
            self.events.pop_front();
        }
    }

    /// The events after `rev`, for a watcher that has had everything up to `rev`; none when the
    /// stream did not bring all of them (it started later, or is gone).
    pub fn after(&self, rev: u64) -> impl Iterator<Item = &Event> + '_ {
        let usable = self.covered.is_some_and(|c| c <= rev);
        let start = self.events.partition_point(|e| e.revision() <= rev);
        let end = if usable { self.events.len() } else { start };
        self.events.range(start..end).map(|e| &**e)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("the leader's watch stream sent revision {got} after {last:?}")]
pub struct OutOfOrder {
    got: u64,
    last: Option<u64>,
}

/// One kind of feed (every event, or changes only) and the watchers of that kind this member
/// serves, which decide whether it is held.
struct Feed {
    ahead: Mutex<Ahead>,
    watching: watch::Sender<usize>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            ahead: Mutex::new(Ahead::new(CAPACITY)),
            watching: watch::channel(0).0,
        }
    }
}

/// The two feeds of one member.
#[derive(Default)]
pub struct Feeds {
    all: Feed,
    changes: Feed,
}

impl Feeds {
    fn of(&self, omit_renewals: bool) -> &Feed {
        if omit_renewals {
            &self.changes
        } else {
            &self.all
        }
    }

    /// A client's watcher of this kind opened on this member.
    pub fn watcher_opened(&self, omit_renewals: bool) {
        self.of(omit_renewals).watching.send_modify(|n| *n += 1);
    }

    pub fn watcher_closed(&self, omit_renewals: bool) {
        self.of(omit_renewals)
            .watching
            .send_modify(|n| *n = n.saturating_sub(1));
    }

    /// The feed for watchers with or without renewals. Lock it after the state machine, never
    /// the other way round: a watcher reads both under the state machine's lock.
    pub fn lock(&self, omit_renewals: bool) -> MutexGuard<'_, Ahead> {
        self.of(omit_renewals)
            .ahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps one feed filled from whichever member leads while this member serves watchers of its
/// kind, for as long as it runs; `idle` is how long it is kept without any. A leader has nothing
/// to be fed: its watchers read what it applied.
pub async fn run(m: Arc<Member>, omit_renewals: bool, idle: Duration) {
    let mut stopping = m.stopping();
    let mut server = m.raft.server_metrics();
    let mut watching = m.feeds.of(omit_renewals).watching.subscribe();
    let kind = if omit_renewals { "changes" } else { "all" };
    loop {
        if *stopping.borrow() {
            break;
        }
        if *watching.borrow_and_update() == 0 {
            m.feeds.lock(omit_renewals).end();
            tokio::select! {
                r = watching.wait_for(|n| *n > 0) => if r.is_err() { break },
                _ = stopping.wait_for(|s| *s) => break,
            }
            continue;
        }
        let (state, leader) = {
            let s = server.borrow_and_update();
            let addr = s.current_leader.and_then(|id| {
                s.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| (id, n.addr.clone()))
            });
            (s.state, addr)
        };
        let target = match (state, leader) {
            (ServerState::Follower | ServerState::Learner, Some((id, addr))) if id != m.id => {
                Some((id, addr))
            }
            _ => None,
        };
        let Some((leader, addr)) = target else {
            m.feeds.lock(omit_renewals).end();
            tokio::select! {
                r = server.changed() => if r.is_err() { break },
                _ = stopping.wait_for(|s| *s) => break,
            }
            continue;
        };
        let span = tracing::debug_span!("watch_feed", kind, leader);
        let ended = tokio::select! {
            r = follow(&m, &addr, omit_renewals) => Some(r),
            // Any change of leader or role: start over from what it is now.
            _ = wait_leader_change(&mut server, leader) => None,
            _ = unwatched(&mut watching, idle) => None,
            _ = stopping.wait_for(|s| *s) => break,
        };
        m.feeds.lock(omit_renewals).end();
        match ended {
            Some(Err(e)) => {
                let _g = span.enter();
                tracing::debug!(error = %e, "feed from the leader's watch ended; watchers wait for this member's own log meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
            Some(Ok(())) => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
            }
            None => {}
        }
    }
    m.feeds.lock(omit_renewals).end();
}

/// Resolves once this member has served no watcher of the kind for `idle`.
async fn unwatched(watching: &mut watch::Receiver<usize>, idle: Duration) {
    loop {
        if watching.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        let gone = tokio::select! {
            _ = tokio::time::sleep(idle) => return,
            r = watching.wait_for(|n| *n > 0) => r.is_err(),
        };
        if gone {
            return std::future::pending().await;
        }
    }
}

async fn wait_leader_change(
    server: &mut tokio::sync::watch::Receiver<
        openraft::metrics::RaftServerMetrics<crate::NodeId, openraft::BasicNode>,
    >,
    leader: crate::NodeId,
) {
    let still = |s: &openraft::metrics::RaftServerMetrics<_, _>| {
        s.current_leader == Some(leader)
            && matches!(s.state, ServerState::Follower | ServerState::Learner)
    };
    if server.wait_for(|s| !still(s)).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error(transparent)]
    OutOfOrder(#[from] OutOfOrder),
}

/// Fills the feed from one stream of the leader's until it ends.
async fn follow(m: &Arc<Member>, addr: &str, omit_renewals: bool) -> Result<(), FeedError> {
    use twill_proto::version::{API, API_HEADER, RELEASE, RELEASE_HEADER};
    let mut client = m.forward_client(addr)?;
    let start = m.sm.read().alloc.revision();
    let mut req = tonic::Request::new(pb::WatchRequest {
        start_revision: start,
        omit_renewals,
    });
    req.metadata_mut()
        .insert(API_HEADER, MetadataValue::from(API));
    if let Ok(v) = RELEASE.parse() {
        req.metadata_mut().insert(RELEASE_HEADER, v);
    }
    let mut stream = client.watch(req).await?.into_inner();
    // From 0 the leader sends a snapshot first, which says where its events start.
    if start > 0 {
        m.feeds.lock(omit_renewals).begin(start);
    }
    while let Some(msg) = stream.message().await? {
        match msg.msg {
            Some(Msg::Snapshot(s)) => m.feeds.lock(omit_renewals).begin(s.revision),
            Some(Msg::Event(e)) => {
                let ev = Arc::new(Event::new(*e));
                let rev = ev.revision();
                let applied = m.sm.read().alloc.revision();
                m.feeds.lock(omit_renewals).push(ev, applied)?;
                if rev > applied {
                    m.applied.poke(omit_renewals, rev);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::tests::ev;

    fn revs(a: &Ahead, after: u64) -> Vec<u64> {
        a.after(after).map(Event::revision).collect()
    }

    #[test]
    fn events_beyond_this_members_own_revision_are_served_in_order() {
        let mut a = Ahead::new(100);
        a.begin(10);
        for r in 11..=15 {
            a.push(ev(r), 12).expect("in order");
        }
        // 11 and 12 are this member's own already.
        assert_eq!(revs(&a, 12), vec![13, 14, 15]);
        assert_eq!(revs(&a, 14), vec![15]);
        a.applied(14);
        assert_eq!(revs(&a, 14), vec![15]);
        assert_eq!(revs(&a, 15), Vec::<u64>::new());
    }

    /// A watcher behind the point the stream started from would skip the events between: it is
    /// given nothing from the feed and waits for this member's log.
    #[test]
    fn nothing_is_served_across_a_gap() {
        let mut a = Ahead::new(100);
        a.begin(20);
        a.push(ev(21), 18).expect("in order");
        assert!(revs(&a, 19).is_empty(), "19 and 20 were never received");
        assert_eq!(revs(&a, 20), vec![21]);
    }

    #[test]
    fn an_ended_stream_serves_nothing_and_takes_nothing() {
        let mut a = Ahead::new(100);
        a.begin(0);
        a.push(ev(1), 0).expect("in order");
        a.end();
        assert!(revs(&a, 0).is_empty());
        assert!(a.push(ev(2), 0).is_err());
        assert!(!a.is_open());
    }

    #[test]
    fn an_event_out_of_order_ends_the_feed() {
        let mut a = Ahead::new(100);
        a.begin(5);
        a.push(ev(6), 5).expect("in order");
        a.push(ev(7), 5).expect("in order");
        let e = a.push(ev(7), 5).expect_err("a repeat");
        assert_eq!(e.got, 7);
        assert!(!a.is_open());
        assert!(revs(&a, 5).is_empty());
    }

    #[test]
    fn a_full_feed_lets_its_oldest_go_and_serves_only_from_there() {
        let mut a = Ahead::new(3);
        a.begin(0);
        for r in 1..=5 {
            a.push(ev(r), 0).expect("in order");
        }
        assert_eq!(revs(&a, 2), vec![3, 4, 5]);
        assert!(revs(&a, 1).is_empty(), "2 was let go");
    }

    /// Changes only: revisions with gaps between them are still every change after the start.
    #[test]
    fn gaps_in_revisions_are_no_gaps_in_the_stream() {
        let mut a = Ahead::new(10);
        a.begin(3);
        a.push(ev(7), 3).expect("in order");
        a.push(ev(12), 3).expect("in order");
        assert_eq!(revs(&a, 3), vec![7, 12]);
        assert_eq!(revs(&a, 8), vec![12]);
    }
}
