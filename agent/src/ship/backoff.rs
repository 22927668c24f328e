//! The waits between attempts to connect to the collector, as a plain sequence (the jitter is
//! passed in, so that tests see exact values).
//!
//! A lost connection is made again at once (the caller does not ask for a wait); each failed
//! attempt then waits a step, starting at `reconnect_min` and doubling up to `reconnect_max`.
//! The wait is a random part of the step, from half of it to all of it ("equal jitter"): agents
//! that lost the same collector spread out, and no wait is ever longer than `reconnect_max`.
use std::time::Duration;

#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// From `min` to `max` (`max` below `min` counts as `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            step: min,
        }
    }

    /// The step the next wait is taken from.
    pub fn step(&self) -> Duration {
        self.step
    }

    /// Back to the first step (after a connection that worked).
    pub fn reset(&mut self) {
        self.step = self.min;
    }

    /// The wait after a failed attempt, for `jitter` from 0 to 1 (0: half the step, 1: all of
    /// it); the next wait's step doubles.
    pub fn next_wait(&mut self, jitter: f64) -> Duration {
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            1.0
        };
        let wait = self.step.mul_f64(0.5 + jitter / 2.0).min(self.max);
        self.step = self.step.saturating_mul(2).min(self.max);
        wait
    }

    /// [`Backoff::next_wait`] with a random jitter.
    pub fn next_random_wait(&mut self) -> Duration {
        self.next_wait(rand::random_range(0.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_steps_double_from_the_minimum_and_stop_at_the_maximum() {
        let mut backoff = Backoff::new(ms(200), ms(1500));
        let longest: Vec<Duration> = (0..6).map(|_| backoff.next_wait(1.0)).collect();
        assert_eq!(
            longest,
            [ms(200), ms(400), ms(800), ms(1500), ms(1500), ms(1500)]
        );
        backoff.reset();
        assert_eq!(backoff.step(), ms(200));
        let shortest: Vec<Duration> = (0..5).map(|_| backoff.next_wait(0.0)).collect();
        assert_eq!(shortest, [ms(100), ms(200), ms(400), ms(750), ms(750)]);
    }

    #[test]
    fn the_first_retry_is_quick_and_no_wait_exceeds_the_maximum() {
        let mut backoff = Backoff::new(ms(200), Duration::from_secs(30));
        let first = backoff.next_random_wait();
        assert!((ms(100)..=ms(200)).contains(&first), "{first:?}");
        for _ in 0..100 {
            let wait = backoff.next_random_wait();
            assert!(wait <= Duration::from_secs(30), "{wait:?}");
        }
        // Out-of-range jitter cannot stretch a wait either.
        for jitter in [2.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(backoff.next_wait(jitter) <= Duration::from_secs(30));
        }
        // A maximum below the minimum is the minimum.
        let mut odd = Backoff::new(ms(500), ms(100));
        assert_eq!(odd.next_wait(1.0), ms(500));
        assert_eq!(odd.next_wait(1.0), ms(500));
    }
}
