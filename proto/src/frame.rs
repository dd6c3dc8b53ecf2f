//! What a member's `Watch` stream sends: a message made for this watcher, or one encoded once
//! and shared by every watcher.
//!
//! A lease change goes to every watcher, and each used to cost a member a deep copy of the
//! event (its strings and backend map), its encoding and the copy's freeing, once per watcher.
//! An event that is the same for everyone is now encoded when it is applied, and each watcher's
//! frame is that buffer's reference count. On the wire nothing changes: clients decode a
//! `WatchResponse` either way.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::v1::{watch_response, LeaseEvent, WatchResponse};

/// One `WatchResponse` as a member's stream yields it.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchFrame {
    Message(WatchResponse),
    /// A `WatchResponse` already encoded (see [`WatchFrame::event`]).
    Encoded(Bytes),
}

impl WatchFrame {
    /// `ev` as a whole `WatchResponse` (its `event` field), encoded once to be shared.
    pub fn event(ev: &LeaseEvent) -> Bytes {
        const EVENT_FIELD: u32 = 2;
        let mut buf = Vec::with_capacity(ev.encoded_len() + 8);
        prost::encoding::message::encode(EVENT_FIELD, ev, &mut buf);
        Bytes::from(buf)
    }

    /// The message, decoding a shared frame (what a client would see).
    pub fn into_message(self) -> Result<WatchResponse, DecodeError> {
        match self {
            WatchFrame::Message(m) => Ok(m),
            WatchFrame::Encoded(b) => WatchResponse::decode(b),
        }
    }
}

impl Default for WatchFrame {
    fn default() -> Self {
        WatchFrame::Message(WatchResponse::default())
    }
}

impl From<WatchResponse> for WatchFrame {
    fn from(m: WatchResponse) -> Self {
        WatchFrame::Message(m)
    }
}

impl From<watch_response::Msg> for WatchFrame {
    fn from(m: watch_response::Msg) -> Self {
        WatchFrame::Message(WatchResponse { msg: Some(m) })
    }
}

impl Message for WatchFrame {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            WatchFrame::Message(m) => m.encode_raw(buf),
            WatchFrame::Encoded(b) => buf.put_slice(b),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Decoding is for completeness (servers only encode): a shared frame becomes a message
        // before anything is merged into it.
        let mut m = match std::mem::take(self) {
            WatchFrame::Message(m) => m,
            WatchFrame::Encoded(b) => WatchResponse::decode(b)?,
        };
        let merged = m.merge_field(tag, wire_type, buf, ctx);
        *self = WatchFrame::Message(m);
        merged
    }

    fn encoded_len(&self) -> usize {
        match self {
            WatchFrame::Message(m) => m.encoded_len(),
            WatchFrame::Encoded(b) => b.len(),
        }
    }

    fn clear(&mut self) {
        *self = WatchFrame::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{EventKind, Lease};

    fn event() -> LeaseEvent {
        LeaseEvent {
            revision: 42,
            kind: EventKind::Put as i32,
            lease: Some(Lease {
                node: "node-a".into(),
                subnet: "10.244.3.0/24".into(),
                public_ip: "192.0.2.7".into(),
                backend_data: [("vtep_mac".to_string(), "02:00:00:00:00:07".to_string())].into(),
                expires_at_ms: 1_700_000_000_000,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_shared_frame_is_the_bytes_of_the_same_message() {
        let ev = event();
        let msg = WatchResponse {
            msg: Some(watch_response::Msg::Event(Box::new(ev.clone()))),
        };
        let shared = WatchFrame::Encoded(WatchFrame::event(&ev));
        assert_eq!(shared.encode_to_vec(), msg.encode_to_vec());
        assert_eq!(shared.encoded_len(), msg.encoded_len());
        assert_eq!(shared.clone().into_message().unwrap(), msg);
        // What a client decodes from the frame is the event.
        let got = WatchResponse::decode(shared.encode_to_vec().as_slice()).unwrap();
        assert_eq!(got, msg);
    }

    #[test]
    fn a_frame_decodes_as_a_message() {
        let msg = WatchResponse {
            msg: Some(watch_response::Msg::Event(Box::new(event()))),
        };
        let bytes = msg.encode_to_vec();
        let mut frame = WatchFrame::Encoded(Bytes::from_static(b"\x1a\x02\x08\x07"));
        frame.clear();
        assert_eq!(frame, WatchFrame::default());
        let decoded = WatchFrame::decode(bytes.as_slice()).unwrap();
        assert_eq!(decoded, WatchFrame::from(msg));
        assert!(WatchFrame::decode(&b"\x12\x05\x08"[..]).is_err());
    }
}
