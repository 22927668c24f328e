//! Custos's event model and wire protocol, shared by the agent and the collector.
//!
//! One definition of an event ([`event::Event`]): the agent's `--stdout` JSON, its spool, the
//! wire, the collector's store and the exports are all renderings of it. Human-readable formats
//! (JSON) get RFC 3339 times and terminal bytes as strings; binary formats (MessagePack) get
//! integers and raw bytes.
//!
//! This crate does no I/O: no sockets, no files, no async runtime.
pub mod api;
pub mod bytes;
pub mod event;
pub mod ids;
pub mod screen;
pub mod time;
pub mod wire;

pub use bytes::ByteString;
pub use event::{Event, EventBody};
pub use ids::{AuditSessionId, BootId, Gid, Pid, Seq, Tty, Uid};
pub use time::Timestamp;

/// This crate's unit tests refuse any single allocation over 1 GiB (the test process aborts):
/// a decoder that reserves what an input announces instead of what it holds fails them.
#[cfg(test)]
#[global_allocator]
static CAPPED: capped_alloc::Capped = capped_alloc::Capped;

#[cfg(test)]
mod capped_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};

    const LIMIT: usize = 1 << 30;

    pub struct Capped;

    // SAFETY: every call is passed on to the system allocator unchanged, or refused with null
    // (which callers must handle).
    unsafe impl GlobalAlloc for Capped {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            if layout.size() > LIMIT {
                return std::ptr::null_mut();
            }
            // SAFETY: the caller's contract for `alloc`, passed on.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` with `layout`.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if new_size > LIMIT {
                return std::ptr::null_mut();
            }
            // SAFETY: the caller's contract for `realloc`, passed on.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}
