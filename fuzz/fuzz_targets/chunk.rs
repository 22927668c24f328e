//! The store's chunk reader: a recording's bytes walked chunk by chunk by the chain reader,
//! decrypted with a fixed store key and their events decoded (first input byte even), or
//! checked with public material only (odd), as `custos verify --offline` does.
#![no_main]

use std::sync::LazyLock;

use custos_fuzz::keys::KeyRing;
use libfuzzer_sys::fuzz_target;

static KEYS: LazyLock<KeyRing> = LazyLock::new(custos_fuzz::key_ring);

fuzz_target!(|data: &[u8]| {
    let Some((mode, bytes)) = data.split_first() else {
        return;
    };
    let keys = (mode % 2 == 0).then_some(&*KEYS);
    custos_fuzz::walk_recording(bytes, keys);
});
