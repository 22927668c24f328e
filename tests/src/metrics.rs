//! A daemon's Prometheus endpoint, scraped the way Prometheus would (curl), and samples read
//! from it.
use std::process::Command;

/// The endpoint a daemon logged (`metrics at http://ADDR/metrics`), scraped.
pub fn scrape(log: &str) -> String {
    let url = log
        .lines()
        .find_map(|l| l.split("metrics at ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the metrics address in the log")
        .to_owned();
    let out = Command::new("curl")
        .args(["-sf", &url])
        .output()
        .expect("curl");
    assert!(out.status.success(), "GET {url}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(text: &str, series: &str) -> f64 {
    find(text, series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// The value of the sample `series`, or 0 when the daemon has not counted it yet (counters
/// with labels appear at their first increment).
pub fn sample_or_zero(text: &str, series: &str) -> f64 {
    find(text, series).unwrap_or(0.0)
}

fn find(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
