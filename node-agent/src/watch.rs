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
    /// Shared between the stream's view, the channel's and the agent's, so a node holds one
    /// copy of the cluster's leases, not three (5,000 leases are megabytes); a change copies
    /// the map only while an older view is still held.
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

/// Keeps `tx` up to date forever.
pub async fn follow(client: Arc<Client>, tx: watch::Sender<View>, quiet_limit: Duration) {
    let mut view = View::default();
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut stream = match client.watch_changes(view.revision).await {
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
        tracing::info!(from_revision = view.revision, "watching leases");
        loop {
            match tokio::time::timeout(quiet_limit, stream.message()).await {
                Ok(Ok(Some(m))) => {
                    backoff = Duration::from_millis(200);
                    if let Some(msg) = m.msg {
                        if view.apply(msg) {
                            tx.send_replace(view.clone());
                        }
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
}
