//! The replicated half of the cluster's security: its CA and its join tokens. Pure and
//! deterministic like the allocator it sits beside: every member applies the same commands
//! to the same state, so any leader can sign and check a token.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use twill_pki::Ca;

use crate::allocator::Millis;

/// Tokens kept at once; more are refused until some expire or are revoked.
pub const MAX_TOKENS: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    /// Certifies a node agent.
    Node,
    /// Certifies a new controller member.
    Member,
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Node => "node",
            TokenKind::Member => "member",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    /// SHA-256 of the secret, hex; the secret itself is never stored.
    pub secret_hash: String,
    pub kind: TokenKind,
    /// The only node name (or member id) it may certify; none: any.
    pub bound_to: Option<String>,
    /// Uses left; none: any number until it expires.
    pub uses_left: Option<u32>,
    pub used: u32,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustCommand {
    /// Sets the CA unless one is set: every founding member may propose its own, the first wins.
    SetCa {
        ca: Ca,
    },
    CreateToken {
        token: TokenRecord,
        now: Millis,
    },
    RevokeToken {
        id: String,
    },
    /// Checks a token and, when it is good, counts one use of it.
    UseToken {
        id: String,
        secret_hash: String,
        kind: TokenKind,
        name: String,
        now: Millis,
    },
    /// Refuses every certificate of `node` that starts at or before `now`; a later join with
    /// a new token gets one that starts after it.
    RevokeNode {
        node: String,
        now: Millis,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrustOutcome {
    CaSet { changed: bool },
    TokenCreated,
    TokenRevoked,
    TokenUsed,
    NodeRevoked,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TrustError {
    #[error("token {0} does not exist")]
    Unknown(String),
    #[error("token {0}: the secret does not match")]
    Secret(String),
    #[error("token {0} was revoked")]
    Revoked(String),
    #[error("token {id} expired {ago_s} s ago")]
    Expired { id: String, ago_s: u64 },
    #[error("token {id} is used up ({used} uses)")]
    UsedUp { id: String, used: u32 },
    #[error("token {id} is a {is} token, not a {asked} token")]
    Kind {
        id: String,
        is: TokenKind,
        asked: TokenKind,
    },
    #[error("token {id} is bound to {bound:?}, not {asked:?}")]
    Bound {
        id: String,
        bound: String,
        asked: String,
    },
    #[error("token {0} exists already")]
    Exists(String),
    #[error("{MAX_TOKENS} tokens exist; revoke some or wait for them to expire")]
    TooMany,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trust {
    ca: Option<Ca>,
    tokens: BTreeMap<String, TokenRecord>,
    /// Node → when its certificates were revoked.
    revoked_nodes: BTreeMap<String, Millis>,
}

impl Trust {
    pub fn ca(&self) -> Option<&Ca> {
        self.ca.as_ref()
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// When `node`'s certificates were last revoked, if ever.
    pub fn node_revoked_at(&self, node: &str) -> Option<Millis> {
        self.revoked_nodes.get(node).copied()
    }

    /// Whether a node certificate starting at `not_before` is still good.
    pub fn node_certificate_ok(&self, node: &str, not_before: Millis) -> bool {
        self.node_revoked_at(node).is_none_or(|t| not_before > t)
    }

    /// Whether a token may certify `name` now, without using it: the state machine checks
    /// this when it applies a use, and a member before it proposes one, so that guessing at
    /// tokens writes nothing to the log.
    pub fn check(
        &self,
        id: &str,
        secret_hash: &str,
        kind: TokenKind,
        name: &str,
        now: Millis,
    ) -> Result<(), TrustError> {
        let t = self
            .tokens
            .get(id)
            .ok_or_else(|| TrustError::Unknown(id.to_string()))?;
        if t.secret_hash != secret_hash {
            return Err(TrustError::Secret(id.to_string()));
        }
        if t.revoked {
            return Err(TrustError::Revoked(id.to_string()));
        }
        if t.expires_at <= now {
            return Err(TrustError::Expired {
                id: id.to_string(),
                ago_s: (now - t.expires_at) / 1000,
            });
        }
        if t.uses_left == Some(0) {
            return Err(TrustError::UsedUp {
                id: id.to_string(),
                used: t.used,
            });
        }
        if t.kind != kind {
            return Err(TrustError::Kind {
                id: id.to_string(),
                is: t.kind,
                asked: kind,
            });
        }
        if let Some(b) = &t.bound_to {
            if b != name {
                return Err(TrustError::Bound {
                    id: id.to_string(),
                    bound: b.clone(),
                    asked: name.to_string(),
                });
            }
        }
        Ok(())
    }

    pub fn apply(&mut self, cmd: &TrustCommand) -> Result<TrustOutcome, TrustError> {
        match cmd {
            TrustCommand::SetCa { ca } => {
                let changed = self.ca.is_none();
                if changed {
                    self.ca = Some(ca.clone());
                }
                Ok(TrustOutcome::CaSet { changed })
            }
            TrustCommand::CreateToken { token, now } => {
                // Expired tokens stay listed for a day, so an operator can see why a join
                // failed; then they go.
                self.tokens
                    .retain(|_, t| t.expires_at.saturating_add(86_400_000) > *now);
                if self.tokens.contains_key(&token.id) {
                    return Err(TrustError::Exists(token.id.clone()));
                }
                if self.tokens.len() >= MAX_TOKENS {
                    return Err(TrustError::TooMany);
                }
                self.tokens.insert(token.id.clone(), token.clone());
                Ok(TrustOutcome::TokenCreated)
            }
            TrustCommand::RevokeNode { node, now } => {
                let at = self.revoked_nodes.entry(node.clone()).or_insert(0);
                *at = (*at).max(*now);
                Ok(TrustOutcome::NodeRevoked)
            }
            TrustCommand::RevokeToken { id } => {
                let t = self
                    .tokens
                    .get_mut(id)
                    .ok_or_else(|| TrustError::Unknown(id.clone()))?;
                t.revoked = true;
                Ok(TrustOutcome::TokenRevoked)
            }
            TrustCommand::UseToken {
                id,
                secret_hash,
                kind,
                name,
                now,
            } => {
                self.check(id, secret_hash, *kind, name, *now)?;
                let t = self
                    .tokens
                    .get_mut(id)
                    .ok_or_else(|| TrustError::Unknown(id.clone()))?;
                t.used += 1;
                if let Some(n) = &mut t.uses_left {
                    *n -= 1;
                }
                Ok(TrustOutcome::TokenUsed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, uses: Option<u32>, bound: Option<&str>) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            secret_hash: "h".into(),
            kind: TokenKind::Node,
            bound_to: bound.map(str::to_string),
            uses_left: uses,
            used: 0,
            created_at: 0,
            expires_at: 10_000,
            revoked: false,
        }
    }

    fn use_token(
        t: &mut Trust,
        id: &str,
        secret: &str,
        name: &str,
        now: Millis,
    ) -> Result<TrustOutcome, TrustError> {
        t.apply(&TrustCommand::UseToken {
            id: id.into(),
            secret_hash: secret.into(),
            kind: TokenKind::Node,
            name: name.into(),
            now,
        })
    }

    #[test]
    fn a_token_is_refused_for_each_reason_and_used_up_by_count() {
        let mut t = Trust::default();
        for tok in [
            token("aaaaaa", Some(2), None),
            token("bbbbbb", None, Some("n1")),
        ] {
            t.apply(&TrustCommand::CreateToken { token: tok, now: 0 })
                .expect("create");
        }
        assert_eq!(
            use_token(&mut t, "zzzzzz", "h", "n1", 1),
            Err(TrustError::Unknown("zzzzzz".into()))
        );
        assert_eq!(
            use_token(&mut t, "aaaaaa", "x", "n1", 1),
            Err(TrustError::Secret("aaaaaa".into()))
        );
        assert_eq!(
            use_token(&mut t, "aaaaaa", "h", "n1", 1),
            Ok(TrustOutcome::TokenUsed)
        );
        assert_eq!(
            use_token(&mut t, "aaaaaa", "h", "n2", 1),
            Ok(TrustOutcome::TokenUsed)
        );
        assert!(matches!(
            use_token(&mut t, "aaaaaa", "h", "n3", 1),
            Err(TrustError::UsedUp { used: 2, .. })
        ));
        assert!(matches!(
            use_token(&mut t, "bbbbbb", "h", "n2", 1),
            Err(TrustError::Bound { .. })
        ));
        assert_eq!(
            use_token(&mut t, "bbbbbb", "h", "n1", 1),
            Ok(TrustOutcome::TokenUsed)
        );
        assert!(matches!(
            use_token(&mut t, "bbbbbb", "h", "n1", 10_000),
            Err(TrustError::Expired { .. })
        ));
        t.apply(&TrustCommand::RevokeToken {
            id: "bbbbbb".into(),
        })
        .expect("revoke");
        assert_eq!(
            use_token(&mut t, "bbbbbb", "h", "n1", 1),
            Err(TrustError::Revoked("bbbbbb".into()))
        );
        let member = t.apply(&TrustCommand::UseToken {
            id: "aaaaaa".into(),
            secret_hash: "h".into(),
            kind: TokenKind::Member,
            name: "4".into(),
            now: 1,
        });
        assert!(member.is_err());
    }

    #[test]
    fn a_revoked_node_keeps_only_certificates_that_start_later() {
        let mut t = Trust::default();
        assert!(t.node_certificate_ok("n1", 5));
        t.apply(&TrustCommand::RevokeNode {
            node: "n1".into(),
            now: 100,
        })
        .expect("revoke");
        assert!(!t.node_certificate_ok("n1", 100));
        assert!(!t.node_certificate_ok("n1", 5));
        assert!(t.node_certificate_ok("n1", 101));
        assert!(t.node_certificate_ok("n2", 5));
    }

    #[test]
    fn the_first_ca_wins_and_old_tokens_are_pruned() {
        let mut t = Trust::default();
        let a = Ca::generate("a").expect("ca");
        let b = Ca::generate("b").expect("ca");
        assert_eq!(
            t.apply(&TrustCommand::SetCa { ca: a.clone() }),
            Ok(TrustOutcome::CaSet { changed: true })
        );
        assert_eq!(
            t.apply(&TrustCommand::SetCa { ca: b }),
            Ok(TrustOutcome::CaSet { changed: false })
        );
        assert_eq!(t.ca(), Some(&a));
        t.apply(&TrustCommand::CreateToken {
            token: token("aaaaaa", None, None),
            now: 0,
        })
        .expect("create");
        assert!(t
            .apply(&TrustCommand::CreateToken {
                token: token("aaaaaa", None, None),
                now: 0
            })
            .is_err());
        // A day after it expired, the next creation prunes it.
        t.apply(&TrustCommand::CreateToken {
            token: token("cccccc", None, None),
            now: 10_000 + 86_400_001,
        })
        .expect("create");
        assert_eq!(
            t.tokens().map(|x| x.id.as_str()).collect::<Vec<_>>(),
            vec!["cccccc"]
        );
    }
}
