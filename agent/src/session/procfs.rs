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
    joined_command_line(&raw)
}

/// A /proc cmdline joined with spaces, without the padding a process that retitles itself
/// leaves (sshd's `sshd: alice [priv]` is followed by the spaces and NULs that fill its old
/// argument area).
fn joined_command_line(raw: &[u8]) -> Option<Vec<u8>> {
    let end = raw
        .iter()
        .rposition(|b| !matches!(b, 0 | b' '))
        .map_or(0, |last| last + 1);
    let trimmed = &raw[..end];
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

/// The remote end of an established TCP connection the process holds (an sshd process holds
/// its client's), as `address:port`.
pub fn remote_address(tgid: u32) -> Option<String> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{tgid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    if inodes.is_empty() {
        return None;
    }
    for (table, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = fs::read_to_string(format!("/proc/{tgid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local remote state ... inode (10th field)
            let (Some(remote), Some(state), Some(inode)) =
                (fields.get(2), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state == "01" && inodes.iter().any(|i| i == inode) {
                return parse_address(remote, v6);
            }
        }
    }
    None
}

/// `0100007F:1F90` to `127.0.0.1:8080`: the kernel prints each 32-bit word of the address as
/// it lies in memory (network order) read as a host (little-endian) integer.
fn parse_address(text: &str, v6: bool) -> Option<String> {
    let (host, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<[u8; 4]> = (0..host.len() / 8)
        .map(|i| {
            u32::from_str_radix(host.get(8 * i..8 * i + 8)?, 16)
                .ok()
                .map(u32::to_le_bytes)
        })
        .collect::<Option<_>>()?;
    match (v6, words.as_slice()) {
        (false, [word]) => Some(format!("{}:{port}", std::net::Ipv4Addr::from(*word))),
        (true, [a, b, c, d]) => {
            let mut octets = [0u8; 16];
            for (i, word) in [a, b, c, d].into_iter().enumerate() {
                octets[4 * i..4 * i + 4].copy_from_slice(word);
            }
            let ip = std::net::Ipv6Addr::from(octets);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => format!("{v4}:{port}"),
                None => format!("[{ip}]:{port}"),
            })
        }
        _ => None,
    }
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
    #[test]
    fn a_retitled_processs_padding_is_dropped() {
        let mut sshd = b"sshd: alice [priv]".to_vec();
        sshd.extend(std::iter::repeat_n(b' ', 200));
        sshd.extend([0, 0]);
        assert_eq!(
            super::joined_command_line(&sshd).as_deref(),
            Some(&b"sshd: alice [priv]"[..])
        );
        assert_eq!(
            super::joined_command_line(b"ls\0-l\0\0").as_deref(),
            Some(&b"ls -l"[..])
        );
        assert_eq!(super::joined_command_line(b"\0 \0"), None);
    }

    use super::*;

    #[test]
    fn kernel_socket_addresses() {
        assert_eq!(
            parse_address("0100007F:1F90", false).as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            parse_address("0000000000000000FFFF00000100007F:0016", true).as_deref(),
            Some("127.0.0.1:22")
        );
        assert_eq!(
            parse_address("00000000000000000000000001000000:0016", true).as_deref(),
            Some("[::1]:22")
        );
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(session_of(me).is_some());
        assert!(start_ticks(me).is_some());
        assert!(command_line(me).is_some());
        assert!(tty_of(me).is_some());
    }
}
