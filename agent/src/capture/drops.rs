//! Losses in the kernel, turned into reports: the programs count every record the ring buffer
//! refused, per kind (`DROPS`) and per session (`SESSION_DROPS`), and failed reads (`ERRORS`).
//! The agent polls the counters and reports what is new, so that each loss becomes a gap record in
//! the session it hit.
use std::collections::HashMap;

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use custos_agent_abi::{DropCount, ProbeError, RecordKind, SessionDrops};

/// New losses in one session since the last report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLoss {
    pub sessionid: u32,
    pub records: u64,
    pub bytes: u64,
    /// Boot-time ns of the first and last loss in this report.
    pub first_ts: u64,
    pub last_ts: u64,
}

/// Totals since load, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub dropped: Vec<(RecordKind, DropCount)>,
    pub errors: Vec<(ProbeError, u64)>,
    /// Records written to the ring buffer.
    pub submitted: u64,
    /// Program runs that left because the login uid is out of scope.
    pub scope_skipped: u64,
}

impl KernelCounters {
    pub fn dropped_records(&self) -> u64 {
        self.dropped.iter().map(|(_, c)| c.records).sum()
    }
}

pub struct DropMonitor {
    sessions: PerCpuHashMap<MapData, u32, SessionDrops>,
    drops: PerCpuArray<MapData, DropCount>,
    errors: PerCpuArray<MapData, u64>,
    submitted: PerCpuArray<MapData, u64>,
    scope_skipped: PerCpuArray<MapData, u64>,
    /// Per session, the per-CPU values already reported.
    reported: HashMap<u32, Vec<SessionDrops>>,
}

impl DropMonitor {
    pub fn new(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow::anyhow!("map {name} missing from the eBPF object"))
        };
        Ok(Self {
            sessions: PerCpuHashMap::try_from(take("SESSION_DROPS")?)?,
            drops: PerCpuArray::try_from(take("DROPS")?)?,
            errors: PerCpuArray::try_from(take("ERRORS")?)?,
            submitted: PerCpuArray::try_from(take("SUBMITTED")?)?,
            scope_skipped: PerCpuArray::try_from(take("SCOPE_SKIPPED")?)?,
            reported: HashMap::new(),
        })
    }

    /// What was lost since the previous poll, per session.
    pub fn poll(&mut self) -> Vec<SessionLoss> {
        let mut losses = Vec::new();
        let mut seen = Vec::new();
        for entry in self.sessions.iter() {
            let Ok((sessionid, per_cpu)) = entry else {
                continue;
            };
            seen.push(sessionid);
            let current: Vec<SessionDrops> = per_cpu.iter().copied().collect();
            let previous = self.reported.entry(sessionid).or_default();
            if let Some(loss) = new_losses(sessionid, previous, &current) {
                losses.push(loss);
            }
            *previous = current;
        }
        // Sessions the kernel map evicted will not be reported again.
        self.reported
            .retain(|sessionid, _| seen.contains(sessionid));
        losses
    }

    /// Totals since load.
    pub fn counters(&self) -> KernelCounters {
        let mut counters = KernelCounters::default();
        for kind in RecordKind::ALL {
            if let Ok(values) = self.drops.get(&(kind as u32), 0) {
                let total = values
                    .iter()
                    .fold(DropCount::default(), |acc, v| DropCount {
                        records: acc.records + v.records,
                        bytes: acc.bytes + v.bytes,
                    });
                counters.dropped.push((kind, total));
            }
        }
        for error in ProbeError::ALL {
            if let Ok(values) = self.errors.get(&(error as u32), 0) {
                counters.errors.push((error, values.iter().sum()));
            }
        }
        for kind in RecordKind::ALL {
            if let Ok(values) = self.submitted.get(&(kind as u32), 0) {
                counters.submitted += values.iter().sum::<u64>();
            }
        }
        if let Ok(values) = self.scope_skipped.get(&0, 0) {
            counters.scope_skipped = values.iter().sum();
        }
        counters
    }
}

/// Compares one session's per-CPU counters with what was reported before.
fn new_losses(
    sessionid: u32,
    previous: &[SessionDrops],
    current: &[SessionDrops],
) -> Option<SessionLoss> {
    let mut loss = SessionLoss {
        sessionid,
        records: 0,
        bytes: 0,
        first_ts: u64::MAX,
        last_ts: 0,
    };
    for (cpu, now) in current.iter().enumerate() {
        let before = previous.get(cpu).copied().unwrap_or_default();
        if now.records <= before.records {
            continue;
        }
        loss.records += now.records - before.records;
        loss.bytes += now.bytes.saturating_sub(before.bytes);
        // The new losses on this CPU happened after its previous last loss.
        let from = if before.records == 0 {
            now.first_ts
        } else {
            before.last_ts
        };
        loss.first_ts = loss.first_ts.min(from);
        loss.last_ts = loss.last_ts.max(now.last_ts);
    }
    (loss.records > 0).then_some(loss)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drops(records: u64, first_ts: u64, last_ts: u64) -> SessionDrops {
        SessionDrops {
            records,
            bytes: records * 100,
            first_ts,
            last_ts,
        }
    }

    #[test]
    fn reports_only_what_is_new() {
        let first = [drops(2, 10, 20), drops(0, 0, 0)];
        let loss = new_losses(7, &[], &first).unwrap();
        assert_eq!(
            (loss.records, loss.bytes, loss.first_ts, loss.last_ts),
            (2, 200, 10, 20)
        );
        assert_eq!(new_losses(7, &first, &first), None);
        let second = [drops(3, 10, 30), drops(4, 25, 40)];
        let loss = new_losses(7, &first, &second).unwrap();
        assert_eq!(
            (loss.records, loss.bytes, loss.first_ts, loss.last_ts),
            (5, 500, 20, 40)
        );
    }
}
