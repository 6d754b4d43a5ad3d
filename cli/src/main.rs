//! The `s3gate` binary: parse flags, set up logging, validate config, bind,
//! and hand the listener to the library. No request logic lives here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use s3gate_controlplane::config::{FileConfig, LoadOptions, OidcConfig};
use s3gate_controlplane::crypto::MasterKey;
use s3gate_controlplane::oidc::Providers;
use s3gate_controlplane::redis_store::RedisStore;
use s3gate_controlplane::replica::Replica;
use s3gate_controlplane::session::SessionLimits;
use s3gate_controlplane::sources::Registry;
use s3gate_controlplane::state::State;
use s3gate_controlplane::store::{MemoryStore, Store};
use s3gate_dataplane::pipeline::forwarded::TrustedProxies;
use s3gate_observe::sink as logsink;
use s3gate_s3::request::HostConfig;
use tokio::net::TcpListener;
use tracing::{info, warn};

mod admin;
mod check_config;
mod otel;

/// The profile showed glibc malloc/free at ~19% of the gateway's CPU on
/// small requests; mimalloc's thread-local free lists cut that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for bad configuration (EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "s3gate",
    version,
    about = "Identity-aware gateway for S3-compatible object storage",
    after_help = "\
Logging (serve, controlplane, dataplane): lines go to stderr. S3GATE_LOG chooses
which, as a level or per-module directives [default: info], e.g.
  S3GATE_LOG=debug s3gate serve --config s3gate.toml
  S3GATE_LOG=info,s3gate_dataplane=debug s3gate dataplane ...
--log-format json writes one JSON object per line.

Every option can also be set through the environment variable its help names
(`s3gate <command> --help`)."
)]
struct Cli {
    /// `--worker-threads` and `--log-format` before the subcommand, as
    /// earlier releases took them; hidden, the server subcommands show them.
    #[arg(long = "worker-threads", hide = true)]
    worker_threads: Option<usize>,
    #[arg(long = "log-format", hide = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// How a server process runs: its tokio runtime and its log lines. Only the
/// servers take these; the clients (`admin`, `gen-master-key`) print their
/// result and log warnings only.
#[derive(Debug, Clone, clap::Args)]
struct RuntimeArgs {
    /// Threads that serve connections [default: one per core]: each
    /// connection stays on one of them, a single-threaded runtime, from
    /// accept to close. Also sizes the tokio runtime of everything else
    /// (accepting, the control plane). On a machine shared with other busy
    /// processes, fewer threads cost fewer wake-ups.
    #[arg(long, env = "S3GATE_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Log line format [default: text]. Which lines: S3GATE_LOG (e.g.
    /// S3GATE_LOG=debug; default info).
    #[arg(long, env = "S3GATE_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    trace: otel::TraceArgs,
    /// Address of the admin HTTP listener: /metrics (Prometheus),
    /// /healthz (alive), /readyz (can serve; 503 while draining or
    /// without a control plane or store). Off unless given. Port 0 takes
    /// a free port; --ready-file tells which (`admin`).
    #[arg(long, env = "S3GATE_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Record metrics [default: true]; false leaves /metrics with the
    /// build info and zeroes (for measuring what recording costs).
    #[arg(long, env = "S3GATE_METRICS", default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    metrics: bool,
}

impl RuntimeArgs {
    /// Metrics on or off, and the process's name in `s3gate_build_info`.
    fn observe(&self, process: &'static str) {
        let metrics = s3gate_observe::metrics();
        metrics.set_enabled(self.metrics);
        metrics.set_process(process);
    }
}

/// Binds the admin listener (`--admin-listen`) and serves it for the life
/// of the process; its address, for the ready file.
async fn admin_listener(
    addr: Option<SocketAddr>,
    health: &Arc<s3gate_observe::Health>,
) -> anyhow::Result<Option<SocketAddr>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind admin listener on {addr}"))?;
    let local = listener.local_addr().context("read listener address")?;
    info!(address = %local, "admin listener serving /metrics, /healthz, /readyz");
    tokio::spawn(s3gate_observe::admin::serve(listener, health.clone()));
    Ok(Some(local))
}

/// `/readyz` says 503 from the moment a shutdown signal arrives.
fn draining_on(shutdown: &Shutdown, health: &Arc<s3gate_observe::Health>) {
    let (shutdown, health) = (shutdown.clone(), health.clone());
    tokio::spawn(async move {
        shutdown.requested().await;
        health.set_draining();
    });
}

/// The audit log of `--audit-log`, and the guard that flushes it at exit.
fn audit_log(
    path: Option<&Path>,
) -> Result<
    Option<(
        Arc<s3gate_observe::Audit>,
        s3gate_observe::sink::FlushOnDrop,
    )>,
    Failure,
> {
    path.map(|p| {
        s3gate_observe::Audit::open(p)
            .map(|(audit, flush)| (Arc::new(audit), flush))
            .with_context(|| format!("open the audit log {}", p.display()))
            .map_err(Failure::Usage)
    })
    .transpose()
}

/// A control plane is ready while its store answers.
struct StoreReady(Arc<dyn Store>);

#[async_trait::async_trait]
impl s3gate_observe::Readiness for StoreReady {
    async fn check(&self) -> Result<(), String> {
        self.0
            .health()
            .await
            .map_err(|e| format!("store unavailable: {e}"))
    }
}

/// STS settings of the server subcommands that embed a control plane.
#[derive(Debug, Clone, clap::Args)]
struct StsArgs {
    /// Hidden, for tests only: the shortest session (DurationSeconds) STS
    /// grants. Outside tests it is AWS's 900 seconds, which a test of
    /// expiry cannot wait for.
    #[arg(long, hide = true, env = "S3GATE_STS_MIN_DURATION", default_value = "900s", value_parser = humantime::parse_duration)]
    sts_min_duration: Duration,
    /// The most live STS sessions kept in all; past it AssumeRoleWithWebIdentity
    /// answers 503 until sessions expire or are revoked.
    #[arg(long, env = "S3GATE_STS_MAX_SESSIONS", default_value_t = SessionLimits::default().total, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    sts_max_sessions: usize,
    /// The most live STS sessions of one principal; a new one past it ends
    /// that principal's sessions that expire first.
    #[arg(long, env = "S3GATE_STS_MAX_SESSIONS_PER_PRINCIPAL", default_value_t = SessionLimits::default().per_principal, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    sts_max_sessions_per_principal: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run data plane and control plane in one process, from one config file.
    Serve(ServeArgs),
    /// Run a control plane: serves s3gate.v1.Decisions over gRPC.
    Controlplane(ControlplaneArgs),
    /// Run a stateless data plane that asks remote control planes.
    Dataplane(DataplaneArgs),
    /// Manage keys, rules, backends and buckets through the Admin API.
    Admin(admin::AdminArgs),
    /// Print a new random master key (base64) for encrypting secrets in Redis.
    GenMasterKey,
    /// Validate a config file and print it as s3gate reads it, secrets redacted.
    CheckConfig(check_config::CheckConfigArgs),
}

impl Command {
    /// The `service.name` of a server's traces.
    fn service_name(&self) -> &'static str {
        match self {
            Command::Controlplane(_) => "s3gate-controlplane",
            Command::Dataplane(_) => "s3gate-dataplane",
            _ => "s3gate",
        }
    }

    /// The runtime flags of a server subcommand; `None` for the clients.
    fn runtime(&self) -> Option<&RuntimeArgs> {
        match self {
            Command::Serve(a) => Some(&a.runtime),
            Command::Controlplane(a) => Some(&a.runtime),
            Command::Dataplane(a) => Some(&a.runtime),
            Command::Admin(_) | Command::GenMasterKey | Command::CheckConfig(_) => None,
        }
    }
}

#[derive(Debug, clap::Args)]
struct ControlplaneArgs {
    /// A TOML config file. With --redis it seeds an empty store (and sets
    /// cache TTLs); without, it is the whole state, kept in memory.
    #[arg(long, env = "S3GATE_CONFIG")]
    config: Option<PathBuf>,
    /// Redis URL (redis://host:port/db) holding state shared by replicas.
    #[arg(long, env = "S3GATE_REDIS")]
    redis: Option<String>,
    /// Key prefix in Redis: replicas sharing a prefix share state.
    #[arg(long, env = "S3GATE_REDIS_PREFIX", default_value = "s3gate")]
    redis_prefix: String,
    /// File with the base64 master key that encrypts secrets in Redis
    /// (else env S3GATE_MASTER_KEY). `s3gate gen-master-key` makes one.
    #[arg(long, env = "S3GATE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Address for gRPC (Decisions, Admin, health). Port 0 takes a free
    /// port; --ready-file tells which.
    #[arg(long, env = "S3GATE_CP_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Once bound, write the listening address here as JSON (`{"grpc": …}`).
    #[arg(long, env = "S3GATE_CP_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// Name reported to data planes and in status (defaults to the listen address).
    #[arg(long, env = "S3GATE_CP_NAME")]
    name: Option<String>,
    /// Bearer token for the Admin API. Without it the Admin API is off.
    #[arg(long, env = "S3GATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Bearer token data planes must present: Decisions answers carry
    /// backend credentials. Without it, anyone who reaches the port can ask.
    #[arg(long, env = "S3GATE_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    #[command(flatten)]
    sts: StsArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Debug, clap::Args)]
struct DataplaneArgs {
    /// Control-plane gRPC URLs (http://host:port), tried in order on failure.
    #[arg(
        long = "control-plane",
        env = "S3GATE_DP_CONTROL_PLANE",
        value_delimiter = ',',
        num_args = 1..,
        required = true
    )]
    control_planes: Vec<String>,
    /// Address for plain-HTTP S3 traffic [default: 127.0.0.1:9080, unless
    /// only --tls-listen is given]. Port 0 takes a free port; --ready-file
    /// tells which.
    #[arg(long, env = "S3GATE_DP_LISTEN")]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    tls: DataplaneTlsArgs,
    /// The region clients sign for.
    #[arg(long, env = "S3GATE_DP_REGION", default_value = "us-east-1")]
    region: String,
    /// Base domains for virtual-host-style requests (`<bucket>.<domain>`).
    #[arg(
        long = "base-domain",
        env = "S3GATE_DP_BASE_DOMAINS",
        value_delimiter = ','
    )]
    base_domains: Vec<String>,
    /// Peers (CIDRs or addresses, comma-separated) whose `Forwarded` /
    /// `X-Forwarded-For`/`-Proto`/`-Host` headers are believed: the
    /// client's address, scheme and the host its signature is checked
    /// against. From any other peer they change nothing.
    #[arg(
        long = "trusted-proxies",
        env = "S3GATE_DP_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = s3gate_controlplane::config::parse_network
    )]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Once bound, write the listening addresses here as JSON.
    #[arg(long, env = "S3GATE_DP_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// Bearer token the control planes require (their --cluster-token).
    #[arg(long, env = "S3GATE_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// Deadline of one control-plane call; past it the next replica is tried.
    #[arg(long, env = "S3GATE_DP_RPC_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    rpc_timeout: Duration,
    /// How long to wait for in-flight requests on shutdown.
    #[arg(long, env = "S3GATE_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Write one JSON line per decided request (who, what, the decision and
    /// what made it, status, bytes) to this file, appending; `-` is stdout.
    #[arg(long, env = "S3GATE_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Accept legacy SigV2 requests (`AWS key:signature`, presigned
    /// `AWSAccessKeyId`/`Signature`/`Expires`), verified by the control
    /// plane; `false` refuses them with 400 InvalidRequest.
    #[arg(long, env = "S3GATE_DP_SIGV2", default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    sigv2: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

/// The HTTPS listener of `s3gate dataplane` (`[tls]` of the config file in
/// `serve`).
#[derive(Debug, Clone, clap::Args)]
struct DataplaneTlsArgs {
    /// Address for HTTPS S3 traffic (HTTP/1.1 and HTTP/2); needs --tls-cert
    /// and --tls-key. Port 0 takes a free port; --ready-file tells which.
    #[arg(long, env = "S3GATE_DP_TLS_LISTEN", requires_all = ["tls_cert", "tls_key"])]
    tls_listen: Option<SocketAddr>,
    /// The server certificate chain, PEM, leaf first. Re-read on SIGHUP
    /// and when the file changes.
    #[arg(long, env = "S3GATE_DP_TLS_CERT", requires = "tls_listen")]
    tls_cert: Option<PathBuf>,
    /// The server certificate's private key, PEM.
    #[arg(long, env = "S3GATE_DP_TLS_KEY", requires = "tls_listen")]
    tls_key: Option<PathBuf>,
    /// CA certificates (PEM) client certificates must chain to.
    #[arg(long, env = "S3GATE_DP_TLS_CLIENT_CA", requires = "tls_listen")]
    tls_client_ca: Option<PathBuf>,
    /// Client certificates: none, optional (a verified one is the
    /// identity of requests that do not sign) or required (connections
    /// without one are refused). optional and required need --tls-client-ca.
    #[arg(long, env = "S3GATE_DP_TLS_CLIENT_AUTH", default_value = "none")]
    tls_client_auth: s3gate_dataplane::ClientAuth,
    /// Which name of a client certificate is its principal: cn, san_dns,
    /// san_uri or san_email.
    #[arg(long, env = "S3GATE_DP_TLS_PRINCIPAL_FROM", default_value = "cn")]
    tls_principal_from: s3gate_dataplane::PrincipalFrom,
}

/// How often the TLS certificate and key files are checked for changes.
const TLS_RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The HTTPS listener's certificate and rustls configuration, loaded
/// before anything is bound.
struct TlsSetup {
    listen: SocketAddr,
    cert: Arc<s3gate_dataplane::tls::ServerCert>,
    config: Arc<s3gate_dataplane::tls::ServerConfig>,
    summary: s3gate_dataplane::tls::CertSummary,
    client_auth: s3gate_dataplane::ClientAuth,
}

impl TlsSetup {
    fn load(
        listen: SocketAddr,
        settings: &s3gate_dataplane::tls::TlsSettings,
    ) -> Result<Self, s3gate_dataplane::tls::TlsError> {
        let (cert, summary) =
            s3gate_dataplane::tls::ServerCert::load(&settings.cert, &settings.key)?;
        let config = s3gate_dataplane::tls::server_config(settings, cert.clone())?;
        Ok(Self {
            listen,
            cert,
            config,
            summary,
            client_auth: settings.client_auth,
        })
    }

    /// Binds the listener and starts watching the certificate files (inside
    /// the runtime).
    async fn bind(
        self,
        handshake_timeout: Duration,
    ) -> anyhow::Result<(TcpListener, s3gate_dataplane::TlsAcceptor, SocketAddr)> {
        let listener = TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("bind HTTPS listener on {}", self.listen))?;
        let local = listener.local_addr().context("read listener address")?;
        info!(
            address = %local,
            subject = %self.summary.subject,
            serial = %self.summary.serial,
            not_after = %self.summary.not_after,
            client_auth = ?self.client_auth,
            "s3gate serving HTTPS (HTTP/1.1 and HTTP/2)"
        );
        tokio::spawn(s3gate_dataplane::tls::watch(self.cert, TLS_RELOAD_EVERY));
        Ok((
            listener,
            s3gate_dataplane::TlsAcceptor::new(self.config, handshake_timeout),
            local,
        ))
    }
}

/// What clients may cost the gateway. Unset flags take `[limits]` from the
/// config file (`serve`), else the defaults shown.
#[derive(Debug, Clone, clap::Args)]
struct LimitArgs {
    /// Open client connections; at the limit the gateway stops accepting
    /// until one closes [default: 4096].
    #[arg(long, env = "S3GATE_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Requests in flight, each counted until its response has streamed;
    /// past it requests get 503 SlowDown, which SDKs retry [default: 1024].
    #[arg(long, env = "S3GATE_MAX_REQUESTS")]
    max_requests: Option<usize>,
    /// Time allowed for a request head, and for an idle keep-alive
    /// connection [default: 30s].
    #[arg(long, env = "S3GATE_HEADER_TIMEOUT", value_parser = humantime::parse_duration)]
    header_timeout: Option<Duration>,
    /// A request body that sends nothing for this long fails with 400
    /// RequestTimeout and its connection is closed [default: 30s].
    #[arg(long, env = "S3GATE_BODY_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    body_idle_timeout: Option<Duration>,
    /// Total time for a body the gateway reads whole, such as a
    /// DeleteObjects document [default: 60s].
    #[arg(long, env = "S3GATE_BODY_DEADLINE", value_parser = humantime::parse_duration)]
    body_deadline: Option<Duration>,
    /// A client that accepts no response bytes for this long is
    /// disconnected; a slow reader that keeps reading is not [default: 60s].
    #[arg(long, env = "S3GATE_SEND_TIMEOUT", value_parser = humantime::parse_duration)]
    send_timeout: Option<Duration>,
    /// Bytes the gateway may buffer for all requests together (DeleteObjects
    /// documents, rewritten listings), e.g. 32MiB; past it 503 SlowDown
    /// [default: 32MiB].
    #[arg(long, env = "S3GATE_BUFFER_BUDGET", value_parser = s3gate_controlplane::config::parse_bytes)]
    buffer_budget: Option<usize>,
}

impl LimitArgs {
    fn resolve(
        &self,
        file: Option<&s3gate_controlplane::config::LimitsConfig>,
    ) -> s3gate_dataplane::Limits {
        let d = s3gate_dataplane::Limits::default();
        let f = file.cloned().unwrap_or_default();
        s3gate_dataplane::Limits {
            max_connections: self
                .max_connections
                .or(f.max_connections)
                .unwrap_or(d.max_connections),
            max_requests: self
                .max_requests
                .or(f.max_requests)
                .unwrap_or(d.max_requests),
            header_timeout: self
                .header_timeout
                .or(f.header_timeout)
                .unwrap_or(d.header_timeout),
            body_idle_timeout: self
                .body_idle_timeout
                .or(f.body_idle_timeout)
                .unwrap_or(d.body_idle_timeout),
            body_deadline: self
                .body_deadline
                .or(f.body_deadline)
                .unwrap_or(d.body_deadline),
            send_timeout: self
                .send_timeout
                .or(f.send_timeout)
                .unwrap_or(d.send_timeout),
            buffer_budget: self
                .buffer_budget
                .or(f.buffer_budget)
                .unwrap_or(d.buffer_budget),
        }
    }
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The TOML config file (backends, buckets, keys, rules).
    #[arg(long, env = "S3GATE_CONFIG")]
    config: PathBuf,
    /// Address for S3 traffic [default: `listen` in the config, else
    /// 127.0.0.1:9080]. Port 0 takes a free port; --ready-file tells which.
    #[arg(long, env = "S3GATE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address for HTTPS S3 traffic [default: `listen` of `[tls]` in the
    /// config, else 127.0.0.1:9443]; needs `[tls]` (certificate and key).
    #[arg(long, env = "S3GATE_TLS_LISTEN")]
    tls_listen: Option<SocketAddr>,
    /// Once bound, write the listening addresses here as JSON.
    #[arg(long, env = "S3GATE_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// How long to wait for in-flight requests on shutdown.
    #[arg(long, env = "S3GATE_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Write one JSON line per decided request (who, what, the decision and
    /// what made it, status, bytes) to this file, appending; `-` is stdout.
    #[arg(long, env = "S3GATE_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Also serve the control plane's gRPC API (Decisions, and Admin when
    /// --admin-token is set) here, e.g. for `s3gate admin`.
    #[arg(long, env = "S3GATE_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// Bearer token for the Admin API (with --grpc-listen).
    #[arg(long, env = "S3GATE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Bearer token for Decisions (with --grpc-listen).
    #[arg(long, env = "S3GATE_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    #[command(flatten)]
    sts: StsArgs,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The clients' output is their result, not a log.
    let server = cli.command.runtime();
    let quiet = server.is_none();
    let _ = WORKER_THREADS.set(cli.worker_threads.or(server.and_then(|r| r.worker_threads)));
    let log_format = cli
        .log_format
        .or(server.and_then(|r| r.log_format))
        .unwrap_or(LogFormat::Text);
    // Held until main returns: dropping it exports the spans still queued.
    let exporter = match server.and_then(|r| r.trace.endpoint().map(|e| (e, &r.trace))) {
        Some((endpoint, args)) => {
            match otel::Exporter::start(
                &endpoint,
                args.trace_sample_ratio,
                cli.command.service_name(),
            ) {
                Ok(exporter) => Some(exporter),
                Err(e) => {
                    eprintln!("s3gate: {e:#}");
                    return ExitCode::from(EX_USAGE);
                }
            }
        }
        None => None,
    };
    // Held until main returns: dropping it flushes the lines still queued.
    let _log_flush = init_tracing(log_format, quiet, exporter.as_ref());
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Controlplane(args) => controlplane(args),
        Command::Dataplane(args) => dataplane(args),
        Command::Admin(args) => {
            runtime().and_then(|rt| rt.block_on(admin::run(args)).map_err(Failure::Runtime))
        }
        Command::CheckConfig(args) => check_config::run(args),
        Command::GenMasterKey => s3gate_controlplane::crypto::MasterKey::generate_base64()
            .map(|k| println!("{k}"))
            .map_err(|e| Failure::Runtime(e.into())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(e)) => {
            eprintln!("s3gate: {e:#}");
            ExitCode::from(EX_USAGE)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("s3gate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    // Validate everything before binding anything.
    let file = check_config::load(&args.config, false)?;
    let tls = check_config::tls_settings(&file)?;
    if tls.is_none() && args.tls_listen.is_some() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--tls-listen needs a [tls] section (certificate and key) in {}",
            args.config.display()
        )));
    }
    // Plain HTTP unless only HTTPS is configured: at least one listener.
    let listen = args.listen.or(file.listen).or_else(|| {
        tls.is_none()
            .then(|| SocketAddr::from(([127, 0, 0, 1], 9080)))
    });
    let tls = match tls {
        Some((settings, listen_tls)) => Some(
            TlsSetup::load(args.tls_listen.unwrap_or(listen_tls), &settings)
                .map_err(|e| Failure::Usage(file.invalid_at("tls", e.field(), &e).into()))?,
        ),
        None => None,
    };
    let dp_cfg = s3gate_dataplane::Config {
        region: file.region.clone(),
        hosts: HostConfig {
            base_domains: file.base_domains.clone(),
        },
        limits: args.limits.resolve(Some(&file.limits)),
        principal_from: file
            .tls
            .as_ref()
            .map(|t| check_config::principal_from(t.principal_from))
            .unwrap_or_default(),
        sigv2: file.auth.sigv2,
        trusted_proxies: TrustedProxies::new(file.trusted_proxies.clone()),
        proxy_env: s3gate_dataplane::ProxyEnv::from_env(),
        ..Default::default()
    };
    let audit = audit_log(args.audit_log.as_deref())?;
    let (audit, _audit_flush) = audit.map_or((None, None), |(a, f)| (Some(a), Some(f)));
    let dp_cfg = s3gate_dataplane::Config {
        audit,
        workers: Some(connection_workers()?),
        ..dp_cfg
    };
    args.runtime.observe("serve");
    let providers = oidc_providers(&file.oidc)?;
    if args.grpc_listen.is_none() && args.admin_token.is_some() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--admin-token needs --grpc-listen"
        )));
    }

    runtime()?
        .block_on(async move {
            tokio::spawn(report_dropped_log_lines());
            let shutdown = Shutdown::watch();
            // The same replica code as `s3gate controlplane`, over a memory store.
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            store.seed(&State::from_config(&file)).await?;
            let registry =
                standing_sources(providers, Some(&file), store.clone(), &args.sts).await?;
            let replica = Replica::start_with(store, file.cache.clone(), "embedded".to_owned(), registry).await?;
            replica.set_config_file(args.config.clone(), LoadOptions { allow_empty: false }, file.restart_only(true));
            tokio::spawn(reload_on_hangup(Arc::downgrade(&replica)));
            // The embedded control plane is this process: ready until it drains.
            let health = s3gate_observe::Health::new(Arc::new(s3gate_observe::AlwaysReady));
            draining_on(&shutdown, &health);
            let mut ready = serde_json::json!({});
            if let Some(admin) = admin_listener(args.runtime.admin_listen, &health).await? {
                ready["admin"] = serde_json::json!(admin.to_string());
            }
            let plain = match listen {
                Some(listen) => {
                    let listener = TcpListener::bind(listen)
                        .await
                        .with_context(|| format!("bind S3 listener on {listen}"))?;
                    let local = listener.local_addr().context("read listener address")?;
                    info!(address = %local, buckets = file.buckets.len(), keys = file.keys.len(), rules = file.rules.len(), "s3gate serving");
                    ready["s3"] = serde_json::json!(local.to_string());
                    Some(listener)
                }
                None => None,
            };
            let tls = match tls {
                Some(tls) => {
                    let (listener, acceptor, local) = tls.bind(dp_cfg.limits.header_timeout).await?;
                    ready["s3_tls"] = serde_json::json!(local.to_string());
                    Some((listener, acceptor))
                }
                None => None,
            };
            if let Some(addr) = args.grpc_listen {
                let grpc = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("bind gRPC listener on {addr}"))?;
                let grpc_local = grpc.local_addr().context("read listener address")?;
                ready["grpc"] = serde_json::json!(grpc_local.to_string());
                info!(address = %grpc_local, admin = args.admin_token.is_some(), "control plane serving gRPC");
                tokio::spawn(serve_grpc(grpc, replica.clone(), args.cluster_token.clone(), args.admin_token.clone(), shutdown.clone()));
            }
            if let Some(path) = &args.ready_file {
                write_ready(path, &ready.to_string()).context("write ready file")?;
            }
            let invalidations = replica.invalidations();
            let listeners = s3gate_dataplane::Listeners { plain, tls };
            s3gate_dataplane::serve_on(listeners, dp_cfg, replica, invalidations, shutdown.requested(), args.drain_timeout)
                .await;
            anyhow::Ok(())
        })
        .map_err(Failure::Runtime)
}

/// The OIDC providers of the config file, checked before anything starts
/// (a CA bundle that does not load is a usage error).
fn oidc_providers(oidc: &[OidcConfig]) -> Result<Arc<Providers>, Failure> {
    Providers::new(oidc).map_err(|e| Failure::Usage(e.into()))
}

/// The standing sources of a replica: the `[[policy]]` chain and the
/// `[[identity]]` lookups of the file; the JWT bearer source when `[[oidc]]`
/// providers are configured (their keys are fetched in the background from
/// here on); STS session keys always (a replica accepts sessions any
/// replica minted), and the STS engine when `[[roles]]` are configured.
async fn standing_sources(
    providers: Arc<Providers>,
    file: Option<&FileConfig>,
    store: Arc<dyn Store>,
    sts: &StsArgs,
) -> anyhow::Result<Registry> {
    let mut registry = Registry {
        // One exchange per backend across the replicas of a shared store.
        exchanges: s3gate_controlplane::sources::exchanged::Exchanges::new(Some(store.clone())),
        ..Registry::default()
    };
    let providers = (!providers.is_empty()).then_some(providers);
    if let Some(providers) = &providers {
        info!(providers = ?providers.names().collect::<Vec<_>>(), "oidc providers configured");
        providers.prefetch();
        s3gate_controlplane::sources::oidc::register(&mut registry, providers.clone());
    }
    let roles =
        s3gate_controlplane::roles::Roles::from_config(file.map_or(&[][..], |f| &f.roles[..]));
    if !roles.is_empty() {
        info!(
            roles = roles.len(),
            "STS AssumeRoleWithWebIdentity serving roles"
        );
    }
    let key_ttl = file.map(|f| f.cache.clone()).unwrap_or_default().key_ttl;
    s3gate_controlplane::sts::register(
        &mut registry,
        store,
        key_ttl,
        roles,
        providers,
        sts.sts_min_duration,
        SessionLimits {
            total: sts.sts_max_sessions,
            per_principal: sts.sts_max_sessions_per_principal,
        },
    );
    // After the sessions source: it answers only `ASIA…` keys, at once for
    // any other, so a configured lookup (a SQL database) that is down does
    // not take STS sessions down with it.
    if let Some(file) = file {
        s3gate_controlplane::sources::register_configured(
            &mut registry,
            &file.policy,
            &file.identity,
            &file.cache,
        )
        .await?;
    }
    Ok(registry)
}

/// SIGHUP: [`Replica::reload`] (the whole config file; with Redis, its
/// sources and TTLs only), until the replica is gone. The outcome is
/// logged; a reload that fails keeps the config in force.
async fn reload_on_hangup(replica: std::sync::Weak<Replica>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(error) => {
            warn!(%error, "cannot listen for SIGHUP: reload with `s3gate admin reload`");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        let Some(replica) = replica.upgrade() else {
            return;
        };
        info!("SIGHUP: reloading the config file");
        if let Err(error) = replica.reload().await {
            // Already placed: section, kind, file and line.
            warn!(%error, "reload refused; the config in force stays");
        }
    }
}

async fn serve_grpc(
    listener: TcpListener,
    replica: Arc<Replica>,
    cluster_token: Option<String>,
    admin_token: Option<String>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    if cluster_token.is_none() {
        warn!("no --cluster-token: anyone who reaches the gRPC port can read decisions and backend credentials");
    }
    let decisions = s3gate_controlplane::grpc::DecisionsService::new(replica.clone());
    let admin = admin_token.map(|t| {
        (
            s3gate_controlplane::admin::AdminService::new(replica.clone()),
            t,
        )
    });
    s3gate_controlplane::grpc::serve(
        listener,
        decisions,
        cluster_token,
        admin,
        shutdown.requested(),
    )
    .await
    .context("gRPC server")
}

fn controlplane(args: ControlplaneArgs) -> Result<(), Failure> {
    args.runtime.observe("controlplane");
    let file = match &args.config {
        // With Redis, the file may only set cache TTLs.
        Some(path) => Some(check_config::load(path, args.redis.is_some())?),
        None => None,
    };
    if args.redis.is_none() && file.is_none() {
        return Err(Failure::Usage(anyhow::anyhow!(
            "give --config, --redis, or both"
        )));
    }
    let master = match &args.redis {
        Some(_) => Some(
            MasterKey::from_file_or_env(args.master_key_file.as_deref(), "S3GATE_MASTER_KEY")
                .context("a master key is required with --redis (--master-key-file or S3GATE_MASTER_KEY)")
                .map_err(Failure::Usage)?,
        ),
        None => None,
    };
    if args.admin_token.as_deref() == Some("") {
        return Err(Failure::Usage(anyhow::anyhow!(
            "--admin-token must not be empty"
        )));
    }
    let providers = oidc_providers(file.as_ref().map_or(&[][..], |f| &f.oidc[..]))?;
    runtime()?
        .block_on(async move {
            tokio::spawn(report_dropped_log_lines());
            let store: Arc<dyn Store> = match (&args.redis, master) {
                (Some(url), Some(master)) => Arc::new(
                    RedisStore::connect(url, master, &args.redis_prefix)
                        .await
                        .context("connect to Redis")?,
                ),
                _ => Arc::new(MemoryStore::new()),
            };
            if let Some(file) = &file {
                if store.seed(&State::from_config(file)).await? {
                    info!(store = store.kind(), "seeded state from the config file");
                }
            }
            let cache = file.as_ref().map(|f| f.cache.clone()).unwrap_or_default();
            let shutdown = Shutdown::watch();
            let health = s3gate_observe::Health::new(Arc::new(StoreReady(store.clone())));
            draining_on(&shutdown, &health);
            let admin = admin_listener(args.runtime.admin_listen, &health).await?;
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("bind gRPC listener on {}", args.listen))?;
            let local = listener.local_addr().context("read listener address")?;
            let name = args.name.unwrap_or_else(|| local.to_string());
            let registry =
                standing_sources(providers, file.as_ref(), store.clone(), &args.sts).await?;
            let replica = Replica::start_with(store, cache, name.clone(), registry).await?;
            if let (Some(path), Some(file)) = (&args.config, &file) {
                replica.set_config_file(
                    path.clone(),
                    LoadOptions {
                        allow_empty: args.redis.is_some(),
                    },
                    file.restart_only(false),
                );
            }
            tokio::spawn(reload_on_hangup(Arc::downgrade(&replica)));
            if args.admin_token.is_none() {
                warn!("no --admin-token: the Admin API is off");
            }
            info!(address = %local, name, "s3gate control plane serving gRPC");
            if let Some(path) = &args.ready_file {
                let mut ready = serde_json::json!({ "grpc": local.to_string() });
                if let Some(admin) = admin {
                    ready["admin"] = serde_json::json!(admin.to_string());
                }
                write_ready(path, &ready.to_string()).context("write ready file")?;
            }
            serve_grpc(
                listener,
                replica,
                args.cluster_token,
                args.admin_token,
                shutdown,
            )
            .await
        })
        .map_err(Failure::Runtime)
}

fn dataplane(args: DataplaneArgs) -> Result<(), Failure> {
    let endpoints =
        s3gate_dataplane::control::endpoints(&args.control_planes, Duration::from_secs(1))
            .map_err(|e| Failure::Usage(anyhow::anyhow!(e)))?;
    let dp_cfg = s3gate_dataplane::Config {
        region: args.region.clone(),
        hosts: HostConfig {
            base_domains: args
                .base_domains
                .iter()
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        },
        limits: args.limits.resolve(None),
        principal_from: args.tls.tls_principal_from,
        sigv2: args.sigv2,
        trusted_proxies: TrustedProxies::new(args.trusted_proxies.clone()),
        proxy_env: s3gate_dataplane::ProxyEnv::from_env(),
        ..Default::default()
    };
    let tls = match (&args.tls.tls_listen, &args.tls.tls_cert, &args.tls.tls_key) {
        (Some(listen), Some(cert), Some(key)) => {
            if args.tls.tls_client_auth != s3gate_dataplane::ClientAuth::None
                && args.tls.tls_client_ca.is_none()
            {
                return Err(Failure::Usage(anyhow::anyhow!(
                    "--tls-client-auth optional or required needs --tls-client-ca"
                )));
            }
            let settings = s3gate_dataplane::tls::TlsSettings {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls.tls_client_ca.clone(),
                client_auth: args.tls.tls_client_auth,
            };
            Some(TlsSetup::load(*listen, &settings).map_err(|e| {
                Failure::Usage(anyhow::anyhow!(
                    "--tls-{}: {e}",
                    e.field().replace('_', "-")
                ))
            })?)
        }
        _ => None,
    };
    let listen = args.listen.or_else(|| {
        tls.is_none()
            .then(|| SocketAddr::from(([127, 0, 0, 1], 9080)))
    });
    let audit = audit_log(args.audit_log.as_deref())?;
    let (audit, _audit_flush) = audit.map_or((None, None), |(a, f)| (Some(a), Some(f)));
    let dp_cfg = s3gate_dataplane::Config {
        audit,
        workers: Some(connection_workers()?),
        ..dp_cfg
    };
    args.runtime.observe("dataplane");
    runtime()?
        .block_on(async move {
            tokio::spawn(report_dropped_log_lines());
            let plain = match listen {
                Some(listen) => Some(
                    TcpListener::bind(listen)
                        .await
                        .with_context(|| format!("bind S3 listener on {listen}"))?,
                ),
                None => None,
            };
            let local = plain
                .as_ref()
                .map(|l| l.local_addr().context("read listener address"))
                .transpose()?;
            let tls = match tls {
                Some(tls) => Some(tls.bind(dp_cfg.limits.header_timeout).await?),
                None => None,
            };
            let local_tls = tls.as_ref().map(|(_, _, a)| *a);
            // The name this data plane gives the control planes it watches.
            let name = local.or(local_tls).map(|a| a.to_string()).unwrap_or_default();
            if let Some(local) = local {
                info!(address = %local, control_planes = ?args.control_planes, "s3gate data plane serving");
            }
            let token = s3gate_dataplane::control::ClusterToken::new(args.cluster_token.as_deref())
                .map_err(anyhow::Error::msg)?;
            let control_plane = Arc::new(s3gate_dataplane::control::GrpcControlPlane::new(
                &endpoints,
                args.rpc_timeout,
                token.clone(),
            ));
            let up = s3gate_dataplane::control::WatchUp::default();
            let invalidations = s3gate_dataplane::control::watch(endpoints, name, token, up.clone());
            let shutdown = Shutdown::watch();
            let health = s3gate_observe::Health::new(Arc::new(up));
            draining_on(&shutdown, &health);
            let admin = admin_listener(args.runtime.admin_listen, &health).await?;
            if let Some(path) = &args.ready_file {
                let mut ready: serde_json::Value =
                    serde_json::from_str(&s3gate_dataplane::ready_json(local, local_tls))
                        .context("ready file")?;
                if let Some(admin) = admin {
                    ready["admin"] = serde_json::json!(admin.to_string());
                }
                write_ready(path, &ready.to_string()).context("write ready file")?;
            }
            let listeners = s3gate_dataplane::Listeners {
                plain,
                tls: tls.map(|(listener, acceptor, _)| (listener, acceptor)),
            };
            s3gate_dataplane::serve_on(listeners, dp_cfg, control_plane, invalidations, shutdown.requested(), args.drain_timeout)
                .await;
            anyhow::Ok(())
        })
        .map_err(Failure::Runtime)
}

static WORKER_THREADS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = WORKER_THREADS.get().copied().flatten().filter(|n| *n > 0) {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("start tokio runtime")
        .map_err(Failure::Runtime)
}

/// The data plane's connection workers (single-threaded runtimes, see
/// `s3gate_dataplane::workers`): as many as `--worker-threads`, else one per
/// core.
fn connection_workers() -> Result<Arc<s3gate_dataplane::workers::Workers>, Failure> {
    let n = WORKER_THREADS
        .get()
        .copied()
        .flatten()
        .filter(|n| *n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1);
    s3gate_dataplane::workers::Workers::start(n)
        .context("start connection workers")
        .map_err(Failure::Runtime)
}

/// Write-then-rename, so a reader never sees a partial file.
fn write_ready(path: &Path, json: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

/// SIGTERM or SIGINT, watched once per process: every server that stops on
/// it (in `serve`, the S3 and the gRPC listener) waits on a clone, so the
/// signal is handled and logged once.
#[derive(Clone)]
struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// Starts watching for the signals (inside the runtime).
    fn watch() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = tx.send(true);
        });
        Self(rx)
    }

    /// Resolves once a signal arrived.
    async fn requested(mut self) {
        let signalled = self.0.wait_for(|stop| *stop).await.is_ok();
        if !signalled {
            // The watcher ended without a signal (it cannot: it waits
            // forever when it could not install its handler). Never stop
            // on its account.
            std::future::pending::<()>().await;
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}

static LOG_SINK: std::sync::OnceLock<logsink::LogSink> = std::sync::OnceLock::new();

/// Logs go to stderr through [`logsink`]: formatted on the request's thread,
/// written in batches by a dedicated thread. Without that thread (it could
/// not be started), straight to stderr. With an exporter, the spans meant
/// for OpenTelemetry go to it (and only they: log lines stay log lines).
fn init_tracing(
    format: LogFormat,
    quiet: bool,
    exporter: Option<&otel::Exporter>,
) -> Option<logsink::FlushOnDrop> {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::EnvFilter;
    let filter = if quiet {
        EnvFilter::new("warn")
    } else {
        EnvFilter::try_from_env("S3GATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
    };
    // aws-sigv4 logs canonical requests at debug/trace, which carry header
    // values such as a backend session token: never let them through,
    // whatever S3GATE_LOG says.
    let filter = match "aws_sigv4=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    // The trace spans are not log lines, whatever S3GATE_LOG says: turned
    // off here, they cost nothing unless the exporter's layer wants them.
    let filter = match format!("{}=off", s3gate_proto::trace::TARGET).parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, flush) = match logsink::LogSink::start("log", std::io::stderr()) {
        Ok((sink, flush)) => {
            let _ = LOG_SINK.set(sink.clone());
            // The access log skips tracing's formatter (same bytes): not on
            // a terminal, which gets tracing's colours.
            if !ansi {
                let format = match format {
                    LogFormat::Text => s3gate_observe::access::Format::Text,
                    LogFormat::Json => s3gate_observe::access::Format::Json,
                };
                s3gate_observe::access::install(sink.clone(), format);
            }
            (BoxMakeWriter::new(sink), Some(flush))
        }
        Err(error) => {
            eprintln!("s3gate: no log thread ({error}); logging straight to stderr");
            (BoxMakeWriter::new(std::io::stderr), None)
        }
    };
    if let Some(exporter) = exporter {
        use tracing_subscriber::prelude::*;
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi);
        let fmt = match format {
            LogFormat::Text => fmt.boxed(),
            LogFormat::Json => fmt.json().boxed(),
        };
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(exporter.layer())
            .init();
        s3gate_proto::trace::set_exporting(true);
        return flush;
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    flush
}

/// Says, at most every 10 s, how many log lines the full queue cost.
async fn report_dropped_log_lines() {
    let Some(sink) = LOG_SINK.get() else {
        return;
    };
    let mut reported = 0;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tick.tick().await;
        let dropped = sink.dropped_lines();
        if dropped > reported {
            warn!(
                dropped = dropped - reported,
                total = dropped,
                "log output not keeping up: log lines dropped"
            );
            reported = dropped;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every visible subcommand and option below `cmd`, with its path
    /// (`s3gate admin keys list`, `s3gate admin keys create --principal`).
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, Option<clap::Arg>)>) {
        for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
            out.push((format!("{path} {}", arg.get_id()), Some(arg.clone())));
        }
        for sub in cmd.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() {
                out.push((path.clone(), None));
            }
            walk(sub, &path, out);
        }
    }

    #[test]
    fn every_command_and_option_has_help() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut all = Vec::new();
        walk(&cmd, "s3gate", &mut all);
        let missing: Vec<&str> = all
            .iter()
            .filter(|(_, arg)| arg.as_ref().is_none_or(|a| a.get_help().is_none()))
            .map(|(path, _)| path.as_str())
            .collect();
        assert!(missing.is_empty(), "no help text: {missing:#?}");
    }

    /// The long help of the subcommand at `path` (below `s3gate`).
    fn help(path: &[&str]) -> String {
        let mut cmd = Cli::command();
        for name in path {
            cmd = cmd.find_subcommand(name).unwrap().clone();
        }
        cmd.render_long_help().to_string()
    }

    #[test]
    fn help_speaks_to_users() {
        let top = help(&[]);
        assert!(top.contains("S3GATE_LOG=debug"), "{top}");
        for path in [
            &["serve"][..],
            &["controlplane"],
            &["dataplane"],
            &["admin"],
        ] {
            let text = help(path);
            assert!(!text.to_lowercase().contains("tests"), "{path:?}: {text}");
        }
        let put = help(&["admin", "rules", "put"]);
        for needle in ["group:NAME", "s3:Get*", "data/reports/*", "everyone"] {
            assert!(put.contains(needle), "{needle} missing: {put}");
        }
    }

    #[test]
    fn runtime_flags_belong_to_the_servers() {
        let cmd = Cli::command();
        for (name, server) in [
            ("serve", true),
            ("controlplane", true),
            ("dataplane", true),
            ("admin", false),
            ("gen-master-key", false),
        ] {
            let sub = cmd.find_subcommand(name).unwrap();
            for flag in ["worker-threads", "log-format"] {
                let has = sub.get_arguments().any(|a| a.get_long() == Some(flag));
                assert_eq!(has, server, "{name} --{flag}");
            }
        }
        let parse = |argv: &[&str]| Cli::try_parse_from(argv);
        let cli = parse(&[
            "s3gate",
            "dataplane",
            "--control-plane",
            "http://cp:1",
            "--worker-threads",
            "3",
        ])
        .unwrap();
        assert_eq!(
            cli.command.runtime().and_then(|r| r.worker_threads),
            Some(3)
        );
        // Before the subcommand, as earlier releases took them.
        let cli = parse(&[
            "s3gate",
            "--log-format",
            "json",
            "--worker-threads",
            "2",
            "gen-master-key",
        ])
        .unwrap();
        assert!(matches!(cli.log_format, Some(LogFormat::Json)));
        assert_eq!(cli.worker_threads, Some(2));
        assert!(parse(&["s3gate", "admin", "--log-format", "json", "status"]).is_err());
    }
}
