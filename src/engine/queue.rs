//! The engine's job queue: bounded, first in first out for jobs, last in first out for workers.
//!
//! A new job wakes the worker that went idle most recently. At low load that is the worker whose
//! model session is still in the CPU's caches: a channel would wake the idle workers in turn, so
//! that every prompt ran on the session that had been idle longest, its weights evicted by the
//! others (on this 2-core machine, at concurrency 1, a forward pass of the default model took
//! 2.07 ms on the rotated sessions against 1.65 ms for a bare session; `benches/scale.rs`). At
//! high load every worker is busy and takes the next job as soon as it is done, as before.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused<T> {
    /// The queue holds its capacity.
    Full(T),
    /// The queue is closed (the engine is shutting down).
    Closed(T),
}

/// One idle worker's wake-up call.
#[derive(Default)]
pub(super) struct Bell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Bell {
    fn ring(&self) {
        *self.rung.lock().expect("bell lock") = true;
        self.cv.notify_one();
    }

    fn wait(&self) {
        let mut rung = self.rung.lock().expect("bell lock");
        while !*rung {
            rung = self.cv.wait(rung).expect("bell lock");
        }
        *rung = false;
    }
}

struct State<T> {
    jobs: VecDeque<T>,
    /// Idle workers, the most recently idle last.
    idle: Vec<Arc<Bell>>,
    /// Workers woken for a job that have not taken the lock since: still idle, for a share.
    woken: usize,
    /// Workers running; the last one to end closes the queue.
    workers: usize,
    closed: bool,
}

/// A bounded job queue whose idle workers are woken last in, first out.
pub(super) struct Queue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

impl<T> Queue<T> {
    pub(super) fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                idle: Vec::new(),
                woken: 0,
                workers: 0,
                closed: false,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().expect("queue lock")
    }

    /// Queues `job` and wakes the most recently idle worker, if one is idle.
    pub(super) fn push(&self, job: T) -> Result<(), Refused<T>> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed(job));
        }
        if state.jobs.len() >= self.capacity {
            return Err(Refused::Full(job));
        }
        state.jobs.push_back(job);
        let bell = state.idle.pop();
        if bell.is_some() {
            state.woken += 1;
        }
        drop(state);
        if let Some(bell) = bell {
            bell.ring();
        }
        Ok(())
    }

    /// Jobs waiting.
    pub(super) fn len(&self) -> usize {
        self.lock().jobs.len()
    }

    /// Room left.
    pub(super) fn free(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }

    /// Blocks until jobs wait, then takes the first and more while `fits` holds, in order, up
    /// to `most(waiting, idle)` in all (`waiting`: the jobs queued; `idle`: the other workers
    /// idle or woken for them); `None` once the queue is closed and empty.
    pub(super) fn take(
        &self,
        bell: &Arc<Bell>,
        most: impl Fn(usize, usize) -> usize,
        mut fits: impl FnMut(&[T], &T) -> bool,
    ) -> Option<Vec<T>> {
        let mut state = self.lock();
        loop {
            if let Some(first) = state.jobs.pop_front() {
                let most = most(state.jobs.len() + 1, state.idle.len() + state.woken);
                let mut batch = vec![first];
                while batch.len() < most {
                    match state.jobs.front() {
                        Some(next) if fits(&batch, next) => {
                            batch.extend(state.jobs.pop_front());
                        }
                        _ => break,
                    }
                }
                return Some(batch);
            }
            if state.closed {
                return None;
            }
            state.idle.push(Arc::clone(bell));
            drop(state);
            bell.wait();
            state = self.lock();
            // rung by `push` (one fewer woken) or by `close` (which woke every idle worker)
            state.woken = state.woken.saturating_sub(1);
        }
    }

    /// A worker starts taking jobs.
    pub(super) fn join(&self) {
        self.lock().workers += 1;
    }

    /// A worker has ended (returned or panicked): once none is left, the queue closes, so that
    /// callers are refused at once instead of waiting for a worker that will never come.
    pub(super) fn leave(&self) {
        let mut state = self.lock();
        state.workers = state.workers.saturating_sub(1);
        let last = state.workers == 0;
        drop(state);
        if last {
            self.close();
        }
    }

    /// Closes the queue: no job is queued any more; workers take what is queued, then end.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let idle = std::mem::take(&mut state.idle);
        drop(state);
        idle.iter().for_each(|b| b.ring());
    }
}

/// A worker's own bell, to pass to [`Queue::take`].
pub(super) fn bell() -> Arc<Bell> {
    Arc::new(Bell::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_full_queue_refuses_and_a_closed_one_too() {
        let q = Queue::new(2);
        assert_eq!(q.push(1), Ok(()));
        assert_eq!(q.push(2), Ok(()));
        assert_eq!(q.push(3), Err(Refused::Full(3)));
        assert_eq!((q.len(), q.free()), (2, 0));
        q.close();
        assert_eq!(q.push(4), Err(Refused::Closed(4)));
        // what was queued is still taken, then the workers end
        let b = bell();
        assert_eq!(q.take(&b, |_, _| 8, |_, _| true), Some(vec![1, 2]));
        assert_eq!(q.take(&b, |_, _| 8, |_, _| true), None);
    }

    #[test]
    fn the_last_worker_to_end_closes_the_queue() {
        let q = Queue::new(4);
        q.join();
        q.join();
        q.leave();
        assert_eq!(q.push(1), Ok(()));
        q.leave();
        assert_eq!(q.push(2), Err(Refused::Closed(2)));
    }

    #[test]
    fn a_batch_takes_jobs_in_order_while_they_fit() {
        let q = Queue::new(10);
        for j in [1, 2, 30, 4] {
            q.push(j).unwrap();
        }
        let b = bell();
        // at most three; a job fits while the batch's sum stays under 10
        let fits = |batch: &[i32], next: &i32| batch.iter().sum::<i32>() + next < 10;
        assert_eq!(q.take(&b, |_, _| 3, fits), Some(vec![1, 2]));
        assert_eq!(q.take(&b, |_, _| 3, fits), Some(vec![30]));
        assert_eq!(
            q.take(
                &b,
                |waiting, idle| {
                    assert_eq!((waiting, idle), (1, 0));
                    3
                },
                fits
            ),
            Some(vec![4])
        );
    }

    #[test]
    fn the_most_recently_idle_worker_takes_the_next_job() {
        let q = Arc::new(Queue::new(16));
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        for w in 0..3 {
            let q2 = Arc::clone(&q);
            let tx = tx.clone();
            handles.push(std::thread::spawn(move || {
                let q = q2;
                let b = bell();
                while let Some(batch) = q.take(&b, |_, _| 1, |_, _| true) {
                    tx.send((w, batch[0])).unwrap();
                }
            }));
            // wait until this worker is idle, so the idle order is 0, 1, 2
            while q.lock().idle.len() < w + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // each job after the previous is answered: the same (last idle) worker takes them all
        for j in 0..5 {
            q.push(j).unwrap();
            let (w, got) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!((w, got), (2, j));
            while q.lock().idle.len() < 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        q.close();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }
}
