//! Bad input over the public API: each gets a precise gRPC status and changes nothing.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::Code;
use twill_proto::v1 as pb;
use twill_proto::v1::controller_client::ControllerClient;
use twill_tests::Cluster;

async fn raw(cl: &Cluster, id: u64) -> ControllerClient<Channel> {
    ControllerClient::new(cl.channel(id))
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
    c.list_leases(pb::ListLeasesRequest::default())
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
        .list_leases(pb::ListLeasesRequest::default())
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
            create_revision: 0,
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
        .list_leases(pb::ListLeasesRequest::default())
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
    let s = status(c.list_leases(pb::ListLeasesRequest::default()).await);
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
        .list_leases(pb::ListLeasesRequest::default())
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

/// The Raft log's last index on every member, to show that a refused request wrote nothing.
async fn log_indexes(cl: &Cluster) -> Vec<u64> {
    let mut out = Vec::new();
    for id in cl.addrs.keys() {
        let s = raw(cl, *id)
            .await
            .status(pb::StatusRequest {})
            .await
            .expect("status")
            .into_inner();
        out.push(s.last_log_index);
    }
    out
}

/// Every member, leader or follower, refuses bad input itself, at once, with the same short
/// INVALID_ARGUMENT, and nothing reaches the Raft log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_replication_by_every_member() {
    let cl = Cluster::start(3).await.expect("cluster");
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    // Let the cluster settle: the leader's first entries are applied everywhere.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A leader elected meanwhile writes entries of its own: then the refusals are made again.
    twill_tests::again_if_elected(&cl, || async {
        let before = log_indexes(&cl).await;
        refuse_bad_input(&cl, leader).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            log_indexes(&cl).await,
            before,
            "a refused request reached the Raft log"
        );
    })
    .await;
    cl.shutdown().await;
}

/// Bad names, an oversized request and oversized fields, to every member, each refused with a
/// short INVALID_ARGUMENT or OUT_OF_RANGE.
async fn refuse_bad_input(cl: &Cluster, leader: u64) {
    let long = |n: usize| "x".repeat(n);
    let bad_names = [
        long(100 * 1024),
        long(17 * 1024),
        "Node_1".to_string(),
        String::new(),
    ];
    for id in cl.addrs.keys().copied() {
        let mut c = raw(cl, id).await;
        let who = if id == leader { "leader" } else { "follower" };
        for name in &bad_names {
            let shown = &name[..name.len().min(12)];
            let mut calls: Vec<(&str, tonic::Status)> = Vec::new();
            let mut a = acq(name, "");
            a.request_id = "r0".into();
            calls.push(("acquire", status(c.acquire(a).await)));
            calls.push((
                "renew",
                status(
                    c.renew(pb::RenewRequest {
                        request_id: "r1".into(),
                        node: name.clone(),
                        create_revision: 0,
                    })
                    .await,
                ),
            ));
            calls.push((
                "release",
                status(
                    c.release(pb::ReleaseRequest {
                        request_id: "r2".into(),
                        node: name.clone(),
                    })
                    .await,
                ),
            ));
            calls.push((
                "reserve",
                status(
                    c.reserve(pb::ReserveRequest {
                        request_id: "r3".into(),
                        node: name.clone(),
                        subnet: "10.0.9.0/24".into(),
                    })
                    .await,
                ),
            ));
            calls.push((
                "unreserve",
                status(
                    c.unreserve(pb::UnreserveRequest {
                        request_id: "r4".into(),
                        node: name.clone(),
                    })
                    .await,
                ),
            ));
            for (call, s) in calls {
                assert_eq!(
                    s.code(),
                    Code::InvalidArgument,
                    "{call} with {shown:?}… on the {who}: {}",
                    &s.message()[..s.message().len().min(200)]
                );
                assert!(
                    s.message().len() < 600,
                    "{call} on the {who}: a {} byte message",
                    s.message().len()
                );
                assert!(s.message().starts_with("node: "), "{}", s.message());
            }
        }
        // Larger than any request the API takes: refused by size, not parsed.
        let s = status(c.acquire(acq(&long(5 << 20), "")).await);
        assert_eq!(s.code(), Code::OutOfRange, "{}", s.message());
        assert!(s.message().contains("too large"), "{}", s.message());
        assert!(s.message().len() < 600, "{}", s.message().len());
        // Bounded fields other than the name.
        let mut big_id = acq("fine", "");
        big_id.request_id = long(65);
        let s = status(c.acquire(big_id).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        assert!(s.message().starts_with("request_id: "), "{}", s.message());
        let mut bad_ip = acq("fine", "");
        bad_ip.public_ip = long(50_000);
        let s = status(c.acquire(bad_ip).await);
        assert_eq!(s.code(), Code::InvalidArgument, "{}", s.message());
        assert!(s.message().len() < 600, "{}", s.message().len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_data_is_bounded_in_entries_keys_and_values() {
    let cl = Cluster::start(1).await.expect("cluster");
    let mut c = raw(&cl, 1).await;
    let with = |f: &dyn Fn(&mut std::collections::HashMap<String, String>)| {
        let mut r = acq("bd", "");
        f(&mut r.backend_data);
        r
    };
    let too_many = with(&|m| {
        for i in 0..17 {
            m.insert(format!("k{i}"), "v".into());
        }
    });
    let s = status(c.acquire(too_many).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("17 entries"), "{}", s.message());
    let big_value = with(&|m| {
        m.insert("vtep_mac".into(), "v".repeat(257));
    });
    let s = status(c.acquire(big_value).await);
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("257 bytes"), "{}", s.message());
    let bad_key = with(&|m| {
        m.insert("a key".into(), "v".into());
    });
    assert_eq!(
        status(c.acquire(bad_key).await).code(),
        Code::InvalidArgument
    );
    let at_limits = with(&|m| {
        for i in 0..16 {
            m.insert(format!("{i:0>63}"), "v".repeat(256));
        }
    });
    c.acquire(at_limits)
        .await
        .expect("16 entries at the size limits");
    cl.shutdown().await;
}

/// A client with gRPC's default 4 MiB receive limit reads a table far larger than that: leases
/// come in pages and the watch snapshot in chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tables_reach_a_client_with_the_default_receive_limit() {
    let cl = Cluster::start(1).await.expect("cluster");
    // Each lease carries about 4.5 KB of backend data: 1,200 of them are over 5 MB.
    let data: std::collections::HashMap<String, String> = (0..16)
        .map(|i| (format!("{i:0>63}"), "v".repeat(256)))
        .collect();
    let client = cl.client();
    let reqs = (0..1200).map(|i| {
        let mut r = acq(&format!("n{i:04}"), "");
        r.request_id = String::new();
        r.backend_data = data.clone();
        client.acquire(r)
    });
    for r in futures::future::join_all(reqs).await {
        r.expect("acquire");
    }
    // The generated client keeps tonic's default limits: 4 MiB to receive.
    let mut c = raw(&cl, 1).await;
    let mut names = Vec::new();
    let mut after = String::new();
    let mut pages = 0;
    loop {
        let p = c
            .list_leases(pb::ListLeasesRequest { limit: 0, after })
            .await
            .expect("a page under 4 MiB")
            .into_inner();
        pages += 1;
        assert!(p.leases.len() <= twill_proto::PAGE_LEASES);
        names.extend(p.leases.into_iter().map(|l| l.node));
        if p.next_after.is_empty() {
            break;
        }
        after = p.next_after;
    }
    assert_eq!(pages, 3);
    let want: Vec<String> = (0..1200).map(|i| format!("n{i:04}")).collect();
    assert_eq!(names, want, "every lease once, in name order");
    let small = c
        .list_leases(pb::ListLeasesRequest {
            limit: 7,
            after: "n0100".into(),
        })
        .await
        .expect("page")
        .into_inner();
    assert_eq!(small.leases.len(), 7);
    assert_eq!(small.leases[0].node, "n0101");
    assert_eq!(small.next_after, "n0107");

    let mut w = c
        .watch(pb::WatchRequest {
            start_revision: 0,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = 0;
    loop {
        let m = w
            .message()
            .await
            .expect("a chunk under 4 MiB")
            .expect("open");
        let Some(pb::watch_response::Msg::Snapshot(s)) = m.msg else {
            panic!("a snapshot first, got {m:?}");
        };
        assert!(s.config_present);
        seen += s.leases.len();
        if !s.more {
            break;
        }
    }
    assert_eq!(seen, 1200);
    // twill's own client puts the chunks back together.
    let mut whole = cl.client_of(1).watch(0).await.expect("watch");
    match whole.message().await.expect("snapshot").and_then(|m| m.msg) {
        Some(pb::watch_response::Msg::Snapshot(s)) => assert_eq!(s.leases.len(), 1200),
        other => panic!("a snapshot first, got {other:?}"),
    }
    cl.shutdown().await;
}

/// RenewRequest.create_revision means what the proto says: the lease's create_revision, which
/// renewals keep, so every renewal after the first still passes the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_checks_the_create_revision_the_proto_documents() {
    let cl = Cluster::start(1).await.expect("cluster");
    let mut c = raw(&cl, 1).await;
    let lease = c
        .acquire(acq("renewer", ""))
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease");
    let renew = |create_revision| pb::RenewRequest {
        request_id: String::new(),
        node: "renewer".into(),
        create_revision,
    };
    let mut last = lease.clone();
    for _ in 0..3 {
        last = c
            .renew(renew(lease.create_revision))
            .await
            .expect("renew with the create_revision")
            .into_inner()
            .lease
            .expect("lease");
        assert_eq!(last.create_revision, lease.create_revision);
    }
    assert!(last.mod_revision > lease.create_revision);
    let s = status(c.renew(renew(last.mod_revision)).await);
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_beyond_the_limit_are_refused_and_a_closed_one_frees_its_place() {
    let cl = Cluster::start_with(1, |o| o.max_watches = 2)
        .await
        .expect("cluster");
    let mut c = raw(&cl, 1).await;
    let open = |mut c: ControllerClient<Channel>| async move {
        c.watch(pb::WatchRequest {
            start_revision: 0,
            ..Default::default()
        })
        .await
    };
    let a = open(c.clone()).await.expect("first");
    let _b = open(c.clone()).await.expect("second");
    let s = status(open(c.clone()).await);
    assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
    assert!(s.message().contains("--max-watches"), "{}", s.message());
    drop(a);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(w) = open(c.clone()).await {
            again = Some(w);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(again.is_some(), "the closed watch's place was not freed");
    let _ = c
        .status(pb::StatusRequest {})
        .await
        .expect("other calls still served");
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_an_unreachable_member_fails_fast_and_changes_nothing() {
    let cl = Cluster::start(1).await.expect("cluster");
    let mut c = raw(&cl, 1).await;
    let port = twill_tests::free_port().expect("port");
    let started = std::time::Instant::now();
    let s = status(
        c.add_member(pb::AddMemberRequest {
            id: 2,
            addr: format!("http://127.0.0.1:{port}"),
        })
        .await,
    );
    assert_eq!(s.code(), Code::FailedPrecondition, "{}", s.message());
    assert!(s.message().contains("--join"), "{}", s.message());
    assert!(started.elapsed() < Duration::from_secs(10));
    let st = c
        .status(pb::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(st.members.len(), 1, "{:?}", st.members);
    cl.shutdown().await;
}

/// The agent's watch follower, refused by a member that serves its most watches, resumes on
/// the next member instead of asking the full one again. Each client starts its watches at a
/// random member, so several followers are run: all eight starting on member 2, and none
/// meeting the refusal, is one chance in 256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_watch_resumes_on_another_member() {
    const FOLLOWERS: usize = 8;
    let cl = Cluster::start_with(2, |o| {
        if o.id == 1 {
            o.max_watches = 1;
        }
    })
    .await
    .expect("cluster");
    let mut c = raw(&cl, 1).await;
    let _held = c
        .watch(pb::WatchRequest {
            start_revision: 0,
            ..Default::default()
        })
        .await
        .expect("the one watch member 1 serves");
    cl.client().acquire(acq("seen", "")).await.expect("acquire");
    let mut followers = Vec::new();
    for _ in 0..FOLLOWERS {
        let client = std::sync::Arc::new(
            twill_client::Client::with_options(
                [cl.url(1), cl.url(2)],
                twill_client::ClientOptions {
                    retry_for: Duration::from_secs(2),
                    tls: Some(twill_tests::admin_tls()),
                    ..Default::default()
                },
            )
            .expect("client"),
        );
        let (tx, rx) = tokio::sync::watch::channel(twill_agent::watch::View::default());
        let task = tokio::spawn(twill_agent::watch::follow(
            client,
            tx,
            Duration::from_secs(10),
        ));
        followers.push((task, rx));
    }
    for (_, rx) in followers.iter_mut() {
        tokio::time::timeout(
            Duration::from_secs(10),
            rx.wait_for(|v| v.leases.contains_key("seen")),
        )
        .await
        .expect("the view arrived through member 2")
        .expect("follower alive");
    }
    let served = |id: u64| cl.members[&id].member.metrics.watchers_open();
    assert_eq!(served(1), 1, "member 1 serves only the watch it had");
    assert_eq!(served(2), FOLLOWERS as i64, "every follower is on member 2");
    for (task, _) in followers {
        task.abort();
    }
    cl.shutdown().await;
}
