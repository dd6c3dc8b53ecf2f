//! Mixed releases: every call says which API level it speaks; a controller serves the levels it
//! knows and refuses others with a message saying which side to upgrade.

use std::time::Duration;

use tonic::Code;
use twill_proto::v1 as pb;
use twill_proto::v1::controller_client::ControllerClient;
use twill_tests::Cluster;

async fn status_as(
    cl: &Cluster,
    api: Option<&str>,
    release: &str,
) -> Result<pb::StatusResponse, tonic::Status> {
    let mut c = ControllerClient::new(cl.channel(1));
    let mut req = tonic::Request::new(pb::StatusRequest {});
    if let Some(api) = api {
        req.metadata_mut()
            .insert("x-twill-api", api.parse().expect("ascii"));
    }
    req.metadata_mut()
        .insert("x-twill-release", release.parse().expect("ascii"));
    c.status(req).await.map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_serves_its_api_levels_and_names_the_side_to_upgrade() {
    let cl = Cluster::start(1).await.expect("cluster");
    cl.wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");

    // This release's client, through the library: served, and told the member's release.
    let s = cl.client().status().await.expect("status");
    assert_eq!(s.release, env!("CARGO_PKG_VERSION"));
    assert_eq!(s.api, twill_proto::version::API);

    // A client from before the check sends no level: served as level 1.
    assert!(status_as(&cl, None, "0.0.9").await.is_ok());

    let newer = status_as(&cl, Some("2"), "0.2.0")
        .await
        .expect_err("newer level");
    assert_eq!(newer.code(), Code::FailedPrecondition);
    assert!(
        newer
            .message()
            .starts_with("twill 0.2.0 speaks API level 2, newer than this controller")
            && newer
                .message()
                .contains("upgrade the controller members first"),
        "{}",
        newer.message()
    );
    let older = status_as(&cl, Some("0"), "0.0.1")
        .await
        .expect_err("older level");
    assert_eq!(older.code(), Code::FailedPrecondition);
    assert!(
        older.message().contains("older than this controller"),
        "{}",
        older.message()
    );
    // Writes are refused the same way, before anything is written.
    let mut c = ControllerClient::new(cl.channel(1));
    let mut req = tonic::Request::new(pb::AcquireRequest {
        node: "n1".into(),
        public_ip: "192.0.2.1".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-twill-api", "9".parse().expect("ascii"));
    let e = c.acquire(req).await.expect_err("newer level");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(cl
        .client()
        .list_leases()
        .await
        .expect("list")
        .leases
        .is_empty());
    cl.shutdown().await;
}
