//! Retention: a recording idle for longer than the retention period is purged, unless a legal
//! hold covers it. The periodic job and the admin's `retention purge` both run it here; the
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
    /// Recordings are kept this long after their last activity.
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

/// A retention run, for the writer: recordings whose last activity is before `cutoff` go,
/// unless held.
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
            store.purge(&id)?;
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
    use custos_proto::api::HoldKind;

    use super::*;

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
