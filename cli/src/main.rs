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

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")
        .map_err(Failure::Runtime)?;
    runtime
        .block_on(async move {
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("bind S3 listener on {listen}"))?;
            let local = listener.local_addr().context("read listener address")?;
            info!(address = %local, buckets = file.buckets.len(), keys = file.keys.len(), rules = file.rules.len(), "s3gate serving");
            if let Some(path) = &args.ready_file {
                write_ready(path, &s3gate_dataplane::ready_json(local)).context("write ready file")?;
            }
            s3gate_dataplane::serve(listener, dp_cfg, control_plane, shutdown_signal(), args.drain_timeout).await;
            anyhow::Ok(())
        })
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
