//! Holding the node's lease: acquire (asking for the subnet held before, from the state file),
//! renew well before expiry, and acquire again when the lease is lost. The current lease is
//! published on a watch channel; it never gives up because the controller is unreachable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::Code;
use twill_client::{Client, ClientError};
use twill_proto::v1 as pb;

use crate::vtep::Mac;

/// What the agent asks the controller for.
#[derive(Clone, Debug)]
pub struct Identity {
    pub node: String,
    pub public_ip: std::net::Ipv4Addr,
    pub vtep_mac: Mac,
    /// The node's IPv6 address and IPv6 VTEP MAC, when it has an IPv6 address (dual stack).
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    pub vtep_mac_v6: Mac,
}

/// The subnet held before, kept across restarts so a node gets its subnet back.
pub fn load_state(dir: &Path) -> Option<String> {
    let s = std::fs::read_to_string(dir.join("subnet")).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn save_state(dir: &Path, subnet: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".subnet.tmp");
    std::fs::write(&tmp, format!("{subnet}\n"))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(tmp, dir.join("subnet"))
}

/// Renew when this fraction of the lease's lifetime is left (flannel renews an hour before a
/// day's lease ends; a third leaves room for several failed attempts on short TTLs).
///
/// The deadline is in the controller leader's time, which need not match this host's clock, so
/// the time left is never taken to exceed one TTL: a clock ahead of ours cannot make us late.
fn renew_after(lease: &pb::Lease, ttl: Duration) -> Duration {
    (valid_for(lease, ttl).saturating_sub(ttl / 3)).max(Duration::from_millis(200))
}

pub struct Keeper {
    pub client: Arc<Client>,
    pub id: Identity,
    pub state_dir: PathBuf,
    pub lease_ttl: Duration,
    pub tx: watch::Sender<Option<pb::Lease>>,
    /// Until when the lease held is known to be valid, on this host's monotonic clock; moved
    /// at every acquire and renewal, `None` once the lease is lost. Readiness reads it.
    pub valid_until: watch::Sender<Option<Instant>>,
}

/// How long `lease` is good for from now, never more than one TTL (see [`renew_after`]).
fn valid_for(lease: &pb::Lease, ttl: Duration) -> Duration {
    Duration::from_millis(lease.expires_at_ms.saturating_sub(twill_proto::now_ms())).min(ttl)
}

impl Keeper {
    async fn acquire(&self) -> Result<pb::Lease, ClientError> {
        let wanted = load_state(&self.state_dir).unwrap_or_default();
        let mut req = pb::AcquireRequest {
            node: self.id.node.clone(),
            public_ip: self.id.public_ip.to_string(),
            public_ipv6: self
                .id
                .public_ipv6
                .map(|a| a.to_string())
                .unwrap_or_default(),
            wanted_subnet: wanted.clone(),
            ..Default::default()
        };
        req.backend_data
            .insert("vtep_mac".into(), self.id.vtep_mac.to_string());
        if self.id.public_ipv6.is_some() {
            req.backend_data
                .insert("vtep_mac_v6".into(), self.id.vtep_mac_v6.to_string());
        }
        let r = match self.client.acquire(req.clone()).await {
            // A subnet from an older network configuration: ask for any.
            Err(ClientError::Status(s))
                if s.code() == Code::InvalidArgument && !wanted.is_empty() =>
            {
                tracing::warn!(subnet = %wanted, error = %s.message(), "previous subnet not valid any more; asking for a new one");
                req.wanted_subnet.clear();
                self.client.acquire(req).await?
            }
            other => other?,
        };
        r.lease.ok_or_else(|| {
            ClientError::Status(tonic::Status::internal("acquire answered without a lease"))
        })
    }

    /// Runs forever: holds the lease and publishes every change.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        let mut held: Option<pb::Lease> = None;
        loop {
            let next = match &held {
                None => match self.acquire().await {
                    Ok(l) => {
                        tracing::info!(node = %l.node, subnet = %l.subnet, reason = %l.reason, "lease acquired");
                        // Renewals are paced by the cluster's TTL; keep the last one known if
                        // the configuration cannot be read now.
                        if let Ok(c) = self.client.get_config().await {
                            if let Some(ttl) = c.config.filter(|c| c.lease_ttl_ms > 0) {
                                self.lease_ttl = Duration::from_millis(ttl.lease_ttl_ms);
                            }
                        }
                        if let Err(e) = save_state(&self.state_dir, &l.subnet) {
                            tracing::warn!(error = %e, dir = %self.state_dir.display(), "cannot save the subnet for the next start");
                        }
                        Some(l)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "cannot acquire a lease");
                        None
                    }
                },
                Some(l) => match self.client.renew(&l.node, l.create_revision).await {
                    Ok(r) => r.lease.or(Some(l.clone())),
                    Err(ClientError::Status(s))
                        if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) =>
                    {
                        tracing::warn!(subnet = %l.subnet, error = %s.message(), "lease lost; acquiring again");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(subnet = %l.subnet, error = %e, "renew failed; keeping the lease and retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                },
            };
            let lost = held.is_some() && next.is_none();
            held = next;
            self.valid_until.send_replace(
                held.as_ref()
                    .map(|l| Instant::now() + valid_for(l, self.lease_ttl)),
            );
            if lost || held.is_some() {
                self.tx.send_if_modified(|cur| {
                    let changed = cur.as_ref().map(|c| (&c.subnet, c.create_revision))
                        != held.as_ref().map(|c| (&c.subnet, c.create_revision));
                    if changed {
                        *cur = held.clone();
                    }
                    changed
                });
            }
            match &held {
                Some(l) => {
                    backoff = Duration::from_millis(200);
                    tokio::time::sleep(renew_after(l, self.lease_ttl)).await;
                }
                None => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
