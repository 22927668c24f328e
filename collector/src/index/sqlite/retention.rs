//! What retention asks of the SQLite index: the recordings past a cutoff (by receive time),
//! every recording's login user (to count held ones), and removing a recording with everything
//! indexed from it.
use custos_proto::Timestamp;

use crate::index::{Index, IndexError, IndexWriter};

impl Index {
    /// Recordings the collector last received a batch of before `cutoff` (by its own clock:
    /// the times in events are the recorded host's, which root there can set to anything),
    /// with their login user, oldest first. Recordings whose chunks predate receive times
    /// (stored by a collector before schema 3 and not continued since) go by their host's
    /// times, as they did then.
    pub fn expired(&self, cutoff: Timestamp) -> Result<Vec<(String, Option<String>)>, IndexError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, login_user FROM recordings
             WHERE COALESCE(received_last_ns, end_ns, last_ns, start_ns, 0) < ?1
             ORDER BY COALESCE(received_first_ns, start_ns)",
        )?;
        let rows = stmt
            .query_map([cutoff.0], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Every recording with its login user.
    pub fn recording_users(&self) -> Result<Vec<(String, Option<String>)>, IndexError> {
        let mut stmt = self.conn.prepare("SELECT id, login_user FROM recordings")?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

impl IndexWriter<'_> {
    /// Removes a recording and everything indexed from it.
    pub fn delete_recording(&self, id: &str) -> Result<(), IndexError> {
        for table in ["commands", "files", "gaps", "batches"] {
            self.tx
                .execute(&format!("DELETE FROM {table} WHERE recording = ?1"), [id])?;
        }
        self.tx
            .execute("DELETE FROM recordings WHERE id = ?1", [id])?;
        Ok(())
    }
}
