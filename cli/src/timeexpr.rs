//! Time expressions auditors type: RFC 3339 (`2026-11-23T08:00:00Z`), a local date or date and
//! time (`2026-11-23`, `2026-11-23 08:00`), `now`, `today`, `yesterday`, or relative
//! (`2 hours ago`, `30m ago`, `3 days ago`).
use jiff::{Span, Timestamp, Zoned, civil, tz::TimeZone};

pub fn parse(text: &str) -> Result<Timestamp, String> {
    parse_at(text, &Zoned::now())
}

/// As [`parse`], relative to `now` (and its time zone, for local dates).
pub fn parse_at(text: &str, now: &Zoned) -> Result<Timestamp, String> {
    let trimmed = text.trim();
    let lower = trimmed.to_lowercase();
    let midnight = |zoned: &Zoned| {
        zoned
            .date()
            .to_zoned(zoned.time_zone().clone())
            .map(|z| z.timestamp())
    };
    match lower.as_str() {
        "now" => return Ok(now.timestamp()),
        "today" => return midnight(now).map_err(|e| e.to_string()),
        "yesterday" => {
            let day = now
                .checked_sub(Span::new().days(1))
                .map_err(|e| e.to_string())?;
            return midnight(&day).map_err(|e| e.to_string());
        }
        _ => {}
    }
    if let Ok(timestamp) = trimmed.parse::<Timestamp>() {
        return Ok(timestamp);
    }
    if let Some(ago) = lower.strip_suffix(" ago") {
        let span: Span = ago
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: not a duration before now (try \"2 hours ago\")"))?;
        return now
            .checked_sub(span)
            .map(|z| z.timestamp())
            .map_err(|e| format!("{text:?}: {e}"));
    }
    let tz: TimeZone = now.time_zone().clone();
    if let Ok(datetime) = trimmed.replacen(' ', "T", 1).parse::<civil::DateTime>() {
        return datetime
            .to_zoned(tz)
            .map(|z| z.timestamp())
            .map_err(|e| e.to_string());
    }
    if let Ok(date) = trimmed.parse::<civil::Date>() {
        return date
            .to_zoned(tz)
            .map(|z| z.timestamp())
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "{text:?} is not a time: use RFC 3339 (2026-11-23T08:00:00Z), a date (2026-11-23), \
         a date and time (2026-11-23 08:00) or a time before now (\"2 hours ago\")"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Zoned {
        "2026-11-23T12:00:00+00:00[UTC]".parse().unwrap()
    }

    #[test]
    fn expressions() {
        let at = |text: &str| parse_at(text, &now()).map(|t| t.to_string());
        assert_eq!(at("2026-11-20T08:00:00Z").unwrap(), "2026-11-20T08:00:00Z");
        assert_eq!(at("2 hours ago").unwrap(), "2026-11-23T10:00:00Z");
        assert_eq!(at("30m ago").unwrap(), "2026-11-23T11:30:00Z");
        assert_eq!(at("3 days ago").unwrap(), "2026-11-20T12:00:00Z");
        assert_eq!(at("2026-11-22").unwrap(), "2026-11-22T00:00:00Z");
        assert_eq!(at("2026-11-22 08:30").unwrap(), "2026-11-22T08:30:00Z");
        assert_eq!(at("yesterday").unwrap(), "2026-11-22T00:00:00Z");
        assert!(at("last tuesday").unwrap_err().contains("is not a time"));
        assert!(at("soon ago").unwrap_err().contains("not a duration"));
    }
}
