//! `twill leases --explain NODE`: why a node has the subnet it has, since when, under which
//! configuration, how its renewals go, and the reservation if any. Pure: the command gathers
//! the lease list, the configuration and the health list, and this says what they mean.

use std::time::Duration;

use serde_json::{json, Value};
use twill_proto::v1 as pb;

use crate::network_flags::format_duration;
use crate::operator::span;

/// What the operator is told, one labelled line each, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Explanation {
    pub lines: Vec<(&'static str, String)>,
    pub json: Value,
}

/// The four ways a subnet is chosen, as the allocator records them.
fn why(reason: &str) -> String {
    match reason {
        "reserved" => "a reservation names this subnet for the node (`twill reserve`)".into(),
        "held before" => {
            "the node asked for the subnet it had before (from its state file) and it was free"
                .into()
        }
        "held" => {
            "the node asked again while its lease was still alive (an agent restart) and kept it"
                .into()
        }
        "lowest free" => {
            "no reservation and no earlier subnet to return to: the lowest free subnet of the pool"
                .into()
        }
        "" => "not recorded (granted by a controller older than the reason field)".into(),
        other => format!("{other:?}"),
    }
}

fn ago(now_ms: u64, at_ms: u64) -> String {
    span(now_ms.saturating_sub(at_ms) / 1000)
}

/// Explains `node`'s lease; `None` when the cluster knows nothing of the node (no lease, no
/// reservation, no health report).
pub fn explain(
    node: &str,
    leases: &pb::ListLeasesResponse,
    config: &pb::ConfigResponse,
    reports: &[pb::NodeHealthEntry],
    now_ms: u64,
) -> Option<Explanation> {
    let lease = leases.leases.iter().find(|l| l.node == node);
    let reservation = leases.reservations.iter().find(|r| r.node == node);
    let report = reports.iter().find(|r| r.node == node);
    if lease.is_none() && reservation.is_none() && report.is_none() {
        return None;
    }
    let cfg = config.config.as_ref();
    let ttl_ms = cfg.map(|c| c.lease_ttl_ms).unwrap_or(0);
    let mut lines = Vec::new();
    let mut push = |k: &'static str, v: String| lines.push((k, v));

    match lease {
        None => push(
            "lease",
            "none: the node's agent has not asked, released its lease, or let it expire".into(),
        ),
        Some(l) => {
            let mut subnets = l.subnet.clone();
            if !l.ipv6_subnet.is_empty() {
                subnets.push_str(&format!(" and {}", l.ipv6_subnet));
            }
            push("lease", format!("{subnets} at public IP {}", l.public_ip));
            push("why", why(&l.reason));
            push(
                "since",
                if l.acquired_at_ms > 0 {
                    format!(
                        "{} ago, granted at revision {}",
                        ago(now_ms, l.acquired_at_ms),
                        l.create_revision
                    )
                } else {
                    format!("granted at revision {}", l.create_revision)
                },
            );
            push(
                "configuration",
                match (config.config_revision, cfg) {
                    (_, None) => "none set".into(),
                    (0, Some(_)) => "set at a revision this cluster no longer knows (restored from an older snapshot)".into(),
                    (r, Some(_)) if l.create_revision > r => {
                        format!("granted under the current one, set at revision {r}")
                    }
                    (r, Some(_)) => format!(
                        "granted under an earlier one; the current one was set at revision {r} and the lease fits it"
                    ),
                },
            );
            let renewed = if l.mod_revision > l.create_revision && ttl_ms > 0 {
                let at = l.expires_at_ms.saturating_sub(ttl_ms);
                format!(
                    "last renewed {} ago (revision {})",
                    ago(now_ms, at),
                    l.mod_revision
                )
            } else {
                "not renewed since it was granted".into()
            };
            let left = l.expires_at_ms.saturating_sub(now_ms);
            push(
                "renewals",
                if left == 0 {
                    format!("{renewed}; past its deadline, expiring now")
                } else {
                    format!(
                        "{renewed}; expires in {} unless renewed (the agent renews with a third of the {} TTL left)",
                        span(left / 1000),
                        format_duration(Duration::from_millis(ttl_ms)),
                    )
                },
            );
        }
    }
    push(
        "reservation",
        match (reservation, lease) {
            (None, _) => "none".into(),
            (Some(r), Some(l)) if r.subnet != l.subnet => format!(
                "{}, not the leased subnet: the node moves to it once its current lease ends",
                r.subnet
            ),
            (Some(r), _) => r.subnet.clone(),
        },
    );
    let health = report.and_then(|r| {
        let h = r.health.as_ref()?;
        Some(if r.stale {
            format!("no report for {} (stale)", ago(r.age_ms, 0))
        } else if h.ready {
            format!("ready (reported {} ago)", ago(r.age_ms, 0))
        } else {
            format!("not ready: {}", h.problems.join("; "))
        })
    });
    push("agent", health.unwrap_or_else(|| "no health report".into()));

    let json = json!({
        "node": node,
        "lease": lease.map(|l| json!({
            "subnet": l.subnet, "ipv6_subnet": l.ipv6_subnet, "public_ip": l.public_ip,
            "reason": l.reason, "acquired_at_ms": l.acquired_at_ms,
            "create_revision": l.create_revision, "mod_revision": l.mod_revision,
            "expires_at_ms": l.expires_at_ms,
        })),
        "config_revision": config.config_revision,
        "reservation": reservation.map(|r| r.subnet.as_str()),
        "explanation": lines.iter().map(|(k, v)| json!({"what": k, "says": v})).collect::<Vec<_>>(),
    });
    Some(Explanation { lines, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000_000;
    const HOUR: u64 = 3_600_000;

    fn config(rev: u64) -> pb::ConfigResponse {
        pb::ConfigResponse {
            config: Some(pb::NetworkConfig {
                lease_ttl_ms: 24 * HOUR,
                ..Default::default()
            }),
            revision: 50,
            present: true,
            config_revision: rev,
        }
    }

    fn listing(reason: &str, reserved: Option<&str>) -> pb::ListLeasesResponse {
        pb::ListLeasesResponse {
            leases: vec![pb::Lease {
                node: "n1".into(),
                subnet: "10.244.7.0/24".into(),
                public_ip: "192.0.2.1".into(),
                reason: reason.into(),
                acquired_at_ms: NOW - 2 * HOUR,
                create_revision: 10,
                mod_revision: 40,
                // Renewed an hour ago with a 24 h TTL.
                expires_at_ms: NOW + 23 * HOUR,
                ..Default::default()
            }],
            reservations: reserved
                .map(|s| {
                    vec![pb::Reservation {
                        node: "n1".into(),
                        subnet: s.into(),
                    }]
                })
                .unwrap_or_default(),
            revision: 50,
            ..Default::default()
        }
    }

    fn said(e: &Explanation, what: &str) -> String {
        e.lines
            .iter()
            .find(|(k, _)| *k == what)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {what} line in {e:?}"))
    }

    #[test]
    fn a_reserved_lease_says_why_since_when_under_which_configuration_and_its_renewals() {
        let e = explain(
            "n1",
            &listing("reserved", Some("10.244.7.0/24")),
            &config(3),
            &[],
            NOW,
        )
        .expect("known node");
        assert_eq!(said(&e, "lease"), "10.244.7.0/24 at public IP 192.0.2.1");
        assert!(said(&e, "why").contains("reservation names this subnet"));
        assert_eq!(said(&e, "since"), "2h0m ago, granted at revision 10");
        assert_eq!(
            said(&e, "configuration"),
            "granted under the current one, set at revision 3"
        );
        assert!(said(&e, "renewals")
            .starts_with("last renewed 1h0m ago (revision 40); expires in 23h0m"));
        assert_eq!(said(&e, "reservation"), "10.244.7.0/24");
        assert_eq!(said(&e, "agent"), "no health report");
        assert_eq!(e.json["lease"]["reason"], "reserved");
        assert_eq!(e.json["config_revision"], 3);
    }

    #[test]
    fn a_configuration_changed_since_and_a_moved_reservation_are_told() {
        let e = explain(
            "n1",
            &listing("lowest free", Some("10.244.9.0/24")),
            &config(20),
            &[],
            NOW,
        )
        .expect("known node");
        assert!(said(&e, "why").contains("lowest free subnet"));
        assert!(said(&e, "configuration")
            .contains("earlier one; the current one was set at revision 20"));
        assert!(said(&e, "reservation").starts_with("10.244.9.0/24, not the leased subnet"));
        let e =
            explain("n1", &listing("held before", None), &config(0), &[], NOW).expect("known node");
        assert!(said(&e, "why").contains("state file"));
        assert!(said(&e, "configuration").contains("no longer knows"));
    }

    #[test]
    fn an_unknown_node_is_none_and_a_reserved_node_without_lease_is_explained() {
        let l = listing("reserved", None);
        assert!(explain("nobody", &l, &config(3), &[], NOW).is_none());
        let mut l = listing("reserved", Some("10.244.7.0/24"));
        l.leases.clear();
        let e = explain("n1", &l, &config(3), &[], NOW).expect("reserved node");
        assert!(said(&e, "lease").starts_with("none"));
        assert_eq!(said(&e, "reservation"), "10.244.7.0/24");
    }

    #[test]
    fn the_agents_own_report_is_quoted() {
        let report = pb::NodeHealthEntry {
            node: "n1".into(),
            health: Some(pb::NodeHealth {
                ready: false,
                problems: vec!["lease expired: the controller has not renewed it in time".into()],
                ..Default::default()
            }),
            age_ms: 2_000,
            stale: false,
        };
        let e =
            explain("n1", &listing("held", None), &config(3), &[report], NOW).expect("known node");
        assert!(said(&e, "why").contains("agent restart"));
        assert_eq!(
            said(&e, "agent"),
            "not ready: lease expired: the controller has not renewed it in time"
        );
    }
}
