//! What ops rely on: a broken configuration stops each daemon at start with one documented
//! line and status 2, `--version` answers, and the Prometheus endpoints count what the daemons
//! do.
// A package of several targets, each using some of its dependencies: cargo's
// `unused_crate_dependencies` lint would name the others in every target.
#![allow(unused_crate_dependencies)]
use std::{process::Command, time::Duration};

use custos_tests::{
    agent::Agent,
    bin,
    deployment::Deployment,
    free_udp_address, login_shell,
    metrics::{sample, scrape},
    users, wait_until,
};

/// Runs `daemon --config FILE [extra]` with `config` in FILE; returns (status, stderr lines).
fn run_with(
    deployment: &Deployment,
    daemon: &str,
    config: &str,
    extra: &[&str],
) -> (Option<i32>, Vec<String>, String) {
    let path = deployment.path(&format!("{daemon}.toml"));
    std::fs::write(&path, config).expect("write config");
    let output = Command::new(bin(daemon))
        .arg("--config")
        .arg(&path)
        .args(extra)
        .output()
        .expect("run daemon");
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code(),
        stderr.lines().map(str::to_owned).collect(),
        path.display().to_string(),
    )
}

#[test]
fn each_daemon_refuses_a_broken_configuration_in_one_documented_line() {
    let deployment = Deployment::new(&[]);
    let missing_certificate = format!(
        "[tls]\nca = \"{}\"\ncertificate = \"/nonexistent/collector.pem\"\n",
        deployment.pki().join("ca.pem").display()
    );
    let cases: [(&str, &str, &str); 8] = [
        (
            "custos-agent",
            "[capture]\nring_buffer_size = \"3 MiB\"\n",
            "capture.ring_buffer_size: must be a power of two from 64 KiB to 1 GiB, not 3145728 bytes",
        ),
        (
            "custos-agent",
            "[shipping]\nbatch_interval = \"soon\"\n",
            "shipping.batch_interval: bad duration \"soon\"",
        ),
        (
            "custos-agent",
            "[capture]\nscop = \"everyone\"\n",
            "unknown field `scop`",
        ),
        (
            "custos-agent",
            "[metrics]\nlisten = \"localhost\"\n",
            "metrics.listen: \"localhost\" is not an address",
        ),
        (
            "custos-agent",
            "[collector]\nca = \"/etc/custos/ca.pem\"\n",
            "collector.address: required to ship recordings",
        ),
        (
            "custos-collector",
            "[ingest]\nidle_timeout = \"1s\"\n",
            "ingest.idle_timeout: must be at least 5s",
        ),
        (
            "custos-collector",
            "[retention]\nkeep = \"forever\"\n",
            "retention.keep: bad duration \"forever\"",
        ),
        (
            "custos-collector",
            &missing_certificate,
            "/nonexistent/collector.pem: cannot read",
        ),
    ];
    for (daemon, config, reason) in cases {
        for extra in [&["--check-config"][..], &[][..]] {
            let (status, lines, path) = run_with(&deployment, daemon, config, extra);
            assert_eq!(
                status,
                Some(2),
                "{daemon} {extra:?} with {config:?}: {lines:?}"
            );
            assert_eq!(
                lines.len(),
                1,
                "{daemon} {extra:?}: one line, not {lines:?}"
            );
            let line = &lines[0];
            assert!(line.starts_with(&format!("{daemon}: ")), "{line}");
            assert!(
                line.contains(reason),
                "{daemon} with {config:?}: expected {reason:?} in {line:?}"
            );
            if !reason.contains("/nonexistent") {
                assert!(line.contains(&path), "the line names the file: {line}");
            }
        }
    }
    for daemon in ["custos-agent", "custos-collector", "custos"] {
        let out = Command::new(bin(daemon))
            .arg("--version")
            .output()
            .expect("run");
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{daemon} {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn metrics_count_what_each_daemon_does() {
    users::ensure("custos-alice");
    let deployment = Deployment::new(&[]);
    let listen = free_udp_address();
    let collector = deployment.start_collector(&listen, None);
    // The harness puts each daemon's metrics on a free port, which it logs.
    let agent = Agent::start_shipping(
        &deployment.agent_config(&listen, "[shipping]\nbatch_interval = \"100ms\"\n"),
    );
    let (mut shell, session) = login_shell("custos-alice");
    shell.line("cat /etc/hostname");
    shell.expect("custos$ ");
    shell.line("exit 0");
    shell.wait_exit();
    deployment.wait_sealed(session, Duration::from_secs(60));
    let auditor = deployment.auditor("dana", "auditor");
    deployment.custos(&auditor, &["sessions"]).ok();
    assert!(
        !deployment
            .custos(&auditor, &["show", "nosuch-1-1"])
            .status
            .success()
    );

    let agent_metrics = wait_until(
        "the agent's acknowledgements counted",
        Duration::from_secs(10),
        || {
            let text = scrape(&agent.daemon.log_text());
            (sample(&text, "custos_agent_batches_acked_total") >= 1.0).then_some(text)
        },
    );
    assert!(sample(&agent_metrics, "custos_agent_events_total{kind=\"exec\"}") >= 1.0);
    assert!(
        sample(
            &agent_metrics,
            "custos_agent_events_total{kind=\"session_start\"}"
        ) >= 1.0
    );
    assert_eq!(sample(&agent_metrics, "custos_agent_ship_connected"), 1.0);
    assert_eq!(
        sample(&agent_metrics, "custos_agent_kernel_dropped_records_total"),
        0.0
    );
    // Counted as the reader takes them, so already current when the batch is acknowledged.
    assert!(sample(&agent_metrics, "custos_agent_records_read_total") >= 1.0);
    assert!(sample(&agent_metrics, "custos_agent_send_latency_seconds_count") >= 1.0);

    let collector_metrics = scrape(&collector.daemon.log_text());
    assert_eq!(
        sample(&collector_metrics, "custos_collector_connected_agents"),
        1.0
    );
    assert!(sample(&collector_metrics, "custos_collector_batches_stored_total") >= 1.0);
    assert!(sample(&collector_metrics, "custos_collector_events_stored_total") >= 5.0);
    assert_eq!(
        sample(
            &collector_metrics,
            "custos_collector_queries_total{action=\"sessions\",result=\"ok\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &collector_metrics,
            "custos_collector_queries_total{action=\"show\",result=\"not_found\"}"
        ),
        1.0
    );
    drop(agent);
}

/// A kernel the agent cannot capture on stops it at start with one line naming what is missing
/// (status 2): here, BTF hidden behind an empty file in a private mount namespace, and fentry
/// asked for on a kernel that refuses BPF trampolines.
#[test]
fn an_agent_on_a_kernel_it_cannot_use_says_what_is_missing_in_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").expect("write");
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[metrics]\nlisten = \"off\"\n").expect("write");
    let no_btf = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /sys/kernel/btf/vmlinux && exec \"$2\" --stdout --config \"$3\"")
        .arg("sh")
        .arg(&empty)
        .arg(bin("custos-agent"))
        .arg(&config)
        .output()
        .expect("unshare");
    let stderr = String::from_utf8_lossy(&no_btf.stderr);
    assert_eq!(no_btf.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("custos-agent: cannot read kernel BTF from /sys/kernel/btf/vmlinux"),
        "{stderr}"
    );

    // Where the kernel refuses fentry (this development kernel: EPERM), `hooks = "fentry"`
    // refuses to start; where it allows it (the VMs of cargo xtask vm-test), the agent runs.
    std::fs::write(
        &config,
        "[capture]\nhooks = \"fentry\"\n[metrics]\nlisten = \"off\"\n",
    )
    .expect("write");
    let mut forced = Command::new(bin("custos-agent"))
        .args(["--stdout", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("agent");
    let exited = wait_until(
        "the agent to exit or record",
        Duration::from_secs(60),
        || match forced.try_wait().expect("wait") {
            Some(status) => Some(Some(status)),
            None if fentry_allowed() => Some(None),
            None => None,
        },
    );
    match exited {
        Some(status) => {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut forced.stderr.take().expect("stderr"), &mut stderr)
                .expect("read");
            assert_eq!(status.code(), Some(2), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains("capture.hooks = \"fentry\"")
                    && stderr.contains("refuses BPF trampoline programs"),
                "{stderr}"
            );
        }
        None => {
            let _ = forced.kill();
            let _ = forced.wait();
        }
    }
}

/// Whether this kernel loads fentry programs: it lists BPF trampolines' attach points only
/// when it does (a trampoline is attached while an fentry agent runs).
fn fentry_allowed() -> bool {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|s| s.contains("bpf_trampoline_"))
        .unwrap_or(false)
}
