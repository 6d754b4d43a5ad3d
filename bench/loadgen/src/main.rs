//! `s3gate-loadgen`: the load generator of the s3gate benchmark harness.
//!
//! Three modes, each printing one JSON object on stdout:
//! - `load`: N keep-alive connections in a closed loop for a fixed time (or
//!   until a pool of unique requests is used up), GETs and optionally a share
//!   of PUTs; req/s and latency percentiles. With `--rate` the loop is open:
//!   requests leave on a fixed schedule, so latency is measured at a load
//!   the server keeps up with instead of at saturation.
//! - `get`: one GET on one connection (large objects); MB/s.
//! - `put`: one PUT of a generated body with a hex sha256 payload hash or an
//!   aws-chunked body with chunk signatures; MB/s.
//!
//! Every request is signed before the timed window starts (SigV4 headers are
//! valid for 15 minutes), so the timed work of this process is writing bytes
//! and reading responses. It runs on one thread (`current_thread`), because
//! it shares two cores with the proxy and the upstream. With `--watch
//! NAME=PID` it samples the CPU time of other processes at the start and end
//! of the timed window, so CPU per request covers exactly the requests
//! counted.
//!
//! Everything is bounded: by `--duration`, by `--max-requests`, and by an
//! error budget after which the run stops.

mod http;
mod sigv4;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::http::Conn;
use crate::sigv4::{Signer, EMPTY_SHA256, STREAMING_SIGNED};

/// Largest number of latency samples kept (8 bytes each).
const MAX_SAMPLES: usize = 8_000_000;
/// Connection or protocol errors after which a `load` run gives up.
const MAX_ERRORS: u64 = 1_000;
/// Linux USER_HZ: the unit of utime/stime in /proc/<pid>/stat (100 on every
/// mainstream architecture; the harness checks `getconf CLK_TCK`).
const CLK_TCK: f64 = 100.0;

#[derive(Debug, Parser)]
#[command(name = "s3gate-loadgen", about = "Benchmark load generator for s3gate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Closed-loop load from many connections.
    Load(LoadArgs),
    /// One GET of one object on one connection.
    Get(GetArgs),
    /// One PUT of a generated body on one connection.
    Put(PutArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// Server address (loopback only).
    #[arg(long)]
    addr: SocketAddr,
    /// Region in the credential scope.
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Bucket (path-style addressing).
    #[arg(long)]
    bucket: String,
    /// Access key (or use --creds).
    #[arg(long)]
    access_key: Option<String>,
    /// Secret key (or use --creds).
    #[arg(long)]
    secret_key: Option<String>,
    /// File of credentials, one `ACCESS_KEY SECRET [SESSION_TOKEN]` per
    /// line (the token of temporary STS keys); requests rotate over them.
    #[arg(long)]
    creds: Option<PathBuf>,
    /// Processes whose CPU time is sampled over the timed window, as NAME=PID.
    #[arg(long = "watch")]
    watch: Vec<String>,
}

#[derive(Debug, Args)]
struct LoadArgs {
    #[command(flatten)]
    common: Common,
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 32)]
    connections: usize,
    /// Length of the timed window, in seconds.
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds of load before the timed window (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// GET key pattern; `{i}` becomes a six-digit index.
    #[arg(long)]
    get_key: String,
    /// Number of distinct GET keys to rotate over.
    #[arg(long, default_value_t = 1)]
    get_count: usize,
    /// Every request gets its own key index (0, 1, 2, …) and the run ends
    /// when --max-requests is used up: for cold-cache runs.
    #[arg(long)]
    unique: bool,
    /// Upper bound on requests sent (warm-up included).
    #[arg(long, default_value_t = 10_000_000)]
    max_requests: usize,
    /// Open loop: request i is sent at start + i/RATE seconds (on the
    /// first free connection), whatever the responses; latency is from the
    /// moment it is written. Without it, each connection sends its next
    /// request when the last one is answered (closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Share of requests that are PUTs (0..1).
    #[arg(long, default_value_t = 0.0)]
    put_fraction: f64,
    /// PUT key pattern; `{i}` becomes a six-digit index.
    #[arg(long, default_value = "put/{i}")]
    put_key: String,
    /// Number of distinct PUT keys to rotate over.
    #[arg(long, default_value_t = 100)]
    put_count: usize,
    /// PUT body size in bytes (signed with its hex sha256).
    #[arg(long, default_value_t = 65536)]
    put_size: usize,
    /// Instead of GETs: every request is `POST /` with this file's content
    /// as an `application/x-www-form-urlencoded` body (an STS
    /// AssumeRoleWithWebIdentity call; unsigned, the token is inside).
    #[arg(long)]
    form: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct GetArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PutMode {
    /// `x-amz-content-sha256: <hex>` of the whole body.
    Sha256,
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` with a signature per chunk.
    Chunked,
}

#[derive(Debug, Args)]
struct PutArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    key: String,
    /// Body size in bytes; a multiple of 1 MiB.
    #[arg(long)]
    size: u64,
    #[arg(long, value_enum)]
    mode: PutMode,
    /// aws-chunked chunk size; divides 1 MiB.
    #[arg(long, default_value_t = 65536)]
    chunk_size: usize,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("s3gate-loadgen: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Load(a) => tokio::task::LocalSet::new().run_until(load(a)).await,
            Command::Get(a) => get(a).await,
            Command::Put(a) => put(a).await,
        }
    });
    match result {
        Ok(json) => {
            println!("{json}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("s3gate-loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

// === credentials and CPU sampling ===

impl Common {
    fn check(&self) -> Result<()> {
        if !self.addr.ip().is_loopback() {
            return Err(format!("{} is not a loopback address", self.addr));
        }
        Ok(())
    }

    fn signers(&self, amz_date: &str) -> Result<Vec<Signer>> {
        let mut out = Vec::new();
        if let (Some(a), Some(s)) = (&self.access_key, &self.secret_key) {
            out.push(Signer::new(a, s, &self.region, amz_date));
        }
        if let Some(path) = &self.creds {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let mut it = line.split_whitespace();
                let (Some(a), Some(s)) = (it.next(), it.next()) else {
                    return Err(format!("{}: bad line {line:?}", path.display()));
                };
                let mut signer = Signer::new(a, s, &self.region, amz_date);
                signer.session_token = it.next().map(str::to_owned);
                out.push(signer);
            }
        }
        if out.is_empty() {
            return Err("no credentials: give --access-key/--secret-key or --creds".to_owned());
        }
        Ok(out)
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn watched(&self) -> Result<Vec<(String, u32)>> {
        self.watch
            .iter()
            .map(|w| {
                let (name, pid) = w
                    .split_once('=')
                    .ok_or_else(|| format!("--watch {w}: want NAME=PID"))?;
                let pid = pid.parse().map_err(|_| format!("--watch {w}: bad pid"))?;
                Ok((name.to_owned(), pid))
            })
            .collect()
    }
}

/// CPU seconds (user + system, all threads) of a process; `None` if it is gone.
fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which may itself contain spaces.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / CLK_TCK)
}

/// CPU seconds that processes of the whole machine (all CPUs) spent, from
/// /proc/stat: user, nice and system. Interrupt and softirq time (where
/// loopback networking mostly runs) is left out: no process is charged for it.
fn machine_busy_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let busy = f.first()? + f.get(1)? + f.get(2)?;
    Some(busy / CLK_TCK)
}

struct CpuSample {
    at: Instant,
    procs: Vec<(String, Option<f64>)>,
    own: Option<f64>,
    machine: Option<f64>,
}

fn sample(watched: &[(String, u32)]) -> CpuSample {
    CpuSample {
        at: Instant::now(),
        procs: watched
            .iter()
            .map(|(n, p)| (n.clone(), cpu_seconds(Some(*p))))
            .collect(),
        own: cpu_seconds(None),
        machine: machine_busy_seconds(),
    }
}

/// `"cpu_s": {"name": seconds, ..., "loadgen": seconds}` between two samples.
fn cpu_json(a: &CpuSample, b: &CpuSample) -> String {
    let mut s = String::from("{");
    // Processes watched under one name (the workers of a multi-process
    // proxy) are summed; any one of them gone makes the sum unknown.
    let mut sums: Vec<(&str, Option<f64>)> = Vec::new();
    for ((name, x), (_, y)) in a.procs.iter().zip(&b.procs) {
        let d = match (x, y) {
            (Some(x), Some(y)) => Some(y - x),
            _ => None,
        };
        match sums.iter_mut().find(|(n, _)| *n == name.as_str()) {
            Some((_, sum)) => *sum = sum.zip(d).map(|(s, d)| s + d),
            None => sums.push((name, d)),
        }
    }
    for (name, d) in sums {
        match d {
            Some(d) => {
                let _ = write!(s, "\"{name}\": {d:.3}, ");
            }
            None => {
                let _ = write!(s, "\"{name}\": null, ");
            }
        }
    }
    let own = match (a.own, b.own) {
        (Some(x), Some(y)) => format!("{:.3}", y - x),
        _ => "null".to_owned(),
    };
    let _ = write!(s, "\"loadgen\": {own}, ");
    // Process CPU of the whole machine, and the part that no watched process
    // (nor this one) accounts for: other work on the machine. A large value
    // means the run was disturbed.
    let mut accounted = 0.0;
    for ((_, x), (_, y)) in a.procs.iter().zip(&b.procs) {
        if let (Some(x), Some(y)) = (x, y) {
            accounted += y - x;
        }
    }
    if let (Some(x), Some(y)) = (a.own, b.own) {
        accounted += y - x;
    }
    match (a.machine, b.machine) {
        (Some(x), Some(y)) => {
            let m = y - x;
            let _ = write!(
                s,
                "\"machine_busy\": {m:.3}, \"unaccounted\": {:.3}}}",
                m - accounted
            );
        }
        _ => s.push_str("\"machine_busy\": null, \"unaccounted\": null}"),
    }
    s
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn key_for(pattern: &str, i: usize) -> Result<String> {
    let key = pattern.replace("{i}", &format!("{i:06}"));
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
    {
        return Err(format!(
            "key {key:?}: only unreserved characters and '/' are supported"
        ));
    }
    Ok(key)
}

// === load ===

struct Req {
    bytes: Vec<u8>,
    is_put: bool,
}

/// A header-signed request, serialized.
fn build_request(
    signer: &Signer,
    host: &str,
    amz_date: &str,
    method: &str,
    path: &str,
    body: Option<(&[u8], &str)>,
) -> Vec<u8> {
    let payload_hash = body.map_or(EMPTY_SHA256, |(_, h)| h);
    let signed = signer.sign(method, path, amz_date, &[("host", host)], payload_hash);
    let mut out = Vec::with_capacity(512 + body.map_or(0, |(b, _)| b.len()));
    let _ = write!(
        Bytes(&mut out),
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {}\r\nx-amz-content-sha256: {payload_hash}\r\nAuthorization: {}\r\n",
        signed.amz_date, signed.authorization
    );
    if let Some(token) = &signer.session_token {
        let _ = write!(Bytes(&mut out), "x-amz-security-token: {token}\r\n");
    }
    if let Some((b, _)) = body {
        let _ = write!(Bytes(&mut out), "Content-Length: {}\r\n", b.len());
    }
    out.extend_from_slice(b"\r\n");
    if let Some((b, _)) = body {
        out.extend_from_slice(b);
    }
    out
}

/// An unsigned form POST to `/` (STS).
fn form_request(host: &str, form: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + form.len());
    let _ = write!(
        Bytes(&mut out),
        "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        form.len()
    );
    out.extend_from_slice(form);
    out
}

/// `fmt::Write` into a byte vector.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[derive(Default)]
struct Stats {
    ok: u64,
    gets: u64,
    puts: u64,
    errors: u64,
    io_errors: u64,
    bytes_in: u64,
    statuses: BTreeMap<u16, u64>,
    first_error: Option<String>,
    latencies_ns: Vec<u64>,
    put_latencies_ns: Vec<u64>,
    /// Open loop: requests sent more than 2 ms after they were due.
    late: u64,
}

struct Shared {
    pool: Vec<Req>,
    next: Cell<usize>,
    limit: usize,
    rotate: bool,
    window_start: Cell<Option<Instant>>,
    stop: Cell<bool>,
    live: Cell<usize>,
    done: tokio::sync::Notify,
    stats: RefCell<Stats>,
    /// Open loop: when the schedule started and the gap between requests.
    schedule: Option<(Instant, Duration)>,
}

impl Shared {
    /// The next request, and in an open loop when it is due.
    fn take(&self) -> Option<(&Req, Option<Instant>)> {
        let i = self.next.get();
        if self.stop.get() || i >= self.limit {
            return None;
        }
        self.next.set(i + 1);
        let idx = if self.rotate { i % self.pool.len() } else { i };
        let due = self
            .schedule
            .map(|(start, gap)| start + gap.saturating_mul(u32::try_from(i).unwrap_or(u32::MAX)));
        self.pool.get(idx).map(|r| (r, due))
    }

    fn counting(&self, started: Instant) -> bool {
        !self.stop.get() && self.window_start.get().is_some_and(|w| started >= w)
    }
}

async fn load(a: LoadArgs) -> Result<String> {
    a.common.check()?;
    if a.connections == 0 || a.get_count == 0 || a.put_count == 0 {
        return Err("connections, get-count and put-count must be positive".to_owned());
    }
    if !(0.0..=1.0).contains(&a.put_fraction) {
        return Err("put-fraction must be within 0..1".to_owned());
    }
    if a.rate.is_some_and(|r| !(1.0..=1e6).contains(&r)) {
        return Err("rate must be within 1..1000000 requests per second".to_owned());
    }
    if a.form.is_some() && (a.unique || a.put_fraction > 0.0) {
        return Err("--form sends one request shape: no --unique, no --put-fraction".to_owned());
    }
    let amz_date = sigv4::amz_date_now();
    let signers = match a.form {
        Some(_) => Vec::new(),
        None => a.common.signers(&amz_date)?,
    };
    let host = a.common.host();
    let watched = a.common.watched()?;

    // Pre-sign the pool.
    let put_body: Vec<u8> = pattern_block(a.put_size.max(1), 7)[..a.put_size].to_vec();
    let put_hash = hex::encode(Sha256::digest(&put_body));
    let pool_len = if a.unique {
        a.max_requests
    } else if a.put_fraction > 0.0 {
        a.get_count.max(1000).max(signers.len())
    } else {
        a.get_count.max(signers.len())
    };
    let t_sign = Instant::now();
    let mut pool = Vec::with_capacity(pool_len);
    if let Some(path) = &a.form {
        let form = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        pool.push(Req {
            bytes: form_request(&host, &form),
            is_put: false,
        });
    }
    for j in 0..pool_len {
        if a.form.is_some() {
            break;
        }
        let signer = &signers[j % signers.len()];
        let f = a.put_fraction;
        let is_put = ((j + 1) as f64 * f).floor() > (j as f64 * f).floor();
        let req = if is_put {
            let path = format!(
                "/{}/{}",
                a.common.bucket,
                key_for(&a.put_key, j % a.put_count)?
            );
            build_request(
                signer,
                &host,
                &amz_date,
                "PUT",
                &path,
                Some((&put_body, &put_hash)),
            )
        } else {
            let i = if a.unique { j } else { j % a.get_count };
            let path = format!("/{}/{}", a.common.bucket, key_for(&a.get_key, i)?);
            build_request(signer, &host, &amz_date, "GET", &path, None)
        };
        pool.push(Req { bytes: req, is_put });
    }
    let sign_s = t_sign.elapsed().as_secs_f64();

    let shared = Rc::new(Shared {
        limit: a.max_requests,
        rotate: !a.unique,
        pool,
        next: Cell::new(0),
        window_start: Cell::new(None),
        stop: Cell::new(false),
        live: Cell::new(a.connections),
        done: tokio::sync::Notify::new(),
        stats: RefCell::new(Stats {
            latencies_ns: Vec::with_capacity(1 << 20),
            ..Stats::default()
        }),
        schedule: a
            .rate
            .map(|r| (Instant::now(), Duration::from_secs_f64(1.0 / r))),
    });

    let mut conns = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        conns.push(
            Conn::connect(a.common.addr, 256 << 10)
                .await
                .map_err(|e| format!("connect {}: {e}", a.common.addr))?,
        );
    }
    let mut tasks = Vec::with_capacity(a.connections);
    for conn in conns {
        let shared = shared.clone();
        let addr = a.common.addr;
        tasks.push(tokio::task::spawn_local(async move {
            worker(shared.clone(), conn, addr).await;
            shared.live.set(shared.live.get() - 1);
            if shared.live.get() == 0 {
                shared.done.notify_one();
            }
        }));
    }

    let all_done = shared.done.notified();
    tokio::pin!(all_done);
    let warm_end = tokio::time::sleep(Duration::from_secs_f64(a.warmup));
    let mut finished_early = false;
    tokio::select! {
        () = warm_end => {}
        () = &mut all_done => finished_early = true,
    }
    let s0 = sample(&watched);
    shared.window_start.set(Some(s0.at));
    if !finished_early {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs_f64(a.duration)) => {}
            () = &mut all_done => {}
        }
    }
    let s1 = sample(&watched);
    shared.stop.set(true);
    // In-flight requests finish (uncounted); bounded.
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;

    let elapsed = s1.at.duration_since(s0.at).as_secs_f64();
    let mut st = shared.stats.borrow_mut();
    let lat = percentiles(&mut st.latencies_ns);
    let put_lat = percentiles(&mut st.put_latencies_ns);
    let statuses = st
        .statuses
        .iter()
        .map(|(k, v)| format!("\"{k}\": {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!(
        "{{\"mode\": \"load\", \"connections\": {}, \"elapsed_s\": {elapsed:.3}, \"requests\": {}, \"gets\": {}, \"puts\": {}, \"errors\": {}, \"io_errors\": {}, \"rps\": {:.1}, \"bytes_in\": {}, \"latency_us\": {lat}, \"put_latency_us\": {put_lat}, \"statuses\": {{{statuses}}}, \"cpu_s\": {}, \"sent_total\": {}, \"pool\": {}, \"sign_s\": {sign_s:.3}, \"first_error\": {}, \"rate\": {}, \"late\": {}}}",
        a.connections,
        st.ok,
        st.gets,
        st.puts,
        st.errors,
        st.io_errors,
        st.ok as f64 / elapsed.max(1e-9),
        st.bytes_in,
        cpu_json(&s0, &s1),
        shared.next.get(),
        shared.pool.len(),
        st.first_error.as_deref().map_or("null".to_owned(), json_str),
        a.rate.map_or("null".to_owned(), |r| format!("{r:.1}")),
        st.late,
    ))
}

async fn worker(shared: Rc<Shared>, mut conn: Conn, addr: SocketAddr) {
    loop {
        let Some((req, due)) = shared.take() else {
            return;
        };
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
            // Behind the schedule by more than the timer's 1 ms: the offered
            // rate was not kept (every connection was busy).
            if Instant::now() > due + Duration::from_millis(2) && shared.counting(due) {
                shared.stats.borrow_mut().late += 1;
            }
        }
        let started = Instant::now();
        let result = async {
            conn.write_all(&req.bytes).await?;
            conn.read_response(false).await
        }
        .await;
        let took = started.elapsed();
        let counting = shared.counting(started);
        let reconnect;
        {
            let mut st = shared.stats.borrow_mut();
            match result {
                Ok(r) => {
                    reconnect = r.close;
                    if counting {
                        *st.statuses.entry(r.status).or_default() += 1;
                    }
                    if (200..300).contains(&r.status) {
                        if counting {
                            st.ok += 1;
                            st.bytes_in += r.body_len;
                            if req.is_put {
                                st.puts += 1;
                                if st.put_latencies_ns.len() < MAX_SAMPLES {
                                    st.put_latencies_ns.push(took.as_nanos() as u64);
                                }
                            } else {
                                st.gets += 1;
                            }
                            if st.latencies_ns.len() < MAX_SAMPLES {
                                st.latencies_ns.push(took.as_nanos() as u64);
                            }
                        }
                    } else {
                        st.errors += 1;
                        if st.first_error.is_none() {
                            st.first_error = Some(format!(
                                "HTTP {}: {}",
                                r.status,
                                r.error_body.unwrap_or_default()
                            ));
                        }
                    }
                }
                Err(e) => {
                    st.errors += 1;
                    st.io_errors += 1;
                    reconnect = true;
                    if st.first_error.is_none() {
                        st.first_error = Some(format!("i/o: {e}"));
                    }
                }
            }
            if st.errors >= MAX_ERRORS {
                shared.stop.set(true);
            }
        }
        if reconnect {
            if shared.stop.get() {
                return;
            }
            match Conn::connect(addr, 256 << 10).await {
                Ok(c) => conn = c,
                Err(e) => {
                    {
                        let mut st = shared.stats.borrow_mut();
                        st.errors += 1;
                        st.io_errors += 1;
                        if st.first_error.is_none() {
                            st.first_error = Some(format!("reconnect: {e}"));
                        }
                        if st.errors >= MAX_ERRORS {
                            shared.stop.set(true);
                        }
                    }
                    // This connection is given up; the others carry on.
                    return;
                }
            }
        }
    }
}

/// `{"p50": .., "p90": .., "p99": .., "p999": .., "max": .., "mean": ..}` in µs.
fn percentiles(samples: &mut [u64]) -> String {
    if samples.is_empty() {
        return "null".to_owned();
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i] as f64 / 1000.0
    };
    let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / samples.len() as f64 / 1000.0;
    format!(
        "{{\"p50\": {:.1}, \"p90\": {:.1}, \"p99\": {:.1}, \"p999\": {:.1}, \"max\": {:.1}, \"mean\": {mean:.1}, \"samples\": {}}}",
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        samples[samples.len() - 1] as f64 / 1000.0,
        samples.len()
    )
}

/// Deterministic pseudo-random bytes (xorshift64*), so bodies do not
/// compress and runs are repeatable.
fn pattern_block(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// === get ===

async fn get(a: GetArgs) -> Result<String> {
    a.common.check()?;
    let amz_date = sigv4::amz_date_now();
    let signer = a.common.signers(&amz_date)?.remove(0);
    let host = a.common.host();
    let watched = a.common.watched()?;
    let path = format!("/{}/{}", a.common.bucket, key_for(&a.key, 0)?);
    let req = build_request(&signer, &host, &amz_date, "GET", &path, None);
    let mut conn = Conn::connect(a.common.addr, 1 << 20)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let s0 = sample(&watched);
    conn.write_all(&req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let r = conn
        .read_response(false)
        .await
        .map_err(|e| format!("response: {e}"))?;
    let s1 = sample(&watched);
    transfer_json("get", r.status, r.body_len, &s0, &s1, r.error_body)
}

fn transfer_json(
    mode: &str,
    status: u16,
    bytes: u64,
    s0: &CpuSample,
    s1: &CpuSample,
    error_body: Option<String>,
) -> Result<String> {
    let elapsed = s1.at.duration_since(s0.at).as_secs_f64();
    Ok(format!(
        "{{\"mode\": \"{mode}\", \"status\": {status}, \"bytes\": {bytes}, \"elapsed_s\": {elapsed:.4}, \"mb_s\": {:.1}, \"cpu_s\": {}, \"error\": {}}}",
        bytes as f64 / elapsed.max(1e-9) / 1e6,
        cpu_json(s0, s1),
        error_body.as_deref().map_or("null".to_owned(), json_str)
    ))
}

// === put ===

const BLOCK: usize = 1 << 20;

async fn put(a: PutArgs) -> Result<String> {
    a.common.check()?;
    if a.size == 0 || !a.size.is_multiple_of(BLOCK as u64) {
        return Err("--size must be a positive multiple of 1 MiB".to_owned());
    }
    if a.chunk_size == 0 || !BLOCK.is_multiple_of(a.chunk_size) {
        return Err("--chunk-size must divide 1 MiB".to_owned());
    }
    let amz_date = sigv4::amz_date_now();
    let signer = a.common.signers(&amz_date)?.remove(0);
    let host = a.common.host();
    let watched = a.common.watched()?;
    let path = format!("/{}/{}", a.common.bucket, key_for(&a.key, 0)?);
    let block = pattern_block(BLOCK, 11);
    let blocks = a.size / BLOCK as u64;

    let mut conn = Conn::connect(a.common.addr, 64 << 10)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let io = |e: std::io::Error| format!("send: {e}");
    let (s0, bytes_sent) = match a.mode {
        PutMode::Sha256 => {
            // The payload hash of the whole body, before the clock starts.
            let mut h = Sha256::new();
            for _ in 0..blocks {
                h.update(&block);
            }
            let hash = hex::encode(h.finalize());
            let signed = signer.sign("PUT", &path, &amz_date, &[("host", &host)], &hash);
            let head = format!(
                "PUT {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {amz_date}\r\nx-amz-content-sha256: {hash}\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
                signed.authorization, a.size
            );
            let s0 = sample(&watched);
            conn.write_all(head.as_bytes()).await.map_err(io)?;
            for _ in 0..blocks {
                conn.write_all(&block).await.map_err(io)?;
            }
            (s0, a.size)
        }
        PutMode::Chunked => {
            let per_block = BLOCK / a.chunk_size;
            let chunk_hashes: Vec<String> = block
                .chunks(a.chunk_size)
                .map(|c| hex::encode(Sha256::digest(c)))
                .collect();
            let chunks = blocks * per_block as u64;
            let sig_line = |size: usize| format!("{size:x};chunk-signature=").len() + 64 + 2;
            let encoded_len = chunks * (sig_line(a.chunk_size) + a.chunk_size + 2) as u64
                + (sig_line(0) + 2) as u64;
            let encoded = encoded_len.to_string();
            let decoded = a.size.to_string();
            let signed = signer.sign(
                "PUT",
                &path,
                &amz_date,
                &[
                    ("host", &host),
                    ("content-encoding", "aws-chunked"),
                    ("content-length", &encoded),
                    ("x-amz-decoded-content-length", &decoded),
                ],
                STREAMING_SIGNED,
            );
            let head = format!(
                "PUT {path} HTTP/1.1\r\nHost: {host}\r\nx-amz-date: {amz_date}\r\nx-amz-content-sha256: {STREAMING_SIGNED}\r\nContent-Encoding: aws-chunked\r\nx-amz-decoded-content-length: {decoded}\r\nAuthorization: {}\r\nContent-Length: {encoded}\r\n\r\n",
                signed.authorization
            );
            let mut prev = signed.signature.clone();
            let mut buf = Vec::with_capacity(BLOCK + per_block * 128 + 128);
            let s0 = sample(&watched);
            conn.write_all(head.as_bytes()).await.map_err(io)?;
            let mut sent = 0u64;
            for _ in 0..blocks {
                buf.clear();
                for (i, data) in block.chunks(a.chunk_size).enumerate() {
                    let sig =
                        signer.chunk_signature(&amz_date, &signed.scope, &prev, &chunk_hashes[i]);
                    let _ = write!(
                        Bytes(&mut buf),
                        "{:x};chunk-signature={sig}\r\n",
                        data.len()
                    );
                    buf.extend_from_slice(data);
                    buf.extend_from_slice(b"\r\n");
                    prev = sig;
                }
                sent += buf.len() as u64;
                conn.write_all(&buf).await.map_err(io)?;
            }
            let sig = signer.chunk_signature(&amz_date, &signed.scope, &prev, EMPTY_SHA256);
            let last = format!("0;chunk-signature={sig}\r\n\r\n");
            sent += last.len() as u64;
            conn.write_all(last.as_bytes()).await.map_err(io)?;
            if sent != encoded_len {
                return Err(format!(
                    "internal: framed {sent} bytes, announced {encoded_len}"
                ));
            }
            (s0, a.size)
        }
    };
    let r = conn
        .read_response(false)
        .await
        .map_err(|e| format!("response: {e}"))?;
    let s1 = sample(&watched);
    transfer_json(
        match a.mode {
            PutMode::Sha256 => "put-sha256",
            PutMode::Chunked => "put-chunked",
        },
        r.status,
        bytes_sent,
        &s0,
        &s1,
        r.error_body,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(procs: &[(&str, Option<f64>)]) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            procs: procs.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            own: Some(1.0),
            machine: None,
        }
    }

    #[test]
    fn processes_under_one_name_are_summed() {
        let a = at(&[
            ("s3gate", Some(1.0)),
            ("s3gate", Some(2.0)),
            ("upstream0", Some(5.0)),
        ]);
        let b = at(&[
            ("s3gate", Some(1.5)),
            ("s3gate", Some(2.25)),
            ("upstream0", Some(6.0)),
        ]);
        let json = cpu_json(&a, &b);
        assert!(
            json.starts_with(r#"{"s3gate": 0.750, "upstream0": 1.000, "loadgen": 0.000, "#),
            "{json}"
        );
        // One of them gone: the sum is unknown, not the other's share.
        let b = at(&[
            ("s3gate", Some(1.5)),
            ("s3gate", None),
            ("upstream0", Some(6.0)),
        ]);
        assert!(cpu_json(&a, &b).starts_with(r#"{"s3gate": null, "upstream0": 1.000, "#));
    }
}
