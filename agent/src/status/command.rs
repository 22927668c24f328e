//! `custos-agent status [--ready] [--if-fail-closed]`: reads the running agent's status file
//! and says whether it records.
use std::{path::Path, process::ExitCode};

use nix::{errno::Errno, sys::signal::kill, unistd::Pid};

use super::{NotReady, Now, Report, decide};
use crate::{
    capture::boot_now_ns,
    config::Config,
    session::host::{BOOT_ID_PATH, HostIdentity},
};

/// What `status` was asked.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    /// Quiet when recording; otherwise one line on stderr. Both exit 1 when not recording.
    pub ready: bool,
    /// The PAM hook's question: succeed without looking when `[agent] fail_closed` is off.
    pub if_fail_closed: bool,
}

/// Runs the command: exit 0 when the agent records (or when failing closed is off and
/// `if_fail_closed`), 1 when it does not.
pub fn run(config: &Config, ask: Ask) -> ExitCode {
    if ask.if_fail_closed && !config.agent.fail_closed {
        if !ask.ready {
            println!(
                "[agent] fail_closed is off: logins are allowed whether or not the agent records"
            );
        }
        return ExitCode::SUCCESS;
    }
    let read = read(&config.agent.status_file);
    let verdict = read.as_ref().map_err(Clone::clone).and_then(check);
    match (verdict, ask.ready) {
        (Ok(()), true) => ExitCode::SUCCESS,
        (Ok(()), false) => {
            if let Ok(report) = &read {
                println!("recording: {}", describe(report));
            }
            ExitCode::SUCCESS
        }
        (Err(reason), true) => {
            eprintln!("custos-agent: not recording: {reason}");
            ExitCode::FAILURE
        }
        (Err(reason), false) => {
            println!("not recording: {reason}");
            if let Ok(report) = &read {
                println!("last report: {}", describe(report));
            }
            ExitCode::FAILURE
        }
    }
}

/// The status file, parsed.
fn read(path: &Path) -> Result<Report, NotReady> {
    let unreadable = |reason: String| NotReady::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(NotReady::NoStatusFile(path.display().to_string()));
        }
        Err(err) => return Err(unreadable(err.to_string())),
    };
    serde_json::from_slice(&bytes).map_err(|err| unreadable(err.to_string()))
}

/// [`decide`] against this host now.
fn check(report: &Report) -> Result<(), NotReady> {
    let boot_id = HostIdentity::read()
        .map(|host| host.boot_id.0)
        .map_err(|err| NotReady::Unreadable {
            path: BOOT_ID_PATH.into(),
            reason: format!("{err:#}"),
        })?;
    let now = Now {
        boot_id: &boot_id,
        boottime_ns: boot_now_ns(),
    };
    decide(report, &now, alive)
}

/// Whether process `pid` exists (signal 0; EPERM: it exists, another user's).
fn alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    raw > 0 && !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

fn describe(report: &Report) -> String {
    let now = boot_now_ns();
    let ago = |ns: u64| now.saturating_sub(ns) as f64 / 1e9;
    let spool = match report.spool {
        Some(fill) => format!("spool {} of {} bytes", fill.bytes, fill.max_bytes),
        None => "no spool (--stdout)".into(),
    };
    format!(
        "pid {}, heartbeat {:.1} s ago, programs {}, ring buffer emptied {:.1} s ago, {spool}",
        report.pid,
        ago(report.heartbeat_ns),
        if report.attached {
            "attached"
        } else {
            "detached"
        },
        ago(report.ring_emptied_ns),
    )
}
