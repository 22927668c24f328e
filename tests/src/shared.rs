//! Programs of ours that another user runs (a test user's shell runs `custos-testkit`), copied
//! for one run into a folder every user may enter and execute from, removed afterwards.
//!
//! A checkout, and the binaries built in it, may live where only root can enter: /root is 0700
//! on Debian, and so is a `mktemp -d` folder. Root runs the binaries from there; another user
//! gets "Permission denied". The copies live under /tmp, which every user may enter (TMPDIR
//! may name a private folder).
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

/// Copies of built binaries in a 0755 folder; the folder goes when this is dropped.
pub struct SharedBins {
    dir: tempfile::TempDir,
}

/// Readable and executable by every user (also set explicitly: a umask of 077 would make the
/// folder and the copies root's alone again).
const MODE: u32 = 0o755;

impl SharedBins {
    /// Copies the workspace binaries `names` ([`crate::bin`]) into a fresh folder under /tmp.
    pub fn copy(names: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("custos-shared-")
            .tempdir_in("/tmp")
            .expect("creating a shared folder under /tmp");
        set_mode(dir.path(), MODE);
        for name in names {
            let copy = dir.path().join(name);
            let original = crate::bin(name);
            fs::copy(&original, &copy).unwrap_or_else(|err| {
                panic!(
                    "copying {} to {}: {err}",
                    original.display(),
                    copy.display()
                )
            });
            set_mode(&copy, MODE);
        }
        Self { dir }
    }

    /// The copy of `name`, which any user may execute.
    pub fn path(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        assert!(path.exists(), "{name} was not copied to the shared folder");
        path
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("setting the mode of {}: {err}", path.display()));
}
