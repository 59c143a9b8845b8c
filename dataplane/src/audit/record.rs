//! One audit record as the data plane hands it to Python: the searchable columns and the JSON
//! body that Python hashes into the chain exactly as written here.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{AuditMeta, AuditScope};

#[derive(Debug, Clone)]
pub struct Event {
    /// Strict mode: the id Python acknowledges once the record is committed; 0 otherwise.
    pub ack: u64,
    pub time: String,
    pub kind: &'static str,
    pub session: Arc<str>,
    pub identity: Arc<str>,
    pub username: Arc<str>,
    pub connection: Arc<str>,
    pub decision: &'static str,
    pub class: Option<Arc<str>>,
    pub statement: String,
    pub sqlstate: Option<String>,
    pub body: String,
}

impl Event {
    #[cfg(test)]
    pub fn for_test(statement: &str) -> Self {
        Self {
            ack: 0,
            time: now_rfc3339(),
            kind: "statement",
            session: Arc::from("s"),
            identity: Arc::from("i"),
            username: Arc::from("u"),
            connection: Arc::from("c"),
            decision: "allow",
            class: None,
            statement: statement.to_owned(),
            sqlstate: None,
            body: "{}".into(),
        }
    }
}

/// Builds a JSON object field by field. Strings are escaped by serde_json; `raw` embeds JSON that
/// is already serialised (the identity object from Python).
pub struct JsonObject {
    out: String,
    first: bool,
}

impl Default for JsonObject {
    fn default() -> Self {
        Self::new()
    }
}

impl JsonObject {
    pub fn new() -> Self {
        let mut out = String::with_capacity(512);
        out.push('{');
        Self { out, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        push_json_str(&mut self.out, value);
        self
    }

    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.str(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub fn num(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    pub fn opt_num(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.num(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.raw(key, if value { "true" } else { "false" })
    }

    pub fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key);
        self.out
            .push_str(if json.is_empty() { "null" } else { json });
        self
    }

    pub fn str_array<'a>(&mut self, key: &str, values: impl Iterator<Item = &'a str>) -> &mut Self {
        self.key(key);
        self.out.push('[');
        for (i, v) in values.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            push_json_str(&mut self.out, v);
        }
        self.out.push(']');
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

pub fn push_json_str(out: &mut String, value: &str) {
    match serde_json::to_string(value) {
        Ok(s) => out.push_str(&s),
        // Serialising a &str cannot fail; keep the record valid JSON regardless.
        Err(_) => out.push_str("\"\""),
    }
}

/// The fields every record of a session starts with.
pub fn session_fields(obj: &mut JsonObject, kind: &str, time: &str, scope: &ScopeRef<'_>) {
    obj.str("kind", kind)
        .str("time", time)
        .str("session", scope.session)
        .str("connection", scope.connection)
        .raw("identity", &scope.audit.identity_json)
        .str("client_addr", &scope.audit.client_addr);
}

/// The decision fields of a statement record.
pub fn decision_fields(
    obj: &mut JsonObject,
    meta: &AuditMeta,
    class: Option<&str>,
    part_kind: Option<&str>,
) {
    obj.opt_str("class", class)
        .opt_str("statement_kind", part_kind)
        .opt_str("policy", meta.policy.as_deref())
        .opt_str("rule", meta.rule.as_deref())
        .opt_str("policy_version", meta.policy_version.as_deref())
        .opt_str("approval", meta.approval.as_deref());
}

/// What a record needs from the session's scope.
pub struct ScopeRef<'a> {
    pub session: &'a Arc<str>,
    pub connection: &'a Arc<str>,
    pub audit: &'a AuditScope,
}

/// Now, as RFC 3339 UTC with microseconds (`2026-11-25T06:45:00.123456Z`).
pub fn now_rfc3339() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_unix_micros(since.as_secs(), since.subsec_micros())
}

fn format_unix_micros(secs: u64, micros: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(format_unix_micros(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2024-02-29T12:34:56.000789Z (a leap day)
        assert_eq!(
            format_unix_micros(1_709_210_096, 789),
            "2024-02-29T12:34:56.000789Z"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut o = JsonObject::new();
        o.str("s", "a\"b\\c\n\u{1}é")
            .opt_str("n", None)
            .num("x", 3)
            .str_array("l", ["a", "b"].into_iter());
        let text = o.finish();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["s"], "a\"b\\c\n\u{1}é");
        assert!(v["n"].is_null());
        assert_eq!(v["l"][1], "b");
    }
}
