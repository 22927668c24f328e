//! The frame decoder, as the collector and the agent run it on a stream's bytes: the 4-byte
//! length prefix, the MessagePack frame, and for a batch frame its events, unpacked and checked
//! against its header. Input: a frame body (the seeds are frames of every kind).
#![no_main]

use custos_proto::wire::{self, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<4>() {
        let _ = wire::frame_len(*prefix, wire::DEFAULT_MAX_FRAME);
    }
    if let Ok(Frame::Batch(batch)) = wire::decode_frame(data) {
        if let Some(link) = batch.header.link() {
            let _ = link.hash();
        }
        let _ = wire::unpack_events(&batch.header, &batch.events, wire::DEFAULT_MAX_BATCH_RAW);
    }
});
