//! `custos-bench-loadgen`: simulated agents for the `pipeline` benchmarks of `cargo xtask bench`.
//!
//! Each simulated agent is a real `custos/1` client, like the agent's shipper: its own QUIC
//! connection, its own agent certificate issued by the deployment CA, a `hello`, then batches
//! made with the proto crate's framing (`wire::make_batch`, `wire::encode_frame`), each on its
//! own stream, never two of one session outstanding. The sessions are realistic (keystrokes and
//! their echo, fork, exec with argv, the opens of a dynamically linked program, terminal output
//! taken from real commands run on this machine, exit, prompt) and every figure it prints
//! counts only what the collector acknowledged (the collector acknowledges a batch only once it
//! is durable). Results go to stdout as `key=value` lines for xtask to read.
//!
//! Subcommands: `certs` (issue agent certificates), `ingest` (N agents at full speed),
//! `storage` (ship a workload, print its raw sizes), `session` (ship one session of a given
//! number of events and print its recording id).
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand};
use custos_bench::Rng;
use custos_pki::{
    Role,
    issue::{PkiDir, Validity},
    tls::TlsFiles,
};
use custos_proto::{
    BootId, Event,
    wire::{self, BatchSeq, Frame, Hello, SpoolId},
};

#[derive(Parser)]
#[command(about = "Simulated Custos agents (real QUIC, mutual TLS, custos/1) for benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Where the simulated agents find the collector and their certificates.
#[derive(clap::Args, Clone)]
struct Target {
    /// The collector's QUIC address.
    #[arg(long)]
    collector: SocketAddr,
    /// The deployment's PKI directory (ca.pem; agent certificates in issued/).
    #[arg(long)]
    pki: PathBuf,
    /// Directory of real command outputs to replay as terminal output (made if missing).
    #[arg(long)]
    corpus: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Issue certificates for agents bench-agent-0000 .. bench-agent-(N-1), skipping those that
    /// exist.
    Certs {
        #[arg(long)]
        pki: PathBuf,
        #[arg(long)]
        agents: usize,
    },
    /// N agents, each with its own connection and certificate, send their batches as fast as
    /// the collector acknowledges them.
    Ingest {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        agents: usize,
        /// Sessions of each agent shipping at once (an agent has at most one batch of a session
        /// outstanding).
        #[arg(long)]
        sessions: usize,
        /// Batches each session sends.
        #[arg(long)]
        batches: usize,
        /// Seed of the workload (a different one per run keeps spools and sessions distinct).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Ships a storage workload through one agent and prints its raw sizes.
    Storage {
        #[command(flatten)]
        target: Target,
        /// `output` (commands printing a lot) or `commands` (1,000 commands, short output).
        #[arg(long)]
        kind: String,
    },
    /// Ships one session of exactly `events` events; prints its recording id.
    Session {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        events: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Certs { pki, agents } => certs(&pki, agents),
        Cmd::Ingest {
            target,
            agents,
            sessions,
            batches,
            seed,
        } => ingest(&target, agents, sessions, batches, seed),
        Cmd::Storage { target, kind } => storage(&target, &kind),
        Cmd::Session { target, events } => one_session(&target, events),
    }
}

/// Host name (and certificate common name) of simulated agent `i`.
fn agent_name(i: usize) -> String {
    format!("bench-agent-{i:04}")
}

fn certs(pki: &Path, agents: usize) -> anyhow::Result<()> {
    let dir = PkiDir::new(pki);
    for i in 0..agents {
        let name = agent_name(i);
        if dir.issued().join(format!("agent-{name}.pem")).exists() {
            continue;
        }
        custos_pki::issue::issue(&dir, Role::Agent, &name, Validity::days(30), None, false)
            .with_context(|| format!("issuing the certificate of {name}"))?;
    }
    println!("agents={agents}");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn ingest(
    target: &Target,
    agents: usize,
    sessions: usize,
    batches: usize,
    seed: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        agents > 0 && sessions > 0 && batches > 0,
        "agents, sessions, batches must be > 0"
    );
    let corpus = corpus::load(&target.corpus)?;
    let started = Instant::now();
    let plans = generate(
        &corpus,
        agents,
        sessions,
        batches,
        seed,
        workload::Shape::BUSY,
    )?;
    eprintln!(
        "loadgen: generated {} batches in {:.1}s",
        plans
            .iter()
            .map(|p| p.sessions.iter().map(Vec::len).sum::<usize>())
            .sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    let result = runtime()?.block_on(client::run_all(target, plans))?;
    result.print();
    Ok(())
}

fn storage(target: &Target, kind: &str) -> anyhow::Result<()> {
    let corpus = corpus::load(&target.corpus)?;
    let shape = match kind {
        "output" => workload::Shape::OUTPUT,
        "commands" => workload::Shape::COMMANDS,
        other => bail!("unknown storage workload {other:?} (output, commands)"),
    };
    let mut rng = Rng::new(7);
    let agent = 0;
    let mut sessions = Vec::new();
    let mut totals = workload::Totals::default();
    // Output: about 64 MiB of terminal output; commands: 1,000 commands.
    let mut session_no = 0u32;
    loop {
        let done = match kind {
            "output" => totals.output_bytes >= 64 << 20,
            _ => totals.commands >= 1000,
        };
        if done {
            break;
        }
        session_no += 1;
        let mut maker =
            workload::Session::new(&corpus, &agent_name(agent), session_no, shape, rng.next());
        let budget = match kind {
            "output" => usize::MAX,
            _ => 1000 - totals.commands as usize,
        };
        let events = maker.whole(budget.min(shape.commands_per_session));
        totals.add(&events)?;
        sessions.push(events);
    }
    let spool = SpoolId(format!("bench-storage-{kind}"));
    let mut seq = 0u64;
    let batched: Vec<Vec<Vec<u8>>> = sessions
        .iter()
        .map(|events| workload::batches(events, &spool, &mut seq))
        .collect::<anyhow::Result<_>>()?;
    let plan = client::AgentPlan {
        name: agent_name(agent),
        spool,
        sessions: batched,
    };
    let result = runtime()?.block_on(client::run_all(target, vec![plan]))?;
    result.print();
    totals.print();
    Ok(())
}

fn one_session(target: &Target, events: usize) -> anyhow::Result<()> {
    anyhow::ensure!(events >= 2, "a session has at least a start and an end");
    let corpus = corpus::load(&target.corpus)?;
    let agent = 0;
    let session = 900_000 + (std::process::id() % 10_000);
    let mut maker = workload::Session::new(
        &corpus,
        &agent_name(agent),
        session,
        workload::Shape::BUSY,
        u64::from(session),
    );
    let list = maker.exactly(events);
    let spool = SpoolId(format!("bench-show-{session}"));
    let mut seq = 0u64;
    let plan = client::AgentPlan {
        name: agent_name(agent),
        spool,
        sessions: vec![workload::batches(
            &list,
            &SpoolId(format!("bench-show-{session}")),
            &mut seq,
        )?],
    };
    runtime()?.block_on(client::run_all(target, vec![plan]))?;
    let first = list.first().ok_or_else(|| anyhow!("no events"))?;
    let boot: String = first
        .boot_id
        .0
        .chars()
        .filter(|c| *c != '-')
        .take(8)
        .collect();
    println!("recording={}-{boot}-{session}", first.host);
    Ok(())
}

/// Builds every agent's batches (in parallel, before anything is sent).
fn generate(
    corpus: &corpus::Corpus,
    agents: usize,
    sessions: usize,
    batches: usize,
    seed: u64,
    shape: workload::Shape,
) -> anyhow::Result<Vec<client::AgentPlan>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let per = agents.div_ceil(threads);
    let mut plans = Vec::with_capacity(agents);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> anyhow::Result<Vec<client::AgentPlan>> {
                    let mut out = Vec::new();
                    for agent in (t * per)..((t + 1) * per).min(agents) {
                        let mut rng = Rng::new(seed.wrapping_mul(1_000_003) ^ agent as u64);
                        let spool = SpoolId(format!("bench-{seed}-{agent}"));
                        let mut seq = 0u64;
                        let mut list = Vec::new();
                        for s in 0..sessions {
                            let id = (seed as u32 % 1000) * 100_000 + s as u32 + 1;
                            let mut maker = workload::Session::new(
                                corpus,
                                &agent_name(agent),
                                id,
                                shape,
                                rng.next(),
                            );
                            let mut session_batches = Vec::with_capacity(batches);
                            for _ in 0..batches {
                                let events = maker.batch_events();
                                session_batches.push(workload::frame(&events, &spool, &mut seq)?);
                            }
                            list.push(session_batches);
                        }
                        out.push(client::AgentPlan {
                            name: agent_name(agent),
                            spool,
                            sessions: list,
                        });
                    }
                    Ok(out)
                })
            })
            .collect();
        for handle in handles {
            let part = handle
                .join()
                .map_err(|_| anyhow!("a generator thread panicked"))??;
            plans.extend(part);
        }
        Ok(())
    })?;
    Ok(plans)
}

/// Terminal output of real commands run on this machine, kept as files so every run replays
/// the same bytes.
mod corpus {
    use super::*;

    /// Commands whose output makes the corpus (those missing here are skipped).
    const COMMANDS: &[&[&str]] = &[
        &["ls", "-l", "/usr/bin"],
        &["ls", "-la", "/etc"],
        &["ps", "aux"],
        &["dmesg"],
        &["journalctl", "-n", "3000", "--no-pager"],
        &["cat", "/proc/cpuinfo"],
        &["cat", "/etc/services"],
        &["cat", "/usr/include/stdio.h"],
        &["df", "-h"],
        &["mount"],
        &["ip", "addr"],
        &["env"],
        &["man", "-P", "cat", "bash"],
        &["man", "-P", "cat", "ssh"],
        &["man", "-P", "cat", "systemd.exec"],
        &["find", "/etc", "-maxdepth", "2"],
        &["git", "-C", "/work/main", "log", "--stat", "-n", "300"],
        &["ls", "-lR", "/usr/share/doc"],
    ];
    /// Largest output kept per command.
    const MAX: usize = 2 << 20;

    pub struct Entry {
        pub argv: Vec<String>,
        /// As a terminal shows it: lines ending in CR LF.
        pub lines: Vec<Vec<u8>>,
    }

    pub struct Corpus {
        pub entries: Vec<Entry>,
    }

    /// Reads the corpus in `dir`, making it first from the commands if it is not there.
    pub fn load(dir: &Path) -> anyhow::Result<Corpus> {
        if !dir.join("done").exists() {
            make(dir)?;
        }
        let mut entries = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "out"))
            .collect();
        names.sort();
        for path in names {
            let argv_path = path.with_extension("argv");
            let argv = std::fs::read_to_string(&argv_path)
                .with_context(|| format!("reading {}", argv_path.display()))?
                .lines()
                .map(str::to_owned)
                .collect();
            let text =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let lines = text
                .split(|b| *b == b'\n')
                .map(|line| {
                    let mut l = line.to_vec();
                    l.extend_from_slice(b"\r\n");
                    l
                })
                .collect();
            entries.push(Entry { argv, lines });
        }
        anyhow::ensure!(
            entries.len() >= 4,
            "only {} commands gave output for the corpus in {}",
            entries.len(),
            dir.display()
        );
        Ok(Corpus { entries })
    }

    fn make(dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, argv) in COMMANDS.iter().enumerate() {
            let Ok(output) = Command::new(argv[0])
                .args(&argv[1..])
                .env("MANWIDTH", "100")
                .env("MAN_KEEP_FORMATTING", "1")
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
            else {
                continue;
            };
            let mut out = output.stdout;
            if out.len() < 512 {
                continue;
            }
            out.truncate(MAX);
            std::fs::write(dir.join(format!("{i:02}.out")), &out)
                .with_context(|| format!("writing the corpus in {}", dir.display()))?;
            std::fs::write(dir.join(format!("{i:02}.argv")), argv.join("\n"))
                .with_context(|| format!("writing the corpus in {}", dir.display()))?;
        }
        std::fs::write(dir.join("done"), b"")
            .with_context(|| format!("writing the corpus in {}", dir.display()))
    }
}

/// Realistic login sessions as the agent records them, cut into batches as the agent cuts them.
mod workload {
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
                    leader_command: ByteString::from(
                        format!("sshd: {} [priv]", self.user).as_str(),
                    ),
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
    pub fn batches(
        events: &[Event],
        spool: &SpoolId,
        seq: &mut u64,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
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
}

/// The QUIC client: connections, hellos, batches on their own streams, acknowledgements.
mod client {
    use quinn::crypto::rustls::QuicClientConfig;
    use tokio::task::JoinSet;

    use super::*;

    /// Largest answer accepted from the collector.
    const MAX_RESPONSE: usize = 1024 * 1024;
    /// Agents sharing one UDP socket.
    const AGENTS_PER_ENDPOINT: usize = 50;
    /// Handshakes under way at once (like agents reconnecting after a collector restart).
    const CONCURRENT_HANDSHAKES: usize = 64;
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

    /// What one simulated agent sends: per session, its encoded batch frames in order.
    pub struct AgentPlan {
        pub name: String,
        pub spool: SpoolId,
        pub sessions: Vec<Vec<Vec<u8>>>,
    }

    /// What the collector acknowledged.
    #[derive(Default)]
    pub struct Outcome {
        pub agents: usize,
        pub connect_secs: f64,
        pub secs: f64,
        pub batches: u64,
        pub events: u64,
        pub raw_bytes: u64,
        pub wire_bytes: u64,
        pub retries: u64,
        /// Batches acknowledged as stored before.
        pub duplicates: u64,
        /// Acknowledgement latencies in seconds.
        pub latencies: Vec<f64>,
    }

    impl Outcome {
        pub fn print(&self) {
            let mut lat = self.latencies.clone();
            lat.sort_by(f64::total_cmp);
            let pct = |p: f64| {
                if lat.is_empty() {
                    0.0
                } else {
                    lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1]
                }
            };
            println!("agents={}", self.agents);
            println!("connect_secs={:.4}", self.connect_secs);
            println!("secs={:.4}", self.secs);
            println!("batches={}", self.batches);
            println!("events={}", self.events);
            println!("raw_bytes={}", self.raw_bytes);
            println!("wire_bytes={}", self.wire_bytes);
            println!("retries={}", self.retries);
            println!("duplicates={}", self.duplicates);
            println!("ack_p50_ms={:.3}", pct(0.50) * 1000.0);
            println!("ack_p99_ms={:.3}", pct(0.99) * 1000.0);
        }
    }

    fn config(target: &Target, name: &str) -> anyhow::Result<quinn::ClientConfig> {
        let issued = target.pki.join("issued");
        let certificate = issued.join(format!("agent-{name}.pem"));
        let key = issued.join(format!("agent-{name}.key"));
        let ca = target.pki.join("ca.pem");
        let files = TlsFiles {
            ca: &ca,
            certificate: &certificate,
            key: &key,
        };
        let (tls, _) = custos_pki::tls::client_config(&files, &[Role::Agent], &[wire::ALPN])
            .with_context(|| format!("TLS configuration of {name}"))?;
        let crypto =
            QuicClientConfig::try_from(tls).context("TLS configuration unusable for QUIC")?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_secs(10)))
            .max_idle_timeout(Some(
                Duration::from_secs(40).try_into().context("idle timeout")?,
            ));
        client.transport_config(Arc::new(transport));
        Ok(client)
    }

    /// One request on its own stream: the frame out, the answer back.
    async fn request(connection: &quinn::Connection, bytes: &[u8]) -> anyhow::Result<Frame> {
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.context("opening a stream")?;
            send.write_all(bytes).await.context("sending")?;
            let _ = send.finish();
            custos_daemon::quic::read_frame(&mut recv, MAX_RESPONSE)
                .await
                .context("reading the answer")
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
    }

    async fn connect(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        target: &Target,
        plan: &AgentPlan,
    ) -> anyhow::Result<quinn::Connection> {
        let connection = endpoint
            .connect_with(config, target.collector, "localhost")?
            .await
            .with_context(|| format!("handshake of {}", plan.name))?;
        let hello = Frame::Hello(Hello {
            protocol: wire::PROTOCOL_VERSION,
            agent_version: "bench".into(),
            host: plan.name.clone(),
            boot_id: BootId("6f1c2a9e-8d3b-4c7a-9e21-0b5d4f3a7c18".into()),
            spool: plan.spool.clone(),
        });
        match request(&connection, &wire::encode_frame(&hello)).await? {
            Frame::Welcome(_) => Ok(connection),
            other => bail!("{}: hello answered with {other:?}", plan.name),
        }
    }

    /// Sends one session's batches in order, each after the previous one's ack.
    async fn session(
        connection: quinn::Connection,
        batches: Vec<Vec<u8>>,
    ) -> anyhow::Result<Outcome> {
        let mut outcome = Outcome::default();
        for bytes in batches {
            let header = match wire::decode_frame(&bytes[4..])? {
                Frame::Batch(batch) => batch.header,
                _ => bail!("not a batch frame"),
            };
            loop {
                let sent = Instant::now();
                match request(&connection, &bytes).await? {
                    Frame::Ack(ack) if ack.seq == header.seq && ack.duplicate => {
                        // Stored before (a rerun on a kept store): not counted.
                        outcome.duplicates += 1;
                        break;
                    }
                    Frame::Ack(ack) if ack.seq == header.seq => {
                        outcome.latencies.push(sent.elapsed().as_secs_f64());
                        outcome.batches += 1;
                        outcome.events += u64::from(header.events);
                        outcome.raw_bytes += header.raw_len;
                        outcome.wire_bytes += bytes.len() as u64;
                        break;
                    }
                    Frame::Error(err) if err.code.is_transient() => {
                        outcome.retries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => bail!("batch {}: answered with {other:?}", header.seq),
                }
            }
        }
        Ok(outcome)
    }

    /// Connects every agent, then (all connected) sends everything; times the second part.
    pub async fn run_all(target: &Target, plans: Vec<AgentPlan>) -> anyhow::Result<Outcome> {
        let agents = plans.len();
        let endpoints: Vec<quinn::Endpoint> = (0..agents.div_ceil(AGENTS_PER_ENDPOINT))
            .map(|_| {
                quinn::Endpoint::client("127.0.0.1:0".parse().expect("valid address"))
                    .context("opening a UDP socket")
            })
            .collect::<anyhow::Result<_>>()?;
        let connecting = Instant::now();
        let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
        let mut handshakes = JoinSet::new();
        let target = Arc::new(target.clone());
        for (i, plan) in plans.into_iter().enumerate() {
            let endpoint = endpoints[i / AGENTS_PER_ENDPOINT].clone();
            let config = config(&target, &plan.name)?;
            let (limit, target) = (limit.clone(), target.clone());
            handshakes.spawn(async move {
                let _permit = limit.acquire().await.context("semaphore")?;
                let connection = connect(&endpoint, config, &target, &plan).await?;
                anyhow::Ok((connection, plan))
            });
        }
        let mut connected = Vec::with_capacity(agents);
        while let Some(done) = handshakes.join_next().await {
            connected.push(done.context("handshake task")??);
        }
        let connect_secs = connecting.elapsed().as_secs_f64();
        let start = Instant::now();
        let mut sends = JoinSet::new();
        for (connection, plan) in &mut connected {
            for batches in std::mem::take(&mut plan.sessions) {
                sends.spawn(session(connection.clone(), batches));
            }
        }
        let mut total = Outcome {
            agents,
            connect_secs,
            ..Outcome::default()
        };
        while let Some(done) = sends.join_next().await {
            let part = done.context("session task")??;
            total.batches += part.batches;
            total.events += part.events;
            total.raw_bytes += part.raw_bytes;
            total.wire_bytes += part.wire_bytes;
            total.retries += part.retries;
            total.duplicates += part.duplicates;
            total.latencies.extend(part.latencies);
        }
        total.secs = start.elapsed().as_secs_f64();
        for (connection, _) in &connected {
            connection.close(0u32.into(), b"bench done");
        }
        for endpoint in endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
        Ok(total)
    }
}
