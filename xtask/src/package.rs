//! `cargo xtask package`: the .deb and .rpm packages of the agent and the collector, built by
//! the ecosystem's packagers (cargo-deb, cargo-generate-rpm) from the metadata in agent/ and
//! collector/Cargo.toml and the files in packaging/, into target/packages/.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

/// The packagers, pinned so that packages do not change under us.
const PACKAGERS: [(&str, &str, &str); 2] = [
    ("cargo-deb", "3.8.0", "deb"),
    ("cargo-generate-rpm", "0.21.1", "generate-rpm"),
];

/// The packages: (cargo package, directory, package name).
pub const PACKAGES: [(&str, &str); 2] =
    [("custos-agent", "agent"), ("custos-collector", "collector")];

/// What `package` built.
pub struct Built {
    pub debs: Vec<PathBuf>,
    pub rpms: Vec<PathBuf>,
}

pub fn package() -> anyhow::Result<Built> {
    setup::setup()?;
    ensure_packagers()?;
    cmd::run(cmd::cargo().args(["build", "--release", "--bins"]))?;
    generate_docs()?;
    let out = cmd::target_dir().join("packages");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut built = Built {
        debs: Vec::new(),
        rpms: Vec::new(),
    };
    for (crate_name, dir) in PACKAGES {
        let deb = cmd::output(
            cmd::cargo()
                .args(["deb", "--no-build", "--package", crate_name, "--output"])
                .arg(&out),
        )?;
        built
            .debs
            .push(PathBuf::from(deb.trim().lines().last().unwrap_or_default()));
        cmd::run(
            cmd::cargo()
                .args(["generate-rpm", "--package", dir, "--output"])
                .arg(&out)
                .arg("--target-dir")
                .arg(cmd::target_dir()),
        )?;
    }
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rpm") {
            built.rpms.push(path);
        }
    }
    built.rpms.sort();
    if built.debs.iter().any(|d| !d.exists()) || built.rpms.len() != PACKAGES.len() {
        bail!(
            "the packagers did not write the packages expected in {}",
            out.display()
        );
    }
    for path in built.debs.iter().chain(&built.rpms) {
        println!("package: {}", path.display());
    }
    Ok(built)
}

/// The programs whose man page and completions the packages install (custos-clidoc).
const PROGRAMS: [&str; 3] = ["custos", "custos-collector", "custos-agent"];

/// Writes each program's man page and bash, zsh and fish completions (its hidden `--generate`)
/// under target/release/generated/, where the packages' assets name them.
fn generate_docs() -> anyhow::Result<()> {
    let release = cmd::target_dir().join("release");
    let dir = release.join("generated");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for program in PROGRAMS {
        for (what, file) in [
            ("man", format!("{program}.1")),
            ("bash", format!("{program}.bash")),
            ("zsh", format!("_{program}")),
            ("fish", format!("{program}.fish")),
        ] {
            let text = cmd::output(Command::new(release.join(program)).args(["--generate", what]))?;
            let path = dir.join(file);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Installs cargo-deb and cargo-generate-rpm (from crates.io) when missing or of another
/// version.
fn ensure_packagers() -> anyhow::Result<()> {
    for (name, version, subcommand) in PACKAGERS {
        let installed = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([subcommand, "--version"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
            .unwrap_or(false);
        if !installed {
            println!("package: installing {name} {version}");
            cmd::run(cmd::cargo().args(["install", "--locked", name, "--version", version]))?;
        }
    }
    Ok(())
}
