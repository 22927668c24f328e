//! Sessions: attributing captured events to login sessions and enriching them.
//!
//! A session is (boot id, audit session id). The tracker knows which processes each session
//! has (from forks, execs and exits, seeded from /proc at start), writes a `session_start` record
//! before a session's first event and a `session_end` record when its last process exits,
//! numbers each session's events, and turns kernel losses into `gap` records.
pub mod host;
pub mod procfs;
pub mod users;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use custos_agent_abi::{AUDIT_UNSET, TaskIds};
use custos_proto::{
    AuditSessionId, ByteString, Event, EventBody, Gid, Pid, Seq, Timestamp, Tty, Uid,
    event::{Gap, GapReason, Process, SessionEnd, SessionStart},
};

use self::{
    host::{BootClock, HostIdentity},
    users::UserNames,
};
use crate::capture::{Captured, SessionLoss};

/// Sessions of tasks outside an audit login, captured for their terminal
/// (`scope = "login_sessions_and_terminals"`), get this bit and their terminal's dev_t as id.
pub const TERMINAL_SESSION_BIT: u32 = 1 << 31;

/// A session whose processes all look dead is ended only after this much quiet, so that an
/// exit record still on its way is not overtaken.
const IDLE_BEFORE_SWEEP: Duration = Duration::from_secs(5);
/// Ended sessions are remembered this long, so that a late event continues their numbering.
const ENDED_MEMORY: Duration = Duration::from_secs(120);

struct SessionState {
    next_seq: u64,
    start: Timestamp,
    processes: HashSet<u32>,
    last_activity: Instant,
}

struct EndedSession {
    next_seq: u64,
    ended_at: Instant,
}

pub struct Tracker {
    host: HostIdentity,
    clock: BootClock,
    users: UserNames,
    sessions: HashMap<u32, SessionState>,
    ended: HashMap<u32, EndedSession>,
}

impl Tracker {
    pub fn new(host: HostIdentity) -> Self {
        Self {
            host,
            clock: BootClock::measure(),
            users: UserNames::default(),
            sessions: HashMap::new(),
            ended: HashMap::new(),
        }
    }

    /// Starts the sessions that were running before the agent (from /proc).
    pub fn seed(&mut self, agent_tgid: u32, out: &mut Vec<Event>) {
        let now = Timestamp::now();
        for (sessionid, mut processes) in procfs::scan_sessions(agent_tgid) {
            processes.sort_by_key(|p| p.start_ticks);
            let Some(leader) = processes.first().cloned() else {
                continue;
            };
            let tty = procfs::tty_of(leader.tgid).filter(|tty| *tty != 0);
            let start = self.start_event(sessionid, now, leader.tgid, leader.loginuid, tty, true);
            let state = self.sessions.get_mut(&sessionid);
            if let Some(state) = state {
                state.processes.extend(processes.iter().map(|p| p.tgid));
            }
            out.push(start);
        }
    }

    /// Attributes one captured event to its session (starting it if new) and ends the session
    /// when its last process exited.
    pub fn on_capture(&mut self, captured: Captured, out: &mut Vec<Event>) {
        let Captured {
            task,
            ts_boot_ns,
            body,
        } = captured;
        let sessionid = session_key(&task);
        let time = self.clock.wall(ts_boot_ns);
        if !self.sessions.contains_key(&sessionid) {
            if let Some(ended) = self.ended.remove(&sessionid) {
                // A straggler of a session already ended: continue its numbering.
                self.sessions.insert(
                    sessionid,
                    SessionState {
                        next_seq: ended.next_seq,
                        start: time,
                        processes: HashSet::new(),
                        last_activity: Instant::now(),
                    },
                );
            } else {
                // The process that did the session's first event (for a fork: the parent).
                let leader = task.tgid;
                let tty = (task.tty != 0).then_some(task.tty);
                let start = self.start_event(sessionid, time, leader, task.loginuid, tty, false);
                out.push(start);
            }
        }
        let process = self.process(&task);
        let Some(state) = self.sessions.get_mut(&sessionid) else {
            return;
        };
        state.last_activity = Instant::now();
        match &body {
            EventBody::Fork(fork) => {
                state.processes.insert(task.tgid);
                state.processes.insert(fork.child.0);
            }
            EventBody::Exit(_) => {
                state.processes.remove(&task.tgid);
            }
            _ => {
                state.processes.insert(task.tgid);
            }
        }
        let seq = state.next_seq;
        state.next_seq += 1;
        let finished = state.processes.is_empty();
        out.push(Event {
            time,
            host: self.host.hostname.clone(),
            boot_id: self.host.boot_id.clone(),
            session: AuditSessionId(sessionid),
            seq: Seq(seq),
            process: Some(process),
            event: body,
        });
        if finished {
            self.end(sessionid, time, out);
        }
    }

    /// Records kernel losses as a gap in the session they hit.
    pub fn on_loss(&mut self, loss: SessionLoss, out: &mut Vec<Event>) {
        let gap = EventBody::Gap(Gap {
            reason: GapReason::RingBufferFull,
            records: loss.records,
            bytes: loss.bytes,
            from: self.clock.wall(loss.first_ts),
            to: self.clock.wall(loss.last_ts),
        });
        let time = Timestamp::now();
        let sessionid = loss.sessionid;
        let seq = if let Some(state) = self.sessions.get_mut(&sessionid) {
            let seq = state.next_seq;
            state.next_seq += 1;
            seq
        } else if let Some(ended) = self.ended.get_mut(&sessionid) {
            let seq = ended.next_seq;
            ended.next_seq += 1;
            seq
        } else {
            // Nothing of this session got through: start it, from what /proc still knows.
            let leader = self.find_leader(sessionid);
            let tty = leader.and_then(procfs::tty_of).filter(|tty| *tty != 0);
            let loginuid = leader
                .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok())
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(AUDIT_UNSET);
            let start = self.start_event(
                sessionid,
                self.clock.wall(loss.first_ts),
                leader.unwrap_or(0),
                loginuid,
                tty,
                false,
            );
            out.push(start);
            let Some(state) = self.sessions.get_mut(&sessionid) else {
                return;
            };
            if let Some(leader) = leader {
                state.processes.insert(leader);
            }
            let seq = state.next_seq;
            state.next_seq += 1;
            seq
        };
        out.push(Event {
            time,
            host: self.host.hostname.clone(),
            boot_id: self.host.boot_id.clone(),
            session: AuditSessionId(sessionid),
            seq: Seq(seq),
            process: None,
            event: gap,
        });
        // A session with no process known alive ends at the next sweep.
    }

    /// Ends sessions whose processes are all gone (their exit records were lost), forgets old
    /// ended sessions, and re-measures the clock.
    pub fn sweep(&mut self, out: &mut Vec<Event>) {
        self.clock = BootClock::measure();
        let now = Instant::now();
        self.ended
            .retain(|_, ended| now.duration_since(ended.ended_at) < ENDED_MEMORY);
        let mut finished = Vec::new();
        for (sessionid, state) in &mut self.sessions {
            if now.duration_since(state.last_activity) < IDLE_BEFORE_SWEEP {
                continue;
            }
            state
                .processes
                .retain(|tgid| alive_in_session(*tgid, *sessionid));
            if state.processes.is_empty() {
                finished.push(*sessionid);
            }
        }
        let time = Timestamp::now();
        for sessionid in finished {
            self.end(sessionid, time, out);
        }
    }

    fn end(&mut self, sessionid: u32, time: Timestamp, out: &mut Vec<Event>) {
        let Some(state) = self.sessions.remove(&sessionid) else {
            return;
        };
        out.push(Event {
            time,
            host: self.host.hostname.clone(),
            boot_id: self.host.boot_id.clone(),
            session: AuditSessionId(sessionid),
            seq: Seq(state.next_seq),
            process: None,
            event: EventBody::SessionEnd(SessionEnd {
                duration_secs: time.seconds_since(state.start).max(0.0),
            }),
        });
        self.ended.insert(
            sessionid,
            EndedSession {
                next_seq: state.next_seq + 1,
                ended_at: Instant::now(),
            },
        );
    }

    fn start_event(
        &mut self,
        sessionid: u32,
        time: Timestamp,
        leader: u32,
        loginuid: u32,
        tty: Option<u32>,
        found_running: bool,
    ) -> Event {
        let login_uid = (loginuid != AUDIT_UNSET).then_some(Uid(loginuid));
        let tty = tty.map(Tty);
        let leader_command = procfs::command_line(leader).unwrap_or_default();
        self.sessions.insert(
            sessionid,
            SessionState {
                next_seq: 2,
                start: time,
                processes: HashSet::from([leader]),
                last_activity: Instant::now(),
            },
        );
        Event {
            time,
            host: self.host.hostname.clone(),
            boot_id: self.host.boot_id.clone(),
            session: AuditSessionId(sessionid),
            seq: Seq(1),
            process: None,
            event: EventBody::SessionStart(SessionStart {
                login_uid,
                login_user: self.users.name(loginuid),
                tty,
                tty_name: tty.map(Tty::name),
                leader: Pid(leader),
                leader_command: ByteString(leader_command),
                remote: None,
                found_running,
            }),
        }
    }

    fn process(&mut self, task: &TaskIds) -> Process {
        let comm_len = task
            .comm
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(task.comm.len());
        Process {
            pid: Pid(task.pid),
            tgid: Pid(task.tgid),
            ppid: Pid(task.ppid),
            uid: Uid(task.uid),
            euid: Uid(task.euid),
            gid: Gid(task.gid),
            loginuid: (task.loginuid != AUDIT_UNSET).then_some(Uid(task.loginuid)),
            login_user: self.users.name(task.loginuid),
            user: self.users.name(task.euid),
            tty: (task.tty != 0).then_some(Tty(task.tty)),
            comm: ByteString(task.comm[..comm_len].to_vec()),
        }
    }

    fn find_leader(&self, sessionid: u32) -> Option<u32> {
        procfs::scan_sessions(0)
            .remove(&sessionid)
            .and_then(|mut processes| {
                processes.sort_by_key(|p| p.start_ticks);
                processes.first().map(|p| p.tgid)
            })
    }
}

/// The session an event belongs to: its audit session, or for a terminal-only task, its
/// terminal.
fn session_key(task: &TaskIds) -> u32 {
    if task.sessionid != AUDIT_UNSET {
        task.sessionid
    } else {
        TERMINAL_SESSION_BIT | (task.tty & !TERMINAL_SESSION_BIT)
    }
}

fn alive_in_session(tgid: u32, sessionid: u32) -> bool {
    match procfs::session_of(tgid) {
        Some(found) => found == sessionid || sessionid & TERMINAL_SESSION_BIT != 0,
        None => false,
    }
}
