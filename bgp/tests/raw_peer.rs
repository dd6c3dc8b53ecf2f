//! A scripted peer on a raw TCP socket, with every message written out by hand, against a
//! running speaker on loopback: a good UPDATE is taken; a malformed ORIGIN withdraws the
//! prefix and keeps the session (RFC 7606 treat-as-withdraw); a malformed ATOMIC_AGGREGATE is
//! dropped and the route kept (attribute discard); an attribute list that overruns the message
//! gets NOTIFICATION (3, 1) and the session is closed; the speaker accepts the peer again
//! afterwards. No root needed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use twill_bgp::rib::{Change, Peer};
use twill_bgp::speaker::{self, Control, PeerConfig, SpeakerConfig};

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// OPEN: version 4, AS 64512 (two octets, no capabilities), hold 90 s, id 10.0.0.2.
fn open() -> Vec<u8> {
    message(1, &[4, 0xfc, 0x00, 0, 90, 10, 0, 0, 2, 0])
}

/// OPEN with the graceful-restart capability for IPv4 unicast (forwarding kept), restart time
/// `time` seconds, R bit when `restarted`.
fn open_gr(time: u16, restarted: bool) -> Vec<u8> {
    open_gr_with(time, restarted, true)
}

/// [`open_gr`], with the F bit (forwarding kept through the restart) as given.
fn open_gr_with(time: u16, restarted: bool, forwarding: bool) -> Vec<u8> {
    let head = (if restarted { 0x8000 } else { 0 }) | time;
    let f = if forwarding { 0x80 } else { 0 };
    let [hi, lo] = head.to_be_bytes();
    message(
        1,
        &[
            4, 0xfc, 0x00, 0, 90, 10, 0, 0, 2, 10, // version … optional parameters length
            2, 8, // a capabilities parameter of 8 bytes
            64, 6, hi, lo, 0, 1, 1, f, // graceful restart: IPv4 unicast, F bit
        ],
    )
}

fn keepalive() -> Vec<u8> {
    message(4, &[])
}

/// UPDATE announcing 10.244.<third>.0/24 with the given path attributes.
fn update(attrs: &[u8], third: u8) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(&[24, 10, 244, third]);
    message(2, &b)
}

/// ORIGIN (value given), empty AS_PATH, NEXT_HOP 10.0.0.2, LOCAL_PREF 100.
fn attrs(origin: u8) -> Vec<u8> {
    vec![
        0x40, 1, 1, origin, //
        0x40, 2, 0, //
        0x40, 3, 4, 10, 0, 0, 2, //
        0x40, 5, 4, 0, 0, 0, 100,
    ]
}

/// The next whole message: its type and body.
async fn read_message(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 19];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("a message within 5 s")
        .expect("connection open");
    let len = u16::from_be_bytes([head[16], head[17]]) as usize;
    let mut body = vec![0u8; len - 19];
    s.read_exact(&mut body).await.expect("message body");
    (head[18], body)
}

/// Reads messages until one of `kind` arrives; returns its body. A NOTIFICATION on the way is
/// a failure unless it is what was asked for.
async fn expect(s: &mut TcpStream, kind: u8) -> Vec<u8> {
    loop {
        let (k, body) = read_message(s).await;
        if k == kind {
            return body;
        }
        assert_ne!(k, 3, "unexpected NOTIFICATION {body:?}");
    }
}

async fn next_change(c: &mut mpsc::Receiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .expect("a change within 5 s")
        .expect("speaker running")
}

fn prefix(third: u8) -> IpNet {
    format!("10.244.{third}.0/24").parse().expect("literal")
}

async fn connect(addr: SocketAddr) -> TcpStream {
    connect_with(addr, open()).await
}

async fn connect_with(addr: SocketAddr, open: Vec<u8>) -> TcpStream {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the speaker");
    s.write_all(&open).await.expect("send OPEN");
    expect(&mut s, 1).await;
    s.write_all(&keepalive()).await.expect("send KEEPALIVE");
    expect(&mut s, 4).await;
    s
}

/// A speaker on a free loopback port with 127.0.0.1 as its one, passive, peer.
fn start() -> (
    SocketAddr,
    mpsc::Receiver<Change>,
    mpsc::Sender<Control>,
    tokio::task::JoinHandle<()>,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    start_on(addr, 64)
}

/// As [`start`], on `addr`, with room for `room` unread changes.
fn start_on(
    addr: SocketAddr,
    room: usize,
) -> (
    SocketAddr,
    mpsc::Receiver<Change>,
    mpsc::Sender<Control>,
    tokio::task::JoinHandle<()>,
) {
    start_with(addr, room, Default::default(), None)
}

/// As [`start_on`], keeping `status` current, with the peer's prefix limit.
fn start_with(
    addr: SocketAddr,
    room: usize,
    status: speaker::Status,
    max_prefixes: Option<u32>,
) -> (
    SocketAddr,
    mpsc::Receiver<Change>,
    mpsc::Sender<Control>,
    tokio::task::JoinHandle<()>,
) {
    start_cfg(addr, room, status, |c| {
        c.peers[0].max_prefixes = max_prefixes
    })
}

/// As [`start_with`], with the configuration changed by `adjust`.
fn start_cfg(
    addr: SocketAddr,
    room: usize,
    status: speaker::Status,
    adjust: impl FnOnce(&mut SpeakerConfig),
) -> (
    SocketAddr,
    mpsc::Receiver<Change>,
    mpsc::Sender<Control>,
    tokio::task::JoinHandle<()>,
) {
    let cfg = SpeakerConfig {
        local_as: 64512,
        router_id: "10.0.0.1".parse().expect("id"),
        cluster_id: None,
        local_address: "127.0.0.1".parse().expect("addr"),
        local_address_v6: None,
        peers: vec![PeerConfig {
            passive: true,
            ..PeerConfig::new(
                Peer {
                    addr: IpAddr::from([127, 0, 0, 1]),
                    router_id: "10.0.0.2".parse().expect("id"),
                    asn: 64512,
                    rr_client: false,
                },
                90,
            )
        }],
        originate: vec![],
        advertise: vec![],
        listen: Some(addr),
        import: Default::default(),
        graceful_restart: None,
    };
    let mut cfg = cfg;
    adjust(&mut cfg);
    let (changes_tx, changes) = mpsc::channel(room);
    let (control, control_rx) = mpsc::channel(4);
    let sp = tokio::spawn(speaker::run(cfg, changes_tx, control_rx, status));
    (addr, changes, control, sp)
}

#[tokio::test]
async fn malformed_updates_are_handled_as_rfc_7606_says() {
    let (addr, mut changes, control, sp) = start();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut s = connect(addr).await;
    // A good UPDATE is taken.
    s.write_all(&update(&attrs(0), 9)).await.expect("send");
    match next_change(&mut changes).await {
        Change::Best(p, path) => {
            assert_eq!(p, prefix(9));
            assert_eq!(path.next_hop.to_string(), "10.0.0.2");
        }
        other => panic!("expected 10.244.9.0/24 taken, got {other:?}"),
    }
    // ORIGIN 7 does not exist: the UPDATE withdraws what it carries, the session stays.
    s.write_all(&update(&attrs(7), 9)).await.expect("send");
    assert_eq!(next_change(&mut changes).await, Change::Gone(prefix(9)));
    // An ATOMIC_AGGREGATE with a value: the attribute is dropped, the route taken.
    let mut a = attrs(0);
    a.extend_from_slice(&[0x40, 6, 1, 0]);
    s.write_all(&update(&a, 10)).await.expect("send");
    match next_change(&mut changes).await {
        Change::Best(p, path) => {
            assert_eq!(p, prefix(10));
            assert!(
                !path.attrs.atomic_aggregate,
                "the malformed attribute was kept"
            );
        }
        other => panic!("expected 10.244.10.0/24 taken, got {other:?}"),
    }
    // An attribute running past the attribute field (AS_PATH claims 40 bytes): nothing after
    // it can be trusted, so the UPDATE is a withdrawal, and still no reset.
    let mut overrun = attrs(0);
    overrun[6] = 40;
    s.write_all(&update(&overrun, 10)).await.expect("send");
    assert_eq!(next_change(&mut changes).await, Change::Gone(prefix(10)));
    s.write_all(&update(&attrs(0), 11)).await.expect("send");
    assert!(matches!(next_change(&mut changes).await, Change::Best(p, _) if p == prefix(11)));

    // A total attribute length past the end of the message: the NLRI cannot be found, so
    // NOTIFICATION UPDATE Message Error / Malformed Attribute List, and the session closes.
    let mut body = vec![0, 0, 0x01, 0x00];
    body.extend_from_slice(&attrs(0));
    s.write_all(&message(2, &body)).await.expect("send");
    let n = expect(&mut s, 3).await;
    assert_eq!(&n[..2], &[3, 1], "NOTIFICATION code/subcode");
    // The peer's routes go with the session.
    assert_eq!(next_change(&mut changes).await, Change::Gone(prefix(11)));

    // The speaker takes the peer back, and a bad marker gets Connection Not Synchronized.
    let mut s = connect(addr).await;
    let mut bad = keepalive();
    bad[3] = 0;
    s.write_all(&bad).await.expect("send");
    let n = expect(&mut s, 3).await;
    assert_eq!(&n[..2], &[1, 1], "NOTIFICATION code/subcode");

    // And once more, cleanly: the speaker survived all of it.
    let mut s = connect(addr).await;
    s.write_all(&update(&attrs(0), 12)).await.expect("send");
    assert!(matches!(next_change(&mut changes).await, Change::Best(p, _) if p == prefix(12)));
    drop(s);
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// Graceful restart, helper side (RFC 4724): a peer that offered it loses its connection; its
/// routes stay; it comes back and sends End-of-RIB, and only what it did not announce again
/// goes. A peer that does not come back within its restart time loses its routes then.
#[tokio::test]
async fn a_restarting_peers_routes_stay_until_end_of_rib_or_its_restart_time() {
    let (addr, mut changes, control, sp) = start();
    tokio::time::sleep(Duration::from_millis(100)).await;

    graceful_peer_gone(addr, &mut changes, &[20, 21]).await;

    // Back, with only 10.244.20.0/24, then End-of-RIB: 10.244.21.0/24 was stale and goes.
    let mut s = connect_with(addr, open_gr(120, true)).await;
    // The same path again is no change of best path.
    s.write_all(&update(&attrs(0), 20)).await.expect("send");
    s.write_all(&message(2, &[0, 0, 0, 0]))
        .await
        .expect("send End-of-RIB");
    assert_eq!(next_change(&mut changes).await, Change::Gone(prefix(21)));
    let nothing = tokio::time::timeout(Duration::from_millis(300), changes.recv()).await;
    assert!(
        nothing.is_err(),
        "more than the stale route went: {nothing:?}"
    );

    // Now with a one-second restart time, and no return: the routes go after it.
    drop(s);
    let mut s = connect_with(addr, open_gr(1, false)).await;
    s.write_all(&update(&attrs(0), 22)).await.expect("send");
    assert!(matches!(next_change(&mut changes).await, Change::Best(p, _) if p == prefix(22)));
    let lost = std::time::Instant::now();
    drop(s);
    let mut gone = std::collections::BTreeSet::new();
    while gone.len() < 2 {
        match next_change(&mut changes).await {
            Change::Gone(p) => {
                gone.insert(p);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(gone, [prefix(20), prefix(22)].into());
    assert!(
        lost.elapsed() >= Duration::from_millis(900),
        "withdrawn before the restart time ran out"
    );
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// Regression (netns_bgp, route reflectors on five nodes): a stopped speaker's accept loop kept
/// the port, so the speaker that replaced it could not listen and passive peers never came up.
#[tokio::test]
async fn a_stopped_speaker_frees_its_port_for_the_next() {
    let (addr, _changes, control, sp) = start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, mut changes, control, sp) = start_on(addr, 64);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = connect(addr).await;
    s.write_all(&update(&attrs(0), 30)).await.expect("send");
    assert!(matches!(next_change(&mut changes).await, Change::Best(p, _) if p == prefix(30)));
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// A speaker that replaces another may find the port still held: it says so on its board,
/// keeps trying, and accepts sessions once the port is free.
#[tokio::test]
async fn a_taken_port_is_tried_again_until_it_is_free() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = holder.local_addr().expect("addr");
    let status: speaker::Status = Default::default();
    let (_, mut changes, control, sp) = start_with(addr, 64, status.clone(), None);
    let listen_error = || {
        status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .listen_error
            .clone()
    };
    eventually("a listen error on the board", || {
        listen_error().is_some_and(|e| e.contains(&addr.to_string()))
    })
    .await;
    drop(holder);
    eventually("listening once the port is free", || {
        listen_error().is_none()
    })
    .await;
    let mut s = connect(addr).await;
    s.write_all(&update(&attrs(0), 31)).await.expect("send");
    assert!(matches!(next_change(&mut changes).await, Change::Best(p, _) if p == prefix(31)));
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// Regression (bench-bgp with 100,000 prefixes): changes were offered to a full channel and
/// dropped, so whoever installs routes missed some. Now the speaker waits for room.
#[tokio::test]
async fn no_change_is_lost_when_the_reader_lags() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let (_, mut changes, control, sp) = start_on(addr, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = connect(addr).await;
    for third in 0..=255u8 {
        s.write_all(&update(&attrs(0), third)).await.expect("send");
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the reader lags behind
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 256 {
        match next_change(&mut changes).await {
            Change::Best(p, _) => {
                got.insert(p);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// Lease-validated import: inside the guarded range a prefix is taken only from its owner;
/// what is refused is held, and taken without asking the peer again once new rules admit it;
/// what new rules refuse is withdrawn. The status board counts refusals by reason.
#[tokio::test]
async fn import_rules_refuse_hold_and_admit_as_they_change() {
    use twill_bgp::policy::{Import, Refusal};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let owner = |third: u8, nh: &str| (prefix(third), nh.parse::<IpAddr>().expect("addr"));
    // The peer sends next hop 10.0.0.2 (see `attrs`).
    let rules = |owners: Vec<(IpNet, IpAddr)>| Import {
        guarded: vec!["10.244.0.0/16".parse().expect("net")],
        owners: owners.into_iter().collect(),
        allow: Some(vec![]),
    };
    let status: speaker::Status = Default::default();
    let (_, mut changes, control, sp) = start_with(addr, 64, status.clone(), None);
    // start_on's speaker has no import rules; these replace them before the peer connects.
    control
        .send(Control::SetImport(rules(vec![
            owner(1, "10.0.0.2"),
            owner(2, "10.0.0.9"),
        ])))
        .await
        .expect("control");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = connect(addr).await;
    for third in [1, 2, 3] {
        s.write_all(&update(&attrs(0), third)).await.expect("send");
    }
    // 2 is someone else's, 3 nobody's: only 1 is taken.
    assert!(matches!(next_change(&mut changes).await, Change::Best(p, _) if p == prefix(1)));
    // 3 leased to the peer's address: taken from what was held, with no new UPDATE.
    control
        .send(Control::SetImport(rules(vec![
            owner(1, "10.0.0.2"),
            owner(2, "10.0.0.9"),
            owner(3, "10.0.0.2"),
        ])))
        .await
        .expect("control");
    assert!(matches!(next_change(&mut changes).await, Change::Best(p, _) if p == prefix(3)));
    // 1 moves to another holder: the peer's route for it goes.
    control
        .send(Control::SetImport(rules(vec![
            owner(1, "10.0.0.7"),
            owner(2, "10.0.0.9"),
            owner(3, "10.0.0.2"),
        ])))
        .await
        .expect("control");
    assert_eq!(next_change(&mut changes).await, Change::Gone(prefix(1)));
    // A more-specific of a leased subnet, even from its holder, is never taken.
    let mut b = vec![0, 0];
    let a = attrs(0);
    b.extend_from_slice(&(a.len() as u16).to_be_bytes());
    b.extend_from_slice(&a);
    b.extend_from_slice(&[25, 10, 244, 3, 128]);
    s.write_all(&message(2, &b)).await.expect("send");
    // Withdrawing 3 is the next change: the /25 made none.
    let mut w = vec![0, 4, 24, 10, 244, 3];
    w.extend_from_slice(&[0, 0]);
    s.write_all(&message(2, &w)).await.expect("send");
    assert_eq!(next_change(&mut changes).await, Change::Gone(prefix(3)));
    // Held now: 2 (someone else's), 1 (moved away), the /25.
    let want = [(Refusal::MoreSpecific, 1), (Refusal::NotFromOwner, 2)].into();
    eventually("the refusals on the board", || {
        board(&status).is_some_and(|p| p.refused == want)
    })
    .await;
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// The announced IPv4 prefixes of an UPDATE body.
fn nlri_of(body: &[u8]) -> Vec<IpNet> {
    let withdrawn = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let at = 2 + withdrawn;
    let attrs = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    let mut rest = &body[at + 2 + attrs..];
    let mut out = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).div_ceil(8);
        let mut o = [0u8; 4];
        o[..n].copy_from_slice(&tail[..n]);
        out.push(IpNet::V4(
            ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(o), len).expect("prefix"),
        ));
        rest = &tail[n..];
    }
    out
}

/// Route refresh (RFC 2918): a ROUTE-REFRESH for IPv4 unicast has the speaker send its table
/// again; one for a family it did not offer is ignored, and neither resets the session.
#[tokio::test]
async fn a_route_refresh_request_gets_the_table_again() {
    let (addr, _changes, control, sp) = start();
    let ours: Vec<IpNet> = vec![prefix(7), prefix(8)];
    control
        .send(Control::SetOriginate(ours.clone()))
        .await
        .expect("control");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = connect(addr).await;
    let mut table = Vec::new();
    loop {
        let body = expect(&mut s, 2).await;
        if body == [0, 0, 0, 0] {
            break; // End-of-RIB
        }
        table.extend(nlri_of(&body));
    }
    table.sort();
    assert_eq!(table, ours);
    // A family never offered (AFI 1, SAFI 128): nothing comes back but KEEPALIVEs.
    s.write_all(&message(5, &[0, 1, 0, 128]))
        .await
        .expect("send ROUTE-REFRESH");
    s.write_all(&message(5, &[0, 1, 0, 1]))
        .await
        .expect("send ROUTE-REFRESH");
    let mut again = Vec::new();
    while again.len() < ours.len() {
        again.extend(nlri_of(&expect(&mut s, 2).await));
    }
    again.sort();
    assert_eq!(again, ours);
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// Max-prefix (RFC 4486): the peer's 11th prefix over a limit of 10 closes the session with
/// Cease/1 carrying AFI, SAFI and the limit; its routes are withdrawn, and a new connection
/// from it is refused while the back-off lasts.
#[tokio::test]
async fn a_peer_over_its_prefix_limit_is_closed_with_cease_1_and_held_off() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let status: speaker::Status = Default::default();
    let (_, mut changes, control, sp) = start_with(addr, 64, status.clone(), Some(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = connect(addr).await;
    for third in 0..10u8 {
        s.write_all(&update(&attrs(0), third)).await.expect("send");
    }
    for _ in 0..10 {
        assert!(matches!(next_change(&mut changes).await, Change::Best(..)));
    }
    s.write_all(&update(&attrs(0), 10)).await.expect("send");
    let n = expect(&mut s, 3).await;
    assert_eq!(
        n,
        [6, 1, 0, 1, 1, 0, 0, 0, 10],
        "Cease/1 with AFI 1, SAFI 1, limit 10"
    );
    let mut gone = std::collections::BTreeSet::new();
    while gone.len() < 11 {
        match next_change(&mut changes).await {
            Change::Gone(p) => {
                gone.insert(p);
            }
            Change::Best(p, _) => assert_eq!(p, prefix(10), "only the 11th is new"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Back-off: a new connection is closed before any OPEN.
    let mut again = TcpStream::connect(addr).await.expect("connect");
    let _ = again.write_all(&open()).await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), again.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the peer got a session during its back-off");
    let err = board(&status).and_then(|p| p.last_error);
    assert!(
        err.as_deref()
            .is_some_and(|e| e.contains("over its limit of 10")),
        "{err:?}"
    );
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// A restarting peer whose new OPEN says it did not keep forwarding (no F bit) loses its stale
/// routes at once, without waiting for its End-of-RIB (RFC 4724 §4.2).
#[tokio::test]
async fn a_peer_back_without_forwarding_kept_loses_its_stale_routes_at_once() {
    let (addr, mut changes, control, sp) = start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    graceful_peer_gone(addr, &mut changes, &[40, 41]).await;
    let _s = connect_with(addr, open_gr_with(120, true, false)).await;
    let mut gone = std::collections::BTreeSet::new();
    while gone.len() < 2 {
        match next_change(&mut changes).await {
            Change::Gone(p) => {
                gone.insert(p);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(gone, [prefix(40), prefix(41)].into());
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// Whether the graceful-restart capability of an OPEN body has the R bit.
fn restart_bit(open: &[u8]) -> Option<bool> {
    let params = open.get(10..)?;
    let mut at = 0;
    while at + 2 <= params.len() {
        let (kind, len) = (params[at], usize::from(params[at + 1]));
        let body = params.get(at + 2..at + 2 + len)?;
        if kind == 2 {
            let mut c = 0;
            while c + 2 <= body.len() {
                let (code, clen) = (body[c], usize::from(body[c + 1]));
                if code == 64 {
                    return Some(body.get(c + 2)? & 0x80 != 0);
                }
                c += 2 + clen;
            }
        }
        at += 2 + len;
    }
    None
}

/// A speaker that restarted sets the R bit in its first session with a peer only: when that
/// session is reset later, the next OPEN does not claim a restart (RFC 4724 §4.1).
#[tokio::test]
async fn the_restart_bit_is_set_in_the_first_session_only() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let status: speaker::Status = Default::default();
    let (_, _changes, control, sp) = start_cfg(addr, 64, status.clone(), |c| {
        c.graceful_restart = Some(speaker::RestartConfig {
            time: 120,
            restarted: true,
        })
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut bits = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(&open()).await.expect("send OPEN");
        bits.push(restart_bit(&expect(&mut s, 1).await));
        s.write_all(&keepalive()).await.expect("send KEEPALIVE");
        expect(&mut s, 4).await;
        // Established; let the speaker see it before the connection goes, and see it go
        // before the next one comes (a second connection while one is up is refused).
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(s);
        eventually("the first session down", || {
            !board(&status).is_some_and(|p| p.established)
        })
        .await;
    }
    assert_eq!(bits, [Some(true), Some(false)]);
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// After our own restart, selection waits for the peers' tables (RFC 4724 §4.1): a peer that
/// restarts gracefully gets nothing from us until it has sent End-of-RIB, then our whole table
/// and End-of-RIB; a peer without graceful restart does not hold anything up.
#[tokio::test]
async fn a_restarted_speaker_sends_its_table_after_the_peers_end_of_rib() {
    for peer_offers_gr in [true, false] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let (_, _changes, control, sp) = start_cfg(addr, 64, Default::default(), |c| {
            c.originate = vec![prefix(9)];
            c.graceful_restart = Some(speaker::RestartConfig {
                time: 120,
                restarted: true,
            });
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let open = if peer_offers_gr {
            open_gr(120, false)
        } else {
            open()
        };
        let mut s = connect_with(addr, open).await;
        if peer_offers_gr {
            // Nothing but KEEPALIVEs while our End-of-RIB is missing.
            let quiet = tokio::time::timeout(Duration::from_millis(700), expect(&mut s, 2)).await;
            assert!(
                quiet.is_err(),
                "an UPDATE before the peer's End-of-RIB: {quiet:?}"
            );
            s.write_all(&update(&attrs(0), 20)).await.expect("send");
            s.write_all(&message(2, &[0, 0, 0, 0]))
                .await
                .expect("send End-of-RIB");
        }
        let table = expect(&mut s, 2).await;
        assert_eq!(nlri_of(&table), [prefix(9)], "our table first");
        assert_eq!(expect(&mut s, 2).await, [0, 0, 0, 0], "then End-of-RIB");
        let _ = control.send(Control::Stop).await;
        let _ = sp.await;
    }
}

/// When the operator's import ranges change, a peer that offered route refresh is asked for
/// its routes again (ROUTE-REFRESH for IPv4 unicast); a change of owners alone (a lease) asks
/// nothing, the refused routes being held already.
#[tokio::test]
async fn new_import_ranges_ask_the_peer_for_its_routes_again() {
    use twill_bgp::policy::Import;
    let (addr, _changes, control, sp) = start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // OPEN with the route-refresh capability (code 2).
    let open_rr = message(1, &[4, 0xfc, 0x00, 0, 90, 10, 0, 0, 2, 4, 2, 2, 2, 0]);
    let mut s = connect_with(addr, open_rr).await;
    assert_eq!(
        expect(&mut s, 2).await,
        [0, 0, 0, 0],
        "End-of-RIB of an empty table"
    );
    let rules = |allow: &str, owner: Option<&str>| Import {
        guarded: vec!["10.244.0.0/16".parse().expect("net")],
        owners: owner
            .map(|o| (prefix(1), o.parse::<IpAddr>().expect("addr")))
            .into_iter()
            .collect(),
        allow: Some(vec![allow.parse().expect("net")]),
    };
    control
        .send(Control::SetImport(rules("192.168.0.0/16", None)))
        .await
        .expect("control");
    assert_eq!(
        expect(&mut s, 5).await,
        [0, 1, 0, 1],
        "ROUTE-REFRESH for IPv4 unicast"
    );
    // Only a lease moves: nothing is asked.
    control
        .send(Control::SetImport(rules(
            "192.168.0.0/16",
            Some("10.0.0.2"),
        )))
        .await
        .expect("control");
    let quiet = tokio::time::timeout(Duration::from_millis(700), expect(&mut s, 5)).await;
    assert!(quiet.is_err(), "a refresh for a lease change: {quiet:?}");
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}

/// A peer offering graceful restart announces 10.244.<third>.0/24 for each of `thirds`, then
/// loses its connection (no NOTIFICATION): its routes must stay while it restarts.
async fn graceful_peer_gone(addr: SocketAddr, changes: &mut mpsc::Receiver<Change>, thirds: &[u8]) {
    let mut s = connect_with(addr, open_gr(120, false)).await;
    for third in thirds {
        s.write_all(&update(&attrs(0), *third)).await.expect("send");
        assert!(matches!(next_change(changes).await, Change::Best(p, _) if p == prefix(*third)));
    }
    drop(s);
    let nothing = tokio::time::timeout(Duration::from_millis(700), changes.recv()).await;
    assert!(
        nothing.is_err(),
        "routes of a restarting peer withdrawn: {nothing:?}"
    );
}

/// The peer's row on the speaker's board.
fn board(status: &speaker::Status) -> Option<speaker::PeerStatus> {
    status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .peers
        .get(&IpAddr::from([127, 0, 0, 1]))
        .cloned()
}

/// Polls `done` every 20 ms, failing with `what` after 5 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within 5 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Regression (found by bench-bgp's injector): a peer with a lower router id that connected
/// while our own attempts were being refused was turned away as a collision, for as long as
/// our attempts kept failing. There is nothing to collide with until our attempt has a
/// connection (RFC 4271 6.8), so its connection is taken.
#[tokio::test]
async fn a_peer_connecting_while_our_attempts_fail_is_taken_whatever_its_router_id() {
    // Nothing listens on 127.0.0.1:179 (the tests bind free ports), so every attempt of ours
    // is refused; our id is higher than the peer's 10.0.0.2.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let (addr, mut changes, control, sp) = start_cfg(addr, 64, Default::default(), |c| {
        c.router_id = "10.0.0.9".parse().expect("id");
        c.peers[0].passive = false;
    });
    // Our first attempt has been made and refused by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = connect(addr).await;
    s.write_all(&update(&attrs(0), 7))
        .await
        .expect("send UPDATE");
    match next_change(&mut changes).await {
        Change::Best(p, _) => assert_eq!(p, prefix(7)),
        other => panic!("expected the peer's prefix taken, got {other:?}"),
    }
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}
