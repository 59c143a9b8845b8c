//! Cancel keys: the gateway hands clients its own BackendKeyData and maps a CancelRequest
//! carrying it to the upstream server's key. An unknown key does nothing, as in PostgreSQL.

use std::collections::HashMap;
use std::path::PathBuf;

use std::sync::Arc;

use parking_lot::Mutex;
use rand::RngCore;
use tokio::sync::Notify;

use crate::net::tls::UpstreamTls;

#[derive(Debug, Clone)]
pub struct CancelTarget {
    pub host: String,
    pub port: u16,
    pub tls: UpstreamTls,
    pub sslrootcert: Option<PathBuf>,
    pub pid: i32,
    pub key: Vec<u8>,
    /// Woken by a CancelRequest: a statement held for approval stops waiting (its review is
    /// withdrawn). `notify_waiters` only: a cancel with nothing held leaves no permit behind.
    pub held: Arc<Notify>,
}

#[derive(Default)]
pub struct CancelRegistry {
    targets: Mutex<HashMap<(i32, Vec<u8>), CancelTarget>>,
}

impl CancelRegistry {
    /// Issue a fresh (pid, key) for a session. Protocol 3.2 clients get a 32-byte key, 3.0 a
    /// 4-byte one (the only length 3.0 defines).
    pub fn register(&self, target: CancelTarget, key_len: usize) -> (i32, Vec<u8>) {
        let mut rng = rand::thread_rng();
        let mut targets = self.targets.lock();
        loop {
            let pid = i32::try_from(rng.next_u32() >> 1).unwrap_or(1).max(1);
            let mut key = vec![0u8; key_len];
            rng.fill_bytes(&mut key);
            if let std::collections::hash_map::Entry::Vacant(slot) =
                targets.entry((pid, key.clone()))
            {
                slot.insert(target);
                return (pid, key);
            }
        }
    }

    pub fn lookup(&self, pid: i32, key: &[u8]) -> Option<CancelTarget> {
        self.targets.lock().get(&(pid, key.to_vec())).cloned()
    }

    pub fn remove(&self, pid: i32, key: &[u8]) {
        self.targets.lock().remove(&(pid, key.to_vec()));
    }

    pub fn len(&self) -> usize {
        self.targets.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
