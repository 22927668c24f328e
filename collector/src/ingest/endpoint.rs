//! The ingest endpoint and the keys it keeps across restarts.
//!
//! A collector that crashed sent no close: its agents would wait out their idle timeout before
//! noticing. QUIC lets a restarted server end such a connection at once with a stateless reset,
//! which the agent only believes when it carries the token the old process announced. Both that
//! token's key and the key that marks the server's connection ids (without which the restarted
//! server would not even recognise the old connection's packets as its own) are therefore
//! derived from the collector's TLS private key with HKDF-SHA256 under a fixed label: the same in
//! every process with the same key, never written anywhere, never logged. A new collector key
//! (rotation) gives new keys: connections of the old process then end on the agents'
//! acknowledgement deadline instead.
use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::Context as _;
use quinn_proto::HashedConnectionIdGenerator;
use ring::{hkdf, hmac};

/// The HKDF salt: what the keys are for, and their version.
const LABEL: &[u8] = b"custos quic stateless reset v1";

/// An HKDF output of `.0` bytes.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The keys of one private key.
struct Keys {
    /// Signs stateless reset tokens.
    reset: hmac::Key,
    /// Marks the server's connection ids.
    connection_ids: u64,
}

impl Keys {
    fn derive(private_key: &[u8]) -> anyhow::Result<Keys> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, LABEL).extract(private_key);
        let reset = prk
            .expand(&[b"stateless reset key"], hmac::HMAC_SHA256)
            .map_err(|_| anyhow::anyhow!("deriving the stateless reset key"))?
            .into();
        let mut cid_key = [0u8; 8];
        prk.expand(&[b"connection id key"], Len(cid_key.len()))
            .and_then(|okm| okm.fill(&mut cid_key))
            .map_err(|_| anyhow::anyhow!("deriving the connection id key"))?;
        Ok(Keys {
            reset,
            connection_ids: u64::from_le_bytes(cid_key),
        })
    }
}

/// The endpoint's configuration with keys derived from `private_key` (the collector's TLS key,
/// DER).
pub fn endpoint_config(private_key: &[u8]) -> anyhow::Result<quinn::EndpointConfig> {
    let keys = Keys::derive(private_key)?;
    let mut config = quinn::EndpointConfig::new(Arc::new(keys.reset));
    let cid_key = keys.connection_ids;
    config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid_key)));
    Ok(config)
}

/// The ingest endpoint on `listen`, serving `server`, its keys derived from the private key in
/// `key_file`.
pub fn bind(
    listen: SocketAddr,
    key_file: &Path,
    server: quinn::ServerConfig,
) -> anyhow::Result<quinn::Endpoint> {
    let key = custos_pki::files::read_private_key(key_file)?;
    let config = endpoint_config(key.secret_der())?;
    let socket =
        std::net::UdpSocket::bind(listen).with_context(|| format!("listening on UDP {listen}"))?;
    let runtime = quinn::default_runtime().context("no async runtime for the QUIC endpoint")?;
    quinn::Endpoint::new(config, Some(server), socket, runtime)
        .with_context(|| format!("listening on UDP {listen}"))
}

#[cfg(test)]
mod tests {
    use quinn_proto::{ConnectionIdGenerator as _, crypto::HmacKey as _};

    use super::*;

    /// What the reset key of `private_key` signs, and its connection id generator.
    fn keys(private_key: &[u8]) -> (Vec<u8>, HashedConnectionIdGenerator) {
        let keys = Keys::derive(private_key).expect("keys");
        let mut tag = vec![0u8; keys.reset.signature_len()];
        keys.reset.sign(b"a connection id", &mut tag);
        (
            tag,
            HashedConnectionIdGenerator::from_key(keys.connection_ids),
        )
    }

    #[test]
    fn the_keys_follow_the_private_key_and_nothing_else() {
        endpoint_config(b"key one").expect("a configuration");
        let (tag_a, mut cids_a) = keys(b"key one");
        let (tag_b, cids_b) = keys(b"key one");
        let (tag_other, cids_other) = keys(b"key two");
        assert_eq!(
            tag_a, tag_b,
            "a restart with the same key resets the same way"
        );
        assert_ne!(tag_a, tag_other);
        let cid = cids_a.generate_cid();
        assert!(cids_b.validate(&cid).is_ok(), "a restart knows the old ids");
        let recognised = (0..64)
            .map(|_| cids_a.generate_cid())
            .filter(|cid| cids_other.validate(cid).is_ok())
            .count();
        assert!(recognised < 4, "another key's ids are not ours");
    }
}
