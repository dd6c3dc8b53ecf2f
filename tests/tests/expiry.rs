//! Lease expiry is proposed by the leader; a renewed lease lives on; a leader change gives every
//! lease fresh slack instead of expiring it early.

use std::time::Duration;

use twill_proto::v1 as pb;
use twill_tests::Cluster;

fn acquire(node: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        node: node.into(),
        public_ip: "192.0.2.3".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewed_leases_expire_renewed_ones_stay() {
    let cl = Cluster::start_with(1, |o| o.initial_config.lease_ttl_ms = 1_500)
        .await
        .expect("cluster");
    let c = cl.client();
    let kept = c
        .acquire(acquire("kept"))
        .await
        .expect("acquire")
        .lease
        .expect("lease");
    c.acquire(acquire("dropped")).await.expect("acquire");
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        let r = c.renew("kept", kept.create_revision).await.expect("renew");
        assert_eq!(
            r.lease.expect("lease").subnet,
            kept.subnet,
            "renew changed the subnet"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let leases: Vec<String> = c
        .list_leases()
        .await
        .expect("list")
        .leases
        .into_iter()
        .map(|l| l.node)
        .collect();
    assert_eq!(
        leases,
        ["kept"],
        "the unrenewed lease should have expired, the renewed one not"
    );
    // Renewing an expired lease is refused: the node must acquire again.
    let s = c
        .renew("dropped", 0)
        .await
        .expect_err("renew of an expired lease");
    assert_eq!(s.code(), Some(tonic::Code::NotFound));
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_extends_every_deadline() {
    let mut cl = Cluster::start_with(3, |o| o.initial_config.lease_ttl_ms = 60_000)
        .await
        .expect("cluster");
    let c = cl.client();
    let before = c
        .acquire(acquire("n1"))
        .await
        .expect("acquire")
        .lease
        .expect("lease");
    let old = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let grace = cl.members[&old].member.opts.promote_grace_ms;
    cl.stop(old).await;
    cl.wait_leader(Duration::from_secs(20))
        .await
        .expect("new leader");
    let after = c
        .list_leases()
        .await
        .expect("list")
        .leases
        .into_iter()
        .find(|l| l.node == "n1")
        .expect("lease survives the leader change");
    assert!(
        after.expires_at_ms >= before.expires_at_ms + grace,
        "deadline {} not extended by the grace {grace} ms past {}",
        after.expires_at_ms,
        before.expires_at_ms
    );
    assert_eq!(after.subnet, before.subnet);
    cl.shutdown().await;
}
