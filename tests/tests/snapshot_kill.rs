//! A `twill controller` SIGKILLed in the middle of writing its snapshot. Three members take a
//! snapshot every few log entries while clients keep acquiring leases; the test watches a
//! member's data directory (inotify) for the snapshot's temporary file being opened or first
//! written and kills the member right then, five times, leader and followers in turn. That
//! the kill landed before the rename is shown by the temporary file still being there once the
//! member is dead. Each time the member must start again from its data directory (the previous
//! snapshot and the log, never the half-written file), catch up, and list every lease
//! acknowledged before the kill; at the end every member lists every acknowledged lease.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use twill_client::{Client, ClientOptions};
use twill_tests::procs::{KillAt, SnapshotFiles, TwillProcs};

/// Kills that must land mid-write, and how many attempts they may take (a kill can land
/// just after the rename when the machine is busy; such a one is reported and retried).
const MID_WRITE_KILLS: usize = 5;
const ATTEMPTS: usize = 15;

fn client(urls: Vec<String>) -> Client {
    let opts = ClientOptions {
        retry_for: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(5),
        tls: Some(twill_tests::admin_tls()),
        ..Default::default()
    };
    Client::with_options(urls, opts).expect("loopback URLs are valid")
}

fn acked_now(acked: &twill_tests::Acked) -> std::collections::BTreeMap<String, String> {
    acked.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Fails naming every member that lacks an acknowledged lease of `acked`.
async fn assert_all_listed(
    procs: &TwillProcs,
    members: &[usize],
    acked: &std::collections::BTreeMap<String, String>,
    when: &str,
) {
    let urls = procs.urls();
    for &i in members {
        let lost = twill_tests::missing_acked(&client(vec![urls[i].clone()]), acked)
            .await
            .expect("list leases");
        assert!(
            lost.is_empty(),
            "{when}: member {} lacks {} of {} acknowledged leases: {:?}\n{}",
            i + 1,
            lost.len(),
            acked.len(),
            lost.iter().take(5).collect::<Vec<_>>(),
            procs.log(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_mid_snapshot_restarts_from_its_data_dir_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let bin = twill_tests::twill_binary().expect("twill");
    let mut procs = TwillProcs::start_with(
        &bin,
        3,
        dir.path(),
        // A snapshot every 20 entries: with four writers, each member writes one several
        // times a second, and every lease makes the next one larger.
        &[
            "--network",
            "10.0.0.0/8",
            "--subnet-len",
            "24",
            "--snapshot-every",
            "20",
            // One thread each, as members sharing a machine are run (and `scripts/bench` runs
            // them): that is a scheduler of its own (see `twill controller --help`).
            "--threads",
            "1",
        ],
        true,
    )
    .await
    .expect("three members");
    let urls = procs.urls();

    let acked = twill_tests::Acked::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = twill_tests::spawn_acquirers(
        (0..4).map(|_| client(urls.clone())).collect(),
        acked.clone(),
        stop.clone(),
        "a write is acknowledged while members are killed mid-snapshot",
    );

    // Some state first, so a snapshot is more than a header.
    while acked_now(&acked).len() < 500 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // How long a whole write takes (open of the temporary file to its rename), on each member.
    let mut took = Vec::new();
    for i in 0..3 {
        for _ in 0..3 {
            let t = procs
                .time_snapshot_write(i, Duration::from_secs(30))
                .await
                .expect("inotify");
            took.push(t.expect("a snapshot written within 30 s"));
        }
    }
    took.sort();
    eprintln!(
        "a snapshot write takes {:?} .. {:?} (median {:?}) with {} leases",
        took[0],
        took[took.len() - 1],
        took[took.len() / 2],
        acked_now(&acked).len()
    );

    let mut landed = Vec::new();
    let mut missed = 0;
    for attempt in 0..ATTEMPTS {
        if landed.len() == MID_WRITE_KILLS {
            break;
        }
        let leader = procs
            .wait_leader(Duration::from_secs(30))
            .await
            .expect("a leader");
        // The leader every other time, else a follower (each of the two in turn).
        let target = if attempt % 2 == 0 {
            leader
        } else {
            (leader + 1 + (attempt / 2) % 2) % 3
        };
        let at = if attempt % 3 == 1 {
            KillAt::FirstBytes
        } else {
            KillAt::Open
        };
        let before = acked_now(&acked);
        let (killed, files) = procs
            .kill_mid_snapshot(target, Duration::from_secs(30), at)
            .await
            .expect("inotify");
        assert!(
            killed,
            "member {} began no snapshot write in 30 s",
            target + 1
        );
        let role = if target == leader {
            "leader"
        } else {
            "follower"
        };
        eprintln!(
            "kill {}: member {} ({role}) at {at:?}: {files}",
            attempt + 1,
            target + 1
        );
        if files.mid_write() {
            landed.push((target + 1, role, at, files));
        } else {
            missed += 1;
        }

        procs.restart(target).expect("restart");
        if let Err(e) = procs.wait_caught_up(Duration::from_secs(60)).await {
            panic!(
                "member {} did not come back after a kill mid-snapshot: {e:#}\n{}",
                target + 1,
                procs.log(target)
            );
        }
        assert!(
            procs.exited(target).is_none(),
            "member {} exited after its restart:\n{}",
            target + 1,
            procs.log(target)
        );
        assert_all_listed(&procs, &[target], &before, "after its restart").await;
    }
    assert_eq!(
        landed.len(),
        MID_WRITE_KILLS,
        "only {} of {ATTEMPTS} kills landed in the middle of a snapshot write",
        landed.len()
    );
    assert!(
        landed.iter().any(|k| k.1 == "leader") && landed.iter().any(|k| k.1 == "follower"),
        "the kills mid-write did not hit both a leader and a follower: {landed:?}"
    );

    // Each member writes whole snapshots again over the temporary files its kills left.
    for i in 0..3 {
        let t = procs
            .time_snapshot_write(i, Duration::from_secs(30))
            .await
            .expect("inotify");
        assert!(t.is_some(), "member {} wrote no snapshot in 30 s", i + 1);
        let files = SnapshotFiles::of(&procs.data_dir(i));
        assert!(files.snapshot_len.is_some(), "member {}: {files}", i + 1);
    }

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    procs
        .wait_caught_up(Duration::from_secs(60))
        .await
        .expect("all caught up");
    let acked = acked_now(&acked);
    assert_all_listed(&procs, &[0, 1, 2], &acked, "at the end").await;
    for i in 0..3 {
        let log = procs.log(i);
        assert!(
            procs.exited(i).is_none()
                && !log.contains("panicked")
                && !log.contains("snapshot write failed")
                && !log.contains("Raft stopped"),
            "member {} stopped or failed:\n{log}",
            i + 1
        );
    }
    eprintln!(
        "{} kills landed mid-write ({missed} just missed); {} acknowledged leases on every member",
        landed.len(),
        acked.len()
    );
}
