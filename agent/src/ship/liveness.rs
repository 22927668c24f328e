//! Whether the collector still answers at the transport level, as a plain state machine (the
//! I/O loop in [`super`] feeds in what the connection received and sends the probes).
//!
//! A crashed collector sends no close, and a restarted one resets the old connection only once
//! a packet of it arrives, which may not happen for seconds (QUIC's loss probes back off, and a
//! connection waiting for an answer sends nothing else). So while batches wait for their answer
//! and the collector has been quiet for [`PROBE_AFTER`], the agent sends it a probe (a one-byte
//! QUIC datagram, which the collector does not read), and another every as long while it stays
//! quiet. A live collector acknowledges every QUIC packet within a round trip, whatever its store
//! is doing: a connection that has heard nothing for [`SILENCE`] (or four round trips, if more)
//! after sending a batch or a probe is given up. Several probes make a lossy network unlikely to
//! pass for silence.
use std::time::{Duration, Instant};

/// How long the collector may be quiet while batches wait before it is probed.
pub const PROBE_AFTER: Duration = Duration::from_millis(250);
/// How long after being asked (a batch or a probe) a silent collector is given up.
pub const SILENCE: Duration = Duration::from_secs(1);

/// How long a handshake may take: a collector that is up answers within a round trip or two,
/// so an attempt that has heard nothing for [`SILENCE`] (or four round trips of the last
/// connection, if more) is given up and the next one sends a fresh first packet at once, rather
/// than waiting out QUIC's own back-off on its retransmissions. The back-off's `step` stretches
/// it, so that a slow link still connects after a few tries; never more than `cap`
/// (`shipping.ack_timeout`).
pub fn handshake_deadline(last_rtt: Option<Duration>, step: Duration, cap: Duration) -> Duration {
    let rtt = last_rtt.unwrap_or_default();
    SILENCE.max(rtt * 4).max(step).min(cap)
}

/// What to do after a look.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Fine,
    /// Send a probe (then report it with [`Liveness::probed`]).
    Probe,
    /// Nothing heard for this long after asking: give the connection up.
    Silent(Duration),
}

#[derive(Debug)]
pub struct Liveness {
    /// Datagrams received, and when that count last changed (as seen at a look).
    received: u64,
    heard_at: Instant,
    /// The first batch or probe sent since the collector was last heard.
    asked_at: Option<Instant>,
    /// The last probe sent.
    probed_at: Option<Instant>,
}

impl Liveness {
    /// For a connection that has received `received` datagrams by `now`.
    pub fn new(received: u64, now: Instant) -> Self {
        Self {
            received,
            heard_at: now,
            asked_at: None,
            probed_at: None,
        }
    }

    /// Something the collector must acknowledge (a batch) went at `at`.
    pub fn asked(&mut self, at: Instant) {
        self.asked_at.get_or_insert(at);
    }

    /// A probe went at `at`.
    pub fn probed(&mut self, at: Instant) {
        self.probed_at = Some(at);
        self.asked(at);
    }

    /// A look at `now`: the connection has received `received` datagrams, its round trip is
    /// `rtt`, and batches are `waiting` for their answer.
    pub fn look(&mut self, received: u64, rtt: Duration, waiting: bool, now: Instant) -> Verdict {
        if received != self.received {
            self.received = received;
            self.heard_at = now;
            self.asked_at = None;
        }
        let silence = SILENCE.max(rtt * 4);
        if let Some(asked) = self.asked_at
            && now.saturating_duration_since(asked) >= silence
        {
            return Verdict::Silent(silence);
        }
        let quiet_since = self
            .probed_at
            .map_or(self.heard_at, |probed| probed.max(self.heard_at));
        if waiting && now.saturating_duration_since(quiet_since) >= PROBE_AFTER {
            return Verdict::Probe;
        }
        Verdict::Fine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_quiet_collector_is_probed_while_batches_wait_and_only_then() {
        let start = Instant::now();
        let mut live = Liveness::new(5, start);
        // Idle: nothing waits, nothing to probe however long it is quiet.
        assert_eq!(live.look(5, RTT, false, start + ms(5000)), Verdict::Fine);
        // A batch waits for a slow store; the collector acknowledged its packets.
        live.asked(start + ms(5000));
        assert_eq!(live.look(6, RTT, true, start + ms(5100)), Verdict::Fine);
        assert_eq!(live.look(6, RTT, true, start + ms(5300)), Verdict::Fine);
        assert_eq!(live.look(6, RTT, true, start + ms(5350)), Verdict::Probe);
        live.probed(start + ms(5350));
        // The probe is acknowledged: quiet again for a while, probed again.
        assert_eq!(live.look(7, RTT, true, start + ms(5400)), Verdict::Fine);
        assert_eq!(live.look(7, RTT, true, start + ms(5600)), Verdict::Fine);
        assert_eq!(live.look(7, RTT, true, start + ms(5650)), Verdict::Probe);
    }

    #[test]
    fn a_collector_silent_after_being_asked_is_given_up() {
        let start = Instant::now();
        let mut live = Liveness::new(0, start);
        live.asked(start);
        // Probed every PROBE_AFTER while silent...
        let mut probes = 0;
        let mut at = start;
        let verdict = loop {
            at += ms(100);
            match live.look(0, RTT, true, at) {
                Verdict::Fine => {}
                Verdict::Probe => {
                    probes += 1;
                    live.probed(at);
                }
                silent => break silent,
            }
        };
        // ...and given up SILENCE after the batch went.
        assert_eq!(verdict, Verdict::Silent(SILENCE));
        assert_eq!(at - start, SILENCE);
        assert_eq!(probes, 3);
    }

    #[test]
    fn a_handshake_gets_the_silence_stretched_by_the_round_trip_and_the_back_off() {
        let cap = Duration::from_secs(5);
        assert_eq!(handshake_deadline(None, ms(200), cap), SILENCE);
        assert_eq!(handshake_deadline(Some(RTT), ms(200), cap), SILENCE);
        assert_eq!(handshake_deadline(Some(ms(400)), ms(200), cap), ms(1600));
        assert_eq!(handshake_deadline(None, ms(3200), cap), ms(3200));
        assert_eq!(handshake_deadline(Some(ms(2000)), ms(30_000), cap), cap);
        assert_eq!(handshake_deadline(None, ms(200), ms(500)), ms(500));
    }

    #[test]
    fn a_long_round_trip_stretches_the_silence() {
        let start = Instant::now();
        let mut live = Liveness::new(0, start);
        live.asked(start);
        let rtt = ms(600);
        assert_ne!(
            live.look(0, rtt, false, start + ms(2000)),
            Verdict::Silent(rtt * 4)
        );
        assert_eq!(
            live.look(0, rtt, false, start + ms(2400)),
            Verdict::Silent(rtt * 4)
        );
        // Anything heard starts over.
        let mut live = Liveness::new(0, start);
        live.asked(start);
        assert_eq!(live.look(1, RTT, false, start + ms(900)), Verdict::Fine);
        assert_eq!(live.look(1, RTT, false, start + ms(1500)), Verdict::Fine);
    }
}
