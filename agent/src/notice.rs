//! The login notice: with `[notice] enabled = true`, users are told before and after they log
//! in that the session is recorded: sshd's pre-login banner (a drop-in in sshd_config.d naming
//! /etc/custos/notice) and a pam_motd snippet in /etc/motd.d. Written by
//! `custos-agent --apply-notice`, which the unit runs (with root's rights) before the agent
//! starts; with the notice off the same command removes the files it wrote, and only those.
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::NoticeConfig;

/// First line of every file this module writes: files without it are never touched.
const MARK: &str = "# Written by custos-agent --apply-notice ([notice] in /etc/custos/agent.toml).";

struct Files {
    banner: PathBuf,
    sshd_dropin: PathBuf,
    motd: PathBuf,
}

fn files(root: &Path) -> Files {
    Files {
        banner: root.join("etc/custos/notice"),
        sshd_dropin: root.join("etc/ssh/sshd_config.d/custos-notice.conf"),
        motd: root.join("etc/motd.d/custos"),
    }
}

/// Writes or removes the notice files under `root` (`/` on a host). Returns what it did, one
/// line per file.
pub fn apply(config: &NoticeConfig, root: &Path) -> anyhow::Result<Vec<String>> {
    let files = files(root);
    let mut done = Vec::new();
    if config.enabled {
        let text = format!("{}\n", config.text.trim_end());
        write(&files.banner, &text, &mut done)?;
        write(&files.motd, &text, &mut done)?;
        let dropin = format!("{MARK}\nBanner /etc/custos/notice\n");
        if files.sshd_dropin.parent().is_some_and(Path::is_dir) {
            write(&files.sshd_dropin, &dropin, &mut done)?;
        } else {
            done.push(format!(
                "{}: no sshd_config.d here; point sshd's Banner at /etc/custos/notice",
                files.sshd_dropin.display()
            ));
        }
    } else {
        for path in [&files.sshd_dropin, &files.motd, &files.banner] {
            remove_ours(path, &mut done)?;
        }
    }
    Ok(done)
}

/// The banner and motd files hold only the text (shown verbatim), so they are recognised by a
/// side file listing what this module wrote.
fn ledger(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".custos");
    path.with_file_name(format!(".{}", name.to_string_lossy()))
}

fn write(path: &Path, text: &str, done: &mut Vec<String>) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() && !is_ours(path) {
        done.push(format!(
            "{}: exists and is not ours; left alone",
            path.display()
        ));
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::write(ledger(path), MARK)
        .with_context(|| format!("writing {}", ledger(path).display()))?;
    done.push(format!("wrote {}", path.display()));
    Ok(())
}

fn is_ours(path: &Path) -> bool {
    std::fs::read_to_string(ledger(path)).is_ok_and(|t| t.starts_with(MARK))
        || std::fs::read_to_string(path).is_ok_and(|t| t.starts_with(MARK))
}

fn remove_ours(path: &Path, done: &mut Vec<String>) -> anyhow::Result<()> {
    if path.exists() && is_ours(path) {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        let _ = std::fs::remove_file(ledger(path));
        done.push(format!("removed {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_writes_the_banner_and_motd_off_removes_only_ours() {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(root.path().join("etc/ssh/sshd_config.d")).expect("mkdir");
        let mut config = NoticeConfig {
            enabled: true,
            ..NoticeConfig::default()
        };
        apply(&config, root.path()).expect("apply");
        let banner =
            std::fs::read_to_string(root.path().join("etc/custos/notice")).expect("banner");
        assert!(banner.starts_with("NOTICE: this session is recorded"));
        let dropin =
            std::fs::read_to_string(root.path().join("etc/ssh/sshd_config.d/custos-notice.conf"))
                .expect("drop-in");
        assert!(dropin.contains("Banner /etc/custos/notice"));
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/motd.d/custos")).expect("motd"),
            banner
        );
        // Someone else's motd snippet stays.
        std::fs::write(root.path().join("etc/motd.d/other"), "hello\n").expect("write");
        config.enabled = false;
        let done = apply(&config, root.path()).expect("apply");
        assert_eq!(done.len(), 3, "{done:?}");
        assert!(!root.path().join("etc/custos/notice").exists());
        assert!(!root.path().join("etc/motd.d/custos").exists());
        assert!(root.path().join("etc/motd.d/other").exists());
    }
}
