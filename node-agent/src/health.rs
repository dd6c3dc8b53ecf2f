//! Readiness, derived every time it is asked for from what the agent knows now: a flag set once
//! would keep saying "ready" after the lease expired or every reconcile failed, and an
//! orchestrator would go on scheduling pods onto a node whose network is not there.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use twill_client::Client;
use twill_proto::v1 as pb;
use twill_telemetry::Readiness;

use crate::metrics::BgpBoard;

/// The facts readiness is made of, as the agent's loop last saw them.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Until when the node's lease is known to be valid (from the last acquire or renewal, on
    /// this host's monotonic clock); `None` while no lease is held.
    pub lease_valid_until: Option<Instant>,
    /// The outcome of the last reconcile pass; `None` before the first.
    pub last_reconcile: Option<Result<(), String>>,
    /// With a backend that needs it (bgp): whether its listener is up, and if not why.
    pub backend: Option<Result<(), String>>,
    /// `subnet.env` was written for the current lease.
    pub subnet_env_written: bool,
    /// When the last reconcile pass ended (Unix ms).
    pub reconciled_at_ms: u64,
    /// The running backend's name.
    pub backend_name: Option<&'static str>,
    /// Why the controller gave no lease at the last try, while none is held.
    pub lease_refused: Option<String>,
}

impl Health {
    pub fn reconciled(&mut self, r: Result<(), String>) {
        self.last_reconcile = Some(r);
        self.reconciled_at_ms = twill_proto::now_ms();
    }
}

/// The summary the controller keeps for this node: readiness with its reasons, the last
/// reconcile, the backend and its BGP sessions.
pub fn summary(
    h: &Health,
    sessions: Vec<pb::BgpSessionHealth>,
    interval: Duration,
    now: Instant,
) -> pb::NodeHealth {
    let (ready, problems) = match readiness(h, now) {
        Readiness::Ready => (true, Vec::new()),
        Readiness::NotReady(why) => (false, why),
    };
    pb::NodeHealth {
        ready,
        // Within the controller's limits whatever the kernel's error text says.
        problems: problems
            .into_iter()
            .take(16)
            .map(|p| truncate(p, 512))
            .collect(),
        reconcile_ok: matches!(h.last_reconcile, Some(Ok(()))),
        reconcile_at_ms: h.reconciled_at_ms,
        backend: h.backend_name.unwrap_or_default().to_string(),
        bgp_sessions: sessions.into_iter().take(256).collect(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        interval_ms: interval.as_millis().try_into().unwrap_or(u64::MAX),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// The BGP sessions as the speaker last reported them.
pub fn sessions(board: &BgpBoard) -> Vec<pb::BgpSessionHealth> {
    let Some(st) = board.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
        return Vec::new();
    };
    let peers = st.lock().unwrap_or_else(|p| p.into_inner());
    peers
        .peers
        .values()
        .map(|p| pb::BgpSessionHealth {
            peer: p.addr.to_string(),
            state: if p.established { "Established" } else { "Down" }.into(),
            last_error: truncate(p.last_error.clone().unwrap_or_default(), 256),
        })
        .collect()
}

/// Sends this node's summary to the controller every `interval`, and within a second of a
/// change, so `twill status` shows a node going bad without waiting for the next period.
pub async fn report(
    client: Arc<Client>,
    node: String,
    health: Arc<Mutex<Health>>,
    bgp: BgpBoard,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: Option<(pb::NodeHealth, Instant)> = None;
    let mut failing = false;
    // After a failure, no new attempt before this (an older controller that does not take
    // reports would otherwise be asked every second).
    let mut quiet_until = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now < quiet_until {
            continue;
        }
        let h = health.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let s = summary(&h, sessions(&bgp), interval, now);
        let due = match &sent {
            None => true,
            Some((last, at)) => {
                now.duration_since(*at) >= interval
                    || last.ready != s.ready
                    || last.problems != s.problems
                    || last.bgp_sessions != s.bgp_sessions
                    || last.backend != s.backend
            }
        };
        if !due {
            continue;
        }
        match client.report_health(&node, s.clone()).await {
            Ok(_) => {
                if failing {
                    tracing::info!("health reports reach the controller again");
                }
                failing = false;
                sent = Some((s, now));
            }
            Err(e) => {
                let older = matches!(&e, twill_client::ClientError::Status(s) if s.code() == tonic::Code::Unimplemented);
                if !failing {
                    if older {
                        tracing::info!("the controller takes no health reports (an older version); trying again every interval");
                    } else {
                        tracing::warn!(error = %e, "cannot report health to the controller; retrying");
                    }
                }
                failing = true;
                quiet_until = now
                    + if older {
                        interval
                    } else {
                        interval.min(Duration::from_secs(5))
                    };
            }
        }
    }
}

/// Ready when the lease is held and not past its deadline, the last reconcile succeeded,
/// `subnet.env` is in place and the backend has nothing to report; otherwise each reason.
pub fn readiness(h: &Health, now: Instant) -> Readiness {
    let mut why = Vec::new();
    match h.lease_valid_until {
        None => why.push(match &h.lease_refused {
            Some(e) => format!("no lease held: {e}"),
            None => "no lease held".to_string(),
        }),
        Some(t) if now >= t => {
            why.push("lease expired: the controller has not renewed it in time".to_string())
        }
        Some(_) => {}
    }
    match &h.last_reconcile {
        None => why.push("dataplane not programmed yet".to_string()),
        Some(Err(e)) => why.push(format!("last reconcile failed: {e}")),
        Some(Ok(())) => {}
    }
    if !h.subnet_env_written {
        why.push("subnet.env not written".to_string());
    }
    if let Some(Err(e)) = &h.backend {
        why.push(e.clone());
    }
    if why.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(now: Instant) -> Health {
        Health {
            lease_valid_until: Some(now + Duration::from_secs(10)),
            last_reconcile: Some(Ok(())),
            backend: None,
            subnet_env_written: true,
            reconciled_at_ms: 1,
            backend_name: Some("vxlan"),
            lease_refused: None,
        }
    }

    #[test]
    fn the_summary_says_why_and_stays_within_the_controllers_limits() {
        let now = Instant::now();
        let s = summary(&healthy(now), vec![], Duration::from_secs(10), now);
        assert!(s.ready && s.reconcile_ok && s.problems.is_empty());
        assert_eq!((s.backend.as_str(), s.interval_ms), ("vxlan", 10_000));

        let mut h = healthy(now);
        // A kernel error text of any length, in a language with multi-byte characters.
        h.reconciled(Err("é".repeat(1000)));
        let s = summary(&h, vec![], Duration::from_secs(10), now);
        assert!(!s.ready && !s.reconcile_ok);
        assert_eq!(s.problems.len(), 1);
        assert!(s.problems[0].len() <= 512 && s.problems[0].ends_with("..."));
        assert!(s.reconcile_at_ms > 1);
    }

    #[test]
    fn a_refused_lease_says_why() {
        let now = Instant::now();
        let h = Health {
            lease_refused: Some("node n1's lease is held by another agent".into()),
            ..healthy(now)
        };
        assert_eq!(readiness(&h, now), Readiness::Ready, "a lease is held");
        let h = Health {
            lease_valid_until: None,
            ..h
        };
        assert!(matches!(readiness(&h, now), Readiness::NotReady(w)
            if w[0] == "no lease held: node n1's lease is held by another agent"));
    }

    #[test]
    fn ready_only_with_every_fact_true() {
        let now = Instant::now();
        assert_eq!(readiness(&healthy(now), now), Readiness::Ready);
        assert!(matches!(
            readiness(&Health::default(), now),
            Readiness::NotReady(w) if w.len() == 3
        ));
    }

    #[test]
    fn readiness_goes_back_when_the_lease_runs_out_or_a_reconcile_fails() {
        let now = Instant::now();
        let h = healthy(now);
        let later = now + Duration::from_secs(11);
        assert!(matches!(readiness(&h, later), Readiness::NotReady(w) if w[0].contains("expired")));

        let mut h = healthy(now);
        h.last_reconcile = Some(Err("File exists".into()));
        assert!(
            matches!(readiness(&h, now), Readiness::NotReady(w) if w[0].contains("File exists"))
        );
        h.last_reconcile = Some(Ok(()));
        assert_eq!(
            readiness(&h, now),
            Readiness::Ready,
            "and comes back when healed"
        );

        h.backend = Some(Err("BGP listener not up".into()));
        assert!(matches!(readiness(&h, now), Readiness::NotReady(_)));
    }
}
