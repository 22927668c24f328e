//! The index in SQLite (one file, `index.sqlite`, in write-ahead-log mode, encrypted with
//! SQLCipher: [`crypt`]): its tables and upgrades ([`schema`]), the store's writes and reads ([`chunks`]), the auditors' queries
//! ([`queries`]) and retention's ([`retention`]), each an `impl` block of
//! [`Index`](super::Index) or [`IndexWriter`](super::IndexWriter).
pub mod chunks;
pub mod crypt;
pub mod queries;
pub mod retention;
pub mod schema;
