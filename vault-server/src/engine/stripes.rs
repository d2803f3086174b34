//! The per-subject locks (striped by storage name). Writers of a subject
//! share its stripe; rotating or erasing the subject takes it exclusively.
//!
//! A shared guard is owned and `Send`: a write on the async request path
//! holds it across the await of its audit commit, until its batch is
//! durable. Exclusive holders wait for shared ones to leave, and shared
//! ones queue behind a waiting exclusive one (no rotation or erasure waits
//! behind an endless stream of writes), as `std::sync::RwLock` does.
//! Shared holders take several stripes in ascending order; an exclusive
//! holder takes one (a subject's rotation or erasure), or several in
//! ascending order too (a batch of the blind-index rebuild takes its
//! records' owners', an index-key rotation takes all): no cycle of waits.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// One stripe.
#[derive(Debug, Default)]
pub(crate) struct Stripe {
    state: Mutex<Holders>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Holders {
    shared: usize,
    exclusive: bool,
    /// Exclusive holders waiting: new shared ones wait behind them.
    exclusive_waiting: usize,
    /// Threads waiting at all (only then does a release notify).
    waiting: usize,
}

impl Holders {
    fn shared_may_enter(&self) -> bool {
        !self.exclusive && self.exclusive_waiting == 0
    }
}

/// A shared hold on a stripe, released when dropped.
#[derive(Debug)]
pub(crate) struct SharedGuard(Arc<Stripe>);

/// An exclusive hold on a stripe, released when dropped.
#[derive(Debug)]
pub(crate) struct ExclusiveGuard<'a>(&'a Stripe);

impl Stripe {
    fn lock(&self) -> MutexGuard<'_, Holders> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on the condition variable, counted as a waiter.
    fn wait<'a>(&self, mut h: MutexGuard<'a, Holders>) -> MutexGuard<'a, Holders> {
        h.waiting += 1;
        let mut h = self.changed.wait(h).unwrap_or_else(|p| p.into_inner());
        h.waiting -= 1;
        h
    }

    fn release(&self, h: MutexGuard<'_, Holders>) {
        let notify = h.waiting > 0;
        drop(h);
        if notify {
            self.changed.notify_all();
        }
    }

    /// A shared hold, waiting (blocking the thread) for an exclusive one.
    pub(crate) fn shared(self: &Arc<Self>) -> SharedGuard {
        let mut h = self.lock();
        while !h.shared_may_enter() {
            h = self.wait(h);
        }
        h.shared += 1;
        SharedGuard(Arc::clone(self))
    }

    /// A shared hold if one is free now (no exclusive holder or waiter).
    pub(crate) fn try_shared(self: &Arc<Self>) -> Option<SharedGuard> {
        let mut h = self.lock();
        if !h.shared_may_enter() {
            return None;
        }
        h.shared += 1;
        Some(SharedGuard(Arc::clone(self)))
    }

    /// An exclusive hold, waiting (blocking the thread) for every holder.
    pub(crate) fn exclusive(&self) -> ExclusiveGuard<'_> {
        let mut h = self.lock();
        h.exclusive_waiting += 1;
        while h.exclusive || h.shared > 0 {
            h = self.wait(h);
        }
        h.exclusive_waiting -= 1;
        h.exclusive = true;
        ExclusiveGuard(self)
    }
}

impl Drop for SharedGuard {
    fn drop(&mut self) {
        let mut h = self.0.lock();
        h.shared -= 1;
        self.0.release(h);
    }
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        let mut h = self.0.lock();
        h.exclusive = false;
        self.0.release(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn shared_holds_exclude_an_exclusive_one_and_queue_behind_it() {
        let s = Arc::new(Stripe::default());
        let a = s.shared();
        let b = s.try_shared().expect("shared holds share");
        let entered = Arc::new(AtomicBool::new(false));
        let t = {
            let (s, entered) = (Arc::clone(&s), Arc::clone(&entered));
            std::thread::spawn(move || {
                let _x = s.exclusive();
                entered.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            })
        };
        // Once the exclusive one waits, no new shared hold is free.
        while s.lock().exclusive_waiting == 0 {
            std::thread::yield_now();
        }
        assert!(s.try_shared().is_none());
        drop(a);
        assert!(!entered.load(Ordering::SeqCst));
        drop(b);
        // A blocking shared hold waits for the exclusive one to finish.
        let c = s.shared();
        assert!(entered.load(Ordering::SeqCst));
        t.join().unwrap();
        drop(c);
        let h = s.lock();
        assert_eq!((h.shared, h.exclusive, h.waiting), (0, false, 0));
    }

    #[test]
    fn shared_guards_are_send() {
        fn send<T: Send + 'static>(_: T) {}
        send(Arc::new(Stripe::default()).shared());
    }
}
