//! Spend caps per API key, tenant or tier, per day or month, and the stores that count spend.
//!
//! A request's estimated cost is *reserved* atomically against every cap that applies to it:
//! either all caps have room and all are charged, or none is. Concurrent requests therefore
//! never push a cap over its limit (they can leave it short by less than one request's cost).
//! Actual usage reported later (`POST /v1/usage`) adjusts the counters and may exceed a cap;
//! the next reservation then fails and the route moves to a cheaper candidate.
//!
//! Counters live in memory (one process) or in Redis (shared by replicas; one key per cap and
//! window, expiring after the window). When Redis cannot be reached, the in-memory counter
//! answers instead and the decision says it is degraded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

mod redis_store;
pub use redis_store::{RedisError, RedisStore, Reserved};

// The caps as the route file declares them live with the route file's other types.
pub use crate::config::{Budget, Period, Scope};

/// Who a request is for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// A stable, non-secret id of the API key (a hash prefix, never the key).
    pub key: Option<String>,
    /// The tenant.
    pub tenant: Option<String>,
    /// The tier.
    pub tier: Option<String>,
}

/// One cap applied to one request, in its current window.
#[derive(Debug, Clone, PartialEq)]
pub struct CapKey {
    /// Readable name, e.g. `tenant:acme per day`.
    pub label: String,
    /// Counter name, e.g. `tenant:acme:day:2026-11-28`.
    pub counter: String,
    /// The cap.
    pub limit_usd: f64,
    /// How long the counter must live (the window plus a day of slack).
    pub ttl: Duration,
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The window a moment falls in, as text (`2026-11-28` or `2026-11`).
pub fn window(period: Period, now: SystemTime) -> String {
    let days = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    match period {
        Period::Day => format!("{y:04}-{m:02}-{d:02}"),
        Period::Month => format!("{y:04}-{m:02}"),
    }
}

/// The caps that apply to `who` at `now`.
pub fn caps_for(budgets: &[Budget], who: &Identity, now: SystemTime) -> Vec<CapKey> {
    budgets
        .iter()
        .filter_map(|b| {
            let (name, value) = match b.scope {
                Scope::Key => ("key", who.key.as_deref()?),
                Scope::Tenant => ("tenant", who.tenant.as_deref()?),
                Scope::Tier => ("tier", who.tier.as_deref()?),
            };
            if b.id.as_deref().is_some_and(|id| id != value) {
                return None;
            }
            let (period, ttl_days) = match b.period {
                Period::Day => ("day", 2),
                Period::Month => ("month", 32),
            };
            Some(CapKey {
                label: format!("{name}:{value} per {period}"),
                counter: format!("{name}:{value}:{period}:{}", window(b.period, now)),
                limit_usd: b.limit_usd,
                ttl: Duration::from_secs(ttl_days * 86_400),
            })
        })
        .collect()
}

/// A reservation that did not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The cap that would be exceeded.
    pub label: String,
    /// Its limit.
    pub limit_usd: f64,
    /// Spent so far in the window.
    pub spent_usd: f64,
}

/// Which counter answered.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "store")]
pub enum Counted {
    /// This process's memory.
    Memory,
    /// Redis.
    Redis,
    /// Redis was configured but failed; this process's memory answered.
    Degraded {
        /// What Redis said.
        reason: String,
    },
}

/// Spend counters in this process, each with the time after which its window is over.
#[derive(Debug, Default)]
pub struct MemoryStore {
    spent: Mutex<HashMap<String, (f64, SystemTime)>>,
}

/// Counters kept before expired ones are swept.
const SWEEP_ABOVE: usize = 4096;

fn charge(spent: &mut HashMap<String, (f64, SystemTime)>, cap: &CapKey, delta: f64) {
    let now = SystemTime::now();
    if spent.len() > SWEEP_ABOVE {
        spent.retain(|_, (_, expires)| *expires > now);
    }
    let entry = spent.entry(cap.counter.clone()).or_insert((0.0, now));
    entry.0 += delta;
    entry.1 = now + cap.ttl;
}

impl MemoryStore {
    /// Reserves `cost` against every cap, or none.
    pub fn reserve(&self, caps: &[CapKey], cost: f64) -> Result<(), Refusal> {
        let mut spent = self.spent.lock().expect("budget lock");
        for cap in caps {
            let s = spent.get(&cap.counter).map_or(0.0, |e| e.0);
            if s + cost > cap.limit_usd {
                return Err(Refusal {
                    label: cap.label.clone(),
                    limit_usd: cap.limit_usd,
                    spent_usd: s,
                });
            }
        }
        for cap in caps {
            charge(&mut spent, cap, cost);
        }
        Ok(())
    }

    /// Adds `delta` (may be negative) to every cap's counter, without checking limits.
    pub fn adjust(&self, caps: &[CapKey], delta: f64) {
        let mut spent = self.spent.lock().expect("budget lock");
        for cap in caps {
            charge(&mut spent, cap, delta);
        }
    }

    /// Sets counters to what Redis says they hold, so that while Redis does not answer this
    /// process counts on from the shared totals it last saw, not from nothing: a cap reached
    /// across replicas stays reached through an outage.
    pub fn mirror<'a>(&self, totals: impl IntoIterator<Item = (&'a CapKey, f64)>) {
        let mut spent = self.spent.lock().expect("budget lock");
        let now = SystemTime::now();
        if spent.len() > SWEEP_ABOVE {
            spent.retain(|_, (_, expires)| *expires > now);
        }
        for (cap, total) in totals {
            spent.insert(cap.counter.clone(), (total, now + cap.ttl));
        }
    }

    /// Spent so far on one counter.
    pub fn spent(&self, counter: &str) -> f64 {
        self.spent
            .lock()
            .expect("budget lock")
            .get(counter)
            .map_or(0.0, |e| e.0)
    }
}

/// How often a stopping server tries again to write the spend counted while Redis was away
/// (a little more than the store's rest after a failure).
const RETRY_SHARE: Duration = Duration::from_millis(1100);

/// Where spend is counted: memory, or Redis with memory as the fallback. What is counted in
/// memory while Redis does not answer is written to Redis once it answers again (before the next
/// reservation there), so that the other replicas count it too.
#[derive(Debug)]
pub struct Ledger {
    memory: MemoryStore,
    redis: Option<RedisStore>,
    /// Spend counted in memory during an outage, by counter, not yet in Redis.
    unshared: Mutex<HashMap<String, (CapKey, f64)>>,
    /// Adjustments begun off the requests' path ([`Ledger::adjust_in_background`]), which a
    /// stopping server waits for ([`Ledger::written`]).
    writes: tokio_util::task::TaskTracker,
}

impl Ledger {
    /// Counts in this process only.
    pub fn in_memory() -> Self {
        Ledger {
            memory: MemoryStore::default(),
            redis: None,
            unshared: Mutex::default(),
            writes: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Counts in Redis, falling back to memory when Redis fails.
    pub fn with_redis(store: RedisStore) -> Self {
        Ledger {
            memory: MemoryStore::default(),
            redis: Some(store),
            unshared: Mutex::default(),
            writes: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Reserves `cost` against `caps`.
    pub async fn reserve(&self, caps: &[CapKey], cost: f64) -> (Result<(), Refusal>, Counted) {
        if caps.is_empty() {
            return (Ok(()), self.kind());
        }
        match &self.redis {
            None => (self.memory.reserve(caps, cost), Counted::Memory),
            Some(r) => match self.reserve_in_redis(r, caps, cost).await {
                Ok(Reserved::Charged(totals)) => {
                    self.memory.mirror(caps.iter().zip(totals));
                    (Ok(()), Counted::Redis)
                }
                Ok(Reserved::Refused(refusal)) => {
                    if let Some(cap) = caps.iter().find(|c| c.label == refusal.label) {
                        self.memory.mirror([(cap, refusal.spent_usd)]);
                    }
                    (Err(refusal), Counted::Redis)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "budget store unavailable; counting in memory");
                    let reserved = self.memory.reserve(caps, cost);
                    if reserved.is_ok() {
                        self.keep_unshared(caps, cost);
                    }
                    (
                        reserved,
                        Counted::Degraded {
                            reason: e.to_string(),
                        },
                    )
                }
            },
        }
    }

    /// Reserves in Redis, after writing there what was counted in memory while it was away.
    async fn reserve_in_redis(
        &self,
        redis: &RedisStore,
        caps: &[CapKey],
        cost: f64,
    ) -> Result<Reserved, RedisError> {
        self.share(redis).await?;
        redis.reserve(caps, cost).await
    }

    /// Notes spend counted in memory only, for [`Ledger::share`].
    fn keep_unshared(&self, caps: &[CapKey], delta: f64) {
        let mut unshared = self.unshared.lock().expect("unshared spend lock");
        for cap in caps {
            unshared
                .entry(cap.counter.clone())
                .or_insert_with(|| (cap.clone(), 0.0))
                .1 += delta;
        }
    }

    /// Writes the spend counted in memory during an outage to Redis; what Redis does not take
    /// is kept for the next try.
    async fn share(&self, redis: &RedisStore) -> Result<(), RedisError> {
        let pending: Vec<(CapKey, f64)> = {
            let mut unshared = self.unshared.lock().expect("unshared spend lock");
            if unshared.is_empty() {
                return Ok(());
            }
            unshared.drain().map(|(_, v)| v).collect()
        };
        // one transaction: all of it is written, or none and all is kept
        let each: Vec<(&CapKey, f64)> = pending.iter().map(|(cap, delta)| (cap, *delta)).collect();
        if let Err(e) = redis.adjust_each(&each).await {
            for (cap, delta) in &pending {
                self.keep_unshared(std::slice::from_ref(cap), *delta);
            }
            return Err(e);
        }
        tracing::info!(
            counters = pending.len(),
            "spend counted in memory while Redis was away is now in Redis"
        );
        Ok(())
    }

    /// Adjusts counters by `delta` (actual minus estimated spend).
    pub async fn adjust(&self, caps: &[CapKey], delta: f64) -> Counted {
        match &self.redis {
            None => {
                self.memory.adjust(caps, delta);
                Counted::Memory
            }
            Some(r) => match r.adjust(caps, delta).await {
                Ok(()) => Counted::Redis,
                Err(e) => {
                    self.memory.adjust(caps, delta);
                    self.keep_unshared(caps, delta);
                    Counted::Degraded {
                        reason: e.to_string(),
                    }
                }
            },
        }
    }

    /// [`Ledger::adjust`] without waiting for it, then `then` (on the current runtime; nothing
    /// outside one). A stopping server waits for it: see [`Ledger::written`].
    pub fn adjust_in_background(
        self: &Arc<Self>,
        caps: Vec<CapKey>,
        delta: f64,
        then: impl FnOnce() + Send + 'static,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(
                delta,
                "a spend adjustment outside the async runtime was not counted"
            );
            return;
        };
        let ledger = Arc::clone(self);
        self.writes.spawn_on(
            async move {
                if delta != 0.0 && !caps.is_empty() {
                    ledger.adjust(&caps, delta).await;
                }
                then();
            },
            &runtime,
        );
    }

    /// For a server that stops: waits up to `within` for the adjustments begun in background,
    /// then writes to Redis what was counted in memory while it was away, so that the other
    /// replicas count it, trying again until `within` is over (each try one transaction, bounded
    /// by the store's own timeout). What could not be written is logged, with its
    /// counters and amounts. Whether everything was written.
    pub async fn written(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        self.writes.close();
        let settled = tokio::time::timeout_at(deadline, self.writes.wait())
            .await
            .is_ok();
        self.writes.reopen();
        if !settled {
            tracing::warn!(
                pending = self.writes.len(),
                "spend adjustments still being written when the server stopped are lost"
            );
        }
        let Some(redis) = &self.redis else {
            return settled;
        };
        // not cancelled halfway: what it does not write it puts back. A Redis resting after a
        // failure is tried again once the rest is over, while the deadline allows.
        let mut shared = self.share(redis).await;
        while shared.is_err() && tokio::time::Instant::now() + RETRY_SHARE < deadline {
            tokio::time::sleep(RETRY_SHARE).await;
            shared = self.share(redis).await;
        }
        if let Err(e) = shared {
            let unshared: Vec<(String, f64)> = self
                .unshared
                .lock()
                .expect("unshared spend lock")
                .iter()
                .map(|(counter, (_, delta))| (counter.clone(), *delta))
                .collect();
            tracing::warn!(
                ?unshared,
                error = %e,
                "spend counted in memory while Redis was away is not in Redis: the other replicas will not count it"
            );
            return false;
        }
        settled
    }

    /// The Redis store, when counting there.
    pub fn redis(&self) -> Option<&RedisStore> {
        self.redis.as_ref()
    }

    fn kind(&self) -> Counted {
        if self.redis.is_some() {
            Counted::Redis
        } else {
            Counted::Memory
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn windows_are_utc_days_and_months() {
        // 2026-11-28T23:59:59Z and one second later
        let t = 1_795_910_399;
        assert_eq!(window(Period::Day, at(t)), "2026-11-28");
        assert_eq!(window(Period::Day, at(t + 1)), "2026-11-29");
        assert_eq!(window(Period::Month, at(t)), "2026-11");
        // 2024-02-29 (leap day) and 2000-03-01
        assert_eq!(window(Period::Day, at(1_709_164_800)), "2024-02-29");
        assert_eq!(window(Period::Day, at(951_868_800)), "2000-03-01");
        assert_eq!(window(Period::Month, at(0)), "1970-01");
    }

    fn budgets() -> Vec<Budget> {
        vec![
            Budget {
                scope: Scope::Tenant,
                id: None,
                period: Period::Day,
                limit_usd: 1.0,
            },
            Budget {
                scope: Scope::Tier,
                id: Some("free".into()),
                period: Period::Month,
                limit_usd: 10.0,
            },
        ]
    }

    #[test]
    fn caps_apply_by_identity() {
        let who = Identity {
            key: None,
            tenant: Some("acme".into()),
            tier: Some("free".into()),
        };
        let caps = caps_for(&budgets(), &who, at(1_795_910_399));
        assert_eq!(caps.len(), 2);
        assert_eq!(caps[0].counter, "tenant:acme:day:2026-11-28");
        assert_eq!(caps[0].label, "tenant:acme per day");
        assert_eq!(caps[1].counter, "tier:free:month:2026-11");
        let pro = Identity {
            tier: Some("pro".into()),
            ..Identity::default()
        };
        assert!(caps_for(&budgets(), &pro, at(0)).is_empty());
    }

    #[test]
    fn reservations_are_all_or_nothing_and_roll_over_with_the_window() {
        let store = MemoryStore::default();
        let who = Identity {
            tenant: Some("acme".into()),
            tier: Some("free".into()),
            ..Identity::default()
        };
        let day1 = caps_for(&budgets(), &who, at(1_795_910_399));
        for _ in 0..4 {
            store.reserve(&day1, 0.25).unwrap();
        }
        let refused = store.reserve(&day1, 0.25).unwrap_err();
        assert_eq!(refused.label, "tenant:acme per day");
        assert!((refused.spent_usd - 1.0).abs() < 1e-9);
        // the refused reservation charged nothing, not even the tier cap
        assert!((store.spent("tier:free:month:2026-11") - 1.0).abs() < 1e-9);
        // a new day has room again; the month keeps counting
        let day2 = caps_for(&budgets(), &who, at(1_795_910_400));
        store.reserve(&day2, 0.25).unwrap();
        assert!((store.spent("tier:free:month:2026-11") - 1.25).abs() < 1e-9);
        store.adjust(&day2, 2.0);
        assert!(store.reserve(&day2, 0.01).is_err());
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_cap() {
        let store = std::sync::Arc::new(MemoryStore::default());
        let who = Identity {
            tenant: Some("t".into()),
            ..Identity::default()
        };
        let caps = caps_for(&budgets(), &who, at(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (store, caps) = (store.clone(), caps.clone());
                std::thread::spawn(move || {
                    (0..100)
                        .filter(|_| store.reserve(&caps, 0.003).is_ok())
                        .count()
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        let spent = store.spent(&caps[0].counter);
        assert!(spent <= 1.0 + 1e-9, "{spent}");
        assert!(spent > 1.0 - 0.003, "{spent}");
        assert_eq!(granted, 333);
    }
}
