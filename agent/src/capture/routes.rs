//! Routes to files or the terminal that the kernel programs see but cannot capture, made into
//! gap events naming the process, the route and what is known, so that nothing passes in
//! silence:
//! - sendfile and splice to the session's terminal (the kernel reports the bytes);
//! - io_uring requests that open or write (the kernel reports the opcode; repeats from one
//!   process are counted and sent at most every [`IO_URING_REPORT`] and when it exits, the first
//!   one at once);
//! - a 32-bit program being executed (its compat system calls bypass the syscall tracepoints),
//!   recognised here from its ELF header;
//! - an open_by_handle_at whose file could not be named.
//!
//! The gaps' `from` and `to` hold boot-time nanoseconds here; the session tracker turns them
//! into wall-clock time with the rest of the event ([`crate::session`]).
use std::{collections::HashMap, io::Read as _, path::Path};

use custos_agent_abi::{Route, TaskIds, io_uring_op};
use custos_proto::{
    Timestamp, Tty,
    event::{EventBody, Gap, GapReason},
};

use super::assemble::Captured;

/// A gap of one route, timed in boot-time ns (see the module's doc).
pub fn gap(
    reason: GapReason,
    records: u64,
    bytes: u64,
    (from, to): (u64, u64),
    detail: Option<String>,
) -> EventBody {
    EventBody::Gap(Gap {
        reason,
        records,
        bytes,
        from: Timestamp(from as i64),
        to: Timestamp(to as i64),
        detail,
    })
}

/// The gap of an uncaptured kernel record.
pub fn uncaptured(route: Route, opcode: u16, fd: i32, tty: u32, bytes: u64, ts: u64) -> EventBody {
    let terminal = |tty: u32| format!("fd {fd} to /dev/{}", Tty(tty).name());
    match route {
        Route::SendfileToTerminal => gap(
            GapReason::SendfileToTerminal,
            1,
            bytes,
            (ts, ts),
            Some(terminal(tty)),
        ),
        Route::SpliceToTerminal => gap(
            GapReason::SpliceToTerminal,
            1,
            bytes,
            (ts, ts),
            Some(terminal(tty)),
        ),
        Route::IoUring => gap(
            GapReason::IoUring,
            1,
            0,
            (ts, ts),
            Some(opcode_name(opcode)),
        ),
    }
}

/// `IORING_OP_OPENAT`, or the number of an opcode without a name here.
pub fn opcode_name(opcode: u16) -> String {
    match io_uring_op::name(opcode) {
        Some(name) => format!("IORING_OP_{name}"),
        None => format!("io_uring opcode {opcode}"),
    }
}

/// How often repeated io_uring requests of one process are reported, at most.
pub const IO_URING_REPORT_NS: u64 = 1_000_000_000;

/// io_uring requests per (process, opcode) since the last report.
#[derive(Default)]
pub struct IoUringCounts {
    counts: HashMap<(u32, u16), Pending>,
}

struct Pending {
    task: TaskIds,
    /// Requests not reported yet.
    count: u64,
    first: u64,
    last: u64,
    /// When the last report was sent (none yet: the next request is reported at once).
    reported: Option<u64>,
}

impl IoUringCounts {
    /// A request: reported at once when it is the first of its kind from its process (or the
    /// first after a quiet report period), counted otherwise.
    pub fn push(&mut self, task: TaskIds, opcode: u16, ts: u64, out: &mut Vec<Captured>) {
        let entry = self
            .counts
            .entry((task.tgid, opcode))
            .or_insert_with(|| Pending {
                task,
                count: 0,
                first: ts,
                last: ts,
                reported: None,
            });
        let due = entry
            .reported
            .is_none_or(|at| ts.saturating_sub(at) >= IO_URING_REPORT_NS);
        if due {
            let (first, count) = if entry.count == 0 {
                (ts, 1)
            } else {
                (entry.first, entry.count + 1)
            };
            out.push(Self::report(task, opcode, count, first, ts));
            entry.count = 0;
            entry.reported = Some(ts);
        } else {
            if entry.count == 0 {
                entry.first = ts;
            }
            entry.count += 1;
            entry.last = ts;
            entry.task = task;
        }
    }

    fn report(task: TaskIds, opcode: u16, count: u64, from: u64, to: u64) -> Captured {
        Captured {
            task,
            ts_boot_ns: to,
            body: gap(
                GapReason::IoUring,
                count,
                0,
                (from, to),
                Some(opcode_name(opcode)),
            ),
        }
    }

    /// Reports the counts of `tgid` (it exited) and forgets it.
    pub fn finish_process(&mut self, tgid: u32, out: &mut Vec<Captured>) {
        let keys: Vec<(u32, u16)> = self
            .counts
            .keys()
            .filter(|(pid, _)| *pid == tgid)
            .copied()
            .collect();
        for key in keys {
            if let Some(p) = self.counts.remove(&key)
                && p.count > 0
            {
                out.push(Self::report(p.task, key.1, p.count, p.first, p.last));
            }
        }
    }

    /// Requests are counted that are not reported yet.
    pub fn is_empty(&self) -> bool {
        self.counts.values().all(|p| p.count == 0)
    }

    /// Reports counts older than the report period (`all`: every count, at shutdown).
    pub fn flush(&mut self, now: u64, all: bool, out: &mut Vec<Captured>) {
        for ((_, opcode), p) in self.counts.iter_mut() {
            let due = p
                .reported
                .is_none_or(|at| now.saturating_sub(at) >= IO_URING_REPORT_NS);
            if p.count > 0 && (all || due) {
                out.push(Self::report(p.task, *opcode, p.count, p.first, p.last));
                p.count = 0;
                p.reported = Some(now);
            }
        }
        if all {
            self.counts.clear();
        }
    }
}

const ELFCLASS32: u8 = 1;

/// Whether the ELF file at `path` is a 32-bit program (ELFCLASS32: i386, or the rare x32).
/// `None` when it cannot be read or is not ELF.
pub fn elf_is_32bit(path: &Path) -> Option<bool> {
    let mut ident = [0u8; 5];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut ident)
        .ok()?;
    (ident[..4] == *b"\x7fELF").then_some(ident[4] == ELFCLASS32)
}

/// The gap for an exec of `filename` (as recorded, absolute or relative to `cwd`) by `task`, if
/// the program is 32-bit. The running image (`/proc/<pid>/exe`) is read first, the recorded
/// path when the process is already gone.
pub fn exec_gap(task: &TaskIds, filename: &[u8], cwd: &[u8], ts: u64) -> Option<EventBody> {
    use std::os::unix::ffi::OsStrExt as _;
    let exe = Path::new("/proc").join(task.tgid.to_string()).join("exe");
    let named = if filename.first() == Some(&b'/') {
        Path::new(std::ffi::OsStr::from_bytes(filename)).to_path_buf()
    } else {
        Path::new(std::ffi::OsStr::from_bytes(cwd)).join(std::ffi::OsStr::from_bytes(filename))
    };
    let is_32 = elf_is_32bit(&exe).or_else(|| elf_is_32bit(&named))?;
    is_32.then(|| {
        gap(
            GapReason::Syscalls32Bit,
            1,
            0,
            (ts, ts),
            Some(format!(
                "{}: its opens and terminal writes are not recorded",
                String::from_utf8_lossy(filename)
            )),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(tgid: u32) -> TaskIds {
        TaskIds {
            tgid,
            pid: tgid,
            ..TaskIds::default()
        }
    }

    fn counts(out: &[Captured]) -> Vec<(u64, Option<String>)> {
        out.iter()
            .map(|c| match &c.body {
                EventBody::Gap(g) => (g.records, g.detail.clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn io_uring_requests_are_reported_at_once_then_counted() {
        let mut coalesce = IoUringCounts::default();
        let mut out = Vec::new();
        coalesce.push(task(7), io_uring_op::OPENAT, 1_000, &mut out);
        assert_eq!(counts(&out), [(1, Some("IORING_OP_OPENAT".into()))]);
        out.clear();
        for ts in 1..=5 {
            coalesce.push(task(7), io_uring_op::OPENAT, 1_000 + ts, &mut out);
        }
        assert!(out.is_empty(), "repeats within a second are counted");
        coalesce.push(task(7), io_uring_op::WRITE, 2_000, &mut out);
        assert_eq!(counts(&out), [(1, Some("IORING_OP_WRITE".into()))]);
        out.clear();
        coalesce.finish_process(7, &mut out);
        assert_eq!(counts(&out), [(5, Some("IORING_OP_OPENAT".into()))]);
        out.clear();
        coalesce.flush(u64::MAX, true, &mut out);
        assert!(out.is_empty(), "nothing is reported twice");
    }

    #[test]
    fn counted_requests_are_reported_after_the_period() {
        let mut coalesce = IoUringCounts::default();
        let mut out = Vec::new();
        coalesce.push(task(3), io_uring_op::WRITEV, 0, &mut out);
        coalesce.push(task(3), io_uring_op::WRITEV, 10, &mut out);
        coalesce.push(task(3), io_uring_op::WRITEV, 20, &mut out);
        out.clear();
        coalesce.flush(IO_URING_REPORT_NS / 2, false, &mut out);
        assert!(out.is_empty());
        coalesce.flush(IO_URING_REPORT_NS, false, &mut out);
        assert_eq!(counts(&out), [(2, Some("IORING_OP_WRITEV".into()))]);
    }

    #[test]
    fn elf_class_is_read_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        assert_eq!(
            elf_is_32bit(&write("i386", b"\x7fELF\x01\x01\x01\0")),
            Some(true)
        );
        assert_eq!(
            elf_is_32bit(&write("amd64", b"\x7fELF\x02\x01\x01\0")),
            Some(false)
        );
        assert_eq!(elf_is_32bit(&write("script", b"#!/bin/sh\n")), None);
        assert_eq!(elf_is_32bit(&dir.path().join("missing")), None);
    }
}
