//! Session recording: what the client sent and what it received (after masking), with
//! timestamps, compressed in blocks by a writer thread (format: [`format`], docs/recording.md).
//!
//! Memory is bounded whatever the result size: a session copies what it relays into one pending
//! block of at most [`format::CHUNK`] bytes; full blocks go to the writer through a queue of fixed
//! capacity. When the writer falls behind, `send` waits, so the relay waits: nothing is dropped
//! and nothing piles up. A failed write (disk full, I/O error) fails closed: the session ends
//! with an error at its next relayed message rather than continue unrecorded.

pub mod format;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

use format::{frame_header, CHUNK, EXTENSION, FRAME_HEADER, FROM_CLIENT, TO_CLIENT};
use writer::Job;

/// Data blocks the writer queue holds at most (each at most `CHUNK` bytes).
pub const QUEUE_BLOCKS: usize = 64;
/// A pending block older than this is written even if not full, so an idle session's last
/// statement reaches the disk.
const FLUSH_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    #[error("the recording store is full: {0}")]
    DiskFull(String),
    #[error("the session recording failed: {0}")]
    Failed(String),
}

impl RecordError {
    fn io(path: &Path, e: &std::io::Error) -> Self {
        match Self::from_io(e) {
            Self::DiskFull(m) => Self::DiskFull(format!("{}: {m}", path.display())),
            Self::Failed(m) => Self::Failed(format!("{}: {m}", path.display())),
        }
    }

    fn from_io(e: &std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
            Self::DiskFull(e.to_string())
        } else {
            Self::Failed(e.to_string())
        }
    }

    /// SQLSTATE for the client: 53100 disk_full, 58030 io_error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::DiskFull(_) => "53100",
            Self::Failed(_) => "58030",
        }
    }
}

/// Counters for /metrics and for tests that check the memory bound structurally.
#[derive(Default)]
pub struct Stats {
    /// Raw bytes queued for the writer and not yet written.
    buffered: AtomicUsize,
    buffered_peak: AtomicUsize,
    bytes_written: AtomicU64,
    failures: AtomicU64,
    sessions: AtomicU64,
}

/// Set once by the writer when a session's file failed; the session reads it at each tap.
#[derive(Default)]
pub struct Status {
    failed: OnceLock<RecordError>,
}

impl Status {
    fn fail(&self, e: RecordError) {
        let _ = self.failed.set(e);
    }
}

/// The gateway's recorder: the directory, the queue and its writer thread.
pub struct Recorder {
    dir: PathBuf,
    tx: mpsc::Sender<Job>,
    stats: Arc<Stats>,
    next_key: AtomicU64,
}

/// Who and what a recording is of; becomes the header's JSON metadata.
pub struct Meta<'a> {
    pub session_uuid: &'a str,
    pub identity: &'a str,
    /// JSON object from the decision service (subject, username, groups, issuer, kind), if any.
    pub identity_detail: Option<&'a str>,
    pub connection: &'a str,
    pub client_addr: &'a str,
    pub protocol: String,
}

impl Recorder {
    /// Create the directory (mode 0700) and start the writer thread.
    pub fn start(dir: PathBuf, level: i32) -> std::io::Result<Self> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder.create(&dir)?;
        let (tx, rx) = mpsc::channel(QUEUE_BLOCKS);
        let stats = Arc::new(Stats::default());
        let writer_stats = Arc::clone(&stats);
        std::thread::Builder::new()
            .name("pgward-recorder".into())
            .spawn(move || writer::run(rx, level, writer_stats))?;
        Ok(Self {
            dir,
            tx,
            stats,
            next_key: AtomicU64::new(1),
        })
    }

    pub fn path_of(&self, session_uuid: &str) -> Option<PathBuf> {
        // The id comes from the decision service; still, it names a file: hex and dashes only.
        let safe = !session_uuid.is_empty()
            && session_uuid.len() <= 64
            && session_uuid
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'-');
        safe.then(|| self.dir.join(format!("{session_uuid}.{EXTENSION}")))
    }

    /// Create the session's file (header written) before the relay starts.
    pub async fn open(&self, meta: &Meta<'_>) -> Result<SessionRecorder, RecordError> {
        let path = self.path_of(meta.session_uuid).ok_or_else(|| {
            RecordError::Failed(format!("invalid session id {:?}", meta.session_uuid))
        })?;
        let started_at_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let identity_detail = meta
            .identity_detail
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .unwrap_or(serde_json::Value::Null);
        let json = serde_json::json!({
            "session_uuid": meta.session_uuid,
            "identity": meta.identity,
            "identity_detail": identity_detail,
            "connection": meta.connection,
            "client_addr": meta.client_addr,
            "protocol": meta.protocol,
            "started_at_us": started_at_us,
            "gateway_version": env!("CARGO_PKG_VERSION"),
            "block_size": CHUNK,
            "compression": "zstd",
        });
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let status = Arc::new(Status::default());
        let (reply, answer) = oneshot::channel();
        let job = Job::Open {
            key,
            path,
            meta: json.to_string().into_bytes(),
            status: Arc::clone(&status),
            reply,
        };
        self.tx.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())??;
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        Ok(SessionRecorder {
            key,
            tx: self.tx.clone(),
            stats: Arc::clone(&self.stats),
            status,
            start: Instant::now(),
            pending: Mutex::new(Pending::default()),
            dirty: Notify::new(),
        })
    }

    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let get = |c: &AtomicUsize| c.load(Ordering::Relaxed) as u64;
        vec![
            ("recording_sessions", s.sessions.load(Ordering::Relaxed)),
            ("recording_failures", s.failures.load(Ordering::Relaxed)),
            (
                "recording_bytes_written",
                s.bytes_written.load(Ordering::Relaxed),
            ),
            ("recording_queue_bytes", get(&s.buffered)),
            ("recording_queue_bytes_peak", get(&s.buffered_peak)),
            ("recording_queue_blocks_capacity", QUEUE_BLOCKS as u64),
            ("recording_block_bytes_max", CHUNK as u64),
        ]
    }
}

fn stopped() -> RecordError {
    RecordError::Failed("the recording writer has stopped".into())
}

#[derive(Default)]
struct Pending {
    block: Vec<u8>,
    first_at: Option<Instant>,
    client_bytes: u64,
    server_bytes: u64,
    frames: u64,
}

/// One session's recording: taps append frames; full blocks go to the writer.
pub struct SessionRecorder {
    key: u64,
    tx: mpsc::Sender<Job>,
    stats: Arc<Stats>,
    status: Arc<Status>,
    start: Instant,
    /// An async mutex, held across the queue send so blocks reach the writer in frame order.
    pending: Mutex<Pending>,
    /// Signalled when the pending block goes from empty to not empty.
    dirty: Notify,
}

impl SessionRecorder {
    fn check(&self) -> Result<(), RecordError> {
        match self.status.failed.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    async fn append(&self, direction: u8, parts: &[&[u8]]) -> Result<(), RecordError> {
        self.check()?;
        let mut p = self.pending.lock().await;
        let now = Instant::now();
        let offset = u64::try_from(now.duration_since(self.start).as_micros()).unwrap_or(u64::MAX);
        let was_empty = p.block.is_empty();
        for part in parts {
            let total = part.len() as u64;
            if direction == FROM_CLIENT {
                p.client_bytes += total;
            } else {
                p.server_bytes += total;
            }
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                if p.block.len() + FRAME_HEADER >= CHUNK {
                    self.send(&mut p).await?;
                }
                let room = CHUNK - p.block.len() - FRAME_HEADER;
                let (now_part, later) = rest.split_at(room.min(rest.len()));
                if p.block.is_empty() {
                    p.block.reserve(CHUNK.min(FRAME_HEADER + rest.len()));
                    p.first_at = Some(now);
                }
                p.block
                    .extend_from_slice(&frame_header(direction, offset, now_part.len()));
                p.block.extend_from_slice(now_part);
                p.frames += 1;
                rest = later;
            }
        }
        drop(p);
        if was_empty {
            self.dirty.notify_one();
        }
        Ok(())
    }

    async fn send(&self, p: &mut Pending) -> Result<(), RecordError> {
        if p.block.is_empty() {
            return Ok(());
        }
        // Wait for room in the queue first (back-pressure), so the counter below only ever
        // counts blocks in the queue or in the writer's hands: at most QUEUE_BLOCKS + 1.
        let permit = self.tx.reserve().await.map_err(|_| stopped())?;
        let raw = std::mem::take(&mut p.block);
        p.first_at = None;
        let len = raw.len();
        let queued = self.stats.buffered.fetch_add(len, Ordering::AcqRel) + len;
        self.stats
            .buffered_peak
            .fetch_max(queued, Ordering::Relaxed);
        permit.send(Job::Data { key: self.key, raw });
        self.check()
    }

    /// Write the pending block once it has waited `FLUSH_AFTER`. Runs beside the relay; returns
    /// only when the recording failed.
    async fn flusher(&self) -> RecordError {
        loop {
            self.dirty.notified().await;
            tokio::time::sleep(FLUSH_AFTER).await;
            let mut p = self.pending.lock().await;
            if p.first_at.is_some_and(|t| t.elapsed() >= FLUSH_AFTER) {
                if let Err(e) = self.send(&mut p).await {
                    return e;
                }
            } else if !p.block.is_empty() {
                // Written to since the signal: wait again for it.
                self.dirty.notify_one();
            }
        }
    }

    /// Write what is pending and the trailer; resolves once the file is complete on disk.
    async fn finish(&self, reason: &str) -> Result<(), RecordError> {
        let mut p = self.pending.lock().await;
        self.send(&mut p).await?;
        let ended_at_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let json = serde_json::json!({
            "ended_at_us": ended_at_us,
            "duration_us": u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX),
            "client_bytes": p.client_bytes,
            "server_bytes": p.server_bytes,
            "frames": p.frames,
            "end_reason": reason,
        });
        let (reply, answer) = oneshot::channel();
        let job = Job::Finish {
            key: self.key,
            trailer: json.to_string().into_bytes(),
            reply,
        };
        self.tx.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// What the relay holds: a session's recorder, or nothing when recording is off. Every method is
/// a no-op without a recorder, so the relay's taps stay one line each.
#[derive(Default)]
pub struct RecordTap(Option<SessionRecorder>);

impl RecordTap {
    pub fn new(recorder: Option<SessionRecorder>) -> Self {
        Self(recorder)
    }

    /// Bytes read from the client.
    pub async fn client(&self, bytes: &[u8]) -> Result<(), RecordError> {
        match &self.0 {
            Some(r) if !bytes.is_empty() => r.append(FROM_CLIENT, &[bytes]).await,
            _ => Ok(()),
        }
    }

    /// Segments about to be written to the client.
    pub async fn server(&self, segments: &[Bytes]) -> Result<(), RecordError> {
        match &self.0 {
            Some(r) if !segments.is_empty() => {
                let parts: Vec<&[u8]> = segments.iter().map(Bytes::as_ref).collect();
                r.append(TO_CLIENT, &parts).await
            }
            _ => Ok(()),
        }
    }

    /// Runs beside the relay; resolves only with a recording failure.
    pub async fn flusher(&self) -> RecordError {
        match &self.0 {
            Some(r) => r.flusher().await,
            None => std::future::pending().await,
        }
    }

    pub async fn finish(&self, reason: &str) -> Result<(), RecordError> {
        match &self.0 {
            Some(r) => r.finish(reason).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
