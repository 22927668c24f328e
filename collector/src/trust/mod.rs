//! Trust material, one owner: the [`chunk`] format (encryption and hashing), the [`chain`]
//! reader every check of a recording goes through, [`seal`]s, and the [`keys`] they use. Plain
//! functions over bytes (the key files aside), so that an offline verifier needs nothing of the
//! collector beyond this module.
pub mod agent;
pub mod chain;
pub mod chunk;
pub mod keys;
pub mod seal;
pub mod tombstone;
