//! The process tree of a session: forks of new processes (threads are left out) and the exit of
//! a process's last thread, with its wait status.
use custos_agent_abi::{Exit, Fork, RecordKind};

use crate::{
    emit::{self, HEADER_SIZE},
    gate::Task,
    globals::off,
    kmem, task,
};

/// `task` (the parent, current) created `child`.
#[inline(always)]
pub fn on_fork(task: &Task, child: *const u8) {
    let Ok(child_tgid) = kmem::read::<u32>(child, off!(task_tgid)) else {
        return;
    };
    let ids = task::ids(task);
    if child_tgid == ids.tgid {
        return; // a new thread, not a new process
    }
    let Some(buf) = emit::scratch() else {
        return;
    };
    emit::write_header(buf, RecordKind::Fork, 0, &ids);
    emit::write_payload(
        buf,
        Fork {
            child_pid: child_tgid,
            _pad: 0,
        },
    );
    emit::submit(
        buf,
        HEADER_SIZE + core::mem::size_of::<Fork>(),
        RecordKind::Fork,
        task.sessionid,
    );
}

/// A thread of `task` (current) exits; reported when it is the last of its process.
#[inline(always)]
pub fn on_exit(task: &Task) {
    let Ok(signal) = kmem::read_ptr(task.ptr, off!(task_signal)) else {
        return;
    };
    let Ok(live) = kmem::read::<i32>(signal, off!(signal_live)) else {
        return;
    };
    if live != 0 {
        return; // other threads of the process are still running
    }
    let status = kmem::read::<i32>(task.ptr, off!(task_exit_code)).unwrap_or(0);
    let ids = task::ids(task);
    let Some(buf) = emit::scratch() else {
        return;
    };
    emit::write_header(buf, RecordKind::Exit, 0, &ids);
    emit::write_payload(
        buf,
        Exit {
            status: status as u32,
            _pad: 0,
        },
    );
    emit::submit(
        buf,
        HEADER_SIZE + core::mem::size_of::<Exit>(),
        RecordKind::Exit,
        task.sessionid,
    );
}
