//! The speaker: one session per configured peer, all feeding one RIB; every change of best path
//! is sent to the peers the export rules allow, and withdrawn from those that had it. A session
//! that goes down is started again after a pause; a passive peer's waits for the peer to call.
//!
//! Peers and our own prefixes can change while it runs ([`Control`]); a peer whose settings did
//! not change keeps its session.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

mod outbox;

use crate::attribute::{Attributes, MpReach, Origin};
use crate::driver::{self, Report};
use crate::fsm::Config;
use crate::notification::{Notification, CEASE};
use crate::open::Capability;
use crate::policy::{Import, Refusal};
use crate::rib::{Change, Path, Peer, PeerId, Rib};
use crate::update::Update;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub peer: Peer,
    pub hold_time: u16,
    pub passive: bool,
    pub md5_password: Option<String>,
    pub export: Export,
    /// The most prefixes the peer may announce (taken or refused): over it the session is
    /// closed with Cease/1 (RFC 4486) and tried again after a back-off; a warning at 75 %.
    pub max_prefixes: Option<u32>,
    /// GTSM (RFC 5082): the peer is directly connected and must send with TTL 255.
    pub gtsm: bool,
}

impl PeerConfig {
    /// A peer we connect to, unsigned, sent every best path, without a prefix limit or GTSM;
    /// change what differs with struct update syntax.
    pub fn new(peer: Peer, hold_time: u16) -> PeerConfig {
        PeerConfig {
            peer,
            hold_time,
            passive: false,
            md5_password: None,
            export: Export::All,
            max_prefixes: None,
            gtsm: false,
        }
    }
}

/// What a peer is sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Export {
    /// Every best path the export rules of RFC 4271 and 4456 allow.
    #[default]
    All,
    /// Our own prefixes, and of what other peers announced only what falls inside these
    /// ranges (none by default): an outside router must not reach one of its neighbours
    /// through us unless the operator says so (no transit).
    Own(Vec<IpNet>),
}

impl Export {
    fn outside(&self) -> bool {
        matches!(self, Export::Own(_))
    }
}

#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub cluster_id: Option<Ipv4Addr>,
    /// Our address on the peers' segment: the next hop towards eBGP peers and for our own
    /// prefixes.
    pub local_address: IpAddr,
    /// Our IPv6 address on the segment, the next hop of our own IPv6 prefixes (and towards
    /// eBGP peers for IPv6) when `local_address` is IPv4; without it, IPv6 prefixes of ours are
    /// not announced (a next hop of the other family would be unusable).
    pub local_address_v6: Option<std::net::Ipv6Addr>,
    pub peers: Vec<PeerConfig>,
    /// Prefixes this node originates.
    pub originate: Vec<IpNet>,
    /// Prefixes this node announces to outside peers only ([`Export::Own`]): service and
    /// load-balancer ranges, which every node announces to the routers and none needs from
    /// another node.
    pub advertise: Vec<IpNet>,
    /// Where to accept sessions that peers open (normally port 179); without it the speaker
    /// only connects out, and passive peers never come up.
    pub listen: Option<SocketAddr>,
    /// What is taken from peers (and so installed or passed on).
    pub import: Import,
    /// Offer graceful restart (RFC 4724) to peers.
    pub graceful_restart: Option<RestartConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartConfig {
    /// How long peers keep our routes while we restart, in seconds.
    pub time: u16,
    /// This speaker has just restarted with the kernel's forwarding state kept: the R and F
    /// bits of the capability, until every peer has sent End-of-RIB.
    pub restarted: bool,
}

/// Changes to a running speaker.
#[derive(Debug)]
pub enum Control {
    /// The complete set of peers from now on.
    SetPeers(Vec<PeerConfig>),
    /// The complete set of our own prefixes from now on.
    SetOriginate(Vec<IpNet>),
    /// The complete set of our prefixes for outside peers only from now on.
    SetAdvertise(Vec<IpNet>),
    /// New import rules: routes already taken that they refuse are withdrawn, and refused
    /// ones they now admit are taken.
    SetImport(Import),
    Stop,
}

/// One peer as `twill bgp status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub addr: IpAddr,
    pub asn: u32,
    pub established: bool,
    /// When the session last came up or went down.
    pub since: SystemTime,
    /// Prefixes the peer announces (taken or refused by the import rules), and how many of
    /// them are best paths.
    pub received: usize,
    pub accepted: usize,
    /// Prefixes we announce to the peer.
    pub advertised: usize,
    pub last_error: Option<String>,
    /// The peer has sent End-of-RIB since the session came up.
    pub end_of_rib: bool,
    /// The peer's routes are kept, stale, while it restarts.
    pub stale: bool,
    /// The peer offered graceful restart in its OPEN, so it sends End-of-RIB.
    pub graceful_restart: bool,
    /// Prefixes the peer announces that the import rules refuse, by reason.
    pub refused: BTreeMap<Refusal, usize>,
}

/// What the speaker tells whoever reports on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Board {
    pub peers: BTreeMap<IpAddr, PeerStatus>,
    /// Why peers cannot open sessions to us: the listening socket could not be bound.
    pub listen_error: Option<String>,
}

/// Shared with whoever reports on the speaker; updated as sessions change.
pub type Status = Arc<Mutex<Board>>;

/// The pseudo-peer our own prefixes come from.
const OWN: PeerId = 0;

fn own_attrs() -> Arc<Attributes> {
    Arc::new(Attributes {
        origin: Some(Origin::Igp),
        as_path: Some(vec![]),
        local_pref: Some(100),
        ..Default::default()
    })
}

/// Binds the listening socket, with each peer's TCP-MD5 key on it (a signed peer's SYN is
/// refused without the key).
fn bind(addr: SocketAddr, keys: &[(IpAddr, String)]) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    // A GTSM peer that connects in checks our SYN-ACK's TTL too.
    crate::gtsm::send_255(&sock, addr.is_ipv6())?;
    for (peer, key) in keys {
        crate::md5::set_key(&sock, *peer, key.as_bytes())?;
    }
    sock.bind(addr)?;
    sock.listen(64)
}

/// How often a listening socket that cannot be bound is tried again.
const BIND_RETRY: Duration = Duration::from_secs(1);

/// Binds `addr`, trying again every [`BIND_RETRY`] while it fails (the speaker this one
/// replaces may hold the port a moment longer; another daemon may hold it until stopped), and
/// reports each new outcome.
async fn keep_binding(
    addr: SocketAddr,
    keys: Vec<(IpAddr, String)>,
    outcome: mpsc::Sender<Result<Arc<TcpListener>, String>>,
) {
    let mut last: Option<String> = None;
    loop {
        match bind(addr, &keys) {
            Ok(l) => {
                let _ = outcome.send(Ok(Arc::new(l))).await;
                return;
            }
            Err(e) => {
                let e = format!("cannot listen on {addr}: {e}");
                if last.as_ref() != Some(&e) {
                    if outcome.send(Err(e.clone())).await.is_err() {
                        return;
                    }
                    last = Some(e);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(BIND_RETRY) => {}
            _ = outcome.closed() => return,
        }
    }
}

/// Forwards every connection accepted on `listener` until the speaker is gone.
fn accept_all(listener: Arc<TcpListener>, accepted: mpsc::Sender<(IpAddr, TcpStream)>) {
    tokio::spawn(async move {
        loop {
            // Ends with the speaker (its receiver gone), freeing the port for a new one.
            let accepted_conn = tokio::select! {
                c = listener.accept() => c,
                _ = accepted.closed() => return,
            };
            let (stream, from) = match accepted_conn {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "BGP listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // A v4 peer reaching a v6 socket shows up as ::ffff:a.b.c.d.
            let ip = match from.ip() {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(from.ip()),
                v4 => v4,
            };
            let _ = stream.set_nodelay(true);
            if accepted.send((ip, stream)).await.is_err() {
                return;
            }
        }
    });
}

struct Session {
    cfg: PeerConfig,
    task: Option<JoinHandle<()>>,
    /// What waits to be written to the current session, once it is up.
    outbox: Option<Arc<outbox::Outbox>>,
    up: bool,
    /// The current session has a TCP connection (OpenSent or later), ours or the peer's.
    connected: bool,
    /// What this peer has been sent, or will be, and not withdrawn: its Adj-RIB-Out.
    sent: BTreeSet<IpNet>,
    /// Bumped on every (re)start, so reports of a replaced session are ignored.
    generation: u64,
    /// Its routes are kept from before a graceful restart; the number tells the stale timer
    /// which restart it belongs to.
    stale: Option<u64>,
    stale_epoch: u64,
    /// Prefixes announced since the session came up (kept on End-of-RIB when stale).
    refreshed: BTreeSet<IpNet>,
    /// The restart time the peer offered in its OPEN (graceful restart), while up.
    peer_restart_time: Option<u16>,
    /// No session with the peer has come up yet since this speaker started.
    after_restart: bool,
    /// The peer's OPEN had the R bit: it is restarting and waits for our End-of-RIB.
    peer_restarting: bool,
    /// The peer takes ROUTE-REFRESH requests.
    peer_route_refresh: bool,
    /// What the peer announces that the import rules refuse, kept so that a change of the
    /// rules (a new lease) can take it without asking the peer again.
    held: BTreeMap<IpNet, Held>,
    /// Ends the current session with a NOTIFICATION of our choosing.
    cease: Option<oneshot::Sender<(Notification, String)>>,
    /// The peer passed 75 % of its prefix limit in this session (warned once).
    warned: bool,
    /// The session was closed for passing its prefix limit: the next try waits `backoff`.
    over_limit: bool,
    backoff: Duration,
    /// No session with the peer before this, not even one it opens.
    hold_off_until: Option<tokio::time::Instant>,
}

/// The first wait after a peer passed its prefix limit; it doubles each time the peer does it
/// again, up to [`MAX_LIMIT_BACKOFF`], and starts over once a session stays within the limit
/// until End-of-RIB.
const LIMIT_BACKOFF: Duration = Duration::from_secs(30);
const MAX_LIMIT_BACKOFF: Duration = Duration::from_secs(15 * 60);

/// The longest selection waits after our restart for peers' tables (RFC 4724's
/// Selection_Deferral_Timer): well inside the restart time, so that helpers still hold our
/// routes when the tables go out even if some peer never comes back.
const SELECTION_DEFERRAL: Duration = Duration::from_secs(60);

/// After our restart, a peer whose session is not up by then stops holding up selection: a
/// router that is gone for good must not delay every other peer's table.
const RECONNECT_WINDOW: Duration = Duration::from_secs(10);

struct Held {
    next_hop: IpAddr,
    attrs: Arc<Attributes>,
    why: Refusal,
}

struct Speaker {
    cfg: SpeakerConfig,
    rib: Rib,
    sessions: BTreeMap<PeerId, Session>,
    reports_tx: mpsc::Sender<(PeerId, u64, Report)>,
    changes: mpsc::Sender<Change>,
    status: Status,
    listener: Option<Arc<TcpListener>>,
    originated: BTreeSet<IpNet>,
    advertised: BTreeSet<IpNet>,
    /// After our restart: until when what we send peers waits for their tables.
    deferral: Option<tokio::time::Instant>,
    started: tokio::time::Instant,
    stale_timer: mpsc::Sender<(PeerId, u64)>,
}

impl Speaker {
    /// `after_restart`: no session with the peer has come up since this speaker started.
    fn session_config(&self, pc: &PeerConfig, incoming: bool, after_restart: bool) -> Config {
        Config {
            local_as: self.cfg.local_as,
            peer_as: pc.peer.asn,
            router_id: self.cfg.router_id,
            hold_time: pc.hold_time,
            connect_retry: 2,
            // A session on a connection the peer opened must not also connect out.
            passive: pc.passive || incoming,
            capabilities: vec![
                Capability::Multiprotocol {
                    afi: crate::open::AFI_IPV4,
                    safi: crate::open::SAFI_UNICAST,
                },
                Capability::Multiprotocol {
                    afi: crate::open::AFI_IPV6,
                    safi: crate::open::SAFI_UNICAST,
                },
                Capability::RouteRefresh,
            ]
            .into_iter()
            .chain(self.cfg.graceful_restart.map(|g| {
                Capability::GracefulRestart(crate::open::GracefulRestart {
                    // R only in the first session after our restart (RFC 4724 §4.1).
                    restarting: g.restarted && after_restart,
                    time: g.time.min(0x0fff),
                    families: vec![(
                        crate::open::AFI_IPV4,
                        crate::open::SAFI_UNICAST,
                        g.restarted,
                    )],
                })
            }))
            .collect(),
            md5_password: pc.md5_password.clone(),
            gtsm: pc.gtsm,
        }
    }

    /// (Re)starts the session of peer `i` after `delay`, on `incoming` if the peer opened it.
    fn start(&mut self, i: PeerId, delay: Duration, incoming: Option<TcpStream>) {
        let Some(s) = self.sessions.get(&i) else {
            return;
        };
        let config = self.session_config(&s.cfg, incoming.is_some(), s.after_restart);
        let addr = SocketAddr::new(s.cfg.peer.addr, 179);
        let out = outbox::Outbox::new();
        let taker = outbox::Taker(out.clone());
        let (rtx, mut reports) = mpsc::channel::<Report>(1024);
        let (cease_tx, cease_rx) = oneshot::channel();
        let Some(s) = self.sessions.get_mut(&i) else {
            return;
        };
        s.cease = Some(cease_tx);
        s.connected = false;
        s.generation += 1;
        let generation = s.generation;
        if let Some(old) = s.task.take() {
            old.abort();
        }
        if let Some(old) = s.outbox.replace(out) {
            old.close();
        }
        s.task = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            driver::run_with(config, addr, incoming, taker, rtx, Some(cease_rx)).await;
        }));
        let out = self.reports_tx.clone();
        tokio::spawn(async move {
            while let Some(r) = reports.recv().await {
                if out.send((i, generation, r)).await.is_err() {
                    break;
                }
            }
        });
    }

    fn set_status(&self, i: PeerId, f: impl FnOnce(&mut PeerStatus)) {
        let Some(s) = self.sessions.get(&i) else {
            return;
        };
        let mut board = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let st = board
            .peers
            .entry(s.cfg.peer.addr)
            .or_insert_with(|| PeerStatus {
                addr: s.cfg.peer.addr,
                asn: s.cfg.peer.asn,
                established: false,
                since: SystemTime::now(),
                received: 0,
                accepted: 0,
                advertised: 0,
                last_error: None,
                end_of_rib: false,
                stale: false,
                graceful_restart: false,
                refused: BTreeMap::new(),
            });
        f(st);
        st.advertised = s.sent.len();
        st.refused.clear();
        for h in s.held.values() {
            *st.refused.entry(h.why).or_default() += 1;
        }
    }

    fn refresh_counts(&self) {
        let mut received: BTreeMap<PeerId, usize> = BTreeMap::new();
        let mut accepted: BTreeMap<PeerId, usize> = BTreeMap::new();
        for (_, path) in self.rib.loc_rib() {
            *accepted.entry(path.peer).or_default() += 1;
        }
        for (i, n) in self.rib.adj_in_counts() {
            received.insert(i, n);
        }
        for (i, s) in &self.sessions {
            let refused = s.held.len();
            self.set_status(*i, |st| {
                st.received = received.get(i).copied().unwrap_or(0) + refused;
                st.accepted = accepted.get(i).copied().unwrap_or(0);
            });
        }
    }

    /// The listening socket is bound, or still cannot be.
    fn bound(
        &mut self,
        b: Result<Arc<TcpListener>, String>,
        accepted: &mpsc::Sender<(IpAddr, TcpStream)>,
    ) {
        let mut board = self.status.lock().unwrap_or_else(|p| p.into_inner());
        match b {
            Ok(l) => {
                // Peers may have come and gone while the port was taken: the keys bound with
                // it were the first peers'.
                for p in &self.cfg.peers {
                    let still = self
                        .sessions
                        .values()
                        .any(|s| s.cfg.peer.addr == p.peer.addr && s.cfg.md5_password.is_some());
                    if p.md5_password.is_some() && !still {
                        let _ = crate::md5::set_key(l.as_ref(), p.peer.addr, b"");
                    }
                }
                for s in self.sessions.values() {
                    if let Some(key) = &s.cfg.md5_password {
                        if let Err(e) =
                            crate::md5::set_key(l.as_ref(), s.cfg.peer.addr, key.as_bytes())
                        {
                            tracing::warn!(peer = %s.cfg.peer.addr, error = %e, "cannot set the TCP-MD5 key on the listener");
                        }
                    }
                }
                tracing::info!(addr = ?l.local_addr().ok(), "accepting BGP sessions");
                board.listen_error = None;
                accept_all(l.clone(), accepted.clone());
                self.listener = Some(l);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot accept BGP sessions yet; connecting out meanwhile and trying again every second");
                board.listen_error = Some(e);
            }
        }
    }

    /// Adds, removes and restarts sessions so they match `peers`; untouched peers keep theirs.
    async fn set_peers(&mut self, peers: Vec<PeerConfig>) {
        let mut changed = Vec::new();
        let wanted: BTreeMap<IpAddr, PeerConfig> =
            peers.into_iter().map(|p| (p.peer.addr, p)).collect();
        let gone: Vec<PeerId> = self
            .sessions
            .iter()
            .filter(|(_, s)| wanted.get(&s.cfg.peer.addr) != Some(&s.cfg))
            .map(|(i, _)| *i)
            .collect();
        for i in gone {
            if let Some(s) = self.sessions.remove(&i) {
                tracing::info!(peer = %s.cfg.peer.addr, "BGP peer removed or changed; its session is closed");
                // Its key goes with it (an empty key removes it); a changed peer gets its new
                // key back below.
                if let (Some(l), Some(_)) = (&self.listener, &s.cfg.md5_password) {
                    if let Err(e) = crate::md5::set_key(l.as_ref(), s.cfg.peer.addr, b"") {
                        tracing::warn!(peer = %s.cfg.peer.addr, error = %e, "cannot remove the TCP-MD5 key from the listener");
                    }
                }
                if let Some(t) = s.task {
                    t.abort();
                }
                self.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .peers
                    .remove(&s.cfg.peer.addr);
            }
            changed.extend(self.rib.peer_down(i));
            changed.extend(self.rib.take_pending());
        }
        let have: BTreeSet<IpAddr> = self.sessions.values().map(|s| s.cfg.peer.addr).collect();
        for (addr, pc) in wanted {
            if have.contains(&addr) {
                continue;
            }
            if let (Some(l), Some(key)) = (&self.listener, &pc.md5_password) {
                if let Err(e) = crate::md5::set_key(l.as_ref(), addr, key.as_bytes()) {
                    tracing::warn!(peer = %addr, error = %e, "cannot set the TCP-MD5 key on the listener");
                }
            }
            // Slots are never reused: a late report from an old session must not land on a
            // new peer.
            self.rib.peers.push(pc.peer.clone());
            let i = self.rib.peers.len() - 1;
            let passive = pc.passive;
            self.sessions.insert(
                i,
                Session {
                    cfg: pc,
                    task: None,
                    outbox: None,
                    up: false,
                    connected: false,
                    sent: BTreeSet::new(),
                    generation: 0,
                    stale: None,
                    stale_epoch: 0,
                    refreshed: BTreeSet::new(),
                    peer_restart_time: None,
                    held: BTreeMap::new(),
                    // A peer added well after our restart is not told of it.
                    after_restart: self.deferral.is_some(),
                    peer_restarting: false,
                    peer_route_refresh: false,
                    cease: None,
                    warned: false,
                    over_limit: false,
                    backoff: LIMIT_BACKOFF,
                    hold_off_until: None,
                },
            );
            self.set_status(i, |_| {});
            if !passive {
                self.start(i, Duration::ZERO, None);
            }
        }
        self.propagate(changed).await;
    }

    /// Our own prefixes from now on: `originated` for every peer, `advertised` for outside
    /// peers only.
    async fn set_own(&mut self, originated: BTreeSet<IpNet>, advertised: BTreeSet<IpNet>) {
        let before: BTreeSet<IpNet> = self.originated.union(&self.advertised).copied().collect();
        let after: BTreeSet<IpNet> = originated.union(&advertised).copied().collect();
        let mut changed = Vec::new();
        for p in before.difference(&after) {
            changed.extend(self.rib.withdraw(OWN, *p));
            changed.extend(self.rib.take_pending());
        }
        for p in after.difference(&before) {
            let Some(nh) = self.own_next_hop(p) else {
                tracing::warn!(prefix = %p, "no local address of this family to announce it with; not announced");
                continue;
            };
            if let Ok(c) = self.rib.announce(OWN, *p, nh, own_attrs()) {
                changed.extend(c);
            }
            changed.extend(self.rib.take_pending());
        }
        // A prefix that stays ours but changes who may have it: sent again through the export
        // rules, which announce or withdraw it per peer.
        let moved: Vec<IpNet> = before
            .intersection(&after)
            .filter(|p| self.originated.contains(p) != originated.contains(p))
            .copied()
            .collect();
        self.originated = originated;
        self.advertised = advertised;
        for p in moved {
            if let Some(path) = self.rib.best(&p) {
                changed.push(Change::Best(p, path.clone()));
            }
        }
        self.propagate(changed).await;
    }

    async fn set_originate(&mut self, prefixes: Vec<IpNet>) {
        let advertised = self.advertised.clone();
        self.set_own(prefixes.into_iter().collect(), advertised)
            .await;
    }

    async fn set_advertise(&mut self, prefixes: Vec<IpNet>) {
        let originated = self.originated.clone();
        self.set_own(originated, prefixes.into_iter().collect())
            .await;
    }

    /// Sends each change to every established peer the export rules allow, packed.
    async fn propagate(&mut self, mut changed: Vec<Change>) {
        // Equal-cost next hops follow the best paths they go with.
        changed.extend(self.rib.take_pending());
        if changed.is_empty() {
            return;
        }
        // Every change reaches the kernel side, waiting for room if it lags (a dropped change
        // would leave a route missing); a closed receiver does not stop the speaker.
        for c in &changed {
            let _ = self.changes.send(c.clone()).await;
        }
        if self.deferral.is_some() {
            return; // peers get whole tables once selection is done
        }
        for to in self.up_peers() {
            let mut words = Vec::new();
            for c in &changed {
                let (prefix, path) = match c {
                    Change::Best(p, path) => (*p, Some(path)),
                    Change::Gone(p) => (*p, None),
                    // Peers are sent the best path only.
                    Change::NextHops(..) => continue,
                };
                let export = path.and_then(|path| self.export(&prefix, path, to));
                let Some(s) = self.sessions.get_mut(&to) else {
                    continue;
                };
                match export {
                    Some((nh, a)) => {
                        s.sent.insert(prefix);
                        words.push((prefix, Some((nh, a))));
                    }
                    None => {
                        if s.sent.remove(&prefix) {
                            words.push((prefix, None));
                        }
                    }
                }
            }
            if let Some(out) = self.sessions.get(&to).and_then(|s| s.outbox.as_ref()) {
                out.put(words);
            }
        }
    }

    /// The peer asked for our routes again (RFC 2918): its whole Adj-RIB-Out of that family
    /// goes out again, as the latest word per prefix.
    fn refresh(&mut self, i: PeerId, afi: u16, safi: u8) {
        let v6 = match (afi, safi) {
            (crate::open::AFI_IPV4, crate::open::SAFI_UNICAST) => false,
            (crate::open::AFI_IPV6, crate::open::SAFI_UNICAST) => true,
            _ => return,
        };
        let Some(s) = self.sessions.get(&i) else {
            return;
        };
        // Before selection is done the peer has not had its table yet; it will get it whole.
        if !s.up || self.deferral.is_some() {
            return;
        }
        let mut words = Vec::new();
        for prefix in s.sent.iter().filter(|p| matches!(p, IpNet::V6(_)) == v6) {
            let export = self
                .rib
                .best(prefix)
                .and_then(|path| self.export(prefix, path, i));
            if let Some((nh, a)) = export {
                words.push((*prefix, Some((nh, a))));
            }
        }
        tracing::info!(peer = %s.cfg.peer.addr, afi, safi, prefixes = words.len(), "route refresh requested; sending the table again");
        if let Some(out) = &s.outbox {
            out.put(words);
        }
    }

    /// A session came up: the whole table, then End-of-RIB.
    async fn established(
        &mut self,
        i: PeerId,
        peer_id: Ipv4Addr,
        restart: Option<u16>,
        kept_forwarding: bool,
        restarting: bool,
    ) {
        let Some(s) = self.sessions.get_mut(&i) else {
            return;
        };
        s.peer_restarting = restarting;
        // Our first session with the peer since we started is done with our restart: later
        // OPENs to it say nothing of one (RFC 4724 §4.1).
        s.after_restart = false;
        s.peer_restart_time = restart;
        s.warned = false;
        tracing::info!(peer = %s.cfg.peer.addr, %peer_id, stale = s.stale.is_some(), "BGP session established");
        s.up = true;
        s.sent.clear();
        s.refreshed.clear();
        // The peer sends its table again; what it refused before is refused (or not) anew.
        s.held.clear();
        // The router id the peer really uses (ORIGINATOR_ID when its routes are reflected).
        if let Some(p) = self.rib.peers.get_mut(i) {
            p.router_id = peer_id;
        }
        if self.deferral.is_none() {
            self.send_table(i);
        }
        self.set_status(i, |st| {
            st.established = true;
            st.since = SystemTime::now();
            st.last_error = None;
            st.end_of_rib = false;
            st.graceful_restart = restart.is_some();
        });
        // A peer back from a restart that did not keep forwarding has no use for the routes
        // kept for it: they go now, not at its End-of-RIB (RFC 4724 §4.2).
        let forgot = self
            .sessions
            .get_mut(&i)
            .filter(|s| s.stale.is_some() && !kept_forwarding);
        if let Some(s) = forgot {
            s.stale = None;
            tracing::info!(peer = %s.cfg.peer.addr, "the peer restarted without keeping forwarding; its stale routes are withdrawn");
            self.set_status(i, |st| st.stale = false);
            let changed = self.rib.peer_down(i);
            self.propagate(changed).await;
        }
        self.refresh_counts();
        self.end_deferral_if_done();
    }

    /// The peers whose sessions are established.
    fn up_peers(&self) -> Vec<PeerId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.up)
            .map(|(i, _)| *i)
            .collect()
    }

    /// The whole table for peer `i`, then End-of-RIB.
    fn send_table(&mut self, i: PeerId) {
        let best: Vec<(IpNet, Path)> = self.rib.loc_rib().map(|(p, b)| (*p, b.clone())).collect();
        let mut announce = Vec::new();
        for (prefix, path) in best {
            if let Some((nh, a)) = self.export(&prefix, &path, i) {
                announce.push((prefix, Some((nh, a))));
            }
        }
        if let Some(s) = self.sessions.get_mut(&i) {
            s.sent = announce.iter().map(|(p, _)| *p).collect();
            if let Some(out) = &s.outbox {
                out.put(announce);
                out.end_of_rib();
            }
        }
    }

    /// After our restart, selection waits (RFC 4724 §4.1) until every peer is up and has sent
    /// End-of-RIB, bar those that do not restart gracefully or are restarting themselves and
    /// those not back within [`RECONNECT_WINDOW`], or until the deferral time is over; then every peer gets the whole table at once. A
    /// reflector that sent End-of-RIB after half a table would have its clients drop the
    /// other half.
    fn end_deferral_if_done(&mut self) {
        let Some(deadline) = self.deferral else {
            return;
        };
        let board = self.status.lock().unwrap_or_else(|p| p.into_inner());
        let gave_up_waiting = self.started.elapsed() > RECONNECT_WINDOW;
        let all_in = self.sessions.values().all(|s| {
            if !s.up {
                return gave_up_waiting;
            }
            s.peer_restart_time.is_none()
                || s.peer_restarting
                || board
                    .peers
                    .get(&s.cfg.peer.addr)
                    .is_some_and(|st| st.end_of_rib)
        });
        drop(board);
        let late = tokio::time::Instant::now() >= deadline;
        if !(all_in || late) {
            return;
        }
        tracing::info!(
            every_end_of_rib = all_in,
            "route selection after the restart done; sending the tables"
        );
        self.deferral = None;
        for i in self.up_peers() {
            self.send_table(i);
        }
    }

    /// What peer `to` may be sent for `path`, with the next hop and attributes to send.
    fn export(&self, prefix: &IpNet, path: &Path, to: PeerId) -> Option<(IpAddr, Attributes)> {
        let s = self.sessions.get(&to)?;
        if let Export::Own(transit) = &s.cfg.export {
            if path.peer != OWN && !transit.iter().any(|r| r.contains(prefix)) {
                return None;
            }
        }
        if path.peer == OWN && !s.cfg.export.outside() && !self.originated.contains(prefix) {
            return None; // for outside peers only
        }
        // Without a local address of the prefix's family, the v4 one stands in: a path whose
        // next hop is kept (reflected iBGP) goes out, one that would get ours as its next hop
        // (our own, towards eBGP) is left out by the family check below.
        let local = self.own_next_hop(prefix).unwrap_or(self.cfg.local_address);
        self.rib
            .export(path, to, local)
            .filter(|(nh, _)| nh.is_ipv4() == prefix.addr().is_ipv4())
    }

    /// Our address as the next hop for `prefix`: one of the prefix's own family.
    fn own_next_hop(&self, prefix: &IpNet) -> Option<IpAddr> {
        match (prefix, self.cfg.local_address) {
            (IpNet::V4(_), a @ IpAddr::V4(_)) | (IpNet::V6(_), a @ IpAddr::V6(_)) => Some(a),
            (IpNet::V6(_), IpAddr::V4(_)) => self.cfg.local_address_v6.map(IpAddr::V6),
            (IpNet::V4(_), IpAddr::V6(_)) => None,
        }
    }

    /// Applies new import rules to what every peer has announced.
    fn set_import(&mut self, import: Import) -> Vec<Change> {
        // The operator's ranges changed (not just the leases): ask the peers that can for
        // their tables again, so that nothing depends on what was kept of them before.
        let ranges_changed =
            import.guarded != self.cfg.import.guarded || import.allow != self.cfg.import.allow;
        self.cfg.import = import;
        if ranges_changed {
            for s in self
                .sessions
                .values()
                .filter(|s| s.up && s.peer_route_refresh)
            {
                if let Some(out) = &s.outbox {
                    tracing::info!(peer = %s.cfg.peer.addr, "import rules changed; asking the peer for its routes again");
                    out.request_refresh(crate::open::AFI_IPV4, crate::open::SAFI_UNICAST);
                }
            }
        }
        let mut changed = Vec::new();
        let ids: Vec<PeerId> = self.sessions.keys().copied().collect();
        for i in ids {
            for (prefix, path) in self.rib.paths_from(i) {
                if let Err(why) = self.cfg.import.check(&prefix, path.next_hop) {
                    changed.extend(self.rib.withdraw(i, prefix));
                    changed.extend(self.rib.take_pending());
                    if let Some(s) = self.sessions.get_mut(&i) {
                        s.held.insert(
                            prefix,
                            Held {
                                next_hop: path.next_hop,
                                attrs: path.attrs,
                                why,
                            },
                        );
                    }
                }
            }
            let Some(s) = self.sessions.get_mut(&i) else {
                continue;
            };
            // Held routes of a peer that is neither up nor restarting are not its word any more.
            if !s.up && s.stale.is_none() {
                s.held.clear();
                continue;
            }
            let mut admitted = Vec::new();
            for (prefix, h) in s.held.iter_mut() {
                match self.cfg.import.check(prefix, h.next_hop) {
                    Ok(()) => admitted.push(*prefix),
                    Err(why) => h.why = why,
                }
            }
            for prefix in admitted {
                let Some(s) = self.sessions.get_mut(&i) else {
                    continue;
                };
                let Some(h) = s.held.remove(&prefix) else {
                    continue;
                };
                // Announced in this session: End-of-RIB after a restart keeps it.
                if s.up {
                    s.refreshed.insert(prefix);
                }
                match self.rib.announce(i, prefix, h.next_hop, h.attrs) {
                    Ok(c) => changed.extend(c),
                    Err(why) => tracing::debug!(%prefix, ?why, "announcement refused"),
                }
                changed.extend(self.rib.take_pending());
            }
            self.set_status(i, |_| {});
        }
        changed
    }

    async fn received(&mut self, i: PeerId, u: Update) {
        if u.is_end_of_rib() {
            if let Some(s) = self.sessions.get_mut(&i) {
                s.backoff = LIMIT_BACKOFF;
            }
            self.set_status(i, |st| st.end_of_rib = true);
            self.end_deferral_if_done();
            let stale = self.sessions.get(&i).is_some_and(|s| s.stale.is_some());
            if stale {
                let changed = self.flush_stale(i);
                self.propagate(changed).await;
            }
            return;
        }
        let mut changed = Vec::new();
        let withdrawn: Vec<IpNet> = u
            .withdrawn_v4()
            .into_iter()
            .map(IpNet::V4)
            .chain(u.withdrawn_v6().into_iter().map(IpNet::V6))
            .collect();
        for p in withdrawn {
            if let Some(s) = self.sessions.get_mut(&i) {
                s.held.remove(&p);
            }
            changed.extend(self.rib.withdraw(i, p));
            changed.extend(self.rib.take_pending());
        }
        // A path that has been through us already is a loop, not something to judge by the
        // import rules: the RIB drops it (and what the peer sent for its prefixes before).
        let looped = self.rib.loop_check(i, &u.attrs).is_err();
        if u.withdraw_reason.is_none() {
            let attrs = Arc::new(u.attrs.clone());
            let mut announced: Vec<(IpNet, IpAddr)> = Vec::new();
            if let Some(nh) = u.attrs.next_hop {
                announced.extend(u.nlri.iter().map(|p| (IpNet::V4(*p), IpAddr::V4(nh))));
            }
            if let Some(MpReach::V6 { next_hop, nlri }) = &u.attrs.mp_reach {
                if let Some(nh) = next_hop.first() {
                    announced.extend(nlri.iter().map(|p| (IpNet::V6(*p), *nh)));
                }
            }
            for (p, nh) in announced {
                let Some(s) = self.sessions.get_mut(&i) else {
                    break;
                };
                let refused = if looped {
                    Ok(())
                } else {
                    self.cfg.import.check(&p, nh)
                };
                if let Err(why) = refused {
                    tracing::debug!(peer = %s.cfg.peer.addr, prefix = %p, next_hop = %nh, %why, "announcement refused by the import rules");
                    s.held.insert(
                        p,
                        Held {
                            next_hop: nh,
                            attrs: attrs.clone(),
                            why,
                        },
                    );
                    // Whatever the peer sent for the prefix before is replaced by this.
                    changed.extend(self.rib.withdraw(i, p));
                    changed.extend(self.rib.take_pending());
                    continue;
                }
                s.held.remove(&p);
                s.refreshed.insert(p);
                match self.rib.announce(i, p, nh, attrs.clone()) {
                    Ok(c) => changed.extend(c),
                    Err(why) => tracing::debug!(prefix = %p, ?why, "announcement refused"),
                }
                changed.extend(self.rib.take_pending());
            }
        }
        self.propagate(changed).await;
        self.check_limit(i);
    }

    /// Closes the session of a peer over its prefix limit (RFC 4486 Cease/1), warning first at
    /// 75 %. Refused prefixes count: they are held in memory too.
    fn check_limit(&mut self, i: PeerId) {
        let count = self.rib.count_from(i);
        let Some(s) = self.sessions.get_mut(&i) else {
            return;
        };
        let Some(limit) = s.cfg.max_prefixes else {
            return;
        };
        let n = count + s.held.len();
        let limit_n = limit as usize;
        if n > limit_n {
            if let Some(cease) = s.cease.take() {
                let why = format!("the peer announced {n} prefixes, over its limit of {limit}");
                tracing::warn!(peer = %s.cfg.peer.addr, prefixes = n, limit, backoff_s = s.backoff.as_secs(), "{why}; closing the session (Cease/1)");
                // AFI, SAFI and the limit (RFC 4486 §4).
                let mut data = vec![0, 1, 1];
                data.extend_from_slice(&limit.to_be_bytes());
                let _ = cease.send((Notification::new(CEASE, 1, data), why));
                s.over_limit = true;
            }
        } else if !s.warned && n * 4 >= limit_n * 3 {
            s.warned = true;
            tracing::warn!(peer = %s.cfg.peer.addr, prefixes = n, limit, "the peer is near its prefix limit");
        }
    }

    /// Drops what a restarting peer announced before and has not announced again.
    fn flush_stale(&mut self, i: PeerId) -> Vec<Change> {
        let Some(s) = self.sessions.get_mut(&i) else {
            return Vec::new();
        };
        s.stale = None;
        let keep = std::mem::take(&mut s.refreshed);
        let addr = s.cfg.peer.addr;
        let mut changed = Vec::new();
        let mut gone = 0;
        for p in self.rib.prefixes_from(i) {
            if !keep.contains(&p) {
                gone += 1;
                changed.extend(self.rib.withdraw(i, p));
                changed.extend(self.rib.take_pending());
            }
        }
        if let Some(s) = self.sessions.get_mut(&i) {
            s.refreshed = keep;
        }
        tracing::info!(peer = %addr, stale_removed = gone, "graceful restart of the peer done");
        self.set_status(i, |st| st.stale = false);
        changed
    }

    /// The restart time of a peer's graceful restart ran out.
    async fn stale_expired(&mut self, i: PeerId, epoch: u64) {
        let Some(s) = self.sessions.get(&i) else {
            return;
        };
        if s.stale != Some(epoch) {
            return;
        }
        let changed = if s.up {
            self.flush_stale(i)
        } else {
            tracing::warn!(peer = %s.cfg.peer.addr, "peer did not come back within its restart time; its routes are withdrawn");
            if let Some(s) = self.sessions.get_mut(&i) {
                s.stale = None;
                s.held.clear();
            }
            self.set_status(i, |st| st.stale = false);
            self.rib.peer_down(i)
        };
        self.propagate(changed).await;
    }

    async fn down(&mut self, i: PeerId, why: String, stale_for: Option<u16>) {
        let Some(s) = self.sessions.get_mut(&i) else {
            return;
        };
        s.up = false;
        s.sent.clear();
        if let Some(out) = s.outbox.take() {
            out.close();
        }
        s.peer_restart_time = None;
        let passive = s.cfg.passive;
        let addr = s.cfg.peer.addr;
        // A peer restarting gracefully keeps its routes (stale) for the restart time it gave
        // last; any other end withdraws them.
        let keep = match stale_for {
            Some(t) => {
                s.stale_epoch += 1;
                s.stale = Some(s.stale_epoch);
                let (tx, epoch) = (self.stale_timer.clone(), s.stale_epoch);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(t))).await;
                    let _ = tx.send((i, epoch)).await;
                });
                tracing::info!(peer = %addr, restart_time = t, "peer restarting gracefully; its routes are kept as stale");
                true
            }
            None => {
                s.stale = None;
                s.held.clear();
                false
            }
        };
        s.cease = None;
        let retry = if std::mem::take(&mut s.over_limit) {
            let wait = s.backoff;
            s.backoff = (s.backoff * 2).min(MAX_LIMIT_BACKOFF);
            s.hold_off_until = Some(tokio::time::Instant::now() + wait);
            wait
        } else {
            Duration::from_secs(2)
        };
        if passive {
            tracing::warn!(peer = %addr, %why, "BGP session down; waiting for the peer to connect again");
            s.task = None;
        } else {
            tracing::warn!(peer = %addr, %why, retry_s = retry.as_secs(), "BGP session down; retrying");
        }
        self.set_status(i, |st| {
            st.established = false;
            st.since = SystemTime::now();
            st.last_error = Some(why);
            st.stale = keep;
        });
        if !keep {
            let changed = self.rib.peer_down(i);
            self.propagate(changed).await;
        }
        if !passive {
            self.start(i, retry, None);
        }
        self.refresh_counts();
    }

    /// One session per peer (RFC 4271 §6.8): an established one stays, unless the peer
    /// restarts gracefully, whose new connection means it restarted (RFC 4724 §4.2). While our
    /// attempt has no connection (connecting, or waiting to retry) the peer's is taken; when
    /// both have one, the connection opened by the higher router id wins.
    async fn incoming(&mut self, from: IpAddr, stream: TcpStream) {
        let Some((i, s)) = self.sessions.iter().find(|(_, s)| s.cfg.peer.addr == from) else {
            tracing::warn!(%from, "BGP connection from an address that is not a configured peer; closed");
            return;
        };
        let i = *i;
        // Ceased for its prefix limit (its Down may still be on the way) or waiting it out.
        if s.over_limit
            || s.hold_off_until
                .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            tracing::info!(peer = %from, "BGP connection from the peer closed: it passed its prefix limit and waits out its back-off");
            return;
        }
        if s.cfg.gtsm {
            if let Err(e) = crate::gtsm::protect(&stream, from.is_ipv6()) {
                tracing::warn!(peer = %from, error = %e, "cannot turn GTSM on for the peer's connection; closed");
                return;
            }
        }
        if s.up && s.peer_restart_time.is_some() {
            let stale_for = s.peer_restart_time;
            self.down(i, "the peer restarted (new connection)".into(), stale_for)
                .await;
            self.start(i, Duration::ZERO, Some(stream));
            return;
        }
        let take = if s.up {
            false
        } else if s.cfg.passive || s.task.is_none() || !s.connected {
            // Our own attempt has no connection yet (still connecting, or waiting to try
            // again): nothing collides, and the peer's connection replaces the attempt.
            true
        } else {
            s.cfg.peer.router_id > self.cfg.router_id
        };
        if take {
            tracing::info!(peer = %from, "BGP session opened by the peer");
            self.start(i, Duration::ZERO, Some(stream));
        } else {
            tracing::info!(peer = %from, "BGP connection from the peer closed: a session already exists");
        }
    }
}

/// Runs the speaker until [`Control::Stop`] or until `control` closes. `changes` receives every
/// change of best path (for the kernel); `status` is kept current for reports.
pub async fn run(
    cfg: SpeakerConfig,
    changes: mpsc::Sender<Change>,
    mut control: mpsc::Receiver<Control>,
    status: Status,
) {
    // Our own prefixes come from a pseudo-peer in our AS with our router id.
    let own = Peer {
        addr: cfg.local_address,
        router_id: cfg.router_id,
        asn: cfg.local_as,
        rr_client: false,
    };
    let rib = Rib::new(cfg.local_as, cfg.router_id, cfg.cluster_id, vec![own]);
    let (reports_tx, mut reports) = mpsc::channel::<(PeerId, u64, Report)>(1024);
    let (stale_timer, mut stale_expired) = mpsc::channel::<(PeerId, u64)>(64);
    let (accepted_tx, mut accepted) = mpsc::channel::<(IpAddr, TcpStream)>(16);
    let (bound_tx, mut bound) = mpsc::channel::<Result<Arc<TcpListener>, String>>(4);
    if let Some(addr) = cfg.listen {
        let keys = cfg
            .peers
            .iter()
            .filter_map(|p| Some((p.peer.addr, p.md5_password.clone()?)))
            .collect();
        tokio::spawn(keep_binding(addr, keys, bound_tx));
    }
    let peers = cfg.peers.clone();
    let originate = cfg.originate.clone();
    let advertise = cfg.advertise.clone();
    let deferral = cfg.graceful_restart.filter(|g| g.restarted).map(|g| {
        let wait = Duration::from_secs(u64::from(g.time)).min(SELECTION_DEFERRAL);
        tokio::time::Instant::now() + wait
    });
    let mut sp = Speaker {
        cfg,
        rib,
        sessions: BTreeMap::new(),
        reports_tx,
        changes,
        status,
        listener: None,
        originated: BTreeSet::new(),
        advertised: BTreeSet::new(),
        deferral,
        started: tokio::time::Instant::now(),
        stale_timer,
    };
    sp.set_own(
        originate.into_iter().collect(),
        advertise.into_iter().collect(),
    )
    .await;
    sp.set_peers(peers).await;

    // Prefix counts for the status board take a pass over the RIB: once a second, not per
    // UPDATE.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                sp.refresh_counts();
                sp.end_deferral_if_done();
            }
            r = reports.recv() => {
                let Some((i, generation, report)) = r else { return };
                if sp.sessions.get(&i).map(|s| s.generation) != Some(generation) {
                    continue; // from a session since replaced or removed
                }
                match report {
                    Report::Up { peer_id, peer_restart_time, peer_kept_forwarding, peer_restarting, peer_route_refresh } => {
                        if let Some(s) = sp.sessions.get_mut(&i) {
                            s.peer_route_refresh = peer_route_refresh;
                        }
                        sp.established(i, peer_id, peer_restart_time, peer_kept_forwarding, peer_restarting).await
                    }
                    Report::Connected => {
                        if let Some(s) = sp.sessions.get_mut(&i) {
                            s.connected = true;
                        }
                    }
                    Report::Received(u) => sp.received(i, *u).await,
                    Report::Down { why, stale_for } => sp.down(i, why, stale_for).await,
                    Report::Refresh { afi, safi } => sp.refresh(i, afi, safi),
                }
            }
            Some((i, epoch)) = stale_expired.recv() => sp.stale_expired(i, epoch).await,
            Some((from, stream)) = accepted.recv() => sp.incoming(from, stream).await,
            Some(b) = bound.recv() => sp.bound(b, &accepted_tx),
            c = control.recv() => match c {
                Some(Control::SetPeers(p)) => sp.set_peers(p).await,
                Some(Control::SetOriginate(p)) => sp.set_originate(p).await,
                Some(Control::SetAdvertise(p)) => sp.set_advertise(p).await,
                Some(Control::SetImport(import)) => {
                    let changed = sp.set_import(import);
                    sp.propagate(changed).await;
                }
                Some(Control::Stop) | None => {
                    for s in sp.sessions.values() {
                        if let Some(t) = &s.task {
                            t.abort();
                        }
                    }
                    return;
                }
            },
        }
    }
}
