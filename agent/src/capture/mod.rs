//! Capture: from the kernel's ring buffer to [`Capture`] messages for the session tracker.
//!
//! - [`decode`]: ring buffer bytes to typed records;
//! - [`assemble`]: records to event bodies (argv joined to its exec, absolute paths);
//! - [`drops`]: the kernel's loss counters, turned into per-session loss reports;
//! - [`routes`]: routes the programs saw but could not capture, made into gaps;
//! - [`clock`]: the host's wall clock being set.
pub mod assemble;
pub mod clock;
pub mod decode;
pub mod drops;
pub mod routes;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use aya::maps::{Array, MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, watch},
};
use tracing::warn;

use self::{assemble::Assembler, drops::DropMonitor};
pub use self::{assemble::Captured, drops::SessionLoss};
use crate::metrics::AgentMetrics;
use prometheus_client::metrics::counter::Counter;

/// What capture hands to the session tracker.
#[derive(Debug)]
pub enum Capture {
    Event(Captured),
    Loss(SessionLoss),
    /// The wall clock was set, by `step_ns` nanoseconds (negative: back).
    ClockSet {
        step_ns: i64,
    },
}

/// Counts of what the reader saw.
#[derive(Debug, Default, Clone)]
pub struct ReaderStats {
    /// Records read: the agent's `records_read` metric, counted before the record's events go
    /// on (so it is current, where the kernel's own counters are polled, and counts a record
    /// before its batch can be acknowledged).
    read: Counter,
    pub undecodable: u64,
    /// When the reader last emptied the ring buffer (`CLOCK_BOOTTIME`, ns): the status file's
    /// sign that the ring is being read.
    emptied: Arc<AtomicU64>,
}

impl ReaderStats {
    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.read.get()
    }
}

/// The reader's side of the programs' `READER_PARKED` flag: set while the reader sleeps until
/// the next record wakes it.
pub struct Parking {
    flag: Array<MapData, u32>,
}

impl Parking {
    pub fn new(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .take_map("READER_PARKED")
            .ok_or_else(|| anyhow::anyhow!("map READER_PARKED missing from the eBPF object"))?;
        Ok(Self {
            flag: Array::try_from(map)?,
        })
    }

    /// Asks the programs to wake the reader with the next record (they clear the flag).
    fn park(&mut self) -> bool {
        match self.flag.set(0, 1, 0) {
            Ok(()) => true,
            Err(err) => {
                warn!(error = %err, "could not park the ring buffer reader; it keeps polling");
                false
            }
        }
    }
}

/// Reads the ring buffer until `stop` turns true, then drains what is left in it.
pub async fn read_ring(
    ring: RingBuf<MapData>,
    mut parking: Parking,
    tx: mpsc::Sender<Capture>,
    mut stop: watch::Receiver<bool>,
    read: Counter,
    emptied: Arc<AtomicU64>,
    mut clock: Option<clock::ClockWatch>,
) -> anyhow::Result<ReaderStats> {
    // SAFETY: the ring buffer owns its file descriptor, which stays open as long as the AsyncFd
    // that owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|err| err.into_parts().1)?;
    let mut assembler = Assembler::default();
    let mut stats = ReaderStats {
        read,
        emptied,
        ..ReaderStats::default()
    };
    let mut poll = PollTimer::default();
    let timer = tokio::time::sleep(poll.next());
    tokio::pin!(timer);
    let mut last_stale = std::time::Instant::now();
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                // Cleared before draining: a wake-up that comes while the drain runs stays.
                guard.clear_ready();
                drain(guard.get_inner_mut(), &mut assembler, &tx, &mut stats).await;
                poll.found(true);
                timer.as_mut().reset(tokio::time::Instant::now() + poll.next());
            }
            _ = &mut timer => {
                let before = stats.records();
                drain(ring.get_mut(), &mut assembler, &tx, &mut stats).await;
                poll.found(stats.records() > before);
                if last_stale.elapsed() >= STALE_CHECK {
                    last_stale = std::time::Instant::now();
                    let mut out = Vec::new();
                    assembler.flush_stale(boot_now_ns(), &mut out);
                    if !send(&tx, out).await {
                        return Ok(stats);
                    }
                }
                if poll.wants_to_park() && assembler.is_empty() && parking.park() {
                    // A record queued before the programs saw the flag woke nobody: look once
                    // more. Whatever comes after wakes the reader.
                    let before = stats.records();
                    drain(ring.get_mut(), &mut assembler, &tx, &mut stats).await;
                    poll.parked(stats.records() > before);
                }
                timer.as_mut().reset(tokio::time::Instant::now() + poll.next());
            }
            step_ns = clock::stepped(&mut clock) => {
                // Everything the kernel wrote before the step goes first.
                drain(ring.get_mut(), &mut assembler, &tx, &mut stats).await;
                if tx.send(Capture::ClockSet { step_ns }).await.is_err() {
                    return Ok(stats);
                }
            }
            _ = stop.changed() => break,
        }
    }
    drain(ring.get_mut(), &mut assembler, &tx, &mut stats).await;
    let mut out = Vec::new();
    assembler.flush_all(&mut out);
    send(&tx, out).await;
    Ok(stats)
}

/// How often half-assembled records (an exec waiting for its argv) are checked for staleness.
const STALE_CHECK: Duration = Duration::from_millis(500);

/// When the reader looks at the ring buffer without being woken. The programs wake it only
/// when a burst piles up (see the `wakeup_bytes` setting), so while records flow the reader
/// drains on this timer: every `MIN`, backing off while none come. Once it has backed off to
/// `MAX` and still found nothing, it parks: the programs wake it with the next record, and the
/// timer only looks every `PARKED` in case a wake-up was missed (a record queued at the very
/// moment of parking). So an idle agent wakes about once in `PARKED`, and the first record of a
/// burst is read at once.
struct PollTimer {
    interval: Duration,
}

impl PollTimer {
    const MIN: Duration = Duration::from_millis(25);
    const MAX: Duration = Duration::from_millis(400);
    const PARKED: Duration = Duration::from_secs(5);

    fn next(&self) -> Duration {
        self.interval
    }

    fn found(&mut self, records: bool) {
        self.interval = if records {
            Self::MIN
        } else {
            (self.interval * 2).min(Self::MAX).max(self.interval)
        };
    }

    /// The last look, after backing off to `MAX`, found nothing.
    fn wants_to_park(&self) -> bool {
        self.interval >= Self::MAX && self.interval < Self::PARKED
    }

    /// Parked; `records` tells whether the look after parking still found some.
    fn parked(&mut self, records: bool) {
        self.interval = if records { Self::MIN } else { Self::PARKED };
    }
}

impl Default for PollTimer {
    fn default() -> Self {
        Self {
            interval: Self::MIN,
        }
    }
}

/// Sends captured events on; false when the tracker is gone. An exec of a 32-bit program is
/// followed by its gap ([`routes::exec_gap`]).
async fn send(tx: &mpsc::Sender<Capture>, events: Vec<Captured>) -> bool {
    for captured in events {
        let compat = match &captured.body {
            custos_proto::EventBody::Exec(exec) => routes::exec_gap(
                &captured.task,
                &exec.filename.0,
                &exec.cwd.0,
                captured.ts_boot_ns,
            )
            .map(|body| Captured {
                task: captured.task,
                ts_boot_ns: captured.ts_boot_ns,
                body,
            }),
            _ => None,
        };
        if tx.send(Capture::Event(captured)).await.is_err() {
            return false;
        }
        if let Some(gap) = compat
            && tx.send(Capture::Event(gap)).await.is_err()
        {
            return false;
        }
    }
    true
}

/// Reads every record the ring buffer holds now and passes on what they make.
async fn drain(
    ring: &mut RingBuf<MapData>,
    assembler: &mut Assembler,
    tx: &mpsc::Sender<Capture>,
    stats: &mut ReaderStats,
) {
    loop {
        // The item borrows the ring: decode it before awaiting the send.
        let record = {
            let Some(item) = ring.next() else {
                stats.emptied.store(boot_now_ns(), Ordering::Relaxed);
                break;
            };
            stats.read.inc();
            decode::decode(&item)
        };
        match record {
            Ok(record) => {
                let mut out = Vec::new();
                assembler.push(record, &mut out);
                if !send(tx, out).await {
                    return;
                }
            }
            Err(err) => {
                stats.undecodable += 1;
                warn!(error = %err, "undecodable kernel record");
            }
        }
    }
}

/// Polls the kernel's loss counters every `period` until `stop`, then once more. While the
/// counters stand still (nothing recorded, an idle host) it looks only every
/// `QUIET_FACTOR` periods, after `QUIET_POLLS` polls without change.
pub async fn watch_losses(
    mut monitor: DropMonitor,
    tx: mpsc::Sender<Capture>,
    mut stop: watch::Receiver<bool>,
    period: Duration,
    metrics: Arc<AgentMetrics>,
) -> DropMonitor {
    let mut last_errors = Vec::new();
    let mut last = (0, 0, 0);
    let mut recheck = true;
    let mut quiet_polls = 0u32;
    loop {
        let wait = if quiet_polls >= QUIET_POLLS {
            period * QUIET_FACTOR
        } else {
            period
        };
        let stopping = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = stop.changed() => true,
        };
        let counters = monitor.counters();
        let now = (
            counters.dropped_records(),
            counters.submitted,
            counters.scope_skipped,
        );
        // The per-session map is walked only when something was dropped: walking a large hash
        // map is the costliest thing an idle agent would do. Once more after a change, for a
        // drop counted in total but not yet in its session when the map was read.
        let dropping = now.0 != last.0;
        if dropping || recheck || stopping {
            for loss in monitor.poll() {
                if tx.send(Capture::Loss(loss)).await.is_err() {
                    return monitor;
                }
            }
        }
        recheck = dropping;
        quiet_polls = if now == last {
            quiet_polls.saturating_add(1)
        } else {
            0
        };
        metrics
            .kernel_dropped_records
            .inc_by(now.0.saturating_sub(last.0));
        metrics.kernel_records.inc_by(now.1.saturating_sub(last.1));
        metrics
            .kernel_scope_skipped
            .inc_by(now.2.saturating_sub(last.2));
        last = now;
        if counters.errors != last_errors {
            for (error, count) in &counters.errors {
                if *count > 0 {
                    warn!(kind = error.name(), count, "kernel-side read failures");
                }
            }
            last_errors = counters.errors;
        }
        if stopping {
            return monitor;
        }
    }
}

/// Polls without a change in the counters before the loss watcher slows down, and by how much.
const QUIET_POLLS: u32 = 5;
const QUIET_FACTOR: u32 = 5;

/// `CLOCK_BOOTTIME` now, the clock of the records' timestamps.
pub fn boot_now_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME) as u64
}

pub fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and out pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}
