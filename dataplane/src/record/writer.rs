//! The writer thread: compresses data blocks and does every blocking file operation, so session
//! threads never wait on the disk except through the bounded queue (back-pressure).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::format::{block_header, header, trailer, BLOCK_DATA};
use super::{RecordError, Stats, Status};

pub enum Job {
    Open {
        key: u64,
        path: PathBuf,
        meta: Vec<u8>,
        status: Arc<Status>,
        reply: oneshot::Sender<Result<(), RecordError>>,
    },
    Data {
        key: u64,
        raw: Vec<u8>,
    },
    Finish {
        key: u64,
        trailer: Vec<u8>,
        reply: oneshot::Sender<Result<(), RecordError>>,
    },
}

struct OpenFile {
    file: File,
    status: Arc<Status>,
}

pub fn run(mut rx: mpsc::Receiver<Job>, level: i32, stats: Arc<Stats>) {
    let mut files: HashMap<u64, OpenFile> = HashMap::new();
    let mut compressor = zstd::bulk::Compressor::new(level).ok();
    if let Some(c) = compressor.as_mut() {
        // A torn or corrupted block must be detected by a reader, not decoded into wrong bytes.
        let _ = c.include_checksum(true);
    }
    while let Some(job) = rx.blocking_recv() {
        match job {
            Job::Open {
                key,
                path,
                meta,
                status,
                reply,
            } => {
                let result = create(&path, &meta).map_err(|e| RecordError::io(&path, &e));
                match result {
                    Ok(file) => {
                        files.insert(key, OpenFile { file, status });
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) => {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Job::Data { key, raw } => {
                let len = raw.len();
                if let Some(open) = files.get_mut(&key) {
                    let written = match compressor.as_mut() {
                        Some(c) => write_block(&mut open.file, c, &raw),
                        None => Err(std::io::Error::other("the zstd compressor could not start")),
                    };
                    match written {
                        Ok(n) => {
                            stats.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // Fail closed: the session sees the failure at its next tap and ends.
                            stats.failures.fetch_add(1, Ordering::Relaxed);
                            open.status.fail(RecordError::from_io(&e));
                            files.remove(&key);
                        }
                    }
                }
                stats.buffered.fetch_sub(len, Ordering::AcqRel);
            }
            Job::Finish {
                key,
                trailer: json,
                reply,
            } => {
                let result = match files.remove(&key) {
                    Some(mut open) => finish(&mut open.file, &json).map_err(|e| {
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        RecordError::from_io(&e)
                    }),
                    None => Err(RecordError::Failed(
                        "the recording was already closed after an error".into(),
                    )),
                };
                let _ = reply.send(result);
            }
        }
    }
}

fn create(path: &PathBuf, meta: &[u8]) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    // create_new: a session id is never reused, so an existing file is somebody else's recording.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Recordings hold query results: readable by the gateway's user only.
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(&header(meta))?;
    Ok(file)
}

/// Compress and append one block with a single write, so a crash leaves whole blocks or a
/// recognisably short last one.
fn write_block(
    file: &mut File,
    compressor: &mut zstd::bulk::Compressor<'_>,
    raw: &[u8],
) -> std::io::Result<usize> {
    let stored = compressor.compress(raw)?;
    let mut block = Vec::with_capacity(9 + stored.len());
    block.extend_from_slice(&block_header(BLOCK_DATA, stored.len(), raw.len()));
    block.extend_from_slice(&stored);
    file.write_all(&block)?;
    Ok(block.len())
}

fn finish(file: &mut File, json: &[u8]) -> std::io::Result<()> {
    file.write_all(&trailer(json))?;
    // The trailer says the recording is complete: make it durable before saying so.
    file.sync_data()
}
