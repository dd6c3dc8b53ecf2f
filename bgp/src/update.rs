//! UPDATE (RFC 4271 §4.3): withdrawn IPv4 routes, path attributes, IPv4 NLRI; IPv6 and other
//! families travel in MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::attribute::{self, Attributes, MpReach, MpUnreach};
use crate::notification::*;
use crate::prefix;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attrs: Attributes,
    pub nlri: Vec<Ipv4Net>,
    /// Set when RFC 7606 says to treat this UPDATE as a withdrawal of everything it carries.
    pub withdraw_reason: Option<String>,
    /// Attributes dropped on the way in (RFC 7606 "attribute discard"), with why.
    pub discarded: Vec<(u8, String)>,
}

impl Update {
    /// End-of-RIB for IPv4 unicast (RFC 4724): an UPDATE with nothing in it.
    pub fn is_end_of_rib(&self) -> bool {
        self.withdrawn.is_empty()
            && self.nlri.is_empty()
            && self.attrs == Attributes::default()
            && self.withdraw_reason.is_none()
    }

    /// Every IPv4 prefix this UPDATE withdraws, including, when treated as a withdrawal, the
    /// ones it announced.
    pub fn withdrawn_v4(&self) -> Vec<Ipv4Net> {
        let mut out = self.withdrawn.clone();
        if let Some(MpUnreach::V4(p)) = &self.attrs.mp_unreach {
            out.extend(p);
        }
        if self.withdraw_reason.is_some() {
            out.extend(&self.nlri);
            if let Some(MpReach::V4 { nlri, .. }) = &self.attrs.mp_reach {
                out.extend(nlri);
            }
        }
        out
    }

    pub fn withdrawn_v6(&self) -> Vec<Ipv6Net> {
        let mut out = Vec::new();
        if let Some(MpUnreach::V6(p)) = &self.attrs.mp_unreach {
            out.extend(p);
        }
        if self.withdraw_reason.is_some() {
            if let Some(MpReach::V6 { nlri, .. }) = &self.attrs.mp_reach {
                out.extend(nlri);
            }
        }
        out
    }

    /// Decodes an UPDATE body (after the header). `four`: 4-octet AS numbers were negotiated.
    pub fn decode(body: &[u8], four: bool) -> Result<Update, DecodeError> {
        let malformed = |why: &str| {
            DecodeError::new(
                UPDATE_MESSAGE_ERROR,
                MALFORMED_ATTRIBUTE_LIST,
                Vec::new(),
                why,
            )
        };
        if body.len() < 4 {
            return Err(malformed("UPDATE shorter than its two length fields"));
        }
        let wlen = u16::from_be_bytes([body[0], body[1]]) as usize;
        let wfield = body
            .get(2..2 + wlen)
            .ok_or_else(|| malformed("withdrawn routes overrun the message"))?;
        let rest = &body[2 + wlen..];
        if rest.len() < 2 {
            return Err(malformed("no room for the attribute length"));
        }
        let alen = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let afield = rest
            .get(2..2 + alen)
            .ok_or_else(|| malformed("attributes overrun the message"))?;
        let nfield = &rest[2 + alen..];
        let bad_net = |what: &str, e: prefix::PrefixError| {
            DecodeError::new(
                UPDATE_MESSAGE_ERROR,
                INVALID_NETWORK_FIELD,
                Vec::new(),
                format!("{what}: {e:?}"),
            )
        };
        let withdrawn =
            prefix::decode_all_v4(wfield).map_err(|e| bad_net("withdrawn routes", e))?;
        let nlri = prefix::decode_all_v4(nfield).map_err(|e| bad_net("NLRI", e))?;
        let d = attribute::decode(afield, four)?;
        let mut u = Update {
            withdrawn,
            attrs: d.attrs,
            nlri,
            withdraw_reason: d.withdraw_reason,
            discarded: d.discarded,
        };
        // Announcements need ORIGIN and AS_PATH, and classic IPv4 NLRI a NEXT_HOP; a missing
        // one makes the announcement unusable, not the session (RFC 7606 §3 d).
        let announces = !u.nlri.is_empty() || u.attrs.mp_reach.is_some();
        if announces && u.withdraw_reason.is_none() {
            let missing = if u.attrs.origin.is_none() {
                Some("ORIGIN")
            } else if u.attrs.as_path.is_none() {
                Some("AS_PATH")
            } else if !u.nlri.is_empty() && u.attrs.next_hop.is_none() {
                Some("NEXT_HOP")
            } else {
                None
            };
            if let Some(m) = missing {
                u.withdraw_reason = Some(format!("missing well-known attribute {m}"));
            }
        }
        Ok(u)
    }

    pub fn encode(&self, four: bool, out: &mut Vec<u8>) {
        let mut w = Vec::new();
        self.withdrawn
            .iter()
            .for_each(|p| prefix::encode_v4(p, &mut w));
        let mut a = Vec::new();
        attribute::encode(&self.attrs, four, &mut a);
        out.extend_from_slice(&(w.len() as u16).to_be_bytes());
        out.extend_from_slice(&w);
        out.extend_from_slice(&(a.len() as u16).to_be_bytes());
        out.extend_from_slice(&a);
        self.nlri.iter().for_each(|p| prefix::encode_v4(p, out));
    }
}

/// UPDATEs encoded as whole messages of at most [`crate::message::MAX_LEN`] bytes, and the
/// prefixes whose announcement could not fit in one.
#[derive(Debug, Default)]
pub struct Fitted {
    pub messages: Vec<Vec<u8>>,
    /// Announced prefixes whose attributes alone leave no room for them: sent as withdrawals
    /// instead, so that the peer keeps no older version of the route (RFC 4271 §9.2 has a
    /// route that cannot be advertised treated as unreachable).
    pub unfit: Vec<IpNet>,
}

/// The prefixes an UPDATE carries, in any of its four lists: how many.
fn prefix_count(u: &Update) -> usize {
    let reach = match &u.attrs.mp_reach {
        Some(MpReach::V4 { nlri, .. }) => nlri.len(),
        Some(MpReach::V6 { nlri, .. }) => nlri.len(),
        None => 0,
    };
    let unreach = match &u.attrs.mp_unreach {
        Some(MpUnreach::V4(p)) => p.len(),
        Some(MpUnreach::V6(p)) => p.len(),
        None => 0,
    };
    u.withdrawn.len() + u.nlri.len() + reach + unreach
}

fn halves<T: Clone>(v: &[T]) -> (Vec<T>, Vec<T>) {
    let (a, b) = v.split_at(v.len() / 2);
    (a.to_vec(), b.to_vec())
}

/// Splits an UPDATE carrying two or more prefixes in two: withdrawals apart from
/// announcements, else the one list halved.
fn split(u: Update) -> (Update, Update) {
    let withdraws = !u.withdrawn.is_empty() || u.attrs.mp_unreach.is_some();
    let announces = !u.nlri.is_empty() || u.attrs.mp_reach.is_some();
    // Two lists of one kind: each on its own, so that halving one list always makes progress.
    if !u.nlri.is_empty() && u.attrs.mp_reach.is_some() && !withdraws {
        let mut a = u.clone();
        a.attrs.mp_reach = None;
        let mut b = u;
        b.nlri.clear();
        return (a, b);
    }
    if !u.withdrawn.is_empty() && u.attrs.mp_unreach.is_some() && !announces {
        let a = Update {
            withdrawn: u.withdrawn.clone(),
            ..Default::default()
        };
        let mut b = u;
        b.withdrawn.clear();
        return (a, b);
    }
    if withdraws && announces {
        let w = Update {
            withdrawn: u.withdrawn.clone(),
            attrs: Attributes {
                mp_unreach: u.attrs.mp_unreach.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut a = u;
        a.withdrawn.clear();
        a.attrs.mp_unreach = None;
        return (w, a);
    }
    let (mut a, mut b) = (u.clone(), u);
    if !a.withdrawn.is_empty() {
        (a.withdrawn, b.withdrawn) = halves(&a.withdrawn);
    } else if !a.nlri.is_empty() {
        (a.nlri, b.nlri) = halves(&a.nlri);
    } else if let (Some(ra), Some(rb)) = (&mut a.attrs.mp_reach, &mut b.attrs.mp_reach) {
        match (ra, rb) {
            (MpReach::V4 { nlri: x, .. }, MpReach::V4 { nlri: y, .. }) => (*x, *y) = halves(x),
            (MpReach::V6 { nlri: x, .. }, MpReach::V6 { nlri: y, .. }) => (*x, *y) = halves(x),
            _ => {}
        }
    } else if let (Some(ua), Some(ub)) = (&mut a.attrs.mp_unreach, &mut b.attrs.mp_unreach) {
        match (ua, ub) {
            (MpUnreach::V4(x), MpUnreach::V4(y)) => (*x, *y) = halves(x),
            (MpUnreach::V6(x), MpUnreach::V6(y)) => (*x, *y) = halves(x),
            _ => {}
        }
    }
    (a, b)
}

/// The withdrawal of what a one-prefix announcement carries.
fn as_withdrawal(u: &Update) -> (Update, Vec<IpNet>) {
    let mut w = Update::default();
    let mut gone = Vec::new();
    for p in &u.nlri {
        w.withdrawn.push(*p);
        gone.push(IpNet::V4(*p));
    }
    match &u.attrs.mp_reach {
        Some(MpReach::V4 { nlri, .. }) => {
            w.withdrawn.extend(nlri);
            gone.extend(nlri.iter().map(|p| IpNet::V4(*p)));
        }
        Some(MpReach::V6 { nlri, .. }) => {
            w.attrs.mp_unreach = Some(MpUnreach::V6(nlri.clone()));
            gone.extend(nlri.iter().map(|p| IpNet::V6(*p)));
        }
        None => {}
    }
    (w, gone)
}

/// Encodes `updates` as messages that each fit the 4,096-byte limit, splitting those that do
/// not: bounded by bytes, not by prefix count, so long CLUSTER_LISTs, many communities or
/// unknown transitive attributes never make a message the peer must reject.
pub fn fit(updates: Vec<Update>, four: bool) -> Fitted {
    use crate::message::{encode, Message, MAX_LEN};
    let mut out = Fitted::default();
    let mut work: Vec<Update> = updates.into_iter().rev().collect();
    while let Some(u) = work.pop() {
        let bytes = encode(&Message::Update(Box::new(u.clone())), four);
        if bytes.len() <= MAX_LEN {
            out.messages.push(bytes);
        } else if prefix_count(&u) > 1 {
            let (a, b) = split(u);
            work.push(b);
            work.push(a);
        } else {
            let (w, gone) = as_withdrawal(&u);
            out.unfit.extend(gone);
            if prefix_count(&w) > 0 {
                out.messages
                    .push(encode(&Message::Update(Box::new(w)), four));
            }
        }
    }
    out
}

#[cfg(test)]
mod fit_tests {
    use super::*;
    use crate::attribute::Origin;
    use crate::message::{decode, Message, MAX_LEN};

    fn heavy() -> Attributes {
        Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(vec![]),
            next_hop: Some("192.0.2.1".parse().unwrap()),
            local_pref: Some(100),
            originator_id: Some("192.0.2.9".parse().unwrap()),
            // 250 clusters and 500 communities: 3,000 bytes of attributes.
            cluster_list: (0..250u32).map(std::net::Ipv4Addr::from).collect(),
            communities: (0..500).collect(),
            ..Default::default()
        }
    }

    fn v4(i: u32) -> Ipv4Net {
        Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).unwrap()
    }

    fn decoded(m: &[u8]) -> Update {
        match decode(m, true).unwrap().unwrap().0 {
            Message::Update(u) => *u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heavy_attributes_split_into_messages_within_the_limit() {
        let prefixes: Vec<Ipv4Net> = (0..400).map(v4).collect();
        let u = Update {
            attrs: heavy(),
            nlri: prefixes.clone(),
            ..Default::default()
        };
        let f = fit(vec![u], true);
        assert!(f.unfit.is_empty());
        assert!(f.messages.len() > 1);
        let mut got = Vec::new();
        for m in &f.messages {
            assert!(m.len() <= MAX_LEN, "{} bytes", m.len());
            let u = decoded(m);
            assert_eq!(u.attrs.cluster_list.len(), 250);
            got.extend(u.nlri);
        }
        assert_eq!(got, prefixes, "every prefix once, in order");
    }

    #[test]
    fn attributes_that_cannot_fit_withdraw_the_route_instead() {
        let mut a = heavy();
        // An unknown optional transitive attribute of 1,200 bytes: over the limit with any
        // prefix.
        a.unknown.push((0xc0, 250, vec![7; 1200]));
        let u = Update {
            attrs: a,
            nlri: vec![v4(1), v4(2)],
            ..Default::default()
        };
        let f = fit(vec![u], true);
        assert_eq!(f.unfit, [IpNet::V4(v4(1)), IpNet::V4(v4(2))]);
        let withdrawn: Vec<Ipv4Net> = f
            .messages
            .iter()
            .flat_map(|m| decoded(m).withdrawn)
            .collect();
        assert_eq!(withdrawn, [v4(1), v4(2)]);
    }

    #[test]
    fn an_update_mixing_ipv4_and_ipv6_announcements_splits_and_ends() {
        let v6: Vec<Ipv6Net> = (0..300u16)
            .map(|i| {
                Ipv6Net::new(std::net::Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 0), 48).unwrap()
            })
            .collect();
        let mut a = heavy();
        a.mp_reach = Some(MpReach::V6 {
            next_hop: vec!["2001:db8::1".parse().unwrap()],
            nlri: v6.clone(),
        });
        let u = Update {
            attrs: a,
            nlri: vec![v4(1)],
            withdrawn: vec![v4(2)],
            ..Default::default()
        };
        let f = fit(vec![u], true);
        assert!(f.unfit.is_empty());
        let (mut n4, mut n6, mut w) = (0, 0, 0);
        for m in &f.messages {
            assert!(m.len() <= MAX_LEN);
            let d = decoded(m);
            n4 += d.nlri.len();
            w += d.withdrawn.len();
            if let Some(MpReach::V6 { nlri, .. }) = &d.attrs.mp_reach {
                n6 += nlri.len();
            }
        }
        assert_eq!((n4, n6, w), (1, 300, 1));
    }

    #[test]
    fn small_updates_go_as_they_are() {
        let u = Update {
            withdrawn: vec![v4(3)],
            ..Default::default()
        };
        let f = fit(vec![u.clone(), Update::default()], true);
        assert_eq!(f.messages.len(), 2);
        assert_eq!(decoded(&f.messages[0]).withdrawn, [v4(3)]);
        assert!(decoded(&f.messages[1]).is_end_of_rib());
    }
}
