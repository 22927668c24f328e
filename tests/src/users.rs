//! Test users, created once per machine (idempotently) with `useradd`.
use std::process::Command;

use nix::unistd::User;

/// A local user for tests: created if missing, with a home directory and bash.
pub fn ensure(name: &str) -> User {
    if let Ok(Some(user)) = User::from_name(name) {
        return user;
    }
    let status = Command::new("useradd")
        .args([
            "--create-home",
            "--shell",
            "/bin/bash",
            "--comment",
            "Custos test user",
            name,
        ])
        .status()
        .expect("running useradd");
    added(name, status)
}

/// A system user without a home or a shell, as packages create for daemons.
pub fn ensure_system(name: &str) -> User {
    if let Ok(Some(user)) = User::from_name(name) {
        return user;
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ])
        .status()
        .expect("running useradd");
    added(name, status)
}

/// The user useradd created: it succeeded, or said 9 (the user appeared meanwhile: another
/// test created it).
fn added(name: &str, status: std::process::ExitStatus) -> User {
    assert!(
        status.success() || status.code() == Some(9),
        "useradd {name} failed: {status}"
    );
    User::from_name(name)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("user {name} missing after useradd"))
}

/// Lets `name` run anything with sudo without a password (a file in /etc/sudoers.d).
pub fn allow_sudo(name: &str) {
    let path = format!("/etc/sudoers.d/{name}");
    let rule = format!("{name} ALL=(ALL:ALL) NOPASSWD: ALL\n");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(rule.as_str()) {
        std::fs::write(&path, rule).expect("writing sudoers rule");
        let perms = std::os::unix::fs::PermissionsExt::from_mode(0o440);
        std::fs::set_permissions(&path, perms).expect("chmod sudoers rule");
    }
}
