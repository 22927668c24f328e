//! Terminal data: bytes written to a pty slave (what the user saw) and to a pty master
//! (keystrokes, as sshd or a terminal emulator delivers them), split into records of at most
//! CHUNK_MAX bytes. A `write` is captured up to `tty_write_max`; a `writev` one chunk of each of
//! its first MAX_IOVECS buffers. Bytes beyond are counted in a last zero-length record, never
//! silently cut. Keystrokes typed while the slave has ICANON on and
//! ECHO off (a password prompt) are replaced by a [`TtySuppressed`] marker when configured.
use custos_agent_abi::{
    CHUNK_MAX, MAX_CHUNKS, MAX_IOVECS, ProbeError, RecordKind, SETTING_SUPPRESS_ECHO_OFF_INPUT,
    TTY_INPUT, TaskIds, TtyData, TtySuppressed, dev_split, tty_major,
};

use crate::{
    emit::{self, HEADER_SIZE},
    gate::Task,
    globals::{off, setting},
    kmem::{self, Fault},
    task,
};

const ICANON: u32 = 0o000002;
const ECHO: u32 = 0o000010;

/// Where the bytes of a write come from.
pub enum Source {
    /// `write(fd, buf, count)`: a user buffer.
    User(*const u8),
    /// `writev(fd, iov, iovcnt)`: user buffers.
    Iovecs { iov: *const u8, count: u64 },
    /// A kernel buffer (the line discipline's copy of user data).
    Kernel(*const u8),
}

enum Direction {
    Output { oflag: u32 },
    Input { lflag: u32 },
}

/// A write of `written` bytes (the syscall's result) to `fd` by `task`.
#[inline(always)]
pub fn on_fd_write(task: &Task, fd: u64, source: Source, written: u64) {
    if let Ok(Some(tty)) = fd_tty(task.ptr, fd) {
        on_tty_write(task, tty, source, written);
    }
}

/// A write of `written` bytes to the terminal `tty` (a `struct tty_struct`) by `task`.
#[inline(always)]
pub fn on_tty_write(task: &Task, tty: *const u8, source: Source, written: u64) {
    let Ok((tty, direction)) = side(tty) else {
        return;
    };
    let ids = task::ids(task);
    let Some(buf) = emit::scratch() else {
        return;
    };
    let (flags, lflag, oflag) = match direction {
        Direction::Output { oflag } => (0, 0, oflag),
        Direction::Input { lflag } => {
            if setting!(flags) & SETTING_SUPPRESS_ECHO_OFF_INPUT != 0
                && lflag & ICANON != 0
                && lflag & ECHO == 0
            {
                emit::write_header(buf, RecordKind::TtySuppressed, 0, &ids);
                emit::write_payload(
                    buf,
                    TtySuppressed {
                        tty,
                        _pad: 0,
                        bytes: written,
                    },
                );
                emit::submit(
                    buf,
                    HEADER_SIZE + core::mem::size_of::<TtySuppressed>(),
                    RecordKind::TtySuppressed,
                    task.sessionid,
                );
                return;
            }
            (TTY_INPUT, lflag, 0)
        }
    };
    let target = Target {
        task,
        ids: &ids,
        buf,
        flags,
        tty,
        lflag,
        oflag,
    };
    capture(&target, source, written);
}

/// The terminal device (dev_t; the slave's for a pty) `fd` refers to, if it is a terminal.
#[inline(always)]
pub fn fd_terminal(task: &Task, fd: u64) -> Option<u32> {
    let tty = fd_tty(task.ptr, fd).ok()??;
    side(tty).ok().map(|(dev, _)| dev)
}

/// The terminal (`struct tty_struct`) `fd` writes to, if it is one.
#[inline(always)]
fn fd_tty(task: *const u8, fd: u64) -> Result<Option<*const u8>, Fault> {
    let file = task::fd_file(task, fd)?;
    let inode = kmem::read_ptr(file, off!(file_f_inode))?;
    let rdev: u32 = kmem::read(inode, off!(inode_i_rdev))?;
    let (major, _) = dev_split(rdev);
    let is_terminal = major == tty_major::TTY
        || major == tty_major::TTYAUX
        || (tty_major::PTY_SLAVE_FIRST..=tty_major::PTY_SLAVE_LAST).contains(&major);
    if !is_terminal {
        return Ok(None);
    }
    // Every terminal file (the pty master from /dev/ptmx, /dev/tty, /dev/console included) keeps
    // its real tty in file->private_data (struct tty_file_private).
    let private = kmem::read_ptr(file, off!(file_private_data))?;
    kmem::read_ptr(private, off!(tty_file_private_tty)).map(Some)
}

/// Which terminal device (the slave's, for a pty) and which side: a pty master receives
/// keystrokes, anything else shows output.
#[inline(always)]
fn side(tty: *const u8) -> Result<(u32, Direction), Fault> {
    let driver_major = task::tty_driver_major(tty)?;
    if (tty_major::PTY_MASTER_FIRST..=tty_major::PTY_MASTER_LAST).contains(&driver_major) {
        let slave = kmem::read_ptr(tty, off!(tty_link))?;
        let lflag: u32 = kmem::read(slave, off!(tty_termios_lflag))?;
        Ok((task::tty_dev(slave)?, Direction::Input { lflag }))
    } else {
        let oflag: u32 = kmem::read(tty, off!(tty_termios_oflag))?;
        Ok((task::tty_dev(tty)?, Direction::Output { oflag }))
    }
}

/// Who wrote to which terminal, for every record of one write.
struct Target<'a> {
    task: &'a Task,
    ids: &'a TaskIds,
    buf: *mut u8,
    flags: u16,
    tty: u32,
    lflag: u32,
    oflag: u32,
}

impl Target<'_> {
    fn payload(&self, written: u64, offset: u64, uncaptured: u64) -> TtyData {
        TtyData {
            tty: self.tty,
            len: 0,
            write_len: written,
            offset,
            uncaptured,
            lflag: self.lflag,
            oflag: self.oflag,
        }
    }
}

#[inline(always)]
fn capture(target: &Target, source: Source, written: u64) {
    let (buf, flags) = (target.buf, target.flags);
    // The header and the fields every piece shares; custos_send_piece fills in the rest.
    emit::write_header(buf, RecordKind::TtyData, flags, target.ids);
    emit::write_payload(buf, target.payload(written, 0, 0));
    let limit = setting!(tty_write_max) as u64;
    let total = if written < limit { written } else { limit };
    let mut captured = 0u64;
    match source {
        // One buffer: as many pieces as the limit allows.
        Source::User(ptr) | Source::Kernel(ptr) => {
            let read = match source {
                Source::Kernel(_) => emit::PIECE_FROM_KERNEL,
                _ => 0,
            };
            for _ in 0..MAX_CHUNKS {
                if captured >= total {
                    break;
                }
                let mut n = total - captured;
                if n > CHUNK_MAX as u64 {
                    n = CHUNK_MAX as u64;
                }
                let src = ptr as u64 + captured;
                if emit::custos_send_piece(src, n, captured, flags as u64 | read) < 0 {
                    break;
                }
                captured += n;
            }
        }
        // Several buffers: one piece of each of the first MAX_IOVECS.
        Source::Iovecs { iov, count } => {
            for index in 0..MAX_IOVECS as u64 {
                if index >= count || captured >= total {
                    break;
                }
                let Some((ptr, len)) = read_iovec(iov, index) else {
                    break;
                };
                let mut n = len;
                if n > total - captured {
                    n = total - captured;
                }
                if n > CHUNK_MAX as u64 {
                    n = CHUNK_MAX as u64;
                }
                if n > 0 && emit::custos_send_piece(ptr as u64, n, captured, flags as u64) < 0 {
                    break;
                }
                captured += n;
            }
        }
    }
    if captured < written {
        // What was not captured is reported, as a last record without data.
        emit::write_header(buf, RecordKind::TtyData, flags, target.ids);
        emit::write_payload(buf, target.payload(written, captured, written - captured));
        emit::submit(
            buf,
            HEADER_SIZE + core::mem::size_of::<TtyData>(),
            RecordKind::TtyData,
            target.task.sessionid,
        );
    }
}

/// The `index`th `struct iovec` of a user array.
#[inline(always)]
fn read_iovec(iov: *const u8, index: u64) -> Option<(*const u8, u64)> {
    let entry = iov.wrapping_add(index as usize * 16) as *const [u64; 2];
    // SAFETY: bpf_probe_read_user checks the address.
    match unsafe { aya_ebpf::helpers::bpf_probe_read_user(entry) } {
        Ok([base, len]) => Some((base as *const u8, len)),
        Err(_) => {
            emit::count_error(ProbeError::UserRead);
            None
        }
    }
}
