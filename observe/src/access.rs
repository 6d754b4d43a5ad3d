//! The access log: one line per request, target `s3gate::access`.
//!
//! It is a `tracing` event by contract (`S3GATE_LOG` filters it like any
//! other line, e.g. `s3gate::access=off`), but at one line per request
//! tracing's formatter was the largest single cost left on a small GET
//! (5 % of the gateway's CPU: the field visitors, `Debug` for every string,
//! the timestamp through `core::fmt`). Once [`install`]ed, [`write`] formats
//! the same line directly (a reused buffer, digits by hand) and hands it to
//! the log thread's [`LogSink`]; the caller checks that tracing would log it
//! (`tracing::enabled!`) first. The bytes are those tracing's formatter
//! writes for the same fields, text or JSON: the unit tests below compare
//! the two.
//!
//! Not installed (no log thread, or a terminal, which gets tracing's
//! colours), [`write`] returns false and the caller logs through tracing.

use std::cell::RefCell;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::sink::LogSink;

/// The `tracing` target of the access log.
pub const TARGET: &str = "s3gate::access";

/// The log's line format (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

struct Installed {
    sink: LogSink,
    format: Format,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// From now on [`write`] formats access lines itself, in `format`, into
/// `sink` (the log's). Once per process; a second call changes nothing.
pub fn install(sink: LogSink, format: Format) {
    let _ = INSTALLED.set(Installed { sink, format });
}

/// One request's access-log fields, in the order they are written. A
/// `None` field is left out, as tracing leaves out an empty `Option`.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    pub request_id: &'a str,
    pub peer: SocketAddr,
    /// Only when a trusted proxy named another address than the peer's.
    pub client: Option<IpAddr>,
    pub principal: &'a str,
    pub identity: &'a str,
    pub op: &'a str,
    pub bucket: &'a str,
    pub key: &'a str,
    /// DeleteObjects only: its keys as a JSON array.
    pub keys: Option<&'a str>,
    pub decision: &'a str,
    /// SigV2 requests only.
    pub auth: Option<&'a str>,
    pub status: u16,
    pub latency_us: u64,
}

thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Writes `line` to the installed sink: false if none is installed (then
/// the caller logs it through tracing).
pub fn write(line: &Line<'_>) -> bool {
    let Some(installed) = INSTALLED.get() else {
        return false;
    };
    let now = SystemTime::now();
    BUF.with(|buf| match buf.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            format(&mut buf, installed.format, now, line);
            installed.sink.append(&buf);
        }
        // Re-entered on this thread (cannot happen: nothing in `format`
        // logs); a fresh buffer rather than a panic.
        Err(_) => {
            let mut buf = Vec::with_capacity(512);
            format(&mut buf, installed.format, now, line);
            installed.sink.append(&buf);
        }
    });
    true
}

/// The whole line, newline included, as tracing-subscriber's `Full` text
/// format (no ANSI) or its JSON format writes it.
pub fn format(out: &mut Vec<u8>, format: Format, at: SystemTime, line: &Line<'_>) {
    match format {
        Format::Text => text(out, at, line),
        Format::Json => json(out, at, line),
    }
}

fn text(out: &mut Vec<u8>, at: SystemTime, l: &Line<'_>) {
    timestamp(out, at);
    out.extend_from_slice(b"  INFO ");
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b": request_id=");
    debug_str(out, l.request_id);
    out.extend_from_slice(b" peer=");
    socket_addr(out, l.peer);
    if let Some(client) = l.client {
        out.extend_from_slice(b" client=");
        let _ = write!(out, "{client}");
    }
    for (name, value) in [
        (" principal=", l.principal),
        (" identity=", l.identity),
        (" op=", l.op),
        (" bucket=", l.bucket),
        (" key=", l.key),
    ] {
        out.extend_from_slice(name.as_bytes());
        debug_str(out, value);
    }
    if let Some(keys) = l.keys {
        out.extend_from_slice(b" keys=");
        debug_str(out, keys);
    }
    out.extend_from_slice(b" decision=");
    debug_str(out, l.decision);
    if let Some(auth) = l.auth {
        out.extend_from_slice(b" auth=");
        debug_str(out, auth);
    }
    out.extend_from_slice(b" status=");
    out.extend_from_slice(itoa::Buffer::new().format(l.status).as_bytes());
    out.extend_from_slice(b" latency_us=");
    out.extend_from_slice(itoa::Buffer::new().format(l.latency_us).as_bytes());
    out.push(b'\n');
}

fn json(out: &mut Vec<u8>, at: SystemTime, l: &Line<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, at);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"request_id\":");
    json_str(out, l.request_id);
    out.extend_from_slice(b",\"peer\":\"");
    socket_addr(out, l.peer);
    out.push(b'"');
    if let Some(client) = l.client {
        out.extend_from_slice(b",\"client\":\"");
        let _ = write!(out, "{client}");
        out.push(b'"');
    }
    for (name, value) in [
        (",\"principal\":", l.principal),
        (",\"identity\":", l.identity),
        (",\"op\":", l.op),
        (",\"bucket\":", l.bucket),
        (",\"key\":", l.key),
    ] {
        out.extend_from_slice(name.as_bytes());
        json_str(out, value);
    }
    if let Some(keys) = l.keys {
        out.extend_from_slice(b",\"keys\":");
        json_str(out, keys);
    }
    out.extend_from_slice(b",\"decision\":");
    json_str(out, l.decision);
    if let Some(auth) = l.auth {
        out.extend_from_slice(b",\"auth\":");
        json_str(out, auth);
    }
    out.extend_from_slice(b",\"status\":");
    out.extend_from_slice(itoa::Buffer::new().format(l.status).as_bytes());
    out.extend_from_slice(b",\"latency_us\":");
    out.extend_from_slice(itoa::Buffer::new().format(l.latency_us).as_bytes());
    out.extend_from_slice(b"},\"target\":\"");
    out.extend_from_slice(TARGET.as_bytes());
    out.extend_from_slice(b"\"}\n");
}

/// `addr` as its `Display` writes it. IPv4 (nearly every peer) digit by
/// digit; IPv6, with its zero-run compression, through `Display` itself.
fn socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let SocketAddr::V4(v4) = addr else {
        let _ = write!(out, "{addr}");
        return;
    };
    let mut digits = itoa::Buffer::new();
    for (i, octet) in v4.ip().octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(digits.format(octet).as_bytes());
    }
    out.push(b':');
    out.extend_from_slice(digits.format(v4.port()).as_bytes());
}

/// `s` as `<str as Debug>` writes it: quoted, escaped. Printable ASCII
/// without `"` and `\` (every name and id, nearly every key) is copied as
/// it is; anything else goes through `Debug` itself.
fn debug_str(out: &mut Vec<u8>, s: &str) {
    if is_plain(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// Whether every byte is printable ASCII other than `"` and `\`: eight
/// bytes at a time (seven fields of every access line go through this).
fn is_plain(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Non-zero exactly when some byte of `v` is below `n` (`n` <= 0x80).
    let has_below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS;
    let has_byte = |v: u64, b: u8| has_below(v ^ (ONES * u64::from(b)), 1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        let v = u64::from_ne_bytes(w);
        let bad = has_below(v, 0x20)
            | (v & HIGHS)
            | has_byte(v, 0x7f)
            | has_byte(v, b'"')
            | has_byte(v, b'\\');
        if bad != 0 {
            return false;
        }
    }
    words
        .remainder()
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// `s` as a JSON string, as serde_json (tracing's JSON format) escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC, as tracing-subscriber's
/// `SystemTime` timer writes it.
fn timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    // The date and time down to the second change once a second: kept per
    // thread and only the microseconds written per line.
    let cached = SECOND.with(|c| c.get()).filter(|(at, _)| *at == secs);
    let Some((_, prefix)) = cached.or_else(|| {
        let prefix = second_prefix(secs)?;
        SECOND.with(|c| c.set(Some((secs, prefix))));
        Some((secs, prefix))
    }) else {
        out.extend_from_slice(b"0000-00-00T00:00:00.000000Z");
        return;
    };
    out.extend_from_slice(&prefix);
    let mut micros = *b"000000Z";
    put_digits(&mut micros[..6], since.subsec_micros());
    out.extend_from_slice(&micros);
}

thread_local! {
    /// The last second [`timestamp`] wrote, and its `YYYY-MM-DDTHH:MM:SS.`.
    static SECOND: std::cell::Cell<Option<(u64, [u8; 20])>> = const { std::cell::Cell::new(None) };
}

/// `YYYY-MM-DDTHH:MM:SS.` of a unix second; `None` past what the calendar
/// holds.
fn second_prefix(secs: u64) -> Option<[u8; 20]> {
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()?;
    let mut s = *b"0000-00-00T00:00:00.";
    put_digits(&mut s[0..4], u32::try_from(t.year()).unwrap_or(0));
    put_digits(&mut s[5..7], u32::from(u8::from(t.month())));
    put_digits(&mut s[8..10], u32::from(t.day()));
    put_digits(&mut s[11..13], u32::from(t.hour()));
    put_digits(&mut s[14..16], u32::from(t.minute()));
    put_digits(&mut s[17..19], u32::from(t.second()));
    Some(s)
}

/// `value`'s last `slots.len()` decimal digits, zero-padded.
fn put_digits(slots: &mut [u8], mut value: u32) {
    for slot in slots.iter_mut().rev() {
        // `value % 10` is one digit.
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    #[test]
    fn plain_is_the_byte_rule_in_every_position() {
        let rule = |s: &[u8]| {
            s.iter()
                .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        };
        for len in [0usize, 1, 7, 8, 9, 16, 17, 23] {
            let base = vec![b'a'; len];
            assert!(is_plain(&base));
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = base.clone();
                    s[at] = b;
                    assert_eq!(is_plain(&s), rule(&s), "byte {b:#x} at {at} of {len}");
                }
            }
        }
        // The edges of the printable range, side by side in one word.
        assert!(is_plain(b" ~!#[]{}"));
        assert!(!is_plain(b" ~!#[]{\x7f"));
    }

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::FormatTime;

    use super::*;

    /// A timer that writes what [`timestamp`] writes for a fixed instant.
    struct Fixed(SystemTime);

    impl FormatTime for Fixed {
        fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
            let mut out = Vec::new();
            timestamp(&mut out, self.0);
            w.write_str(std::str::from_utf8(&out).unwrap())
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What tracing's formatter writes for `l`, as `respond::finish` logs it.
    fn through_tracing(format: Format, at: SystemTime, l: &Line<'_>) -> String {
        let captured = Captured::default();
        let out = captured.clone();
        let builder = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .with_timer(Fixed(at));
        let dispatch = match format {
            Format::Text => tracing::Dispatch::new(builder.finish()),
            Format::Json => tracing::Dispatch::new(builder.json().finish()),
        };
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!(
                target: "s3gate::access",
                request_id = l.request_id,
                peer = %l.peer,
                client = l.client.map(tracing::field::display),
                principal = l.principal,
                identity = l.identity,
                op = l.op,
                bucket = l.bucket,
                key = l.key,
                keys = l.keys,
                decision = l.decision,
                auth = l.auth,
                status = l.status,
                latency_us = l.latency_us,
            );
        });
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn direct(format: Format, at: SystemTime, l: &Line<'_>) -> String {
        let mut out = Vec::new();
        super::format(&mut out, format, at, l);
        String::from_utf8(out).unwrap()
    }

    fn line() -> Line<'static> {
        Line {
            request_id: "1DA285FB000000000004",
            peer: "127.0.0.1:51088".parse().unwrap(),
            client: None,
            principal: "alice",
            identity: "key",
            op: "GetObject",
            bucket: "data",
            key: "reports/2026/q4.parquet",
            keys: None,
            decision: "allow",
            auth: None,
            status: 200,
            latency_us: 834,
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let mut out = Vec::new();
        timestamp(&mut out, SystemTime::UNIX_EPOCH);
        assert_eq!(out, b"1970-01-01T00:00:00.000000Z");
        out.clear();
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_796_528_322, 458_503_999);
        timestamp(&mut out, at);
        assert_eq!(out, b"2026-12-06T03:38:42.458503Z");
    }

    #[test]
    fn a_cached_second_writes_what_a_fresh_one_does() {
        let base = SystemTime::UNIX_EPOCH + Duration::new(1_796_528_322, 0);
        let instants = [
            base,
            base + Duration::from_micros(999_999),
            base + Duration::from_secs(1),
            base - Duration::from_secs(86_400),
            base + Duration::from_micros(1),
            base + Duration::from_secs(59 * 60 + 18),
        ];
        for at in instants {
            let mut cached = Vec::new();
            timestamp(&mut cached, at);
            SECOND.with(|c| c.set(None));
            let mut fresh = Vec::new();
            timestamp(&mut fresh, at);
            assert_eq!(cached, fresh, "{at:?}");
            // Twice in a row: the second from the cache.
            let mut again = Vec::new();
            timestamp(&mut again, at);
            assert_eq!(again, fresh);
        }
        let mut out = Vec::new();
        timestamp(&mut out, base + Duration::from_secs(59 * 60 + 18));
        assert_eq!(&out[..], b"2026-12-06T04:38:00.000000Z");
    }

    #[test]
    fn socket_addrs_are_what_display_writes() {
        for addr in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.20.3.104:443",
            "[::1]:8080",
            "[2001:db8::7]:1",
            "[::ffff:192.0.2.1]:80",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
        }
    }

    #[test]
    fn lines_are_what_tracing_writes() {
        let at = SystemTime::UNIX_EPOCH + Duration::new(1_796_528_322, 458_503_000);
        let mut cases = vec![line()];
        let mut all = line();
        all.client = Some("203.0.113.7".parse().unwrap());
        all.peer = "[::1]:8080".parse().unwrap();
        all.keys = Some(r#"["a","b\"c"]"#);
        all.auth = Some("sigv2");
        all.status = 403;
        all.latency_us = u64::MAX;
        cases.push(all);
        let mut odd = line();
        // Keys are the client's bytes: quotes, backslashes, control
        // characters, non-ASCII, combining marks.
        odd.key = "a\"b\\c\nd\te\u{7f}f\u{e9}g\u{301}h\u{200b}";
        odd.bucket = "";
        odd.principal = "-";
        odd.op = "-";
        cases.push(odd);
        for l in &cases {
            for format in [Format::Text, Format::Json] {
                assert_eq!(
                    direct(format, at, l),
                    through_tracing(format, at, l),
                    "{format:?} {l:?}"
                );
            }
        }
    }
}
