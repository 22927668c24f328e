//! Benchmark workloads and load generators for `cargo xtask bench` (see xtask/src/bench/).
//!
//! Each binary under src/bin is one workload or generator; this library holds what they share.
