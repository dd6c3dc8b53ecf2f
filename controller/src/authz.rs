//! Who may call what, decided from the caller's certificate. Pure: the service finds the
//! caller, this module answers.
//!
//! - an admin may do everything;
//! - a member may do everything too: members forward clients' calls to the leader after
//!   checking them where they arrived, and a member holds the CA anyway;
//! - a node may Acquire, Renew and Release its own lease, renew its own certificate, and read
//!   leases, configuration and status (another node's BGP password excepted);
//! - a caller without a certificate may only join with a token.

use twill_pki::{Identity, Role};
use twill_proto::v1 as pb;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// TLS is off (`--insecure`): nobody is known, everything is allowed.
    Insecure,
    /// TLS without a client certificate.
    Anonymous,
    Known(Identity),
}

impl Caller {
    /// The `role` label of the denied-calls metric.
    pub fn role_label(&self) -> &'static str {
        match self {
            Caller::Insecure => "insecure",
            Caller::Anonymous => "none",
            Caller::Known(i) => i.role.as_str(),
        }
    }

    /// Another member of the cluster: its watches are feeds, served apart from clients'.
    pub fn is_member(&self) -> bool {
        matches!(self, Caller::Known(i) if i.role == Role::Member)
    }

    /// Sees every secret in the configuration.
    fn sees_all(&self) -> bool {
        match self {
            Caller::Insecure => true,
            Caller::Anonymous => false,
            Caller::Known(i) => i.role != Role::Node,
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Insecure => f.write_str("an unauthenticated client (TLS off)"),
            Caller::Anonymous => f.write_str("a client without a certificate"),
            Caller::Known(i) => write!(f, "{i}"),
        }
    }
}

/// What a call needs.
#[derive(Clone, Copy, Debug)]
pub enum Access<'a> {
    /// Configuration, reservations, another node's lease, membership, tokens.
    Admin,
    /// Reads: any certificate of the cluster.
    Identified,
    /// A lease call for this node: the node itself, or an admin.
    Node(&'a str),
    /// A node renewing its own certificate.
    NodeOnly,
    /// A join: anyone, the token decides.
    Anyone,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("this call needs a client certificate from the cluster's CA (a node gets one with `twill agent --join-token`)")]
    NoCertificate,
    #[error("{who} may not call {method}: {why}")]
    Forbidden {
        who: String,
        method: &'static str,
        why: &'static str,
    },
}

pub fn check(caller: &Caller, method: &'static str, access: Access<'_>) -> Result<(), Denied> {
    let id = match caller {
        Caller::Insecure => return Ok(()),
        Caller::Anonymous => {
            return match access {
                Access::Anyone => Ok(()),
                _ => Err(Denied::NoCertificate),
            }
        }
        Caller::Known(id) => id,
    };
    let forbid = |why| {
        Err(Denied::Forbidden {
            who: id.to_string(),
            method,
            why,
        })
    };
    match (id.role, access) {
        (_, Access::Anyone | Access::Identified) => Ok(()),
        (Role::Admin | Role::Member, Access::NodeOnly) => {
            forbid("only a node renews its certificate this way")
        }
        (Role::Admin | Role::Member, _) => Ok(()),
        (Role::Node, Access::Node(n)) if n == id.name => Ok(()),
        (Role::Node, Access::Node(_)) => forbid("a node may only act on its own lease"),
        (Role::Node, Access::NodeOnly) => Ok(()),
        (Role::Node, Access::Admin) => forbid("it needs an admin certificate"),
    }
}

/// Drops the BGP passwords a caller has no use for: a node sees only the keys of sessions it
/// runs (peers for every node, and peers named for it).
pub fn redact_config(cfg: &mut pb::NetworkConfig, caller: &Caller) {
    if caller.sees_all() {
        return;
    }
    let own = match caller {
        Caller::Known(i) if i.role == Role::Node => Some(i.name.as_str()),
        _ => None,
    };
    if let Some(pb::Backend {
        kind: Some(pb::backend::Kind::Bgp(b)),
    }) = cfg.backend.as_mut()
    {
        for p in &mut b.peers {
            let used = p.node.trim().is_empty() || Some(p.node.trim()) == own;
            if !used {
                p.password.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> Caller {
        Caller::Known(Identity::node(n))
    }

    #[test]
    fn a_node_acts_on_its_own_lease_only_and_admins_on_any() {
        assert!(check(&node("a"), "Acquire", Access::Node("a")).is_ok());
        assert!(matches!(
            check(&node("a"), "Release", Access::Node("b")),
            Err(Denied::Forbidden { .. })
        ));
        assert!(check(&node("a"), "SetConfig", Access::Admin).is_err());
        assert!(check(&node("a"), "ListLeases", Access::Identified).is_ok());
        let admin = Caller::Known(Identity::admin("admin"));
        assert!(check(&admin, "Release", Access::Node("b")).is_ok());
        assert!(check(&admin, "SetConfig", Access::Admin).is_ok());
        assert!(check(&admin, "RenewCertificate", Access::NodeOnly).is_err());
        let member = Caller::Known(Identity::member(2));
        assert!(check(&member, "SetConfig", Access::Admin).is_ok());
        assert_eq!(
            check(&Caller::Anonymous, "ListLeases", Access::Identified),
            Err(Denied::NoCertificate)
        );
        assert!(check(&Caller::Anonymous, "JoinNode", Access::Anyone).is_ok());
        assert!(check(&Caller::Insecure, "SetConfig", Access::Admin).is_ok());
    }

    #[test]
    fn a_node_sees_only_the_bgp_keys_of_its_own_sessions() {
        let peer = |addr: &str, node: &str| pb::BgpPeer {
            address: addr.into(),
            asn: 64500,
            password: format!("key-{addr}"),
            node: node.into(),
        };
        let cfg = pb::NetworkConfig {
            backend: Some(pb::Backend {
                kind: Some(pb::backend::Kind::Bgp(pb::BgpBackend {
                    peers: vec![
                        peer("192.0.2.1", ""),
                        peer("192.0.2.2", "a"),
                        peer("192.0.2.3", "b"),
                    ],
                    ..Default::default()
                })),
            }),
            ..Default::default()
        };
        let keys = |c: &Caller| {
            let mut x = cfg.clone();
            redact_config(&mut x, c);
            match x.backend.and_then(|b| b.kind) {
                Some(pb::backend::Kind::Bgp(b)) => {
                    b.peers.into_iter().map(|p| p.password).collect::<Vec<_>>()
                }
                _ => panic!("bgp"),
            }
        };
        assert_eq!(keys(&node("a")), vec!["key-192.0.2.1", "key-192.0.2.2", ""]);
        assert_eq!(keys(&node("b")), vec!["key-192.0.2.1", "", "key-192.0.2.3"]);
        let admin = Caller::Known(Identity::admin("admin"));
        assert_eq!(keys(&admin).iter().filter(|k| !k.is_empty()).count(), 3);
    }
}
