//! The `s3gate.v1.Admin` service: operators change keys, rules, backends and
//! buckets here; each change goes through the replica's store, so it is
//! stored once and reaches every replica and data plane.
//!
//! Every call needs `authorization: Bearer <admin token>` (compared in
//! constant time). Secrets are returned exactly once (create, rotate) and
//! never listed.

use crate::credential::{BucketCredentialSource, RemoteCredentials, SqlCredentials};
use std::sync::Arc;

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use s3gate_proto::pb::admin_server::Admin;
use s3gate_proto::{pb, AuthorizeRequest, Principal, Resource};
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::config::{AddressingStyleConfig, Effect, Secret};
use crate::credential::CredentialSpec;
use crate::replica::Replica;
use crate::session::SessionTarget;
use crate::sources::VerdictKind;
use crate::state::{
    BackendRecord, BucketRecord, Change, ChangeError, CorsRule, KeyRecord, RuleRecord,
};
use crate::store::StoreError;

pub struct AdminService {
    replica: Arc<Replica>,
    rng: SystemRandom,
}

impl AdminService {
    pub fn new(replica: Arc<Replica>) -> Self {
        Self {
            replica,
            rng: SystemRandom::new(),
        }
    }

    fn random(&self, n: usize) -> Result<Vec<u8>, Status> {
        let mut buf = vec![0u8; n];
        self.rng
            .fill(&mut buf)
            .map_err(|_| Status::internal("no randomness available"))?;
        Ok(buf)
    }

    /// `S3G` + 17 characters of [A-Z0-9], like AWS access key ids.
    fn new_access_key(&self) -> Result<String, Status> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let bytes = self.random(17)?;
        let mut s = String::from("S3G");
        s.extend(
            bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()])),
        );
        Ok(s)
    }

    /// 240 random bits, base64url: 40 characters.
    fn new_secret(&self) -> Result<Secret, Status> {
        Ok(Secret::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.random(30)?),
        ))
    }

    async fn apply(&self, change: Change) -> Result<u64, Status> {
        self.replica.apply(change).await.map_err(store_status)
    }

    async fn state(&self) -> Result<crate::state::State, Status> {
        self.replica.load().await.map_err(store_status)
    }
}

/// An interceptor that checks a bearer token in constant time. `what`
/// names the token in the error: "admin token required" when the call
/// carries none, "admin token not accepted" when it carries another one, so
/// a client can tell a forgotten token from a wrong one. Whether a token was
/// sent is no secret; only the comparison with the expected one is.
pub fn require_token(
    token: String,
    what: &'static str,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let expected = format!("Bearer {token}").into_bytes();
    move |req: Request<()>| {
        let given = req
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if bool::from(given.ct_eq(&expected)) {
            Ok(req)
        } else if given.trim_ascii().is_empty() || given.trim_ascii() == b"Bearer" {
            Err(Status::unauthenticated(format!("{what} required")))
        } else {
            Err(Status::unauthenticated(format!("{what} not accepted")))
        }
    }
}

fn store_status(e: StoreError) -> Status {
    match e {
        StoreError::Unavailable(m) => {
            Status::unavailable(format!("state store unavailable, change not made: {m}"))
        }
        StoreError::Change(ChangeError::NotFound(m)) => Status::not_found(m),
        StoreError::Change(ChangeError::Invalid(m)) => Status::invalid_argument(m),
        StoreError::Corrupt(m) => Status::internal(format!("stored state is unreadable: {m}")),
        StoreError::Full(m) => Status::resource_exhausted(m),
    }
}

/// A read that failed: nothing was changed.
fn read_status(e: StoreError) -> Status {
    match e {
        StoreError::Unavailable(m) => Status::unavailable(format!("state store unavailable: {m}")),
        other => store_status(other),
    }
}

fn key_info(k: &KeyRecord) -> pb::KeyInfo {
    pb::KeyInfo {
        access_key: k.access_key.clone(),
        principal: k.principal.clone(),
        groups: k.groups.clone(),
        created: k.created,
    }
}

fn rule_to_pb(r: &RuleRecord) -> pb::Rule {
    pb::Rule {
        id: r.id.clone(),
        effect: match r.effect {
            Effect::Allow => pb::Effect::Allow,
            Effect::Deny => pb::Effect::Deny,
        } as i32,
        principals: r.principals.clone(),
        actions: r.actions.clone(),
        resources: r.resources.clone(),
    }
}

fn backend_info(b: &BackendRecord) -> pb::BackendInfo {
    pb::BackendInfo {
        name: b.name.clone(),
        endpoint: b.endpoint.clone(),
        region: b.region.clone(),
        addressing_style: match b.addressing_style {
            AddressingStyleConfig::Path => pb::AddressingStyle::Path,
            AddressingStyleConfig::Virtual => pb::AddressingStyle::Virtual,
        } as i32,
        access_key: b.credentials.public_id().to_owned(),
        ca_bundle: b.ca_bundle.clone().unwrap_or_default(),
        insecure_skip_verify: b.insecure_skip_verify,
        credentials: Some(credentials_info(&b.credentials)),
        literal_keys: !b.key_segment_guard,
        egress: Some(pb::BackendEgress::from(&b.egress)),
        limits: Some(pb::BackendLimits::from(&b.limits)),
    }
}

/// The Admin form of a credential, its secrets left out.
fn credentials_info(spec: &CredentialSpec) -> pb::CredentialSpec {
    use pb::credential_spec::Kind;
    let kind = match spec {
        CredentialSpec::StaticHmac { access_key, .. } => Kind::StaticHmac(pb::StaticHmacSpec {
            access_key: access_key.clone(),
            secret_key: String::new(),
            session_token: String::new(),
        }),
        CredentialSpec::IbmIam {
            iam_endpoint,
            service_instance_id,
            ca_bundle,
            ..
        } => Kind::IbmIam(pb::IbmIamSpec {
            api_key: String::new(),
            iam_endpoint: iam_endpoint.clone(),
            service_instance_id: service_instance_id.clone().unwrap_or_default(),
            ca_bundle: ca_bundle.clone().unwrap_or_default(),
        }),
        CredentialSpec::AwsAssumeRole {
            role_arn,
            access_key,
            sts_endpoint,
            duration,
            session_name,
            external_id,
            sts_region,
            ca_bundle,
            ..
        } => Kind::AwsAssumeRole(pb::AwsAssumeRoleSpec {
            role_arn: role_arn.clone(),
            access_key: access_key.clone(),
            secret_key: String::new(),
            session_token: String::new(),
            sts_endpoint: sts_endpoint.clone(),
            duration_seconds: duration.as_secs(),
            session_name: session_name.clone(),
            external_id: external_id.clone().unwrap_or_default(),
            sts_region: sts_region.clone().unwrap_or_default(),
            ca_bundle: ca_bundle.clone().unwrap_or_default(),
        }),
    };
    pb::CredentialSpec { kind: Some(kind) }
}

/// The credential a PutBackend names: `backend.credentials`, or else the
/// flat static HMAC fields. A secret left empty keeps the stored one of the
/// same kind, so an update need not resend it.
fn credentials_from_put(
    backend: &mut pb::BackendInfo,
    req: &mut pb::PutBackendRequest,
    existing: Option<&CredentialSpec>,
) -> Result<CredentialSpec, Status> {
    use pb::credential_spec::Kind;
    let kind = match backend.credentials.take().and_then(|c| c.kind) {
        Some(kind) => kind,
        None => Kind::StaticHmac(pb::StaticHmacSpec {
            access_key: std::mem::take(&mut backend.access_key),
            secret_key: std::mem::take(&mut req.secret_key),
            session_token: std::mem::take(&mut req.session_token),
        }),
    };
    let keep = |given: String, stored: Option<&Secret>| match (given.is_empty(), stored) {
        (false, _) => Some(Secret::new(given)),
        (true, stored) => stored.cloned(),
    };
    let some = |s: String| (!s.is_empty()).then_some(s);
    match kind {
        Kind::StaticHmac(s) => {
            let (stored_secret, stored_token) = match existing {
                Some(CredentialSpec::StaticHmac {
                    secret_key,
                    session_token,
                    ..
                }) => (Some(secret_key), session_token.as_ref()),
                _ => (None, None),
            };
            Ok(CredentialSpec::StaticHmac {
                access_key: s.access_key,
                secret_key: keep(s.secret_key, stored_secret).ok_or_else(|| {
                    Status::invalid_argument("secret_key is required for a new backend")
                })?,
                session_token: keep(s.session_token, stored_token),
            })
        }
        Kind::IbmIam(s) => {
            let stored = match existing {
                Some(CredentialSpec::IbmIam { api_key, .. }) => Some(api_key),
                _ => None,
            };
            Ok(CredentialSpec::IbmIam {
                api_key: keep(s.api_key, stored).ok_or_else(|| {
                    Status::invalid_argument("api_key is required for a new ibm_iam credential")
                })?,
                iam_endpoint: some(s.iam_endpoint)
                    .unwrap_or_else(|| crate::credential::DEFAULT_IAM_ENDPOINT.to_owned()),
                service_instance_id: some(s.service_instance_id),
                ca_bundle: some(s.ca_bundle),
            })
        }
        Kind::AwsAssumeRole(s) => {
            let (stored_secret, stored_token) = match existing {
                Some(CredentialSpec::AwsAssumeRole {
                    secret_key,
                    session_token,
                    ..
                }) => (Some(secret_key), session_token.as_ref()),
                _ => (None, None),
            };
            Ok(CredentialSpec::AwsAssumeRole {
                role_arn: s.role_arn,
                access_key: s.access_key,
                secret_key: keep(s.secret_key, stored_secret).ok_or_else(|| {
                    Status::invalid_argument(
                        "secret_key is required for a new aws_assume_role credential",
                    )
                })?,
                session_token: keep(s.session_token, stored_token),
                sts_endpoint: some(s.sts_endpoint)
                    .unwrap_or_else(|| crate::credential::DEFAULT_STS_ENDPOINT.to_owned()),
                duration: match s.duration_seconds {
                    0 => crate::credential::default_role_duration(),
                    n => std::time::Duration::from_secs(n),
                },
                session_name: some(s.session_name)
                    .unwrap_or_else(|| crate::credential::DEFAULT_SESSION_NAME.to_owned()),
                external_id: some(s.external_id),
                sts_region: some(s.sts_region),
                ca_bundle: some(s.ca_bundle),
            })
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::KeyWithSecret>, Status> {
        let r = req.into_inner();
        if r.principal.is_empty() {
            return Err(Status::invalid_argument("principal is required"));
        }
        let access_key = if r.access_key.is_empty() {
            self.new_access_key()?
        } else {
            r.access_key
        };
        if self.state().await?.keys.contains_key(&access_key) {
            return Err(Status::already_exists(format!(
                "access key {access_key:?} exists"
            )));
        }
        let record = KeyRecord {
            access_key,
            secret: self.new_secret()?,
            principal: r.principal,
            groups: r.groups,
            created: crate::unix_now(),
        };
        let version = self.apply(Change::PutKey(record.clone())).await?;
        Ok(Response::new(pb::KeyWithSecret {
            key: Some(key_info(&record)),
            secret_key: record.secret.expose().to_owned(),
            version,
        }))
    }

    async fn list_keys(
        &self,
        _req: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let keys = self.state().await?.keys.values().map(key_info).collect();
        Ok(Response::new(pb::ListKeysResponse { keys }))
    }

    async fn revoke_key(
        &self,
        req: Request<pb::RevokeKeyRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let version = self
            .apply(Change::DeleteKey(req.into_inner().access_key))
            .await?;
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn rotate_key(
        &self,
        req: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::KeyWithSecret>, Status> {
        let access_key = req.into_inner().access_key;
        let mut record = self
            .state()
            .await?
            .keys
            .remove(&access_key)
            .ok_or_else(|| Status::not_found(format!("access key {access_key:?}")))?;
        record.secret = self.new_secret()?;
        let version = self.apply(Change::PutKey(record.clone())).await?;
        Ok(Response::new(pb::KeyWithSecret {
            key: Some(key_info(&record)),
            secret_key: record.secret.expose().to_owned(),
            version,
        }))
    }

    async fn put_rule(
        &self,
        req: Request<pb::PutRuleRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let rule = req
            .into_inner()
            .rule
            .ok_or_else(|| Status::invalid_argument("rule is required"))?;
        let effect = match pb::Effect::try_from(rule.effect) {
            Ok(pb::Effect::Allow) => Effect::Allow,
            Ok(pb::Effect::Deny) => Effect::Deny,
            _ => return Err(Status::invalid_argument("effect must be allow or deny")),
        };
        let record = RuleRecord {
            id: rule.id,
            effect,
            principals: rule.principals,
            actions: rule.actions,
            resources: rule.resources,
        };
        let version = self.apply(Change::PutRule(record)).await?;
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn list_rules(
        &self,
        _req: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let rules = self.state().await?.rules.values().map(rule_to_pb).collect();
        Ok(Response::new(pb::ListRulesResponse { rules }))
    }

    async fn delete_rule(
        &self,
        req: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let version = self.apply(Change::DeleteRule(req.into_inner().id)).await?;
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn put_backend(
        &self,
        req: Request<pb::PutBackendRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let mut r = req.into_inner();
        let mut b = r
            .backend
            .take()
            .ok_or_else(|| Status::invalid_argument("backend is required"))?;
        let addressing_style = match pb::AddressingStyle::try_from(b.addressing_style) {
            Ok(pb::AddressingStyle::Virtual) => AddressingStyleConfig::Virtual,
            Ok(pb::AddressingStyle::Path) | Ok(pb::AddressingStyle::Unspecified) => {
                AddressingStyleConfig::Path
            }
            Err(_) => return Err(Status::invalid_argument("unknown addressing style")),
        };
        let existing = self.state().await?.backends.remove(&b.name);
        let credentials =
            credentials_from_put(&mut b, &mut r, existing.as_ref().map(|e| &e.credentials))?;
        let record = BackendRecord {
            name: b.name,
            endpoint: b.endpoint.trim_end_matches('/').to_owned(),
            region: if b.region.is_empty() {
                "us-east-1".to_owned()
            } else {
                b.region
            },
            addressing_style,
            credentials,
            ca_bundle: (!b.ca_bundle.is_empty()).then_some(b.ca_bundle),
            insecure_skip_verify: b.insecure_skip_verify,
            key_segment_guard: !b.literal_keys,
            egress: b.egress.map(s3gate_proto::Egress::from).unwrap_or_default(),
            limits: b
                .limits
                .map(s3gate_proto::BackendLimits::from)
                .unwrap_or_default(),
        };
        let version = self.apply(Change::PutBackend(record)).await?;
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn list_backends(
        &self,
        _req: Request<pb::ListBackendsRequest>,
    ) -> Result<Response<pb::ListBackendsResponse>, Status> {
        let backends = self
            .state()
            .await?
            .backends
            .values()
            .map(backend_info)
            .collect();
        Ok(Response::new(pb::ListBackendsResponse { backends }))
    }

    async fn delete_backend(
        &self,
        req: Request<pb::DeleteBackendRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let version = self
            .apply(Change::DeleteBackend(req.into_inner().name))
            .await?;
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn put_bucket(
        &self,
        req: Request<pb::PutBucketRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let b = req
            .into_inner()
            .bucket
            .ok_or_else(|| Status::invalid_argument("bucket is required"))?;
        let record = BucketRecord {
            backend_bucket: crate::state::default_backend_bucket(
                &b.name,
                (!b.backend_bucket.is_empty()).then_some(b.backend_bucket.as_str()),
            ),
            name: b.name,
            backend: b.backend,
            cors: b.cors.into_iter().map(CorsRule::from).collect(),
            credentials: b.credentials.map(bucket_credential_source).transpose()?,
        };
        let version = self.apply(Change::PutBucket(record)).await?;
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn list_buckets(
        &self,
        _req: Request<pb::ListBucketsRequest>,
    ) -> Result<Response<pb::ListBucketsResponse>, Status> {
        let state = self.state().await?;
        let buckets = state
            .buckets
            .values()
            .map(|b| pb::BucketInfo {
                name: b.name.clone(),
                backend: b.backend.clone(),
                backend_bucket: b.backend_bucket.clone(),
                cors: b.cors.iter().map(pb::CorsRule::from).collect(),
                credentials: b.credentials.as_ref().map(|c| match c {
                    BucketCredentialSource::Plugin(r) => pb::BucketCredentialSource {
                        kind: c.kind().to_owned(),
                        url: crate::sources::sql::redacted_url(&r.url),
                        timeout_ms: r.timeout.as_millis() as u64,
                        ..Default::default()
                    },
                    BucketCredentialSource::Sql(q) => pb::BucketCredentialSource {
                        kind: c.kind().to_owned(),
                        url: crate::sources::sql::redacted_url(&q.url),
                        timeout_ms: q.timeout.as_millis() as u64,
                        query: q.query.clone(),
                        per_principal: q.per_principal(),
                    },
                }),
            })
            .collect();
        Ok(Response::new(pb::ListBucketsResponse {
            buckets,
            default_backend: state.default_backend.clone().unwrap_or_default(),
        }))
    }

    async fn set_default_backend(
        &self,
        req: Request<pb::SetDefaultBackendRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let backend = req.into_inner().backend;
        let backend = (!backend.is_empty()).then_some(backend);
        let version = self.apply(Change::SetDefaultBackend(backend)).await?;
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn delete_bucket(
        &self,
        req: Request<pb::DeleteBucketRequest>,
    ) -> Result<Response<pb::ChangeResponse>, Status> {
        let version = self
            .apply(Change::DeleteBucket(req.into_inner().name))
            .await?;
        Ok(Response::new(pb::ChangeResponse { version }))
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let principal = req.into_inner().principal;
        let sessions = self
            .replica
            .store()
            .sessions((!principal.is_empty()).then_some(principal.as_str()))
            .await
            .map_err(read_status)?
            .into_iter()
            .map(|s| pb::SessionInfo {
                access_key: s.access_key,
                principal: s.principal,
                groups: s.groups,
                role_arn: s.role_arn,
                session_name: s.session_name,
                subject: s.subject,
                provider: s.provider,
                created: s.created,
                expires: s.expires,
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn revoke_sessions(
        &self,
        req: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        use pb::revoke_sessions_request::Target;
        let target = match req.into_inner().target {
            Some(Target::AccessKey(ak)) if !ak.is_empty() => SessionTarget::AccessKey(ak),
            Some(Target::Principal(p)) if !p.is_empty() => SessionTarget::Principal(p),
            _ => {
                return Err(Status::invalid_argument(
                    "give the access key or the principal whose sessions to revoke",
                ))
            }
        };
        let access_keys = self
            .replica
            .store()
            .revoke_sessions(&target)
            .await
            .map_err(store_status)?;
        tracing::info!(?target, revoked = access_keys.len(), "sessions revoked");
        Ok(Response::new(pb::RevokeSessionsResponse { access_keys }))
    }

    async fn explain(
        &self,
        req: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let r = req.into_inner();
        let snapshot = self.replica.snapshot();
        let principal = if !r.access_key.is_empty() {
            snapshot
                .principal_of(&r.access_key)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?
                .ok_or_else(|| Status::not_found(format!("access key {:?}", r.access_key)))?
        } else {
            match r.principal {
                Some(p) => Principal::try_from(p)?,
                None => Principal::anonymous(),
            }
        };
        let resource = match s3gate_proto::pb::ResourceKind::try_from(r.kind) {
            Ok(pb::ResourceKind::Bucket) => Resource::Bucket,
            Ok(pb::ResourceKind::Prefix) => Resource::Prefix(r.key),
            Ok(pb::ResourceKind::Object) | Ok(pb::ResourceKind::Unspecified)
                if !r.key.is_empty() =>
            {
                Resource::Object(r.key)
            }
            _ => Resource::Bucket,
        };
        if r.action.is_empty() || r.bucket.is_empty() {
            return Err(Status::invalid_argument("action and bucket are required"));
        }
        let identity_source = match r.identity_source.as_str() {
            "" if principal.is_anonymous() => "anonymous",
            "" => "key",
            s @ ("key" | "sts" | "jwt" | "mtls" | "anonymous") => s,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown identity source {other:?}: one of key, sts, jwt, mtls, anonymous"
                )))
            }
        }
        .to_owned();
        let ask = AuthorizeRequest {
            principal: principal.clone(),
            action: r.action.into(),
            bucket: r.bucket,
            resource,
            context: s3gate_proto::RequestContext {
                identity_source: identity_source.clone().into(),
                ..Default::default()
            },
        };
        let explanation = snapshot.explain_sources(&ask).await;
        let scope_of = |scope: &s3gate_proto::Scope| match scope {
            s3gate_proto::Scope::Exact => (pb::Scope::Exact, String::new()),
            s3gate_proto::Scope::Prefix(p) => (pb::Scope::Prefix, p.clone()),
            s3gate_proto::Scope::Bucket => (pb::Scope::Bucket, String::new()),
        };
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let sources = explanation
            .answers
            .iter()
            .map(|a| match &a.verdict {
                Ok(v) => {
                    let (scope, scope_prefix) = scope_of(&v.scope);
                    pb::SourceAnswer {
                        source: a.source.to_owned(),
                        verdict: match v.kind {
                            VerdictKind::Allow => "allow",
                            VerdictKind::Deny => "deny",
                            VerdictKind::Abstain => "abstain",
                        }
                        .to_owned(),
                        reason: v.reason.clone(),
                        by: v.by.clone().unwrap_or_default(),
                        scope: scope as i32,
                        scope_prefix,
                        ttl_ms: ms(v.ttl),
                    }
                }
                Err(e) => pb::SourceAnswer {
                    source: a.source.to_owned(),
                    verdict: "error".to_owned(),
                    reason: e.message.clone(),
                    ..Default::default()
                },
            })
            .collect();
        let response = match explanation.outcome {
            Ok((decision, rule, decided_by)) => {
                let (scope, scope_prefix) = scope_of(&decision.scope);
                pb::ExplainResponse {
                    allow: decision.allow,
                    reason: decision.reason,
                    rule: rule.unwrap_or_default(),
                    scope: scope as i32,
                    principal: Some((&principal).into()),
                    identity_source,
                    sources,
                    decided_by: decided_by.unwrap_or_default().to_owned(),
                    scope_prefix,
                    ttl_ms: ms(decision.ttl),
                    unavailable: false,
                }
            }
            Err((source, error)) => pb::ExplainResponse {
                allow: false,
                reason: format!("cannot decide: {error} (the data plane answers 503)"),
                principal: Some((&principal).into()),
                identity_source,
                sources,
                decided_by: source.to_owned(),
                unavailable: true,
                ..Default::default()
            },
        };
        Ok(Response::new(response))
    }

    async fn reload(
        &self,
        _req: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        match self.replica.reload().await {
            Ok(r) => {
                let counts = |c: crate::state::Counts| pb::ReloadCounts {
                    added: c.added,
                    removed: c.removed,
                    changed: c.changed,
                };
                let diff = r.state.as_ref();
                Ok(Response::new(pb::ReloadResponse {
                    config_file: r.config_file.display().to_string(),
                    policy: r.policy,
                    identity: r.identity,
                    invalidated: r.invalidated.to_owned(),
                    state_from: if diff.is_some() { "file" } else { "store" }.to_owned(),
                    keys: diff.map(|d| counts(d.keys)),
                    rules: diff.map(|d| counts(d.rules)),
                    backends: diff.map(|d| counts(d.backends)),
                    buckets: diff.map(|d| counts(d.buckets)),
                    default_backend_changed: diff.is_some_and(|d| d.default_backend),
                    cache_changed: r.cache_changed,
                    state_version: r.state_version,
                    restart_needed: r.restart_needed.iter().map(|s| (*s).to_owned()).collect(),
                }))
            }
            Err(error) => {
                tracing::warn!(%error, "reload refused");
                Err(Status::failed_precondition(error.to_string()))
            }
        }
    }

    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let health = self.replica.store().health().await;
        let replicas_seen = self
            .replica
            .store()
            .replicas(crate::replica::ALIVE_FOR)
            .await
            .unwrap_or_default();
        let state = self.replica.load().await.ok();
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Ok(Response::new(pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            replica: self.replica.name().to_owned(),
            state_version: self.replica.version(),
            store: self.replica.store().kind().to_owned(),
            store_healthy: health.is_ok(),
            store_error: health.err().map(|e| e.to_string()).unwrap_or_default(),
            keys: state.as_ref().map_or(0, |s| count(s.keys.len())),
            rules: state.as_ref().map_or(0, |s| count(s.rules.len())),
            backends: state.as_ref().map_or(0, |s| count(s.backends.len())),
            buckets: state.as_ref().map_or(0, |s| count(s.buckets.len())),
            replicas_seen,
            default_backend: state
                .as_ref()
                .and_then(|s| s.default_backend.clone())
                .unwrap_or_default(),
        }))
    }
}

/// A bucket's credential source as the Admin API carries it.
fn bucket_credential_source(
    c: pb::BucketCredentialSource,
) -> Result<BucketCredentialSource, Status> {
    let timeout = if c.timeout_ms == 0 {
        std::time::Duration::from_millis(500)
    } else {
        std::time::Duration::from_millis(c.timeout_ms)
    };
    match c.kind.as_str() {
        // Checked with the rest of the bucket when the change is applied.
        "sql" => Ok(BucketCredentialSource::Sql(SqlCredentials {
            url: c.url,
            query: c.query,
            timeout,
        })),
        "plugin" if !c.url.is_empty() => Ok(BucketCredentialSource::Plugin(RemoteCredentials {
            url: c.url,
            timeout: if c.timeout_ms == 0 {
                std::time::Duration::from_millis(500)
            } else {
                std::time::Duration::from_millis(c.timeout_ms)
            },
        })),
        "plugin" => Err(Status::invalid_argument(
            "credentials of kind plugin need a url",
        )),
        other => Err(Status::invalid_argument(format!(
            "unknown bucket credential kind {other:?} (known: plugin, sql)"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What `require_token("s3cret", "admin token")` says to a call
    /// carrying `authorization` (or none): `Ok(())` when it lets it through.
    fn check(authorization: Option<&str>) -> Result<(), String> {
        let interceptor = require_token("s3cret".to_owned(), "admin token");
        let mut req = Request::new(());
        if let Some(value) = authorization {
            req.metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        interceptor(req).map(|_| ()).map_err(|s| {
            assert_eq!(s.code(), tonic::Code::Unauthenticated);
            s.message().to_owned()
        })
    }

    #[test]
    fn a_missing_token_and_a_wrong_one_are_told_apart() {
        assert_eq!(check(Some("Bearer s3cret")), Ok(()));
        for missing in [None, Some(""), Some("Bearer"), Some("Bearer ")] {
            assert_eq!(
                check(missing),
                Err("admin token required".into()),
                "{missing:?}"
            );
        }
        for wrong in [
            "Bearer wrong",
            "Bearer s3cre",
            "Bearer s3cret2",
            "s3cret",
            "Basic s3cret",
        ] {
            assert_eq!(
                check(Some(wrong)),
                Err("admin token not accepted".into()),
                "{wrong}"
            );
        }
    }

    fn put(kind: pb::credential_spec::Kind) -> (pb::BackendInfo, pb::PutBackendRequest) {
        let backend = pb::BackendInfo {
            credentials: Some(pb::CredentialSpec { kind: Some(kind) }),
            ..Default::default()
        };
        (backend, pb::PutBackendRequest::default())
    }

    #[test]
    fn exchanged_kinds_put_keep_secrets_and_list_without_them() {
        use pb::credential_spec::Kind;
        let (mut b, mut r) = put(Kind::IbmIam(pb::IbmIamSpec {
            api_key: "APIKEY1".into(),
            service_instance_id: "crn:x".into(),
            ..Default::default()
        }));
        let ibm = credentials_from_put(&mut b, &mut r, None).unwrap();
        let CredentialSpec::IbmIam {
            api_key,
            iam_endpoint,
            service_instance_id,
            ..
        } = &ibm
        else {
            panic!("{ibm:?}")
        };
        assert_eq!(api_key.expose(), "APIKEY1");
        assert_eq!(iam_endpoint, crate::credential::DEFAULT_IAM_ENDPOINT);
        assert_eq!(service_instance_id.as_deref(), Some("crn:x"));
        // An update without the key keeps it; a new backend must give it.
        let (mut b, mut r) = put(Kind::IbmIam(pb::IbmIamSpec::default()));
        let kept = credentials_from_put(&mut b, &mut r, Some(&ibm)).unwrap();
        assert!(
            matches!(&kept, CredentialSpec::IbmIam { api_key, .. } if api_key.expose() == "APIKEY1")
        );
        let (mut b, mut r) = put(Kind::IbmIam(pb::IbmIamSpec::default()));
        assert!(credentials_from_put(&mut b, &mut r, None).is_err());
        // A secret of another kind is never carried over.
        let (mut b, mut r) = put(Kind::AwsAssumeRole(pb::AwsAssumeRoleSpec {
            role_arn: "arn:aws:iam::1:role/r".into(),
            access_key: "AK".into(),
            ..Default::default()
        }));
        assert!(credentials_from_put(&mut b, &mut r, Some(&ibm)).is_err());

        let (mut b, mut r) = put(Kind::AwsAssumeRole(pb::AwsAssumeRoleSpec {
            role_arn: "arn:aws:iam::1:role/r".into(),
            access_key: "AK".into(),
            secret_key: "ROLESECRET".into(),
            duration_seconds: 7200,
            ..Default::default()
        }));
        let aws = credentials_from_put(&mut b, &mut r, None).unwrap();
        let CredentialSpec::AwsAssumeRole {
            duration,
            session_name,
            sts_endpoint,
            ..
        } = &aws
        else {
            panic!("{aws:?}")
        };
        assert_eq!(duration.as_secs(), 7200);
        assert_eq!(session_name, "s3gate");
        assert_eq!(sts_endpoint, crate::credential::DEFAULT_STS_ENDPOINT);
        aws.validate().unwrap();

        let listed = format!("{:?} {:?}", credentials_info(&ibm), credentials_info(&aws));
        for secret in ["APIKEY1", "ROLESECRET"] {
            assert!(!listed.contains(secret), "{listed}");
        }
        let Some(Kind::AwsAssumeRole(a)) = credentials_info(&aws).kind else {
            panic!()
        };
        assert!(a.secret_key.is_empty() && a.access_key == "AK" && a.duration_seconds == 7200);
        let Some(Kind::IbmIam(i)) = credentials_info(&ibm).kind else {
            panic!()
        };
        assert!(i.api_key.is_empty() && i.service_instance_id == "crn:x");
    }
}
