//! The in-flight window, as a plain state machine (no I/O, no clock of its own, in the way of
//! quinn-proto): which pending batches go out now, what each completion means, when a batch the
//! collector could not store may go again. The I/O loop in [`super`] reads the spool, runs the
//! requests and feeds the results in.
//!
//! Rules: at most `capacity` batches outstanding; never two of one session (a session's
//! batches are stored in the order they were made, so a later one waits for the earlier one's
//! acknowledgement, or for its retry); a batch the collector could not store now waits
//! [`RETRY_AFTER`] before it goes again, while the others carry on.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use custos_proto::{
    BootId,
    wire::{Batch, BatchSeq, ErrorCode},
};

/// How long a batch the collector could not store waits before it is sent again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The session a batch belongs to.
pub type SessionOf = (BootId, u32);

/// Why one batch was not acknowledged.
#[derive(Debug)]
pub enum SendError {
    /// The connection failed; everything outstanding is sent again on the next one.
    Connection(String),
    /// The collector refused it for good.
    Rejected(ErrorCode, String),
    /// The collector could not store it now.
    Retry(String),
}

/// An outstanding batch: when it left, its session, what the log says when it is acknowledged.
#[derive(Clone, Debug, PartialEq)]
pub struct Sent {
    pub at: Instant,
    pub session: SessionOf,
    pub last_seq: u64,
    pub events: u32,
}

/// What a completion asks of the I/O loop.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Acknowledged: drop it from the spool (`sent` is `None` for a batch the window did not
    /// know, which cannot happen but is acknowledged all the same).
    Acked(Option<Sent>),
    /// Refused for good: set it aside.
    Rejected(ErrorCode, String),
    /// Not stored now: it goes again after [`RETRY_AFTER`].
    Retry(String),
    /// The connection failed: reconnect; everything outstanding goes again.
    ConnectionLost(String),
}

/// The batches outstanding on one connection.
#[derive(Debug)]
pub struct Window {
    capacity: usize,
    sent: HashMap<BatchSeq, Sent>,
    /// Batches the collector could not store, and when they may go again.
    waiting: HashMap<BatchSeq, (Instant, SessionOf)>,
}

impl Window {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            sent: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// Batches outstanding.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Nothing outstanding and nothing waiting to be retried.
    pub fn is_idle(&self) -> bool {
        self.sent.is_empty() && self.waiting.is_empty()
    }

    /// When the first waiting batch may go again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.waiting.values().map(|(at, _)| *at).min()
    }

    /// Ends the waits that are over at `now` (their batches may go at the next fill).
    pub fn release(&mut self, now: Instant) {
        self.waiting.retain(|_, (at, _)| *at > now);
    }

    /// Fills the window from `pending` (the spool's unacknowledged batches, oldest first):
    /// `read` fetches a batch (`None`: gone or unreadable, skipped). Returns the batches to send
    /// now, each recorded as outstanding.
    pub fn fill(
        &mut self,
        pending: impl IntoIterator<Item = (BatchSeq, BootId, u32)>,
        now: Instant,
        mut read: impl FnMut(BatchSeq) -> Option<Batch>,
    ) -> Vec<Batch> {
        self.release(now);
        let mut busy: HashSet<SessionOf> = self
            .sent
            .values()
            .map(|s| s.session.clone())
            .chain(self.waiting.values().map(|(_, session)| session.clone()))
            .collect();
        let mut out = Vec::new();
        for (seq, boot, session) in pending {
            if self.sent.len() >= self.capacity {
                break;
            }
            let session = (boot, session);
            if self.sent.contains_key(&seq) || busy.contains(&session) {
                // Later batches of a busy session wait their turn.
                busy.insert(session);
                continue;
            }
            let Some(batch) = read(seq) else {
                continue;
            };
            busy.insert(session.clone());
            self.sent.insert(
                seq,
                Sent {
                    at: now,
                    session,
                    last_seq: batch.header.last_seq.0,
                    events: batch.header.events,
                },
            );
            out.push(batch);
        }
        out
    }

    /// The result of sending batch `seq`.
    pub fn complete(
        &mut self,
        seq: BatchSeq,
        result: Result<(), SendError>,
        now: Instant,
    ) -> Outcome {
        let sent = self.sent.remove(&seq);
        match result {
            Ok(()) => Outcome::Acked(sent),
            Err(SendError::Rejected(code, message)) => Outcome::Rejected(code, message),
            Err(SendError::Retry(message)) => {
                if let Some(sent) = sent {
                    self.waiting.insert(seq, (now + RETRY_AFTER, sent.session));
                }
                Outcome::Retry(message)
            }
            Err(SendError::Connection(message)) => Outcome::ConnectionLost(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use custos_proto::{
        AuditSessionId, Seq, Timestamp,
        wire::{BatchHeader, SpoolId},
    };

    use super::*;

    fn boot() -> BootId {
        BootId("b".into())
    }

    fn batch(seq: u64, session: u32) -> Batch {
        Batch {
            header: BatchHeader {
                spool: SpoolId("s".into()),
                seq: BatchSeq(seq),
                host: "h".into(),
                boot_id: boot(),
                session: AuditSessionId(session),
                first_seq: Seq(seq * 10),
                last_seq: Seq(seq * 10),
                events: 3,
                first_time: Timestamp::default(),
                last_time: Timestamp::default(),
                raw_len: 0,
                signed: None,
            },
            events: Vec::new(),
        }
    }

    /// Pending batches `(seq, session)`, as the spool lists them.
    fn pending(list: &[(u64, u32)]) -> Vec<(BatchSeq, BootId, u32)> {
        list.iter()
            .map(|&(seq, session)| (BatchSeq(seq), boot(), session))
            .collect()
    }

    fn seqs(batches: &[Batch]) -> Vec<u64> {
        batches.iter().map(|b| b.header.seq.0).collect()
    }

    fn fill(window: &mut Window, list: &[(u64, u32)], now: Instant) -> Vec<u64> {
        let sessions: HashMap<u64, u32> = list.iter().copied().collect();
        seqs(&window.fill(pending(list), now, |seq| {
            Some(batch(seq.0, sessions[&seq.0]))
        }))
    }

    #[test]
    fn one_batch_per_session_and_no_more_than_the_capacity() {
        let now = Instant::now();
        let mut window = Window::new(2);
        let spool = [(1, 7), (2, 7), (3, 8), (4, 9)];
        assert_eq!(fill(&mut window, &spool, now), [1, 3]);
        assert_eq!(window.len(), 2);
        // Full: nothing more, and nothing sent twice.
        assert_eq!(fill(&mut window, &spool, now), Vec::<u64>::new());
        // Session 7's first batch acknowledged: its second may go.
        let acked = window.complete(BatchSeq(1), Ok(()), now);
        assert!(matches!(
            acked,
            Outcome::Acked(Some(Sent {
                last_seq: 10,
                events: 3,
                ..
            }))
        ));
        assert_eq!(fill(&mut window, &[(2, 7), (3, 8), (4, 9)], now), [2]);
    }

    #[test]
    fn a_batch_not_stored_waits_without_holding_up_the_others() {
        let now = Instant::now();
        let mut window = Window::new(4);
        assert_eq!(fill(&mut window, &[(1, 7), (2, 7), (3, 8)], now), [1, 3]);
        let outcome = window.complete(BatchSeq(1), Err(SendError::Retry("busy".into())), now);
        assert_eq!(outcome, Outcome::Retry("busy".into()));
        assert_eq!(window.next_retry(), Some(now + RETRY_AFTER));
        // Other completions go on at once; the session of the waiting batch stays in order.
        assert!(matches!(
            window.complete(BatchSeq(3), Ok(()), now),
            Outcome::Acked(Some(_))
        ));
        assert_eq!(fill(&mut window, &[(1, 7), (2, 7), (4, 9)], now), [4]);
        assert!(!window.is_idle());
        // Once the wait is over the same batch goes again, before its session's next.
        let later = now + RETRY_AFTER;
        assert_eq!(fill(&mut window, &[(1, 7), (2, 7)], later), [1]);
        assert_eq!(window.next_retry(), None);
    }

    #[test]
    fn refusals_and_lost_connections_are_reported() {
        let now = Instant::now();
        let mut window = Window::new(4);
        assert_eq!(fill(&mut window, &[(1, 7), (2, 8)], now), [1, 2]);
        let rejected = window.complete(
            BatchSeq(1),
            Err(SendError::Rejected(ErrorCode::TooLarge, "big".into())),
            now,
        );
        assert_eq!(
            rejected,
            Outcome::Rejected(ErrorCode::TooLarge, "big".into())
        );
        let lost = window.complete(BatchSeq(2), Err(SendError::Connection("gone".into())), now);
        assert_eq!(lost, Outcome::ConnectionLost("gone".into()));
        assert!(window.is_idle());
    }

    #[test]
    fn unreadable_batches_are_skipped() {
        let now = Instant::now();
        let mut window = Window::new(2);
        let sent = window.fill(pending(&[(1, 7), (2, 8), (3, 9)]), now, |seq| {
            (seq.0 != 1).then(|| batch(seq.0, 0))
        });
        assert_eq!(seqs(&sent), [2, 3]);
    }
}
