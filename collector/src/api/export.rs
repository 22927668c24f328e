//! Exports of a recording: asciicast v2 (plays in `asciinema play`) and JSON lines (one event
//! per line, for a SIEM). Pure renderers, fed one event at a time.
use custos_proto::{Event, EventBody, Timestamp, api::SessionSummary};
use serde_json::json;

/// Terminal size when none was recorded (resize events are not captured yet).
pub const DEFAULT_WIDTH: u32 = 80;
pub const DEFAULT_HEIGHT: u32 = 24;

/// Renders events as asciicast v2 lines.
pub struct Asciicast {
    start: Timestamp,
    /// Bytes of a UTF-8 character cut between two writes, kept for the next output.
    carry: Vec<u8>,
}

impl Asciicast {
    /// The header line, and the renderer for the events.
    pub fn start(summary: &SessionSummary) -> (String, Asciicast) {
        let start = summary.start.or(summary.last).unwrap_or_default();
        let title = format!(
            "{} {}@{}{}",
            summary.id,
            summary.login_user.as_deref().unwrap_or("?"),
            summary.host,
            summary
                .tty
                .as_deref()
                .map(|t| format!(" {t}"))
                .unwrap_or_default()
        );
        let mut header = json!({
            "version": 2,
            "width": DEFAULT_WIDTH,
            "height": DEFAULT_HEIGHT,
            "timestamp": start.0 / 1_000_000_000,
            "title": title,
            "env": {"TERM": "xterm", "SHELL": "/bin/bash"},
        });
        if let (Some(end), Some(begin)) = (summary.end.or(summary.last), summary.start) {
            header["duration"] = json!(end.seconds_since(begin).max(0.0));
        }
        (
            header.to_string(),
            Asciicast {
                start,
                carry: Vec::new(),
            },
        )
    }

    fn offset(&self, time: Timestamp) -> f64 {
        (time.seconds_since(self.start).max(0.0) * 1e6).round() / 1e6
    }

    /// The lines for one event (none for events that have no place in a terminal recording).
    pub fn event(&mut self, event: &Event) -> Vec<String> {
        let t = self.offset(event.time);
        let line = |code: &str, text: &str| json!([t, code, text]).to_string();
        match &event.event {
            EventBody::Output(output) => {
                let text = self.text(output.data.as_bytes());
                if text.is_empty() {
                    vec![]
                } else {
                    vec![line("o", &text)]
                }
            }
            EventBody::Input(input) => {
                let typed = String::from_utf8_lossy(input.data.as_bytes());
                let mut lines = vec![line("i", &typed)];
                // When the terminal echoed it, it was on the screen too.
                let shown = self.text(&custos_proto::screen::shown(event));
                if !shown.is_empty() {
                    lines.push(line("o", &shown));
                }
                lines
            }
            EventBody::Exec(exec) => {
                let argv: Vec<String> = exec.argv.iter().map(|a| a.to_string()).collect();
                vec![line("m", &format!("exec {}", argv.join(" ")))]
            }
            EventBody::Gap(gap) => vec![line(
                "m",
                &match (gap.reason.route(), &gap.detail) {
                    (Some(route), detail) => format!(
                        "gap: {route} not recorded ({} times, {} bytes{})",
                        gap.records,
                        gap.bytes,
                        detail
                            .as_ref()
                            .map(|d| format!("; {d}"))
                            .unwrap_or_default()
                    ),
                    (None, _) => format!("gap: {} records lost ({:?})", gap.records, gap.reason),
                },
            )],
            EventBody::InputSuppressed(suppressed) => vec![line(
                "m",
                &format!("{} keystrokes not recorded (echo off)", suppressed.bytes),
            )],
            EventBody::ClockSet(set) => vec![line(
                "m",
                &format!(
                    "the host's clock was set ({:+.3} s)",
                    set.step_ns as f64 / 1e9
                ),
            )],
            _ => vec![],
        }
    }

    /// Screen bytes as text, keeping a character cut at the end for the next call.
    fn text(&mut self, bytes: &[u8]) -> String {
        let mut data = std::mem::take(&mut self.carry);
        data.extend_from_slice(bytes);
        // An incomplete UTF-8 sequence at the end waits for its continuation.
        let cut = incomplete_suffix(&data);
        self.carry = data.split_off(data.len() - cut);
        String::from_utf8_lossy(&data).into_owned()
    }
}

/// Length of an incomplete (but so far valid) UTF-8 sequence ending `bytes`.
fn incomplete_suffix(bytes: &[u8]) -> usize {
    for back in 1..=3.min(bytes.len()) {
        let byte = bytes[bytes.len() - back];
        let needed = match byte {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            0x80..=0xbf => continue,
            _ => return 0,
        };
        return if back < needed { back } else { 0 };
    }
    0
}

/// One event as a JSON line.
pub fn json_line(event: &Event) -> String {
    serde_json::to_string(event).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use custos_proto::{AuditSessionId, BootId, ByteString, Seq, Tty, event::Output};

    use super::*;

    fn output(ms: i64, data: &[u8]) -> Event {
        Event {
            time: Timestamp(1_000_000_000_000 + ms * 1_000_000),
            host: "h".into(),
            boot_id: BootId("b".into()),
            session: AuditSessionId(1),
            seq: Seq(1),
            process: None,
            event: EventBody::Output(Output {
                tty: Tty(0),
                data: ByteString(data.to_vec()),
                uncaptured: 0,
                redacted: Default::default(),
            }),
        }
    }

    #[test]
    fn characters_cut_between_writes_are_joined() {
        let summary = SessionSummary {
            id: "h-b-1".into(),
            host: "h".into(),
            boot_id: "b".into(),
            session: 1,
            login_user: Some("alice".into()),
            login_uid: Some(1000),
            tty: Some("pts/1".into()),
            remote: None,
            start: Some(Timestamp(1_000_000_000_000)),
            end: None,
            last: None,
            events: 2,
            commands: 0,
            files: 0,
            bytes_out: 0,
            bytes_in: 0,
            bytes_uncaptured: 0,
            gaps: 0,
            sealed: false,
            held: false,
            clock_skewed: false,
        };
        let (header, mut cast) = Asciicast::start(&summary);
        let header: serde_json::Value = serde_json::from_str(&header).unwrap();
        assert_eq!(header["version"], 2);
        let euro = "€".as_bytes();
        let first = cast.event(&output(0, &[b'a', euro[0], euro[1]]));
        let second = cast.event(&output(1500, &[euro[2], b'b']));
        assert_eq!(first, vec![r#"[0.0,"o","a"]"#]);
        assert_eq!(second, vec![r#"[1.5,"o","€b"]"#]);
        assert_eq!(incomplete_suffix(b"ok"), 0);
        assert_eq!(incomplete_suffix(&euro[..1]), 1);
        assert_eq!(incomplete_suffix(euro), 0);
    }
}
