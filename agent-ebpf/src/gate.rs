//! The gate: which tasks are captured at all (the task selection of `[capture] scope`, then
//! the login uids the agent excluded). It runs first in every program and
//! costs one helper call and one load (a second helper call without direct reads) for a task
//! outside a login session, which is every service on a server.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, generated::bpf_get_current_task_btf,
    },
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use custos_agent_abi::{AUDIT_UNSET, OFFSETS_MAGIC, SCOPE_EXCLUDED_MAX, SETTING_CAPTURE_TTY_TASKS};

use crate::{
    globals::{off, setting},
    kmem,
};

/// Login uids whose sessions are out of scope (the agent's policy decides; the value is unused).
#[map]
static SCOPE_EXCLUDED_UIDS: HashMap<u32, u8> = HashMap::with_max_entries(SCOPE_EXCLUDED_MAX, 0);

/// Program runs that left because the task's login uid is out of scope.
#[map]
static SCOPE_SKIPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A task through the gate.
pub struct Task {
    /// `struct task_struct *` of the current task, BTF-typed with direct reads: read its fields
    /// with [`kmem::typed`] (or the probe reads of [`kmem::read`], which take either kind).
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
    let task = current_task();
    let sessionid: u32 = kmem::typed_read(task, off!(task_sessionid)).ok()?;
    if sessionid == AUDIT_UNSET {
        if setting!(flags) & SETTING_CAPTURE_TTY_TASKS == 0 {
            return None;
        }
        let signal = kmem::typed_ptr(task, off!(task_signal)).ok()?;
        kmem::typed_ptr(signal, off!(signal_tty)).ok()?;
    }
    let tgid: u32 = if kmem::direct() {
        kmem::typed(task, off!(task_tgid))
    } else {
        (bpf_get_current_pid_tgid() >> 32) as u32
    };
    if tgid == setting!(agent_tgid) {
        return None;
    }
    let loginuid: u32 = kmem::typed(task, off!(task_loginuid));
    // SAFETY: a lookup in a map of plain integers.
    if unsafe { SCOPE_EXCLUDED_UIDS.get(loginuid) }.is_some() {
        if let Some(skipped) = SCOPE_SKIPPED.get_ptr_mut(0) {
            // SAFETY: per-CPU slot of this program run.
            unsafe { *skipped += 1 };
        }
        return None;
    }
    Some(Task {
        ptr: task,
        sessionid,
    })
}

/// `struct task_struct *` of the current task: BTF-typed with direct reads (see
/// [`kmem::typed`]), a plain address otherwise.
#[inline(always)]
fn current_task() -> *const u8 {
    if kmem::direct() {
        // SAFETY: plain helper call; the kernel has it whenever the agent sets direct reads.
        unsafe { bpf_get_current_task_btf() as *const u8 }
    } else {
        // SAFETY: plain helper call.
        unsafe { bpf_get_current_task() as *const u8 }
    }
}
