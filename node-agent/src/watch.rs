//! Following the controller's lease stream into a local view: a snapshot replaces the view,
//! events are applied in revision order, and a stream that goes quiet past a few progress
//! intervals is treated as dead and resumed (from the last revision) on another member.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use twill_client::Client;
use twill_proto::v1::watch_response::Msg;
use twill_proto::v1::{self as pb, EventKind};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub revision: u64,
    pub config: Option<pb::NetworkConfig>,
    /// The follower changes the channel's view in place and the agent reads the leases there,
    /// so a node holds one copy of the cluster's leases (5,000 leases are megabytes). A change
    /// copies the whole map only while a receiver still holds an older view: when the follower
    /// kept a view of its own, that was every event.
    pub leases: Arc<BTreeMap<String, pb::Lease>>,
}

impl View {
    /// Applies one stream message; returns whether the view changed.
    pub fn apply(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Snapshot(s) => {
                self.revision = s.revision;
                self.config = if s.config_present { s.config } else { None };
                self.leases = Arc::new(s.leases.into_iter().map(|l| (l.node.clone(), l)).collect());
                true
            }
            Msg::Event(e) => {
                if e.revision <= self.revision {
                    return false;
                }
                self.revision = e.revision;
                match e.kind() {
                    EventKind::Put => {
                        if let Some(l) = e.lease {
                            Arc::make_mut(&mut self.leases).insert(l.node.clone(), l);
                        }
                    }
                    EventKind::Delete => {
                        if let Some(l) = e.lease {
                            Arc::make_mut(&mut self.leases).remove(&l.node);
                        }
                    }
                    EventKind::Config => self.config = e.config,
                    EventKind::Unspecified => return false,
                }
                true
            }
            // Everything up to here has been sent (renewals, which the agent does not ask
            // for, included): a resume starts from here, not from the last event.
            Msg::Progress(p) => {
                self.revision = self.revision.max(p.revision);
                false
            }
        }
    }
}

/// Keeps `tx` up to date forever, applying every message to the channel's own view.
pub async fn follow(client: Arc<Client>, tx: watch::Sender<View>, quiet_limit: Duration) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let from = tx.borrow().revision;
        let mut stream = match client.watch_changes(from).await {
            Ok(s) => s,
            Err(e) => {
                // A member that refuses (it serves its most watches, or is behind) is not
                // asked again first: the next member is.
                tracing::warn!(error = %e, "cannot open the lease watch; retrying on another member");
                client.rotate();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        tracing::info!(from_revision = from, "watching leases");
        loop {
            match tokio::time::timeout(quiet_limit, stream.message()).await {
                Ok(Ok(Some(m))) => {
                    backoff = Duration::from_millis(200);
                    if let Some(msg) = m.msg {
                        take(&tx, msg);
                    }
                }
                Ok(Ok(None)) => {
                    tracing::info!("lease watch ended; resuming");
                    break;
                }
                Ok(Err(s)) => {
                    tracing::warn!(error = %s.message(), "lease watch failed; resuming");
                    break;
                }
                Err(_) => {
                    tracing::warn!(quiet = ?quiet_limit, "lease watch silent; resuming on another member");
                    break;
                }
            }
        }
        client.rotate();
        tokio::time::sleep(backoff).await;
    }
}

/// Applies one message to the channel's view; receivers are woken only when it changed.
fn take(tx: &watch::Sender<View>, msg: Msg) {
    tx.send_if_modified(|v| v.apply(msg));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: u64, node: &str) -> Msg {
        Msg::Event(Box::new(pb::LeaseEvent {
            revision,
            kind: EventKind::Put as i32,
            lease: Some(pb::Lease {
                node: node.into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    #[test]
    fn a_progress_note_moves_the_revision_to_resume_from_but_not_back() {
        let mut v = View::default();
        assert!(v.apply(put(3, "a")));
        assert!(!v.apply(Msg::Progress(pb::WatchProgress { revision: 9 })));
        assert_eq!(v.revision, 9);
        assert!(!v.apply(Msg::Progress(pb::WatchProgress { revision: 5 })));
        assert_eq!(v.revision, 9);
        // An event the note already covered is old news.
        assert!(!v.apply(put(8, "b")));
        assert!(v.apply(put(10, "b")));
        assert_eq!(v.leases.len(), 2);
    }

    #[test]
    fn events_change_the_channels_map_in_place_and_a_held_view_stays_as_it_was() {
        let (tx, mut rx) = watch::channel(View::default());
        take(&tx, put(1, "a"));
        assert!(rx.has_changed().expect("open"));
        let map = Arc::as_ptr(&rx.borrow_and_update().leases);
        // Nobody holds the map: the next events go into it, not into a copy.
        take(&tx, put(2, "b"));
        take(&tx, put(3, "c"));
        assert_eq!(Arc::as_ptr(&rx.borrow().leases), map);
        assert_eq!(rx.borrow().leases.len(), 3);
        // A receiver holding a view keeps what it saw; the channel's view moves on.
        let held = rx.borrow_and_update().clone();
        take(&tx, put(4, "d"));
        assert_eq!(held.leases.len(), 3);
        assert_eq!(rx.borrow().leases.len(), 4);
        assert_eq!(rx.borrow().revision, 4);
        // Old news and progress notes change nothing a receiver acts on, so wake nobody.
        rx.borrow_and_update();
        take(&tx, put(4, "e"));
        take(&tx, Msg::Progress(pb::WatchProgress { revision: 7 }));
        assert!(!rx.has_changed().expect("open"));
        assert_eq!(tx.borrow().revision, 7, "a resume starts after the note");
    }
}
