//! What /proc says about processes: used at start to find sessions that were already running,
//! and later to check that processes the tracker believes alive still are.
use std::{collections::HashMap, fs};

use custos_agent_abi::AUDIT_UNSET;

/// A process of a login session found in /proc.
#[derive(Clone, Debug)]
pub struct ProcProcess {
    pub tgid: u32,
    pub loginuid: u32,
    /// Start time in clock ticks since boot (/proc/PID/stat field 22).
    pub start_ticks: u64,
}

/// Every process that is in an audit session, by session id, except `exclude`.
pub fn scan_sessions(exclude: u32) -> HashMap<u32, Vec<ProcProcess>> {
    let mut sessions: HashMap<u32, Vec<ProcProcess>> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return sessions;
    };
    for entry in entries.flatten() {
        let Some(tgid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if tgid == exclude {
            continue;
        }
        let Some(sessionid) = session_of(tgid) else {
            continue;
        };
        if sessionid == AUDIT_UNSET {
            continue;
        }
        let loginuid = read_u32(&format!("/proc/{tgid}/loginuid")).unwrap_or(AUDIT_UNSET);
        let start_ticks = start_ticks(tgid).unwrap_or(u64::MAX);
        sessions.entry(sessionid).or_default().push(ProcProcess {
            tgid,
            loginuid,
            start_ticks,
        });
    }
    sessions
}

/// The audit session id of a live process.
pub fn session_of(tgid: u32) -> Option<u32> {
    read_u32(&format!("/proc/{tgid}/sessionid"))
}

/// The command line of a live process, arguments separated by spaces.
pub fn command_line(tgid: u32) -> Option<Vec<u8>> {
    let raw = fs::read(format!("/proc/{tgid}/cmdline")).ok()?;
    let trimmed = raw.strip_suffix(b"\0").unwrap_or(&raw);
    if trimmed.is_empty() {
        return None;
    }
    Some(
        trimmed
            .iter()
            .map(|b| if *b == 0 { b' ' } else { *b })
            .collect(),
    )
}

/// Controlling terminal of a live process in the kernel's dev_t encoding (major << 20 | minor),
/// 0 for none. /proc/PID/stat field 7 uses the userspace encoding: minor in bits 31-20 and 7-0,
/// major in bits 15-8.
pub fn tty_of(tgid: u32) -> Option<u32> {
    let nr = stat_field(tgid, 7)?.parse::<i64>().ok()? as u32;
    let major = (nr >> 8) & 0xfff;
    let minor = (nr & 0xff) | ((nr >> 12) & 0xfff00);
    Some(custos_agent_abi::dev_make(major, minor))
}

fn start_ticks(tgid: u32) -> Option<u64> {
    stat_field(tgid, 22).and_then(|v| v.parse().ok())
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat; the comm field may hold spaces.
fn stat_field(tgid: u32, n: usize) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(n - 3).map(str::to_owned)
}

fn read_u32(path: &str) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(session_of(me).is_some());
        assert!(start_ticks(me).is_some());
        assert!(command_line(me).is_some());
        assert!(tty_of(me).is_some());
    }
}
