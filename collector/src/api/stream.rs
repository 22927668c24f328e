//! Streamed answers (`/events`, `/export`, `/verify`): JSON lines made on a blocking thread and
//! sent as they are made, a recording read one chunk at a time, so that the collector's memory
//! does not grow with the recording. A bounded channel holds the lines between the thread and
//! the connection: a slow client slows the reading down instead of filling memory.
//!
//! Every answer ends with an end line ([`StreamEnd`]): `ok` with the number of lines before it,
//! or, when something failed after the first lines were sent (the status is already 200 then),
//! `ok: false` and the error. A client that finds no end line was cut off.
use axum::body::{Body, Bytes};
use custos_proto::{Event, api::StreamEnd};
use tokio_stream::wrappers::ReceiverStream;

use crate::store::Store;

/// Lines in flight between the producing thread and the connection.
const IN_FLIGHT: usize = 32;

/// Where a producer sends its lines.
pub struct Lines<'a> {
    send: &'a mut dyn FnMut(String) -> bool,
    sent: u64,
    gone: bool,
}

impl Lines<'_> {
    /// Sends one line (without its newline); false once the client has gone away (the
    /// producer should stop).
    pub fn send(&mut self, line: String) -> bool {
        if !self.gone {
            self.gone = !(self.send)(line);
            self.sent += u64::from(!self.gone);
        }
        !self.gone
    }
}

/// Runs `produce` with a [`Lines`] over `send`, then sends the end line: ok when `produce`
/// succeeded, its error otherwise. Returns the end (nothing is sent after the client went away).
pub fn produce(
    produce: impl FnOnce(&mut Lines<'_>) -> Result<(), String>,
    mut send: impl FnMut(String) -> bool,
) -> StreamEnd {
    let mut lines = Lines {
        send: &mut send,
        sent: 0,
        gone: false,
    };
    let outcome = produce(&mut lines);
    let end = StreamEnd {
        ok: outcome.is_ok(),
        lines: lines.sent,
        error: outcome.err(),
    };
    if !lines.gone {
        send(end.line());
    }
    end
}

/// A streamed body: `work` runs on a blocking thread, its lines are sent as they come, then the
/// end line. `what` names the answer in the collector's log when it fails midway.
pub fn body(
    what: String,
    work: impl FnOnce(&mut Lines<'_>) -> Result<(), String> + Send + 'static,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(IN_FLIGHT);
    tokio::task::spawn_blocking(move || {
        let end = produce(work, |line| {
            tx.blocking_send(Ok(Bytes::from(line + "\n"))).is_ok()
        });
        if let Some(error) = &end.error {
            tracing::warn!(
                what,
                lines = end.lines,
                error,
                "a streamed answer failed midway"
            );
        }
    });
    Body::from_stream(ReceiverStream::new(rx))
}

/// Sends `header`, then the lines `render` makes of each event of recording `id`, read one
/// chunk at a time ([`Store::chunks`]); a break in the chain is the error that ends it.
pub fn recording(
    store: &Store,
    id: &str,
    header: Option<String>,
    render: &mut dyn FnMut(&Event) -> Vec<String>,
    lines: &mut Lines<'_>,
) -> Result<(), String> {
    if let Some(header) = header
        && !lines.send(header)
    {
        return Ok(());
    }
    for chunk in store.chunks(id).map_err(|err| err.to_string())? {
        for event in chunk.map_err(|err| err.to_string())? {
            for line in render(&event) {
                if !lines.send(line) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(work: impl FnOnce(&mut Lines<'_>) -> Result<(), String>) -> Vec<String> {
        let mut sent = Vec::new();
        produce(work, |line| {
            sent.push(line);
            true
        });
        sent
    }

    #[test]
    fn a_failure_midway_is_the_last_line_and_a_success_says_how_many_lines() {
        let sent = run(|lines| {
            lines.send("a".into());
            lines.send("b".into());
            Ok(())
        });
        assert_eq!(sent[..2], ["a", "b"]);
        assert_eq!(
            StreamEnd::parse(&sent[2]),
            Some(Ok(StreamEnd {
                ok: true,
                lines: 2,
                error: None
            }))
        );
        let sent = run(|lines| {
            lines.send("a".into());
            Err("chunk 1: fails authentication (altered)".into())
        });
        assert_eq!(sent.len(), 2);
        assert_eq!(
            StreamEnd::parse(&sent[1]),
            Some(Ok(StreamEnd {
                ok: false,
                lines: 1,
                error: Some("chunk 1: fails authentication (altered)".into())
            }))
        );
    }

    #[test]
    fn nothing_is_sent_after_the_client_went_away() {
        let mut sent = Vec::new();
        let end = produce(
            |lines| {
                assert!(lines.send("a".into()));
                assert!(!lines.send("b".into()), "the client is gone");
                assert!(!lines.send("c".into()));
                Ok(())
            },
            |line| {
                sent.push(line);
                sent.len() < 2
            },
        );
        assert_eq!(sent, ["a", "b"], "b was the send that failed");
        assert_eq!(end.lines, 1);
    }

    #[test]
    fn a_chunk_broken_midway_ends_the_recording_with_its_error() {
        use crate::{
            store::{
                Appended,
                tests::{batch, fixture, output},
            },
            trust::chunk,
        };
        let (_dir, config) = fixture();
        let mut store = Store::open(&config).unwrap();
        let mut id = String::new();
        for seq in 1..=3 {
            match store.append(batch(seq, &[output(seq, "text")])).unwrap() {
                Appended::Stored { recording, .. } => id = recording,
                other => panic!("{other:?}"),
            }
        }
        drop(store);
        let store = Store::open_read_only(&config).unwrap();
        let render = |event: &Event| vec![event.seq.0.to_string()];
        let whole = run(|lines| {
            recording(
                &store,
                &id,
                Some("header".into()),
                &mut render.clone(),
                lines,
            )
        });
        assert_eq!(whole[..4], ["header", "1", "2", "3"]);
        assert_eq!(
            StreamEnd::parse(&whole[4]),
            Some(Ok(StreamEnd {
                ok: true,
                lines: 4,
                error: None
            }))
        );

        // A bit flipped in the second chunk: the first chunk's lines went out, then the error.
        let path = store
            .dir()
            .join(store.index().recording(&id).unwrap().unwrap().path);
        let mut bytes = std::fs::read(&path).unwrap();
        let first = chunk::parse(&bytes).unwrap().unwrap().encoded_len();
        let second = chunk::parse(&bytes[first..])
            .unwrap()
            .unwrap()
            .encoded_len();
        bytes[first + second - 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let broken = run(|lines| {
            recording(
                &store,
                &id,
                Some("header".into()),
                &mut render.clone(),
                lines,
            )
        });
        assert_eq!(broken.len(), 3, "{broken:?}");
        assert_eq!(broken[..2], ["header", "1"]);
        let end = StreamEnd::parse(&broken[2]).unwrap().unwrap();
        assert_eq!((end.ok, end.lines), (false, 2), "{end:?}");
        let error = end.error.unwrap_or_default();
        assert!(
            error.contains("chunk 1: fails authentication (altered)"),
            "{error}"
        );
    }
}
