//! `cargo xtask vm-test`: the capture scenario (tests/src/kernels.rs) on the kernels PHI servers
//! run, each booted under qemu with software emulation, and on this host.
//!
//! For each kernel: the Debian kernel package is fetched with `apt-get download` (cached under
//! target/vm/kernels/), an initramfs is built holding busybox, the release agent and the
//! scenario driver (custos-vmtest), and the kernel boots once per hook backend it allows. The
//! driver writes its report to a second serial port; the host judges it. One line per run.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{cmd, setup, test::ensure_packages};

/// The kernels under test: (name, apt package pattern). The newest matching package is used.
pub const KERNELS: [(&str, &str); 2] = [
    ("Debian 12 (6.1)", r"^linux-image-6\.1\.0-[0-9]+-amd64$"),
    (
        "Debian 12 with 6.12",
        r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
    ),
];

/// The scenario variants each kernel boots with: both backends (both Debian kernels allow BPF
/// trampolines), auto, which must choose fentry there, and the tracepoint backend with the
/// programs reading kernel structs by helper calls (`capture.direct_reads = false`), the way
/// they read on kernels without `bpf_task_pt_regs`.
const BACKENDS: [&str; 4] = ["tracepoint", "fentry", "auto", "tracepoint+helpers"];

/// One boot may take this long under software emulation.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);

pub fn vm_test() -> anyhow::Result<()> {
    let vm = Vm::prepare()?;
    let mut lines = Vec::new();
    let mut failed = false;

    // This host first: auto must pick tracepoints and say why fentry was not used.
    let report = vm.dir.join("host.report");
    let host = Command::new(vm.bin.join("custos-vmtest"))
        .args(["guest", "auto"])
        .arg(&report)
        .env("CUSTOS_BIN_DIR", &vm.bin)
        .output()
        .context("running the scenario on this host")?;
    let (ok, mut line) = vm.judge(&report, "this host")?;
    let said_why = std::fs::read_to_string(&report)
        .unwrap_or_default()
        .contains("fentry not usable on this kernel");
    if !host.status.success() {
        line = format!(
            "this host: the scenario did not finish: {}",
            String::from_utf8_lossy(&host.stderr).trim()
        );
    }
    failed |= !(ok && host.status.success());
    lines.push(format!(
        "{line}{}",
        if said_why {
            " (the agent logged why fentry was not used)"
        } else {
            ""
        }
    ));

    for (name, pattern) in KERNELS {
        let kernel = vm.kernel(pattern)?;
        for hooks in BACKENDS {
            let run = vm.boot(&kernel, hooks)?;
            let (mut ok, mut line) = match &run {
                Ok(report) => vm.judge(report, name)?,
                Err(why) => (false, format!("{name}: hooks = {hooks}: FAILED: {why}")),
            };
            if ok && hooks == "auto" && !line.contains("-> fentry (") {
                ok = false;
                line.push_str(" (FAILED: auto must choose fentry on this kernel)");
            }
            println!("vm-test: {line}");
            if !ok {
                let console = vm.dir.join(format!("{}-{hooks}.console", kernel.package));
                let log = std::fs::read_to_string(&console).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                println!("vm-test: console ({}), last lines:", console.display());
                for l in tail.into_iter().rev() {
                    println!("  {l}");
                }
            }
            failed |= !ok;
            lines.push(line);
        }
    }
    println!("vm-test: results");
    for line in &lines {
        println!("  {line}");
    }
    if failed {
        bail!("the capture scenario failed on at least one kernel");
    }
    Ok(())
}

/// A kernel image, from a Debian package.
pub struct Kernel {
    pub package: String,
    pub vmlinuz: PathBuf,
}

/// What every boot needs: the binaries, the initramfs, a work directory.
pub struct Vm {
    /// The initramfs, console logs and reports.
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub initrd: PathBuf,
    /// Downloaded kernels, shared by every work directory (target/vm/kernels).
    pub kernels: PathBuf,
}

/// The last line the guest driver writes to its report.
const REPORT_END: &str = "CUSTOS-VMTEST-END";

impl Vm {
    /// Installs qemu and busybox, builds the release binaries and the initramfs in target/vm.
    pub fn prepare() -> anyhow::Result<Self> {
        if !cmd::is_root() {
            bail!(
                "vm-test runs the scenario on this host too, which loads eBPF programs: run as root"
            );
        }
        setup::setup()?;
        cmd::run(cmd::cargo().args([
            "build",
            "--release",
            "--package",
            "custos-agent",
            "--package",
            "custos-tests",
            "--bin",
            "custos-agent",
            "--bin",
            "custos-testkit",
            "--bin",
            "custos-vmtest",
        ]))?;
        Self::prepare_in(&cmd::target_dir().join("vm"))
    }

    /// Installs qemu and busybox and builds the initramfs in `dir` (its console logs and
    /// reports go there too, so a benchmark and `vm-test` do not share files) from release
    /// binaries already built: custos-agent, custos-testkit and custos-vmtest.
    pub fn prepare_in(dir: &Path) -> anyhow::Result<Self> {
        ensure_packages(&[
            ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
            ("cpio", "/usr/bin/cpio"),
            ("busybox-static", "/bin/busybox"),
        ])?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let bin = cmd::target_dir().join("release");
        let initrd = build_initramfs(dir, &bin)?;
        Ok(Self {
            dir: dir.to_owned(),
            bin,
            initrd,
            kernels: cmd::target_dir().join("vm").join("kernels"),
        })
    }

    /// The newest kernel package matching `pattern`, downloaded once.
    pub fn kernel(&self, pattern: &str) -> anyhow::Result<Kernel> {
        let package = newest_package(pattern)?;
        let cache = self.kernels.join(&package);
        let vmlinuz = cache.join("vmlinuz");
        if vmlinuz.exists() {
            return Ok(Kernel { package, vmlinuz });
        }
        println!("vm-test: downloading {package}");
        let download = tempfile_dir(&self.dir, &format!("download-{package}"))?;
        cmd::run(
            Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
                .current_dir(&download)
                .stdout(Stdio::null()),
        )?;
        let deb = std::fs::read_dir(&download)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {package} wrote no .deb"))?;
        let unpacked = download.join("root");
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
        let image = std::fs::read_dir(unpacked.join("boot"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no boot/vmlinuz-* in {package}"))?;
        std::fs::create_dir_all(&cache)?;
        std::fs::copy(&image, &vmlinuz)?;
        std::fs::remove_dir_all(&download)?;
        Ok(Kernel { package, vmlinuz })
    }

    /// Boots `kernel` with the scenario (or `mode`) and returns the report file, or why there is
    /// none.
    pub fn boot(&self, kernel: &Kernel, hooks: &str) -> anyhow::Result<Result<PathBuf, String>> {
        self.boot_mode(kernel, "scenario", hooks)
    }

    /// Boots `kernel`; /init runs `mode` (scenario or bench) with `arg`. The report is what the
    /// guest wrote to its second serial port.
    pub fn boot_mode(
        &self,
        kernel: &Kernel,
        mode: &str,
        arg: &str,
    ) -> anyhow::Result<Result<PathBuf, String>> {
        self.boot_with(kernel, mode, arg, &[])
    }

    /// As [`Vm::boot_mode`], with more qemu arguments.
    fn boot_with(
        &self,
        kernel: &Kernel,
        mode: &str,
        arg: &str,
        qemu_args: &[&str],
    ) -> anyhow::Result<Result<PathBuf, String>> {
        let base = format!(
            "{}-{}",
            kernel.package,
            if mode == "scenario" { arg } else { mode }
        );
        let console = self.dir.join(format!("{base}.console"));
        let report = self.dir.join(format!("{base}.report"));
        for file in [&console, &report] {
            let _ = std::fs::remove_file(file);
        }
        let started = Instant::now();
        let mut qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "2048"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .args(qemu_args)
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 custos.mode={mode} custos.arg={arg}"
            ))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-serial")
            .arg(format!("file:{}", report.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting qemu-system-x86_64")?;
        let status = loop {
            if let Some(status) = qemu.try_wait()? {
                break status;
            }
            if started.elapsed() > BOOT_TIMEOUT {
                let _ = qemu.kill();
                let _ = qemu.wait();
                return Ok(Err(format!(
                    "the VM did not power off within {BOOT_TIMEOUT:?} (console: {})",
                    console.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if !status.success() {
            let mut stderr = String::new();
            if let Some(mut pipe) = qemu.stderr.take() {
                use std::io::Read as _;
                let _ = pipe.read_to_string(&mut stderr);
            }
            return Ok(Err(format!("qemu failed ({status}): {}", stderr.trim())));
        }
        println!(
            "vm-test: {} ({mode} {arg}) ran in {:.0?}",
            kernel.package,
            started.elapsed()
        );
        Ok(Ok(report))
    }

    /// Boots `kernel` in bench mode (`custos-vmtest bench ARG`, with `qemu_args` such as
    /// `-icount`) and returns the report's lines before its end line; an error, with the
    /// console's last lines, if the VM did not finish the report.
    pub fn bench(
        &self,
        kernel: &Kernel,
        arg: &str,
        qemu_args: &[&str],
    ) -> anyhow::Result<Vec<String>> {
        let console = self.dir.join(format!("{}-bench.console", kernel.package));
        let tail = || {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        let report = match self.boot_with(kernel, "bench", arg, qemu_args)? {
            Ok(report) => report,
            Err(why) => bail!("{}: bench: {why}\nconsole:\n{}", kernel.package, tail()),
        };
        let text = std::fs::read_to_string(&report)
            .with_context(|| format!("reading {}", report.display()))?;
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_owned())
            .take_while(|l| l != REPORT_END)
            .collect();
        if !text.lines().any(|l| l.trim_end_matches('\r') == REPORT_END) {
            bail!(
                "{}: the bench report ({}) is cut short\nconsole:\n{}",
                kernel.package,
                report.display(),
                tail()
            );
        }
        Ok(lines)
    }

    /// Judges a scenario report: (passed, the one line).
    fn judge(&self, report: &Path, name: &str) -> anyhow::Result<(bool, String)> {
        let out = Command::new(self.bin.join("custos-vmtest"))
            .arg("judge")
            .arg(report)
            .output()
            .context("running custos-vmtest judge")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let first = lines.next().unwrap_or_default().to_owned();
        let line = if first.is_empty() {
            format!(
                "{name}: FAILED: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        } else {
            format!("{name}: {first}")
        };
        if !out.status.success() {
            for rest in lines {
                println!("  {rest}");
            }
        }
        Ok((out.status.success(), line))
    }
}

/// The newest package whose name matches `pattern` (apt's lists are refreshed once if none
/// does).
fn newest_package(pattern: &str) -> anyhow::Result<String> {
    let search = || -> anyhow::Result<Vec<String>> {
        let out = cmd::output(Command::new("apt-cache").args(["search", "--names-only", pattern]))?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect())
    };
    let mut found = search()?;
    if found.is_empty() {
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        found = search()?;
    }
    found.sort_by_key(|name| version_key(name));
    found
        .pop()
        .with_context(|| format!("no Debian package matches {pattern}"))
}

/// Numbers in a package name, for ordering versions (6.12.9 before 6.12.10).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

fn tempfile_dir(parent: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = parent.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// What /init does in every VM: mount the kernel's filesystems, run the mode it was booted for,
/// power off.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root CUSTOS_BIN_DIR=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t tracefs tracefs /sys/kernel/tracing
mount -t tmpfs tmpfs /tmp
hostname custos-vm
mode=$(sed -n 's/.*custos\.mode=\([a-z]*\).*/\1/p' /proc/cmdline)
arg=$(sed -n 's/.*custos\.arg=\([a-z0-9,+]*\).*/\1/p' /proc/cmdline)
echo "custos-vm: kernel $(uname -r), $mode $arg"
case "$mode" in
    scenario) /bin/custos-vmtest guest "$arg" /dev/ttyS1 ;;
    bench) /bin/custos-vmtest bench "$arg" /dev/ttyS1 ;;
esac
echo "custos-vm: $mode exited with $?"
poweroff -f
"#;

/// Builds target/vm/initrd.gz: busybox, the three binaries with their shared libraries, a
/// user for the scenario, and /init.
fn build_initramfs(dir: &Path, bin: &Path) -> anyhow::Result<PathBuf> {
    let root = tempfile_dir(dir, "initramfs")?;
    for sub in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/custos-alice",
    ] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox")?;
    let mut libraries = std::collections::BTreeSet::new();
    for name in ["custos-agent", "custos-testkit", "custos-vmtest"] {
        let path = bin.join(name);
        std::fs::copy(&path, root.join("bin").join(name))
            .with_context(|| format!("copying {}", path.display()))?;
        let ldd = cmd::output(Command::new("ldd").arg(&path))?;
        for line in ldd.lines() {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let library = line
                .split("=>")
                .nth(1)
                .unwrap_or(line)
                .split_whitespace()
                .next()
                .unwrap_or_default();
            if library.starts_with('/') {
                libraries.insert(PathBuf::from(library));
            }
        }
    }
    for library in libraries {
        let target = root.join(library.strip_prefix("/")?);
        std::fs::create_dir_all(target.parent().context("library directory")?)?;
        // Follow symbolic links: the initramfs gets the file itself.
        std::fs::copy(&library, &target)
            .with_context(|| format!("copying {}", library.display()))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\ncustos-alice:x:1000:1000:Custos test user:/home/custos-alice:/bin/sh\n",
    )?;
    std::fs::write(root.join("etc/group"), "root:x:0:\ncustos-alice:x:1000:\n")?;
    std::fs::write(root.join("etc/hostname"), "custos-vm\n")?;
    cmd::run(
        Command::new("chown")
            .args(["1000:1000"])
            .arg(root.join("home/custos-alice")),
    )?;
    let init = root.join("init");
    std::fs::write(&init, INIT)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    let initrd = dir.join("initrd.gz");
    cmd::run(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
            .arg(&initrd)
            .current_dir(&root),
    )?;
    Ok(initrd)
}
