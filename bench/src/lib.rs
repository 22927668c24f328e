//! Benchmark workloads and load generators for `cargo xtask bench` (see xtask/src/bench/).
//!
//! Each binary under src/bin is one workload or generator; this library holds what they share.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]

/// A small deterministic pseudo-random generator (xorshift64*): workloads are the same bytes in
/// every run, without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}
