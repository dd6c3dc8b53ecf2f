#![allow(clippy::result_large_err)]
//! Disk faults under the Raft log and the snapshot file, one store at a time: each fault really
//! happens, nothing that could not be persisted is acknowledged, a torn tail is cut back to the
//! last whole commit, damage inside the log is refused, and a failed snapshot keeps the last one.

use std::path::Path;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder};
use rand::{Rng, SeedableRng};
use twill_controller::disk::{DiskFaults, WriteFault};
use twill_controller::log_store::LogStore;
use twill_controller::state_machine::{StateMachine, SNAPSHOT_FILE};
use twill_controller::TypeConfig;

fn entry(i: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
        payload: EntryPayload::Blank,
    }
}

async fn append(log: &mut LogStore, i: u64) -> Result<(), String> {
    log.blocking_append([entry(i)])
        .await
        .map_err(|e| e.to_string())
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    log.try_get_log_entries(0..)
        .await
        .expect("read the log")
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

/// Drops the store and waits until its file is closed, so it can be opened again.
async fn close(log: LogStore) {
    let closed = log.closed();
    drop(log);
    tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the log file closes once the last handle is dropped");
}

#[tokio::test]
async fn a_failed_fsync_is_never_acknowledged_and_nothing_is_written_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raft.redb");
    let faults = DiskFaults::new();
    let mut log = LogStore::open_with(&path, Some(faults.clone())).expect("open");
    for i in 1..=5 {
        append(&mut log, i).await.expect("healthy disk");
    }
    faults.fail_fsync(true);
    let err = append(&mut log, 6)
        .await
        .expect_err("fsync fails: not flushed");
    assert!(faults.counts().failed_syncs >= 1, "{:?}", faults.counts());
    assert!(
        err.contains("os error 5"),
        "the OS error is passed on: {err}"
    );
    assert!(
        err.contains(&path.display().to_string()),
        "names the file: {err}"
    );

    // The disk "comes back": a retry must still fail, the page cache is not to be trusted.
    faults.fail_fsync(false);
    let syncs_before = faults.counts();
    let err = append(&mut log, 6)
        .await
        .expect_err("no write after a failed fsync");
    assert!(err.contains("an earlier write failed"), "{err}");
    let mut vote_log = log.clone();
    let vote = openraft::Vote::new(2, 1);
    assert!(vote_log.save_vote(&vote).await.is_err(), "nor a vote");
    assert_eq!(faults.counts(), syncs_before, "nothing reached the disk");
    drop(vote_log);

    close(log).await;
    let mut log = LogStore::open(&path).expect("reopens without faults");
    let got = indexes(&mut log).await;
    assert_eq!(
        &got[..5],
        &[1, 2, 3, 4, 5],
        "every acknowledged entry is there"
    );
    assert!(got.len() <= 6, "only what was submitted: {got:?}");
    assert_eq!(log.read_vote().await.expect("read vote"), None);
}

/// Regression: after a failed write the writer thread used to exit at once and report the file
/// closed while handles still held it open, so a restart raced the old database's lock.
#[tokio::test]
async fn the_log_is_reported_closed_only_when_its_file_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raft.redb");
    let faults = DiskFaults::new();
    let mut log = LogStore::open_with(&path, Some(faults.clone())).expect("open");
    append(&mut log, 1).await.expect("healthy disk");
    faults.fail_writes(Some(WriteFault::Eio));
    append(&mut log, 2).await.expect_err("write fails");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), log.closed())
            .await
            .is_err(),
        "reported closed while a handle is alive"
    );
    assert!(
        LogStore::open(&path).is_err(),
        "the file is still open and locked"
    );
    close(log).await;
    LogStore::open(&path).expect("reopens once closed");
}

#[tokio::test]
async fn eio_and_enospc_on_log_writes_reach_openraft_as_the_os_error() {
    for (fault, text) in [
        (WriteFault::Eio, "os error 5"),
        (WriteFault::Enospc, "os error 28"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        let faults = DiskFaults::new();
        let mut log = LogStore::open_with(&path, Some(faults.clone())).expect("open");
        append(&mut log, 1).await.expect("healthy disk");
        faults.fail_writes(Some(fault));
        let err = append(&mut log, 2).await.expect_err("write fails");
        assert!(err.contains(text), "{fault:?}: {err}");
        assert!(faults.counts().failed_writes >= 1, "{:?}", faults.counts());
        close(log).await;
        let mut log = LogStore::open(&path).expect("reopens without faults");
        assert_eq!(indexes(&mut log).await.first(), Some(&1));
    }
}

/// A commit torn at a random byte, then a "crash" (every later write refused): the file reopens
/// without faults, every acknowledged entry is there, and past them at most the torn commit's
/// entry, whole. Never a partial entry: the open reads and decodes every entry.
#[tokio::test]
async fn a_torn_commit_reopens_at_the_last_whole_commit() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let (mut kept, mut dropped) = (0, 0);
    for round in 0..40 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("raft.redb");
        let faults = DiskFaults::new();
        let mut log = LogStore::open_with(&path, Some(faults.clone())).expect("open");
        let before = rng.random_range(1..20u64);
        for i in 1..=before {
            append(&mut log, i).await.expect("healthy disk");
        }
        let k = rng.random_range(0..24_576u64);
        faults.tear_next_write_at(k);
        let mut acked = before;
        // A commit smaller than k is whole and acknowledged; the tear hits a later one.
        while append(&mut log, acked + 1).await.is_ok() {
            acked += 1;
        }
        assert_eq!(faults.counts().torn_writes, 1, "round {round}: torn at {k}");
        close(log).await;
        let mut log = LogStore::open(&path)
            .unwrap_or_else(|e| panic!("round {round}: torn at byte {k}, reopen failed: {e}"));
        let got = indexes(&mut log).await;
        let want: Vec<u64> = (1..=acked).collect();
        assert_eq!(&got[..acked as usize], &want[..], "round {round}: k={k}");
        match got.len() as u64 - acked {
            0 => dropped += 1,
            1 => kept += 1,
            n => panic!("round {round}: {n} entries past the acknowledged ones: {got:?}"),
        }
        // The reopened log takes writes again after the last entry it kept.
        let next = got.len() as u64 + 1;
        append(&mut log, next).await.expect("writes after repair");
    }
    eprintln!("torn commits: {dropped} cut back, {kept} found whole (unacknowledged)");
    assert!(dropped > 0, "no round actually cut a torn commit back");
}

/// Damage inside the committed log is refused at open, naming the file, and the damage is left
/// in place for a look (redb itself only flips its header's recovery flag).
#[tokio::test]
async fn damage_inside_the_committed_log_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raft.redb");
    let mut log = LogStore::open(&path).expect("open");
    for i in 1..=300 {
        append(&mut log, i).await.expect("healthy disk");
    }
    close(log).await;
    let mut bytes = std::fs::read(&path).expect("read");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).expect("write");
    let err = match LogStore::open(&path) {
        Ok(_) => panic!("a log damaged in the middle was opened"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&path.display().to_string()), "{err}");
    let after = std::fs::read(&path).expect("read");
    assert_eq!(
        &after[mid..mid + 64],
        &bytes[mid..mid + 64],
        "the damage is kept for a look"
    );
}

fn snapshot_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join(SNAPSHOT_FILE)).expect("snapshot exists")
}

/// ENOSPC or a torn write while writing a snapshot: the build fails naming the file, the
/// previous snapshot is intact, no temporary file is left, and the member reopens from it.
#[tokio::test]
async fn a_failed_snapshot_write_keeps_the_previous_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = DiskFaults::new();
    let mut sm = StateMachine::open(dir.path(), 100)
        .expect("open")
        .with_disk_faults(Some(faults.clone()));
    sm.apply([entry(1), entry(2)]).await.expect("apply");
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("healthy disk");
    let good = snapshot_bytes(dir.path());
    sm.apply([entry(3)]).await.expect("apply");

    faults.fail_writes(Some(WriteFault::Enospc));
    let err = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect_err("no space")
        .to_string();
    assert!(err.contains("os error 28"), "{err}");
    assert!(err.contains(SNAPSHOT_FILE), "names the file: {err}");
    assert_eq!(faults.counts().failed_writes, 1);
    assert_eq!(snapshot_bytes(dir.path()), good, "previous snapshot intact");

    faults.clear();
    faults.tear_next_write_at(100);
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect_err("torn write");
    assert_eq!(faults.counts().torn_writes, 1);
    assert_eq!(snapshot_bytes(dir.path()), good, "previous snapshot intact");
    let tmp = dir.path().join(format!("{SNAPSHOT_FILE}.tmp"));
    assert!(!tmp.exists(), "temporary file removed");

    faults.clear();
    drop(sm);
    let mut sm = StateMachine::open(dir.path(), 100).expect("reopens from the previous snapshot");
    let (applied, _) = sm.applied_state().await.expect("applied");
    assert_eq!(applied.map(|l| l.index), Some(2));
}
