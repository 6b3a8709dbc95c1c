//! Sticky sessions: which model a conversation is on, kept for a while after its last turn, in
//! Redis when the replicas share one (and in the process meanwhile, if Redis is away), else in
//! the process. What a session may move to is the router's to say (`dispatch`); this module only
//! remembers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::budget::RedisStore;

/// Most sessions kept in the process; beyond it the ones closest to expiry are forgotten.
const MAX_SESSIONS: usize = 100_000;

/// The sessions' store.
#[derive(Debug)]
pub struct Sessions {
    ttl: Duration,
    local: Mutex<HashMap<String, (String, Instant)>>,
}

impl Sessions {
    /// Sessions kept `ttl` after their last turn.
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            ttl,
            local: Mutex::default(),
        }
    }

    /// The model `key`'s session is on: Redis's answer when `redis` is given and answers, the
    /// process's otherwise.
    pub async fn get(&self, key: &str, redis: Option<&RedisStore>) -> Option<String> {
        if let Some(store) = redis {
            match store.session(key).await {
                Ok(model) => return model,
                Err(e) => {
                    tracing::debug!(error = %e, "session read from the process (Redis is away)")
                }
            }
        }
        let local = self.local.lock().expect("session lock");
        local
            .get(key)
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(model, _)| model.clone())
    }

    /// Keeps `key`'s session on `model` for the ttl from now, in the process and in Redis.
    pub async fn keep(&self, key: &str, model: &str, redis: Option<&RedisStore>) {
        {
            let mut local = self.local.lock().expect("session lock");
            let now = Instant::now();
            if local.len() >= MAX_SESSIONS && !local.contains_key(key) {
                local.retain(|_, (_, until)| *until > now);
                if local.len() >= MAX_SESSIONS {
                    let mut expiries: Vec<Instant> = local.values().map(|(_, u)| *u).collect();
                    let cut = expiries.len() / 10;
                    let (_, nth, _) = expiries.select_nth_unstable(cut);
                    let nth = *nth;
                    local.retain(|_, (_, until)| *until > nth);
                }
            }
            local.insert(key.to_string(), (model.to_string(), now + self.ttl));
        }
        if let Some(store) = redis {
            if let Err(e) = store.keep_session(key, model, self.ttl).await {
                tracing::debug!(error = %e, "session kept in the process only (Redis is away)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_is_kept_for_its_ttl_and_moves_when_told() {
        let s = Sessions::new(Duration::from_millis(200));
        assert_eq!(s.get("a", None).await, None);
        s.keep("a", "small", None).await;
        assert_eq!(s.get("a", None).await.as_deref(), Some("small"));
        s.keep("a", "big", None).await;
        assert_eq!(s.get("a", None).await.as_deref(), Some("big"));
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(s.get("a", None).await, None);
    }
}
