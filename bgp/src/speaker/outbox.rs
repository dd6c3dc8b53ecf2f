//! A session's Adj-RIB-Out waiting to be written: the latest word on each prefix, not a queue
//! of every change. The speaker's loop only ever puts into it, never waits on it, so a peer
//! that stops reading holds up nobody; and however long such a peer takes, what waits for it
//! is bounded by the table's size, as a prefix that changes ten times waiting goes out once.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use tokio::sync::Notify;

use crate::attribute::{Attributes, MpReach, MpUnreach};
use crate::driver::{Batch, Outgoing};
use crate::update::Update;

/// Prefixes per UPDATE: well inside the 4,096-byte message limit for IPv4 and IPv6 alike.
const PER_UPDATE: usize = 200;

/// Prefixes handed to the session at once: the session asks again once they are written, so
/// this bounds what sits in its socket buffers, not what waits.
const PER_BATCH: usize = 2_000;

/// An announcement (next hop and attributes) or, `None`, a withdrawal.
type Word = Option<(IpAddr, Attributes)>;

#[derive(Default)]
struct Waiting {
    routes: BTreeMap<IpNet, Word>,
    /// End-of-RIB follows the initial table, once everything before it is out.
    end_of_rib: bool,
    /// ROUTE-REFRESH requests to send (AFI, SAFI).
    refresh: Vec<(u16, u8)>,
    closed: bool,
}

/// Shared by the speaker (which puts) and one session's driver (which takes).
#[derive(Default)]
pub(super) struct Outbox {
    waiting: Mutex<Waiting>,
    ready: Notify,
}

impl Outbox {
    pub(super) fn new() -> Arc<Outbox> {
        Arc::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces whatever waits for these prefixes.
    pub(super) fn put(&self, words: impl IntoIterator<Item = (IpNet, Word)>) {
        let mut w = self.lock();
        w.routes.extend(words);
        let any = !w.routes.is_empty();
        drop(w);
        if any {
            self.ready.notify_one();
        }
    }

    /// Asks the peer for its routes of this family again (RFC 2918).
    pub(super) fn request_refresh(&self, afi: u16, safi: u8) {
        let mut w = self.lock();
        if !w.refresh.contains(&(afi, safi)) {
            w.refresh.push((afi, safi));
        }
        drop(w);
        self.ready.notify_one();
    }

    pub(super) fn end_of_rib(&self) {
        self.lock().end_of_rib = true;
        self.ready.notify_one();
    }

    /// The session is to stop once it has asked for more.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Prefixes waiting.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().routes.len()
    }

    /// Up to [`PER_BATCH`] prefixes' worth of UPDATEs, withdrawals first, then End-of-RIB
    /// once nothing else waits.
    fn take(&self) -> Option<Batch> {
        let mut w = self.lock();
        let refresh = std::mem::take(&mut w.refresh);
        let mut withdraw = Vec::new();
        let mut announce = Vec::new();
        while withdraw.len() + announce.len() < PER_BATCH {
            let Some((prefix, word)) = w.routes.pop_first() else {
                break;
            };
            match word {
                Some((nh, attrs)) => announce.push((prefix, nh, attrs)),
                None => withdraw.push(prefix),
            }
        }
        let eor = w.end_of_rib && w.routes.is_empty();
        if eor {
            w.end_of_rib = false;
        }
        drop(w);
        let mut updates = pack_withdrawals(withdraw);
        updates.extend(pack(announce));
        if eor {
            updates.push(Update::default());
        }
        (!updates.is_empty() || !refresh.is_empty()).then_some(Batch { refresh, updates })
    }
}

/// The driver's side of an [`Outbox`].
pub(super) struct Taker(pub(super) Arc<Outbox>);

impl Outgoing for Taker {
    async fn next(&mut self) -> Option<Batch> {
        loop {
            // A put between `take` and `notified` leaves a permit, so nothing is missed.
            if let Some(u) = self.0.take() {
                return Some(u);
            }
            if self.0.lock().closed {
                return None;
            }
            self.0.ready.notified().await;
        }
    }
}

/// IPv4 and IPv6 prefixes apart, as UPDATEs carry them in different fields.
fn by_family(prefixes: &[IpNet]) -> (Vec<ipnet::Ipv4Net>, Vec<ipnet::Ipv6Net>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for p in prefixes {
        match p {
            IpNet::V4(p) => v4.push(*p),
            IpNet::V6(p) => v6.push(*p),
        }
    }
    (v4, v6)
}

/// Announcements grouped by identical next hop and attributes, each group split into UPDATEs
/// of at most [`PER_UPDATE`] prefixes: a full table goes out in few messages.
fn pack(routes: Vec<(IpNet, IpAddr, Attributes)>) -> Vec<Update> {
    // Hashed, so a table with many different attribute sets still packs in linear time.
    let mut index: HashMap<(IpAddr, Attributes), usize> = HashMap::new();
    let mut groups: Vec<(IpAddr, Attributes, Vec<IpNet>)> = Vec::new();
    for (prefix, nh, attrs) in routes {
        match index.get(&(nh, attrs.clone())) {
            Some(i) => groups[*i].2.push(prefix),
            None => {
                index.insert((nh, attrs.clone()), groups.len());
                groups.push((nh, attrs, vec![prefix]));
            }
        }
    }
    let mut out = Vec::new();
    for (nh, attrs, prefixes) in groups {
        let (v4, v6) = by_family(&prefixes);
        if let IpAddr::V4(nh4) = nh {
            for chunk in v4.chunks(PER_UPDATE) {
                let mut a = attrs.clone();
                a.next_hop = Some(nh4);
                out.push(Update {
                    attrs: a,
                    nlri: chunk.to_vec(),
                    ..Default::default()
                });
            }
        }
        // IPv4 prefixes with an IPv6 next hop are not sent.
        for chunk in v6.chunks(PER_UPDATE) {
            let mut a = attrs.clone();
            a.mp_reach = Some(MpReach::V6 {
                next_hop: vec![nh],
                nlri: chunk.to_vec(),
            });
            out.push(Update {
                attrs: a,
                ..Default::default()
            });
        }
    }
    out
}

/// Withdrawals, IPv4 in the UPDATE's own field and IPv6 in MP_UNREACH, packed the same way.
fn pack_withdrawals(prefixes: Vec<IpNet>) -> Vec<Update> {
    let (v4, v6) = by_family(&prefixes);
    let mut out: Vec<Update> = v4
        .chunks(PER_UPDATE)
        .map(|c| Update {
            withdrawn: c.to_vec(),
            ..Default::default()
        })
        .collect();
    out.extend(v6.chunks(PER_UPDATE).map(|c| Update {
        attrs: Attributes {
            mp_unreach: Some(MpUnreach::V6(c.to_vec())),
            ..Default::default()
        },
        ..Default::default()
    }));
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::attribute::Origin;

    fn attrs(med: u32) -> Attributes {
        Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![]),
            med: Some(med),
            ..Default::default()
        }
    }

    #[test]
    fn identical_attributes_share_updates_of_bounded_size() {
        let nh: IpAddr = "192.0.2.1".parse().unwrap();
        let mut routes = Vec::new();
        for i in 0..450u32 {
            let p: IpNet = format!("10.{}.{}.0/24", i / 256, i % 256).parse().unwrap();
            routes.push((p, nh, attrs(if i < 300 { 1 } else { 2 })));
        }
        let ups = pack(routes);
        // 300 with MED 1 in two UPDATEs (200 + 100), 150 with MED 2 in one.
        let sizes: Vec<(u32, usize)> = ups
            .iter()
            .map(|u| (u.attrs.med.unwrap(), u.nlri.len()))
            .collect();
        assert_eq!(sizes, [(1, 200), (1, 100), (2, 150)]);
        assert!(ups
            .iter()
            .all(|u| u.attrs.next_hop == Some("192.0.2.1".parse().unwrap())));
        for u in &ups {
            let bytes =
                crate::message::encode(&crate::message::Message::Update(Box::new(u.clone())), true);
            assert!(bytes.len() <= 4096, "UPDATE of {} bytes", bytes.len());
        }
    }

    #[test]
    fn withdrawals_pack_by_family() {
        let ps: Vec<IpNet> = vec![
            "10.0.0.0/24".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
            "10.0.1.0/24".parse().unwrap(),
        ];
        let ups = pack_withdrawals(ps);
        assert_eq!(ups.len(), 2);
        assert_eq!(ups[0].withdrawn.len(), 2);
        assert!(matches!(&ups[1].attrs.mp_unreach, Some(MpUnreach::V6(v)) if v.len() == 1));
    }

    fn p(i: u32) -> IpNet {
        IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap())
    }

    #[tokio::test]
    async fn the_latest_word_on_a_prefix_is_all_that_waits() {
        let nh: IpAddr = "192.0.2.1".parse().unwrap();
        let out = Outbox::new();
        // A prefix that flaps a thousand times while the peer reads nothing waits once.
        for med in 0..1000 {
            out.put([(p(1), Some((nh, attrs(med))))]);
            out.put([(p(2), Some((nh, attrs(med))))]);
        }
        out.put([(p(2), None)]);
        assert_eq!(out.len(), 2);
        let mut t = Taker(out.clone());
        let ups = t.next().await.unwrap().updates;
        assert_eq!(ups.len(), 2);
        assert_eq!(ups[0].withdrawn.len(), 1, "withdrawals first");
        assert_eq!(ups[1].attrs.med, Some(999));
        assert_eq!(out.len(), 0);
    }

    #[tokio::test]
    async fn end_of_rib_follows_the_whole_table_and_close_ends_the_session() {
        let nh: IpAddr = "192.0.2.1".parse().unwrap();
        let out = Outbox::new();
        out.put((0..(PER_BATCH as u32 + 10)).map(|i| (p(i), Some((nh, attrs(1))))));
        out.end_of_rib();
        let mut t = Taker(out.clone());
        let first = t.next().await.unwrap().updates;
        assert_eq!(first.iter().map(|u| u.nlri.len()).sum::<usize>(), PER_BATCH);
        assert!(
            !first.iter().any(Update::is_end_of_rib),
            "not before the table is out"
        );
        let second = t.next().await.unwrap().updates;
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].nlri.len(), 10);
        assert!(second[1].is_end_of_rib());
        out.close();
        assert!(t.next().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_session_wakes_for_a_put() {
        let out = Outbox::new();
        let mut t = Taker(out.clone());
        let waiter = tokio::spawn(async move { t.next().await });
        tokio::task::yield_now().await;
        out.put([(p(3), None)]);
        let ups = waiter.await.unwrap().unwrap().updates;
        assert_eq!(ups[0].withdrawn.len(), 1);
    }

    #[tokio::test]
    async fn a_refresh_request_goes_before_the_updates_and_once() {
        let out = Outbox::new();
        out.request_refresh(1, 1);
        out.request_refresh(1, 1);
        out.put([(p(4), None)]);
        let b = Taker(out.clone()).next().await.unwrap();
        assert_eq!(b.refresh, [(1, 1)]);
        assert_eq!(b.updates.len(), 1);
    }
}
