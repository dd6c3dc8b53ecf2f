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
}

pub struct Shared {
    data: RwLock<SmData>,
    /// The applied revision; watchers wait on it.
    revision: watch::Sender<u64>,
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
}

pub struct StateMachine {
    shared: Arc<Shared>,
    dir: PathBuf,
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
        };
        if let Some(stored) = read_snapshot_file(&path)? {
            data.alloc = restore(&stored.data).map_err(|what| SnapshotFileError::Corrupt {
                path: path.clone(),
                what,
            })?;
            data.last_applied = stored.meta.last_log_id;
            data.membership = stored.meta.last_membership.clone();
            data.history.reset(data.alloc.revision());
        }
        let rev = data.alloc.revision();
        Ok(StateMachine {
            shared: Arc::new(Shared {
                data: RwLock::new(data),
                revision: watch::channel(rev).0,
            }),
            dir: dir.to_path_buf(),
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
    let body = bincode::serialize(stored).map_err(std::io::Error::other)?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + 12 + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&body);
    {
        // The snapshot holds BGP keys (and the cluster's CA key): readable by this user only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)?;
        match faults {
            None => f.write_all(&bytes)?,
            Some(d) => d.write_all(&mut f, &bytes)?,
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
    seq: u64,
    disk_faults: Option<DiskFaults>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (meta, data) = {
            let d = self.shared.read();
            let data = bincode::serialize(&Payload {
                alloc: d.alloc.snapshot(),
                trust: d.alloc.trust().clone(),
                config_revision: d.alloc.config_revision(),
                instances: d.alloc.instances().clone(),
            })
            .map_err(|e| snap_err(ErrorVerb::Write, e))?;
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
        let stored = tokio::task::spawn_blocking(move || {
            write_snapshot_file(&dir, &stored, faults.as_ref()).map(|_| stored)
        })
        .await
        .map_err(|e| snap_err(ErrorVerb::Write, e))?
        .map_err(|e| {
            // openraft stops the member on this error; say why first, naming the file.
            tracing::error!(error = %e, "snapshot write failed");
            snap_err(ErrorVerb::Write, e)
        })?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = stored.data.len(), "snapshot written");
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
                                d.history.push(ev);
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
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.built += 1;
        SnapshotBuilder {
            shared: self.shared.clone(),
            dir: self.dir.clone(),
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
        tokio::task::spawn_blocking(move || write_snapshot_file(&dir, &stored, faults.as_ref()))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))?
            .map_err(|e| {
                tracing::error!(error = %e, "installing a snapshot failed");
                snap_err(ErrorVerb::Write, e)
            })?;
        let rev = {
            let mut d = self.shared.write();
            d.history.reset(alloc.revision());
            d.alloc = alloc;
            d.last_applied = meta.last_log_id;
            d.membership = meta.last_membership.clone();
            d.alloc.revision()
        };
        tracing::info!(snapshot = %meta.snapshot_id, revision = rev, "snapshot installed");
        self.shared.revision.send_replace(rev);
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

    #[test]
    fn the_configuration_revision_survives_a_snapshot_and_older_shapes_still_restore() {
        let a = configured();
        assert_eq!(a.config_revision(), 1);
        let now = bincode::serialize(&Payload {
            alloc: a.snapshot(),
            trust: a.trust().clone(),
            config_revision: a.config_revision(),
            instances: a.instances().clone(),
        })
        .expect("serialize");
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
