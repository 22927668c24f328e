//! Reading one length-prefixed frame from a QUIC stream, alike for the agent (answers), the
//! collector (requests) and the load generator: the prefix, the limit, the body, the decoding,
//! and a reset stream's code kept for the reason the peer gave
//! ([`custos_proto::wire::ErrorCode::from_stream_code`]).
use custos_proto::wire::{self, Frame, WireError};
use quinn::RecvStream;

/// Why no frame was read.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The peer reset the stream with this code ([`ErrorCode::from_stream_code`] gives the
    /// reason).
    #[error("stream reset with code {0}")]
    Reset(u64),
    /// The stream ended or the connection failed.
    #[error("{0}")]
    Stream(String),
    /// The frame is over the limit or does not decode.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Reads one frame of at most `limit` bytes.
pub async fn read_frame(recv: &mut RecvStream, limit: usize) -> Result<Frame, ReadFrameError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(stream_error)?;
    let len = wire::frame_len(prefix, limit)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(stream_error)?;
    Ok(wire::decode_frame(&body)?)
}

fn stream_error(err: quinn::ReadExactError) -> ReadFrameError {
    if let quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code)) = &err {
        return ReadFrameError::Reset(code.into_inner());
    }
    ReadFrameError::Stream(err.to_string())
}
