//! The store's one writer: a thread that owns the [`Store`] and serves requests in order, so
//! that appends, fsyncs and index commits never interleave. Batches are decoded before they
//! reach it (on the blocking pool, several at once), and the batches waiting when it is free are
//! stored as one group with one index commit (group commit). Agents' last contacts are kept in
//! memory and written every few seconds.
use std::{collections::HashMap, sync::Arc, thread::JoinHandle, time::Duration};

use custos_proto::{Timestamp, api::PurgeReport, wire::Batch};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::warn;

use crate::{
    retention::Purge,
    store::{Appended, Prepared, Receipt, Store, StoreError},
};

/// An agent's contact, recorded in the index's agents table.
pub use crate::index::AgentContact as Contact;

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

enum Request {
    Append(Prepared, Reply),
    Contact(Contact),
    FlushContacts,
    Purge(Purge, oneshot::Sender<Result<PurgeReport, StoreError>>),
}

#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<Request>,
    /// Batches being decoded at once: one per core, so a thousand agents sending together
    /// queue here instead of each holding a thread and its decoded events.
    decoding: Arc<Semaphore>,
}

/// The most batches stored with one index commit. A group is what queued while the writer
/// stored the previous one; this bounds how long the first of them waits for its answer.
const GROUP_MAX: usize = 64;

/// How often agents' contacts are written.
const CONTACT_FLUSH: Duration = Duration::from_secs(5);

impl StoreHandle {
    /// Starts the writer thread. It ends when every handle is dropped.
    pub fn spawn(store: Store) -> (StoreHandle, JoinHandle<Store>) {
        let (tx, mut rx) = mpsc::channel::<Request>(1024);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let mut store = store;
                let mut contacts: HashMap<String, (Contact, Timestamp)> = HashMap::new();
                let mut pending = None;
                while let Some(request) = pending.take().or_else(|| rx.blocking_recv()) {
                    match request {
                        Request::Append(prepared, reply) => {
                            pending = append_waiting(&mut store, &mut rx, prepared, reply);
                        }
                        Request::Contact(contact) => {
                            let entry = contacts
                                .entry(contact.host.clone())
                                .or_insert_with(|| (contact.clone(), Timestamp::now()));
                            let merged = Contact {
                                version: contact.version.or(entry.0.version.take()),
                                boot_id: contact.boot_id.or(entry.0.boot_id.take()),
                                spool: contact.spool.or(entry.0.spool.take()),
                                clock: contact.clock.or(entry.0.clock.take()),
                                ..contact
                            };
                            *entry = (merged, Timestamp::now());
                        }
                        Request::FlushContacts => flush(&mut store, &mut contacts),
                        Request::Purge(purge, reply) => {
                            let _ = reply.send(purge.run(&mut store));
                        }
                    }
                }
                flush(&mut store, &mut contacts);
                store
            })
            .expect("starting the store writer thread");
        // A weak sender: the writer ends when the last handle is dropped.
        let flusher = tx.downgrade();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CONTACT_FLUSH);
            loop {
                tick.tick().await;
                let Some(tx) = flusher.upgrade() else { break };
                if tx.send(Request::FlushContacts).await.is_err() {
                    break;
                }
            }
        });
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let decoding = Arc::new(Semaphore::new(cores));
        (StoreHandle { tx, decoding }, thread)
    }

    /// Stores a batch durably; resolves once it is on disk and in the index. The batch is
    /// shared (with the alert engine), not copied.
    pub async fn append(
        &self,
        batch: Arc<Batch>,
        receipt: Receipt,
    ) -> Result<Appended, StoreError> {
        let prepared = {
            let _permit = self
                .decoding
                .acquire()
                .await
                .map_err(|_| StoreError::ShuttingDown)?;
            tokio::task::spawn_blocking(move || Prepared::new(batch, receipt))
                .await
                .map_err(|_| StoreError::ShuttingDown)??
        };
        let (reply, answer) = oneshot::channel();
        if self
            .tx
            .send(Request::Append(prepared, reply))
            .await
            .is_err()
        {
            return Err(StoreError::ShuttingDown);
        }
        answer.await.unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// Applies retention (in the writer, so that no append interleaves with a deletion).
    pub async fn purge(&self, purge: Purge) -> Result<PurgeReport, StoreError> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Request::Purge(purge, reply)).await.is_err() {
            return Err(StoreError::ShuttingDown);
        }
        answer.await.unwrap_or(Err(StoreError::ShuttingDown))
    }

    /// Notes an agent's contact (written within a few seconds).
    pub fn contact(&self, contact: Contact) {
        let _ = self.tx.try_send(Request::Contact(contact));
    }
}

/// Stores `first` together with every append already waiting (up to [`GROUP_MAX`]) as one
/// group, answers each, and returns the request that ended the group, if one did.
fn append_waiting(
    store: &mut Store,
    rx: &mut mpsc::Receiver<Request>,
    first: Prepared,
    reply: Reply,
) -> Option<Request> {
    let mut group = vec![first];
    let mut replies = vec![reply];
    let mut after = None;
    while group.len() < GROUP_MAX {
        match rx.try_recv() {
            Ok(Request::Append(prepared, reply)) => {
                group.push(prepared);
                replies.push(reply);
            }
            Ok(other) => {
                after = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    for (reply, stored) in replies.into_iter().zip(store.append_group(&group)) {
        let _ = reply.send(stored);
    }
    after
}

fn flush(store: &mut Store, contacts: &mut HashMap<String, (Contact, Timestamp)>) {
    if contacts.is_empty() {
        return;
    }
    let writer = match store.index_writer() {
        Ok(writer) => writer,
        Err(err) => {
            warn!(error = %err, "could not record agents' contacts");
            return;
        }
    };
    for (contact, at) in contacts.values() {
        if let Err(err) = writer.agent_contact(contact, *at) {
            warn!(host = contact.host, error = %err, "could not record an agent's contact");
        }
    }
    if let Err(err) = writer.commit() {
        warn!(error = %err, "could not record agents' contacts");
    }
    contacts.clear();
}
