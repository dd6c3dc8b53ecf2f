//! Agents' health reports: kept by the leader in memory, reachable through any member, limited
//! in size, only for the caller's own node, and stale after three missed reports.

use std::time::Duration;

use tonic::Code;
use twill_client::{Client, ClientError, ClientOptions};
use twill_pki::Identity;
use twill_proto::v1 as pb;
use twill_tests::{credentials, Cluster};

fn report(ready: bool, interval_ms: u64) -> pb::NodeHealth {
    pb::NodeHealth {
        ready,
        problems: if ready {
            vec![]
        } else {
            vec!["last reconcile failed: File exists".into()]
        },
        reconcile_ok: ready,
        reconcile_at_ms: twill_proto::now_ms(),
        backend: "vxlan".into(),
        version: "0.1.0".into(),
        interval_ms,
        ..Default::default()
    }
}

fn refusal(r: Result<impl std::fmt::Debug, ClientError>) -> (Code, String) {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(ClientError::Status(s)) => (s.code(), s.message().to_string()),
        Err(e) => panic!("expected a status, got {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_reach_the_leader_through_a_follower_and_go_stale() {
    let cl = Cluster::start(3).await.expect("cluster");
    // The reports live in the leader's memory: a leader elected meanwhile starts with none.
    twill_tests::again_if_elected(&cl, || reports_through_a_follower(&cl)).await;
    cl.shutdown().await;
}

async fn reports_through_a_follower(cl: &Cluster) {
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = (1..=3).find(|i| *i != leader).expect("a follower");
    // Node a's agent knows only a follower: its reports are forwarded.
    let a = Client::with_options(
        [cl.url(follower)],
        ClientOptions {
            tls: Some(
                credentials(&Identity::node("node-a"), Duration::from_secs(3600)).client_tls(),
            ),
            ..Default::default()
        },
    )
    .expect("client");
    a.report_health("node-a", report(false, 400))
        .await
        .expect("a node reports its own health");

    // Listed by any member (followers ask the leader), as the node said it.
    let l = cl
        .client_of(follower)
        .list_health()
        .await
        .expect("list through a follower");
    assert_eq!(l.member, leader, "the leader keeps the reports");
    assert_eq!(l.nodes.len(), 1);
    assert_eq!(l.nodes[0].node, "node-a");
    assert!(!l.nodes[0].stale);
    assert_eq!(
        l.nodes[0].health.as_ref().expect("health").problems,
        vec!["last reconcile failed: File exists".to_string()]
    );

    // Another node's name, too many problems, a 5 MB problem, a nonsensical interval: refused,
    // and the board keeps what it had.
    assert_eq!(
        refusal(a.report_health("node-b", report(true, 400)).await).0,
        Code::PermissionDenied
    );
    let mut h = report(true, 400);
    h.problems = vec!["x".into(); 17];
    let (c, m) = refusal(a.report_health("node-a", h).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    assert!(m.contains("health.problems"), "{m}");
    let mut h = report(true, 400);
    h.problems = vec!["x".repeat(5 << 20)];
    let (c, m) = refusal(a.report_health("node-a", h).await);
    assert!(
        matches!(c, Code::InvalidArgument | Code::OutOfRange),
        "{c:?} {m}"
    );
    let (c, m) = refusal(a.report_health("node-a", report(true, 0)).await);
    assert_eq!(c, Code::InvalidArgument, "{m}");
    let l = cl.client().list_health().await.expect("list");
    assert_eq!(l.nodes.len(), 1, "nothing recorded for node-b: {l:?}");
    assert!(!l.nodes[0].health.as_ref().expect("health").ready);

    // A healthy report replaces it; three intervals of silence make it stale.
    a.report_health("node-a", report(true, 400))
        .await
        .expect("report");
    let l = cl.client().list_health().await.expect("list");
    assert!(l.nodes[0].health.as_ref().expect("health").ready);
    assert!(!l.nodes[0].stale);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let l = cl.client().list_health().await.expect("list");
    assert!(l.nodes[0].stale, "{l:?}");
    assert!(l.nodes[0].age_ms >= 1_200, "{l:?}");
}
