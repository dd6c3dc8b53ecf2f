//! Bad input over the public API: each gets a precise gRPC status and changes nothing.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::Code;
use twill_proto::v1 as pb;
use twill_proto::v1::controller_client::ControllerClient;
use twill_tests::Cluster;

async fn raw(cl: &Cluster, id: u64) -> ControllerClient<Channel> {
    ControllerClient::connect(cl.url(id))
        .await
        .expect("connect")
}

fn acq(node: &str, wanted: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        request_id: format!("req-{node}-{wanted}"),
        node: node.into(),
        public_ip: "192.0.2.7".into(),
        wanted_subnet: wanted.into(),
        ..Default::default()
    }
}

fn net(network: &str, subnet_len: u32) -> pb::NetworkConfig {
    pb::NetworkConfig {
        network: network.into(),
        subnet_len,
        ..Default::default()
    }
}

fn set(config: pb::NetworkConfig) -> pb::SetConfigRequest {
    pb::SetConfigRequest {
        request_id: String::new(),
        config: Some(config),
    }
}

/// The status of a failed call, or a panic naming what unexpectedly succeeded.
fn status<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    match r {
        Ok(ok) => panic!("expected an error, got {:?}", ok.into_inner()),
        Err(s) => s,
    }
}

async fn revision(c: &mut ControllerClient<Channel>) -> u64 {
    c.list_leases(pb::ListLeasesRequest {})
        .await
        .expect("list")
        .into_inner()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_precise_statuses_and_change_nothing() {
    let cl = Cluster::start(1).await.expect("cluster");
    let mut c = raw(&cl, 1).await;
    c.acquire(acq("holder", "")).await.expect("first acquire");
    let before = revision(&mut c).await;
    let leases_before = c
        .list_leases(pb::ListLeasesRequest {})
        .await
        .expect("list")
        .into_inner();

    let s = status(c.set_config(set(net("10.0.0.300/16", 24))).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message()
            .contains("\"10.0.0.300/16\" is not an IPv4 CIDR"),
        "{}",
        s.message()
    );

    let s = status(c.set_config(set(net("10.0.0.0/16", 31))).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("31"), "{}", s.message());

    let s = status(c.set_config(set(net("10.0.0.0/16", 12))).await);
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());

    // The held lease sits in 10.0.0.0/12: a move to another network would orphan it.
    let s = status(c.set_config(set(net("172.16.0.0/16", 24))).await);
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(
        s.message().contains("holder"),
        "must name the orphaned lease: {}",
        s.message()
    );

    // BGP settings: each mistake named, nothing applied.
    let bgp = |f: &dyn Fn(&mut pb::BgpBackend)| {
        let mut b = pb::BgpBackend {
            asn: 64512,
            ..Default::default()
        };
        f(&mut b);
        let mut cfg = net("10.0.0.0/12", 24);
        cfg.backend = Some(pb::Backend {
            kind: Some(pb::backend::Kind::Bgp(b)),
        });
        set(cfg)
    };
    for (change, want) in [
        (
            &(|b: &mut pb::BgpBackend| b.asn = 0) as &dyn Fn(&mut pb::BgpBackend),
            "AS number must not be 0",
        ),
        (
            &|b: &mut pb::BgpBackend| {
                b.peers.push(pb::BgpPeer {
                    address: "192.0.2.300".into(),
                    asn: 64500,
                    ..Default::default()
                })
            },
            "\"192.0.2.300\" is not an IP address",
        ),
        (
            &|b: &mut pb::BgpBackend| {
                b.peers.push(pb::BgpPeer {
                    address: "192.0.2.254".into(),
                    asn: 64500,
                    password: "x".repeat(81),
                    ..Default::default()
                })
            },
            "at most 80 bytes",
        ),
        (&|b: &mut pb::BgpBackend| b.hold_time = 2, "at least 3"),
        (
            &|b: &mut pb::BgpBackend| b.cluster_id = "reflector".into(),
            "\"reflector\" is not an IPv4 address",
        ),
        (
            &|b: &mut pb::BgpBackend| b.allowed_prefixes.push("10.1.2.3/8".into()),
            "host bits",
        ),
    ] {
        let s = status(c.set_config(bgp(change)).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        assert!(s.message().contains(want), "want {want:?}: {}", s.message());
    }

    let s = status(c.acquire(acq("w1", "192.168.9.0/24")).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("192.168.9.0/24"), "{}", s.message());

    let s = status(c.acquire(acq("w2", "10.0.7.128/25")).await);
    assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());

    let s = status(c.acquire(acq("w3", "not-a-cidr")).await);
    assert_eq!(s.code(), Code::InvalidArgument);

    let mut bad_ip = acq("w4", "");
    bad_ip.public_ip = "300.1.1.1".into();
    assert_eq!(
        status(c.acquire(bad_ip).await).code(),
        Code::InvalidArgument
    );

    let s = status(
        c.renew(pb::RenewRequest {
            request_id: String::new(),
            node: "ghost".into(),
            revision: 0,
        })
        .await,
    );
    assert_eq!(s.code(), Code::NotFound);
    assert_eq!(s.message(), "node ghost holds no lease");

    let s = status(
        c.release(pb::ReleaseRequest {
            request_id: String::new(),
            node: "ghost".into(),
        })
        .await,
    );
    assert_eq!(s.code(), Code::NotFound);

    let s = status(
        c.reserve(pb::ReserveRequest {
            request_id: String::new(),
            node: "other".into(),
            subnet: leases_before.leases[0].subnet.clone(),
        })
        .await,
    );
    assert_eq!(s.code(), Code::AlreadyExists, "{}", s.message());

    let after = c
        .list_leases(pb::ListLeasesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        after.revision, before,
        "a refused request changed the state"
    );
    assert_eq!(after.leases, leases_before.leases);
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_network_says_how_full_it_is() {
    let cl = Cluster::start(1).await.expect("cluster");
    let mut c = raw(&cl, 1).await;
    // Only the default lease exists, so nothing is orphaned by this change: 254 /24s.
    c.set_config(set(pb::NetworkConfig {
        network: "10.9.0.0/16".into(),
        subnet_len: 24,
        subnet_min: "10.9.1.0".into(),
        subnet_max: "10.9.254.0".into(),
        ..Default::default()
    }))
    .await
    .expect("set config");
    for i in 0..254 {
        c.acquire(acq(&format!("n{i}"), ""))
            .await
            .expect("acquire within capacity");
    }
    let s = status(c.acquire(acq("one-too-many", "")).await);
    assert_eq!(s.code(), Code::ResourceExhausted);
    assert_eq!(s.message(), "no free subnet: 254 of 254 in use");
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_without_quorum_is_unavailable_and_names_the_leader() {
    let mut cl = Cluster::start(3).await.expect("cluster");
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let followers: Vec<u64> = cl.addrs.keys().copied().filter(|i| *i != leader).collect();
    // Stop one follower: the leader still has a quorum; then the other: it has none.
    cl.stop(followers[0]).await;
    let mut c = raw(&cl, leader).await;
    c.acquire(acq("ok", "")).await.expect("write with 2 of 3");
    cl.stop(followers[1]).await;
    let s = status(c.acquire(acq("lonely", "")).await);
    assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
    assert!(
        s.message().contains("quorum") || s.message().contains("leader"),
        "{}",
        s.message()
    );
    // A linearizable read needs a quorum too.
    let s = status(c.list_leases(pb::ListLeasesRequest {}).await);
    assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_forwards_writes_and_reads_to_the_leader() {
    let cl = Cluster::start(3).await.expect("cluster");
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = cl
        .addrs
        .keys()
        .copied()
        .find(|i| *i != leader)
        .expect("a follower");
    let mut f = raw(&cl, follower).await;
    let r = f
        .acquire(acq("via-follower", ""))
        .await
        .expect("forwarded acquire")
        .into_inner();
    let l = f
        .list_leases(pb::ListLeasesRequest {})
        .await
        .expect("forwarded read")
        .into_inner();
    assert!(
        l.revision >= r.revision,
        "a linearizable read saw an older revision than a write it followed"
    );
    assert!(l.leases.iter().any(|x| x.node == "via-follower"));
    cl.shutdown().await;
}
