//! The in-kernel filter: which tasks are captured at all. It runs first in every program and
//! costs one helper call and one kernel read for a task outside a login session, which is every
//! service on a server.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_get_current_task};
use custos_agent_abi::{AUDIT_UNSET, OFFSETS_MAGIC, SETTING_CAPTURE_TTY_TASKS};

use crate::{
    globals::{off, setting},
    kmem,
};

/// A task inside the capture scope.
pub struct Task {
    /// `struct task_struct *` of the current task.
    pub ptr: *const u8,
    /// Its audit session id ([`AUDIT_UNSET`] for a task captured only for its terminal).
    pub sessionid: u32,
}

/// The current task, if it is to be captured.
#[inline(always)]
pub fn current() -> Option<Task> {
    if off!(magic) as u32 != OFFSETS_MAGIC {
        return None;
    }
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let sessionid: u32 = kmem::read(task, off!(task_sessionid)).ok()?;
    if sessionid == AUDIT_UNSET {
        if setting!(flags) & SETTING_CAPTURE_TTY_TASKS == 0 {
            return None;
        }
        let signal = kmem::read_ptr(task, off!(task_signal)).ok()?;
        kmem::read_ptr(signal, off!(signal_tty)).ok()?;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == setting!(agent_tgid) {
        return None;
    }
    Some(Task {
        ptr: task,
        sessionid,
    })
}
