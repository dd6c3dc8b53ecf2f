//! Group commit of client writes. openraft 0.9 appends and flushes one client write at a time,
//! so each write would cost a full disk sync on its own; instead every write queued while
//! earlier batches are in flight goes into one Raft entry, applied in order.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::allocator::{Request, Response};
use crate::metrics::Metrics;
use crate::{NodeId, Raft};

/// One Raft log entry: requests applied in order, answered in the same order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Request>);

/// The answers to a [`Batch`], one per request.
pub type Answers = Vec<Response>;

/// Most requests in one entry: keeps entries well under the transport's message limit.
pub const MAX_BATCH: usize = 1024;
/// Batches proposed at once; more waiting writes make the next batch bigger instead.
const IN_FLIGHT: usize = 2;

/// Why a batch was not committed: the part of openraft's error a caller can act on.
#[derive(Clone, Debug)]
pub enum BatchError {
    NotLeader(Option<(NodeId, String)>),
    Fatal(String),
}

pub type Reply = oneshot::Sender<Result<Response, BatchError>>;

/// Proposes what arrives on `rx` in batches until every sender is gone.
pub async fn run(raft: Raft, mut rx: mpsc::Receiver<(Request, Reply)>, metrics: Arc<Metrics>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // Taken after the permit: everything that queued while waiting joins this batch.
        let (req, reply) = first;
        let mut reqs = vec![req];
        let mut replies = vec![reply];
        while reqs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok((req, reply)) => {
                    reqs.push(req);
                    replies.push(reply);
                }
                Err(_) => break,
            }
        }
        metrics.batch(reqs.len());
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let n = reqs.len();
            match raft.client_write(Batch(reqs)).await {
                Ok(resp) if resp.data.len() == n => {
                    for (reply, answer) in replies.into_iter().zip(resp.data) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(resp) => {
                    let e =
                        BatchError::Fatal(format!("{} answers for {n} requests", resp.data.len()));
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                Err(e) => {
                    let e = match e {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                            BatchError::NotLeader(f.leader_id.zip(f.leader_node.map(|n| n.addr)))
                        }
                        other => BatchError::Fatal(other.to_string()),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
