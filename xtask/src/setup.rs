//! `cargo xtask setup`: everything building and running the eBPF programs needs, installed or
//! checked, idempotently.
//!
//! - the nightly toolchain's rust-src (the programs are built with `-Z build-std=core`);
//! - bpf-linker, built against the nightly's own libLLVM (it must link the LLVM that emitted the
//!   bitcode; the library's name changes with the nightly, so it is found by glob);
//! - the Debian packages the host crates build with (libssl-dev: SQLCipher, which encrypts the
//!   collector's index, links the system libcrypto);
//! - tracefs and bpffs mounted;
//! - the kernel: BTF, ring buffers, the tracepoints the programs attach to. Each missing
//!   prerequisite gets its own message.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

use crate::cmd;

/// The bpf-linker release known to work with the pinned aya crates.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the host crates need to build, with a file that shows each is installed.
const BUILD_PACKAGES: [(&str, &str); 1] = [
    // The headers of the libcrypto SQLCipher (rusqlite's bundled-sqlcipher) is built against;
    // the collector and `custos` then run with libssl3.
    ("libssl-dev", "/usr/include/openssl/evp.h"),
];

/// Installs and checks everything; afterwards builds started by xtask find bpf-linker first on
/// PATH even when ~/.cargo/bin is not on the caller's PATH.
pub fn setup() -> anyhow::Result<()> {
    crate::test::ensure_packages(&BUILD_PACKAGES)?;
    ensure_rust_src()?;
    let cargo_bin = ensure_bpf_linker()?;
    check_kernel()?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![cargo_bin];
    paths.extend(std::env::split_paths(&path));
    // SAFETY: xtask is single-threaded here.
    unsafe { std::env::set_var("PATH", std::env::join_paths(paths)?) };
    println!("setup: toolchain and kernel ready");
    Ok(())
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain")?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        cmd::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("the eBPF programs need a nightly toolchain")?;
    }
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if !installed.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: installing rust-src for the nightly toolchain");
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home =
        std::env::var_os("HOME").ok_or_else(|| anyhow!("neither CARGO_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// The nightly's libLLVM: its path, file name and major version.
fn nightly_llvm() -> anyhow::Result<(PathBuf, String, String)> {
    let sysroot = cmd::output(
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]),
    )?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let mut found = None;
    for entry in fs::read_dir(&lib_dir).with_context(|| format!("reading {}", lib_dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM.so.") && entry.file_type()?.is_file() {
            found = Some((entry.path(), name));
        }
    }
    let (path, name) = found.ok_or_else(|| {
        anyhow!(
            "no libLLVM.so.* in {}: the nightly toolchain is incomplete",
            lib_dir.display()
        )
    })?;
    let major = name
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .filter(|major| major.chars().all(|c| c.is_ascii_digit()) && !major.is_empty())
        .ok_or_else(|| anyhow!("cannot read the LLVM version from {name}"))?
        .to_owned();
    Ok((path, name, major))
}

/// Builds bpf-linker against the nightly's libLLVM, unless the one installed already is.
fn ensure_bpf_linker() -> anyhow::Result<PathBuf> {
    let (llvm_lib, llvm_name, llvm_major) = nightly_llvm()?;
    let cargo_bin = cargo_home()?.join("bin");
    let linker = cargo_bin.join("bpf-linker");
    // DIR/lib holds libLLVM.so (for linking) and the library's own name (for the loader: the
    // installed binary's runpath is DIR/lib).
    let prefix = cargo_home()?.join("custos-llvm").join(&llvm_name);
    let stamp = prefix.join("bpf-linker.stamp");
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION} against {llvm_name}\n");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if works && fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(cargo_bin);
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {llvm_name} (about a minute)"
    );
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for link in [lib.join("libLLVM.so"), lib.join(&llvm_name)] {
        let _ = fs::remove_file(&link);
        symlink(&llvm_lib, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
    .context("building bpf-linker")?;
    cmd::output(Command::new(&linker).arg("--version"))
        .context("the bpf-linker just built does not start")?;
    fs::write(&stamp, wanted)?;
    Ok(cargo_bin)
}

const TRACEFS: &str = "/sys/kernel/tracing";
const BPFFS: &str = "/sys/fs/bpf";
const BTF: &str = "/sys/kernel/btf/vmlinux";
/// Tracepoints the programs attach to (agent/src/load).
const TRACEPOINTS: [&str; 9] = [
    "syscalls/sys_exit_write",
    "syscalls/sys_exit_writev",
    "syscalls/sys_exit_open",
    "syscalls/sys_exit_openat",
    "syscalls/sys_exit_openat2",
    "syscalls/sys_exit_creat",
    "sched/sched_process_exec",
    "sched/sched_process_fork",
    "sched/sched_process_exit",
];

/// Mounts tracefs and bpffs when absent and checks every kernel prerequisite, reporting all
/// that are missing at once.
pub fn check_kernel() -> anyhow::Result<()> {
    let mut problems = Vec::new();
    if !cmd::is_root() {
        problems.push("not root: loading eBPF programs and mounting tracefs need root".to_owned());
    }
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let tracefs_mounted = Path::new(TRACEFS).join("events").is_dir();
    if let Some(err) = (!tracefs_mounted)
        .then(|| mount("tracefs", TRACEFS).err())
        .flatten()
    {
        problems.push(format!(
            "tracefs is not mounted at {TRACEFS} and mounting it failed: {err}"
        ));
    }
    let bpffs_mounted = mounts
        .lines()
        .any(|line| line.split(' ').nth(1) == Some(BPFFS));
    if let Some(err) = (!bpffs_mounted)
        .then(|| mount("bpf", BPFFS).err())
        .flatten()
    {
        problems.push(format!(
            "bpffs is not mounted at {BPFFS} and mounting it failed: {err}"
        ));
    }
    if !Path::new(BTF).exists() {
        problems.push(format!(
            "{BTF} is missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y (struct offsets are read from it)"
        ));
    }
    if let Err(err) = probe_ring_buffer() {
        problems.push(format!(
            "the kernel cannot create a BPF ring buffer ({err}): Linux 5.8 or later is needed"
        ));
    }
    for tracepoint in TRACEPOINTS {
        if !Path::new(TRACEFS).join("events").join(tracepoint).is_dir() {
            problems.push(format!(
                "tracepoint {tracepoint} is missing (the kernel needs CONFIG_FTRACE_SYSCALLS and scheduler tracepoints)"
            ));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    for problem in &problems {
        eprintln!("setup: {problem}");
    }
    bail!(
        "{} kernel prerequisite(s) missing (see above)",
        problems.len()
    )
}

fn mount(fstype: &str, target: &str) -> anyhow::Result<()> {
    cmd::output(Command::new("mount").args(["-t", fstype, fstype, target]))?;
    Ok(())
}

/// Creates and closes a BPF_MAP_TYPE_RINGBUF map of one page.
fn probe_ring_buffer() -> std::io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    // union bpf_attr, map-create part: map_type, key_size, value_size, max_entries, the rest 0.
    let mut attr = [0u32; 32];
    attr[0] = BPF_MAP_TYPE_RINGBUF;
    attr[3] = 4096;
    // SAFETY: bpf(2) with a zeroed, large enough attribute buffer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by the kernel.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}
