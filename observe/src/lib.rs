//! What the outside sees of a running s3gate process, apart from the S3
//! and gRPC answers themselves: Prometheus metrics, the admin HTTP listener
//! (`/metrics`, `/healthz`, `/readyz`), the audit log, and the in-memory
//! line sink the log and the audit log are written through.
//!
//! Every process kind (`serve`, `controlplane`, `dataplane`) uses it; the
//! data plane records into it from `pipeline::respond` (the request's
//! observers) and its caches, the control plane from its gRPC services and
//! credential exchanges.

pub mod access;
pub mod admin;
pub mod audit;
pub mod metrics;
pub mod sink;

use std::sync::OnceLock;

pub use admin::{AlwaysReady, Health, Readiness};
pub use audit::{Audit, AuditRecord};
pub use metrics::{CacheKind, Metrics, Open};

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's metrics, made on first use. One per process: every
/// component records into the same registry that `/metrics` serves.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}
