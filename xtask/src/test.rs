//! `cargo xtask test` and `cargo xtask lint`.
//!
//! The suite needs root and the real kernel: it loads the eBPF programs, starts login sessions
//! in pseudo-terminals, and a real sshd. It installs the Debian packages its tests drive when
//! they are missing.
use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::{cmd, setup};

/// Debian packages the end-to-end tests use, with a file that shows each is installed.
const TEST_PACKAGES: [(&str, &str); 10] = [
    ("openssh-server", "/usr/sbin/sshd"),
    ("openssh-client", "/usr/bin/ssh"),
    ("sudo", "/usr/bin/sudo"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("nftables", "/usr/sbin/nft"),
    ("iproute2", "/usr/sbin/ip"),
    ("asciinema", "/usr/bin/asciinema"),
    // The C programs of tests/tests/routes.rs (tests/c): a static 32-bit one and an io_uring
    // user.
    ("gcc", "/usr/bin/gcc"),
    ("gcc-multilib", "/usr/lib32/libc.a"),
    ("liburing-dev", "/usr/include/liburing.h"),
];

pub fn test(filter: Option<&str>) -> anyhow::Result<()> {
    if !cmd::is_root() {
        bail!("the test suite loads eBPF programs and starts sshd: run it as root");
    }
    setup::setup()?;
    ensure_packages(&TEST_PACKAGES)?;
    // The default members: every host binary (the eBPF crate is built by the agent's build.rs).
    cmd::run(cmd::cargo().args(["build", "--bins"]))?;
    let bin_dir = cmd::target_dir().join("debug");

    let mut unit = cmd::cargo();
    unit.args(["test", "--workspace", "--exclude", "custos-tests"]);
    if let Some(filter) = filter {
        unit.args(["--", filter]);
    }
    cmd::run(&mut unit)?;

    // End-to-end tests share the kernel (every agent sees every session): one at a time.
    let mut e2e = cmd::cargo();
    e2e.args(["test", "--package", "custos-tests", "--"])
        .arg("--test-threads=1")
        .env("CUSTOS_BIN_DIR", &bin_dir);
    if let Some(filter) = filter {
        e2e.arg(filter);
    }
    cmd::run(&mut e2e)?;
    if filter.is_none() {
        crate::vm::vm_test()?;
        crate::pkgtest::test_packages()?;
    }
    println!("test: all passed");
    Ok(())
}

/// Installs missing Debian packages with apt-get.
pub fn ensure_packages(packages: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("test: installing {}", missing.join(" "));
    let install = |update: bool| -> anyhow::Result<()> {
        if update {
            cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        }
        cmd::run(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    install(false)
        .or_else(|_| install(true))
        .with_context(|| format!("installing {}", missing.join(" ")))
}

pub fn lint() -> anyhow::Result<()> {
    setup::setup()?;
    cmd::run(cmd::cargo().args(["fmt", "--all", "--check"]))?;
    // The default members (host crates); the eBPF crate is linted for its own target below.
    cmd::run(cmd::cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    let components = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !components.lines().any(|line| line.starts_with("clippy")) {
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "clippy",
            "--toolchain",
            "nightly",
        ]))?;
    }
    cmd::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "custos-agent-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .current_dir(cmd::workspace_root()),
    )?;
    println!("lint: clean");
    Ok(())
}
