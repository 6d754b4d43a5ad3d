//! The `s3gate` binary: parse flags, set up logging, validate config, bind,
//! and hand the listener to the library. No request logic lives here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use s3gate_controlplane::config::FileConfig;
use s3gate_controlplane::Embedded;
use s3gate_s3::request::HostConfig;
use tokio::net::TcpListener;
use tracing::info;

/// Exit code for bad configuration (EX_USAGE).
const EX_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "s3gate",
    version,
    about = "Identity-aware gateway for S3-compatible object storage"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "S3GATE_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
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
}

#[derive(Debug, clap::Args)]
struct ControlplaneArgs {
    /// The TOML config file (backends, buckets, keys, rules).
    #[arg(long, env = "S3GATE_CONFIG")]
    config: PathBuf,
    /// Address for gRPC. Tests pass 127.0.0.1:0.
    #[arg(long, env = "S3GATE_CP_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Once bound, write the listening address here as JSON (`{"grpc": …}`).
    #[arg(long, env = "S3GATE_CP_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// Name reported to data planes (defaults to the listen address).
    #[arg(long, env = "S3GATE_CP_NAME")]
    name: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DataplaneArgs {
    /// Control-plane gRPC URLs (http://host:port), tried in order on failure.
    #[arg(
        long = "control-plane",
        env = "S3GATE_DP_CONTROL_PLANE",
        value_delimiter = ',',
        required = true
    )]
    control_planes: Vec<String>,
    /// Address for S3 traffic. Tests pass 127.0.0.1:0.
    #[arg(long, env = "S3GATE_DP_LISTEN", default_value = "127.0.0.1:9080")]
    listen: SocketAddr,
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
    /// Once bound, write the listening addresses here as JSON.
    #[arg(long, env = "S3GATE_DP_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// Deadline of one control-plane call; past it the next replica is tried.
    #[arg(long, env = "S3GATE_DP_RPC_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    rpc_timeout: Duration,
    /// How long to wait for in-flight requests on shutdown.
    #[arg(long, env = "S3GATE_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// The TOML config file (backends, buckets, keys, rules).
    #[arg(long, env = "S3GATE_CONFIG")]
    config: PathBuf,
    /// Address for S3 traffic; overrides `listen` in the config. Tests pass 127.0.0.1:0.
    #[arg(long, env = "S3GATE_LISTEN")]
    listen: Option<SocketAddr>,
    /// Once bound, write the listening addresses here as JSON.
    #[arg(long, env = "S3GATE_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// How long to wait for in-flight requests on shutdown.
    #[arg(long, env = "S3GATE_DRAIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Controlplane(args) => controlplane(args),
        Command::Dataplane(args) => dataplane(args),
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
    let file = FileConfig::load(&args.config)
        .with_context(|| format!("load {}", args.config.display()))
        .map_err(Failure::Usage)?;
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9080)));
    let dp_cfg = s3gate_dataplane::Config {
        region: file.region.clone(),
        hosts: HostConfig {
            base_domains: file.base_domains.clone(),
        },
        ..Default::default()
    };
    let control_plane = Arc::new(Embedded::new(&file));

    runtime()?
        .block_on(async move {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("bind S3 listener on {listen}"))?;
            let local = listener.local_addr().context("read listener address")?;
            info!(address = %local, buckets = file.buckets.len(), keys = file.keys.len(), rules = file.rules.len(), "s3gate serving");
            if let Some(path) = &args.ready_file {
                write_ready(path, &s3gate_dataplane::ready_json(local)).context("write ready file")?;
            }
            // The embedded control plane's state only changes on restart:
            // nothing to invalidate yet, but the same path as `dataplane`.
            let (_keep, invalidations) = tokio::sync::mpsc::channel(16);
            s3gate_dataplane::serve(listener, dp_cfg, control_plane, invalidations, shutdown_signal(), args.drain_timeout)
                .await;
            anyhow::Ok(())
        })
        .map_err(Failure::Runtime)
}

fn controlplane(args: ControlplaneArgs) -> Result<(), Failure> {
    let file = FileConfig::load(&args.config)
        .with_context(|| format!("load {}", args.config.display()))
        .map_err(Failure::Usage)?;
    let control_plane = Arc::new(Embedded::new(&file));
    runtime()?
        .block_on(async move {
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("bind gRPC listener on {}", args.listen))?;
            let local = listener.local_addr().context("read listener address")?;
            let name = args.name.unwrap_or_else(|| local.to_string());
            info!(address = %local, name, "s3gate control plane serving gRPC");
            if let Some(path) = &args.ready_file {
                write_ready(path, &format!("{{\"grpc\": \"{local}\"}}"))
                    .context("write ready file")?;
            }
            let events = s3gate_controlplane::grpc::events();
            // Config-backed state never changes while running: version 0.
            let service = s3gate_controlplane::grpc::DecisionsService::new(
                control_plane,
                events,
                name,
                Arc::new(|| 0),
            );
            s3gate_controlplane::grpc::serve(listener, service, shutdown_signal())
                .await
                .context("gRPC server")?;
            anyhow::Ok(())
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
        ..Default::default()
    };
    runtime()?
        .block_on(async move {
            let listener = TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("bind S3 listener on {}", args.listen))?;
            let local = listener.local_addr().context("read listener address")?;
            info!(address = %local, control_planes = ?args.control_planes, "s3gate data plane serving");
            let control_plane = Arc::new(s3gate_dataplane::control::GrpcControlPlane::new(&endpoints, args.rpc_timeout));
            let invalidations = s3gate_dataplane::control::watch(endpoints, local.to_string());
            if let Some(path) = &args.ready_file {
                write_ready(path, &s3gate_dataplane::ready_json(local)).context("write ready file")?;
            }
            s3gate_dataplane::serve(listener, dp_cfg, control_plane, invalidations, shutdown_signal(), args.drain_timeout)
                .await;
            anyhow::Ok(())
        })
        .map_err(Failure::Runtime)
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")
        .map_err(Failure::Runtime)
}

/// Write-then-rename, so a reader never sees a partial file.
fn write_ready(path: &Path, json: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
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

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("S3GATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // aws-sigv4 logs canonical requests at debug/trace, which carry header
    // values such as a backend session token: never let them through,
    // whatever S3GATE_LOG says.
    let filter = match "aws_sigv4=warn".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
