//! Making recorded terminal output safe to play into the auditor's terminal.
//!
//! A recording may contain sequences that make a terminal answer (device attributes, cursor
//! position and status reports, window reports, DECRQM, XTVERSION, DCS requests), act outside the
//! screen (clipboard writes, window moves), or answer back (ENQ). Played as they are, their
//! answers would arrive in the auditor's terminal as typed input. This filter drops them and
//! keeps every other byte exactly as recorded (colours, cursor movement, titles...).
use vte::{Params, Parser, Perform};

/// Feeds recorded output through a terminal parser and keeps what is safe.
pub struct Sanitizer {
    parser: Parser,
    state: State,
}

#[derive(Default)]
struct State {
    /// Bytes of the sequence (or character) being parsed.
    pending: Vec<u8>,
    /// Set by a callback: what to do with `pending`.
    verdict: Option<bool>,
    /// Inside a device control string: everything up to its end is dropped.
    in_dcs: bool,
    /// Sequences dropped so far.
    dropped: u64,
    /// A string (OSC, DCS) just ended at an ESC: the `\\` that completes its terminator gets
    /// the string's verdict.
    terminator: Option<bool>,
}

impl Default for Sanitizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Sanitizer {
    pub fn new() -> Self {
        Self {
            parser: Parser::new(),
            state: State::default(),
        }
    }

    /// The safe part of `bytes` (state carries over between calls).
    pub fn filter(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        for &byte in bytes {
            self.state.pending.push(byte);
            self.state.verdict = None;
            let terminator = self.state.terminator.take();
            self.parser.advance(&mut self.state, &[byte]);
            if let (Some(keep), true) = (terminator, byte == b'\\') {
                self.state.verdict = Some(keep);
            }
            if let Some(keep) = self.state.verdict.take() {
                if keep {
                    out.extend_from_slice(&self.state.pending);
                } else {
                    self.state.dropped += 1;
                }
                self.state.pending.clear();
            }
        }
        out
    }

    /// Sequences dropped so far.
    pub fn dropped(&self) -> u64 {
        self.state.dropped
    }
}

/// CSI sequences that make the terminal answer or act on its window.
fn is_query_csi(params: &Params, intermediates: &[u8], action: char) -> bool {
    match action {
        // Device attributes (DA1/2/3), status reports (DSR, CPR), DECREQTPARM.
        'c' | 'n' | 'x' => true,
        // Window operations and reports (XTWINOPS).
        't' => true,
        // DECRQM: mode report request.
        'p' if intermediates.contains(&b'$') => true,
        // XTVERSION and other `CSI > ... q` requests.
        'q' if intermediates.contains(&b'>') => true,
        _ => {
            let _ = params;
            false
        }
    }
}

impl Perform for State {
    fn print(&mut self, _c: char) {
        self.verdict = Some(!self.in_dcs);
    }

    fn execute(&mut self, byte: u8) {
        // ENQ asks for the answerback message.
        self.verdict = Some(!self.in_dcs && byte != 0x05);
    }

    fn hook(&mut self, _params: &Params, _intermediates: &[u8], _ignore: bool, _action: char) {
        self.in_dcs = true;
        self.verdict = Some(false);
    }

    fn put(&mut self, _byte: u8) {
        self.verdict = Some(false);
    }

    fn unhook(&mut self) {
        self.in_dcs = false;
        self.verdict = Some(false);
        self.terminator = Some(false);
    }

    fn osc_dispatch(&mut self, params: &[&[u8]], bell_terminated: bool) {
        // Titles (0, 1, 2) and hyperlinks (8) are kept; colour queries, clipboard access (52)
        // and everything else go.
        let keep = matches!(
            params.first(),
            Some(&b"0") | Some(&b"1") | Some(&b"2") | Some(&b"8")
        ) && !params.iter().skip(1).any(|p| *p == b"?")
            && !self.in_dcs;
        self.verdict = Some(keep);
        if !bell_terminated {
            self.terminator = Some(keep);
        }
    }

    fn csi_dispatch(&mut self, params: &Params, intermediates: &[u8], ignore: bool, action: char) {
        self.verdict =
            Some(!self.in_dcs && !ignore && !is_query_csi(params, intermediates, action));
    }

    fn esc_dispatch(&mut self, _intermediates: &[u8], _ignore: bool, byte: u8) {
        // ESC Z (DECID) asks the terminal to identify itself.
        self.verdict = Some(!self.in_dcs && byte != b'Z');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(bytes: &[u8]) -> Vec<u8> {
        Sanitizer::new().filter(bytes)
    }

    #[test]
    fn ordinary_output_is_kept_byte_for_byte() {
        let session = b"\x1b[?2004h\x1b]0;alice@db1: ~\x07alice@db1:~$ ls --color\r\n\x1b[0m\x1b[01;34mdir\x1b[0m  caf\xc3\xa9\r\n\x1b[K\x1b[2J\x1b[H\x1b(B\x1b[?1049h";
        assert_eq!(clean(session), session.to_vec());
    }

    #[test]
    fn queries_are_dropped() {
        let mut sanitizer = Sanitizer::new();
        let out = sanitizer.filter(
            b"a\x1b[cb\x1b[>0cc\x1b[6nd\x1b[18te\x1b[?2026$pf\x1bZg\x05h\x1bP$qm\x1b\\i\x1b]11;?\x07j\x1b]52;c;ZXZpbA==\x1b\\k\x1b]2;title\x1b\\l",
        );
        assert_eq!(out, b"abcdefghijk\x1b]2;title\x1b\\l".to_vec());
    }

    #[test]
    fn sequences_split_across_writes_are_handled() {
        let mut sanitizer = Sanitizer::new();
        let mut out = sanitizer.filter(b"x\x1b[");
        out.extend(sanitizer.filter(b"6ny\x1b[3"));
        out.extend(sanitizer.filter(b"1mz"));
        assert_eq!(out, b"xy\x1b[31mz");
    }
}
