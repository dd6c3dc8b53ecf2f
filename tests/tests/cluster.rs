//! A 3-member controller cluster on loopback: acquisitions through every member, leader loss,
//! catch-up after restart, and a full-cluster restart from disk.

use std::collections::BTreeMap;
use std::time::Duration;

use twill_proto::v1 as pb;
use twill_tests::Cluster;

fn acquire(node: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        node: node.to_string(),
        public_ip: "192.0.2.10".into(),
        ..Default::default()
    }
}

/// node → subnet as the cluster reports it through a linearizable read.
async fn lease_table(c: &twill_client::Client) -> BTreeMap<String, String> {
    c.list_leases()
        .await
        .expect("list leases")
        .leases
        .into_iter()
        .map(|l| (l.node, l.subnet))
        .collect()
}

/// node → subnet straight from one member's applied state, without asking the leader.
fn local_table(cl: &Cluster, id: u64) -> BTreeMap<String, String> {
    twill_tests::local_leases(&cl.members[&id])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_survive_leader_loss_and_full_restart() {
    let mut cl = Cluster::start(3).await.expect("cluster starts");
    let ids: Vec<u64> = cl.addrs.keys().copied().collect();

    // 500 acquisitions spread over all members; followers forward to the leader.
    let clients: Vec<_> = ids.iter().map(|id| cl.client_of(*id)).collect();
    let mut acked = BTreeMap::new();
    let mut tasks = Vec::new();
    for (k, c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in (k..500).step_by(3) {
                let node = format!("node-{i:03}");
                let r = c.acquire(acquire(&node)).await.expect("acquire");
                got.push((node, r.lease.expect("lease in answer").subnet));
            }
            got
        }));
    }
    for t in tasks {
        for (n, s) in t.await.expect("task") {
            acked.insert(n, s);
        }
    }
    assert_eq!(acked.len(), 500);
    let distinct: std::collections::BTreeSet<_> = acked.values().collect();
    assert_eq!(distinct.len(), 500, "two nodes were given the same subnet");

    let client = cl.client();
    assert_eq!(lease_table(&client).await, acked);

    // Stop the leader; writes resume on the survivors.
    let old = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    cl.stop(old).await;
    let new = cl
        .wait_leader(Duration::from_secs(20))
        .await
        .expect("new leader");
    assert_ne!(new, old);
    for i in 500..550 {
        let node = format!("node-{i:03}");
        let r = client
            .acquire(acquire(&node))
            .await
            .expect("acquire after failover");
        acked.insert(node, r.lease.expect("lease").subnet);
    }
    // Every acknowledged lease is on both survivors, applied locally.
    let idx = twill_tests::applied_index(&cl.members[&new]);
    cl.wait_applied(idx, Duration::from_secs(10))
        .await
        .expect("survivors apply");
    for id in cl.members.keys() {
        assert_eq!(
            local_table(&cl, *id),
            acked,
            "member {id} lost or changed leases"
        );
    }

    // The stopped member restarts from its data directory and catches up.
    cl.restart(old).await.expect("restart old leader");
    cl.wait_applied(idx, Duration::from_secs(20))
        .await
        .expect("old leader catches up");
    assert_eq!(
        local_table(&cl, old),
        acked,
        "restarted member did not catch up"
    );

    // All members stopped and restarted from disk keep every acknowledged lease.
    for id in &ids {
        cl.stop(*id).await;
    }
    for id in &ids {
        cl.restart(*id).await.expect("restart");
    }
    cl.wait_leader(Duration::from_secs(20))
        .await
        .expect("leader after full restart");
    assert_eq!(lease_table(&cl.client()).await, acked);
    cl.wait_applied(idx, Duration::from_secs(20))
        .await
        .expect("all apply");
    for id in &ids {
        assert_eq!(
            local_table(&cl, *id),
            acked,
            "member {id} after full restart"
        );
    }
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_members_leader_and_indexes() {
    let cl = Cluster::start(3).await.expect("cluster starts");
    // Each member names the leader: one elected meanwhile is named by some and not others.
    twill_tests::again_if_elected(&cl, || async {
        let leader = cl
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        let c = cl.client();
        c.acquire(acquire("a")).await.expect("acquire");
        for id in cl.addrs.keys() {
            let s = twill_client::Client::status_of(&cl.url(*id), Some(twill_tests::admin_tls()))
                .await
                .expect("status");
            assert_eq!(s.id, *id);
            assert_eq!(s.leader, leader);
            assert_eq!(s.leader_addr, cl.url(leader));
            assert_eq!(s.members.len(), 3);
            assert!(s.members.iter().all(|m| m.voter));
            assert!(s.term >= 1);
            assert!(s.last_log_index >= s.applied_index || *id != leader);
        }
    })
    .await;
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_catches_up_becomes_voter_and_can_be_removed() {
    let cl = Cluster::start(3).await.expect("cluster starts");
    let c = cl.client();
    for i in 0..20 {
        c.acquire(acquire(&format!("n{i}"))).await.expect("acquire");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut o = twill_tests::test_options(4, cl.dir.path().join("m4"), addr);
    o.join = true;
    let joiner = twill_controller::node::start_on(o, listener)
        .await
        .expect("start joiner");
    let url = format!("http://{addr}");

    let r = c.add_member(4, &url).await.expect("add member");
    assert!(
        r.members.iter().any(|m| m.id == 4 && m.voter),
        "member 4 not a voter: {:?}",
        r.members
    );
    // It has every lease once it has caught up.
    let want = lease_table(&c).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = twill_tests::local_leases(&joiner);
        if got == want {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "joiner did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let r = c.remove_member(4).await.expect("remove member");
    assert!(
        r.members.iter().all(|m| m.id != 4),
        "member 4 still listed: {:?}",
        r.members
    );
    c.acquire(acquire("after-removal"))
        .await
        .expect("writes go on without it");
    joiner.shutdown().await;
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_behind_the_purged_log_catches_up_from_a_snapshot() {
    let mut cl = Cluster::start_with(3, |o| {
        o.snapshot_every = 20;
        o.keep_log = 0;
    })
    .await
    .expect("cluster starts");
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let lagging = cl
        .addrs
        .keys()
        .copied()
        .find(|i| *i != leader)
        .expect("a follower");
    cl.stop(lagging).await;
    // One client writing sequentially: one Raft entry per acquisition, many snapshots.
    let c = cl.client();
    for i in 0..200 {
        c.acquire(acquire(&format!("n{i:03}")))
            .await
            .expect("acquire");
    }
    let want = lease_table(&c).await;
    let purged = cl.members[&leader]
        .member
        .raft
        .metrics()
        .borrow()
        .purged
        .map(|l| l.index)
        .unwrap_or(0);
    assert!(
        purged > 100,
        "the leader should have purged its log behind a snapshot (purged up to {purged})"
    );

    cl.restart(lagging).await.expect("restart");
    let idx = twill_tests::applied_index(&cl.members[&leader]);
    cl.wait_applied(idx, Duration::from_secs(20))
        .await
        .expect("catches up");
    assert_eq!(
        local_table(&cl, lagging),
        want,
        "state installed from the snapshot differs"
    );
    let snap = cl.members[&lagging].member.raft.metrics().borrow().snapshot;
    assert!(
        snap.is_some(),
        "the lagging member should hold an installed snapshot"
    );
    // And it restarts from that snapshot plus its log.
    cl.stop(lagging).await;
    cl.restart(lagging).await.expect("restart again");
    cl.wait_applied(idx, Duration::from_secs(20))
        .await
        .expect("applies again");
    assert_eq!(local_table(&cl, lagging), want);
    cl.shutdown().await;
}

/// BGP keys (and the cluster's keys) live in the log and the snapshot: nobody but the
/// controller's user may read them, whatever the umask, and files an older version left
/// readable are closed at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut cl = Cluster::start_with(1, |o| o.snapshot_every = 5)
        .await
        .expect("cluster");
    let c = cl.client();
    for i in 0..12 {
        c.acquire(pb::AcquireRequest {
            node: format!("m{i}"),
            public_ip: "192.0.2.1".into(),
            ..Default::default()
        })
        .await
        .expect("acquire");
    }
    let dir = cl.data_dir(1);
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    let snapshot = dir.join("snapshot.bin");
    for _ in 0..50 {
        if snapshot.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mode(&dir), 0o700);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(files.contains(&snapshot), "{files:?}");
    assert!(files.contains(&dir.join("raft.redb")), "{files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{}", f.display());
    }
    // An older version's readable files, and a loosened directory, are closed on restart.
    cl.stop(1).await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&snapshot, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    cl.restart(1).await.expect("restart");
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&snapshot), 0o600);
    cl.shutdown().await;
}

/// After the leader is lost, a request sent once to a follower, with no retry, is answered once
/// a new leader exists: the follower holds it through the election and forwards it (or serves
/// it, if elected itself) instead of failing on the dead leader or on "no leader yet".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holds_a_request_through_the_election_after_the_leader_is_lost() {
    use twill_proto::v1::controller_client::ControllerClient;

    let mut cl = Cluster::start(3).await.expect("cluster starts");
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    // Every member learns the leader.
    cl.client()
        .acquire(acquire("before"))
        .await
        .expect("acquire before");
    let followers: Vec<u64> = cl.addrs.keys().copied().filter(|i| *i != leader).collect();
    let raw: Vec<_> = followers
        .iter()
        .map(|f| ControllerClient::new(cl.channel(*f)))
        .collect();
    cl.stop(leader).await;

    let mut calls = Vec::new();
    for (k, mut c) in raw.into_iter().enumerate() {
        calls.push(tokio::spawn(async move {
            let w = c.acquire(acquire(&format!("held-{k}"))).await;
            let r = c.list_leases(pb::ListLeasesRequest::default()).await;
            (w, r)
        }));
    }
    for (k, call) in calls.into_iter().enumerate() {
        let (w, r) = call.await.expect("task");
        let lease = w
            .unwrap_or_else(|s| panic!("write to member {} failed: {s:?}", followers[k]))
            .into_inner()
            .lease
            .expect("a lease");
        assert!(!lease.subnet.is_empty());
        let listed = r
            .unwrap_or_else(|s| panic!("read on member {} failed: {s:?}", followers[k]))
            .into_inner()
            .leases;
        assert!(
            listed.iter().any(|l| l.node == format!("held-{k}")),
            "{listed:?}"
        );
    }
    let now = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    assert_ne!(now, leader);
    cl.shutdown().await;
}
