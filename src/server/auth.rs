//! Who a caller is and whether it may ask: API keys and the admin key (compared in constant
//! time), identity headers, and per-caller rate limits (in Redis when spend is, else here).

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

use sha2::{Digest, Sha256};

use super::{ApiError, AppState};
use crate::budget::Identity;

impl AppState {
    /// Admits a caller of the route, usage and proxy endpoints: its API key (when keys are
    /// required, compared in constant time), then its request rate: in Redis when spend is
    /// counted there, so that the limit holds across replicas, else (or while Redis does not
    /// answer) in this process.
    pub(super) async fn admit_caller(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let given = bearer(headers);
        if let Some(keys) = &self.api_keys {
            // every key is compared, so that the time taken does not say which one was close
            let known = keys.iter().fold(false, |found, k| {
                found | constant_time_eq(given.as_bytes(), k.as_bytes())
            });
            if !known {
                return Err(ApiError::Unauthorized(
                    "send an API key as `Authorization: Bearer <key>` or `x-api-key: <key>` (this server requires one)"
                        .into(),
                ));
            }
        }
        if let Some(limiter) = &self.rate_limit {
            let who = identity(headers);
            let caller = who
                .key
                .map(|k| format!("key:{k}"))
                .or(who.tenant.map(|t| format!("tenant:{t}")))
                .unwrap_or_default();
            let shared = match self.ledger.redis() {
                Some(store) => store
                    .take_token(&caller, limiter.per_second, limiter.burst)
                    .await
                    .inspect_err(|e| {
                        tracing::debug!(error = %e, "rate-limit store unavailable; limiting in this process");
                    })
                    .ok(),
                None => None,
            };
            let verdict = shared.unwrap_or_else(|| limiter.check(&caller, Instant::now()));
            if let Err(wait) = verdict {
                return Err(ApiError::RateLimited {
                    retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
                });
            }
        }
        Ok(())
    }

    /// Admits a caller of an admin endpoint, comparing keys in constant time.
    pub(super) fn admit_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.admin_key else {
            return Err(ApiError::Forbidden(
                "the admin endpoints are off; start `pointsman serve` with --admin-key".into(),
            ));
        };
        let given = bearer(headers);
        if constant_time_eq(given.as_bytes(), key.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(
                "send the admin key as `Authorization: Bearer <key>`".into(),
            ))
        }
    }
}

/// The token of `Authorization: Bearer <token>`, else of `x-api-key: <token>` (how the
/// Anthropic SDKs send their key), or "".
pub(super) fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(|c: char| c.is_ascii_whitespace())?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .or_else(|| {
            headers
                .get("x-api-key")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        })
        .unwrap_or("")
}

/// Token buckets, one per caller, refilled continuously.
pub(super) struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<String, (f64, Instant)>>,
}

/// Callers tracked before idle, full buckets are swept.
pub(super) const RATE_LIMIT_SWEEP_AT: usize = 10_000;

impl RateLimiter {
    pub(super) fn new(per_second: f64, burst: u32) -> Self {
        // at least one request an hour, so that waits stay finite
        let per_second = per_second.max(1.0 / 3600.0);
        RateLimiter {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Default::default(),
        }
    }

    /// Takes one token from `caller`'s bucket, or says how long until one is there.
    pub(super) fn check(&self, caller: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().expect("rate-limit lock");
        if buckets.len() >= RATE_LIMIT_SWEEP_AT && !buckets.contains_key(caller) {
            let (rate, burst) = (self.per_second, self.burst);
            // a bucket that has refilled holds no information
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets
            .entry(caller.to_string())
            .or_insert((self.burst, now));
        let refilled = (*tokens
            + now.saturating_duration_since(*at).as_secs_f64() * self.per_second)
            .min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_second))
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths (`subtle`).
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}

/// Who a request is for: `x-pointsman-tenant`, `x-pointsman-tier`, and the API key from
/// `Authorization: Bearer ...`, kept only as a hash prefix.
pub(super) fn identity(headers: &HeaderMap) -> Identity {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    // the key as [`bearer`] reads it, so that spacing cannot make one key two callers
    let key = Some(bearer(headers))
        .filter(|k| !k.is_empty())
        .map(|k| crate::config::hex(&Sha256::digest(k.as_bytes()))[..16].to_string());
    Identity {
        key,
        tenant: text("x-pointsman-tenant"),
        tier: text("x-pointsman-tier"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_is_one_caller_however_its_header_is_spaced() {
        let who = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            (bearer(&headers).to_string(), identity(&headers).key)
        };
        let plain = who("Bearer key-one");
        assert_eq!(plain.0, "key-one");
        for spaced in [
            "Bearer  key-one",
            "bearer key-one",
            " Bearer\tkey-one ",
            "BEARER key-one  ",
        ] {
            assert_eq!(who(spaced), plain, "{spaced:?}");
        }
        assert_eq!(who("Basic a2V5LW9uZQ=="), (String::new(), None));
    }

    #[test]
    fn rate_limits_allow_a_burst_then_refill_at_the_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", t0), Ok(()));
        }
        // empty: the next token is half a second away
        assert_eq!(limiter.check("a", t0), Err(Duration::from_millis(500)));
        assert_eq!(limiter.check("a", at(250)), Err(Duration::from_millis(250)));
        // another caller has its own bucket
        assert_eq!(limiter.check("b", t0), Ok(()));
        assert_eq!(limiter.check("a", at(500)), Ok(()));
        assert!(limiter.check("a", at(500)).is_err());
        // a long pause refills to the burst, not beyond
        for _ in 0..3 {
            assert_eq!(limiter.check("a", at(60_000)), Ok(()));
        }
        assert!(limiter.check("a", at(60_000)).is_err());
    }
}
