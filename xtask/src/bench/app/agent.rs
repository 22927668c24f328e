//! Custos under test: a development deployment like `cargo xtask run` (CA, certificates,
//! configurations) in the benchmark's scratch directory, a collector for the whole benchmark,
//! agents started and stopped around each round, and what the benchmark reads from the agent:
//! its Prometheus counters and its CPU time and memory from /proc.
use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::Command,
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::run::{Daemon, DevDeployment};

/// First of the four ports of the deployment (QUIC, API, agent metrics, collector metrics);
/// away from `cargo xtask run`'s 7443 and the tests'.
const PORTS: u16 = 17480;
const START: Duration = Duration::from_secs(120);

/// A collector, and the deployment agents are started from.
pub struct Custos {
    bin: std::path::PathBuf,
    dev: DevDeployment,
    _collector: Daemon,
}

impl Custos {
    pub fn start(bin: &Path, data: &Path) -> anyhow::Result<Self> {
        let dev = DevDeployment::prepare(bin, data, PORTS)?;
        let mut collector = Daemon::start(
            "collector",
            Command::new(bin.join("custos-collector"))
                .arg("--config")
                .arg(&dev.collector_config),
            &dev.logs,
        )?;
        collector.wait_for("collector listening", START, &AtomicBool::new(false))?;
        Ok(Self {
            bin: bin.to_path_buf(),
            dev,
            _collector: collector,
        })
    }

    /// Starts an agent and waits until it records.
    pub fn agent(&self) -> anyhow::Result<Agent> {
        let mut daemon = Daemon::start(
            "agent",
            &mut crate::run::agent_command(&self.bin, &self.dev.agent_config),
            &self.dev.logs,
        )?;
        daemon.wait_for("recording login sessions", START, &AtomicBool::new(false))?;
        Ok(Agent { daemon })
    }

    pub fn logs(&self) -> &Path {
        &self.dev.logs
    }
}

/// A running agent; stopped (it ships what it holds first) when dropped.
pub struct Agent {
    daemon: Daemon,
}

impl Agent {
    pub fn pid(&self) -> u32 {
        self.daemon.child.id()
    }

    /// Its counters now.
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        scrape(PORTS + 2)
    }

    /// Waits until the agent has taken in everything (the records it read stopped growing for
    /// [`QUIET`]), its poll of the kernel's counters has caught up with them (so the drop count
    /// is the run's too), and the collector acknowledged it all; at most `limit`.
    pub fn settle(&self, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        let mut last = self.metrics()?.get(RECORDS);
        let mut changed = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let now = self.metrics()?;
            if now.get(RECORDS) != last {
                last = now.get(RECORDS);
                changed = Instant::now();
            }
            let quiet = changed.elapsed() >= QUIET
                && now.get(KERNEL_RECORDS) >= now.get(RECORDS)
                && now.get("custos_agent_spool_pending_batches") == 0.0;
            if quiet || Instant::now() > deadline {
                return Ok(());
            }
        }
    }

    /// CPU seconds (user + system) and (VmRSS, VmHWM) in KiB.
    pub fn usage(&self) -> anyhow::Result<(f64, u64, u64)> {
        process_usage(self.pid())
    }

    /// Its resident memory now, by kind.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        process_memory(self.pid())
    }

    pub fn stop(mut self) -> bool {
        self.daemon.stop()
    }
}

/// How long the agent's count of records read must stay still before it counts as drained:
/// its reader drains the ring buffer on a timer that backs off to 400 ms while records trickle
/// in (a burst, or a record after it parked, wakes it sooner), so a shorter wait can end before
/// the last records are read.
pub const QUIET: Duration = Duration::from_millis(1500);

/// Records the agent has read, counted as it reads them.
pub const RECORDS: &str = "custos_agent_records_read_total";
/// Records the kernel wrote, from the agent's poll of the kernel's counters: every second while
/// they move, every 5 s once idle, so after a quiet spell it lags behind [`RECORDS`] for up to
/// 5 s (reading it as the run's count gave one run's records to the next workload).
pub const KERNEL_RECORDS: &str = "custos_agent_kernel_records_total";
pub const DROPPED: &str = "custos_agent_kernel_dropped_records_total";
pub const SPOOL_LOST: &str = "custos_agent_spool_lost_events_total";

/// One scrape of a Prometheus endpoint: sample (name with labels) to value.
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    /// The sum of every sample of metric `name` (all label sets).
    pub fn get(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(key, _)| {
                key.strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The label sets of `name` whose value is `value`.
    pub fn labels_with(&self, name: &str, value: f64) -> Vec<String> {
        let mut found: Vec<String> = self
            .0
            .iter()
            .filter(|(key, v)| **v == value && key.starts_with(&format!("{name}{{")))
            .map(|(key, _)| key[name.len()..].to_owned())
            .collect();
        found.sort();
        found
    }
}

fn scrape(port: u16) -> anyhow::Result<Metrics> {
    let address = format!("127.0.0.1:{port}");
    let mut stream =
        TcpStream::connect(&address).with_context(|| format!("connecting to {address}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("setting a timeout")?;
    write!(
        stream,
        "GET /metrics HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("asking {address} for its metrics"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .with_context(|| format!("reading the metrics of {address}"))?;
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| l.starts_with("custos_")) {
        if let Some((key, value)) = line.rsplit_once(' ')
            && let Ok(value) = value.parse::<f64>()
        {
            samples.insert(key.to_owned(), value);
        }
    }
    anyhow::ensure!(!samples.is_empty(), "no custos_ metrics at {address}");
    Ok(Metrics(samples))
}

/// CPU seconds (utime + stime) and (VmRSS, VmHWM) in KiB of process `pid`.
pub fn process_usage(pid: u32) -> anyhow::Result<(f64, u64, u64)> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&stat_path).with_context(|| format!("reading {stat_path}"))?;
    // The fields after the command name (which may hold spaces) start with the state.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{stat_path} has no command name"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("{stat_path}: field {} unreadable", i + 3))
    };
    // utime and stime are fields 14 and 15 (1-based); `after` starts at field 3.
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (ticks(11)? + ticks(12)?) / hz.max(1.0);
    let status_path = format!("/proc/{pid}/status");
    let status =
        std::fs::read_to_string(&status_path).with_context(|| format!("reading {status_path}"))?;
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((cpu, kib("VmRSS:"), kib("VmHWM:")))
}

/// CPU time in nanoseconds and times scheduled in, summed over the threads process `pid` has
/// now (/proc/PID/task/TID/schedstat: exact, where /proc/PID/stat counts 10 ms ticks). A thread
/// that ends between two readings takes its share with it, so compare readings over a span in
/// which the process keeps its threads (an idle agent does).
pub fn threads_schedstat(pid: u32) -> anyhow::Result<(u64, u64)> {
    let dir = format!("/proc/{pid}/task");
    let mut total = (0, 0);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("schedstat");
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // the thread ended meanwhile
        };
        let fields: Vec<u64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [run_ns, _wait_ns, slices] = fields[..] {
            total.0 += run_ns;
            total.1 += slices;
        }
    }
    Ok(total)
}

/// Resident memory of a process in KiB: VmRSS and VmHWM from /proc/PID/status, and VmRSS's
/// parts from /proc/PID/smaps (the Rss of each mapping, by what is mapped).
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
    /// Mappings of no file: heap, thread stacks, anonymous mmaps (and the few vDSO pages).
    pub anonymous: u64,
    /// Mappings of files: the binary and its libraries.
    pub file: u64,
    /// Mappings of eBPF maps (`anon_inode:bpf-map`), mainly the ring buffer, whose data pages
    /// the kernel maps twice in a row so they count twice.
    pub bpf_maps: u64,
    /// The same mappings' Pss, which counts a page mapped twice once (nothing else shares
    /// them): the memory they actually hold.
    pub bpf_maps_pss: u64,
}

impl Memory {
    /// VmRSS with the eBPF maps' pages counted once (Pss instead of Rss).
    pub fn rss_counting_maps_once(&self) -> u64 {
        self.rss
            .saturating_sub(self.bpf_maps.saturating_sub(self.bpf_maps_pss))
    }
}

/// [`Memory`] of process `pid`.
pub fn process_memory(pid: u32) -> anyhow::Result<Memory> {
    let (_, rss, hwm) = process_usage(pid)?;
    let path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut memory = Memory {
        rss,
        hwm,
        ..Memory::default()
    };
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Anonymous,
        File,
        BpfMap,
    }
    let mut kind = Kind::Anonymous;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        // A mapping's header: range, permissions, offset, device, inode, then the name.
        if first.contains('-') && !first.ends_with(':') {
            let name = fields.nth(4).unwrap_or("");
            kind = if name.starts_with("anon_inode:bpf-map") {
                Kind::BpfMap
            } else if name.starts_with('/') {
                Kind::File
            } else {
                Kind::Anonymous
            };
            continue;
        }
        let kib = fields
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match (first, kind) {
            ("Rss:", Kind::Anonymous) => memory.anonymous += kib,
            ("Rss:", Kind::File) => memory.file += kib,
            ("Rss:", Kind::BpfMap) => memory.bpf_maps += kib,
            ("Pss:", Kind::BpfMap) => memory.bpf_maps_pss += kib,
            _ => {}
        }
    }
    Ok(memory)
}
