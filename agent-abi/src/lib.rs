//! The kernel/user ABI of the Custos agent, shared by `custos-agent-ebpf` (the writer) and
//! `custos-agent` (the reader).
//!
//! It holds exactly three things:
//! - the fixed `#[repr(C)]` records the eBPF programs write to the ring buffer
//!   ([`RecordHeader`] followed by one payload struct and, for some kinds, variable bytes);
//! - the [`KernelOffsets`] table the agent fills from the running kernel's BTF at start and hands
//!   to the programs as a read-only global (Rust eBPF has no CO-RE relocations, so no struct
//!   offset is ever compiled in);
//! - the [`Settings`] global and the counter layouts of the maps the agent reads.
//!
//! Everything is plain old data: integers and byte arrays, little-endian as the host.
#![no_std]

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;
/// The kernel's "unset" value for a login uid or an audit session id (`(u32)-1`).
pub const AUDIT_UNSET: u32 = u32::MAX;
/// Largest data part (terminal bytes, an argv piece) carried by one record. Records are sized to
/// their data; this only bounds them (and the programs' loops: few large chunks keep the
/// verifier's work small).
pub const CHUNK_MAX: usize = 16384;
/// Most chunks per terminal write or per argv (the programs' loop bound): 256 KiB.
pub const MAX_CHUNKS: u32 = 16;
/// Variable area of a path-carrying record: a path string (at most `PATH_STR_MAX` bytes) followed
/// by the name components of a directory, leaf first, each NUL-terminated.
pub const PATH_AREA: usize = 8192;
/// Longest path string read from user or kernel memory (PATH_MAX).
pub const PATH_STR_MAX: usize = 4096;
/// Longest single name component including its NUL (NAME_MAX + 1).
pub const NAME_MAX_NUL: usize = 256;
/// Deepest directory walk (components, mount crossings included) before a path is marked
/// truncated.
pub const MAX_PATH_DEPTH: u32 = 40;
/// Most iovecs of one `writev` that are looked at (one chunk of each); bytes beyond are counted
/// as uncaptured.
pub const MAX_IOVECS: u32 = 8;
/// Size of the per-CPU scratch buffer records are assembled in: a header, a payload struct and
/// CHUNK_MAX bytes of data (or PATH_AREA + NAME_MAX_NUL of path).
pub const SCRATCH_SIZE: usize = CHUNK_MAX + 256;

/// What a ring buffer record carries; the first field of every [`RecordHeader`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// Bytes written to a terminal: [`TtyData`] + data.
    TtyData = 1,
    /// Keystrokes not recorded because the terminal had ECHO off: [`TtySuppressed`].
    TtySuppressed = 2,
    /// A piece of a new program's argv: [`ExecArgv`] + data. Follows its [`RecordKind::Exec`].
    ExecArgv = 3,
    /// A program was executed: [`Exec`] + filename + cwd components. Its argv follows in
    /// [`RecordKind::ExecArgv`] pieces from the same thread.
    Exec = 4,
    /// A file was opened (or an open failed): [`Open`] + path + base directory components.
    Open = 5,
    /// A process forked a new process: [`Fork`].
    Fork = 6,
    /// The last thread of a process exited: [`Exit`].
    Exit = 7,
    /// A route to the terminal or to files that the programs saw but could not capture:
    /// [`Uncaptured`]. The agent records it as a gap naming the route.
    Uncaptured = 8,
}

impl RecordKind {
    /// Every kind, in numeric order.
    pub const ALL: [RecordKind; 8] = [
        RecordKind::TtyData,
        RecordKind::TtySuppressed,
        RecordKind::ExecArgv,
        RecordKind::Exec,
        RecordKind::Open,
        RecordKind::Fork,
        RecordKind::Exit,
        RecordKind::Uncaptured,
    ];
    /// Number of slots a per-kind counter array needs (indexed by the kind's value).
    pub const SLOTS: u32 = 9;

    pub fn from_u16(value: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| *kind as u16 == value)
    }

    pub fn name(self) -> &'static str {
        match self {
            RecordKind::TtyData => "tty_data",
            RecordKind::TtySuppressed => "tty_suppressed",
            RecordKind::ExecArgv => "exec_argv",
            RecordKind::Exec => "exec",
            RecordKind::Open => "open",
            RecordKind::Fork => "fork",
            RecordKind::Exit => "exit",
            RecordKind::Uncaptured => "uncaptured",
        }
    }
}

/// Who did something, as the kernel saw it at the time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskIds {
    /// Thread id.
    pub pid: u32,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    /// Audit login uid; [`AUDIT_UNSET`] outside a login session.
    pub loginuid: u32,
    /// Audit session id; [`AUDIT_UNSET`] outside a login session.
    pub sessionid: u32,
    /// Controlling terminal in the kernel's dev_t encoding (major << 20 | minor), 0 for none.
    pub tty: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// The start of every ring buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordHeader {
    /// A [`RecordKind`] value.
    pub kind: u16,
    /// Kind-specific flags ([`TTY_INPUT`], `EXEC_*`, `OPEN_*`).
    pub flags: u16,
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included.
    pub ts_boot_ns: u64,
    pub task: TaskIds,
}

/// `RecordHeader::flags` of a [`TtyData`] record: the bytes were written to a pty master, so they
/// are input (keystrokes), not output.
pub const TTY_INPUT: u16 = 1 << 0;

/// Terminal bytes. Followed by `len` data bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TtyData {
    /// The terminal (for a pty: the slave side) in dev_t encoding.
    pub tty: u32,
    /// Data bytes following this struct.
    pub len: u32,
    /// Bytes the whole syscall wrote.
    pub write_len: u64,
    /// Offset of this chunk in the write.
    pub offset: u64,
    /// Bytes of the write that were not captured (reported in a last record without data).
    pub uncaptured: u64,
    /// The terminal's termios `c_lflag` when the bytes were written (input only).
    pub lflag: u32,
    /// The terminal's termios `c_oflag` when the bytes were written (output only): the agent
    /// applies its output processing (ONLCR...) to record what the screen showed.
    pub oflag: u32,
}

/// Keystrokes written to a pty master while the slave had ICANON on and ECHO off.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TtySuppressed {
    pub tty: u32,
    pub _pad: u32,
    pub bytes: u64,
}

/// A piece of argv (NUL-separated strings as the kernel laid them out). Followed by `len` bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecArgv {
    pub offset: u32,
    pub len: u32,
}

/// The argv was longer than the configured maximum; `argv_wanted < argv_len`.
pub const EXEC_ARGV_TRUNCATED: u16 = 1 << 0;
/// The executable's path did not fit.
pub const EXEC_FILENAME_TRUNCATED: u16 = 1 << 1;
/// The cwd walk ended before the root.
pub const EXEC_CWD_TRUNCATED: u16 = 1 << 2;
/// Reading argv from the new program's memory failed: on [`Exec`] when the argv area could not
/// be found, on a last, empty [`ExecArgv`] piece when reading a piece failed.
pub const EXEC_ARGV_FAULT: u16 = 1 << 3;

/// A successful exec. Followed by `filename_len` bytes of the executable's path, then `cwd_len`
/// bytes of the cwd's name components, leaf first, each NUL-terminated (none: "/").
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Exec {
    /// Length of the argv area in the new program's memory.
    pub argv_len: u32,
    /// Bytes of it the [`ExecArgv`] records that follow will carry.
    pub argv_wanted: u32,
    pub filename_len: u16,
    pub cwd_len: u16,
    /// The pid the task had before exec (differs when a non-leader thread executes).
    pub old_pid: u32,
}

/// Which syscall an [`Open`] record comes from.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenSyscall {
    Open = 1,
    Openat = 2,
    Openat2 = 3,
    Creat = 4,
    /// `open_by_handle_at(mount_fd, handle, flags)`: no path is passed; the record carries the
    /// components of the opened file's own path (as base, with an empty path), or none when
    /// the open failed.
    OpenByHandleAt = 5,
}

impl OpenSyscall {
    pub fn from_u16(value: u16) -> Option<Self> {
        [
            Self::Open,
            Self::Openat,
            Self::Openat2,
            Self::Creat,
            Self::OpenByHandleAt,
        ]
        .into_iter()
        .find(|syscall| *syscall as u16 == value)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Openat => "openat",
            Self::Openat2 => "openat2",
            Self::Creat => "creat",
            Self::OpenByHandleAt => "open_by_handle_at",
        }
    }
}

/// The requested path did not fit.
pub const OPEN_PATH_TRUNCATED: u16 = 1 << 0;
/// The base directory walk ended before the root.
pub const OPEN_BASE_TRUNCATED: u16 = 1 << 1;
/// The path is relative and the base components are the cwd's.
pub const OPEN_BASE_CWD: u16 = 1 << 2;
/// The path is relative and the base components are those of the directory `dirfd` refers to.
pub const OPEN_BASE_DIRFD: u16 = 1 << 3;
/// The path is relative but the base directory could not be read.
pub const OPEN_BASE_UNKNOWN: u16 = 1 << 4;
/// Reading the path from user memory failed.
pub const OPEN_PATH_FAULT: u16 = 1 << 5;

/// An open/openat/openat2/creat, read at syscall exit. Followed by `path_len` bytes of the path as
/// passed, then `base_len` bytes of base directory components (leaf first, NUL-terminated) when
/// the path is relative.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Open {
    /// The syscall's return value: a file descriptor, or a negative errno.
    pub ret: i64,
    pub flags: u32,
    pub mode: u32,
    pub dirfd: i32,
    /// An [`OpenSyscall`] value.
    pub syscall: u16,
    pub path_len: u16,
    pub base_len: u16,
    pub _pad: [u8; 6],
}

/// A route the programs cannot capture on this backend ([`Uncaptured::route`]).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// sendfile(2) whose output descriptor is a terminal: the bytes come from the page cache
    /// of the input file, never from user memory the program could read.
    SendfileToTerminal = 1,
    /// splice(2) from a pipe to a terminal (the pipe's pages, not user memory).
    SpliceToTerminal = 2,
    /// An io_uring request whose opcode opens a file or writes ([`Uncaptured::opcode`]): it
    /// never passes through the hooked syscalls.
    IoUring = 3,
}

impl Route {
    pub fn from_u16(value: u16) -> Option<Self> {
        [
            Self::SendfileToTerminal,
            Self::SpliceToTerminal,
            Self::IoUring,
        ]
        .into_iter()
        .find(|route| *route as u16 == value)
    }
}

/// A route the programs saw but could not capture.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Uncaptured {
    /// A [`Route`] value.
    pub route: u16,
    /// For [`Route::IoUring`]: the request's `IORING_OP_*` opcode.
    pub opcode: u16,
    /// The output descriptor (-1 when not known).
    pub fd: i32,
    /// The terminal written to (dev_t encoding), 0 when not known.
    pub tty: u32,
    pub _pad: u32,
    /// Bytes the syscall reported written (0 when not known).
    pub bytes: u64,
}

/// `IORING_OP_*` opcodes (include/uapi/linux/io_uring.h) that open files or write data: an
/// io_uring request with one of them, from a captured task, becomes a [`Route::IoUring`] record
/// when its bit is set in the programs' `IO_URING_UNCAPTURED` mask.
pub mod io_uring_op {
    pub const WRITEV: u16 = 2;
    pub const WRITE_FIXED: u16 = 5;
    pub const SENDMSG: u16 = 9;
    pub const OPENAT: u16 = 18;
    pub const WRITE: u16 = 23;
    pub const SEND: u16 = 26;
    pub const OPENAT2: u16 = 28;
    pub const SPLICE: u16 = 30;
    pub const TEE: u16 = 33;
    pub const SEND_ZC: u16 = 47;
    pub const SENDMSG_ZC: u16 = 48;
    pub const WRITEV_FIXED: u16 = 61;

    /// Requests that open files (never through the open syscalls).
    pub const OPENS: [u16; 2] = [OPENAT, OPENAT2];
    /// Requests that write data (to a terminal, a file or a socket; the target is not known
    /// when the request is submitted).
    pub const WRITES: [u16; 10] = [
        WRITEV,
        WRITE_FIXED,
        SENDMSG,
        WRITE,
        SEND,
        SPLICE,
        TEE,
        SEND_ZC,
        SENDMSG_ZC,
        WRITEV_FIXED,
    ];

    /// The kernel's name of an opcode (`IORING_OP_<name>`), for the ones above.
    pub fn name(opcode: u16) -> Option<&'static str> {
        Some(match opcode {
            WRITEV => "WRITEV",
            WRITE_FIXED => "WRITE_FIXED",
            SENDMSG => "SENDMSG",
            OPENAT => "OPENAT",
            WRITE => "WRITE",
            SEND => "SEND",
            OPENAT2 => "OPENAT2",
            SPLICE => "SPLICE",
            TEE => "TEE",
            SEND_ZC => "SEND_ZC",
            SENDMSG_ZC => "SENDMSG_ZC",
            WRITEV_FIXED => "WRITEV_FIXED",
            _ => return None,
        })
    }

    /// The mask bit of an opcode.
    pub const fn bit(opcode: u16) -> u64 {
        1u64 << (opcode & 63)
    }
}

/// A new process (not a thread). The header's task is the parent.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Fork {
    pub child_pid: u32,
    pub _pad: u32,
}

/// The last thread of a process exited.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    /// Wait status as `wait(2)` encodes it: exit code << 8, or the terminating signal.
    pub status: u32,
    pub _pad: u32,
}

/// Records and bytes that could not be written to the ring buffer (it was full).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCount {
    pub records: u64,
    pub bytes: u64,
}

/// Drops that hit one session, per CPU. Timestamps are boot-time ns; 0 when nothing dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SessionDrops {
    pub records: u64,
    pub bytes: u64,
    pub first_ts: u64,
    pub last_ts: u64,
}

/// Indexes of the `ERRORS` per-CPU counter array: things the programs could not read.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeError {
    /// A kernel read failed (structure not where the offsets said, or freed).
    KernelRead = 0,
    /// The saved user registers did not belong to the syscall (wrong THREAD_SIZE or pt_regs).
    RegsMismatch = 1,
    /// The per-CPU scratch buffer was unavailable.
    Scratch = 2,
    /// A user-memory read failed.
    UserRead = 3,
}

impl ProbeError {
    pub const ALL: [ProbeError; 4] = [
        ProbeError::KernelRead,
        ProbeError::RegsMismatch,
        ProbeError::Scratch,
        ProbeError::UserRead,
    ];
    pub const SLOTS: u32 = 4;

    pub fn name(self) -> &'static str {
        match self {
            ProbeError::KernelRead => "kernel_read",
            ProbeError::RegsMismatch => "regs_mismatch",
            ProbeError::Scratch => "scratch",
            ProbeError::UserRead => "user_read",
        }
    }
}

/// Capture tasks that have a controlling terminal even outside an audit login session.
pub const SETTING_CAPTURE_TTY_TASKS: u32 = 1 << 0;

/// Login uids the kernel can be told to skip (the agent's scope policy).
pub const SCOPE_EXCLUDED_MAX: u32 = 65536;
/// Do not record keystrokes typed while the terminal has ECHO off (password prompts).
pub const SETTING_SUPPRESS_ECHO_OFF_INPUT: u32 = 1 << 1;
/// Read the current task, its credentials, parent, files, terminal and saved registers with
/// plain loads through BTF-typed pointers (`bpf_get_current_task_btf`, `bpf_task_pt_regs`;
/// kernels from 5.15, or with those helpers backported) instead of one `bpf_probe_read_kernel`
/// call per field. The verifier checks each load against the kernel's BTF at load time (the
/// offsets are load-time constants) and makes it fault-tolerant, so it reads what the helper
/// would, for a fraction of the cost: a helper call is most of what a record costs in the
/// kernel.
pub const SETTING_DIRECT_READS: u32 = 1 << 2;

/// Run-time choices of the agent, a read-only global of the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// The agent's own process id: never captured.
    pub agent_tgid: u32,
    /// `SETTING_*` bits.
    pub flags: u32,
    /// Most argv bytes captured per exec (a multiple of [`CHUNK_MAX`] is best).
    pub argv_max: u32,
    /// Most bytes captured per terminal write; the rest are counted as uncaptured.
    pub tty_write_max: u32,
    /// Records are queued without waking the agent (an interrupt per record costs more than the
    /// record); the program that makes the unread data cross a multiple of this many bytes
    /// wakes it, as does the first record after the agent parked its reader (map
    /// `READER_PARKED`). While records flow the agent drains on a short timer, so nothing
    /// waits long.
    pub wakeup_bytes: u32,
    /// Offset of the `opcode` field in the record of the `io_uring` submit tracepoint, from its
    /// tracefs format file (0 when the kernel has none).
    pub io_uring_opcode_offset: u32,
}

/// Value stored in [`KernelOffsets::magic`] once the agent has filled the table.
pub const OFFSETS_MAGIC: u32 = 0x4355_5354;

/// Byte offsets of the kernel struct fields the programs read, from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    /// [`OFFSETS_MAGIC`] when filled; the programs do nothing otherwise.
    pub magic: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_cred: u32,
    pub task_loginuid: u32,
    pub task_sessionid: u32,
    pub task_files: u32,
    pub task_fs: u32,
    pub task_signal: u32,
    pub task_stack: u32,
    pub task_mm: u32,
    pub task_exit_code: u32,
    pub cred_uid: u32,
    pub cred_euid: u32,
    pub cred_gid: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub file_private_data: u32,
    pub inode_i_rdev: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_name: u32,
    pub vfsmount_mnt_root: u32,
    /// Offset of `struct vfsmount mnt` inside `struct mount`.
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub fs_pwd: u32,
    pub signal_tty: u32,
    pub signal_live: u32,
    pub tty_index: u32,
    pub tty_driver: u32,
    pub tty_link: u32,
    /// Offset of `c_lflag` inside `struct tty_struct` (termios embedded).
    pub tty_termios_lflag: u32,
    /// Offset of `c_oflag` inside `struct tty_struct`.
    pub tty_termios_oflag: u32,
    pub tty_driver_major: u32,
    pub tty_driver_minor_start: u32,
    pub tty_file_private_tty: u32,
    pub bprm_filename: u32,
    pub pt_regs_di: u32,
    pub pt_regs_si: u32,
    pub pt_regs_dx: u32,
    pub pt_regs_r10: u32,
    pub pt_regs_orig_ax: u32,
    pub pt_regs_size: u32,
    /// Size of a task's kernel stack; the saved user registers sit at its top.
    pub thread_size: u32,
}

/// Terminal device majors (Documentation/admin-guide/devices.txt).
pub mod tty_major {
    /// Virtual consoles and serial ports.
    pub const TTY: u32 = 4;
    /// /dev/tty, /dev/console, /dev/ptmx.
    pub const TTYAUX: u32 = 5;
    pub const PTY_MASTER_FIRST: u32 = 128;
    pub const PTY_MASTER_LAST: u32 = 135;
    pub const PTY_SLAVE_FIRST: u32 = 136;
    pub const PTY_SLAVE_LAST: u32 = 143;
}

/// Splits a kernel-internal dev_t (major << 20 | minor) into (major, minor).
pub const fn dev_split(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xfffff)
}

/// Builds a kernel-internal dev_t.
pub const fn dev_make(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] structs of integers and byte arrays with explicit
    // padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::DropCount {}
    unsafe impl aya::Pod for super::SessionDrops {}
}
