//! What only the leader does: grant holders a grace period when leadership moves, propose the
//! initial configuration, and expire leases whose deadline has passed.
//!
//! Expiry is proposed only after this term's `Promote` has been applied. Otherwise a new leader
//! could expire a lease whose holder was renewing against the old leader and never got through
//! (etcd's lessor extends leases on promotion for the same reason).

use std::sync::Arc;

use openraft::ServerState;

use crate::allocator::{Command, Outcome, Request};
use crate::node::Member;

pub async fn run(m: Arc<Member>) {
    let mut metrics = m.raft.metrics();
    let mut promoted_term: Option<u64> = None;
    // Metrics change on every applied entry; the lease scan runs on its own clock instead.
    let mut last_scan = std::time::Instant::now();
    loop {
        let (leading, term) = {
            let x = metrics.borrow();
            (
                x.state == ServerState::Leader && x.current_leader == Some(m.id),
                x.current_term,
            )
        };
        if leading && promoted_term != Some(term) {
            let span = tracing::info_span!("leader", id = m.id, term);
            let _g = span.enter();
            let req = Request {
                request_id: None,
                command: Command::Promote {
                    now: m.clock.take_office(),
                    extend_ms: m.opts.election_max_ms,
                    floor_ms: m.opts.promote_grace_ms,
                },
            };
            match m.propose(req).await {
                Ok(r) => {
                    if let Ok(Outcome::Promoted(n)) = r.result {
                        tracing::info!(
                            leases = n,
                            grace_ms = m.opts.promote_grace_ms,
                            "became leader; lease deadlines extended"
                        );
                    }
                    promoted_term = Some(term);
                    let init = Request {
                        request_id: None,
                        command: Command::SetConfig {
                            config: m.opts.initial_config.clone(),
                            only_if_absent: true,
                        },
                    };
                    match m.propose(init).await {
                        Ok(r) => match r.result {
                            Ok(Outcome::Config(c)) if c != m.opts.initial_config => {
                                tracing::info!(network = %c.network, "cluster configuration already set; start-up network flags not applied");
                            }
                            Ok(_) => {}
                            Err(e) => tracing::error!(error = %e, "initial configuration rejected"),
                        },
                        Err(e) => tracing::warn!(error = %e, "initial configuration not proposed"),
                    }
                    propose_ca(&m).await;
                }
                Err(e) => {
                    // Losing leadership again right after winning it is routine during elections.
                    if matches!(e, crate::node::ProposeError::NotLeader { .. }) {
                        tracing::debug!(error = %e, "leadership lost before promotion");
                    } else {
                        tracing::warn!(error = %e, "promotion not committed yet");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        if leading && promoted_term == Some(term) && last_scan.elapsed() >= m.opts.expiry_interval {
            last_scan = std::time::Instant::now();
            if m.opts.ca.is_some() && m.sm.read().alloc.trust().ca().is_none() {
                propose_ca(&m).await;
            }
            let now = m.clock.now_ms();
            let due = m.sm.read().alloc.leases().any(|l| l.expires_at < now);
            if due {
                let req = Request {
                    request_id: None,
                    command: Command::Expire { now },
                };
                match m.propose(req).await {
                    Ok(r) => {
                        if let Ok(Outcome::Expired(nodes)) = r.result {
                            for n in nodes {
                                tracing::info!(node = %n, "lease expired");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "expiry not committed"),
                }
            }
        }
        tokio::select! {
            r = metrics.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(m.opts.expiry_interval) => {}
        }
    }
}

/// The founding member's CA enters the replicated state once; a CA already there wins, so
/// every member of a cluster signs with the same one.
async fn propose_ca(m: &Member) {
    let Some(ca) = m.opts.ca.clone() else { return };
    if m.sm.read().alloc.trust().ca().is_some() {
        return;
    }
    let req = Request {
        request_id: None,
        command: Command::Trust(crate::trust::TrustCommand::SetCa { ca }),
    };
    match m.propose(req).await {
        Ok(r) => match r.result {
            Ok(Outcome::Trust(crate::trust::TrustOutcome::CaSet { changed: true })) => {
                tracing::info!("cluster CA replicated: any member can now sign certificates")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cluster CA rejected"),
        },
        Err(e) => tracing::warn!(error = %e, "cluster CA not proposed yet"),
    }
}
