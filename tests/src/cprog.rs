//! Small C programs of the tests (`tests/c/`), compiled with gcc for one run: the routes to the
//! terminal and to files that a Rust program would take only through the same libc calls, a
//! static 32-bit (ia32) program, an io_uring user (liburing). `cargo xtask test` installs gcc,
//! gcc-multilib and liburing-dev; a missing one fails here with the package to install.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Compiled programs in a 0755 folder under /tmp; the folder goes when this is dropped.
pub struct CPrograms {
    dir: tempfile::TempDir,
}

impl CPrograms {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("custos-cprog-")
            .tempdir_in("/tmp")
            .expect("creating a folder for C programs under /tmp");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("making the C programs' folder 0755");
        Self { dir }
    }

    /// Compiles `tests/c/<source>` into a program named `name`, with gcc `flags` (before the
    /// source) and `libs` (after it). Panics with gcc's message, naming the Debian package that
    /// provides what is missing (`package`).
    pub fn build(
        &self,
        name: &str,
        source: &str,
        flags: &[&str],
        libs: &[&str],
        package: &str,
    ) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("c").join(source);
        let out = self.dir.path().join(name);
        let output = Command::new("gcc")
            .args(["-O1", "-Wall", "-o"])
            .arg(&out)
            .args(flags)
            .arg(&src)
            .args(libs)
            .output()
            .unwrap_or_else(|err| panic!("running gcc (Debian package gcc): {err}"));
        assert!(
            output.status.success(),
            "gcc could not build {} (is the Debian package {package} installed? cargo xtask test \
             installs it):\n{}",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        out
    }
}

impl Default for CPrograms {
    fn default() -> Self {
        Self::new()
    }
}
