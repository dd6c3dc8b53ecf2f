//! The retained history of lease events that `Watch` streams are served from.
//!
//! Events are kept in revision order: every event of the kind a history keeps after `floor`
//! is present. The full history keeps every event; the history of changes leaves renewals out,
//! so its revisions have gaps. A watcher asking to resume from a revision below the floor gets a
//! full snapshot instead.
//!
//! Events are kept as they go on the wire, made once when applied and shared by both histories:
//! a change sent to thousands of watchers was converted (addresses formatted, maps copied) once
//! per watcher, which was most of what a member spent per delivery. Those the same for every
//! watcher are kept encoded too, so a watcher is sent the shared bytes (see
//! [`twill_proto::frame`]).

use std::collections::VecDeque;
use std::sync::Arc;

use prost::bytes::Bytes;
use twill_proto::frame::WatchFrame;
use twill_proto::v1::LeaseEvent;

/// One applied event as watchers are sent it.
#[derive(Debug)]
pub struct Event {
    pub proto: LeaseEvent,
    /// The whole `WatchResponse`, encoded once; none for a configuration change, whose
    /// secrets are redacted per watcher.
    pub encoded: Option<Bytes>,
}

impl Event {
    pub fn new(proto: LeaseEvent) -> Self {
        let encoded = proto.config.is_none().then(|| WatchFrame::event(&proto));
        Event { proto, encoded }
    }

    pub fn revision(&self) -> u64 {
        self.proto.revision
    }
}

/// How many events a member keeps for watchers that resume; older resumes get a snapshot.
pub const DEFAULT_HISTORY: usize = 10_000;

#[derive(Debug)]
pub struct History {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    floor: u64,
}

impl History {
    pub fn new(capacity: usize, floor: u64) -> Self {
        History {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            floor,
        }
    }

    /// Forgets everything: after a snapshot is installed the events before it are unknown.
    pub fn reset(&mut self, floor: u64) {
        self.events.clear();
        self.floor = floor;
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn push(&mut self, ev: Arc<Event>) {
        debug_assert!(ev.revision() > self.events.back().map_or(self.floor, |e| e.revision()));
        if self.events.len() >= self.capacity {
            if let Some(old) = self.events.pop_front() {
                self.floor = old.revision();
            }
        }
        self.events.push_back(ev);
    }

    /// Every event after `rev`, or `None` when some of them are no longer retained.
    pub fn since(&self, rev: u64) -> Option<impl ExactSizeIterator<Item = &Event> + '_> {
        if rev < self.floor {
            return None;
        }
        let start = self.events.partition_point(|e| e.revision() <= rev);
        Some(self.events.range(start..).map(|e| &**e))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An event with nothing but its revision.
    pub(crate) fn ev(r: u64) -> Arc<Event> {
        Arc::new(Event::new(LeaseEvent {
            revision: r,
            ..Default::default()
        }))
    }

    #[test]
    fn only_events_without_a_configuration_are_shared_encoded() {
        use twill_proto::v1::{EventKind, Lease, NetworkConfig};
        let lease = Event::new(LeaseEvent {
            revision: 3,
            kind: EventKind::Put as i32,
            lease: Some(Lease {
                node: "n".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let shared = lease.encoded.clone().expect("a lease event is shared");
        let got = WatchFrame::Encoded(shared).into_message().unwrap();
        assert_eq!(
            got.msg,
            Some(twill_proto::v1::watch_response::Msg::Event(Box::new(
                lease.proto.clone()
            )))
        );
        let config = Event::new(LeaseEvent {
            revision: 4,
            kind: EventKind::Config as i32,
            config: Some(NetworkConfig::default()),
            ..Default::default()
        });
        assert!(config.encoded.is_none());
    }

    #[test]
    fn resume_inside_history_returns_exactly_the_later_events() {
        let mut h = History::new(10, 0);
        (1..=5).for_each(|r| h.push(ev(r)));
        let got: Vec<u64> = h.since(2).unwrap().map(Event::revision).collect();
        assert_eq!(got, vec![3, 4, 5]);
        assert_eq!(h.since(5).unwrap().len(), 0);
    }

    #[test]
    fn resume_older_than_history_asks_for_a_snapshot() {
        let mut h = History::new(3, 0);
        (1..=6).for_each(|r| h.push(ev(r)));
        assert_eq!(h.floor(), 3);
        assert!(h.since(2).is_none());
        let got: Vec<u64> = h.since(3).unwrap().map(Event::revision).collect();
        assert_eq!(got, vec![4, 5, 6]);
    }

    #[test]
    fn with_gaps_the_floor_is_the_last_event_let_go() {
        let mut h = History::new(2, 0);
        [3, 7, 9].into_iter().for_each(|r| h.push(ev(r)));
        assert_eq!(h.floor(), 3);
        // Nothing between 3 and 7 was kept because there was nothing of this kind.
        let got: Vec<u64> = h.since(4).unwrap().map(Event::revision).collect();
        assert_eq!(got, vec![7, 9]);
        assert!(h.since(2).is_none());
    }
}
