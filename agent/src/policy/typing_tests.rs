//! Redaction at human speed, on a fake clock: values typed one key at a time with pauses up
//! to 2 s, with and without a label printed before them, in the keystrokes and in their echo
//! (by the terminal itself or by the program); and what holding costs.
use std::time::{Duration, Instant};

use custos_proto::{
    ByteString, Gid, Pid, Timestamp, Tty, Uid,
    event::{EventBody, Input, Output, Process},
};

use super::{LONGEST_HOLD, Policy, Rules};
use crate::config::{Config, RedactionAction, RuleConfig};

const TICK: Duration = Duration::from_millis(100);

fn rule(builtin: &str) -> RuleConfig {
    RuleConfig {
        name: None,
        builtin: Some(builtin.into()),
        pattern: None,
        group: None,
        action: RedactionAction::Mask,
        keep_last: 0,
        applies_to: vec!["output".into(), "input".into(), "argv".into()],
    }
}

fn policy() -> Policy {
    let mut config = Config::default();
    config.redaction.rules = vec![rule("ssn"), rule("dob")];
    Policy::new(Rules::compile(&config).expect("rules compile"), None)
}

fn shell() -> Process {
    Process {
        pid: Pid(50),
        tgid: Pid(50),
        ppid: Pid(1),
        uid: Uid(1000),
        euid: Uid(1000),
        gid: Gid(1000),
        loginuid: Some(Uid(1000)),
        login_user: None,
        user: None,
        tty: None,
        comm: ByteString::from("intake"),
    }
}

/// Who shows a key the user typed.
#[derive(Clone, Copy, Debug)]
enum Echo {
    /// The terminal (canonical mode: `read`, prompts): the keystroke is recorded as echoed
    /// input, nothing comes back as output.
    Terminal,
    /// The program (readline, editors): the keystroke, then the program writes it back.
    Program,
}

/// A session on a fake clock, ticking like the agent's pipeline.
struct Typing {
    policy: Policy,
    start: Instant,
    at: Duration,
    /// What was released so far, per stream, and when (fake time) each byte was released.
    typed: Vec<u8>,
    shown: Vec<u8>,
    /// The longest any output byte waited between arriving and being released.
    longest_wait: Duration,
    /// Output bytes arrived but not yet released, with their arrival.
    waiting: std::collections::VecDeque<Duration>,
}

impl Typing {
    fn new() -> Self {
        Self {
            policy: policy(),
            start: Instant::now(),
            at: Duration::ZERO,
            typed: Vec::new(),
            shown: Vec::new(),
            longest_wait: Duration::ZERO,
            waiting: Default::default(),
        }
    }

    fn time(&self) -> Timestamp {
        Timestamp(1_700_000_000_000_000_000 + self.at.as_nanos() as i64)
    }

    fn collect(&mut self, passed: impl IntoIterator<Item = EventBody>) {
        for body in passed {
            match body {
                EventBody::Input(input) => self.typed.extend_from_slice(&input.data.0),
                EventBody::Output(output) => {
                    for _ in 0..output.data.0.len() {
                        if let Some(arrived) = self.waiting.pop_front() {
                            self.longest_wait = self.longest_wait.max(self.at - arrived);
                        }
                    }
                    self.shown.extend_from_slice(&output.data.0);
                }
                _ => {}
            }
        }
    }

    fn event(&mut self, body: EventBody) {
        let mut out = Vec::new();
        let now = self.start + self.at;
        self.policy
            .apply_at(1, &shell(), self.time(), body, now, &mut out);
        self.collect(out.into_iter().map(|p| p.body));
    }

    fn output(&mut self, data: &[u8]) {
        self.waiting
            .extend(std::iter::repeat_n(self.at, data.len()));
        self.event(EventBody::Output(Output {
            tty: Tty(0),
            data: ByteString(data.to_vec()),
            uncaptured: 0,
            redacted: Default::default(),
        }));
    }

    fn key(&mut self, key: u8, echo: Echo) {
        self.event(EventBody::Input(Input {
            tty: Tty(0),
            data: ByteString(vec![key]),
            echoed: matches!(echo, Echo::Terminal),
            uncaptured: 0,
            redacted: Default::default(),
        }));
        if let Echo::Program = echo {
            self.wait(Duration::from_millis(5));
            let single = [key];
            self.output(if key == b'\r' { b"\r\n" } else { &single[..] });
        }
    }

    /// Lets `span` pass, the pipeline ticking every 100 ms.
    fn wait(&mut self, span: Duration) {
        let end = self.at + span;
        while self.at < end {
            let step = TICK.min(end - self.at);
            self.at += step;
            let mut out = Vec::new();
            self.policy.flush_due_at(self.start + self.at, &mut out);
            self.collect(out.into_iter().map(|(_, p)| p.body));
        }
    }

    fn typed(&self) -> String {
        String::from_utf8_lossy(&self.typed).into_owned()
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.shown).into_owned()
    }
}

/// A program prints `prompt`, the user thinks for 5 s (longer than any hold), then types
/// `value` a key every `gap`, then Enter; 5 s later everything is out.
fn answer(prompt: &str, value: &str, gap: Duration, echo: Echo) -> Typing {
    let mut session = Typing::new();
    session.output(prompt.as_bytes());
    session.wait(Duration::from_secs(5));
    for key in value.bytes().chain([b'\r']) {
        session.key(key, echo);
        session.wait(gap);
    }
    session.wait(Duration::from_secs(5));
    session
}

/// `value` answered to `prompt` at 150 ms and at 1.5 s between keys, echoed by the terminal
/// and by the program: the keystrokes are `masked` + Enter, the screen the prompt and the echo
/// of `masked`; no digit of the value is ever released.
fn answers_are_caught(prompt: &str, value: &str, masked: &str) {
    for gap in [Duration::from_millis(150), Duration::from_millis(1500)] {
        for echo in [Echo::Terminal, Echo::Program] {
            let session = answer(prompt, value, gap, echo);
            let (typed, shown) = (session.typed(), session.shown());
            let case = format!("{gap:?} {echo:?}: typed {typed:?}, shown {shown:?}");
            assert!(
                !typed
                    .bytes()
                    .chain(shown.bytes())
                    .any(|b| b.is_ascii_digit()),
                "{case}"
            );
            assert_eq!(typed, format!("{masked}\r"), "{case}");
            let echoed = match echo {
                Echo::Terminal => String::new(),
                Echo::Program => format!("{masked}\r\n"),
            };
            assert_eq!(shown, format!("{prompt}{echoed}"), "{case}");
        }
    }
}

#[test]
fn an_ssn_typed_a_key_at_a_time_is_caught_at_150_ms_and_1_5_s() {
    answers_are_caught("$ ", "123-45-6789", "***-**-****");
}

/// The label is printed (and released) seconds before the date is typed: the keystrokes and
/// the echo are still known to be a date of birth.
#[test]
fn a_date_typed_after_its_label_is_caught_at_150_ms_and_1_5_s() {
    answers_are_caught("Patient DOB: ", "04/13/1962", "**/**/****");
}

/// The label typed too, at human speed, in the same stream as the date.
#[test]
fn a_label_and_date_typed_together_are_caught() {
    for gap in [Duration::from_millis(150), Duration::from_millis(1500)] {
        let session = answer("> ", "DOB: 04/13/1962", gap, Echo::Program);
        assert_eq!(session.typed(), "DOB: **/**/****\r", "{gap:?}");
        assert_eq!(session.shown(), "> DOB: **/**/****\r\n", "{gap:?}");
    }
}

/// Pauses up to 2 s are within the default hold; what is held goes out at most the hold after
/// the stream goes quiet (the cost: held output is that late, and a value being typed is held
/// until it is complete).
#[test]
fn the_hold_covers_two_second_pauses_and_ends_after_it() {
    let hold = Rules::defaults().hold;
    assert!(hold > Duration::from_secs(2), "{hold:?}");
    let mut session = Typing::new();
    session.output(b"$ ");
    for key in "123-45-6789".bytes() {
        session.key(key, Echo::Program);
        session.wait(Duration::from_secs(2));
    }
    session.key(b'\r', Echo::Program);
    let quiet_from = session.at;
    while !session.shown().ends_with("\r\n") {
        assert!(
            session.at - quiet_from <= hold + TICK,
            "{}",
            session.shown()
        );
        session.wait(TICK);
    }
    assert_eq!(session.typed(), "***-**-****\r");
    assert_eq!(session.shown(), "$ ***-**-****\r\n");
}

/// However a stream trickles (a byte a second, never quiet for the hold), nothing waits longer
/// than the longest hold.
#[test]
fn held_output_waits_at_most_the_longest_hold() {
    let mut session = Typing::new();
    for _ in 0..90 {
        session.output(b"x");
        session.wait(Duration::from_secs(1));
    }
    let waited = session.longest_wait;
    assert!(waited <= LONGEST_HOLD + TICK, "{waited:?}");
    assert!(waited >= LONGEST_HOLD - TICK, "{waited:?}");
    assert!(session.shown.len() >= 50, "{}", session.shown.len());
}
