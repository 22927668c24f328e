//! `custos verify --offline DIR`: checks an export bundle (`custos-collector export-bundle`) or a
//! store directory from its files, without the collector, with public material only: the CA
//! certificate and the seal public key (a bundle carries both under `public/`; flags name them for
//! a plain store directory), and optionally the store key for the content check. The checking
//! itself is the collector's own ([`custos_trust::store`]); this module finds the material.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use custos_pki::batch_signature::AgentCertificates;
use custos_proto::api::VerifyReport;
use custos_trust::{
    keys::{self, KeyRing},
    store::{self, Verifier},
};

/// Where a bundle keeps its public material.
const PUBLIC_CA: &str = "public/ca.pem";
const PUBLIC_SEAL: &str = "public/seal.pub";

/// The material given on the command line (each defaults to the bundle's copy).
pub struct Material {
    pub ca: Option<PathBuf>,
    pub seal_pub: Option<PathBuf>,
    pub store_key: Option<PathBuf>,
}

/// `given`, else `dir/default` when it exists, else an error naming the flag.
fn material(
    dir: &Path,
    given: &Option<PathBuf>,
    default: &str,
    flag: &str,
) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path.clone()),
        None if dir.join(default).exists() => Ok(dir.join(default)),
        None => bail!(
            "{} has no {default} (not an export bundle): give {flag} FILE",
            dir.display()
        ),
    }
}

/// Checks `dir` (see the module doc).
pub fn verify(dir: &Path, given: &Material) -> anyhow::Result<VerifyReport> {
    if !dir.join(store::RECORDINGS_DIR).is_dir() && !dir.join(store::AUDIT_DB).exists() {
        bail!(
            "{} is neither an export bundle nor a store directory (no recordings/, no {})",
            dir.display(),
            store::AUDIT_DB
        );
    }
    let seal_pub = material(dir, &given.seal_pub, PUBLIC_SEAL, "--seal-pub")?;
    let seal_public = keys::read_seal_public(&seal_pub)?;
    let ca = material(dir, &given.ca, PUBLIC_CA, "--ca")?;
    let trust = AgentCertificates::new(&ca)
        .with_context(|| format!("the CA certificate {}", ca.display()))?;
    let keys = given.store_key.as_deref().map(KeyRing::load).transpose()?;
    let verifier = Verifier {
        dir,
        seal_public,
        trust: Some(&trust),
        keys: keys.as_ref(),
    };
    store::verify_dir(&verifier).map_err(|err| anyhow::anyhow!("{}: {err}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Material {
        Material {
            ca: None,
            seal_pub: None,
            store_key: None,
        }
    }

    #[test]
    fn a_folder_without_public_material_asks_for_it_by_flag() {
        let dir = std::env::temp_dir().join(format!("custos-offline-{}", std::process::id()));
        let err = verify(&dir, &none()).unwrap_err().to_string();
        assert!(
            err.contains("neither an export bundle nor a store"),
            "{err}"
        );
        std::fs::create_dir_all(dir.join("recordings")).unwrap();
        let err = verify(&dir, &none()).unwrap_err().to_string();
        assert!(
            err.contains("no public/seal.pub (not an export bundle): give --seal-pub FILE"),
            "{err}"
        );
        std::fs::write(dir.join("seal.pub"), "not hex\n").unwrap();
        let given = Material {
            seal_pub: Some(dir.join("seal.pub")),
            ..none()
        };
        let err = format!("{:#}", verify(&dir, &given).unwrap_err());
        assert!(err.contains("not a seal public key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
