//! The channel between Rust sessions and the Python decision service.
//!
//! Rust threads never take the GIL. A session pushes a request onto a queue and awaits a oneshot
//! answer; the first push into an empty queue writes one byte to a pipe that the asyncio loop
//! watches, so one wake-up serves a whole burst. Python drains the queue with
//! [`Bridge::take`] and answers each request with [`Bridge::respond`].

use std::collections::HashMap;
use std::io::{PipeReader, PipeWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::types::{CachePolicy, Decision, Refusal, Scope};
use crate::audit::AuditMeta;
use std::sync::Arc;

/// A question for the decision service.
#[derive(Debug, Clone)]
pub enum Request {
    Authenticate {
        session_id: u64,
        client_addr: String,
        user: String,
        database: String,
        password: String,
        startup_params: Vec<(String, String)>,
        tls: bool,
    },
    Decide {
        session_id: u64,
        scope_key: String,
        sql: String,
        fingerprint: Option<u64>,
        source: &'static str,
    },
    /// Wait for the decision on a held statement's review; answered with the statement's final
    /// decision (allow, rewrite, or a refusal with the reviewer's comment).
    AwaitReview { session_id: u64, review_id: String },
    /// Fire and forget: the client cancelled its held statement, so its review is withdrawn.
    WithdrawReview { session_id: u64, review_id: String },
    /// Fire and forget: nobody waits for an answer.
    SessionEnd { session_id: u64, reason: String },
}

impl Request {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Authenticate { .. } => "authenticate",
            Self::Decide { .. } => "decide",
            Self::AwaitReview { .. } => "await_review",
            Self::WithdrawReview { .. } => "withdraw_review",
            Self::SessionEnd { .. } => "session_end",
        }
    }
}

/// The scope of an authenticated session plus the parameters to send upstream.
#[derive(Debug, Clone)]
pub struct Admission {
    pub scope: Scope,
}

/// An answer from the decision service.
#[derive(Debug, Clone)]
pub enum Answer {
    Authenticated(Result<Box<Admission>, Refusal>),
    Decided {
        decision: Decision,
        cache: CachePolicy,
        /// Kept in a struct of its own next to the decision (cached with it).
        audit: Arc<AuditMeta>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("the decision service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the decision service dropped the request")]
    Dropped,
    #[error("the decision service is not running")]
    Closed,
}

pub struct Bridge {
    queue: Mutex<Vec<(u64, Request)>>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
    next_id: AtomicU64,
    /// True while a wake-up byte is in the pipe that Python has not yet acted on.
    notified: AtomicBool,
    closed: AtomicBool,
    wake_reader: PipeReader,
    wake_writer: Mutex<PipeWriter>,
    timeout: Duration,
}

impl Bridge {
    pub fn new(timeout: Duration) -> std::io::Result<Self> {
        let (wake_reader, wake_writer) = std::io::pipe()?;
        Ok(Self {
            queue: Mutex::new(Vec::new()),
            waiting: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            notified: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wake_reader,
            wake_writer: Mutex::new(wake_writer),
            timeout,
        })
    }

    /// The file descriptor Python's event loop watches for readability.
    pub fn wake_fd(&self) -> RawFd {
        self.wake_reader.as_raw_fd()
    }

    fn push(&self, id: u64, request: Request) {
        self.queue.lock().push((id, request));
        if !self.notified.swap(true, Ordering::AcqRel) {
            // One byte per burst; Python reads it before draining. A failed write can only mean
            // the reader is gone, and then every waiter times out and fails closed.
            let _ = self.wake_writer.lock().write_all(b"!");
        }
    }

    /// Ask the decision service and wait (only this task) for the answer.
    pub async fn ask(&self, request: Request) -> Result<Answer, BridgeError> {
        self.ask_within(request, self.timeout).await
    }

    /// `ask` with its own time limit (a held statement waits as long as its review may).
    pub async fn ask_within(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Answer, BridgeError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(BridgeError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(id, tx);
        self.push(id, request);
        // Removes the waiter whatever ends the wait (an answer, the time limit, or the asking
        // task being dropped, e.g. a held statement the client cancelled).
        let _forget = Forget { bridge: self, id };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(BridgeError::Dropped),
            Err(_) => Err(BridgeError::Timeout(timeout)),
        }
    }

    /// Queue an event nobody waits for.
    pub fn tell(&self, request: Request) {
        if !self.closed.load(Ordering::Acquire) {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            self.push(id, request);
        }
    }

    /// Drain the queue. Called by Python after the wake fd became readable (and was read).
    pub fn take(&self) -> Vec<(u64, Request)> {
        // Re-arm before draining: a push that lands after this line writes a new wake-up byte,
        // so no request can sit in the queue unnoticed.
        self.notified.store(false, Ordering::Release);
        std::mem::take(&mut *self.queue.lock())
    }

    /// Deliver an answer; false when nobody waits for it any more (timed out or disconnected).
    pub fn respond(&self, id: u64, answer: Answer) -> bool {
        match self.waiting.lock().remove(&id) {
            Some(tx) => tx.send(answer).is_ok(),
            None => false,
        }
    }

    /// Fail every waiter (the decision service is stopping).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waiting.lock().clear();
        self.queue.lock().clear();
    }

    pub fn pending(&self) -> usize {
        self.waiting.lock().len()
    }
}

struct Forget<'a> {
    bridge: &'a Bridge,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.bridge.waiting.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn decide(id: u64) -> Request {
        Request::Decide {
            session_id: id,
            scope_key: "s".into(),
            sql: "select 1".into(),
            fingerprint: None,
            source: "query",
        }
    }

    #[tokio::test]
    async fn one_wakeup_per_burst_and_answers_reach_the_asker() {
        let bridge = Arc::new(Bridge::new(Duration::from_secs(5)).unwrap());
        let mut askers = Vec::new();
        for i in 0..3 {
            let b = Arc::clone(&bridge);
            askers.push(tokio::spawn(async move { b.ask(decide(i)).await }));
        }
        while bridge.pending() < 3 {
            tokio::task::yield_now().await;
        }
        let mut reader = bridge.wake_reader.try_clone().unwrap();
        let mut byte = [0u8; 8];
        let n = reader.read(&mut byte).unwrap();
        assert_eq!(n, 1, "a burst writes one wake-up byte");
        let taken = bridge.take();
        assert_eq!(taken.len(), 3);
        for (id, _) in taken {
            assert!(bridge.respond(
                id,
                Answer::Decided {
                    decision: Decision::Allow,
                    cache: CachePolicy::Never,
                    audit: Arc::default(),
                }
            ));
        }
        for a in askers {
            assert!(matches!(
                a.await.unwrap(),
                Ok(Answer::Decided {
                    decision: Decision::Allow,
                    ..
                })
            ));
        }
    }

    #[tokio::test]
    async fn a_dropped_asker_leaves_no_waiter_and_its_own_limit_applies() {
        let bridge = Arc::new(Bridge::new(Duration::from_millis(20)).unwrap());
        let hold = Request::AwaitReview {
            session_id: 1,
            review_id: "r".into(),
        };
        // Longer than the bridge's own limit: a held statement waits as long as its review.
        let b = Arc::clone(&bridge);
        let asker = tokio::spawn(async move { b.ask_within(hold, Duration::from_secs(30)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(bridge.pending(), 1, "still waiting after the default limit");
        // A cancelled hold drops its wait: nothing is left behind to answer.
        asker.abort();
        let _ = asker.await;
        assert_eq!(bridge.pending(), 0);
        let taken = bridge.take();
        assert_eq!(taken.len(), 1);
        assert!(!bridge.respond(
            taken[0].0,
            Answer::Decided {
                decision: Decision::Allow,
                cache: CachePolicy::Never,
                audit: Arc::default(),
            }
        ));
    }

    #[tokio::test]
    async fn unanswered_requests_time_out() {
        let bridge = Bridge::new(Duration::from_millis(20)).unwrap();
        assert!(matches!(
            bridge.ask(decide(1)).await,
            Err(BridgeError::Timeout(_))
        ));
        assert_eq!(bridge.pending(), 0);
    }
}
