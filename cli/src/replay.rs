//! Playing a recording in the auditor's terminal, as the user saw it and at the pace they saw
//! it: output (and input the terminal echoed), sanitized so that nothing in it can make the
//! auditor's terminal answer or act.
use std::{io::Write, time::Duration};

use custos_proto::{Event, EventBody, Timestamp};

use crate::sanitize::Sanitizer;

#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// 2.0 plays twice as fast.
    pub speed: f64,
    /// Start this far into the session (what came before is shown at once).
    pub from: Duration,
    /// Longest pause between two outputs (idle time is cut down to it).
    pub max_wait: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct Played {
    pub events: u64,
    pub gaps: u64,
    pub suppressed_input: u64,
    pub dropped_sequences: u64,
}

/// Plays `events` to `out`, pausing with `sleep` (a real sleep, or nothing in tests).
pub fn play(
    events: impl Iterator<Item = anyhow::Result<Event>>,
    options: Options,
    out: &mut impl Write,
    mut sleep: impl FnMut(Duration),
) -> anyhow::Result<Played> {
    let mut sanitizer = Sanitizer::new();
    let mut played = Played::default();
    let mut start: Option<Timestamp> = None;
    let mut previous: Option<Timestamp> = None;
    for event in events {
        let event = event?;
        played.events += 1;
        let start = *start.get_or_insert(event.time);
        match &event.event {
            EventBody::Gap(_) => played.gaps += 1,
            EventBody::InputSuppressed(_) => played.suppressed_input += 1,
            _ => {}
        }
        let bytes = custos_proto::screen::shown(&event);
        if bytes.is_empty() {
            continue;
        }
        let offset = event.time.seconds_since(start).max(0.0);
        if offset >= options.from.as_secs_f64()
            && let Some(previous) = previous
        {
            let gap = event.time.seconds_since(previous).max(0.0) / options.speed;
            let mut wait = Duration::from_secs_f64(gap);
            if let Some(max) = options.max_wait {
                wait = wait.min(max);
            }
            if !wait.is_zero() {
                out.flush()?;
                sleep(wait);
            }
        }
        out.write_all(&sanitizer.filter(&bytes))?;
        if offset >= options.from.as_secs_f64() {
            previous = Some(event.time);
        }
    }
    out.flush()?;
    played.dropped_sequences = sanitizer.dropped();
    Ok(played)
}

#[cfg(test)]
mod tests {
    use custos_proto::{AuditSessionId, BootId, ByteString, Seq, Tty, event::Output};

    use super::*;

    fn output(ms: i64, data: &str) -> anyhow::Result<Event> {
        Ok(Event {
            time: Timestamp(ms * 1_000_000),
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(1),
            seq: Seq(1),
            process: None,
            event: EventBody::Output(Output {
                tty: Tty(0),
                data: ByteString::from(data),
                uncaptured: 0,
                redacted: Default::default(),
            }),
        })
    }

    #[test]
    fn timing_speed_offset_and_queries() {
        let events =
            || vec![output(0, "a"), output(1000, "b\x1b[6n"), output(5000, "c")].into_iter();
        let mut out = Vec::new();
        let mut waits = Vec::new();
        let options = Options {
            speed: 2.0,
            from: Duration::ZERO,
            max_wait: Some(Duration::from_secs(1)),
        };
        play(events(), options, &mut out, |d| waits.push(d)).unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(
            waits,
            vec![Duration::from_millis(500), Duration::from_secs(1)]
        );
        let mut waits = Vec::new();
        let from = Options {
            speed: 1.0,
            from: Duration::from_secs(2),
            max_wait: None,
        };
        play(events(), from, &mut Vec::new(), |d| waits.push(d)).unwrap();
        assert!(
            waits.is_empty(),
            "what comes before the offset is shown at once: {waits:?}"
        );
    }
}
