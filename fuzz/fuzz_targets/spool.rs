//! The agent's spool reader: a segment's bytes walked record by record as its recovery does
//! (sealed `CSP2` records opened with a fixed key, so that the seeds open and their mutations
//! are refused; clear `CSP1` records parsed), and the same bytes read as a file of `rejected/`.
#![no_main]

use std::sync::LazyLock;

use custos_fuzz::{
    record::{self, Found, Place},
    seal::SpoolKey,
};
use custos_proto::wire;
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<SpoolKey> = LazyLock::new(custos_fuzz::spool_key);

fuzz_target!(|data: &[u8]| {
    for (_, found) in custos_fuzz::walk_segment(data, &KEY) {
        if let Found::Record { batch, .. } = found {
            let _ = wire::unpack_events(&batch.header, &batch.events, wire::DEFAULT_MAX_BATCH_RAW);
        }
    }
    let _ = record::read(data, &KEY, Place::Rejected);
});
