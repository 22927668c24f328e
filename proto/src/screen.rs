//! What the screen showed: output as recorded, and keystrokes the terminal echoed itself,
//! rendered the way the kernel's line discipline echoes them in its usual settings (ICANON,
//! ECHOE, ECHOCTL, ICRNL, ONLCR): Enter as a new line, control characters as `^X`, erase as
//! backspace-space-backspace, end-of-file not shown. Replay and asciicast export use it.
use crate::{Event, EventBody};

/// The bytes `event` put on the screen (empty for events that show nothing).
pub fn shown(event: &Event) -> Vec<u8> {
    match &event.event {
        EventBody::Output(output) => output.data.as_bytes().to_vec(),
        EventBody::Input(input) if input.echoed => echo(input.data.as_bytes()),
        _ => Vec::new(),
    }
}

/// The terminal's echo of typed bytes.
pub fn echo(typed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(typed.len());
    for &byte in typed {
        match byte {
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b'\t' => out.push(b'\t'),
            // VEOF is not echoed; VERASE (DEL or ^H) erases a character.
            0x04 => {}
            0x7f | 0x08 => out.extend_from_slice(b"\x08 \x08"),
            0x00..=0x1f => out.extend_from_slice(&[b'^', byte + b'@']),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_like_the_line_discipline() {
        assert_eq!(echo(b"ls\r"), b"ls\r\n");
        assert_eq!(echo(b"ab\x7fc\x03\x04"), b"ab\x08 \x08c^C");
    }
}
