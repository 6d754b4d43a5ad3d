//! The request a backend receives, on real sockets: `s3gate_dataplane::serve`
//! on port 0 in front of a recording upstream that verifies the SigV4
//! signature with the backend's secret (using `s3gate-s3`'s verifier; the
//! gateway's signer is held to aws-sigv4 in tests/signer.rs). Clients sign
//! with aws-sigv4.
//!
//! This covers what the e2e suite cannot: s3s-fs 0.14.1 does not parse a
//! virtual-host `Host` that carries a port, so virtual-style addressing towards
//! a backend is checked here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use s3gate_proto::{
    AddressingStyle, AuthorizeRequest, Backend, BackendAuth, BackendCredentials, BucketCors,
    ControlPlane, ControlPlaneError, CorsRule, Decision, Identity, Invalidation,
    PresentedCredential, Principal, Redacted, Route, Scope, SigningKey, SigningKeyGrant,
    SigningKeyRequest,
};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const CLIENT_AK: &str = "S3GATECLIENT01";
const CLIENT_SK: &str = "client-secret-0123456789";
const CLIENT: (&str, &str) = (CLIENT_AK, CLIENT_SK);
/// A second client key, for what must not spill over from one key to another.
const OTHER_CLIENT: (&str, &str) = ("S3GATECLIENT02", "other-client-secret-98765");
const BACKEND_AK: &str = "BACKENDAK0001";
const BACKEND_SK: &str = "backend/secret+with=chars";
const REGION: &str = "us-east-1";
/// The origin bucket `data`'s one CORS rule allows.
const APP_ORIGIN: &str = "https://app.example.com";

/// What the upstream saw, after it checked the signature.
#[derive(Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    signature_ok: Result<(), String>,
}

/// A control plane with two client keys, allow-all, and bucket `data` →
/// `data-prod` on one backend; bucket `mine` → `mine-prod` on it has
/// credentials per principal (as a plugin gives them): no shared route, as
/// the real control plane answers.
struct StaticControlPlane {
    backend: Arc<Backend>,
    calls: Arc<Calls>,
}

/// How often the data plane asked the control plane.
#[derive(Default, Debug)]
struct Calls {
    signing_key: AtomicUsize,
    authorize: AtomicUsize,
    route: AtomicUsize,
    /// `bucket_cors` calls (preflights whose bucket has no cached route).
    cors: AtomicUsize,
    /// Every bucket whose shared route (no principal) was asked for.
    shared_routes_asked: std::sync::Mutex<Vec<String>>,
    /// The access key of every `signing_key` call, in order.
    signing_keys_asked: std::sync::Mutex<Vec<String>>,
}

impl Calls {
    fn get(&self) -> (usize, usize, usize) {
        (
            self.signing_key.load(Ordering::SeqCst),
            self.authorize.load(Ordering::SeqCst),
            self.route.load(Ordering::SeqCst),
        )
    }

    /// How many `signing_key` calls named `access_key`.
    fn signing_keys_for(&self, access_key: &str) -> usize {
        let asked = self.signing_keys_asked.lock().unwrap();
        asked.iter().filter(|k| *k == access_key).count()
    }
}

#[async_trait]
impl ControlPlane for StaticControlPlane {
    async fn signing_key(
        &self,
        req: SigningKeyRequest,
    ) -> Result<SigningKeyGrant, ControlPlaneError> {
        let (secret, name) = match req.access_key.as_str() {
            CLIENT_AK => (CLIENT_SK, "tester"),
            ak if ak == OTHER_CLIENT.0 => (OTHER_CLIENT.1, "other-tester"),
            _ => return Err(ControlPlaneError::UnknownAccessKey),
        };
        self.calls.signing_key.fetch_add(1, Ordering::SeqCst);
        self.calls
            .signing_keys_asked
            .lock()
            .unwrap()
            .push(req.access_key.clone());
        Ok(SigningKeyGrant {
            key: SigningKey::derive(secret, &req.date, &req.region, &req.service),
            principal: Principal {
                name: Arc::from(name),
                groups: Arc::from([]),
                access_key: Some(Arc::from(req.access_key.as_str())),
            },
            ttl: Duration::from_secs(60),
            session: None,
        })
    }

    async fn authenticate(
        &self,
        _credential: PresentedCredential,
    ) -> Result<Identity, ControlPlaneError> {
        Err(ControlPlaneError::NotAuthenticated(
            "not in this test".into(),
        ))
    }

    async fn authorize(&self, _req: AuthorizeRequest) -> Result<Decision, ControlPlaneError> {
        self.calls.authorize.fetch_add(1, Ordering::SeqCst);
        Ok(Decision {
            allow: true,
            reason: "test".into(),
            scope: Scope::Bucket,
            ttl: Duration::from_secs(60),
            decided_by: None,
        })
    }

    async fn route(&self, bucket: &str) -> Result<Route, ControlPlaneError> {
        self.calls
            .shared_routes_asked
            .lock()
            .unwrap()
            .push(bucket.to_owned());
        self.route_with(bucket, None)
    }

    async fn route_for(
        &self,
        bucket: &str,
        principal: &Principal,
    ) -> Result<Route, ControlPlaneError> {
        self.route_with(bucket, Some(principal))
    }

    async fn bucket_cors(&self, bucket: &str) -> Result<BucketCors, ControlPlaneError> {
        self.calls.cors.fetch_add(1, Ordering::SeqCst);
        if !BUCKETS.contains(&bucket) {
            return Err(ControlPlaneError::NoSuchBucket);
        }
        Ok(BucketCors {
            rules: cors_rules(),
            ttl: Duration::from_secs(60),
        })
    }

    async fn visible_buckets(&self, _p: &Principal) -> Result<Vec<String>, ControlPlaneError> {
        Ok(vec!["data".into()])
    }
}

/// The client buckets of [`StaticControlPlane`].
const BUCKETS: [&str; 2] = ["data", "mine"];

fn cors_rules() -> Arc<[CorsRule]> {
    Arc::from([CorsRule {
        allowed_origins: vec![APP_ORIGIN.into()],
        allowed_methods: vec!["GET".into(), "PUT".into()],
        allowed_headers: vec!["content-type".into()],
        expose_headers: vec!["ETag".into()],
        max_age: Some(60),
    }])
}

impl StaticControlPlane {
    fn route_with(
        &self,
        bucket: &str,
        principal: Option<&Principal>,
    ) -> Result<Route, ControlPlaneError> {
        self.calls.route.fetch_add(1, Ordering::SeqCst);
        if !BUCKETS.contains(&bucket) {
            return Err(ControlPlaneError::NoSuchBucket);
        }
        let per_principal = bucket == "mine";
        if per_principal && principal.is_none() {
            return Err(ControlPlaneError::Unavailable(format!(
                "bucket {bucket}: its credentials are per principal, and none was given"
            )));
        }
        Ok(Route {
            bucket: bucket.into(),
            backend_bucket: format!("{bucket}-prod"),
            backend: self.backend.clone(),
            credentials: Arc::new(BackendCredentials {
                auth: BackendAuth::SigV4 {
                    access_key: BACKEND_AK.into(),
                    secret_key: Redacted::new(BACKEND_SK),
                    session_token: None,
                },
                expires_unix: None,
                per_principal,
            }),
            ttl: Duration::from_secs(60),
            cors: cors_rules(),
        })
    }
}

/// Verifies an upstream request the way a backend would.
fn verify_backend_signature(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), String> {
    let auth = s3gate_s3::sigv4::parse(method, uri, headers)
        .map_err(|e| e.to_string())?
        .ok_or("upstream request carries no signature")?;
    if auth.scope.access_key() != BACKEND_AK {
        return Err(format!("signed with {}", auth.scope.access_key()));
    }
    let key = SigningKey::derive(
        BACKEND_SK,
        auth.scope.date(),
        auth.scope.region(),
        auth.scope.service(),
    );
    s3gate_s3::sigv4::verify(&auth, method, uri, headers, &key).map_err(|e| e.to_string())
}

async fn start_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let signature_ok =
                            verify_backend_signature(&parts.method, &parts.uri, &parts.headers);
                        let status = if signature_ok.is_ok() {
                            StatusCode::OK
                        } else {
                            StatusCode::FORBIDDEN
                        };
                        let _ = tx.send(Seen {
                            method: parts.method,
                            uri: parts.uri,
                            headers: parts.headers,
                            body,
                            signature_ok,
                        });
                        let mut resp =
                            Response::new(Full::new(Bytes::from_static(b"upstream says hi")));
                        *resp.status_mut() = status;
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

async fn start_gateway(
    style: AddressingStyle,
    endpoint: String,
) -> (SocketAddr, oneshot::Sender<()>) {
    let (addr, stop, _, _) = start_gateway_counting(style, endpoint).await;
    (addr, stop)
}

/// A gateway, the count of its control-plane calls, and the channel its
/// invalidations arrive on (as a control plane's Watch stream feeds it).
async fn start_gateway_counting(
    style: AddressingStyle,
    endpoint: String,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    Arc<Calls>,
    mpsc::Sender<Invalidation>,
) {
    let calls = Arc::new(Calls::default());
    let cp = Arc::new(StaticControlPlane {
        calls: calls.clone(),
        backend: Arc::new(Backend {
            name: "b".into(),
            endpoint,
            region: REGION.into(),
            addressing_style: style,
            ca_bundle: None,
            insecure_skip_verify: false,
            key_segment_guard: true,
            egress: Default::default(),
            limits: Default::default(),
        }),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (invalidations, invalidations_rx) = mpsc::channel(16);
    tokio::spawn(s3gate_dataplane::serve(
        listener,
        s3gate_dataplane::Config::default(),
        cp,
        invalidations_rx,
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(1),
    ));
    (addr, stop_tx, calls, invalidations)
}

/// Sends a request to the gateway, signed by aws-sigv4 as an SDK would.
async fn send_signed(
    gateway: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: &'static [u8],
) -> (StatusCode, Bytes) {
    send_signed_as(CLIENT, gateway, method, path_and_query, body).await
}

/// [`send_signed`] with the client key `(access key, secret)`.
async fn send_signed_as(
    (access_key, secret_key): (&str, &str),
    gateway: SocketAddr,
    method: Method,
    path_and_query: &str,
    body: &'static [u8],
) -> (StatusCode, Bytes) {
    let uri = format!("http://{gateway}{path_and_query}");
    let hash = hex::encode(Sha256::digest(body));
    let mut req = Request::builder()
        .method(method.clone())
        .uri(&uri)
        .header("host", gateway.to_string())
        .header("x-amz-meta-color", "blue")
        .header("content-length", body.len())
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let identity = Credentials::new(access_key, secret_key, None, None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    settings.percent_encoding_mode = aws_sigv4::http_request::PercentEncodingMode::Single;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name("s3")
        .time(SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    let signable = SignableRequest::new(
        method.as_str(),
        uri.as_str(),
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Precomputed(hash),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    instructions.apply_to_request_http1x(&mut req);
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn virtual_style_upstream_is_signed_for_the_backend() {
    let (upstream, mut seen) = start_upstream().await;
    // `*.localhost` resolves to loopback inside the gateway (RFC 6761).
    let endpoint = format!("http://localhost:{}", upstream.port());
    let (gateway, _stop) = start_gateway(AddressingStyle::Virtual, endpoint).await;

    let (status, body) = send_signed(
        gateway,
        Method::PUT,
        "/data/dir/a%20b%2Bc.txt?x-id=PutObject",
        b"hello",
    )
    .await;
    let got = seen.recv().await.unwrap();
    assert_eq!(got.signature_ok, Ok(()), "{got:?}");
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"upstream says hi");
    assert_eq!(got.method, Method::PUT);
    assert_eq!(
        got.headers.get("host").unwrap(),
        &format!("data-prod.localhost:{}", upstream.port())
    );
    assert_eq!(got.uri.path(), "/dir/a%20b%2Bc.txt");
    assert_eq!(got.uri.query(), Some("x-id=PutObject"));
    assert_eq!(&got.body[..], b"hello");
    assert_eq!(got.headers.get("x-amz-meta-color").unwrap(), "blue");
    // the client's hex digest is passed through, so the backend checks the body too
    assert_eq!(
        got.headers.get("x-amz-content-sha256").unwrap(),
        &hex::encode(Sha256::digest(b"hello"))
    );
}

#[tokio::test]
async fn path_style_upstream_renames_the_bucket_and_drops_client_auth() {
    let (upstream, mut seen) = start_upstream().await;
    let endpoint = format!("http://127.0.0.1:{}", upstream.port());
    let (gateway, _stop) = start_gateway(AddressingStyle::Path, endpoint).await;

    let (status, _) = send_signed(gateway, Method::GET, "/data/k%C3%BC?versionId=v%2B1", b"").await;
    let got = seen.recv().await.unwrap();
    assert_eq!(got.signature_ok, Ok(()), "{got:?}");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got.uri.path(), "/data-prod/k%C3%BC");
    assert_eq!(got.uri.query(), Some("versionId=v%2B1"));
    assert_eq!(
        got.headers.get("host").unwrap(),
        &format!("127.0.0.1:{}", upstream.port())
    );
    let auth = got.headers.get("authorization").unwrap().to_str().unwrap();
    assert!(
        auth.contains(&format!("Credential={BACKEND_AK}/")),
        "{auth}"
    );
    assert!(!auth.contains(CLIENT_AK), "{auth}");
}

#[tokio::test]
async fn warm_requests_make_no_control_plane_calls() {
    let (upstream, mut seen) = start_upstream().await;
    let endpoint = format!("http://127.0.0.1:{}", upstream.port());
    let (gateway, _stop, calls, _) = start_gateway_counting(AddressingStyle::Path, endpoint).await;

    let (status, _) = send_signed(gateway, Method::GET, "/data/a", b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls.get(), (1, 1, 1), "a cold request asks once for each");
    for path in ["/data/a", "/data/a", "/data/b/c"] {
        let (status, _) = send_signed(gateway, Method::GET, path, b"").await;
        assert_eq!(status, StatusCode::OK);
    }
    // The decision's scope is the whole bucket, so another key is warm too.
    assert_eq!(
        calls.get(),
        (1, 1, 1),
        "warm requests must not reach the control plane"
    );
    for _ in 0..4 {
        assert_eq!(seen.recv().await.unwrap().signature_ok, Ok(()));
    }
}

/// A CORS preflight is answered from the bucket's CORS rules alone: no
/// signing key, no decision, no route, nothing forwarded; a warm one asks
/// nothing at all. A GET carrying preflight headers is still signed,
/// authorized and forwarded.
#[tokio::test]
async fn preflights_ask_only_for_cors_rules_and_reach_no_backend() {
    let (upstream, mut seen) = start_upstream().await;
    let endpoint = format!("http://127.0.0.1:{}", upstream.port());
    let (gateway, _stop, calls, _) = start_gateway_counting(AddressingStyle::Path, endpoint).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let preflight = |origin: &str, method: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("http://{gateway}/data/some/key"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", "Content-Type")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    for _ in 0..3 {
        let resp = client.request(preflight(APP_ORIGIN, "PUT")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], APP_ORIGIN);
        assert_eq!(h["access-control-allow-methods"], "GET, PUT");
        assert_eq!(h["access-control-allow-headers"], "content-type");
        assert_eq!(h["access-control-max-age"], "60");
    }
    let resp = client
        .request(preflight("https://evil.test", "PUT"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(calls.get(), (0, 0, 0), "preflights ask for no route");
    assert_eq!(
        calls.cors.load(Ordering::SeqCst),
        1,
        "preflights ask for the bucket's CORS rules once, nothing else"
    );
    assert!(seen.try_recv().is_err(), "a preflight reached the backend");

    let (status, _) = send_signed(gateway, Method::GET, "/data/a", b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls.get(), (1, 1, 1));
    let got = seen.recv().await.unwrap();
    assert_eq!(got.signature_ok, Ok(()));
    // Now the shared route is cached, and its rules answer.
    let resp = client.request(preflight(APP_ORIGIN, "GET")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(calls.get(), (1, 1, 1));
    assert_eq!(calls.cors.load(Ordering::SeqCst), 1);
}

/// A bucket whose backend credentials are per principal has no shared
/// route: a preflight (which carries no identity) must not ask for one (it
/// used to, and got 503), yet it is answered from the bucket's rules; the
/// signed requests that follow get the principal's route.
#[tokio::test]
async fn a_preflight_on_a_per_principal_bucket_asks_for_no_credentials() {
    let (upstream, mut seen) = start_upstream().await;
    let endpoint = format!("http://127.0.0.1:{}", upstream.port());
    let (gateway, _stop, calls, _) = start_gateway_counting(AddressingStyle::Path, endpoint).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(format!("http://{gateway}/mine/some/key"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let resp = client.request(preflight(APP_ORIGIN)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], APP_ORIGIN);
    let resp = client
        .request(preflight("https://evil.test"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    let (status, _) = send_signed(gateway, Method::PUT, "/mine/a", b"hi").await;
    assert_eq!(status, StatusCode::OK);
    let got = seen.recv().await.unwrap();
    assert_eq!(got.uri.path(), "/mine-prod/a");
    assert_eq!(got.signature_ok, Ok(()));
    let resp = client.request(preflight(APP_ORIGIN)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    assert!(
        calls.shared_routes_asked.lock().unwrap().is_empty(),
        "a shared route was asked for"
    );
    assert_eq!(calls.cors.load(Ordering::SeqCst), 1);
    assert_eq!(
        calls.route.load(Ordering::SeqCst),
        1,
        "the principal's route"
    );
}

/// A key created, rotated or revoked reaches the data plane as
/// `Invalidation::Key`: that key's signing keys must be asked for again,
/// every other key's must stay cached (it used to flush them all).
#[tokio::test]
async fn a_key_change_drops_only_that_keys_signing_keys() {
    let (upstream, _seen) = start_upstream().await;
    let endpoint = format!("http://127.0.0.1:{}", upstream.port());
    let (gateway, _stop, calls, invalidations) =
        start_gateway_counting(AddressingStyle::Path, endpoint).await;
    let get = |who| send_signed_as(who, gateway, Method::GET, "/data/a", b"");

    for who in [CLIENT, OTHER_CLIENT] {
        assert_eq!(get(who).await.0, StatusCode::OK);
    }
    let asked = || {
        (
            calls.signing_keys_for(CLIENT.0),
            calls.signing_keys_for(OTHER_CLIENT.0),
        )
    };
    assert_eq!(asked(), (1, 1), "one signing key each, then cached");

    invalidations
        .send(Invalidation::Key(OTHER_CLIENT.0.to_owned()))
        .await
        .unwrap();
    // The data plane applies invalidations in its own task: the changed key
    // being asked for again shows this one was applied.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while calls.signing_keys_for(OTHER_CLIENT.0) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed key's signing key was never asked for again: {:?}",
            asked()
        );
        assert_eq!(get(OTHER_CLIENT).await.0, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(get(CLIENT).await.0, StatusCode::OK);
    assert_eq!(
        asked(),
        (1, 2),
        "another key's cached signing key must survive a key change"
    );
}

/// A cached route (and policy decision) is used until a change names it:
/// `Invalidation::Bucket` makes the next request ask for the route again,
/// `Invalidation::Policy` for the decision, however many requests the
/// caches (shared or per worker) answered before.
#[tokio::test]
async fn a_bucket_or_policy_change_reaches_every_cache() {
    let (upstream, _seen) = start_upstream().await;
    let endpoint = format!("http://127.0.0.1:{}", upstream.port());
    let (gateway, _stop, calls, invalidations) =
        start_gateway_counting(AddressingStyle::Path, endpoint).await;
    let get = || send_signed(gateway, Method::GET, "/data/a", b"");
    let routes: fn(&Calls) -> usize = |c| c.route.load(Ordering::SeqCst);
    let decisions: fn(&Calls) -> usize = |c| c.authorize.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(get().await.0, StatusCode::OK);
    }
    assert_eq!(routes(&calls), 1, "one route lookup for 5 requests");
    assert_eq!(decisions(&calls), 1, "one decision for 5 requests");
    for (change, asked) in [
        (Invalidation::Bucket("data".into()), routes),
        (Invalidation::Policy, decisions),
    ] {
        let before = asked(&calls);
        invalidations.send(change.clone()).await.unwrap();
        // Applied in the data plane's own task: poll until it asks again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while asked(&calls) == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{change:?} did not make the data plane ask again"
            );
            assert_eq!(get().await.0, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..5 {
            assert_eq!(get().await.0, StatusCode::OK);
        }
        assert_eq!(
            asked(&calls),
            before + 1,
            "{change:?}: asked once, then cached again"
        );
    }
}

/// A storm of requests for a bucket nothing serves costs one control-plane
/// lookup (the name is remembered as unknown), and a bucket change names it
/// (exactly, or by a glob such as a new pattern's) makes the next request
/// ask again.
#[tokio::test]
async fn unknown_buckets_are_remembered_until_a_bucket_change() {
    let (upstream, _seen) = start_upstream().await;
    let endpoint = format!("http://127.0.0.1:{}", upstream.port());
    let (gateway, _stop, calls, invalidations) =
        start_gateway_counting(AddressingStyle::Path, endpoint).await;
    let routes = || calls.route.load(Ordering::SeqCst);
    for _ in 0..50 {
        let (status, body) = send_signed(gateway, Method::GET, "/nope/k", b"").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            String::from_utf8_lossy(&body).contains("<Code>NoSuchBucket</Code>"),
            "{body:?}"
        );
    }
    assert_eq!(routes(), 1, "one lookup for 50 requests");

    for change in ["nope", "no*"] {
        let before = routes();
        invalidations
            .send(Invalidation::Bucket(change.to_owned()))
            .await
            .unwrap();
        // Applied in the data plane's own task: poll until it asks again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while routes() == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "BucketChanged({change}) did not make the data plane ask again"
            );
            send_signed(gateway, Method::GET, "/nope/k", b"").await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(routes(), before + 1, "then remembered again");
        send_signed(gateway, Method::GET, "/nope/k", b"").await;
        assert_eq!(routes(), before + 1);
    }
}
