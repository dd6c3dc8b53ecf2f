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
