//! The event pipeline: captured records and losses go through the session tracker and out,
//! either as JSON lines (`--stdout`) or into batches on the spool for shipping.
//!
//! When shipping, the tracker's session state is saved next to the spool every few seconds and
//! at shutdown (and always before acknowledged segments are deleted), so that a restarted agent
//! continues every session's event numbering.
use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use custos_proto::{
    Event,
    event::{Gap, GapReason},
    wire::{BatchHeader, Packer},
};
use tokio::sync::{Notify, mpsc};
use tracing::{error, info, warn};

use crate::{
    batch::Batcher,
    capture::Capture,
    metrics::AgentMetrics,
    policy::Rules,
    session::{Tracker, TrackerState},
    spool::Spool,
};

/// Where events go.
pub enum Output {
    Json(std::io::BufWriter<std::io::Stdout>),
    Spool(Spooler),
}

/// Batches events and appends them to the spool.
pub struct Spooler {
    pub batcher: Batcher,
    /// Compresses batches (keeps its zstd context and buffers from one batch to the next).
    pub packer: Packer,
    pub spool: Arc<Mutex<Spool>>,
    /// Signs each batch with the agent's certificate key as it enters the spool.
    pub signer: Arc<custos_pki::batch_signature::BatchSigner>,
    pub wake: Arc<Notify>,
    /// Where the tracker's state is saved.
    pub state_path: PathBuf,
    /// Whether the next checkpoint has anything to do: events were spooled since the last one
    /// (the tracker's numbering moved), or batches still wait for an acknowledgement (segments
    /// to delete once it comes).
    pub checkpoint_due: bool,
}

impl Spooler {
    fn store(&mut self, batches: Vec<Vec<Event>>) -> anyhow::Result<Vec<BatchHeader>> {
        let mut dropped = Vec::new();
        if batches.is_empty() {
            return Ok(dropped);
        }
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            let mut spool = self.spool.lock().unwrap_or_else(|e| e.into_inner());
            for events in batches {
                let seq = spool.allocate()?;
                let id = spool.id().clone();
                let Some(batch) = self.packer.make_batch(&id, seq, &events) else {
                    continue;
                };
                dropped.extend(spool.append_signed(batch, &self.signer)?);
            }
            Ok(())
        })?;
        self.wake.notify_one();
        Ok(dropped)
    }
}

impl Output {
    /// Writes events; returns the headers of spooled batches dropped to make room.
    fn write(&mut self, events: &mut Vec<Event>) -> anyhow::Result<Vec<BatchHeader>> {
        match self {
            Output::Json(out) => {
                for event in events.drain(..) {
                    serde_json::to_writer(&mut *out, &event)?;
                    out.write_all(b"\n")?;
                }
                out.flush()?;
                Ok(Vec::new())
            }
            Output::Spool(spooler) => {
                spooler.checkpoint_due |= !events.is_empty();
                let full: Vec<Vec<Event>> = events
                    .drain(..)
                    .filter_map(|event| spooler.batcher.add(event))
                    .collect();
                spooler.store(full)
            }
        }
    }

    /// Sends batches that have waited long enough to the spool.
    fn tick(&mut self) -> anyhow::Result<Vec<BatchHeader>> {
        match self {
            Output::Json(_) => Ok(Vec::new()),
            Output::Spool(spooler) => {
                let due = spooler.batcher.due(Instant::now());
                spooler.store(due)
            }
        }
    }

    /// Batches the shipper gave up (refused for good, unreadable), with why.
    fn take_lost(&mut self) -> Vec<(BatchHeader, GapReason)> {
        match self {
            Output::Json(_) => Vec::new(),
            Output::Spool(spooler) => spooler
                .spool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take_lost(),
        }
    }

    /// Saves the tracker's state, then lets the spool delete what the collector acknowledged.
    fn checkpoint(&mut self, tracker: &Tracker) -> anyhow::Result<()> {
        if let Output::Spool(spooler) = self {
            save_state(&spooler.state_path, &tracker.state())?;
            spooler.checkpoint_due = tokio::task::block_in_place(|| {
                let mut spool = spooler.spool.lock().unwrap_or_else(|e| e.into_inner());
                spool.collect()?;
                anyhow::Ok(spool.pending() > 0)
            })?;
        }
        Ok(())
    }

    /// Whether a checkpoint now would save or delete anything (see [`Spooler::checkpoint_due`]).
    fn checkpoint_due(&self) -> bool {
        matches!(self, Output::Spool(spooler) if spooler.checkpoint_due)
    }

    /// Nothing waits in a batch.
    fn is_idle(&self) -> bool {
        match self {
            Output::Json(_) => true,
            Output::Spool(spooler) => spooler.batcher.is_empty(),
        }
    }

    /// Sets the gauges: sessions recorded now, and the spool's size and backlog.
    fn observe(&self, tracker: &Tracker, metrics: &AgentMetrics) {
        metrics
            .sessions_active
            .set(i64::try_from(tracker.active_sessions()).unwrap_or(i64::MAX));
        if let Output::Spool(spooler) = self {
            let spool = spooler.spool.lock().unwrap_or_else(|e| e.into_inner());
            metrics
                .spool_bytes
                .set(i64::try_from(spool.size()).unwrap_or(i64::MAX));
            metrics
                .spool_pending_batches
                .set(i64::try_from(spool.pending()).unwrap_or(i64::MAX));
        }
    }

    fn finish(&mut self) -> anyhow::Result<Vec<BatchHeader>> {
        match self {
            Output::Json(out) => {
                out.flush()?;
                Ok(Vec::new())
            }
            Output::Spool(spooler) => {
                let rest = spooler.batcher.drain();
                spooler.store(rest)
            }
        }
    }
}

/// Writes events, turning batches the spool dropped into gap records (which are written too).
fn emit(
    output: &mut Output,
    tracker: &mut Tracker,
    events: &mut Vec<Event>,
    metrics: &AgentMetrics,
) -> anyhow::Result<()> {
    metrics.count(events);
    let mut dropped = output.write(events)?;
    while !dropped.is_empty() {
        report_dropped(tracker, &dropped, GapReason::SpoolFull, events, metrics);
        metrics.count(events);
        dropped = output.write(events)?;
    }
    Ok(())
}

/// Gap records for batches lost from the spool (full, or damaged on disk).
pub fn report_dropped(
    tracker: &mut Tracker,
    headers: &[BatchHeader],
    reason: GapReason,
    events: &mut Vec<Event>,
    metrics: &AgentMetrics,
) {
    let boot = tracker.boot_id().clone();
    for header in headers {
        metrics.spool_lost_events.inc_by(u64::from(header.events));
        if header.boot_id != boot {
            error!(
                session = header.session.0,
                boot = %header.boot_id,
                events = header.events,
                ?reason,
                "lost spooled events of a previous boot"
            );
            continue;
        }
        warn!(
            session = header.session.0,
            events = header.events,
            ?reason,
            "spooled events lost"
        );
        let gap = Gap {
            reason,
            records: u64::from(header.events),
            bytes: header.raw_len,
            from: header.first_time,
            to: header.last_time,
            detail: None,
        };
        tracker.gap(header.session.0, gap, events);
    }
}

/// How often the tracker sweeps sessions and the spooler sends aged batches.
const TICK: Duration = Duration::from_millis(100);
/// The tick while no session is recorded and no batch waits: an idle agent wakes rarely (a
/// record arriving ends the idle tick at once).
const IDLE_TICK: Duration = Duration::from_secs(5);
/// How often the tracker's state is saved and acknowledged segments deleted.
const CHECKPOINT: Duration = Duration::from_secs(5);

/// Runs until capture ends (its channel closes), then flushes everything.
pub async fn run(
    mut rx: mpsc::Receiver<Capture>,
    mut reload: mpsc::Receiver<Rules>,
    mut tracker: Tracker,
    mut output: Output,
    mut events: Vec<Event>,
    metrics: Arc<AgentMetrics>,
) -> anyhow::Result<()> {
    let metrics = &*metrics;
    emit(&mut output, &mut tracker, &mut events, metrics)?;
    let mut next_tick = tokio::time::Instant::now() + TICK;
    let mut last_sweep = Instant::now();
    let mut last_checkpoint = Instant::now();
    let mut was_idle = false;
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                handle(&mut tracker, message, &mut events);
                while let Ok(message) = rx.try_recv() {
                    handle(&mut tracker, message, &mut events);
                    if events.len() >= 1024 {
                        emit(&mut output, &mut tracker, &mut events, metrics)?;
                    }
                }
                next_tick = next_tick.min(tokio::time::Instant::now() + TICK);
            }
            Some(rules) = reload.recv() => {
                tracker.replace_rules(rules, &mut events);
                info!("policy reloaded: the new rules are in force");
            }
            _ = tokio::time::sleep_until(next_tick) => {
                tracker.flush_policy(&mut events);
                if last_sweep.elapsed() >= Duration::from_secs(1) {
                    tracker.sweep(&mut events);
                    last_sweep = Instant::now();
                    output.observe(&tracker, metrics);
                }
                let dropped = output.tick()?;
                report_dropped(&mut tracker, &dropped, GapReason::SpoolFull, &mut events, metrics);
                for (header, reason) in output.take_lost() {
                    report_dropped(&mut tracker, &[header], reason, &mut events, metrics);
                }
                if last_checkpoint.elapsed() >= CHECKPOINT {
                    // Everything the state counts is spooled before the state is saved.
                    emit(&mut output, &mut tracker, &mut events, metrics)?;
                    if output.checkpoint_due() {
                        output.checkpoint(&tracker)?;
                        last_checkpoint = Instant::now();
                    }
                }
                let idle = events.is_empty() && tracker.active_sessions() == 0 && output.is_idle();
                if idle && !was_idle {
                    // The buffers of the last burst are free now.
                    crate::memory::release_free();
                }
                was_idle = idle;
                next_tick = tokio::time::Instant::now() + if idle { IDLE_TICK } else { TICK };
            }
        }
        emit(&mut output, &mut tracker, &mut events, metrics)?;
    }
    emit(&mut output, &mut tracker, &mut events, metrics)?;
    let dropped = output.finish()?;
    report_dropped(
        &mut tracker,
        &dropped,
        GapReason::SpoolFull,
        &mut events,
        metrics,
    );
    emit(&mut output, &mut tracker, &mut events, metrics)?;
    output.finish()?;
    output.checkpoint(&tracker)?;
    Ok(())
}

fn handle(tracker: &mut Tracker, message: Capture, events: &mut Vec<Event>) {
    match message {
        Capture::Event(captured) => tracker.on_capture(captured, events),
        Capture::Loss(loss) => tracker.on_loss(loss, events),
        Capture::ClockSet { step_ns } => tracker.on_clock_set(step_ns, events),
    }
}

/// Saves the tracker's state atomically.
pub fn save_state(path: &Path, state: &TrackerState) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(state).unwrap_or_default())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("saving session state to {}", path.display()))
}

/// Reads the state a previous run saved (absent or unreadable: nothing to continue).
pub fn load_state(path: &Path) -> TrackerState {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            warn!(path = %path.display(), error = %err, "unreadable session state ignored");
            TrackerState::default()
        }),
        Err(_) => TrackerState::default(),
    }
}
