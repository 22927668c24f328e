//! The batch decoder: a batch body is zstd(MessagePack array of events). Input: the
//! MessagePack, which the target compresses, so that mutations reach the event decoder rather
//! than stop at zstd; the input is also fed to the decoder as a compressed body as is.
#![no_main]

use custos_proto::wire::{self, BatchHeader, BatchSeq, SpoolId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::decode_events(data, data.len() as u64 * 8, 1 << 20);
    let Ok(body) = zstd::bulk::compress(data, 1) else {
        return;
    };
    let Ok(events) = wire::decode_events(&body, data.len() as u64, wire::DEFAULT_MAX_BATCH_RAW)
    else {
        return;
    };
    // The header the events would have: checking them against it must not panic either.
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return;
    };
    let header = BatchHeader {
        spool: SpoolId("s".into()),
        seq: BatchSeq(1),
        host: first.host.clone(),
        boot_id: first.boot_id.clone(),
        session: first.session,
        first_seq: first.seq,
        last_seq: last.seq,
        events: events.len() as u32,
        first_time: first.time,
        last_time: last.time,
        raw_len: data.len() as u64,
        signed: None,
    };
    let _ = wire::check_batch(&header, &events);
    for event in &events {
        let _ = event.kind();
    }
});
