//! The gRPC codec of every twill service: prost's encoding, and decoding from the received
//! message as one byte slice.
//!
//! tonic hands a decoder its receive buffer behind a `Buf` that bounds every step, and prost
//! advances through that buffer field by field: with many watchers on one machine (the scale
//! bench's simulated agents) the advancing, the varint reads through it and a copy were 43% of
//! the watchers' CPU in a profile. The message is already contiguous in that buffer, so it is
//! decoded from a slice of it, whose steps are a pointer and a length: 31% in the same profile.

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// What the generated clients and servers use in place of `tonic_prost::ProstCodec`.
#[derive(Debug, Clone)]
pub struct SliceCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        SliceCodec(PhantomData)
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(PhantomData)
    }
}

/// Decodes `U` from the message's bytes as one slice.
#[derive(Debug, Clone)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_from(buf).map(Some)
    }
}

/// Decodes one whole message from `buf` and consumes it: from its first chunk when that holds
/// the whole message (tonic's buffer is one piece), else from the bytes gathered first.
fn decode_from<U: Message + Default>(buf: &mut impl Buf) -> Result<U, Status> {
    let len = buf.remaining();
    let decoded = if buf.chunk().len() >= len {
        let m = U::decode(&buf.chunk()[..len]);
        buf.advance(len);
        m
    } else {
        U::decode(buf.copy_to_bytes(len))
    };
    // As tonic's own codec: a message that does not parse is INTERNAL (gRPC's status codes).
    decoded.map_err(|e| Status::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{watch_response, EventKind, Lease, LeaseEvent, WatchResponse};
    use prost::bytes::{Bytes, BytesMut};

    fn event() -> WatchResponse {
        WatchResponse {
            msg: Some(watch_response::Msg::Event(Box::new(LeaseEvent {
                revision: 300,
                kind: EventKind::Put as i32,
                lease: Some(Lease {
                    node: "node-a".into(),
                    subnet: "10.1.2.0/24".into(),
                    backend_data: [("vtep_mac".to_string(), "aa:bb:cc:dd:ee:ff".to_string())]
                        .into(),
                    mod_revision: 300,
                    ..Default::default()
                }),
                ..Default::default()
            }))),
        }
    }

    #[test]
    fn a_message_in_one_piece_decodes_and_is_consumed() {
        let mut buf = BytesMut::from(&event().encode_to_vec()[..]);
        let got: WatchResponse = decode_from(&mut buf).expect("decodes");
        assert_eq!(got, event());
        assert_eq!(buf.remaining(), 0);
    }

    #[test]
    fn a_message_in_pieces_decodes_the_same() {
        let bytes = event().encode_to_vec();
        let (a, b) = bytes.split_at(7);
        let mut buf = Bytes::copy_from_slice(a).chain(Bytes::copy_from_slice(b));
        let got: WatchResponse = decode_from(&mut buf).expect("decodes");
        assert_eq!(got, event());
        assert_eq!(buf.remaining(), 0);
    }

    #[test]
    fn bytes_that_do_not_parse_are_an_internal_error_not_a_panic() {
        // A field header announcing 100 bytes of a submessage that are not there.
        let mut buf = BytesMut::from(&[0x12u8, 100, 1, 2][..]);
        let err = decode_from::<WatchResponse>(&mut buf).expect_err("truncated");
        assert_eq!(err.code(), tonic::Code::Internal);
    }
}
