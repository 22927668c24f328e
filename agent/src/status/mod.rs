//! Whether the agent records, for `custos-agent status` and the PAM account hook that refuses
//! logins while it does not (`[agent] fail_closed`).
//!
//! The running agent keeps a small file fresh ([`writer`]): its pid and boot, a heartbeat,
//! whether its programs are attached, when it last emptied the ring buffer and how full its
//! spool is. `custos-agent status` ([`command`]) reads it and [`decide`]s. A file rather than
//! the metrics endpoint: that one may be off, and a file needs no network client in the login
//! path; the agent removes it when it stops, and a crash leaves a pid that is gone or a
//! heartbeat that goes stale.
pub mod command;
pub mod writer;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often the running agent rewrites the status file.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A heartbeat older than this: the agent is hung (or its runtime is starved).
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(10);
/// The ring buffer not emptied for this long: the reader is stuck or far behind. An idle
/// reader still looks every 5 s (`PollTimer::PARKED`).
pub const RING_STALE: Duration = Duration::from_secs(15);
/// The spool is full from this share of `spool.max_size` on (percent): past it, appending
/// soon drops unsent batches.
pub const SPOOL_FULL_PERCENT: u64 = 90;

/// The status file's contents (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The agent's process id.
    pub pid: u32,
    /// The boot the times below belong to (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// When the file was written (`CLOCK_BOOTTIME`, ns).
    pub heartbeat_ns: u64,
    /// Whether the kernel programs are attached (false from the moment the agent stops).
    pub attached: bool,
    /// When the reader last emptied the ring buffer (`CLOCK_BOOTTIME`, ns).
    pub ring_emptied_ns: u64,
    /// Bytes in the spool, and its bound; `None` when the agent prints events (`--stdout`).
    pub spool: Option<SpoolFill>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolFill {
    pub bytes: u64,
    pub max_bytes: u64,
}

/// Why the agent is not recording: one line for the operator, the log and the user refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("custos-agent is not running (no status file {0}: not started, or stopped)")]
    NoStatusFile(String),
    #[error("cannot read the agent's status file {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("custos-agent is not running (its pid {0} is gone)")]
    Gone(u32),
    #[error("the agent's status file is from another boot (custos-agent has not started since)")]
    OtherBoot,
    #[error("custos-agent is not responding (last heartbeat {0} s ago)")]
    Stale(u64),
    #[error("the agent's programs are not attached")]
    Detached,
    #[error("the agent has not read the kernel's ring buffer for {0} s")]
    RingStale(u64),
    #[error("the agent's spool is full ({bytes} of {max_bytes} bytes): recordings would be lost")]
    SpoolFull { bytes: u64, max_bytes: u64 },
}

/// This host now, as [`decide`] compares a report with it.
#[derive(Clone, Debug)]
pub struct Now<'a> {
    pub boot_id: &'a str,
    /// `CLOCK_BOOTTIME`, ns.
    pub boottime_ns: u64,
}

/// Whether the agent that wrote `report` records now: running (its pid alive, a fresh
/// heartbeat, of this boot), programs attached, ring buffer emptied recently, spool not full.
pub fn decide(report: &Report, now: &Now, alive: impl Fn(u32) -> bool) -> Result<(), NotReady> {
    if report.boot_id != now.boot_id {
        return Err(NotReady::OtherBoot);
    }
    if !alive(report.pid) {
        return Err(NotReady::Gone(report.pid));
    }
    let age = |ns: u64| Duration::from_nanos(now.boottime_ns.saturating_sub(ns));
    let heartbeat = age(report.heartbeat_ns);
    if heartbeat > HEARTBEAT_STALE {
        return Err(NotReady::Stale(heartbeat.as_secs()));
    }
    if !report.attached {
        return Err(NotReady::Detached);
    }
    let ring = age(report.ring_emptied_ns);
    if ring > RING_STALE {
        return Err(NotReady::RingStale(ring.as_secs()));
    }
    if let Some(SpoolFill { bytes, max_bytes }) = report.spool
        && bytes.saturating_mul(100) >= max_bytes.saturating_mul(SPOOL_FULL_PERCENT)
    {
        return Err(NotReady::SpoolFull { bytes, max_bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn recording() -> Report {
        Report {
            pid: 42,
            boot_id: "boot-a".into(),
            heartbeat_ns: 100 * SEC,
            attached: true,
            ring_emptied_ns: 99 * SEC,
            spool: Some(SpoolFill {
                bytes: 1000,
                max_bytes: 1 << 20,
            }),
        }
    }

    fn at(secs: u64) -> Now<'static> {
        Now {
            boot_id: "boot-a",
            boottime_ns: secs * SEC,
        }
    }

    fn alive(pid: u32) -> bool {
        pid == 42
    }

    #[test]
    fn a_fresh_attached_agent_with_room_records() {
        assert_eq!(decide(&recording(), &at(101), alive), Ok(()));
        // Printing events (--stdout): no spool to fill.
        let report = Report {
            spool: None,
            ..recording()
        };
        assert_eq!(decide(&report, &at(101), alive), Ok(()));
    }

    #[test]
    fn a_dead_pid_is_not_running_whatever_the_heartbeat() {
        let report = Report {
            pid: 7,
            ..recording()
        };
        assert_eq!(decide(&report, &at(100), alive), Err(NotReady::Gone(7)));
    }

    #[test]
    fn a_file_of_another_boot_is_not_this_agent() {
        let now = Now {
            boot_id: "boot-b",
            boottime_ns: 100 * SEC,
        };
        assert_eq!(
            decide(&recording(), &now, |_| true),
            Err(NotReady::OtherBoot)
        );
    }

    #[test]
    fn a_stale_heartbeat_is_a_hung_agent() {
        assert_eq!(decide(&recording(), &at(110), alive), Ok(()));
        assert_eq!(
            decide(&recording(), &at(111), alive),
            Err(NotReady::Stale(11))
        );
    }

    #[test]
    fn detached_programs_record_nothing() {
        let report = Report {
            attached: false,
            ..recording()
        };
        assert_eq!(decide(&report, &at(100), alive), Err(NotReady::Detached));
    }

    #[test]
    fn a_ring_buffer_not_read_for_long_is_not_recording() {
        let report = Report {
            heartbeat_ns: 120 * SEC,
            ring_emptied_ns: 104 * SEC,
            ..recording()
        };
        assert_eq!(
            decide(&report, &at(120), alive),
            Err(NotReady::RingStale(16))
        );
        let report = Report {
            ring_emptied_ns: 105 * SEC,
            ..report
        };
        assert_eq!(decide(&report, &at(120), alive), Ok(()));
    }

    #[test]
    fn a_spool_at_nine_tenths_is_full() {
        let fill = |bytes| Report {
            spool: Some(SpoolFill {
                bytes,
                max_bytes: 1000,
            }),
            ..recording()
        };
        assert_eq!(decide(&fill(899), &at(100), alive), Ok(()));
        assert_eq!(
            decide(&fill(900), &at(100), alive),
            Err(NotReady::SpoolFull {
                bytes: 900,
                max_bytes: 1000
            })
        );
    }

    #[test]
    fn reasons_are_one_line() {
        for reason in [
            NotReady::NoStatusFile("/run/custos-agent/status.json".into()),
            NotReady::Stale(11),
            NotReady::SpoolFull {
                bytes: 9,
                max_bytes: 10,
            },
        ] {
            assert!(!reason.to_string().contains('\n'), "{reason}");
        }
    }
}
