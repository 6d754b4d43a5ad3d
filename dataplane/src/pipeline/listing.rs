//! ListBuckets, answered by the gateway: the union over backends of the
//! buckets the caller may see.
//!
//! The control plane says which backends serve any bucket entry (exact,
//! pattern or the default backend) and with which credentials to list each
//! (`ControlPlane::listing`). Every backend is listed at once; each bucket
//! it holds is mapped back to the client names that route to it
//! (`buckets::Table::reverse`: exact names, templates reversed, the
//! default), keeps the backend's CreationDate, and is shown only if the
//! caller may `s3:ListBucket` it (the normal decision path and cache).
//!
//! A backend that cannot be listed (down, or its keys may not list buckets,
//! as bucket-scoped IBM COS or IAM keys often may not) does not fail the
//! answer for every other backend: it is logged at `warn!` naming the
//! backend, and its exact `[[buckets]]` entries are shown as configured,
//! with [`UNKNOWN_DATE`] (what ListBuckets always showed before it listed
//! backends); buckets it would serve by pattern or default are missing from
//! that answer.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response};
use quick_xml::events::Event;
use s3gate_proto::{BackendListing, Resource};
use s3gate_s3::xml::escape;

use super::authz::{self, Asker};
use super::route::UpstreamAuth;
use super::Ctx;
use crate::body::{self, Body};
use crate::error::Error;

/// How long one backend's ListBuckets may take.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest ListBuckets document read from a backend (S3 allows 10 000
/// buckets per account, about 1 MiB of XML).
const MAX_LISTING: usize = 8 << 20;

/// The CreationDate of a configured bucket whose backend could not be
/// listed.
pub const UNKNOWN_DATE: &str = "2000-01-01T00:00:00.000Z";

/// One bucket as a backend listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// As the backend wrote it (ISO 8601).
    pub created: String,
}

pub async fn list_buckets(cx: &Ctx, asker: &Asker<'_>) -> Result<Response<Body>, Error> {
    let principal = &asker.who.principal;
    if principal.is_anonymous() {
        return Err(Error::Denied {
            reason: "anonymous ListBuckets".to_owned(),
            decided_by: None,
        });
    }
    let listing = cx.control_plane.listing(principal).await?;
    let table = listing
        .table()
        .map_err(|m| Error::ControlPlane(format!("bucket entries: {m}")))?;
    let listed = join_all(listing.backends.iter().map(|b| list_backend(cx, b))).await;

    // Client name → creation date, first backend wins (a name routes to
    // one backend, so a second sighting is the same bucket).
    let mut candidates: Vec<(String, String)> = Vec::new();
    for (backend, result) in listing.backends.iter().zip(listed) {
        let buckets = match result {
            Ok(buckets) => buckets,
            Err(error) => {
                tracing::warn!(backend = backend.backend.name, %error, "backend ListBuckets failed; answering with its configured buckets only");
                for e in &listing.entries {
                    let configured = e.backend == backend.backend.name
                        && !s3gate_proto::buckets::is_pattern(&e.name);
                    if configured && !candidates.iter().any(|(n, _)| *n == e.name) {
                        candidates.push((e.name.clone(), UNKNOWN_DATE.to_owned()));
                    }
                }
                continue;
            }
        };
        for b in buckets {
            for name in table.reverse(&b.name, |v| *v == backend.backend.name) {
                if !candidates.iter().any(|(n, _)| *n == name) {
                    candidates.push((name, b.created.clone()));
                }
            }
        }
    }
    candidates.sort_unstable_by(|a, b| a.0.cmp(&b.0));

    let decisions = join_all(
        candidates
            .iter()
            .map(|(name, _)| authz::decide(cx, asker, "s3:ListBucket", name, Resource::Bucket)),
    )
    .await;
    let mut xml = String::with_capacity(256 + candidates.len() * 128);
    xml.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    xml.push_str(
        "\n<ListAllMyBucketsResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Owner><ID>",
    );
    escape(&mut xml, &principal.name);
    xml.push_str("</ID><DisplayName>");
    escape(&mut xml, &principal.name);
    xml.push_str("</DisplayName></Owner><Buckets>");
    for ((name, created), decision) in candidates.iter().zip(decisions) {
        match decision {
            Ok(_) => {}
            Err(Error::Denied { .. }) => continue,
            // Could not decide: fail closed, as any request would.
            Err(e) => return Err(e),
        }
        xml.push_str("<Bucket><Name>");
        escape(&mut xml, name);
        xml.push_str("</Name><CreationDate>");
        escape(&mut xml, created);
        xml.push_str("</CreationDate></Bucket>");
    }
    xml.push_str("</Buckets></ListAllMyBucketsResult>");
    let mut response = Response::new(body::full(xml));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    Ok(response)
}

/// What went wrong listing one backend (for the log; the client sees 503).
#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error("{0}")]
    Request(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("answered HTTP {0}")]
    Status(http::StatusCode),
    #[error("unreadable answer: {0}")]
    Document(String),
}

/// ListBuckets on one backend, signed with the credentials given for it.
async fn list_backend(cx: &Ctx, b: &BackendListing) -> Result<Vec<Listed>, ListError> {
    let backend = &b.backend;
    // The backend's own client: its proxy, its pool limit, its timeouts.
    let upstream = cx
        .upstreams
        .for_backend(backend)
        .map_err(ListError::Request)?;
    let uri = format!("{}/", backend.endpoint);
    let host = uri
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.authority().map(|a| a.as_str().to_owned()))
        .ok_or_else(|| ListError::Request("endpoint has no host".to_owned()))?;
    let mut request = Request::builder()
        .method(http::Method::GET)
        .uri(uri.as_str())
        .header(http::header::HOST, host.as_str())
        .body(body::empty())
        .map_err(|e| ListError::Request(e.to_string()))?;
    match super::route::upstream_auth(&b.credentials.auth, backend).map_err(ListError::Request)? {
        UpstreamAuth::SigV4(signer) => {
            let (mut parts, body) = request.into_parts();
            signer
                .sign(
                    "GET",
                    parts.uri.path(),
                    parts.uri.query().unwrap_or(""),
                    &mut parts.headers,
                    s3gate_s3::sigv4::EMPTY_SHA256_HEX,
                    crate::unix_now(),
                )
                .map_err(|e| ListError::Request(format!("cannot sign: {e}")))?;
            request = Request::from_parts(parts, body);
        }
        // IBM COS lists the buckets of the service instance it is told.
        UpstreamAuth::Bearer {
            authorization,
            service_instance_id,
        } => {
            let headers = request.headers_mut();
            headers.insert(http::header::AUTHORIZATION, authorization);
            if let Some(id) = service_instance_id {
                headers.insert(s3gate_s3::names::IBM_SERVICE_INSTANCE_ID, id);
            }
        }
    }

    let fetch = async {
        let (response, slot) = upstream
            .send(request)
            .await
            .map_err(|e| ListError::Request(e.to_string()))?;
        let status = response.status();
        let mut reservation = cx.budget.reservation();
        let doc = body::collect_limited(
            body::incoming_holding(response.into_body(), slot),
            MAX_LISTING,
            &mut reservation,
        )
        .await
        .map_err(|_| ListError::Document("body could not be read".to_owned()))?;
        if !status.is_success() {
            return Err(ListError::Status(status));
        }
        let text = std::str::from_utf8(&doc).map_err(|e| ListError::Document(e.to_string()))?;
        parse(text).map_err(ListError::Document)
    };
    tokio::time::timeout(LIST_TIMEOUT, fetch)
        .await
        .map_err(|_| ListError::Timeout(LIST_TIMEOUT))?
}

/// The buckets of a `ListAllMyBucketsResult` document.
pub fn parse(doc: &str) -> Result<Vec<Listed>, String> {
    let mut reader = quick_xml::Reader::from_str(doc);
    let mut out = Vec::new();
    let mut path: Vec<Vec<u8>> = Vec::new();
    let (mut name, mut created) = (None::<String>, None::<String>);
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => path.push(e.local_name().as_ref().to_vec()),
            Event::End(_) => {
                if path.last().is_some_and(|p| p == b"Bucket") {
                    let name = name.take().ok_or("a Bucket without Name")?;
                    out.push(Listed {
                        name,
                        created: created.take().unwrap_or_default(),
                    });
                }
                path.pop();
            }
            Event::Text(t) => {
                let text = t.unescape().map_err(|e| e.to_string())?.into_owned();
                let in_bucket = path.len() >= 2 && path[path.len() - 2] == b"Bucket";
                match path.last().map(Vec::as_slice) {
                    Some(b"Name") if in_bucket => name = Some(text),
                    Some(b"CreationDate") if in_bucket => created = Some(text),
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

/// Runs futures concurrently on this task and returns their outputs in
/// order (the handful of backends or decisions of one ListBuckets).
async fn join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|task| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(task) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_backend_listing() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListAllMyBucketsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Owner><ID>o</ID><DisplayName>o</DisplayName></Owner>
<Buckets><Bucket><Name>prod-team-a</Name><CreationDate>2026-12-05T07:00:00.000Z</CreationDate></Bucket>
<Bucket><CreationDate>2025-01-02T03:04:05.000Z</CreationDate><Name>a&amp;b</Name></Bucket></Buckets></ListAllMyBucketsResult>"#;
        assert_eq!(
            parse(doc).unwrap(),
            vec![
                Listed {
                    name: "prod-team-a".into(),
                    created: "2026-12-05T07:00:00.000Z".into()
                },
                Listed {
                    name: "a&b".into(),
                    created: "2025-01-02T03:04:05.000Z".into()
                },
            ]
        );
        assert!(parse(
            "<ListAllMyBucketsResult><Buckets><Bucket></Bucket></Buckets></ListAllMyBucketsResult>"
        )
        .is_err());
        assert!(parse("<Buckets><Bucket><Name>x</Bucket>").is_err());
    }

    #[tokio::test]
    async fn join_all_keeps_order() {
        let out = join_all([3u64, 1, 2].into_iter().map(|n| async move {
            tokio::time::sleep(Duration::from_millis(n * 5)).await;
            n
        }))
        .await;
        assert_eq!(out, vec![3, 1, 2]);
    }
}
