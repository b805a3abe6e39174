//! Retry helper for front ends: parks requests that failed for lack of
//! space and retries them after memory is freed or after the retry delay,
//! up to the retry count — without sleeping and without holding up other
//! requests.
//!
//! It is a plain data structure driven by the caller: the caller parks a
//! failed request with [`RetryQueue::park`], asks [`RetryQueue::next_due_ms`]
//! when to come back (e.g. as its event-loop timeout), and calls
//! [`RetryQueue::poll`] whenever time passed or memory was freed. `poll`
//! makes one attempt for each request that is due — its delay elapsed, or
//! its domain's free epoch moved since its last attempt — and hands back
//! every request that is done (succeeded, failed for good, or out of
//! retries). Nothing blocks; a request that cannot be served only waits in
//! the queue while the caller serves everyone else.
//!
//! Each attempt made by `poll` consumes one retry, whether woken by a free
//! or by the delay, so a request makes at most `1 + count` attempts and
//! waits at most about `count × delay_ms`.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::device::Domain;
use crate::manager::{ManagerError, RetryPolicy};

/// An error that may go away if the operation is retried later.
pub trait Retryable {
    /// `Some(policy)` when retrying may succeed, with how to retry.
    fn retry_policy(&self) -> Option<RetryPolicy>;
}

impl Retryable for ManagerError {
    fn retry_policy(&self) -> Option<RetryPolicy> {
        match self {
            ManagerError::NoSpace { retry, .. } => Some(*retry),
            _ => None,
        }
    }
}

/// Per-domain counts of frees, as published by the driver
/// ([`Driver::free_epochs`](crate::driver::Driver::free_epochs)); a change
/// means memory was freed in that domain.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FreeEpochs {
    /// Frees in VRAM so far.
    pub vram: u64,
    /// Frees in GTT so far.
    pub gtt: u64,
}

impl FreeEpochs {
    /// The count of `domain`.
    pub fn get(&self, domain: Domain) -> u64 {
        match domain {
            Domain::Vram => self.vram,
            Domain::Gtt => self.gtt,
        }
    }
}

/// Why a request could not be parked; the request is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum ParkError<R> {
    /// The queue is at capacity.
    Full(R),
    /// The policy allows no retries.
    NoRetries(R),
}

#[derive(Debug)]
struct Parked<R> {
    ticket: u64,
    request: R,
    domain: Domain,
    retries_left: u32,
    attempts: u32,
    due_ms: u64,
    epoch_seen: u64,
}

/// A request leaving the queue.
#[derive(Debug, PartialEq, Eq)]
pub struct Finished<R, T, E> {
    /// The ticket [`RetryQueue::park`] returned.
    pub ticket: u64,
    /// The request.
    pub request: R,
    /// The outcome of its last attempt.
    pub result: Result<T, E>,
    /// Attempts made by the queue (not counting the caller's first one).
    pub attempts: u32,
}

/// Parked requests of type `R` (see the module docs).
#[derive(Debug)]
pub struct RetryQueue<R> {
    parked: VecDeque<Parked<R>>,
    capacity: usize,
    next_ticket: u64,
}

impl<R> RetryQueue<R> {
    /// An empty queue holding at most `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        RetryQueue {
            parked: VecDeque::new(),
            capacity,
            next_ticket: 1,
        }
    }

    /// Parked requests.
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// True when nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// Parks `request`, whose first attempt failed with a retryable error
    /// carrying `policy`. `epochs` must have been read *before* that
    /// attempt, so a free that raced with it wakes the request at once.
    /// Returns the request's ticket.
    pub fn park(
        &mut self,
        request: R,
        domain: Domain,
        policy: RetryPolicy,
        epochs: FreeEpochs,
        now_ms: u64,
    ) -> Result<u64, ParkError<R>> {
        if policy.count == 0 {
            return Err(ParkError::NoRetries(request));
        }
        if self.parked.len() >= self.capacity {
            return Err(ParkError::Full(request));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.parked.push_back(Parked {
            ticket,
            request,
            domain,
            retries_left: policy.count,
            attempts: 0,
            due_ms: now_ms.saturating_add(policy.delay_ms.into()),
            epoch_seen: epochs.get(domain),
        });
        Ok(ticket)
    }

    /// The earliest time a parked request becomes due by its delay, so the
    /// caller knows when to poll at the latest (`None` when empty). Frees
    /// make requests due earlier.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.parked.iter().map(|p| p.due_ms).min()
    }

    /// True when some request is due at `now_ms` given `epochs`.
    pub fn has_due(&self, now_ms: u64, epochs: FreeEpochs) -> bool {
        self.parked
            .iter()
            .any(|p| now_ms >= p.due_ms || epochs.get(p.domain) != p.epoch_seen)
    }

    /// Makes one attempt for every due request, oldest first, with
    /// `attempt(&mut request, retry_number)` (retry numbers start at 1),
    /// and returns the requests that are done. `epochs` is read by the
    /// caller before calling (an attempt that races with a free then gets
    /// another chance).
    pub fn poll<T, E: Retryable>(
        &mut self,
        now_ms: u64,
        epochs: FreeEpochs,
        mut attempt: impl FnMut(&mut R, u32) -> Result<T, E>,
    ) -> Vec<Finished<R, T, E>> {
        let mut done = Vec::new();
        let mut keep = VecDeque::with_capacity(self.parked.len());
        while let Some(mut p) = self.parked.pop_front() {
            let epoch = epochs.get(p.domain);
            if now_ms < p.due_ms && epoch == p.epoch_seen {
                keep.push_back(p);
                continue;
            }
            p.retries_left -= 1;
            p.attempts += 1;
            match attempt(&mut p.request, p.attempts) {
                Err(e) if p.retries_left > 0 && e.retry_policy().is_some() => {
                    let delay = e.retry_policy().map_or(0, |r| r.delay_ms);
                    p.due_ms = now_ms.saturating_add(delay.into());
                    p.epoch_seen = epoch;
                    keep.push_back(p);
                }
                result => done.push(Finished {
                    ticket: p.ticket,
                    request: p.request,
                    result,
                    attempts: p.attempts,
                }),
            }
        }
        self.parked = keep;
        done
    }

    /// Removes a parked request by ticket (e.g. its client went away).
    pub fn cancel(&mut self, ticket: u64) -> Option<R> {
        let i = self.parked.iter().position(|p| p.ticket == ticket)?;
        self.parked.remove(i).map(|p| p.request)
    }

    /// Removes every parked request matching `pred`.
    pub fn cancel_where(&mut self, mut pred: impl FnMut(&R) -> bool) -> Vec<R> {
        let mut out = Vec::new();
        let mut keep = VecDeque::with_capacity(self.parked.len());
        for p in self.parked.drain(..) {
            if pred(&p.request) {
                out.push(p.request);
            } else {
                keep.push_back(p);
            }
        }
        self.parked = keep;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        count: 3,
        delay_ms: 10,
    };

    fn no_space() -> ManagerError {
        ManagerError::NoSpace {
            size: 1,
            retry: POLICY,
        }
    }

    #[test]
    fn retries_after_the_delay_up_to_the_count() {
        let mut q = RetryQueue::new(4);
        let e = FreeEpochs::default();
        let t = q.park("a", Domain::Vram, POLICY, e, 100).unwrap();
        assert_eq!(q.next_due_ms(), Some(110));
        let mut calls = 0;
        assert!(q
            .poll(109, e, |_, _| -> Result<(), _> {
                calls += 1;
                Err(no_space())
            })
            .is_empty());
        assert_eq!(calls, 0);
        let mut seen = Vec::new();
        for now in [110, 120, 130] {
            let done = q.poll(now, e, |_, n| -> Result<(), _> {
                seen.push(n);
                Err(no_space())
            });
            if now < 130 {
                assert!(done.is_empty());
            } else {
                assert_eq!(done.len(), 1);
                assert_eq!(done[0].ticket, t);
                assert_eq!(done[0].attempts, 3);
                assert_eq!(done[0].result, Err(no_space()));
            }
        }
        assert_eq!(seen, [1, 2, 3]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_free_wakes_only_its_domain() {
        let mut q = RetryQueue::new(4);
        let e = FreeEpochs { vram: 5, gtt: 7 };
        q.park(1, Domain::Vram, POLICY, e, 0).unwrap();
        q.park(2, Domain::Gtt, POLICY, e, 0).unwrap();
        let after = FreeEpochs { vram: 6, gtt: 7 };
        assert!(q.has_due(0, after));
        let done = q.poll(0, after, |r, _| -> Result<u32, ManagerError> {
            Ok(*r * 10)
        });
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].request, 1);
        assert_eq!(done[0].result, Ok(10));
        assert_eq!(q.len(), 1);
        assert!(!q.has_due(9, after));
    }

    #[test]
    fn permanent_errors_finish_and_limits_hold() {
        let mut q = RetryQueue::new(1);
        let e = FreeEpochs::default();
        assert_eq!(
            q.park(
                "x",
                Domain::Gtt,
                RetryPolicy {
                    count: 0,
                    delay_ms: 1
                },
                e,
                0
            ),
            Err(ParkError::NoRetries("x"))
        );
        let t = q.park("a", Domain::Gtt, POLICY, e, 0).unwrap();
        assert_eq!(
            q.park("b", Domain::Gtt, POLICY, e, 0),
            Err(ParkError::Full("b"))
        );
        let done = q.poll(10, e, |_, _| -> Result<(), _> {
            Err(ManagerError::InvalidArgument("bad"))
        });
        assert_eq!(done[0].result, Err(ManagerError::InvalidArgument("bad")));
        assert_eq!(done[0].ticket, t);
        let t2 = q.park("c", Domain::Gtt, POLICY, e, 0).unwrap();
        assert_eq!(q.cancel(t2 + 1), None);
        assert_eq!(q.cancel(t2), Some("c"));
        q.park("d", Domain::Gtt, POLICY, e, 0).unwrap();
        assert_eq!(q.cancel_where(|r| *r == "d"), ["d"]);
        assert!(q.is_empty());
        assert_eq!(q.next_due_ms(), None);
    }
}
