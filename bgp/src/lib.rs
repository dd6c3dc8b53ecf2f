//! twill's BGP-4 speaker (RFC 4271), as a library the agent embeds.
//!
//! Built so far: the wire codec, the session state machine and driver, the RIB, the speaker.
//! - [`message`]: framing (the fixed header, read through zerocopy) and the message types;
//! - [`open`]: OPEN and its capabilities;
//! - [`attribute`]: path attributes, with RFC 7606 error handling;
//! - [`update`]: UPDATE, IPv4 and MP-BGP NLRI;
//! - [`notification`]: NOTIFICATION and the error codes decode errors map to;
//! - [`fsm`]: the RFC 4271 §8 session state machine, events in, actions out, no I/O;
//! - [`driver`]: the tokio side of one session (TCP stream, timers, update channels);
//! - [`md5`]: TCP-MD5 signatures on a session's connection;
//! - [`rib`]: Adj-RIB-In, Loc-RIB, the decision process, split horizon and route reflection;
//! - [`speaker`]: sessions to every configured peer joined to one RIB, exporting changes.
//!
//! Not built yet: the listener for passive peers, graceful restart, Adj-RIB-Out
//! packing of prefixes into shared UPDATEs, and the agent's `bgp` backend.

pub mod attribute;
pub mod driver;
pub mod fsm;
pub mod gtsm;
pub mod md5;
pub mod message;
pub mod notification;
pub mod open;
pub mod policy;
pub mod prefix;
pub mod rib;
pub mod speaker;
pub mod update;
