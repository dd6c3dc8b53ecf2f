//! The speaker: one session per configured peer, all feeding one RIB; every change of best path
//! is sent to the peers the export rules allow, and withdrawn from those that had it. A session
//! that goes down is started again after a pause.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::attribute::{Attributes, MpReach, MpUnreach};
use crate::driver::{self, Report};
use crate::fsm::Config;
use crate::open::Capability;
use crate::rib::{Change, Path, Peer, PeerId, Rib};
use crate::update::Update;

#[derive(Clone, Debug)]
pub struct PeerConfig {
    pub peer: Peer,
    pub hold_time: u16,
    pub passive: bool,
    pub md5_password: Option<String>,
}

#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    pub local_as: u32,
    pub router_id: std::net::Ipv4Addr,
    pub cluster_id: Option<std::net::Ipv4Addr>,
    /// Our address on the peers' segment: the next hop towards eBGP peers and for our own
    /// prefixes.
    pub local_address: IpAddr,
    pub peers: Vec<PeerConfig>,
    /// Prefixes this node originates.
    pub originate: Vec<IpNet>,
    /// Where to accept sessions that peers open (normally port 179); without it the speaker
    /// only connects out, and passive peers never come up.
    pub listen: Option<SocketAddr>,
}

/// The peer id under which our own prefixes sit in the RIB (never a session).
fn own(cfg: &SpeakerConfig) -> PeerId {
    cfg.peers.len()
}

/// The UPDATE announcing one prefix; `None` for an IPv4 prefix with an IPv6 next hop, which
/// twill does not send.
fn update_for(prefix: IpNet, next_hop: IpAddr, mut attrs: Attributes) -> Option<Update> {
    match (prefix, next_hop) {
        (IpNet::V4(p), IpAddr::V4(nh)) => {
            attrs.next_hop = Some(nh);
            Some(Update {
                attrs,
                nlri: vec![p],
                ..Default::default()
            })
        }
        (IpNet::V6(p), nh) => {
            attrs.mp_reach = Some(MpReach::V6 {
                next_hop: vec![nh],
                nlri: vec![p],
            });
            Some(Update {
                attrs,
                ..Default::default()
            })
        }
        (IpNet::V4(_), IpAddr::V6(_)) => None,
    }
}

fn withdrawal(prefix: IpNet) -> Update {
    match prefix {
        IpNet::V4(p) => Update {
            withdrawn: vec![p],
            ..Default::default()
        },
        IpNet::V6(p) => Update {
            attrs: Attributes {
                mp_unreach: Some(MpUnreach::V6(vec![p])),
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

/// Binds the listening socket, with each peer's TCP-MD5 key on it (a signed peer's SYN is
/// refused without the key), and forwards every accepted connection from a configured peer.
async fn listen(
    addr: SocketAddr,
    peers: &[PeerConfig],
    accepted: mpsc::Sender<(PeerId, TcpStream)>,
) -> std::io::Result<()> {
    let sock = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    for p in peers {
        if let Some(key) = &p.md5_password {
            crate::md5::set_key(&sock, p.peer.addr, key.as_bytes())?;
        }
    }
    sock.bind(addr)?;
    let listener = sock.listen(64)?;
    let by_addr: BTreeMap<IpAddr, PeerId> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| (p.peer.addr, i))
        .collect();
    tokio::spawn(async move {
        loop {
            let (stream, from) = match listener.accept().await {
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
            match by_addr.get(&ip) {
                Some(i) => {
                    let _ = stream.set_nodelay(true);
                    if accepted.send((*i, stream)).await.is_err() {
                        return;
                    }
                }
                None => {
                    tracing::warn!(%from, "BGP connection from an address that is not a configured peer; closed")
                }
            }
        }
    });
    Ok(())
}

/// Starts the session to peer `i` after `delay`, on `incoming` if the peer opened it; returns
/// its reports and the task, to abort when a collision is resolved against it.
fn spawn_session(
    cfg: &SpeakerConfig,
    i: PeerId,
    delay: Duration,
    incoming: Option<TcpStream>,
    senders: &mut BTreeMap<PeerId, mpsc::Sender<Update>>,
) -> (mpsc::Receiver<Report>, tokio::task::JoinHandle<()>) {
    let pc = cfg.peers[i].clone();
    let session = Config {
        local_as: cfg.local_as,
        peer_as: pc.peer.asn,
        router_id: cfg.router_id,
        hold_time: pc.hold_time,
        connect_retry: 2,
        // A session on a connection the peer opened must not also connect out.
        passive: pc.passive || incoming.is_some(),
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
        ],
        md5_password: pc.md5_password.clone(),
    };
    let (tx, rx) = mpsc::channel(4096);
    senders.insert(i, tx);
    let (rtx, reports) = mpsc::channel::<Report>(1024);
    let addr = SocketAddr::new(pc.peer.addr, 179);
    let task = tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        driver::run(session, addr, incoming, rx, rtx).await;
    });
    (reports, task)
}

/// Runs the speaker until `stop` closes. `changes` receives every change of best path (for
/// the kernel); it may be dropped by a caller that does not install routes.
pub async fn run(cfg: SpeakerConfig, changes: mpsc::Sender<Change>, mut stop: mpsc::Receiver<()>) {
    let mut peers: Vec<Peer> = cfg.peers.iter().map(|p| p.peer.clone()).collect();
    // Our own prefixes come from a pseudo-peer in our AS with our router id.
    peers.push(Peer {
        addr: cfg.local_address,
        router_id: cfg.router_id,
        asn: cfg.local_as,
        rr_client: false,
    });
    let mut rib = Rib::new(cfg.local_as, cfg.router_id, cfg.cluster_id, peers);
    let me = own(&cfg);
    for p in &cfg.originate {
        let attrs = Attributes {
            origin: Some(crate::attribute::Origin::Igp),
            as_path: Some(vec![]),
            local_pref: Some(100),
            ..Default::default()
        };
        let _ = rib.announce(me, *p, cfg.local_address, Arc::new(attrs));
    }

    let (reports_tx, mut reports) = mpsc::channel::<(PeerId, Report)>(1024);
    let mut senders: BTreeMap<PeerId, mpsc::Sender<Update>> = BTreeMap::new();
    let mut up: BTreeSet<PeerId> = BTreeSet::new();
    let mut sent: BTreeMap<PeerId, BTreeSet<IpNet>> = BTreeMap::new();

    // The session task of each peer that has one (passive peers have none until they call).
    let mut sessions: BTreeMap<PeerId, tokio::task::JoinHandle<()>> = BTreeMap::new();

    // Session reports are tagged with their peer id by small forwarding tasks.
    let forward = |i: PeerId,
                   delay: Duration,
                   incoming: Option<TcpStream>,
                   senders: &mut BTreeMap<PeerId, mpsc::Sender<Update>>,
                   sessions: &mut BTreeMap<PeerId, tokio::task::JoinHandle<()>>| {
        let (mut rx, task) = spawn_session(&cfg, i, delay, incoming, senders);
        if let Some(old) = sessions.insert(i, task) {
            old.abort();
        }
        let tx = reports_tx.clone();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                if tx.send((i, r)).await.is_err() {
                    break;
                }
            }
        });
    };
    for i in 0..cfg.peers.len() {
        if !cfg.peers[i].passive {
            forward(i, Duration::ZERO, None, &mut senders, &mut sessions);
        }
    }
    let (accepted_tx, mut accepted) = mpsc::channel::<(PeerId, TcpStream)>(16);
    if let Some(addr) = cfg.listen {
        match listen(addr, &cfg.peers, accepted_tx).await {
            Ok(()) => tracing::info!(%addr, "accepting BGP sessions"),
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen for BGP sessions; only connecting out")
            }
        }
    }

    loop {
        let (i, report) = tokio::select! {
            r = reports.recv() => match r { Some(r) => r, None => return },
            Some((i, stream)) = accepted.recv() => {
                let pc = &cfg.peers[i];
                // One session per peer (RFC 4271 §6.8): an established one stays; while ours
                // is still connecting, the connection opened by the higher router id wins.
                let take = if up.contains(&i) {
                    false
                } else if pc.passive || !sessions.contains_key(&i) {
                    true
                } else {
                    pc.peer.router_id > cfg.router_id
                };
                if take {
                    tracing::info!(peer = %pc.peer.addr, "BGP session opened by the peer");
                    forward(i, Duration::ZERO, Some(stream), &mut senders, &mut sessions);
                } else {
                    tracing::info!(peer = %pc.peer.addr, "BGP connection from the peer closed: a session already exists");
                }
                continue;
            }
            _ = stop.recv() => {
                for t in sessions.values() {
                    t.abort();
                }
                return;
            }
        };
        let mut changed: Vec<Change> = Vec::new();
        match report {
            Report::Up { .. } => {
                tracing::info!(peer = %cfg.peers[i].peer.addr, "BGP session established");
                up.insert(i);
                // The whole table, then End-of-RIB.
                let best: Vec<(IpNet, Path)> =
                    rib.loc_rib().map(|(p, b)| (*p, b.clone())).collect();
                for (prefix, path) in best {
                    let msg = rib
                        .export(&path, i, cfg.local_address)
                        .and_then(|(nh, a)| update_for(prefix, nh, a));
                    if let (Some(u), Some(s)) = (msg, senders.get(&i)) {
                        let _ = s.send(u).await;
                        sent.entry(i).or_default().insert(prefix);
                    }
                }
                if let Some(s) = senders.get(&i) {
                    let _ = s.send(Update::default()).await;
                }
            }
            Report::Received(u) => {
                for p in u.withdrawn_v4() {
                    changed.extend(rib.withdraw(i, IpNet::V4(p)));
                }
                for p in u.withdrawn_v6() {
                    changed.extend(rib.withdraw(i, IpNet::V6(p)));
                }
                if u.withdraw_reason.is_none() {
                    let attrs = Arc::new(u.attrs.clone());
                    if let Some(nh) = u.attrs.next_hop {
                        for p in &u.nlri {
                            match rib.announce(i, IpNet::V4(*p), IpAddr::V4(nh), attrs.clone()) {
                                Ok(c) => changed.extend(c),
                                Err(why) => {
                                    tracing::debug!(prefix = %p, ?why, "announcement refused")
                                }
                            }
                        }
                    }
                    if let Some(MpReach::V6 { next_hop, nlri }) = &u.attrs.mp_reach {
                        if let Some(nh) = next_hop.first() {
                            for p in nlri {
                                match rib.announce(i, IpNet::V6(*p), *nh, attrs.clone()) {
                                    Ok(c) => changed.extend(c),
                                    Err(why) => {
                                        tracing::debug!(prefix = %p, ?why, "announcement refused")
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Report::Down(why) => {
                up.remove(&i);
                sent.remove(&i);
                changed.extend(rib.peer_down(i));
                if cfg.peers[i].passive {
                    tracing::warn!(peer = %cfg.peers[i].peer.addr, %why, "BGP session down; waiting for the peer to connect again");
                    sessions.remove(&i);
                } else {
                    tracing::warn!(peer = %cfg.peers[i].peer.addr, %why, "BGP session down; retrying");
                    forward(i, Duration::from_secs(2), None, &mut senders, &mut sessions);
                }
            }
        }
        for c in changed {
            let _ = changes.try_send(c.clone());
            for &to in &up {
                let Some(s) = senders.get(&to) else { continue };
                match &c {
                    Change::Best(prefix, path) => match rib
                        .export(path, to, cfg.local_address)
                        .and_then(|(nh, a)| update_for(*prefix, nh, a))
                    {
                        Some(u) => {
                            let _ = s.send(u).await;
                            sent.entry(to).or_default().insert(*prefix);
                        }
                        None => {
                            if sent.get_mut(&to).is_some_and(|set| set.remove(prefix)) {
                                let _ = s.send(withdrawal(*prefix)).await;
                            }
                        }
                    },
                    Change::Gone(prefix) => {
                        if sent.get_mut(&to).is_some_and(|set| set.remove(prefix)) {
                            let _ = s.send(withdrawal(*prefix)).await;
                        }
                    }
                }
            }
        }
    }
}
