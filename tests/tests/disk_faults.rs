//! Disk faults under a 3-member in-process cluster taking client writes: a member whose fsync
//! fails stops (fatal, saying why) and acknowledges nothing more, the other two keep accepting
//! writes, nothing acknowledged is lost, and the member restarted from its data directory once
//! the disk is back catches up. A slow disk delays acknowledgements and loses nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use twill_controller::disk::DiskFaults;
use twill_controller::NodeId;
use twill_proto::v1 as pb;
use twill_tests::{applied_index, local_leases, Cluster};

fn acquire(node: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        node: node.to_string(),
        public_ip: "192.0.2.10".into(),
        ..Default::default()
    }
}

async fn cluster(faults: &BTreeMap<NodeId, DiskFaults>) -> Cluster {
    let f = faults.clone();
    Cluster::start_with(3, move |o| o.disk_faults = f.get(&o.id).cloned())
        .await
        .expect("cluster starts")
}

fn disks() -> BTreeMap<NodeId, DiskFaults> {
    (1..=3).map(|id| (id, DiskFaults::new())).collect()
}

/// Client writes in the background until stopped: what was acknowledged, node → subnet.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<BTreeMap<String, String>>,
}

impl Writer {
    fn start(cl: &Cluster, prefix: &str) -> Writer {
        let (stop, acked) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (c, s, a, prefix) = (cl.client(), stop.clone(), acked.clone(), prefix.to_string());
        let task = tokio::spawn(async move {
            let mut got = BTreeMap::new();
            let mut i = 0;
            while !s.load(Ordering::SeqCst) {
                let node = format!("{prefix}-{i:04}");
                i += 1;
                // A failed call's outcome is unknown: it is not counted as acknowledged.
                if let Ok(r) = c.acquire(acquire(&node)).await {
                    if let Some(l) = r.lease {
                        got.insert(node, l.subnet);
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            got
        });
        Writer { stop, acked, task }
    }

    async fn wait_acked(&self, n: usize, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        while self.acked.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "{what}: fewer than {n} writes acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("writer task")
    }
}

/// Every acknowledged lease is in member `id`'s applied state, with the subnet acknowledged.
fn assert_has(cl: &Cluster, id: NodeId, acked: &BTreeMap<String, String>, when: &str) {
    let local = local_leases(&cl.members[&id]);
    for (node, subnet) in acked {
        assert_eq!(
            local.get(node),
            Some(subnet),
            "{when}: member {id} lost or changed acknowledged lease {node}"
        );
    }
}

/// Fails `victim`'s fsync under load, checks it stops and the others carry on, then restarts it
/// on a healthy disk and checks it catches up. Returns how long the fatal error took to show.
async fn fsync_fails_then_recovers(
    cl: &mut Cluster,
    disks: &BTreeMap<NodeId, DiskFaults>,
    victim: NodeId,
    tag: &str,
) -> Duration {
    let w = Writer::start(cl, tag);
    w.wait_acked(20, Duration::from_secs(30), "before the fault")
        .await;
    disks[&victim].fail_fsync(true);
    let failed_at = Instant::now();
    let why = tokio::time::timeout(Duration::from_secs(30), cl.members[&victim].member.fatal())
        .await
        .expect("the member whose fsync fails stops");
    let took = failed_at.elapsed();
    assert!(
        disks[&victim].counts().failed_syncs >= 1,
        "the fsync really failed"
    );
    assert!(why.contains("raft.redb"), "names the file: {why}");
    assert!(why.contains("os error 5"), "gives the OS error: {why}");

    // The other two keep accepting writes.
    let before = w.acked.load(Ordering::SeqCst);
    w.wait_acked(before + 30, Duration::from_secs(60), "after the fault")
        .await;
    let acked = w.finish().await;

    cl.stop(victim).await;
    let leader = cl
        .wait_leader(Duration::from_secs(20))
        .await
        .expect("a leader among the healthy two");
    let idx = applied_index(&cl.members[&leader]);
    cl.wait_applied(idx, Duration::from_secs(20))
        .await
        .expect("the healthy members apply");
    for id in cl.members.keys() {
        assert_has(cl, *id, &acked, "healthy member after the fault");
    }

    // The disk is back: restarted from its data directory, the member catches up.
    disks[&victim].clear();
    cl.restart(victim).await.expect("restart on a healthy disk");
    cl.wait_applied(idx, Duration::from_secs(30))
        .await
        .expect("the restarted member catches up");
    assert_has(cl, victim, &acked, "restarted member");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_fsync_fails_stops_and_rejoins_once_the_disk_is_back() {
    let disks = disks();
    let mut cl = cluster(&disks).await;
    let t0 = Instant::now();
    let leader = cl
        .wait_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let on_leader = fsync_fails_then_recovers(&mut cl, &disks, leader, "l").await;
    let follower = cl
        .wait_leader(Duration::from_secs(20))
        .await
        .map(|l| if l == 1 { 2 } else { 1 })
        .expect("leader");
    let on_follower = fsync_fails_then_recovers(&mut cl, &disks, follower, "f").await;
    eprintln!(
        "fatal after the fault: leader {on_leader:?}, follower {on_follower:?}; whole run {:?}",
        t0.elapsed()
    );
    // Everything acknowledged in both rounds is on every member, through a linearizable read.
    let table = twill_tests::lease_table(&cl.client()).await.expect("list");
    for id in cl.members.keys() {
        assert_has(&cl, *id, &table, "end");
    }
    cl.shutdown().await;
}

/// `n` acquisitions one after another: what was acknowledged and the mean time to it.
async fn write_n(
    c: &twill_client::Client,
    n: u32,
    tag: &str,
) -> (BTreeMap<String, String>, Duration) {
    let started = Instant::now();
    let mut got = BTreeMap::new();
    for i in 0..n {
        let node = format!("{tag}-{i:03}");
        let r = c.acquire(acquire(&node)).await.expect("acquire");
        got.insert(node, r.lease.expect("lease").subnet);
    }
    (got, started.elapsed() / n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_delays_acknowledgements_and_loses_nothing() {
    let disks = disks();
    let mut cl = cluster(&disks).await;
    let c = cl.client();
    let mut acked = BTreeMap::new();
    let (got, fast) = write_n(&c, 20, "fast").await;
    acked.extend(got);
    for d in disks.values() {
        d.slow_fsync(Duration::from_millis(300));
    }
    let (got, slow) = write_n(&c, 20, "slow").await;
    acked.extend(got);
    let delayed: u64 = disks.values().map(|d| d.counts().delayed_syncs).sum();
    assert!(delayed >= 20, "the fsyncs were really slowed: {delayed}");
    for d in disks.values() {
        d.clear();
    }
    eprintln!("mean acknowledgement: {fast:?} on a healthy disk, {slow:?} with fsync +300 ms");

    let leader = cl
        .wait_leader(Duration::from_secs(20))
        .await
        .expect("leader");
    let idx = applied_index(&cl.members[&leader]);
    cl.wait_applied(idx, Duration::from_secs(20))
        .await
        .expect("all apply");
    // Restarted from disk, every member still has every acknowledged lease.
    for id in 1..=3 {
        cl.stop(id).await;
    }
    for id in 1..=3 {
        cl.restart(id).await.expect("restart");
    }
    cl.wait_leader(Duration::from_secs(20))
        .await
        .expect("leader after restart");
    cl.wait_applied(idx, Duration::from_secs(20))
        .await
        .expect("replayed");
    for id in 1..=3 {
        assert_has(&cl, id, &acked, "after restart");
    }
    cl.shutdown().await;
}
