//! A short, fixed set of chaos runs: every checker over each history, and a failure prints the
//! seed and the history around the first violation. Longer campaigns: `twill-chaos`.

use std::time::Duration;

use twill_tests::chaos::{self, Campaign, Mode};

async fn campaign(seed: u64, mode: Mode, members: usize) {
    let c = Campaign::new(seed, mode, members, Duration::from_secs(15));
    let r = chaos::run(&c).await.expect("chaos run");
    println!("{}", r.line());
    let injected: usize = r.faults.values().sum();
    // A run that injected nothing or recorded next to nothing proves nothing.
    assert!(
        injected >= 5,
        "only {injected} faults injected: {}",
        r.line()
    );
    assert!(
        r.operations >= 200,
        "only {} operations: {}",
        r.operations,
        r.line()
    );
    if !r.violations.is_empty() {
        for v in &r.violations {
            println!("{v}");
        }
        println!("--- history around the first violation ---\n{}", r.excerpt);
        panic!(
            "seed {seed}: {} violations (rerun: twill-chaos --mode {mode} --members {members} --first-seed {seed} --seeds 1)",
            r.violations.len()
        );
    }
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
