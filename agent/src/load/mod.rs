//! Loading the kernel side: check the kernel's prerequisites, read struct offsets from BTF, load
//! the eBPF object with the agent's settings, attach every program.
//!
//! The hook backend today is tracepoints (syscall exits and BTF scheduler tracepoints), which
//! every kernel from 5.8 allows; see agent-ebpf/src/hooks.
pub mod btf;
mod tracefs;

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, TracePoint},
};
use custos_agent_abi::{SETTING_CAPTURE_TTY_TASKS, SETTING_SUPPRESS_ECHO_OFF_INPUT, Settings};
use tracing::{debug, info, warn};

use crate::config::{CaptureConfig, Scope};

/// The compiled programs, embedded at build time by build.rs.
static PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/custos-agent-ebpf"));

/// Syscalls hooked at their exit tracepoint (`syscalls/sys_exit_<name>`).
const SYSCALL_EXITS: [&str; 6] = ["write", "writev", "open", "openat", "openat2", "creat"];
/// BTF tracepoints on the scheduler.
const SCHED_TRACEPOINTS: [&str; 3] = [
    "sched_process_exec",
    "sched_process_fork",
    "sched_process_exit",
];

/// The loaded, attached programs and their maps. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
}

/// Loads and attaches the programs for `capture`, never capturing the process `agent_tgid`.
pub fn load(capture: &CaptureConfig, agent_tgid: u32) -> anyhow::Result<Probes> {
    #[cfg(not(target_arch = "x86_64"))]
    compile_error!("the tracepoint backend reads x86_64 syscall registers; port hooks first");

    tracefs::ensure_mounted()?;
    tracefs::check_syscall_exit_layout(&SYSCALL_EXITS)?;
    raise_memlock_limit();

    let offsets = btf::kernel_offsets(Path::new(btf::VMLINUX_BTF))?;
    debug!(?offsets, "kernel struct offsets from BTF");
    let mut flags = 0;
    if capture.scope == Scope::LoginSessionsAndTerminals {
        flags |= SETTING_CAPTURE_TTY_TASKS;
    }
    if capture.suppress_echo_off_input {
        flags |= SETTING_SUPPRESS_ECHO_OFF_INPUT;
    }
    let settings = Settings {
        agent_tgid,
        flags,
        argv_max: capture.argv_max.as_u64() as u32,
        tty_write_max: capture.tty_write_max.as_u64() as u32,
    };
    let ring_size = capture.ring_buffer_size.as_u64() as u32;
    let mut ebpf = EbpfLoader::new()
        .override_global("OFFSETS", &offsets, true)
        .override_global("SETTINGS", &settings, true)
        .map_max_entries("EVENTS", ring_size)
        .load(PROGRAMS)
        .context("loading the eBPF object")?;

    let kernel_btf = Btf::from_sys_fs().context("reading kernel BTF for BTF tracepoints")?;
    for name in SCHED_TRACEPOINTS {
        let program: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        program
            .load(name, &kernel_btf)
            .with_context(|| format!("loading {name} (the verifier refused it)"))?;
        program
            .attach()
            .with_context(|| format!("attaching BTF tracepoint {name}"))?;
        log_verifier_cost(name, program.info());
    }
    for syscall in SYSCALL_EXITS {
        let name = format!("sys_exit_{syscall}");
        let program: &mut TracePoint = ebpf
            .program_mut(&name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        program
            .load()
            .with_context(|| format!("loading {name} (the verifier refused it)"))?;
        program
            .attach("syscalls", &name)
            .with_context(|| format!("attaching tracepoint syscalls/{name}"))?;
        log_verifier_cost(&name, program.info());
    }
    info!(
        ring_buffer_bytes = ring_size,
        hooks = SCHED_TRACEPOINTS.len() + SYSCALL_EXITS.len(),
        "kernel capture attached"
    );
    Ok(Probes { ebpf })
}

/// The verifier's work per program (its limit is 1,000,000 instructions): a number creeping up
/// is the first sign that a change to the programs will not load on some kernel.
fn log_verifier_cost(
    name: &str,
    info: Result<aya::programs::ProgramInfo, aya::programs::ProgramError>,
) {
    if let Some(verified) = info.ok().and_then(|info| info.verified_instruction_count()) {
        debug!(
            program = name,
            verified_instructions = verified,
            "program loaded"
        );
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones to the cgroup, and need
/// nothing (nor CAP_SYS_RESOURCE, which the unit does not grant).
fn raise_memlock_limit() {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    if (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (5, 11) {
        return;
    }
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "could not raise RLIMIT_MEMLOCK; fine on kernels from 5.11 (memory is charged to the cgroup)"
        );
    }
}

/// Fails with a clear message when the kernel cannot run the agent.
pub fn check_kernel() -> anyhow::Result<()> {
    if !Path::new(btf::VMLINUX_BTF).exists() {
        bail!(
            "{} is missing: the kernel was built without BTF (CONFIG_DEBUG_INFO_BTF=y is required)",
            btf::VMLINUX_BTF
        );
    }
    Ok(())
}
