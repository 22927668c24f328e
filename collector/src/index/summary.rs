//! What one chunk's events add to the index ([`ChunkSummary`]): counted and collected once,
//! whichever backend stores it. The API's `SessionSummary` and `FileInfo` are what auditors see;
//! these are the index's input.
use custos_proto::{Event, EventBody, Timestamp};

/// What one chunk's events add to the index.
#[derive(Debug, Default)]
pub struct ChunkSummary {
    pub events: u64,
    pub login_user: Option<String>,
    pub login_uid: Option<u32>,
    pub tty: Option<String>,
    pub remote: Option<String>,
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub last: Option<Timestamp>,
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Terminal bytes counted but beyond the agent's per-write limit.
    pub bytes_uncaptured: u64,
    pub gaps: Vec<GapRow>,
    pub commands: Vec<CommandRow>,
    pub files: Vec<FileOpenRow>,
    /// (pid, exit code, signal) of processes that ended.
    pub exits: Vec<(u32, Option<i32>, Option<i32>)>,
}

/// A command a chunk's events ran.
#[derive(Debug)]
pub struct CommandRow {
    pub time: Timestamp,
    pub seq: u64,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub euid: u32,
    pub user: Option<String>,
    pub filename: String,
    pub argv: Vec<String>,
    pub cwd: String,
}

/// A gap in the recording that a chunk's events report.
#[derive(Debug)]
pub struct GapRow {
    pub seq: u64,
    pub reason: String,
    pub records: u64,
    pub bytes: u64,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// A file open in a chunk's events (the API shows it as a `FileInfo`).
#[derive(Debug)]
pub struct FileOpenRow {
    pub time: Timestamp,
    pub seq: u64,
    pub pid: u32,
    pub path: String,
    pub access: String,
    pub flags: u32,
    /// The fd, or minus the errno.
    pub result: i64,
}

/// A gap's reason as the index keeps it: the reason's name, and for a route the recording could
/// not see, the process and what is known (`io_uring by pid 812 (cp): IORING_OP_OPENAT`).
fn gap_reason(
    gap: &custos_proto::event::Gap,
    process: Option<&custos_proto::event::Process>,
) -> String {
    let name = serde_json::to_value(gap.reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let Some(route) = gap.reason.route() else {
        return name;
    };
    let mut reason = route.to_owned();
    if let Some(p) = process {
        reason.push_str(&format!(" by pid {} ({})", p.tgid.0, p.comm));
    }
    if let Some(detail) = &gap.detail {
        reason.push_str(": ");
        reason.push_str(detail);
    }
    reason
}

impl ChunkSummary {
    /// What `events` (one chunk's) add to the index.
    pub fn of(events: &[Event]) -> Self {
        let mut summary = ChunkSummary {
            events: events.len() as u64,
            ..ChunkSummary::default()
        };
        for event in events {
            summary.last = Some(summary.last.map_or(event.time, |t| t.max(event.time)));
            let process = event.process.as_ref();
            match &event.event {
                EventBody::SessionStart(start) => {
                    summary.login_user = start.login_user.clone();
                    summary.login_uid = start.login_uid.map(|u| u.0);
                    if start.tty_name.is_some() {
                        summary.tty = start.tty_name.clone();
                    }
                    summary.remote = start.remote.clone();
                    summary.start = Some(event.time);
                }
                EventBody::SessionEnd(_) => summary.end = Some(event.time),
                EventBody::Output(output) => {
                    summary.bytes_out += output.data.len() as u64;
                    summary.bytes_uncaptured += output.uncaptured;
                    // A session whose leader had no terminal is known by the one it wrote to.
                    summary.tty.get_or_insert_with(|| output.tty.name());
                }
                EventBody::Input(input) => {
                    summary.bytes_in += input.data.len() as u64;
                    summary.bytes_uncaptured += input.uncaptured;
                    summary.tty.get_or_insert_with(|| input.tty.name());
                }
                EventBody::Gap(gap) => summary.gaps.push(GapRow {
                    seq: event.seq.0,
                    reason: gap_reason(gap, process),
                    records: gap.records,
                    bytes: gap.bytes,
                    from: gap.from,
                    to: gap.to,
                }),
                EventBody::Exec(exec) => summary.commands.push(CommandRow {
                    time: event.time,
                    seq: event.seq.0,
                    pid: process.map_or(0, |p| p.tgid.0),
                    ppid: process.map_or(0, |p| p.ppid.0),
                    uid: process.map_or(0, |p| p.uid.0),
                    euid: process.map_or(0, |p| p.euid.0),
                    user: process.and_then(|p| p.user.clone()),
                    filename: exec.filename.to_string(),
                    argv: exec.argv.iter().map(|a| a.to_string()).collect(),
                    cwd: exec.cwd.to_string(),
                }),
                EventBody::Open(open) => summary.files.push(FileOpenRow {
                    time: event.time,
                    seq: event.seq.0,
                    pid: process.map_or(0, |p| p.tgid.0),
                    path: open.path.to_string(),
                    access: format!("{:?}", open.access).to_lowercase(),
                    flags: open.flags,
                    result: match (open.fd, open.errno) {
                        (Some(fd), _) => i64::from(fd),
                        (None, Some(errno)) => -i64::from(errno),
                        (None, None) => -1,
                    },
                }),
                EventBody::Exit(exit) => {
                    if let Some(process) = process {
                        summary.exits.push((process.tgid.0, exit.code, exit.signal));
                    }
                }
                EventBody::InputSuppressed(_)
                | EventBody::Fork(_)
                | EventBody::OpenRepeated(_)
                | EventBody::ClockSet(_) => {}
            }
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use custos_proto::{AuditSessionId, BootId};

    use super::*;

    #[test]
    fn uncaptured_terminal_bytes_are_summed_from_output_and_input() {
        use custos_proto::{
            ByteString, Seq, Tty,
            event::{Input, Output},
        };
        let event = |seq: u64, body: EventBody| Event {
            time: Timestamp(1),
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(1),
            seq: Seq(seq),
            process: None,
            event: body,
        };
        let tty = Tty((136 << 20) | 3);
        let summary = ChunkSummary::of(&[
            event(
                1,
                EventBody::Output(Output {
                    tty,
                    data: ByteString::from(vec![b'x'; 16]),
                    uncaptured: 100,
                    redacted: Default::default(),
                }),
            ),
            event(
                2,
                EventBody::Input(Input {
                    tty,
                    data: ByteString::from(vec![b'y'; 4]),
                    echoed: false,
                    uncaptured: 7,
                    redacted: Default::default(),
                }),
            ),
        ]);
        assert_eq!(
            (
                summary.bytes_out,
                summary.bytes_in,
                summary.bytes_uncaptured
            ),
            (16, 4, 107)
        );
    }

    #[test]
    fn gaps_of_uncaptured_routes_name_the_route_the_process_and_the_detail() {
        use custos_proto::{
            ByteString, Gid, Pid, Seq, Uid,
            event::{Gap, GapReason, Process},
        };
        let gap = |reason, detail: Option<&str>| Gap {
            reason,
            records: 2,
            bytes: 0,
            from: Timestamp(1),
            to: Timestamp(2),
            detail: detail.map(str::to_owned),
        };
        let process = Process {
            pid: Pid(812),
            tgid: Pid(812),
            ppid: Pid(1),
            uid: Uid(0),
            euid: Uid(0),
            gid: Gid(0),
            loginuid: Some(Uid(0)),
            login_user: None,
            user: None,
            tty: None,
            comm: ByteString::from(b"cp".to_vec()),
        };
        let event = |seq: u64, process: Option<Process>, gap: Gap| Event {
            time: Timestamp(1),
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(1),
            seq: Seq(seq),
            process,
            event: EventBody::Gap(gap),
        };
        let summary = ChunkSummary::of(&[
            event(
                1,
                Some(process),
                gap(GapReason::IoUring, Some("IORING_OP_OPENAT")),
            ),
            event(2, None, gap(GapReason::RingBufferFull, None)),
        ]);
        let reasons: Vec<&str> = summary.gaps.iter().map(|g| g.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "io_uring by pid 812 (cp): IORING_OP_OPENAT",
                "ring_buffer_full"
            ]
        );
    }
}
