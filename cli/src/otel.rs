//! OpenTelemetry traces over OTLP/gRPC (`--otlp-endpoint`): the exporter,
//! the sampler and the layer that turns the spans at
//! `s3gate_proto::trace::TARGET` into OTel spans. Where spans are made and
//! how trace context travels: ARCHITECTURE.md, "Observability".
//!
//! Without an endpoint nothing here runs: no exporter, no thread, and the
//! log filter keeps the span target off, so the span macros on the request
//! path return disabled spans.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Trace export settings of the server subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Export traces over OTLP/gRPC to this collector, e.g.
    /// http://127.0.0.1:4317 (else env OTEL_EXPORTER_OTLP_ENDPOINT). Off
    /// when neither is set.
    #[arg(long, env = "S3GATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0. A request that
    /// arrives with a trace context (from a trusted proxy, or a data plane
    /// calling a control plane) follows its caller's decision.
    #[arg(long, env = "S3GATE_TRACE_SAMPLE_RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    pub trace_sample_ratio: f64,
}

impl TraceArgs {
    /// The collector, if traces are exported: the flag, else the standard
    /// OpenTelemetry variable.
    pub fn endpoint(&self) -> Option<String> {
        self.otlp_endpoint
            .clone()
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|e| !e.trim().is_empty())
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("a number from 0.0 to 1.0".to_owned()),
    }
}

/// The running exporter. Dropping it exports the spans still queued (up to
/// a few seconds), then stops the exporter's thread and runtime.
pub struct Exporter {
    provider: SdkTracerProvider,
    // The tonic channel's connection tasks live here, apart from the
    // request workers: the batch processor's thread sends through it.
    runtime: Option<tokio::runtime::Runtime>,
}

/// How long shutdown waits for the last batch.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl Exporter {
    /// Starts the exporter: batches of spans sent from a background thread
    /// to `endpoint`, sampled parent-based with `ratio` for new traces.
    pub fn start(endpoint: &str, ratio: f64, service: &'static str) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("s3gate-otlp")
            .enable_all()
            .build()
            .context("start the OTLP exporter's runtime")?;
        // Inside the runtime: the channel spawns its connection tasks.
        let exporter = {
            let _guard = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(10))
                .build()
                .context("--otlp-endpoint")?
        };
        // The data plane draws for each new request trace before making
        // a span; the sampler records the root request spans it made.
        s3gate_proto::trace::set_head_ratio(ratio);
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(s3gate_proto::trace::HeadSampler::new(ratio))
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        Ok(Self {
            provider,
            runtime: Some(runtime),
        })
    }

    /// The `tracing` layer that records the spans at the trace target (and
    /// nothing else: log events never become span events, so no log field
    /// reaches the collector).
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.provider.tracer("s3gate");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // Each of these costs work on every span or every poll of an
            // instrumented future, for attributes nobody asked for: busy
            // and idle times, source locations, threads, the target; and
            // the OTel "current context", which nothing here reads (trace
            // context is taken from the span, `s3gate_proto::trace`).
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_context_activation(false)
            .with_filter(
                Targets::new().with_target(s3gate_proto::trace::TARGET, tracing::Level::INFO),
            )
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
            eprintln!("s3gate: exporting the last spans failed: {error}");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}
