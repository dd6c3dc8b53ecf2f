//! UPDATE (RFC 4271 §4.3): withdrawn IPv4 routes, path attributes, IPv4 NLRI; IPv6 and other
//! families travel in MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760).

use ipnet::{Ipv4Net, Ipv6Net};

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
