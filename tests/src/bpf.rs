//! The kernel's view of an agent's maps, read with bpftool: an independent check of what the
//! agent reports.
use std::process::Command;

use serde_json::Value;

/// The id of the BPF map called `name` that process `pid` holds open (from /proc/PID/fdinfo).
pub fn map_id(pid: u32, name: &str) -> u32 {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).expect("listing the agent's fds");
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-map" {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|line| line.strip_prefix("map_id:"))
            .and_then(|id| id.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let shown = bpftool(&["map", "show", "id", &id.to_string()]);
        if shown["name"].as_str() == Some(name) {
            return id;
        }
    }
    panic!("process {pid} holds no BPF map named {name}");
}

/// Runs bpftool with JSON output.
pub fn bpftool(args: &[&str]) -> Value {
    let output = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("running bpftool (package bpftool)");
    assert!(
        output.status.success(),
        "bpftool {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("bpftool printed JSON")
}

/// Sum over CPUs of the u64 at byte `offset` of the per-CPU value stored under the u32 `key` of
/// map `id` (values as raw bytes, little-endian); 0 when the key is absent.
pub fn per_cpu_u64_sum(id: u32, key: u32, offset: usize) -> u64 {
    let key_bytes: Vec<String> = key.to_le_bytes().iter().map(|b| b.to_string()).collect();
    let id = id.to_string();
    let mut args = vec!["map", "lookup", "id", id.as_str(), "key"];
    args.extend(key_bytes.iter().map(String::as_str));
    let output = Command::new("bpftool")
        .arg("-j")
        .args(&args)
        .output()
        .expect("running bpftool");
    if !output.status.success() {
        return 0;
    }
    let value: Value = serde_json::from_slice(&output.stdout).expect("bpftool printed JSON");
    let per_cpu = value["values"].as_array().cloned().unwrap_or_default();
    per_cpu
        .iter()
        .map(|cpu| {
            let bytes: Vec<u8> = cpu["value"]
                .as_array()
                .map(|bytes| {
                    bytes
                        .iter()
                        .filter_map(|b| b.as_str())
                        .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                        .collect()
                })
                .unwrap_or_default();
            bytes
                .get(offset..offset + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0)
        })
        .sum()
}
