//! The fentry backend, for kernels that allow BPF trampolines (stock distribution kernels do):
//! fexit programs on two kernel functions, so that only the work they capture pays, and no
//! other syscall of any process does (a syscall tracepoint puts every syscall on the tracing
//! slow path).
//! - `n_tty_write(tty, file, buf, nr)`: the N_TTY line discipline's write, which every write to
//!   a terminal goes through (write, writev, sendfile, splice alike), with the user's bytes
//!   already copied to a kernel buffer, in pieces of at most a few KiB. At exit its result says
//!   how many of them the terminal took.
//! - `do_sys_openat2(dfd, filename, how)`: where open, openat, openat2 and creat meet, after the
//!   descriptor is allocated (or the error known). The arguments are read from the task's saved
//!   user registers, as the tracepoint backend does, so records are identical.
//!
//! Both functions have kept their names and arguments from 5.10 to 6.18. exec, fork and exit use
//! the scheduler's BTF tracepoints in both backends ([`super::tracepoint`]).
use aya_ebpf::{macros::fexit, programs::FExitContext};

use crate::{
    capture::{
        open::{self, OpenArgs},
        tty::{self, Source},
    },
    gate,
    globals::off,
    kmem, task,
};

#[fexit(function = "n_tty_write")]
pub fn fexit_n_tty_write(ctx: FExitContext) -> i32 {
    let Some(task) = gate::current() else {
        return 0;
    };
    let tty: *const u8 = ctx.arg(0);
    let buf: *const u8 = ctx.arg(2);
    let written: i64 = ctx.arg(4);
    if written > 0 {
        tty::on_tty_write(&task, tty, Source::Kernel(buf), written as u64);
    }
    0
}

#[fexit(function = "do_sys_openat2")]
pub fn fexit_do_sys_openat2(ctx: FExitContext) -> i32 {
    let Some(task) = gate::current() else {
        return 0;
    };
    let ret: i64 = ctx.arg(3);
    let Ok(regs) = task::saved_regs(task.ptr) else {
        return 0;
    };
    let nr: i64 = kmem::typed_read(regs, off!(pt_regs_orig_ax)).unwrap_or(-1);
    // Only the open syscalls reach it; anything else (a compat syscall) is left alone.
    if let Some(syscall) = open::syscall_from_nr(nr) {
        open::on_open(&task, OpenArgs::from_regs(syscall, regs), ret);
    }
    0
}
