//! Property tests of the allocator state machine: random command sequences on small networks
//! (so exhaustion, reservations and expiry all happen), checked after every step.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use twill_controller::allocator::{
    AcquireArgs, Allocator, Backend, Command, NetworkConfig, Outcome, Request, Response,
};

const TTL: u64 = 10_000;
const NODES: u8 = 7;

fn config(prefix: u8, subnet_len: u8) -> NetworkConfig {
    NetworkConfig {
        network: Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), prefix).expect("valid"),
        subnet_len,
        subnet_min: None,
        subnet_max: None,
        ipv6: None,
        backend: Backend::HostGw,
        lease_ttl_ms: TTL,
    }
}

fn node(n: u8) -> String {
    format!("node-{n}")
}

/// A subnet of 10.0.0.0/24 by index of 4-address steps; off-boundary for lengths under /30.
fn subnet(idx: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 0, 0, idx.wrapping_mul(4)), len).expect("valid")
}

#[derive(Clone, Debug)]
enum Op {
    Acquire {
        node: u8,
        wanted: Option<u8>,
        id: Option<u8>,
    },
    Renew {
        node: u8,
        exact: bool,
    },
    Release {
        node: u8,
    },
    Expire,
    Promote,
    Reserve {
        node: u8,
        idx: u8,
    },
    Unreserve {
        node: u8,
    },
    /// 0: grow to /25, 1: shrink to /27, 2: back to /26, 3: another subnet length.
    SetConfig {
        variant: u8,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..NODES, proptest::option::weighted(0.4, 0u8..40), proptest::option::weighted(0.3, 0u8..8))
            .prop_map(|(node, wanted, id)| Op::Acquire { node, wanted, id }),
        3 => (0..NODES, any::<bool>()).prop_map(|(node, exact)| Op::Renew { node, exact }),
        2 => (0..NODES).prop_map(|node| Op::Release { node }),
        2 => Just(Op::Expire),
        1 => Just(Op::Promote),
        2 => (0..NODES, 0u8..40).prop_map(|(node, idx)| Op::Reserve { node, idx }),
        1 => (0..NODES).prop_map(|node| Op::Unreserve { node }),
        1 => (0u8..4).prop_map(|variant| Op::SetConfig { variant }),
        4 => (0u64..6_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Drives an allocator with ops, keeping the clock.
struct Driver {
    alloc: Allocator,
    now: u64,
    subnet_len: u8,
}

impl Driver {
    fn new(subnet_len: u8) -> Self {
        let mut d = Driver {
            alloc: Allocator::new(),
            now: 1_000_000,
            subnet_len,
        };
        let (r, _) = d.alloc.apply(&Request {
            request_id: None,
            command: Command::SetConfig {
                config: config(26, subnet_len),
                only_if_absent: false,
            },
        });
        assert!(r.result.is_ok(), "initial config rejected: {r:?}");
        d
    }

    fn command(&self, op: &Op) -> Option<(Option<String>, Command)> {
        let len = self.subnet_len;
        let c = match op {
            Op::Acquire {
                node: n,
                wanted,
                id,
            } => {
                return Some((
                    id.map(|i| format!("req-{n}-{i}")),
                    Command::Acquire {
                        args: AcquireArgs {
                            node: node(*n),
                            public_ip: Ipv4Addr::new(192, 0, 2, *n + 1),
                            public_ipv6: None,
                            backend_data: BTreeMap::new(),
                            wanted_subnet: wanted.map(|w| subnet(w, len)),
                            wanted_ipv6_subnet: None,
                        },
                        now: self.now,
                    },
                ))
            }
            Op::Renew { node: n, exact } => {
                let rev = if *exact {
                    self.alloc
                        .lease(&node(*n))
                        .map(|l| l.create_revision)
                        .unwrap_or(1)
                } else {
                    0
                };
                Command::Renew {
                    node: node(*n),
                    create_revision: rev,
                    now: self.now,
                }
            }
            Op::Release { node: n } => Command::Release { node: node(*n) },
            Op::Expire => Command::Expire { now: self.now },
            Op::Promote => Command::Promote {
                now: self.now,
                extend_ms: 2_000,
            },
            Op::Reserve { node: n, idx } => Command::Reserve {
                node: node(*n),
                subnet: subnet(*idx, len),
            },
            Op::Unreserve { node: n } => Command::Unreserve { node: node(*n) },
            Op::SetConfig { variant } => Command::SetConfig {
                config: match variant {
                    0 => config(25, len),
                    1 => config(27, len),
                    2 => config(26, len),
                    _ => config(26, if len == 30 { 29 } else { len + 1 }),
                },
                only_if_absent: false,
            },
            Op::Advance { .. } => return None,
        };
        Some((None, c))
    }

    fn step(&mut self, op: &Op) -> Option<Response> {
        if let Op::Advance { ms } = op {
            self.now += ms;
            return None;
        }
        let (request_id, command) = self.command(op)?;
        let (resp, _) = self.alloc.apply(&Request {
            request_id,
            command,
        });
        if let (Op::SetConfig { .. }, Ok(Outcome::Config(c))) = (op, &resp.result) {
            self.subnet_len = c.subnet_len;
        }
        Some(resp)
    }
}

/// The safety properties, checked independently of the allocator's own invariant check.
fn check(a: &Allocator) -> Result<(), TestCaseError> {
    a.check_invariants().map_err(TestCaseError::fail)?;
    let leases: Vec<_> = a.leases().collect();
    let cfg = a.config().expect("config stays set");
    for (i, x) in leases.iter().enumerate() {
        prop_assert!(
            cfg.network.contains(&x.subnet),
            "{} holds {} outside {}",
            x.node,
            x.subnet,
            cfg.network
        );
        for y in &leases[i + 1..] {
            prop_assert!(
                !(x.subnet.contains(&y.subnet.network()) || y.subnet.contains(&x.subnet.network())),
                "overlap: {} {} / {} {}",
                x.node,
                x.subnet,
                y.node,
                y.subnet
            );
        }
    }
    for (owner, s) in a.reservations() {
        for l in &leases {
            prop_assert!(
                l.node == *owner || l.subnet != *s,
                "{s} is reserved for {owner} but held by {}",
                l.node
            );
        }
    }
    Ok(())
}

fn run(subnet_len: u8, ops: &[Op]) -> Result<Driver, TestCaseError> {
    let mut d = Driver::new(subnet_len);
    for op in ops {
        d.step(op);
        check(&d.alloc)?;
    }
    Ok(d)
}

/// Every subnet the current configuration hands out.
fn all_subnets(cfg: &NetworkConfig) -> Vec<Ipv4Net> {
    let Some((first, last)) = cfg.v4_range() else {
        return Vec::new();
    };
    let step = 1u32 << (32 - cfg.subnet_len);
    let mut out = Vec::new();
    let mut a = u32::from(first.network());
    while a <= u32::from(last.network()) {
        out.push(Ipv4Net::new(Ipv4Addr::from(a), cfg.subnet_len).expect("valid"));
        a += step;
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_overlap_inside_network_reservations_respected(
        len in 28u8..=30,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(len, &ops)?;
    }

    #[test]
    fn acquire_is_idempotent_while_the_lease_lives(
        len in 28u8..=30,
        ops in proptest::collection::vec(op(), 0..60),
        n in 0..NODES,
    ) {
        let mut d = run(len, &ops)?;
        let Some(held) = d.alloc.lease(&node(n)).map(|l| l.subnet) else {
            return Ok(());
        };
        for wanted in [None, Some(7u8)] {
            let r = d.step(&Op::Acquire { node: n, wanted, id: None }).expect("a command");
            match r.result {
                Ok(Outcome::Lease(l)) => prop_assert_eq!(l.subnet, held),
                other => prop_assert!(false, "re-acquire of a live lease failed: {other:?}"),
            }
        }
    }

    #[test]
    fn a_free_wanted_subnet_is_granted(
        len in 28u8..=30,
        ops in proptest::collection::vec(op(), 0..60),
        pick in any::<prop::sample::Index>(),
    ) {
        let mut d = run(len, &ops)?;
        // A node that holds nothing and has no reservation.
        let newcomer = 200u8;
        let cfg = d.alloc.config().expect("config").clone();
        let taken: Vec<Ipv4Net> = d.alloc.leases().map(|l| l.subnet).collect();
        let reserved: Vec<Ipv4Net> = d.alloc.reservations().map(|(_, s)| *s).collect();
        let free: Vec<Ipv4Net> = all_subnets(&cfg)
            .into_iter()
            .filter(|s| !taken.contains(s) && !reserved.contains(s))
            .collect();
        prop_assume!(!free.is_empty());
        let want = free[pick.index(free.len())];
        let (r, _) = d.alloc.apply(&Request {
            request_id: None,
            command: Command::Acquire {
                args: AcquireArgs {
                    node: node(newcomer),
                    public_ip: Ipv4Addr::new(192, 0, 2, 200),
                    public_ipv6: None,
                    backend_data: BTreeMap::new(),
                    wanted_subnet: Some(want),
                    wanted_ipv6_subnet: None,
                },
                now: d.now,
            },
        });
        match r.result {
            Ok(Outcome::Lease(l)) => prop_assert_eq!(l.subnet, want),
            other => prop_assert!(false, "free wanted subnet {want} refused: {other:?}"),
        }
    }

    #[test]
    fn nothing_expires_before_its_deadline(
        len in 28u8..=30,
        ops in proptest::collection::vec(op(), 0..60),
        advance in 0u64..25_000,
    ) {
        let mut d = run(len, &ops)?;
        d.now += advance;
        let before: Vec<(String, u64)> =
            d.alloc.leases().map(|l| (l.node.clone(), l.expires_at)).collect();
        d.step(&Op::Expire);
        for (n, deadline) in before {
            let present = d.alloc.lease(&n).is_some();
            if deadline >= d.now {
                prop_assert!(present, "{n} expired at {} before its deadline {deadline}", d.now);
            } else {
                prop_assert!(!present, "{n} outlived its deadline {deadline} (now {})", d.now);
            }
        }
    }

    #[test]
    fn snapshot_restore_is_identical_in_state_and_behaviour(
        len in 28u8..=30,
        prefix in proptest::collection::vec(op(), 0..60),
        suffix in proptest::collection::vec(op(), 0..40),
    ) {
        let mut a = run(len, &prefix)?;
        let restored = Allocator::restore(a.alloc.snapshot()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(restored.snapshot(), a.alloc.snapshot());
        let mut b = Driver { alloc: restored, now: a.now, subnet_len: a.subnet_len };
        for op in &suffix {
            let (ca, cb) = (a.command(op), b.command(op));
            prop_assert_eq!(&ca, &cb);
            match ca {
                None => {
                    a.step(op);
                    b.step(op);
                }
                Some((request_id, command)) => {
                    let req = Request { request_id, command };
                    let ra = a.alloc.apply(&req);
                    let rb = b.alloc.apply(&req);
                    prop_assert_eq!(ra, rb, "diverged on {:?}", op);
                    if let Op::SetConfig { .. } = op {
                        a.subnet_len = a.alloc.config().expect("config").subnet_len;
                        b.subnet_len = b.alloc.config().expect("config").subnet_len;
                    }
                }
            }
        }
        prop_assert_eq!(a.alloc.snapshot(), b.alloc.snapshot());
    }

    #[test]
    fn a_repeated_request_id_is_answered_once(
        len in 28u8..=30,
        ops in proptest::collection::vec(op(), 0..60),
        extra in op(),
    ) {
        let mut d = run(len, &ops)?;
        let Some((_, command)) = d.command(&extra) else { return Ok(()) };
        let req = Request { request_id: Some("the-one-id".into()), command };
        let (first, _) = d.alloc.apply(&req);
        let after_first = d.alloc.snapshot();
        // A retry, possibly after the clock moved: the same answer and no change at all.
        d.now += 3_000;
        let (second, again) = d.alloc.apply(&req);
        prop_assert_eq!(first, second);
        prop_assert!(again.is_empty(), "a deduplicated retry produced events: {again:?}");
        prop_assert_eq!(d.alloc.snapshot(), after_first);
    }
}
