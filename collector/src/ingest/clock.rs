//! The agent's clock against the collector's: an agent says its time in its hello; a host whose
//! clock is off by more than `ingest.max_clock_skew` is flagged (in `custos agents`, and on the
//! recordings whose batches arrive over that connection). Its event times stay as it sent them:
//! retention goes by the collector's receive time whatever they say.
use std::time::Duration;

use custos_proto::Timestamp;

pub use crate::index::HostClock;

/// Compares the time an agent said (`host`) with the collector's when it arrived.
pub fn judge(host: Timestamp, collector: Timestamp, max_skew: Duration) -> HostClock {
    let offset_ns = host.0.saturating_sub(collector.0);
    let max = i64::try_from(max_skew.as_nanos()).unwrap_or(i64::MAX);
    HostClock {
        offset_ns,
        skewed: offset_ns.unsigned_abs() > max.unsigned_abs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000_000_000;

    #[test]
    fn a_clock_off_by_more_than_the_skew_either_way_is_flagged() {
        let now = Timestamp(1_790_000_000_000_000_000);
        let max = Duration::from_secs(300);
        let at = |offset: i64| judge(Timestamp(now.0 + offset), now, max);
        assert_eq!(
            at(4 * MINUTE),
            HostClock {
                offset_ns: 4 * MINUTE,
                skewed: false
            }
        );
        assert!(!at(-5 * MINUTE).skewed, "exactly the skew is allowed");
        assert!(at(6 * MINUTE).skewed);
        assert!(at(-6 * MINUTE).skewed);
        // `date -s 2001-01-01` on the host.
        let y2001 = judge(Timestamp(978_307_200_000_000_000), now, max);
        assert!(y2001.skewed && y2001.offset_ns < 0, "{y2001:?}");
        assert!(judge(Timestamp(i64::MIN), now, max).skewed);
    }
}
