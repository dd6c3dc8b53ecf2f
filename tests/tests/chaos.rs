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

/// A real full disk (root): members on tmpfs of their own, one at a time shrunk to what it
/// uses, among kills. A full disk must have stopped a member at least once (its log naming
/// ENOSPC, its exit non-zero: a miss is a violation), and it rejoined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_processes_real_full_disk() {
    if !twill_tests::netns::root_or_skip("chaos_processes_real_full_disk") {
        return;
    }
    let (seed, members) = (600, 3);
    let kinds = [chaos::DISK_FULL_REAL, chaos::KILL];
    let c = Campaign::new(seed, Mode::Processes, members, Duration::from_secs(30)).only(&kinds);
    let r = chaos::run(&c).await.expect("chaos run");
    let rerun = format!(
        "twill-chaos --mode processes --members {members} --first-seed {seed} --seeds 1 --kinds {}",
        kinds.join(",")
    );
    expect_clean(&r, 200, &rerun);
    assert!(
        r.disk.hit.get(chaos::DISK_FULL_REAL).copied().unwrap_or(0) > 0
            && r.disk
                .stopped
                .get(chaos::DISK_FULL_REAL)
                .copied()
                .unwrap_or(0)
                > 0,
        "no full disk stopped a member: {}",
        r.line()
    );
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

/// Real agents, only the faults whose happening is measured: agents cut off from the controller
/// for less and more than the TTL, the underlay between two nodes cut, the controller's wall
/// clock stepped. Each kind must be injected and must have happened: packets dropped by every
/// cut (the agents' own TCP among them), the controller's time off by the step after each
/// restart (a miss is a violation).
#[test]
fn chaos_real_agents_cut_off_and_clock_stepped() {
    if !twill_tests::netns::root_or_skip("chaos_real_agents_cut_off_and_clock_stepped") {
        return;
    }
    let bin = twill_tests::twill_binary().expect("twill binary");
    let seed = 7;
    let c = Campaign::new(seed, Mode::Processes, 1, Duration::from_secs(40))
        .only(&chaos::agents::CUT_AND_CLOCK_KINDS);
    let (r, seen) = chaos::agents::run_campaign(&c, 3, &bin).expect("chaos run");
    expect_clean(
        &r,
        50,
        "cargo test -p twill-tests --test chaos chaos_real_agents_cut_off_and_clock_stepped",
    );
    for kind in chaos::agents::CUT_AND_CLOCK_KINDS {
        assert!(
            r.faults.get(kind).copied().unwrap_or(0) > 0,
            "{kind} was never injected: {}",
            r.line()
        );
    }
    for kind in [chaos::agents::CUT_CONTROLLER, chaos::agents::CUT_UNDERLAY] {
        assert!(
            seen.dropped.get(kind).copied().unwrap_or(0) > 0,
            "{kind} dropped no packet: {seen:?}"
        );
    }
    assert!(
        seen.missed.is_empty(),
        "faults that did not happen: {seen:?}"
    );
    assert_eq!(
        seen.clock_offsets_ms.len(),
        r.faults[chaos::agents::CLOCK_STEP_CONTROLLER],
        "a clock step without its measure: {seen:?}"
    );
    assert!(
        seen.clock_offsets_ms
            .iter()
            .all(|(set, got)| (set - got).abs() <= 1000),
        "the controller's time did not follow its clock: {seen:?}"
    );
}
