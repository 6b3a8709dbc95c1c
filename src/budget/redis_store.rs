//! Spend counters, rate-limit buckets and health marks in Redis, shared by replicas: the Lua
//! scripts that make each change atomic, and the store that backs off while Redis is away.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{CapKey, Refusal};

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
        let each: Vec<(&CapKey, f64)> = caps.iter().map(|cap| (cap, delta)).collect();
        self.adjust_each(&each).await
    }

    /// Adds each delta to its cap's counter, all in one transaction: all are added or none.
    pub async fn adjust_each(&self, deltas: &[(&CapKey, f64)]) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for &(cap, delta) in deltas {
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
