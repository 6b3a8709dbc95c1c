//! Model health marks: which models are down, and until when. An operator's mark (the admin
//! endpoint) and the proxy's automatic mark-down after failed tries are the same kind of mark.
//!
//! Without Redis the marks are this process's. With Redis ([`Health::shared`]) every mark is
//! written there as a key that expires by itself, and every replica reads all of them every
//! [`SYNC_EVERY`], so a model marked down on one replica is skipped by the others' next
//! decisions. While Redis does not answer, marks are kept in this process (decisions go on with
//! them and with the shared marks last read) and written to Redis, in order, once it answers
//! again; the Redis store logs the change of state once, not every call.
//!
//! Decisions read the marks synchronously, from memory: Redis is never on a decision's path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::budget::{RedisError, RedisStore};

/// How often a replica reads the shared marks (one Redis call each time).
pub const SYNC_EVERY: Duration = Duration::from_millis(100);

/// How long the admin endpoints wait after writing a shared mark before they answer: two
/// reads of every replica, so that once the call returns, the other replicas' next decisions
/// see it (unless a replica is too loaded to read Redis in time).
pub const SETTLE: Duration = Duration::from_millis(250);

/// Models marked down, each until its mark expires.
#[derive(Debug, Default)]
pub struct Health {
    /// Marks of this process: all of them without Redis; with Redis, the ones Redis has not
    /// taken yet because it did not answer.
    local: Mutex<HashMap<String, Instant>>,
    shared: Option<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: RedisStore,
    /// Redis's marks as last read (and this process's own since), each until its expiry.
    view: Mutex<HashMap<String, Instant>>,
    /// Changes Redis did not take, in order, written when it answers again.
    pending: Mutex<Vec<Change>>,
    /// Held while Redis is written or read, so that a read begun before this process's own
    /// mark cannot replace the view without it.
    exchange: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
enum Change {
    Down { model: String, until: Instant },
    Up { model: String },
}

fn live(marks: &mut HashMap<String, Instant>, model: &str, now: Instant) -> bool {
    match marks.get(model) {
        Some(until) if *until > now => true,
        Some(_) => {
            marks.remove(model);
            false
        }
        None => false,
    }
}

impl Health {
    /// Marks shared through `store` by every replica using the same Redis and prefix. Call
    /// [`Health::spawn_sync`] on it to read the other replicas' marks.
    pub fn shared(store: RedisStore) -> Self {
        Health {
            local: Mutex::default(),
            shared: Some(Shared {
                store,
                view: Mutex::default(),
                pending: Mutex::default(),
                exchange: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Whether marks are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Reads the shared marks every [`SYNC_EVERY`] until `health` is dropped (in the current
    /// tokio runtime). Does nothing for marks of one process.
    pub fn spawn_sync(health: &Arc<Health>) {
        if !health.is_shared() {
            return;
        }
        let weak: Weak<Health> = Arc::downgrade(health);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SYNC_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(health) = weak.upgrade() else {
                    return;
                };
                // a failure is logged once by the store; the marks in memory keep serving
                let _ = health.sync().await;
            }
        });
    }

    /// Marks `model` down for `ttl`; whether the mark reached Redis (every replica sees it).
    /// A mark that could not is kept here and written when Redis answers again.
    pub async fn mark_down(&self, model: &str, ttl: Duration) -> bool {
        let until = Instant::now() + ttl;
        let Some(shared) = &self.shared else {
            self.local
                .lock()
                .expect("health lock")
                .insert(model.to_string(), until);
            return false;
        };
        let _exchange = shared.exchange.lock().await;
        // behind changes still waiting for Redis, so that they reach it in order
        let queued = !shared.pending.lock().expect("health lock").is_empty();
        let written = if queued {
            Err(())
        } else {
            shared.store.mark_down(model, ttl).await.map_err(drop)
        };
        match written {
            Ok(()) => {
                shared
                    .view
                    .lock()
                    .expect("health lock")
                    .insert(model.to_string(), until);
                true
            }
            Err(_) => {
                self.local
                    .lock()
                    .expect("health lock")
                    .insert(model.to_string(), until);
                shared
                    .pending
                    .lock()
                    .expect("health lock")
                    .push(Change::Down {
                        model: model.to_string(),
                        until,
                    });
                false
            }
        }
    }

    /// Clears `model`'s mark, here and in Redis; whether it was down.
    pub async fn mark_up(&self, model: &str) -> bool {
        let now = Instant::now();
        let mut was_down = {
            let mut local = self.local.lock().expect("health lock");
            let was = live(&mut local, model, now);
            local.remove(model);
            was
        };
        let Some(shared) = &self.shared else {
            return was_down;
        };
        let _exchange = shared.exchange.lock().await;
        {
            let mut view = shared.view.lock().expect("health lock");
            was_down |= live(&mut view, model, now);
            view.remove(model);
        }
        let queued = !shared.pending.lock().expect("health lock").is_empty();
        let written = if queued {
            Err(())
        } else {
            shared.store.mark_up(model).await.map_err(drop)
        };
        match written {
            Ok(was_in_redis) => was_down || was_in_redis,
            Err(_) => {
                shared
                    .pending
                    .lock()
                    .expect("health lock")
                    .push(Change::Up {
                        model: model.to_string(),
                    });
                was_down
            }
        }
    }

    /// Whether `model` is down now (an expired mark counts as up, and is dropped).
    pub fn is_down(&self, model: &str) -> bool {
        let now = Instant::now();
        if live(&mut self.local.lock().expect("health lock"), model, now) {
            return true;
        }
        self.shared
            .as_ref()
            .is_some_and(|shared| live(&mut shared.view.lock().expect("health lock"), model, now))
    }

    /// Models down now, with the seconds left on each mark.
    pub fn snapshot(&self) -> Vec<(String, f64)> {
        let now = Instant::now();
        let mut marks: HashMap<String, Instant> = self.local.lock().expect("health lock").clone();
        if let Some(shared) = &self.shared {
            for (model, until) in shared.view.lock().expect("health lock").iter() {
                let at = marks.entry(model.clone()).or_insert(*until);
                *at = (*at).max(*until);
            }
        }
        let mut out: Vec<(String, f64)> = marks
            .into_iter()
            .filter(|(_, until)| *until > now)
            .map(|(m, until)| (m, (until - now).as_secs_f64()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Writes the changes Redis missed, then reads every replica's marks from it.
    pub async fn sync(&self) -> Result<(), RedisError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let _exchange = shared.exchange.lock().await;
        let pending = std::mem::take(&mut *shared.pending.lock().expect("health lock"));
        for (i, change) in pending.iter().enumerate() {
            let written = match change {
                Change::Down { model, until } => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        Ok(())
                    } else {
                        let written = shared.store.mark_down(model, left).await;
                        if written.is_ok() {
                            // in force here even if the read below fails
                            shared
                                .view
                                .lock()
                                .expect("health lock")
                                .insert(model.clone(), *until);
                        }
                        written
                    }
                }
                Change::Up { model } => {
                    let written = shared.store.mark_up(model).await.map(|_| ());
                    if written.is_ok() {
                        // a Down replayed before it may have put the mark back in the view
                        shared.view.lock().expect("health lock").remove(model);
                    }
                    written
                }
            };
            if let Err(e) = written {
                // the rest waits for the next try, ahead of anything newer
                let mut queue = shared.pending.lock().expect("health lock");
                let newer = std::mem::take(&mut *queue);
                *queue = pending[i..].to_vec();
                queue.extend(newer);
                return Err(e);
            }
        }
        // what was written is Redis's now
        if !pending.is_empty() {
            let mut local = self.local.lock().expect("health lock");
            for change in &pending {
                if let Change::Down { model, until } = change
                    && local.get(model) == Some(until)
                {
                    local.remove(model);
                }
            }
        }
        let marks = shared.store.health_marks().await?;
        let now = Instant::now();
        *shared.view.lock().expect("health lock") = marks
            .into_iter()
            .map(|(model, left)| (model, now + left))
            .collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn marks_of_one_process_expire_and_clear() {
        let health = Health::default();
        assert!(!health.mark_down("a", Duration::from_secs(60)).await);
        health.mark_down("b", Duration::from_millis(1)).await;
        std::thread::sleep(Duration::from_millis(5));
        assert!(health.is_down("a"));
        assert!(!health.is_down("b"), "an expired mark counts as up");
        assert_eq!(health.snapshot().len(), 1);
        assert!(health.mark_up("a").await);
        assert!(!health.mark_up("a").await);
        assert!(!health.is_down("a"));
    }
}
