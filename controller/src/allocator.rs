//! The subnet allocator: the Raft state machine's data and the one function that applies a
//! command to it.
//!
//! Everything here is deterministic. Time only enters through the `now` carried in a command
//! (stamped by the leader when it proposes), so every member applying the same log reaches the
//! same state. The central invariant, checked by [`Allocator::check_invariants`] and by the
//! property tests, is that no two leases ever hold overlapping subnets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use twill_proto::defaults::{VXLAN_PORT, VXLAN_VNI};
use twill_proto::names::validate_node_name;
use twill_proto::settings::{BgpField, BgpSettingsError};

/// Defined with the wire contract, so controller and agents read the same settings.
pub use twill_proto::settings::{BgpPeer, BgpSettings};

/// Milliseconds since the Unix epoch, as read by the leader.
pub type Millis = u64;

/// How many recent request ids are remembered to answer a retried write without applying it
/// twice. A retry normally arrives within seconds; this covers far more writes than that.
pub const DEDUP_CAPACITY: usize = 16_384;

/// flannel's lease lifetime: a node that vanishes keeps its subnet for a day.
pub const DEFAULT_LEASE_TTL_MS: u64 = 24 * 3600 * 1000;
/// Shorter leases would have agents renewing constantly and expiring on a slow disk.
pub const MIN_LEASE_TTL_MS: u64 = 1_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    Vxlan {
        vni: u32,
        port: u16,
        direct_routing: bool,
    },
    HostGw,
    Bgp(BgpSettings),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Vxlan { .. } => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Bgp(_) => "bgp",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Config {
    pub network: Ipv6Net,
    pub subnet_len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Option<Ipv4Addr>,
    pub subnet_max: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Config>,
    pub backend: Backend,
    pub lease_ttl_ms: u64,
}

impl NetworkConfig {
    /// The embedded default: flannel's usual 10.244.0.0/16 in /24s over VXLAN VNI 1.
    pub fn embedded_default() -> Self {
        NetworkConfig {
            network: Ipv4Net::new(Ipv4Addr::new(10, 244, 0, 0), 16).expect("valid literal"),
            subnet_len: 24,
            subnet_min: None,
            subnet_max: None,
            ipv6: None,
            backend: Backend::Vxlan {
                vni: VXLAN_VNI,
                port: VXLAN_PORT,
                direct_routing: false,
            },
            lease_ttl_ms: DEFAULT_LEASE_TTL_MS,
        }
    }

    /// Checks the configuration on its own (not against live leases).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_backend()?;
        self.pools().map(|_| ())
    }

    fn check_backend(&self) -> Result<(), ConfigError> {
        match &self.backend {
            &Backend::Vxlan { vni, port, .. } => {
                if vni == 0 || vni > 0x00ff_ffff {
                    return Err(ConfigError::Vni(vni));
                }
                if port == 0 {
                    return Err(ConfigError::Port);
                }
            }
            Backend::Bgp(b) => b.validate()?,
            Backend::HostGw => {}
        }
        Ok(())
    }

    /// The address pools; the backend is not looked at (see [`Allocator::restore`]).
    fn pools(&self) -> Result<(Pool, Option<Pool>), ConfigError> {
        if self.lease_ttl_ms < MIN_LEASE_TTL_MS {
            return Err(ConfigError::LeaseTtl(self.lease_ttl_ms));
        }
        // Flannel keeps subnets to /30 or wider: a /31 or /32 leaves no address for pods.
        let v4 = Pool::new(
            u32::from(self.network.addr()) as u128,
            self.network.prefix_len(),
            32,
            self.subnet_len,
            30,
            self.subnet_min.map(|a| u32::from(a) as u128),
            self.subnet_max.map(|a| u32::from(a) as u128),
        )
        .map_err(|e| e.family("IPv4", &self.network.to_string()))?;
        let v6 = match &self.ipv6 {
            None => None,
            Some(c) => Some(
                Pool::new(
                    u128::from(c.network.addr()),
                    c.network.prefix_len(),
                    128,
                    c.subnet_len,
                    126,
                    None,
                    None,
                )
                .map_err(|e| e.family("IPv6", &c.network.to_string()))?,
            ),
        };
        Ok((v4, v6))
    }

    /// How many IPv4 subnets this configuration can hand out.
    pub fn v4_capacity(&self) -> u64 {
        self.pools()
            .map(|(p, _)| u64::try_from(p.total()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// The IPv4 subnets this configuration hands out, first and last.
    pub fn v4_range(&self) -> Option<(Ipv4Net, Ipv4Net)> {
        let (p, _) = self.pools().ok()?;
        Some((
            v4net(p.subnet_at(p.min_idx), self.subnet_len),
            v4net(p.subnet_at(p.max_idx), self.subnet_len),
        ))
    }
}

/// One address family's pool of equal-sized subnets, in index form so IPv4 and IPv6 share code.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pool {
    base: u128,
    prefix: u8,
    subnet_len: u8,
    family_bits: u8,
    min_idx: u128,
    max_idx: u128,
}

#[derive(Debug)]
enum PoolError {
    NotNetworkAddress,
    SubnetLen { prefix: u8, max: u8, got: u8 },
    Bound(&'static str, &'static str),
    MinAboveMax,
}

impl PoolError {
    fn family(self, fam: &'static str, net: &str) -> ConfigError {
        match self {
            PoolError::NotNetworkAddress => ConfigError::NotNetworkAddress(net.to_string()),
            PoolError::SubnetLen { prefix, max, got } => ConfigError::SubnetLen {
                family: fam.to_string(),
                prefix,
                max,
                got,
            },
            PoolError::Bound(which, why) => ConfigError::Bound {
                which: which.to_string(),
                why: why.to_string(),
                network: net.to_string(),
            },
            PoolError::MinAboveMax => ConfigError::MinAboveMax,
        }
    }
}

impl Pool {
    fn new(
        base: u128,
        prefix: u8,
        family_bits: u8,
        subnet_len: u8,
        max_len: u8,
        min: Option<u128>,
        max: Option<u128>,
    ) -> Result<Pool, PoolError> {
        if subnet_len <= prefix || subnet_len > max_len {
            return Err(PoolError::SubnetLen {
                prefix,
                max: max_len,
                got: subnet_len,
            });
        }
        let host_bits = family_bits - prefix;
        let host_mask: u128 = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        if base & host_mask != 0 {
            return Err(PoolError::NotNetworkAddress);
        }
        let mut pool = Pool {
            base,
            prefix,
            subnet_len,
            family_bits,
            // flannel skips the first subnet: its network address would equal the cluster
            // network's and confuse tools that treat it as the broadcast domain.
            min_idx: 1,
            max_idx: 0,
        };
        pool.max_idx = pool.last_idx();
        if let Some(m) = min {
            pool.min_idx = pool
                .index_of(m)
                .map_err(|why| PoolError::Bound("subnet_min", why))?;
        }
        if let Some(m) = max {
            pool.max_idx = pool
                .index_of(m)
                .map_err(|why| PoolError::Bound("subnet_max", why))?;
        }
        if pool.min_idx > pool.max_idx {
            return Err(PoolError::MinAboveMax);
        }
        Ok(pool)
    }

    // An IPv6 pool may hold 2^100 subnets; indexes are capped at 2^64, far beyond any cluster.
    fn step_shift(&self) -> u32 {
        (self.family_bits - self.subnet_len) as u32
    }

    fn subnet_at(&self, idx: u128) -> u128 {
        self.base + (idx << self.step_shift())
    }

    /// The index of the subnet starting at `addr`, or why `addr` is not one.
    fn index_of(&self, addr: u128) -> Result<u128, &'static str> {
        if addr < self.base {
            return Err("outside the network");
        }
        let off = addr - self.base;
        let idx = off >> self.step_shift();
        if idx << self.step_shift() != off {
            return Err("not on a subnet boundary");
        }
        if idx > self.last_idx() {
            return Err("outside the network");
        }
        Ok(idx)
    }

    fn last_idx(&self) -> u128 {
        (1u128 << (self.subnet_len - self.prefix).min(64)) - 1
    }

    fn in_range(&self, idx: u128) -> bool {
        idx >= self.min_idx && idx <= self.max_idx
    }

    fn total(&self) -> u128 {
        self.max_idx - self.min_idx + 1
    }

    /// The lowest index in range not taken in either map (both keyed by subnet base address),
    /// searched from `floor`, below which every index is taken.
    fn lowest_free<A, B>(
        &self,
        floor: u128,
        taken: &BTreeMap<u128, A>,
        reserved: &BTreeMap<u128, B>,
    ) -> Option<u128> {
        let mut cand = self.min_idx.max(floor);
        let mut a = taken
            .range(self.subnet_at(cand)..)
            .map(|(k, _)| *k)
            .peekable();
        let mut b = reserved
            .range(self.subnet_at(cand)..)
            .map(|(k, _)| *k)
            .peekable();
        loop {
            if cand > self.max_idx {
                return None;
            }
            let addr = self.subnet_at(cand);
            while a.peek().is_some_and(|k| *k < addr) {
                a.next();
            }
            while b.peek().is_some_and(|k| *k < addr) {
                b.next();
            }
            if a.peek() == Some(&addr) || b.peek() == Some(&addr) {
                cand += 1;
                continue;
            }
            return Some(cand);
        }
    }
}

fn v4net(base: u128, len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(base as u32), len).expect("prefix length validated")
}

fn v6net(base: u128, len: u8) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::from(base), len).expect("prefix length validated")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantReason {
    Reserved,
    /// The node asked for the subnet it had before (its state file), and it was free.
    HeldBefore,
    LowestFree,
    /// The node asked again while its lease was still alive (an agent restart) and kept it.
    /// Appended last: the replicated format numbers variants by position.
    Held,
}

impl fmt::Display for GrantReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrantReason::Reserved => "reserved",
            GrantReason::HeldBefore => "held before",
            GrantReason::LowestFree => "lowest free",
            GrantReason::Held => "held",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub node: String,
    pub subnet: Ipv4Net,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend_data: BTreeMap<String, String>,
    pub expires_at: Millis,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub acquired_at: Millis,
    pub reason: GrantReason,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireArgs {
    pub node: String,
    pub public_ip: Ipv4Addr,
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend_data: BTreeMap<String, String>,
    pub wanted_subnet: Option<Ipv4Net>,
    pub wanted_ipv6_subnet: Option<Ipv6Net>,
}

/// A log entry's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `only_if_absent` lets every member of a new cluster propose its start-up flags safely:
    /// the first one to commit wins and the rest change nothing.
    SetConfig {
        config: NetworkConfig,
        only_if_absent: bool,
    },
    Acquire {
        args: AcquireArgs,
        now: Millis,
    },
    /// `create_revision` names the lease instance the node believes it holds (0: any).
    Renew {
        node: String,
        create_revision: u64,
        now: Millis,
    },
    Release {
        node: String,
    },
    Expire {
        now: Millis,
    },
    /// Proposed by a new leader before it expires anything: no holder loses its lease because
    /// leadership moved while it could not renew. Every deadline moves out by `extend_ms` (one
    /// election timeout), and none is left closer than `floor_ms`: the time for a holder to
    /// find the new leader. The floor does not add up over a run of leader changes, or leases
    /// of departed nodes would never expire while leadership moves.
    Promote {
        now: Millis,
        extend_ms: u64,
        #[serde(default)]
        floor_ms: u64,
    },
    Reserve {
        node: String,
        subnet: Ipv4Net,
    },
    Unreserve {
        node: String,
    },
    /// The CA and join tokens ([`crate::trust`]); appended last, so older log entries decode.
    Trust(crate::trust::TrustCommand),
    /// Acquire by an agent that names its instance (a random id kept in its state directory),
    /// so that a second agent under the same node name cannot take a live lease silently.
    /// Appended after `Trust` for the same reason; agents that send no instance use `Acquire`.
    AcquireAs {
        args: AcquireArgs,
        now: Millis,
        instance: String,
    },
}

/// The newest log format this build reads: 1 is every command up to `Trust`, 2 adds
/// `AcquireAs`. Raise it with each command appended to [`Command`], so that a leader writes the
/// new command only once every member reads it (see [`Command::format`]).
pub const LOG_FORMAT: u32 = 2;

impl Command {
    /// The oldest log format that reads this command.
    pub fn format(&self) -> u32 {
        match self {
            Command::AcquireAs { .. } => 2,
            _ => 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Client-chosen id; a retried write with the same id gets the first answer back.
    pub request_id: Option<String>,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Lease(Lease),
    Released(Lease),
    Config(NetworkConfig),
    Expired(Vec<String>),
    Promoted(usize),
    Reserved,
    Unreserved,
    /// Answer to log entries that carry no command (Raft's blank and membership entries).
    Noop,
    Trust(crate::trust::TrustOutcome),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub revision: u64,
    pub result: Result<Outcome, AllocError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not a network address: its host bits are set")]
    NotNetworkAddress(String),
    #[error("{family} subnet length /{got} must be longer than the network's /{prefix} and at most /{max}")]
    SubnetLen {
        family: String,
        prefix: u8,
        max: u8,
        got: u8,
    },
    #[error("{which} is {why} of {network}")]
    Bound {
        which: String,
        why: String,
        network: String,
    },
    #[error("subnet_min is above subnet_max")]
    MinAboveMax,
    #[error("lease TTL {0} ms is below the minimum of 1000 ms")]
    LeaseTtl(u64),
    #[error("VXLAN VNI {0} is out of range 1..=16777215")]
    Vni(u32),
    #[error("VXLAN port must not be 0")]
    Port,
    #[error("BGP AS number must not be 0")]
    Asn,
    #[error("BGP: {0}")]
    Bgp(String),
}

/// Into the stored error shape: answers are kept in snapshots, so `ConfigError` keeps its
/// variants (bincode numbers them by position) and carries the rest as text.
impl From<BgpSettingsError> for ConfigError {
    fn from(e: BgpSettingsError) -> Self {
        match e.field {
            BgpField::Asn => ConfigError::Asn,
            _ => ConfigError::Bgp(e.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AllocError {
    #[error("no network configuration is set (use `twill config set`)")]
    NoConfig,
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("configuration change rejected: {0}")]
    WouldOrphan(String),
    /// The shared validator's message, which quotes only the start of the name: answers are
    /// kept in the replicated dedup table, and a name may be megabytes long.
    #[error("{0}")]
    NodeName(String),
    #[error("invalid public IP {0}: unspecified, multicast and broadcast addresses cannot carry a tunnel")]
    PublicIp(Ipv4Addr),
    #[error("wanted subnet {subnet} is {why}")]
    WantedSubnet { subnet: String, why: String },
    #[error("no free subnet: {in_use} of {total} in use")]
    Exhausted { in_use: u64, total: u64 },
    #[error("no free IPv6 subnet in {0}")]
    Exhausted6(String),
    #[error("node {0} holds no lease")]
    NoLease(String),
    #[error(
        "node {node} holds a different lease now (created at revision {current}, not {asked})"
    )]
    LeaseMismatch {
        node: String,
        current: u64,
        asked: u64,
    },
    #[error("subnet {subnet} is {why}")]
    ReserveSubnet { subnet: String, why: String },
    #[error("subnet {subnet} is held by node {holder}")]
    SubnetHeld { subnet: String, holder: String },
    #[error("subnet {subnet} is reserved for node {holder}")]
    SubnetReserved { subnet: String, holder: String },
    #[error("node {0} has no reservation")]
    NoReservation(String),
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    /// Last, so answers kept in older snapshots' dedup tables decode.
    #[error(
        "node {node}'s lease ({subnet}) is held by another agent, at {holder_ip}, and is live: \
         two agents under one node name would take each other's traffic. Give this agent its \
         own --node-name or stop the other one; if that machine is gone for good, free the \
         lease with `twill release {node}` (or wait for it to expire)"
    )]
    HeldByAnother {
        node: String,
        subnet: String,
        holder_ip: Ipv4Addr,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeleteReason {
    Released,
    Expired,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeleteReason::Released => "released",
            DeleteReason::Expired => "expired",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Put(Lease),
    /// A lease whose expiry moved and nothing else (a renewal, deadlines carried over to a new
    /// leader, an acquire that found the lease as it was). Kept apart so that watchers who only
    /// follow the table's shape, as agents do, are not sent one per node per renewal: with N
    /// nodes renewing, that is N² deliveries per TTL, and N per lease at every leader change.
    Renewed(Lease),
    Delete {
        lease: Lease,
        reason: DeleteReason,
    },
    Config(NetworkConfig),
}

impl Event {
    pub fn is_renewal(&self) -> bool {
        matches!(self, Event::Renewed(_))
    }
}

/// The event for `l` replacing `old`: [`Event::Renewed`] when only the expiry and the
/// modification revision differ.
fn put_event(old: &Lease, l: &Lease) -> Event {
    let same = Lease {
        expires_at: l.expires_at,
        mod_revision: l.mod_revision,
        ..old.clone()
    };
    if same == *l {
        Event::Renewed(l.clone())
    } else {
        Event::Put(l.clone())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevEvent {
    pub revision: u64,
    pub event: Event,
}

/// What a snapshot holds: the allocator's durable state without its derived indexes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AllocatorSnapshot {
    pub config: Option<NetworkConfig>,
    pub leases: Vec<Lease>,
    pub reservations: Vec<(String, Ipv4Net)>,
    pub revision: u64,
    pub dedup: Vec<(String, Response)>,
    #[serde(default)]
    pub last_now: Millis,
}

/// An [`AllocatorSnapshot`] borrowed from the allocator: serializes to the same bytes without
/// first cloning every lease and remembered answer, which at 65,536 leases is tens of MB held
/// beside the encoded bytes while a snapshot is built (issue 15).
#[derive(Serialize)]
pub struct AllocatorSnapshotRef<'a> {
    config: Option<&'a NetworkConfig>,
    leases: SeqOf<std::collections::btree_map::Values<'a, String, Lease>>,
    reservations: SeqOf<std::collections::btree_map::Iter<'a, String, Ipv4Net>>,
    revision: u64,
    dedup: Vec<(&'a String, &'a Response)>,
    last_now: Millis,
}

/// An iterator serialized as the `Vec` of its items would be. Its length must be exact
/// (bincode writes it first), which a map's iterators are.
struct SeqOf<I>(I);

impl<I> Serialize for SeqOf<I>
where
    I: Iterator + ExactSizeIterator + Clone,
    I::Item: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone())
    }
}

/// One page of [`Allocator::page`].
#[derive(Debug, Default)]
pub struct Page<'a> {
    pub leases: Vec<&'a Lease>,
    pub reservations: Vec<(&'a String, &'a Ipv4Net)>,
    pub next_after: Option<String>,
    last: Option<&'a str>,
}

#[derive(Clone, Debug, Default)]
pub struct Allocator {
    trust: crate::trust::Trust,
    config: Option<NetworkConfig>,
    pools: Option<(Pool, Option<Pool>)>,
    leases: BTreeMap<String, Lease>,
    by_subnet: BTreeMap<u128, String>,
    by_subnet6: BTreeMap<u128, String>,
    reservations: BTreeMap<String, Ipv4Net>,
    reserved_subnets: BTreeMap<u128, String>,
    revision: u64,
    dedup: HashMap<String, Response>,
    dedup_order: VecDeque<String>,
    /// The latest leader time stamped on an applied command: the timeline lease deadlines are
    /// written in, until the next leader rebases them onto its own.
    last_now: Millis,
    /// The revision at which the configuration was last set; 0 when unknown (restored from a
    /// snapshot older than this field).
    config_revision: u64,
    /// The agent instance holding each lease, for the leases acquired by agents that name one.
    instances: BTreeMap<String, String>,
    /// Per pool (IPv4, IPv6), an index below which every subnet is held or reserved: where the
    /// search for the lowest free one starts. Searching from the bottom every time made filling
    /// a network O(N²), on every member (at 10,000 leases, 19 % of all CPU samples while 64
    /// clients acquired). Raised when the subnet at it is taken, lowered to any subnet let go,
    /// reset with the pools; the answer is the same lowest free subnet either way.
    free_floor: [u128; 2],
}

fn check_node_name(n: &str) -> Result<(), AllocError> {
    validate_node_name(n).map_err(|e| AllocError::NodeName(e.to_string()))
}

fn usable_public_ip(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast())
}

impl Allocator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn config(&self) -> Option<&NetworkConfig> {
        self.config.as_ref()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// See the field; kept beside the snapshot, not in it (see `state_machine::Payload`).
    pub fn config_revision(&self) -> u64 {
        self.config_revision
    }

    pub fn set_config_revision(&mut self, r: u64) {
        self.config_revision = r;
    }

    /// The instance holding each lease; kept beside the snapshot like `config_revision`.
    pub fn instances(&self) -> &BTreeMap<String, String> {
        &self.instances
    }

    /// Restores [`Allocator::instances`], keeping only entries for leases that exist.
    pub fn set_instances(&mut self, instances: BTreeMap<String, String>) {
        self.instances = instances
            .into_iter()
            .filter(|(n, _)| self.leases.contains_key(n))
            .collect();
    }

    pub fn last_now(&self) -> Millis {
        self.last_now
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    pub fn lease(&self, node: &str) -> Option<&Lease> {
        self.leases.get(node)
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Answers kept for retries; grows to [`DEDUP_CAPACITY`] and stays there.
    pub fn retry_answers(&self) -> usize {
        self.dedup_order.len()
    }

    pub fn reservations(&self) -> impl Iterator<Item = (&String, &Ipv4Net)> {
        self.reservations.iter()
    }

    /// The leases and reservations of at most `limit` node names after `after`, in name order,
    /// and the name to continue after when more follow.
    pub fn page(&self, after: &str, limit: usize) -> Page<'_> {
        use std::ops::Bound::{Excluded, Unbounded};
        let from = if after.is_empty() {
            Unbounded
        } else {
            Excluded(after)
        };
        let mut leases = self.leases.range::<str, _>((from, Unbounded)).peekable();
        let mut reservations = self
            .reservations
            .range::<str, _>((from, Unbounded))
            .peekable();
        let mut page = Page::default();
        let mut names = 0;
        loop {
            let next = match (leases.peek(), reservations.peek()) {
                (None, None) => return page,
                (Some((a, _)), Some((b, _))) => a.as_str().min(b.as_str()),
                (Some((a, _)), None) => a.as_str(),
                (None, Some((b, _))) => b.as_str(),
            };
            if names == limit.max(1) {
                page.next_after = page.last.map(str::to_string);
                return page;
            }
            names += 1;
            if leases.peek().is_some_and(|(n, _)| n.as_str() == next) {
                page.leases.extend(leases.next().map(|(_, l)| l));
            }
            if reservations.peek().is_some_and(|(n, _)| n.as_str() == next) {
                page.reservations.extend(reservations.next());
            }
            page.last = Some(next);
        }
    }

    /// Applies one log entry. Returns the answer for the proposer and the lease events it made.
    pub fn apply(&mut self, req: &Request) -> (Response, Vec<RevEvent>) {
        if let Some(id) = &req.request_id {
            if let Some(prev) = self.dedup.get(id) {
                return (prev.clone(), Vec::new());
            }
        }
        let mut events = Vec::new();
        match req.command {
            Command::Acquire { now, .. }
            | Command::AcquireAs { now, .. }
            | Command::Renew { now, .. }
            | Command::Expire { now } => self.last_now = self.last_now.max(now),
            _ => {}
        }
        let result = self.apply_command(&req.command, &mut events);
        let resp = Response {
            revision: self.revision,
            result,
        };
        if let Some(id) = &req.request_id {
            self.remember(id.clone(), resp.clone());
        }
        (resp, events)
    }

    fn remember(&mut self, id: String, resp: Response) {
        if self.dedup_order.len() >= DEDUP_CAPACITY {
            if let Some(old) = self.dedup_order.pop_front() {
                self.dedup.remove(&old);
            }
        }
        self.dedup_order.push_back(id.clone());
        self.dedup.insert(id, resp);
    }

    fn emit(&mut self, events: &mut Vec<RevEvent>, event: Event) -> u64 {
        self.revision += 1;
        events.push(RevEvent {
            revision: self.revision,
            event,
        });
        self.revision
    }

    fn apply_command(
        &mut self,
        cmd: &Command,
        events: &mut Vec<RevEvent>,
    ) -> Result<Outcome, AllocError> {
        match cmd {
            Command::SetConfig {
                config,
                only_if_absent,
            } => self.set_config(config, *only_if_absent, events),
            Command::Acquire { args, now } => self.acquire(args, *now, "", events),
            Command::AcquireAs {
                args,
                now,
                instance,
            } => self.acquire(args, *now, instance, events),
            Command::Renew {
                node,
                create_revision,
                now,
            } => self.renew(node, *create_revision, *now, events),
            Command::Release { node } => {
                let lease = self
                    .leases
                    .get(node)
                    .cloned()
                    .ok_or_else(|| AllocError::NoLease(node.clone()))?;
                self.remove_lease(node, DeleteReason::Released, events);
                Ok(Outcome::Released(lease))
            }
            Command::Expire { now } => {
                let dead: Vec<String> = self
                    .leases
                    .values()
                    .filter(|l| l.expires_at < *now)
                    .map(|l| l.node.clone())
                    .collect();
                for n in &dead {
                    self.remove_lease(n, DeleteReason::Expired, events);
                }
                Ok(Outcome::Expired(dead))
            }
            Command::Promote {
                now,
                extend_ms,
                floor_ms,
            } => {
                // Deadlines move onto the new leader's timeline: each keeps the time it had
                // left at the last command the old leader stamped, plus the grace. Members'
                // clocks may disagree; only each leader's own clock, read steadily through its
                // term, is trusted.
                let since = self.last_now;
                self.last_now = *now;
                let nodes: Vec<String> = self.leases.keys().cloned().collect();
                for n in &nodes {
                    let Some(l) = self.leases.get(n) else {
                        continue;
                    };
                    let old = l.clone();
                    let mut l = l.clone();
                    let left = l.expires_at.saturating_sub(since);
                    l.expires_at =
                        now.saturating_add(left.saturating_add(*extend_ms).max(*floor_ms));
                    l.mod_revision = self.revision + 1;
                    self.emit(events, put_event(&old, &l));
                    self.leases.insert(n.clone(), l);
                }
                Ok(Outcome::Promoted(nodes.len()))
            }
            Command::Reserve { node, subnet } => self.reserve(node, *subnet),
            Command::Unreserve { node } => {
                let s = self
                    .reservations
                    .remove(node)
                    .ok_or_else(|| AllocError::NoReservation(node.clone()))?;
                let base = u32::from(s.network()) as u128;
                self.reserved_subnets.remove(&base);
                self.floor_freed(0, base);
                Ok(Outcome::Unreserved)
            }
            Command::Trust(c) => Ok(Outcome::Trust(self.trust.apply(c)?)),
        }
    }

    /// The cluster's CA and join tokens.
    pub fn trust(&self) -> &crate::trust::Trust {
        &self.trust
    }

    /// Restores the trust half of a snapshot (kept apart from [`AllocatorSnapshot`], whose
    /// encoding older snapshots fix).
    pub fn set_trust(&mut self, trust: crate::trust::Trust) {
        self.trust = trust;
    }

    fn set_config(
        &mut self,
        config: &NetworkConfig,
        only_if_absent: bool,
        events: &mut Vec<RevEvent>,
    ) -> Result<Outcome, AllocError> {
        if let (true, Some(cur)) = (only_if_absent, &self.config) {
            return Ok(Outcome::Config(cur.clone()));
        }
        config.check_backend()?;
        let (v4, v6) = config.pools()?;
        // A change may not strand what is already handed out: every lease and reservation must
        // still be a subnet of the new pools, at the same length.
        for l in self.leases.values() {
            check_fits(&v4, config, &l.subnet, &format!("lease of node {}", l.node))?;
            if let Some(s6) = l.ipv6_subnet {
                match &v6 {
                    None => {
                        return Err(AllocError::WouldOrphan(format!(
                            "node {} holds IPv6 subnet {s6}, and the new configuration has no IPv6 network",
                            l.node
                        )))
                    }
                    Some(p6) => {
                        let ok = s6.prefix_len() == p6.subnet_len
                            && p6
                                .index_of(u128::from(s6.network()))
                                .is_ok_and(|i| p6.in_range(i));
                        if !ok {
                            return Err(AllocError::WouldOrphan(format!(
                                "IPv6 subnet {s6} of node {} would fall outside the new IPv6 range",
                                l.node
                            )));
                        }
                    }
                }
            }
        }
        for (n, s) in &self.reservations {
            check_fits(&v4, config, s, &format!("reservation of node {n}"))?;
        }
        if self.config.as_ref() == Some(config) {
            return Ok(Outcome::Config(config.clone()));
        }
        self.config = Some(config.clone());
        self.pools = Some((v4, v6));
        self.free_floor = [0, 0];
        self.config_revision = self.emit(events, Event::Config(config.clone()));
        Ok(Outcome::Config(config.clone()))
    }

    /// `instance` is the asking agent's ("" for an agent that names none).
    fn acquire(
        &mut self,
        a: &AcquireArgs,
        now: Millis,
        instance: &str,
        events: &mut Vec<RevEvent>,
    ) -> Result<Outcome, AllocError> {
        let (cfg, (v4, v6)) = match (&self.config, &self.pools) {
            (Some(c), Some(p)) => (c.clone(), p.clone()),
            _ => return Err(AllocError::NoConfig),
        };
        check_node_name(&a.node)?;
        if !usable_public_ip(a.public_ip) {
            return Err(AllocError::PublicIp(a.public_ip));
        }
        let expires_at = now.saturating_add(cfg.lease_ttl_ms);

        // Rule 1: a node that holds a lease gets it back, refreshed with what it says now. Unless
        // another agent holds it from elsewhere: the same instance is the agent restarted or its
        // address changed; another instance at the same public IP is that machine with its state
        // lost; another instance at another address is a second machine under the same name,
        // which would take the first one's traffic.
        if let Some(cur) = self.leases.get(&a.node).cloned() {
            if let Some(holder) = self.instances.get(&a.node) {
                if holder != instance && cur.public_ip != a.public_ip {
                    return Err(AllocError::HeldByAnother {
                        node: a.node.clone(),
                        subnet: cur.subnet.to_string(),
                        holder_ip: cur.public_ip,
                    });
                }
            }
            let mut l = cur.clone();
            l.public_ip = a.public_ip;
            l.public_ipv6 = a.public_ipv6;
            l.backend_data = a.backend_data.clone();
            // The provenance answers "why this subnet now": it was still the node's. A
            // reservation stays the stronger reason.
            if l.reason != GrantReason::Reserved {
                l.reason = GrantReason::Held;
            }
            // Like Renew: a leader whose clock lags never pulls a deadline in.
            l.expires_at = l.expires_at.max(expires_at);
            // Dual stack switched on after the lease was made: give it its IPv6 half now.
            if l.ipv6_subnet.is_none() {
                if let Some(p6) = &v6 {
                    l.ipv6_subnet = Some(self.pick_v6(p6, a.wanted_ipv6_subnet)?);
                }
            }
            l.mod_revision = self.revision + 1;
            self.emit(events, put_event(&cur, &l));
            self.index_insert(&l);
            self.leases.insert(a.node.clone(), l.clone());
            self.hold_for(&a.node, instance);
            return Ok(Outcome::Lease(l));
        }

        // Validate the wanted subnet before anything else so bad input changes nothing.
        let wanted_idx = match a.wanted_subnet {
            None => None,
            Some(w) => {
                let bad = |why: &str| AllocError::WantedSubnet {
                    subnet: w.to_string(),
                    why: why.to_string(),
                };
                if w.prefix_len() != cfg.subnet_len {
                    return Err(bad(&format!(
                        "not a /{} (the configured subnet length)",
                        cfg.subnet_len
                    )));
                }
                let idx = v4
                    .index_of(u32::from(w.addr()) as u128)
                    .map_err(|why| bad(&format!("{why} of {}", cfg.network)))?;
                if !v4.in_range(idx) {
                    return Err(bad("outside the configured subnet range"));
                }
                Some(idx)
            }
        };

        let reserved = self.reservations.get(&a.node).copied();
        let (subnet, reason) = if let Some(r) = reserved {
            let base = u32::from(r.network()) as u128;
            if let Some(holder) = self.by_subnet.get(&base) {
                return Err(AllocError::SubnetHeld {
                    subnet: r.to_string(),
                    holder: holder.clone(),
                });
            }
            (r, GrantReason::Reserved)
        } else if let Some(idx) = wanted_idx.filter(|i| {
            let base = v4.subnet_at(*i);
            !self.by_subnet.contains_key(&base) && !self.reserved_subnets.contains_key(&base)
        }) {
            (
                v4net(v4.subnet_at(idx), cfg.subnet_len),
                GrantReason::HeldBefore,
            )
        } else {
            match v4.lowest_free(self.free_floor[0], &self.by_subnet, &self.reserved_subnets) {
                Some(idx) => (
                    v4net(v4.subnet_at(idx), cfg.subnet_len),
                    GrantReason::LowestFree,
                ),
                None => {
                    let in_use = self
                        .by_subnet
                        .keys()
                        .chain(self.reserved_subnets.keys())
                        .filter(|b| v4.index_of(**b).is_ok_and(|i| v4.in_range(i)))
                        .collect::<std::collections::BTreeSet<_>>()
                        .len() as u64;
                    return Err(AllocError::Exhausted {
                        in_use,
                        total: v4.total().min(u64::MAX as u128) as u64,
                    });
                }
            }
        };
        let ipv6_subnet = match &v6 {
            Some(p6) => Some(self.pick_v6(p6, a.wanted_ipv6_subnet)?),
            None => None,
        };
        let rev = self.revision + 1;
        let lease = Lease {
            node: a.node.clone(),
            subnet,
            ipv6_subnet,
            public_ip: a.public_ip,
            public_ipv6: a.public_ipv6,
            backend_data: a.backend_data.clone(),
            expires_at,
            create_revision: rev,
            mod_revision: rev,
            acquired_at: now,
            reason,
        };
        self.emit(events, Event::Put(lease.clone()));
        self.index_insert(&lease);
        self.leases.insert(a.node.clone(), lease.clone());
        self.hold_for(&a.node, instance);
        Ok(Outcome::Lease(lease))
    }

    /// Records who holds `node`'s lease now. An agent that names no instance (an older one)
    /// leaves the record as it is: it holds the lease only because its address matched.
    fn hold_for(&mut self, node: &str, instance: &str) {
        if !instance.is_empty() {
            self.instances
                .insert(node.to_string(), instance.to_string());
        }
    }

    fn pick_v6(&self, p6: &Pool, wanted: Option<Ipv6Net>) -> Result<Ipv6Net, AllocError> {
        if let Some(w) = wanted {
            let base = u128::from(w.network());
            if w.prefix_len() == p6.subnet_len
                && w.addr() == w.network()
                && p6.index_of(base).is_ok_and(|i| p6.in_range(i))
                && !self.by_subnet6.contains_key(&base)
            {
                return Ok(w);
            }
        }
        let none: BTreeMap<u128, ()> = BTreeMap::new();
        p6.lowest_free(self.free_floor[1], &self.by_subnet6, &none)
            .map(|i| v6net(p6.subnet_at(i), p6.subnet_len))
            .ok_or_else(|| AllocError::Exhausted6(format!("/{}", p6.subnet_len)))
    }

    fn renew(
        &mut self,
        node: &str,
        create_revision: u64,
        now: Millis,
        events: &mut Vec<RevEvent>,
    ) -> Result<Outcome, AllocError> {
        let ttl = self
            .config
            .as_ref()
            .ok_or(AllocError::NoConfig)?
            .lease_ttl_ms;
        let old = self
            .leases
            .get(node)
            .ok_or_else(|| AllocError::NoLease(node.to_string()))?;
        let mut l = old.clone();
        if create_revision != 0 && create_revision != l.create_revision {
            return Err(AllocError::LeaseMismatch {
                node: node.to_string(),
                current: l.create_revision,
                asked: create_revision,
            });
        }
        // Never shorten: a renew stamped by a leader whose clock lags must not pull a deadline in.
        l.expires_at = l.expires_at.max(now.saturating_add(ttl));
        l.mod_revision = self.revision + 1;
        let ev = put_event(old, &l);
        self.emit(events, ev);
        self.leases.insert(node.to_string(), l.clone());
        Ok(Outcome::Lease(l))
    }

    fn reserve(&mut self, node: &str, subnet: Ipv4Net) -> Result<Outcome, AllocError> {
        let (cfg, (v4, _)) = match (&self.config, &self.pools) {
            (Some(c), Some(p)) => (c, p),
            _ => return Err(AllocError::NoConfig),
        };
        check_node_name(node)?;
        let bad = |why: String| AllocError::ReserveSubnet {
            subnet: subnet.to_string(),
            why,
        };
        if subnet.prefix_len() != cfg.subnet_len {
            return Err(bad(format!("not a /{}", cfg.subnet_len)));
        }
        let base = u32::from(subnet.addr()) as u128;
        let idx = v4
            .index_of(base)
            .map_err(|why| bad(format!("{why} of {}", cfg.network)))?;
        if !v4.in_range(idx) {
            return Err(bad("outside the configured subnet range".into()));
        }
        if let Some(holder) = self.by_subnet.get(&base).filter(|h| *h != node) {
            return Err(AllocError::SubnetHeld {
                subnet: subnet.to_string(),
                holder: holder.clone(),
            });
        }
        if let Some(holder) = self.reserved_subnets.get(&base).filter(|h| *h != node) {
            return Err(AllocError::SubnetReserved {
                subnet: subnet.to_string(),
                holder: holder.clone(),
            });
        }
        if let Some(old) = self.reservations.insert(node.to_string(), subnet) {
            let old = u32::from(old.network()) as u128;
            self.reserved_subnets.remove(&old);
            self.floor_freed(0, old);
        }
        self.reserved_subnets.insert(base, node.to_string());
        self.floor_taken(0, base);
        Ok(Outcome::Reserved)
    }

    fn index_insert(&mut self, l: &Lease) {
        let base = u32::from(l.subnet.network()) as u128;
        self.by_subnet.insert(base, l.node.clone());
        self.floor_taken(0, base);
        if let Some(s6) = l.ipv6_subnet {
            let base = u128::from(s6.network());
            self.by_subnet6.insert(base, l.node.clone());
            self.floor_taken(1, base);
        }
    }

    /// Pool `which` (0: IPv4, 1: IPv6), when configured.
    fn pool(&self, which: usize) -> Option<&Pool> {
        let (v4, v6) = self.pools.as_ref()?;
        if which == 0 {
            Some(v4)
        } else {
            v6.as_ref()
        }
    }

    /// Where the search for pool `which`'s lowest free subnet starts, and `base`'s index in
    /// that pool when it is one of its subnets.
    fn floor_and_index(&self, which: usize, base: u128) -> Option<(u128, u128)> {
        let pool = self.pool(which)?;
        let i = pool.index_of(base).ok()?;
        Some((self.free_floor[which].max(pool.min_idx), i))
    }

    /// The subnet at `base` was just taken: at the floor, the floor moves past it.
    fn floor_taken(&mut self, which: usize, base: u128) {
        if let Some((floor, i)) = self.floor_and_index(which, base) {
            if i == floor {
                self.free_floor[which] = floor + 1;
            }
        }
    }

    /// The subnet at `base` was let go: the floor comes down to it.
    fn floor_freed(&mut self, which: usize, base: u128) {
        if let Some((floor, i)) = self.floor_and_index(which, base) {
            self.free_floor[which] = floor.min(i);
        }
    }

    fn remove_lease(&mut self, node: &str, reason: DeleteReason, events: &mut Vec<RevEvent>) {
        self.instances.remove(node);
        if let Some(l) = self.leases.remove(node) {
            let base = u32::from(l.subnet.network()) as u128;
            self.by_subnet.remove(&base);
            self.floor_freed(0, base);
            if let Some(s6) = l.ipv6_subnet {
                let base = u128::from(s6.network());
                self.by_subnet6.remove(&base);
                self.floor_freed(1, base);
            }
            self.emit(events, Event::Delete { lease: l, reason });
        }
    }

    pub fn snapshot(&self) -> AllocatorSnapshot {
        AllocatorSnapshot {
            config: self.config.clone(),
            leases: self.leases.values().cloned().collect(),
            reservations: self
                .reservations
                .iter()
                .map(|(n, s)| (n.clone(), *s))
                .collect(),
            revision: self.revision,
            last_now: self.last_now,
            dedup: self
                .dedup_order
                .iter()
                .filter_map(|id| self.dedup.get(id).map(|r| (id.clone(), r.clone())))
                .collect(),
        }
    }

    /// [`Allocator::snapshot`] without the copy, for encoding.
    pub fn snapshot_ref(&self) -> AllocatorSnapshotRef<'_> {
        AllocatorSnapshotRef {
            config: self.config.as_ref(),
            leases: SeqOf(self.leases.values()),
            reservations: SeqOf(self.reservations.iter()),
            revision: self.revision,
            dedup: self
                .dedup_order
                .iter()
                .filter_map(|id| self.dedup.get(id).map(|r| (id, r)))
                .collect(),
            last_now: self.last_now,
        }
    }

    /// Rebuilds an allocator from a snapshot, re-deriving its indexes. The backend settings
    /// are not checked again: they were valid when applied, and a rule tightened since (node
    /// names in BGP settings, say) must not keep a member from starting.
    pub fn restore(s: AllocatorSnapshot) -> Result<Self, ConfigError> {
        let mut a = Allocator {
            pools: match &s.config {
                Some(c) => Some(c.pools()?),
                None => None,
            },
            config: s.config,
            revision: s.revision,
            last_now: s.last_now,
            ..Default::default()
        };
        for l in s.leases {
            a.index_insert(&l);
            a.leases.insert(l.node.clone(), l);
        }
        for (n, sub) in s.reservations {
            let base = u32::from(sub.network()) as u128;
            a.reserved_subnets.insert(base, n.clone());
            a.floor_taken(0, base);
            a.reservations.insert(n, sub);
        }
        for (id, r) in s.dedup {
            a.remember(id, r);
        }
        Ok(a)
    }

    /// The safety invariant and index consistency; tests call this after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut v4: Vec<&Lease> = self.leases.values().collect();
        v4.sort_by_key(|l| u32::from(l.subnet.network()));
        for w in v4.windows(2) {
            if w[0].subnet.contains(&w[1].subnet.network())
                || w[1].subnet.contains(&w[0].subnet.network())
            {
                return Err(format!(
                    "overlap: {} holds {} and {} holds {}",
                    w[0].node, w[0].subnet, w[1].node, w[1].subnet
                ));
            }
        }
        let mut v6: Vec<(Ipv6Net, &str)> = self
            .leases
            .values()
            .filter_map(|l| l.ipv6_subnet.map(|s| (s, l.node.as_str())))
            .collect();
        v6.sort_by_key(|(s, _)| u128::from(s.network()));
        for w in v6.windows(2) {
            if w[0].0.contains(&w[1].0.network()) {
                return Err(format!("IPv6 overlap: {} and {}", w[0].1, w[1].1));
            }
        }
        if self.by_subnet.len() != self.leases.len() {
            return Err("subnet index out of step with the lease table".into());
        }
        for (n, s) in &self.reservations {
            let base = u32::from(s.network()) as u128;
            if let Some(h) = self.by_subnet.get(&base) {
                if h != n {
                    return Err(format!("reserved subnet {s} of {n} is held by {h}"));
                }
            }
        }
        for l in self.leases.values() {
            if l.mod_revision > self.revision || l.create_revision > l.mod_revision {
                return Err(format!("lease of {} has revisions from the future", l.node));
            }
        }
        // Below each search floor every subnet is held or reserved (so at most as many
        // indexes as there are leases and reservations are walked here).
        let empty = BTreeMap::new();
        for (which, held, reserved) in [
            (0, &self.by_subnet, &self.reserved_subnets),
            (1, &self.by_subnet6, &empty),
        ] {
            if let Some(pool) = self.pool(which) {
                for i in pool.min_idx..self.free_floor[which].max(pool.min_idx) {
                    let base = pool.subnet_at(i);
                    if !held.contains_key(&base) && !reserved.contains_key(&base) {
                        return Err(format!(
                            "search floor {} of pool {which} is above free index {i}",
                            self.free_floor[which]
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

fn check_fits(v4: &Pool, cfg: &NetworkConfig, s: &Ipv4Net, what: &str) -> Result<(), AllocError> {
    if s.prefix_len() != cfg.subnet_len {
        return Err(AllocError::WouldOrphan(format!(
            "{what} is {s}, a /{}; the subnet length cannot change while it exists",
            s.prefix_len()
        )));
    }
    let ok = v4
        .index_of(u32::from(s.network()) as u128)
        .is_ok_and(|i| v4.in_range(i));
    if !ok {
        return Err(AllocError::WouldOrphan(format!(
            "{what} is {s}, which falls outside {} (range {:?}..{:?})",
            cfg.network, cfg.subnet_min, cfg.subnet_max
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_config(backend: Backend) -> Allocator {
        let mut a = Allocator::new();
        let config = NetworkConfig {
            backend,
            ..NetworkConfig::embedded_default()
        };
        let (resp, _) = a.apply(&Request {
            request_id: None,
            command: Command::SetConfig {
                config,
                only_if_absent: false,
            },
        });
        assert!(resp.result.is_ok(), "{resp:?}");
        a
    }

    fn acquire(a: &mut Allocator, node: String) -> Result<Outcome, AllocError> {
        a.apply(&Request {
            request_id: None,
            command: Command::Acquire {
                args: AcquireArgs {
                    node,
                    public_ip: Ipv4Addr::new(192, 0, 2, 1),
                    public_ipv6: None,
                    backend_data: BTreeMap::new(),
                    wanted_subnet: None,
                    wanted_ipv6_subnet: None,
                },
                now: 1,
            },
        })
        .0
        .result
    }

    #[test]
    fn a_second_machine_under_a_held_name_is_refused_until_the_lease_is_freed() {
        let mut a = with_config(Backend::HostGw);
        let ask = |a: &mut Allocator, instance: &str, ip: u8, now: Millis| {
            let args = AcquireArgs {
                node: "n1".into(),
                public_ip: Ipv4Addr::new(192, 0, 2, ip),
                public_ipv6: None,
                backend_data: BTreeMap::new(),
                wanted_subnet: None,
                wanted_ipv6_subnet: None,
            };
            a.apply(&Request {
                request_id: None,
                command: Command::AcquireAs {
                    args,
                    now,
                    instance: instance.into(),
                },
            })
            .0
            .result
        };
        let subnet = |o: Result<Outcome, AllocError>| match o {
            Ok(Outcome::Lease(l)) => l.subnet,
            other => panic!("no lease: {other:?}"),
        };
        let first = subnet(ask(&mut a, "one", 1, 1_000));
        // The same agent, restarted or moved to another address: its lease.
        assert_eq!(subnet(ask(&mut a, "one", 1, 2_000)), first);
        assert_eq!(subnet(ask(&mut a, "one", 5, 3_000)), first);
        // Another machine under the name: refused, nothing changed.
        let before = a.snapshot().leases;
        let e = ask(&mut a, "two", 9, 4_000).expect_err("a second machine");
        assert!(
            matches!(e, AllocError::HeldByAnother { holder_ip, .. } if holder_ip == Ipv4Addr::new(192, 0, 2, 5))
        );
        let text = e.to_string();
        assert!(text.contains("twill release n1"), "{text}");
        assert_eq!(a.snapshot().leases, before);
        assert_eq!(a.instances().get("n1").map(String::as_str), Some("one"));
        // The machine that holds it, its state lost (another instance, the same address).
        assert_eq!(subnet(ask(&mut a, "three", 5, 5_000)), first);
        assert_eq!(a.instances().get("n1").map(String::as_str), Some("three"));
        // Once the lease is gone, the name is free for anyone.
        let (r, _) = a.apply(&Request {
            request_id: None,
            command: Command::Release { node: "n1".into() },
        });
        assert!(r.result.is_ok());
        assert!(a.instances().is_empty());
        assert!(ask(&mut a, "two", 9, 6_000).is_ok());
    }

    #[test]
    fn pages_cover_leases_and_reservations_once_in_name_order() {
        let mut a = with_config(Backend::HostGw);
        for n in ["b", "d", "f"] {
            assert!(acquire(&mut a, n.into()).is_ok());
        }
        for (n, net) in [
            ("a", "10.244.200.0/24"),
            ("d", "10.244.201.0/24"),
            ("g", "10.244.202.0/24"),
        ] {
            let (resp, _) = a.apply(&Request {
                request_id: None,
                command: Command::Reserve {
                    node: n.into(),
                    subnet: net.parse().expect("literal"),
                },
            });
            assert!(resp.result.is_ok(), "{resp:?}");
        }
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let p = a.page(&after, 2);
            let mut names: Vec<String> = p.leases.iter().map(|l| format!("L{}", l.node)).collect();
            names.extend(p.reservations.iter().map(|(n, _)| format!("R{n}")));
            assert!(!names.is_empty());
            seen.push(names);
            match p.next_after {
                Some(n) => after = n,
                None => break,
            }
        }
        // Two node names a page: "d" has a lease and a reservation, counted once.
        assert_eq!(
            seen,
            vec![
                vec!["Lb".to_string(), "Ra".into()],
                vec!["Ld".into(), "Lf".into(), "Rd".into()],
                vec!["Rg".into()],
            ]
        );
        assert!(a.page("g", 2).next_after.is_none());
        assert!(a.page("zzz", 2).leases.is_empty());
    }

    #[test]
    fn a_lease_asked_for_again_while_alive_says_it_was_held() {
        let mut a = with_config(Backend::HostGw);
        let Ok(Outcome::Lease(first)) = acquire(&mut a, "n1".into()) else {
            panic!("first acquire");
        };
        assert_eq!(first.reason, GrantReason::LowestFree);
        let Ok(Outcome::Lease(again)) = acquire(&mut a, "n1".into()) else {
            panic!("second acquire");
        };
        assert_eq!(again.subnet, first.subnet);
        assert_eq!(again.reason.to_string(), "held");
        assert_eq!(again.acquired_at, first.acquired_at, "held since then");
    }

    #[test]
    fn a_huge_node_name_is_refused_and_not_kept_in_the_answer() {
        let mut a = with_config(NetworkConfig::embedded_default().backend);
        let Err(AllocError::NodeName(msg)) = acquire(&mut a, "n".repeat(5 << 20)) else {
            panic!("a 5 MB name must be refused");
        };
        assert!(
            msg.len() < 600,
            "answers are kept in the dedup table: {msg}"
        );
        assert_eq!(a.lease_count(), 0);
    }

    #[test]
    fn kubernetes_refused_node_names_are_refused() {
        let mut a = with_config(Backend::HostGw);
        for n in ["Node-1", "node_1", "-node", "node.", "node 1"] {
            assert!(
                matches!(acquire(&mut a, n.into()), Err(AllocError::NodeName(_))),
                "{n}"
            );
        }
        assert!(acquire(&mut a, "ip-10-0-0-1.ec2.internal".into()).is_ok());
    }

    #[test]
    fn bgp_node_names_follow_the_node_name_rule() {
        let bad = NetworkConfig {
            backend: Backend::Bgp(BgpSettings {
                asn: 64512,
                route_reflectors: vec!["RR_1".into()],
                ..Default::default()
            }),
            ..NetworkConfig::embedded_default()
        };
        let err = bad.validate().expect_err("uppercase reflector name");
        assert!(err.to_string().contains("route_reflectors"), "{err}");
        let no_asn = NetworkConfig {
            backend: Backend::Bgp(BgpSettings::default()),
            ..NetworkConfig::embedded_default()
        };
        assert_eq!(no_asn.validate(), Err(ConfigError::Asn));
    }

    #[test]
    fn restore_keeps_settings_accepted_under_an_older_rule() {
        // Written before node names in BGP settings were checked: the member must still start.
        let old = NetworkConfig {
            backend: Backend::Bgp(BgpSettings {
                asn: 64512,
                route_reflectors: vec!["RR_1".into()],
                ..Default::default()
            }),
            ..NetworkConfig::embedded_default()
        };
        let snap = AllocatorSnapshot {
            config: Some(old.clone()),
            ..Default::default()
        };
        let a = Allocator::restore(snap).expect("restores");
        assert_eq!(a.config(), Some(&old));
    }

    /// The layout `BgpSettings` had when it was defined here; Raft logs and snapshots hold it.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct StoredBgpSettings {
        asn: u32,
        mesh: bool,
        route_reflectors: Vec<String>,
        cluster_id: Option<Ipv4Addr>,
        hold_time: u16,
        peers: Vec<StoredBgpPeer>,
        node_asn: BTreeMap<String, u32>,
        allowed_prefixes: Vec<Ipv4Net>,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct StoredBgpPeer {
        address: std::net::IpAddr,
        asn: u32,
        password: Option<String>,
        node: Option<String>,
    }

    #[test]
    fn bgp_settings_keep_their_stored_layout() {
        let stored = StoredBgpSettings {
            asn: 64512,
            mesh: false,
            route_reflectors: vec!["rr-1".into()],
            cluster_id: Some(Ipv4Addr::new(10, 0, 0, 1)),
            hold_time: 30,
            peers: vec![StoredBgpPeer {
                address: "192.0.2.254".parse().expect("literal"),
                asn: 64500,
                password: Some("k".into()),
                node: Some("n1".into()),
            }],
            node_asn: [("n2".to_string(), 64602)].into(),
            allowed_prefixes: vec!["192.0.2.0/24".parse().expect("literal")],
        };
        let bytes = bincode::serialize(&stored).expect("serialize");
        let now: BgpSettings = bincode::deserialize(&bytes).expect("old bytes read");
        assert_eq!(bincode::serialize(&now).expect("serialize"), bytes);
        assert_eq!(now.route_reflectors, ["rr-1"]);
        assert_eq!(now.peers[0].node.as_deref(), Some("n1"));
    }
}
