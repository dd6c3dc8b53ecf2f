//! The thin tokio side of a session: it owns the TCP connection and the three timers, turns
//! bytes and expiries into [`Event`]s for the state machine, and carries out its [`Action`]s.
//! Writing is done by a task of its own ([`writer`]): a peer that stops reading holds up that
//! task only, while the session goes on reading, answering and running its hold timer.
//! UPDATEs to send come from an [`Outgoing`] source, taken one batch at a time as the
//! connection has room; what the peer announces goes out as [`Report`]s.

mod writer;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::fsm::{Action, Config, Event, Session, State, Timer};
use crate::md5;
use crate::message::{self, Message};
use crate::notification::Notification;
use crate::update::Update;
use writer::{Outcome, Writer};

/// What the session reports to its owner.
#[derive(Debug)]
pub enum Report {
    /// A TCP connection with the peer exists (ours, or the one it opened): from here on a
    /// second connection collides with this one (RFC 4271 6.8); before, there is nothing to
    /// collide with.
    Connected,
    Up {
        peer_id: std::net::Ipv4Addr,
        /// The peer restarts gracefully, keeping forwarding this long (RFC 4724).
        peer_restart_time: Option<u16>,
        /// Its OPEN says it kept forwarding through the restart that just ended (F bit).
        peer_kept_forwarding: bool,
        /// Its OPEN says it is restarting (R bit).
        peer_restarting: bool,
        /// It takes ROUTE-REFRESH requests.
        peer_route_refresh: bool,
    },
    Received(Box<Update>),
    /// The peer asks for our routes of this family again (RFC 2918).
    Refresh {
        afi: u16,
        safi: u8,
    },
    /// `stale_for`: keep the peer's routes, stale, this many seconds.
    Down {
        why: String,
        stale_for: Option<u16>,
    },
}

fn slot(t: Timer) -> usize {
    match t {
        Timer::ConnectRetry => 0,
        Timer::Hold => 1,
        Timer::Keepalive => 2,
    }
}

const TIMERS: [Timer; 3] = [Timer::ConnectRetry, Timer::Hold, Timer::Keepalive];

/// Where a session's UPDATEs come from. The session asks for more only when everything it was
/// given before is written, so what waits stays with the source, which may coalesce it.
pub(crate) trait Outgoing: Send + 'static {
    /// The next batch, waiting until there is one; `None` when whoever feeds the session is
    /// gone, which stops it. Cancel-safe: nothing is taken unless it is returned.
    fn next(&mut self) -> impl Future<Output = Option<Batch>> + Send;
}

/// What a session sends at once: ROUTE-REFRESH requests (RFC 2918), then UPDATEs in order.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub refresh: Vec<(u16, u8)>,
    pub updates: Vec<Update>,
}

/// UPDATEs taken from a channel at once, at most.
const CHANNEL_BATCH: usize = 64;

impl Outgoing for mpsc::Receiver<Update> {
    async fn next(&mut self) -> Option<Batch> {
        let mut updates = vec![self.recv().await?];
        while updates.len() < CHANNEL_BATCH {
            match self.try_recv() {
                Ok(u) => updates.push(u),
                Err(_) => break,
            }
        }
        Some(Batch {
            updates,
            ..Default::default()
        })
    }
}

/// Runs one session to a peer until it goes down (the caller restarts it if it wants).
/// `incoming`: a connection the peer opened to us, for passive sessions.
pub async fn run(
    cfg: Config,
    peer: SocketAddr,
    incoming: Option<TcpStream>,
    to_send: mpsc::Receiver<Update>,
    reports: mpsc::Sender<Report>,
) {
    run_with(cfg, peer, incoming, to_send, reports, None).await
}

/// [`run`], with UPDATEs from any [`Outgoing`] source.
pub(crate) async fn run_with(
    cfg: Config,
    peer: SocketAddr,
    incoming: Option<TcpStream>,
    mut outgoing: impl Outgoing,
    reports: mpsc::Sender<Report>,
    // The owner's word to end the session with a NOTIFICATION of its choosing.
    mut cease: Option<oneshot::Receiver<(Notification, String)>>,
) {
    let mut s = Session::new(cfg);
    let mut deadlines: [Option<Instant>; 3] = [None; 3];
    // The two halves apart, so that one `select!` can wait on both.
    let mut reader: Option<OwnedReadHalf> = None;
    let mut writer: Option<Writer> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut pending: VecDeque<Event> = VecDeque::from([Event::Start]);
    if let Some(c) = incoming {
        (reader, writer) = split(c);
        pending.push_back(Event::Connected);
        let _ = reports.send(Report::Connected).await;
    }
    loop {
        // Run the machine over everything queued, carrying out its actions.
        while let Some(ev) = pending.pop_front() {
            for a in s.handle(ev) {
                match a {
                    Action::Connect => {
                        match tokio::time::timeout(
                            Duration::from_secs(5),
                            md5::connect(peer, s.cfg.md5_password.as_deref(), s.cfg.gtsm),
                        )
                        .await
                        {
                            Ok(Ok(c)) => {
                                let _ = c.set_nodelay(true);
                                (reader, writer) = split(c);
                                pending.push_back(Event::Connected);
                                let _ = reports.send(Report::Connected).await;
                            }
                            _ => pending.push_back(Event::ConnectFailed),
                        }
                    }
                    Action::Send(m) => {
                        let bytes = message::encode(&m, s.four_octet_as);
                        let hold = send_hold(&s);
                        let queued = writer.as_mut().is_some_and(|w| w.send(bytes, hold));
                        if !queued && !matches!(m, Message::Notification(_)) {
                            pending.push_back(Event::Disconnected);
                        }
                    }
                    Action::Close => {
                        reader = None;
                        if let Some(w) = writer.take() {
                            w.close();
                        }
                        buf.clear();
                    }
                    Action::Arm(t, secs) => {
                        deadlines[slot(t)] = Some(Instant::now() + Duration::from_secs(secs as u64))
                    }
                    Action::Disarm(t) => deadlines[slot(t)] = None,
                    Action::Up {
                        peer_id,
                        peer_restart_time,
                        peer_kept_forwarding,
                        peer_restarting,
                        peer_route_refresh,
                        ..
                    } => {
                        let _ = reports
                            .send(Report::Up {
                                peer_id,
                                peer_restart_time,
                                peer_kept_forwarding,
                                peer_restarting,
                                peer_route_refresh,
                            })
                            .await;
                    }
                    Action::Down { why, stale_for } => {
                        let _ = reports.send(Report::Down { why, stale_for }).await;
                        return;
                    }
                    Action::Deliver(u) => {
                        let _ = reports.send(Report::Received(u)).await;
                    }
                    Action::Refresh { afi, safi } => {
                        let _ = reports.send(Report::Refresh { afi, safi }).await;
                    }
                }
            }
        }
        if s.state == State::Idle {
            return;
        }
        let next = TIMERS
            .iter()
            .filter_map(|t| deadlines[slot(*t)].map(|d| (d, *t)))
            .min_by_key(|(d, _)| *d);
        let sleep = async {
            match next {
                Some((d, _)) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // More UPDATEs only once the last batch is written: what the peer has not taken yet
        // stays with the source, not in a queue here.
        let room = s.state == State::Established && writer.as_ref().is_some_and(Writer::idle);
        let mut chunk = [0u8; 8192];
        tokio::select! {
            _ = sleep => {
                if let Some((_, t)) = next {
                    deadlines[slot(t)] = None;
                    pending.push_back(Event::Expired(t));
                }
            }
            r = async {
                match reader.as_mut() {
                    Some(c) => c.read(&mut chunk).await,
                    None => std::future::pending().await,
                }
            } => match r {
                Ok(0) | Err(_) => pending.push_back(Event::Disconnected),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        match message::decode(&buf, s.four_octet_as) {
                            Ok(Some((m, used))) => {
                                buf.drain(..used);
                                pending.push_back(Event::Received(m));
                            }
                            Ok(None) => break,
                            Err(e) => {
                                pending.push_back(Event::Malformed(e));
                                break;
                            }
                        }
                    }
                }
            },
            o = async {
                match writer.as_mut() {
                    Some(w) => w.outcome().await,
                    None => std::future::pending().await,
                }
            } => match o {
                Outcome::Wrote => {}
                Outcome::Failed => pending.push_back(Event::Disconnected),
                Outcome::Stalled => pending.push_back(Event::SendHoldExpired),
            },
            c = async {
                match cease.as_mut() {
                    Some(c) => c.await,
                    None => std::future::pending().await,
                }
            } => {
                cease = None;
                if let Ok((n, why)) = c {
                    pending.push_back(Event::Cease(n, why));
                }
            },
            u = outgoing.next(), if room => match u {
                Some(batch) => {
                    let mut bytes = Vec::new();
                    for (afi, safi) in batch.refresh {
                        bytes.extend(message::encode(&Message::RouteRefresh { afi, safi }, s.four_octet_as));
                    }
                    let fitted = crate::update::fit(batch.updates, s.four_octet_as);
                    if !fitted.unfit.is_empty() {
                        tracing::warn!(%peer, prefixes = ?fitted.unfit, "attributes too long for one UPDATE: withdrawn from the peer instead");
                    }
                    bytes.extend(fitted.messages.concat());
                    let hold = send_hold(&s);
                    if !writer.as_mut().is_some_and(|w| w.send(bytes, hold)) {
                        pending.push_back(Event::Disconnected);
                    }
                }
                None => pending.push_back(Event::Stop),
            },
        }
    }
}

fn split(c: TcpStream) -> (Option<OwnedReadHalf>, Option<Writer>) {
    let (r, w) = c.into_split();
    (Some(r), Some(Writer::spawn(w)))
}

fn send_hold(s: &Session) -> Duration {
    Duration::from_secs(u64::from(s.send_hold_time()))
}
