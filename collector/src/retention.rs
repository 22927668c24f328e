//! Retention: a recording idle for longer than the retention period is purged, unless a legal
//! hold covers it. Idle by the collector's clock: the time it last received a batch of the
//! recording, never the times the recorded host put in its events (root on the host can set its
//! clock back to 2001 and log out; the recording is then new, not 25 years old). The periodic job and the admin's `retention purge` both run it here; the
//! deletion itself runs in the store's writer (no append interleaves with it) and every purge is
//! recorded in the audit database.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use custos_proto::{
    Timestamp,
    api::{Hold, PurgeReport},
};
use tracing::{info, warn};

use crate::{
    audit::{Audit, AuditError},
    index::{Index, IndexError},
    store::{Store, StoreError},
    writer::StoreHandle,
};

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("reading the holds: {0}")]
    Holds(#[from] AuditError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What retention needs: the period, the holds (in the audit database) and the store's writer.
pub struct Retention {
    /// Recordings are kept this long after the collector last received a batch of them.
    pub keep: Duration,
    pub audit: Arc<Mutex<Audit>>,
    pub writer: StoreHandle,
}

impl Retention {
    /// Every hold in place.
    pub fn holds(&self) -> Result<Vec<Hold>, AuditError> {
        self.audit.lock().unwrap_or_else(|e| e.into_inner()).holds()
    }

    /// One retention run: removes recordings idle for longer than the retention period, except
    /// held ones; `reason` goes in the audit database with each purge.
    pub async fn run(&self, reason: &str) -> Result<PurgeReport, RetentionError> {
        let holds = self.holds()?;
        let keep = i64::try_from(self.keep.as_nanos()).unwrap_or(i64::MAX);
        let cutoff = Timestamp(Timestamp::now().0.saturating_sub(keep));
        Ok(self
            .writer
            .purge(Purge {
                cutoff,
                holds,
                audit: self.audit.clone(),
                reason: reason.to_owned(),
            })
            .await?)
    }
}

/// Runs retention every `every` until the collector stops.
pub async fn job(
    retention: Arc<Retention>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match retention.run("retention period passed").await {
            Ok(report) if !report.purged.is_empty() || !report.held.is_empty() => info!(
                purged = report.purged.len(),
                held = report.held.len(),
                "retention run"
            ),
            Ok(_) => {}
            Err(err) => warn!(error = %err, "retention run failed"),
        }
    }
}

/// How many recordings the index has, and how many of them `holds` cover.
pub fn count_held(index: &Index, holds: &[Hold]) -> Result<(u64, u64), IndexError> {
    let recordings = index.recording_users()?;
    let held = recordings
        .iter()
        .filter(|(id, user)| held(holds, id, user.as_deref()))
        .count();
    Ok((recordings.len() as u64, held as u64))
}

fn held(holds: &[Hold], recording: &str, login_user: Option<&str>) -> bool {
    holds.iter().any(|hold| hold.covers(recording, login_user))
}

/// A retention run, for the writer: recordings last received before `cutoff` go, unless held.
pub struct Purge {
    pub cutoff: Timestamp,
    pub holds: Vec<Hold>,
    /// Where purges are recorded.
    pub audit: Arc<Mutex<Audit>>,
    pub reason: String,
}

impl Purge {
    /// Purges what expired, in the writer (which owns `store`).
    pub(crate) fn run(&self, store: &mut Store) -> Result<PurgeReport, StoreError> {
        let mut report = PurgeReport {
            purged: Vec::new(),
            held: Vec::new(),
        };
        for (id, user) in store.index().expired(self.cutoff)? {
            if held(&self.holds, &id, user.as_deref()) {
                report.held.push(id);
                continue;
            }
            let summary = store.index().session(&id)?;
            let rule = format!("retention: last received before {}", self.cutoff);
            store.purge(&id, &self.reason, &rule)?;
            let (start, end) = summary
                .as_ref()
                .map(|s| (s.start.map(|t| t.0), s.end.or(s.last).map(|t| t.0)))
                .unwrap_or((None, None));
            if let Err(err) = self
                .audit
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record_purge(&id, user.as_deref(), start, end, &self.reason)
            {
                warn!(recording = id, error = %err, "purged, but could not record the purge");
            }
            info!(
                recording = id,
                user = user.as_deref().unwrap_or("-"),
                reason = self.reason,
                "recording purged"
            );
            report.purged.push(id);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use custos_proto::{
        AuditSessionId, BootId, ByteString, Event, EventBody, Seq, Tty,
        api::HoldKind,
        event::{Output, SessionEnd},
        wire::{BatchSeq, SpoolId, make_batch},
    };

    use super::*;
    use crate::store::{Appended, Prepared, Receipt, StoreConfig, rebuild_index};

    const DAY_NS: i64 = 86_400_000_000_000;
    /// 2001-01-01T00:00:00Z: `date -s 2001-01-01` on the recorded host.
    const Y2001_NS: i64 = 978_307_200_000_000_000;

    /// A whole session (output, then its end) as host `host` recorded it at `time`.
    fn session(host: &str, session: u32, time: i64) -> Vec<Event> {
        let event = |seq: u64, body| Event {
            time: Timestamp(time + seq as i64),
            host: host.into(),
            boot_id: BootId("3ceb1d62-7dc8-410f-835d-54aa0e66d523".into()),
            session: AuditSessionId(session),
            seq: Seq(seq),
            process: None,
            event: body,
        };
        vec![
            event(
                1,
                EventBody::Output(Output {
                    tty: Tty::from_parts(136, 1),
                    data: ByteString::from("rm -rf evidence"),
                    uncaptured: 0,
                    redacted: Default::default(),
                }),
            ),
            event(
                2,
                EventBody::SessionEnd(SessionEnd {
                    duration_secs: 1.0,
                    ..Default::default()
                }),
            ),
        ]
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        config: StoreConfig,
        audit: Arc<Mutex<Audit>>,
    }

    fn fixture() -> Fixture {
        let (dir, config) = crate::store::tests::fixture();
        let audit = Arc::new(Mutex::new(
            Audit::open(
                &dir.path().join("audit.sqlite"),
                crate::trust::keys::SealKey::load(&config.seal_key).unwrap(),
            )
            .unwrap(),
        ));
        Fixture {
            _dir: dir,
            config,
            audit,
        }
    }

    /// Stores `events` as one batch received by the collector at `received`.
    fn store(store: &mut Store, seq: u64, events: &[Event], received: Timestamp) -> String {
        let batch = make_batch(&SpoolId("spool".into()), BatchSeq(seq), events).unwrap();
        let receipt = Receipt {
            received,
            host_clock_skewed: false,
            agent_certificate: None,
        };
        let prepared = Prepared::new(std::sync::Arc::new(batch), receipt).unwrap();
        match store.append_group(std::slice::from_ref(&prepared)).pop() {
            Some(Ok(Appended::Stored { recording, .. })) => recording,
            other => panic!("not stored: {other:?}"),
        }
    }

    fn purge_older_than(fixture: &Fixture, store: &mut Store, keep_days: i64) -> PurgeReport {
        Purge {
            cutoff: Timestamp(Timestamp::now().0 - keep_days * DAY_NS),
            holds: Vec::new(),
            audit: fixture.audit.clone(),
            reason: "retention period passed".into(),
        }
        .run(store)
        .unwrap()
    }

    /// The host's clock set back to 2001 before the session ended (`date -s 2001-01-01` as root,
    /// then logging out): the recording just arrived, and retention keeps it. A recording
    /// received longer ago than the period goes, whatever its host's clock said. The index
    /// rebuilt from the chunks gives the same answer.
    #[test]
    fn retention_goes_by_the_collectors_receive_time_not_the_hosts_clock() {
        let fixture = fixture();
        let mut s = Store::open(&fixture.config).unwrap();
        let now = Timestamp::now();
        let set_back = store(&mut s, 1, &session("db1", 1, Y2001_NS), now);
        let old = store(
            &mut s,
            2,
            &session("db1", 2, now.0),
            Timestamp(now.0 - 100 * DAY_NS),
        );
        let report = purge_older_than(&fixture, &mut s, 30);
        assert_eq!(report.purged, vec![old.clone()]);
        assert!(s.index().recording(&set_back).unwrap().is_some());
        assert!(s.index().recording(&old).unwrap().is_none());
        // The host's times stay what the host said, for display.
        let kept = s.index().session(&set_back).unwrap().unwrap();
        assert_eq!(kept.end.map(|t| t.0), Some(Y2001_NS + 2));

        // Rebuilt from the chunks, the index ages recordings by the same receive times.
        let in_a_week = store(
            &mut s,
            3,
            &session("db1", 3, Y2001_NS),
            Timestamp(now.0 - 23 * DAY_NS),
        );
        drop(s);
        rebuild_index(&fixture.config).unwrap();
        let mut s = Store::open(&fixture.config).unwrap();
        assert!(purge_older_than(&fixture, &mut s, 30).purged.is_empty());
        assert_eq!(
            purge_older_than(&fixture, &mut s, 22).purged,
            vec![in_a_week]
        );
        assert!(s.index().recording(&set_back).unwrap().is_some());
    }

    fn hold(kind: HoldKind, target: &str) -> Hold {
        Hold {
            id: 1,
            kind,
            target: target.into(),
            reason: "case".into(),
            created_by: "admin".into(),
            created: Timestamp(0),
        }
    }

    #[test]
    fn a_session_hold_covers_its_recording_and_a_user_hold_every_one_of_the_user() {
        let holds = [
            hold(HoldKind::Session, "db1-aaaa-7"),
            hold(HoldKind::User, "alice"),
        ];
        assert!(held(&holds, "db1-aaaa-7", Some("bob")));
        assert!(held(&holds, "db1-aaaa-9", Some("alice")));
        assert!(!held(&holds, "db1-aaaa-9", Some("bob")));
        assert!(!held(&holds, "db1-aaaa-9", None));
        // A session hold whose target is a user name holds no user's recordings.
        assert!(!held(
            &[hold(HoldKind::Session, "alice")],
            "x",
            Some("alice")
        ));
    }
}
