//! The Raft log and vote, persisted in one redb database (`raft.redb` under the data directory).
//!
//! Every append, vote and truncation is a redb write transaction committed with immediate
//! durability before openraft is told it is done, so a `kill -9` never loses an entry a
//! follower acknowledged or a vote it cast. The blocking commit runs on tokio's blocking pool.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

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

#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
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
        let db = Database::create(path).map_err(|e| OpenError::Open {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        let store = LogStore { db: Arc::new(db) };
        // Read everything once: a log whose entries do not decode must stop the start, not
        // surface later as a panic in the middle of replication.
        store.verify().map_err(|what| OpenError::Corrupt {
            path: path.to_path_buf(),
            what,
        })?;
        Ok(store)
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

    /// Runs a write transaction on the blocking pool and waits for its durable commit.
    async fn write<F>(
        &self,
        verb_subject: ErrorSubject<NodeId>,
        f: F,
    ) -> Result<(), StorageError<NodeId>>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    {
        let db = self.db.clone();
        let subject = verb_subject.clone();
        let res = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            f(&txn)?;
            txn.commit()?;
            Ok(())
        })
        .await;
        match res {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err(subject, ErrorVerb::Write, e)),
            Err(join) => Err(io_err(subject, ErrorVerb::Write, join)),
        }
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
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
        let r = self.db.begin_read().map_err(|e| err(e.into()))?;
        let t = match r.open_table(LOGS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(err(e.into())),
        };
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
        let mut out = Vec::new();
        for item in t.range::<u64>((start, end)).map_err(|e| err(e.into()))? {
            let (_, v) = item.map_err(|e| err(e.into()))?;
            out.push(
                decode(v.value()).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?,
            );
        }
        Ok(out)
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
            rows.push((e.log_id.index, bytes));
        }
        let res = self
            .write(ErrorSubject::Logs, move |txn| {
                let mut t = txn.open_table(LOGS)?;
                for (i, b) in &rows {
                    t.insert(*i, b.as_slice())?;
                }
                Ok(())
            })
            .await;
        match &res {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        res
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
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
