//! Framing: the 19-byte header every BGP message starts with (marker, length, type), read
//! through zerocopy, and the message types.

use zerocopy::byteorder::{BigEndian, U16};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::notification::*;
use crate::open::Open;
use crate::update::Update;

pub const HEADER_LEN: usize = 19;
/// RFC 4271's limit; extended messages (RFC 8654) are not negotiated.
pub const MAX_LEN: usize = 4096;

pub const OPEN: u8 = 1;
pub const UPDATE: u8 = 2;
pub const NOTIFICATION: u8 = 3;
pub const KEEPALIVE: u8 = 4;
pub const ROUTE_REFRESH: u8 = 5;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Header {
    marker: [u8; 16],
    length: U16<BigEndian>,
    kind: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Box<Update>),
    Notification(Notification),
    Keepalive,
    RouteRefresh { afi: u16, safi: u8 },
}

fn header_err(subcode: u8, data: impl Into<Vec<u8>>, reason: impl Into<String>) -> DecodeError {
    DecodeError::new(MESSAGE_HEADER_ERROR, subcode, data, reason)
}

/// Decodes one message from the front of `buf`: `Ok(None)` until a whole message is there.
/// `four`: 4-octet AS numbers were negotiated (it changes how AS_PATH is read).
pub fn decode(buf: &[u8], four: bool) -> Result<Option<(Message, usize)>, DecodeError> {
    let Ok((h, _)) = Header::ref_from_prefix(buf) else {
        return Ok(None);
    };
    if h.marker != [0xff; 16] {
        return Err(header_err(
            CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
            "marker is not all ones",
        ));
    }
    let len = h.length.get() as usize;
    let bad_len = || {
        header_err(
            BAD_MESSAGE_LENGTH,
            h.length.get().to_be_bytes(),
            format!("length {len} for type {}", h.kind),
        )
    };
    if !(HEADER_LEN..=MAX_LEN).contains(&len) {
        return Err(bad_len());
    }
    let min = match h.kind {
        OPEN => 29,
        UPDATE => 23,
        NOTIFICATION => 21,
        KEEPALIVE => 19,
        ROUTE_REFRESH => 23,
        k => {
            return Err(header_err(
                BAD_MESSAGE_TYPE,
                vec![k],
                format!("message type {k}"),
            ))
        }
    };
    if len < min || (h.kind == KEEPALIVE && len != 19) {
        return Err(bad_len());
    }
    let Some(body) = buf.get(HEADER_LEN..len) else {
        return Ok(None);
    };
    let msg = match h.kind {
        OPEN => Message::Open(Open::decode(body)?),
        UPDATE => Message::Update(Box::new(Update::decode(body, four)?)),
        NOTIFICATION => {
            Message::Notification(Notification::new(body[0], body[1], body[2..].to_vec()))
        }
        KEEPALIVE => Message::Keepalive,
        _ => {
            if len != 23 {
                return Err(DecodeError::new(
                    ROUTE_REFRESH_ERROR,
                    INVALID_MESSAGE_LENGTH,
                    buf[..len].to_vec(),
                    "ROUTE-REFRESH length",
                ));
            }
            Message::RouteRefresh {
                afi: u16::from_be_bytes([body[0], body[1]]),
                safi: body[3],
            }
        }
    };
    Ok(Some((msg, len)))
}

pub fn encode(m: &Message, four: bool) -> Vec<u8> {
    let mut body = Vec::new();
    let kind = match m {
        Message::Open(o) => {
            o.encode(&mut body);
            OPEN
        }
        Message::Update(u) => {
            u.encode(four, &mut body);
            UPDATE
        }
        Message::Notification(n) => {
            body.extend_from_slice(&[n.code, n.subcode]);
            body.extend_from_slice(&n.data);
            NOTIFICATION
        }
        Message::Keepalive => KEEPALIVE,
        Message::RouteRefresh { afi, safi } => {
            body.extend_from_slice(&afi.to_be_bytes());
            body.extend_from_slice(&[0, *safi]);
            ROUTE_REFRESH
        }
    };
    let h = Header {
        marker: [0xff; 16],
        length: U16::new((HEADER_LEN + body.len()) as u16),
        kind,
    };
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}
