//! File opens (open, openat, openat2, creat, open_by_handle_at), read once at syscall exit: the
//! arguments from the task's saved user registers, the result from the tracepoint. A relative
//! path is sent with the components of its base directory (the cwd, or the directory `dirfd`
//! refers to) so that the agent can make it absolute; open_by_handle_at, which names no path, is
//! sent with the components of the file it opened.
use aya_ebpf::{cty::c_void, helpers::generated::bpf_probe_read_user_str};
use custos_agent_abi::{
    OPEN_BASE_CWD, OPEN_BASE_DIRFD, OPEN_BASE_TRUNCATED, OPEN_BASE_UNKNOWN, OPEN_PATH_FAULT,
    OPEN_PATH_TRUNCATED, Open, OpenSyscall, PATH_STR_MAX, ProbeError, RecordKind,
};

use crate::{
    emit::{self, HEADER_SIZE},
    gate::Task,
    globals::off,
    kmem::{self, Fault},
    path, task,
};

/// `AT_FDCWD`: a relative path is relative to the cwd.
const AT_FDCWD: i32 = -100;

/// An open's arguments, whatever the syscall.
pub struct OpenArgs {
    pub syscall: OpenSyscall,
    pub dirfd: i32,
    pub path: *const u8,
    pub flags: u32,
    pub mode: u32,
}

impl OpenArgs {
    /// The arguments of `syscall` from the task's saved user registers (x86_64 syscall ABI:
    /// di, si, dx, r10; `regs` from [`crate::task::saved_regs`]), as the program sees them
    /// whichever hook fired.
    #[inline(always)]
    pub fn from_regs(syscall: OpenSyscall, regs: *const u8) -> Self {
        let arg = |offset: usize| -> u64 { kmem::typed(regs, offset) };
        match syscall {
            OpenSyscall::Open => Self {
                syscall,
                dirfd: AT_FDCWD,
                path: arg(off!(pt_regs_di)) as *const u8,
                flags: arg(off!(pt_regs_si)) as u32,
                mode: arg(off!(pt_regs_dx)) as u32,
            },
            OpenSyscall::Openat => Self {
                syscall,
                dirfd: arg(off!(pt_regs_di)) as i32,
                path: arg(off!(pt_regs_si)) as *const u8,
                flags: arg(off!(pt_regs_dx)) as u32,
                mode: arg(off!(pt_regs_r10)) as u32,
            },
            OpenSyscall::Creat => Self {
                syscall,
                dirfd: AT_FDCWD,
                path: arg(off!(pt_regs_di)) as *const u8,
                flags: O_CREAT_WRONLY_TRUNC,
                mode: arg(off!(pt_regs_si)) as u32,
            },
            // open_by_handle_at(mount_fd, handle, flags): no path.
            OpenSyscall::OpenByHandleAt => Self {
                syscall,
                dirfd: arg(off!(pt_regs_di)) as i32,
                path: core::ptr::null(),
                flags: arg(off!(pt_regs_dx)) as u32,
                mode: 0,
            },
            OpenSyscall::Openat2 => {
                // struct open_how { u64 flags; u64 mode; u64 resolve; } in user memory.
                let how = arg(off!(pt_regs_dx)) as *const [u64; 2];
                // SAFETY: bpf_probe_read_user checks the address.
                let [flags, mode] =
                    unsafe { aya_ebpf::helpers::bpf_probe_read_user(how) }.unwrap_or([0, 0]);
                Self {
                    syscall,
                    dirfd: arg(off!(pt_regs_di)) as i32,
                    path: arg(off!(pt_regs_si)) as *const u8,
                    flags: flags as u32,
                    mode: mode as u32,
                }
            }
        }
    }
}

/// What creat(2) means: open(path, O_CREAT | O_WRONLY | O_TRUNC, mode).
const O_CREAT_WRONLY_TRUNC: u32 = 0o1101;

/// The open syscall with x86_64 number `nr`, if it is one.
#[inline(always)]
pub fn syscall_from_nr(nr: i64) -> Option<OpenSyscall> {
    match nr {
        2 => Some(OpenSyscall::Open),
        85 => Some(OpenSyscall::Creat),
        257 => Some(OpenSyscall::Openat),
        437 => Some(OpenSyscall::Openat2),
        _ => None,
    }
}

#[inline(always)]
pub fn on_open(task: &Task, args: OpenArgs, ret: i64) {
    let ids = task::ids(task);
    let Some(buf) = emit::scratch() else {
        return;
    };
    let mut flags = 0u16;
    let area_offset = HEADER_SIZE + core::mem::size_of::<Open>();
    let by_handle = matches!(args.syscall, OpenSyscall::OpenByHandleAt);
    let area = buf.wrapping_add(area_offset);
    let path_len = if by_handle {
        0
    } else {
        // SAFETY: area has PATH_STR_MAX bytes of room; the helper bounds the copy.
        let copied = unsafe {
            bpf_probe_read_user_str(
                area as *mut c_void,
                PATH_STR_MAX as u32,
                args.path as *const c_void,
            )
        };
        if copied > 0 {
            if copied as usize == PATH_STR_MAX {
                flags |= OPEN_PATH_TRUNCATED;
            }
            (copied as usize - 1) & (PATH_STR_MAX - 1)
        } else {
            emit::count_error(ProbeError::UserRead);
            flags |= OPEN_PATH_FAULT;
            0
        }
    };
    // SAFETY: area is inside the scratch buffer.
    let first = unsafe { *area };
    let mut base_len = 0usize;
    let base = if by_handle {
        // No path was given: the opened file's own path, when the open succeeded.
        (ret >= 0).then(|| {
            task::fd_file(task.ptr, ret as u64).map(|file| file.wrapping_add(off!(file_f_path)))
        })
    } else if path_len > 0 && first != b'/' {
        let relative_to_cwd = args.dirfd == AT_FDCWD
            || matches!(args.syscall, OpenSyscall::Open | OpenSyscall::Creat);
        Some(if relative_to_cwd {
            flags |= OPEN_BASE_CWD;
            kmem::read_ptr(task.ptr, off!(task_fs)).map(|fs| fs.wrapping_add(off!(fs_pwd)))
        } else {
            flags |= OPEN_BASE_DIRFD;
            task::fd_file(task.ptr, args.dirfd as u64)
                .map(|file| file.wrapping_add(off!(file_f_path)))
        })
    } else {
        None
    };
    if let Some(base) = base {
        match base.and_then(|base| path::walk_path(base, area_offset, path_len)) {
            Ok(walk) => {
                if !walk.complete {
                    flags |= OPEN_BASE_TRUNCATED;
                }
                base_len = walk.len;
            }
            Err(Fault) => flags |= OPEN_BASE_UNKNOWN,
        }
    }
    emit::write_header(buf, RecordKind::Open, flags, &ids);
    emit::write_payload(
        buf,
        Open {
            ret,
            flags: args.flags,
            mode: args.mode,
            dirfd: args.dirfd,
            syscall: args.syscall as u16,
            path_len: path_len as u16,
            base_len: base_len as u16,
            _pad: [0; 6],
        },
    );
    // Hidden from the compiler, so that it checks the size it submits against the scratch
    // size itself, not a part of it the verifier cannot relate to the whole.
    let size = kmem::opaque(HEADER_SIZE + core::mem::size_of::<Open>() + path_len + base_len);
    emit::submit(buf, size, RecordKind::Open, task.sessionid);
}
