//! Certificates and join tokens over the API: a node (or a new member) trades a token and a
//! CSR for a certificate; a node renews its own; admins create, list and revoke tokens.
//! Token checks are Raft writes (a use is counted once, cluster-wide); signing reads the CA
//! from the replicated state, so any member that leads can do it.

use std::time::Duration;

use tonic::{Request, Response, Status};
use twill_pki::{Identity, Role, Token};
use twill_proto::names::{quote, validate_node_name};
use twill_proto::v1 as pb;

use crate::allocator::{self as alloc, Command, Outcome};
use crate::authz::{Access, Caller};
use crate::node::Member;
use crate::service::ControllerService;
use crate::trust::{TokenKind, TokenRecord, TrustCommand, TrustError, TrustOutcome};

/// Members are few and replaced by hand: their certificates last a year.
pub const MEMBER_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// A token lives a day unless asked otherwise, as kubeadm's.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// A CSR for one P-256 or RSA-4096 key is well under this.
const MAX_CSR: usize = 16 * 1024;
const MAX_HOSTS: usize = 16;

fn bad(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}

fn ms(t: time::OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The name a join certifies: a node name, or a member id.
fn join_name(name: &str, kind: TokenKind) -> Result<Identity, Status> {
    match kind {
        TokenKind::Node => {
            validate_node_name(name).map_err(|e| bad("name", e))?;
            Ok(Identity::node(name))
        }
        TokenKind::Member => match name.parse::<u64>() {
            Ok(id) if id > 0 => Ok(Identity::member(id)),
            _ => Err(bad(
                "name",
                format!("{} is not a member id (1, 2, …)", quote(name)),
            )),
        },
    }
}

fn hosts(h: &[String], kind: TokenKind) -> Result<Vec<String>, Status> {
    if kind == TokenKind::Node && !h.is_empty() {
        return Err(bad("hosts", "only a member's certificate names hosts"));
    }
    if h.len() > MAX_HOSTS {
        return Err(bad(
            "hosts",
            format!("{} given; at most {MAX_HOSTS}", h.len()),
        ));
    }
    for x in h {
        if x.parse::<std::net::IpAddr>().is_err() && validate_node_name(x).is_err() {
            return Err(bad(
                "hosts",
                format!("{} is not a host name or an address", quote(x)),
            ));
        }
    }
    Ok(h.to_vec())
}

fn csr(pem: &str) -> Result<(), Status> {
    if pem.len() > MAX_CSR {
        return Err(bad(
            "csr_pem",
            format!("{} bytes; at most {MAX_CSR}", pem.len()),
        ));
    }
    twill_pki::ca::check_csr(pem).map_err(|e| bad("csr_pem", e))
}

/// Signs with the replicated CA.
fn sign(
    m: &Member,
    csr_pem: &str,
    who: &Identity,
    ttl: Duration,
    hosts: &[String],
) -> Result<pb::CertificateResponse, Status> {
    let ca = m.sm.read().alloc.trust().ca().cloned().ok_or_else(|| {
        Status::unavailable("the cluster CA is not replicated yet; retry shortly")
    })?;
    // After a node's revocation, its new certificates start later than the revocation.
    let valid_after = match who.role {
        Role::Node => {
            m.sm.read()
                .alloc
                .trust()
                .node_revoked_at(&who.name)
                .and_then(|ms| {
                    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                })
        }
        _ => None,
    };
    let issued = ca
        .sign_csr(csr_pem, who, ttl, hosts, valid_after)
        .map_err(|e| bad("csr_pem", e))?;
    Ok(pb::CertificateResponse {
        cert_pem: issued.cert_pem,
        ca_pem: ca.cert_pem,
        not_after_ms: ms(issued.not_after),
    })
}

fn unexpected(o: Outcome) -> Status {
    Status::internal(format!("unexpected allocator outcome {o:?}"))
}

impl ControllerService {
    fn require_tls(&self) -> Result<(), Status> {
        if self.m.opts.tls.is_none() {
            return Err(Status::failed_precondition(
                "TLS is off on this cluster (--insecure): there are no certificates or tokens",
            ));
        }
        Ok(())
    }

    pub(crate) async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        self.authorize(&req, "JoinNode", Access::Anyone)?;
        self.require_tls()?;
        let r = req.get_ref();
        let token = Token::parse(&r.token).map_err(|e| bad("token", e))?;
        let kind = if r.member {
            TokenKind::Member
        } else {
            TokenKind::Node
        };
        let who = join_name(&r.name, kind)?;
        let hosts = hosts(&r.hosts, kind)?;
        // Checked before the token is spent on it.
        csr(&r.csr_pem)?;
        // And the token against this member's copy of the table, so that guessing writes
        // nothing to the log. Expiry is left to the leader's clock; an id unknown here may be
        // news a follower has not applied yet, so only the leader refuses it.
        let leader_here = self.m.leader().is_some_and(|l| l.0 == self.m.id);
        let local = self.m.sm.read().alloc.trust().check(
            &token.id,
            &token.secret_hash(),
            kind,
            &who.name,
            0,
        );
        match local {
            Ok(()) => {}
            Err(TrustError::Unknown(_)) if !leader_here => {}
            Err(e) => {
                self.m.metrics.denied("JoinNode", "none");
                tracing::warn!(who = %who, token = %token.id, "join refused: {e}");
                return Err(crate::convert::alloc_status(
                    &crate::allocator::AllocError::Trust(e),
                ));
            }
        }
        let ttl = match kind {
            TokenKind::Node => self.m.opts.node_cert_ttl,
            TokenKind::Member => MEMBER_CERT_TTL,
        };
        let (m, csr_pem, token_id) = (self.m.clone(), r.csr_pem.clone(), token.id.clone());
        let signed_for = who.clone();
        let result = self
            .write(
                req,
                |_| {
                    Ok(alloc::Request {
                        request_id: None,
                        command: Command::Trust(TrustCommand::UseToken {
                            id: token.id.clone(),
                            secret_hash: token.secret_hash(),
                            kind,
                            name: who.name.clone(),
                            now: self.m.clock.now_ms(),
                        }),
                    })
                },
                move |_, o| match o {
                    Outcome::Trust(TrustOutcome::TokenUsed) => {
                        sign(&m, &csr_pem, &signed_for, ttl, &hosts)
                    }
                    o => Err(unexpected(o)),
                },
                |mut c, r| Box::pin(async move { c.join_node(r).await }),
            )
            .await;
        match &result {
            Ok(_) => tracing::info!(who = %who, token = %token_id, "joined: certificate issued"),
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                self.m.metrics.denied("JoinNode", "none");
                tracing::warn!(who = %who, token = %token_id, "join refused: {}", s.message());
            }
            Err(_) => {}
        }
        result
    }

    pub(crate) async fn renew_cert(
        &self,
        req: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::CertificateResponse>, Status> {
        let caller = self.authorize(&req, "RenewCertificate", Access::NodeOnly)?;
        self.require_tls()?;
        let Caller::Known(who) = caller else {
            return Err(Status::unauthenticated("a node certificate is required"));
        };
        if who.role != Role::Node {
            return Err(Status::permission_denied(
                "only a node renews its certificate this way",
            ));
        }
        csr(&req.get_ref().csr_pem)?;
        let resp = sign(
            &self.m,
            &req.get_ref().csr_pem,
            &who,
            self.m.opts.node_cert_ttl,
            &[],
        )?;
        tracing::info!(who = %who, "certificate renewed");
        Ok(Response::new(resp))
    }

    pub(crate) async fn new_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        self.authorize(&req, "CreateToken", Access::Admin)?;
        self.require_tls()?;
        let r = req.get_ref();
        let ttl = match r.ttl_ms {
            0 => DEFAULT_TOKEN_TTL,
            n => Duration::from_millis(n),
        };
        if ttl > MAX_TOKEN_TTL || ttl < Duration::from_secs(1) {
            return Err(bad("ttl_ms", "between one second and a year"));
        }
        let kind = if r.member {
            TokenKind::Member
        } else {
            TokenKind::Node
        };
        let bound_to = match r.bound_to.trim() {
            "" => None,
            n => Some(join_name(n, kind)?.name),
        };
        let token = Token::generate();
        let now = self.m.clock.now_ms();
        let expires_at = now.saturating_add(ttl.as_millis() as u64);
        let record = TokenRecord {
            id: token.id.clone(),
            secret_hash: token.secret_hash(),
            kind,
            bound_to,
            uses_left: (r.uses > 0).then_some(r.uses),
            used: 0,
            created_at: now,
            expires_at,
            revoked: false,
        };
        let m = self.m.clone();
        let shown = token.to_string();
        let id = token.id.clone();
        let resp = self
            .write(
                req,
                |r| {
                    Ok(alloc::Request {
                        request_id: crate::convert::request_id(&r.request_id)?,
                        command: Command::Trust(TrustCommand::CreateToken {
                            token: record.clone(),
                            now,
                        }),
                    })
                },
                move |_, o| match o {
                    Outcome::Trust(TrustOutcome::TokenCreated) => {
                        // The CA this member's own TLS trusts, which is the cluster's: known
                        // here even before the first leader has replicated the CA's key.
                        let ca_hash = m
                            .opts
                            .tls
                            .as_ref()
                            .map(|c| c.ca_hash())
                            .transpose()
                            .map_err(|e| Status::internal(e.to_string()))?
                            .unwrap_or_default();
                        Ok(pb::CreateTokenResponse {
                            token: shown,
                            ca_hash,
                            expires_at_ms: expires_at,
                        })
                    }
                    o => Err(unexpected(o)),
                },
                |mut c, r| Box::pin(async move { c.create_token(r).await }),
            )
            .await?;
        tracing::info!(token = %id, kind = %kind, "join token created");
        Ok(resp)
    }

    pub(crate) async fn tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.authorize(&req, "ListTokens", Access::Admin)?;
        self.read(
            req,
            |m| {
                let d = m.sm.read();
                Ok(pb::ListTokensResponse {
                    tokens: d
                        .alloc
                        .trust()
                        .tokens()
                        .map(|t| pb::TokenInfo {
                            id: t.id.clone(),
                            kind: t.kind.to_string(),
                            bound_to: t.bound_to.clone().unwrap_or_default(),
                            uses_left: t.uses_left.unwrap_or(0),
                            limited: t.uses_left.is_some(),
                            used: t.used,
                            created_at_ms: t.created_at,
                            expires_at_ms: t.expires_at,
                            revoked: t.revoked,
                        })
                        .collect(),
                })
            },
            |mut c, r| Box::pin(async move { c.list_tokens(r).await }),
        )
        .await
    }

    pub(crate) async fn revoke_node_certs(
        &self,
        req: Request<pb::RevokeNodeRequest>,
    ) -> Result<Response<pb::RevokeNodeResponse>, Status> {
        self.authorize(&req, "RevokeNode", Access::Admin)?;
        self.require_tls()?;
        let node = req.get_ref().node.clone();
        validate_node_name(&node).map_err(|e| bad("node", e))?;
        // The wall clock, as certificates are dated by it when they are signed (leader time,
        // which lease deadlines use, may run apart from it).
        let now = crate::now_ms();
        let shown = node.clone();
        let r = self
            .write(
                req,
                |r| {
                    Ok(alloc::Request {
                        request_id: crate::convert::request_id(&r.request_id)?,
                        command: Command::Trust(TrustCommand::RevokeNode {
                            node: node.clone(),
                            now,
                        }),
                    })
                },
                |_, _| Ok(pb::RevokeNodeResponse {}),
                |mut c, r| Box::pin(async move { c.revoke_node(r).await }),
            )
            .await?;
        tracing::info!(node = %shown, "node certificates revoked");
        Ok(r)
    }

    pub(crate) async fn revoke(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.authorize(&req, "RevokeToken", Access::Admin)?;
        let id = req.get_ref().id.trim().to_string();
        if id.len() != twill_pki::token::ID_LEN
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(bad(
                "id",
                format!(
                    "{} is not a token id (six characters of a-z, 0-9)",
                    quote(&id)
                ),
            ));
        }
        let r = self
            .write(
                req,
                |r| {
                    Ok(alloc::Request {
                        request_id: crate::convert::request_id(&r.request_id)?,
                        command: Command::Trust(TrustCommand::RevokeToken { id: id.clone() }),
                    })
                },
                |_, _| Ok(pb::RevokeTokenResponse {}),
                |mut c, r| Box::pin(async move { c.revoke_token(r).await }),
            )
            .await;
        match r {
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                Err(Status::not_found(s.message().to_string()))
            }
            other => {
                if other.is_ok() {
                    tracing::info!(token = %id, "join token revoked");
                }
                other
            }
        }
    }
}
