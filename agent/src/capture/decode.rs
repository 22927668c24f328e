//! Ring buffer bytes to typed [`Record`]s, checking every length against the ABI.
use custos_agent_abi::{self as abi, RecordHeader, RecordKind, TTY_INPUT, TaskIds};

/// One record from the kernel.
#[derive(Clone, Debug)]
pub struct Record {
    pub flags: u16,
    pub ts_boot_ns: u64,
    pub task: TaskIds,
    pub body: RecordBody,
}

#[derive(Clone, Debug)]
pub enum RecordBody {
    TtyData {
        tty: u32,
        input: bool,
        lflag: u32,
        oflag: u32,
        uncaptured: u64,
        data: Vec<u8>,
    },
    TtySuppressed {
        tty: u32,
        bytes: u64,
    },
    ExecArgv {
        offset: u32,
        /// Reading this piece failed; no more follow.
        fault: bool,
        data: Vec<u8>,
    },
    Exec {
        argv_len: u32,
        argv_wanted: u32,
        filename: Vec<u8>,
        /// cwd name components, leaf first, NUL-terminated.
        cwd: Vec<u8>,
    },
    Open {
        ret: i64,
        open_flags: u32,
        mode: u32,
        syscall: abi::OpenSyscall,
        path: Vec<u8>,
        /// Base directory components, leaf first, NUL-terminated.
        base: Vec<u8>,
    },
    Fork {
        child_pid: u32,
    },
    Exit {
        status: u32,
    },
    /// A route the programs saw but could not capture.
    Uncaptured {
        route: abi::Route,
        opcode: u16,
        fd: i32,
        tty: u32,
        bytes: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u16),
    #[error("{kind} record of {len} bytes is shorter than its payload")]
    ShortPayload { kind: &'static str, len: usize },
    #[error("{kind} record: declared data lengths exceed the record")]
    BadLength { kind: &'static str },
    #[error("open record: unknown syscall {0}")]
    UnknownSyscall(u16),
    #[error("uncaptured record: unknown route {0}")]
    UnknownRoute(u16),
}

/// Reads a plain-old-data `T` at `offset` of `bytes`.
fn read<T: Copy>(bytes: &[u8], offset: usize) -> Option<T> {
    let end = offset.checked_add(std::mem::size_of::<T>())?;
    let slice = bytes.get(offset..end)?;
    // SAFETY: slice has size_of::<T>() bytes; T is a #[repr(C)] ABI struct of integers and byte
    // arrays, valid for any bit pattern; read_unaligned does not need alignment.
    Some(unsafe { std::ptr::read_unaligned(slice.as_ptr() as *const T) })
}

const HEADER: usize = std::mem::size_of::<RecordHeader>();

pub fn decode(bytes: &[u8]) -> Result<Record, DecodeError> {
    let header: RecordHeader = read(bytes, 0).ok_or(DecodeError::Short(bytes.len()))?;
    let kind = RecordKind::from_u16(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let payload = |size: usize| -> Result<&[u8], DecodeError> {
        if bytes.len() < HEADER + size {
            Err(DecodeError::ShortPayload {
                kind: kind.name(),
                len: bytes.len(),
            })
        } else {
            Ok(&bytes[HEADER..])
        }
    };
    let var = |fixed: usize, lens: &[usize]| -> Result<Vec<Vec<u8>>, DecodeError> {
        let mut at = HEADER + fixed;
        let mut parts = Vec::with_capacity(lens.len());
        for &len in lens {
            let part = bytes
                .get(at..at + len)
                .ok_or(DecodeError::BadLength { kind: kind.name() })?;
            parts.push(part.to_vec());
            at += len;
        }
        Ok(parts)
    };
    let body = match kind {
        RecordKind::TtyData => {
            let fixed = std::mem::size_of::<abi::TtyData>();
            let p: abi::TtyData = read(payload(fixed)?, 0).ok_or(DecodeError::Short(0))?;
            let mut parts = var(fixed, &[p.len as usize])?;
            RecordBody::TtyData {
                tty: p.tty,
                input: header.flags & TTY_INPUT != 0,
                lflag: p.lflag,
                oflag: p.oflag,
                uncaptured: p.uncaptured,
                data: parts.remove(0),
            }
        }
        RecordKind::TtySuppressed => {
            let p: abi::TtySuppressed =
                read(payload(std::mem::size_of::<abi::TtySuppressed>())?, 0)
                    .ok_or(DecodeError::Short(0))?;
            RecordBody::TtySuppressed {
                tty: p.tty,
                bytes: p.bytes,
            }
        }
        RecordKind::ExecArgv => {
            let fixed = std::mem::size_of::<abi::ExecArgv>();
            let p: abi::ExecArgv = read(payload(fixed)?, 0).ok_or(DecodeError::Short(0))?;
            let mut parts = var(fixed, &[p.len as usize])?;
            RecordBody::ExecArgv {
                offset: p.offset,
                fault: header.flags & abi::EXEC_ARGV_FAULT != 0,
                data: parts.remove(0),
            }
        }
        RecordKind::Exec => {
            let fixed = std::mem::size_of::<abi::Exec>();
            let p: abi::Exec = read(payload(fixed)?, 0).ok_or(DecodeError::Short(0))?;
            let mut parts = var(fixed, &[p.filename_len as usize, p.cwd_len as usize])?;
            let cwd = parts.pop().unwrap_or_default();
            let filename = parts.pop().unwrap_or_default();
            RecordBody::Exec {
                argv_len: p.argv_len,
                argv_wanted: p.argv_wanted,
                filename,
                cwd,
            }
        }
        RecordKind::Open => {
            let fixed = std::mem::size_of::<abi::Open>();
            let p: abi::Open = read(payload(fixed)?, 0).ok_or(DecodeError::Short(0))?;
            let syscall = abi::OpenSyscall::from_u16(p.syscall)
                .ok_or(DecodeError::UnknownSyscall(p.syscall))?;
            let mut parts = var(fixed, &[p.path_len as usize, p.base_len as usize])?;
            let base = parts.pop().unwrap_or_default();
            let path = parts.pop().unwrap_or_default();
            RecordBody::Open {
                ret: p.ret,
                open_flags: p.flags,
                mode: p.mode,
                syscall,
                path,
                base,
            }
        }
        RecordKind::Fork => {
            let p: abi::Fork =
                read(payload(std::mem::size_of::<abi::Fork>())?, 0).ok_or(DecodeError::Short(0))?;
            RecordBody::Fork {
                child_pid: p.child_pid,
            }
        }
        RecordKind::Exit => {
            let p: abi::Exit =
                read(payload(std::mem::size_of::<abi::Exit>())?, 0).ok_or(DecodeError::Short(0))?;
            RecordBody::Exit { status: p.status }
        }
        RecordKind::Uncaptured => {
            let p: abi::Uncaptured = read(payload(std::mem::size_of::<abi::Uncaptured>())?, 0)
                .ok_or(DecodeError::Short(0))?;
            RecordBody::Uncaptured {
                route: abi::Route::from_u16(p.route).ok_or(DecodeError::UnknownRoute(p.route))?,
                opcode: p.opcode,
                fd: p.fd,
                tty: p.tty,
                bytes: p.bytes,
            }
        }
    };
    Ok(Record {
        flags: header.flags,
        ts_boot_ns: header.ts_boot_ns,
        task: header.task,
        body,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn as_bytes<T>(value: &T) -> &[u8] {
        // SAFETY: test helper over #[repr(C)] POD values.
        unsafe {
            std::slice::from_raw_parts(value as *const T as *const u8, std::mem::size_of::<T>())
        }
    }

    pub fn record<P>(
        kind: RecordKind,
        flags: u16,
        task: TaskIds,
        payload: &P,
        var: &[&[u8]],
    ) -> Vec<u8> {
        let header = RecordHeader {
            kind: kind as u16,
            flags,
            _pad: 0,
            ts_boot_ns: 1_000,
            task,
        };
        let mut bytes = as_bytes(&header).to_vec();
        bytes.extend_from_slice(as_bytes(payload));
        for part in var {
            bytes.extend_from_slice(part);
        }
        bytes
    }

    #[test]
    fn decodes_an_open_record() {
        let payload = abi::Open {
            ret: -2,
            flags: 0,
            mode: 0,
            dirfd: -100,
            syscall: abi::OpenSyscall::Openat as u16,
            path_len: 5,
            base_len: 4,
            _pad: [0; 6],
        };
        let bytes = record(
            RecordKind::Open,
            0,
            TaskIds::default(),
            &payload,
            &[b"a/b/c", b"tmp\0"],
        );
        let record = decode(&bytes).unwrap();
        match record.body {
            RecordBody::Open {
                ret, path, base, ..
            } => {
                assert_eq!(ret, -2);
                assert_eq!(path, b"a/b/c");
                assert_eq!(base, b"tmp\0");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_lengths_beyond_the_record() {
        let payload = abi::ExecArgv {
            offset: 0,
            len: 100,
        };
        let bytes = record(
            RecordKind::ExecArgv,
            0,
            TaskIds::default(),
            &payload,
            &[b"short"],
        );
        assert_eq!(
            decode(&bytes).unwrap_err(),
            DecodeError::BadLength { kind: "exec_argv" }
        );
        assert_eq!(decode(&bytes[..10]).unwrap_err(), DecodeError::Short(10));
        let mut unknown = bytes.clone();
        unknown[0] = 99;
        assert_eq!(decode(&unknown).unwrap_err(), DecodeError::UnknownKind(99));
    }
}
