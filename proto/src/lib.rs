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
