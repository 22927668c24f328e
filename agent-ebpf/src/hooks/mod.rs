//! Attach points. Each file is one hook backend; all of them call into [`crate::capture`]. The
//! agent picks one per capture at start (docs/hooks.md).
pub mod fentry;
pub mod tracepoint;
