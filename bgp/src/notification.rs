//! NOTIFICATION messages and the error codes decode errors map to (RFC 4271 §4.5, §6).

use std::fmt;

pub const MESSAGE_HEADER_ERROR: u8 = 1;
pub const OPEN_MESSAGE_ERROR: u8 = 2;
pub const UPDATE_MESSAGE_ERROR: u8 = 3;
pub const HOLD_TIMER_EXPIRED: u8 = 4;
pub const FSM_ERROR: u8 = 5;
pub const CEASE: u8 = 6;
pub const ROUTE_REFRESH_ERROR: u8 = 7;
/// RFC 9687.
pub const SEND_HOLD_TIMER_EXPIRED: u8 = 8;

// Message Header Error subcodes.
pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
pub const BAD_MESSAGE_LENGTH: u8 = 2;
pub const BAD_MESSAGE_TYPE: u8 = 3;
// OPEN Message Error subcodes.
pub const UNSUPPORTED_VERSION: u8 = 1;
pub const BAD_PEER_AS: u8 = 2;
pub const BAD_BGP_IDENTIFIER: u8 = 3;
pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
// UPDATE Message Error subcodes.
pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
pub const INVALID_NETWORK_FIELD: u8 = 10;
// ROUTE-REFRESH Message Error subcode (RFC 7313).
pub const INVALID_MESSAGE_LENGTH: u8 = 1;

/// A NOTIFICATION: why a session is being closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Notification {
            code,
            subcode,
            data: data.into(),
        }
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = match self.code {
            MESSAGE_HEADER_ERROR => "message header error",
            OPEN_MESSAGE_ERROR => "OPEN message error",
            UPDATE_MESSAGE_ERROR => "UPDATE message error",
            HOLD_TIMER_EXPIRED => "hold timer expired",
            FSM_ERROR => "finite state machine error",
            CEASE => "cease",
            ROUTE_REFRESH_ERROR => "ROUTE-REFRESH message error",
            SEND_HOLD_TIMER_EXPIRED => "send hold timer expired",
            _ => "unknown error",
        };
        write!(f, "{code} ({}/{})", self.code, self.subcode)
    }
}

/// A message that cannot be accepted: the NOTIFICATION to send, and why, for the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{notification}: {reason}")]
pub struct DecodeError {
    pub notification: Notification,
    pub reason: String,
}

impl DecodeError {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>, reason: impl Into<String>) -> Self {
        DecodeError {
            notification: Notification::new(code, subcode, data),
            reason: reason.into(),
        }
    }
}
