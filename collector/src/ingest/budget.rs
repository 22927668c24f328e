//! Ingest's memory budget: how many bytes of request frames the collector holds at once, per
//! connection, per agent identity (certificate name) and in total (`[ingest] memory_budget`,
//! `identity_memory`, `connection_memory`). A stream reserves its frame's announced length from
//! all three before it reads the body, and keeps it until it has answered; when a share is
//! used up, the stream waits (QUIC flow control then holds the agent back) instead of
//! allocating. Permits are counted in KiB. Reservations are taken narrowest first (connection,
//! identity, total), so an agent that has used up its own share waits without holding any of
//! the total.
//!
//! The budget also keeps each identity's conduct: how many connections it has open (at most
//! `max_connections_per_identity`), and its strikes (garbage frames, stalled streams). An
//! identity with [`STRIKES`] strikes within [`STRIKE_WINDOW`] is cut off: its connections are
//! closed and new ones refused for [`CUT_OFF_FOR`].
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// Strikes within [`STRIKE_WINDOW`] that cut an identity off.
pub const STRIKES: usize = 8;
/// The window strikes are counted in.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(60);
/// How long a cut-off identity stays refused.
pub const CUT_OFF_FOR: Duration = Duration::from_secs(60);

/// The sizes of the budget, in bytes, and the connection limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetLimits {
    pub total: u64,
    pub identity: u64,
    pub connection: u64,
    pub connections_per_identity: usize,
}

/// Bytes as permits (KiB, rounded up).
fn kib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// Why a connection is not admitted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("too many connections ({limit}) for one agent identity")]
    TooManyConnections { limit: usize },
    #[error("cut off for misbehaving, for {remaining:?} more")]
    CutOff { remaining: Duration },
}

/// Why a reservation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReserveError {
    #[error("a frame of {bytes} bytes is over the connection's share of {share} bytes")]
    OverShare { bytes: u64, share: u64 },
    #[error("the memory budget is closed")]
    Closed,
}

/// One identity's share and conduct.
struct IdentityState {
    memory: Arc<Semaphore>,
    conduct: Mutex<Conduct>,
    /// Turns true when the identity is cut off (its connections watch it).
    cut: watch::Sender<bool>,
}

#[derive(Default)]
struct Conduct {
    connections: usize,
    strikes: VecDeque<Instant>,
    cut_off_until: Option<Instant>,
}

/// The collector's ingest budget (one per collector).
pub struct Budget {
    limits: BudgetLimits,
    total: Arc<Semaphore>,
    identities: Mutex<HashMap<String, Arc<IdentityState>>>,
}

impl Budget {
    pub fn new(limits: BudgetLimits) -> Arc<Budget> {
        Arc::new(Budget {
            limits,
            total: Arc::new(Semaphore::new(kib(limits.total) as usize)),
            identities: Mutex::new(HashMap::new()),
        })
    }

    pub fn limits(&self) -> BudgetLimits {
        self.limits
    }

    /// KiB of the total budget not reserved now.
    pub fn available_kib(&self) -> usize {
        self.total.available_permits()
    }

    /// Admits a connection of `identity`, unless it has its limit of connections open or is cut
    /// off.
    pub fn connect(self: &Arc<Self>, identity: &str) -> Result<ConnectionShare, Refusal> {
        let state = {
            let mut identities = self.identities.lock().unwrap_or_else(|e| e.into_inner());
            identities
                .entry(identity.to_owned())
                .or_insert_with(|| {
                    Arc::new(IdentityState {
                        memory: Arc::new(Semaphore::new(kib(self.limits.identity) as usize)),
                        conduct: Mutex::new(Conduct::default()),
                        cut: watch::channel(false).0,
                    })
                })
                .clone()
        };
        {
            let mut conduct = state.conduct.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match conduct.cut_off_until {
                Some(until) if until > now => {
                    return Err(Refusal::CutOff {
                        remaining: until - now,
                    });
                }
                Some(_) => {
                    conduct.cut_off_until = None;
                    conduct.strikes.clear();
                    state.cut.send_replace(false);
                }
                None => {}
            }
            if conduct.connections >= self.limits.connections_per_identity {
                return Err(Refusal::TooManyConnections {
                    limit: self.limits.connections_per_identity,
                });
            }
            conduct.connections += 1;
        }
        Ok(ConnectionShare {
            budget: self.clone(),
            identity: identity.to_owned(),
            memory: Arc::new(Semaphore::new(kib(self.limits.connection) as usize)),
            state,
        })
    }
}

/// A connection's share of the budget; dropping it ends the connection's count.
pub struct ConnectionShare {
    budget: Arc<Budget>,
    identity: String,
    memory: Arc<Semaphore>,
    state: Arc<IdentityState>,
}

/// Bytes reserved from the connection's, the identity's and the total budget; given back when
/// dropped.
#[must_use]
pub struct Reservation {
    _permits: [OwnedSemaphorePermit; 3],
}

impl ConnectionShare {
    /// Reserves `bytes`, waiting until the connection's, then the identity's, then the total
    /// budget have them.
    pub async fn reserve(&self, bytes: u64) -> Result<Reservation, ReserveError> {
        let share = self.budget.limits.connection;
        if bytes > share {
            return Err(ReserveError::OverShare { bytes, share });
        }
        let n = kib(bytes);
        let acquire = |semaphore: &Arc<Semaphore>| semaphore.clone().acquire_many_owned(n);
        let connection = acquire(&self.memory)
            .await
            .map_err(|_| ReserveError::Closed)?;
        let identity = acquire(&self.state.memory)
            .await
            .map_err(|_| ReserveError::Closed)?;
        let total = acquire(&self.budget.total)
            .await
            .map_err(|_| ReserveError::Closed)?;
        Ok(Reservation {
            _permits: [connection, identity, total],
        })
    }

    /// Counts a strike against the identity; true when this strike cut it off (it is cut off
    /// once; further strikes while cut off return false).
    pub fn strike(&self) -> bool {
        let mut conduct = self.state.conduct.lock().unwrap_or_else(|e| e.into_inner());
        if conduct.cut_off_until.is_some() {
            return false;
        }
        let now = Instant::now();
        while conduct
            .strikes
            .front()
            .is_some_and(|&at| now.duration_since(at) > STRIKE_WINDOW)
        {
            conduct.strikes.pop_front();
        }
        conduct.strikes.push_back(now);
        if conduct.strikes.len() < STRIKES {
            return false;
        }
        conduct.cut_off_until = Some(now + CUT_OFF_FOR);
        self.state.cut.send_replace(true);
        true
    }

    /// Resolves when the identity is cut off.
    pub async fn cut_off(&self) {
        let mut cut = self.state.cut.subscribe();
        let _ = cut.wait_for(|&cut| cut).await;
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }
}

impl Drop for ConnectionShare {
    fn drop(&mut self) {
        let mut conduct = self.state.conduct.lock().unwrap_or_else(|e| e.into_inner());
        conduct.connections = conduct.connections.saturating_sub(1);
        let forget = conduct.connections == 0 && conduct.cut_off_until.is_none();
        drop(conduct);
        if forget {
            // Identities come and go: an idle one is forgotten (unless another connection of it
            // arrived meanwhile, which holds the state).
            let mut identities = self
                .budget
                .identities
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(state) = identities.get(&self.identity)
                && Arc::ptr_eq(state, &self.state)
                && Arc::strong_count(state) == 2
            {
                identities.remove(&self.identity);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn budget() -> Arc<Budget> {
        Budget::new(BudgetLimits {
            total: 64 * MIB,
            identity: 32 * MIB,
            connection: 16 * MIB,
            connections_per_identity: 2,
        })
    }

    /// Whether `reserve` is still waiting after the runtime ran everything else it could.
    async fn waits(share: &ConnectionShare, bytes: u64) -> bool {
        tokio::select! {
            biased;
            _ = share.reserve(bytes) => false,
            () = tokio::task::yield_now() => true,
        }
    }

    #[tokio::test]
    async fn a_connection_waits_at_its_share_and_the_identity_at_its_own() {
        let budget = budget();
        let a1 = budget.connect("a").expect("first");
        let a2 = budget.connect("a").expect("second");
        let held = a1
            .reserve(16 * MIB)
            .await
            .expect("the whole connection share");
        assert!(waits(&a1, 1).await, "the connection's share is used up");
        let held2 = a2.reserve(16 * MIB).await.expect("the other connection");
        assert_eq!(budget.available_kib(), 32 * 1024);
        // Another identity is not held back by a's use.
        let b = budget.connect("b").expect("b");
        let b_held = b.reserve(16 * MIB).await.expect("b's share");
        drop(held);
        let again = a1.reserve(16 * MIB).await.expect("given back on drop");
        drop((again, held2, b_held));
        assert_eq!(budget.available_kib(), 64 * 1024);
        assert_eq!(
            a1.reserve(16 * MIB + 1).await.err(),
            Some(ReserveError::OverShare {
                bytes: 16 * MIB + 1,
                share: 16 * MIB
            })
        );
    }

    #[tokio::test]
    async fn the_total_bounds_all_identities_together() {
        let budget = Budget::new(BudgetLimits {
            total: 40 * MIB,
            identity: 32 * MIB,
            connection: 16 * MIB,
            connections_per_identity: 4,
        });
        let shares: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|id| budget.connect(id).expect("connects"))
            .collect();
        let _a = shares[0].reserve(16 * MIB).await.expect("a");
        let _b = shares[1].reserve(16 * MIB).await.expect("b");
        let _c = shares[2].reserve(8 * MIB).await.expect("c, the rest");
        assert!(waits(&shares[2], 1024).await, "the total is used up");
        assert_eq!(budget.available_kib(), 0);
    }

    #[tokio::test]
    async fn connections_per_identity_are_limited_and_counted_down_when_they_end() {
        let budget = budget();
        let first = budget.connect("a").expect("first");
        let _second = budget.connect("a").expect("second");
        assert_eq!(
            budget.connect("a").err(),
            Some(Refusal::TooManyConnections { limit: 2 })
        );
        budget.connect("b").expect("another identity");
        drop(first);
        budget.connect("a").expect("a connection ended: room again");
    }

    #[tokio::test]
    async fn strikes_cut_the_identity_off_and_refuse_it_then() {
        let budget = budget();
        let a = budget.connect("a").expect("a");
        let b = budget.connect("b").expect("b");
        for _ in 0..STRIKES - 1 {
            assert!(!a.strike());
        }
        let watching = a.cut_off();
        assert!(a.strike(), "the last strike cuts it off");
        watching.await;
        assert!(!a.strike(), "cut off once");
        assert!(matches!(
            budget.connect("a"),
            Err(Refusal::CutOff { remaining }) if remaining <= CUT_OFF_FOR
        ));
        assert!(!b.strike(), "another identity is unaffected");
        budget.connect("b").expect("b still connects");
        // The state outlives its connections while cut off.
        drop(a);
        assert!(matches!(budget.connect("a"), Err(Refusal::CutOff { .. })));
    }
}
