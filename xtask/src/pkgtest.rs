//! `cargo xtask test --packages`: the .deb packages installed into a Debian root (debootstrap,
//! then dpkg in a chroot) the way ops install them, and checked: files land with the right
//! owners and modes, the binaries run there, the units pass `systemd-analyze verify` (and
//! `security` within a bound), the collector's configuration works out of the box, upgrade
//! keeps a local configuration, remove keeps all data, purge of the agent removes its spool
//! only, and purge of the collector keeps the recordings. The .rpm packages' metadata (modes,
//! configuration files, scriptlets) is checked with rpm.
//!
//! Failing closed ([`fail_closed`]): a real ssh login into the root's sshd is let in, refused
//! and let in again as `[agent] fail_closed` and the packaged agent say. That part loads the
//! agent's eBPF programs: run the package test under the kernel lock.
//!
//! The Debian root is built once and cached under target/debian-root/; each run installs into a
//! fresh copy of it.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd, package, test::ensure_packages};

mod fail_closed;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What the root needs beyond minbase: systemd (systemd-analyze, deb-systemd-helper),
/// procps (/bin/kill, for the units' ExecReload) and openssh-server (logins through PAM, for
/// failing closed).
const INCLUDE: &str = "systemd,procps,openssh-server";

pub fn test_packages() -> anyhow::Result<()> {
    ensure_packages(&[
        ("debootstrap", "/usr/sbin/debootstrap"),
        ("rpm", "/usr/bin/rpm"),
        ("man-db", "/usr/bin/man"),
    ])?;
    let built = package::package()?;
    let base = base_root()?;
    let root = Root::fresh(&base)?;
    let mut failures = Vec::new();
    let mut check = |ok: bool, what: String| {
        if ok {
            println!("packages: ok    {what}");
        } else {
            println!("packages: FAIL  {what}");
            failures.push(what);
        }
    };

    // Install both, as ops would.
    let mut debs = Vec::new();
    for deb in &built.debs {
        let name = deb.file_name().context("package file name")?;
        std::fs::copy(deb, root.path.join("tmp").join(name))?;
        debs.push(format!("/tmp/{}", name.to_string_lossy()));
    }
    let install = root.sh(&format!("dpkg -i {}", debs.join(" ")))?;
    check(
        install.ok,
        format!("dpkg -i installs both packages{}", install.why()),
    );
    if !install.ok {
        bail!("the packages do not install:\n{}", install.output);
    }

    for (path, expected) in [
        ("/usr/sbin/custos-agent", "755 root root"),
        (
            "/usr/lib/systemd/system/custos-agent.service",
            "644 root root",
        ),
        ("/etc/custos/agent.toml", "640 root custos-agent"),
        ("/usr/lib/custos/custos-agent-pam-ready", "755 root root"),
        ("/etc/pam.d/custos-agent-fail-closed", "644 root root"),
        ("/var/lib/custos", "700 custos-agent custos-agent"),
        ("/var/lib/custos/spool", "700 custos-agent custos-agent"),
        ("/var/lib/custos/spool.key", "600 custos-agent custos-agent"),
        ("/usr/bin/custos-collector", "755 root root"),
        ("/usr/bin/custos", "755 root root"),
        (
            "/usr/lib/systemd/system/custos-collector.service",
            "644 root root",
        ),
        ("/etc/custos/collector.toml", "640 root custos"),
        ("/var/lib/custos-collector", "700 custos custos"),
        ("/etc/custos/pki", "750 root custos"),
        ("/etc/custos/pki/ca.key", "600 root root"),
        ("/etc/custos/pki/collector.key", "600 custos custos"),
        ("/etc/custos/pki/store.key", "600 custos custos"),
        ("/etc/custos/pki/seal.key", "600 custos custos"),
        ("/etc/custos/pki/ca.pem", "644 root root"),
        ("/etc/custos/pki/crl.pem", "644 root root"),
    ] {
        let found = root.sh(&format!("stat -c '%a %U %G' {path}"))?;
        check(
            found.ok && found.output.trim() == expected,
            format!("{path} is {expected} (found {})", found.output.trim()),
        );
    }

    // Man pages and completions, generated from the programs' own definitions: each names
    // the program and its subcommands.
    for (path, expected) in [
        ("/usr/share/man/man1/custos.1", ".TH custos 1"),
        (
            "/usr/share/man/man1/custos-collector.1",
            ".TH custos-collector 1",
        ),
        ("/usr/share/man/man1/custos-agent.1", ".TH custos-agent 1"),
        ("/usr/share/bash-completion/completions/custos", "replay"),
        (
            "/usr/share/bash-completion/completions/custos-collector",
            "export-bundle",
        ),
        (
            "/usr/share/bash-completion/completions/custos-agent",
            "--config",
        ),
        ("/usr/share/zsh/vendor-completions/_custos", "replay"),
        ("/usr/share/fish/vendor_completions.d/custos.fish", "replay"),
    ] {
        let found = root.sh(&format!("grep -c -F -e '{expected}' {path}"))?;
        check(
            found.ok,
            format!("{path} is installed and holds {expected:?}"),
        );
    }
    // `man custos` renders the installed page (man-db of the host, reading the chroot's file).
    let page = root.path.join("usr/share/man/man1/custos.1");
    let man = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output();
    let rendered = man
        .as_ref()
        .map(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).contains("replay"))
        .unwrap_or(false);
    check(
        rendered,
        "man renders custos(1), listing its subcommands".to_owned(),
    );

    // Key separation: the network-facing daemon's user cannot read the CA key, but can read
    // what it runs with.
    let ca_key =
        root.sh("setpriv --reuid=custos --regid=custos --init-groups cat /etc/custos/pki/ca.key")?;
    check(
        !ca_key.ok,
        "the collector's user custos cannot read /etc/custos/pki/ca.key".to_owned(),
    );
    let own = root.sh(
        "setpriv --reuid=custos --regid=custos --init-groups cat /etc/custos/pki/collector.key /etc/custos/pki/crl.pem >/dev/null",
    )?;
    check(
        own.ok,
        format!(
            "the collector's user reads its key and the revocation list ({})",
            own.output.trim()
        ),
    );

    for (binary, expected) in [
        ("custos-agent", "custos-agent "),
        ("custos-collector", "custos-collector "),
        ("custos", "custos "),
    ] {
        let version = root.sh(&format!("{binary} --version"))?;
        check(
            version.ok && version.output.starts_with(expected),
            format!("{binary} --version runs ({})", version.output.trim()),
        );
    }

    let verify = root.sh(
        "systemd-analyze verify /usr/lib/systemd/system/custos-agent.service \
         /usr/lib/systemd/system/custos-collector.service",
    )?;
    check(
        verify.ok && verify.output.trim().is_empty(),
        format!("systemd-analyze verify passes both units{}", verify.why()),
    );
    for (unit, bound) in [("custos-agent", 5.0), ("custos-collector", 2.5)] {
        let security = root.sh(&format!(
            "systemd-analyze security --offline=yes /usr/lib/systemd/system/{unit}.service"
        ))?;
        let exposure = exposure(&security.output);
        check(
            exposure.is_some_and(|e| e <= bound),
            format!(
                "{unit}.service exposure (systemd-analyze security) at most {bound}: {exposure:?}"
            ),
        );
    }

    // Out of the box: the collector's configuration, certificates and keys work for its user;
    // the agent's refuses with the documented one line until a collector is configured.
    let collector = root.sh(
        "setpriv --reuid custos --regid custos --clear-groups custos-collector --check-config",
    )?;
    check(
        collector.ok && collector.output.contains("configuration ok"),
        format!(
            "custos-collector --check-config passes as user custos{}",
            collector.why()
        ),
    );
    let agent = root.sh(
        "setpriv --reuid custos-agent --regid custos-agent --clear-groups custos-agent --check-config",
    )?;
    check(
        agent.status == Some(2)
            && agent.output.trim()
                == "custos-agent: config /etc/custos/agent.toml: collector.address: required to ship recordings (or run with --stdout)",
        format!(
            "custos-agent --check-config refuses an unconfigured agent in one line ({})",
            agent.output.trim()
        ),
    );

    // The login notice: one line turns it on (the unit's ExecStartPre writes it), turning it
    // off removes what the agent wrote and nothing else.
    root.sh("mkdir -p /etc/ssh/sshd_config.d /etc/motd.d && echo 'site motd' > /etc/motd.d/site")?;
    let on = root.sh(
        "sed -i 's/^# enabled = false/enabled = true/' /etc/custos/agent.toml && \
         custos-agent --config /etc/custos/agent.toml --apply-notice && \
         grep -x 'Banner /etc/custos/notice' /etc/ssh/sshd_config.d/custos-notice.conf && \
         grep -q 'session is recorded' /etc/custos/notice /etc/motd.d/custos",
    )?;
    check(
        on.ok,
        format!(
            "[notice] enabled = true installs the sshd banner and the motd snippet{}",
            on.why()
        ),
    );
    let off = root.sh(
        "sed -i 's/^enabled = true/# enabled = false/' /etc/custos/agent.toml && \
         custos-agent --config /etc/custos/agent.toml --apply-notice && \
         test ! -e /etc/ssh/sshd_config.d/custos-notice.conf && test ! -e /etc/motd.d/custos && \
         test -e /etc/motd.d/site",
    )?;
    check(
        off.ok,
        format!(
            "turning the notice off removes only its own files{}",
            off.why()
        ),
    );

    let conffiles = root.sh("dpkg-query -W -f '${Conffiles}' custos-agent")?;
    check(
        conffiles
            .output
            .contains("/etc/pam.d/custos-agent-fail-closed"),
        format!(
            "/etc/pam.d/custos-agent-fail-closed is a configuration file ({})",
            conffiles.output.trim()
        ),
    );
    fail_closed::check_fail_closed(&root, &mut check)?;

    // Upgrade (the same package again) keeps a local configuration.
    root.sh("echo '# local edit' >> /etc/custos/agent.toml")?;
    let again = root.sh(&format!("dpkg -i {}", debs[0]))?;
    let kept = root.sh("grep -c 'local edit' /etc/custos/agent.toml")?;
    check(
        again.ok && kept.output.trim() == "1",
        format!(
            "reinstalling keeps an edited /etc/custos/agent.toml{}",
            again.why()
        ),
    );

    // Data in both places, then remove: everything stays.
    root.sh("echo batch > /var/lib/custos/spool/00000000000000000001.seg")?;
    root.sh("mkdir -p /var/lib/custos-collector/recordings && echo rec > /var/lib/custos-collector/recordings/kept.rec")?;
    let remove = root.sh("dpkg -r custos-agent custos-collector")?;
    check(remove.ok, format!("dpkg -r removes both{}", remove.why()));
    for path in [
        "/var/lib/custos/spool/00000000000000000001.seg",
        "/var/lib/custos-collector/recordings/kept.rec",
        "/etc/custos/agent.toml",
        "/etc/custos/pki/store.key",
    ] {
        check(root.exists(path), format!("after remove, {path} is kept"));
    }
    check(
        !root.exists("/usr/sbin/custos-agent"),
        "after remove, the binaries are gone".into(),
    );

    // Purge of the agent removes its spool (and its configuration), nothing else.
    let purge = root.sh("dpkg -P custos-agent")?;
    check(purge.ok, format!("dpkg -P custos-agent{}", purge.why()));
    check(
        !root.exists("/var/lib/custos/spool"),
        "purging the agent removes the spool".into(),
    );
    check(
        !root.exists("/var/lib/custos/spool.key"),
        "purging the agent removes the spool key".into(),
    );
    check(
        !root.exists("/etc/custos/agent.toml"),
        "purging the agent removes its configuration".into(),
    );
    check(
        root.exists("/var/lib/custos-collector/recordings/kept.rec"),
        "purging the agent leaves the collector's recordings".into(),
    );
    // Purge of the collector keeps the recordings and the keys that read them.
    let purge = root.sh("dpkg -P custos-collector")?;
    check(purge.ok, format!("dpkg -P custos-collector{}", purge.why()));
    for path in [
        "/var/lib/custos-collector/recordings/kept.rec",
        "/etc/custos/pki/store.key",
    ] {
        check(
            root.exists(path),
            format!("after purging the collector, {path} is kept"),
        );
    }
    check(
        purge.output.contains("CUSTOS_PURGE_RECORDINGS=yes"),
        "purging the collector says how to delete the recordings too".into(),
    );

    // The .rpm packages: modes, configuration files, scriptlets.
    for rpm in &built.rpms {
        let name = rpm
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let files = cmd::output(
            Command::new("rpm")
                .args([
                    "-qp",
                    "--qf",
                    "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILENAMES}\n]",
                ])
                .arg(rpm),
        )?;
        let configs = cmd::output(Command::new("rpm").args(["-qpc"]).arg(rpm))?;
        let scripts = cmd::output(Command::new("rpm").args(["-qp", "--scripts"]).arg(rpm))?;
        let (configs_expected, config, binary, setup) = if name.starts_with("custos-agent") {
            (
                "/etc/custos/agent.toml\n/etc/pam.d/custos-agent-fail-closed",
                "/etc/custos/agent.toml",
                "-rwxr-xr-x root /usr/sbin/custos-agent",
                "custos-agent-setup",
            )
        } else {
            (
                "/etc/custos/collector.toml",
                "/etc/custos/collector.toml",
                "-rwxr-xr-x root /usr/bin/custos-collector",
                "custos-collector-setup",
            )
        };
        let mut listed: Vec<&str> = configs.lines().map(str::trim).collect();
        listed.sort_unstable();
        let mut wanted: Vec<&str> = configs_expected.lines().collect();
        wanted.sort_unstable();
        check(
            files.contains(&format!("-rw-r----- root {config}")) && listed == wanted,
            format!(
                "{name}: {config} is a 0640 configuration file, the configuration files are {wanted:?} ({listed:?})"
            ),
        );
        if name.starts_with("custos-agent") {
            for file in [
                "-rwxr-xr-x root /usr/lib/custos/custos-agent-pam-ready",
                "-rw-r--r-- root /etc/pam.d/custos-agent-fail-closed",
            ] {
                check(files.contains(file), format!("{name}: {file}"));
            }
        }
        check(files.contains(binary), format!("{name}: {binary}"));
        check(
            scripts.contains(setup) && scripts.contains("systemctl"),
            format!("{name}: scriptlets run {setup} and systemctl"),
        );
    }

    drop(root);
    if !failures.is_empty() {
        bail!(
            "{} package checks failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    println!("packages: all checks passed");
    Ok(())
}

/// `→ Overall exposure level for X.service: 4.1 OK :-)` → 4.1.
fn exposure(output: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split_once(": "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The cached Debian root, built by debootstrap the first time.
fn base_root() -> anyhow::Result<PathBuf> {
    let dir = cmd::target_dir().join("debian-root");
    let base = dir.join(SUITE);
    let stamp = dir.join(format!("{SUITE}.ready"));
    if stamp.exists() && std::fs::read_to_string(&stamp).unwrap_or_default() == INCLUDE {
        return Ok(base);
    }
    if base.exists() {
        std::fs::remove_dir_all(&base).with_context(|| format!("clearing {}", base.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    println!("packages: building a Debian {SUITE} root (debootstrap, once)");
    cmd::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", &format!("--include={INCLUDE}"), SUITE])
            .arg(&base)
            .arg(MIRROR)
            .stdout(std::process::Stdio::null()),
    )?;
    std::fs::write(&stamp, INCLUDE)?;
    Ok(base)
}

/// A fresh copy of the base root with /proc mounted; unmounted and deleted on drop.
struct Root {
    path: PathBuf,
    proc_mounted: bool,
}

/// What a command in the root did.
struct Ran {
    ok: bool,
    status: Option<i32>,
    output: String,
}

impl Ran {
    /// ": output" when it failed, for messages.
    fn why(&self) -> String {
        if self.ok {
            String::new()
        } else {
            format!(": {}", self.output.trim())
        }
    }
}

impl Root {
    fn fresh(base: &Path) -> anyhow::Result<Self> {
        let path = base.with_file_name("install-test");
        unmount_below(&path);
        if path.exists() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("clearing {}", path.display()))?;
        }
        cmd::run(Command::new("cp").arg("-a").arg(base).arg(&path))?;
        let mut root = Self {
            path,
            proc_mounted: false,
        };
        cmd::run(
            Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(root.path.join("proc")),
        )?;
        root.proc_mounted = true;
        Ok(root)
    }

    /// `program` in the root, with the environment [`Root::sh`] gives.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("chroot");
        command
            .arg(&self.path)
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LANG", "C.UTF-8");
        command
    }

    /// Runs a shell command in the root (stdout and stderr together).
    fn sh(&self, script: &str) -> anyhow::Result<Ran> {
        let out = Command::new("chroot")
            .arg(&self.path)
            .args(["/bin/sh", "-c", &format!("{script} 2>&1")])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LANG", "C.UTF-8")
            .output()
            .with_context(|| format!("chroot {}", self.path.display()))?;
        Ok(Ran {
            ok: out.status.success(),
            status: out.status.code(),
            output: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }

    fn exists(&self, path: &str) -> bool {
        self.path.join(path.trim_start_matches('/')).exists()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        if self.proc_mounted {
            unmount_below(&self.path);
        }
    }
}

/// Lazily unmounts everything mounted below `path`.
fn unmount_below(path: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut below: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|mount| Path::new(mount).starts_with(path))
        .collect();
    below.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for mount in below {
        let _ = Command::new("umount").args(["-l", mount]).status();
    }
}
