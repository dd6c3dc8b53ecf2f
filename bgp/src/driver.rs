//! The thin tokio side of a session: it owns the TCP stream and the three timers, turns bytes
//! and expiries into [`Event`]s for the state machine, and carries out its [`Action`]s.
//! Updates to send come in on a channel; what the peer announces goes out on another.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::fsm::{Action, Config, Event, Session, State, Timer};
use crate::md5;
use crate::message::{self, Message};
use crate::update::Update;

/// What the session reports to its owner.
#[derive(Debug)]
pub enum Report {
    Up {
        peer_id: std::net::Ipv4Addr,
        /// The peer restarts gracefully, keeping forwarding this long (RFC 4724).
        peer_restart_time: Option<u16>,
    },
    Received(Box<Update>),
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

/// Runs one session to a peer until it goes down (the caller restarts it if it wants).
/// `incoming`: a connection the peer opened to us, for passive sessions.
pub async fn run(
    cfg: Config,
    peer: SocketAddr,
    incoming: Option<TcpStream>,
    mut to_send: mpsc::Receiver<Update>,
    reports: mpsc::Sender<Report>,
) {
    let mut s = Session::new(cfg);
    let mut deadlines: [Option<Instant>; 3] = [None; 3];
    let mut stream: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut pending: Vec<Event> = vec![Event::Start];
    if let Some(c) = incoming {
        stream = Some(c);
        pending.push(Event::Connected);
    }
    loop {
        // Run the machine over everything queued, carrying out its actions.
        while let Some(ev) = (!pending.is_empty()).then(|| pending.remove(0)) {
            for a in s.handle(ev) {
                match a {
                    Action::Connect => {
                        match tokio::time::timeout(
                            Duration::from_secs(5),
                            md5::connect(peer, s.cfg.md5_password.as_deref()),
                        )
                        .await
                        {
                            Ok(Ok(c)) => {
                                let _ = c.set_nodelay(true);
                                stream = Some(c);
                                pending.push(Event::Connected);
                            }
                            _ => pending.push(Event::ConnectFailed),
                        }
                    }
                    Action::Send(m) => {
                        let bytes = message::encode(&m, s.four_octet_as);
                        let ok = match stream.as_mut() {
                            Some(c) => c.write_all(&bytes).await.is_ok(),
                            None => false,
                        };
                        if !ok && !matches!(m, Message::Notification(_)) {
                            pending.push(Event::Disconnected);
                        }
                    }
                    Action::Close => {
                        stream = None;
                        buf.clear();
                    }
                    Action::Arm(t, secs) => {
                        deadlines[slot(t)] = Some(Instant::now() + Duration::from_secs(secs as u64))
                    }
                    Action::Disarm(t) => deadlines[slot(t)] = None,
                    Action::Up {
                        peer_id,
                        peer_restart_time,
                        ..
                    } => {
                        let _ = reports
                            .send(Report::Up {
                                peer_id,
                                peer_restart_time,
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
        let mut chunk = [0u8; 8192];
        tokio::select! {
            _ = sleep => {
                if let Some((_, t)) = next {
                    deadlines[slot(t)] = None;
                    pending.push(Event::Expired(t));
                }
            }
            r = async {
                match stream.as_mut() {
                    Some(c) => c.read(&mut chunk).await,
                    None => std::future::pending().await,
                }
            } => match r {
                Ok(0) | Err(_) => pending.push(Event::Disconnected),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        match message::decode(&buf, s.four_octet_as) {
                            Ok(Some((m, used))) => {
                                buf.drain(..used);
                                pending.push(Event::Received(m));
                            }
                            Ok(None) => break,
                            Err(e) => {
                                pending.push(Event::Malformed(e));
                                break;
                            }
                        }
                    }
                }
            },
            u = to_send.recv(), if s.state == State::Established => match u {
                Some(u) => {
                    let bytes = message::encode(&Message::Update(Box::new(u)), s.four_octet_as);
                    if let Some(c) = stream.as_mut() {
                        if c.write_all(&bytes).await.is_err() {
                            pending.push(Event::Disconnected);
                        }
                    }
                }
                None => pending.push(Event::Stop),
            },
        }
    }
}
