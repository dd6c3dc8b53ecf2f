//! Holding the node's lease: acquire (asking for the subnet held before, from the state file),
//! renew well before expiry, and acquire again when the lease is lost. The current lease is
//! published on a watch channel; it never gives up because the controller is unreachable.
//! When the node's identity changes (its public IP followed an address change), the lease it
//! holds is acquired again with the new one: the controller keeps the subnet, and the lease
//! stays published to the agent meanwhile, so no route is removed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::Code;
use twill_client::{Client, ClientError};
use twill_proto::v1 as pb;

use crate::vtep::Mac;

/// What the agent asks the controller for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub node: String,
    pub public_ip: std::net::Ipv4Addr,
    pub vtep_mac: Mac,
    /// The node's IPv6 address and IPv6 VTEP MAC, when it has an IPv6 address (dual stack).
    pub public_ipv6: Option<std::net::Ipv6Addr>,
    pub vtep_mac_v6: Mac,
    /// Further backend_data entries (the public interface and why it was chosen).
    pub backend_data: std::collections::BTreeMap<String, String>,
}

/// The subnet held before, kept across restarts so a node gets its subnet back.
pub fn load_state(dir: &Path) -> Option<String> {
    let s = std::fs::read_to_string(dir.join("subnet")).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// This agent's instance id: a random id kept in the state directory (`instance`), made on the
/// first start. The controller tells the same agent restarted (same id) from a second machine
/// under the same node name (another id, another address), which it refuses a live lease. If
/// the id cannot be kept, one for this run is used, with a warning: a restart then looks like
/// another machine unless it comes from the same address.
pub fn instance(dir: &Path) -> String {
    let path = dir.join("instance");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if !s.is_empty() && s.len() <= 64 && s.chars().all(plain) {
            return s.to_string();
        }
        tracing::warn!(file = %path.display(), "instance id unreadable; making a new one");
    }
    let id = random_id();
    let saved = std::fs::create_dir_all(dir).and_then(|()| {
        let tmp = dir.join(".instance.tmp");
        std::fs::write(&tmp, format!("{id}\n"))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(tmp, &path)
    });
    if let Err(e) = saved {
        tracing::warn!(error = %e, file = %path.display(), "cannot keep the instance id; using one for this run");
    }
    id
}

/// 128 random bits in hex, from the kernel; from std's randomly keyed hasher if
/// `/dev/urandom` cannot be read.
fn random_id() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    let from_kernel = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if from_kernel.is_err() {
        use std::hash::{BuildHasher, Hasher};
        for half in b.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
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

/// The controller has no network configuration yet (FailedPrecondition, with its message).
fn waiting_for_config(e: &ClientError) -> bool {
    matches!(e, ClientError::Status(s)
        if s.code() == Code::FailedPrecondition
            && s.message().contains("no network configuration is set"))
}

pub struct Keeper {
    pub client: Arc<Client>,
    /// The identity to acquire with; a change while a lease is held acquires it again.
    pub id: watch::Receiver<Identity>,
    pub state_dir: PathBuf,
    /// See [`instance`].
    pub instance: String,
    /// Why the last acquire failed, for readiness; cleared once a lease is held.
    pub health: Arc<Mutex<crate::health::Health>>,
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
    /// Records why no lease could be had (`None`: one is held); whether that is news.
    fn refused(&self, why: Option<String>) -> bool {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let news = h.lease_refused != why;
        h.lease_refused = why;
        news
    }

    async fn acquire(&mut self) -> Result<pb::Lease, ClientError> {
        let id = self.id.borrow_and_update().clone();
        let wanted = load_state(&self.state_dir).unwrap_or_default();
        let mut req = pb::AcquireRequest {
            node: id.node.clone(),
            public_ip: id.public_ip.to_string(),
            public_ipv6: id.public_ipv6.map(|a| a.to_string()).unwrap_or_default(),
            wanted_subnet: wanted.clone(),
            backend_data: id.backend_data.into_iter().collect(),
            instance: self.instance.clone(),
            ..Default::default()
        };
        req.backend_data
            .insert("vtep_mac".into(), id.vtep_mac.to_string());
        if id.public_ipv6.is_some() {
            req.backend_data
                .insert("vtep_mac_v6".into(), id.vtep_mac_v6.to_string());
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

    /// One renewal of `l`: `Some(Some(lease))` renewed, `Some(None)` lost (acquire again),
    /// `None` failed for now (after a back-off wait; the lease is kept).
    async fn renew(&self, l: &pb::Lease, backoff: &mut Duration) -> Option<Option<pb::Lease>> {
        match self.client.renew(&l.node, l.create_revision).await {
            Ok(r) => Some(r.lease.or(Some(l.clone()))),
            Err(ClientError::Status(s))
                if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) =>
            {
                tracing::warn!(subnet = %l.subnet, error = %s.message(), "lease lost; acquiring again");
                Some(None)
            }
            Err(e) => {
                tracing::warn!(subnet = %l.subnet, error = %e, "renew failed; keeping the lease and retrying");
                tokio::time::sleep(*backoff).await;
                *backoff = (*backoff * 2).min(Duration::from_secs(10));
                None
            }
        }
    }

    /// Runs forever: holds the lease and publishes every change.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(200);
        let mut held: Option<pb::Lease> = None;
        // The identity changed while a lease was held; `id_open` until the agent stops.
        let (mut moved, mut id_open) = (false, true);
        let mut said_waiting = false;
        loop {
            let next = match &held {
                Some(l) if moved => match self.acquire().await {
                    Ok(n) => {
                        moved = false;
                        tracing::info!(node = %n.node, subnet = %n.subnet, public_ip = %n.public_ip, "lease acquired again with the node's new public IP");
                        Some(n)
                    }
                    // The update is refused or fails: the lease as it is must still be renewed,
                    // or it would expire while the node routes its subnet; the update is tried
                    // again at the next pass.
                    Err(e) => {
                        tracing::warn!(subnet = %l.subnet, error = %e, "cannot update the lease with the new public IP; renewing it as it is and retrying the update");
                        match self.renew(l, &mut backoff).await {
                            Some(next) => next,
                            None => continue,
                        }
                    }
                },
                None => match self.acquire().await {
                    Ok(l) => {
                        tracing::info!(node = %l.node, subnet = %l.subnet, reason = %l.reason, "lease acquired");
                        self.refused(None);
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
                    // A cluster not configured yet is a normal start (the agents may come up
                    // first): said once, at INFO, not a warning every retry.
                    Err(e) if waiting_for_config(&e) => {
                        if !said_waiting {
                            tracing::info!("waiting for the cluster's network configuration (`twill config set`); the lease is acquired once it is set");
                            said_waiting = true;
                        }
                        None
                    }
                    Err(e) => {
                        let why = match &e {
                            ClientError::Status(s) => s.message().to_string(),
                            other => other.to_string(),
                        };
                        // Said once per reason: a refusal that stands is retried quietly.
                        if self.refused(Some(why)) {
                            tracing::warn!(error = %e, retry_in = ?backoff, "cannot acquire a lease");
                        } else {
                            tracing::debug!(error = %e, retry_in = ?backoff, "cannot acquire a lease (still)");
                        }
                        None
                    }
                },
                Some(l) => match self.renew(l, &mut backoff).await {
                    Some(next) => next,
                    None => continue,
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
                    // Renewals alone are not news; another lease or a new public IP is.
                    let key = |c: &pb::Lease| {
                        (
                            c.subnet.clone(),
                            c.create_revision,
                            c.public_ip.clone(),
                            c.backend_data.clone(),
                            c.ipv6_subnet.clone(),
                            c.public_ipv6.clone(),
                        )
                    };
                    let changed = cur.as_ref().map(key) != held.as_ref().map(key);
                    if changed {
                        *cur = held.clone();
                    }
                    changed
                });
            }
            match &held {
                Some(l) => {
                    backoff = Duration::from_millis(200);
                    tokio::select! {
                        () = tokio::time::sleep(renew_after(l, self.lease_ttl)) => {}
                        r = self.id.changed(), if id_open => match r {
                            Ok(()) => moved = true,
                            Err(_) => id_open = false,
                        },
                    }
                }
                None => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_id_is_kept_and_a_damaged_one_replaced() {
        let dir = tempfile::tempdir().expect("dir");
        let first = instance(dir.path());
        assert_eq!(first.len(), 32);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()), "{first}");
        assert_eq!(
            instance(dir.path()),
            first,
            "a restart is the same instance"
        );
        let other = tempfile::tempdir().expect("dir");
        assert_ne!(instance(other.path()), first, "another machine is another");
        std::fs::write(dir.path().join("instance"), "not an id!\n").expect("write");
        let new = instance(dir.path());
        assert_ne!(new, first);
        assert_eq!(instance(dir.path()), new);
    }

    #[test]
    fn an_unconfigured_cluster_is_waited_for_and_other_refusals_are_not() {
        let status = |code, msg: &str| ClientError::Status(tonic::Status::new(code, msg));
        assert!(waiting_for_config(&status(
            Code::FailedPrecondition,
            "no network configuration is set (use `twill config set`)"
        )));
        assert!(!waiting_for_config(&status(
            Code::FailedPrecondition,
            "lease of n1 is held by another instance"
        )));
        assert!(!waiting_for_config(&status(
            Code::InvalidArgument,
            "no network configuration is set"
        )));
    }
}
