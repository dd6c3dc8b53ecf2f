//! Property tests of the allocator state machine (DESIGN.md §2).
//!
//! Random command sequences run on networks of 3 to 15 subnets, so exhaustion, reservations,
//! expiry, dual stack and configuration changes all happen. The allocator has to match
//! an independent model of the rules, applied to the state before each step, and the
//! resulting state is checked on its own terms (no overlap, every lease inside the network,
//! reservations respected), not only through `check_invariants`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use proptest::prelude::*;
use proptest::sample::Index;
use twill_controller::allocator::{
    AcquireArgs, AllocError, Allocator, AllocatorSnapshot, Backend, Command, DeleteReason, Event,
    GrantReason, Ipv6Config, Lease, NetworkConfig, Outcome, Request, Response, RevEvent,
};
use twill_proto::defaults::VXLAN_PORT;

// ---------------------------------------------------------------------------------------------
// Configurations: small on purpose, so a handful of nodes exhausts them.

const VALID_CONFIGS: u8 = 9;
const ALL_CONFIGS: u8 = 12;

fn net(a: [u8; 4], prefix: u8, subnet_len: u8) -> NetworkConfig {
    NetworkConfig {
        // Built with `new`, not `new_assert`: one invalid config below has host bits set.
        network: Ipv4Net::new(Ipv4Addr::from(a), prefix).expect("prefix <= 32"),
        subnet_len,
        subnet_min: None,
        subnet_max: None,
        ipv6: None,
        backend: Backend::Vxlan {
            vni: 1,
            port: VXLAN_PORT,
            direct_routing: false,
        },
        lease_ttl_ms: 5_000,
    }
}

/// 0..VALID_CONFIGS are valid; the rest must be rejected by validation. 0, 3, 6 and 7 share
/// their /28 grid, so switching among them keeps the leases, while the others orphan them.
fn config(i: u8) -> NetworkConfig {
    let base = [10, 0, 0, 0];
    match i % ALL_CONFIGS {
        0 => net(base, 26, 28),
        1 => net(base, 26, 29),
        2 => NetworkConfig {
            lease_ttl_ms: 2_000,
            ..net(base, 26, 30)
        },
        3 => net(base, 25, 28),
        4 => NetworkConfig {
            subnet_min: Some(Ipv4Addr::new(10, 0, 0, 16)),
            subnet_max: Some(Ipv4Addr::new(10, 0, 0, 40)),
            backend: Backend::HostGw,
            ..net(base, 26, 29)
        },
        5 => net([10, 0, 1, 0], 26, 28),
        6 => NetworkConfig {
            ipv6: Some(Ipv6Config {
                network: "fd00::/122".parse().expect("literal"),
                subnet_len: 124,
            }),
            ..net(base, 26, 28)
        },
        7 => NetworkConfig {
            lease_ttl_ms: 60_000,
            backend: Backend::Bgp(twill_controller::allocator::BgpSettings {
                asn: 64_512,
                mesh: true,
                hold_time: 90,
                ..Default::default()
            }),
            ..net(base, 26, 28)
        },
        8 => NetworkConfig {
            subnet_min: Some(Ipv4Addr::new(10, 0, 0, 8)),
            subnet_max: Some(Ipv4Addr::new(10, 0, 0, 20)),
            ..net(base, 26, 30)
        },
        9 => net(base, 26, 31),
        10 => NetworkConfig {
            lease_ttl_ms: 10,
            ..net(base, 26, 28)
        },
        _ => net([10, 0, 0, 5], 26, 28),
    }
}

/// Every IPv4 subnet a configuration hands out, lowest first (the model's own enumeration).
fn grid(cfg: &NetworkConfig) -> Vec<Ipv4Net> {
    let Some((first, last)) = cfg.v4_range() else {
        return Vec::new();
    };
    let step = 1u32 << (32 - cfg.subnet_len);
    (u32::from(first.network())..=u32::from(last.network()))
        .step_by(step as usize)
        .map(|a| Ipv4Net::new(Ipv4Addr::from(a), cfg.subnet_len).expect("valid"))
        .collect()
}

/// Every IPv6 subnet handed out; like IPv4, the first subnet of the network is skipped.
fn grid6(c6: &Ipv6Config) -> Vec<Ipv6Net> {
    let base = u128::from(c6.network.network());
    let count = 1u128 << (c6.subnet_len - c6.network.prefix_len());
    (1..count)
        .map(|i| {
            let addr = Ipv6Addr::from(base + (i << (128 - c6.subnet_len)));
            Ipv6Net::new(addr, c6.subnet_len).expect("valid")
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Operations, resolved into requests against the current state and clock.

/// A subnet to ask for (as wanted subnet, or to reserve).
#[derive(Clone, Debug)]
enum Pick {
    /// The i-th subnet of the current grid (counting the skipped first one), possibly beyond
    /// the network.
    Slot(u8),
    /// The same, with a host bit set.
    Skewed(u8),
    /// Anything near the networks, at any length.
    Raw(u8, u8),
}

#[derive(Clone, Debug)]
enum Op {
    SetConfig {
        cfg: u8,
        only_if_absent: bool,
    },
    Acquire {
        node: u8,
        ip: u8,
        wanted: Option<Pick>,
        lag: u64,
        id: bool,
        /// The agent instance named (`AcquireAs`), or none (`Acquire`, an older agent).
        instance: Option<u8>,
    },
    Renew {
        node: u8,
        /// 0: any lease, 1: the current lease, 2: a stale one.
        which: u8,
        lag: u64,
        id: bool,
    },
    Release {
        node: u8,
        id: bool,
    },
    /// At the clock plus some, or at one node's deadline -1, +0 or +1 (the boundary).
    Expire {
        extra: u64,
        deadline_of: Option<(u8, u8)>,
    },
    Promote {
        extend: u64,
        floor: u64,
    },
    Reserve {
        node: u8,
        subnet: Pick,
        id: bool,
    },
    Unreserve {
        node: u8,
    },
    Tick {
        ms: u64,
    },
    /// Re-send an earlier request that carried an id, verbatim.
    Retry {
        pick: Index,
    },
}

/// Node names: six valid ones, and five the allocator must refuse (printable ASCII that
/// Kubernetes' DNS-1123 rule still refuses among them).
fn name(i: u8) -> String {
    match i {
        0..=5 => format!("n{i}"),
        6 => String::new(),
        7 => "bad name".into(),
        8 => "N1".into(),
        9 => "n_1".into(),
        _ => "n1.".into(),
    }
}

fn ip(i: u8) -> Ipv4Addr {
    match i {
        0 => Ipv4Addr::UNSPECIFIED,
        1 => Ipv4Addr::new(224, 0, 0, 5),
        2 => Ipv4Addr::BROADCAST,
        _ => Ipv4Addr::new(192, 0, 2, i),
    }
}

fn node_s() -> impl Strategy<Value = u8> {
    prop_oneof![12 => 0u8..6, 1 => 6u8..11]
}

fn pick_s() -> impl Strategy<Value = Pick> {
    prop_oneof![
        8 => (0u8..8).prop_map(Pick::Slot),
        1 => (0u8..8).prop_map(Pick::Skewed),
        1 => (0u8..80, 24u8..=32).prop_map(|(k, l)| Pick::Raw(k, l)),
    ]
}

fn lag_s() -> impl Strategy<Value = u64> {
    prop_oneof![4 => Just(0u64), 1 => 0u64..3_000]
}

fn op_s() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..ALL_CONFIGS, prop::bool::weighted(0.2))
            .prop_map(|(cfg, only_if_absent)| Op::SetConfig { cfg, only_if_absent }),
        10 => (
            node_s(),
            prop_oneof![12 => 3u8..40, 1 => 0u8..3],
            prop::option::weighted(0.6, pick_s()),
            lag_s(),
            any::<bool>(),
            prop::option::weighted(0.7, 0u8..3),
        )
            .prop_map(|(node, ip, wanted, lag, id, instance)| Op::Acquire {
                node,
                ip,
                wanted,
                lag,
                id,
                instance
            }),
        3 => (node_s(), 0u8..3, lag_s(), any::<bool>())
            .prop_map(|(node, which, lag, id)| Op::Renew { node, which, lag, id }),
        2 => (node_s(), any::<bool>()).prop_map(|(node, id)| Op::Release { node, id }),
        3 => (0u64..3_000, prop::option::of((0u8..6, 0u8..3)))
            .prop_map(|(extra, deadline_of)| Op::Expire { extra, deadline_of }),
        1 => (0u64..1_000, 0u64..5_000).prop_map(|(extend, floor)| Op::Promote { extend, floor }),
        2 => (node_s(), pick_s(), any::<bool>())
            .prop_map(|(node, subnet, id)| Op::Reserve { node, subnet, id }),
        1 => node_s().prop_map(|node| Op::Unreserve { node }),
        4 => (0u64..2_500).prop_map(|ms| Op::Tick { ms }),
        1 => any::<Index>().prop_map(|pick| Op::Retry { pick }),
    ]
}

fn ops_s(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op_s(), 0..max)
}

/// Drives one allocator: keeps the leader's clock, hands out request ids, remembers the first
/// answer to every id, and checks every step.
struct Sim {
    alloc: Allocator,
    clock: u64,
    seq: u64,
    sent: Vec<Request>,
    answers: HashMap<String, Response>,
}

struct Step {
    req: Request,
    resp: Response,
    events: Vec<RevEvent>,
}

impl Sim {
    fn new(cfg: u8) -> Result<Sim, TestCaseError> {
        let mut s = Sim {
            alloc: Allocator::new(),
            clock: 1_000_000,
            seq: 0,
            sent: Vec::new(),
            answers: HashMap::new(),
        };
        let first = Op::SetConfig {
            cfg: cfg % VALID_CONFIGS,
            only_if_absent: false,
        };
        let st = s.step(&first)?.expect("a command");
        prop_assert!(
            st.resp.result.is_ok(),
            "initial config refused: {:?}",
            st.resp
        );
        Ok(s)
    }

    fn run(cfg: u8, ops: &[Op]) -> Result<Sim, TestCaseError> {
        let mut s = Sim::new(cfg)?;
        for op in ops {
            s.step(op)?;
        }
        Ok(s)
    }

    fn id(&mut self, want: bool) -> Option<String> {
        self.seq += 1;
        want.then(|| format!("req-{}", self.seq))
    }

    fn resolve_pick(&self, p: &Pick) -> Ipv4Net {
        let cfg = self.alloc.config().cloned().unwrap_or_else(|| config(0));
        let base = u32::from(cfg.network.network());
        let slot = |i: u8| base.wrapping_add((i as u32) << (32 - cfg.subnet_len));
        let (addr, len) = match *p {
            Pick::Slot(i) => (slot(i), cfg.subnet_len),
            Pick::Skewed(i) => (slot(i) | 1, cfg.subnet_len),
            Pick::Raw(k, l) => (u32::from(Ipv4Addr::new(10, 0, 0, 0)) + 4 * k as u32, l),
        };
        Ipv4Net::new(Ipv4Addr::from(addr), len).expect("len <= 32")
    }

    /// The request an op stands for now; `None` for ops that only move the clock.
    fn request(&mut self, op: &Op) -> Option<Request> {
        let (request_id, command) = match op {
            Op::Tick { ms } => {
                self.clock += ms;
                return None;
            }
            Op::Retry { pick } => {
                return (!self.sent.is_empty())
                    .then(|| self.sent[pick.index(self.sent.len())].clone())
            }
            Op::SetConfig {
                cfg,
                only_if_absent,
            } => (
                self.id(true),
                Command::SetConfig {
                    config: config(*cfg),
                    only_if_absent: *only_if_absent,
                },
            ),
            Op::Acquire {
                node,
                ip: i,
                wanted,
                lag,
                id,
                instance,
            } => {
                let mut backend_data = BTreeMap::new();
                backend_data.insert("vtep_mac".to_string(), format!("02:00:00:00:00:{i:02x}"));
                let args = AcquireArgs {
                    node: name(*node),
                    public_ip: ip(*i),
                    public_ipv6: None,
                    backend_data,
                    wanted_subnet: wanted.as_ref().map(|p| self.resolve_pick(p)),
                    wanted_ipv6_subnet: None,
                };
                let now = self.clock.saturating_sub(*lag);
                (
                    self.id(*id),
                    match instance {
                        None => Command::Acquire { args, now },
                        Some(k) => Command::AcquireAs {
                            args,
                            now,
                            instance: format!("agent-{k}"),
                        },
                    },
                )
            }
            Op::Renew {
                node,
                which,
                lag,
                id,
            } => {
                let cur = self
                    .alloc
                    .lease(&name(*node))
                    .map_or(0, |l| l.create_revision);
                let create_revision = match which {
                    0 => 0,
                    1 => cur,
                    _ => cur + 1,
                };
                (
                    self.id(*id),
                    Command::Renew {
                        node: name(*node),
                        create_revision,
                        now: self.clock.saturating_sub(*lag),
                    },
                )
            }
            Op::Release { node, id } => (self.id(*id), Command::Release { node: name(*node) }),
            Op::Expire { extra, deadline_of } => {
                let at_deadline = deadline_of.and_then(|(n, d)| {
                    let l = self.alloc.lease(&name(n))?;
                    Some((l.expires_at + d as u64).saturating_sub(1))
                });
                let now = at_deadline.unwrap_or(self.clock + extra);
                self.clock = self.clock.max(now);
                (self.id(false), Command::Expire { now })
            }
            Op::Promote { extend, floor } => (
                self.id(false),
                Command::Promote {
                    now: self.clock,
                    extend_ms: *extend,
                    floor_ms: *floor,
                },
            ),
            Op::Reserve { node, subnet, id } => (
                self.id(*id),
                Command::Reserve {
                    node: name(*node),
                    subnet: self.resolve_pick(subnet),
                },
            ),
            Op::Unreserve { node } => (self.id(true), Command::Unreserve { node: name(*node) }),
        };
        Some(Request {
            request_id,
            command,
        })
    }

    /// Applies a request and checks it against the model and the state invariants.
    fn apply(&mut self, req: Request) -> Result<Step, TestCaseError> {
        let before = self.alloc.clone();
        let (resp, events) = self.alloc.apply(&req);
        let prior = req.request_id.as_ref().and_then(|id| self.answers.get(id));
        check_step(&before, &req, prior, &resp, &events, &self.alloc)?;
        check_state(&self.alloc)?;
        if let Some(id) = &req.request_id {
            if !self.answers.contains_key(id) {
                self.answers.insert(id.clone(), resp.clone());
                self.sent.push(req.clone());
            }
        }
        Ok(Step { req, resp, events })
    }

    fn step(&mut self, op: &Op) -> Result<Option<Step>, TestCaseError> {
        match self.request(op) {
            None => Ok(None),
            Some(req) => self.apply(req).map(Some),
        }
    }

    /// An acquire by the agent that holds `node`'s lease, if any (the instance on record), from
    /// an address of its own.
    fn acquire(&mut self, node: &str, wanted: Option<Ipv4Net>) -> Result<Step, TestCaseError> {
        let id = self.id(true);
        let args = AcquireArgs {
            node: node.into(),
            public_ip: Ipv4Addr::new(198, 51, 100, 7),
            public_ipv6: None,
            backend_data: BTreeMap::new(),
            wanted_subnet: wanted,
            wanted_ipv6_subnet: None,
        };
        let now = self.clock;
        let command = match self.alloc.instances().get(node) {
            Some(instance) => Command::AcquireAs {
                args,
                now,
                instance: instance.clone(),
            },
            None => Command::Acquire { args, now },
        };
        self.apply(Request {
            request_id: id,
            command,
        })
    }

    fn command(&mut self, command: Command) -> Result<Step, TestCaseError> {
        self.apply(Request {
            request_id: None,
            command,
        })
    }

    /// The subnets nobody holds and nobody has reserved. If there are none, frees the lowest
    /// one (release its holder, drop its reservation), so the properties that need a free
    /// subnet always get to run.
    fn free_subnets(&mut self) -> Result<Vec<Ipv4Net>, TestCaseError> {
        let free = |a: &Allocator| {
            let taken = taken(a);
            grid(a.config().expect("config stays set"))
                .into_iter()
                .filter(|s| !taken.contains_key(&s.network()))
                .collect::<Vec<_>>()
        };
        let f = free(&self.alloc);
        if !f.is_empty() {
            return Ok(f);
        }
        let first = grid(self.alloc.config().expect("config stays set"))[0];
        let holder = self
            .alloc
            .leases()
            .find(|l| l.subnet == first)
            .map(|l| l.node.clone());
        if let Some(node) = holder {
            self.command(Command::Release { node })?;
        }
        let owner = self
            .alloc
            .reservations()
            .find(|(_, s)| **s == first)
            .map(|(n, _)| n.clone());
        if let Some(node) = owner {
            self.command(Command::Unreserve { node })?;
        }
        Ok(free(&self.alloc))
    }
}

/// Subnets held or reserved, by network address, with who has them.
fn taken(a: &Allocator) -> BTreeMap<Ipv4Addr, String> {
    a.reservations()
        .map(|(n, s)| (s.network(), n.clone()))
        .chain(a.leases().map(|l| (l.subnet.network(), l.node.clone())))
        .collect()
}

fn show(a: &Allocator) -> String {
    let leases: Vec<String> = a
        .leases()
        .map(|l| {
            format!(
                "{}={} (exp {}, cr {})",
                l.node, l.subnet, l.expires_at, l.create_revision
            )
        })
        .collect();
    let res: Vec<String> = a.reservations().map(|(n, s)| format!("{n}={s}")).collect();
    format!(
        "rev {} config {:?}\n  leases [{}]\n  reservations [{}]",
        a.revision(),
        a.config()
            .map(|c| (c.network, c.subnet_len, c.subnet_min, c.subnet_max)),
        leases.join(", "),
        res.join(", ")
    )
}

/// The allocator's durable state minus the dedup table (which every request with an id changes).
fn state(a: &Allocator) -> AllocatorSnapshot {
    AllocatorSnapshot {
        dedup: Vec::new(),
        // Every stamped command advances the leader time it saw, failed ones included.
        last_now: 0,
        ..a.snapshot()
    }
}

/// Kubernetes' node-name rule (a DNS-1123 subdomain), written out apart from the allocator's.
fn valid_name(n: &str) -> bool {
    let label = |l: &str| {
        let b = l.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    };
    n.len() <= 253 && n.split('.').all(label)
}

fn usable_ip(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast())
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// Properties of one state on its own: the safety invariant, checked here independently.
fn check_state(a: &Allocator) -> Result<(), TestCaseError> {
    if let Err(e) = a.check_invariants() {
        prop_assert!(false, "check_invariants: {e}\n{}", show(a));
    }
    let leases: Vec<&Lease> = a.leases().collect();
    for node in a.instances().keys() {
        prop_assert!(
            a.lease(node).is_some(),
            "an instance recorded for {node}, which holds no lease"
        );
    }
    let Some(cfg) = a.config() else {
        prop_assert!(leases.is_empty(), "leases without a config\n{}", show(a));
        return Ok(());
    };
    let g = grid(cfg);
    for (i, x) in leases.iter().enumerate() {
        // `grid` only holds aligned subnets of the configured length in range.
        prop_assert!(
            cfg.network.contains(&x.subnet) && g.contains(&x.subnet),
            "{} holds {}, not a subnet of {} in range\n{}",
            x.node,
            x.subnet,
            cfg.network,
            show(a)
        );
        if let Some(s6) = x.ipv6_subnet {
            let inside = cfg.ipv6.as_ref().is_some_and(|c6| grid6(c6).contains(&s6));
            prop_assert!(
                inside,
                "{} holds IPv6 {s6} outside the IPv6 range\n{}",
                x.node,
                show(a)
            );
        }
        prop_assert!(
            x.create_revision <= x.mod_revision && x.mod_revision <= a.revision(),
            "{} has revisions {}/{} past {}",
            x.node,
            x.create_revision,
            x.mod_revision,
            a.revision()
        );
        for y in &leases[i + 1..] {
            prop_assert_ne!(&x.node, &y.node, "one node, two leases\n{}", show(a));
            let (xs, xe) = (
                u32::from(x.subnet.network()),
                u32::from(x.subnet.broadcast()),
            );
            let (ys, ye) = (
                u32::from(y.subnet.network()),
                u32::from(y.subnet.broadcast()),
            );
            prop_assert!(
                xe < ys || ye < xs,
                "overlap: {} holds {} and {} holds {}\n{}",
                x.node,
                x.subnet,
                y.node,
                y.subnet,
                show(a)
            );
            if let (Some(p), Some(q)) = (x.ipv6_subnet, y.ipv6_subnet) {
                prop_assert!(
                    !p.contains(&q.network()) && !q.contains(&p.network()),
                    "IPv6 overlap: {} {p} / {} {q}",
                    x.node,
                    y.node
                );
            }
        }
    }
    for (owner, s) in a.reservations() {
        prop_assert!(
            g.contains(s),
            "reservation {owner}={s} outside the range\n{}",
            show(a)
        );
        for l in &leases {
            prop_assert!(
                l.node == *owner || l.subnet.network() != s.network(),
                "{s} is reserved for {owner} but held by {}\n{}",
                l.node,
                show(a)
            );
        }
    }
    Ok(())
}

fn expect_err(
    resp: &Response,
    what: &str,
    ok: impl Fn(&AllocError) -> bool,
    before: &Allocator,
) -> Result<(), TestCaseError> {
    match &resp.result {
        Err(e) if ok(e) => Ok(()),
        other => {
            prop_assert!(
                false,
                "expected {what}, got {other:?}\nbefore: {}",
                show(before)
            );
            Ok(())
        }
    }
}

fn expect_lease<'r>(resp: &'r Response, before: &Allocator) -> Result<&'r Lease, TestCaseError> {
    match &resp.result {
        Ok(Outcome::Lease(l)) => Ok(l),
        other => Err(TestCaseError::fail(format!(
            "expected a lease, got {other:?}\nbefore: {}",
            show(before)
        ))),
    }
}

/// One step: the dedup rule for a repeated id, then generic rules for every command, then the
/// command's own rules, each computed from the state before the step.
fn check_step(
    before: &Allocator,
    req: &Request,
    prior: Option<&Response>,
    resp: &Response,
    events: &[RevEvent],
    after: &Allocator,
) -> Result<(), TestCaseError> {
    if let Some(first) = prior {
        prop_assert_eq!(resp, first, "a repeated request id got a different answer");
        prop_assert!(
            events.is_empty(),
            "a repeated request made events: {events:?}"
        );
        prop_assert_eq!(
            after.snapshot(),
            before.snapshot(),
            "a repeated request changed state"
        );
        return Ok(());
    }

    // Events: consecutive revisions after the old one, ending at the answer's revision, and
    // exactly the change a watcher replaying them would need.
    prop_assert_eq!(resp.revision, after.revision());
    for (i, e) in events.iter().enumerate() {
        prop_assert_eq!(
            e.revision,
            before.revision() + 1 + i as u64,
            "event revisions: {:?}",
            events
        );
    }
    prop_assert_eq!(after.revision(), before.revision() + events.len() as u64);
    let mut view: BTreeMap<String, Lease> = before
        .leases()
        .map(|l| (l.node.clone(), l.clone()))
        .collect();
    for e in events {
        match &e.event {
            Event::Put(l) | Event::Renewed(l) => {
                prop_assert_eq!(
                    l.mod_revision,
                    e.revision,
                    "put of {} at another revision",
                    &l.node
                );
                // A renewal is what watchers that omit renewals skip: it must change nothing
                // but the expiry, and every change that does only that must be one.
                let expiry_only = view.get(&l.node).is_some_and(|was| {
                    Lease {
                        expires_at: l.expires_at,
                        mod_revision: l.mod_revision,
                        ..was.clone()
                    } == *l
                });
                prop_assert_eq!(
                    e.event.is_renewal(),
                    expiry_only,
                    "event {:?} for a lease that was {:?}",
                    &e.event,
                    view.get(&l.node)
                );
                view.insert(l.node.clone(), l.clone());
            }
            Event::Delete { lease, .. } => {
                let gone = view.remove(&lease.node);
                prop_assert_eq!(
                    gone.as_ref(),
                    Some(lease),
                    "delete of a lease that was not there"
                );
            }
            Event::Config(c) => prop_assert_eq!(Some(c), after.config()),
        }
    }
    let now_held: BTreeMap<String, Lease> = after
        .leases()
        .map(|l| (l.node.clone(), l.clone()))
        .collect();
    prop_assert_eq!(view, now_held, "events do not describe the change");

    // Refused input changes nothing.
    if resp.result.is_err() {
        prop_assert!(
            events.is_empty(),
            "a refused command made events: {events:?}"
        );
        prop_assert_eq!(
            state(after),
            state(before),
            "a refused command changed state: {:?}",
            resp
        );
        prop_assert_eq!(after.instances(), before.instances());
    }

    let cfg = before.config();
    match &req.command {
        Command::SetConfig {
            config: new,
            only_if_absent,
        } => check_set_config(before, new, *only_if_absent, resp, events, after)?,
        Command::Acquire { args, now } => {
            if held_elsewhere(before, args, "") {
                return refused_elsewhere(resp, before);
            }
            check_acquire(before, args, *now, resp)?;
            // An agent that names no instance changes no record of one.
            prop_assert_eq!(
                after.instances().get(&args.node),
                before.instances().get(&args.node)
            );
        }
        Command::AcquireAs {
            args,
            now,
            instance,
        } => {
            if held_elsewhere(before, args, instance) {
                return refused_elsewhere(resp, before);
            }
            check_acquire(before, args, *now, resp)?;
            if resp.result.is_ok() {
                prop_assert_eq!(after.instances().get(&args.node), Some(instance));
            }
        }
        Command::Renew {
            node,
            create_revision,
            now,
        } => {
            let Some(cfg) = cfg else {
                return expect_err(
                    resp,
                    "NoConfig",
                    |e| matches!(e, AllocError::NoConfig),
                    before,
                );
            };
            let Some(held) = before.lease(node) else {
                return expect_err(
                    resp,
                    "NoLease",
                    |e| matches!(e, AllocError::NoLease(_)),
                    before,
                );
            };
            if *create_revision != 0 && *create_revision != held.create_revision {
                return expect_err(
                    resp,
                    "LeaseMismatch",
                    |e| matches!(e, AllocError::LeaseMismatch { .. }),
                    before,
                );
            }
            let l = expect_lease(resp, before)?;
            // Renew only moves the deadline, and never earlier.
            let want = Lease {
                expires_at: held.expires_at.max(now + cfg.lease_ttl_ms),
                mod_revision: before.revision() + 1,
                ..held.clone()
            };
            prop_assert_eq!(l, &want);
        }
        Command::Release { node } => match before.lease(node) {
            Some(held) => {
                prop_assert_eq!(&resp.result, &Ok(Outcome::Released(held.clone())));
                prop_assert!(
                    after.lease(node).is_none(),
                    "{node} still holds a lease after release"
                );
                prop_assert!(
                    matches!(
                        events,
                        [RevEvent {
                            event: Event::Delete {
                                reason: DeleteReason::Released,
                                ..
                            },
                            ..
                        }]
                    ),
                    "release events: {events:?}"
                );
            }
            None => {
                return expect_err(
                    resp,
                    "NoLease",
                    |e| matches!(e, AllocError::NoLease(_)),
                    before,
                )
            }
        },
        Command::Expire { now } => {
            // Rule 4: a lease goes only once its deadline is past; one at its deadline stays.
            let mut gone = Vec::new();
            for l in before.leases() {
                if l.expires_at >= *now {
                    prop_assert_eq!(
                        after.lease(&l.node),
                        Some(l),
                        "{} (deadline {}) did not survive Expire at {}",
                        &l.node,
                        l.expires_at,
                        now
                    );
                } else {
                    prop_assert!(
                        after.lease(&l.node).is_none(),
                        "{} outlived its deadline {} at {now}",
                        l.node,
                        l.expires_at
                    );
                    gone.push(l.node.clone());
                }
            }
            let all_expired = events.iter().all(|e| {
                matches!(
                    &e.event,
                    Event::Delete {
                        reason: DeleteReason::Expired,
                        ..
                    }
                )
            });
            prop_assert!(
                all_expired && events.len() == gone.len(),
                "expire events: {events:?}"
            );
            match &resp.result {
                Ok(Outcome::Expired(list)) => {
                    let mut list = list.clone();
                    list.sort();
                    gone.sort();
                    prop_assert_eq!(list, gone);
                }
                other => prop_assert!(false, "Expire answered {other:?}"),
            }
        }
        Command::Promote {
            now,
            extend_ms,
            floor_ms,
        } => {
            prop_assert_eq!(&resp.result, &Ok(Outcome::Promoted(before.lease_count())));
            for l in before.leases() {
                let n = after.lease(&l.node);
                prop_assert!(n.is_some(), "{} lost its lease on promotion", l.node);
                let n = n.expect("checked");
                // Rebased onto the new leader's clock: the time left at the last stamped
                // command is kept, plus the grace.
                let left = l.expires_at.saturating_sub(before.last_now());
                prop_assert_eq!(n.expires_at, now + (left + extend_ms).max(*floor_ms));
                prop_assert_eq!(n.subnet, l.subnet);
            }
        }
        Command::Reserve { node, subnet } => check_reserve(before, node, *subnet, resp, after)?,
        Command::Unreserve { node } => {
            if before.reservations().any(|(n, _)| n == node) {
                prop_assert_eq!(&resp.result, &Ok(Outcome::Unreserved));
                prop_assert!(
                    !after.reservations().any(|(n, _)| n == node),
                    "reservation kept"
                );
            } else {
                return expect_err(
                    resp,
                    "NoReservation",
                    |e| matches!(e, AllocError::NoReservation(_)),
                    before,
                );
            }
        }
        // The CA and tokens never touch leases (the generator does not make these; the trust
        // module has its own tests).
        Command::Trust(_) => {
            prop_assert!(events.is_empty());
            prop_assert_eq!(after.revision(), before.revision());
        }
    }
    Ok(())
}

fn check_set_config(
    before: &Allocator,
    new: &NetworkConfig,
    only_if_absent: bool,
    resp: &Response,
    events: &[RevEvent],
    after: &Allocator,
) -> Result<(), TestCaseError> {
    if let (true, Some(cur)) = (only_if_absent, before.config()) {
        prop_assert_eq!(&resp.result, &Ok(Outcome::Config(cur.clone())));
        prop_assert_eq!(state(after), state(before));
        return Ok(());
    }
    if new.validate().is_err() {
        return expect_err(
            resp,
            "a config error",
            |e| matches!(e, AllocError::Config(_)),
            before,
        );
    }
    // A change must keep every lease and reservation a subnet of the new range.
    let g = grid(new);
    let fits = before.leases().all(|l| {
        g.contains(&l.subnet)
            && l.ipv6_subnet
                .is_none_or(|s6| new.ipv6.as_ref().is_some_and(|c6| grid6(c6).contains(&s6)))
    }) && before.reservations().all(|(_, s)| g.contains(s));
    if !fits {
        return expect_err(
            resp,
            "WouldOrphan",
            |e| matches!(e, AllocError::WouldOrphan(_)),
            before,
        );
    }
    prop_assert_eq!(&resp.result, &Ok(Outcome::Config(new.clone())));
    prop_assert_eq!(after.config(), Some(new));
    let changed = before.config() != Some(new);
    prop_assert_eq!(
        events.len(),
        changed as usize,
        "config events: {:?}",
        events
    );
    Ok(())
}

/// Whether `args` come from a second machine under the node's name: the live lease is held by
/// another instance than `instance` ("" for none), from another address. The checks before
/// Rule 1 (configuration, name, address) come first.
fn held_elsewhere(before: &Allocator, args: &AcquireArgs, instance: &str) -> bool {
    before.config().is_some()
        && valid_name(&args.node)
        && usable_ip(args.public_ip)
        && before.lease(&args.node).is_some_and(|held| {
            held.public_ip != args.public_ip
                && before
                    .instances()
                    .get(&args.node)
                    .is_some_and(|h| h != instance)
        })
}

fn refused_elsewhere(resp: &Response, before: &Allocator) -> Result<(), TestCaseError> {
    expect_err(
        resp,
        "HeldByAnother",
        |e| matches!(e, AllocError::HeldByAnother { .. }),
        before,
    )
}

fn check_acquire(
    before: &Allocator,
    args: &AcquireArgs,
    now: u64,
    resp: &Response,
) -> Result<(), TestCaseError> {
    let Some(cfg) = before.config() else {
        return expect_err(
            resp,
            "NoConfig",
            |e| matches!(e, AllocError::NoConfig),
            before,
        );
    };
    if !valid_name(&args.node) {
        return expect_err(
            resp,
            "NodeName",
            |e| matches!(e, AllocError::NodeName(_)),
            before,
        );
    }
    if !usable_ip(args.public_ip) {
        return expect_err(
            resp,
            "PublicIp",
            |e| matches!(e, AllocError::PublicIp(_)),
            before,
        );
    }
    // The lowest free IPv6 subnet, when dual stack is on: Some(None) means none is left.
    let free6 = cfg.ipv6.as_ref().map(|c6| {
        let held: BTreeSet<Ipv6Net> = before.leases().filter_map(|l| l.ipv6_subnet).collect();
        grid6(c6).into_iter().find(|s| !held.contains(s))
    });
    let exhausted6 = |resp| {
        expect_err(
            resp,
            "Exhausted6",
            |e| matches!(e, AllocError::Exhausted6(_)),
            before,
        )
    };

    // Rule 1: a live lease comes back, same subnet and instance, refreshed, and says it was
    // held (a reservation stays the reason).
    if let Some(held) = before.lease(&args.node) {
        let v6 = match (held.ipv6_subnet, free6) {
            (Some(s), _) | (None, Some(Some(s))) => Some(s),
            (None, None) => None,
            (None, Some(None)) => return exhausted6(resp),
        };
        let l = expect_lease(resp, before)?;
        let want = Lease {
            public_ip: args.public_ip,
            public_ipv6: args.public_ipv6,
            backend_data: args.backend_data.clone(),
            expires_at: held.expires_at.max(now + cfg.lease_ttl_ms),
            mod_revision: before.revision() + 1,
            ipv6_subnet: v6,
            reason: match held.reason {
                GrantReason::Reserved => GrantReason::Reserved,
                _ => GrantReason::Held,
            },
            ..held.clone()
        };
        prop_assert_eq!(
            l,
            &want,
            "re-acquire by {} changed its lease\nbefore: {}",
            &args.node,
            show(before)
        );
        return Ok(());
    }

    // A wanted subnet must be one the configuration hands out; anything else is refused
    // (the agent then asks again without one).
    let g = grid(cfg);
    if let Some(w) = args.wanted_subnet {
        if !g.contains(&w) {
            return expect_err(
                resp,
                "WantedSubnet",
                |e| matches!(e, AllocError::WantedSubnet { .. }),
                before,
            );
        }
    }
    let taken = taken(before);
    let own = before
        .reservations()
        .find(|(n, _)| **n == args.node)
        .map(|(_, s)| *s);
    let (subnet, reason) = if let Some(r) = own {
        (r, GrantReason::Reserved)
    } else if let Some(w) = args
        .wanted_subnet
        .filter(|w| !taken.contains_key(&w.network()))
    {
        // Rule 2: free means neither held nor reserved (the node has no reservation itself).
        (w, GrantReason::HeldBefore)
    } else if let Some(s) = g.iter().find(|s| !taken.contains_key(&s.network())) {
        // Rule 3.
        (*s, GrantReason::LowestFree)
    } else {
        return expect_err(
            resp,
            "Exhausted",
            |e| matches!(e, AllocError::Exhausted { .. }),
            before,
        );
    };
    let v6 = match free6 {
        None => None,
        Some(Some(s)) => Some(s),
        Some(None) => return exhausted6(resp),
    };
    let l = expect_lease(resp, before)?;
    // Reservations: never someone else's subnet, whatever the path.
    if let Some(owner) = taken.get(&l.subnet.network()).filter(|o| **o != args.node) {
        prop_assert!(
            false,
            "{} was granted {}, which {owner} holds or reserved\nbefore: {}",
            args.node,
            l.subnet,
            show(before)
        );
    }
    let rev = before.revision() + 1;
    let want = Lease {
        node: args.node.clone(),
        subnet,
        ipv6_subnet: v6,
        public_ip: args.public_ip,
        public_ipv6: args.public_ipv6,
        backend_data: args.backend_data.clone(),
        expires_at: now + cfg.lease_ttl_ms,
        create_revision: rev,
        mod_revision: rev,
        acquired_at: now,
        reason,
    };
    prop_assert_eq!(
        l,
        &want,
        "wanted {:?}\nbefore: {}",
        args.wanted_subnet,
        show(before)
    );
    Ok(())
}

fn check_reserve(
    before: &Allocator,
    node: &str,
    subnet: Ipv4Net,
    resp: &Response,
    after: &Allocator,
) -> Result<(), TestCaseError> {
    let Some(cfg) = before.config() else {
        return expect_err(
            resp,
            "NoConfig",
            |e| matches!(e, AllocError::NoConfig),
            before,
        );
    };
    if !valid_name(node) {
        return expect_err(
            resp,
            "NodeName",
            |e| matches!(e, AllocError::NodeName(_)),
            before,
        );
    }
    if !grid(cfg).contains(&subnet) {
        return expect_err(
            resp,
            "ReserveSubnet",
            |e| matches!(e, AllocError::ReserveSubnet { .. }),
            before,
        );
    }
    if before
        .leases()
        .any(|l| l.subnet == subnet && l.node != node)
    {
        return expect_err(
            resp,
            "SubnetHeld",
            |e| matches!(e, AllocError::SubnetHeld { .. }),
            before,
        );
    }
    if before
        .reservations()
        .any(|(n, s)| *s == subnet && n != node)
    {
        return expect_err(
            resp,
            "SubnetReserved",
            |e| matches!(e, AllocError::SubnetReserved { .. }),
            before,
        );
    }
    prop_assert_eq!(&resp.result, &Ok(Outcome::Reserved));
    let mut want: BTreeMap<String, Ipv4Net> = before
        .reservations()
        .map(|(n, s)| (n.clone(), *s))
        .collect();
    want.insert(node.to_string(), subnet);
    let got: BTreeMap<String, Ipv4Net> =
        after.reservations().map(|(n, s)| (n.clone(), *s)).collect();
    prop_assert_eq!(got, want);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties. Every step of every sequence also runs `check_step` and `check_state`.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Property 1 (and the model of every rule): random sequences never overlap, never leave
    /// the network, keep check_invariants happy and follow §2's rules step by step.
    #[test]
    fn random_sequences_keep_the_invariants(cfg in 0..VALID_CONFIGS, ops in ops_s(60)) {
        Sim::run(cfg, &ops)?;
    }

    /// Property 2: a holder asking again, with a new id, another IP and another wanted subnet,
    /// or with the very same request, gets its subnet back while the lease lives.
    #[test]
    fn acquire_is_idempotent_while_the_lease_lives(
        cfg in 0..VALID_CONFIGS,
        ops in ops_s(60),
        node in 0u8..6,
        other in 0u8..20,
    ) {
        let mut sim = Sim::run(cfg, &ops)?;
        let n = name(node);
        let Some(held) = sim.alloc.lease(&n).cloned() else { return Ok(()) };
        let elsewhere = sim.resolve_pick(&Pick::Slot(other));
        let first = sim.acquire(&n, None)?;
        let again = sim.acquire(&n, Some(elsewhere))?;
        let retried = sim.apply(again.req.clone())?;
        prop_assert_eq!(&retried.resp, &again.resp);
        // Still live after an Expire at the renewed deadline.
        let deadline = expect_lease(&again.resp, &sim.alloc)?.expires_at;
        sim.command(Command::Expire { now: deadline })?;
        let last = sim.acquire(&n, None)?;
        for st in [&first, &again, &retried, &last] {
            let l = expect_lease(&st.resp, &sim.alloc)?;
            prop_assert_eq!(l.subnet, held.subnet, "{} got another subnet\n{}", &n, show(&sim.alloc));
            prop_assert_eq!(l.create_revision, held.create_revision);
        }
    }

    /// Property 3: a free wanted subnet is granted exactly, to a new node or to a known node
    /// that holds nothing.
    #[test]
    fn a_free_wanted_subnet_is_granted_exactly(
        cfg in 0..VALID_CONFIGS,
        ops in ops_s(60),
        pick in any::<Index>(),
        known in any::<bool>(),
    ) {
        let mut sim = Sim::run(cfg, &ops)?;
        let free = sim.free_subnets()?;
        prop_assert!(!free.is_empty(), "could not free a subnet\n{}", show(&sim.alloc));
        let want = free[pick.index(free.len())];
        let idle = (0..6).map(name).find(|n| {
            sim.alloc.lease(n).is_none() && !sim.alloc.reservations().any(|(o, _)| o == n)
        });
        let node = if known { idle.unwrap_or_else(|| "newcomer".into()) } else { "newcomer".into() };
        let st = sim.acquire(&node, Some(want))?;
        let l = expect_lease(&st.resp, &sim.alloc)?;
        prop_assert_eq!(l.subnet, want);
        prop_assert_eq!(&l.reason, &GrantReason::HeldBefore);
    }

    /// Property 4: Expire removes exactly the leases whose deadline is past, probing each
    /// lease's deadline -1, +0 and +1.
    #[test]
    fn nothing_expires_before_its_deadline(
        cfg in 0..VALID_CONFIGS,
        ops in ops_s(60),
        probe in any::<Index>(),
        delta in 0u64..3,
        far in 0u64..80_000,
    ) {
        let mut sim = Sim::run(cfg, &ops)?;
        let deadlines: Vec<u64> = sim.alloc.leases().map(|l| l.expires_at).collect();
        let now = if deadlines.is_empty() {
            sim.clock + far
        } else {
            (deadlines[probe.index(deadlines.len())] + delta).saturating_sub(1)
        };
        let before: Vec<Lease> = sim.alloc.leases().cloned().collect();
        sim.command(Command::Expire { now })?;
        for l in before {
            let kept = sim.alloc.lease(&l.node).is_some();
            prop_assert_eq!(
                kept,
                l.expires_at >= now,
                "{} with deadline {} at now {}",
                &l.node,
                l.expires_at,
                now
            );
        }
    }

    /// Property 5: a reserved subnet goes to no other node, asked for or not, even when it is
    /// the last one free; its owner then gets it.
    #[test]
    fn a_reserved_subnet_goes_only_to_its_node(
        cfg in 0..VALID_CONFIGS,
        ops in ops_s(60),
        pick in any::<Index>(),
    ) {
        let mut sim = Sim::run(cfg, &ops)?;
        let free = sim.free_subnets()?;
        prop_assert!(!free.is_empty(), "could not free a subnet\n{}", show(&sim.alloc));
        let s = free[pick.index(free.len())];
        let r = sim.command(Command::Reserve { node: "owner".into(), subnet: s })?;
        prop_assert_eq!(&r.resp.result, &Ok(Outcome::Reserved));
        let r = sim.command(Command::Reserve { node: "thief".into(), subnet: s })?;
        prop_assert!(r.resp.result.is_err(), "{s} reserved twice");
        let size = grid(sim.alloc.config().expect("config")).len();
        let mut exhausted = false;
        for i in 0..=size {
            let wanted = (i % 2 == 0).then_some(s);
            let st = sim.acquire(&format!("other-{i}"), wanted)?;
            match &st.resp.result {
                Ok(Outcome::Lease(l)) => prop_assert_ne!(l.subnet, s, "other-{} got the reserved {}", i, s),
                Err(AllocError::Exhausted { .. }) => exhausted = true,
                Err(AllocError::Exhausted6(_)) => {}
                other => prop_assert!(false, "other-{i}: {other:?}"),
            }
        }
        // More nodes than subnets asked, so the pool must have run out around the reservation.
        prop_assert!(exhausted, "more nodes than subnets, yet never exhausted\n{}", show(&sim.alloc));
        let st = sim.acquire("owner", None)?;
        match &st.resp.result {
            Ok(Outcome::Lease(l)) => {
                prop_assert_eq!(l.subnet, s);
                prop_assert_eq!(&l.reason, &GrantReason::Reserved);
            }
            // Dual stack: the IPv6 pool (3 subnets) can run out before the IPv4 one.
            Err(AllocError::Exhausted6(_)) => {}
            other => prop_assert!(false, "owner: {other:?}"),
        }
    }

    /// Property 6: a snapshot, encoded as the state machine stores it and restored, is the same
    /// state and behaves the same: every later answer and event list is identical, including
    /// answers to retries of requests made before the snapshot.
    #[test]
    fn snapshot_restore_is_identical_in_state_and_behaviour(
        cfg in 0..VALID_CONFIGS,
        prefix in ops_s(60),
        suffix in ops_s(40),
    ) {
        let mut sim = Sim::run(cfg, &prefix)?;
        let snap = sim.alloc.snapshot();
        let bytes = bincode::serialize(&snap).expect("encode");
        let decoded: AllocatorSnapshot = bincode::deserialize(&bytes).expect("decode");
        let mut copy = Allocator::restore(decoded).map_err(|e| TestCaseError::fail(e.to_string()))?;
        // Kept beside the snapshot, as the state machine's payload does.
        copy.set_instances(sim.alloc.instances().clone());
        prop_assert_eq!(copy.instances(), sim.alloc.instances());
        prop_assert_eq!(copy.snapshot(), snap);
        prop_assert_eq!(copy.revision(), sim.alloc.revision());
        prop_assert_eq!(copy.config(), sim.alloc.config());
        prop_assert_eq!(copy.leases().collect::<Vec<_>>(), sim.alloc.leases().collect::<Vec<_>>());
        prop_assert_eq!(
            copy.reservations().collect::<Vec<_>>(),
            sim.alloc.reservations().collect::<Vec<_>>()
        );
        check_state(&copy)?;
        for op in &suffix {
            let Some(st) = sim.step(op)? else { continue };
            let (resp, events) = copy.apply(&st.req);
            prop_assert_eq!(&resp, &st.resp, "answers diverged on {:?}", &st.req);
            prop_assert_eq!(&events, &st.events, "events diverged on {:?}", &st.req);
        }
        prop_assert_eq!(copy.snapshot(), sim.alloc.snapshot());
        prop_assert_eq!(copy.instances(), sim.alloc.instances());
    }

    /// Property 7: the same request applied twice (right away, and again after other writes)
    /// gets the first answer and changes nothing.
    #[test]
    fn a_repeated_request_is_answered_once(
        cfg in 0..VALID_CONFIGS,
        ops in ops_s(60),
        extra in op_s(),
        between in ops_s(10),
    ) {
        let mut sim = Sim::run(cfg, &ops)?;
        let Some(mut req) = sim.request(&extra) else { return Ok(()) };
        req.request_id = Some("the-one-id".into());
        let first = sim.apply(req.clone())?;
        for _ in 0..2 {
            let snap = sim.alloc.snapshot();
            let again = sim.apply(req.clone())?;
            prop_assert_eq!(&again.resp, &first.resp);
            prop_assert!(again.events.is_empty(), "a retry made events: {:?}", again.events);
            prop_assert_eq!(sim.alloc.snapshot(), snap, "a retry changed state");
            for op in &between {
                sim.step(op)?;
            }
        }
    }
}

/// A run of promotions leaves a lease at most its time left plus one election timeout per
/// change, or the grace, whichever is more: the grace never adds up (see the cluster test
/// `repeated_leader_changes_do_not_keep_dead_leases_alive`).
#[test]
fn promotions_add_an_election_timeout_each_and_the_grace_only_as_a_floor() {
    let mut a = Allocator::new();
    let mut cfg = NetworkConfig::embedded_default();
    cfg.lease_ttl_ms = 3_000;
    let set = Request {
        request_id: None,
        command: Command::SetConfig {
            config: cfg,
            only_if_absent: false,
        },
    };
    assert!(a.apply(&set).0.result.is_ok());
    let acquire = Request {
        request_id: None,
        command: Command::Acquire {
            args: AcquireArgs {
                node: "gone".into(),
                public_ip: "192.0.2.9".parse().unwrap(),
                public_ipv6: None,
                backend_data: BTreeMap::new(),
                wanted_subnet: None,
                wanted_ipv6_subnet: None,
            },
            now: 1_000_000,
        },
    };
    assert!(a.apply(&acquire).0.result.is_ok());
    // Ten leader changes, a second apart.
    for i in 1..=10u64 {
        let promote = Request {
            request_id: None,
            command: Command::Promote {
                now: 1_000_000 + i * 1_000,
                extend_ms: 600,
                floor_ms: 10_000,
            },
        };
        a.apply(&promote);
    }
    let deadline = a.lease("gone").expect("lease").expires_at;
    let last = 1_000_000 + 10 * 1_000;
    assert!(
        deadline <= last + 10_000 + 10 * 600,
        "deadline {} ms after the last leader change",
        deadline - last
    );
}
