//! The host's wall clock being set: a timer on `CLOCK_REALTIME` armed with
//! `TFD_TIMER_CANCEL_ON_SET` wakes on every discontinuous change of the clock (`date -s`,
//! clock_settime, settimeofday, adjtimex stepping, an NTP client's step), whoever made it and
//! however (every route ends in the kernel's one timekeeping update), and costs nothing until
//! then. The step is measured against `CLOCK_BOOTTIME`, which no one can set. NTP's gradual
//! slewing is not a step and wakes nothing.
//!
//! The ring buffer reader polls the watch and drains the ring buffer before it reports a step,
//! so the step follows every record the kernel wrote before it (the `date` that set the clock,
//! and the session it ran in).
use std::os::fd::{AsFd, AsRawFd, RawFd};

use nix::sys::{
    time::TimeSpec,
    timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags},
};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::warn;

use crate::session::host::BootClock;

/// A descriptor tokio can poll, owning the timer.
struct Timer(TimerFd);

impl AsRawFd for Timer {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Arms the timer to expire in the year 9999, cancelled when the clock is set.
fn arm(timer: &TimerFd) -> nix::Result<()> {
    const YEAR_9999: i64 = 253_370_764_800;
    timer.set(
        Expiration::OneShot(TimeSpec::new(YEAR_9999, 0)),
        TimerSetTimeFlags::TFD_TIMER_ABSTIME | TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET,
    )
}

/// Watches the wall clock for steps.
pub struct ClockWatch {
    timer: AsyncFd<Timer>,
    /// The clock as it was before the next step.
    before: BootClock,
    /// The timer could not be re-armed: no step is reported any more.
    broken: bool,
}

impl ClockWatch {
    /// A watch, or `None` (said once in the log) if the kernel refuses the timer: clock steps
    /// then go unrecorded, and the collector's skew check still sees a host whose clock is off.
    pub fn new() -> Option<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_REALTIME,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )
        .and_then(|timer| arm(&timer).map(|()| timer));
        let timer = match timer {
            Ok(timer) => timer,
            Err(err) => {
                warn!(error = %err, "no timer to watch the wall clock: clock changes are not recorded");
                return None;
            }
        };
        // SAFETY: `Timer` owns the descriptor, which stays open as long as the AsyncFd that
        // owns the timer.
        match unsafe { AsyncFd::register_with_interest(Timer(timer), Interest::READABLE) } {
            Ok(timer) => Some(Self {
                timer,
                before: BootClock::measure(),
                broken: false,
            }),
            Err(err) => {
                let err = err.into_parts().1;
                warn!(error = %err, "cannot poll the wall clock's timer: clock changes are not recorded");
                None
            }
        }
    }

    /// Waits for the next step of the wall clock; how far it went, in nanoseconds (negative:
    /// back).
    pub async fn stepped(&mut self) -> i64 {
        loop {
            if self.broken {
                std::future::pending::<()>().await;
            }
            let Ok(mut guard) = self.timer.readable().await else {
                self.broken = true;
                continue;
            };
            guard.clear_ready();
            // Readable: the clock was set (the read answers ECANCELED, which the timer
            // treats as its wake-up), or nothing (EAGAIN, a spurious wake-up).
            if self.timer.get_ref().0.wait().is_err() {
                continue;
            }
            let after = BootClock::measure();
            let step_ns = after.offset_ns() - self.before.offset_ns();
            self.before = after;
            if let Err(err) = arm(&self.timer.get_ref().0) {
                warn!(error = %err, "could not re-arm the wall clock's timer: later clock changes are not recorded");
                self.broken = true;
            }
            return step_ns;
        }
    }
}

/// The next step of `watch`, or never without one.
pub async fn stepped(watch: &mut Option<ClockWatch>) -> i64 {
    match watch {
        Some(watch) => watch.stepped().await,
        None => std::future::pending().await,
    }
}
