//! exec: the executable's path and the cwd in one record, then the full argv (up to
//! `argv_max`) in CHUNK_MAX pieces. Read at sched_process_exec, when the new program's memory
//! holds its arguments. The exec record goes first so that the verifier checks the cwd walk
//! once, not once per way the argv loop can end.
use aya_ebpf::{cty::c_void, helpers::generated::bpf_probe_read_kernel_str};
use custos_agent_abi::{
    CHUNK_MAX, EXEC_ARGV_FAULT, EXEC_ARGV_TRUNCATED, EXEC_CWD_TRUNCATED, EXEC_FILENAME_TRUNCATED,
    Exec, ExecArgv, MAX_CHUNKS, PATH_STR_MAX, RecordKind, TaskIds,
};

use crate::{
    emit::{self, HEADER_SIZE},
    gate::Task,
    globals::{off, setting},
    kmem::{self, Fault},
    path, task,
};

#[inline(always)]
pub fn on_exec(task: &Task, bprm: *const u8, old_pid: u32) {
    let ids = task::ids(task);
    let Some(buf) = emit::scratch() else {
        return;
    };
    let mut flags = 0u16;
    let (start, argv_len, wanted) = match argv_area(task.ptr) {
        Ok((start, end)) => {
            let argv_len = end.saturating_sub(start);
            let limit = setting!(argv_max) as u64;
            if argv_len > limit {
                flags |= EXEC_ARGV_TRUNCATED;
                (start, argv_len, limit)
            } else {
                (start, argv_len, argv_len)
            }
        }
        Err(Fault) => {
            flags |= EXEC_ARGV_FAULT;
            (0, 0, 0)
        }
    };

    let area_offset = HEADER_SIZE + core::mem::size_of::<Exec>();
    let area = buf.wrapping_add(area_offset);
    let mut filename_len = 0usize;
    if let Ok(filename) = kmem::read_ptr(bprm, off!(bprm_filename)) {
        // SAFETY: area has PATH_STR_MAX bytes of room; the helper bounds the copy.
        let copied = unsafe {
            bpf_probe_read_kernel_str(
                area as *mut c_void,
                PATH_STR_MAX as u32,
                filename as *const c_void,
            )
        };
        if copied > 0 {
            filename_len = copied as usize - 1;
            if copied as usize == PATH_STR_MAX {
                flags |= EXEC_FILENAME_TRUNCATED;
            }
        }
    }
    let filename_len = filename_len & (PATH_STR_MAX - 1);
    let walk = kmem::read_ptr(task.ptr, off!(task_fs))
        .and_then(|fs| path::walk_path(fs.wrapping_add(off!(fs_pwd)), area_offset, filename_len));
    let cwd_len = match walk {
        Ok(walk) => {
            if !walk.complete {
                flags |= EXEC_CWD_TRUNCATED;
            }
            walk.len
        }
        Err(Fault) => {
            flags |= EXEC_CWD_TRUNCATED;
            0
        }
    };
    emit::write_header(buf, RecordKind::Exec, flags, &ids);
    emit::write_payload(
        buf,
        Exec {
            argv_len: argv_len.min(u32::MAX as u64) as u32,
            argv_wanted: wanted as u32,
            filename_len: filename_len as u16,
            cwd_len: cwd_len as u16,
            old_pid,
        },
    );
    emit::submit(
        buf,
        HEADER_SIZE + core::mem::size_of::<Exec>() + filename_len + cwd_len,
        RecordKind::Exec,
        task.sessionid,
    );
    send_argv(task, &ids, buf, start, wanted);
}

/// Sends `wanted` bytes of argv from user address `start` in pieces. A failed read ends the
/// pieces with an empty one flagged [`EXEC_ARGV_FAULT`].
#[inline(always)]
fn send_argv(task: &Task, ids: &TaskIds, buf: *mut u8, start: u64, wanted: u64) {
    emit::write_header(buf, RecordKind::ExecArgv, 0, ids);
    emit::write_payload(buf, ExecArgv { offset: 0, len: 0 });
    let mut sent = 0u64;
    for _ in 0..MAX_CHUNKS {
        if sent >= wanted {
            return;
        }
        let mut n = wanted - sent;
        if n > CHUNK_MAX as u64 {
            n = CHUNK_MAX as u64;
        }
        if emit::custos_send_piece(start + sent, n, sent, 0) < 0 {
            // The failed piece: an empty record saying so.
            emit::write_header(buf, RecordKind::ExecArgv, EXEC_ARGV_FAULT, ids);
            emit::write_payload(
                buf,
                ExecArgv {
                    offset: sent as u32,
                    len: 0,
                },
            );
            emit::submit(
                buf,
                HEADER_SIZE + core::mem::size_of::<ExecArgv>(),
                RecordKind::ExecArgv,
                task.sessionid,
            );
            return;
        }
        sent += n;
    }
}

/// `[mm->arg_start, mm->arg_end)` of the task.
#[inline(always)]
fn argv_area(task: *const u8) -> Result<(u64, u64), Fault> {
    let mm = kmem::read_ptr(task, off!(task_mm))?;
    let start: u64 = kmem::read(mm, off!(mm_arg_start))?;
    let end: u64 = kmem::read(mm, off!(mm_arg_end))?;
    Ok((start, end))
}
