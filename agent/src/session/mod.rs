//! Sessions: attributing captured events to login sessions and enriching them.
//!
//! A session is (boot id, audit session id). The tracker knows which processes each session
//! has (from forks, execs and exits, seeded from /proc at start), writes a `session_start` record
//! before a session's first event and a `session_end` record when its last process exits,
//! numbers each session's events, and turns kernel losses into `gap` records.
//!
//! The customer's [`Policy`] applies here, between attribution and numbering: a session out of
//! scope is never started (its login uid goes to the kernel's filter), events left out leave no
//! hole in the numbering, and terminal data a redaction window holds back is numbered when it
//! is released.
pub mod host;
pub mod key;
pub mod procfs;
pub mod users;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use custos_agent_abi::{AUDIT_UNSET, TaskIds};
use custos_proto::{
    AuditSessionId, ByteString, Event, EventBody, Gid, Pid, Seq, Timestamp, Tty, Uid,
    event::{ClockSet, Gap, GapReason, Process, SessionEnd, SessionStart},
};

use self::{
    host::{BootClock, HostIdentity},
    key::SessionKey,
    users::UserNames,
};
use crate::{
    capture::{Captured, SessionLoss},
    load::ExcludedUids,
    policy::{Passed, Policy, Rules},
};

/// A session whose processes all look dead is ended only after this much quiet, so that an
/// exit record still on its way is not overtaken.
const IDLE_BEFORE_SWEEP: Duration = Duration::from_secs(5);
/// Ended sessions are remembered this long, so that a late event continues their numbering.
const ENDED_MEMORY: Duration = Duration::from_secs(120);

struct SessionState {
    next_seq: u64,
    start: Timestamp,
    /// Time of the session's latest event.
    last: Timestamp,
    processes: HashSet<u32>,
    last_activity: Instant,
}

/// What the tracker must remember across an agent restart (saved in the spool directory):
/// each open session's next event number, so that numbering continues without reuse, and when
/// it was last seen, for the gap record of the time the agent was not running.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct TrackerState {
    pub boot_id: custos_proto::BootId,
    pub sessions: Vec<SessionSnapshot>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SessionSnapshot {
    pub session: u32,
    pub next_seq: u64,
    pub start: Timestamp,
    pub last: Timestamp,
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
    /// Sessions restored from a previous run, not yet found again in /proc.
    resumed: HashMap<u32, SessionSnapshot>,
    policy: Policy,
    /// Sessions the user rules do not record, and when they were last seen (forgotten after a
    /// quiet while).
    not_recorded: HashMap<u32, Instant>,
    /// The login uids the kernel's gate turns away.
    kernel_excluded: Option<ExcludedUids>,
}

impl Tracker {
    pub fn new(host: HostIdentity) -> Self {
        Self {
            host,
            clock: BootClock::measure(),
            users: UserNames::default(),
            sessions: HashMap::new(),
            ended: HashMap::new(),
            resumed: HashMap::new(),
            policy: Policy::new(Rules::defaults(), None),
            not_recorded: HashMap::new(),
            kernel_excluded: None,
        }
    }

    /// Applies `policy` from now on, with the kernel's login uid filter kept in step with its
    /// scope (every local user out of scope is in it before any session of theirs starts).
    pub fn set_policy(&mut self, policy: Policy, kernel_excluded: Option<ExcludedUids>) {
        self.policy = policy;
        self.kernel_excluded = kernel_excluded;
        self.sync_kernel_excluded();
    }

    /// Replaces the policy's rules (SIGHUP); what redaction windows held is released first.
    pub fn replace_rules(&mut self, rules: Rules, out: &mut Vec<Event>) {
        let mut released = Vec::new();
        self.policy.replace(rules, &mut released);
        for (session, passed) in released {
            self.push(session, passed, out);
        }
        self.sync_kernel_excluded();
    }

    fn sync_kernel_excluded(&mut self) {
        let excluded = self.policy.user_rules().excluded_local_uids();
        if let Some(filter) = &mut self.kernel_excluded
            && let Err(err) = filter.reset(&excluded)
        {
            tracing::warn!(error = %err, "cannot update the kernel's scope filter; out-of-scope sessions are dropped in the agent instead");
        }
    }

    /// Whether a new session of `uid` is recorded; if not, the kernel is told to skip the uid.
    fn records_session(&mut self, sessionid: u32, uid: u32) -> bool {
        if self.policy.user_rules().records(uid) {
            return true;
        }
        self.not_recorded.insert(sessionid, Instant::now());
        if let Some(filter) = &mut self.kernel_excluded
            && let Err(err) = filter.exclude(uid)
        {
            tracing::warn!(uid, error = %err, "cannot add a login uid to the kernel's scope filter");
        }
        tracing::info!(
            session = sessionid,
            uid,
            "session out of scope: not recorded"
        );
        false
    }

    /// Numbers an event the policy passed and appends it.
    fn push(&mut self, sessionid: u32, passed: Passed, out: &mut Vec<Event>) {
        let Some(state) = self.sessions.get_mut(&sessionid) else {
            return;
        };
        let seq = state.next_seq;
        state.next_seq += 1;
        out.push(Event {
            time: passed.time,
            host: self.host.hostname.clone(),
            boot_id: self.host.boot_id.clone(),
            session: AuditSessionId(sessionid),
            seq: Seq(seq),
            process: passed.process,
            event: passed.body,
        });
    }

    /// Releases terminal data redaction windows have held long enough.
    pub fn flush_policy(&mut self, out: &mut Vec<Event>) {
        let mut released = Vec::new();
        self.policy.flush_due(&mut released);
        for (session, passed) in released {
            self.push(session, passed, out);
        }
    }

    /// Sessions being recorded now.
    pub fn active_sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn boot_id(&self) -> &custos_proto::BootId {
        &self.host.boot_id
    }

    /// What to save so that a restarted agent continues each session's numbering.
    pub fn state(&self) -> TrackerState {
        TrackerState {
            boot_id: self.host.boot_id.clone(),
            sessions: self
                .sessions
                .iter()
                .map(|(id, s)| SessionSnapshot {
                    session: *id,
                    next_seq: s.next_seq,
                    start: s.start,
                    last: s.last,
                })
                .chain(self.resumed.values().cloned())
                .collect(),
        }
    }

    /// Takes back the sessions of a previous run (of this boot). `spooled_next` raises each
    /// session's next number past what the spool holds (the saved state may be a few seconds
    /// older than the spool). Call before [`Tracker::seed`].
    pub fn restore(&mut self, state: TrackerState, spooled_next: &HashMap<u32, u64>) {
        // Saved sessions of another boot are over; the spool's numbers are of this boot.
        let saved = if state.boot_id == self.host.boot_id {
            state.sessions
        } else {
            Vec::new()
        };
        for mut snapshot in saved {
            if let Some(next) = spooled_next.get(&snapshot.session) {
                snapshot.next_seq = snapshot.next_seq.max(*next);
            }
            self.resumed.insert(snapshot.session, snapshot);
        }
        for (session, next) in spooled_next {
            self.resumed.entry(*session).or_insert(SessionSnapshot {
                session: *session,
                next_seq: *next,
                start: Timestamp::now(),
                last: Timestamp::now(),
            });
        }
    }

    /// Starts the sessions that were running before the agent (from /proc). A session the
    /// previous run knew continues its numbering after a gap record for the time the agent was
    /// not running; one that ended meanwhile gets its end record.
    pub fn seed(&mut self, agent_tgid: u32, out: &mut Vec<Event>) {
        let now = Timestamp::now();
        for (sessionid, mut processes) in procfs::scan_sessions(agent_tgid) {
            processes.sort_by_key(|p| p.start_ticks);
            let Some(leader) = processes.first().cloned() else {
                continue;
            };
            if let Some(snapshot) = self.resumed.remove(&sessionid) {
                let processes = processes.iter().map(|p| p.tgid).collect();
                self.resume(sessionid, snapshot, processes, now, out);
                continue;
            }
            if !self.records_session(sessionid, leader.loginuid) {
                continue;
            }
            let tty = procfs::tty_of(leader.tgid).filter(|tty| *tty != 0);
            let start = self.start_event(sessionid, now, leader.tgid, leader.loginuid, tty, true);
            let state = self.sessions.get_mut(&sessionid);
            if let Some(state) = state {
                state.processes.extend(processes.iter().map(|p| p.tgid));
            }
            out.push(start);
        }
        for (sessionid, snapshot) in std::mem::take(&mut self.resumed) {
            // Ended while the agent was not running.
            self.resume(sessionid, snapshot, HashSet::new(), now, out);
            self.end(sessionid, now, out);
        }
    }

    /// Continues a session the previous run knew: its numbering goes on after a gap record for
    /// the time the agent was not running.
    fn resume(
        &mut self,
        sessionid: u32,
        snapshot: SessionSnapshot,
        processes: HashSet<u32>,
        now: Timestamp,
        out: &mut Vec<Event>,
    ) {
        self.sessions.insert(
            sessionid,
            SessionState {
                next_seq: snapshot.next_seq,
                start: snapshot.start,
                last: snapshot.last,
                processes,
                last_activity: Instant::now(),
            },
        );
        self.push_gap(
            sessionid,
            GapReason::AgentNotRunning,
            0,
            0,
            snapshot.last,
            now,
            out,
        );
    }

    /// Appends a gap record to an open session.
    #[allow(clippy::too_many_arguments)]
    fn push_gap(
        &mut self,
        sessionid: u32,
        reason: GapReason,
        records: u64,
        bytes: u64,
        from: Timestamp,
        to: Timestamp,
        out: &mut Vec<Event>,
    ) {
        let gap = EventBody::Gap(Gap {
            reason,
            records,
            bytes,
            from,
            to,
            detail: None,
        });
        self.push_own(sessionid, gap, out);
    }

    /// Appends a record the agent writes itself (no process did it) to an open session.
    fn push_own(&mut self, sessionid: u32, event: EventBody, out: &mut Vec<Event>) {
        let Some(state) = self.sessions.get_mut(&sessionid) else {
            return;
        };
        let seq = state.next_seq;
        state.next_seq += 1;
        out.push(Event {
            time: Timestamp::now(),
            host: self.host.hostname.clone(),
            boot_id: self.host.boot_id.clone(),
            session: AuditSessionId(sessionid),
            seq: Seq(seq),
            process: None,
            event,
        });
    }

    /// Attributes one captured event to its session (starting it if new) and ends the session
    /// when its last process exited.
    pub fn on_capture(&mut self, captured: Captured, out: &mut Vec<Event>) {
        let Captured {
            task,
            ts_boot_ns,
            mut body,
        } = captured;
        if let EventBody::Gap(gap) = &mut body {
            // Routes the programs could not capture are timed in boot-time ns (capture::routes).
            gap.from = self.clock.wall(gap.from.0 as u64);
            gap.to = self.clock.wall(gap.to.0 as u64);
        }
        let sessionid = SessionKey::of(&task).id();
        if let Some(seen) = self.not_recorded.get_mut(&sessionid) {
            // Reached userspace before the kernel's filter knew the uid.
            *seen = Instant::now();
            self.policy.count_not_recorded();
            return;
        }
        let time = self.clock.wall(ts_boot_ns);
        if !self.sessions.contains_key(&sessionid) {
            // A straggler of a session already ended continues its numbering.
            if !self.reopen(sessionid, time) {
                let uid = if task.loginuid != AUDIT_UNSET {
                    task.loginuid
                } else {
                    task.uid
                };
                if !self.records_session(sessionid, uid) {
                    self.policy.count_not_recorded();
                    return;
                }
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
        state.last = state.last.max(time);
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
        let finished = state.processes.is_empty();
        let mut passed = Vec::new();
        self.policy
            .apply(sessionid, &process, time, body, &mut passed);
        for event in passed {
            self.push(sessionid, event, out);
        }
        if finished {
            self.end(sessionid, time, out);
        }
    }

    /// Records kernel losses as a gap in the session they hit.
    pub fn on_loss(&mut self, loss: SessionLoss, out: &mut Vec<Event>) {
        let (from, to) = (
            self.clock.wall(loss.first_ts),
            self.clock.wall(loss.last_ts),
        );
        self.gap(
            loss.sessionid,
            GapReason::RingBufferFull,
            loss.records,
            loss.bytes,
            from,
            to,
            out,
        );
    }

    /// Records the wall clock being set in every open session, and in those that ended in the
    /// last second (`date -s 2001-01-01; exit` ends its session before the step is seen),
    /// whoever set it (a session's own `date -s` shows as its exec); follows the new clock at
    /// once.
    pub fn on_clock_set(&mut self, step_ns: i64, out: &mut Vec<Event>) {
        const JUST_ENDED: Duration = Duration::from_secs(1);
        self.clock = BootClock::measure();
        let now = Timestamp::now();
        let just_ended: Vec<u32> = self
            .ended
            .iter()
            .filter(|(_, ended)| ended.ended_at.elapsed() <= JUST_ENDED)
            .map(|(id, _)| *id)
            .collect();
        for sessionid in just_ended {
            self.reopen(sessionid, now);
        }
        let mut open: Vec<u32> = self.sessions.keys().copied().collect();
        open.sort_unstable();
        tracing::warn!(step_ns, sessions = open.len(), "the wall clock was set");
        for sessionid in open {
            self.push_own(sessionid, EventBody::ClockSet(ClockSet { step_ns }), out);
        }
    }

    /// Opens an ended session again for a record about it that came late (it ends again at the
    /// next sweep if no process of it is alive); whether it had ended.
    fn reopen(&mut self, sessionid: u32, time: Timestamp) -> bool {
        let Some(ended) = self.ended.remove(&sessionid) else {
            return false;
        };
        self.sessions.insert(
            sessionid,
            SessionState {
                next_seq: ended.next_seq,
                start: time,
                last: time,
                processes: HashSet::new(),
                last_activity: Instant::now(),
            },
        );
        true
    }

    /// Records a gap in a session, opening it again if it had ended (or starting it if nothing
    /// of it got through, from what /proc still knows).
    #[allow(clippy::too_many_arguments)]
    pub fn gap(
        &mut self,
        sessionid: u32,
        reason: GapReason,
        records: u64,
        bytes: u64,
        from: Timestamp,
        to: Timestamp,
        out: &mut Vec<Event>,
    ) {
        if self.not_recorded.contains_key(&sessionid) {
            return;
        }
        if !self.sessions.contains_key(&sessionid) {
            if self.reopen(sessionid, from) {
                if let Some(state) = self.sessions.get_mut(&sessionid) {
                    state.last = to;
                }
            } else {
                let leader = self.find_leader(sessionid);
                let tty = leader.and_then(procfs::tty_of).filter(|tty| *tty != 0);
                let loginuid = leader
                    .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/loginuid")).ok())
                    .and_then(|text| text.trim().parse().ok())
                    .unwrap_or(AUDIT_UNSET);
                let start =
                    self.start_event(sessionid, from, leader.unwrap_or(0), loginuid, tty, false);
                out.push(start);
                if let (Some(leader), Some(state)) = (leader, self.sessions.get_mut(&sessionid)) {
                    state.processes.insert(leader);
                }
            }
        }
        // A session with no process known alive ends at the next sweep.
        self.push_gap(sessionid, reason, records, bytes, from, to, out);
    }

    /// Ends sessions whose processes are all gone (their exit records were lost), forgets old
    /// ended sessions, and re-measures the clock.
    pub fn sweep(&mut self, out: &mut Vec<Event>) {
        self.clock = BootClock::measure();
        let now = Instant::now();
        self.ended
            .retain(|_, ended| now.duration_since(ended.ended_at) < ENDED_MEMORY);
        self.not_recorded
            .retain(|_, seen| now.duration_since(*seen) < ENDED_MEMORY);
        let mut finished = Vec::new();
        for (sessionid, state) in &mut self.sessions {
            if now.duration_since(state.last_activity) < IDLE_BEFORE_SWEEP {
                continue;
            }
            state
                .processes
                .retain(|tgid| alive_in_session(*tgid, SessionKey::from_id(*sessionid)));
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
        if !self.sessions.contains_key(&sessionid) {
            return;
        }
        let mut released = Vec::new();
        let (filtered, redacted) = self.policy.end_session(sessionid, time, &mut released);
        for passed in released {
            self.push(sessionid, passed, out);
        }
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
                filtered,
                redacted,
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
                last: time,
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
                remote: procfs::remote_address(leader),
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

fn alive_in_session(tgid: u32, key: SessionKey) -> bool {
    match procfs::session_of(tgid) {
        Some(found) => found == key.id() || key.is_terminal(),
        None => false,
    }
}
