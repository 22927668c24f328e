//! Kernel records to event bodies: argv pieces joined to their exec, name components turned
//! into absolute paths, terminal bytes into output or input.
use std::collections::HashMap;

use custos_agent_abi::{
    EXEC_ARGV_FAULT, EXEC_ARGV_TRUNCATED, EXEC_CWD_TRUNCATED, EXEC_FILENAME_TRUNCATED,
    OPEN_BASE_TRUNCATED, OPEN_BASE_UNKNOWN, OPEN_PATH_FAULT, OPEN_PATH_TRUNCATED, TaskIds,
};
use custos_proto::{
    ByteString, Pid, Tty,
    event::{self, Access, EventBody},
};

use super::{
    decode::{Record, RecordBody},
    routes::{self, IoUringCounts},
};
use custos_agent_abi::{OpenSyscall, Route};
use custos_proto::event::GapReason;

/// What a record became: who, when (boot-time ns), what.
#[derive(Clone, Debug)]
pub struct Captured {
    pub task: TaskIds,
    pub ts_boot_ns: u64,
    pub body: EventBody,
}

const ECHO: u32 = 0o10;
const OPOST: u32 = 0o1;
const ONLCR: u32 = 0o4;
const OCRNL: u32 = 0o10;

/// Bytes a program wrote to a terminal, as the terminal's output processing passed them to the
/// screen: with OPOST and ONLCR (the default) a newline becomes carriage return + newline; with
/// OCRNL a carriage return becomes a newline.
pub fn as_displayed(data: Vec<u8>, oflag: u32) -> Vec<u8> {
    let (onlcr, ocrnl) = (oflag & ONLCR != 0, oflag & OCRNL != 0);
    if oflag & OPOST == 0 || !(onlcr || ocrnl) {
        return data;
    }
    // Copied in runs between the bytes that change: terminal floods are megabytes a second.
    let mut out = Vec::with_capacity(data.len() + data.len() / 16);
    let mut rest = &data[..];
    while let Some(at) = memchr::memchr2(b'\n', b'\r', rest) {
        out.extend_from_slice(&rest[..at]);
        match rest[at] {
            b'\n' if onlcr => out.extend_from_slice(b"\r\n"),
            b'\r' if ocrnl => out.push(b'\n'),
            other => out.push(other),
        }
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out
}

/// An exec whose argv pieces stop coming (a piece was lost) is sent this long after its record.
const PENDING_EXEC_TTL_NS: u64 = 1_000_000_000;

/// Joins argv pieces to their exec and converts everything else record by record.
#[derive(Default)]
pub struct Assembler {
    /// Execs waiting for their argv pieces, by thread id.
    pending: HashMap<u32, PendingExec>,
    /// io_uring requests counted but not reported yet.
    io_uring: IoUringCounts,
}

struct PendingExec {
    captured: Captured,
    wanted: usize,
    argv: Vec<u8>,
    /// A piece is missing or failed.
    broken: bool,
}

impl PendingExec {
    fn finish(mut self) -> Captured {
        if let EventBody::Exec(exec) = &mut self.captured.body {
            exec.argv = split_argv(&self.argv);
            if self.broken || self.argv.len() < self.wanted {
                exec.argv_truncated = true;
            }
        }
        self.captured
    }
}

impl Assembler {
    /// Takes one record; appends the events it completes to `out`.
    pub fn push(&mut self, record: Record, out: &mut Vec<Captured>) {
        let Record {
            flags,
            ts_boot_ns,
            task,
            body,
        } = record;
        let tid = task.pid;
        if let RecordBody::ExecArgv {
            offset,
            fault,
            data,
        } = body
        {
            // A piece whose exec record was lost is dropped; the loss is already counted.
            if let Some(pending) = self.pending.get_mut(&tid) {
                if offset as usize != pending.argv.len() || fault {
                    pending.broken = true;
                }
                pending.argv.extend_from_slice(&data);
                if (fault || pending.argv.len() >= pending.wanted)
                    && let Some(pending) = self.pending.remove(&tid)
                {
                    out.push(pending.finish());
                }
            }
            return;
        }
        // Anything else from the thread means its argv pieces are over.
        if let Some(pending) = self.pending.remove(&tid) {
            out.push(pending.finish());
        }
        let body = match body {
            RecordBody::ExecArgv { .. } => return,
            RecordBody::Uncaptured {
                route: Route::IoUring,
                opcode,
                ..
            } => {
                self.io_uring.push(task, opcode, ts_boot_ns, out);
                return;
            }
            RecordBody::Uncaptured {
                route,
                opcode,
                fd,
                tty,
                bytes,
            } => routes::uncaptured(route, opcode, fd, tty, bytes, ts_boot_ns),
            RecordBody::Open {
                ret,
                syscall: OpenSyscall::OpenByHandleAt,
                open_flags,
                ..
            } if ret < 0 || flags & (OPEN_BASE_UNKNOWN | OPEN_BASE_TRUNCATED) != 0 => {
                let detail = if ret < 0 {
                    format!(
                        "failed with {:?}, flags {open_flags:#o}",
                        nix::errno::Errno::from_raw((-ret) as i32)
                    )
                } else {
                    format!("fd {ret}: its path could not be read, flags {open_flags:#o}")
                };
                routes::gap(
                    GapReason::OpenByHandle,
                    1,
                    0,
                    (ts_boot_ns, ts_boot_ns),
                    Some(detail),
                )
            }
            RecordBody::TtyData {
                tty,
                input,
                lflag,
                oflag,
                uncaptured,
                data,
            } => {
                let tty = Tty(tty);
                if input {
                    EventBody::Input(event::Input {
                        tty,
                        data: ByteString(data),
                        echoed: lflag & ECHO != 0,
                        uncaptured,
                        redacted: Default::default(),
                    })
                } else {
                    EventBody::Output(event::Output {
                        tty,
                        data: ByteString(as_displayed(data, oflag)),
                        uncaptured,
                        redacted: Default::default(),
                    })
                }
            }
            RecordBody::TtySuppressed { tty, bytes } => {
                EventBody::InputSuppressed(event::InputSuppressed {
                    tty: Tty(tty),
                    bytes,
                })
            }
            RecordBody::Exec {
                argv_len,
                argv_wanted,
                filename,
                cwd,
            } => {
                let captured = Captured {
                    task,
                    ts_boot_ns,
                    body: EventBody::Exec(event::Exec {
                        filename: ByteString(filename),
                        argv: Vec::new(),
                        argv_len: u64::from(argv_len),
                        argv_truncated: flags & (EXEC_ARGV_TRUNCATED | EXEC_ARGV_FAULT) != 0,
                        cwd: ByteString(components_to_path(&cwd)),
                        cwd_truncated: flags & (EXEC_CWD_TRUNCATED | EXEC_FILENAME_TRUNCATED) != 0,
                        redacted: Default::default(),
                    }),
                };
                if argv_wanted == 0 {
                    out.push(captured);
                } else {
                    self.pending.insert(
                        tid,
                        PendingExec {
                            captured,
                            wanted: argv_wanted as usize,
                            argv: Vec::with_capacity(argv_wanted as usize),
                            broken: false,
                        },
                    );
                }
                return;
            }
            RecordBody::Open {
                ret,
                open_flags,
                mode,
                syscall,
                path,
                base,
            } => {
                let incomplete_flags =
                    OPEN_PATH_TRUNCATED | OPEN_PATH_FAULT | OPEN_BASE_TRUNCATED | OPEN_BASE_UNKNOWN;
                let absolute = if syscall == OpenSyscall::OpenByHandleAt {
                    // No path was given: the opened file's own.
                    components_to_path(&base)
                } else if path.first() == Some(&b'/') {
                    normalize(&path)
                } else if flags & OPEN_BASE_UNKNOWN != 0 || path.is_empty() {
                    path.clone()
                } else {
                    let mut joined = components_to_path(&base);
                    joined.push(b'/');
                    joined.extend_from_slice(&path);
                    normalize(&joined)
                };
                let requested = (absolute != path).then_some(ByteString(path));
                let (fd, errno) = if ret >= 0 {
                    (Some(ret as i32), None)
                } else {
                    (None, Some((-ret) as i32))
                };
                EventBody::Open(event::Open {
                    path: ByteString(absolute),
                    requested,
                    syscall: syscall.name().to_owned(),
                    flags: open_flags,
                    access: Access::from_flags(open_flags),
                    mode,
                    fd,
                    errno,
                    error: errno.map(|errno| format!("{:?}", nix::errno::Errno::from_raw(errno))),
                    path_incomplete: flags & incomplete_flags != 0,
                })
            }
            RecordBody::Fork { child_pid } => EventBody::Fork(event::Fork {
                child: Pid(child_pid),
            }),
            RecordBody::Exit { status } => {
                // Its io_uring requests counted since the last report come first.
                self.io_uring.finish_process(task.tgid, out);
                EventBody::Exit(event::Exit::from_status(status as i32))
            }
        };
        out.push(Captured {
            task,
            ts_boot_ns,
            body,
        });
    }

    /// Nothing waits for more pieces.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.io_uring.is_empty()
    }

    /// Sends execs whose argv pieces stopped coming, as truncated.
    pub fn flush_stale(&mut self, now_boot_ns: u64, out: &mut Vec<Captured>) {
        self.io_uring.flush(now_boot_ns, false, out);
        let stale: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                now_boot_ns.saturating_sub(p.captured.ts_boot_ns) >= PENDING_EXEC_TTL_NS
            })
            .map(|(tid, _)| *tid)
            .collect();
        for tid in stale {
            if let Some(pending) = self.pending.remove(&tid) {
                out.push(pending.finish());
            }
        }
    }

    /// Sends every exec still waiting (at shutdown).
    pub fn flush_all(&mut self, out: &mut Vec<Captured>) {
        self.io_uring.flush(0, true, out);
        out.extend(self.pending.drain().map(|(_, pending)| pending.finish()));
    }
}

/// argv as the kernel lays it out: NUL-terminated strings back to back. A cut-off last string
/// (no NUL) is kept as it is.
fn split_argv(area: &[u8]) -> Vec<ByteString> {
    let area = area.strip_suffix(b"\0").unwrap_or(area);
    if area.is_empty() {
        return Vec::new();
    }
    area.split(|b| *b == 0).map(ByteString::from).collect()
}

/// Name components leaf first, each NUL-terminated, to an absolute path.
pub fn components_to_path(components: &[u8]) -> Vec<u8> {
    let mut names: Vec<&[u8]> = components
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty() && *name != b"/")
        .collect();
    names.reverse();
    if names.is_empty() {
        return b"/".to_vec();
    }
    let mut path = Vec::new();
    for name in names {
        path.push(b'/');
        path.extend_from_slice(name);
    }
    path
}

/// Removes `.`, `..` and repeated slashes from an absolute path, lexically.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            name => parts.push(name),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for part in &parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use custos_agent_abi::{self as abi, OPEN_BASE_CWD, RecordKind};

    use super::*;
    use crate::capture::decode::{decode, tests::record};

    fn one(assembler: &mut Assembler, record: Record) -> Captured {
        let mut out = Vec::new();
        assembler.push(record, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        out.remove(0)
    }

    fn open_record(path: &[u8], base: &[u8], ret: i64, flags: u16) -> Record {
        let payload = abi::Open {
            ret,
            flags: 0o2101,
            mode: 0o644,
            dirfd: -100,
            syscall: abi::OpenSyscall::Openat as u16,
            path_len: path.len() as u16,
            base_len: base.len() as u16,
            _pad: [0; 6],
        };
        decode(&record(
            RecordKind::Open,
            flags,
            TaskIds::default(),
            &payload,
            &[path, base],
        ))
        .unwrap()
    }

    #[test]
    fn relative_opens_become_absolute() {
        let mut assembler = Assembler::default();
        let captured = one(
            &mut assembler,
            open_record(b"../etc/./os-release", b"tmp\0home\0", 3, OPEN_BASE_CWD),
        );
        let EventBody::Open(open) = captured.body else {
            panic!()
        };
        assert_eq!(open.path.as_bytes(), b"/home/etc/os-release");
        assert_eq!(open.requested.unwrap().as_bytes(), b"../etc/./os-release");
        assert_eq!(open.fd, Some(3));
        assert_eq!(open.access, Access::Write);
    }

    #[test]
    fn failed_opens_carry_errno_and_name() {
        let mut assembler = Assembler::default();
        let captured = one(&mut assembler, open_record(b"/nonexistent", b"", -2, 0));
        let EventBody::Open(open) = captured.body else {
            panic!()
        };
        assert_eq!(open.path.as_bytes(), b"/nonexistent");
        assert_eq!(open.requested, None);
        assert_eq!((open.fd, open.errno), (None, Some(2)));
        assert_eq!(open.error.as_deref(), Some("ENOENT"));
    }

    fn argv_piece(offset: u32, data: &[u8], flags: u16) -> Record {
        let payload = abi::ExecArgv {
            offset,
            len: data.len() as u32,
        };
        decode(&record(
            RecordKind::ExecArgv,
            flags,
            TaskIds::default(),
            &payload,
            &[data],
        ))
        .unwrap()
    }

    fn exec(argv_wanted: u32, flags: u16) -> Record {
        let payload = abi::Exec {
            argv_len: 40,
            argv_wanted,
            filename_len: 8,
            cwd_len: 0,
            old_pid: 0,
        };
        decode(&record(
            RecordKind::Exec,
            flags,
            TaskIds::default(),
            &payload,
            &[b"/bin/cat", b""],
        ))
        .unwrap()
    }

    fn exec_body(captured: Captured) -> event::Exec {
        match captured.body {
            EventBody::Exec(exec) => exec,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn argv_pieces_join_their_exec() {
        let mut assembler = Assembler::default();
        let mut out = Vec::new();
        assembler.push(exec(18, 0), &mut out);
        assembler.push(argv_piece(0, b"cat\0/etc/ho", 0), &mut out);
        assert!(out.is_empty());
        assembler.push(argv_piece(11, b"stname\0", 0), &mut out);
        let exec = exec_body(out.remove(0));
        assert_eq!(
            exec.argv,
            vec![ByteString::from("cat"), ByteString::from("/etc/hostname")]
        );
        assert!(!exec.argv_truncated);
        assert_eq!(exec.cwd.as_bytes(), b"/");
    }

    #[test]
    fn a_lost_or_failed_piece_marks_argv_truncated() {
        let mut assembler = Assembler::default();
        let mut out = Vec::new();
        // A piece lost between two that arrived: the offsets do not meet.
        assembler.push(exec(13, 0), &mut out);
        assembler.push(argv_piece(0, b"cat\0/etc/ho", 0), &mut out);
        assembler.push(argv_piece(20, b"x\0", 0), &mut out);
        assert!(exec_body(out.remove(0)).argv_truncated);

        assembler.push(exec(22, 0), &mut out);
        assembler.push(argv_piece(0, b"", abi::EXEC_ARGV_FAULT), &mut out);
        assert!(exec_body(out.remove(0)).argv_truncated);

        // The next record of the thread ends an exec whose pieces stopped coming.
        assembler.push(exec(22, 0), &mut out);
        assembler.push(argv_piece(0, b"cat\0", 0), &mut out);
        assembler.push(open_record(b"/x", b"", 3, 0), &mut out);
        assert_eq!(out.len(), 2);
        assert!(exec_body(out.remove(0)).argv_truncated);
        out.clear();

        assembler.push(exec(22, 0), &mut out);
        assembler.flush_stale(u64::MAX, &mut out);
        assert!(exec_body(out.remove(0)).argv_truncated);
    }

    #[test]
    fn output_processing() {
        assert_eq!(as_displayed(b"a\nb\r".to_vec(), OPOST | ONLCR), b"a\r\nb\r");
        assert_eq!(as_displayed(b"a\nb\r".to_vec(), ONLCR), b"a\nb\r");
        assert_eq!(as_displayed(b"a\rb".to_vec(), OPOST | OCRNL), b"a\nb");
        assert_eq!(as_displayed(b"a\nb".to_vec(), 0), b"a\nb");
        assert_eq!(
            as_displayed(b"ab\r\ncd\n\nef".to_vec(), OPOST | ONLCR | OCRNL),
            b"ab\n\r\ncd\r\n\r\nef"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(components_to_path(b""), b"/");
        assert_eq!(components_to_path(b"c\0b\0a\0"), b"/a/b/c");
        assert_eq!(normalize(b"//a/./b/../c/"), b"/a/c");
        assert_eq!(normalize(b"/.."), b"/");
        assert_eq!(
            split_argv(b"ls\0-l\0"),
            vec![ByteString::from("ls"), ByteString::from("-l")]
        );
        assert_eq!(
            split_argv(b"ls\0-l\0\0"),
            vec![
                ByteString::from("ls"),
                ByteString::from("-l"),
                ByteString::from("")
            ]
        );
        assert_eq!(
            split_argv(b"ls\0--col"),
            vec![ByteString::from("ls"), ByteString::from("--col")]
        );
    }
}
