//! The process's Prometheus metrics: one registry, built once, shared by
//! every part of the process through [`crate::metrics`].
//!
//! Recording is a few relaxed atomic operations (plus, for labelled
//! families, a read-locked hash lookup): no allocation for the label sets
//! of the request path, whose values are all `&'static str`. The two
//! labelled series every request records are looked up through a
//! per-thread table of handles ([`Resolved`]), keyed by the addresses of
//! those label values: no hashing of label text, and no family lock. Families with
//! open-ended label values (backend names) are touched only on rare events
//! (an upstream error, a credential refresh). `--metrics false` turns
//! recording off ([`Metrics::set_enabled`]); the endpoint then serves the
//! series at their last values.
//!
//! Exposition is `prometheus-client`'s OpenMetrics text encoder: nothing
//! here formats the wire format by hand.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The caches of a data plane, one label value each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    /// SigV4 signing keys.
    Keys,
    /// Access keys the control plane did not know.
    UnknownKeys,
    /// Identities of client certificates.
    Certs,
    /// SigV2 verifications.
    SigV2,
    /// Identities of bearer tokens.
    Tokens,
    /// Bucket- and exact-scoped decisions.
    Decisions,
    /// Prefix-scoped decisions.
    Prefixes,
    /// Shared routes.
    Routes,
    /// Per-principal routes.
    PrincipalRoutes,
    /// Bucket names nothing serves.
    UnknownBuckets,
    /// CORS rules.
    Cors,
}

impl CacheKind {
    const ALL: [CacheKind; 11] = [
        CacheKind::Keys,
        CacheKind::UnknownKeys,
        CacheKind::Certs,
        CacheKind::SigV2,
        CacheKind::Tokens,
        CacheKind::Decisions,
        CacheKind::Prefixes,
        CacheKind::Routes,
        CacheKind::PrincipalRoutes,
        CacheKind::UnknownBuckets,
        CacheKind::Cors,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheKind::Keys => "signing_keys",
            CacheKind::UnknownKeys => "unknown_keys",
            CacheKind::Certs => "client_certificates",
            CacheKind::SigV2 => "sigv2",
            CacheKind::Tokens => "bearer_tokens",
            CacheKind::Decisions => "decisions",
            CacheKind::Prefixes => "prefix_decisions",
            CacheKind::Routes => "routes",
            CacheKind::PrincipalRoutes => "principal_routes",
            CacheKind::UnknownBuckets => "unknown_buckets",
            CacheKind::Cors => "cors",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    status: &'static str,
    decision: &'static str,
    identity: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    rpc: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcNameLabels {
    rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefreshLabels {
    backend: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LogLabels {
    log: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    process: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Request latencies: 0.25 ms to about 16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 17))
}

/// Control-plane calls: 0.1 ms to about 3 s, doubling.
fn rpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// Every metric of the process. Only [`crate::metrics`] makes one (and
/// tests, more).
pub struct Metrics {
    /// Tells apart the handles [`Resolved`] holds for different `Metrics`.
    id: u64,
    enabled: AtomicBool,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily<OpLabels>,
    ttfb: Histogram,
    received_bytes: Counter,
    sent_bytes: Counter,
    cache_hits: [Counter; CacheKind::ALL.len()],
    cache_misses: [Counter; CacheKind::ALL.len()],
    cache_evictions: [Counter; CacheKind::ALL.len()],
    cp_calls: Family<RpcLabels, Counter>,
    cp_call_duration: HistogramFamily<RpcNameLabels>,
    rpc_served: Family<RpcLabels, Counter>,
    upstream_errors: Family<BackendLabels, Counter>,
    open_connections: Gauge,
    in_flight: Gauge,
    credential_refreshes: Family<RefreshLabels, Counter>,
    log_lines_dropped: Family<LogLabels, Counter>,
    build_info: Family<BuildLabels, Gauge>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("s3gate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "S3 and STS requests answered, by operation, status class, decision and identity source",
            requests.clone(),
        );
        let duration: HistogramFamily<OpLabels> = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival until its response body was sent (or the client went away)",
            duration.clone(),
        );
        let ttfb = latency_histogram();
        registry.register(
            "time_to_first_byte_seconds",
            "Time from a request's arrival until its response head was ready",
            ttfb.clone(),
        );
        let received_bytes = Counter::default();
        registry.register(
            "received_bytes",
            "Request body bytes received from clients",
            received_bytes.clone(),
        );
        let sent_bytes = Counter::default();
        registry.register(
            "sent_bytes",
            "Response body bytes sent to clients",
            sent_bytes.clone(),
        );
        let cache_hit_family = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_hits",
            "Lookups a data-plane cache answered",
            cache_hit_family.clone(),
        );
        let cache_miss_family = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_misses",
            "Lookups a data-plane cache could not answer",
            cache_miss_family.clone(),
        );
        let cache_eviction_family = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_evictions",
            "Entries a data-plane cache dropped for size or age (not invalidations)",
            cache_eviction_family.clone(),
        );
        // One handle per cache, resolved now: lookups never touch the family.
        let per_cache = |family: &Family<CacheLabels, Counter>| {
            CacheKind::ALL.map(|c| {
                family
                    .get_or_create(&CacheLabels { cache: c.as_str() })
                    .clone()
            })
        };
        let cp_calls = Family::<RpcLabels, Counter>::default();
        registry.register(
            "control_plane_calls",
            "Calls of a data plane to its control planes, by RPC and result",
            cp_calls.clone(),
        );
        let cp_call_duration: HistogramFamily<RpcNameLabels> =
            Family::new_with_constructor(rpc_histogram);
        registry.register(
            "control_plane_call_duration_seconds",
            "Latency of a data plane's calls to its control planes, retries included",
            cp_call_duration.clone(),
        );
        let rpc_served = Family::<RpcLabels, Counter>::default();
        registry.register(
            "rpc_served",
            "Decisions RPCs a control plane answered, by RPC and result",
            rpc_served.clone(),
        );
        let upstream_errors = Family::<BackendLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Requests a backend could not be reached for or failed on, by backend and kind",
            upstream_errors.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open on the S3 listeners",
            open_connections.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Requests being answered, response bodies still streaming included",
            in_flight.clone(),
        );
        let credential_refreshes = Family::<RefreshLabels, Counter>::default();
        registry.register(
            "credential_refreshes",
            "Exchanges of backend credentials (IBM IAM, AWS STS), by backend and result",
            credential_refreshes.clone(),
        );
        let log_lines_dropped = Family::<LogLabels, Counter>::default();
        registry.register(
            "log_lines_dropped",
            "Log or audit lines dropped because their consumer did not keep up",
            log_lines_dropped.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1: the version of s3gate and the kind of process",
            build_info.clone(),
        );
        static IDS: AtomicU64 = AtomicU64::new(1);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            enabled: AtomicBool::new(true),
            registry,
            requests,
            duration,
            ttfb,
            received_bytes,
            sent_bytes,
            cache_hits: per_cache(&cache_hit_family),
            cache_misses: per_cache(&cache_miss_family),
            cache_evictions: per_cache(&cache_eviction_family),
            cp_calls,
            cp_call_duration,
            rpc_served,
            upstream_errors,
            open_connections,
            in_flight,
            credential_refreshes,
            log_lines_dropped,
            build_info,
        }
    }

    /// Whether recording is on (`--metrics`, default true).
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Names the process in `s3gate_build_info` (`serve`, `dataplane`,
    /// `controlplane`). Always recorded: it is what tells a scrape worked.
    pub fn set_process(&self, process: &'static str) {
        self.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                process,
            })
            .set(1);
    }

    /// The whole registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// One answered request, when its response head is ready.
    pub fn request(
        &self,
        op: &'static str,
        status: u16,
        decision: &'static str,
        identity: &'static str,
        ttfb: Duration,
    ) {
        if !self.enabled() {
            return;
        }
        let labels = RequestLabels {
            op,
            status: status_class(status),
            decision,
            identity,
        };
        let [op, status, decision, identity] =
            [labels.op, labels.status, labels.decision, labels.identity].map(addr);
        let key = [
            op[0],
            op[1],
            status[0],
            status[1],
            decision[0],
            decision[1],
            identity[0],
            identity[1],
        ];
        let cached = RESOLVED.try_with(|r| {
            let mut r = r.borrow_mut();
            r.owned_by(self.id)
                .requests
                .entry(key)
                .or_insert_with(|| self.requests.get_or_create(&labels).clone())
                .inc();
        });
        if cached.is_err() {
            // This thread is exiting and its table is gone.
            self.requests.get_or_create(&labels).inc();
        }
        self.ttfb.observe(ttfb.as_secs_f64());
    }

    /// One request whose response body is done (sent, or abandoned).
    pub fn request_done(&self, op: &'static str, duration: Duration) {
        if !self.enabled() {
            return;
        }
        let seconds = duration.as_secs_f64();
        let cached = RESOLVED.try_with(|r| {
            let mut r = r.borrow_mut();
            r.owned_by(self.id)
                .durations
                .entry(addr(op))
                .or_insert_with(|| self.duration.get_or_create(&OpLabels { op }).clone())
                .observe(seconds);
        });
        if cached.is_err() {
            self.duration
                .get_or_create(&OpLabels { op })
                .observe(seconds);
        }
    }

    #[inline]
    pub fn received(&self, bytes: u64) {
        if self.enabled() {
            self.received_bytes.inc_by(bytes);
        }
    }

    #[inline]
    pub fn sent(&self, bytes: u64) {
        if self.enabled() {
            self.sent_bytes.inc_by(bytes);
        }
    }

    #[inline]
    pub fn cache_hit(&self, cache: CacheKind) {
        if self.enabled() {
            self.cache_hits[cache as usize].inc();
        }
    }

    #[inline]
    pub fn cache_miss(&self, cache: CacheKind) {
        if self.enabled() {
            self.cache_misses[cache as usize].inc();
        }
    }

    #[inline]
    pub fn cache_eviction(&self, cache: CacheKind) {
        if self.enabled() {
            self.cache_evictions[cache as usize].inc();
        }
    }

    /// A data plane's call to the control planes (`result`: `ok` or the
    /// error's kind).
    pub fn control_plane_call(&self, rpc: &'static str, result: &'static str, took: Duration) {
        if !self.enabled() {
            return;
        }
        self.cp_calls
            .get_or_create(&RpcLabels { rpc, result })
            .inc();
        self.cp_call_duration
            .get_or_create(&RpcNameLabels { rpc })
            .observe(took.as_secs_f64());
    }

    /// A Decisions RPC a control plane answered.
    pub fn rpc_served(&self, rpc: &'static str, result: &'static str) {
        if self.enabled() {
            self.rpc_served
                .get_or_create(&RpcLabels { rpc, result })
                .inc();
        }
    }

    pub fn upstream_error(&self, backend: &str, kind: &'static str) {
        if self.enabled() {
            self.upstream_errors
                .get_or_create(&BackendLabels {
                    backend: backend.to_owned(),
                    kind,
                })
                .inc();
        }
    }

    pub fn credential_refresh(&self, backend: &str, result: &'static str) {
        if self.enabled() {
            self.credential_refreshes
                .get_or_create(&RefreshLabels {
                    backend: backend.to_owned(),
                    result,
                })
                .inc();
        }
    }

    /// Always counted, metrics on or off: a lost line is worth knowing.
    pub fn log_line_dropped(&self, log: &'static str) {
        self.log_lines_dropped
            .get_or_create(&LogLabels { log })
            .inc();
    }

    /// A client connection opened; the guard counts it until dropped.
    pub fn connection(&'static self) -> Open {
        self.open_connections.inc();
        Open(&self.open_connections)
    }

    /// A request started; the guard counts it until dropped.
    pub fn in_flight(&'static self) -> Open {
        self.in_flight.inc();
        Open(&self.in_flight)
    }
}

/// Counts something open in a gauge until dropped. The gauges count
/// whether or not recording is on, so a guard always undoes its own `inc`.
pub struct Open(&'static Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

thread_local! {
    static RESOLVED: RefCell<Resolved> = RefCell::new(Resolved::default());
}

/// One thread's handles of the labelled series it has recorded, by the
/// addresses (and lengths) of their `&'static str` label values. A handle
/// is the family's own series (a shared `Arc`), so what is recorded
/// through it is what the family encodes. Label values are static, so the
/// table is bounded by the label sets the binary can produce; a text
/// reached through two addresses gets two entries for the same series.
#[derive(Default)]
struct Resolved {
    /// The [`Metrics::id`] these handles belong to.
    owner: u64,
    requests: HashMap<[usize; 8], Counter, BuildHasherDefault<AddrHasher>>,
    durations: HashMap<[usize; 2], Histogram, BuildHasherDefault<AddrHasher>>,
}

impl Resolved {
    /// The table, emptied first if it held another `Metrics`' handles.
    fn owned_by(&mut self, id: u64) -> &mut Self {
        if self.owner != id {
            *self = Resolved {
                owner: id,
                ..Resolved::default()
            };
        }
        self
    }
}

/// A `&'static str`'s address and length: equal for the same literal.
fn addr(s: &'static str) -> [usize; 2] {
    [s.as_ptr() as usize, s.len()]
}

/// A multiply-rotate hash of machine words (as rustc's `FxHasher`). Its
/// keys are addresses of the binary's own constants, never anything a
/// client sends, so it needs no defence against chosen collisions.
#[derive(Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    /// A key's words arrive here as one slice of bytes.
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            self.write_u64(u64::from_ne_bytes(w));
        }
        for b in words.remainder() {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodes_recorded_series_with_their_labels() {
        let m = Metrics::new();
        m.set_process("serve");
        m.request("GetObject", 200, "allow", "key", Duration::from_millis(3));
        m.request("GetObject", 200, "allow", "key", Duration::from_millis(3));
        m.request("PutObject", 403, "deny", "jwt", Duration::from_millis(1));
        m.request_done("GetObject", Duration::from_millis(7));
        m.cache_hit(CacheKind::Decisions);
        m.cache_miss(CacheKind::Routes);
        m.upstream_error("minio", "connect");
        m.control_plane_call("authorize", "ok", Duration::from_micros(300));
        m.sent(10);
        m.sent(5);
        let text = m.encode();
        for expected in [
            "s3gate_requests_total{op=\"GetObject\",status=\"2xx\",decision=\"allow\",identity=\"key\"} 2",
            "s3gate_requests_total{op=\"PutObject\",status=\"4xx\",decision=\"deny\",identity=\"jwt\"} 1",
            "s3gate_request_duration_seconds_count{op=\"GetObject\"} 1",
            "s3gate_time_to_first_byte_seconds_count 3",
            "s3gate_cache_hits_total{cache=\"decisions\"} 1",
            "s3gate_cache_misses_total{cache=\"routes\"} 1",
            "s3gate_cache_hits_total{cache=\"routes\"} 0",
            "s3gate_upstream_errors_total{backend=\"minio\",kind=\"connect\"} 1",
            "s3gate_control_plane_calls_total{rpc=\"authorize\",result=\"ok\"} 1",
            "s3gate_sent_bytes_total 15",
            "s3gate_build_info{version=\"",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn each_metrics_counts_its_own_requests_on_one_thread() {
        // The per-thread handle table must not carry one registry's series
        // into another's.
        let count = |m: &Metrics, series: &str| {
            m.encode()
                .lines()
                .find_map(|l| l.strip_prefix(series))
                .map(|v| v.trim().to_owned())
        };
        let get = "s3gate_requests_total{op=\"GetObject\",status=\"2xx\",decision=\"allow\",identity=\"key\"}";
        let done = "s3gate_request_duration_seconds_count{op=\"GetObject\"}";
        let a = Metrics::new();
        let b = Metrics::new();
        for _ in 0..3 {
            a.request("GetObject", 200, "allow", "key", Duration::from_millis(1));
            a.request_done("GetObject", Duration::from_millis(1));
        }
        b.request("GetObject", 204, "allow", "key", Duration::from_millis(1));
        b.request_done("GetObject", Duration::from_millis(1));
        a.request("GetObject", 200, "allow", "key", Duration::from_millis(1));
        assert_eq!(count(&a, get).as_deref(), Some("4"));
        assert_eq!(count(&b, get).as_deref(), Some("1"));
        assert_eq!(count(&a, done).as_deref(), Some("3"));
        assert_eq!(count(&b, done).as_deref(), Some("1"));
        // Another thread records into the same series.
        let a = std::sync::Arc::new(a);
        let other = a.clone();
        std::thread::spawn(move || {
            other.request("GetObject", 200, "allow", "key", Duration::from_millis(1))
        })
        .join()
        .unwrap();
        assert_eq!(count(&a, get).as_deref(), Some("5"));
    }

    #[test]
    fn off_records_nothing_but_gauges_stay_balanced() {
        let m = Box::leak(Box::new(Metrics::new()));
        m.set_enabled(false);
        m.request("GetObject", 200, "allow", "key", Duration::from_millis(3));
        m.cache_hit(CacheKind::Keys);
        let text = m.encode();
        assert!(!text.contains("op=\"GetObject\""), "{text}");
        assert!(text.contains("s3gate_cache_hits_total{cache=\"signing_keys\"} 0"));
        let open = m.connection();
        assert!(m.encode().contains("s3gate_open_connections 1"));
        drop(open);
        assert!(m.encode().contains("s3gate_open_connections 0"));
    }
}
