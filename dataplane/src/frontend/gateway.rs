//! State shared by every session of one gateway: configuration, TLS, the bridge to Python, the
//! decision cache, cancel keys and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;

use super::cancel::CancelRegistry;
use crate::audit::AuditQueue;
use crate::decide::{Bridge, DecisionCache};
use crate::record::Recorder;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub listen: String,
    /// Accept clients that do not ask for TLS. Honoured only on a loopback listener.
    pub allow_plaintext: bool,
    pub max_message_size: usize,
    pub connect_timeout: Duration,
    /// How long a client may take from connecting to finishing authentication.
    pub startup_timeout: Duration,
}

#[derive(Default)]
pub struct Stats {
    pub sessions_total: AtomicU64,
    pub sessions_active: AtomicU64,
    pub statements: AtomicU64,
    pub cache_hits_text: AtomicU64,
    pub cache_hits_fingerprint: AtomicU64,
    pub python_decisions: AtomicU64,
    pub denials: AtomicU64,
    /// Statements sent upstream as rewritten text (strict masking).
    pub rewrites: AtomicU64,
    /// Statements held for approval (a review decided while the client waited).
    pub holds: AtomicU64,
    pub protocol_errors: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("sessions_total", get(&self.sessions_total)),
            ("sessions_active", get(&self.sessions_active)),
            ("statements", get(&self.statements)),
            ("cache_hits_text", get(&self.cache_hits_text)),
            ("cache_hits_fingerprint", get(&self.cache_hits_fingerprint)),
            ("python_decisions", get(&self.python_decisions)),
            ("denials", get(&self.denials)),
            ("rewrites", get(&self.rewrites)),
            ("holds", get(&self.holds)),
            ("protocol_errors", get(&self.protocol_errors)),
        ]
    }
}

pub struct Gateway {
    pub config: GatewayConfig,
    pub tls: Option<Arc<ServerConfig>>,
    pub bridge: Arc<Bridge>,
    pub audit: Arc<AuditQueue>,
    pub cache: DecisionCache,
    pub cancels: CancelRegistry,
    pub stats: Stats,
    /// Records every session when set (`PGWARD_RECORDING=on`).
    pub recorder: Option<Recorder>,
    next_session: AtomicU64,
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        tls: Option<Arc<ServerConfig>>,
        bridge: Arc<Bridge>,
        audit: Arc<AuditQueue>,
    ) -> Self {
        Self {
            config,
            tls,
            bridge,
            audit,
            cache: DecisionCache::default(),
            cancels: CancelRegistry::default(),
            stats: Stats::default(),
            recorder: None,
            next_session: AtomicU64::new(1),
        }
    }

    #[must_use]
    pub fn with_recorder(mut self, recorder: Option<Recorder>) -> Self {
        self.recorder = recorder;
        self
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}
