//! How long a cold SQL decision takes, in the control plane itself: the
//! guard, the pool and one query on loopback, without HTTP, SigV4 or a
//! backend around it (bench/run.py's S4sql measures those too). A
//! measurement, not a check, so it is ignored by default:
//!
//! ```text
//! S3GATE_SQL_LATENCY_URL=postgres://postgres@127.0.0.1:5432/postgres \
//!   cargo test --release -p s3gate-controlplane --test sql_latency -- --ignored --nocapture
//! ```
//!
//! `sqlite://PATH` works too. The query reads no table (the same shape as
//! the README's: binds, a JSON group list, a prefix test), so nothing has to
//! be created; every request has its own key, as every decision would be a
//! cache miss in the data plane.

#![allow(clippy::unwrap_used)]

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use s3gate_controlplane::config::{CacheConfig, Secret, SqlSourceConfig};
use s3gate_controlplane::sources::sql::policy::SqlPolicy;
use s3gate_controlplane::sources::{PolicySource, VerdictKind};
use s3gate_proto::{AuthorizeRequest, Principal, Resource};

const PG_QUERY: &str =
    "SELECT 'allow' AS effect WHERE :bucket = 'bench' AND :action = 's3:GetObject' \
    AND 'cold' IN (SELECT jsonb_array_elements_text(:groups::jsonb)) \
    AND substr(:key, 1, 5) = 'cold/' AND :principal <> ''";
const SQLITE_QUERY: &str =
    "SELECT 'allow' AS effect WHERE :bucket = 'bench' AND :action = 's3:GetObject' \
    AND 'cold' IN (SELECT value FROM json_each(:groups)) \
    AND substr(:key, 1, 5) = 'cold/' AND :principal <> ''";

fn request(i: usize) -> AuthorizeRequest {
    AuthorizeRequest {
        principal: Principal {
            name: Arc::from(format!("cold{:06}", i % 5000)),
            groups: Arc::from(vec![Arc::from("cold")]),
            access_key: None,
        },
        action: Cow::Borrowed("s3:GetObject"),
        bucket: "bench".to_owned(),
        resource: Resource::Object(format!("cold/{i:08}")),
        context: Default::default(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: needs S3GATE_SQL_LATENCY_URL (see the module docs)"]
async fn cold_sql_decision_latency() {
    let Ok(url) = std::env::var("S3GATE_SQL_LATENCY_URL") else {
        panic!("set S3GATE_SQL_LATENCY_URL (see the module docs)");
    };
    let query = if url.starts_with("sqlite:") {
        SQLITE_QUERY
    } else {
        PG_QUERY
    };
    let config = SqlSourceConfig {
        url: Secret::new(url),
        query: query.to_owned(),
        timeout: Duration::from_secs(1),
    };
    let policy = Arc::new(SqlPolicy::new(&config, &CacheConfig::default()).unwrap());
    // Connections made and the statement prepared, as in a running gateway.
    for i in 0..200 {
        policy.decide(&request(i)).await.unwrap();
    }
    for concurrency in [1usize, 8, 32] {
        let per_task = 4000 / concurrency;
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let policy = policy.clone();
                tokio::spawn(async move {
                    let mut took = Vec::with_capacity(per_task);
                    for n in 0..per_task {
                        let req = request(1_000 + t * per_task + n);
                        let at = Instant::now();
                        let verdict = policy.decide(&req).await.unwrap();
                        took.push(at.elapsed());
                        assert_eq!(verdict.kind, VerdictKind::Allow);
                    }
                    took
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        let elapsed = started.elapsed();
        all.sort();
        println!(
            "concurrency {concurrency:>2}: {} decisions, {:.0}/s, p50 {:?}, p99 {:?}, max {:?}",
            all.len(),
            all.len() as f64 / elapsed.as_secs_f64(),
            percentile(&all, 0.50),
            percentile(&all, 0.99),
            all[all.len() - 1],
        );
    }
}
