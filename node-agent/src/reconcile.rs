//! Bringing the kernel to the desired state: read what twill owns through netlink, plan the
//! difference (a pure function), apply it.
//!
//! Ownership: routes (in any table) and policy rules carry [`ROUTE_PROTOCOL`]; neighbour, FDB
//! and address entries count only on twill's own VXLAN devices (`twill.<vni>`). Nothing else is
//! read as ours or ever changed: a route of someone else's where one of ours should go is left
//! in place and reported, never replaced.
//! Order per peer: neighbour, FDB, route when adding; route, FDB, neighbour when removing, so a
//! route never points at a gateway the kernel cannot resolve. A rule comes after its table's
//! routes and goes before them, so traffic is never steered into a half-filled table.
//!
//! Batching: runs of per-peer entries (neighbours, FDB entries, routes) go to the kernel many
//! requests to a datagram ([`batches`]), on a socket of their own. Only the last request of a
//! batch asks for an acknowledgement; the kernel answers the others only when they fail, in
//! order, so the last one's answer closes the batch and every request not answered before it
//! took effect. The kernel queues a datagram's answers before we read one, so a batch with
//! more failures than the receive buffer holds loses answers (ENOBUFS, the failure flannel met
//! at scale, there with an acknowledgement per request); that is seen as an overrun, never
//! waited on and never taken for success, and answered by a resync with smaller batches.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteNextHopFlags, RouteProtocol, RouteScope,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::desired::{Desired, DeviceRoute, Fdb, Neighbour, Route, Rule, VxlanLink};
use crate::source_tables::RuleView;
use crate::vtep::Mac;

/// twill's route protocol number (`ip route show proto 151`): marks the routes it owns.
pub const ROUTE_PROTOCOL: u8 = 151;
/// Every VXLAN device twill creates is named with one of these prefixes (IPv4, IPv6 underlay).
pub const DEVICE_PREFIXES: [&str; 2] = ["twill.", "twill-v6."];

pub fn is_twill_device(name: &str) -> bool {
    DEVICE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The part of the kernel's state that twill owns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// twill's VXLAN devices by name (normally one).
    pub links: Vec<VxlanLink>,
    pub addresses: BTreeSet<(String, IpNet)>,
    pub neighbours: BTreeSet<Neighbour>,
    pub fdb: BTreeSet<Fdb>,
    pub routes: BTreeSet<Route>,
    pub device_routes: BTreeSet<DeviceRoute>,
    pub rules: BTreeSet<Rule>,
}

impl Observed {
    /// What the kernel holds once `d` is applied and nothing else is there.
    pub fn exactly(d: &Desired) -> Observed {
        Observed {
            links: d.vxlan.iter().cloned().collect(),
            addresses: d.addresses.clone(),
            neighbours: d.neighbours.clone(),
            fdb: d.fdb.clone(),
            routes: d.routes.clone(),
            device_routes: d.device_routes.clone(),
            rules: d.rules.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    DeleteLink(String),
    CreateLink(VxlanLink),
    AddAddress(String, IpNet),
    DeleteAddress(String, IpNet),
    AddNeighbour(Neighbour),
    DeleteNeighbour(Neighbour),
    AddFdb(Fdb),
    DeleteFdb(Fdb),
    AddRoute(Route),
    DeleteRoute(Route),
    AddDeviceRoute(DeviceRoute),
    DeleteDeviceRoute(DeviceRoute),
    AddRule(Rule),
    DeleteRule(Rule),
}

/// The operations that turn `observed` into `desired`, in a safe order.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Op> {
    let mut ops = Vec::new();
    // Devices first: a device created or re-created starts empty, so nothing on it counts as
    // present afterwards.
    let mut fresh: BTreeSet<String> = BTreeSet::new();
    for l in &observed.links {
        if !desired.vxlan.contains(l) {
            ops.push(Op::DeleteLink(l.name.clone()));
            fresh.insert(l.name.clone());
        }
    }
    for want in &desired.vxlan {
        if !observed.links.contains(want) {
            ops.push(Op::CreateLink(want.clone()));
            fresh.insert(want.name.clone());
        }
    }
    let alive = |dev: &String| !fresh.contains(dev);

    // Removals: rules before their tables' routes, routes before the entries they rely on.
    for r in observed.rules.difference(&desired.rules) {
        ops.push(Op::DeleteRule(r.clone()));
    }
    for r in observed.device_routes.difference(&desired.device_routes) {
        ops.push(Op::DeleteDeviceRoute(r.clone()));
    }
    for r in observed.routes.difference(&desired.routes) {
        if r.onlink && !alive(&r.dev) {
            continue; // gone with its device
        }
        ops.push(Op::DeleteRoute(r.clone()));
    }
    for f in observed
        .fdb
        .difference(&desired.fdb)
        .filter(|f| alive(&f.dev))
    {
        ops.push(Op::DeleteFdb(f.clone()));
    }
    for n in observed
        .neighbours
        .difference(&desired.neighbours)
        .filter(|n| alive(&n.dev))
    {
        ops.push(Op::DeleteNeighbour(n.clone()));
    }
    for (d, a) in observed
        .addresses
        .difference(&desired.addresses)
        .filter(|(d, _)| alive(d))
    {
        ops.push(Op::DeleteAddress(d.clone(), *a));
    }

    // Additions, in dependency order.
    let present = |dev: &String| alive(dev);
    for (d, a) in &desired.addresses {
        if !(present(d) && observed.addresses.contains(&(d.clone(), *a))) {
            ops.push(Op::AddAddress(d.clone(), *a));
        }
    }
    for n in &desired.neighbours {
        if !(present(&n.dev) && observed.neighbours.contains(n)) {
            ops.push(Op::AddNeighbour(n.clone()));
        }
    }
    for f in &desired.fdb {
        if !(present(&f.dev) && observed.fdb.contains(f)) {
            ops.push(Op::AddFdb(f.clone()));
        }
    }
    for r in desired.device_routes.difference(&observed.device_routes) {
        ops.push(Op::AddDeviceRoute(r.clone()));
    }
    for r in &desired.routes {
        let gone_with_device = r.onlink && !present(&r.dev);
        if gone_with_device || !observed.routes.contains(r) {
            ops.push(Op::AddRoute(r.clone()));
        }
    }
    for r in desired.rules.difference(&observed.rules) {
        ops.push(Op::AddRule(r.clone()));
    }
    ops
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The kernel refused to add because an entry with the same key exists: one of someone else's.
fn is_exists(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(17) // EEXIST
}

/// The entry to remove is not there (ENOENT, ESRCH).
fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(2 | 3))
}

impl Op {
    /// The per-source table an addition is for (not the main table).
    fn source_table(&self) -> Option<u32> {
        let t = match self {
            Op::AddRoute(r) => r.table,
            Op::AddDeviceRoute(r) => r.table,
            Op::AddRule(r) => r.table,
            _ => return None,
        };
        (t != crate::desired::MAIN_TABLE).then_some(t)
    }

    fn is_removal(&self) -> bool {
        matches!(
            self,
            Op::DeleteLink(_)
                | Op::DeleteAddress(..)
                | Op::DeleteNeighbour(_)
                | Op::DeleteFdb(_)
                | Op::DeleteRoute(_)
                | Op::DeleteDeviceRoute(_)
                | Op::DeleteRule(_)
        )
    }

    /// Whether the operation is one request the kernel answers on its own, needing nothing but
    /// its device's index: the per-peer entries, which are nearly all of a large plan. Devices,
    /// addresses and rules are few, and some need a lookup first.
    pub fn batchable(&self) -> bool {
        matches!(
            self,
            Op::AddNeighbour(_)
                | Op::DeleteNeighbour(_)
                | Op::AddFdb(_)
                | Op::DeleteFdb(_)
                | Op::AddRoute(_)
                | Op::DeleteRoute(_)
                | Op::AddDeviceRoute(_)
                | Op::DeleteDeviceRoute(_)
        )
    }
}

/// How a plan goes to the kernel, in its order: each range of `ops` is either one operation
/// that is not [`Op::batchable`], sent alone, or a run of at most `max` batchable ones, sent as
/// one datagram.
pub fn batches(ops: &[Op], max: usize) -> Vec<std::ops::Range<usize>> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < ops.len() {
        let run = ops[start..]
            .iter()
            .take(max)
            .take_while(|op| op.batchable())
            .count();
        let end = start + run.max(1);
        out.push(start..end);
        start = end;
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    /// The kernel dropped answers to a batch because the batch socket's receive buffer was
    /// full (ENOBUFS): which of its requests took effect is known only by reading again.
    #[error(
        "netlink receive buffer overrun (ENOBUFS) in a batch of {batch} requests; the kernel \
         must be read again"
    )]
    Overrun { batch: usize },
    /// A batch's answer that is not a netlink message (never seen from a working kernel).
    #[error("cannot read the kernel's answer to a batch: {0}")]
    Answer(#[source] rtnetlink::packet_core::DecodeError),
    /// A batch's answers stopped coming without an overrun being reported.
    #[error("the kernel answered {answered} of a batch of {batch} requests, then nothing for {waited:?}")]
    Unanswered {
        batch: usize,
        answered: usize,
        waited: std::time::Duration,
    },
    #[error("{op} failed: {source}")]
    Apply {
        op: Box<Op>,
        source: rtnetlink::Error,
    },
    /// Another VXLAN device (flannel's `flannel.1` after a migration, typically) has the VNI and
    /// port twill's device needs; the kernel allows one per VNI and port, so ours cannot be made.
    #[error(
        "cannot create VXLAN device {want}: device {holder} already uses VNI {vni} on UDP port \
         {port}, and the kernel allows one device per VNI and port. If {holder} is left from \
         flannel, delete it (ip link del {holder}); otherwise run the cluster with another --vni \
         or --vxlan-port"
    )]
    VxlanTaken {
        want: String,
        holder: String,
        vni: u32,
        port: u16,
    },
}

/// A VXLAN device in the namespace, twill's or anyone's: what decides whether another may be
/// made (one per VNI and port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanDevice {
    pub name: String,
    pub vni: u32,
    pub port: u16,
}

/// The device other than `want`'s own that holds `want`'s VNI and port, if any.
pub fn vxlan_holder<'a>(devices: &'a [VxlanDevice], want: &VxlanLink) -> Option<&'a VxlanDevice> {
    devices
        .iter()
        .find(|d| d.name != want.name && d.vni == want.vni && d.port == want.port)
}

/// What the operation does, in `ip`'s words, for logs and errors an operator reads.
impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::DeleteLink(name) => write!(f, "delete device {name}"),
            Op::CreateLink(l) => write!(
                f,
                "create VXLAN device {} (VNI {}, port {}, local {} on {})",
                l.name, l.vni, l.port, l.local, l.dev
            ),
            Op::AddAddress(dev, a) => write!(f, "add address {a} on {dev}"),
            Op::DeleteAddress(dev, a) => write!(f, "delete address {a} on {dev}"),
            Op::AddNeighbour(n) => {
                write!(f, "add neighbour {} lladdr {} on {}", n.ip, n.mac, n.dev)
            }
            Op::DeleteNeighbour(n) => {
                write!(f, "delete neighbour {} lladdr {} on {}", n.ip, n.mac, n.dev)
            }
            Op::AddFdb(e) => write!(f, "add FDB entry {} dst {} on {}", e.mac, e.dst, e.dev),
            Op::DeleteFdb(e) => write!(f, "delete FDB entry {} dst {} on {}", e.mac, e.dst, e.dev),
            Op::AddRoute(r) => write!(f, "add {r}"),
            Op::DeleteRoute(r) => write!(f, "delete {r}"),
            Op::AddDeviceRoute(r) => write!(f, "add {r}"),
            Op::DeleteDeviceRoute(r) => write!(f, "delete {r}"),
            Op::AddRule(r) => write!(
                f,
                "add rule from {} lookup {} priority {}",
                r.src, r.table, r.priority
            ),
            Op::DeleteRule(r) => write!(
                f,
                "delete rule from {} lookup {} priority {}",
                r.src, r.table, r.priority
            ),
        }
    }
}

/// What a reconcile pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub ops: Vec<Op>,
    /// Routes not added because a route of someone else's has their place (same table,
    /// destination and metric); left alone, reported.
    pub conflicts: Vec<Op>,
    /// Per-source table entries the kernel refused (an interface down, a gateway unreachable):
    /// skipped so the main table, masquerade and subnet.env still get done; retried next pass.
    pub table_errors: Vec<(Op, String)>,
    /// Batches whose answers the kernel dropped (ENOBUFS) before this pass got through; each
    /// was followed by a resync with batches half the size.
    pub overruns: usize,
}

/// A port of a bridge, and for a veth the name and MTU of its other end, which lives in a
/// pod's namespace; or why that end could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgePort {
    pub name: String,
    pub mtu: u32,
    pub peer: Result<(String, u32), String>,
    /// The namespace id of the other end, as `ip netns list-id` shows it (`None`: this one).
    pub peer_netns: Option<i32>,
}

/// How per-peer entries are batched (see the module's documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// Most requests in one datagram.
    pub max: usize,
    /// The batch socket's receive buffer as asked of the kernel (SO_RCVBUF), which caps it at
    /// net.core.rmem_max and doubles it for its bookkeeping.
    pub receive_buffer: usize,
}

impl Default for Batching {
    /// 256 requests a datagram. With NETLINK_CAP_ACK an answer is a 36-byte message, under
    /// 1 KiB of receive buffer with its skb around it, so even a batch where every request
    /// fails takes under 256 KiB: a buffer asked at 1 MiB is at least 416 KiB with the default
    /// rmem_max (208 KiB, doubled).
    fn default() -> Batching {
        Batching {
            max: 256,
            receive_buffer: 1 << 20,
        }
    }
}

/// Resyncs a pass makes after overruns before it gives up until the next one: enough to halve
/// the default batch down to a few requests.
const OVERRUN_RESYNCS: usize = 8;

/// How long the next of a batch's answers may take; the kernel has queued them all by the time
/// the batch is sent, so only an answer lost without an overrun being reported makes this
/// matter.
const BATCH_ANSWER_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A netlink connection to the kernel of the calling thread's network namespace.
pub struct Kernel {
    handle: Handle,
    batching: Batching,
    /// The batch size in use: `batching.max`, halved at every overrun.
    batch: std::sync::atomic::AtomicUsize,
}

type RtMessage = NetlinkMessage<RouteNetlinkMessage>;

/// A socket of its own for batches, opened for one pass: the answers (failures, and each
/// batch's last request) come back in order; NETLINK_CAP_ACK keeps them from repeating the
/// request; an overrun is the receive call's ENOBUFS.
///
/// The socket is blocking and used from the blocking pool, one batch per hand-off. The kernel
/// handles a batch inside the send call and queues every answer before it returns; a socket
/// registered with the runtime's epoll instead wakes the parked worker at each queued answer,
/// which, with answers read through a connection task, took about a quarter of the samples of
/// a 100,000-route pass and made it twice as slow (`scripts/bench-agent table`).
struct Batcher {
    socket: rtnetlink::sys::Socket,
    /// The next request's sequence number.
    seq: u32,
    out: Vec<u8>,
    answers: Vec<u8>,
}

/// Room for any one answer datagram: an acknowledgement or an error, without the request.
const ANSWER_ROOM: usize = 64 * 1024;

impl Batcher {
    fn open(receive_buffer: usize) -> Result<Batcher, KernelError> {
        let socket = own_socket()?;
        socket.set_cap_ack(true)?;
        socket.set_rx_buf_sz(i32::try_from(receive_buffer).unwrap_or(i32::MAX))?;
        Ok(Batcher {
            socket,
            seq: 1,
            out: Vec::new(),
            answers: Vec::with_capacity(ANSWER_ROOM),
        })
    }

    /// Sends `requests` as one datagram from the blocking pool; each one's outcome, in order.
    /// The batcher comes back for the next batch; after an error the pass ends with it.
    async fn send(
        self,
        requests: Vec<RtMessage>,
    ) -> Result<(Batcher, Vec<Result<(), rtnetlink::Error>>), KernelError> {
        let batch = requests.len();
        let mut b = self;
        let (b, r) = tokio::task::spawn_blocking(move || {
            let r = b.exchange(requests);
            (b, r)
        })
        .await
        .map_err(|e| {
            KernelError::Socket(std::io::Error::other(format!(
                "the netlink batch of {batch} requests was lost: {e}"
            )))
        })?;
        Ok((b, r?))
    }

    fn exchange(
        &mut self,
        requests: Vec<RtMessage>,
    ) -> Result<Vec<Result<(), rtnetlink::Error>>, KernelError> {
        use rtnetlink::packet_core::NLM_F_ACK;
        let batch = requests.len();
        if batch == 0 {
            return Ok(Vec::new());
        }
        let first = self.seq;
        self.out.clear();
        for (i, mut m) in requests.into_iter().enumerate() {
            m.header.sequence_number = self.seq;
            self.seq = self.seq.wrapping_add(1);
            // Only the last request asks for an acknowledgement: the others are answered only
            // when they fail, and since the kernel answers in order, the last one's answer
            // closes the batch. A success costs the kernel no answer to build and us none to
            // read; a lost failure is still an overrun (ENOBUFS), never taken for a success.
            if i + 1 < batch {
                m.header.flags &= !NLM_F_ACK;
            }
            m.finalize();
            let at = self.out.len();
            self.out.resize(at + m.buffer_len(), 0);
            m.serialize(&mut self.out[at..]);
        }
        let sent = self.socket.send(&self.out, 0)?;
        if sent != self.out.len() {
            return Err(KernelError::Socket(std::io::Error::other(format!(
                "netlink took {sent} of a batch's {} bytes",
                self.out.len()
            ))));
        }
        let mut outcomes = Outcomes::new(first, batch);
        while !outcomes.closed() {
            self.answers.clear();
            match self.socket.recv(&mut self.answers, 0) {
                Ok(_) => outcomes.file(&self.answers)?,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    return Err(KernelError::Overrun { batch });
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Err(KernelError::Unanswered {
                        batch,
                        answered: outcomes.through(),
                        waited: BATCH_ANSWER_LIMIT,
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(KernelError::Socket(e)),
            }
        }
        Ok(outcomes.into_results())
    }
}

/// Each netlink message in one datagram from the kernel, in order.
fn each_message(
    datagram: &[u8],
    mut f: impl FnMut(RtMessage) -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    use rtnetlink::packet_core::NetlinkBuffer;
    let mut rest = datagram;
    while !rest.is_empty() {
        let len = NetlinkBuffer::new_checked(rest)
            .map(|b| b.length() as usize)
            .map_err(KernelError::Answer)?;
        // A message's length is padded to four bytes, the last one's need not be.
        let (this, next) = rest.split_at(len.min(rest.len()));
        rest = &next[len.next_multiple_of(4).saturating_sub(len).min(next.len())..];
        f(RtMessage::deserialize(this).map_err(KernelError::Answer)?)?;
    }
    Ok(())
}

/// A batch's outcomes as its answers come in: every request succeeded unless the kernel
/// answered it with an error, which it does in request order, and the last request's own
/// answer (the only one acknowledged on success) closes the batch.
struct Outcomes {
    first: u32,
    results: Vec<Result<(), rtnetlink::Error>>,
    /// Requests known to be handled: those before the last one answered.
    through: usize,
}

impl Outcomes {
    fn new(first: u32, batch: usize) -> Outcomes {
        Outcomes {
            first,
            results: (0..batch).map(|_| Ok(())).collect(),
            through: 0,
        }
    }

    fn closed(&self) -> bool {
        self.through == self.results.len()
    }

    fn through(&self) -> usize {
        self.through
    }

    fn into_results(self) -> Vec<Result<(), rtnetlink::Error>> {
        self.results
    }

    /// Files the answers in one datagram. An answer out of order, to no request of the batch,
    /// after the batch is closed, or a success nobody asked to hear of, is a protocol error:
    /// taking it would credit an outcome to the wrong request.
    fn file(&mut self, datagram: &[u8]) -> Result<(), KernelError> {
        use rtnetlink::packet_core::NetlinkPayload;
        let batch = self.results.len();
        each_message(datagram, |m| {
            let ix = m.header.sequence_number.wrapping_sub(self.first) as usize;
            let last = ix + 1 == batch;
            if ix < self.through || ix >= batch {
                return Err(unexpected(m));
            }
            let outcome = match m.payload {
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    Err(rtnetlink::Error::NetlinkError(e))
                }
                NetlinkPayload::Error(_) if last => Ok(()),
                other if last => Err(rtnetlink::Error::UnexpectedMessage(NetlinkMessage::new(
                    m.header, other,
                ))),
                other => return Err(unexpected(NetlinkMessage::new(m.header, other))),
            };
            self.results[ix] = outcome;
            self.through = if last { batch } else { ix + 1 };
            Ok(())
        })
    }
}

fn unexpected(m: RtMessage) -> KernelError {
    KernelError::Netlink(rtnetlink::Error::UnexpectedMessage(m))
}

/// A blocking netlink socket of its own, bound and connected to the kernel, whose reads give
/// up after [`BATCH_ANSWER_LIMIT`].
fn own_socket() -> Result<rtnetlink::sys::Socket, KernelError> {
    let mut socket = rtnetlink::sys::Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&rtnetlink::sys::SocketAddr::new(0, 0))?;
    socket2::SockRef::from(&socket).set_read_timeout(Some(BATCH_ANSWER_LIMIT))?;
    Ok(socket)
}

/// Every route of `family`, of every table, read on a socket of its own from the blocking pool
/// (as a [`Batcher`] does, and for the same reason: through the shared connection, each route
/// was a channel message to this task; reading 100,000 took 150 – 190 ms that way, 85 – 140 ms
/// this way).
async fn dump_routes(family: AddressFamily) -> Result<Vec<RouteMessage>, KernelError> {
    tokio::task::spawn_blocking(move || dump_routes_now(family))
        .await
        .map_err(|e| {
            KernelError::Socket(std::io::Error::other(format!(
                "reading the kernel's routes stopped: {e}"
            )))
        })?
}

fn dump_routes_now(family: AddressFamily) -> Result<Vec<RouteMessage>, KernelError> {
    use rtnetlink::packet_core::{NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
    let socket = own_socket()?;
    let mut m = RouteMessage::default();
    m.header.address_family = family;
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetRoute(m));
    req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    req.header.sequence_number = 1;
    req.finalize();
    let mut out = vec![0; req.buffer_len()];
    req.serialize(&mut out);
    socket.send(&out, 0)?;
    let mut routes = Vec::new();
    let mut datagram = Vec::with_capacity(ANSWER_ROOM);
    let mut done = false;
    while !done {
        datagram.clear();
        match socket.recv(&mut datagram, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(KernelError::Socket(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the kernel sent {} routes, then nothing for {BATCH_ANSWER_LIMIT:?}",
                        routes.len()
                    ),
                )))
            }
            Err(e) => return Err(KernelError::Socket(e)),
        }
        each_message(&datagram, |m| {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => routes.push(r),
                NetlinkPayload::Done(_) => done = true,
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(KernelError::Netlink(rtnetlink::Error::NetlinkError(e)))
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    Ok(routes)
}

/// The request for a [batchable](Op::batchable) operation, its device's index found in `index`
/// (name → ifindex); `None` for any other operation.
fn request(
    op: &Op,
    index: &std::collections::BTreeMap<String, u32>,
) -> Option<Result<RtMessage, KernelError>> {
    use rtnetlink::packet_core::{
        NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    };
    let ix = |dev: &String| {
        index
            .get(dev)
            .copied()
            .ok_or_else(|| KernelError::NoInterface(dev.clone()))
    };
    let build = || -> Result<Option<(RouteNetlinkMessage, u16)>, KernelError> {
        Ok(Some(match op {
            Op::AddNeighbour(n) => {
                let mut m = NeighbourMessage::default();
                m.header.family = family_of(n.ip);
                m.header.ifindex = ix(&n.dev)?;
                m.header.state = NeighbourState::Permanent;
                m.attributes
                    .push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(n.mac.0.to_vec()));
                (
                    RouteNetlinkMessage::NewNeighbour(m),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
            }
            Op::DeleteNeighbour(n) => {
                let mut m = NeighbourMessage::default();
                m.header.family = family_of(n.ip);
                m.header.ifindex = ix(&n.dev)?;
                m.attributes
                    .push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
                (RouteNetlinkMessage::DelNeighbour(m), 0)
            }
            Op::AddFdb(f) => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Bridge;
                m.header.ifindex = ix(&f.dev)?;
                m.header.state = NeighbourState::Permanent;
                m.header.flags = NeighbourFlags::Own;
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
                m.attributes
                    .push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
                (
                    RouteNetlinkMessage::NewNeighbour(m),
                    NLM_F_CREATE | NLM_F_REPLACE,
                )
            }
            Op::DeleteFdb(f) => {
                let mut m = NeighbourMessage::default();
                m.header.family = AddressFamily::Bridge;
                m.header.ifindex = ix(&f.dev)?;
                m.header.flags = NeighbourFlags::Own;
                m.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
                m.attributes
                    .push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
                (RouteNetlinkMessage::DelNeighbour(m), 0)
            }
            // Never NLM_F_REPLACE: a route in our place is someone else's (ours would have
            // been deleted first by the plan), and it stays.
            Op::AddRoute(r) => (
                RouteNetlinkMessage::NewRoute(route_message(r, ix(&r.dev)?)),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            Op::AddDeviceRoute(r) => (
                RouteNetlinkMessage::NewRoute(
                    route_for(r.dst, r.table)
                        .output_interface(ix(&r.dev)?)
                        .scope(RouteScope::Link)
                        .build(),
                ),
                NLM_F_CREATE | NLM_F_EXCL,
            ),
            // The protocol in the request makes the kernel delete only a route of ours; scope
            // "nowhere" matches a route of any scope (as `ip route del` asks).
            Op::DeleteRoute(Route { table, dst, .. })
            | Op::DeleteDeviceRoute(DeviceRoute { table, dst, .. }) => (
                RouteNetlinkMessage::DelRoute(
                    route_for(*dst, *table).scope(RouteScope::NoWhere).build(),
                ),
                0,
            ),
            _ => return Ok(None),
        }))
    };
    build().transpose().map(|r| {
        r.map(|(m, flags)| {
            let mut req = NetlinkMessage::from(m);
            req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            req
        })
    })
}

/// A gateway route of ours through the device with index `ix`: one next hop, or all of them
/// (ECMP) in RTA_MULTIPATH.
fn route_message(r: &Route, ix: u32) -> RouteMessage {
    let mut b = route_for(r.dst, r.table);
    if r.also.is_empty() {
        b.get_mut()
            .attributes
            .push(RouteAttribute::Gateway(route_address(r.via)));
        b = b.output_interface(ix);
        if r.onlink {
            b = b.onlink();
        }
    } else {
        let hops = std::iter::once(r.via)
            .chain(r.also.iter().copied())
            .map(|gw| {
                let mut nh = RouteNextHop::default();
                nh.interface_index = ix;
                if r.onlink {
                    nh.flags = RouteNextHopFlags::Onlink;
                }
                nh.attributes
                    .push(RouteAttribute::Gateway(route_address(gw)));
                nh
            })
            .collect();
        b = b.multipath(hops);
    }
    b.build()
}

fn link_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn family_of(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

/// A route request for `dst` in `table` with twill's protocol, in `dst`'s family.
fn route_for(dst: IpNet, table: u32) -> RouteMessageBuilder<IpAddr> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .table_id(table)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL));
    let m = b.get_mut();
    m.header.address_family = family_of(dst.addr());
    m.header.destination_prefix_length = dst.prefix_len();
    if dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(route_address(dst.network())));
    }
    b
}

fn rule_src(r: &RuleMessage) -> Option<Ipv4Net> {
    r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Source(IpAddr::V4(ip)) => Ipv4Net::new(*ip, r.header.src_len).ok(),
        _ => None,
    })
}

/// The table a rule looks up: the attribute when present (tables above 255), else the header.
fn rule_table(r: &RuleMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// A rule in the shape twill makes them, if it has that shape.
fn rule_of(r: &RuleMessage) -> Option<Rule> {
    let priority = r.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })?;
    Some(Rule {
        priority,
        src: rule_src(r)?,
        table: rule_table(r),
    })
}

fn mac_of(bytes: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(bytes).ok().map(Mac)
}

/// Kernel notifications about links, addresses, neighbours, routes (both families) and IPv4
/// rules. Any of them may be someone removing twill's entries, so each burst triggers a
/// reconcile (a no-op when nothing of ours changed, and a no-op makes no notifications, so this
/// settles).
pub fn monitor() -> Result<tokio::sync::mpsc::UnboundedReceiver<()>, KernelError> {
    use futures::StreamExt;
    use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH};
    use rtnetlink::sys::{AsyncSocket, SocketAddr};
    let (mut conn, handle, mut messages) = rtnetlink::new_connection()?;
    use rtnetlink::constants::{RTMGRP_IPV4_RULE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE};
    let groups = RTMGRP_LINK
        | RTMGRP_NEIGH
        | RTMGRP_IPV4_IFADDR
        | RTMGRP_IPV4_ROUTE
        | RTMGRP_IPV4_RULE
        | RTMGRP_IPV6_IFADDR
        | RTMGRP_IPV6_ROUTE;
    let socket = conn.socket_mut().socket_mut();
    socket.bind(&SocketAddr::new(0, groups))?;
    // Programming thousands of peers makes thousands of notifications, more than the receive
    // buffer holds while this task waits its turn. A notification dropped then needs no report
    // (ENOBUFS, logged by netlink-proto as a warning per overrun): the buffer was full, so
    // notifications are still queued, and the reconcile they trigger reads the whole kernel
    // after the drop. A larger buffer makes drops rarer.
    socket.set_no_enobufs(true)?;
    socket.set_rx_buf_sz(1i32 << 20)?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        // The connection lives as long as a handle does.
        let _handle = handle;
        while messages.next().await.is_some() {
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// NUD_NOARP and NUD_PERMANENT: the state bits of entries someone wrote, as opposed to ones
/// the kernel learned. `bridge fdb append … permanent` and `ip neigh … nud noarp` leave both or
/// only NOARP set, which no single state value matches.
const STATIC_STATES: u16 = 0x40 | 0x80;

/// Static entries on twill's devices as (device, IPv4 address, MAC). In the bridge family
/// (FDB) the kernel's NDA_DST is not typed as an IP address, so it arrives as raw bytes.
fn permanent_entries(
    msgs: &[NeighbourMessage],
    ours: &std::collections::BTreeMap<u32, String>,
) -> Vec<(String, IpAddr, Mac)> {
    msgs.iter()
        .filter(|n| u16::from(n.header.state) & STATIC_STATES != 0)
        .filter_map(|n| {
            let dev = ours.get(&n.header.ifindex)?;
            let ip = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    Some(IpAddr::V4(*ip))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                    Some(IpAddr::V6(*ip))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
                    4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                },
                _ => None,
            })?;
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(b) => mac_of(b),
                _ => None,
            })?;
            Some((dev.clone(), ip, mac))
        })
        .collect()
}

impl Kernel {
    /// Opens the connection; must be called inside a tokio runtime on the namespace's thread.
    pub fn connect() -> Result<Kernel, KernelError> {
        Kernel::connect_with(Batching::default())
    }

    /// [`Kernel::connect`] with other batching (tests make overruns with a small buffer).
    pub fn connect_with(batching: Batching) -> Result<Kernel, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Kernel {
            handle,
            batching,
            batch: std::sync::atomic::AtomicUsize::new(batching.max.max(1)),
        })
    }

    /// The batch size in use now (smaller than asked after overruns).
    pub fn batch_size(&self) -> usize {
        self.batch.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn links(&self) -> Result<Vec<LinkMessage>, KernelError> {
        Ok(self.handle.link().get().execute().try_collect().await?)
    }

    /// Every IPv4 route, of every table.
    async fn routes4(&self) -> Result<Vec<RouteMessage>, KernelError> {
        dump_routes(AddressFamily::Inet).await
    }

    /// Every IPv6 route, of every table.
    async fn routes6(&self) -> Result<Vec<RouteMessage>, KernelError> {
        dump_routes(AddressFamily::Inet6).await
    }

    /// Every interface's index by its name.
    async fn link_indexes(&self) -> Result<std::collections::BTreeMap<String, u32>, KernelError> {
        Ok(self
            .links()
            .await?
            .iter()
            .filter_map(|l| link_name(l).map(|n| (n.to_string(), l.header.index)))
            .collect())
    }

    async fn link_names(&self) -> Result<std::collections::BTreeMap<u32, String>, KernelError> {
        Ok(self
            .links()
            .await?
            .iter()
            .filter_map(|l| link_name(l).map(|n| (l.header.index, n.to_string())))
            .collect())
    }

    /// Every VXLAN device in the namespace, whoever made it.
    pub async fn vxlan_devices(&self) -> Result<Vec<VxlanDevice>, KernelError> {
        let mut out = Vec::new();
        for l in self.links().await? {
            let Some(name) = link_name(&l) else { continue };
            for a in &l.attributes {
                let LinkAttribute::LinkInfo(infos) = a else {
                    continue;
                };
                for i in infos {
                    let LinkInfo::Data(InfoData::Vxlan(xs)) = i else {
                        continue;
                    };
                    let mut d = VxlanDevice {
                        name: name.to_string(),
                        vni: 0,
                        port: 0,
                    };
                    for x in xs {
                        match x {
                            InfoVxlan::Id(id) => d.vni = *id,
                            InfoVxlan::Port(p) => d.port = *p,
                            _ => {}
                        }
                    }
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    pub async fn index_of(&self, name: &str) -> Result<u32, KernelError> {
        for l in self.links().await? {
            if link_name(&l) == Some(name) {
                return Ok(l.header.index);
            }
        }
        Err(KernelError::NoInterface(name.to_string()))
    }

    /// The interface of the IPv4 default route, if there is one.
    pub async fn default_route_iface(&self) -> Result<Option<String>, KernelError> {
        let routes = self.routes4().await?;
        let oif = routes
            .iter()
            .filter(|r| {
                r.header.destination_prefix_length == 0
                    && r.header.table == RouteHeader::RT_TABLE_MAIN
            })
            .find_map(|r| {
                r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(i) => Some(*i),
                    _ => None,
                })
            });
        let Some(oif) = oif else { return Ok(None) };
        Ok(self
            .links()
            .await?
            .iter()
            .find(|l| l.header.index == oif)
            .and_then(link_name)
            .map(str::to_string))
    }

    /// The global IPv6 prefixes (address/prefix length) on `iface` that can stand for the node:
    /// not link-local (other nodes cannot reach it), and neither tentative, failed, deprecated
    /// nor temporary (a privacy address that rotates would move the node every few hours).
    pub async fn ipv6_addresses(&self, iface: &str) -> Result<Vec<ipnet::Ipv6Net>, KernelError> {
        let ix = self.index_of(iface).await?;
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(ix)
            .execute()
            .try_collect()
            .await?;
        use netlink_packet_route::address::{AddressAttribute, AddressFlags};
        let unusable = AddressFlags::Tentative
            | AddressFlags::Dadfailed
            | AddressFlags::Deprecated
            // IFA_F_TEMPORARY shares its bit with IFA_F_SECONDARY.
            | AddressFlags::Secondary;
        Ok(addrs
            .iter()
            .filter(|a| {
                let flags = a
                    .attributes
                    .iter()
                    .find_map(|x| match x {
                        AddressAttribute::Flags(f) => Some(*f),
                        _ => None,
                    })
                    .unwrap_or_else(|| {
                        AddressFlags::from_bits_retain(u32::from(a.header.flags.bits()))
                    });
                !flags.intersects(unusable)
            })
            .flat_map(|a| {
                a.attributes.iter().filter_map(move |x| match x {
                    netlink_packet_route::address::AddressAttribute::Address(IpAddr::V6(ip))
                        if !ip.is_unicast_link_local() && !ip.is_loopback() =>
                    {
                        ipnet::Ipv6Net::new(*ip, a.header.prefix_len).ok()
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Every interface with its MTU and IPv4 prefixes (address/prefix length).
    pub async fn interfaces(&self) -> Result<Vec<(String, u32, Vec<Ipv4Net>)>, KernelError> {
        let links = self.links().await?;
        let addrs: Vec<_> = self.handle.address().get().execute().try_collect().await?;
        let mut out = Vec::new();
        for l in &links {
            let Some(name) = link_name(l) else { continue };
            let mtu = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Mtu(m) => Some(*m),
                    _ => None,
                })
                .unwrap_or(1500);
            let nets = addrs
                .iter()
                .filter(|a| a.header.index == l.header.index)
                .flat_map(|a| {
                    a.attributes.iter().filter_map(move |x| match x {
                        netlink_packet_route::address::AddressAttribute::Address(IpAddr::V4(
                            ip,
                        )) => Ipv4Net::new(*ip, a.header.prefix_len).ok(),
                        _ => None,
                    })
                })
                .collect();
            out.push((name.to_string(), mtu, nets));
        }
        Ok(out)
    }

    /// A bridge's MTU and its ports, each with its peer's name and MTU when it is a veth (a
    /// pod's interface): read from the peer's namespace through the kernel's target-netnsid
    /// lookup (IFLA_TARGET_NETNSID, Linux 4.20), without entering it. `None`: no such bridge.
    pub async fn bridge_ports(
        &self,
        bridge: &str,
    ) -> Result<Option<(u32, Vec<BridgePort>)>, KernelError> {
        let links = self.links().await?;
        let mtu_of = |l: &LinkMessage| {
            l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        };
        let Some(br) = links.iter().find(|l| link_name(l) == Some(bridge)) else {
            return Ok(None);
        };
        let mut ports = Vec::new();
        for l in links.iter().filter(|l| {
            l.attributes
                .contains(&LinkAttribute::Controller(br.header.index))
        }) {
            let Some(name) = link_name(l) else { continue };
            let peer_ix = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::Link(ix) => Some(*ix),
                _ => None,
            });
            let nsid = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkNetNsId(id) => Some(*id),
                _ => None,
            });
            let peer = match peer_ix {
                None => Err("not a veth: no peer to read".to_string()),
                Some(ix) => {
                    let mut req = self.handle.link().get().match_index(ix);
                    if let Some(id) = nsid {
                        req.message_mut()
                            .attributes
                            .push(LinkAttribute::IfNetnsId(id));
                    }
                    match req.execute().try_next().await {
                        Ok(Some(m)) => match (link_name(&m), mtu_of(&m)) {
                            (Some(n), Some(mtu)) => Ok((n.to_string(), mtu)),
                            _ => Err("the peer's name or MTU is missing".to_string()),
                        },
                        Ok(None) => Err(format!("no interface {ix} in namespace id {nsid:?}")),
                        Err(e) => Err(e.to_string()),
                    }
                }
            };
            ports.push(BridgePort {
                name: name.to_string(),
                mtu: mtu_of(l).unwrap_or(0),
                peer,
                peer_netns: nsid,
            });
        }
        Ok(Some((mtu_of(br).unwrap_or(0), ports)))
    }

    /// What twill owns in this namespace.
    pub async fn observe(&self) -> Result<Observed, KernelError> {
        let links = self.links().await?;
        let names: std::collections::BTreeMap<u32, String> = links
            .iter()
            .filter_map(|l| link_name(l).map(|n| (l.header.index, n.to_string())))
            .collect();
        let mut o = Observed::default();
        let mut ours: std::collections::BTreeMap<u32, String> = Default::default();
        for l in &links {
            let Some(name) = link_name(l).filter(|n| is_twill_device(n)) else {
                continue;
            };
            ours.insert(l.header.index, name.to_string());
            let mut v = VxlanLink {
                name: name.to_string(),
                vni: 0,
                port: 0,
                local: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                dev: String::new(),
                mac: Mac([0; 6]),
                mtu: 0,
            };
            for a in &l.attributes {
                match a {
                    LinkAttribute::Address(b) => v.mac = mac_of(b).unwrap_or(Mac([0; 6])),
                    LinkAttribute::Mtu(m) => v.mtu = *m,
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            if let LinkInfo::Data(InfoData::Vxlan(xs)) = i {
                                for x in xs {
                                    match x {
                                        InfoVxlan::Id(id) => v.vni = *id,
                                        InfoVxlan::Port(p) => v.port = *p,
                                        InfoVxlan::Local(ip) => v.local = IpAddr::V4(*ip),
                                        InfoVxlan::Local6(ip) => v.local = IpAddr::V6(*ip),
                                        InfoVxlan::Link(ix) => {
                                            v.dev = names.get(ix).cloned().unwrap_or_default()
                                        }
                                        _ => {}
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            o.links.push(v);
        }

        if !ours.is_empty() {
            let addrs: Vec<_> = self.handle.address().get().execute().try_collect().await?;
            for a in addrs {
                let Some(dev) = ours.get(&a.header.index) else {
                    continue;
                };
                for attr in &a.attributes {
                    if let netlink_packet_route::address::AddressAttribute::Address(ip) = attr {
                        // The kernel gives every device an IPv6 link-local address of its own.
                        if matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()) {
                            continue;
                        }
                        if let Ok(n) = IpNet::new(*ip, a.header.prefix_len) {
                            o.addresses.insert((dev.clone(), n));
                        }
                    }
                }
            }
            let neigh: Vec<NeighbourMessage> = self
                .handle
                .neighbours()
                .get()
                .execute()
                .try_collect()
                .await?;
            // The kernel makes NOARP entries of its own for multicast and broadcast addresses;
            // those are not anyone's configuration.
            for (dev, ip, mac) in permanent_entries(&neigh, &ours) {
                let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
                if !(ip.is_multicast() || broadcast) {
                    o.neighbours.insert(Neighbour { dev, ip, mac });
                }
            }
            let req = self
                .handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge);
            let fdb: Vec<NeighbourMessage> = req.execute().try_collect().await?;
            for (dev, dst, mac) in permanent_entries(&fdb, &ours) {
                o.fdb.insert(Fdb { dev, mac, dst });
            }
        }

        let mut routes = self.routes4().await?;
        routes.extend(self.routes6().await?);
        for r in routes {
            if r.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL) {
                continue;
            }
            // Tables above 255 only fit the attribute; the header then says RT_TABLE_COMPAT.
            let table = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Table(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(u32::from(r.header.table));
            let mut dst = None;
            let mut via = None;
            let mut dev = None;
            let mut onlink = r.header.flags.contains(RouteFlags::Onlink);
            // An ECMP route carries its gateways (and their devices) in RTA_MULTIPATH.
            let mut hops: Vec<IpAddr> = Vec::new();
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = ip_of(d),
                    RouteAttribute::Gateway(g) => via = ip_of(g),
                    RouteAttribute::Oif(ix) => dev = names.get(ix).cloned(),
                    RouteAttribute::MultiPath(nhs) => {
                        for nh in nhs {
                            dev = dev.or_else(|| names.get(&nh.interface_index).cloned());
                            onlink |= nh.flags.contains(RouteNextHopFlags::Onlink);
                            for na in &nh.attributes {
                                if let RouteAttribute::Gateway(g) = na {
                                    hops.extend(ip_of(g));
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            hops.extend(via);
            hops.sort();
            hops.dedup();
            // The default route has no RTA_DST.
            let dst = dst.unwrap_or(match r.header.address_family {
                AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            });
            let (Ok(dst), Some(dev)) = (IpNet::new(dst, r.header.destination_prefix_length), dev)
            else {
                continue;
            };
            match hops.split_first() {
                Some((via, also)) => {
                    o.routes.insert(Route {
                        table,
                        dst,
                        via: *via,
                        dev,
                        onlink,
                        also: also.to_vec(),
                    });
                }
                None => {
                    o.device_routes.insert(DeviceRoute { table, dst, dev });
                }
            }
        }
        for r in self.rules().await? {
            if r.attributes
                .contains(&RuleAttribute::Protocol(RouteProtocol::Other(
                    ROUTE_PROTOCOL,
                )))
            {
                if let Some(rule) = rule_of(&r) {
                    o.rules.insert(rule);
                }
            }
        }
        Ok(o)
    }

    async fn rules(&self) -> Result<Vec<RuleMessage>, KernelError> {
        Ok(self
            .handle
            .rule()
            .get(rtnetlink::IpVersion::V4)
            .execute()
            .try_collect()
            .await?)
    }

    /// Every IPv4 rule, as the per-source table discovery reads them.
    pub async fn rule_views(&self) -> Result<Vec<RuleView>, KernelError> {
        Ok(self
            .rules()
            .await?
            .iter()
            .map(|r| RuleView {
                src: rule_src(r),
                table: (r.header.action == RuleAction::ToTable).then(|| rule_table(r)),
            })
            .collect())
    }

    /// The main table's default gateways, by the interface they go through.
    pub async fn default_gateways(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Ipv4Addr>, KernelError> {
        let names = self.link_names().await?;
        let routes = self.routes4().await?;
        let mut out = std::collections::BTreeMap::new();
        for r in routes.iter().filter(|r| {
            r.header.destination_prefix_length == 0 && r.header.table == RouteHeader::RT_TABLE_MAIN
        }) {
            let oif = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => names.get(i),
                _ => None,
            });
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
                _ => None,
            });
            if let (Some(oif), Some(gw)) = (oif, gw) {
                out.entry(oif.clone()).or_insert(gw);
            }
        }
        Ok(out)
    }

    /// Applies the plan in order, batching per-peer entries ([`batches`]); stops at the first
    /// failure (the next resync retries), though the rest of that failure's batch has been
    /// applied by then. A route whose place is taken by someone else's is skipped and
    /// reported, not a failure. An overrun fails the pass ([`KernelError::Overrun`]).
    pub async fn apply(&self, ops: &[Op]) -> Result<Applied, KernelError> {
        let mut out = Applied::default();
        if ops.is_empty() {
            return Ok(out);
        }
        let mut index = self.link_indexes().await?;
        let mut batcher: Option<Batcher> = None;
        for range in batches(ops, self.batch_size()) {
            let group = &ops[range];
            if let [op] = group {
                if !op.batchable() {
                    let r = self.apply_one(op).await;
                    self.settle(op, r, &mut out).await?;
                    if matches!(op, Op::CreateLink(_) | Op::DeleteLink(_)) {
                        index = self.link_indexes().await?;
                    }
                    continue;
                }
            }
            // A request whose device is missing is not sent; its error is settled in its turn.
            let mut outcomes: Vec<Option<Result<(), KernelError>>> =
                Vec::with_capacity(group.len());
            let mut requests = Vec::with_capacity(group.len());
            for op in group {
                match request(op, &index) {
                    Some(Ok(m)) => {
                        requests.push(m);
                        outcomes.push(None);
                    }
                    Some(Err(e)) => outcomes.push(Some(Err(e))),
                    None => outcomes.push(Some(Err(KernelError::Netlink(
                        rtnetlink::Error::RequestFailed,
                    )))),
                }
            }
            let b = match batcher.take() {
                Some(b) => b,
                None => Batcher::open(self.batching.receive_buffer)?,
            };
            let (b, answers) = b.send(requests).await?;
            batcher = Some(b);
            let mut answers = answers.into_iter();
            for (op, outcome) in group.iter().zip(outcomes) {
                let r = match outcome {
                    Some(r) => r,
                    None => match answers.next() {
                        Some(a) => a.map_err(KernelError::Netlink),
                        None => Err(KernelError::Netlink(rtnetlink::Error::RequestFailed)),
                    },
                };
                self.settle(op, r, &mut out).await?;
            }
        }
        out.ops = ops.to_vec();
        Ok(out)
    }

    /// Files one operation's outcome: a conflict, a removal already done, a per-source table's
    /// error, or the failure that ends the pass.
    async fn settle(
        &self,
        op: &Op,
        r: Result<(), KernelError>,
        out: &mut Applied,
    ) -> Result<(), KernelError> {
        match r {
            Ok(()) => Ok(()),
            Err(KernelError::Netlink(e))
                if is_exists(&e) && matches!(op, Op::AddRoute(_) | Op::AddDeviceRoute(_)) =>
            {
                out.conflicts.push(op.clone());
                Ok(())
            }
            // Gone already (with its device, or removed by someone meanwhile): done.
            Err(KernelError::Netlink(e)) if is_gone(&e) && op.is_removal() => Ok(()),
            Err(e) if op.source_table().is_some() => {
                out.table_errors.push((op.clone(), e.to_string()));
                Ok(())
            }
            Err(KernelError::Netlink(source)) => {
                if let (Op::CreateLink(want), true) = (op, is_exists(&source)) {
                    if let Ok(devices) = self.vxlan_devices().await {
                        if let Some(h) = vxlan_holder(&devices, want) {
                            return Err(KernelError::VxlanTaken {
                                want: want.name.clone(),
                                holder: h.name.clone(),
                                vni: h.vni,
                                port: h.port,
                            });
                        }
                    }
                }
                Err(KernelError::Apply {
                    op: Box::new(op.clone()),
                    source,
                })
            }
            Err(other) => Err(other),
        }
    }

    async fn apply_one(&self, op: &Op) -> Result<(), KernelError> {
        let h = &self.handle;
        match op {
            Op::DeleteLink(name) => {
                let ix = self.index_of(name).await?;
                h.link().del(ix).execute().await?;
            }
            Op::CreateLink(l) => {
                let dev = self.index_of(&l.dev).await?;
                let b = LinkVxlan::new(&l.name, l.vni).dev(dev).port(l.port);
                let b = match l.local {
                    IpAddr::V4(v4) => b.local(v4),
                    IpAddr::V6(v6) => b.local6(v6),
                };
                let msg = b
                    .learning(false)
                    .mtu(l.mtu)
                    .address(l.mac.0.to_vec())
                    .up()
                    .build();
                h.link().add(msg).execute().await?;
                // Some kernels ignore the MAC on creation; set it (and up) explicitly.
                let ix = self.index_of(&l.name).await?;
                let set = LinkUnspec::new_with_index(ix)
                    .address(l.mac.0.to_vec())
                    .up()
                    .build();
                h.link().set(set).execute().await?;
            }
            Op::AddAddress(dev, a) => {
                let ix = self.index_of(dev).await?;
                h.address()
                    .add(ix, a.addr(), a.prefix_len())
                    .replace()
                    .execute()
                    .await?;
            }
            Op::DeleteAddress(dev, a) => {
                let ix = self.index_of(dev).await?;
                let addrs: Vec<_> = h
                    .address()
                    .get()
                    .set_link_index_filter(ix)
                    .set_address_filter(a.addr())
                    .set_prefix_length_filter(a.prefix_len())
                    .execute()
                    .try_collect()
                    .await?;
                for m in addrs {
                    h.address().del(m).execute().await?;
                }
            }
            // One per-peer entry alone (the plan's batches send them): as a batch of one.
            Op::AddNeighbour(_)
            | Op::DeleteNeighbour(_)
            | Op::AddFdb(_)
            | Op::DeleteFdb(_)
            | Op::AddRoute(_)
            | Op::DeleteRoute(_)
            | Op::AddDeviceRoute(_)
            | Op::DeleteDeviceRoute(_) => {
                let m = match request(op, &self.link_indexes().await?) {
                    Some(m) => m?,
                    None => return Err(KernelError::Netlink(rtnetlink::Error::RequestFailed)),
                };
                let b = Batcher::open(self.batching.receive_buffer)?;
                for a in b.send(vec![m]).await?.1 {
                    a?;
                }
            }
            Op::AddRule(r) => {
                let mut req = h
                    .rule()
                    .add()
                    .v4()
                    .source_prefix(r.src.addr(), r.src.prefix_len())
                    .table_id(r.table)
                    .priority(r.priority)
                    .action(RuleAction::ToTable);
                req.message_mut()
                    .attributes
                    .push(RuleAttribute::Protocol(RouteProtocol::Other(
                        ROUTE_PROTOCOL,
                    )));
                req.execute().await?;
            }
            Op::DeleteRule(r) => {
                // The kernel's own message for the rule, so every selector matches exactly.
                for m in self.rules().await? {
                    if rule_of(&m).as_ref() == Some(r)
                        && m.attributes
                            .contains(&RuleAttribute::Protocol(RouteProtocol::Other(
                                ROUTE_PROTOCOL,
                            )))
                    {
                        h.rule().del(m).execute().await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads, plans and applies; returns the operations that were needed.
    pub async fn reconcile(&self, desired: &Desired) -> Result<Vec<Op>, KernelError> {
        Ok(self.reconcile_reporting(desired).await?.ops)
    }

    /// Like [`Kernel::reconcile`], also saying which routes were left to someone else.
    /// An overrun is answered at once: the kernel is read again and what is still missing
    /// applied, in batches half the size (kept for the passes after).
    pub async fn reconcile_reporting(&self, desired: &Desired) -> Result<Applied, KernelError> {
        let mut overruns = 0;
        loop {
            let observed = self.observe().await?;
            let ops = plan(desired, &observed);
            match self.apply(&ops).await {
                Err(KernelError::Overrun { batch }) if overruns < OVERRUN_RESYNCS => {
                    overruns += 1;
                    let smaller = (batch / 2).max(1);
                    self.batch
                        .store(smaller, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(
                        batch,
                        next = smaller,
                        "netlink answers lost (ENOBUFS); reading the kernel again"
                    );
                }
                r => {
                    return r.map(|mut a| {
                        a.overruns = overruns;
                        a
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acknowledgements as the kernel sends them with NETLINK_CAP_ACK: error code 0 for done,
    /// a negative errno otherwise, the request's header echoed.
    fn answer(seq: u32, code: i32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&36u32.to_ne_bytes()); // length: header, code, request header
        v.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(&code.to_ne_bytes());
        v.extend_from_slice(&[0; 16]);
        v
    }

    #[test]
    fn failures_are_filed_to_their_requests_and_the_last_answer_closes_the_batch() {
        // A batch of five numbered from 7: 8 and 10 failed, 11 (the last) succeeded.
        let mut o = Outcomes::new(7, 5);
        let mut datagram = answer(8, -libc::EEXIST);
        datagram.extend(answer(10, -libc::ENODEV));
        o.file(&datagram).expect("two failures");
        assert!(!o.closed(), "not closed before the last request's answer");
        assert_eq!(o.through(), 4);
        o.file(&answer(11, 0))
            .expect("the last one's acknowledgement");
        assert!(o.closed());
        let r = o.into_results();
        assert_eq!(r.len(), 5);
        assert!(r[0].is_ok() && r[2].is_ok() && r[4].is_ok(), "{r:?}");
        assert!(matches!(&r[1], Err(e) if is_exists(e)), "{:?}", r[1]);
        assert!(
            matches!(&r[3], Err(e) if errno(e) == Some(libc::ENODEV)),
            "{:?}",
            r[3]
        );

        // The last request failing closes the batch too.
        let mut o = Outcomes::new(1, 2);
        o.file(&answer(2, -libc::EEXIST))
            .expect("the last one's failure");
        assert!(o.closed());
        assert!(o.into_results()[1].is_err());
    }

    #[test]
    fn a_stray_answer_is_refused_not_credited_to_another_request() {
        // Out of order: request 9's failure after 10's.
        let mut o = Outcomes::new(7, 5);
        o.file(&answer(10, -libc::EEXIST)).expect("10 failed");
        let r = o.file(&answer(9, -libc::EEXIST));
        assert!(matches!(r, Err(KernelError::Netlink(_))), "{r:?}");
        // Outside the batch, either side.
        let r = Outcomes::new(7, 5).file(&answer(12, -libc::EEXIST));
        assert!(matches!(r, Err(KernelError::Netlink(_))), "{r:?}");
        let r = Outcomes::new(7, 5).file(&answer(6, 0));
        assert!(matches!(r, Err(KernelError::Netlink(_))), "{r:?}");
        // A success for a request that did not ask for one: not the batch's end.
        let mut o = Outcomes::new(7, 5);
        let r = o.file(&answer(8, 0));
        assert!(matches!(r, Err(KernelError::Netlink(_))), "{r:?}");
        assert!(!o.closed());
        // Anything after the batch closed.
        let mut o = Outcomes::new(7, 2);
        let mut datagram = answer(8, 0);
        datagram.extend(answer(8, 0));
        let r = o.file(&datagram);
        assert!(matches!(r, Err(KernelError::Netlink(_))), "{r:?}");
        // Cut short: an error, not a panic.
        let r = Outcomes::new(7, 5).file(&answer(10, 0)[..20]);
        assert!(matches!(r, Err(KernelError::Answer(_))), "{r:?}");
    }

    /// Sequence numbers wrap: a batch that starts just below u32::MAX ends past zero.
    #[test]
    fn a_batch_across_the_sequence_wrap_is_filed_in_order() {
        let mut o = Outcomes::new(u32::MAX - 1, 4);
        o.file(&answer(u32::MAX, -libc::EEXIST)).expect("second");
        o.file(&answer(1, 0)).expect("last");
        assert!(o.closed());
        let r = o.into_results();
        assert!(
            r[0].is_ok() && r[1].is_err() && r[2].is_ok() && r[3].is_ok(),
            "{r:?}"
        );
    }

    fn mac(s: &str) -> Mac {
        s.parse().unwrap()
    }

    fn link() -> VxlanLink {
        VxlanLink {
            name: "twill.1".into(),
            vni: 1,
            port: 8472,
            local: "192.0.2.1".parse().unwrap(),
            dev: "eth0".into(),
            mac: mac("0a:00:00:00:00:01"),
            mtu: 1450,
        }
    }

    #[test]
    fn only_another_device_on_the_same_vni_and_port_holds_ours_back() {
        let dev = |name: &str, vni, port| VxlanDevice {
            name: name.into(),
            vni,
            port,
        };
        let want = link();
        assert_eq!(vxlan_holder(&[dev("twill.1", 1, 8472)], &want), None);
        assert_eq!(vxlan_holder(&[dev("flannel.1", 1, 4789)], &want), None);
        assert_eq!(vxlan_holder(&[dev("flannel.2", 2, 8472)], &want), None);
        let devices = [dev("twill.1", 1, 8472), dev("flannel.1", 1, 8472)];
        assert_eq!(
            vxlan_holder(&devices, &want).map(|d| d.name.as_str()),
            Some("flannel.1")
        );
        let e = KernelError::VxlanTaken {
            want: "twill.1".into(),
            holder: "flannel.1".into(),
            vni: 1,
            port: 8472,
        }
        .to_string();
        assert!(e.contains("ip link del flannel.1"), "{e}");
    }

    #[test]
    fn operations_read_as_ip_would_say_them() {
        let (n, f, r) = peer(2);
        assert_eq!(
            Op::CreateLink(link()).to_string(),
            "create VXLAN device twill.1 (VNI 1, port 8472, local 192.0.2.1 on eth0)"
        );
        assert_eq!(
            Op::AddRoute(r).to_string(),
            "add route 10.244.2.0/24 via 10.244.2.0 dev twill.1 onlink"
        );
        assert_eq!(
            Op::DeleteNeighbour(n).to_string(),
            "delete neighbour 10.244.2.0 lladdr 0a:00:00:00:00:02 on twill.1"
        );
        assert_eq!(
            Op::AddFdb(f).to_string(),
            "add FDB entry 0a:00:00:00:00:02 dst 192.0.2.2 on twill.1"
        );
    }

    fn peer(i: u8) -> (Neighbour, Fdb, Route) {
        let gw = Ipv4Addr::new(10, 244, i, 0);
        let m = Mac([0x0a, 0, 0, 0, 0, i]);
        (
            Neighbour {
                dev: "twill.1".into(),
                ip: IpAddr::V4(gw),
                mac: m,
            },
            Fdb {
                dev: "twill.1".into(),
                mac: m,
                dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)),
            },
            Route {
                table: crate::desired::MAIN_TABLE,
                dst: IpNet::V4(Ipv4Net::new(gw, 24).unwrap()),
                via: IpAddr::V4(gw),
                dev: "twill.1".into(),
                onlink: true,
                also: vec![],
            },
        )
    }

    fn desired(peers: &[u8]) -> Desired {
        let mut d = Desired {
            vxlan: [link()].into(),
            ..Default::default()
        };
        d.addresses
            .insert(("twill.1".into(), "10.244.1.0/32".parse().unwrap()));
        for i in peers {
            let (n, f, r) = peer(*i);
            d.neighbours.insert(n);
            d.fdb.insert(f);
            d.routes.insert(r);
        }
        d
    }

    #[test]
    fn nothing_to_do_when_in_sync() {
        let d = desired(&[2, 3]);
        assert_eq!(plan(&d, &Observed::exactly(&d)), vec![]);
    }

    #[test]
    fn from_scratch_creates_device_then_neighbour_fdb_route_per_peer() {
        let d = desired(&[2]);
        let (n, f, r) = peer(2);
        assert_eq!(
            plan(&d, &Observed::default()),
            vec![
                Op::CreateLink(link()),
                Op::AddAddress("twill.1".into(), "10.244.1.0/32".parse().unwrap()),
                Op::AddNeighbour(n),
                Op::AddFdb(f),
                Op::AddRoute(r),
            ]
        );
    }

    #[test]
    fn a_vanished_peer_is_removed_route_first_and_a_new_one_added() {
        let now = desired(&[2, 4]);
        let before = Observed::exactly(&desired(&[2, 3]));
        let (n3, f3, r3) = peer(3);
        let (n4, f4, r4) = peer(4);
        assert_eq!(
            plan(&now, &before),
            vec![
                Op::DeleteRoute(r3),
                Op::DeleteFdb(f3),
                Op::DeleteNeighbour(n3),
                Op::AddNeighbour(n4),
                Op::AddFdb(f4),
                Op::AddRoute(r4),
            ]
        );
    }

    #[test]
    fn a_changed_device_is_recreated_and_every_peer_replayed() {
        let d = desired(&[2]);
        let mut o = Observed::exactly(&d);
        o.links[0].mtu = 1400;
        let ops = plan(&d, &o);
        assert_eq!(ops[0], Op::DeleteLink("twill.1".into()));
        assert_eq!(ops[1], Op::CreateLink(link()));
        assert_eq!(
            ops.len(),
            6,
            "device, address and all three peer entries: {ops:?}"
        );
    }

    #[test]
    fn a_rule_comes_after_its_tables_routes_and_goes_before_them() {
        use crate::desired::{DeviceRoute, Rule};
        let mut d = desired(&[2]);
        let (_, _, r) = peer(2);
        d.routes.insert(Route {
            table: 100,
            ..r.clone()
        });
        let connected = DeviceRoute {
            table: 100,
            dst: "198.51.100.0/24".parse().unwrap(),
            dev: "eth1".into(),
        };
        d.device_routes.insert(connected.clone());
        let rule = Rule {
            priority: 32000,
            src: "198.51.100.1/32".parse().unwrap(),
            table: 100,
        };
        d.rules.insert(rule.clone());
        let before = Observed::exactly(&desired(&[2]));
        assert_eq!(
            plan(&d, &before),
            vec![
                Op::AddDeviceRoute(connected.clone()),
                Op::AddRoute(Route {
                    table: 100,
                    ..r.clone()
                }),
                Op::AddRule(rule.clone()),
            ]
        );
        assert_eq!(
            plan(&desired(&[2]), &Observed::exactly(&d)),
            vec![
                Op::DeleteRule(rule),
                Op::DeleteDeviceRoute(connected),
                Op::DeleteRoute(Route { table: 100, ..r }),
            ]
        );
    }

    #[test]
    fn per_peer_entries_go_in_batches_of_at_most_max_and_the_rest_alone_in_plan_order() {
        let d = desired(&[2, 3, 4]);
        let ops = plan(&d, &Observed::default());
        // Device, address, then three neighbours, three FDB entries and three routes.
        assert_eq!(ops.len(), 11);
        assert_eq!(batches(&ops, 4), vec![0..1, 1..2, 2..6, 6..10, 10..11]);
        assert_eq!(batches(&ops, 256), vec![0..1, 1..2, 2..11]);
        // A batch never holds what is sent alone, and never crosses it.
        let mut mixed = ops[2..5].to_vec();
        mixed.insert(1, Op::DeleteLink("twill.2".into()));
        assert_eq!(batches(&mixed, 256), vec![0..1, 1..2, 2..4]);
        assert_eq!(
            batches(&ops, 0),
            batches(&ops, 1),
            "a batch holds at least one"
        );
        assert_eq!(batches(&[], 8), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn exactly_the_batchable_operations_have_a_request() {
        let d = desired(&[2]);
        let mut ops = plan(&d, &Observed::default());
        ops.extend(plan(&desired(&[]), &Observed::exactly(&d)));
        let device = DeviceRoute {
            table: 100,
            dst: "198.51.100.0/24".parse().unwrap(),
            dev: "twill.1".into(),
        };
        let rule = Rule {
            priority: 32000,
            src: "198.51.100.1/32".parse().unwrap(),
            table: 100,
        };
        ops.extend([
            Op::AddDeviceRoute(device.clone()),
            Op::DeleteDeviceRoute(device),
            Op::AddRule(rule.clone()),
            Op::DeleteRule(rule),
            Op::DeleteAddress("twill.1".into(), "10.244.1.0/32".parse().unwrap()),
            Op::DeleteLink("twill.1".into()),
        ]);
        let index: std::collections::BTreeMap<String, u32> = [("twill.1".to_string(), 7)].into();
        for op in &ops {
            let req = request(op, &index);
            assert_eq!(req.is_some(), op.batchable(), "{op}");
            if let Some(r) = req {
                let r = r.unwrap();
                assert!(
                    r.header.flags & rtnetlink::packet_core::NLM_F_ACK != 0,
                    "{op}"
                );
            }
        }
        let (n, _, _) = peer(2);
        let missing = request(&Op::AddNeighbour(n), &Default::default());
        assert!(
            matches!(missing, Some(Err(KernelError::NoInterface(ref d))) if d == "twill.1"),
            "{missing:?}"
        );
    }

    #[test]
    fn switching_to_host_gw_removes_the_device_and_its_routes_go_with_it() {
        let mut d = Desired::default();
        let hostgw = Route {
            table: crate::desired::MAIN_TABLE,
            dst: "10.244.2.0/24".parse().unwrap(),
            via: "192.0.2.2".parse().unwrap(),
            dev: "eth0".into(),
            onlink: false,
            also: vec![],
        };
        d.routes.insert(hostgw.clone());
        let o = Observed::exactly(&desired(&[2]));
        assert_eq!(
            plan(&d, &o),
            vec![Op::DeleteLink("twill.1".into()), Op::AddRoute(hostgw)]
        );
    }
}
