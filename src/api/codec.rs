//! The JobService's protobuf codec: prost's, but a message that does not
//! decode (malformed protobuf, invalid UTF-8 in a string field) is
//! INVALID_ARGUMENT naming what was wrong, where prost's codec answers
//! INTERNAL. Bad bytes are the sender's mistake, not the server's.
//!
//! build.rs names it for the generated code, so every method's request is
//! read through it; WatchJob's own route ([`super::routes`]) uses it too.
//! (The generated client shares it: a response that does not decode is
//! INVALID_ARGUMENT there as well.)

use crate::domain::FieldViolation;
use tonic::{
    Code, Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// prost's codec with decoding errors answered INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        ProtoCodec(ProstCodec::default())
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(self.0.decoder())
    }
}

/// prost's decoder, its errors turned into INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(malformed)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// prost's decoding error (INTERNAL, its message saying where the bytes
/// went wrong) as INVALID_ARGUMENT with that message.
fn malformed(status: Status) -> Status {
    if status.code() != Code::Internal {
        return status;
    }
    super::status::invalid_argument(&[FieldViolation::new(
        "message",
        format!("is not a valid protobuf message ({})", status.message()),
    )])
}
