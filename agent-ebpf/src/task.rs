//! Reading a task's identity and its open files through the BTF offsets.
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated},
};
use custos_agent_abi::{COMM_LEN, TaskIds, dev_make};

use crate::{
    gate::Task,
    globals::off,
    kmem::{self, Fault},
};

/// Who the current task is: ids, credentials, audit ids, controlling terminal, comm.
///
/// Every read here is branch-free ([`kmem::typed`]): a field that cannot be read is 0.
#[inline(always)]
pub fn ids(task: &Task) -> TaskIds {
    let cred: *const u8 = kmem::typed(task.ptr, off!(task_cred));
    let (pid, tgid, uid, gid) = if kmem::direct() {
        (
            kmem::typed(task.ptr, off!(task_pid)),
            kmem::typed(task.ptr, off!(task_tgid)),
            kmem::typed(cred, off!(cred_uid)),
            kmem::typed(cred, off!(cred_gid)),
        )
    } else {
        let pid_tgid = bpf_get_current_pid_tgid();
        let uid_gid = bpf_get_current_uid_gid();
        (
            pid_tgid as u32,
            (pid_tgid >> 32) as u32,
            uid_gid as u32,
            (uid_gid >> 32) as u32,
        )
    };
    let parent: *const u8 = kmem::typed(task.ptr, off!(task_real_parent));
    let signal: *const u8 = kmem::typed(task.ptr, off!(task_signal));
    let tty: *const u8 = kmem::typed(signal, off!(signal_tty));
    TaskIds {
        pid,
        tgid,
        ppid: kmem::typed(parent, off!(task_tgid)),
        uid,
        euid: kmem::typed(cred, off!(cred_euid)),
        gid,
        loginuid: kmem::typed(task.ptr, off!(task_loginuid)),
        sessionid: task.sessionid,
        tty: tty_dev_or_zero(tty),
        _pad: 0,
        comm: current_comm(),
    }
}

/// The current task's comm. Written by the helper in full (NUL-padded, or zeros on failure),
/// so it needs no zeroing first (which would be a memset call the verifier walks byte by byte).
#[inline(always)]
fn current_comm() -> [u8; COMM_LEN] {
    let mut comm = core::mem::MaybeUninit::<[u8; COMM_LEN]>::uninit();
    // SAFETY: the helper writes COMM_LEN bytes.
    unsafe {
        generated::bpf_get_current_comm(comm.as_mut_ptr() as *mut c_void, COMM_LEN as u32);
        comm.assume_init()
    }
}

/// dev_t of a `struct tty_struct` read with [`kmem::typed`], 0 for a null one; branch-free
/// like [`ids`].
#[inline(always)]
fn tty_dev_or_zero(tty: *const u8) -> u32 {
    let driver: *const u8 = kmem::typed(tty, off!(tty_driver));
    let major: i32 = kmem::typed(driver, off!(tty_driver_major));
    let minor_start: i32 = kmem::typed(driver, off!(tty_driver_minor_start));
    let index: i32 = kmem::typed(tty, off!(tty_index));
    if tty.is_null() {
        0
    } else {
        dev_make(major as u32, (minor_start + index) as u32)
    }
}

/// dev_t of a `struct tty_struct`: its driver's major, and minor_start + index.
#[inline(always)]
pub fn tty_dev(tty: *const u8) -> Result<u32, Fault> {
    let driver = kmem::read_ptr(tty, off!(tty_driver))?;
    let major: i32 = kmem::read(driver, off!(tty_driver_major))?;
    let minor_start: i32 = kmem::read(driver, off!(tty_driver_minor_start))?;
    let index: i32 = kmem::read(tty, off!(tty_index))?;
    Ok(dev_make(major as u32, (minor_start + index) as u32))
}

/// Major of a tty's driver.
#[inline(always)]
pub fn tty_driver_major(tty: *const u8) -> Result<u32, Fault> {
    let driver = kmem::read_ptr(tty, off!(tty_driver))?;
    let major: i32 = kmem::read(driver, off!(tty_driver_major))?;
    Ok(major as u32)
}

/// The `struct file *` behind a file descriptor of the task (`task` as [`Task::ptr`]). The
/// result is an untyped address (the descriptor table is an array of pointers): read through it
/// with [`kmem::read`].
#[inline(always)]
pub fn fd_file(task: *const u8, fd: u64) -> Result<*const u8, Fault> {
    let files = kmem::typed_ptr(task, off!(task_files))?;
    let fdt = kmem::typed_ptr(files, off!(files_fdt))?;
    let max_fds: u32 = kmem::typed_read(fdt, off!(fdtable_max_fds))?;
    if fd >= max_fds as u64 {
        return Err(Fault);
    }
    let fd_array = kmem::typed_ptr(fdt, off!(fdtable_fd))?;
    kmem::read_ptr(fd_array, (fd as usize) * core::mem::size_of::<usize>())
}

/// The task's user registers saved on syscall entry, at the top of its kernel stack (`task` as
/// [`Task::ptr`]). With direct reads, a BTF-typed `struct pt_regs *` from `bpf_task_pt_regs`
/// (read its fields with [`kmem::typed`]); otherwise an address computed from the stack.
#[inline(always)]
pub fn saved_regs(task: *const u8) -> Result<*const u8, Fault> {
    if kmem::direct() {
        // SAFETY: plain helper call on the task from bpf_get_current_task_btf.
        let regs = unsafe { generated::bpf_task_pt_regs(task as *mut _) } as *const u8;
        return if regs.is_null() { Err(Fault) } else { Ok(regs) };
    }
    let stack = kmem::read_ptr(task, off!(task_stack))?;
    Ok(stack.wrapping_add(off!(thread_size) - off!(pt_regs_size)))
}
