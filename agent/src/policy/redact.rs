//! De-identification of terminal data and command lines before they leave the host: named
//! regular expressions (built-in or the customer's) whose matches are masked, pseudonymised with
//! a keyed HMAC, or dropped. Terminal streams keep a bounded carry-over window, so that a value
//! split across two writes (or typed one key at a time) is still caught.
use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use hmac::{Hmac, KeyInit, Mac};
use regex::bytes::Regex;
use sha2::Sha256;

/// What happens to a matched value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Letters and digits replaced by `*` except the last `keep_last`; separators stay.
    Mask { keep_last: usize },
    /// `[rule:token]`, the token a keyed HMAC of the value: the same value gives the same token
    /// everywhere the deployment's key is used, and the value cannot be recovered from it.
    Pseudonymise,
    /// Removed.
    Drop,
}

/// One compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub regex: Regex,
    /// The capture group replaced (0: the whole match).
    pub group: usize,
    pub action: Action,
    pub output: bool,
    pub input: bool,
    pub argv: bool,
}

/// The built-in rules: (name, pattern, capture group replaced).
pub const BUILTINS: [(&str, &str, usize); 5] = [
    // 123-45-6789 or 123 45 6789, not part of a longer number.
    (
        "ssn",
        r"(?:^|[^0-9-])([0-9]{3}[- ][0-9]{2}[- ][0-9]{4})(?:[^0-9-]|$)",
        1,
    ),
    // US numbers: (555) 123-4567, 555-123-4567, 555.123.4567, +1 555 123 4567.
    (
        "phone",
        r"(?:^|[^0-9])((?:\+?1[-. ]?)?\(?[0-9]{3}\)?[-. ][0-9]{3}[-. ][0-9]{4})(?:[^0-9]|$)",
        1,
    ),
    (
        "email",
        r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}",
        0,
    ),
    // A date after a date-of-birth label: DOB: 04/13/1962, born 1962-04-13, Date of Birth 13.04.1962.
    (
        "dob",
        r"(?i)\b(?:dob|d\.o\.b\.?|date of birth|birth ?date|born)\s*[:=#]?\s*([0-9]{1,4}[-/.][0-9]{1,2}[-/.][0-9]{1,4}|[a-z]{3,9}\.? [0-9]{1,2},? [0-9]{4})",
        1,
    ),
    // A medical record number after its label (the pattern is configurable).
    ("mrn", r"(?i)\bMRN\s*[:#=]?\s*([A-Z0-9]{6,12})\b", 1),
];

/// The default MRN pattern (overridden by `redaction.mrn_pattern`).
pub fn builtin(name: &str) -> Option<(&'static str, usize)> {
    BUILTINS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, pattern, group)| (*pattern, *group))
}

/// Where a value was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Output,
    Input,
    Argv,
}

/// Replacements made, per rule.
pub type Counts = BTreeMap<String, u64>;

/// The rules and the deployment's pseudonym key.
#[derive(Clone)]
pub struct Redactor {
    rules: Vec<Rule>,
    key: Vec<u8>,
}

/// One replacement: the byte range it covers and its text.
struct Replacement {
    start: usize,
    end: usize,
    text: Vec<u8>,
    rule: usize,
}

impl Redactor {
    pub fn new(rules: Vec<Rule>, key: Vec<u8>) -> Self {
        Self { rules, key }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn applies(rule: &Rule, stream: Stream) -> bool {
        match stream {
            Stream::Output => rule.output,
            Stream::Input => rule.input,
            Stream::Argv => rule.argv,
        }
    }

    /// The replacements for `text`, in order, without overlaps (earlier rules win).
    fn replacements(&self, text: &[u8], stream: Stream) -> Vec<Replacement> {
        let mut found: Vec<Replacement> = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            if !Self::applies(rule, stream) {
                continue;
            }
            // The next search starts where the value ended, not the match: the delimiter after
            // one value ("123-45-6789 987-65-4321") may be the one before the next.
            let mut at = 0;
            while at <= text.len() {
                let Some(captures) = rule.regex.captures_at(text, at) else {
                    break;
                };
                let whole = captures.get(0).map_or(at..at, |m| m.range());
                let Some(value) = captures.get(rule.group) else {
                    at = whole.end.max(whole.start + 1);
                    continue;
                };
                let (start, end) = (value.start(), value.end());
                at = end.max(whole.start + 1);
                if start == end || found.iter().any(|r| start < r.end && r.start < end) {
                    continue;
                }
                found.push(Replacement {
                    start,
                    end,
                    text: self.replace(rule, value.as_bytes()),
                    rule: index,
                });
            }
        }
        found.sort_by_key(|r| r.start);
        found
    }

    fn replace(&self, rule: &Rule, value: &[u8]) -> Vec<u8> {
        match rule.action {
            Action::Drop => Vec::new(),
            Action::Mask { keep_last } => {
                let alnum = value.iter().filter(|b| b.is_ascii_alphanumeric()).count();
                let mut hide = alnum.saturating_sub(keep_last);
                value
                    .iter()
                    .map(|b| {
                        if hide > 0 && b.is_ascii_alphanumeric() {
                            hide -= 1;
                            b'*'
                        } else {
                            *b
                        }
                    })
                    .collect()
            }
            Action::Pseudonymise => {
                let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
                    .expect("HMAC takes keys of any length");
                mac.update(rule.name.as_bytes());
                mac.update(b"\0");
                mac.update(value);
                let digest = mac.finalize().into_bytes();
                format!("[{}:{}]", rule.name, hex::encode(&digest[..6])).into_bytes()
            }
        }
    }

    /// Redacts `text` entirely; counts what it replaced.
    pub fn redact(&self, text: &[u8], stream: Stream, counts: &mut Counts) -> Vec<u8> {
        let replacements = self.replacements(text, stream);
        self.apply(text, &replacements, counts)
    }

    fn apply(&self, text: &[u8], replacements: &[Replacement], counts: &mut Counts) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for r in replacements {
            out.extend_from_slice(&text[at..r.start]);
            out.extend_from_slice(&r.text);
            at = r.end;
            *counts.entry(self.rules[r.rule].name.clone()).or_default() += 1;
        }
        out.extend_from_slice(&text[at..]);
        out
    }
}

/// A terminal stream's carry-over: the last bytes not yet released, raw, so that a value they
/// begin can still be matched when the rest arrives, and when each of them arrived.
///
/// Bytes are released when they fall out of the window (more than `keep` behind the newest),
/// when the stream has been quiet for the hold time (see [`Window::release_due`]), or when they
/// have waited the longest hold. Released bytes stay as left context (never released again), so
/// that a label shown before the value ("DOB: ", then the date typed a key at a time) still
/// names it.
#[derive(Debug, Default)]
pub struct Window {
    /// Raw bytes not yet released.
    pending: Vec<u8>,
    /// The pieces of `pending`, oldest first: their length and when they arrived.
    arrivals: VecDeque<(usize, Instant)>,
    /// Raw bytes just before `pending` (at most `keep`), for matching only.
    context: Vec<u8>,
}

impl Window {
    /// Adds `data`, which arrived at `now`, to the stream; returns what can be released now,
    /// redacted. At most `keep` raw bytes stay behind (fewer when a match ends inside them).
    /// `shown` is what the terminal showed last (this stream's bytes and the other's): when
    /// nothing is held, it becomes the left context, so that a prompt's label counts for the
    /// answer typed after it.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        redactor: &Redactor,
        stream: Stream,
        data: &[u8],
        keep: usize,
        now: Instant,
        shown: &[u8],
        counts: &mut Counts,
    ) -> Vec<u8> {
        if self.pending.is_empty() {
            self.context.clear();
            self.context
                .extend_from_slice(&shown[shown.len().saturating_sub(keep)..]);
        }
        if !data.is_empty() {
            self.pending.extend_from_slice(data);
            self.arrivals.push_back((data.len(), now));
        }
        let cut = self.pending.len().saturating_sub(keep);
        self.release(redactor, stream, cut, keep, counts)
    }

    /// What is due at `now`, redacted: everything when nothing arrived for `quiet` (a value
    /// typed with pauses shorter than that is held whole), else the bytes that have waited
    /// `longest` (at most that much latency, whatever the stream does).
    #[allow(clippy::too_many_arguments)]
    pub fn release_due(
        &mut self,
        redactor: &Redactor,
        stream: Stream,
        now: Instant,
        quiet: Duration,
        longest: Duration,
        keep: usize,
        counts: &mut Counts,
    ) -> Vec<u8> {
        let Some((_, last)) = self.arrivals.back() else {
            return Vec::new();
        };
        let cut = if now.saturating_duration_since(*last) >= quiet {
            self.pending.len()
        } else {
            self.arrivals
                .iter()
                .take_while(|(_, at)| now.saturating_duration_since(*at) >= longest)
                .map(|(len, _)| len)
                .sum()
        };
        if cut == 0 {
            return Vec::new();
        }
        self.release(redactor, stream, cut, keep, counts)
    }

    /// Releases everything held, redacted.
    pub fn flush(
        &mut self,
        redactor: &Redactor,
        stream: Stream,
        keep: usize,
        counts: &mut Counts,
    ) -> Vec<u8> {
        let cut = self.pending.len();
        self.release(redactor, stream, cut, keep, counts)
    }

    /// Releases the first `cut` pending bytes (more when a match crosses the cut), redacted;
    /// matches after the cut wait, they may grow.
    fn release(
        &mut self,
        redactor: &Redactor,
        stream: Stream,
        cut: usize,
        keep: usize,
        counts: &mut Counts,
    ) -> Vec<u8> {
        let start = self.context.len();
        let mut text = std::mem::take(&mut self.context);
        text.append(&mut self.pending);
        let mut cut = start + cut;
        let mut replacements = redactor.replacements(&text, stream);
        // Matches wholly in the context were released before.
        replacements.retain(|r| r.end > start);
        for r in &replacements {
            if r.start < cut && cut < r.end {
                cut = r.end;
            }
        }
        let mut released: Vec<Replacement> = Vec::new();
        for mut r in replacements.into_iter().filter(|r| r.end <= cut) {
            if r.start < start {
                // Its beginning went out before (raw, it matched nothing then): the rest is
                // replaced on its own.
                r.text = redactor.replace(&redactor.rules[r.rule], &text[start..r.end]);
                r.start = start;
            }
            r.start -= start;
            r.end -= start;
            released.push(r);
        }
        let out = redactor.apply(&text[start..cut], &released, counts);
        self.pending = text[cut..].to_vec();
        let mut gone = cut - start;
        while gone > 0 {
            let Some(front) = self.arrivals.front_mut() else {
                break;
            };
            if front.0 <= gone {
                gone -= front.0;
                self.arrivals.pop_front();
            } else {
                front.0 -= gone;
                gone = 0;
            }
        }
        if self.pending.is_empty() {
            self.arrivals.clear();
        }
        text.truncate(cut);
        self.context = text[text.len().saturating_sub(keep)..].to_vec();
        out
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Raw bytes held.
    pub fn held(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, action: Action) -> Rule {
        let (pattern, group) = builtin(name).expect("builtin");
        Rule {
            name: name.into(),
            regex: Regex::new(pattern).expect("regex"),
            group,
            action,
            output: true,
            input: true,
            argv: true,
        }
    }

    fn now() -> Instant {
        Instant::now()
    }

    fn redactor(rules: Vec<Rule>) -> Redactor {
        Redactor::new(rules, b"deployment key".to_vec())
    }

    #[test]
    fn builtins_match_what_they_name_and_not_their_neighbours() {
        let r = redactor(vec![
            rule("ssn", Action::Mask { keep_last: 4 }),
            rule("phone", Action::Mask { keep_last: 4 }),
            rule("email", Action::Mask { keep_last: 0 }),
            rule("dob", Action::Drop),
            rule("mrn", Action::Mask { keep_last: 2 }),
        ]);
        let mut counts = Counts::new();
        let out = r.redact(
            b"SSN 123-45-6789; call (555) 123-4567 or jo.doe@example.org, DOB: 04/13/1962, MRN: A1234567; id 1123-45-67890",
            Stream::Output,
            &mut counts,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "SSN ***-**-6789; call (***) ***-4567 or **.***@*******.***, DOB: , MRN: ******67; id 1123-45-67890"
        );
        assert_eq!(counts.values().sum::<u64>(), 5);
        assert_eq!(counts["ssn"], 1);
    }

    #[test]
    fn pseudonyms_are_stable_per_key_and_hide_the_value() {
        let r = redactor(vec![rule("ssn", Action::Pseudonymise)]);
        let mut counts = Counts::new();
        let a = r.redact(b"ssn 123-45-6789.", Stream::Output, &mut counts);
        let b = r.redact(b"again: 123-45-6789", Stream::Input, &mut counts);
        let other = r.redact(b"123-45-6780", Stream::Input, &mut counts);
        let token = |t: &[u8]| {
            let s = String::from_utf8_lossy(t).into_owned();
            s[s.find('[').expect("token")..]
                .trim_end_matches('.')
                .to_owned()
        };
        assert_eq!(token(&a), token(&b));
        assert_ne!(token(&a), token(&other));
        assert!(!String::from_utf8_lossy(&a).contains("6789"));
        let other_key = Redactor::new(vec![rule("ssn", Action::Pseudonymise)], b"x".to_vec());
        assert_ne!(
            token(&other_key.redact(b"123-45-6789", Stream::Output, &mut counts)),
            token(&a)
        );
    }

    #[test]
    fn a_value_split_across_writes_or_typed_key_by_key_is_caught() {
        let r = redactor(vec![rule("ssn", Action::Mask { keep_last: 4 })]);
        let mut counts = Counts::new();
        let mut window = Window::default();
        let mut shown = Vec::new();
        for piece in [&b"patient 123-4"[..], b"5-67", b"89 ok\r\n"] {
            shown.extend(window.push(&r, Stream::Output, piece, 16, now(), b"", &mut counts));
        }
        shown.extend(window.flush(&r, Stream::Output, 16, &mut counts));
        assert_eq!(
            String::from_utf8_lossy(&shown),
            "patient ***-**-6789 ok\r\n"
        );

        let mut typed = Vec::new();
        for key in b"987-65-4321\r" {
            typed.extend(window.push(&r, Stream::Input, &[*key], 16, now(), b"", &mut counts));
            assert!(
                !String::from_utf8_lossy(&typed).contains("987-6"),
                "released raw"
            );
        }
        typed.extend(window.flush(&r, Stream::Input, 16, &mut counts));
        assert_eq!(String::from_utf8_lossy(&typed), "***-**-4321\r");
        assert_eq!(counts["ssn"], 2);
    }

    /// The delimiter after one value is the one before the next.
    #[test]
    fn adjacent_values_are_each_caught() {
        let r = redactor(vec![rule("ssn", Action::Mask { keep_last: 0 })]);
        let mut counts = Counts::new();
        let out = r.redact(b"123-45-6789 987-65-4321", Stream::Output, &mut counts);
        assert_eq!(String::from_utf8_lossy(&out), "***-**-**** ***-**-****");
        assert_eq!(counts["ssn"], 2);
    }

    #[test]
    fn long_output_is_released_except_the_window() {
        let r = redactor(vec![rule("ssn", Action::Drop)]);
        let mut counts = Counts::new();
        let mut window = Window::default();
        let out = window.push(
            &r,
            Stream::Output,
            &[b'x'; 1000],
            64,
            now(),
            b"",
            &mut counts,
        );
        assert_eq!(out.len(), 936);
        assert_eq!(window.flush(&r, Stream::Output, 16, &mut counts).len(), 64);
    }
}
