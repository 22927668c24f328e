//! Routes the programs see but cannot capture: each becomes an [`Uncaptured`] record, which the
//! agent writes into the session as a gap naming the route and what is known (bytes, opcode),
//! so that nothing passes in silence. Terminal routes are reported only when the output
//! descriptor is a terminal (the same test the write capture makes).
use custos_agent_abi::{RecordKind, Route, Uncaptured};

use crate::{
    emit::{self, HEADER_SIZE},
    gate::Task,
    task,
};

/// `bytes` went to `fd` by `route`, which cannot be captured: reported if `fd` is a terminal.
#[inline(always)]
pub fn on_fd_uncaptured(task: &Task, fd: u64, route: Route, bytes: u64) {
    if let Some(tty) = super::tty::fd_terminal(task, fd) {
        emit_uncaptured(task, route, 0, fd as i32, tty, bytes);
    }
}

/// An uncaptured route, sent as it is.
#[inline(always)]
pub fn emit_uncaptured(task: &Task, route: Route, opcode: u16, fd: i32, tty: u32, bytes: u64) {
    let ids = task::ids(task);
    let Some(buf) = emit::scratch() else {
        return;
    };
    emit::write_header(buf, RecordKind::Uncaptured, 0, &ids);
    emit::write_payload(
        buf,
        Uncaptured {
            route: route as u16,
            opcode,
            fd,
            tty,
            _pad: 0,
            bytes,
        },
    );
    emit::submit(
        buf,
        HEADER_SIZE + core::mem::size_of::<Uncaptured>(),
        RecordKind::Uncaptured,
        task.sessionid,
    );
}
