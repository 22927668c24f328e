//! Attach points. Each file is one hook backend; all of them call into [`crate::capture`].
pub mod tracepoint;
