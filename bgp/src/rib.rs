//! The RIBs and the decision process as plain data and functions: Adj-RIB-In per peer, the
//! Loc-RIB of best paths, and what each peer may be sent (iBGP split horizon and RFC 4456 route
//! reflection), with the loop checks both imply.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::attribute::{Attributes, Origin, Segment, AS_SEQUENCE, AS_SET};

pub type PeerId = usize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: IpAddr,
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// This peer is a route-reflection client of ours.
    pub rr_client: bool,
}

/// A path to a prefix as learned from one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub peer: PeerId,
    pub next_hop: IpAddr,
    pub attrs: Arc<Attributes>,
}

/// A change of best path, for the kernel and for the peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Best(IpNet, Path),
    Gone(IpNet),
    /// For the kernel only: the next hops of the paths as good as the best (ECMP), after the
    /// `Best` it follows; one next hop once the others are gone.
    NextHops(IpNet, Vec<IpAddr>),
}

/// Why an announcement was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    OwnAsInPath,
    OwnOriginatorId,
    OwnClusterInList,
}

pub struct Rib {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Set on a route reflector; the router id is used when not given.
    pub cluster_id: Option<Ipv4Addr>,
    pub peers: Vec<Peer>,
    adj_in: BTreeMap<IpNet, BTreeMap<PeerId, Path>>,
    /// Prefixes with two or more equal paths: their next hops.
    multi: BTreeMap<IpNet, Vec<IpAddr>>,
    /// Changes not returned by the call that made them, in order: [`Change::NextHops`] after
    /// the best path they go with, and what an announcement refused as a loop withdrew.
    /// Taken with [`Rib::take_pending`] after each call, they follow its own changes.
    next_hops: Vec<Change>,
    /// Prefixes in each peer's Adj-RIB-In, kept as they change (a limit is checked per UPDATE).
    counts: BTreeMap<PeerId, usize>,
    loc: BTreeMap<IpNet, Path>,
}

fn path_len(segs: &[Segment]) -> usize {
    // An AS_SET counts as one, whatever its size (RFC 4271 §9.1.2.2).
    segs.iter()
        .map(|s| if s.kind == AS_SET { 1 } else { s.asns.len() })
        .sum()
}

fn neighbour_as(a: &Attributes) -> Option<u32> {
    a.as_path
        .as_ref()
        .and_then(|p| p.iter().find(|s| s.kind == AS_SEQUENCE))
        .and_then(|s| s.asns.first().copied())
}

impl Rib {
    pub fn new(
        local_as: u32,
        router_id: Ipv4Addr,
        cluster_id: Option<Ipv4Addr>,
        peers: Vec<Peer>,
    ) -> Self {
        Rib {
            local_as,
            router_id,
            cluster_id,
            peers,
            adj_in: BTreeMap::new(),
            multi: BTreeMap::new(),
            next_hops: Vec::new(),
            counts: BTreeMap::new(),
            loc: BTreeMap::new(),
        }
    }

    fn ibgp(&self, p: PeerId) -> bool {
        self.peers[p].asn == self.local_as
    }

    /// The pseudo-peer our own prefixes come from: our AS and our router id (no real peer may
    /// use our router id; its OPEN is refused).
    fn local(&self, p: PeerId) -> bool {
        self.ibgp(p) && self.peers[p].router_id == self.router_id
    }

    fn is_reflector(&self) -> bool {
        self.peers.iter().any(|p| p.rr_client)
    }

    fn our_cluster(&self) -> Ipv4Addr {
        self.cluster_id.unwrap_or(self.router_id)
    }

    pub fn best(&self, prefix: &IpNet) -> Option<&Path> {
        self.loc.get(prefix)
    }

    /// The prefixes `peer` has announced (its Adj-RIB-In).
    pub fn prefixes_from(&self, peer: PeerId) -> Vec<IpNet> {
        self.adj_in
            .iter()
            .filter(|(_, paths)| paths.contains_key(&peer))
            .map(|(p, _)| *p)
            .collect()
    }

    /// The paths `peer` has announced, by prefix.
    pub fn paths_from(&self, peer: PeerId) -> Vec<(IpNet, Path)> {
        self.adj_in
            .iter()
            .filter_map(|(p, paths)| paths.get(&peer).map(|path| (*p, path.clone())))
            .collect()
    }

    /// How many prefixes each peer has in its Adj-RIB-In.
    pub fn adj_in_counts(&self) -> BTreeMap<PeerId, usize> {
        self.counts.clone()
    }

    /// How many prefixes `peer` has in its Adj-RIB-In.
    pub fn count_from(&self, peer: PeerId) -> usize {
        self.counts.get(&peer).copied().unwrap_or(0)
    }

    pub fn loc_rib(&self) -> impl Iterator<Item = (&IpNet, &Path)> {
        self.loc.iter()
    }

    /// Equal for multipath: the decision process up to, not including, the tie-breaks
    /// (LOCAL_PREF, AS_PATH length, ORIGIN, MED, eBGP over iBGP); the AS numbers on the paths
    /// may differ, so two ToRs in different ASes count (BIRD's merge paths, FRR's
    /// multipath-relax).
    fn equal_cost(&self, a: &Path, b: &Path) -> bool {
        let (x, y) = (&a.attrs, &b.attrs);
        let lp = |p: &Path| {
            if self.ibgp(p.peer) {
                p.attrs.local_pref.unwrap_or(100)
            } else {
                100
            }
        };
        let len = |at: &Attributes| at.as_path.as_deref().map(path_len).unwrap_or(0);
        let med_equal =
            neighbour_as(x) != neighbour_as(y) || x.med.unwrap_or(0) == y.med.unwrap_or(0);
        lp(a) == lp(b)
            && len(x) == len(y)
            && x.origin == y.origin
            && med_equal
            && self.ibgp(a.peer) == self.ibgp(b.peer)
    }

    /// The changes a call queued (see `next_hops`), oldest first.
    pub fn take_pending(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.next_hops)
    }

    /// RFC 4271 §9.1.2.2 plus RFC 4456 §9: is `a` preferred over `b`?
    fn compare(&self, a: &Path, b: &Path) -> Ordering {
        let (x, y) = (&a.attrs, &b.attrs);
        let lp = |p: &Path| {
            if self.ibgp(p.peer) {
                p.attrs.local_pref.unwrap_or(100)
            } else {
                100
            }
        };
        let origin = |o: Option<Origin>| o.unwrap_or(Origin::Incomplete) as u8;
        let len = |at: &Attributes| at.as_path.as_deref().map(path_len).unwrap_or(0);
        lp(a)
            .cmp(&lp(b))
            .reverse()
            .then(len(x).cmp(&len(y)))
            .then(origin(x.origin).cmp(&origin(y.origin)))
            .then_with(|| {
                // MED only between paths from the same neighbouring AS; missing MED is best (0).
                if neighbour_as(x) == neighbour_as(y) {
                    x.med.unwrap_or(0).cmp(&y.med.unwrap_or(0))
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| self.ibgp(a.peer).cmp(&self.ibgp(b.peer))) // eBGP (false) first
            .then_with(|| {
                let id = |p: &Path| {
                    u32::from(
                        p.attrs
                            .originator_id
                            .unwrap_or(self.peers[p.peer].router_id),
                    )
                };
                id(a).cmp(&id(b))
            })
            .then(x.cluster_list.len().cmp(&y.cluster_list.len()))
            .then_with(|| self.peers[a.peer].addr.cmp(&self.peers[b.peer].addr))
    }

    fn reselect(&mut self, prefix: IpNet) -> Option<Change> {
        let candidates = self.adj_in.get(&prefix);
        let best = candidates.and_then(|c| c.values().min_by(|a, b| self.compare(a, b)).cloned());
        let mut equal: Vec<IpAddr> = match (&best, candidates) {
            (Some(b), Some(c)) => c
                .values()
                .filter(|p| self.equal_cost(p, b))
                .map(|p| p.next_hop)
                .collect(),
            _ => Vec::new(),
        };
        equal.sort();
        equal.dedup();
        let best_moved = best.as_ref() != self.loc.get(&prefix);
        if equal.len() >= 2 {
            if best_moved || self.multi.get(&prefix) != Some(&equal) {
                self.next_hops.push(Change::NextHops(prefix, equal.clone()));
            }
            self.multi.insert(prefix, equal);
        } else if self.multi.remove(&prefix).is_some() && best.is_some() {
            self.next_hops.push(Change::NextHops(prefix, equal));
        }
        match (best, self.loc.get(&prefix)) {
            (Some(b), Some(cur)) if b == *cur => None,
            (Some(b), _) => {
                self.loc.insert(prefix, b.clone());
                Some(Change::Best(prefix, b))
            }
            (None, Some(_)) => {
                self.loc.remove(&prefix);
                Some(Change::Gone(prefix))
            }
            (None, None) => None,
        }
    }

    /// Whether a path from `peer` has been through us already: our AS on an eBGP path, our
    /// router id as ORIGINATOR_ID, our cluster in CLUSTER_LIST (RFC 4271 §9.1.2, RFC 4456 §8).
    pub fn loop_check(&self, peer: PeerId, attrs: &Attributes) -> Result<(), Rejected> {
        let ours = attrs
            .as_path
            .as_deref()
            .is_some_and(|p| p.iter().any(|s| s.asns.contains(&self.local_as)));
        if ours && !self.ibgp(peer) {
            return Err(Rejected::OwnAsInPath);
        }
        if attrs.originator_id == Some(self.router_id) {
            return Err(Rejected::OwnOriginatorId);
        }
        if self.is_reflector() && attrs.cluster_list.contains(&self.our_cluster()) {
            return Err(Rejected::OwnClusterInList);
        }
        Ok(())
    }

    /// Takes an announcement into the peer's Adj-RIB-In (or refuses it on a loop check) and
    /// reruns the decision for the prefix.
    pub fn announce(
        &mut self,
        peer: PeerId,
        prefix: IpNet,
        next_hop: IpAddr,
        attrs: Arc<Attributes>,
    ) -> Result<Option<Change>, Rejected> {
        if let Err(why) = self.loop_check(peer, &attrs) {
            // Treated as a withdrawal of whatever the peer had sent before; its change goes
            // ahead of the next hops that withdrawal queued.
            let at = self.next_hops.len();
            if let Some(c) = self.withdraw(peer, prefix) {
                self.next_hops.insert(at, c);
            }
            return Err(why);
        }
        let new = self
            .adj_in
            .entry(prefix)
            .or_default()
            .insert(
                peer,
                Path {
                    peer,
                    next_hop,
                    attrs,
                },
            )
            .is_none();
        if new {
            *self.counts.entry(peer).or_default() += 1;
        }
        Ok(self.reselect(prefix))
    }

    pub fn withdraw(&mut self, peer: PeerId, prefix: IpNet) -> Option<Change> {
        let gone = self
            .adj_in
            .get_mut(&prefix)
            .and_then(|m| m.remove(&peer))
            .is_some();
        if self.adj_in.get(&prefix).is_some_and(|m| m.is_empty()) {
            self.adj_in.remove(&prefix);
        }
        if gone {
            if let Some(n) = self.counts.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    self.counts.remove(&peer);
                }
            }
            self.reselect(prefix)
        } else {
            None
        }
    }

    /// Every path from a peer whose session went down.
    pub fn peer_down(&mut self, peer: PeerId) -> Vec<Change> {
        let prefixes: BTreeSet<IpNet> = self
            .adj_in
            .iter()
            .filter(|(_, m)| m.contains_key(&peer))
            .map(|(p, _)| *p)
            .collect();
        prefixes
            .into_iter()
            .filter_map(|p| self.withdraw(peer, p))
            .collect()
    }

    /// What `to` should be sent for a best path, or `None` when the rules forbid it: never back
    /// to its source; iBGP-learned paths reach iBGP peers only through reflection (from a client
    /// to everyone, from a non-client to clients); reflected paths carry ORIGINATOR_ID and our
    /// cluster id in CLUSTER_LIST; eBGP peers get our AS prepended, next hop self, and no
    /// iBGP-only attributes.
    pub fn export(
        &self,
        path: &Path,
        to: PeerId,
        local_address: IpAddr,
    ) -> Option<(IpAddr, Attributes)> {
        if path.peer == to {
            return None;
        }
        let from_ibgp = self.ibgp(path.peer) && !self.local(path.peer);
        let mut a = (*path.attrs).clone();
        if !self.ibgp(to) {
            let mut segs = a.as_path.take().unwrap_or_default();
            match segs.first_mut() {
                Some(s) if s.kind == AS_SEQUENCE && s.asns.len() < 255 => {
                    s.asns.insert(0, self.local_as)
                }
                _ => segs.insert(
                    0,
                    Segment {
                        kind: AS_SEQUENCE,
                        asns: vec![self.local_as],
                    },
                ),
            }
            a.as_path = Some(segs);
            a.local_pref = None;
            a.originator_id = None;
            a.cluster_list.clear();
            return Some((local_address, a));
        }
        if from_ibgp {
            let from_client = self.peers[path.peer].rr_client;
            let to_client = self.peers[to].rr_client;
            if !(from_client || to_client) {
                return None; // split horizon
            }
            if a.originator_id.is_none() {
                a.originator_id = Some(self.peers[path.peer].router_id);
            }
            if a.originator_id == Some(self.peers[to].router_id) {
                return None; // back to where it started
            }
            a.cluster_list.insert(0, self.our_cluster());
            return Some((path.next_hop, a));
        }
        // Our own or eBGP-learned, to iBGP: next hop unchanged, LOCAL_PREF set, nothing of
        // reflection.
        a.local_pref.get_or_insert(100);
        Some((path.next_hop, a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8, asn: u32, rr_client: bool) -> Peer {
        Peer {
            addr: IpAddr::from([192, 0, 2, last]),
            router_id: Ipv4Addr::new(192, 0, 2, last),
            asn,
            rr_client,
        }
    }

    fn attrs(path: &[u32], f: impl FnOnce(&mut Attributes)) -> Arc<Attributes> {
        let mut a = Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(if path.is_empty() {
                vec![]
            } else {
                vec![Segment {
                    kind: AS_SEQUENCE,
                    asns: path.to_vec(),
                }]
            }),
            ..Default::default()
        };
        f(&mut a);
        Arc::new(a)
    }

    fn p(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn nh(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn rib(peers: Vec<Peer>) -> Rib {
        Rib::new(64512, "192.0.2.100".parse().unwrap(), None, peers)
    }

    #[test]
    fn equal_paths_from_two_tors_give_two_next_hops_and_one_when_a_tor_goes() {
        // Two ToRs in different ASes, a third path one AS longer.
        let mut r = rib(vec![
            peer(3, 64600, false),
            peer(4, 64700, false),
            peer(5, 64800, false),
        ]);
        let x = p("192.168.9.0/24");
        r.announce(0, x, nh(3), attrs(&[64600], |_| {})).unwrap();
        assert_eq!(r.take_pending(), vec![], "one path: nothing more than Best");
        r.announce(1, x, nh(4), attrs(&[64700], |_| {})).unwrap();
        r.announce(2, x, nh(5), attrs(&[64800, 64801], |_| {}))
            .unwrap();
        assert_eq!(
            r.take_pending(),
            vec![Change::NextHops(x, vec![nh(3), nh(4)])],
            "the longer path is not equal"
        );
        // The best's ToR goes: the other is best, alone.
        assert!(matches!(r.withdraw(0, x), Some(Change::Best(_, b)) if b.next_hop == nh(4)));
        assert_eq!(r.take_pending(), vec![Change::NextHops(x, vec![nh(4)])]);
        // A MED from the same neighbouring AS breaks the tie; from another AS it does not.
        let y = p("192.168.10.0/24");
        r.announce(0, y, nh(3), attrs(&[64600], |a| a.med = Some(5)))
            .unwrap();
        r.announce(1, y, nh(4), attrs(&[64700], |a| a.med = Some(50)))
            .unwrap();
        assert_eq!(
            r.take_pending(),
            vec![Change::NextHops(y, vec![nh(3), nh(4)])]
        );
        r.announce(1, y, nh(4), attrs(&[64600], |a| a.med = Some(50)))
            .unwrap();
        assert_eq!(r.take_pending(), vec![Change::NextHops(y, vec![nh(3)])]);
        assert_eq!(
            r.withdraw(0, y).map(|c| matches!(c, Change::Best(..))),
            Some(true)
        );
        assert_eq!(r.take_pending(), vec![]);
    }

    #[test]
    fn a_path_replaced_by_a_loop_is_withdrawn_and_says_so() {
        let mut r = rib(vec![peer(3, 64600, false)]);
        let x = p("192.168.9.0/24");
        r.announce(0, x, nh(3), attrs(&[64600], |_| {})).unwrap();
        assert_eq!(
            r.announce(0, x, nh(3), attrs(&[64600, 64512], |_| {})),
            Err(Rejected::OwnAsInPath)
        );
        assert_eq!(
            r.take_pending(),
            vec![Change::Gone(x)],
            "the kernel hears of it"
        );
        assert!(r.best(&x).is_none());
    }

    /// Regression: our own prefixes counted as iBGP-learned, so a plain iBGP peer never got
    /// them (split horizon) and RR clients got them marked as reflected.
    #[test]
    fn own_prefixes_go_to_every_ibgp_peer_unreflected() {
        let mut me = peer(100, 64512, false);
        me.router_id = "192.0.2.100".parse().unwrap();
        let mut r = rib(vec![peer(1, 64512, false), peer(2, 64512, true), me]);
        r.cluster_id = Some("192.0.2.100".parse().unwrap());
        let x = p("10.244.9.0/24");
        r.announce(2, x, nh(100), attrs(&[], |a| a.local_pref = Some(100)))
            .unwrap();
        let path = r.best(&x).unwrap().clone();
        for to in [0, 1] {
            let (hop, a) = r.export(&path, to, nh(100)).expect("exported to iBGP peer");
            assert_eq!(hop, nh(100));
            assert_eq!(a.originator_id, None, "own prefix marked as reflected");
            assert!(a.cluster_list.is_empty(), "own prefix given a CLUSTER_LIST");
        }
    }

    #[test]
    fn decision_order() {
        let mut r = rib(vec![
            peer(1, 64512, false),
            peer(2, 64512, false),
            peer(3, 65001, false),
        ]);
        let x = p("10.244.1.0/24");
        r.announce(0, x, nh(1), attrs(&[], |a| a.local_pref = Some(100)))
            .unwrap();
        r.announce(1, x, nh(2), attrs(&[], |a| a.local_pref = Some(200)))
            .unwrap();
        assert_eq!(r.best(&x).unwrap().peer, 1, "higher LOCAL_PREF wins");
        let y = p("10.244.2.0/24");
        r.announce(0, y, nh(1), attrs(&[65001, 65002], |_| {}))
            .unwrap();
        r.announce(2, y, nh(3), attrs(&[65001], |_| {})).unwrap();
        assert_eq!(r.best(&y).unwrap().peer, 2, "shorter AS_PATH wins");
        let z = p("10.244.3.0/24");
        r.announce(
            0,
            z,
            nh(1),
            attrs(&[65001], |a| a.origin = Some(Origin::Incomplete)),
        )
        .unwrap();
        r.announce(1, z, nh(2), attrs(&[65001], |_| {})).unwrap();
        assert_eq!(r.best(&z).unwrap().peer, 1, "lower ORIGIN wins");
        let m = p("10.244.4.0/24");
        r.announce(0, m, nh(1), attrs(&[65001], |a| a.med = Some(50)))
            .unwrap();
        r.announce(1, m, nh(2), attrs(&[65001], |a| a.med = Some(10)))
            .unwrap();
        assert_eq!(
            r.best(&m).unwrap().peer,
            1,
            "lower MED from the same neighbour AS wins"
        );
        let e = p("10.244.5.0/24");
        r.announce(0, e, nh(1), attrs(&[65001], |_| {})).unwrap();
        r.announce(2, e, nh(3), attrs(&[65001], |_| {})).unwrap();
        assert_eq!(r.best(&e).unwrap().peer, 2, "eBGP over iBGP");
        let t = p("10.244.6.0/24");
        r.announce(1, t, nh(2), attrs(&[], |_| {})).unwrap();
        r.announce(0, t, nh(1), attrs(&[], |_| {})).unwrap();
        assert_eq!(
            r.best(&t).unwrap().peer,
            0,
            "lowest router id breaks the tie"
        );
    }

    #[test]
    fn withdraw_and_peer_down_fall_back_or_remove() {
        let mut r = rib(vec![peer(1, 64512, false), peer(2, 64512, false)]);
        let x = p("10.244.1.0/24");
        r.announce(0, x, nh(1), attrs(&[], |a| a.local_pref = Some(200)))
            .unwrap();
        r.announce(1, x, nh(2), attrs(&[], |_| {})).unwrap();
        assert_eq!(
            r.withdraw(0, x),
            Some(Change::Best(x, r.best(&x).unwrap().clone()))
        );
        assert_eq!(r.best(&x).unwrap().peer, 1);
        assert_eq!(r.peer_down(1), vec![Change::Gone(x)]);
        assert!(r.best(&x).is_none());
    }

    #[test]
    fn loops_are_refused() {
        let mut r = Rib::new(
            64512,
            "192.0.2.100".parse().unwrap(),
            Some("10.0.0.1".parse().unwrap()),
            vec![peer(1, 65001, false), peer(2, 64512, true)],
        );
        let x = p("10.244.1.0/24");
        assert_eq!(
            r.announce(0, x, nh(1), attrs(&[65001, 64512], |_| {})),
            Err(Rejected::OwnAsInPath)
        );
        assert_eq!(
            r.announce(
                1,
                x,
                nh(2),
                attrs(&[], |a| a.originator_id =
                    Some("192.0.2.100".parse().unwrap()))
            ),
            Err(Rejected::OwnOriginatorId)
        );
        assert_eq!(
            r.announce(
                1,
                x,
                nh(2),
                attrs(&[], |a| a.cluster_list = vec!["10.0.0.1".parse().unwrap()])
            ),
            Err(Rejected::OwnClusterInList)
        );
        assert!(r.best(&x).is_none());
    }

    #[test]
    fn split_horizon_and_route_reflection() {
        // Peers: two clients, one non-client iBGP, one eBGP.
        let mut r = Rib::new(
            64512,
            "192.0.2.100".parse().unwrap(),
            Some("10.0.0.1".parse().unwrap()),
            vec![
                peer(1, 64512, true),
                peer(2, 64512, true),
                peer(3, 64512, false),
                peer(4, 65001, false),
            ],
        );
        let me = IpAddr::from([192, 0, 2, 100]);
        let x = p("10.244.1.0/24");
        r.announce(0, x, nh(1), attrs(&[], |_| {})).unwrap();
        let best = r.best(&x).unwrap().clone();
        assert!(r.export(&best, 0, me).is_none(), "never back to the source");
        let (hop, a) = r.export(&best, 1, me).expect("client to client");
        assert_eq!(hop, nh(1), "reflection keeps the next hop");
        assert_eq!(a.originator_id, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(
            a.cluster_list,
            vec!["10.0.0.1".parse::<Ipv4Addr>().unwrap()]
        );
        assert!(r.export(&best, 2, me).is_some(), "client to non-client");
        let (hop, a) = r.export(&best, 3, me).expect("to eBGP");
        assert_eq!(hop, me, "next hop self towards eBGP");
        assert_eq!(
            a.as_path,
            Some(vec![Segment {
                kind: AS_SEQUENCE,
                asns: vec![64512]
            }])
        );
        assert!(a.originator_id.is_none() && a.cluster_list.is_empty() && a.local_pref.is_none());

        let y = p("10.244.2.0/24");
        r.announce(2, y, nh(3), attrs(&[], |_| {})).unwrap();
        let best = r.best(&y).unwrap().clone();
        assert!(r.export(&best, 0, me).is_some(), "non-client to client");
        let lone = Rib::new(
            64512,
            "192.0.2.100".parse().unwrap(),
            None,
            vec![peer(3, 64512, false), peer(5, 64512, false)],
        );
        let path = Path {
            peer: 0,
            next_hop: nh(3),
            attrs: attrs(&[], |_| {}),
        };
        assert!(
            lone.export(&path, 1, me).is_none(),
            "iBGP split horizon without reflection"
        );
    }
}
