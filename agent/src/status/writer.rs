//! The running agent's side: rewrites the status file every [`HEARTBEAT`] (a new file renamed
//! over the old one, so a reader never sees half of it) and removes it when the agent stops.
use std::{
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use super::{HEARTBEAT, Report, SpoolFill};
use crate::{capture::boot_now_ns, spool::Spool};

/// What the status file reports, as the agent's tasks keep it.
pub struct Sources {
    pub pid: u32,
    pub boot_id: String,
    /// When the ring buffer reader last emptied it (`CLOCK_BOOTTIME`, ns).
    pub ring_emptied: Arc<AtomicU64>,
    /// The spool and its bound, when the agent ships.
    pub spool: Option<(Arc<Mutex<Spool>>, u64)>,
}

impl Sources {
    fn report(&self) -> Report {
        Report {
            pid: self.pid,
            boot_id: self.boot_id.clone(),
            heartbeat_ns: boot_now_ns(),
            attached: true,
            ring_emptied_ns: self.ring_emptied.load(Ordering::Relaxed),
            spool: self.spool.as_ref().map(|(spool, max_bytes)| SpoolFill {
                bytes: spool.lock().unwrap_or_else(|e| e.into_inner()).size(),
                max_bytes: *max_bytes,
            }),
        }
    }
}

/// The task keeping the status file fresh while the programs are attached.
pub struct StatusWriter {
    path: PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StatusWriter {
    /// Writes the file now (the agent records from here) and every [`HEARTBEAT`] after.
    pub fn start(path: PathBuf, sources: Sources) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let mut failing = write_logged(&path, &sources.report(), false);
        info!(path = %path.display(), "status file written; custos-agent status reads it");
        let task_path = path.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let report = sources.report();
                        failing = tokio::task::block_in_place(|| {
                            write_logged(&task_path, &report, failing)
                        });
                    }
                    _ = stopped.changed() => break,
                }
            }
        });
        Self { path, stop, task }
    }

    /// Stops the heartbeat and removes the file: from now on `status` says not running. Called
    /// before the programs are detached.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                warn!(path = %self.path.display(), error = %err, "cannot remove the status file")
            }
        }
    }
}

/// Writes the report; says so in the log when writing starts failing and when it works again.
/// Returns whether it failed.
fn write_logged(path: &Path, report: &Report, was_failing: bool) -> bool {
    match write(path, report) {
        Ok(()) => {
            if was_failing {
                info!(path = %path.display(), "status file written again");
            }
            false
        }
        Err(err) => {
            if !was_failing {
                warn!(
                    path = %path.display(),
                    error = %err,
                    "cannot write the status file: custos-agent status (and the PAM hook, with \
                     [agent] fail_closed) will say the agent is not recording"
                );
            }
            true
        }
    }
}

/// Writes `report` to a new file beside `path` (0644) and renames it over `path`. Creates the
/// folder (0755) when missing: a unit's RuntimeDirectory has it already.
fn write(path: &Path, report: &Report) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() && !dir.exists() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".new");
    let new = path.with_file_name(name);
    let mut file = std::fs::File::create(&new)?;
    // Explicitly: the unit's UMask=0077 would leave it to the agent's user alone.
    file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    let mut text = serde_json::to_vec(report).map_err(std::io::Error::other)?;
    text.push(b'\n');
    file.write_all(&text)?;
    std::fs::rename(&new, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_world_readable_json_replaced_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("run").join("status.json");
        let report = Report {
            pid: 1,
            boot_id: "b".into(),
            heartbeat_ns: 5,
            attached: true,
            ring_emptied_ns: 4,
            spool: None,
        };
        write(&path, &report).expect("first write");
        let again = Report {
            heartbeat_ns: 6,
            ..report
        };
        write(&path, &again).expect("second write");
        let read: Report =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(read, again);
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o644);
        assert_eq!(mode(path.parent().expect("dir")), 0o755);
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["status.json"], "no temporary file left");
    }
}
