//! Session threads: each runs its own single-threaded tokio runtime, and a session lives on one
//! of them for its whole life.
//!
//! Measured on the 2-core machines this runs on, a work-stealing runtime spent about a sixth of
//! the proxy's CPU waking and parking threads (`finish_task_switch`, futex wake-ups) as the two
//! sockets of a session woke tasks on different workers. With a session pinned to one thread,
//! both of its sockets are polled by the same epoll loop and a relay hop never crosses threads.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Mutex<Vec<oneshot::Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Start `count` session threads (at least one).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let count = count.max(1);
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pgward-session-{i}"))
                    .spawn(move || {
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                        runtime.shutdown_timeout(Duration::from_secs(2));
                    })?,
            );
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
            stops: Mutex::new(stops),
            threads: Mutex::new(threads),
        })
    }

    /// Run a session on the next thread (round robin).
    pub fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        if let Some(handle) = self.handles.get(i) {
            handle.spawn(future);
        }
    }

    /// Stop every session thread; open sessions are dropped (their sockets close).
    pub fn stop(&self) {
        for stop in self.stops.lock().drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.lock().drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn sessions_spread_over_threads_and_stop() {
        let workers = Workers::start(2).unwrap();
        let names = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..4 {
            let names = Arc::clone(&names);
            let tx = tx.clone();
            workers.spawn(async move {
                names
                    .lock()
                    .push(std::thread::current().name().unwrap_or("").to_owned());
                let _ = tx.send(());
            });
        }
        for _ in 0..4 {
            rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        let mut seen = names.lock().clone();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen,
            vec!["pgward-session-0".to_owned(), "pgward-session-1".to_owned()]
        );
        workers.stop();
    }
}
