//! Path attributes (RFC 4271 §4.3, §5) and what to do with a broken one (RFC 7606): most
//! errors turn the UPDATE into a withdrawal of its prefixes ("treat-as-withdraw"), a few only
//! drop the attribute, and only errors that leave the message unparseable reset the session.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::notification::*;
use crate::open::{AFI_IPV4, AFI_IPV6};
use crate::prefix;

pub const FLAG_OPTIONAL: u8 = 0x80;
pub const FLAG_TRANSITIVE: u8 = 0x40;
pub const FLAG_PARTIAL: u8 = 0x20;
pub const FLAG_EXTENDED: u8 = 0x10;

pub const ORIGIN: u8 = 1;
pub const AS_PATH: u8 = 2;
pub const NEXT_HOP: u8 = 3;
pub const MED: u8 = 4;
pub const LOCAL_PREF: u8 = 5;
pub const ATOMIC_AGGREGATE: u8 = 6;
pub const AGGREGATOR: u8 = 7;
pub const COMMUNITIES: u8 = 8;
pub const ORIGINATOR_ID: u8 = 9;
pub const CLUSTER_LIST: u8 = 10;
pub const MP_REACH_NLRI: u8 = 14;
pub const MP_UNREACH_NLRI: u8 = 15;
pub const AS4_PATH: u8 = 17;
pub const AS4_AGGREGATOR: u8 = 18;

pub const AS_SET: u8 = 1;
pub const AS_SEQUENCE: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Segment {
    pub kind: u8,
    pub asns: Vec<u32>,
}

/// Reachability carried in MP_REACH_NLRI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MpReach {
    V4 {
        next_hop: Ipv4Addr,
        nlri: Vec<Ipv4Net>,
    },
    V6 {
        next_hop: Vec<IpAddr>,
        nlri: Vec<Ipv6Net>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MpUnreach {
    V4(Vec<Ipv4Net>),
    V6(Vec<Ipv6Net>),
}

/// The attributes of an UPDATE, decoded. Unknown optional transitive attributes are kept (with
/// the Partial bit set) to pass on; unknown optional non-transitive ones are dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub origin: Option<Origin>,
    pub as_path: Option<Vec<Segment>>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<(u32, Ipv4Addr)>,
    pub communities: Vec<u32>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    pub as4_path: Option<Vec<Segment>>,
    pub as4_aggregator: Option<(u32, Ipv4Addr)>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    pub unknown: Vec<(u8, u8, Vec<u8>)>,
}

/// What RFC 7606 says to do about a broken attribute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrProblem {
    /// Withdraw every prefix the UPDATE carries; the session stays up.
    TreatAsWithdraw(String),
    /// Drop this attribute and carry on.
    Discard(String),
    /// The message cannot be parsed further: NOTIFICATION and reset.
    Reset(DecodeError),
}

/// The outcome of reading the attribute field: the attributes, the attributes dropped, and the
/// reason to treat the UPDATE as a withdrawal, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    pub attrs: Attributes,
    pub discarded: Vec<(u8, String)>,
    pub withdraw_reason: Option<String>,
}

fn u32_at(v: &[u8]) -> u32 {
    u32::from_be_bytes([v[0], v[1], v[2], v[3]])
}

fn decode_path(v: &[u8], four: bool) -> Result<Vec<Segment>, String> {
    let width = if four { 4 } else { 2 };
    let mut out = Vec::new();
    let mut p = v;
    while !p.is_empty() {
        if p.len() < 2 {
            return Err("truncated AS_PATH segment header".into());
        }
        let (kind, count) = (p[0], p[1] as usize);
        if !(1..=4).contains(&kind) {
            return Err(format!("AS_PATH segment type {kind}"));
        }
        if count == 0 {
            return Err("empty AS_PATH segment".into());
        }
        let body = p
            .get(2..2 + count * width)
            .ok_or("AS_PATH segment overruns the attribute")?;
        let asns = body
            .chunks_exact(width)
            .map(|c| {
                if four {
                    u32_at(c)
                } else {
                    u16::from_be_bytes([c[0], c[1]]) as u32
                }
            })
            .collect();
        out.push(Segment { kind, asns });
        p = &p[2 + count * width..];
    }
    Ok(out)
}

fn encode_path(segs: &[Segment], four: bool, out: &mut Vec<u8>) {
    for s in segs {
        for chunk in s.asns.chunks(255) {
            out.push(s.kind);
            out.push(chunk.len() as u8);
            for a in chunk {
                if four {
                    out.extend_from_slice(&a.to_be_bytes());
                } else {
                    out.extend_from_slice(
                        &u16::try_from(*a)
                            .unwrap_or(crate::open::AS_TRANS)
                            .to_be_bytes(),
                    );
                }
            }
        }
    }
}

fn decode_mp_reach(v: &[u8]) -> Result<MpReach, String> {
    if v.len() < 5 {
        return Err("MP_REACH_NLRI shorter than its header".into());
    }
    let afi = u16::from_be_bytes([v[0], v[1]]);
    let nh_len = v[3] as usize;
    let nh = v
        .get(4..4 + nh_len)
        .ok_or("next hop overruns MP_REACH_NLRI")?;
    let nlri = v.get(5 + nh_len..).ok_or("MP_REACH_NLRI truncated")?;
    match (afi, nh_len) {
        (AFI_IPV4, 4) => Ok(MpReach::V4 {
            next_hop: Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]),
            nlri: prefix::decode_all_v4(nlri)
                .map_err(|e| format!("MP_REACH_NLRI prefix: {e:?}"))?,
        }),
        (AFI_IPV6, 16 | 32) => Ok(MpReach::V6 {
            next_hop: nh
                .chunks_exact(16)
                .map(|c| IpAddr::from(<[u8; 16]>::try_from(c).unwrap_or([0; 16])))
                .collect(),
            nlri: prefix::decode_all_v6(nlri)
                .map_err(|e| format!("MP_REACH_NLRI prefix: {e:?}"))?,
        }),
        _ => Err(format!(
            "MP_REACH_NLRI for AFI {afi} with a {nh_len}-byte next hop"
        )),
    }
}

fn decode_mp_unreach(v: &[u8]) -> Result<MpUnreach, String> {
    if v.len() < 3 {
        return Err("MP_UNREACH_NLRI shorter than its header".into());
    }
    let afi = u16::from_be_bytes([v[0], v[1]]);
    match afi {
        AFI_IPV4 => Ok(MpUnreach::V4(
            prefix::decode_all_v4(&v[3..]).map_err(|e| format!("MP_UNREACH_NLRI prefix: {e:?}"))?,
        )),
        AFI_IPV6 => Ok(MpUnreach::V6(
            prefix::decode_all_v6(&v[3..]).map_err(|e| format!("MP_UNREACH_NLRI prefix: {e:?}"))?,
        )),
        _ => Err(format!("MP_UNREACH_NLRI for AFI {afi}")),
    }
}

fn mp_reset(why: String) -> AttrProblem {
    AttrProblem::Reset(DecodeError::new(
        UPDATE_MESSAGE_ERROR,
        OPTIONAL_ATTRIBUTE_ERROR,
        Vec::new(),
        why,
    ))
}

fn expect_len(v: &[u8], n: usize, name: &str) -> Result<(), String> {
    if v.len() == n {
        Ok(())
    } else {
        Err(format!("{name} of {} bytes, not {n}", v.len()))
    }
}

/// One attribute into `a`, or what to do about it.
fn apply(a: &mut Attributes, flags: u8, code: u8, v: &[u8], four: bool) -> Result<(), AttrProblem> {
    use AttrProblem::*;
    let well_known = matches!(
        code,
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE
    );
    // A well-known attribute flagged optional (or an optional one flagged well-known) is a
    // flags error, handled per attribute (RFC 7606 §3 c); for these it means withdraw.
    let flags_ok = match code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => flags & FLAG_OPTIONAL == 0,
        MED | ORIGINATOR_ID | CLUSTER_LIST | MP_REACH_NLRI | MP_UNREACH_NLRI => {
            flags & FLAG_OPTIONAL != 0 && flags & FLAG_TRANSITIVE == 0
        }
        AGGREGATOR | COMMUNITIES | AS4_PATH | AS4_AGGREGATOR => {
            flags & FLAG_OPTIONAL != 0 && flags & FLAG_TRANSITIVE != 0
        }
        _ => true,
    };
    match code {
        ORIGIN | AS_PATH | NEXT_HOP | MED | LOCAL_PREF | COMMUNITIES | ORIGINATOR_ID
        | CLUSTER_LIST
            if !flags_ok =>
        {
            return Err(TreatAsWithdraw(format!(
                "attribute {code} with flags {flags:#04x}"
            )))
        }
        ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR if !flags_ok => {
            return Err(Discard(format!("attribute {code} with flags {flags:#04x}")))
        }
        _ => {}
    }
    match code {
        ORIGIN => {
            expect_len(v, 1, "ORIGIN").map_err(TreatAsWithdraw)?;
            a.origin = Some(match v[0] {
                0 => Origin::Igp,
                1 => Origin::Egp,
                2 => Origin::Incomplete,
                o => return Err(TreatAsWithdraw(format!("ORIGIN value {o}"))),
            });
        }
        AS_PATH => a.as_path = Some(decode_path(v, four).map_err(TreatAsWithdraw)?),
        NEXT_HOP => {
            expect_len(v, 4, "NEXT_HOP").map_err(TreatAsWithdraw)?;
            a.next_hop = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3]));
        }
        MED => {
            expect_len(v, 4, "MULTI_EXIT_DISC").map_err(TreatAsWithdraw)?;
            a.med = Some(u32_at(v));
        }
        LOCAL_PREF => {
            expect_len(v, 4, "LOCAL_PREF").map_err(TreatAsWithdraw)?;
            a.local_pref = Some(u32_at(v));
        }
        ATOMIC_AGGREGATE => {
            expect_len(v, 0, "ATOMIC_AGGREGATE").map_err(Discard)?;
            a.atomic_aggregate = true;
        }
        AGGREGATOR => {
            let n = if four { 8 } else { 6 };
            expect_len(v, n, "AGGREGATOR").map_err(Discard)?;
            let asn = if four {
                u32_at(v)
            } else {
                u16::from_be_bytes([v[0], v[1]]) as u32
            };
            let ip = &v[n - 4..];
            a.aggregator = Some((asn, Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])));
        }
        COMMUNITIES => {
            if v.is_empty() || !v.len().is_multiple_of(4) {
                return Err(TreatAsWithdraw(format!("COMMUNITIES of {} bytes", v.len())));
            }
            a.communities = v.chunks_exact(4).map(u32_at).collect();
        }
        ORIGINATOR_ID => {
            expect_len(v, 4, "ORIGINATOR_ID").map_err(TreatAsWithdraw)?;
            a.originator_id = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3]));
        }
        CLUSTER_LIST => {
            if v.is_empty() || !v.len().is_multiple_of(4) {
                return Err(TreatAsWithdraw(format!(
                    "CLUSTER_LIST of {} bytes",
                    v.len()
                )));
            }
            a.cluster_list = v
                .chunks_exact(4)
                .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                .collect();
        }
        // A broken MP attribute leaves the NLRI unknown: nothing to withdraw precisely, so the
        // session resets (RFC 7606 §7.3).
        MP_REACH_NLRI => a.mp_reach = Some(decode_mp_reach(v).map_err(mp_reset)?),
        MP_UNREACH_NLRI => a.mp_unreach = Some(decode_mp_unreach(v).map_err(mp_reset)?),
        // A malformed AS4 attribute is dropped (RFC 6793 §6).
        AS4_PATH => a.as4_path = Some(decode_path(v, true).map_err(Discard)?),
        AS4_AGGREGATOR => {
            expect_len(v, 8, "AS4_AGGREGATOR").map_err(Discard)?;
            a.as4_aggregator = Some((u32_at(v), Ipv4Addr::new(v[4], v[5], v[6], v[7])));
        }
        _ if well_known || flags & FLAG_OPTIONAL == 0 => {
            return Err(Reset(DecodeError::new(
                UPDATE_MESSAGE_ERROR,
                UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                Vec::new(),
                format!("unrecognized well-known attribute {code}"),
            )))
        }
        _ if flags & FLAG_TRANSITIVE != 0 => {
            a.unknown.push((flags | FLAG_PARTIAL, code, v.to_vec()))
        }
        _ => {}
    }
    Ok(())
}

/// Reads the path attribute field of an UPDATE.
pub fn decode(mut buf: &[u8], four: bool) -> Result<Decoded, DecodeError> {
    let mut d = Decoded::default();
    let mut seen = [false; 256];
    while !buf.is_empty() {
        if buf.len() < 3 {
            d.withdraw_reason = Some("truncated attribute header".into());
            break;
        }
        let (flags, code) = (buf[0], buf[1]);
        let (len, hdr) = if flags & FLAG_EXTENDED != 0 {
            if buf.len() < 4 {
                d.withdraw_reason = Some("truncated attribute header".into());
                break;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        } else {
            (buf[2] as usize, 3)
        };
        let Some(v) = buf.get(hdr..hdr + len) else {
            // The attribute runs past the field: nothing after it can be trusted (RFC 7606 §4).
            d.withdraw_reason = Some(format!("attribute {code} overruns the attribute field"));
            break;
        };
        buf = &buf[hdr + len..];
        if seen[code as usize] {
            if code == MP_REACH_NLRI || code == MP_UNREACH_NLRI {
                return Err(DecodeError::new(
                    UPDATE_MESSAGE_ERROR,
                    MALFORMED_ATTRIBUTE_LIST,
                    Vec::new(),
                    format!("attribute {code} appears twice"),
                ));
            }
            d.discarded
                .push((code, "repeated; the first one is kept".into()));
            continue;
        }
        seen[code as usize] = true;
        match apply(&mut d.attrs, flags, code, v, four) {
            Ok(()) => {}
            Err(AttrProblem::TreatAsWithdraw(why)) => {
                d.withdraw_reason.get_or_insert(why);
            }
            Err(AttrProblem::Discard(why)) => d.discarded.push((code, why)),
            Err(AttrProblem::Reset(e)) => return Err(e),
        }
    }
    Ok(d)
}

fn put(out: &mut Vec<u8>, flags: u8, code: u8, v: &[u8]) {
    if v.len() > 255 {
        out.extend_from_slice(&[flags | FLAG_EXTENDED, code]);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[flags, code, v.len() as u8]);
    }
    out.extend_from_slice(v);
}

/// Writes the attributes in type order.
pub fn encode(a: &Attributes, four: bool, out: &mut Vec<u8>) {
    const WK: u8 = FLAG_TRANSITIVE;
    const OPT: u8 = FLAG_OPTIONAL;
    const OPT_T: u8 = FLAG_OPTIONAL | FLAG_TRANSITIVE;
    if let Some(o) = a.origin {
        put(out, WK, ORIGIN, &[o as u8]);
    }
    if let Some(p) = &a.as_path {
        let mut v = Vec::new();
        encode_path(p, four, &mut v);
        put(out, WK, AS_PATH, &v);
    }
    if let Some(nh) = a.next_hop {
        put(out, WK, NEXT_HOP, &nh.octets());
    }
    if let Some(m) = a.med {
        put(out, OPT, MED, &m.to_be_bytes());
    }
    if let Some(l) = a.local_pref {
        put(out, WK, LOCAL_PREF, &l.to_be_bytes());
    }
    if a.atomic_aggregate {
        put(out, WK, ATOMIC_AGGREGATE, &[]);
    }
    if let Some((asn, ip)) = a.aggregator {
        let mut v = if four {
            asn.to_be_bytes().to_vec()
        } else {
            u16::try_from(asn)
                .unwrap_or(crate::open::AS_TRANS)
                .to_be_bytes()
                .to_vec()
        };
        v.extend_from_slice(&ip.octets());
        put(out, OPT_T, AGGREGATOR, &v);
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        put(out, OPT_T, COMMUNITIES, &v);
    }
    if let Some(o) = a.originator_id {
        put(out, OPT, ORIGINATOR_ID, &o.octets());
    }
    if !a.cluster_list.is_empty() {
        let v: Vec<u8> = a.cluster_list.iter().flat_map(|c| c.octets()).collect();
        put(out, OPT, CLUSTER_LIST, &v);
    }
    if let Some(r) = &a.mp_reach {
        let mut v = Vec::new();
        match r {
            MpReach::V4 { next_hop, nlri } => {
                v.extend_from_slice(&AFI_IPV4.to_be_bytes());
                v.extend_from_slice(&[1, 4]);
                v.extend_from_slice(&next_hop.octets());
                v.push(0);
                nlri.iter().for_each(|p| prefix::encode_v4(p, &mut v));
            }
            MpReach::V6 { next_hop, nlri } => {
                v.extend_from_slice(&AFI_IPV6.to_be_bytes());
                v.push(1);
                let nh: Vec<u8> = next_hop
                    .iter()
                    .flat_map(|a| match a {
                        IpAddr::V6(x) => x.octets().to_vec(),
                        IpAddr::V4(x) => x.to_ipv6_mapped().octets().to_vec(),
                    })
                    .collect();
                v.push(nh.len() as u8);
                v.extend_from_slice(&nh);
                v.push(0);
                nlri.iter().for_each(|p| prefix::encode_v6(p, &mut v));
            }
        }
        put(out, OPT, MP_REACH_NLRI, &v);
    }
    if let Some(u) = &a.mp_unreach {
        let mut v = Vec::new();
        match u {
            MpUnreach::V4(ps) => {
                v.extend_from_slice(&AFI_IPV4.to_be_bytes());
                v.push(1);
                ps.iter().for_each(|p| prefix::encode_v4(p, &mut v));
            }
            MpUnreach::V6(ps) => {
                v.extend_from_slice(&AFI_IPV6.to_be_bytes());
                v.push(1);
                ps.iter().for_each(|p| prefix::encode_v6(p, &mut v));
            }
        }
        put(out, OPT, MP_UNREACH_NLRI, &v);
    }
    if let Some(p) = &a.as4_path {
        let mut v = Vec::new();
        encode_path(p, true, &mut v);
        put(out, OPT_T, AS4_PATH, &v);
    }
    if let Some((asn, ip)) = a.as4_aggregator {
        let mut v = asn.to_be_bytes().to_vec();
        v.extend_from_slice(&ip.octets());
        put(out, OPT_T, AS4_AGGREGATOR, &v);
    }
    for (flags, code, v) in &a.unknown {
        put(out, *flags & !FLAG_EXTENDED, *code, v);
    }
}
