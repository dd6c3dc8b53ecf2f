//! The allocator as openraft's state machine.
//!
//! The allocator lives in memory; what makes it durable is the Raft log plus the latest
//! snapshot, written to `snapshot.bin` atomically (temporary file, fsync, rename) with a CRC.
//! On start the snapshot is loaded and openraft replays the committed log after it.

use std::io::{Cursor, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::allocator::{Allocator, AllocatorSnapshot};
use crate::batch::Answers;
use crate::disk::DiskFaults;
use crate::watch::History;
use crate::{NodeId, TypeConfig};

const MAGIC: &[u8; 8] = b"TWILSNP1";
pub const SNAPSHOT_FILE: &str = "snapshot.bin";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("cannot read snapshot {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("snapshot {path} is corrupt: {what} (refusing to start without it)")]
    Corrupt { path: PathBuf, what: String },
}

/// What a snapshot's bytes decode to: the allocator, then the trust state (the CA and join
/// tokens). Snapshots from before the trust state have the allocator only; bincode fields go by
/// position, so those decode as [`OldPayload`].
#[derive(Serialize, Deserialize)]
struct Payload {
    alloc: AllocatorSnapshot,
    trust: crate::trust::Trust,
    /// Appended after the trust state; older snapshots end before it and decode as
    /// [`TrustPayload`].
    config_revision: u64,
    /// The agent instance holding each lease; older snapshots end before it and decode as
    /// [`RevisionPayload`].
    instances: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RevisionPayload {
    alloc: AllocatorSnapshot,
    trust: crate::trust::Trust,
    config_revision: u64,
}

#[derive(Deserialize)]
struct TrustPayload {
    alloc: AllocatorSnapshot,
    trust: crate::trust::Trust,
}

#[derive(Deserialize)]
struct OldPayload {
    alloc: AllocatorSnapshot,
}

/// [`Payload`] borrowed from the allocator; the same bytes, without a copy of the state.
#[derive(Serialize)]
struct PayloadRef<'a> {
    alloc: crate::allocator::AllocatorSnapshotRef<'a>,
    trust: &'a crate::trust::Trust,
    config_revision: u64,
    instances: &'a std::collections::BTreeMap<String, String>,
}

/// A snapshot's bytes: the newest shape of [`Payload`].
fn encode(a: &Allocator) -> bincode::Result<Vec<u8>> {
    bincode::serialize(&PayloadRef {
        alloc: a.snapshot_ref(),
        trust: a.trust(),
        config_revision: a.config_revision(),
        instances: a.instances(),
    })
}

/// Decodes any shape into a restored allocator. The newest shape is tried first: an older
/// snapshot ends where a newer field would start, which fails to decode, while a newer one
/// would decode as an older with bytes left over.
fn restore(data: &[u8]) -> Result<Allocator, String> {
    let p = match bincode::deserialize::<Payload>(data) {
        Ok(p) => p,
        Err(new) => {
            let older = |alloc, trust, config_revision| Payload {
                alloc,
                trust,
                config_revision,
                instances: Default::default(),
            };
            if let Ok(p) = bincode::deserialize::<RevisionPayload>(data) {
                older(p.alloc, p.trust, p.config_revision)
            } else if let Ok(p) = bincode::deserialize::<TrustPayload>(data) {
                older(p.alloc, p.trust, 0)
            } else if let Ok(p) = bincode::deserialize::<OldPayload>(data) {
                older(p.alloc, crate::trust::Trust::default(), 0)
            } else {
                return Err(new.to_string());
            }
        }
    };
    let mut a = Allocator::restore(p.alloc).map_err(|e| e.to_string())?;
    a.set_trust(p.trust);
    a.set_config_revision(p.config_revision);
    a.set_instances(p.instances);
    Ok(a)
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The applied state, shared with the gRPC service for reads and watches.
pub struct SmData {
    pub alloc: Allocator,
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub history: History,
    /// The same without renewals, for watchers that omit them.
    pub changes: History,
}

pub struct Shared {
    data: RwLock<SmData>,
    /// The applied revision; watchers wait on it.
    revision: watch::Sender<u64>,
    /// The applied revision, sent only when what was applied holds more than renewals:
    /// watchers that omit renewals wait on it, and are not woken by a renewal at all.
    changed: watch::Sender<u64>,
}

impl Shared {
    pub fn read(&self) -> RwLockReadGuard<'_, SmData> {
        // A panic while holding the lock would already have taken the member down.
        self.data.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, SmData> {
        self.data.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }

    /// Like [`Self::subscribe`], but told only of changes that are not just renewals.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// The snapshot file's writers take turns. openraft builds a snapshot in a task of its own
/// while its state-machine worker may install one from the leader: both write the same
/// temporary file, and unserialized, the first to finish renamed the other's bytes (whole,
/// half-written or mixed with its own) into place, and the other then failed on the vanished
/// file, which stops Raft. Holds the last log id of the snapshot on disk, so that a build that
/// ends after a newer install does not put an older snapshot back over it (the log behind the
/// installed one is purged, so a restart from it would lack entries).
struct OnDisk(std::sync::Mutex<Option<LogId<NodeId>>>);

impl OnDisk {
    /// Writes `stored` unless `only_if_newer` and the file already holds a newer snapshot;
    /// returns whether it wrote.
    fn write(
        &self,
        dir: &Path,
        stored: &StoredSnapshot,
        only_if_newer: bool,
        faults: Option<&DiskFaults>,
    ) -> Result<bool, SnapshotWriteError> {
        // A writer that panicked left no half-done state here: the file is renamed whole or not.
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if only_if_newer && stored.meta.last_log_id < *last {
            return Ok(false);
        }
        write_snapshot_file(dir, stored, faults)?;
        *last = stored.meta.last_log_id;
        Ok(true)
    }
}

pub struct StateMachine {
    shared: Arc<Shared>,
    dir: PathBuf,
    on_disk: Arc<OnDisk>,
    built: u64,
    /// Faults the snapshot file's writes obey (tests only).
    disk_faults: Option<DiskFaults>,
}

fn sm_err(
    verb: ErrorVerb,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, &e).into()
}

fn snap_err(
    verb: ErrorVerb,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, &e).into()
}

impl StateMachine {
    /// Loads the snapshot in `dir`, if there is one; `history` is how many events to retain.
    pub fn open(dir: &Path, history: usize) -> Result<Self, SnapshotFileError> {
        let path = dir.join(SNAPSHOT_FILE);
        let mut data = SmData {
            alloc: Allocator::new(),
            last_applied: None,
            membership: StoredMembership::default(),
            history: History::new(history, 0),
            changes: History::new(history, 0),
        };
        if let Some(stored) = read_snapshot_file(&path)? {
            data.alloc = restore(&stored.data).map_err(|what| SnapshotFileError::Corrupt {
                path: path.clone(),
                what,
            })?;
            data.last_applied = stored.meta.last_log_id;
            data.membership = stored.meta.last_membership.clone();
            data.history.reset(data.alloc.revision());
            data.changes.reset(data.alloc.revision());
        }
        let rev = data.alloc.revision();
        let on_disk = Arc::new(OnDisk(std::sync::Mutex::new(data.last_applied)));
        Ok(StateMachine {
            shared: Arc::new(Shared {
                data: RwLock::new(data),
                revision: watch::channel(rev).0,
                changed: watch::channel(rev).0,
            }),
            dir: dir.to_path_buf(),
            on_disk,
            built: 0,
            disk_faults: None,
        })
    }

    /// Sends the snapshot file's writes through `faults` (tests only).
    pub fn with_disk_faults(mut self, faults: Option<DiskFaults>) -> Self {
        self.disk_faults = faults;
        self
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

fn read_snapshot_file(path: &Path) -> Result<Option<StoredSnapshot>, SnapshotFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(SnapshotFileError::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    let corrupt = |what: &str| SnapshotFileError::Corrupt {
        path: path.to_path_buf(),
        what: what.to_string(),
    };
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err(corrupt("bad header"));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().map_err(|_| corrupt("bad header"))?);
    let len = u64::from_le_bytes(
        bytes[12..20]
            .try_into()
            .map_err(|_| corrupt("bad header"))?,
    );
    let body = &bytes[20..];
    if body.len() as u64 != len {
        return Err(corrupt(&format!(
            "truncated: {} of {len} bytes",
            body.len()
        )));
    }
    if crc32fast::hash(body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    bincode::deserialize(body)
        .map(Some)
        .map_err(|e| corrupt(&e.to_string()))
}

/// A snapshot that could not be written; names the file, as the error log line must.
#[derive(Debug, thiserror::Error)]
#[error("cannot write snapshot {path}: {source} (the previous snapshot is kept)")]
pub struct SnapshotWriteError {
    path: PathBuf,
    source: std::io::Error,
}

/// Writes the snapshot beside the old one and renames it over; on any failure the temporary
/// file is removed and the previous snapshot is left as it was. With `faults` (tests only)
/// every write, fsync and the rename go through them.
fn write_snapshot_file(
    dir: &Path,
    stored: &StoredSnapshot,
    faults: Option<&DiskFaults>,
) -> Result<(), SnapshotWriteError> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let r = write_snapshot_tmp(dir, &tmp, stored, faults);
    if r.is_err() {
        // Best effort: a leftover temporary file is overwritten by the next attempt anyway.
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(|source| SnapshotWriteError {
        path: dir.join(SNAPSHOT_FILE),
        source,
    })
}

fn write_snapshot_tmp(
    dir: &Path,
    tmp: &Path,
    stored: &StoredSnapshot,
    faults: Option<&DiskFaults>,
) -> std::io::Result<()> {
    // The body is bincode of `stored`: its metadata, then its data as a length-prefixed byte
    // string. It is written in those pieces rather than encoded whole, which at 65,536 leases
    // held two more copies of the state's bytes (the body, then header and body) beside them.
    let meta = bincode::serialize(&stored.meta).map_err(std::io::Error::other)?;
    let data_len = (stored.data.len() as u64).to_le_bytes();
    let body: [&[u8]; 3] = [&meta, &data_len, &stored.data];
    let mut crc = crc32fast::Hasher::new();
    body.iter().for_each(|piece| crc.update(piece));
    let body_len = body.iter().map(|piece| piece.len() as u64).sum::<u64>();
    let mut header = Vec::with_capacity(MAGIC.len() + 12);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&crc.finalize().to_le_bytes());
    header.extend_from_slice(&body_len.to_le_bytes());
    {
        // The snapshot holds BGP keys (and the cluster's CA key): readable by this user only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)?;
        for piece in std::iter::once(header.as_slice()).chain(body) {
            match faults {
                None => f.write_all(piece)?,
                Some(d) => d.write_all(&mut f, piece)?,
            }
        }
        if let Some(d) = faults {
            d.before_sync()?;
        }
        f.sync_all()?;
    }
    if let Some(d) = faults {
        d.before_metadata_change()?;
    }
    std::fs::rename(tmp, dir.join(SNAPSHOT_FILE))?;
    // The rename itself must reach the disk before the log behind it is purged.
    if let Some(d) = faults {
        d.before_sync()?;
    }
    std::fs::File::open(dir)?.sync_all()
}

pub struct SnapshotBuilder {
    shared: Arc<Shared>,
    dir: PathBuf,
    on_disk: Arc<OnDisk>,
    seq: u64,
    disk_faults: Option<DiskFaults>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, data) = {
            let d = self.shared.read();
            let data = encode(&d.alloc).map_err(|e| snap_err(ErrorVerb::Write, e))?;
            let id = match d.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
                None => format!("0-0-{}", self.seq),
            };
            let meta = SnapshotMeta {
                last_log_id: d.last_applied,
                last_membership: d.membership.clone(),
                snapshot_id: id,
            };
            (meta, data)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let dir = self.dir.clone();
        let faults = self.disk_faults.clone();
        let on_disk = self.on_disk.clone();
        let (stored, written) = tokio::task::spawn_blocking(move || {
            on_disk
                .write(&dir, &stored, true, faults.as_ref())
                .map(|w| (stored, w))
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| {
            // openraft stops the member on this error; say why first, naming the file.
            tracing::error!(error = %e, "snapshot write failed");
            snap_err(ErrorVerb::Write, e)
        })?;
        if written {
            tracing::info!(snapshot = %meta.snapshot_id, bytes = stored.data.len(), "snapshot written");
        } else {
            // openraft ignores it too: it is older than the snapshot it already has.
            tracing::info!(snapshot = %meta.snapshot_id, "snapshot built but not written: a newer one was installed meanwhile");
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let d = self.shared.read();
        Ok((d.last_applied, d.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answers>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let mut changed = false;
        let rev = {
            let mut d = self.shared.write();
            for e in entries {
                d.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => out.push(Vec::new()),
                    EntryPayload::Membership(m) => {
                        d.membership = StoredMembership::new(Some(e.log_id), m);
                        out.push(Vec::new());
                    }
                    EntryPayload::Normal(batch) => {
                        let mut answers = Vec::with_capacity(batch.0.len());
                        for req in &batch.0 {
                            let (resp, events) = d.alloc.apply(req);
                            for ev in events {
                                let wire = Arc::new(crate::watch::Event::new(
                                    crate::convert::event_to_proto(&ev),
                                ));
                                if !ev.event.is_renewal() {
                                    d.changes.push(wire.clone());
                                    changed = true;
                                }
                                d.history.push(wire);
                            }
                            answers.push(resp);
                        }
                        out.push(answers);
                    }
                }
            }
            d.alloc.revision()
        };
        self.shared.revision.send_replace(rev);
        if changed {
            self.shared.changed.send_replace(rev);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.built += 1;
        SnapshotBuilder {
            shared: self.shared.clone(),
            dir: self.dir.clone(),
            on_disk: self.on_disk.clone(),
            seq: self.built,
            disk_faults: self.disk_faults.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let alloc =
            restore(&data).map_err(|e| snap_err(ErrorVerb::Read, std::io::Error::other(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let dir = self.dir.clone();
        let faults = self.disk_faults.clone();
        let on_disk = self.on_disk.clone();
        tokio::task::spawn_blocking(move || on_disk.write(&dir, &stored, false, faults.as_ref()))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
            .map_err(|e| {
                tracing::error!(error = %e, "installing a snapshot failed");
                snap_err(ErrorVerb::Write, e)
            })?;
        let rev = {
            let mut d = self.shared.write();
            d.history.reset(alloc.revision());
            d.changes.reset(alloc.revision());
            d.alloc = alloc;
            d.last_applied = meta.last_log_id;
            d.membership = meta.last_membership.clone();
            d.alloc.revision()
        };
        tracing::info!(snapshot = %meta.snapshot_id, revision = rev, "snapshot installed");
        self.shared.revision.send_replace(rev);
        self.shared.changed.send_replace(rev);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let path = self.dir.join(SNAPSHOT_FILE);
        let stored = tokio::task::spawn_blocking(move || read_snapshot_file(&path))
            .await
            .map_err(|e| sm_err(ErrorVerb::Read, e))?
            .map_err(|e| snap_err(ErrorVerb::Read, e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{Command, NetworkConfig, Request};

    fn configured() -> Allocator {
        let mut a = Allocator::new();
        let (r, _) = a.apply(&Request {
            request_id: None,
            command: Command::SetConfig {
                config: NetworkConfig::embedded_default(),
                only_if_absent: false,
            },
        });
        assert!(r.result.is_ok());
        a
    }

    /// openraft builds a snapshot in a task of its own while its state-machine worker may
    /// install one received from the leader; both write the snapshot file. Slow fsyncs hold
    /// the first one's write open while the other begins (the build from the state before the
    /// install, so older): the install must still succeed, and the file must end as the newer
    /// (installed) snapshot, whole, which the member restarts from.
    fn build_and_install_at_once(install_first: bool) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("dir");
        let disk = DiskFaults::new();
        disk.slow_fsync(std::time::Duration::from_millis(300));
        let mut sm = StateMachine::open(dir.path(), 16)
            .expect("empty dir")
            .with_disk_faults(Some(disk.clone()));
        let leader = configured();
        let data = encode(&leader).expect("serialize");
        let last = LogId::new(openraft::CommittedLeaderId::new(1, 1), 50);
        let meta = SnapshotMeta {
            last_log_id: Some(last),
            last_membership: StoredMembership::default(),
            snapshot_id: "1-50-1".into(),
        };
        let (built, installed) = rt.block_on(async {
            let mut builder = sm.get_snapshot_builder().await;
            let install = async move {
                sm.install_snapshot(&meta, Box::new(Cursor::new(data)))
                    .await
            };
            // The second starts inside the first one's first (slowed) fsync.
            let pause = std::time::Duration::from_millis(100);
            if install_first {
                let install = tokio::spawn(install);
                tokio::time::sleep(pause).await;
                let built = builder.build_snapshot().await;
                (built, install.await.expect("install task"))
            } else {
                let build = tokio::spawn(async move { builder.build_snapshot().await });
                tokio::time::sleep(pause).await;
                let installed = install.await;
                (build.await.expect("build task"), installed)
            }
        });
        assert!(built.is_ok(), "build: {built:?}");
        assert!(installed.is_ok(), "install: {installed:?}");
        disk.clear();
        let kept = read_snapshot_file(&dir.path().join(SNAPSHOT_FILE))
            .expect("a whole snapshot")
            .expect("a snapshot");
        assert_eq!(kept.meta.last_log_id, Some(last));
        let reopened = StateMachine::open(dir.path(), 16).expect("restarts");
        assert_eq!(reopened.shared().read().alloc.revision(), leader.revision());
    }

    #[test]
    fn a_snapshot_installed_while_one_is_being_built_is_the_one_kept() {
        build_and_install_at_once(false);
    }

    #[test]
    fn a_snapshot_built_while_a_newer_one_is_installed_does_not_replace_it() {
        build_and_install_at_once(true);
    }

    /// The snapshot file is written in pieces; it must hold exactly the bytes of the header
    /// and the whole bincode of [`StoredSnapshot`] that every member has written and read.
    #[test]
    fn a_snapshot_file_written_in_pieces_has_the_bytes_of_the_whole_encoding() {
        let dir = tempfile::tempdir().expect("dir");
        let stored = StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 2), 77)),
                last_membership: StoredMembership::default(),
                snapshot_id: "3-77-1".into(),
            },
            data: encode(&configured()).expect("serialize"),
        };
        write_snapshot_file(dir.path(), &stored, None).expect("written");
        let body = bincode::serialize(&stored).expect("serialize");
        let mut whole = MAGIC.to_vec();
        whole.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        whole.extend_from_slice(&(body.len() as u64).to_le_bytes());
        whole.extend_from_slice(&body);
        let file = std::fs::read(dir.path().join(SNAPSHOT_FILE)).expect("read");
        assert_eq!(file, whole);
        let back = read_snapshot_file(&dir.path().join(SNAPSHOT_FILE))
            .expect("whole")
            .expect("a snapshot");
        assert_eq!(back.data, stored.data);
    }

    /// The snapshot is encoded from borrowed state; its bytes must be exactly those of the
    /// owned [`Payload`] every member has written and read so far.
    #[test]
    fn a_snapshot_encoded_from_borrowed_state_has_the_bytes_of_the_owned_payload() {
        use crate::allocator::AcquireArgs;
        let mut a = configured();
        let args = |node: &str, ip: u8| AcquireArgs {
            node: node.into(),
            public_ip: std::net::Ipv4Addr::new(192, 0, 2, ip),
            public_ipv6: None,
            backend_data: [("vtep".to_string(), format!("mac-{ip}"))].into(),
            wanted_subnet: None,
            wanted_ipv6_subnet: None,
        };
        let requests = [
            Command::Acquire {
                args: args("n1", 1),
                now: 10,
            },
            Command::AcquireAs {
                args: args("n2", 2),
                now: 11,
                instance: "i2".into(),
            },
            Command::Reserve {
                node: "r1".into(),
                subnet: "10.244.200.0/24".parse::<ipnet::Ipv4Net>().expect("subnet"),
            },
            Command::Release {
                node: "absent".into(),
            },
        ];
        for (i, command) in requests.into_iter().enumerate() {
            a.apply(&Request {
                request_id: Some(format!("req-{i}")),
                command,
            });
        }
        assert_eq!(a.lease_count(), 2);
        assert_eq!(a.instances().len(), 1);
        let owned = bincode::serialize(&Payload {
            alloc: a.snapshot(),
            trust: a.trust().clone(),
            config_revision: a.config_revision(),
            instances: a.instances().clone(),
        })
        .expect("serialize");
        assert_eq!(encode(&a).expect("serialize"), owned);
    }

    #[test]
    fn the_configuration_revision_survives_a_snapshot_and_older_shapes_still_restore() {
        let a = configured();
        assert_eq!(a.config_revision(), 1);
        let now = encode(&a).expect("serialize");
        assert_eq!(restore(&now).expect("restores").config_revision(), 1);

        #[derive(Serialize)]
        struct WithRevision {
            alloc: AllocatorSnapshot,
            trust: crate::trust::Trust,
            config_revision: u64,
        }
        let with_revision = bincode::serialize(&WithRevision {
            alloc: a.snapshot(),
            trust: a.trust().clone(),
            config_revision: a.config_revision(),
        })
        .expect("serialize");
        let r = restore(&with_revision).expect("a snapshot from before instances restores");
        assert_eq!(r.config_revision(), 1);
        assert!(r.instances().is_empty());

        #[derive(Serialize)]
        struct Before {
            alloc: AllocatorSnapshot,
            trust: crate::trust::Trust,
        }
        let before = bincode::serialize(&Before {
            alloc: a.snapshot(),
            trust: a.trust().clone(),
        })
        .expect("serialize");
        let b = restore(&before).expect("a snapshot from before the field restores");
        assert_eq!(b.config_revision(), 0, "unknown, not invented");
        assert_eq!(b.revision(), a.revision());

        #[derive(Serialize)]
        struct Oldest {
            alloc: AllocatorSnapshot,
        }
        let oldest = bincode::serialize(&Oldest {
            alloc: a.snapshot(),
        })
        .expect("serialize");
        assert_eq!(restore(&oldest).expect("restores").revision(), a.revision());
    }
}
