//! Batching: each session's events wait in memory until there are `max_bytes` of them, the
//! session ends, or the oldest has waited `interval`, and then leave as one batch (a batch holds
//! one session's events, in order).
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use custos_proto::{Event, EventBody};

struct Pending {
    events: Vec<Event>,
    bytes: usize,
    since: Instant,
}

pub struct Batcher {
    max_bytes: usize,
    interval: Duration,
    pending: HashMap<u32, Pending>,
}

/// A rough size of an event once encoded, for the batch size bound.
fn size(event: &Event) -> usize {
    200 + match &event.event {
        EventBody::Output(o) => o.data.len(),
        EventBody::Input(i) => i.data.len(),
        EventBody::Exec(e) => {
            e.argv.iter().map(|a| a.len() + 2).sum::<usize>() + e.cwd.len() + e.filename.len()
        }
        EventBody::Open(o) => o.path.len() * 2,
        _ => 0,
    }
}

impl Batcher {
    pub fn new(max_bytes: usize, interval: Duration) -> Self {
        Self {
            max_bytes,
            interval,
            pending: HashMap::new(),
        }
    }

    /// Adds an event; returns its session's batch when that is now complete.
    pub fn add(&mut self, event: Event) -> Option<Vec<Event>> {
        let session = event.session.0;
        let ends = matches!(event.event, EventBody::SessionEnd(_));
        let pending = self.pending.entry(session).or_insert_with(|| Pending {
            events: Vec::new(),
            bytes: 0,
            since: Instant::now(),
        });
        pending.bytes += size(&event);
        pending.events.push(event);
        if ends || pending.bytes >= self.max_bytes {
            return self.pending.remove(&session).map(|p| p.events);
        }
        None
    }

    /// Batches whose oldest event has waited long enough.
    pub fn due(&mut self, now: Instant) -> Vec<Vec<Event>> {
        let due: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) >= self.interval)
            .map(|(session, _)| *session)
            .collect();
        due.into_iter()
            .filter_map(|session| self.pending.remove(&session).map(|p| p.events))
            .collect()
    }

    /// No event waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Every batch still waiting (at shutdown).
    pub fn drain(&mut self) -> Vec<Vec<Event>> {
        self.pending.drain().map(|(_, p)| p.events).collect()
    }
}

#[cfg(test)]
mod tests {
    use custos_proto::{
        AuditSessionId, BootId, ByteString, Seq, Timestamp, Tty,
        event::{Output, SessionEnd},
    };

    use super::*;

    fn event(session: u32, seq: u64, body: EventBody) -> Event {
        Event {
            time: Timestamp(0),
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(session),
            seq: Seq(seq),
            process: None,
            event: body,
        }
    }

    fn output(session: u32, seq: u64, len: usize) -> Event {
        event(
            session,
            seq,
            EventBody::Output(Output {
                tty: Tty(0),
                data: ByteString(vec![b'x'; len]),
                uncaptured: 0,
                redacted: Default::default(),
            }),
        )
    }

    #[test]
    fn batches_by_session_size_end_and_age() {
        let mut batcher = Batcher::new(1000, Duration::from_millis(50));
        assert!(batcher.add(output(1, 1, 100)).is_none());
        assert!(batcher.add(output(2, 1, 100)).is_none());
        let full = batcher
            .add(output(1, 2, 900))
            .expect("session 1 reached the size");
        assert_eq!(full.len(), 2);
        let ended = batcher
            .add(event(
                2,
                2,
                EventBody::SessionEnd(SessionEnd {
                    duration_secs: 1.0,
                    ..Default::default()
                }),
            ))
            .expect("the end flushes");
        assert_eq!(
            ended.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        batcher.add(output(3, 1, 10));
        assert!(batcher.due(Instant::now()).is_empty());
        assert_eq!(
            batcher
                .due(Instant::now() + Duration::from_millis(60))
                .len(),
            1
        );
        batcher.add(output(4, 1, 10));
        assert_eq!(batcher.drain().len(), 1);
    }
}
