//! Custos's tamper evidence, one owner, shared by the collector and the auditor's offline
//! verifier: the [`chunk`] format (encryption and hashing), the [`chain`] reader every check of a
//! recording goes through, [`seal`]s and the [`keys`] they use, the agents' signatures and
//! chains ([`agent`]), [`tombstone`]s, the [`access_log`]'s chain and checkpoints, and checking a
//! whole store directory from its files with public material ([`store`]). Plain functions over
//! bytes and files: nothing here needs a running collector.
pub mod access_log;
pub mod agent;
pub mod chain;
pub mod chunk;
pub mod keys;
pub mod seal;
pub mod store;
pub mod tombstone;
