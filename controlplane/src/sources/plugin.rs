//! Plugins: sources that live in another process and answer over gRPC
//! (`s3gate.plugin.v1.Plugin`, `proto/s3gate/plugin/v1/plugin.proto`;
//! `sdk/python` writes them in Python). One plugin can serve every kind:
//!
//! | config | RPC | source here |
//! |---|---|---|
//! | `[[policy]] kind = "plugin"` | `Authorize` | [`PluginPolicy`] |
//! | `[[identity]] kind = "plugin"` | `LookupSecret` | [`PluginIdentity`] |
//! | `[[buckets]] credentials = { kind = "plugin" }` | `BucketCredentials` | [`PluginCredentials`] |
//!
//! Every entry that names the same URL shares one HTTP/2 connection (a
//! tonic `Channel`, connected lazily: a plugin may start after s3gate); each
//! entry has its own [`Guard`] (its timeout, its breaker). A plugin that
//! fails, is slow or is gone cannot decide: never an allow.
//!
//! When a plugin's connection is first made (at startup, or when a config
//! change names a new URL), its standard `grpc.health.v1` service is asked
//! once, in the background: a plugin that does not answer SERVING is logged
//! as a warning naming its URL. s3gate starts anyway (the plugin may start
//! later); until it answers, requests it must decide get 503. The breaker's
//! half-open probe is a real call, not a health check.
//!
//! A looked-up secret stays here: the control plane derives the SigV4
//! signing key from it (and checks SigV2 signatures with it) as it does for
//! its own keys; data planes only ever see derived keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use s3gate_proto::plugin_pb;
use s3gate_proto::plugin_pb::plugin_client::PluginClient;
use s3gate_proto::{
    AuthorizeRequest, Principal, Resource, SigV2Request, SigningKeyGrant, SigningKeyRequest,
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::guard::Guard;
use super::identity::{IdentitySource, SecretEntry, SigV2Check};
use super::policy::{Answer, PolicySource, Verdict, VerdictKind};
use super::{BuildError, SourceError};
use crate::config::{CacheConfig, RemoteSourceConfig};

const NAME: &str = "plugin";

/// The service name a plugin reports its health under.
const SERVICE: &str = "s3gate.plugin.v1.Plugin";

/// How long the startup health check waits for an answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

/// The policy source of a `[[policy]] kind = "plugin"` entry.
pub struct PluginPolicy {
    client: PluginClient<Channel>,
    guard: Guard,
    /// `plugin <url>`: what Explain shows as the deciding source.
    label: String,
    /// The `[cache] decision_ttl`: no answer is cached longer.
    max_ttl: Duration,
}

/// The identity source of an `[[identity]] kind = "plugin"` entry.
pub struct PluginIdentity {
    client: PluginClient<Channel>,
    guard: Guard,
    /// How long data planes may cache a derived key (`[cache] key_ttl`).
    ttl: Duration,
}

/// The client of `url`, sharing the connection of every other entry that
/// names it. `section` is for the error.
pub fn client(url: &str, section: &'static str) -> Result<PluginClient<Channel>, BuildError> {
    static CHANNELS: OnceLock<Mutex<HashMap<String, Channel>>> = OnceLock::new();
    let mut channels = CHANNELS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let channel = match channels.get(url) {
        Some(channel) => channel.clone(),
        None => {
            let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| BuildError {
                section,
                kind: NAME,
                message: format!("url {url:?}: {e}"),
            })?;
            let channel = endpoint
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .connect_lazy();
            channels.insert(url.to_owned(), channel.clone());
            check_health_soon(url, channel.clone());
            channel
        }
    };
    Ok(PluginClient::new(channel))
}

/// Asks the plugin at `url` for its health in the background and logs the
/// answer: a warning, naming the URL, unless it is SERVING. Never fails
/// anything (outside a runtime, it does nothing).
fn check_health_soon(url: &str, channel: Channel) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let url = url.to_owned();
    runtime.spawn(async move {
        match health(channel).await {
            Ok(ServingStatus::Serving) => tracing::info!(url, "plugin is serving"),
            Ok(status) => tracing::warn!(
                url,
                status = status.as_str_name(),
                "plugin health check: not serving; requests it must decide get 503 until it is"
            ),
            Err(error) => tracing::warn!(
                url,
                %error,
                "plugin health check: unreachable; requests it must decide get 503 until it answers"
            ),
        }
    });
}

/// The plugin's answer to `grpc.health.v1.Health/Check` for its service.
pub async fn health(channel: Channel) -> Result<ServingStatus, String> {
    let mut client = HealthClient::new(channel);
    let req = HealthCheckRequest {
        service: SERVICE.to_owned(),
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, client.check(req)).await {
        Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
        Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
        Ok(Ok(resp)) => Ok(resp.into_inner().status()),
    }
}

/// `[[policy]] kind = "plugin"`.
pub async fn policy(
    config: &RemoteSourceConfig,
    cache: &CacheConfig,
) -> Result<Arc<dyn PolicySource>, BuildError> {
    Ok(Arc::new(PluginPolicy {
        client: client(&config.url, "policy")?,
        guard: Guard::new(NAME, config.timeout),
        label: format!("plugin {}", config.url),
        max_ttl: cache.decision_ttl,
    }))
}

/// `[[identity]] kind = "plugin"`.
pub async fn identity(
    config: &RemoteSourceConfig,
    cache: &CacheConfig,
) -> Result<Arc<dyn IdentitySource>, BuildError> {
    Ok(Arc::new(PluginIdentity {
        client: client(&config.url, "identity")?,
        guard: Guard::new(NAME, config.timeout),
        ttl: cache.key_ttl,
    }))
}

/// A failed call: cannot decide.
fn failed(status: tonic::Status) -> SourceError {
    SourceError::new(NAME, format!("{:?}: {}", status.code(), status.message()))
}

/// The decision input document as the plugin message (the same names as
/// every other policy source's input).
pub fn authorize_request(req: &AuthorizeRequest, now: SystemTime) -> plugin_pb::AuthorizeRequest {
    let (key, prefix, kind) = match &req.resource {
        Resource::Object(k) => (k.clone(), String::new(), "object"),
        Resource::Prefix(p) => (String::new(), p.clone(), "prefix"),
        Resource::Bucket => (String::new(), String::new(), "bucket"),
    };
    let cx = &req.context;
    plugin_pb::AuthorizeRequest {
        principal: req.principal.name.to_string(),
        groups: req.principal.groups.iter().map(|g| g.to_string()).collect(),
        identity: Some(plugin_pb::Identity {
            source: cx.identity_source.to_string(),
            claims: cx.claims.iter().cloned().collect(),
        }),
        action: req.action.to_string(),
        bucket: req.bucket.clone(),
        key,
        prefix,
        kind: kind.to_owned(),
        method: cx.method.to_string(),
        client_ip: cx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        time: humantime::format_rfc3339_seconds(now).to_string(),
        headers: cx
            .headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect(),
    }
}

/// The plugin's answer in the shape every outside source maps to: deny
/// wins, allow allows, neither abstains.
pub fn answer(resp: plugin_pb::AuthorizeResponse) -> Answer {
    let kind = if resp.deny {
        VerdictKind::Deny
    } else if resp.allow {
        VerdictKind::Allow
    } else {
        VerdictKind::Abstain
    };
    Answer {
        kind,
        reason: Some(resp.reason).filter(|r| !r.is_empty()),
        ttl_s: resp.ttl_s,
        scope_prefix: resp.scope_prefix,
    }
}

#[async_trait]
impl PolicySource for PluginPolicy {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn decide(&self, req: &AuthorizeRequest) -> Result<Verdict, SourceError> {
        let msg = authorize_request(req, SystemTime::now());
        let mut client = self.client.clone();
        let resp = self
            .guard
            .run(async move { client.authorize(msg).await.map_err(failed) })
            .await?;
        Ok(answer(resp.into_inner()).into_verdict(&self.label, req, self.max_ttl))
    }
}

impl PluginIdentity {
    async fn lookup(&self, access_key: &str) -> Result<Option<SecretEntry>, SourceError> {
        let mut client = self.client.clone();
        let msg = plugin_pb::LookupSecretRequest {
            access_key: access_key.to_owned(),
        };
        let resp = self
            .guard
            .run(async move { client.lookup_secret(msg).await.map_err(failed) })
            .await?
            .into_inner();
        if !resp.found {
            return Ok(None);
        }
        // An answer that cannot be a principal is a bad answer, not a
        // principal: fail closed.
        if resp.principal.is_empty() || resp.principal == Principal::ANONYMOUS {
            return Err(SourceError::new(
                NAME,
                format!("lookup_secret for {access_key}: no usable principal"),
            ));
        }
        if resp.secret.is_empty() {
            return Err(SourceError::new(
                NAME,
                format!("lookup_secret for {access_key}: an empty secret"),
            ));
        }
        Ok(Some(SecretEntry {
            principal: Principal {
                name: Arc::from(resp.principal.as_str()),
                groups: resp.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                access_key: Some(Arc::from(access_key)),
            },
            secret: crate::config::Secret::new(resp.secret),
        }))
    }
}

#[async_trait]
impl IdentitySource for PluginIdentity {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn signing_key(
        &self,
        req: &SigningKeyRequest,
    ) -> Result<Option<SigningKeyGrant>, SourceError> {
        Ok(self
            .lookup(&req.access_key)
            .await?
            .map(|e| e.grant(req, self.ttl)))
    }

    async fn principal(&self, access_key: &str) -> Result<Option<Principal>, SourceError> {
        Ok(self.lookup(access_key).await?.map(|e| e.principal))
    }

    async fn verify_sigv2(&self, req: &SigV2Request) -> Result<Option<SigV2Check>, SourceError> {
        Ok(self
            .lookup(&req.access_key)
            .await?
            .map(|e| e.check_sigv2(req, self.ttl)))
    }
}

/// The credential source of every bucket configured with `credentials =
/// { kind = "plugin" }`, compiled from each state version (the guards, and
/// the connections, outlive it: a breaker stays open across state changes).
pub struct PluginCredentials {
    /// An `Err`: the bucket's plugin cannot be asked (a URL that is not
    /// one); its requests fail closed rather than fall through to the
    /// backend's own keys.
    by_bucket: HashMap<String, Result<Arc<Remote>, String>>,
}

/// One plugin URL and timeout, as bucket credentials ask it.
pub struct Remote {
    client: PluginClient<Channel>,
    guard: Guard,
}

impl PluginCredentials {
    /// The plugin buckets of `state`. A URL that is not one is logged and
    /// its buckets fail closed (503) until it is fixed.
    pub fn from_state(state: &crate::state::State) -> Self {
        type Remotes = Mutex<HashMap<(String, Duration), Arc<Remote>>>;
        static REMOTES: OnceLock<Remotes> = OnceLock::new();
        let mut remotes = REMOTES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut by_bucket = HashMap::new();
        for bucket in state.buckets.values() {
            let Some(crate::credential::BucketCredentialSource::Plugin(c)) = &bucket.credentials
            else {
                continue;
            };
            let key = (c.url.clone(), c.timeout);
            let remote = match remotes.get(&key) {
                Some(remote) => Ok(remote.clone()),
                None => match client(&c.url, "buckets") {
                    Ok(client) => {
                        let remote = Arc::new(Remote {
                            client,
                            guard: Guard::new(NAME, c.timeout),
                        });
                        remotes.insert(key, remote.clone());
                        Ok(remote)
                    }
                    Err(error) => {
                        tracing::warn!(%error, bucket = %bucket.name, "bucket credentials plugin cannot be asked: its requests get 503");
                        Err(error.to_string())
                    }
                },
            };
            by_bucket.insert(bucket.name.clone(), remote);
        }
        Self { by_bucket }
    }

    /// Whether `bucket`'s credentials come from here.
    pub fn serves(&self, bucket: &str) -> bool {
        self.by_bucket.contains_key(bucket)
    }
}

#[async_trait]
impl super::CredentialSource for PluginCredentials {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn credentials(
        &self,
        req: &super::credentials::CredentialRequest<'_>,
    ) -> Result<Option<Arc<s3gate_proto::BackendCredentials>>, SourceError> {
        let remote = match self.by_bucket.get(req.entry) {
            None => return Ok(None),
            Some(Ok(remote)) => remote,
            Some(Err(message)) => {
                return Err(SourceError::new(
                    NAME,
                    format!("bucket {}: {message}", req.bucket),
                ))
            }
        };
        let msg = plugin_pb::BucketCredentialsRequest {
            principal: req
                .principal
                .map(|p| p.name.to_string())
                .unwrap_or_default(),
            groups: req
                .principal
                .map(|p| p.groups.iter().map(|g| g.to_string()).collect())
                .unwrap_or_default(),
            bucket: req.bucket.to_owned(),
            backend: req.backend.to_owned(),
        };
        let mut client = remote.client.clone();
        let resp = remote
            .guard
            .run(async move { client.bucket_credentials(msg).await.map_err(failed) })
            .await?
            .into_inner();
        // No credentials from the source that owns the bucket's: never the
        // backend's own keys instead (they may reach more than this
        // principal may).
        if !resp.found {
            return Err(SourceError::new(
                NAME,
                format!("no credentials for bucket {}", req.bucket),
            ));
        }
        if resp.access_key.is_empty() || resp.secret_key.is_empty() {
            return Err(SourceError::new(
                NAME,
                format!("incomplete credentials for bucket {}", req.bucket),
            ));
        }
        Ok(Some(Arc::new(s3gate_proto::BackendCredentials {
            auth: s3gate_proto::BackendAuth::SigV4 {
                access_key: resp.access_key,
                secret_key: s3gate_proto::Redacted::new(resp.secret_key),
                session_token: (!resp.session_token.is_empty())
                    .then(|| s3gate_proto::Redacted::new(resp.session_token)),
            },
            expires_unix: (resp.expires_unix != 0).then_some(resp.expires_unix),
            per_principal: resp.per_principal && req.principal.is_some(),
        })))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use s3gate_proto::SigningKey;
    use std::borrow::Cow;

    use s3gate_proto::plugin_pb::plugin_server::{Plugin, PluginServer};
    use s3gate_proto::{RequestContext, Scope};
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::{Request, Response, Status};

    use super::*;

    /// A real plugin on a real socket: answers by principal name, after
    /// `delay`; records what it was asked.
    #[derive(Default)]
    struct TestPlugin {
        delay: Duration,
        seen: Mutex<Vec<plugin_pb::AuthorizeRequest>>,
    }

    #[tonic::async_trait]
    impl Plugin for TestPlugin {
        async fn authorize(
            &self,
            req: Request<plugin_pb::AuthorizeRequest>,
        ) -> Result<Response<plugin_pb::AuthorizeResponse>, Status> {
            tokio::time::sleep(self.delay).await;
            let req = req.into_inner();
            let mut resp = plugin_pb::AuthorizeResponse::default();
            match req.principal.as_str() {
                "alice" => {
                    resp.allow = true;
                    resp.reason = "grant 7".into();
                    resp.ttl_s = Some(5);
                    resp.scope_prefix = Some("reports/".into());
                }
                "mallory" => resp.deny = true,
                "broken" => return Err(Status::internal("the authorize handler failed")),
                _ => {}
            }
            self.seen.lock().unwrap().push(req);
            Ok(Response::new(resp))
        }

        async fn lookup_secret(
            &self,
            req: Request<plugin_pb::LookupSecretRequest>,
        ) -> Result<Response<plugin_pb::LookupSecretResponse>, Status> {
            let mut resp = plugin_pb::LookupSecretResponse::default();
            match req.into_inner().access_key.as_str() {
                "AKALICE" => {
                    resp.found = true;
                    resp.secret = "alice-secret".into();
                    resp.principal = "alice".into();
                    resp.groups = vec!["staff".into()];
                }
                "AKNOBODY" => {
                    resp.found = true;
                    resp.secret = "s".into();
                }
                _ => {}
            }
            Ok(Response::new(resp))
        }

        async fn bucket_credentials(
            &self,
            req: Request<plugin_pb::BucketCredentialsRequest>,
        ) -> Result<Response<plugin_pb::BucketCredentialsResponse>, Status> {
            let req = req.into_inner();
            Ok(Response::new(plugin_pb::BucketCredentialsResponse {
                found: req.bucket == "reports",
                access_key: format!("BACKEND-{}", req.principal),
                secret_key: format!("secret-of-{}", req.principal),
                session_token: String::new(),
                per_principal: !req.principal.is_empty(),
                expires_unix: 0,
            }))
        }
    }

    /// Serves `plugin` on 127.0.0.1:0; returns its URL.
    async fn serve(plugin: Arc<TestPlugin>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PluginServer::from_arc(plugin))
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        url
    }

    #[tokio::test]
    async fn health_is_asked_under_the_plugin_service_name() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(SERVICE, tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let channel = || Endpoint::from_shared(url.clone()).unwrap().connect_lazy();
        assert_eq!(health(channel()).await, Ok(ServingStatus::NotServing));
        reporter
            .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
            .await;
        assert_eq!(health(channel()).await, Ok(ServingStatus::Serving));

        // Nothing listens there (a port just released): an error, not a panic.
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let err = health(Endpoint::from_shared(gone).unwrap().connect_lazy())
            .await
            .unwrap_err();
        assert!(err.contains("Unavailable"), "{err}");
    }

    fn remote(url: &str, timeout_ms: u64) -> RemoteSourceConfig {
        RemoteSourceConfig {
            url: url.to_owned(),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn request(principal: &str, resource: Resource) -> AuthorizeRequest {
        AuthorizeRequest {
            principal: Principal {
                name: Arc::from(principal),
                groups: Arc::from(vec![Arc::from("staff")]),
                access_key: None,
            },
            action: Cow::Borrowed("s3:GetObject"),
            bucket: "data".into(),
            resource,
            context: RequestContext {
                client_ip: Some("10.1.2.3".parse().unwrap()),
                identity_source: Cow::Borrowed("jwt"),
                claims: Arc::from(vec![("email".to_owned(), "a@example.com".to_owned())]),
                method: Cow::Borrowed("GET"),
                headers: vec![("content-type", "text/csv".to_owned())],
            },
        }
    }

    fn object(key: &str) -> Resource {
        Resource::Object(key.to_owned())
    }

    #[tokio::test]
    async fn the_plugin_sees_the_input_document_and_its_answers_map_to_verdicts() {
        let plugin = Arc::new(TestPlugin::default());
        let url = serve(plugin.clone()).await;
        let cache = CacheConfig::default();
        let source = policy(&remote(&url, 2000), &cache).await.unwrap();

        let v = source
            .decide(&request("alice", object("reports/q1.csv")))
            .await
            .unwrap();
        assert_eq!(v.kind, VerdictKind::Allow);
        assert_eq!(v.reason, "grant 7");
        assert_eq!(v.scope, Scope::Prefix("reports/".into()));
        assert_eq!(v.ttl, Duration::from_secs(5));
        assert_eq!(v.by.as_deref(), Some(format!("plugin {url}").as_str()));

        // A prefix the key is not under holds for the exact key only.
        let v = source
            .decide(&request("alice", object("other/k")))
            .await
            .unwrap();
        assert_eq!((v.kind, v.scope), (VerdictKind::Allow, Scope::Exact));

        let v = source
            .decide(&request("mallory", object("k")))
            .await
            .unwrap();
        assert_eq!(v.kind, VerdictKind::Deny);
        // Silent on scope and TTL: the exact request, the configured TTL.
        let v = source.decide(&request("bob", object("k"))).await.unwrap();
        assert_eq!(v.kind, VerdictKind::Abstain, "no allow is not a deny");
        assert_eq!((v.scope, v.ttl), (Scope::Exact, cache.decision_ttl));

        source
            .decide(&request("bob", Resource::Prefix("logs/".into())))
            .await
            .unwrap();
        let seen = plugin.seen.lock().unwrap();
        let first = &seen[0];
        assert_eq!(first.principal, "alice");
        assert_eq!(first.groups, ["staff"]);
        let identity = first.identity.as_ref().unwrap();
        assert_eq!(identity.source, "jwt");
        assert_eq!(identity.claims["email"], "a@example.com");
        assert_eq!(
            (
                first.action.as_str(),
                first.bucket.as_str(),
                first.key.as_str(),
                first.prefix.as_str(),
                first.kind.as_str()
            ),
            ("s3:GetObject", "data", "reports/q1.csv", "", "object")
        );
        assert_eq!(
            (first.method.as_str(), first.client_ip.as_str()),
            ("GET", "10.1.2.3")
        );
        assert_eq!(first.headers["content-type"], "text/csv");
        assert!(
            first.time.ends_with('Z') && first.time.len() == 20,
            "RFC 3339: {}",
            first.time
        );
        let listing = seen.last().unwrap();
        assert_eq!(
            (
                listing.key.as_str(),
                listing.prefix.as_str(),
                listing.kind.as_str()
            ),
            ("", "logs/", "prefix")
        );
    }

    #[tokio::test]
    async fn a_failing_slow_or_absent_plugin_cannot_decide() {
        let slow = Arc::new(TestPlugin {
            delay: Duration::from_millis(300),
            ..Default::default()
        });
        let url = serve(slow).await;
        let cache = CacheConfig::default();
        let source = policy(&remote(&url, 50), &cache).await.unwrap();
        let err = source
            .decide(&request("alice", object("reports/k")))
            .await
            .unwrap_err();
        assert!(
            err.refusal.is_none() && err.message.contains("no answer"),
            "{err}"
        );

        let url = serve(Arc::new(TestPlugin::default())).await;
        let source = policy(&remote(&url, 2000), &cache).await.unwrap();
        let err = source
            .decide(&request("broken", object("k")))
            .await
            .unwrap_err();
        assert!(err.message.contains("Internal"), "{err}");

        // Nothing listens there (a port just released).
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let source = policy(&remote(&gone, 2000), &cache).await.unwrap();
        assert!(source.decide(&request("alice", object("k"))).await.is_err());
        let identity = identity(&remote(&gone, 2000), &cache).await.unwrap();
        assert!(identity.principal("AKALICE").await.is_err());
    }

    #[tokio::test]
    async fn looked_up_secrets_sign_like_issued_keys_and_stay_here() {
        let url = serve(Arc::new(TestPlugin::default())).await;
        let cache = CacheConfig::default();
        let source = identity(&remote(&url, 2000), &cache).await.unwrap();
        let ask = |access_key: &str| SigningKeyRequest {
            access_key: access_key.into(),
            date: "20261203".into(),
            region: "us-east-1".into(),
            service: "s3".into(),
            security_token_sha256: None,
        };
        let grant = source.signing_key(&ask("AKALICE")).await.unwrap().unwrap();
        let expected = SigningKey::derive("alice-secret", "20261203", "us-east-1", "s3");
        assert_eq!(grant.key.as_bytes(), expected.as_bytes());
        assert_eq!(&*grant.principal.name, "alice");
        assert_eq!(&*grant.principal.groups[0], "staff");
        assert_eq!(grant.principal.access_key.as_deref(), Some("AKALICE"));
        assert_eq!(grant.ttl, cache.key_ttl);
        assert!(source.signing_key(&ask("AKBOB")).await.unwrap().is_none());
        // Found, but no principal: a bad answer fails closed.
        assert!(source.signing_key(&ask("AKNOBODY")).await.is_err());

        let sts = "GET\n\n\n1764776159\n/b/k";
        let v2 = |secret: &str| SigV2Request {
            access_key: "AKALICE".into(),
            string_to_sign: sts.into(),
            signature: s3gate_s3::sigv2::sign(secret.as_bytes(), sts.as_bytes()),
        };
        assert!(matches!(
            source.verify_sigv2(&v2("alice-secret")).await.unwrap(),
            Some(SigV2Check::Match(g)) if &*g.principal.name == "alice"
        ));
        assert!(matches!(
            source.verify_sigv2(&v2("wrong")).await.unwrap(),
            Some(SigV2Check::Mismatch)
        ));
    }

    #[tokio::test]
    async fn bucket_credentials_are_per_principal_when_the_plugin_says_so() {
        use crate::credential::{BucketCredentialSource, RemoteCredentials};
        use crate::sources::credentials::CredentialRequest;
        use crate::sources::CredentialSource;

        let url = serve(Arc::new(TestPlugin::default())).await;
        let mut state = crate::state::State::default();
        for (name, plugin) in [("reports", true), ("other", true), ("plain", false)] {
            state.buckets.insert(
                name.into(),
                crate::state::BucketRecord {
                    name: name.into(),
                    backend: "b1".into(),
                    backend_bucket: name.into(),
                    cors: Vec::new(),
                    credentials: plugin.then(|| {
                        BucketCredentialSource::Plugin(RemoteCredentials {
                            url: url.clone(),
                            timeout: Duration::from_secs(2),
                        })
                    }),
                },
            );
        }
        let source = PluginCredentials::from_state(&state);
        let alice = request("alice", object("k")).principal;
        let ask = |bucket, principal| CredentialRequest {
            backend: "b1",
            bucket,
            entry: bucket,
            principal,
        };
        let c = source
            .credentials(&ask("reports", Some(&alice)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.public_id(), "BACKEND-alice");
        assert!(c.per_principal);
        let shared = source
            .credentials(&ask("reports", None))
            .await
            .unwrap()
            .unwrap();
        assert!(!shared.per_principal);
        // The plugin has none: fail closed, not the backend's keys.
        assert!(source
            .credentials(&ask("other", Some(&alice)))
            .await
            .is_err());
        // Not a plugin bucket: someone else's to answer.
        assert!(source
            .credentials(&ask("plain", Some(&alice)))
            .await
            .unwrap()
            .is_none());

        // A URL that is not one: the bucket fails closed, it does not fall
        // through to the next source (the backend's own keys).
        let mut broken = state.clone();
        if let Some(b) = broken.buckets.get_mut("reports") {
            b.credentials = Some(BucketCredentialSource::Plugin(RemoteCredentials {
                url: "not a url".into(),
                timeout: Duration::from_secs(2),
            }));
        }
        let source = PluginCredentials::from_state(&broken);
        assert!(source.serves("reports"));
        assert!(source
            .credentials(&ask("reports", Some(&alice)))
            .await
            .is_err());
    }
}
