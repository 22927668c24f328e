//! Reading a task's identity and its open files through the BTF offsets.
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated},
};
use custos_agent_abi::{COMM_LEN, TaskIds, dev_make};

use crate::{
    globals::off,
    kmem::{self, Fault},
    scope::Task,
};

/// Who the current task is: ids, credentials, audit ids, controlling terminal, comm.
///
/// Every read here is branch-free ([`kmem::read_or_zero`]): a field that cannot be read is 0.
#[inline(always)]
pub fn ids(task: &Task) -> TaskIds {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let cred: *const u8 = kmem::read_or_zero(task.ptr, off!(task_cred));
    let parent: *const u8 = kmem::read_or_zero(task.ptr, off!(task_real_parent));
    let signal: *const u8 = kmem::read_or_zero(task.ptr, off!(task_signal));
    let tty: *const u8 = kmem::read_or_zero(signal, off!(signal_tty));
    TaskIds {
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        ppid: kmem::read_or_zero(parent, off!(task_tgid)),
        uid: uid_gid as u32,
        euid: kmem::read_or_zero(cred, off!(cred_euid)),
        gid: (uid_gid >> 32) as u32,
        loginuid: kmem::read_or_zero(task.ptr, off!(task_loginuid)),
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

/// dev_t of a `struct tty_struct`, 0 for a null one; branch-free like [`ids`].
#[inline(always)]
fn tty_dev_or_zero(tty: *const u8) -> u32 {
    let driver: *const u8 = kmem::read_or_zero(tty, off!(tty_driver));
    let major: i32 = kmem::read_or_zero(driver, off!(tty_driver_major));
    let minor_start: i32 = kmem::read_or_zero(driver, off!(tty_driver_minor_start));
    let index: i32 = kmem::read_or_zero(tty, off!(tty_index));
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

/// The `struct file *` behind a file descriptor of the task.
#[inline(always)]
pub fn fd_file(task: *const u8, fd: u64) -> Result<*const u8, Fault> {
    let files = kmem::read_ptr(task, off!(task_files))?;
    let fdt = kmem::read_ptr(files, off!(files_fdt))?;
    let max_fds: u32 = kmem::read(fdt, off!(fdtable_max_fds))?;
    if fd >= max_fds as u64 {
        return Err(Fault);
    }
    let fd_array = kmem::read_ptr(fdt, off!(fdtable_fd))?;
    kmem::read_ptr(fd_array, (fd as usize) * core::mem::size_of::<usize>())
}

/// The task's user registers saved on syscall entry, at the top of its kernel stack.
#[inline(always)]
pub fn saved_regs(task: *const u8) -> Result<*const u8, Fault> {
    let stack = kmem::read_ptr(task, off!(task_stack))?;
    Ok(stack.wrapping_add(off!(thread_size) - off!(pt_regs_size)))
}
