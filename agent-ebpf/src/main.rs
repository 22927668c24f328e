//! Custos's kernel side. The programs capture what happens in interactive login sessions and
//! write it to one ring buffer as `custos-agent-abi` records; everything outside the capture scope
//! leaves each program after a few instructions.
//!
//! Layout, along an event's path:
//! - [`hooks`]: the attach points, one file per backend: classic syscall tracepoints and BTF
//!   tracepoints, which every kernel from 5.8 allows, and fexit programs on the tty and open
//!   paths where the kernel allows BPF trampolines. The agent chooses at start.
//! - [`capture`]: one module per event family (tty, exec, open, process), independent of how it
//!   was hooked.
//! - [`gate`]: the in-kernel filter (which tasks are captured at all).
//! - [`task`], [`path`], [`kmem`]: reading kernel structures through the offsets the agent read
//!   from BTF ([`globals`]).
//! - [`emit`]: building records in a per-CPU scratch buffer, writing them to the ring buffer and
//!   counting what did not fit.
#![no_std]
#![no_main]

mod capture;
mod emit;
mod gate;
mod globals;
mod hooks;
mod kmem;
mod path;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Programs never panic: there is no unwinding in BPF and the verifier rejects unbounded code.
    loop {}
}
