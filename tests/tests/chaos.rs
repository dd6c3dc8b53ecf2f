//! A short, fixed set of chaos runs: every checker over each history, and a failure prints the
//! seed and the history around the first violation. Longer campaigns: `twill-chaos`.

use std::time::Duration;

use twill_tests::chaos::{self, Campaign, Mode, Report};

fn expect_clean(r: &Report, min_operations: usize, rerun: &str) {
    r.print();
    let injected: usize = r.faults.values().sum();
    // A run that injected nothing or recorded next to nothing proves nothing.
    assert!(
        injected >= 5,
        "only {injected} faults injected: {}",
        r.line()
    );
    assert!(
        r.operations >= min_operations,
        "only {} operations: {}",
        r.operations,
        r.line()
    );
    // A disk fault kind that was injected but never reached a disk tested nothing.
    for kind in chaos::DISK_KINDS {
        if r.faults.get(kind).copied().unwrap_or(0) > 0 {
            assert!(
                r.disk.hit.get(kind).copied().unwrap_or(0) > 0,
                "seed {}: {kind} injected but it never hit a disk: {}",
                r.seed,
                r.line()
            );
        }
    }
    assert!(
        r.violations.is_empty(),
        "seed {}: {} violations (rerun: {rerun})",
        r.seed,
        r.violations.len()
    );
}

async fn campaign(seed: u64, mode: Mode, members: usize) {
    let c = Campaign::new(seed, mode, members, Duration::from_secs(15));
    let r = chaos::run(&c).await.expect("chaos run");
    let rerun =
        format!("twill-chaos --mode {mode} --members {members} --first-seed {seed} --seeds 1");
    expect_clean(&r, 200, &rerun);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_in_process_three_members() {
    campaign(1, Mode::InProcess, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_in_process_five_members() {
    campaign(2, Mode::InProcess, 5).await;
}

/// Only disk faults, on three members: each kind is dealt once before any is dealt twice, so
/// all four are injected; each must really reach a disk, a failing disk must stop its member
/// (which is restarted on a healthy disk from its data directory), and nothing acknowledged may
/// be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_in_process_disk_faults() {
    let (seed, members) = (5, 3);
    let c = Campaign::new(seed, Mode::InProcess, members, Duration::from_secs(20))
        .only(&chaos::DISK_KINDS);
    let r = chaos::run(&c).await.expect("chaos run");
    let rerun = format!(
        "twill-chaos --mode in-process --members {members} --first-seed {seed} --seeds 1 --kinds {}",
        chaos::DISK_KINDS.join(",")
    );
    expect_clean(&r, 200, &rerun);
    for kind in chaos::DISK_KINDS {
        assert!(
            r.faults.get(kind).copied().unwrap_or(0) > 0,
            "{kind} was never injected: {}",
            r.line()
        );
    }
    let c = r.disk.counts;
    assert!(
        c.failed_syncs > 0 && c.failed_writes > 0 && c.delayed_syncs > 0 && c.torn_writes > 0,
        "every kind of disk fault happened on a disk: {c:?}"
    );
    // The failing kinds that hit stopped their member each time (checked per fault as a
    // violation); here, that it happened at all.
    for kind in [chaos::DISK_FSYNC, chaos::DISK_FULL, chaos::DISK_TORN] {
        assert!(
            r.disk.stopped.get(kind).copied().unwrap_or(0) > 0,
            "{kind} never stopped a member: {}",
            r.line()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_processes_three_members() {
    campaign(3, Mode::Processes, 3).await;
}

/// Real agents in network namespaces: controller and agents killed, paused and restarted.
#[test]
fn chaos_real_agents_in_namespaces() {
    if !twill_tests::netns::root_or_skip("chaos_real_agents_in_namespaces") {
        return;
    }
    let bin = twill_tests::twill_binary().expect("twill binary");
    let r = chaos::agents::run(4, 3, Duration::from_secs(20), &bin).expect("chaos run");
    expect_clean(&r, 50, "twill-chaos --mode agents --first-seed 4 --seeds 1");
}
