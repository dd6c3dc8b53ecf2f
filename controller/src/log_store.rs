//! The Raft log and vote, persisted in one redb database (`raft.redb` under the data directory).
//!
//! All writes go through one writer thread in order. Appends are group-committed: openraft's
//! core appends one client write at a time, so the writer takes every job queued while the
//! previous commit was syncing and commits them in one redb transaction with immediate
//! durability. openraft is told an entry is flushed only after that commit, so a `kill -9` never
//! loses an entry a follower acknowledged or a vote it cast. Entries waiting for the writer are
//! kept in memory and served to readers, as openraft requires of a submitted append.

// openraft's StorageError is large and its size is not ours to choose.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::backends::FileBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::disk::{DiskFaults, FaultyBackend};
use crate::{NodeId, TypeConfig};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";

/// Why the log could not be opened; names the file so an operator knows what to look at.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "cannot open Raft log {path}: {source} (refusing to start with an empty log in its place)"
    )]
    Open { path: PathBuf, source: redb::Error },
    #[error("Raft log {path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
}

/// redb's page cache for the log. Its default, 1 GiB, is sized for databases read at random;
/// the log is written at its end, read back near its end by replication, and purged behind each
/// snapshot, so its working set is the entries since the last snapshot (10,000 by default, a
/// few MB). Pages beyond the bound are read from the file, which the kernel caches anyway.
const LOG_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Most jobs one commit takes, so one huge queue cannot delay every callback behind it.
const MAX_GROUP: usize = 4096;

type WriteFn = Box<dyn FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send>;

enum Job {
    Append {
        rows: Vec<(u64, Arc<Vec<u8>>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Write {
        f: WriteFn,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// Entries appended but not yet committed by the writer, by index.
type Pending = Arc<Mutex<BTreeMap<u64, Arc<Vec<u8>>>>>;

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    pending: Pending,
    jobs: mpsc::Sender<Job>,
    /// Turns true once the writer thread has exited and closed the database file.
    closed: tokio::sync::watch::Receiver<bool>,
}

/// The writer thread: commits queued jobs in groups, then answers them.
///
/// After one failed commit it commits nothing more: the file's state is unknown (after a failed
/// fsync the page cache cannot be trusted either), so every later job is answered with that
/// first error. It keeps answering until every handle is gone, so [`LogStore::closed`] still
/// means the file is closed.
fn writer(db: Arc<Database>, path: PathBuf, pending: Pending, jobs: mpsc::Receiver<Job>) {
    let mut failed: Option<String> = None;
    while let Ok(first) = jobs.recv() {
        if let Some(e) = &failed {
            answer(first, e);
            continue;
        }
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            for job in &mut group {
                match job {
                    Job::Append { rows, .. } => {
                        let mut t = txn.open_table(LOGS)?;
                        for (i, b) in rows.iter() {
                            t.insert(*i, b.as_slice())?;
                        }
                    }
                    Job::Write { f, .. } => {
                        let f = std::mem::replace(f, Box::new(|_| Ok(())));
                        f(&txn)?;
                    }
                }
            }
            txn.commit()?;
            Ok(())
        })();
        // The path goes into the error openraft reports, so its fatal line names the file.
        let err = result
            .as_ref()
            .err()
            .map(|e| format!("Raft log {}: {e}", path.display()));
        {
            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
            for job in &group {
                if let Job::Append { rows, .. } = job {
                    for (i, b) in rows {
                        // Only forget what this job put there: a truncate may have replaced it.
                        if p.get(i).is_some_and(|cur| Arc::ptr_eq(cur, b)) && err.is_none() {
                            p.remove(i);
                        }
                    }
                }
            }
        }
        for job in group {
            match job {
                Job::Append { callback, .. } => callback.log_io_completed(match &err {
                    None => Ok(()),
                    Some(e) => Err(std::io::Error::other(e.clone())),
                }),
                Job::Write { done, .. } => {
                    let _ = done.send(match &err {
                        None => Ok(()),
                        Some(e) => Err(e.clone()),
                    });
                }
            }
        }
        if let Some(e) = err {
            // Later writes would land after a hole: stop, openraft then shuts the member down.
            tracing::error!(
                path = %path.display(),
                error = %e,
                "Raft log write failed; nothing more is written or acknowledged until restart"
            );
            failed = Some(e);
        }
    }
}

/// Fails a job the poisoned writer will not commit.
fn answer(job: Job, e: &str) {
    match job {
        Job::Append { callback, .. } => callback.log_io_completed(Err(std::io::Error::other(
            format!("{e} (an earlier write failed; not written)"),
        ))),
        Job::Write { done, .. } => {
            let _ = done.send(Err(format!("{e} (an earlier write failed; not written)")));
        }
    }
}

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + Send + Sync + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, &e).into()
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

impl LogStore {
    /// Opens (or creates) the log at `path`. A damaged file is an error, never replaced.
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        Self::open_with(path, None)
    }

    /// As [`LogStore::open`]; with `faults`, every write and fsync of the file obeys them
    /// (tests only). A file left by a crash is repaired by redb here, back to its last whole
    /// commit.
    pub fn open_with(path: &Path, faults: Option<DiskFaults>) -> Result<Self, OpenError> {
        let open_err = |e: redb::Error| OpenError::Open {
            path: path.to_path_buf(),
            source: e,
        };
        let db = match faults {
            None => Database::builder()
                .set_cache_size(LOG_CACHE_BYTES)
                .create(path)
                .map_err(|e| open_err(e.into()))?,
            Some(faults) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(path)
                    .map_err(|e| open_err(redb::Error::Io(e)))?;
                let backend = FileBackend::new(file).map_err(|e| open_err(e.into()))?;
                Database::builder()
                    .set_cache_size(LOG_CACHE_BYTES)
                    .create_with_backend(FaultyBackend::new(backend, faults))
                    .map_err(|e| open_err(e.into()))?
            }
        };
        let db = Arc::new(db);
        let pending: Pending = Arc::default();
        let (tx, rx) = mpsc::channel();
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        {
            let (db, pending, p) = (db.clone(), pending.clone(), path.to_path_buf());
            std::thread::Builder::new()
                .name("raft-log-writer".into())
                .spawn(move || {
                    writer(db, p, pending, rx);
                    closed_tx.send_replace(true);
                })
                .map_err(|e| OpenError::Open {
                    path: path.to_path_buf(),
                    source: redb::Error::Io(e),
                })?;
        }
        let store = LogStore {
            db,
            pending,
            jobs: tx,
            closed,
        };
        // Read everything once: a log whose entries do not decode must stop the start, not
        // surface later as a panic in the middle of replication.
        store.verify().map_err(|what| OpenError::Corrupt {
            path: path.to_path_buf(),
            what,
        })?;
        Ok(store)
    }

    /// Resolves once every handle is dropped and the file is closed, so it can be opened again.
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.clone();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    fn verify(&self) -> Result<(), String> {
        let r = self.db.begin_read().map_err(|e| e.to_string())?;
        if let Ok(t) = r.open_table(LOGS) {
            let mut prev: Option<u64> = None;
            for item in t.iter().map_err(|e| e.to_string())? {
                let (k, v) = item.map_err(|e| e.to_string())?;
                let e: Entry<TypeConfig> =
                    decode(v.value()).map_err(|e| format!("entry {}: {e}", k.value()))?;
                if e.log_id.index != k.value() {
                    return Err(format!(
                        "entry stored at {} says index {}",
                        k.value(),
                        e.log_id.index
                    ));
                }
                if let Some(p) = prev {
                    if k.value() != p + 1 {
                        return Err(format!("gap in the log between {p} and {}", k.value()));
                    }
                }
                prev = Some(k.value());
            }
        }
        if let Ok(t) = r.open_table(META) {
            if let Some(v) = t.get(KEY_VOTE).map_err(|e| e.to_string())? {
                decode::<Vote<NodeId>>(v.value()).map_err(|e| format!("vote: {e}"))?;
            }
            if let Some(v) = t.get(KEY_PURGED).map_err(|e| e.to_string())? {
                decode::<LogId<NodeId>>(v.value()).map_err(|e| format!("purge marker: {e}"))?;
            }
        }
        Ok(())
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let subject = || ErrorSubject::Store;
        let r = self
            .db
            .begin_read()
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        let t = match r.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(io_err(subject(), ErrorVerb::Read, e)),
        };
        match t
            .get(key)
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))?
        {
            None => Ok(None),
            Some(v) => decode(v.value())
                .map(Some)
                .map_err(|e| io_err(subject(), ErrorVerb::Read, e)),
        }
    }

    /// Queues a write transaction behind every earlier append and waits for its commit.
    async fn write<F>(
        &self,
        subject: ErrorSubject<NodeId>,
        f: F,
    ) -> Result<(), StorageError<NodeId>>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let (done, rx) = tokio::sync::oneshot::channel();
        let stopped = || {
            io_err(
                subject.clone(),
                ErrorVerb::Write,
                std::io::Error::other("the Raft log writer stopped"),
            )
        };
        self.jobs
            .send(Job::Write {
                f: Box::new(f),
                done,
            })
            .map_err(|_| stopped())?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err(
                subject.clone(),
                ErrorVerb::Write,
                std::io::Error::other(e),
            )),
            Err(_) => Err(stopped()),
        }
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let newest_pending = {
            let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.last_key_value().map(|(_, b)| b.clone())
        };
        if let Some(b) = newest_pending {
            let e: Entry<TypeConfig> =
                decode(&b).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            return Ok(Some(*e.get_log_id()));
        }
        let err = |e: redb::Error| io_err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let r = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = match r.open_table(LOGS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(err(e.into())),
        };
        let last = t.last().map_err(|e| err(e.into()))?;
        let Some((_, v)) = last else { return Ok(None) };
        let e: Entry<TypeConfig> =
            decode(v.value()).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(Some(*e.get_log_id()))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let err = |e: redb::Error| io_err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let start = match range.start_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        // Pending first: an entry the writer commits meanwhile is then found in one or both,
        // never in neither.
        let mut rows: BTreeMap<u64, Arc<Vec<u8>>> = {
            let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.range((start, end))
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        };
        let r = self.db.begin_read().map_err(|e| err(e.into()))?;
        match r.open_table(LOGS) {
            Ok(t) => {
                for item in t.range::<u64>((start, end)).map_err(|e| err(e.into()))? {
                    let (k, v) = item.map_err(|e| err(e.into()))?;
                    rows.entry(k.value())
                        .or_insert_with(|| Arc::new(v.value().to_vec()));
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(err(e.into())),
        }
        rows.values()
            .map(|b| decode(b).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e)))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.read_meta(KEY_PURGED)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = bincode::serialize(vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.write(ErrorSubject::Vote, move |txn| {
            txn.open_table(META)?.insert(KEY_VOTE, bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(KEY_VOTE)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for e in entries {
            let bytes = bincode::serialize(&e)
                .map_err(|err| io_err(ErrorSubject::Logs, ErrorVerb::Write, err))?;
            rows.push((e.log_id.index, Arc::new(bytes)));
        }
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (i, b) in &rows {
                p.insert(*i, b.clone());
            }
        }
        self.jobs.send(Job::Append { rows, callback }).map_err(|_| {
            io_err(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                std::io::Error::other("the Raft log writer stopped"),
            )
        })
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.retain(|i, _| *i < log_id.index);
        }
        self.write(ErrorSubject::Logs, move |txn| {
            let mut t = txn.open_table(LOGS)?;
            t.retain_in(log_id.index.., |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = bincode::serialize(&log_id)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))?;
        self.write(ErrorSubject::Logs, move |txn| {
            txn.open_table(META)?.insert(KEY_PURGED, bytes.as_slice())?;
            let mut t = txn.open_table(LOGS)?;
            t.retain_in(..=log_id.index, |_, _| false)?;
            Ok(())
        })
        .await
    }
}
