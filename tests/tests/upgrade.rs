//! Restarting the agent (a new binary, a configuration change, a crash) leaves the dataplane
//! in place: pod traffic between nodes keeps flowing, and nothing twill made is removed while
//! no agent runs or when the next one takes over.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use twill_sandbox::Topology;
use twill_tests::netns::{agent_http_get, gw_addr, root_or_skip, wait_until};
use twill_tests::twill_binary;

fn spawn_in(ns: &str, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a monitor")
}

fn output_of(children: Vec<Child>) -> String {
    let mut seen = String::new();
    for mut c in children {
        let _ = c.kill();
        let out = c.wait_with_output().expect("child output");
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    seen
}

/// A copy of the twill binary under `dir`, standing for the next release: another file (no
/// older release is at hand to build here), so a process can be seen to run it.
fn next_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let to = dir.join("twill-next");
    std::fs::copy(twill_binary().expect("twill"), &to).expect("copy the binary");
    to
}

#[test]
fn restarting_the_agent_removes_nothing_and_pods_keep_talking() {
    if !root_or_skip("restarting_the_agent_removes_nothing_and_pods_keep_talking") {
        return;
    }
    let mut t = Topology::new("upg", 2, &twill_binary().expect("twill")).expect("topology");
    t.agent_extra = vec!["--metrics-addr".into(), "127.0.0.1:9421".into()];
    let subnets = t
        .start_nodes_with_pod_bridges(&["--backend", "vxlan"])
        .expect("nodes");
    let ns = t.nodes[0].ns.clone();
    let ready = |ns: &str| agent_http_get(ns, "/readyz").starts_with("HTTP/1.1 200");
    wait_until("node1 ready", Duration::from_secs(30), || ready(&ns));
    wait_until("masquerade table", Duration::from_secs(15), || {
        Command::new("ip")
            .args([
                "netns", "exec", &ns, "nft", "list", "table", "inet", "twill",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let (gw1, gw2) = (
        gw_addr(&subnets[0]).to_string(),
        gw_addr(&subnets[1]).to_string(),
    );
    // Node1 being ready says nothing of node2's route back: wait for both ways.
    wait_until(
        "pod networks reach each other",
        Duration::from_secs(20),
        || t.ping(0, &gw1, &gw2),
    );

    // Everything that could be taken away: links, routes, neighbours, rules, FDB entries and
    // nftables objects, watched on node1 while its agent goes away and comes back.
    let monitors = vec![
        spawn_in(&ns, &["ip", "monitor", "link", "route", "neigh", "rule"]),
        spawn_in(&ns, &["bridge", "monitor", "fdb"]),
        spawn_in(&ns, &["nft", "monitor"]),
    ];
    // Pod traffic across the restart: 10 packets a second from node1's pod network to
    // node2's, counted by ping itself.
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &ns, "ping", "-q", "-i", "0.1", "-w", "12", "-I", &gw1, &gw2,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping");
    std::thread::sleep(Duration::from_secs(1));

    // A graceful stop (SIGTERM, as systemd and the kubelet stop it), a pause with no agent at
    // all, a start; then a crash (SIGKILL) and another start.
    let pid = t.nodes[0].agent.as_ref().expect("agent").id();
    let term = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    if let Some(mut c) = t.nodes[0].agent.take() {
        let _ = c.wait();
    }
    std::thread::sleep(Duration::from_secs(2));
    // The binary is replaced while no agent runs, as a package upgrade does it: the next
    // agent runs from another file.
    let next = next_binary(&t.dir);
    t.set_binary(&next);
    t.start_agent(0).expect("agent again");
    wait_until("ready after a restart", Duration::from_secs(30), || {
        ready(&ns)
    });
    let pid = t.nodes[0].agent.as_ref().expect("agent").id();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).expect("the agent's executable"),
        next,
        "the agent now runs the replaced binary"
    );
    t.stop_agent(0);
    t.start_agent(0).expect("agent after a crash");
    wait_until("ready after a crash", Duration::from_secs(30), || {
        ready(&ns)
    });
    std::thread::sleep(Duration::from_secs(2));

    let out = ping.wait_with_output().expect("ping result");
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    let seen = output_of(monitors);
    let removed: Vec<&str> = seen
        .lines()
        .filter(|l| l.starts_with("Deleted") || l.starts_with("delete"))
        .collect();
    assert!(
        removed.is_empty(),
        "removed during the restarts: {removed:#?}\n(all events: {seen})"
    );
    assert!(
        summary.contains(" 0% packet loss"),
        "pod traffic lost packets across the restarts: {summary}"
    );
    assert!(t.ping(0, &gw1, &gw2), "and still flows");
}

/// A rolling restart of a three-member controller under writes (as an upgrade does it: one
/// member at a time, each back and caught up before the next): writes are acknowledged while
/// each member is down, and every acknowledged lease is there at the end, on every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_members_keeps_a_quorum_and_every_lease() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut cl = twill_tests::Cluster::start(3).await.expect("cluster");
    cl.wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let acked = twill_tests::Acked::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = twill_tests::spawn_acquirers(
        (0..4).map(|_| cl.client()).collect(),
        acked.clone(),
        stop.clone(),
        "a write is acknowledged across the rolling restart",
    );
    let count = || acked.lock().unwrap_or_else(|p| p.into_inner()).len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in 1..=3 {
        cl.stop(id).await;
        // The two others keep a quorum: writes go on (after an election, when the leader was
        // the one stopped).
        let (down, since) = (count(), std::time::Instant::now());
        while count() < down + 50 {
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "only {} writes acknowledged in 15 s while member {id} was down",
                count() - down
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "member {id} down: 50 writes acknowledged in {:?}",
            since.elapsed()
        );
        cl.restart(id).await.expect("restart");
        // Back, and caught up with what the others applied, before the next one goes.
        let index = cl.applied_max();
        cl.wait_applied(index, Duration::from_secs(30))
            .await
            .expect("caught up");
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let index = cl.applied_max();
    cl.wait_applied(index, Duration::from_secs(30))
        .await
        .expect("all caught up");
    for id in 1..=3 {
        let lost = twill_tests::missing_acked(&cl.client_of(id), &acked)
            .await
            .expect("list");
        assert!(
            lost.is_empty(),
            "member {id} lacks {} acknowledged leases: {lost:?}",
            lost.len()
        );
    }
    eprintln!(
        "{} leases acknowledged across the rolling restart",
        acked.len()
    );
    cl.shutdown().await;
}

/// Mid-upgrade, a member of an older release (here member 3, telling the leader it reads log
/// format 1) could not apply `AcquireAs`: the leader must not write it. A lease asked for with
/// an instance is then taken in the older form, on every member; once member 3 runs the newer
/// release, the instance is recorded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_no_command_an_older_member_cannot_read() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    let member3 = Arc::new(AtomicU32::new(1));
    let format = member3.clone();
    let mut cl = twill_tests::Cluster::start_with(3, move |o| {
        if o.id == 3 {
            o.log_format = format.load(Ordering::SeqCst);
        }
    })
    .await
    .expect("cluster");
    // An older leader writes nothing new anyway (it does not know how); the case under test
    // is a newer leader with an older follower.
    lead_elsewhere(&mut cl, 3).await;
    let acquire = |c: twill_client::Client, node: &'static str, instance: &'static str| async move {
        c.acquire(twill_proto::v1::AcquireRequest {
            node: node.into(),
            public_ip: "192.0.2.7".into(),
            instance: instance.into(),
            ..Default::default()
        })
        .await
        .expect("acquire")
    };
    let recorded = |cl: &twill_tests::Cluster, node: &str| -> Vec<Option<String>> {
        cl.members
            .values()
            .map(|r| r.member.sm.read().alloc.instances().get(node).cloned())
            .collect()
    };

    acquire(cl.client(), "old-window", "a1").await;
    let index = cl.applied_max();
    cl.wait_applied(index, Duration::from_secs(10))
        .await
        .expect("applied everywhere");
    assert_eq!(
        recorded(&cl, "old-window"),
        vec![None, None, None],
        "with member 3 on format 1 the lease is taken in the older form"
    );
    let downgraded: u64 = cl
        .members
        .values()
        .map(|r| r.member.metrics.older_member_acquires.get())
        .sum();
    assert_eq!(downgraded, 1, "and the leader counted it");

    // Member 3 upgraded: stopped, started again reading format 2.
    member3.store(twill_controller::allocator::LOG_FORMAT, Ordering::SeqCst);
    cl.stop(3).await;
    cl.restart(3).await.expect("member 3 on the newer release");
    let index = cl.applied_max();
    cl.wait_applied(index, Duration::from_secs(20))
        .await
        .expect("member 3 caught up");
    // The leader learns it from member 3's next answer (a heartbeat).
    let learnt = std::time::Instant::now();
    loop {
        let leader = cl
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        let told = cl
            .members
            .iter()
            .filter(|(id, _)| **id != leader)
            .all(|(id, _)| {
                cl.members[&leader].member.formats.of(*id)
                    == Some(twill_controller::allocator::LOG_FORMAT)
            });
        if told {
            break;
        }
        assert!(
            learnt.elapsed() < Duration::from_secs(10),
            "the leader never heard that member 3 reads format 2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    acquire(cl.client(), "new-window", "b2").await;
    let index = cl.applied_max();
    cl.wait_applied(index, Duration::from_secs(10))
        .await
        .expect("applied everywhere");
    assert_eq!(
        recorded(&cl, "new-window"),
        vec![Some("b2".to_string()); 3],
        "every member reads format 2 now: the instance is recorded everywhere"
    );
    cl.shutdown().await;
}

/// Each `twill controller` process of three replaced in turn by another binary (SIGTERM, start
/// from its data directory with the new file) while four clients write: writes go on, each
/// member catches up before the next is replaced, and every acknowledged lease is on every
/// member at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replacing_each_member_binary_under_writes_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use twill_client::{Client, ClientOptions};
    use twill_tests::procs::TwillProcs;

    let dir = tempfile::tempdir().expect("dir");
    let bin = twill_binary().expect("twill");
    let mut procs = TwillProcs::start_with(
        &bin,
        3,
        dir.path(),
        &["--network", "10.0.0.0/8", "--subnet-len", "24"],
        true,
    )
    .await
    .expect("three members");
    let client = |urls: Vec<String>| {
        let opts = ClientOptions {
            retry_for: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(5),
            tls: Some(twill_tests::admin_tls()),
            ..Default::default()
        };
        Client::with_options(urls, opts).expect("loopback URLs are valid")
    };
    let acked = twill_tests::Acked::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers = twill_tests::spawn_acquirers(
        (0..4).map(|_| client(procs.urls())).collect(),
        acked.clone(),
        stop.clone(),
        "a write is acknowledged across the upgrade",
    );
    let count = || acked.lock().unwrap_or_else(|p| p.into_inner()).len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let next = next_binary(dir.path());
    for i in 0..3 {
        let before = count();
        procs
            .replace(i, &next)
            .expect("replace the member's binary");
        let pid = procs.pid(i).expect("running");
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/exe")).expect("the member's executable"),
            next,
            "member {} runs the new binary",
            i + 1
        );
        procs
            .wait_caught_up(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| {
                panic!("member {} back and caught up: {e}\n{}", i + 1, procs.log(i))
            });
        let since = std::time::Instant::now();
        while count() < before + 50 {
            assert!(
                since.elapsed() < Duration::from_secs(15),
                "writes stopped after member {} was replaced",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "member {} replaced: {} writes acknowledged meanwhile",
            i + 1,
            count() - before
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    procs
        .wait_caught_up(Duration::from_secs(30))
        .await
        .expect("all caught up");
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (i, url) in procs.urls().into_iter().enumerate() {
        let lost = twill_tests::missing_acked(&client(vec![url]), &acked)
            .await
            .expect("list");
        assert!(
            lost.is_empty(),
            "member {} lacks {} acknowledged leases: {lost:?}",
            i + 1,
            lost.len()
        );
    }
    eprintln!("{} leases acknowledged across the upgrade", acked.len());
}

/// A member of an older release has no Raft lane: it takes the preface a newer member opens
/// its Raft connections with for a broken TLS handshake. The newer members find that out on
/// their first call and reach it on its main server, as a client would, so a newer leader
/// still replicates to it; once it restarts on the newer release it is reached either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_members_reach_an_older_member_that_has_no_raft_lane() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let older = Arc::new(AtomicBool::new(true));
    let is_older = older.clone();
    let ports: Vec<u16> = (0..3)
        .map(|_| twill_tests::free_port().expect("port"))
        .collect();
    let metrics_ports = ports.clone();
    let mut cl = twill_tests::Cluster::start_with(3, move |o| {
        if o.id == 3 {
            o.peer_lane = !is_older.load(Ordering::SeqCst);
        }
        o.metrics_listen = Some(([127, 0, 0, 1], metrics_ports[o.id as usize - 1]).into());
        // A quick restart can go unnoticed by the leader's calls; the lane is tried again
        // after this time.
        o.lane_reprobe = Duration::from_millis(300);
    })
    .await
    .expect("cluster");
    // The case under test is a newer leader calling the older member.
    lead_elsewhere(&mut cl, 3).await;
    let write = |cl: &twill_tests::Cluster, n: u32| {
        let c = cl.client();
        async move {
            for i in 0..n {
                c.acquire(twill_proto::v1::AcquireRequest {
                    node: format!("lane-{n}-{i}"),
                    public_ip: "192.0.2.9".into(),
                    ..Default::default()
                })
                .await
                .expect("acquire");
            }
        }
    };
    write(&cl, 20).await;
    let index = cl.applied_max();
    cl.wait_applied(index, Duration::from_secs(10))
        .await
        .expect("the older member has every write");
    // As the leader's metrics serve it.
    let way_to_3 = |leader: u64| {
        let port = ports[leader as usize - 1];
        async move {
            let text = tokio::task::spawn_blocking(move || twill_tests::scrape(port, "/metrics"))
                .await
                .expect("scrape");
            let scrape = twill_tests::parse_metrics(&text).expect("the scrape parses");
            scrape
                .samples
                .iter()
                .find(|s| {
                    s.metric == "twill_controller_raft_peer_plain"
                        && s.labels.get("peer") == Some("3")
                })
                .map(|s| match s.value {
                    prometheus_parse::Value::Gauge(v) => v,
                    _ => f64::NAN,
                })
        }
    };
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    assert_eq!(
        way_to_3(leader).await,
        Some(1.0),
        "the leader reaches the older member the plain way"
    );

    // Upgraded: stopped, started again with its Raft lane.
    older.store(false, Ordering::SeqCst);
    cl.stop(3).await;
    cl.restart(3).await.expect("member 3 on the newer release");
    write(&cl, 21).await;
    let index = cl.applied_max();
    cl.wait_applied(index, Duration::from_secs(20))
        .await
        .expect("member 3 caught up after its upgrade");
    let leases: Vec<usize> = cl
        .members
        .values()
        .map(|r| r.member.sm.read().alloc.leases().count())
        .collect();
    assert!(leases.iter().all(|n| *n >= 41), "{leases:?}");
    // Asked of whichever member leads at the time: only the leader serves the gauge.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let leader = cl
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        if leader == 3 {
            break;
        }
        let way = way_to_3(leader).await;
        if way == Some(0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upgraded member is still called the plain way: {way:?}"
        );
        write(&cl, 1).await;
    }
}

/// Restarts member `id` while it leads (up to five times), so that another one does.
async fn lead_elsewhere(cl: &mut twill_tests::Cluster, id: u64) {
    for _ in 0..5 {
        let leader = cl
            .wait_leader(Duration::from_secs(10))
            .await
            .expect("leader");
        if leader != id {
            return;
        }
        cl.stop(id).await;
        cl.wait_leader(Duration::from_secs(10))
            .await
            .expect("another leader");
        cl.restart(id).await.expect("member back");
    }
}
