//! The engine's job queue: bounded, first in first out for jobs, last in first out for workers,
//! and the keeper of the model sessions of the workers that wait.
//!
//! A new job wakes the worker that went idle most recently. At low load that is the worker whose
//! model session is still in the CPU's caches: a channel would wake the idle workers in turn, so
//! that every prompt ran on the session that had been idle longest, its weights evicted by the
//! others (on this 2-core machine, at concurrency 1, a forward pass of the default model took
//! 2.07 ms on the rotated sessions against 1.65 ms for a bare session; `benches/scale.rs`). At
//! high load every worker is busy and takes the next job as soon as it is done, as before.
//!
//! An idle worker leaves its session in the queue while it sleeps. When no job waits, a caller
//! may borrow that session ([`Queue::lend`]) and run its prompt on its own thread: no wake-up of
//! the worker, and none of the caller when the answer is ready (two thread wake-ups, 0.05-0.08
//! ms each on this virtual machine). The session goes back when the caller is done
//! ([`Queue::give_back`]); if jobs arrived meanwhile, it goes back to its worker, woken for them.

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

/// One idle worker's wake-up call: it hands the worker its session back.
pub(super) struct Bell<S> {
    session: Mutex<Option<S>>,
    cv: Condvar,
}

impl<S> Bell<S> {
    fn ring(&self, session: S) {
        *self.session.lock().expect("bell lock") = Some(session);
        self.cv.notify_one();
    }

    fn wait(&self) -> S {
        let mut slot = self.session.lock().expect("bell lock");
        loop {
            if let Some(session) = slot.take() {
                return session;
            }
            slot = self.cv.wait(slot).expect("bell lock");
        }
    }
}

/// A sleeping worker: its bell, and the session it left.
pub(super) type Idle<S> = (Arc<Bell<S>>, S);

struct State<T, S> {
    jobs: VecDeque<T>,
    /// Idle workers with their sessions, the most recently idle last.
    idle: Vec<Idle<S>>,
    /// Workers woken for a job that have not taken the lock since: still idle, for a share.
    woken: usize,
    /// Workers running; the last one to end closes the queue.
    workers: usize,
    closed: bool,
}

/// A bounded job queue whose idle workers are woken last in, first out.
pub(super) struct Queue<T, S> {
    state: Mutex<State<T, S>>,
    capacity: usize,
}

impl<T, S> Queue<T, S> {
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

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T, S>> {
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
        let idle = state.idle.pop();
        if idle.is_some() {
            state.woken += 1;
        }
        drop(state);
        if let Some((bell, session)) = idle {
            bell.ring(session);
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

    /// The session of the most recently idle worker, if no job waits (a job queued first is
    /// served first) and the queue is open. The worker sleeps on until [`Queue::give_back`].
    pub(super) fn lend(&self) -> Option<Idle<S>> {
        let mut state = self.lock();
        if state.closed || !state.jobs.is_empty() {
            return None;
        }
        state.idle.pop()
    }

    /// Returns a lent session: to the idle workers, or, if jobs arrived meanwhile or the queue
    /// closed, to its worker, woken for them.
    pub(super) fn give_back(&self, (bell, session): Idle<S>) {
        let mut state = self.lock();
        if state.jobs.is_empty() && !state.closed {
            state.idle.push((bell, session));
            return;
        }
        state.woken += 1;
        drop(state);
        bell.ring(session);
    }

    /// Blocks until jobs wait, then takes the first and more while `fits` holds, in order, up
    /// to `most(waiting, idle)` in all (`waiting`: the jobs queued; `idle`: the other workers
    /// idle or woken for them). While it waits, `session` is left in the queue (and may be lent);
    /// the batch comes with it. `None` once the queue is closed and empty (the session is
    /// dropped).
    pub(super) fn take(
        &self,
        bell: &Arc<Bell<S>>,
        mut session: S,
        most: impl Fn(usize, usize) -> usize,
        mut fits: impl FnMut(&[T], &T) -> bool,
    ) -> Option<(Vec<T>, S)> {
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
                return Some((batch, session));
            }
            if state.closed {
                return None;
            }
            state.idle.push((Arc::clone(bell), session));
            drop(state);
            session = bell.wait();
            state = self.lock();
            // rung by `push` or `give_back` (one fewer woken), or by `close` (which woke every
            // idle worker)
            state.woken = state.woken.saturating_sub(1);
        }
    }

    /// Waits (up to `limit`) until `n` workers are idle or the queue is closed: an engine
    /// starts with its sessions in the queue, ready to lend.
    pub(super) fn wait_idle(&self, n: usize, limit: std::time::Duration) {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            let state = self.lock();
            if state.idle.len() >= n || state.closed {
                return;
            }
            drop(state);
            std::thread::sleep(std::time::Duration::from_micros(200));
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

    /// Closes the queue: no job is queued or session lent any more; workers take what is
    /// queued, then end.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let idle = std::mem::take(&mut state.idle);
        drop(state);
        for (bell, session) in idle {
            bell.ring(session);
        }
    }
}

/// A worker's own bell, to pass to [`Queue::take`].
pub(super) fn bell<S>() -> Arc<Bell<S>> {
    Arc::new(Bell {
        session: Mutex::new(None),
        cv: Condvar::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Batches only, for a queue whose sessions are `()`.
    fn take<T>(
        q: &Queue<T, ()>,
        b: &Arc<Bell<()>>,
        most: impl Fn(usize, usize) -> usize,
        fits: impl FnMut(&[T], &T) -> bool,
    ) -> Option<Vec<T>> {
        q.take(b, (), most, fits).map(|(batch, ())| batch)
    }

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
        assert_eq!(take(&q, &b, |_, _| 8, |_, _| true), Some(vec![1, 2]));
        assert_eq!(take(&q, &b, |_, _| 8, |_, _| true), None);
    }

    #[test]
    fn the_last_worker_to_end_closes_the_queue() {
        let q = Queue::<i32, ()>::new(4);
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
        assert_eq!(take(&q, &b, |_, _| 3, fits), Some(vec![1, 2]));
        assert_eq!(take(&q, &b, |_, _| 3, fits), Some(vec![30]));
        assert_eq!(
            take(
                &q,
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

    /// Starts `n` workers whose sessions are their numbers; each sends (session, job) for every
    /// job it takes. Returns once all are idle, the last one started the most recently idle.
    fn workers(
        q: &Arc<Queue<i32, usize>>,
        n: usize,
    ) -> (
        mpsc::Receiver<(usize, i32)>,
        Vec<std::thread::JoinHandle<()>>,
    ) {
        let (tx, rx) = mpsc::channel();
        let mut handles = Vec::new();
        for w in 0..n {
            let (q2, tx) = (Arc::clone(q), tx.clone());
            handles.push(std::thread::spawn(move || {
                let (q, b) = (q2, bell());
                let mut session = w;
                while let Some((batch, s)) = q.take(&b, session, |_, _| 1, |_, _| true) {
                    tx.send((s, batch[0])).unwrap();
                    session = s;
                }
            }));
            wait_idle(q, w + 1);
        }
        (rx, handles)
    }

    fn wait_idle<T, S>(q: &Queue<T, S>, n: usize) {
        q.wait_idle(n, Duration::from_secs(5));
        assert!(q.lock().idle.len() >= n, "workers idle");
    }

    #[test]
    fn the_most_recently_idle_worker_takes_the_next_job() {
        let q = Arc::new(Queue::new(16));
        let (rx, handles) = workers(&q, 3);
        // each job after the previous is answered: the same (last idle) worker takes them all
        for j in 0..5 {
            q.push(j).unwrap();
            let (w, got) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!((w, got), (2, j));
            wait_idle(&q, 3);
        }
        q.close();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn an_idle_session_is_lent_while_no_job_waits_and_comes_back() {
        let q = Arc::new(Queue::new(16));
        let (rx, handles) = workers(&q, 2);
        // the most recently idle session first, then the other; then none is left
        let first = q.lend().unwrap();
        let second = q.lend().unwrap();
        assert_eq!((first.1, second.1), (1, 0));
        assert!(q.lend().is_none());
        // a job queued while both are lent waits for one to come back: to its own worker
        q.push(7).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        q.give_back(second);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (0, 7));
        // nothing waits: a session given back is idle again, and lent again
        wait_idle(&q, 1);
        q.give_back(first);
        let again = q.lend().unwrap();
        assert_eq!(again.1, 1);
        q.give_back(again);
        q.close();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn no_session_is_lent_while_a_job_waits_or_once_the_queue_is_closed() {
        let q = Queue::<i32, usize>::new(4);
        let b = bell();
        q.lock().idle.push((Arc::clone(&b), 0));
        q.lock().jobs.push_back(1);
        assert!(q.lend().is_none());
        q.lock().jobs.clear();
        q.close();
        assert!(q.lend().is_none());
        // closing rang the idle worker with its session, so that it can end
        assert_eq!(b.wait(), 0);
    }

    #[test]
    fn a_session_given_back_after_close_goes_to_its_worker_to_end() {
        let q = Arc::new(Queue::new(4));
        let (_rx, handles) = workers(&q, 1);
        let lent = q.lend().unwrap();
        q.close();
        q.give_back(lent);
        handles.into_iter().for_each(|h| h.join().unwrap());
    }
}
