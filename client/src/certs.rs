//! Getting and keeping a certificate: a join with a token (the CA learnt from its hash), and
//! renewal before expiry that swaps the client's TLS settings without closing what is open.

use std::path::{Path, PathBuf};
use std::time::Duration;

use twill_pki::bootstrap::{fetch_ca, BootstrapError};
use twill_pki::ca::key_and_csr;
use twill_pki::credentials::ca_only_tls;
use twill_pki::{Credentials, CredentialsError, Identity};
use twill_proto::v1 as pb;

use crate::{Client, ClientError, ClientOptions};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error("the join was refused: {0}")]
    Join(ClientError),
    #[error("the controller's certificate cannot be used: {0}")]
    Issued(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    #[error("cannot make a key: {0}")]
    Key(String),
    #[error("no controller answered: {0}")]
    NoneReached(String),
}

impl CertError {
    /// No controller answered, or none could yet (no leader, the CA not replicated): a join
    /// may work later. A refused token or an untrusted CA will not.
    pub fn worth_retrying(&self) -> bool {
        matches!(
            self,
            CertError::NoneReached(_) | CertError::Join(ClientError::Unavailable { .. })
        )
    }
}

/// What a joining node or member asks for.
pub struct JoinAs {
    pub name: String,
    pub member: bool,
    pub hosts: Vec<String>,
}

/// A certificate issued just after its node's revocation starts up to a second ahead (its
/// start is what tells it from the revoked ones): wait for it rather than be refused.
async fn until_valid(c: &Credentials) {
    if let Ok(start) = c.not_before() {
        let ahead = start - time::OffsetDateTime::now_utc();
        if let Ok(d) = Duration::try_from(ahead) {
            tokio::time::sleep(d.min(Duration::from_secs(5))).await;
        }
    }
}

fn credentials(key_pem: String, r: pb::CertificateResponse) -> Result<Credentials, CertError> {
    let c = Credentials {
        cert_pem: r.cert_pem,
        key_pem,
        ca_pem: r.ca_pem,
    };
    // A certificate this side cannot read back is of no use to it.
    c.identity().map_err(|e| CertError::Issued(e.to_string()))?;
    Ok(c)
}

/// Joins through the first endpoint whose member proves it belongs to the CA with `ca_hash`.
pub async fn join(
    endpoints: &[String],
    token: &str,
    ca_hash: &str,
    who: &JoinAs,
) -> Result<Credentials, CertError> {
    let identity = if who.member {
        Identity::member(who.name.parse().unwrap_or(0))
    } else {
        Identity::node(&who.name)
    };
    let (key_pem, csr_pem) = key_and_csr(&identity).map_err(|e| CertError::Key(e.to_string()))?;
    let mut last = String::from("no endpoints given");
    for e in endpoints {
        let url = crate::normalise(e, true).map_err(|e| CertError::NoneReached(e.to_string()))?;
        let ca_pem = match fetch_ca(&url, ca_hash).await {
            Ok(ca) => ca,
            Err(e @ (BootstrapError::Untrusted { .. } | BootstrapError::BadHash(_))) => {
                return Err(e.into())
            }
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        let client = Client::with_options(
            [url.as_str()],
            ClientOptions {
                retry_for: Duration::from_secs(10),
                tls: Some(ca_only_tls(&ca_pem)),
                ..Default::default()
            },
        )
        .map_err(CertError::Join)?;
        let resp = client
            .join_node(pb::JoinRequest {
                token: token.trim().to_string(),
                csr_pem: csr_pem.clone(),
                name: who.name.clone(),
                hosts: who.hosts.clone(),
                member: who.member,
            })
            .await
            .map_err(CertError::Join)?;
        let c = credentials(key_pem, resp)?;
        until_valid(&c).await;
        return Ok(c);
    }
    Err(CertError::NoneReached(last))
}

/// A new certificate for the same identity, with a new key.
pub async fn renew(client: &Client, current: &Credentials) -> Result<Credentials, CertError> {
    let who = current.identity()?;
    let (key_pem, csr_pem) = key_and_csr(&who).map_err(|e| CertError::Key(e.to_string()))?;
    let resp = client
        .renew_certificate(&csr_pem)
        .await
        .map_err(CertError::Join)?;
    let c = credentials(key_pem, resp)?;
    until_valid(&c).await;
    Ok(c)
}

/// When a certificate is due for renewal: two thirds into its life, as kubelet does it.
pub fn renew_in(c: &Credentials) -> Duration {
    let (Ok(from), Ok(to)) = (c.not_before(), c.not_after()) else {
        return Duration::ZERO;
    };
    let due = from + (to - from) * 2 / 3;
    let left = due - time::OffsetDateTime::now_utc();
    Duration::try_from(left).unwrap_or(Duration::ZERO)
}

/// Renews `current` whenever it is due, saving each new one to `path` (when given) before the
/// client starts using it. Runs until the task is dropped; failures are retried every few
/// seconds and logged.
pub async fn keep_renewed(
    client: std::sync::Arc<Client>,
    mut current: Credentials,
    path: Option<PathBuf>,
) {
    loop {
        tokio::time::sleep(renew_in(&current)).await;
        match renew(&client, &current).await {
            Ok(next) => {
                if let Some(p) = &path {
                    if let Err(e) = next.save(p) {
                        tracing::warn!(error = %e, "renewed certificate not saved; keeping the old one");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        continue;
                    }
                }
                client.set_tls(next.client_tls());
                let until = next.not_after().map(|t| t.to_string()).unwrap_or_default();
                tracing::info!(until = %until, "certificate renewed");
                current = next;
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate renewal failed; retrying in 5s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Reads saved credentials when they are there and still valid for a while.
pub fn load_valid(path: &Path) -> Option<Credentials> {
    let c = Credentials::load(path).ok()?;
    let left = c.not_after().ok()? - time::OffsetDateTime::now_utc();
    (left > time::Duration::ZERO).then_some(c)
}
