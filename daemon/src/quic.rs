//! Reading one length-prefixed frame from a QUIC stream, alike for the agent (answers), the
//! collector (requests) and the load generator: the prefix, the limit, the body, the decoding,
//! and a reset stream's code kept for the reason the peer gave
//! ([`custos_proto::wire::ErrorCode::from_stream_code`]).
//!
//! The body is read as it arrives: its buffer grows with the bytes actually received (never
//! allocated at the announced length up front), and a reader may require progress: at least
//! [`MIN_PROGRESS`] bytes (or the rest of the frame) every `stall` period, or the read fails as
//! [`ReadFrameError::Stalled`].
use std::time::Duration;

use custos_proto::wire::{self, Frame, WireError};
use quinn::RecvStream;

/// Bytes a body must advance by in each stall period (or reach its end).
pub const MIN_PROGRESS: usize = 16 * 1024;

/// The most bytes taken from the stream at once.
const CHUNK: usize = 64 * 1024;

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
    /// The body stopped arriving: `got` of `of` bytes, less than [`MIN_PROGRESS`] within the
    /// stall period.
    #[error("stalled mid-frame after {got} of {of} bytes")]
    Stalled { got: usize, of: usize },
}

/// Reads one frame of at most `limit` bytes.
pub async fn read_frame(recv: &mut RecvStream, limit: usize) -> Result<Frame, ReadFrameError> {
    let len = read_prefix(recv, limit).await?;
    let body = read_body(recv, len, None).await?;
    Ok(wire::decode_frame(&body)?)
}

/// Reads a frame's length prefix; the length, within `limit`.
pub async fn read_prefix(recv: &mut RecvStream, limit: usize) -> Result<usize, ReadFrameError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(stream_error)?;
    Ok(wire::frame_len(prefix, limit)?)
}

/// Reads a body of `len` bytes as it arrives; with `stall`, fails when less than
/// [`MIN_PROGRESS`] bytes (or the rest) arrive within a stall period.
pub async fn read_body(
    recv: &mut RecvStream,
    len: usize,
    stall: Option<Duration>,
) -> Result<Vec<u8>, ReadFrameError> {
    let mut body: Vec<u8> = Vec::new();
    let deadline = |now: tokio::time::Instant| stall.map(|stall| now + stall);
    let mut window = (0usize, deadline(tokio::time::Instant::now()));
    while body.len() < len {
        let read = recv.read_chunk((len - body.len()).min(CHUNK), true);
        let chunk = match window.1 {
            Some(at) => match tokio::time::timeout_at(at, read).await {
                Ok(chunk) => chunk,
                Err(_) => {
                    return Err(ReadFrameError::Stalled {
                        got: body.len(),
                        of: len,
                    });
                }
            },
            None => read.await,
        };
        let bytes = match chunk {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                return Err(ReadFrameError::Stream(format!(
                    "stream ended after {} of {len} bytes",
                    body.len()
                )));
            }
            Err(quinn::ReadError::Reset(code)) => {
                return Err(ReadFrameError::Reset(code.into_inner()));
            }
            Err(err) => return Err(ReadFrameError::Stream(err.to_string())),
        };
        let needed = body.len() + bytes.len();
        if needed > body.capacity() {
            // Doubling, capped at the frame's length: amortised copies, no over-allocation.
            let capacity = (body.capacity() * 2).max(needed).min(len);
            body.reserve_exact(capacity - body.len());
        }
        body.extend_from_slice(&bytes);
        if body.len() - window.0 >= MIN_PROGRESS.min(len - window.0) {
            window = (body.len(), deadline(tokio::time::Instant::now()));
        }
    }
    Ok(body)
}

fn stream_error(err: quinn::ReadExactError) -> ReadFrameError {
    if let quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code)) = &err {
        return ReadFrameError::Reset(code.into_inner());
    }
    ReadFrameError::Stream(err.to_string())
}
