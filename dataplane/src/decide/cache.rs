//! The decision cache shared by all sessions.
//!
//! Partitioned by scope key (identity + connection + policy version), so a new policy version can
//! never be answered from an older one's decisions. Two maps per scope: exact statement text, and
//! the libpg_query fingerprint for decisions Python marked as independent of constants.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::types::{CachePolicy, Decision};
use crate::audit::AuditMeta;

/// Entries held in all scopes together before the cache starts over. Decisions are cheap to
/// recompute, so a full clear keeps memory bounded without the bookkeeping of an LRU.
const DEFAULT_CAPACITY: usize = 100_000;

/// A cached decision with what the audit records of its statements say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub decision: Decision,
    pub audit: Arc<AuditMeta>,
    /// The statement's fingerprint, so an exact-text hit need not compute it for the audit.
    pub fingerprint: Option<u64>,
}

#[derive(Default)]
struct ScopeEntries {
    by_text: HashMap<Box<str>, Cached>,
    by_fingerprint: HashMap<u64, Cached>,
}

pub struct DecisionCache {
    scopes: RwLock<HashMap<Arc<str>, ScopeEntries>>,
    entries: AtomicUsize,
    capacity: usize,
}

impl Default for DecisionCache {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl DecisionCache {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            scopes: RwLock::new(HashMap::new()),
            entries: AtomicUsize::new(0),
            capacity,
        }
    }

    pub fn get_text(&self, scope: &str, sql: &str) -> Option<Cached> {
        self.scopes
            .read()
            .get(scope)
            .and_then(|s| s.by_text.get(sql).cloned())
    }

    pub fn get_fingerprint(&self, scope: &str, fingerprint: u64) -> Option<Cached> {
        self.scopes
            .read()
            .get(scope)
            .and_then(|s| s.by_fingerprint.get(&fingerprint).cloned())
    }

    pub fn insert(
        &self,
        scope: &Arc<str>,
        sql: &str,
        fingerprint: Option<u64>,
        policy: CachePolicy,
        decision: &Decision,
        audit: &Arc<AuditMeta>,
    ) {
        let mut scopes = self.scopes.write();
        if self.entries.load(Ordering::Relaxed) >= self.capacity {
            scopes.clear();
            self.entries.store(0, Ordering::Relaxed);
        }
        let entries = scopes.entry(Arc::clone(scope)).or_default();
        // A rewritten text carries the client's constants, and a COPY plan options (delimiters,
        // NULL strings) that fingerprints normalise away: only the same text may reuse them.
        let policy = match (policy, decision) {
            // A hold names one review: reusing it would run another statement on its approval.
            (_, Decision::Hold(_)) => CachePolicy::Never,
            (CachePolicy::Fingerprint, Decision::Rewrite(_) | Decision::AllowCopy { .. }) => {
                CachePolicy::Text
            }
            _ => policy,
        };
        let added = match (policy, fingerprint) {
            (CachePolicy::Fingerprint, Some(fp)) => entries
                .by_fingerprint
                .insert(fp, cached(decision, audit, fingerprint))
                .is_none(),
            // Without a fingerprint (the Rust parser failed) only the exact text can be reused.
            (CachePolicy::Fingerprint | CachePolicy::Text, _) => entries
                .by_text
                .insert(sql.into(), cached(decision, audit, fingerprint))
                .is_none(),
            (CachePolicy::Never, _) => false,
        };
        if added {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forget every decision (policies changed).
    pub fn clear(&self) {
        self.scopes.write().clear();
        self.entries.store(0, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn cached(decision: &Decision, audit: &Arc<AuditMeta>, fingerprint: Option<u64>) -> Cached {
    Cached {
        decision: decision.clone(),
        audit: Arc::clone(audit),
        fingerprint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::types::Refusal;

    fn deny() -> Decision {
        Decision::Deny(Arc::new(Refusal::new("42501", "no")))
    }

    #[test]
    fn scopes_are_separate() {
        let cache = DecisionCache::default();
        let a: Arc<str> = Arc::from("alice:shop:1");
        cache.insert(
            &a,
            "select 1",
            Some(7),
            CachePolicy::Fingerprint,
            &Decision::Allow,
            &Arc::default(),
        );
        assert_eq!(
            cache.get_fingerprint("alice:shop:1", 7).map(|c| c.decision),
            Some(Decision::Allow)
        );
        assert_eq!(
            cache.get_fingerprint("alice:shop:2", 7).map(|c| c.decision),
            None
        );
        assert_eq!(
            cache
                .get_text("alice:shop:1", "select 1")
                .map(|c| c.decision),
            None
        );
    }

    #[test]
    fn text_policy_and_never() {
        let cache = DecisionCache::default();
        let a: Arc<str> = Arc::from("s");
        cache.insert(
            &a,
            "select set_config('role','x',false)",
            Some(9),
            CachePolicy::Text,
            &deny(),
            &Arc::default(),
        );
        assert_eq!(cache.get_fingerprint("s", 9).map(|c| c.decision), None);
        assert_eq!(
            cache
                .get_text("s", "select set_config('role','x',false)")
                .map(|c| c.decision),
            Some(deny())
        );
        cache.insert(
            &a,
            "select 2",
            Some(10),
            CachePolicy::Never,
            &Decision::Allow,
            &Arc::default(),
        );
        assert_eq!(cache.get_text("s", "select 2").map(|c| c.decision), None);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn rewrites_are_cached_by_text_only() {
        let cache = DecisionCache::default();
        let a: Arc<str> = Arc::from("s");
        let rewrite = Decision::Rewrite(Arc::from("select 1 from (select 'x') t"));
        cache.insert(
            &a,
            "select 1 from t",
            Some(5),
            CachePolicy::Fingerprint,
            &rewrite,
            &Arc::default(),
        );
        assert_eq!(cache.get_fingerprint("s", 5).map(|c| c.decision), None);
        assert_eq!(
            cache.get_text("s", "select 1 from t").map(|c| c.decision),
            Some(rewrite)
        );
    }

    #[test]
    fn capacity_bounds_memory() {
        let cache = DecisionCache::with_capacity(10);
        let a: Arc<str> = Arc::from("s");
        for i in 0..25u64 {
            cache.insert(
                &a,
                "x",
                Some(i),
                CachePolicy::Fingerprint,
                &Decision::Allow,
                &Arc::default(),
            );
        }
        assert!(cache.len() <= 10);
    }
}
