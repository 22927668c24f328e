//! This host's identity (name, boot id) and the clock that turns the kernel's boot-time
//! timestamps into wall-clock time.
use anyhow::Context as _;
use custos_proto::{BootId, Timestamp};

use crate::capture::clock_ns;

pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Clone, Debug)]
pub struct HostIdentity {
    pub hostname: String,
    pub boot_id: BootId,
}

impl HostIdentity {
    pub fn read() -> anyhow::Result<Self> {
        let hostname = nix::unistd::gethostname()
            .context("reading the hostname")?
            .to_string_lossy()
            .into_owned();
        let boot_id = std::fs::read_to_string(BOOT_ID_PATH)
            .with_context(|| format!("reading {BOOT_ID_PATH}"))?
            .trim()
            .to_owned();
        Ok(Self {
            hostname,
            boot_id: BootId(boot_id),
        })
    }
}

/// Boot time to wall-clock time: `CLOCK_REALTIME - CLOCK_BOOTTIME`, measured again now and then
/// so that clock adjustments are followed.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    offset_ns: i64,
}

impl BootClock {
    pub fn measure() -> Self {
        // Take the smallest interval of a few samples to bound the error by one clock read.
        let mut best = (i64::MAX, 0);
        for _ in 0..3 {
            let before = clock_ns(libc::CLOCK_BOOTTIME);
            let real = clock_ns(libc::CLOCK_REALTIME);
            let after = clock_ns(libc::CLOCK_BOOTTIME);
            let spread = after - before;
            if spread < best.0 {
                best = (spread, real - (before + spread / 2));
            }
        }
        Self { offset_ns: best.1 }
    }

    /// `CLOCK_REALTIME - CLOCK_BOOTTIME`, in nanoseconds.
    pub fn offset_ns(&self) -> i64 {
        self.offset_ns
    }

    pub fn wall(&self, boot_ns: u64) -> Timestamp {
        Timestamp(boot_ns as i64 + self.offset_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_maps_to_now() {
        let clock = BootClock::measure();
        let now = Timestamp::now();
        let mapped = clock.wall(crate::capture::boot_now_ns());
        assert!((mapped.0 - now.0).abs() < 50_000_000, "{mapped} vs {now}");
    }
}
