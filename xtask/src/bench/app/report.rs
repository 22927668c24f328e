//! The `app` section of BENCHMARKS.md: one table per workload with each configuration's time
//! and ratios, the targets with whether they are met, the agent's drops, and the
//! capacity and footprint tables.
use std::{fmt::Write as _, time::Duration};

use super::{
    Config, Results, Variant,
    capacity::{self, Capacity},
    monitors::{AUDIT_LOG_MB, AUDIT_LOGS, AUDIT_RULE, FLOOR_PROBES},
    variants,
    workloads::{self, Kind, LOGIN_ENV},
};
use crate::bench::{Context, Stats};

pub fn render(ctx: &Context, results: &Results, capacity: &Capacity, took: Duration) -> String {
    let mut md = String::new();
    md.push_str("## Application overhead, agent capacity and footprint (`app`)\n\n");
    let _ = writeln!(
        md,
        "Command: `cargo xtask bench --only app` (as root, {} runs, {:.0} min on this machine). \
         Workloads come from `custos-bench-workload` (bench/src/bin); each run is timed from \
         process start to exit.\n",
        ctx.runs,
        took.as_secs_f64() / 60.0
    );
    md.push_str(&setup_notes());
    for variant in variants() {
        workload_table(&mut md, results, variant);
    }
    capacity_tables(&mut md, capacity);
    md
}

fn setup_notes() -> String {
    let mut md = String::new();
    md.push_str("Configurations, interleaved round by round (baseline, floor, custos, auditd, tlog, then the next round) so drift hits all alike:\n\n");
    md.push_str("- **baseline**: nothing attached.\n");
    let _ = writeln!(
        md,
        "- **empty-program floor**: empty eBPF programs on the agent's hooks, attached with \
         bpftrace 0.17 (Debian) and checked with bpftool (9 programs): `bpftrace -e '{FLOOR_PROBES}'`. \
         The agent uses tp_btf for the scheduler hooks; bpftrace 0.17 has neither tp_btf nor \
         working raw tracepoint probes, so the floor uses classic sched tracepoints there \
         (exec, fork and exit are rare next to the hooked syscalls)."
    );
    md.push_str(
        "- **custos-agent**: the release agent (default configuration: login sessions, \
         `hooks = \"auto\"`, direct reads) shipping over QUIC/mTLS to a local release \
         collector, deployed like `cargo xtask run` under target/bench/app/deploy, at nice -10 \
         as the package's systemd unit runs it (auditd, for comparison, raises its own \
         priority by 4). Started before each round's \
         custos runs; after each workload the benchmark waits until the agent has drained its \
         ring buffer and the collector acknowledged everything, outside the timed span.\n",
    );
    let _ = writeln!(
        md,
        "- **auditd**: Debian's auditd 3.0.9 (`auditd -n -c DIR`, Debian's default auditd.conf: \
         ENRICHED log, INCREMENTAL_ASYNC flush), `auditctl -b 8192` and `auditctl {}`. The \
         configuration differs from Debian's only in where the log goes (target/bench/app/auditd, \
         not /var/log/audit) and how far it may grow: `max_log_file = {AUDIT_LOG_MB}`, \
         `num_logs = {AUDIT_LOGS}`, `max_log_file_action = ROTATE`, so at most {} MB of log \
         however many opens the workloads make (about 1 KB each). Rules and settings are \
         restored, auditd stopped and its logs deleted afterwards. In every other \
         configuration the rule `auditctl -a never,task` is in place: once audit has been \
         enabled in a boot, the kernel gives each new process an audit context even with no \
         rules, and its syscalls take the audit slow path, so without it the other \
         configurations would pay part of auditd's cost.",
        AUDIT_RULE.join(" "),
        AUDIT_LOG_MB * AUDIT_LOGS
    );
    md.push_str(
        "- **tlog-rec-session**: Debian's tlog 12.1 is available and used as the shell \
         (`tlog-rec-session -c SCRIPT`, shell /bin/sh, file writer, no rate limit) for the \
         terminal workloads inside a session. It refuses to record without a utmp file, which \
         this container lacks: the benchmark creates an empty /run/utmp for the run and deletes \
         it afterwards.\n\n",
    );
    let _ = writeln!(
        md,
        "\"Inside a session\": the workload process writes {} (root) to /proc/self/loginuid \
         first, which gives it a fresh audit session id, so the agent records it; \"outside\": \
         it unsets its login uid. Shell workloads (exec loop, admin session, flood) run on a \
         fresh pseudo-terminal whose master the workload program drains, in every \
         configuration. Every workload, in every configuration, gets a root login shell's \
         environment and nothing else ({}, plus tlog's configuration variable under tlog), not \
         the environment of `cargo xtask`: cargo's LD_LIBRARY_PATH (target/*/deps and the Rust \
         toolchain's lib directory) made the dynamic loader try about 40 missing library paths \
         per exec, each a failed open the agent records, which inflated the exec loop inside a \
         session to about 50 kernel records per /bin/true instead of 6.\n",
        workloads::SESSION_UID,
        LOGIN_ENV
            .iter()
            .map(|(name, value)| format!("`{name}={value}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "Sizes, the issue's: the exec loop runs /bin/true {} times, the open loop does {} \
         open+close, the flood writes {} MiB, the write and getppid loops make {} calls each, the \
         admin session, run {} times in a row per timed run, greps {} and tars and untars {} \
         files; capacity steps last {:.0} s and \
         the idle footprint is measured over {} s. The flood's source file and the admin \
         session's tree, tarball and untarred copy are on a tmpfs: on this machine's shared \
         virtual disk each file created took about 0.4 ms, varying several-fold between runs, \
         which made the admin session's time mostly the disk's, and the page cache did not keep \
         the 200 MiB source whole between runs (cat read part of it from disk, more so while the \
         agent and collector wrote theirs). An untimed pass of the admin session before the \
         first round puts what it reads in the page cache. The agent runs with its default \
         configuration, so it records the flood whole: cat writes 128 KiB at a time, and the \
         default `tty_write_max` is 256 KiB (with 64 KiB, the earlier default, half of every \
         write was counted as uncaptured instead of recorded, and the flood cost less).\n",
        workloads::EXEC_LOOP,
        workloads::OPEN_LOOP,
        workloads::FLOOD_BYTES >> 20,
        workloads::SYSCALL_LOOP,
        workloads::ADMIN_PASSES,
        workloads::GREP_TREE,
        workloads::TREE_FILES,
        capacity::WINDOW,
        capacity::IDLE
    );
    md.push_str(
        "fentry (fexit) hooks cannot run on this kernel: attaching a BPF trampoline fails with \
         EPERM, so the agent falls back to syscall exit tracepoints (`hooks` below), where every \
         syscall of every process pays the kernel's tracing slow path. What the fentry path \
         would cost is measured in the `vmcost` section, in a VM whose kernel allows it.\n\n\
         Noise: a shared 2-core VM; other builds and benchmarks may run at the same time, so \
         read differences of a few percent as noise unless the min-max ranges separate. Each \
         run starts after a `sync`, so that none pays for the writeback of the files an \
         earlier run wrote. Short workloads (the write and getppid loops, a fraction of a second) \
         move most from run to run.\n\n",
    );
    md
}

/// "met" or "MISSED".
fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn workload_table(md: &mut String, results: &Results, variant: Variant) {
    let (kind, in_session) = variant;
    let Some(baseline) = results.stats(variant, Config::Baseline) else {
        return;
    };
    let _ = writeln!(
        md,
        "### {}, {} a session\n",
        kind.title(),
        if in_session { "inside" } else { "outside" }
    );
    let floor = results.stats(variant, Config::Floor);
    let show_floor = !in_session && kind.is_syscall_loop();
    md.push_str("| configuration | seconds, median (min-max) | vs baseline |");
    if show_floor {
        md.push_str(" vs floor |");
    }
    md.push_str("\n|---|---|---|");
    if show_floor {
        md.push_str("---|");
    }
    md.push('\n');
    for config in Config::ALL {
        let Some(stats) = results.stats(variant, config) else {
            continue;
        };
        let _ = write!(
            md,
            "| {} | {} | {} |",
            config.name(),
            stats.display(3),
            stats.ratio(&baseline)
        );
        if show_floor {
            match &floor {
                Some(floor) => {
                    let _ = write!(md, " {} |", stats.ratio(floor));
                }
                None => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    md.push('\n');
    targets(md, results, variant, &baseline, floor.as_ref());
    if let Some(counts) = results.agent.get(&variant) {
        let _ = write!(
            md,
            "Agent, over the {} custos runs: {:.0} kernel records, {:.0} dropped in the kernel \
             (ring buffer full, recorded as gaps), {:.0} lost from the spool.",
            results
                .seconds
                .get(&(variant, Config::Custos))
                .map_or(0, Vec::len),
            counts.records,
            counts.dropped,
            counts.spool_lost
        );
    }
    if let Some(lost) = results.audit_lost.get(&variant) {
        let _ = write!(
            md,
            " auditd: {lost} records lost by the kernel (backlog full)."
        );
    }
    md.push_str("\n\n");
}

/// The targets for this workload, each with the measured figure and a verdict, and for
/// each one missed, what the measurements of the same run say about why.
fn targets(
    md: &mut String,
    results: &Results,
    variant: Variant,
    baseline: &Stats,
    floor: Option<&Stats>,
) {
    let (kind, in_session) = variant;
    let Some(custos) = results.stats(variant, Config::Custos) else {
        return;
    };
    let ratio = custos.median / baseline.median;
    // Seconds the empty programs alone add: what any program on these hooks costs.
    let floor_added = floor.map(|f| f.median - baseline.median);
    let runs = results
        .seconds
        .get(&(variant, Config::Custos))
        .map_or(1, Vec::len)
        .max(1) as f64;
    let records_per_run = results
        .agent
        .get(&variant)
        .map_or(0.0, |c| c.records / runs);
    let mut lines = Vec::new();
    let mut why = Vec::new();
    let limit = match (kind, in_session) {
        (Kind::ExecLoop | Kind::Admin, false) => Some(0.01),
        (Kind::ExecLoop | Kind::Admin, true) => Some(0.05),
        (Kind::Flood, true) => Some(0.10),
        _ => None,
    };
    if let Some(limit) = limit {
        let met = ratio <= 1.0 + limit;
        lines.push(format!(
            "within {:.0}% of baseline: {:+.1}%, {}",
            limit * 100.0,
            (ratio - 1.0) * 100.0,
            verdict(met)
        ));
        if !met && let Some(floor_added) = floor_added {
            let floor_share = floor_added / baseline.median;
            let over_floor = (custos.median - baseline.median - floor_added) / baseline.median;
            let mut text = format!(
                "within {:.0}%: the empty-program floor alone adds {:+.1}%, {}",
                limit * 100.0,
                floor_share * 100.0,
                if over_floor > 0.0 {
                    format!("custos {:+.1}% more", over_floor * 100.0)
                } else {
                    "custos no more than the floor (its median is below the floor's)".to_owned()
                }
            );
            if floor_share > limit {
                text.push_str(
                    "; the floor is over the limit by itself: with a syscall tracepoint \
                     attached, every system call of every process takes the kernel's tracing \
                     slow path whatever the program does (fentry hooks would not: see vmcost)",
                );
            }
            if kind == Kind::Flood && records_per_run > 0.0 {
                let _ = write!(
                    text,
                    "; the agent took in {records_per_run:.0} kernel records per run, nearly all \
                     16 KiB pieces of terminal output ({} MiB a run): the recorded process pays \
                     for copying each into the ring buffer, and the agent (reading, compressing, \
                     spooling and shipping) and the collector (decompressing to index, \
                     encrypting, hashing, writing and fsyncing) spend CPU on every byte on the \
                     same two cores as cat and the terminal reader",
                    workloads::FLOOD_BYTES >> 20
                );
            } else if in_session && records_per_run > 0.0 {
                let _ = write!(
                    text,
                    "; the agent took in {records_per_run:.0} kernel records per run \
                     ({:.0} per second of workload): each costs the recorded process its \
                     program run (for an open: the path read, and for a path relative to a \
                     directory descriptor, as grep -r and tar open, that directory's path \
                     walked component by component), and the agent and the collector spend \
                     CPU on it on the same two cores the workload runs on",
                    records_per_run / custos.median
                );
            }
            why.push(text);
        }
    }
    if !in_session
        && kind.is_syscall_loop()
        && let Some(floor) = floor
    {
        let over = custos.median / floor.median;
        lines.push(format!(
            "no more than 10% above the empty-program floor: {:+.1}%, {}",
            (over - 1.0) * 100.0,
            verdict(over <= 1.10)
        ));
    }
    if let Some(auditd) = results.stats(variant, Config::Auditd) {
        let ours = custos.median - baseline.median;
        let theirs = auditd.median - baseline.median;
        let (factor, label) = if in_session {
            (5.0, "at least 5x less added time than auditd")
        } else {
            (1.0, "less added time than auditd")
        };
        let line = if ours <= 0.0 {
            format!("custos adds nothing measurable, {}", verdict(true))
        } else if kind == Kind::Flood && auditd.median <= baseline.max {
            // A median inside the baseline's own min-max range is no measurable cost.
            // auditd writes no record for terminal output (pam_tty_audit, where configured,
            // logs keystrokes only): there is no cost of the same work to compare with.
            "auditd records none of the terminal output, and its median lies inside the \
             baseline's range: not comparable (custos's own target is the line above)"
                .to_owned()
        } else {
            let ok = theirs > 0.0 && ours * factor <= theirs;
            if !ok && let Some(floor_added) = floor_added {
                let allowed = theirs / factor;
                why.push(if floor_added >= allowed {
                    format!(
                        "{label}: the target allows custos {allowed:+.3} s, and the \
                         empty-program floor alone adds {floor_added:+.3} s: no program on \
                         these syscall tracepoints can meet it on this kernel; custos adds \
                         {:+.3} s over the floor",
                        ours - floor_added
                    )
                } else {
                    format!(
                        "{label}: the target allows custos {allowed:+.3} s; the empty-program \
                         floor adds {floor_added:+.3} s of it, and custos {:+.3} s over the \
                         floor (its programs' work for each call: for a write, whether the \
                         descriptor is a terminal)",
                        ours - floor_added
                    )
                });
            }
            format!(
                "auditd adds {:.2}x custos's, {}",
                theirs / ours,
                verdict(ok)
            )
        };
        lines.push(format!(
            "{label}: custos {ours:+.3} s, auditd {theirs:+.3} s ({line})"
        ));
    }
    if lines.is_empty() {
        return;
    }
    md.push_str("Targets (issue 7):\n");
    for line in lines {
        let _ = writeln!(md, "- {line}");
    }
    for line in why {
        let _ = writeln!(md, "- Why missed, {line}.");
    }
    md.push('\n');
}

fn capacity_tables(md: &mut String, capacity: &Capacity) {
    md.push_str("### Agent capacity (item 6)\n\n");
    let _ = writeln!(
        md,
        "Generator processes inside one session (`custos-bench-workload generate --processes N`, \
         children of a process that set the login uid first, so all share its session) each \
         alternate opens for writing of their own 64 files and 64-byte writes to their own \
         pseudo-terminal at their share of the step's rate, and together run /bin/true 20 times \
         a second. Each step lasts {:.0} s. The steps start with {} processes, the fewest that \
         reached the highest rate on this machine with the agent running, measured when the \
         benchmark was set up (flat out: one process 100,000-130,000 operations/s, two \
         160,000-175,000, three or four 160,000-187,000, all with both cores saturated); when the generators reach \
         less than {:.0}% of a step's rate without drops, the step runs again with one more \
         process, up to one per core ({} here). The rate steps up until the kernel drops \
         records or that many processes cannot reach it. Kernel records come from the agent's \
         `custos_agent_records_read_total` (what it read from the ring buffer), drops from \
         `custos_agent_kernel_dropped_records_total` once the agent's poll of the kernel's \
         counters has caught up with what it read; agent CPU from /proc/PID/stat \
         (utime+stime), per million records including the drain after the window. Target: \
         200,000 events/s on one core with zero drops.\n",
        capacity::WINDOW,
        capacity::PROCESSES,
        capacity::REACHED * 100.0,
        capacity::max_processes(),
    );
    md.push_str(
        "| target ops/s | generator processes | generated ops/s | kernel records/s | dropped | agent CPU % of a core | agent CPU s per million records |\n|---|---|---|---|---|---|---|\n",
    );
    for step in &capacity.steps {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            step.target,
            step.processes,
            step.achieved,
            step.records_per_s,
            step.dropped,
            step.cpu_percent,
            step.cpu_per_million
        );
    }
    let best = capacity
        .steps
        .iter()
        .filter(|s| s.dropped == 0.0)
        .max_by(|a, b| a.records_per_s.total_cmp(&b.records_per_s));
    let best_rate = best.map_or(0.0, |s| s.records_per_s);
    let _ = writeln!(
        md,
        "\nHighest rate sustained with zero drops: {best_rate:.0} records/s (target 200,000: {}). \
         {}\n",
        verdict(best_rate >= 200_000.0),
        match capacity.steps.last() {
            Some(last) if last.dropped > 0.0 =>
                "The last step dropped records: at that rate the agent fell behind with what it \
                 got of this machine's cores, which it shares with the generators and the \
                 collector.",
            Some(last) if !last.reached() =>
                "The last step stopped because the generators could not reach its rate (on a \
                 2-core machine they share with the agent and the collector): the agent's limit \
                 may be higher.",
            _ => "",
        }
    );
    if let Some(best) = best.filter(|s| s.cpu_per_million > 0.0) {
        let _ = writeln!(
            md,
            "Implied one-core capacity (derived, not measured): at the highest drop-free step \
             ({:.0} records/s) the agent spent {:.2} CPU seconds per million records, so one core \
             given wholly to the agent would take in about 1e6 / {:.2} = {:.0} records/s. This \
             extrapolates: it assumes the cost per record stays the same at higher rates, and \
             leaves out the collector and the kernel-side cost the traced processes pay.\n",
            best.records_per_s,
            best.cpu_per_million,
            best.cpu_per_million,
            (1e6 / best.cpu_per_million / 1000.0).round() * 1000.0
        );
    }
    md.push_str("### Agent footprint (item 10, agent half)\n\n");
    let mib = |kib: u64| kib as f64 / 1024.0;
    let _ = writeln!(
        md,
        "VmRSS and VmHWM from /proc/PID/status; VmRSS's parts from /proc/PID/smaps, the Rss of \
         each mapping by what it maps: anonymous (heap, thread stacks, anonymous mmaps), \
         file-backed (the binary and its libraries), and eBPF maps (`anon_inode:bpf-map`, \
         mainly the ring buffer). The kernel maps the ring buffer's data pages twice in a row \
         (so a record wrapping around the end reads contiguously), so Rss counts them twice; \
         the Pss of those mappings counts them once, which is the memory they hold.\n"
    );
    md.push_str(
        "| state | VmRSS MiB | anonymous MiB | file-backed MiB | eBPF maps MiB (Pss) | VmHWM MiB | CPU |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (state, memory, cpu) in [
        (
            format!("idle ({} s, no session active)", capacity::IDLE),
            &capacity.idle,
            format!(
                "{:.3}% of a core ({:.3}% by schedstat, {:.1} wake-ups/s)",
                capacity.idle_cpu_percent,
                capacity.idle_sched.cpu_percent,
                capacity.idle_sched.wakeups_per_second
            ),
        ),
        (
            "after the capacity steps".to_owned(),
            &capacity.load,
            "see the capacity table".to_owned(),
        ),
    ] {
        let _ = writeln!(
            md,
            "| {state} | {:.1} | {:.1} | {:.1} | {:.1} ({:.1}) | {:.1} | {cpu} |",
            mib(memory.rss),
            mib(memory.anonymous),
            mib(memory.file),
            mib(memory.bpf_maps),
            mib(memory.bpf_maps_pss),
            mib(memory.hwm),
        );
    }
    let tick = 0.01 / capacity::IDLE as f64 * 100.0;
    let _ = writeln!(
        md,
        "\nTargets: under 40 MB RSS ({}: peak {:.1} MiB, or {:.1} MiB counting the ring \
         buffer's pages once; idle {:.1} MiB, or {:.1} MiB counting them once) and under 0.1% \
         CPU idle ({}, by schedstat). /proc/PID/stat's CPU times tick at 10 ms, so there idle \
         CPU below {tick:.3}% over {} s reads as 0; the threads' schedstat counts nanoseconds \
         and how often each thread was scheduled in (a wake-up).\n",
        verdict(mib(capacity.load.hwm) < 40.0 * 1e6 / (1 << 20) as f64),
        mib(capacity.load.hwm),
        mib(capacity.load.hwm.saturating_sub(
            capacity
                .load
                .bpf_maps
                .saturating_sub(capacity.load.bpf_maps_pss)
        )),
        mib(capacity.idle.rss),
        mib(capacity.idle.rss_counting_maps_once()),
        verdict(capacity.idle_sched.cpu_percent < 0.1),
        capacity::IDLE,
    );
    let _ = writeln!(
        md,
        "Hook backends the agent reported (`custos_agent_hooks`): {}.\n",
        if capacity.hooks.is_empty() {
            "none reported".to_owned()
        } else {
            capacity.hooks.join(", ")
        }
    );
}
