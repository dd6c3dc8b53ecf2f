//! One peer stops reading while another receives 10,000 routes: a slow peer must not stall the
//! others (DESIGN §4). Three scripted peers on raw TCP, each from a loopback address of its own,
//! against a running speaker; no root needed.
//! - S brings its session up, then reads nothing more, so its TCP window shuts; it goes on
//!   sending KEEPALIVEs until the speaker's socket to it is backed up, then stops those too;
//! - I, an eBGP peer, announces 10,000 prefixes;
//! - R reads everything.
//!
//! R gets all 10,000 and the kernel side all 10,000 while the speaker's socket to S stays full;
//! S's session is then closed by its hold timer, and R's and I's sessions are never reset.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use twill_bgp::rib::{Change, Peer};
use twill_bgp::speaker::{self, Control, PeerConfig, SpeakerConfig, Status};

const ROUTES: u32 = 10_000;
/// Communities on every route, about 1 KB of attributes: with a MED of its own per route
/// nothing can share an UPDATE, so S is owed about 10 MB, more than the kernel buffers for one
/// connection (checked against `tcp_wmem` below).
const COMMUNITIES: u32 = 250;
const OUR_AS: u16 = 64512;
const I_AS: u16 = 65001;
/// S's hold time: the speaker's hold timer is what must close S's session.
const S_HOLD: u16 = 6;
/// The bound on every "eventually", generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(180);
/// What the speaker must have queued towards S, unacknowledged, to count as backed up: many
/// times S's shrunken receive window.
const BACKED_UP: u64 = 256 * 1024;

const S_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const R_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const I_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// OPEN: version 4, two-octet AS, no capabilities.
fn open(asn: u16, hold: u16, id: Ipv4Addr) -> Vec<u8> {
    let mut b = vec![4];
    b.extend_from_slice(&asn.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id.octets());
    b.push(0);
    message(1, &b)
}

fn keepalive() -> Vec<u8> {
    message(4, &[])
}

fn prefix(n: u32) -> IpNet {
    IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::new(10, (n >> 8) as u8, n as u8, 0), 24).expect("/24"))
}

/// I's UPDATE for route `n`: 10.<n / 256>.<n % 256>.0/24, ORIGIN IGP, AS_PATH I_AS, NEXT_HOP
/// I, MED n, and COMMUNITIES I_AS:0 … I_AS:249 (extended length).
fn update(n: u32) -> Vec<u8> {
    let [a1, a2] = I_AS.to_be_bytes();
    let mut attrs = vec![
        0x40, 1, 1, 0, //
        0x40, 2, 4, 2, 1, a1, a2, //
        0x40, 3, 4,
    ];
    attrs.extend_from_slice(&I_ADDR.octets());
    attrs.extend_from_slice(&[0x80, 4, 4]);
    attrs.extend_from_slice(&n.to_be_bytes());
    attrs.extend_from_slice(&[0xd0, 8]);
    attrs.extend_from_slice(&((COMMUNITIES * 4) as u16).to_be_bytes());
    for c in 0..COMMUNITIES {
        attrs.extend_from_slice(&((u32::from(I_AS) << 16) | c).to_be_bytes());
    }
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(&attrs);
    let IpNet::V4(p) = prefix(n) else {
        unreachable!("IPv4 literal")
    };
    b.push(24);
    b.extend_from_slice(&p.addr().octets()[..3]);
    message(2, &b)
}

/// The next whole message: its type and body; `None` when the connection ends.
async fn read_message(r: &mut (impl AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 19];
    r.read_exact(&mut head).await.ok()?;
    let len = usize::from(u16::from_be_bytes([head[16], head[17]]));
    let mut body = vec![0u8; len.checked_sub(19)?];
    r.read_exact(&mut body).await.ok()?;
    Some((head[18], body))
}

/// The IPv4 prefixes an UPDATE body announces in its NLRI field.
fn announced(body: &[u8]) -> Vec<IpNet> {
    let withdrawn = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let at = 2 + withdrawn;
    let attrs = usize::from(u16::from_be_bytes([body[at], body[at + 1]]));
    let mut nlri = &body[at + 2 + attrs..];
    let mut out = Vec::new();
    while let Some((&len, rest)) = nlri.split_first() {
        let n = usize::from(len).div_ceil(8);
        let mut octets = [0u8; 4];
        octets[..n].copy_from_slice(&rest[..n]);
        out.push(IpNet::V4(
            ipnet::Ipv4Net::new(Ipv4Addr::from(octets), len).expect("prefix length"),
        ));
        nlri = &rest[n..];
    }
    out
}

/// Connects from `from` (the speaker knows its peers by address) and brings the session up.
/// `rcvbuf`: a receive buffer this small, set before connecting so the window stays small.
async fn establish(
    from: Ipv4Addr,
    to: SocketAddr,
    asn: u16,
    hold: u16,
    rcvbuf: Option<u32>,
) -> TcpStream {
    let sock = TcpSocket::new_v4().expect("socket");
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).expect("SO_RCVBUF");
    }
    sock.bind(SocketAddr::new(from.into(), 0))
        .expect("bind a loopback address");
    let mut s = sock.connect(to).await.expect("connect to the speaker");
    s.write_all(&open(asn, hold, from))
        .await
        .expect("send OPEN");
    loop {
        let (kind, body) = tokio::time::timeout(PATIENCE, read_message(&mut s))
            .await
            .expect("the speaker answers")
            .expect("connection open");
        assert_ne!(kind, 3, "NOTIFICATION during the handshake: {body:?}");
        match kind {
            1 => s.write_all(&keepalive()).await.expect("send KEEPALIVE"),
            4 => return s,
            _ => {}
        }
    }
}

/// What a reading peer has seen so far.
#[derive(Clone, Debug, Default)]
struct Seen {
    prefixes: usize,
    /// Why its connection ended (a NOTIFICATION, or closed), if it did.
    ended: Option<String>,
}

/// Reads everything the speaker sends, counting the prefixes announced.
fn read_all(mut rd: OwnedReadHalf) -> watch::Receiver<Seen> {
    let (tx, rx) = watch::channel(Seen::default());
    tokio::spawn(async move {
        let mut prefixes = BTreeSet::new();
        loop {
            match read_message(&mut rd).await {
                Some((2, body)) => {
                    prefixes.extend(announced(&body));
                    tx.send_modify(|s| s.prefixes = prefixes.len());
                }
                Some((3, body)) => {
                    tx.send_modify(|s| s.ended = Some(format!("NOTIFICATION {body:?}")));
                    return;
                }
                Some(_) => {}
                None => {
                    tx.send_modify(|s| s.ended = Some("connection closed".into()));
                    return;
                }
            }
        }
    });
    rx
}

/// Bytes the kernel holds for the connection `local` → `remote`, sent or not, that the other
/// end has not acknowledged: the `tx_queue` column of /proc/net/tcp.
fn send_queue(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => String::new(),
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 4 && f[1] == l && f[2] == r {
            u64::from_str_radix(f[4].split(':').next()?, 16).ok()
        } else {
            None
        }
    })
}

/// The most a Linux TCP socket buffers for sending by default (`tcp_wmem`'s maximum).
fn wmem_max() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

fn peer(addr: Ipv4Addr, asn: u16) -> PeerConfig {
    let peer = Peer {
        addr: IpAddr::V4(addr),
        router_id: addr,
        asn: u32::from(asn),
        rr_client: false,
    };
    PeerConfig {
        passive: true,
        ..PeerConfig::new(peer, 90)
    }
}

/// Polls `done` until it holds, failing with `what` and the last state after [`PATIENCE`].
async fn eventually<T: std::fmt::Debug>(what: &str, mut state: impl FnMut() -> (bool, T)) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (done, now) = state();
        if done {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; last seen {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn board(status: &Status, addr: Ipv4Addr) -> Option<speaker::PeerStatus> {
    status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .peers
        .get(&IpAddr::V4(addr))
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_stalls_no_one_and_its_hold_timer_closes_it() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let cfg = SpeakerConfig {
        local_as: u32::from(OUR_AS),
        router_id: "10.0.0.1".parse().expect("id"),
        cluster_id: None,
        local_address: "127.0.0.1".parse().expect("addr"),
        local_address_v6: None,
        peers: vec![
            peer(S_ADDR, OUR_AS),
            peer(R_ADDR, OUR_AS),
            peer(I_ADDR, I_AS),
        ],
        originate: vec![],
        advertise: vec![],
        listen: Some(addr),
        import: Default::default(),
        graceful_restart: None,
    };
    let status = Status::default();
    let (changes_tx, mut changes) = tokio::sync::mpsc::channel(1024);
    let (control, control_rx) = tokio::sync::mpsc::channel(4);
    let sp = tokio::spawn(speaker::run(cfg, changes_tx, control_rx, status.clone()));

    // The kernel side: every prefix that got a best path.
    let (kernel_tx, kernel) = watch::channel(0usize);
    tokio::spawn(async move {
        let mut best = BTreeSet::new();
        while let Some(c) = changes.recv().await {
            if let Change::Best(p, _) = c {
                best.insert(p);
                kernel_tx.send_replace(best.len());
            }
        }
    });

    // Sessions up, the speaker accepting once it listens.
    let mut s = None;
    for _ in 0..100 {
        if let Ok(c) = TcpStream::connect(addr).await {
            drop(c);
            s = Some(establish(S_ADDR, addr, OUR_AS, S_HOLD, Some(4096)).await);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = s.expect("the speaker listens");
    let s_local = s.local_addr().expect("S's address");
    let (s_rd, s_wr) = s.into_split();
    let stop_s = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = stop_s.clone();
    let s_keepalives = tokio::spawn(async move {
        let mut wr = s_wr;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if stop.load(std::sync::atomic::Ordering::SeqCst)
                || wr.write_all(&keepalive()).await.is_err()
            {
                return wr;
            }
        }
    });

    let r = establish(R_ADDR, addr, OUR_AS, 90, None).await;
    let (r_rd, mut r_wr) = r.into_split();
    let r_seen = read_all(r_rd);
    let i = establish(I_ADDR, addr, I_AS, 90, None).await;
    let (i_rd, mut i_wr) = i.into_split();
    let i_seen = read_all(i_rd);

    let mut since = Vec::new();
    for a in [R_ADDR, I_ADDR] {
        eventually(&format!("{a} established on the board"), || {
            let st = board(&status, a);
            (st.as_ref().is_some_and(|st| st.established), st)
        })
        .await;
        since.push(board(&status, a).map(|st| st.since));
    }

    // Far more for S than the kernel can hold for it, so the speaker's writes to S block.
    let owed = u64::from(ROUTES) * update(0).len() as u64;
    assert!(
        owed > 2 * wmem_max(),
        "{owed} bytes would not fill a socket on this kernel"
    );
    let inject = tokio::spawn(async move {
        let mut batch = Vec::new();
        for n in 0..ROUTES {
            batch.extend_from_slice(&update(n));
            if batch.len() > 64 * 1024 || n + 1 == ROUTES {
                i_wr.write_all(&batch).await.expect("I sends its routes");
                batch.clear();
            }
        }
        i_wr
    });
    // R's and I's own KEEPALIVEs, so that only S can time out.
    let alive = tokio::spawn(async move {
        let mut i_wr = inject.await.expect("injector");
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if r_wr.write_all(&keepalive()).await.is_err()
                || i_wr.write_all(&keepalive()).await.is_err()
            {
                return;
            }
        }
    });

    // While the speaker's socket to S is full, R and the kernel side get everything.
    let speaker_to_s = || send_queue(addr, s_local);
    eventually("the speaker's socket to S backed up", || {
        let q = speaker_to_s();
        (q.is_some_and(|q| q >= BACKED_UP), q)
    })
    .await;
    eventually("R and the kernel side have every route", || {
        let (r, k) = (r_seen.borrow().clone(), *kernel.borrow());
        (
            r.prefixes == ROUTES as usize && k == ROUTES as usize,
            (r, k, board(&status, S_ADDR)),
        )
    })
    .await;
    let q = speaker_to_s();
    assert!(
        q.is_some_and(|q| q >= BACKED_UP),
        "S's socket drained: {q:?} bytes queued"
    );

    // S goes silent: its hold timer closes the session.
    stop_s.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("S's session closed by its hold timer", || {
        let st = board(&status, S_ADDR);
        (
            st.as_ref().is_some_and(|st| {
                !st.established && st.last_error.as_deref() == Some("hold timer expired")
            }),
            st,
        )
    })
    .await;

    // Nothing else was reset.
    for (a, before) in [R_ADDR, I_ADDR].into_iter().zip(since) {
        let st = board(&status, a).expect("on the board");
        assert!(
            st.established && Some(st.since) == before && st.last_error.is_none(),
            "{a} was reset: {st:?}"
        );
    }
    assert_eq!(r_seen.borrow().ended, None, "R's connection ended");
    assert_eq!(i_seen.borrow().ended, None, "I's connection ended");

    alive.abort();
    drop(s_rd);
    drop(s_keepalives);
    let _ = control.send(Control::Stop).await;
    let _ = sp.await;
}
