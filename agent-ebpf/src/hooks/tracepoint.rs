//! The tracepoint backend, which every kernel from 5.8 allows (and the only one on kernels
//! without fentry or kprobes):
//! - syscall exit tracepoints for write, writev, pwritev2 and the open family (open_by_handle_at
//!   included): the arguments come from the task's saved user registers, so one hook per
//!   syscall sees arguments and result;
//! - sendfile and splice exits, whose bytes never pass through user memory: when the output is
//!   a terminal they are reported as uncaptured routes (gaps), with the byte count;
//! - the io_uring submit tracepoint, which fires only for io_uring requests: a request that
//!   opens or writes is reported as an uncaptured route with its opcode;
//! - BTF tracepoints on the scheduler for exec, fork and exit, which cost nothing on syscalls.
//!
//! Every program asks [`gate::current`] first, so a task outside the scope leaves at once.
use aya_ebpf::{
    EbpfContext as _,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use custos_agent_abi::{OpenSyscall, ProbeError, Route, io_uring_op};

use crate::{
    capture::{
        exec,
        open::{self, OpenArgs},
        process, route,
        tty::{self, Source},
    },
    emit,
    gate::{self, Task},
    globals::{off, setting},
    kmem, task,
};
use aya_ebpf::{macros::map, maps::Array};

/// Entry 0: the `IORING_OP_*` opcodes ([`io_uring_op::bit`]) reported as uncaptured, set by the
/// agent from the backends it attached (nothing until it does).
#[map]
static IO_URING_UNCAPTURED: Array<u64> = Array::with_max_entries(1, 0);

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
    on_exit_iovec_write(&ctx);
}

/// The exit of writev or pwritev2 (fd, iov, iovcnt in the same registers): the bytes written
/// from the iovecs, when fd is the session's terminal.
#[inline(always)]
fn on_exit_iovec_write(ctx: &TracePointContext) {
    let Some(exit) = syscall_exit(ctx) else {
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

/// pwritev2(fd, iov, iovcnt, offset, flags): with offset -1 it writes like writev, terminals
/// included (any other offset is refused on a terminal with ESPIPE, like pwrite64 and pwritev).
#[tracepoint(category = "syscalls", name = "sys_exit_pwritev2")]
pub fn sys_exit_pwritev2(ctx: TracePointContext) {
    on_exit_iovec_write(&ctx);
}

/// sendfile(out_fd, in_fd, offset, count): the bytes go from the input file's pages to the
/// output, never through user memory; to a terminal, the byte count is reported.
#[tracepoint(category = "syscalls", name = "sys_exit_sendfile64")]
pub fn sys_exit_sendfile64(ctx: TracePointContext) {
    let Some(exit) = syscall_exit(&ctx) else {
        return;
    };
    if exit.ret > 0 {
        let fd = exit.arg(off!(pt_regs_di));
        route::on_fd_uncaptured(&exit.task, fd, Route::SendfileToTerminal, exit.ret as u64);
    }
}

/// splice(fd_in, off_in, fd_out, off_out, len, flags): pipe pages to the output; to a
/// terminal, the byte count is reported. (tee and vmsplice only fill pipes: what reaches a
/// terminal from a pipe goes through splice, or read and write.)
#[tracepoint(category = "syscalls", name = "sys_exit_splice")]
pub fn sys_exit_splice(ctx: TracePointContext) {
    let Some(exit) = syscall_exit(&ctx) else {
        return;
    };
    if exit.ret > 0 {
        let fd = exit.arg(off!(pt_regs_dx));
        route::on_fd_uncaptured(&exit.task, fd, Route::SpliceToTerminal, exit.ret as u64);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_open_by_handle_at")]
pub fn sys_exit_open_by_handle_at(ctx: TracePointContext) {
    if let Some(exit) = syscall_exit(&ctx) {
        let args = OpenArgs::from_regs(OpenSyscall::OpenByHandleAt, exit.regs);
        open::on_open(&exit.task, args, exit.ret);
    }
}

/// An io_uring request as it is submitted (by the task, or by its SQPOLL thread, which shares
/// its session): only io_uring users run it. Requests that open files or write never pass
/// through the hooked syscalls, and where they go is not known yet: the opcode is reported.
#[tracepoint(category = "io_uring", name = "io_uring_submit_req")]
pub fn io_uring_submit_req(ctx: TracePointContext) {
    let Some(task) = gate::current() else {
        return;
    };
    let offset = setting!(io_uring_opcode_offset) as usize;
    if offset == 0 {
        return;
    }
    // SAFETY: a field of the tracepoint record, at the offset its format file gives.
    let Ok(opcode) = (unsafe { ctx.read_at::<u8>(offset) }) else {
        return;
    };
    let Some(mask) = IO_URING_UNCAPTURED.get(0) else {
        return;
    };
    if mask & io_uring_op::bit(opcode as u16) != 0 {
        route::emit_uncaptured(&task, Route::IoUring, opcode as u16, -1, 0, 0);
    }
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
