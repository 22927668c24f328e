//! Loading the kernel side: check the kernel's prerequisites, read struct offsets from BTF, load
//! the eBPF object with the agent's settings, choose a hook backend per capture, attach.
//!
//! Two backends (agent-ebpf/src/hooks, docs/hooks.md): fexit programs on `n_tty_write` and
//! `do_sys_openat2` where the kernel allows BPF trampolines (only the captured work pays), and
//! syscall exit tracepoints everywhere else (every syscall of every process pays the tracing
//! slow path). exec, fork and exit use BTF scheduler tracepoints in both. With
//! `hooks = "auto"` each capture tries fentry first and falls back to tracepoints with a
//! warning saying why.
pub mod btf;
mod tracefs;

use std::path::Path;

use anyhow::{Context as _, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::MapType,
    programs::{BtfTracePoint, FExit, ProgramError, TracePoint},
};
use custos_agent_abi::{
    KernelOffsets, SETTING_CAPTURE_TTY_TASKS, SETTING_DIRECT_READS,
    SETTING_SUPPRESS_ECHO_OFF_INPUT, Settings, io_uring_op,
};
use tracing::{debug, error, info, warn};

use crate::config::{CaptureConfig, Hooks, TaskSelection, Unhonoured};

/// The compiled programs, embedded at build time by build.rs.
static PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/custos-agent-ebpf"));

/// BTF tracepoints on the scheduler (both backends).
const SCHED_TRACEPOINTS: [&str; 3] = [
    "sched_process_exec",
    "sched_process_fork",
    "sched_process_exit",
];

/// What each backend hooks for one capture.
struct Capture {
    name: &'static str,
    /// Syscalls hooked at their exit tracepoint (`syscalls/sys_exit_<name>`).
    syscall_exits: &'static [&'static str],
    /// (program, kernel function) of the fexit hook.
    fexit: (&'static str, &'static str),
}

const CAPTURES: [Capture; 2] = [
    Capture {
        name: "terminal",
        syscall_exits: &["write", "writev", "pwritev2", "sendfile64", "splice"],
        fexit: ("fexit_n_tty_write", "n_tty_write"),
    },
    Capture {
        name: "opens",
        syscall_exits: &["open", "openat", "openat2", "creat", "open_by_handle_at"],
        fexit: ("fexit_do_sys_openat2", "do_sys_openat2"),
    },
];

/// The hook kind a capture ended up with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Tracepoint,
    Fentry,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tracepoint => "tracepoint",
            Backend::Fentry => "fentry",
        }
    }
}

/// The login uids the user rules exclude, as the kernel's gate sees them (map
/// `SCOPE_EXCLUDED_UIDS`): a task of an excluded uid leaves every program at the gate.
pub struct ExcludedUids {
    map: aya::maps::HashMap<aya::maps::MapData, u32, u8>,
}

impl ExcludedUids {
    pub fn take(ebpf: &mut Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map("SCOPE_EXCLUDED_UIDS")
            .context("map SCOPE_EXCLUDED_UIDS missing from the eBPF object")?;
        Ok(Self {
            map: aya::maps::HashMap::try_from(map)?,
        })
    }

    pub fn exclude(&mut self, uid: u32) -> anyhow::Result<()> {
        self.map
            .insert(uid, 1, 0)
            .with_context(|| format!("excluding login uid {uid} in the kernel"))
    }

    /// Makes the excluded uids exactly `uids`.
    pub fn reset(&mut self, uids: &[u32]) -> anyhow::Result<()> {
        let current: Vec<u32> = self.map.keys().filter_map(Result::ok).collect();
        for uid in current {
            if !uids.contains(&uid) {
                let _ = self.map.remove(&uid);
            }
        }
        for uid in uids {
            self.exclude(*uid)?;
        }
        Ok(())
    }
}

/// The loaded, attached programs and their maps. Dropping it detaches everything.
pub struct Probes {
    pub ebpf: Ebpf,
    /// The backend of the terminal capture and of the open capture.
    pub backends: [Backend; 2],
}

/// Loads and attaches the programs for `capture`, never capturing the process `agent_tgid`.
/// How much unread data wakes the agent: a sixteenth of the ring buffer, so a burst wakes it
/// long before the ring fills, and a trickle waits for the reader's timer instead of costing an
/// interrupt per record.
fn wakeup_bytes(ring_size: u32) -> u32 {
    ring_size / 16
}

pub fn load(capture: &CaptureConfig, agent_tgid: u32) -> anyhow::Result<Probes> {
    #[cfg(not(target_arch = "x86_64"))]
    compile_error!("the programs read x86_64 syscall registers; port capture/open first");

    raise_memlock_limit();
    let kernel = btf::read_kernel(Path::new(btf::VMLINUX_BTF))?;
    tracefs::ensure_mounted()?;
    let io_uring = tracefs::io_uring_submit();
    if io_uring.is_none() {
        warn!(
            "the kernel has no io_uring submit tracepoint: io_uring requests of recorded \
             sessions are not reported"
        );
    }
    debug!(offsets = ?kernel.offsets, "kernel struct offsets from BTF");
    let mut flags = 0;
    if capture.scope == TaskSelection::LoginSessionsAndTerminals {
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
        wakeup_bytes: wakeup_bytes(capture.ring_buffer_size.as_u64() as u32),
        io_uring_opcode_offset: io_uring.as_ref().map_or(0, |tp| tp.opcode_offset),
    };
    if capture.direct_reads && kernel.task_btf_helpers {
        let direct = Settings {
            flags: flags | SETTING_DIRECT_READS,
            ..settings
        };
        match load_with(capture, &kernel.offsets, &direct, io_uring.as_ref()) {
            Ok(probes) => return Ok(probes),
            // The verifier's log, if it refused, is in the log already.
            Err(err) if err.downcast_ref::<Unhonoured>().is_none() => warn!(
                reason = %format!("{err:#}"),
                "the kernel refused the programs' direct reads; loading them with a helper call per field"
            ),
            Err(err) => return Err(err),
        }
    }
    load_with(capture, &kernel.offsets, &settings, io_uring.as_ref())
}

/// Loads the object with `settings` and attaches every program (see [`load`]).
fn load_with(
    capture: &CaptureConfig,
    offsets: &KernelOffsets,
    settings: &Settings,
    io_uring: Option<&tracefs::IoUringSubmit>,
) -> anyhow::Result<Probes> {
    let ring_size = capture.ring_buffer_size.as_u64() as u32;
    let mut ebpf = EbpfLoader::new()
        .override_global("OFFSETS", offsets, true)
        .override_global("SETTINGS", settings, true)
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
            .map_err(|err| load_failure(name, err))?;
        program
            .attach()
            .with_context(|| format!("attaching BTF tracepoint {name}"))?;
        log_verifier_cost(name, program.info());
    }
    let mut backends = [Backend::Tracepoint; 2];
    for (hooked, backend) in CAPTURES.iter().zip(&mut backends) {
        *backend = attach_capture(&mut ebpf, &kernel_btf, hooked, capture.hooks)?;
    }
    let io_uring = match io_uring {
        Some(tracepoint) => {
            attach_io_uring(&mut ebpf, tracepoint, backends)?;
            "attached"
        }
        None => "absent",
    };
    let reads = if settings.flags & SETTING_DIRECT_READS != 0 {
        "direct"
    } else {
        "helpers"
    };
    info!(
        ring_buffer_bytes = ring_size,
        terminal = backends[0].name(),
        opens = backends[1].name(),
        reads,
        io_uring,
        "kernel capture attached"
    );
    Ok(Probes { ebpf, backends })
}

/// Attaches one capture with the backend `hooks` asks for: fentry, tracepoints, or fentry
/// when the kernel takes it and tracepoints otherwise.
fn attach_capture(
    ebpf: &mut Ebpf,
    btf: &Btf,
    capture: &Capture,
    hooks: Hooks,
) -> anyhow::Result<Backend> {
    if hooks != Hooks::Tracepoint {
        match attach_fexit(ebpf, btf, capture.fexit) {
            Ok(()) => return Ok(Backend::Fentry),
            Err(err) if hooks == Hooks::Fentry => {
                return Err(Unhonoured(format!(
                    "capture.hooks = \"fentry\", but the {} capture cannot use it: {err:#}",
                    capture.name
                ))
                .into());
            }
            Err(err) => warn!(
                capture = capture.name,
                reason = %format!("{err:#}"),
                "fentry not usable on this kernel; using syscall tracepoints"
            ),
        }
    }
    attach_tracepoints(ebpf, capture.syscall_exits)
        .with_context(|| format!("attaching the {} capture", capture.name))?;
    Ok(Backend::Tracepoint)
}

/// The io_uring requests that no attached hook sees: opens always (neither backend's open hooks
/// are on io_uring's path), writes unless the terminal capture is the line discipline's.
fn io_uring_uncaptured(backends: [Backend; 2]) -> u64 {
    let mut opcodes: Vec<u16> = io_uring_op::OPENS.to_vec();
    if backends[0] == Backend::Tracepoint {
        opcodes.extend(io_uring_op::WRITES);
    }
    opcodes
        .into_iter()
        .fold(0, |mask, op| mask | io_uring_op::bit(op))
}

/// Attaches the program on the io_uring submit tracepoint (it runs only for io_uring requests)
/// and tells it which opcodes to report.
fn attach_io_uring(
    ebpf: &mut Ebpf,
    tracepoint: &tracefs::IoUringSubmit,
    backends: [Backend; 2],
) -> anyhow::Result<()> {
    let mask = io_uring_uncaptured(backends);
    let mut map: aya::maps::Array<_, u64> = aya::maps::Array::try_from(
        ebpf.map_mut("IO_URING_UNCAPTURED")
            .context("map IO_URING_UNCAPTURED missing from the eBPF object")?,
    )?;
    map.set(0, mask, 0)
        .context("setting the io_uring opcodes to report")?;
    let name = "io_uring_submit_req";
    let program: &mut TracePoint = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()?;
    program.load().map_err(|err| load_failure(name, err))?;
    program
        .attach("io_uring", tracepoint.event)
        .with_context(|| format!("attaching tracepoint io_uring/{}", tracepoint.event))?;
    log_verifier_cost(name, program.info());
    Ok(())
}

fn attach_fexit(ebpf: &mut Ebpf, btf: &Btf, (name, function): (&str, &str)) -> anyhow::Result<()> {
    let program: &mut FExit = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()?;
    program.load(function, btf).map_err(|err| {
        let refused = matches!(&err, ProgramError::LoadError { io_error, verifier_log }
            if io_error.raw_os_error() == Some(libc::EPERM) && verifier_log.to_string().trim().is_empty());
        if refused {
            anyhow::anyhow!(
                "the kernel refuses BPF trampoline programs (fexit on {function}: EPERM)"
            )
        } else {
            load_failure(&format!("fexit on {function}"), err)
        }
    })?;
    let attached = program
        .attach()
        .with_context(|| format!("attaching fexit on {function}"));
    if attached.is_err() {
        let _ = program.unload();
    }
    attached?;
    log_verifier_cost(name, program.info());
    Ok(())
}

fn attach_tracepoints(ebpf: &mut Ebpf, syscalls: &[&str]) -> anyhow::Result<()> {
    tracefs::ensure_mounted()?;
    tracefs::check_syscall_exit_layout(syscalls)?;
    for syscall in syscalls {
        let name = format!("sys_exit_{syscall}");
        let program: &mut TracePoint = ebpf
            .program_mut(&name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()?;
        program.load().map_err(|err| load_failure(&name, err))?;
        program
            .attach("syscalls", &name)
            .with_context(|| format!("attaching tracepoint syscalls/{name}"))?;
        log_verifier_cost(&name, program.info());
    }
    Ok(())
}

/// A program the kernel would not load, as one line; the verifier's log, which can run to
/// thousands of lines, goes to the log just before.
fn load_failure(what: &str, err: ProgramError) -> anyhow::Error {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                anyhow::anyhow!("the kernel refused to load {what}: {io_error}")
            } else {
                error!(
                    program = what,
                    "the verifier refused a program; its log:\n{log}"
                );
                anyhow::anyhow!(
                    "the kernel's verifier refused {what} ({io_error}); its log is above"
                )
            }
        }
        other => anyhow::Error::new(other).context(format!("loading {what}")),
    }
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

/// Fails with one clear line when the kernel cannot run the agent at all.
pub fn check_kernel() -> anyhow::Result<()> {
    if !Path::new(btf::VMLINUX_BTF).exists() {
        bail!(
            "{} is missing: the kernel was built without BTF (CONFIG_DEBUG_INFO_BTF=y is required)",
            btf::VMLINUX_BTF
        );
    }
    match aya::sys::is_map_supported(MapType::RingBuf) {
        Ok(true) => {}
        Ok(false) => bail!("this kernel has no BPF ring buffers (Linux 5.8 or later is required)"),
        Err(err) => bail!(
            "cannot create BPF maps ({err}): the agent needs CAP_BPF and CAP_PERFMON, or root"
        ),
    }
    Ok(())
}
