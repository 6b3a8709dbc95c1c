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
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

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

/// Reserve atomically in Redis: check every cap, then charge them all.
/// KEYS: counters. ARGV: cost, then a (limit, ttl seconds) pair per key. Returns `{i, spent}`
/// when cap `i` refuses, else `{0, total...}`: each counter's total after the charge.
const RESERVE_LUA: &str = r#"
local cost = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local spent = tonumber(redis.call('GET', key) or '0')
  if spent + cost > tonumber(ARGV[2 * i]) then
    return {i, tostring(spent)}
  end
end
local totals = {0}
for i, key in ipairs(KEYS) do
  table.insert(totals, redis.call('INCRBYFLOAT', key, ARGV[1]))
  redis.call('EXPIRE', key, ARGV[2 * i + 1])
end
return totals
"#;

/// Takes one token from a caller's bucket (`KEYS[1]`, a hash of `tokens` and `at`), refilled at
/// `ARGV[1]` a second up to `ARGV[2]`, on Redis's clock so that replicas agree. Returns
/// `{1, "0"}` when a token was taken, else `{0, seconds until one is there}`.
const TAKE_TOKEN_LUA: &str = r#"
local now = redis.call('TIME')
now = tonumber(now[1]) + tonumber(now[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1]) or burst
local at = tonumber(held[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  taken = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
-- a bucket left alone refills completely: then it holds nothing worth keeping
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return {taken, tostring(wait)}
"#;

/// Every model marked down (KEYS[1], a set of model names) whose mark (ARGV[1] .. model) has
/// not expired, with its milliseconds left, as a flat list; names whose mark expired leave the
/// set.
const HEALTH_MARKS_LUA: &str = r#"
local out = {}
for _, model in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local left = redis.call('PTTL', ARGV[1] .. model)
  if left > 0 then
    table.insert(out, model)
    table.insert(out, tostring(left))
  else
    redis.call('SREM', KEYS[1], model)
  end
end
return out
"#;

/// Errors talking to Redis.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(String);

/// What Redis made of a reservation.
#[derive(Debug, Clone, PartialEq)]
pub enum Reserved {
    /// Charged: each cap's counter total after the charge, in the caps' order.
    Charged(Vec<f64>),
    /// The cap that refused, with what it had spent.
    Refused(Refusal),
}

/// Spend counters in Redis, shared by replicas.
#[derive(Clone)]
pub struct RedisStore {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
    take_token: redis::Script,
    health_marks: redis::Script,
    /// Until when Redis is left alone after it failed to answer (shared by the clones).
    resting: Arc<Mutex<Option<Instant>>>,
}

/// How long Redis is left alone after a call failed: meanwhile every request counts in memory
/// at once, instead of each waiting for the timeout.
/// One second: a decision waits at most once a second for a Redis that is away, and a Redis
/// that is back is used again (health marks shared again) within about a second.
const REDIS_REST: Duration = Duration::from_secs(1);

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

fn redis_err(e: redis::RedisError) -> RedisError {
    RedisError(e.to_string())
}

impl RedisStore {
    /// How long a decision may wait for Redis before it is counted in memory instead.
    pub const TIMEOUT: Duration = Duration::from_millis(500);

    /// Connects to `url` (`redis://host:port/db`); counters are named `{prefix}budget:...`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, RedisError> {
        Self::connect_with_timeout(url, prefix, Self::TIMEOUT).await
    }

    /// [`RedisStore::connect`], waiting up to `timeout` to connect and for each answer.
    pub async fn connect_with_timeout(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        let client = redis::Client::open(url).map_err(redis_err)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1);
        let conn = redis::aio::ConnectionManager::new_with_config(client, config)
            .await
            .map_err(redis_err)?;
        Ok(RedisStore {
            conn,
            prefix: prefix.to_string(),
            script: redis::Script::new(RESERVE_LUA),
            take_token: redis::Script::new(TAKE_TOKEN_LUA),
            health_marks: redis::Script::new(HEALTH_MARKS_LUA),
            resting: Arc::default(),
        })
    }

    /// Sends `request` unless Redis failed within the last [`REDIS_REST`]; logs when Redis
    /// stops and starts answering, not on every request.
    async fn guarded<T>(
        &self,
        request: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, RedisError> {
        let resting = *self.resting.lock().expect("redis state lock");
        if let Some(until) = resting.filter(|until| Instant::now() < *until) {
            let left = until.saturating_duration_since(Instant::now());
            return Err(RedisError(format!(
                "not answering; trying again in {:.1} s",
                left.as_secs_f64()
            )));
        }
        let result = request.await;
        let mut resting = self.resting.lock().expect("redis state lock");
        match result {
            Ok(value) => {
                if resting.take().is_some() {
                    tracing::info!(
                        "Redis answers again; counting spend and sharing health marks there"
                    );
                }
                Ok(value)
            }
            Err(e) => {
                if resting.is_none() {
                    tracing::warn!(error = %e, rest_s = REDIS_REST.as_secs_f64(), "Redis does not answer; counting spend and keeping health marks in this process, trying Redis again after a rest");
                }
                *resting = Some(Instant::now() + REDIS_REST);
                Err(redis_err(e))
            }
        }
    }

    /// Takes one request from `caller`'s rate-limit bucket, shared by every replica using this
    /// Redis, or says how long until one is there. The bucket's key holds a hash of `caller`,
    /// not the caller (it may be an API key).
    pub async fn take_token(
        &self,
        caller: &str,
        per_second: f64,
        burst: f64,
    ) -> Result<Result<(), Duration>, RedisError> {
        let key = self.hashed_key("rate", caller, 12);
        let mut conn = self.conn.clone();
        let mut script = self.take_token.key(key);
        script.arg(per_second).arg(burst);
        let (taken, wait): (u8, String) = self.guarded(script.invoke_async(&mut conn)).await?;
        Ok(if taken == 1 {
            Ok(())
        } else {
            let wait = wait.parse::<f64>().unwrap_or(1.0).max(0.0);
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(1)))
        })
    }

    fn health_key(&self, model: &str) -> String {
        format!("{}health:down:{model}", self.prefix)
    }

    fn health_index(&self) -> String {
        format!("{}health:models", self.prefix)
    }

    /// Marks `model` down for every replica for `ttl` (a key that expires by itself).
    pub async fn mark_down(&self, model: &str, ttl: Duration) -> Result<(), RedisError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(self.health_key(model))
            .arg(1)
            .arg("PX")
            .arg(ms)
            .ignore()
            .cmd("SADD")
            .arg(self.health_index())
            .arg(model)
            .ignore();
        let mut conn = self.conn.clone();
        self.guarded(pipe.query_async::<()>(&mut conn)).await
    }

    /// Clears `model`'s mark for every replica; whether there was one.
    pub async fn mark_up(&self, model: &str) -> Result<bool, RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.health_key(model))
            .cmd("SREM")
            .arg(self.health_index())
            .arg(model)
            .ignore();
        let mut conn = self.conn.clone();
        let (deleted,): (u64,) = self.guarded(pipe.query_async(&mut conn)).await?;
        Ok(deleted > 0)
    }

    /// Every replica's marks: each model down, with the time left on its mark.
    pub async fn health_marks(&self) -> Result<Vec<(String, Duration)>, RedisError> {
        let mut script = self.health_marks.key(self.health_index());
        script.arg(format!("{}health:down:", self.prefix));
        let mut conn = self.conn.clone();
        let flat: Vec<String> = self.guarded(script.invoke_async(&mut conn)).await?;
        Ok(flat
            .chunks_exact(2)
            .filter_map(|pair| {
                let ms = pair[1].parse::<u64>().ok()?;
                Some((pair[0].clone(), Duration::from_millis(ms)))
            })
            .collect())
    }

    fn session_key(&self, session: &str) -> String {
        self.hashed_key("session", session, 16)
    }

    /// The key `{prefix}{kind}:{hash}` of a value kept out of Redis in clear (an API key, a
    /// session key): the first `bytes` of its SHA-256, in hex.
    fn hashed_key(&self, kind: &str, value: &str, bytes: usize) -> String {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(value.as_bytes());
        format!(
            "{}{kind}:{}",
            self.prefix,
            crate::config::hex(&hash[..bytes])
        )
    }

    /// The model a sticky session is on, if it is kept (its key holds a hash of the session
    /// key, not the key).
    pub async fn session(&self, session: &str) -> Result<Option<String>, RedisError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.session_key(session));
        self.guarded(cmd.query_async(&mut conn)).await
    }

    /// Keeps a sticky session on `model` for `ttl` from now.
    pub async fn keep_session(
        &self,
        session: &str,
        model: &str,
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.session_key(session))
            .arg(model)
            .arg("PX")
            .arg(ms);
        self.guarded(cmd.query_async::<()>(&mut conn)).await
    }

    fn key(&self, counter: &str) -> String {
        format!("{}budget:{counter}", self.prefix)
    }

    /// Reserves `cost` against every cap, or none: the counters' totals after the charge, or
    /// the cap that refused.
    pub async fn reserve(&self, caps: &[CapKey], cost: f64) -> Result<Reserved, RedisError> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(cost);
        for cap in caps {
            inv.key(self.key(&cap.counter));
            inv.arg(cap.limit_usd).arg(cap.ttl.as_secs());
        }
        let mut conn = self.conn.clone();
        let (failed, totals): (usize, Vec<String>) = self
            .guarded(async {
                let mut reply: Vec<redis::Value> = inv.invoke_async(&mut conn).await?;
                let failed = if reply.is_empty() {
                    0
                } else {
                    redis::from_redis_value(&reply.remove(0))?
                };
                let totals = reply
                    .iter()
                    .map(redis::from_redis_value)
                    .collect::<redis::RedisResult<Vec<String>>>()?;
                Ok((failed, totals))
            })
            .await?;
        let totals: Vec<f64> = totals.iter().map(|t| t.parse().unwrap_or(0.0)).collect();
        Ok(match failed {
            0 => Reserved::Charged(totals),
            i => {
                let cap = &caps[i - 1];
                Reserved::Refused(Refusal {
                    label: cap.label.clone(),
                    limit_usd: cap.limit_usd,
                    spent_usd: totals.first().copied().unwrap_or(0.0),
                })
            }
        })
    }

    /// Adds `delta` to every cap's counter.
    pub async fn adjust(&self, caps: &[CapKey], delta: f64) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for cap in caps {
            let key = self.key(&cap.counter);
            pipe.cmd("INCRBYFLOAT")
                .arg(&key)
                .arg(delta)
                .ignore()
                .cmd("EXPIRE")
                .arg(&key)
                .arg(cap.ttl.as_secs())
                .ignore();
        }
        let mut conn = self.conn.clone();
        self.guarded(pipe.query_async::<()>(&mut conn)).await
    }
}

/// Where spend is counted: memory, or Redis with memory as the fallback. What is counted in
/// memory while Redis does not answer is written to Redis once it answers again (before the next
/// reservation there), so that the other replicas count it too.
#[derive(Debug)]
pub struct Ledger {
    memory: MemoryStore,
    redis: Option<RedisStore>,
    /// Spend counted in memory during an outage, by counter, not yet in Redis.
    unshared: Mutex<HashMap<String, (CapKey, f64)>>,
}

impl Ledger {
    /// Counts in this process only.
    pub fn in_memory() -> Self {
        Ledger {
            memory: MemoryStore::default(),
            redis: None,
            unshared: Mutex::default(),
        }
    }

    /// Counts in Redis, falling back to memory when Redis fails.
    pub fn with_redis(store: RedisStore) -> Self {
        Ledger {
            memory: MemoryStore::default(),
            redis: Some(store),
            unshared: Mutex::default(),
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
        for (i, (cap, delta)) in pending.iter().enumerate() {
            if let Err(e) = redis.adjust(std::slice::from_ref(cap), *delta).await {
                for (cap, delta) in &pending[i..] {
                    self.keep_unshared(std::slice::from_ref(cap), *delta);
                }
                return Err(e);
            }
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
