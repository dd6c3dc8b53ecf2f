//! A real full disk under a `twill controller` process: member 1 of three runs on a small tmpfs
//! while clients write. When the disk fills, it exits non-zero saying why (Raft stopped, no
//! space left on device), the other two go on acknowledging, and once there is room again
//! (the tmpfs made larger) it starts from its data directory, catches up, and every member
//! has every acknowledged lease. Needs root to mount; in CI a missing root fails the test.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use twill_client::{Client, ClientOptions};
use twill_tests::netns::root_or_skip;
use twill_tests::procs::TwillProcs;
use twill_tests::tmpfs::Tmpfs;

fn client(urls: Vec<String>) -> Client {
    let opts = ClientOptions {
        retry_for: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(5),
        tls: Some(twill_tests::admin_tls()),
        ..Default::default()
    };
    Client::with_options(urls, opts).expect("loopback URLs are valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_on_a_full_disk_exits_saying_why_and_rejoins_once_there_is_room() {
    if !root_or_skip("a_member_on_a_full_disk_exits_saying_why_and_rejoins_once_there_is_room") {
        return;
    }
    let dir = tempfile::tempdir().expect("dir");
    let disk = Tmpfs::mount(dir.path().join("m1"), "384k").expect("tmpfs for member 1");
    let bin = twill_tests::twill_binary().expect("twill");
    let mut procs = TwillProcs::start_with(
        &bin,
        3,
        dir.path(),
        &["--network", "10.0.0.0/8", "--subnet-len", "24"],
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
        "a write is acknowledged while one member's disk is full",
    );
    let count = || acked.lock().unwrap_or_else(|p| p.into_inner()).len();

    // The disk fills; member 1 must stop, not limp on.
    let since = Instant::now();
    let status = loop {
        if let Some(s) = procs.exited(0) {
            break s;
        }
        assert!(
            since.elapsed() < Duration::from_secs(240),
            "member 1 still runs on a full disk after {} acknowledged writes:\n{}",
            count(),
            procs.log(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = procs.log(0);
    eprintln!(
        "member 1 exited ({status}) after {:?}, {} writes acknowledged",
        since.elapsed(),
        count()
    );
    assert!(!status.success(), "exit status {status}");
    eprintln!(
        "its last words: {}",
        log.lines()
            .rev()
            .find(|l| l.contains("Raft stopped"))
            .unwrap_or_default()
    );
    assert!(
        log.contains("Raft stopped") && log.contains("os error 28"),
        "member 1 does not say why it stopped:\n{log}"
    );

    // The other two keep a quorum.
    let (down, since) = (count(), Instant::now());
    while count() < down + 50 {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "only {} writes acknowledged in 30 s with member 1 down",
            count() - down
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }

    // Room again: it starts from what it had on disk and catches up.
    disk.resize("64m").expect("enlarge the tmpfs");
    procs.restart(0).expect("member 1 again");
    procs
        .wait_caught_up(Duration::from_secs(60))
        .await
        .expect("all caught up");
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (i, url) in urls.iter().enumerate() {
        let lost = twill_tests::missing_acked(&client(vec![url.clone()]), &acked)
            .await
            .expect("list");
        assert!(
            lost.is_empty(),
            "member {} lacks {} acknowledged leases: {:?}",
            i + 1,
            lost.len(),
            lost.iter().take(5).collect::<Vec<_>>()
        );
    }
    assert!(
        procs.exited(0).is_none(),
        "member 1 stopped again:\n{}",
        procs.log(0)
    );
    eprintln!("{} leases acknowledged, all on every member", acked.len());
    drop(procs);
    drop(disk);
}
