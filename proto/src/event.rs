//! [`Event`]: one thing that happened in a login session, as every part of Custos sees it.
//!
//! An event is an envelope (when, which host, boot and session, its place in the session's
//! stream, and which process did it) around an [`EventBody`] whose `type` says what happened.
//! The field list is documented for users in docs/events.md.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{AuditSessionId, BootId, ByteString, Gid, Pid, Seq, Timestamp, Tty, Uid};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Wall-clock time the kernel saw it.
    pub time: Timestamp,
    /// The recorded host's name (the collector checks it against the agent's certificate).
    pub host: String,
    pub boot_id: BootId,
    /// Audit session id; with `boot_id` and `host` it names the session.
    pub session: AuditSessionId,
    /// Position in the session's stream, from 1.
    pub seq: Seq,
    /// The process that did it (absent on records the agent writes itself, such as gaps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    pub event: EventBody,
}

impl Event {
    /// The `type` of the body, as written in JSON.
    pub fn kind(&self) -> &'static str {
        self.event.kind()
    }
}

/// Who did it: the task as the kernel saw it, with user names looked up by the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Process {
    /// Thread id.
    pub pid: Pid,
    /// Process id.
    pub tgid: Pid,
    pub ppid: Pid,
    pub uid: Uid,
    pub euid: Uid,
    pub gid: Gid,
    /// Audit login uid: who logged in, whatever sudo or su did since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loginuid: Option<Uid>,
    /// Name of the login user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_user: Option<String>,
    /// Name of the effective user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Controlling terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Tty>,
    /// The kernel's short command name (at most 15 bytes).
    pub comm: ByteString,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    SessionStart(SessionStart),
    SessionEnd(SessionEnd),
    Output(Output),
    Input(Input),
    InputSuppressed(InputSuppressed),
    Exec(Exec),
    Open(Open),
    OpenRepeated(OpenRepeated),
    Fork(Fork),
    Exit(Exit),
    Gap(Gap),
    ClockSet(ClockSet),
}

impl EventBody {
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::SessionStart(_) => "session_start",
            EventBody::SessionEnd(_) => "session_end",
            EventBody::Output(_) => "output",
            EventBody::Input(_) => "input",
            EventBody::InputSuppressed(_) => "input_suppressed",
            EventBody::Exec(_) => "exec",
            EventBody::Open(_) => "open",
            EventBody::OpenRepeated(_) => "open_repeated",
            EventBody::Fork(_) => "fork",
            EventBody::Exit(_) => "exit",
            EventBody::Gap(_) => "gap",
            EventBody::ClockSet(_) => "clock_set",
        }
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The first record of a session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionStart {
    pub login_uid: Option<Uid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_user: Option<String>,
    /// The session's terminal, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<Tty>,
    /// `pts/N`, `ttyN`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty_name: Option<String>,
    /// The session leader: the oldest process of the session the agent knows.
    pub leader: Pid,
    /// Its command line.
    pub leader_command: ByteString,
    /// Address of the remote end (ssh), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// The session began before the agent started; `time` is when the agent found it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub found_running: bool,
}

/// Per rule name, how many times it applied.
pub type RuleCounts = BTreeMap<String, u64>;

/// The last record of a session: its last process exited.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionEnd {
    /// Seconds since the session's start record.
    pub duration_secs: f64,
    /// Events the agent's filters left out of this session's recording, per filter rule.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filtered: RuleCounts,
    /// Values the agent's redaction rules replaced in this session, per rule.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub redacted: RuleCounts,
}

/// Bytes a program wrote to the terminal: what the user saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub tty: Tty,
    pub data: ByteString,
    /// Bytes of the same write that were not captured (beyond the per-write limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uncaptured: u64,
    /// Redaction rules that replaced values in `data`, and how many times (never the values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub redacted: RuleCounts,
}

/// Bytes written to the terminal's master side: keystrokes, as sshd or a terminal emulator
/// delivered them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub tty: Tty,
    pub data: ByteString,
    /// The terminal had ECHO and ICANON on, so the kernel echoed these bytes to the screen
    /// (they do not appear in output records).
    #[serde(default, skip_serializing_if = "is_false")]
    pub echoed: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uncaptured: u64,
    /// Redaction rules that replaced values in `data`, and how many times.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub redacted: RuleCounts,
}

/// Keystrokes typed while the terminal had ECHO off (a password prompt): not recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSuppressed {
    pub tty: Tty,
    pub bytes: u64,
}

/// A program was executed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exec {
    /// Path of the executable as the kernel resolved it.
    pub filename: ByteString,
    pub argv: Vec<ByteString>,
    /// Size of the whole argv area in bytes.
    pub argv_len: u64,
    /// argv is cut short (it was longer than the configured maximum, or could not be read).
    #[serde(default, skip_serializing_if = "is_false")]
    pub argv_truncated: bool,
    pub cwd: ByteString,
    #[serde(default, skip_serializing_if = "is_false")]
    pub cwd_truncated: bool,
    /// Redaction rules that replaced values in `argv`, and how many times.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub redacted: RuleCounts,
}

/// How a file was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    /// O_PATH: neither read nor write.
    Path,
}

impl Access {
    pub const O_WRONLY: u32 = 0o1;
    pub const O_RDWR: u32 = 0o2;
    pub const O_PATH: u32 = 0o10000000;

    pub fn from_flags(flags: u32) -> Self {
        if flags & Self::O_PATH != 0 {
            return Access::Path;
        }
        match flags & 0o3 {
            0 => Access::Read,
            Self::O_WRONLY => Access::Write,
            _ => Access::ReadWrite,
        }
    }

    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// A file was opened, or an open failed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Open {
    /// Absolute path: the requested path resolved against the cwd or the directory fd
    /// (lexically: `..` and `.` removed, symbolic links not followed).
    pub path: ByteString,
    /// The path exactly as the program passed it, when it differs from `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<ByteString>,
    /// open, openat, openat2 or creat.
    pub syscall: String,
    pub flags: u32,
    pub access: Access,
    pub mode: u32,
    /// The file descriptor, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// The errno, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Its symbolic name (ENOENT...), on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The path could not be read completely or made absolute.
    #[serde(default, skip_serializing_if = "is_false")]
    pub path_incomplete: bool,
}

/// A process opened a file read-only again, `count` more times after the `open` record of its
/// first time (the agent reports repeats once, when the process exits or the session ends).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenRepeated {
    pub path: ByteString,
    pub count: u64,
}

/// A process created a new process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fork {
    pub child: Pid,
}

/// A process ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exit {
    /// The wait status.
    pub status: i32,
    /// Exit code, when it exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The terminating signal, when killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub core_dumped: bool,
}

impl Exit {
    pub fn from_status(status: i32) -> Self {
        let signal = status & 0x7f;
        Exit {
            status,
            code: (signal == 0).then_some((status >> 8) & 0xff),
            signal: (signal != 0).then_some(signal),
            core_dumped: signal != 0 && status & 0x80 != 0,
        }
    }
}

/// Why events are missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The kernel's ring buffer was full: the agent did not keep up.
    RingBufferFull,
    /// A record arrived incomplete (a piece of it was lost).
    IncompleteRecord,
    /// The agent's spool was full and its oldest unsent data was dropped.
    SpoolFull,
    /// Spooled data was damaged on disk and skipped.
    SpoolCorrupt,
    /// The agent was not running (stopped or restarted) while the session went on: what
    /// happened between `from` and `to` was not recorded; `records` and `bytes` are unknown (0).
    AgentNotRunning,
    /// The collector refused a batch for good (the agent's log says why; the batch is kept in
    /// its spool's `rejected/` for a while): its events are not in the recording.
    RefusedByCollector,
    /// The process sent `bytes` to the session's terminal with sendfile(2), whose data never
    /// passes through the program's memory; this hook backend cannot capture them.
    SendfileToTerminal,
    /// The process moved `bytes` from a pipe to the session's terminal with splice(2); this
    /// hook backend cannot capture them.
    SpliceToTerminal,
    /// The process submitted `records` io_uring requests that open files or write (`detail`
    /// names the opcode), which bypass the hooked system calls.
    IoUring,
    /// The process runs a 32-bit program, whose (compat) system calls this hook backend does
    /// not see: its opens and terminal writes are missing.
    Syscalls32Bit,
    /// An open_by_handle_at(2) whose file could not be named (it failed, or its path could not
    /// be read); `detail` says which.
    OpenByHandle,
}

impl GapReason {
    /// The route a recording could not see, for the reasons that name one ("sendfile to
    /// terminal"...); `None` for losses of the recorder itself.
    pub fn route(self) -> Option<&'static str> {
        Some(match self {
            GapReason::SendfileToTerminal => "sendfile to terminal",
            GapReason::SpliceToTerminal => "splice to terminal",
            GapReason::IoUring => "io_uring",
            GapReason::Syscalls32Bit => "32-bit syscalls",
            GapReason::OpenByHandle => "open_by_handle_at",
            _ => return None,
        })
    }
}

/// Events that were lost, counted: a recording never has a silent hole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub reason: GapReason,
    /// Records lost.
    pub records: u64,
    /// Bytes those records held.
    pub bytes: u64,
    /// First and last loss.
    pub from: Timestamp,
    pub to: Timestamp,
    /// What else is known of an uncaptured route: the io_uring opcode (`IORING_OP_OPENAT`),
    /// the terminal written to, an errno.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The host's wall clock was set (a step, not a slew) while the session was open: by `date -s`,
/// clock_settime, settimeofday, adjtimex or an NTP client stepping it, in this session or
/// anywhere on the host. The event's `time` is read from the new clock, as are the times of the
/// events after it; the collector keeps recordings by its own receive time, whatever the host's
/// clock says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClockSet {
    /// How far the clock jumped, in nanoseconds (negative: set back).
    pub step_ns: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        Event {
            time: Timestamp(1_700_000_000_000_000_000),
            host: "db1".into(),
            boot_id: BootId("5d9a0c3e-0000-4000-8000-000000000001".into()),
            session: AuditSessionId(7),
            seq: Seq(3),
            process: Some(Process {
                pid: Pid(10),
                tgid: Pid(10),
                ppid: Pid(9),
                uid: Uid(0),
                euid: Uid(0),
                gid: Gid(0),
                loginuid: Some(Uid(1000)),
                login_user: Some("alice".into()),
                user: Some("root".into()),
                tty: Some(Tty::from_parts(136, 2)),
                comm: "bash".into(),
            }),
            event: EventBody::Exec(Exec {
                filename: "/usr/bin/ls".into(),
                argv: vec!["ls".into(), ByteString(b"-l\xff".to_vec())],
                argv_len: 7,
                argv_truncated: false,
                cwd: "/root".into(),
                cwd_truncated: false,
                redacted: Default::default(),
            }),
        }
    }

    #[test]
    fn json_round_trip() {
        let event = sample();
        let json = serde_json::to_string(&event).unwrap();
        assert!(
            json.contains(r#""event":{"type":"exec","filename":"/usr/bin/ls""#),
            "{json}"
        );
        assert!(json.contains(r#""time":"2023-11-14T22:13:20Z""#), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), event);
    }

    #[test]
    fn messagepack_round_trip() {
        let event = sample();
        let packed = rmp_serde::to_vec_named(&event).unwrap();
        assert_eq!(rmp_serde::from_slice::<Event>(&packed).unwrap(), event);
    }

    #[test]
    fn exit_status_decoding() {
        assert_eq!(Exit::from_status(3 << 8).code, Some(3));
        let killed = Exit::from_status(9);
        assert_eq!((killed.code, killed.signal), (None, Some(9)));
        assert!(Exit::from_status(11 | 0x80).core_dumped);
    }

    #[test]
    fn access_from_flags() {
        assert_eq!(Access::from_flags(0o100000), Access::Read);
        assert_eq!(Access::from_flags(0o1101), Access::Write);
        assert_eq!(Access::from_flags(0o2), Access::ReadWrite);
        assert_eq!(Access::from_flags(0o10000000), Access::Path);
    }
}
