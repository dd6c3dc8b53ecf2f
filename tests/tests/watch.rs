//! Watch streams: a snapshot first from revision 0, exact resumption from a retained revision,
//! a snapshot again when the revision is older than the retained history, progress when quiet.

use std::time::Duration;

use twill_client::Client;
use twill_client::Watch;
use twill_proto::v1 as pb;
use twill_proto::v1::watch_response::Msg;
use twill_tests::Cluster;

const HISTORY: usize = 20;

async fn cluster() -> Cluster {
    Cluster::start_with(1, |o| {
        o.watch_history = HISTORY;
        o.watch_progress = Duration::from_millis(300);
    })
    .await
    .expect("cluster starts")
}

async fn acquire(c: &Client, node: &str) -> u64 {
    let r = c
        .acquire(pb::AcquireRequest {
            node: node.into(),
            public_ip: "192.0.2.1".into(),
            ..Default::default()
        })
        .await
        .expect("acquire");
    r.revision
}

/// The next message that is not a progress note.
async fn next(s: &mut Watch) -> Msg {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("watch message within 10s")
            .expect("stream healthy")
            .expect("stream open");
        match m.msg.expect("message set") {
            Msg::Progress(_) => continue,
            other => return other,
        }
    }
}

async fn expect_events(s: &mut Watch, revs: std::ops::RangeInclusive<u64>) -> Vec<pb::LeaseEvent> {
    let mut got = Vec::new();
    for want in revs {
        match next(s).await {
            Msg::Event(e) => {
                assert_eq!(e.revision, want, "events out of order or with a gap");
                got.push(*e);
            }
            other => panic!("expected event {want}, got {other:?}"),
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_zero_snapshot_then_every_event() {
    let cl = cluster().await;
    let c = cl.client();
    for i in 0..5 {
        acquire(&c, &format!("n{i}")).await;
    }
    let mut s = c.watch(0).await.expect("watch");
    let snap = match next(&mut s).await {
        Msg::Snapshot(s) => s,
        other => panic!("expected a snapshot first, got {other:?}"),
    };
    assert_eq!(snap.leases.len(), 5);
    assert!(snap.config_present);
    let base = snap.revision;

    let r1 = acquire(&c, "n5").await;
    c.release("n0").await.expect("release");
    assert_eq!(r1, base + 1);
    let evs = expect_events(&mut s, base + 1..=base + 2).await;
    assert_eq!(evs[0].kind(), pb::EventKind::Put);
    assert_eq!(evs[0].lease.as_ref().map(|l| l.node.as_str()), Some("n5"));
    assert_eq!(evs[1].kind(), pb::EventKind::Delete);
    assert_eq!(evs[1].lease.as_ref().map(|l| l.node.as_str()), Some("n0"));
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_gives_exactly_the_events_after_the_revision() {
    let cl = cluster().await;
    let c = cl.client();
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(acquire(&c, &format!("n{i}")).await);
    }
    let resume = revs[4];
    let last = *revs.last().expect("ten revisions");
    let mut s = c.watch(resume).await.expect("watch");
    let evs = expect_events(&mut s, resume + 1..=last).await;
    let nodes: Vec<_> = evs
        .iter()
        .filter_map(|e| e.lease.as_ref())
        .map(|l| l.node.clone())
        .collect();
    assert_eq!(nodes, ["n5", "n6", "n7", "n8", "n9"]);
    // Nothing more until the next write, which then arrives as the next revision.
    let extra = acquire(&c, "late").await;
    assert_eq!(extra, last + 1);
    expect_events(&mut s, last + 1..=last + 1).await;
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_than_history_gives_a_snapshot_then_events() {
    let cl = cluster().await;
    let c = cl.client();
    let first = acquire(&c, "n0").await;
    for i in 1..(HISTORY * 2) {
        acquire(&c, &format!("n{i}")).await;
    }
    let mut s = c.watch(first).await.expect("watch");
    let snap = match next(&mut s).await {
        Msg::Snapshot(s) => s,
        other => panic!("a revision older than the history must give a snapshot, got {other:?}"),
    };
    assert_eq!(snap.leases.len(), HISTORY * 2);
    let r = acquire(&c, "after").await;
    assert_eq!(r, snap.revision + 1);
    expect_events(&mut s, r..=r).await;
    cl.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_stream_sends_progress_with_the_current_revision() {
    let cl = cluster().await;
    let c = cl.client();
    let rev = acquire(&c, "n0").await;
    let mut s = c.watch(rev).await.expect("watch");
    let m = tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .expect("progress within 5s")
        .expect("healthy")
        .expect("open");
    match m.msg {
        Some(Msg::Progress(p)) => assert_eq!(p.revision, rev),
        other => panic!("expected progress, got {other:?}"),
    }
    cl.shutdown().await;
}

/// Regression (found by the chaos suite, seed 1): a member cut off from the others, asked to
/// resume from a revision it had not reached, answered with a snapshot of its older state and
/// took the watcher back in time. Also: when the cut-off member was the leader, it named itself
/// in its "no quorum" answers, and clients kept coming back to it instead of the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_a_lagging_member_never_goes_back_in_time() {
    use std::sync::Arc;
    use twill_controller::network::Faults;
    let faults: Vec<Arc<Faults>> = (0..=3).map(|i| Arc::new(Faults::new(i))).collect();
    let f = faults.clone();
    let cl = Cluster::start_with(3, move |o| {
        o.watch_progress = Duration::from_millis(300);
        o.faults = Some(f[o.id as usize].clone());
    })
    .await
    .expect("cluster starts");
    // Member 3 is cut off both ways; 1 and 2 go on (electing a leader if 3 was it).
    faults[3].cut_off([1, 2]);
    faults[1].cut_off([3]);
    faults[2].cut_off([3]);
    let c = Client::with_options(
        cl.urls().into_iter().take(2),
        twill_client::ClientOptions {
            tls: Some(twill_tests::admin_tls()),
            ..Default::default()
        },
    )
    .expect("client");
    let mut rev = 0;
    for i in 0..5 {
        rev = acquire(&c, &format!("lag-{i}")).await;
    }
    let lagging = cl.client_of(3);
    let healer = {
        let faults = faults.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            faults.iter().for_each(|f| f.heal());
        })
    };
    let mut s = lagging.watch(rev).await.expect("watch");
    match tokio::time::timeout(Duration::from_secs(10), s.message()).await {
        Ok(Ok(Some(m))) => match m.msg {
            Some(Msg::Snapshot(snap)) => assert!(
                snap.revision >= rev,
                "snapshot at revision {} after the watcher saw {rev}",
                snap.revision
            ),
            Some(Msg::Progress(p)) => {
                assert!(p.revision >= rev, "progress went back to {}", p.revision)
            }
            _ => {}
        },
        // Refusing (so the watcher resumes elsewhere) is fine too.
        Ok(Ok(None)) | Ok(Err(_)) => {}
        Err(_) => panic!("no answer within 10 s"),
    }
    healer.await.expect("healer");
    cl.shutdown().await;
}

/// A watcher that stops reading is simply not polled once its window is full: writes and the
/// other watchers go on, and when it reads again it gets what it missed in order (as a snapshot
/// when the events are no longer retained), never a gap and never a step back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_holds_back_no_one_and_catches_up() {
    use std::collections::BTreeMap;
    use twill_proto::v1::controller_client::ControllerClient;
    const WRITES: usize = 600;
    let cl = cluster().await;
    let c = cl.client();
    // The stalled watcher on a connection of its own whose stream window (4 KiB) the events
    // fill many times over; the member may not buffer for it beyond that.
    let channel = tonic::transport::Endpoint::from_shared(cl.url(1))
        .expect("loopback URL")
        .tls_config(twill_tests::admin_tls())
        .expect("TLS config")
        .initial_stream_window_size(4096)
        .connect()
        .await
        .expect("connect");
    let mut stalled = ControllerClient::new(channel)
        .watch(pb::WatchRequest {
            start_revision: 0,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut reader = c.watch(0).await.expect("watch");
    let mut view: BTreeMap<String, String> = BTreeMap::new();
    let mut rev = 0;
    let snapshots = std::cell::Cell::new(0);
    // What the stalled watcher knows after each message: a snapshot (in chunks) replaces its
    // view, an event must be the next revision.
    let mut read_stalled = async |view: &mut BTreeMap<String, String>, rev: &mut u64| {
        let m = tokio::time::timeout(Duration::from_secs(10), stalled.message())
            .await
            .expect("watch message within 10s")
            .expect("stream healthy")
            .expect("stream open");
        match m.msg.expect("message set") {
            Msg::Snapshot(s) => {
                if s.revision != *rev || view.is_empty() {
                    view.clear();
                    snapshots.set(snapshots.get() + 1);
                }
                assert!(
                    s.revision >= *rev,
                    "snapshot at {} after {}",
                    s.revision,
                    *rev
                );
                *rev = s.revision;
                view.extend(s.leases.into_iter().map(|l| (l.node, l.subnet)));
                return s.more;
            }
            Msg::Event(e) => {
                assert_eq!(e.revision, *rev + 1, "an event out of order or after a gap");
                *rev = e.revision;
                let l = e.lease.clone().expect("event with its lease");
                match e.kind() {
                    pb::EventKind::Put => view.insert(l.node, l.subnet),
                    pb::EventKind::Delete => view.remove(&l.node),
                    _ => None,
                };
            }
            Msg::Progress(_) => {}
        }
        false
    };
    read_stalled(&mut view, &mut rev).await;
    let mut last = 0;
    for i in 0..WRITES {
        last = acquire(&c, &format!("n{i:04}")).await;
    }
    // The watcher that reads has everything while the other still reads nothing.
    let mut seen = 0;
    while seen < last {
        if let Msg::Event(e) = next(&mut reader).await {
            seen = e.revision;
        }
    }
    // A snapshot in chunks is read whole.
    let mut more = false;
    while rev < last || more {
        more = read_stalled(&mut view, &mut rev).await;
    }
    assert_eq!(
        view.len(),
        WRITES,
        "the stalled watcher's view after catching up"
    );
    assert!(view.contains_key("n0000") && view.contains_key(&format!("n{:04}", WRITES - 1)));
    // Its window held far fewer events than were written and the member kept only HISTORY
    // of them, so it must have been sent a second snapshot rather than a buffered backlog.
    let snapshots = snapshots.get();
    assert!(snapshots >= 2, "caught up through {snapshots} snapshot(s)");
    // And it goes on following.
    let r = acquire(&c, "after").await;
    while rev < r {
        read_stalled(&mut view, &mut rev).await;
    }
    assert!(view.contains_key("after"));
    cl.shutdown().await;
}

/// An agent's watch omits renewals: with N nodes renewing, sending each renewal to every
/// watcher is N² deliveries per TTL. It still gets every other change, and progress notes move
/// its revision past the renewals, so a resume neither asks for them nor needs a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_omits_renewals_gets_every_other_change_and_resumes_past_them() {
    let cl = cluster().await;
    let c = cl.client();
    acquire(&c, "n0").await;
    let start = acquire(&c, "n1").await;
    let n0 = c.renew("n0", 0).await.expect("renew").lease.expect("lease");
    let mut all = c.watch(start).await.expect("watch");
    let mut changes = c.watch_changes(start).await.expect("watch changes");

    // More renewals than the history keeps, then a new lease and a release.
    let renewals = HISTORY as u64 + 10;
    for _ in 0..renewals {
        c.renew("n0", n0.create_revision).await.expect("renew");
    }
    let joined = acquire(&c, "n2").await;
    let released = c.release("n1").await.expect("release").revision;

    // The full watch: the first renewal, every one of the later ones, then the two changes.
    let evs = expect_events(&mut all, start + 1..=released).await;
    let renewed = evs
        .iter()
        .filter(|e| e.lease.as_ref().is_some_and(|l| l.node == "n0"))
        .count() as u64;
    assert_eq!(renewed, renewals + 1, "the full watch has every renewal");

    // The watch of changes: exactly the join and the release (one revision apart), nothing
    // for n0.
    assert_eq!(released, joined + 1);
    let got: Vec<(pb::EventKind, String)> = expect_events(&mut changes, joined..=released)
        .await
        .into_iter()
        .map(|e| (e.kind(), e.lease.map(|l| l.node).unwrap_or_default()))
        .collect();
    assert_eq!(
        got,
        vec![
            (pb::EventKind::Put, "n2".to_string()),
            (pb::EventKind::Delete, "n1".to_string())
        ]
    );

    // Renewals after the last change: not sent, but the progress note is past them.
    let mut last = released;
    for _ in 0..renewals {
        last = c
            .renew("n0", n0.create_revision)
            .await
            .expect("renew")
            .revision;
    }
    let progressed = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), changes.message())
            .await
            .expect("a message within 5s")
            .expect("healthy")
            .expect("open");
        match m.msg {
            Some(Msg::Progress(p)) if p.revision == last => break p.revision,
            Some(Msg::Progress(p)) => assert!(p.revision <= last, "progress ahead: {p:?}"),
            other => panic!("a renewal reached a watch that omits them: {other:?}"),
        }
    };

    // Resuming from before all those renewals: the full watch's history no longer reaches
    // back, the changes' does, so no snapshot; from the progress note, nothing at all.
    let mut full_again = c.watch(released).await.expect("watch");
    assert!(
        matches!(next(&mut full_again).await, Msg::Snapshot(_)),
        "the full history was expected to have moved on"
    );
    let mut resumed = c.watch_changes(released).await.expect("watch changes");
    let mut from_progress = c.watch_changes(progressed).await.expect("watch changes");
    let after = acquire(&c, "n3").await;
    for s in [&mut resumed, &mut from_progress] {
        match next(s).await {
            Msg::Event(e) => assert_eq!(e.revision, after, "{e:?}"),
            other => panic!("expected only the new lease, got {other:?}"),
        }
    }
    cl.shutdown().await;
}

/// Any member serves a watch, so a client's watch does not follow its calls to the leader:
/// with every node's watch on the leader, the leader would carry every stream. Clients that
/// know all three members spread their watches over them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_spread_over_the_members_rather_than_follow_the_leader() {
    const NODES: usize = 30;
    let cl = Cluster::start_with(3, |o| o.watch_progress = Duration::from_millis(300))
        .await
        .expect("cluster starts");
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let mut watches = Vec::new();
    for i in 0..NODES {
        // A client per node, as each agent has, that has just written through the leader.
        let c = cl.client();
        let rev = acquire(&c, &format!("n{i}")).await;
        let mut w = c.watch_changes(rev).await.expect("watch");
        // The first progress note says the stream is being served.
        tokio::time::timeout(Duration::from_secs(10), w.message())
            .await
            .expect("a progress note")
            .expect("healthy")
            .expect("open");
        watches.push((c, w));
    }
    let served: Vec<(u64, i64)> = cl
        .members
        .iter()
        .map(|(id, r)| (*id, r.member.metrics.watchers_open()))
        .collect();
    let total: i64 = served.iter().map(|(_, n)| n).sum();
    assert_eq!(total, NODES as i64, "watch streams per member: {served:?}");
    let on_leader = served.iter().find(|(id, _)| *id == leader).map(|(_, n)| *n);
    assert!(
        on_leader < Some(NODES as i64),
        "every watch went to the leader {leader}: {served:?}"
    );
    let members_serving = served.iter().filter(|(_, n)| *n > 0).count();
    assert!(members_serving >= 2, "watch streams per member: {served:?}");
    drop(watches);
    cl.shutdown().await;
}

/// One watcher's record: each event with whether its member had applied it on receipt.
type Seen = Vec<(pb::LeaseEvent, bool)>;

/// Follows a watch until the lease of node `last` arrives, noting for each event whether
/// `member` had applied it yet.
async fn record(
    mut w: Watch,
    member: std::sync::Arc<twill_controller::node::Member>,
    last: String,
) -> Seen {
    let mut seen = Vec::new();
    loop {
        if let Msg::Event(e) = next(&mut w).await {
            let applied = member.sm.read().alloc.revision() >= e.revision;
            let done = e.lease.as_ref().is_some_and(|l| l.node == last);
            seen.push((*e, applied));
            if done {
                return seen;
            }
        }
    }
}

/// A follower learns that an entry is committed a round trip after its own log sync; the
/// leader's own stream has it sooner, and a follower passes it on. With the leader's Raft
/// messages held back (up to 300 ms each), a follower's watchers get each event before the
/// follower has applied it, and every watcher, on whichever member, gets the same events in
/// the same order: with renewals, and without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_pass_on_the_leaders_events_before_applying_them() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use twill_controller::network::Faults;
    let faults: BTreeMap<u64, Arc<Faults>> =
        (1..=3).map(|id| (id, Arc::new(Faults::new(id)))).collect();
    let f = faults.clone();
    let cl = Cluster::start_with(3, move |o| {
        // Delayed heartbeats must not look like a dead leader.
        o.election_min_ms = 2_000;
        o.election_max_ms = 4_000;
        o.watch_progress = Duration::from_millis(300);
        o.faults = Some(f[&o.id].clone());
    })
    .await
    .expect("cluster starts");
    // A leader elected meanwhile would add its promotion's events: then again, with new names.
    let attempt = std::sync::atomic::AtomicU32::new(0);
    twill_tests::again_if_elected(&cl, || {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        pass_on(&cl, &faults, format!("a{n}-"))
    })
    .await;
    cl.shutdown().await;
}

async fn pass_on(
    cl: &Cluster,
    faults: &std::collections::BTreeMap<u64, std::sync::Arc<twill_controller::network::Faults>>,
    prefix: String,
) {
    use std::collections::BTreeMap;
    faults.values().for_each(|f| f.heal());
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let writer = cl.client();
    acquire(&writer, &format!("{prefix}before")).await;
    // Every snapshot at the same revision.
    cl.wait_applied(cl.applied_max(), Duration::from_secs(10))
        .await
        .expect("applied everywhere");
    let ahead_before: BTreeMap<u64, u64> = cl
        .members
        .iter()
        .map(|(id, r)| (*id, r.member.metrics.events_ahead_total()))
        .collect();

    let last = format!("{prefix}last");
    let mut tasks = Vec::new();
    for (id, r) in &cl.members {
        let c = cl.client_of(*id);
        for changes_only in [false, true] {
            let w = if changes_only {
                c.watch_changes(0).await
            } else {
                c.watch(0).await
            }
            .expect("watch");
            let m = r.member.clone();
            tasks.push((*id, changes_only, tokio::spawn(record(w, m, last.clone()))));
        }
    }
    // Every stream has sent its snapshot, and every member has a feed from the leader.
    tokio::time::sleep(Duration::from_millis(500)).await;
    faults[&leader].degrade(0, Duration::from_millis(300));
    for i in 0..10 {
        let node = format!("{prefix}n{i}");
        acquire(&writer, &node).await;
        writer.renew(&node, 0).await.expect("renew");
        if i % 3 == 0 {
            writer.release(&node).await.expect("release");
        }
    }
    acquire(&writer, &last).await;
    faults[&leader].heal();

    let mut by_kind: BTreeMap<bool, Vec<(u64, Seen)>> = BTreeMap::new();
    for (id, changes_only, t) in tasks {
        let seen = t.await.expect("watcher task");
        by_kind.entry(changes_only).or_default().push((id, seen));
    }
    for (changes_only, watchers) in &by_kind {
        let on_leader: Vec<&pb::LeaseEvent> = watchers
            .iter()
            .find(|(id, _)| *id == leader)
            .expect("a watcher on the leader")
            .1
            .iter()
            .map(|(e, _)| e)
            .collect();
        // Ten acquisitions, four releases and the last one; ten renewals in the full stream.
        let expected = if *changes_only { 15 } else { 25 };
        assert_eq!(on_leader.len(), expected, "{on_leader:?}");
        for (id, seen) in watchers {
            let events: Vec<&pb::LeaseEvent> = seen.iter().map(|(e, _)| e).collect();
            assert_eq!(
                events, on_leader,
                "member {id}'s watcher (changes only: {changes_only}) saw other events than the leader's"
            );
            if *id != leader {
                let ahead = seen.iter().filter(|(_, applied)| !applied).count();
                assert!(
                    ahead > 0,
                    "member {id} (changes only: {changes_only}) applied every event before its watcher had it"
                );
            }
        }
    }
    let renewals = |seen: &Seen| {
        seen.iter()
            .filter(|(e, _)| {
                e.lease
                    .as_ref()
                    .is_some_and(|l| l.mod_revision != l.create_revision)
            })
            .count()
    };
    assert!(
        renewals(&by_kind[&false][0].1) >= 10,
        "renewals are in the full stream"
    );
    for (id, r) in &cl.members {
        let ahead = r.member.metrics.events_ahead_total() - ahead_before[id];
        if *id == leader {
            assert_eq!(ahead, 0, "the leader serves from what it applied");
        } else {
            assert!(ahead > 0, "member {id} counted no event sent ahead");
        }
    }
}

/// A feed costs the leader a stream and each write an event on it, so a follower holds one only
/// while it serves watchers of that kind, and lets it go once they have gone for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holds_a_feed_only_while_it_serves_watchers_of_its_kind() {
    let cl = Cluster::start_with(3, |o| {
        o.watch_progress = Duration::from_millis(300);
        o.watch_feed_idle = Duration::from_millis(500);
    })
    .await
    .expect("cluster starts");
    let leader = cl
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = *cl
        .members
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let served = || cl.members[&leader].member.metrics.feeds_served();
    let until = |want: i64, what: &'static str| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while served() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: the leader serves {} feeds, not {want}",
                served()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(served(), 0, "no watcher anywhere, no feed");

    let c = cl.client_of(follower);
    let changes = c.watch_changes(0).await.expect("watch");
    until(1, "a watcher of changes on a follower").await;
    let all = c.watch(0).await.expect("watch");
    until(2, "and one of every event").await;
    drop(changes);
    until(1, "the watcher of changes gone").await;
    drop(all);
    until(0, "both gone").await;
    cl.shutdown().await;
}
