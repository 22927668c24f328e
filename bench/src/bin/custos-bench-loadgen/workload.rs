//! Realistic login sessions as the agent records them, cut into batches as the agent cuts them.
use custos_proto::{
    AuditSessionId, ByteString, EventBody, Gid, Pid, Seq, Timestamp, Tty, Uid,
    event::{Access, Exec, Exit, Fork, Input, Open, Output, Process, SessionEnd, SessionStart},
};

use super::*;

/// The agent's default `shipping.batch_max_bytes`: a busy session's batches are this big
/// (uncompressed).
pub const BATCH_MAX_BYTES: usize = 256 * 1024;

/// What a session looks like.
#[derive(Clone, Copy)]
pub struct Shape {
    /// Lines of output a command prints, at most.
    pub max_lines: usize,
    /// Commands before the session ends (when a whole session is made).
    pub commands_per_session: usize,
}

impl Shape {
    /// Busy interactive sessions: commands with up to a screenful or several of output.
    pub const BUSY: Shape = Shape {
        max_lines: 120,
        commands_per_session: usize::MAX,
    };
    /// Commands printing a lot (logs, listings, man pages).
    pub const OUTPUT: Shape = Shape {
        max_lines: 2000,
        commands_per_session: 200,
    };
    /// Many commands with short output.
    pub const COMMANDS: Shape = Shape {
        max_lines: 12,
        commands_per_session: 100,
    };
}

const USERS: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "root",
];
/// Libraries a typical dynamically linked command opens.
const LIBS: &[&str] = &[
    "/etc/ld.so.cache",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/libselinux.so.1",
    "/lib/x86_64-linux-gnu/libpcre2-8.so.0",
    "/usr/lib/locale/locale-archive",
    "/usr/share/locale/locale.alias",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
];

pub struct Session<'c> {
    corpus: &'c corpus::Corpus,
    rng: Rng,
    host: String,
    boot: BootId,
    session: AuditSessionId,
    seq: u64,
    time: i64,
    user: &'static str,
    uid: u32,
    tty: Tty,
    shell: u32,
    next_pid: u32,
    shape: Shape,
    started: bool,
    commands: usize,
    /// Events made but not yet handed out (a command's events come as a whole).
    pending: std::collections::VecDeque<Event>,
}

impl<'c> Session<'c> {
    pub fn new(
        corpus: &'c corpus::Corpus,
        host: &str,
        session: u32,
        shape: Shape,
        seed: u64,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let user_no = rng.below(USERS.len() as u64) as usize;
        let user = USERS[user_no];
        let shell = 2000 + rng.below(30_000) as u32;
        Session {
            corpus,
            host: host.to_owned(),
            boot: BootId("6f1c2a9e-8d3b-4c7a-9e21-0b5d4f3a7c18".into()),
            session: AuditSessionId(session),
            seq: 0,
            time: 1_760_000_000_000_000_000 + rng.below(1 << 40) as i64,
            user,
            uid: if user == "root" {
                0
            } else {
                1000 + user_no as u32
            },
            tty: Tty::from_parts(136, rng.below(16) as u32),
            shell,
            next_pid: shell + 1,
            shape,
            started: false,
            commands: 0,
            pending: Default::default(),
            rng,
        }
    }

    fn process(&self, pid: u32, ppid: u32, comm: &str) -> Process {
        Process {
            pid: Pid(pid),
            tgid: Pid(pid),
            ppid: Pid(ppid),
            uid: Uid(self.uid),
            euid: Uid(self.uid),
            gid: Gid(self.uid),
            loginuid: Some(Uid(self.uid)),
            login_user: Some(self.user.to_owned()),
            user: Some(self.user.to_owned()),
            tty: Some(self.tty),
            comm: ByteString::from(comm),
        }
    }

    fn push(&mut self, process: Option<Process>, body: EventBody) {
        self.seq += 1;
        self.time += 1_000 + self.rng.below(3_000_000) as i64;
        self.pending.push_back(Event {
            time: Timestamp(self.time),
            host: self.host.clone(),
            boot_id: self.boot.clone(),
            session: self.session,
            seq: Seq(self.seq),
            process,
            event: body,
        });
    }

    fn start(&mut self) {
        self.started = true;
        let remote = format!(
            "10.{}.{}.{}",
            self.rng.below(255),
            self.rng.below(255),
            1 + self.rng.below(254)
        );
        let shell = self.process(self.shell, self.shell - 1, "bash");
        self.push(
            Some(shell),
            EventBody::SessionStart(SessionStart {
                login_uid: Some(Uid(self.uid)),
                login_user: Some(self.user.to_owned()),
                tty: Some(self.tty),
                tty_name: Some(self.tty.name()),
                leader: Pid(self.shell - 1),
                leader_command: ByteString::from(format!("sshd: {} [priv]", self.user).as_str()),
                remote: Some(remote),
                found_running: false,
            }),
        );
        self.prompt();
    }

    fn prompt(&mut self) {
        let shell = self.process(self.shell, self.shell - 1, "bash");
        let text = format!("{}@{}:~$ ", self.user, self.host);
        self.output(shell, text.into_bytes());
    }

    fn output(&mut self, process: Process, data: Vec<u8>) {
        let tty = self.tty;
        self.push(
            Some(process),
            EventBody::Output(Output {
                tty,
                data: ByteString(data),
                uncaptured: 0,
                redacted: Default::default(),
            }),
        );
    }

    /// One command: typed (keystrokes and readline's echo), forked, executed, its opens, its
    /// output, its exit, and the next prompt.
    fn command(&mut self) {
        let entry_no = self.rng.below(self.corpus.entries.len() as u64) as usize;
        let argv = self.corpus.entries[entry_no].argv.clone();
        let line = argv.join(" ");
        let shell = self.process(self.shell, self.shell - 1, "bash");
        for byte in line.bytes().chain(std::iter::once(b'\r')) {
            let tty = self.tty;
            self.push(
                None,
                EventBody::Input(Input {
                    tty,
                    data: ByteString(vec![byte]),
                    echoed: false,
                    uncaptured: 0,
                    redacted: Default::default(),
                }),
            );
            let echo = if byte == b'\r' {
                b"\r\n".to_vec()
            } else {
                vec![byte]
            };
            self.output(shell.clone(), echo);
        }
        let pid = self.next_pid;
        self.next_pid += 1 + self.rng.below(5) as u32;
        self.push(Some(shell), EventBody::Fork(Fork { child: Pid(pid) }));
        let program = argv.first().cloned().unwrap_or_default();
        let comm: String = program.chars().take(15).collect();
        let child = self.process(pid, self.shell, &comm);
        let filename = format!("/usr/bin/{program}");
        let argv_len = argv.iter().map(|a| a.len() as u64 + 1).sum();
        self.push(
            Some(child.clone()),
            EventBody::Exec(Exec {
                filename: ByteString::from(filename.as_str()),
                argv: argv.iter().map(|a| ByteString::from(a.as_str())).collect(),
                argv_len,
                argv_truncated: false,
                cwd: ByteString::from(format!("/home/{}", self.user).as_str()),
                cwd_truncated: false,
                redacted: Default::default(),
            }),
        );
        let opens = 4 + self.rng.below(LIBS.len() as u64 - 3) as usize;
        for (fd, path) in LIBS.iter().take(opens).enumerate() {
            self.push(
                Some(child.clone()),
                EventBody::Open(Open {
                    path: ByteString::from(*path),
                    requested: None,
                    syscall: "openat".into(),
                    flags: 0o2000000,
                    access: Access::Read,
                    mode: 0,
                    fd: Some(3 + (fd % 2) as i32),
                    errno: None,
                    error: None,
                    path_incomplete: false,
                }),
            );
        }
        // A window of the command's real output, written a few lines at a time.
        let lines = &self.corpus.entries[entry_no].lines;
        let count = 1 + self.rng.below(self.shape.max_lines.min(lines.len()) as u64) as usize;
        let first = self.rng.below((lines.len() - count + 1) as u64) as usize;
        let mut at = first;
        while at < first + count {
            let take = (1 + self.rng.below(8) as usize).min(first + count - at);
            let mut data: Vec<u8> = lines[at..at + take].concat();
            data.truncate(4096);
            self.output(child.clone(), data);
            at += take;
        }
        self.push(Some(child), EventBody::Exit(Exit::from_status(0)));
        self.prompt();
        self.commands += 1;
    }

    fn end(&mut self) {
        self.push(
            None,
            EventBody::SessionEnd(SessionEnd {
                duration_secs: 600.0,
                ..Default::default()
            }),
        );
    }

    /// The next event (sessions made this way never end).
    fn next(&mut self) -> Event {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return event;
            }
            if !self.started {
                self.start();
            } else {
                self.command();
            }
        }
    }

    /// The events of the next batch: as many as fit in [`BATCH_MAX_BYTES`].
    pub fn batch_events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let mut size = 0usize;
        loop {
            let event = self.next();
            size += rmp_serde::to_vec_named(&event).map_or(0, |v| v.len());
            events.push(event);
            if size >= BATCH_MAX_BYTES {
                return events;
            }
        }
    }

    /// A whole session of `commands` commands, ended.
    pub fn whole(&mut self, commands: usize) -> Vec<Event> {
        let mut events = Vec::new();
        self.start();
        while self.commands < commands {
            self.command();
        }
        self.end();
        events.extend(self.pending.drain(..));
        events
    }

    /// A session of exactly `count` events, the last one its end.
    pub fn exactly(&mut self, count: usize) -> Vec<Event> {
        let mut events: Vec<Event> = (0..count - 1).map(|_| self.next()).collect();
        self.pending.clear();
        self.seq = events.last().map_or(0, |e| e.seq.0);
        self.end();
        events.extend(self.pending.drain(..));
        events
    }
}

/// One batch frame, ready to send, for `events` (of one session).
pub fn frame(events: &[Event], spool: &SpoolId, seq: &mut u64) -> anyhow::Result<Vec<u8>> {
    *seq += 1;
    let batch = wire::make_batch(spool, BatchSeq(*seq), events)
        .ok_or_else(|| anyhow!("a batch without events"))?;
    Ok(wire::encode_frame(&Frame::Batch(batch)))
}

/// A whole session cut into batches as the agent cuts them (at most [`BATCH_MAX_BYTES`]).
pub fn batches(events: &[Event], spool: &SpoolId, seq: &mut u64) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, event) in events.iter().enumerate() {
        size += rmp_serde::to_vec_named(event).map_or(0, |v| v.len());
        if size >= BATCH_MAX_BYTES || i + 1 == events.len() {
            out.push(frame(&events[start..=i], spool, seq)?);
            start = i + 1;
            size = 0;
        }
    }
    Ok(out)
}

/// Raw sizes of a workload, the baselines of the storage benchmark.
#[derive(Default)]
pub struct Totals {
    pub events: u64,
    pub commands: u64,
    pub output_bytes: u64,
    /// The events as JSON lines (the agent's `--stdout` rendering).
    pub jsonl_bytes: u64,
    /// The events as uncompressed MessagePack (the wire's and store's plaintext).
    pub msgpack_bytes: u64,
    /// Each session's terminal output alone, without events around it, compressed as the
    /// agent compresses a batch (zstd at the wire's level, a batch's worth at a time): what
    /// the output itself allows.
    pub output_compressed_bytes: u64,
}

impl Totals {
    /// Adds one session's events.
    pub fn add(&mut self, events: &[Event]) -> anyhow::Result<()> {
        let mut output_alone = Vec::new();
        for event in events {
            self.events += 1;
            match &event.event {
                EventBody::Exec(_) => self.commands += 1,
                EventBody::Output(output) => {
                    self.output_bytes += output.data.len() as u64;
                    output_alone.extend_from_slice(output.data.as_bytes());
                }
                _ => {}
            }
            self.jsonl_bytes += serde_json::to_vec(event).context("JSON")?.len() as u64 + 1;
            self.msgpack_bytes +=
                rmp_serde::to_vec_named(event).context("MessagePack")?.len() as u64;
        }
        for piece in output_alone.chunks(BATCH_MAX_BYTES) {
            self.output_compressed_bytes += zstd::bulk::compress(piece, wire::COMPRESSION_LEVEL)
                .context("zstd")?
                .len() as u64;
        }
        Ok(())
    }

    pub fn print(&self) {
        println!("workload_events={}", self.events);
        println!("workload_commands={}", self.commands);
        println!("workload_output_bytes={}", self.output_bytes);
        println!("workload_jsonl_bytes={}", self.jsonl_bytes);
        println!("workload_msgpack_bytes={}", self.msgpack_bytes);
        println!(
            "workload_output_compressed_bytes={}",
            self.output_compressed_bytes
        );
    }
}
