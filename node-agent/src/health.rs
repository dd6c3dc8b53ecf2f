//! Readiness, derived every time it is asked for from what the agent knows now: a flag set once
//! would keep saying "ready" after the lease expired or every reconcile failed, and an
//! orchestrator would go on scheduling pods onto a node whose network is not there.

use std::time::Instant;

use twill_telemetry::Readiness;

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
}

/// Ready when the lease is held and not past its deadline, the last reconcile succeeded,
/// `subnet.env` is in place and the backend has nothing to report; otherwise each reason.
pub fn readiness(h: &Health, now: Instant) -> Readiness {
    let mut why = Vec::new();
    match h.lease_valid_until {
        None => why.push("no lease held".to_string()),
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
    use std::time::Duration;

    fn healthy(now: Instant) -> Health {
        Health {
            lease_valid_until: Some(now + Duration::from_secs(10)),
            last_reconcile: Some(Ok(())),
            backend: None,
            subnet_env_written: true,
        }
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
