//! The Python boundary: `control_plane._dataplane.Dataplane`.
//!
//! Methods here convert arguments, call into the Rust gateway and convert errors once. Nothing in
//! this file runs per statement on the hot path: Python is only reached for uncached decisions,
//! and then through the bridge queue, never from a tokio thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::audit::{AuditMeta, AuditQueue, AuditScope};
use crate::backend::UpstreamTarget;
use crate::decide::bridge::{Admission, Answer, Request};
use crate::decide::types::{CachePolicy, Decision, Hold, Refusal, Scope};
use crate::decide::Bridge;
use crate::frontend::workers::Workers;
use crate::frontend::{listener, Gateway, GatewayConfig};
use crate::mask::detect::{detect as detect_kinds, Kinds};
use crate::mask::{CopyColumn, CopyFormat, CopyPlan, Detectors, Kind, MaskFunction, MaskPlan};
use crate::net::framing::DEFAULT_MAX_MESSAGE;
use crate::net::tls::{server_config, UpstreamTls};
use crate::record::Recorder;

/// The data plane of one pgward process: listener, sessions and the decision cache.
#[pyclass(frozen, module = "control_plane._dataplane")]
pub struct Dataplane {
    gateway: Arc<Gateway>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    workers: Mutex<Option<Arc<Workers>>>,
    local_addr: Mutex<Option<SocketAddr>>,
    worker_threads: usize,
    connect_timeout: Duration,
}

fn secs(value: f64, name: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| PyValueError::new_err(format!("{name} must be a positive number of seconds")))
}

#[pymethods]
impl Dataplane {
    #[new]
    #[pyo3(signature = (
        listen, tls_cert=None, tls_key=None, *, allow_plaintext=false,
        max_message_size=DEFAULT_MAX_MESSAGE, worker_threads=0, connect_timeout_s=10.0,
        startup_timeout_s=30.0, decision_timeout_s=30.0, audit_queue_size=10_000,
        audit_strict_timeout_s=10.0,
        recording_dir=None, recording_level=1,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        listen: String,
        tls_cert: Option<PathBuf>,
        tls_key: Option<PathBuf>,
        allow_plaintext: bool,
        max_message_size: usize,
        worker_threads: usize,
        connect_timeout_s: f64,
        startup_timeout_s: f64,
        decision_timeout_s: f64,
        audit_queue_size: usize,
        audit_strict_timeout_s: f64,
        recording_dir: Option<PathBuf>,
        recording_level: i32,
    ) -> PyResult<Self> {
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(
                server_config(&cert, &key)
                    .map_err(|e| PyValueError::new_err(format!("TLS configuration: {e}")))?,
            ),
            (None, None) => None,
            _ => return Err(PyValueError::new_err("tls_cert and tls_key go together")),
        };
        if max_message_size < 1024 {
            return Err(PyValueError::new_err(
                "max_message_size must be at least 1024 bytes",
            ));
        }
        let config = GatewayConfig {
            listen,
            allow_plaintext,
            max_message_size,
            connect_timeout: secs(connect_timeout_s, "connect_timeout_s")?,
            startup_timeout: secs(startup_timeout_s, "startup_timeout_s")?,
        };
        let recorder = match recording_dir {
            Some(dir) => Some(Recorder::start(dir.clone(), recording_level).map_err(|e| {
                PyOSError::new_err(format!("cannot record sessions in {}: {e}", dir.display()))
            })?),
            None => None,
        };
        let bridge = Bridge::new(secs(decision_timeout_s, "decision_timeout_s")?)
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        let audit = AuditQueue::new(
            audit_queue_size,
            secs(audit_strict_timeout_s, "audit_strict_timeout_s")?,
        )
        .map_err(|e| PyOSError::new_err(e.to_string()))?;
        Ok(Self {
            connect_timeout: config.connect_timeout,
            gateway: Arc::new(
                Gateway::new(config, tls, Arc::new(bridge), Arc::new(audit))
                    .with_recorder(recorder),
            ),
            runtime: Mutex::new(None),
            workers: Mutex::new(None),
            local_addr: Mutex::new(None),
            worker_threads,
        })
    }

    /// Bind the listener and start serving; returns the bound `host:port`.
    fn start(&self, py: Python<'_>) -> PyResult<String> {
        let mut runtime_slot = self.runtime.lock();
        if runtime_slot.is_some() {
            return Err(PyRuntimeError::new_err("the data plane is already running"));
        }
        // One small runtime for the listener and cancel requests; sessions run on their own threads.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("pgward-listener")
            .build()
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        let threads = if self.worker_threads > 0 {
            self.worker_threads
        } else {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        };
        let workers =
            Arc::new(Workers::start(threads).map_err(|e| PyOSError::new_err(e.to_string()))?);
        let gw = Arc::clone(&self.gateway);
        let listener = py
            .allow_threads(|| runtime.block_on(listener::bind(&gw)))
            .map_err(|e| {
                PyOSError::new_err(format!("cannot listen on {}: {e}", gw.config.listen))
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| PyOSError::new_err(e.to_string()))?;
        runtime.spawn(listener::serve(gw, listener, Arc::clone(&workers)));
        *self.workers.lock() = Some(workers);
        *self.local_addr.lock() = Some(addr);
        *runtime_slot = Some(runtime);
        Ok(addr.to_string())
    }

    /// The address the listener is bound to, once started.
    fn local_addr(&self) -> Option<String> {
        self.local_addr.lock().map(|a| a.to_string())
    }

    /// The file descriptor to watch (readable = requests are waiting). Read and discard its
    /// bytes, then call `take_requests`.
    fn wake_fd(&self) -> i32 {
        self.gateway.bridge.wake_fd()
    }

    /// Drain the request queue: a list of `(request_id, kind, payload)`.
    fn take_requests<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for (id, request) in self.gateway.bridge.take() {
            let payload = PyDict::new(py);
            match &request {
                Request::Authenticate {
                    session_id,
                    client_addr,
                    user,
                    database,
                    password,
                    startup_params,
                    tls,
                } => {
                    payload.set_item("session_id", session_id)?;
                    payload.set_item("client_addr", client_addr)?;
                    payload.set_item("user", user)?;
                    payload.set_item("database", database)?;
                    payload.set_item("password", password)?;
                    let params = PyDict::new(py);
                    for (k, v) in startup_params {
                        params.set_item(k, v)?;
                    }
                    payload.set_item("startup_params", params)?;
                    payload.set_item("tls", tls)?;
                }
                Request::Decide {
                    session_id,
                    scope_key,
                    sql,
                    fingerprint,
                    source,
                } => {
                    payload.set_item("session_id", session_id)?;
                    payload.set_item("scope_key", scope_key)?;
                    payload.set_item("sql", sql)?;
                    payload.set_item("fingerprint", fingerprint.map(|f| format!("{f:016x}")))?;
                    payload.set_item("source", source)?;
                }
                Request::AwaitReview {
                    session_id,
                    review_id,
                }
                | Request::WithdrawReview {
                    session_id,
                    review_id,
                } => {
                    payload.set_item("session_id", session_id)?;
                    payload.set_item("review_id", review_id)?;
                }
                Request::SessionEnd { session_id, reason } => {
                    payload.set_item("session_id", session_id)?;
                    payload.set_item("reason", reason)?;
                }
            }
            list.append((id, request.kind(), payload))?;
        }
        Ok(list)
    }

    /// Answer request `request_id`. Returns False when nobody waits any more (the client left
    /// or the request timed out). A malformed answer raises ValueError and the waiting session
    /// is refused (fail closed).
    fn respond(&self, request_id: u64, answer: &Bound<'_, PyDict>) -> PyResult<bool> {
        match self.convert_answer(answer) {
            Ok(a) => Ok(self.gateway.bridge.respond(request_id, a)),
            Err(e) => {
                let refusal =
                    Refusal::new("XX000", "pgward's decision service gave an invalid answer");
                let fallback = if answer.contains("ok")? {
                    Answer::Authenticated(Err(refusal))
                } else {
                    Answer::Decided {
                        decision: Decision::Deny(Arc::new(refusal)),
                        cache: CachePolicy::Never,
                        audit: Arc::default(),
                    }
                };
                self.gateway.bridge.respond(request_id, fallback);
                Err(e)
            }
        }
    }

    /// The file descriptor that becomes readable when audit records are waiting. Read and discard
    /// its bytes, then call `take_audit_events`.
    fn audit_wake_fd(&self) -> i32 {
        self.gateway.audit.wake_fd()
    }

    /// Take up to `max` audit records: `(ack, time, kind, session, identity, username,
    /// connection, decision, class, statement, sqlstate, body)` tuples.
    #[allow(clippy::type_complexity)]
    fn take_audit_events<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for e in self.gateway.audit.take(max) {
            list.append((
                e.ack,
                e.time,
                e.kind,
                &*e.session,
                &*e.identity,
                &*e.username,
                &*e.connection,
                e.decision,
                e.class.as_deref(),
                e.statement,
                e.sqlstate,
                e.body,
            ))?;
        }
        Ok(list)
    }

    /// Audit records waiting in the queue.
    fn audit_pending(&self) -> usize {
        self.gateway.audit.len()
    }

    /// These strict-mode records are committed: their statements may go upstream.
    fn audit_ack(&self, ids: Vec<u64>) {
        self.gateway.audit.ack(&ids);
    }

    /// Forget every cached decision (policies changed).
    fn invalidate(&self) {
        self.gateway.cache.clear();
    }

    /// Counters: sessions, statements, cache hits, Python decisions, denials.
    fn stats(&self) -> HashMap<&'static str, u64> {
        let mut stats: HashMap<&'static str, u64> =
            self.gateway.stats.snapshot().into_iter().collect();
        stats.insert("cached_decisions", self.gateway.cache.len() as u64);
        stats.insert("cancel_keys", self.gateway.cancels.len() as u64);
        if let Some(recorder) = &self.gateway.recorder {
            stats.extend(recorder.snapshot());
        }
        stats
    }

    /// Stop listening and close every session.
    fn stop(&self, py: Python<'_>) {
        self.gateway.bridge.close();
        self.gateway.audit.close();
        let runtime = self.runtime.lock().take();
        let workers = self.workers.lock().take();
        py.allow_threads(|| {
            if let Some(runtime) = runtime {
                runtime.shutdown_timeout(Duration::from_secs(5));
            }
            if let Some(workers) = workers {
                workers.stop();
            }
        });
    }
}

impl Dataplane {
    fn convert_answer(&self, answer: &Bound<'_, PyDict>) -> PyResult<Answer> {
        if let Some(ok) = answer.get_item("ok")? {
            if ok.extract::<bool>()? {
                let scope = required(answer, "scope")?;
                let scope = scope.downcast::<PyDict>()?;
                return Ok(Answer::Authenticated(Ok(Box::new(Admission {
                    scope: self.convert_scope(scope)?,
                }))));
            }
            return Ok(Answer::Authenticated(Err(convert_refusal(
                answer, "28000",
            )?)));
        }
        let action: String = required(answer, "action")?.extract()?;
        let cache = match optional::<String>(answer, "cache")?.as_deref() {
            Some("fingerprint") => CachePolicy::Fingerprint,
            Some("text") => CachePolicy::Text,
            Some("none") | None => CachePolicy::Never,
            Some(other) => {
                return Err(PyValueError::new_err(format!(
                    "unknown cache policy {other:?}"
                )))
            }
        };
        let decision = match action.as_str() {
            "allow" => Decision::Allow,
            "deny" => Decision::Deny(Arc::new(convert_refusal(answer, "42501")?)),
            "rewrite" => {
                let sql: String = required(answer, "sql")?.extract()?;
                if sql.trim().is_empty() || sql.contains('\0') {
                    return Err(PyValueError::new_err(
                        "a rewrite needs a non-empty sql without NUL",
                    ));
                }
                Decision::Rewrite(Arc::from(sql))
            }
            "hold" => {
                let review_id: String = required(answer, "review")?.extract()?;
                let wait: f64 = required(answer, "wait")?.extract()?;
                if !(wait.is_finite() && wait > 0.0 && wait <= 31.0 * 86_400.0) {
                    return Err(PyValueError::new_err("a hold needs 0 < wait <= 31 days"));
                }
                Decision::Hold(Arc::new(Hold {
                    review_id,
                    notice: convert_refusal(answer, "01000")?,
                    wait: Duration::from_secs_f64(wait),
                }))
            }
            other => return Err(PyValueError::new_err(format!("unknown action {other:?}"))),
        };
        let plans = match answer.get_item("copy")?.filter(|c| !c.is_none()) {
            Some(plans) => plans
                .try_iter()?
                .map(|p| convert_copy_plan(p?.downcast::<PyDict>()?))
                .collect::<PyResult<Vec<_>>>()?,
            None => Vec::new(),
        };
        let decision = match decision {
            _ if plans.is_empty() => decision,
            Decision::Allow => Decision::AllowCopy {
                plans: Arc::from(plans),
                rewrite: None,
            },
            Decision::Rewrite(text) => Decision::AllowCopy {
                plans: Arc::from(plans),
                rewrite: Some(text),
            },
            other => other,
        };
        Ok(Answer::Decided {
            decision,
            cache,
            audit: Arc::new(convert_audit_meta(answer)?),
        })
    }

    fn convert_scope(&self, scope: &Bound<'_, PyDict>) -> PyResult<Scope> {
        let upstream = required(scope, "upstream")?;
        let upstream = upstream.downcast::<PyDict>()?;
        let tls = match required(upstream, "tls_mode")?
            .extract::<String>()?
            .as_str()
        {
            "disable" => UpstreamTls::Disable,
            "require" => UpstreamTls::Require,
            "verify-full" => UpstreamTls::VerifyFull,
            other => return Err(PyValueError::new_err(format!("unknown tls_mode {other:?}"))),
        };
        let startup_params: Vec<(String, String)> = match upstream.get_item("startup_params")? {
            Some(p) if !p.is_none() => p
                .downcast::<PyDict>()?
                .iter()
                .map(|(k, v)| Ok((k.extract()?, v.extract()?)))
                .collect::<PyResult<_>>()?,
            _ => Vec::new(),
        };
        Ok(Scope {
            scope_key: Arc::from(required(scope, "scope_key")?.extract::<String>()?),
            identity: optional::<String>(scope, "identity")?.unwrap_or_default(),
            session_uuid: Arc::from(required(scope, "session_uuid")?.extract::<String>()?),
            connection: Arc::from(optional::<String>(scope, "connection")?.unwrap_or_default()),
            identity_detail: optional::<String>(scope, "identity_detail")?.map(Arc::from),
            setup_sql: optional::<String>(scope, "setup_sql")?.filter(|s| !s.trim().is_empty()),
            mask_plan: Arc::new(convert_masks(scope)?),
            allow_function_call: optional::<bool>(scope, "allow_function_call")?.unwrap_or(false),
            audit: Arc::new(convert_audit_scope(scope)?),
            upstream: UpstreamTarget {
                host: required(upstream, "host")?.extract()?,
                port: required(upstream, "port")?.extract()?,
                database: required(upstream, "database")?.extract()?,
                user: required(upstream, "user")?.extract()?,
                password: optional(upstream, "password")?,
                tls,
                sslrootcert: optional::<PathBuf>(upstream, "sslrootcert")?,
                startup_params,
                connect_timeout: self.connect_timeout,
            },
        })
    }
}

/// `audit`: `{enabled, strict, identity_json, client_addr, parameters}`; absent means off.
fn convert_audit_scope(scope: &Bound<'_, PyDict>) -> PyResult<AuditScope> {
    let Some(audit) = scope.get_item("audit")?.filter(|a| !a.is_none()) else {
        return Ok(AuditScope::default());
    };
    let audit = audit.downcast::<PyDict>()?;
    let text = |key: &str| -> PyResult<Arc<str>> {
        Ok(Arc::from(
            optional::<String>(audit, key)?.unwrap_or_default(),
        ))
    };
    Ok(AuditScope {
        enabled: optional::<bool>(audit, "enabled")?.unwrap_or(false),
        strict: optional::<bool>(audit, "strict")?.unwrap_or(false),
        identity_json: text("identity_json")?,
        subject: Arc::from(optional::<String>(scope, "identity")?.unwrap_or_default()),
        username: text("username")?,
        client_addr: text("client_addr")?,
        parameters: optional::<bool>(audit, "parameters")?.unwrap_or(false),
    })
}

/// A decision's `audit`: `{class, classes, policy, rule, kinds, policy_version, approval}` (all
/// optional).
fn convert_audit_meta(answer: &Bound<'_, PyDict>) -> PyResult<AuditMeta> {
    let Some(audit) = answer.get_item("audit")?.filter(|a| !a.is_none()) else {
        return Ok(AuditMeta::default());
    };
    let audit = audit.downcast::<PyDict>()?;
    let text = |key: &str| -> PyResult<Option<Arc<str>>> {
        Ok(optional::<String>(audit, key)?.map(Arc::from))
    };
    Ok(AuditMeta {
        class: text("class")?,
        policy: text("policy")?,
        rule: text("rule")?,
        kinds: optional::<Vec<String>>(audit, "kinds")?
            .unwrap_or_default()
            .into_iter()
            .map(Arc::from)
            .collect(),
        part_classes: optional::<Vec<String>>(audit, "classes")?
            .unwrap_or_default()
            .into_iter()
            .map(Arc::from)
            .collect(),
        policy_version: text("policy_version")?,
        approval: text("approval")?,
    })
}

/// `masks`: `[{table_oid, attnum, function, text?, first?, last?}]`, `detectors`:
/// `[{kind, function, text?, first?, last?}]` strictest first, `mask_key`: hex.
fn convert_masks(scope: &Bound<'_, PyDict>) -> PyResult<MaskPlan> {
    let key_hex = optional::<String>(scope, "mask_key")?.unwrap_or_default();
    let key = decode_hex(&key_hex).ok_or_else(|| PyValueError::new_err("mask_key must be hex"))?;
    let mut columns = HashMap::new();
    if let Some(masks) = scope.get_item("masks")?.filter(|m| !m.is_none()) {
        for item in masks.try_iter()? {
            let item = item?;
            let spec = item.downcast::<PyDict>()?;
            let table_oid: u32 = required(spec, "table_oid")?.extract()?;
            let attnum: i16 = required(spec, "attnum")?.extract()?;
            columns.insert((table_oid, attnum), convert_function(spec, &key)?);
        }
    }
    let mut detectors = Vec::new();
    if let Some(items) = scope.get_item("detectors")?.filter(|m| !m.is_none()) {
        for item in items.try_iter()? {
            let item = item?;
            let spec = item.downcast::<PyDict>()?;
            let name: String = required(spec, "kind")?.extract()?;
            let kind = Kind::from_name(&name)
                .ok_or_else(|| PyValueError::new_err(format!("unknown detector kind {name:?}")))?;
            detectors.push((kind, convert_function(spec, &key)?));
        }
    }
    Ok(MaskPlan::new(columns)
        .with_detectors(Detectors::new(detectors))
        .with_key(key))
}

fn convert_function(spec: &Bound<'_, PyDict>, key: &[u8]) -> PyResult<MaskFunction> {
    MaskFunction::from_spec(
        &required(spec, "function")?.extract::<String>()?,
        optional(spec, "text")?,
        optional::<usize>(spec, "first")?.unwrap_or(0),
        optional::<usize>(spec, "last")?.unwrap_or(0),
        key,
    )
    .map_err(|e| PyValueError::new_err(e.to_string()))
}

/// The kinds of content the data plane's detectors find in `value` (`email`, `card`, `ssn`,
/// `phone`): the same scanners that mask columns without an origin.
#[pyfunction]
fn detect(value: Text) -> Vec<&'static str> {
    detect_kinds(value.bytes(), all_kinds())
        .iter()
        .map(Kind::name)
        .collect()
}

/// A value to scan: `str` (scanned as UTF-8) or `bytes`.
#[derive(FromPyObject)]
enum Text {
    Str(pyo3::pybacked::PyBackedStr),
    Bytes(pyo3::pybacked::PyBackedBytes),
}

impl Text {
    fn bytes(&self) -> &[u8] {
        match self {
            Text::Str(s) => s.as_bytes(),
            Text::Bytes(b) => b,
        }
    }
}

/// For each kind, how many of `values` contain it (None values are skipped): what `pgward
/// connections propose-tags` counts over a column's sample, in one call per column.
#[pyfunction]
fn detect_counts(py: Python<'_>, values: Vec<Option<Text>>) -> HashMap<&'static str, usize> {
    let values: Vec<&[u8]> = values.iter().flatten().map(Text::bytes).collect();
    py.allow_threads(|| {
        let mut counts: HashMap<&'static str, usize> =
            Kind::ALL.iter().map(|k| (k.name(), 0)).collect();
        for value in &values {
            for kind in detect_kinds(value, all_kinds()).iter() {
                if let Some(n) = counts.get_mut(kind.name()) {
                    *n += 1;
                }
            }
        }
        counts
    })
}

fn all_kinds() -> Kinds {
    let mut kinds = Kinds::default();
    for kind in Kind::ALL {
        kinds.insert(kind);
    }
    kinds
}

/// One COPY plan: `{"format": "text"|"csv"|"binary", "delimiter"?, "null"?, "quote"?, "escape"?,
/// "header"?, "columns": null | [null | {"function", "text"?, "first"?, "last"?, "type_oid"}]}`.
/// A `hash` function gets the session's key when the relay applies the plan.
fn convert_copy_plan(plan: &Bound<'_, PyDict>) -> PyResult<CopyPlan> {
    let format = match required(plan, "format")?.extract::<String>()?.as_str() {
        "text" => CopyFormat::Text,
        "csv" => CopyFormat::Csv,
        "binary" => CopyFormat::Binary,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown COPY format {other:?}"
            )))
        }
    };
    let byte = |key: &str, default: u8| -> PyResult<u8> {
        match optional::<String>(plan, key)? {
            None => Ok(default),
            Some(s) => match s.as_bytes() {
                [b] => Ok(*b),
                _ => Err(PyValueError::new_err(format!(
                    "COPY {key} must be one byte, not {s:?}"
                ))),
            },
        }
    };
    let columns = match plan.get_item("columns")?.filter(|c| !c.is_none()) {
        None => None,
        Some(list) => Some(
            list.try_iter()?
                .map(|item| {
                    let item = item?;
                    if item.is_none() {
                        return Ok(None);
                    }
                    let spec = item.downcast::<PyDict>()?;
                    let function = MaskFunction::from_spec(
                        &required(spec, "function")?.extract::<String>()?,
                        optional(spec, "text")?,
                        optional::<usize>(spec, "first")?.unwrap_or(0),
                        optional::<usize>(spec, "last")?.unwrap_or(0),
                        &[],
                    )
                    .map_err(|e| PyValueError::new_err(e.to_string()))?;
                    Ok(Some(CopyColumn {
                        function,
                        type_oid: required(spec, "type_oid")?.extract()?,
                    }))
                })
                .collect::<PyResult<Vec<_>>>()?,
        ),
    };
    Ok(CopyPlan {
        format,
        delimiter: byte("delimiter", b'\t')?,
        null: optional::<String>(plan, "null")?.map_or_else(|| b"\\N".to_vec(), String::into_bytes),
        quote: byte("quote", b'"')?,
        escape: byte("escape", b'"')?,
        header: optional::<bool>(plan, "header")?.unwrap_or(false),
        columns,
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
        .collect()
}

fn required<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?
        .ok_or_else(|| PyValueError::new_err(format!("answer lacks {key:?}")))
}

fn optional<'py, T: FromPyObject<'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<T>> {
    match d.get_item(key)? {
        Some(v) if !v.is_none() => Ok(Some(v.extract()?)),
        _ => Ok(None),
    }
}

fn convert_refusal(d: &Bound<'_, PyDict>, default_sqlstate: &str) -> PyResult<Refusal> {
    Ok(Refusal {
        sqlstate: optional::<String>(d, "sqlstate")?.unwrap_or_else(|| default_sqlstate.to_owned()),
        message: optional::<String>(d, "message")?
            .unwrap_or_else(|| "refused by pgward".to_owned()),
        detail: optional(d, "detail")?,
        hint: optional(d, "hint")?,
    })
}

/// The extension module `control_plane._dataplane`.
#[pymodule]
#[pyo3(name = "_dataplane")]
pub fn dataplane_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Dataplane>()?;
    m.add_function(wrap_pyfunction!(detect, m)?)?;
    m.add_function(wrap_pyfunction!(detect_counts, m)?)?;
    m.add("DEFAULT_MAX_MESSAGE", DEFAULT_MAX_MESSAGE)?;
    Ok(())
}
