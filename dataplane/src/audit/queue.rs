//! The bounded queue of audit records from sessions to Python.
//!
//! Sessions push completed records without waiting; before forwarding a statement a session waits
//! for room ([`AuditQueue::wait_for_room`]), so a slow store slows sessions down (back-pressure)
//! and nothing is ever dropped. The queue holds at most its capacity plus the records of statements
//! already in flight. The first push into an empty queue writes one byte to a pipe that the asyncio
//! loop watches — but only when the queue is a quarter full or a strict-mode session waits for a
//! record: otherwise Python takes the records on its own schedule (every flush interval), so a busy
//! gateway costs one wake-up per batch rather than one per statement. In strict mode a session
//! pushes an intent record and waits until Python has committed it ([`AuditQueue::push_durable`]).

use std::collections::{HashMap, VecDeque};
use std::io::{PipeReader, PipeWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use super::record::Event;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit store did not confirm the record within {0:?}")]
    Timeout(Duration),
    #[error("the audit writer is not running")]
    Closed,
}

pub struct AuditQueue {
    events: Mutex<VecDeque<Event>>,
    len: AtomicUsize,
    capacity: usize,
    room: Notify,
    notified: AtomicBool,
    closed: AtomicBool,
    acks: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_ack: AtomicU64,
    wake_reader: PipeReader,
    wake_writer: Mutex<PipeWriter>,
    strict_timeout: Duration,
    /// Queue length from which a push wakes Python up.
    wake_at: usize,
    /// Times a session waited for room (a slow store).
    pub waits: AtomicU64,
}

impl AuditQueue {
    pub fn new(capacity: usize, strict_timeout: Duration) -> std::io::Result<Self> {
        let (wake_reader, wake_writer) = std::io::pipe()?;
        Ok(Self {
            events: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            room: Notify::new(),
            notified: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            acks: Mutex::new(HashMap::new()),
            next_ack: AtomicU64::new(1),
            wake_reader,
            wake_writer: Mutex::new(wake_writer),
            strict_timeout,
            wake_at: (capacity / 4).max(1),
            waits: AtomicU64::new(0),
        })
    }

    pub fn wake_fd(&self) -> RawFd {
        self.wake_reader.as_raw_fd()
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queue a record; never waits (the session waits for room before its next statement).
    pub fn push(&self, event: Event) {
        let urgent = event.ack != 0;
        let len = {
            let mut events = self.events.lock();
            events.push_back(event);
            self.len.store(events.len(), Ordering::Release);
            events.len()
        };
        if (urgent || len >= self.wake_at) && !self.notified.swap(true, Ordering::AcqRel) {
            // One byte per burst; a failed write means the reader is gone (shutting down).
            let _ = self.wake_writer.lock().write_all(b"!");
        }
    }

    /// Wait until the queue has room for another statement's records.
    pub async fn wait_for_room(&self) {
        if self.len() < self.capacity {
            return;
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.len() < self.capacity || self.closed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Queue a record and wait until Python reports it committed (strict mode).
    pub async fn push_durable(&self, mut event: Event) -> Result<(), AuditError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(AuditError::Closed);
        }
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks.lock().insert(id, tx);
        event.ack = id;
        self.push(event);
        match tokio::time::timeout(self.strict_timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(AuditError::Closed),
            Err(_) => {
                self.acks.lock().remove(&id);
                Err(AuditError::Timeout(self.strict_timeout))
            }
        }
    }

    /// Take up to `max` records (Python, after the wake fd became readable and was read).
    pub fn take(&self, max: usize) -> Vec<Event> {
        // Re-arm before draining: a push after this line writes a new wake-up byte.
        self.notified.store(false, Ordering::Release);
        let taken: Vec<Event> = {
            let mut events = self.events.lock();
            let n = max.min(events.len());
            let taken = events.drain(..n).collect();
            self.len.store(events.len(), Ordering::Release);
            taken
        };
        if !taken.is_empty() {
            self.room.notify_waiters();
        }
        taken
    }

    /// Python committed these records: release the sessions waiting for them.
    pub fn ack(&self, ids: &[u64]) {
        let mut acks = self.acks.lock();
        for id in ids {
            if let Some(tx) = acks.remove(id) {
                let _ = tx.send(());
            }
        }
    }

    /// The writer stopped: fail strict waiters (their statements are refused) and let others go.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.acks.lock().clear();
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::sync::Arc;

    fn event() -> Event {
        Event::for_test("select 1")
    }

    #[tokio::test]
    async fn a_full_queue_makes_sessions_wait_until_python_takes_records() {
        let q = Arc::new(AuditQueue::new(2, Duration::from_secs(5)).unwrap());
        assert_eq!(q.wake_at, 1);
        q.push(event());
        q.push(event());
        let waiter = {
            let q = Arc::clone(&q);
            tokio::spawn(async move { q.wait_for_room().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "the session must wait while the queue is full"
        );
        let mut reader = q.wake_reader.try_clone().unwrap();
        let mut byte = [0u8; 8];
        assert_eq!(reader.read(&mut byte).unwrap(), 1, "one wake-up per burst");
        assert_eq!(q.take(1).len(), 1);
        waiter.await.unwrap();
        assert_eq!(q.len(), 1);
    }

    #[tokio::test]
    async fn strict_records_wait_for_their_ack() {
        let q = Arc::new(AuditQueue::new(10, Duration::from_secs(5)).unwrap());
        let pusher = {
            let q = Arc::clone(&q);
            tokio::spawn(async move { q.push_durable(event()).await })
        };
        let taken = loop {
            let t = q.take(10);
            if !t.is_empty() {
                break t;
            }
            tokio::task::yield_now().await;
        };
        assert!(taken[0].ack > 0);
        q.ack(&[taken[0].ack]);
        assert!(pusher.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn unconfirmed_strict_records_time_out() {
        let q = AuditQueue::new(10, Duration::from_millis(20)).unwrap();
        assert!(matches!(
            q.push_durable(event()).await,
            Err(AuditError::Timeout(_))
        ));
    }
}
