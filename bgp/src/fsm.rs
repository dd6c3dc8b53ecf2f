//! The session state machine of RFC 4271 §8, as logic without I/O: the driver feeds it events
//! (connection outcomes, decoded messages, timer expiries) and carries out the actions it
//! returns (connect, send, arm or stop a timer, close). Timers are only named here; the driver
//! owns the clocks.

use std::net::Ipv4Addr;

use crate::message::Message;
use crate::notification::*;
use crate::open::{Capability, Open};
use crate::update::Update;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Start the session (connect out unless passive).
    Start,
    /// Stop it, telling the peer why (Cease).
    Stop,
    /// The TCP connection is up (ours succeeded or the peer's was accepted).
    Connected,
    ConnectFailed,
    /// The TCP connection closed under us.
    Disconnected,
    Received(Message),
    /// A message could not be decoded: the NOTIFICATION to send.
    Malformed(DecodeError),
    Expired(Timer),
    /// The peer took none of our bytes for [`Session::send_hold_time`] (RFC 9687): the driver
    /// keeps this clock, as only it sees whether a write makes progress.
    SendHoldExpired,
    /// The owner ends the session with this NOTIFICATION (a Cease of RFC 4486), saying why.
    Cease(Notification, String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Connect,
    Send(Message),
    Close,
    Arm(Timer, u16),
    Disarm(Timer),
    /// The session reached Established with these negotiated parameters.
    Up {
        hold_time: u16,
        four_octet_as: bool,
        peer_id: Ipv4Addr,
        /// The peer's graceful-restart time for IPv4 unicast, if it offered to restart
        /// gracefully (RFC 4724).
        peer_restart_time: Option<u16>,
        /// The peer's OPEN says it kept forwarding IPv4 unicast through its restart (the F
        /// bit); without it, routes kept stale for it must go at once (RFC 4724 §4.2).
        peer_kept_forwarding: bool,
        /// The peer says it is restarting itself (R bit): it waits for our End-of-RIB.
        peer_restarting: bool,
        /// The peer takes ROUTE-REFRESH requests (RFC 2918).
        peer_route_refresh: bool,
    },
    /// The session left Established (or never got there). `stale_for`: the connection was
    /// lost with a peer that restarts gracefully, so its routes are kept, stale, this many
    /// seconds; otherwise they are gone.
    Down {
        why: String,
        stale_for: Option<u16>,
    },
    /// An UPDATE for the RIB.
    Deliver(Box<Update>),
    /// The peer asks for our routes of this family again (RFC 2918).
    Refresh {
        afi: u16,
        safi: u8,
    },
}

#[derive(Clone, Debug)]
pub struct Config {
    pub local_as: u32,
    pub peer_as: u32,
    pub router_id: Ipv4Addr,
    /// Proposed hold time in seconds (0: no keepalives, or at least 3).
    pub hold_time: u16,
    pub connect_retry: u16,
    /// Wait for the peer to connect instead of connecting out.
    pub passive: bool,
    pub capabilities: Vec<Capability>,
    /// TCP-MD5 key for the session's connections (RFC 2385), applied by the driver.
    pub md5_password: Option<String>,
    /// GTSM (RFC 5082) on the connection: the peer is one hop away.
    pub gtsm: bool,
}

/// Hold times are at least this long once the OPENs are in (RFC 4271 §4.2).
const LARGE_HOLD: u16 = 240;

/// The least send hold time, in seconds. A peer whose TCP window stays shut is not processing
/// what we send even while its KEEPALIVEs arrive (RFC 9687); but a peer working through a full
/// table may take a while, and what waits for it is coalesced, not queued, so there is no
/// hurry: minutes, not the seconds of a hold time.
const SEND_HOLD_FLOOR: u32 = 480;

pub struct Session {
    pub cfg: Config,
    pub state: State,
    pub hold_time: u16,
    pub four_octet_as: bool,
    pub peer_id: Option<Ipv4Addr>,
    pub peer_restart_time: Option<u16>,
    pub peer_kept_forwarding: bool,
    pub peer_restarting: bool,
    pub peer_route_refresh: bool,
}

impl Session {
    pub fn new(cfg: Config) -> Self {
        Session {
            cfg,
            state: State::Idle,
            hold_time: 0,
            four_octet_as: false,
            peer_id: None,
            peer_restart_time: None,
            peer_kept_forwarding: false,
            peer_restarting: false,
            peer_route_refresh: false,
        }
    }

    /// How long the peer may take none of our bytes before the session is closed (RFC 9687):
    /// twice the hold time and at least [`SEND_HOLD_FLOOR`], so a peer that also fell silent is
    /// caught, and reported, by its hold timer first. Before the OPENs are in, the hold time is
    /// the large one of RFC 4271 §8.2.2.
    pub fn send_hold_time(&self) -> u32 {
        let hold = match self.state {
            State::OpenConfirm | State::Established => self.hold_time,
            _ => LARGE_HOLD,
        };
        (2 * u32::from(hold)).max(SEND_HOLD_FLOOR)
    }

    /// We advertised route refresh and the family: explicitly, or IPv4 unicast by default when
    /// no family was named (RFC 4760 §7).
    fn offered_refresh(&self, afi: u16, safi: u8) -> bool {
        let caps = &self.cfg.capabilities;
        if !caps.contains(&Capability::RouteRefresh) {
            return false;
        }
        let mut families = caps.iter().filter_map(|c| match c {
            Capability::Multiprotocol { afi, safi } => Some((*afi, *safi)),
            _ => None,
        });
        let named: Vec<(u16, u8)> = families.by_ref().collect();
        if named.is_empty() {
            (afi, safi) == (crate::open::AFI_IPV4, crate::open::SAFI_UNICAST)
        } else {
            named.contains(&(afi, safi))
        }
    }

    fn open(&self) -> Message {
        let mut caps = self.cfg.capabilities.clone();
        if !caps.iter().any(|c| matches!(c, Capability::FourOctetAs(_))) {
            caps.push(Capability::FourOctetAs(self.cfg.local_as));
        }
        Message::Open(Open {
            asn: self.cfg.local_as,
            hold_time: self.cfg.hold_time,
            bgp_id: self.cfg.router_id,
            capabilities: caps,
        })
    }

    /// Sends a NOTIFICATION, closes, and goes back to Idle (RFC 4271 §8.2.2, most error paths).
    fn fail(&mut self, n: Notification, why: String) -> Vec<Action> {
        let mut out = vec![Action::Send(Message::Notification(n))];
        out.extend(self.drop_session(why, false));
        out
    }

    /// `lost`: the TCP connection went away without a NOTIFICATION, the case in which a
    /// gracefully restarting peer's routes are kept (RFC 4724 §4.2).
    fn drop_session(&mut self, why: String, lost: bool) -> Vec<Action> {
        let was = self.state;
        let stale_for = (lost && was == State::Established)
            .then_some(self.peer_restart_time)
            .flatten();
        self.state = State::Idle;
        self.peer_id = None;
        self.peer_restart_time = None;
        let mut out = vec![
            Action::Close,
            Action::Disarm(Timer::Hold),
            Action::Disarm(Timer::Keepalive),
            Action::Disarm(Timer::ConnectRetry),
        ];
        if was != State::Idle {
            out.push(Action::Down { why, stale_for });
        }
        out
    }

    fn fsm_error(&mut self, got: &str) -> Vec<Action> {
        let sub = match self.state {
            State::OpenSent => 1,
            State::OpenConfirm => 2,
            State::Established => 3,
            _ => 0,
        };
        let why = format!("unexpected {got} in {:?}", self.state);
        self.fail(Notification::new(FSM_ERROR, sub, Vec::new()), why)
    }

    /// Checks the peer's OPEN against the configuration; negotiates hold time and AS width.
    fn accept_open(&mut self, o: &Open) -> Result<(), DecodeError> {
        if o.asn != self.cfg.peer_as {
            return Err(DecodeError::new(
                OPEN_MESSAGE_ERROR,
                BAD_PEER_AS,
                Vec::new(),
                format!("peer says AS {}, configured {}", o.asn, self.cfg.peer_as),
            ));
        }
        if o.bgp_id == self.cfg.router_id && self.cfg.local_as == self.cfg.peer_as {
            return Err(DecodeError::new(
                OPEN_MESSAGE_ERROR,
                BAD_BGP_IDENTIFIER,
                Vec::new(),
                format!("peer uses our own router id {}", o.bgp_id),
            ));
        }
        self.hold_time = self.cfg.hold_time.min(o.hold_time);
        self.four_octet_as = o.four_octet_as();
        self.peer_id = Some(o.bgp_id);
        self.peer_route_refresh = o.capabilities.contains(&Capability::RouteRefresh);
        self.peer_restarting = o.capabilities.iter().any(|c| match c {
            Capability::GracefulRestart(g) => g.restarting,
            _ => false,
        });
        self.peer_kept_forwarding = o.capabilities.iter().any(|c| match c {
            Capability::GracefulRestart(g) => g
                .families
                .iter()
                .any(|f| (f.0, f.1) == (crate::open::AFI_IPV4, crate::open::SAFI_UNICAST) && f.2),
            _ => false,
        });
        self.peer_restart_time = o.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(g)
                if g.families
                    .iter()
                    .any(|f| (f.0, f.1) == (crate::open::AFI_IPV4, crate::open::SAFI_UNICAST)) =>
            {
                Some(g.time)
            }
            _ => None,
        });
        Ok(())
    }

    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        use State::*;
        match (self.state, ev) {
            (Idle, Event::Start) => {
                if self.cfg.passive {
                    self.state = Active;
                    vec![]
                } else {
                    self.state = Connect;
                    vec![
                        Action::Arm(Timer::ConnectRetry, self.cfg.connect_retry),
                        Action::Connect,
                    ]
                }
            }
            (Idle, _) => vec![],
            (_, Event::Stop) => self.fail(
                Notification::new(CEASE, 2, Vec::new()),
                "administratively stopped".into(),
            ),
            (_, Event::Cease(n, why)) => self.fail(n, why),
            (Connect | Active, Event::Connected) => {
                self.state = OpenSent;
                vec![
                    Action::Disarm(Timer::ConnectRetry),
                    Action::Send(self.open()),
                    Action::Arm(Timer::Hold, LARGE_HOLD),
                ]
            }
            (Connect, Event::ConnectFailed) => {
                self.state = Active;
                vec![Action::Arm(Timer::ConnectRetry, self.cfg.connect_retry)]
            }
            (Connect | Active, Event::Expired(Timer::ConnectRetry)) => {
                if self.cfg.passive {
                    return vec![];
                }
                self.state = Connect;
                vec![
                    Action::Arm(Timer::ConnectRetry, self.cfg.connect_retry),
                    Action::Connect,
                ]
            }
            (Connect | Active, _) => vec![],
            (_, Event::Malformed(e)) => self.fail(e.notification, e.reason),
            (_, Event::SendHoldExpired) => {
                let secs = self.send_hold_time();
                self.fail(
                    Notification::new(SEND_HOLD_TIMER_EXPIRED, 0, Vec::new()),
                    format!("send hold timer expired: the peer took nothing we sent for {secs} s"),
                )
            }
            (_, Event::Expired(Timer::Hold)) => self.fail(
                Notification::new(HOLD_TIMER_EXPIRED, 0, Vec::new()),
                "hold timer expired".into(),
            ),
            (_, Event::Disconnected | Event::ConnectFailed) => {
                self.drop_session("connection closed".into(), true)
            }
            (_, Event::Received(Message::Notification(n))) => {
                self.drop_session(format!("peer sent NOTIFICATION {n}"), false)
            }
            (OpenSent, Event::Received(Message::Open(o))) => match self.accept_open(&o) {
                Err(e) => self.fail(e.notification, e.reason),
                Ok(()) => {
                    self.state = OpenConfirm;
                    let mut out = vec![Action::Send(Message::Keepalive)];
                    if self.hold_time > 0 {
                        out.push(Action::Arm(Timer::Hold, self.hold_time));
                        out.push(Action::Arm(Timer::Keepalive, self.hold_time / 3));
                    } else {
                        out.push(Action::Disarm(Timer::Hold));
                    }
                    out
                }
            },
            (OpenConfirm, Event::Received(Message::Keepalive)) => {
                self.state = Established;
                let mut out = Vec::new();
                if self.hold_time > 0 {
                    out.push(Action::Arm(Timer::Hold, self.hold_time));
                }
                out.push(Action::Up {
                    hold_time: self.hold_time,
                    four_octet_as: self.four_octet_as,
                    peer_id: self.peer_id.unwrap_or(Ipv4Addr::UNSPECIFIED),
                    peer_restart_time: self.peer_restart_time,
                    peer_kept_forwarding: self.peer_kept_forwarding,
                    peer_restarting: self.peer_restarting,
                    peer_route_refresh: self.peer_route_refresh,
                });
                out
            }
            (OpenConfirm | Established, Event::Expired(Timer::Keepalive)) => {
                let mut out = vec![Action::Send(Message::Keepalive)];
                if self.hold_time > 0 {
                    out.push(Action::Arm(Timer::Keepalive, self.hold_time / 3));
                }
                out
            }
            (Established, Event::Received(Message::Keepalive)) => {
                if self.hold_time > 0 {
                    vec![Action::Arm(Timer::Hold, self.hold_time)]
                } else {
                    vec![]
                }
            }
            (Established, Event::Received(Message::RouteRefresh { afi, safi })) => {
                let mut out = Vec::new();
                if self.hold_time > 0 {
                    out.push(Action::Arm(Timer::Hold, self.hold_time));
                }
                // A family we did not offer, or a refresh we did not offer at all, is ignored
                // (RFC 2918 §4).
                if self.offered_refresh(afi, safi) {
                    out.push(Action::Refresh { afi, safi });
                }
                out
            }
            (Established, Event::Received(Message::Update(u))) => {
                let mut out = Vec::new();
                if self.hold_time > 0 {
                    out.push(Action::Arm(Timer::Hold, self.hold_time));
                }
                out.push(Action::Deliver(u));
                out
            }
            (_, Event::Received(m)) => {
                let what = match m {
                    Message::Open(_) => "OPEN",
                    Message::Update(_) => "UPDATE",
                    Message::Keepalive => "KEEPALIVE",
                    Message::RouteRefresh { .. } => "ROUTE-REFRESH",
                    Message::Notification(_) => "NOTIFICATION",
                };
                self.fsm_error(what)
            }
            (_, Event::Start | Event::Connected | Event::Expired(_)) => vec![],
        }
    }
}

/// RFC 4271 §6.8: when two connections to the same peer both reach OpenConfirm, the one opened
/// by the speaker with the higher BGP identifier survives. `true`: keep the connection we
/// opened; close the one the peer opened.
pub fn keep_our_connection(local_id: Ipv4Addr, peer_id: Ipv4Addr) -> bool {
    u32::from(local_id) > u32::from(peer_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open::Capability;

    fn cfg(passive: bool) -> Config {
        Config {
            local_as: 64512,
            peer_as: 64512,
            router_id: "192.0.2.1".parse().unwrap(),
            hold_time: 90,
            connect_retry: 5,
            passive,
            capabilities: vec![Capability::RouteRefresh],
            md5_password: None,
            gtsm: false,
        }
    }

    fn peer_open(asn: u32, hold: u16, id: &str) -> Message {
        Message::Open(Open {
            asn,
            hold_time: hold,
            bgp_id: id.parse().unwrap(),
            capabilities: vec![Capability::FourOctetAs(asn)],
        })
    }

    fn established(s: &mut Session) {
        s.handle(Event::Start);
        s.handle(Event::Connected);
        s.handle(Event::Received(peer_open(64512, 30, "192.0.2.2")));
        let out = s.handle(Event::Received(Message::Keepalive));
        assert!(
            out.iter().any(|a| matches!(
                a,
                Action::Up {
                    hold_time: 30,
                    four_octet_as: true,
                    ..
                }
            )),
            "{out:?}"
        );
        assert_eq!(s.state, State::Established);
    }

    #[test]
    fn active_open_reaches_established_with_negotiated_timers() {
        let mut s = Session::new(cfg(false));
        assert_eq!(
            s.handle(Event::Start),
            vec![Action::Arm(Timer::ConnectRetry, 5), Action::Connect]
        );
        let out = s.handle(Event::Connected);
        assert!(
            matches!(&out[1], Action::Send(Message::Open(o)) if o.asn == 64512 && o.four_octet_as())
        );
        assert_eq!(
            out[2],
            Action::Arm(Timer::Hold, 240),
            "large hold time until the OPENs are in"
        );
        let out = s.handle(Event::Received(peer_open(64512, 30, "192.0.2.2")));
        assert_eq!(
            out,
            vec![
                Action::Send(Message::Keepalive),
                Action::Arm(Timer::Hold, 30),
                Action::Arm(Timer::Keepalive, 10)
            ],
            "hold time is the smaller of the two, keepalives a third of it"
        );
        assert_eq!(
            s.handle(Event::Received(Message::Keepalive))[0],
            Action::Arm(Timer::Hold, 30)
        );
        assert_eq!(s.state, State::Established);
        let out = s.handle(Event::Expired(Timer::Keepalive));
        assert_eq!(
            out,
            vec![
                Action::Send(Message::Keepalive),
                Action::Arm(Timer::Keepalive, 10)
            ]
        );
    }

    #[test]
    fn passive_waits_and_retries_only_when_active() {
        let mut s = Session::new(cfg(true));
        assert_eq!(s.handle(Event::Start), vec![]);
        assert_eq!(s.state, State::Active);
        assert_eq!(s.handle(Event::Expired(Timer::ConnectRetry)), vec![]);
        let mut a = Session::new(cfg(false));
        a.handle(Event::Start);
        assert_eq!(
            a.handle(Event::ConnectFailed),
            vec![Action::Arm(Timer::ConnectRetry, 5)]
        );
        assert_eq!(a.state, State::Active);
        assert_eq!(
            a.handle(Event::Expired(Timer::ConnectRetry)),
            vec![Action::Arm(Timer::ConnectRetry, 5), Action::Connect]
        );
    }

    #[test]
    fn bad_open_and_hold_expiry_send_the_right_notification() {
        let mut s = Session::new(cfg(false));
        s.handle(Event::Start);
        s.handle(Event::Connected);
        let out = s.handle(Event::Received(peer_open(65000, 90, "192.0.2.2")));
        assert_eq!(
            out[0],
            Action::Send(Message::Notification(Notification::new(2, 2, vec![])))
        );
        assert_eq!(s.state, State::Idle);

        let mut s = Session::new(cfg(false));
        established(&mut s);
        let out = s.handle(Event::Expired(Timer::Hold));
        assert_eq!(
            out[0],
            Action::Send(Message::Notification(Notification::new(4, 0, vec![])))
        );
        assert!(out.contains(&Action::Close));
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Down {
                stale_for: None,
                ..
            }
        )));
    }

    #[test]
    fn a_peer_that_stops_reading_is_closed_after_the_send_hold_time() {
        let mut s = Session::new(cfg(false));
        s.handle(Event::Start);
        assert_eq!(
            s.send_hold_time(),
            480,
            "before the OPENs: the large hold time, doubled"
        );
        established(&mut s);
        assert_eq!(s.send_hold_time(), 480, "never under eight minutes");
        s.hold_time = 300;
        assert_eq!(s.send_hold_time(), 600, "twice the hold time");
        let out = s.handle(Event::SendHoldExpired);
        assert_eq!(
            out[0],
            Action::Send(Message::Notification(Notification::new(8, 0, vec![])))
        );
        assert!(out.contains(&Action::Close));
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Down { why, stale_for: None } if why.contains("send hold timer")
        )));
        // Without a connection there is nothing to close.
        let mut s = Session::new(cfg(true));
        s.handle(Event::Start);
        assert_eq!(s.handle(Event::SendHoldExpired), vec![]);
    }

    #[test]
    fn route_refresh_is_answered_for_offered_families_only() {
        let mut s = Session::new(cfg(false));
        s.cfg.capabilities = vec![
            Capability::Multiprotocol {
                afi: crate::open::AFI_IPV4,
                safi: crate::open::SAFI_UNICAST,
            },
            Capability::RouteRefresh,
        ];
        s.handle(Event::Start);
        established(&mut s);
        let rr = |afi, safi| Event::Received(Message::RouteRefresh { afi, safi });
        assert!(s
            .handle(rr(1, 1))
            .contains(&Action::Refresh { afi: 1, safi: 1 }));
        let ignored = s.handle(rr(2, 1));
        assert!(!ignored.iter().any(|a| matches!(a, Action::Refresh { .. })));
        assert!(!ignored.iter().any(|a| matches!(a, Action::Close)));
        // Without the capability offered, no refresh at all.
        s.cfg
            .capabilities
            .retain(|c| *c != Capability::RouteRefresh);
        assert!(!s
            .handle(rr(1, 1))
            .iter()
            .any(|a| matches!(a, Action::Refresh { .. })));
        assert_eq!(s.state, State::Established);
    }

    #[test]
    fn messages_out_of_order_are_fsm_errors_and_updates_reach_the_rib() {
        let mut s = Session::new(cfg(false));
        s.handle(Event::Start);
        s.handle(Event::Connected);
        let out = s.handle(Event::Received(Message::Update(Box::default())));
        assert_eq!(
            out[0],
            Action::Send(Message::Notification(Notification::new(5, 1, vec![])))
        );

        let mut s = Session::new(cfg(false));
        established(&mut s);
        let out = s.handle(Event::Received(Message::Update(Box::default())));
        assert!(matches!(out.last(), Some(Action::Deliver(_))));
        let out = s.handle(Event::Received(Message::Notification(Notification::new(
            6,
            2,
            vec![],
        ))));
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Down {
                stale_for: None,
                ..
            }
        )));
        assert_eq!(s.state, State::Idle);
    }

    #[test]
    fn a_lost_connection_to_a_gracefully_restarting_peer_keeps_its_routes() {
        let gr_open = |id: &str| {
            Message::Open(Open {
                asn: 64512,
                hold_time: 90,
                bgp_id: id.parse().unwrap(),
                capabilities: vec![Capability::GracefulRestart(crate::open::GracefulRestart {
                    restarting: false,
                    time: 120,
                    families: vec![(crate::open::AFI_IPV4, crate::open::SAFI_UNICAST, true)],
                })],
            })
        };
        let mut s = Session::new(cfg(false));
        s.handle(Event::Start);
        s.handle(Event::Connected);
        s.handle(Event::Received(gr_open("192.0.2.2")));
        let up = s.handle(Event::Received(Message::Keepalive));
        assert!(up.iter().any(|a| matches!(
            a,
            Action::Up {
                peer_restart_time: Some(120),
                ..
            }
        )));
        let out = s.handle(Event::Disconnected);
        assert!(out.contains(&Action::Down {
            why: "connection closed".into(),
            stale_for: Some(120)
        }));
        // A NOTIFICATION ends it for good, graceful restart or not.
        let mut s = Session::new(cfg(false));
        s.handle(Event::Start);
        s.handle(Event::Connected);
        s.handle(Event::Received(gr_open("192.0.2.2")));
        s.handle(Event::Received(Message::Keepalive));
        let out = s.handle(Event::Received(Message::Notification(Notification::new(
            6,
            2,
            vec![],
        ))));
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Down {
                stale_for: None,
                ..
            }
        )));
    }

    #[test]
    fn zero_hold_time_means_no_keepalives() {
        let mut s = Session::new(Config {
            hold_time: 0,
            ..cfg(false)
        });
        s.handle(Event::Start);
        s.handle(Event::Connected);
        let out = s.handle(Event::Received(peer_open(64512, 90, "192.0.2.2")));
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::Arm(Timer::Keepalive, _))),
            "{out:?}"
        );
    }

    #[test]
    fn collision_keeps_the_connection_of_the_higher_identifier() {
        assert!(keep_our_connection(
            "192.0.2.9".parse().unwrap(),
            "192.0.2.2".parse().unwrap()
        ));
        assert!(!keep_our_connection(
            "10.0.0.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap()
        ));
    }
}
