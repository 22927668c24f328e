//! The tracepoint backend, which every kernel from 5.8 allows (and the only one on kernels
//! without fentry or kprobes):
//! - syscall exit tracepoints for write, writev and the open family: the arguments come from the
//!   task's saved user registers, so one hook per syscall sees arguments and result;
//! - BTF tracepoints on the scheduler for exec, fork and exit, which cost nothing on syscalls.
//!
//! Every program asks [`gate::current`] first, so a task outside the scope leaves at once.
use aya_ebpf::{
    EbpfContext as _,
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
    gate::{self, Task},
    globals::off,
    kmem, task,
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
        kmem::typed(self.regs, offset)
    }
}

#[inline(always)]
fn syscall_exit(ctx: &TracePointContext) -> Option<SyscallExit> {
    let task = gate::current()?;
    // SAFETY: fields of the sys_exit record, which the verifier lets a tracepoint program load
    // directly (no helper call).
    let (ret, nr) = unsafe {
        let record = ctx.as_ptr() as *const u8;
        (
            core::ptr::read_volatile(record.add(SYSCALL_RET_OFFSET) as *const i64),
            core::ptr::read_volatile(record.add(SYSCALL_NR_OFFSET) as *const i32),
        )
    };
    let regs = task::saved_regs(task.ptr).ok()?;
    let orig_ax: i64 = kmem::typed_read(regs, off!(pt_regs_orig_ax)).ok()?;
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
    tty::on_fd_write(&exit.task, fd, Source::User(buf), exit.ret as u64);
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
    tty::on_fd_write(
        &exit.task,
        fd,
        Source::Iovecs { iov, count },
        exit.ret as u64,
    );
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_openat(ctx: TracePointContext) {
    if let Some(exit) = syscall_exit(&ctx) {
        let args = OpenArgs::from_regs(OpenSyscall::Openat, exit.regs);
        open::on_open(&exit.task, args, exit.ret);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_open")]
pub fn sys_exit_open(ctx: TracePointContext) {
    if let Some(exit) = syscall_exit(&ctx) {
        let args = OpenArgs::from_regs(OpenSyscall::Open, exit.regs);
        open::on_open(&exit.task, args, exit.ret);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_creat")]
pub fn sys_exit_creat(ctx: TracePointContext) {
    if let Some(exit) = syscall_exit(&ctx) {
        let args = OpenArgs::from_regs(OpenSyscall::Creat, exit.regs);
        open::on_open(&exit.task, args, exit.ret);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_openat2")]
pub fn sys_exit_openat2(ctx: TracePointContext) {
    if let Some(exit) = syscall_exit(&ctx) {
        let args = OpenArgs::from_regs(OpenSyscall::Openat2, exit.regs);
        open::on_open(&exit.task, args, exit.ret);
    }
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) {
    let Some(task) = gate::current() else {
        return;
    };
    let old_pid: i32 = ctx.arg(1);
    let bprm: *const u8 = ctx.arg(2);
    exec::on_exec(&task, bprm, old_pid as u32);
}

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) {
    let Some(task) = gate::current() else {
        return;
    };
    let child: *const u8 = ctx.arg(1);
    process::on_fork(&task, child);
}

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) {
    let Some(task) = gate::current() else {
        return;
    };
    process::on_exit(&task);
}
