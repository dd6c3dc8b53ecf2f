//! OPEN (RFC 4271 §4.2) and the capabilities twill speaks: multiprotocol (RFC 4760), route
//! refresh (RFC 2918), graceful restart (RFC 4724) and 4-octet AS numbers (RFC 6793).

use std::net::Ipv4Addr;

use zerocopy::byteorder::{BigEndian, U16};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::notification::*;

/// The 2-octet stand-in for a 4-octet AS number (RFC 6793).
pub const AS_TRANS: u16 = 23456;
pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
pub const SAFI_UNICAST: u8 = 1;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct OpenFixed {
    version: u8,
    my_as: U16<BigEndian>,
    hold_time: U16<BigEndian>,
    bgp_id: [u8; 4],
    opt_len: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The R bit: the sender has restarted.
    pub restarting: bool,
    /// Seconds the peer should keep our routes while we come back.
    pub time: u16,
    /// Families, and whether forwarding state was kept across the restart.
    pub families: Vec<(u16, u8, bool)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    Multiprotocol { afi: u16, safi: u8 },
    RouteRefresh,
    GracefulRestart(GracefulRestart),
    FourOctetAs(u32),
    Unknown { code: u8, data: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// The full AS number (from the 4-octet capability when present).
    pub asn: u32,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

fn open_err(subcode: u8, data: impl Into<Vec<u8>>, reason: impl Into<String>) -> DecodeError {
    DecodeError::new(OPEN_MESSAGE_ERROR, subcode, data, reason)
}

fn decode_capability(code: u8, v: &[u8]) -> Result<Capability, DecodeError> {
    let bad = |what: &str| {
        open_err(
            0,
            Vec::new(),
            format!("capability {code}: {what} ({} bytes)", v.len()),
        )
    };
    Ok(match code {
        1 => {
            if v.len() != 4 {
                return Err(bad("multiprotocol needs 4 bytes"));
            }
            Capability::Multiprotocol {
                afi: u16::from_be_bytes([v[0], v[1]]),
                safi: v[3],
            }
        }
        2 => Capability::RouteRefresh,
        64 => {
            if v.len() < 2 || !(v.len() - 2).is_multiple_of(4) {
                return Err(bad("graceful restart length"));
            }
            let head = u16::from_be_bytes([v[0], v[1]]);
            Capability::GracefulRestart(GracefulRestart {
                restarting: head & 0x8000 != 0,
                time: head & 0x0fff,
                families: v[2..]
                    .chunks_exact(4)
                    .map(|c| (u16::from_be_bytes([c[0], c[1]]), c[2], c[3] & 0x80 != 0))
                    .collect(),
            })
        }
        65 => {
            if v.len() != 4 {
                return Err(bad("4-octet AS needs 4 bytes"));
            }
            Capability::FourOctetAs(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
        }
        _ => Capability::Unknown {
            code,
            data: v.to_vec(),
        },
    })
}

impl Open {
    pub fn four_octet_as(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::FourOctetAs(_)))
    }

    /// Decodes an OPEN body (after the 19-byte header) and checks what RFC 4271 §6.2 requires.
    pub fn decode(body: &[u8]) -> Result<Open, DecodeError> {
        let (fixed, rest) = OpenFixed::ref_from_prefix(body).map_err(|_| {
            DecodeError::new(
                MESSAGE_HEADER_ERROR,
                BAD_MESSAGE_LENGTH,
                ((19 + body.len()) as u16).to_be_bytes(),
                "OPEN shorter than its fixed part",
            )
        })?;
        if fixed.version != 4 {
            return Err(open_err(
                UNSUPPORTED_VERSION,
                vec![0, 4],
                format!("BGP version {}", fixed.version),
            ));
        }
        let hold_time = fixed.hold_time.get();
        if hold_time == 1 || hold_time == 2 {
            return Err(open_err(
                UNACCEPTABLE_HOLD_TIME,
                Vec::new(),
                format!("hold time {hold_time} s"),
            ));
        }
        let bgp_id = Ipv4Addr::from(fixed.bgp_id);
        if bgp_id.is_unspecified() {
            return Err(open_err(
                BAD_BGP_IDENTIFIER,
                Vec::new(),
                "BGP identifier 0.0.0.0",
            ));
        }
        let params = rest.get(..fixed.opt_len as usize).ok_or_else(|| {
            DecodeError::new(
                MESSAGE_HEADER_ERROR,
                BAD_MESSAGE_LENGTH,
                ((19 + body.len()) as u16).to_be_bytes(),
                "optional parameters run past the message",
            )
        })?;
        if rest.len() != fixed.opt_len as usize {
            return Err(open_err(
                0,
                Vec::new(),
                "bytes after the optional parameters",
            ));
        }
        let mut capabilities = Vec::new();
        let mut p = params;
        while !p.is_empty() {
            let (&kind, r) = p
                .split_first()
                .ok_or_else(|| open_err(0, Vec::new(), "parameter"))?;
            let (&len, r) = r
                .split_first()
                .ok_or_else(|| open_err(0, Vec::new(), "truncated optional parameter"))?;
            let v = r
                .get(..len as usize)
                .ok_or_else(|| open_err(0, Vec::new(), "truncated optional parameter"))?;
            p = &r[len as usize..];
            if kind != 2 {
                return Err(open_err(
                    UNSUPPORTED_OPTIONAL_PARAMETER,
                    Vec::new(),
                    format!("optional parameter type {kind}"),
                ));
            }
            let mut c = v;
            while !c.is_empty() {
                if c.len() < 2 || c.len() < 2 + c[1] as usize {
                    return Err(open_err(0, Vec::new(), "truncated capability"));
                }
                let (code, clen) = (c[0], c[1] as usize);
                capabilities.push(decode_capability(code, &c[2..2 + clen])?);
                c = &c[2 + clen..];
            }
        }
        let my_as = fixed.my_as.get();
        let asn = capabilities
            .iter()
            .find_map(|c| match c {
                Capability::FourOctetAs(a) => Some(*a),
                _ => None,
            })
            .unwrap_or(my_as as u32);
        if asn == 0 {
            return Err(open_err(BAD_PEER_AS, Vec::new(), "AS 0"));
        }
        Ok(Open {
            asn,
            hold_time,
            bgp_id,
            capabilities,
        })
    }

    /// The OPEN body; the AS field carries AS_TRANS when the AS needs 4 octets.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut caps = Vec::new();
        for c in &self.capabilities {
            let (code, v): (u8, Vec<u8>) = match c {
                Capability::Multiprotocol { afi, safi } => {
                    let a = afi.to_be_bytes();
                    (1, vec![a[0], a[1], 0, *safi])
                }
                Capability::RouteRefresh => (2, Vec::new()),
                Capability::GracefulRestart(g) => {
                    let head = (u16::from(g.restarting) << 15) | (g.time & 0x0fff);
                    let mut v = head.to_be_bytes().to_vec();
                    for (afi, safi, fwd) in &g.families {
                        v.extend_from_slice(&afi.to_be_bytes());
                        v.push(*safi);
                        v.push(if *fwd { 0x80 } else { 0 });
                    }
                    (64, v)
                }
                Capability::FourOctetAs(a) => (65, a.to_be_bytes().to_vec()),
                Capability::Unknown { code, data } => (*code, data.clone()),
            };
            caps.push(code);
            caps.push(v.len() as u8);
            caps.extend_from_slice(&v);
        }
        // One optional parameter per capability keeps every parameter under 256 bytes.
        let params_len: usize = self.capabilities.iter().map(|_| 2).sum::<usize>() + caps.len();
        let fixed = OpenFixed {
            version: 4,
            my_as: U16::new(u16::try_from(self.asn).unwrap_or(AS_TRANS)),
            hold_time: U16::new(self.hold_time),
            bgp_id: self.bgp_id.octets(),
            opt_len: params_len as u8,
        };
        out.extend_from_slice(fixed.as_bytes());
        let mut c = caps.as_slice();
        while !c.is_empty() {
            let len = 2 + c[1] as usize;
            out.push(2);
            out.push(len as u8);
            out.extend_from_slice(&c[..len]);
            c = &c[len..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Open {
        Open {
            asn: 4_200_000_001,
            hold_time: 90,
            bgp_id: "192.0.2.1".parse().unwrap(),
            capabilities: vec![
                Capability::Multiprotocol {
                    afi: AFI_IPV4,
                    safi: SAFI_UNICAST,
                },
                Capability::Multiprotocol {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                },
                Capability::RouteRefresh,
                Capability::GracefulRestart(GracefulRestart {
                    restarting: true,
                    time: 120,
                    families: vec![(AFI_IPV4, SAFI_UNICAST, true)],
                }),
                Capability::FourOctetAs(4_200_000_001),
            ],
        }
    }

    #[test]
    fn open_bytes_are_exact_and_round_trip() {
        let mut b = Vec::new();
        sample().encode(&mut b);
        let want: Vec<u8> = vec![
            4, 0x5b, 0xa0, 0, 90, 192, 0, 2, 1, 38, // version, AS_TRANS, hold, id, opt len
            2, 6, 1, 4, 0, 1, 0, 1, // MP IPv4 unicast
            2, 6, 1, 4, 0, 2, 0, 1, // MP IPv6 unicast
            2, 2, 2, 0, // route refresh
            2, 8, 64, 6, 0x80, 120, 0, 1, 1, 0x80, // graceful restart
            2, 6, 65, 4, 0xfa, 0x56, 0xea, 0x01, // 4-octet AS 4200000001
        ];
        assert_eq!(b, want);
        assert_eq!(Open::decode(&b).unwrap(), sample());
    }

    #[test]
    fn bad_opens_map_to_their_notifications() {
        let mut b = Vec::new();
        sample().encode(&mut b);
        let mut v3 = b.clone();
        v3[0] = 3;
        let e = Open::decode(&v3).unwrap_err();
        assert_eq!((e.notification.code, e.notification.subcode), (2, 1));
        assert_eq!(
            e.notification.data,
            [0, 4],
            "tells the peer the version we speak"
        );
        let mut hold = b.clone();
        hold[3..5].copy_from_slice(&2u16.to_be_bytes());
        assert_eq!(Open::decode(&hold).unwrap_err().notification.subcode, 6);
        let mut id = b.clone();
        id[5..9].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(Open::decode(&id).unwrap_err().notification.subcode, 3);
        let mut param = b.clone();
        param[10] = 1; // an optional parameter that is not "capabilities"
        assert_eq!(Open::decode(&param).unwrap_err().notification.subcode, 4);
        assert!(Open::decode(&b[..5]).is_err());
        assert!(Open::decode(&b[..b.len() - 1]).is_err());
    }
}
