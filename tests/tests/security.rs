//! Who may do what: TLS on every connection, identities from certificates, join tokens, and
//! secrets that reach only those who use them. Each refusal is checked to change nothing.

use std::time::Duration;

use tonic::transport::Channel;
use tonic::Code;
use twill_client::certs::{self, JoinAs};
use twill_client::{Client, ClientError, ClientOptions};
use twill_pki::{Ca, Credentials, Identity};
use twill_proto::v1 as pb;
use twill_proto::v1::controller_client::ControllerClient;
use twill_proto::v1::raft_client::RaftClient;
use twill_tests::{admin_tls, credentials, free_port, parse_metrics, Cluster};

fn client_as(cl: &Cluster, creds: Option<&Credentials>, tls_anyway: bool) -> Client {
    let tls = match creds {
        Some(c) => Some(c.client_tls()),
        None if tls_anyway => Some(twill_pki::credentials::ca_only_tls(
            &twill_tests::pki().ca.cert_pem,
        )),
        None => None,
    };
    Client::with_options(
        cl.urls(),
        ClientOptions {
            retry_for: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(2),
            tls,
            ..Default::default()
        },
    )
    .expect("client")
}

fn acq(node: &str, ip: &str) -> pb::AcquireRequest {
    pb::AcquireRequest {
        node: node.into(),
        public_ip: ip.into(),
        ..Default::default()
    }
}

fn code(r: Result<impl std::fmt::Debug, ClientError>) -> (Code, String) {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(ClientError::Status(s)) => (s.code(), s.message().to_string()),
        Err(e) => panic!("expected a status, got {e}"),
    }
}

fn lease_of<'a>(list: &'a pb::ListLeasesResponse, node: &str) -> &'a pb::Lease {
    list.leases
        .iter()
        .find(|l| l.node == node)
        .unwrap_or_else(|| panic!("{node} holds a lease: {list:?}"))
}

/// Ten calls node-a may not make: each must be refused, and counted once where it arrived.
async fn refuse_all(a: &Client, admin: &Client, b_create_revision: u64) {
    let (c, m) = code(a.renew("node-b", b_create_revision).await);
    assert_eq!(c, Code::PermissionDenied, "{m}");
    assert!(
        m.contains("node node-a") && m.contains("its own lease"),
        "{m}"
    );
    assert_eq!(code(a.release("node-b").await).0, Code::PermissionDenied);
    // Taking b's name would point b's pod traffic at this node.
    assert_eq!(
        code(a.acquire(acq("node-b", "192.0.2.66")).await).0,
        Code::PermissionDenied
    );
    // A node cannot fill the pool with made-up nodes either.
    assert_eq!(
        code(a.acquire(acq("made-up-1", "192.0.2.67")).await).0,
        Code::PermissionDenied
    );
    let cfg = admin
        .get_config()
        .await
        .expect("config")
        .config
        .expect("set");
    assert_eq!(code(a.set_config(cfg).await).0, Code::PermissionDenied);
    assert_eq!(
        code(a.reserve("node-c", "10.0.200.0/24").await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        code(a.add_member(9, "https://127.0.0.1:1").await).0,
        Code::PermissionDenied
    );
    assert_eq!(code(a.remove_member(2).await).0, Code::PermissionDenied);
    assert_eq!(
        code(a.create_token(pb::CreateTokenRequest::default()).await).0,
        Code::PermissionDenied
    );
    assert_eq!(code(a.list_tokens().await).0, Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_acts_on_its_own_lease_only() {
    let ports: Vec<u16> = (0..3).map(|_| free_port().expect("port")).collect();
    let p = ports.clone();
    let cl = Cluster::start_with(3, move |o| {
        o.metrics_listen = Some(([127, 0, 0, 1], p[o.id as usize - 1]).into());
    })
    .await
    .expect("cluster");
    let admin = cl.client();
    admin
        .acquire(acq("node-b", "192.0.2.2"))
        .await
        .expect("admin acquires for b");
    let a_creds = credentials(&Identity::node("node-a"), Duration::from_secs(3600));
    let a = client_as(&cl, Some(&a_creds), true);
    a.acquire(acq("node-a", "192.0.2.1"))
        .await
        .expect("a node takes its own lease");
    a.renew("node-a", 0).await.expect("and renews it");

    // From here on nothing may write a lease but a new leader, whose promotion moves every
    // lease's deadline: then the refusals are made again.
    let attempts = std::sync::atomic::AtomicU32::new(0);
    twill_tests::again_if_elected(&cl, || async {
        attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let before = admin.list_leases().await.expect("list");
        let b = lease_of(&before, "node-b").clone();
        refuse_all(&a, &admin, b.create_revision).await;
        // Reads are open to every node.
        assert_eq!(a.list_leases().await.expect("list").leases.len(), 2);

        let after = admin.list_leases().await.expect("list");
        assert_eq!(
            lease_of(&after, "node-b"),
            &b,
            "a refused call changed b's lease"
        );
        assert!(!after.leases.iter().any(|l| l.node == "made-up-1"));
        assert_eq!(after.reservations.len(), 0);
        assert_eq!(admin.status().await.expect("status").members.len(), 3);
    })
    .await;

    // Each refusal is counted where it arrived, by method and role.
    let mut denied = 0.0;
    let mut texts = String::new();
    for port in ports {
        let text = twill_tests::scrape(port, "/metrics");
        let scrape = parse_metrics(&text).expect("parses");
        texts.push_str(&text);
        denied += scrape
            .samples
            .iter()
            .filter(|x| x.metric.starts_with("twill_controller_denied_calls"))
            .filter(|x| x.labels.get("role") == Some("node"))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v)
                | prometheus_parse::Value::Gauge(v) => v,
                _ => 0.0,
            })
            .sum::<f64>();
    }
    let per_attempt = 10.0;
    let attempts = attempts.into_inner();
    assert_eq!(
        denied,
        per_attempt * f64::from(attempts),
        "every refusal counted once: {texts}"
    );
    cl.shutdown().await;
}

/// A client the cluster cannot identify is refused, each for a reason it is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_with_the_reason() {
    let cl = Cluster::start(1).await.expect("cluster");
    let port = cl.addrs[&1].port();

    // Plaintext to a TLS port.
    let plain = Client::with_options(
        [format!("http://127.0.0.1:{port}")],
        ClientOptions {
            retry_for: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .expect("client");
    let e = plain.list_leases().await.expect_err("plaintext refused");
    assert!(
        e.to_string().contains("serves TLS"),
        "the error should say TLS is needed: {e}"
    );

    // A certificate from another CA: the member does not accept it.
    let other = Ca::generate("other").expect("ca");
    let mut foreign = other
        .credentials(&Identity::admin("admin"), Duration::from_secs(3600), &[])
        .expect("creds");
    foreign.ca_pem = twill_tests::pki().ca.cert_pem.clone();
    let e = client_as(&cl, Some(&foreign), true)
        .list_leases()
        .await
        .expect_err("foreign certificate refused");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // An expired certificate.
    let short = credentials(&Identity::admin("admin"), Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let e = client_as(&cl, Some(&short), true)
        .list_leases()
        .await
        .expect_err("expired certificate refused");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");

    // TLS without a certificate: only a join is allowed.
    let anon = client_as(&cl, None, true);
    let (c, m) = code(anon.list_leases().await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("client certificate"), "{m}");

    // A member that trusts another CA is not trusted by the client either.
    let mut wrong_ca = twill_tests::pki().admin.clone();
    wrong_ca.ca_pem = other.cert_pem.clone();
    let e = client_as(&cl, Some(&wrong_ca), true)
        .list_leases()
        .await
        .expect_err("a member of another CA is not trusted");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    cl.shutdown().await;
}

/// On the main server and on the Raft lane (connections opened with the peers' preface) alike:
/// the preface opens no door, and the lane serves nothing but Raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_member_certificate_speaks_raft() {
    let cl = Cluster::start(1).await.expect("cluster");
    let url = cl.url(1);
    for lane in [false, true] {
        let channel = |tls| -> Channel {
            let e =
                twill_client::endpoint(&url, Duration::from_secs(2), Some(tls)).expect("endpoint");
            if lane {
                e.connect_with_connector_lazy(twill_controller::listener::PeerConnector)
            } else {
                e.connect_lazy()
            }
        };
        let raft = |tls| RaftClient::new(channel(tls));
        let junk = || pb::RaftPayload {
            data: vec![0xff; 16],
        };
        let node = credentials(&Identity::node("n1"), Duration::from_secs(3600));
        for call in ["vote", "append_entries", "install_snapshot"] {
            let mut c = raft(node.client_tls());
            let r = match call {
                "vote" => c.vote(junk()).await,
                "append_entries" => c.append_entries(junk()).await,
                _ => c.install_snapshot(junk()).await,
            };
            let s = r.expect_err("a node may not speak Raft");
            assert_eq!(
                s.code(),
                Code::PermissionDenied,
                "lane {lane}, {call}: {}",
                s.message()
            );
        }
        let s = raft(admin_tls())
            .vote(junk())
            .await
            .expect_err("nor may an admin");
        assert_eq!(s.code(), Code::PermissionDenied, "lane {lane}");
        let s = raft(twill_pki::credentials::ca_only_tls(
            &twill_tests::pki().ca.cert_pem,
        ))
        .vote(junk())
        .await
        .expect_err("nor anyone without a certificate");
        assert_eq!(s.code(), Code::Unauthenticated, "lane {lane}");
        // A member gets past the check to the message itself (here refused as undecodable).
        let member = credentials(&Identity::member(7), Duration::from_secs(3600));
        let s = raft(member.client_tls())
            .vote(junk())
            .await
            .expect_err("junk");
        assert_eq!(
            s.code(),
            Code::InvalidArgument,
            "lane {lane}: {}",
            s.message()
        );
        // The controller's own API is not on the Raft lane, not even for the admin.
        let r = twill_proto::v1::controller_client::ControllerClient::new(channel(admin_tls()))
            .status(pb::StatusRequest::default())
            .await;
        if lane {
            let s = r.expect_err("the Raft lane serves only Raft");
            assert_eq!(s.code(), Code::Unimplemented, "{}", s.message());
        } else {
            r.expect("the admin's status on the main server");
        }
    }
    cl.shutdown().await;
}

async fn token(admin: &Client, uses: u32, bound: &str, ttl_ms: u64) -> pb::CreateTokenResponse {
    admin
        .create_token(pb::CreateTokenRequest {
            uses,
            bound_to: bound.into(),
            ttl_ms,
            ..Default::default()
        })
        .await
        .expect("create token")
}

fn node(name: &str) -> JoinAs {
    JoinAs {
        name: name.into(),
        member: false,
        hosts: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_issue_node_certificates_and_refuse_each_misuse() {
    let cl = Cluster::start(3).await.expect("cluster");
    let admin = cl.client();
    let urls = cl.urls();
    let once = token(&admin, 1, "", 0).await;
    assert_eq!(once.ca_hash, twill_tests::pki().ca.hash().expect("hash"));

    // Through a follower as well as the leader: every member answers a join.
    let leader = cl
        .wait_leader(Duration::from_secs(5))
        .await
        .expect("leader");
    let follower = cl.url(if leader == 1 { 2 } else { 1 });
    let creds = certs::join(&[follower], &once.token, &once.ca_hash, &node("n1"))
        .await
        .expect("join");
    assert_eq!(creds.identity().expect("identity"), Identity::node("n1"));
    let n1 = client_as(&cl, Some(&creds), true);
    n1.acquire(acq("n1", "192.0.2.11"))
        .await
        .expect("the new node takes its lease");

    let e = certs::join(&urls, &once.token, &once.ca_hash, &node("n2"))
        .await
        .expect_err("used up");
    assert!(e.to_string().contains("used up"), "{e}");

    let bound = token(&admin, 0, "n3", 0).await;
    let e = certs::join(&urls, &bound.token, &bound.ca_hash, &node("n4"))
        .await
        .expect_err("bound to n3");
    assert!(e.to_string().contains("bound to \"n3\""), "{e}");
    certs::join(&urls, &bound.token, &bound.ca_hash, &node("n3"))
        .await
        .expect("n3 joins with its own token");

    let revoked = token(&admin, 0, "", 0).await;
    let id = revoked.token.split('.').next().expect("id").to_string();
    admin.revoke_token(&id).await.expect("revoke");
    let e = certs::join(&urls, &revoked.token, &revoked.ca_hash, &node("n5"))
        .await
        .expect_err("revoked");
    assert!(e.to_string().contains("was revoked"), "{e}");

    let short = token(&admin, 0, "", 1000).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = certs::join(&urls, &short.token, &short.ca_hash, &node("n6"))
        .await
        .expect_err("expired");
    assert!(e.to_string().contains("expired"), "{e}");

    let good = token(&admin, 0, "", 0).await;
    let mut wrong_secret = good.token.clone();
    wrong_secret.replace_range(
        7..9,
        if &good.token[7..9] == "aa" {
            "bb"
        } else {
            "aa"
        },
    );
    let e = certs::join(&urls, &wrong_secret, &good.ca_hash, &node("n7"))
        .await
        .expect_err("wrong secret");
    assert!(e.to_string().contains("secret does not match"), "{e}");

    // A node that pins another CA never sends its token.
    let other = Ca::generate("other").expect("ca").hash().expect("hash");
    let e = certs::join(&urls, &good.token, &other, &node("n8"))
        .await
        .expect_err("wrong CA hash");
    assert!(
        e.to_string().contains("is not a member of the cluster"),
        "{e}"
    );

    // Guessing writes nothing: wrong secrets and unknown ids are refused before any proposal.
    let log = || async {
        let mut v = Vec::new();
        for id in cl.addrs.keys() {
            let s = ControllerClient::new(cl.channel(*id))
                .status(pb::StatusRequest {})
                .await
                .expect("status")
                .into_inner();
            v.push(s.last_log_index);
        }
        v
    };
    // A leader elected meanwhile writes entries of its own: then the guesses are made again.
    twill_tests::again_if_elected(&cl, || async {
        let before = log().await;
        for guess in [wrong_secret.as_str(), "zzzzzz.0123456789abcdef"] {
            for _ in 0..5 {
                assert!(certs::join(&urls, guess, &good.ca_hash, &node("n9"))
                    .await
                    .is_err());
            }
        }
        assert_eq!(log().await, before, "a guessed token reached the Raft log");
    })
    .await;

    let list = admin.list_tokens().await.expect("list").tokens;
    let used = list
        .iter()
        .find(|t| t.id == once.token[..6])
        .expect("listed");
    assert_eq!((used.used, used.uses_left, used.limited), (1, 0, true));
    assert!(list.iter().any(|t| t.id == id && t.revoked));
    let shown = format!("{list:?}");
    assert!(!shown.contains(&good.token[7..]), "a secret is listed");
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_passwords_reach_only_the_nodes_that_use_them() {
    let cl = Cluster::start(2).await.expect("cluster");
    let admin = cl.client();
    let peer = |addr: &str, node: &str, key: &str| pb::BgpPeer {
        address: addr.into(),
        asn: 64500,
        password: key.into(),
        node: node.into(),
    };
    let mut cfg = admin
        .get_config()
        .await
        .expect("config")
        .config
        .expect("set");
    cfg.backend = Some(pb::Backend {
        kind: Some(pb::backend::Kind::Bgp(pb::BgpBackend {
            asn: 64512,
            peers: vec![
                peer("192.0.2.201", "", "all-key"),
                peer("192.0.2.202", "node-a", "a-key"),
                peer("192.0.2.203", "node-b", "b-key"),
            ],
            ..Default::default()
        })),
    });
    admin.set_config(cfg).await.expect("set bgp");
    let keys = |c: Option<pb::NetworkConfig>| -> Vec<String> {
        match c.and_then(|c| c.backend).and_then(|b| b.kind) {
            Some(pb::backend::Kind::Bgp(b)) => b.peers.into_iter().map(|p| p.password).collect(),
            other => panic!("bgp expected, got {other:?}"),
        }
    };
    let a_creds = credentials(&Identity::node("node-a"), Duration::from_secs(3600));
    // Each member answers, the follower through the leader: redaction holds on both paths.
    for id in [1, 2] {
        let ch = twill_client::channel(
            &cl.url(id),
            Duration::from_secs(2),
            Some(a_creds.client_tls()),
        )
        .expect("channel");
        let mut raw = ControllerClient::new(ch);
        let got = raw
            .get_config(pb::GetConfigRequest {})
            .await
            .expect("node reads config")
            .into_inner();
        assert_eq!(
            keys(got.config),
            vec!["all-key", "a-key", ""],
            "member {id}"
        );
        let mut w = raw
            .watch(pb::WatchRequest {
                start_revision: 0,
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner();
        let m = w.message().await.expect("snapshot").expect("open");
        match m.msg {
            Some(pb::watch_response::Msg::Snapshot(s)) => {
                assert_eq!(keys(s.config), vec!["all-key", "a-key", ""], "member {id}")
            }
            other => panic!("snapshot expected, got {other:?}"),
        }
    }
    let full = admin.get_config().await.expect("config");
    assert_eq!(keys(full.config), vec!["all-key", "a-key", "b-key"]);
    cl.shutdown().await;
}

/// A node's certificate is renewed before it expires while the node keeps its lease and its
/// watch: the watch opened before the first renewal still delivers events after the third.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_keeps_the_lease_and_the_watch() {
    let cl = Cluster::start_with(1, |o| o.node_cert_ttl = Duration::from_secs(3))
        .await
        .expect("cluster");
    let admin = cl.client();
    let t = token(&admin, 1, "rotor", 0).await;
    let creds = certs::join(&cl.urls(), &t.token, &t.ca_hash, &node("rotor"))
        .await
        .expect("join");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("node.pem");
    creds.save(&file).expect("save");
    let first_expiry = creds.not_after().expect("expiry");
    let client = std::sync::Arc::new(client_as(&cl, Some(&creds), true));
    let renewer = tokio::spawn(certs::keep_renewed(
        client.clone(),
        creds.clone(),
        Some(file.clone()),
    ));
    let lease = client
        .acquire(acq("rotor", "192.0.2.50"))
        .await
        .expect("acquire")
        .lease
        .expect("lease");
    let mut watch = client.watch(0).await.expect("watch");
    watch.message().await.expect("snapshot").expect("open");

    // Ten seconds: over three lifetimes of a 3 s certificate.
    let mut renewals = 0;
    let mut seen_events = 0;
    let mut last_expiry = first_expiry;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = client
            .renew("rotor", lease.create_revision)
            .await
            .expect("every renewal succeeds")
            .lease
            .expect("lease");
        assert_eq!(
            r.create_revision, lease.create_revision,
            "the lease was lost"
        );
        admin
            .acquire(acq(&format!("other-{i}"), "192.0.2.60"))
            .await
            .expect("another node joins");
        // The watch opened with the first certificate goes on.
        loop {
            let m = tokio::time::timeout(Duration::from_secs(3), watch.message())
                .await
                .expect("the watch delivers")
                .expect("the watch does not fail")
                .expect("the watch stays open");
            if let Some(pb::watch_response::Msg::Event(e)) = m.msg {
                if e.lease.is_some_and(|l| l.node == format!("other-{i}")) {
                    seen_events += 1;
                    break;
                }
            }
        }
        let saved = Credentials::load(&file).expect("saved");
        let expiry = saved.not_after().expect("expiry");
        if expiry > last_expiry {
            renewals += 1;
            last_expiry = expiry;
        }
    }
    assert!(renewals >= 3, "only {renewals} renewals in 10 s");
    assert_eq!(seen_events, 20);
    assert!(
        last_expiry > first_expiry + time::Duration::seconds(5),
        "the node now holds a certificate issued long after its first expired"
    );
    renewer.abort();
    cl.shutdown().await;
}

/// A member added later gets its certificate with a member token, then serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_with_a_member_token_and_serves() {
    let cl = Cluster::start(1).await.expect("cluster");
    let admin = cl.client();
    admin
        .acquire(acq("before", "192.0.2.1"))
        .await
        .expect("acquire");
    let t = admin
        .create_token(pb::CreateTokenRequest {
            member: true,
            bound_to: "2".into(),
            uses: 1,
            ..Default::default()
        })
        .await
        .expect("member token");
    // A node token does not make a member, nor a member token a node.
    let e = certs::join(&cl.urls(), &t.token, &t.ca_hash, &node("sneaky"))
        .await
        .expect_err("kind");
    assert!(e.to_string().contains("member token"), "{e}");
    let creds = certs::join(
        &cl.urls(),
        &t.token,
        &t.ca_hash,
        &JoinAs {
            name: "2".into(),
            member: true,
            hosts: vec!["127.0.0.1".into()],
        },
    )
    .await
    .expect("member join");
    assert_eq!(creds.identity().expect("identity"), Identity::member(2));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut o = twill_tests::test_options(2, cl.dir.path().join("m2"), addr);
    o.join = true;
    o.tls = Some(creds);
    o.ca = None;
    let joiner = twill_controller::node::start_on(o, listener)
        .await
        .expect("start the new member");
    let url = format!("https://{addr}");
    let r = admin.add_member(2, &url).await.expect("add member");
    assert!(
        r.members.iter().any(|m| m.id == 2 && m.voter),
        "{:?}",
        r.members
    );
    // It serves: a read through it is answered, and it holds the CA to sign with.
    let via_new = Client::with_options(
        [url.as_str()],
        ClientOptions {
            tls: Some(admin_tls()),
            ..Default::default()
        },
    )
    .expect("client");
    let leases = via_new
        .list_leases()
        .await
        .expect("read through the new member");
    assert!(leases.leases.iter().any(|l| l.node == "before"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while joiner.member.sm.read().alloc.trust().ca().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the CA never reached the new member"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    joiner.shutdown().await;
    cl.shutdown().await;
}

/// A revoked node's certificates stop working at once, renewals included; a join with a new
/// token gives it one that works, and the old one stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_refused_until_it_joins_again() {
    let cl = Cluster::start(3).await.expect("cluster");
    let admin = cl.client();
    let urls = cl.urls();
    let t = token(&admin, 0, "", 0).await;
    let old = certs::join(&urls, &t.token, &t.ca_hash, &node("stolen"))
        .await
        .expect("join");
    let c = client_as(&cl, Some(&old), true);
    c.acquire(acq("stolen", "192.0.2.31"))
        .await
        .expect("acquire");
    admin.revoke_node("stolen").await.expect("revoke node");
    // Every member refuses it once the revocation is applied there.
    for id in cl.addrs.keys() {
        let ch =
            twill_client::channel(&cl.url(*id), Duration::from_secs(2), Some(old.client_tls()))
                .expect("channel");
        let mut raw = ControllerClient::new(ch);
        let mut refused = None;
        for _ in 0..50 {
            match raw.list_leases(pb::ListLeasesRequest::default()).await {
                Err(s) => {
                    refused = Some(s);
                    break;
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let s = refused.expect("the revoked certificate is refused");
        assert_eq!(
            s.code(),
            Code::Unauthenticated,
            "member {id}: {}",
            s.message()
        );
        assert!(s.message().contains("was revoked"), "{}", s.message());
    }
    assert_eq!(code(c.renew("stolen", 0).await).0, Code::Unauthenticated);
    let e = certs::renew(&c, &old).await.expect_err("no renewal either");
    assert!(e.to_string().contains("revoked"), "{e}");
    // The rightful node joins again and carries on; the old certificate stays refused.
    let t2 = token(&admin, 1, "stolen", 0).await;
    let fresh = certs::join(&urls, &t2.token, &t2.ca_hash, &node("stolen"))
        .await
        .expect("join again");
    let c2 = client_as(&cl, Some(&fresh), true);
    c2.renew("stolen", 0)
        .await
        .expect("the new certificate works");
    certs::renew(&c2, &fresh).await.expect("and renews");
    assert_eq!(code(c.renew("stolen", 0).await).0, Code::Unauthenticated);
    // Only an admin revokes.
    assert_eq!(
        code(c2.revoke_node("other").await).0,
        Code::PermissionDenied
    );
    cl.shutdown().await;
}
