//! The audit log: one JSON line per decided request — who, what, the
//! decision and what made it, the outcome — apart from the access log, to a
//! file or stdout (`--audit-log`). Written like the log: queued in memory,
//! written in batches by its own thread, dropped and counted (never
//! blocking a request) if the consumer stalls.
//!
//! A record holds names, never a credential: no header, no signature, no
//! token, no query string.

use std::fs::OpenOptions;
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::sink::{FlushOnDrop, LogSink};

/// Where audit lines go.
pub struct Audit {
    sink: LogSink,
}

/// One decided request.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// When the request was answered, RFC 3339 in UTC with milliseconds.
    pub time: String,
    pub request_id: &'a str,
    pub principal: &'a str,
    /// The identity source that vouched for the principal (`key`, `sts`,
    /// `jwt`, `mtls`, `anonymous`).
    pub identity: &'a str,
    /// The client's address (the peer's, or what a trusted proxy said).
    pub client: IpAddr,
    /// The IAM action decided (`s3:GetObject`).
    pub action: &'a str,
    /// The S3 operation (`GetObject`).
    pub op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// DeleteObjects: every key of the document, each decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<&'a [String]>,
    /// `allow` or `deny`.
    pub decision: &'a str,
    /// The policy source, and inside it the rule, that decided
    /// (`rules:readers`, `rego:data.s3gate.allow`); absent when nothing
    /// allowed (the default deny).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<&'a str>,
    /// The decision's reason, as the source gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The HTTP status sent to the client.
    pub status: u16,
    /// Body bytes the request declared (its decoded length for
    /// aws-chunked uploads).
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// Until the response body was sent (or the client went away).
    pub duration_ms: f64,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit")
    }
}

impl Audit {
    /// Opens `path` for appending (`-`: stdout) and starts the writer.
    /// Drop the returned guard last: it writes out what is still queued.
    pub fn open(path: &Path) -> std::io::Result<(Audit, FlushOnDrop)> {
        let (sink, flush) = if path.as_os_str() == "-" {
            LogSink::start("audit", std::io::stdout())?
        } else {
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            LogSink::start("audit", file)?
        };
        Ok((Audit { sink }, flush))
    }

    /// Queues one line; never waits.
    pub fn record(&self, record: &AuditRecord<'_>) {
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, record).is_ok() {
            line.push(b'\n');
            self.sink.append(&line);
        }
    }
}

/// Now, for [`AuditRecord::time`].
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_json_line_per_record_in_the_file() {
        let dir = std::env::temp_dir().join(format!("s3gate-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let (audit, flush) = Audit::open(&path).unwrap();
        let keys = vec!["a".to_owned(), "b\"c".to_owned()];
        for decision in ["allow", "deny"] {
            audit.record(&AuditRecord {
                time: now(),
                request_id: "0001",
                principal: "alice",
                identity: "key",
                client: "127.0.0.1".parse().unwrap(),
                action: "s3:DeleteObject",
                op: "DeleteObjects",
                bucket: Some("b"),
                key: None,
                keys: Some(&keys),
                decision,
                decided_by: Some("rules:writers"),
                reason: Some("rule writers allows"),
                status: 200,
                bytes_in: 120,
                bytes_out: 300,
                duration_ms: 1.5,
            });
        }
        drop(flush);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["decision"], "allow");
        assert_eq!(lines[1]["decision"], "deny");
        assert_eq!(lines[0]["keys"][1], "b\"c");
        assert_eq!(lines[0]["decided_by"], "rules:writers");
        assert!(lines[0].get("key").is_none());
        assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    }
}
