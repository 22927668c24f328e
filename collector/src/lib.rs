//! `custos-collector`: receives recordings from agents, stores them, serves auditors.
//!
//! Along a recording's path: [`ingest`] (QUIC server, agent identity from the certificate) hands
//! batches to the [`writer`] thread, which owns the [`store`] (per-session chunk files,
//! encrypted and hash-chained by [`trust`], and their [`index`]). [`api`] serves auditors
//! (HTTPS, client certificates, every access in the [`audit`] log); [`retention`] purges what
//! is past its time unless held. [`tls`] loads and reloads both servers' TLS (revocation
//! included). [`pki`] holds the `pki` subcommands.
pub mod alerts;
pub mod api;
pub mod audit;
pub mod bundle;
pub mod config;
pub mod index;
pub mod ingest;
pub mod metrics;
pub mod pki;
pub mod retention;
pub mod store;
pub mod tls;
pub use custos_trust as trust;
pub mod writer;
