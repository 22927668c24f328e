//! The tracepoint backend, which every kernel from 5.8 allows (and the only one on kernels
//! without fentry or kprobes):
//! - syscall exit tracepoints for write, writev and the open family: the arguments come from the
//!   task's saved user registers, so one hook per syscall sees arguments and result;
//! - BTF tracepoints on the scheduler for exec, fork and exit, which cost nothing on syscalls.
//!
//! Every program asks [`scope::current`] first, so a task outside the scope leaves at once.
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use custos_agent_abi::{OpenSyscall, ProbeError};

use crate::{
    capture::{
        exec,
        open::{self, OpenArgs},
        process,
        tty::{self, Source},
    },
    emit,
    globals::off,
    kmem,
    scope::{self, Task},
    task,
};

/// Field offsets of `syscalls/sys_exit_*` records (the agent checks them against the format
/// files at start).
const SYSCALL_NR_OFFSET: usize = 8;
const SYSCALL_RET_OFFSET: usize = 16;

/// The user registers of the syscall that is returning, once checked to belong to it.
struct SyscallExit {
    task: Task,
    regs: *const u8,
    ret: i64,
}

impl SyscallExit {
    fn arg(&self, offset: usize) -> u64 {
        kmem::read(self.regs, offset).unwrap_or(0)
    }
}

#[inline(always)]
fn syscall_exit(ctx: &TracePointContext) -> Option<SyscallExit> {
    let task = scope::current()?;
    // SAFETY: offsets of the sys_exit record layout.
    let ret: i64 = unsafe { ctx.read_at(SYSCALL_RET_OFFSET) }.ok()?;
    let nr: i32 = unsafe { ctx.read_at(SYSCALL_NR_OFFSET) }.ok()?;
    let regs = task::saved_regs(task.ptr).ok()?;
    let orig_ax: i64 = kmem::read(regs, off!(pt_regs_orig_ax)).ok()?;
    if orig_ax != nr as i64 {
        emit::count_error(ProbeError::RegsMismatch);
        return None;
    }
    Some(SyscallExit { task, regs, ret })
}

#[tracepoint(category = "syscalls", name = "sys_exit_write")]
pub fn sys_exit_write(ctx: TracePointContext) {
    let Some(exit) = syscall_exit(&ctx) else {
        return;
    };
    if exit.ret <= 0 {
        return;
    }
    let fd = exit.arg(off!(pt_regs_di));
    let buf = exit.arg(off!(pt_regs_si)) as *const u8;
    tty::on_write(&exit.task, fd, Source::Buffer(buf), exit.ret as u64);
}

#[tracepoint(category = "syscalls", name = "sys_exit_writev")]
pub fn sys_exit_writev(ctx: TracePointContext) {
    let Some(exit) = syscall_exit(&ctx) else {
        return;
    };
    if exit.ret <= 0 {
        return;
    }
    let fd = exit.arg(off!(pt_regs_di));
    let iov = exit.arg(off!(pt_regs_si)) as *const u8;
    let count = exit.arg(off!(pt_regs_dx));
    tty::on_write(
        &exit.task,
        fd,
        Source::Iovecs { iov, count },
        exit.ret as u64,
    );
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) {
    let Some(exit) = syscall_exit(&ctx) else {
        return;
    };
    let args = OpenArgs {
        syscall: OpenSyscall::Openat,
        dirfd: exit.arg(off!(pt_regs_di)) as i32,
        path: exit.arg(off!(pt_regs_si)) as *const u8,
        flags: exit.arg(off!(pt_regs_dx)) as u32,
        mode: exit.arg(off!(pt_regs_r10)) as u32,
    };
    open::on_open(&exit.task, args, exit.ret);
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) {
    let Some(exit) = syscall_exit(&ctx) else {
        return;
    };
    let args = OpenArgs {
        syscall: OpenSyscall::Open,
        dirfd: -100,
        path: exit.arg(off!(pt_regs_di)) as *const u8,
        flags: exit.arg(off!(pt_regs_si)) as u32,
        mode: exit.arg(off!(pt_regs_dx)) as u32,
    };
    open::on_open(&exit.task, args, exit.ret);
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat(ctx: TracePointContext) {
    let Some(exit) = syscall_exit(&ctx) else {
        return;
    };
    const O_CREAT_WRONLY_TRUNC: u32 = 0o1101;
    let args = OpenArgs {
        syscall: OpenSyscall::Creat,
        dirfd: -100,
        path: exit.arg(off!(pt_regs_di)) as *const u8,
        flags: O_CREAT_WRONLY_TRUNC,
        mode: exit.arg(off!(pt_regs_si)) as u32,
    };
    open::on_open(&exit.task, args, exit.ret);
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) {
    let Some(exit) = syscall_exit(&ctx) else {
        return;
    };
    // struct open_how { u64 flags; u64 mode; u64 resolve; } in user memory.
    let how = exit.arg(off!(pt_regs_dx)) as *const [u64; 2];
    // SAFETY: bpf_probe_read_user checks the address.
    let [flags, mode] = unsafe { aya_ebpf::helpers::bpf_probe_read_user(how) }.unwrap_or([0, 0]);
    let args = OpenArgs {
        syscall: OpenSyscall::Openat2,
        dirfd: exit.arg(off!(pt_regs_di)) as i32,
        path: exit.arg(off!(pt_regs_si)) as *const u8,
        flags: flags as u32,
        mode: mode as u32,
    };
    open::on_open(&exit.task, args, exit.ret);
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) {
    let Some(task) = scope::current() else {
        return;
    };
    let old_pid: i32 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    exec::on_exec(&task, bprm, old_pid as u32);
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) {
    let Some(task) = scope::current() else {
        return;
    };
    let child: *const u8 = ctx.arg(1);
    process::on_fork(&task, child);
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) {
    let Some(task) = scope::current() else {
        return;
    };
    process::on_exit(&task);
}
