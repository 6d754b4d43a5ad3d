//! Conversions between the contract's Rust types and the `s3gate.v1`
//! protobuf messages, and between `ControlPlaneError` and gRPC statuses.
//!
//! Decoding is strict: a message that does not make sense (a signing key of
//! the wrong length, an unspecified enum) is an error, never a default that
//! could widen access.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Code, Status};

use crate::pb;
use crate::{
    AddressingStyle, AssumedRole, AuthorizeRequest, Backend, BackendAuth, BackendCredentials,
    BackendLimits, BackendListing, BucketCors, BucketEntry, ControlPlaneError, CorsRule, Decision,
    Egress, Identity, Invalidation, Listing, PresentedCredential, Principal, Redacted,
    RequestContext, Resource, Route, Scope, SessionGrant, SigV2Grant, SigV2Request, SigningKey,
    SigningKeyGrant, StsError, StsErrorCode, WebIdentityRequest,
};

/// A message that could not be turned into the contract's types.
#[derive(Debug, thiserror::Error)]
#[error("invalid control-plane message: {0}")]
pub struct DecodeError(pub &'static str);

impl From<DecodeError> for Status {
    fn from(e: DecodeError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// === errors ===

/// Marks an `Unauthenticated` status whose credential was good but expired
/// (the code alone cannot say it; the message is for logs only).
const CREDENTIAL_METADATA: &str = "s3gate-credential";
const EXPIRED: &str = "expired";
/// Marks an `InvalidArgument` status that is about the bucket's name (S3
/// `InvalidBucketName`), not a malformed call.
const BUCKET_METADATA: &str = "s3gate-bucket";
const INVALID_NAME: &str = "invalid-name";

impl From<ControlPlaneError> for Status {
    fn from(e: ControlPlaneError) -> Self {
        match e {
            ControlPlaneError::UnknownAccessKey => Status::unauthenticated("unknown access key"),
            ControlPlaneError::NotAuthenticated(m) => Status::unauthenticated(m),
            // VerifySigV2 answers a mismatch in its response; as a status it
            // decodes as "could not decide", which fails closed.
            ControlPlaneError::SignatureMismatch => {
                Status::permission_denied("signature does not match")
            }
            ControlPlaneError::CredentialExpired(m) => {
                let mut s = Status::unauthenticated(m);
                s.metadata_mut().insert(
                    CREDENTIAL_METADATA,
                    tonic::metadata::MetadataValue::from_static(EXPIRED),
                );
                s
            }
            ControlPlaneError::NoSuchBucket => Status::not_found("no such bucket"),
            ControlPlaneError::InvalidBucketName(name) => {
                let mut s = Status::invalid_argument(name);
                s.metadata_mut().insert(
                    BUCKET_METADATA,
                    tonic::metadata::MetadataValue::from_static(INVALID_NAME),
                );
                s
            }
            ControlPlaneError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

impl From<Status> for ControlPlaneError {
    /// Only the two answers the data plane acts on are decoded; anything else
    /// means "could not decide", and the data plane fails closed.
    fn from(s: Status) -> Self {
        match s.code() {
            Code::Unauthenticated
                if s.metadata()
                    .get(CREDENTIAL_METADATA)
                    .is_some_and(|v| v == EXPIRED) =>
            {
                ControlPlaneError::CredentialExpired(s.message().to_owned())
            }
            Code::Unauthenticated => ControlPlaneError::UnknownAccessKey,
            Code::NotFound => ControlPlaneError::NoSuchBucket,
            Code::InvalidArgument
                if s.metadata()
                    .get(BUCKET_METADATA)
                    .is_some_and(|v| v == INVALID_NAME) =>
            {
                ControlPlaneError::InvalidBucketName(s.message().to_owned())
            }
            code => ControlPlaneError::Unavailable(format!("{code:?}: {}", s.message())),
        }
    }
}

// === principal ===

impl From<&Principal> for pb::Principal {
    fn from(p: &Principal) -> Self {
        pb::Principal {
            name: p.name.to_string(),
            groups: p.groups.iter().map(|g| g.to_string()).collect(),
            access_key: p.access_key.as_deref().unwrap_or_default().to_owned(),
            anonymous: p.is_anonymous(),
        }
    }
}

impl TryFrom<pb::Principal> for Principal {
    type Error = DecodeError;

    fn try_from(p: pb::Principal) -> Result<Self, DecodeError> {
        if p.anonymous {
            return Ok(Principal::anonymous());
        }
        if p.name.is_empty() || p.name == Principal::ANONYMOUS {
            return Err(DecodeError("principal without a name"));
        }
        Ok(Principal {
            name: Arc::from(p.name),
            groups: p.groups.into_iter().map(Arc::from).collect(),
            access_key: (!p.access_key.is_empty()).then(|| Arc::from(p.access_key)),
        })
    }
}

// === signing keys ===

impl From<&SigningKeyGrant> for pb::SigningKeyResponse {
    fn from(g: &SigningKeyGrant) -> Self {
        let (session_token_sha256, session_expires_unix, claims) = match &g.session {
            Some(s) => (
                s.token_sha256.to_vec(),
                s.expires_unix,
                claims_to_pb(&s.claims),
            ),
            None => (Vec::new(), 0, Default::default()),
        };
        pb::SigningKeyResponse {
            key: g.key.as_bytes().to_vec(),
            principal: Some((&g.principal).into()),
            ttl_ms: ms(g.ttl),
            session_token_sha256,
            session_expires_unix,
            claims,
        }
    }
}

impl TryFrom<pb::SigningKeyResponse> for SigningKeyGrant {
    type Error = DecodeError;

    fn try_from(r: pb::SigningKeyResponse) -> Result<Self, DecodeError> {
        let key: [u8; 32] = r
            .key
            .as_slice()
            .try_into()
            .map_err(|_| DecodeError("signing key must be 32 bytes"))?;
        let principal = r
            .principal
            .ok_or(DecodeError("signing key without principal"))?
            .try_into()?;
        // A session binding is all there or not at all: half of one never
        // decodes into a long-term key.
        let session = match (r.session_token_sha256.as_slice(), r.session_expires_unix) {
            ([], 0) if r.claims.is_empty() => None,
            (hash, expires) if expires > 0 => Some(Arc::new(SessionGrant {
                token_sha256: hash
                    .try_into()
                    .map_err(|_| DecodeError("session token hash must be 32 bytes"))?,
                expires_unix: expires,
                claims: claims_from_pb(r.claims),
            })),
            _ => return Err(DecodeError("session grant without token hash or expiry")),
        };
        Ok(SigningKeyGrant {
            key: SigningKey::from_bytes(key),
            principal,
            ttl: Duration::from_millis(r.ttl_ms),
            session,
        })
    }
}

impl fmt::Debug for pb::SigningKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyResponse")
            .field("key", &"<redacted>")
            .field("principal", &self.principal)
            .field("ttl_ms", &self.ttl_ms)
            .field("session_expires_unix", &self.session_expires_unix)
            .finish()
    }
}

impl fmt::Debug for pb::BackendCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendCredentials")
            .field("expires_unix", &self.expires_unix)
            .field("auth", &self.auth)
            .finish()
    }
}

impl fmt::Debug for pb::backend_credentials::Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sigv4(c) => c.fmt(f),
            Self::Bearer(c) => c.fmt(f),
        }
    }
}

/// An access key pair's `Debug`: the key id, never the secret or token.
fn key_pair_debug(f: &mut fmt::Formatter<'_>, name: &str, access_key: &str) -> fmt::Result {
    f.debug_struct(name)
        .field("access_key", &access_key)
        .field("secret_key", &"<redacted>")
        .field("session_token", &"<redacted>")
        .finish()
}

impl fmt::Debug for pb::SigV4Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        key_pair_debug(f, "SigV4Credentials", &self.access_key)
    }
}

impl fmt::Debug for pb::BearerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerCredentials")
            .field("token", &"<redacted>")
            .field("service_instance_id", &self.service_instance_id)
            .finish()
    }
}

impl fmt::Debug for pb::BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

// === SigV2 ===

impl From<&SigV2Request> for pb::VerifySigV2Request {
    fn from(r: &SigV2Request) -> Self {
        pb::VerifySigV2Request {
            access_key: r.access_key.clone(),
            string_to_sign: r.string_to_sign.clone(),
            signature: r.signature.to_vec(),
        }
    }
}

impl TryFrom<pb::VerifySigV2Request> for SigV2Request {
    type Error = DecodeError;

    fn try_from(r: pb::VerifySigV2Request) -> Result<Self, DecodeError> {
        let signature = r
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| DecodeError("a SigV2 signature must be 20 bytes"))?;
        if r.access_key.is_empty() {
            return Err(DecodeError("verify SigV2 needs an access key"));
        }
        Ok(SigV2Request {
            access_key: r.access_key,
            string_to_sign: r.string_to_sign,
            signature,
        })
    }
}

/// The answer of VerifySigV2: a grant, or a mismatch (in band, so that
/// statuses keep their one meaning: `Unauthenticated` is an unknown key).
pub fn sigv2_response(
    answer: &Result<SigV2Grant, ControlPlaneError>,
) -> Option<pb::VerifySigV2Response> {
    match answer {
        Ok(grant) => Some(pb::VerifySigV2Response {
            result: pb::SigV2Result::Match as i32,
            principal: Some((&grant.principal).into()),
            ttl_ms: ms(grant.ttl),
        }),
        Err(ControlPlaneError::SignatureMismatch) => Some(pb::VerifySigV2Response {
            result: pb::SigV2Result::Mismatch as i32,
            principal: None,
            ttl_ms: 0,
        }),
        Err(_) => None,
    }
}

/// Strict: only an explicit MATCH with a named principal is a grant.
pub fn sigv2_answer(
    r: pb::VerifySigV2Response,
) -> Result<Result<SigV2Grant, ControlPlaneError>, DecodeError> {
    match pb::SigV2Result::try_from(r.result) {
        Ok(pb::SigV2Result::Match) => {
            let principal: Principal = r
                .principal
                .ok_or(DecodeError("SigV2 match without principal"))?
                .try_into()?;
            if principal.is_anonymous() {
                return Err(DecodeError("SigV2 match for the anonymous principal"));
            }
            Ok(Ok(SigV2Grant {
                principal,
                ttl: Duration::from_millis(r.ttl_ms),
            }))
        }
        Ok(pb::SigV2Result::Mismatch) => Ok(Err(ControlPlaneError::SignatureMismatch)),
        _ => Err(DecodeError("unspecified SigV2 result")),
    }
}

impl fmt::Debug for pb::VerifySigV2Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifySigV2Request")
            .field("access_key", &self.access_key)
            .field(
                "string_to_sign",
                &format_args!("<{} bytes>", self.string_to_sign.len()),
            )
            .field("signature", &"<redacted>")
            .finish()
    }
}

// === authentication ===

impl From<&PresentedCredential> for pb::AuthenticateRequest {
    fn from(c: &PresentedCredential) -> Self {
        use pb::authenticate_request::Credential;
        let credential = match c {
            PresentedCredential::BearerToken(t) => Credential::BearerToken(pb::BearerToken {
                token: t.expose().clone(),
            }),
            PresentedCredential::ClientCertificate { der, name } => {
                Credential::ClientCertificate(pb::ClientCertificate {
                    der: der.to_vec(),
                    name: name.clone(),
                })
            }
        };
        pb::AuthenticateRequest {
            credential: Some(credential),
        }
    }
}

impl TryFrom<pb::AuthenticateRequest> for PresentedCredential {
    type Error = DecodeError;

    fn try_from(r: pb::AuthenticateRequest) -> Result<Self, DecodeError> {
        use pb::authenticate_request::Credential;
        match r.credential {
            Some(Credential::BearerToken(t)) if !t.token.is_empty() => {
                Ok(PresentedCredential::BearerToken(Redacted::new(t.token)))
            }
            Some(Credential::ClientCertificate(c)) if !c.der.is_empty() && !c.name.is_empty() => {
                Ok(PresentedCredential::ClientCertificate {
                    der: Arc::from(c.der),
                    name: c.name,
                })
            }
            _ => Err(DecodeError("authenticate needs a token or a certificate")),
        }
    }
}

fn claims_to_pb(claims: &[(String, String)]) -> std::collections::HashMap<String, String> {
    claims.iter().cloned().collect()
}

fn claims_from_pb(claims: std::collections::HashMap<String, String>) -> Arc<[(String, String)]> {
    let mut v: Vec<_> = claims.into_iter().collect();
    v.sort();
    Arc::from(v)
}

impl From<&Identity> for pb::AuthenticateResponse {
    fn from(i: &Identity) -> Self {
        pb::AuthenticateResponse {
            principal: Some((&i.principal).into()),
            ttl_ms: ms(i.ttl),
            source: i.source.to_string(),
            claims: claims_to_pb(&i.claims),
        }
    }
}

impl TryFrom<pb::AuthenticateResponse> for Identity {
    type Error = DecodeError;

    fn try_from(r: pb::AuthenticateResponse) -> Result<Self, DecodeError> {
        let principal: Principal = r
            .principal
            .ok_or(DecodeError("identity without principal"))?
            .try_into()?;
        if principal.is_anonymous() || r.source.is_empty() {
            return Err(DecodeError("identity needs a named principal and a source"));
        }
        Ok(Identity {
            principal,
            ttl: Duration::from_millis(r.ttl_ms),
            source: Arc::from(r.source),
            claims: claims_from_pb(r.claims),
        })
    }
}

// === STS ===

impl From<&WebIdentityRequest> for pb::AssumeRoleWithWebIdentityRequest {
    fn from(r: &WebIdentityRequest) -> Self {
        pb::AssumeRoleWithWebIdentityRequest {
            role_arn: r.role_arn.clone(),
            role_session_name: r.role_session_name.clone(),
            web_identity_token: r.token.expose().clone(),
            duration_seconds: r.duration_seconds.unwrap_or(0),
            provider_id: r.provider_id.clone().unwrap_or_default(),
        }
    }
}

impl From<pb::AssumeRoleWithWebIdentityRequest> for WebIdentityRequest {
    /// Lenient: validating the parameters is the STS engine's job, which
    /// answers with the STS error the client must see.
    fn from(r: pb::AssumeRoleWithWebIdentityRequest) -> Self {
        WebIdentityRequest {
            role_arn: r.role_arn,
            role_session_name: r.role_session_name,
            token: Redacted::new(r.web_identity_token),
            duration_seconds: (r.duration_seconds != 0).then_some(r.duration_seconds),
            provider_id: (!r.provider_id.is_empty()).then_some(r.provider_id),
        }
    }
}

impl pb::AssumeRoleWithWebIdentityResponse {
    /// The answer for a minted session, or a refusal. `Unavailable` has no
    /// message: it travels as a gRPC status.
    pub fn from_result(result: &Result<AssumedRole, StsError>) -> Result<Self, Status> {
        use pb::assume_role_with_web_identity_response::Result as R;
        let result = match result {
            Ok(a) => R::Credentials(pb::StsCredentials {
                access_key: a.access_key.clone(),
                secret_key: a.secret_key.expose().clone(),
                session_token: a.session_token.expose().clone(),
                expires_unix: a.expires_unix,
                subject: a.subject.clone(),
                audience: a.audience.clone(),
                provider: a.provider.clone(),
                assumed_role_arn: a.assumed_role_arn.clone(),
                assumed_role_id: a.assumed_role_id.clone(),
                principal: a.principal.clone(),
            }),
            Err(StsError::Refused { code, message }) => R::Refusal(pb::StsRefusal {
                code: code.as_str().to_owned(),
                message: message.clone(),
            }),
            Err(StsError::Unavailable(m)) => return Err(Status::unavailable(m.clone())),
        };
        Ok(pb::AssumeRoleWithWebIdentityResponse {
            result: Some(result),
        })
    }

    /// Strict: credentials missing a part, or a refusal whose code this
    /// data plane does not know, are `DecodeError`s (the data plane answers
    /// 503, never a half session).
    pub fn into_result(self) -> Result<Result<AssumedRole, StsError>, DecodeError> {
        use pb::assume_role_with_web_identity_response::Result as R;
        match self.result {
            Some(R::Credentials(c)) => {
                if c.access_key.is_empty()
                    || c.secret_key.is_empty()
                    || c.session_token.is_empty()
                    || c.expires_unix <= 0
                    || c.principal.is_empty()
                {
                    return Err(DecodeError("incomplete session credentials"));
                }
                Ok(Ok(AssumedRole {
                    access_key: c.access_key,
                    secret_key: Redacted::new(c.secret_key),
                    session_token: Redacted::new(c.session_token),
                    expires_unix: c.expires_unix,
                    subject: c.subject,
                    audience: c.audience,
                    provider: c.provider,
                    assumed_role_arn: c.assumed_role_arn,
                    assumed_role_id: c.assumed_role_id,
                    principal: c.principal,
                }))
            }
            Some(R::Refusal(r)) => {
                let code =
                    StsErrorCode::parse(&r.code).ok_or(DecodeError("unknown STS error code"))?;
                Ok(Err(StsError::Refused {
                    code,
                    message: r.message,
                }))
            }
            None => Err(DecodeError("empty STS answer")),
        }
    }
}

impl fmt::Debug for pb::AssumeRoleWithWebIdentityRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssumeRoleWithWebIdentityRequest")
            .field("role_arn", &self.role_arn)
            .field("role_session_name", &self.role_session_name)
            .field("web_identity_token", &"<redacted>")
            .field("duration_seconds", &self.duration_seconds)
            .field("provider_id", &self.provider_id)
            .finish()
    }
}

impl fmt::Debug for pb::StsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StsCredentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("expires_unix", &self.expires_unix)
            .field("principal", &self.principal)
            .finish()
    }
}

// === authorization ===

impl From<&AuthorizeRequest> for pb::AuthorizeRequest {
    fn from(r: &AuthorizeRequest) -> Self {
        let (kind, key) = match &r.resource {
            Resource::Bucket => (pb::ResourceKind::Bucket, String::new()),
            Resource::Object(k) => (pb::ResourceKind::Object, k.clone()),
            Resource::Prefix(p) => (pb::ResourceKind::Prefix, p.clone()),
        };
        let c = &r.context;
        pb::AuthorizeRequest {
            principal: Some((&r.principal).into()),
            action: r.action.to_string(),
            bucket: r.bucket.clone(),
            kind: kind as i32,
            key,
            context: Some(pb::RequestContext {
                client_ip: c.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
                identity_source: c.identity_source.to_string(),
                claims: claims_to_pb(&c.claims),
                method: c.method.to_string(),
                headers: c
                    .headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            }),
        }
    }
}

impl From<pb::RequestContext> for RequestContext {
    /// Lenient: every field is optional, and headers outside
    /// [`RequestContext::HEADERS`] are dropped.
    fn from(c: pb::RequestContext) -> Self {
        let mut headers: Vec<_> = c
            .headers
            .into_iter()
            .filter_map(|(k, v)| Some((RequestContext::header_name(&k)?, v)))
            .collect();
        headers.sort();
        RequestContext {
            client_ip: c.client_ip.parse().ok(),
            identity_source: Cow::Owned(c.identity_source),
            claims: claims_from_pb(c.claims),
            method: Cow::Owned(c.method),
            headers,
        }
    }
}

impl TryFrom<pb::AuthorizeRequest> for AuthorizeRequest {
    type Error = DecodeError;

    fn try_from(r: pb::AuthorizeRequest) -> Result<Self, DecodeError> {
        let resource = match pb::ResourceKind::try_from(r.kind) {
            Ok(pb::ResourceKind::Bucket) => Resource::Bucket,
            Ok(pb::ResourceKind::Object) => Resource::Object(r.key),
            Ok(pb::ResourceKind::Prefix) => Resource::Prefix(r.key),
            _ => return Err(DecodeError("unspecified resource kind")),
        };
        if r.action.is_empty() || r.bucket.is_empty() {
            return Err(DecodeError("authorize needs an action and a bucket"));
        }
        Ok(AuthorizeRequest {
            principal: r
                .principal
                .ok_or(DecodeError("authorize without principal"))?
                .try_into()?,
            action: Cow::Owned(r.action),
            bucket: r.bucket,
            resource,
            context: r.context.map(RequestContext::from).unwrap_or_default(),
        })
    }
}

impl From<&Decision> for pb::AuthorizeResponse {
    fn from(d: &Decision) -> Self {
        let (scope, scope_prefix) = match &d.scope {
            Scope::Exact => (pb::Scope::Exact, String::new()),
            Scope::Prefix(p) => (pb::Scope::Prefix, p.clone()),
            Scope::Bucket => (pb::Scope::Bucket, String::new()),
        };
        pb::AuthorizeResponse {
            allow: d.allow,
            reason: d.reason.clone(),
            scope: scope as i32,
            scope_prefix,
            ttl_ms: ms(d.ttl),
            decided_by: d.decided_by.as_deref().unwrap_or_default().to_owned(),
        }
    }
}

impl TryFrom<pb::AuthorizeResponse> for Decision {
    type Error = DecodeError;

    fn try_from(r: pb::AuthorizeResponse) -> Result<Self, DecodeError> {
        let scope = match pb::Scope::try_from(r.scope) {
            Ok(pb::Scope::Exact) => Scope::Exact,
            Ok(pb::Scope::Prefix) => Scope::Prefix(r.scope_prefix),
            Ok(pb::Scope::Bucket) => Scope::Bucket,
            _ => return Err(DecodeError("unspecified decision scope")),
        };
        Ok(Decision {
            allow: r.allow,
            reason: r.reason,
            scope,
            ttl: Duration::from_millis(r.ttl_ms),
            decided_by: (!r.decided_by.is_empty()).then(|| r.decided_by.into()),
        })
    }
}

// === routes ===

impl From<&Route> for pb::GetRouteResponse {
    fn from(r: &Route) -> Self {
        let b = &r.backend;
        pb::GetRouteResponse {
            bucket: r.bucket.clone(),
            backend_bucket: r.backend_bucket.clone(),
            backend: Some(pb::Backend::from(&**b)),
            credentials: Some(pb::BackendCredentials::from(&*r.credentials)),
            ttl_ms: ms(r.ttl),
            cors: r.cors.iter().map(pb::CorsRule::from).collect(),
        }
    }
}

impl TryFrom<pb::GetRouteResponse> for Route {
    type Error = DecodeError;

    fn try_from(r: pb::GetRouteResponse) -> Result<Self, DecodeError> {
        let b = r.backend.ok_or(DecodeError("route without backend"))?;
        let c = r
            .credentials
            .ok_or(DecodeError("route without credentials"))?;
        if r.bucket.is_empty() || r.backend_bucket.is_empty() {
            return Err(DecodeError("route needs bucket and backend bucket"));
        }
        Ok(Route {
            bucket: r.bucket,
            backend_bucket: r.backend_bucket,
            backend: Arc::new(b.try_into()?),
            credentials: Arc::new(c.try_into()?),
            ttl: Duration::from_millis(r.ttl_ms),
            cors: r.cors.into_iter().map(CorsRule::from).collect(),
        })
    }
}

impl From<&Backend> for pb::Backend {
    fn from(b: &Backend) -> Self {
        pb::Backend {
            name: b.name.clone(),
            endpoint: b.endpoint.clone(),
            region: b.region.clone(),
            addressing_style: match b.addressing_style {
                AddressingStyle::Path => pb::AddressingStyle::Path,
                AddressingStyle::Virtual => pb::AddressingStyle::Virtual,
            } as i32,
            ca_bundle: b.ca_bundle.clone().unwrap_or_default(),
            insecure_skip_verify: b.insecure_skip_verify,
            literal_keys: !b.key_segment_guard,
            egress: Some(pb::BackendEgress::from(&b.egress)),
            limits: Some(pb::BackendLimits::from(&b.limits)),
        }
    }
}

impl TryFrom<pb::Backend> for Backend {
    type Error = DecodeError;

    fn try_from(b: pb::Backend) -> Result<Self, DecodeError> {
        let addressing_style = match pb::AddressingStyle::try_from(b.addressing_style) {
            Ok(pb::AddressingStyle::Path) => AddressingStyle::Path,
            Ok(pb::AddressingStyle::Virtual) => AddressingStyle::Virtual,
            _ => return Err(DecodeError("unspecified addressing style")),
        };
        if b.endpoint.is_empty() {
            return Err(DecodeError("backend without endpoint"));
        }
        Ok(Backend {
            name: b.name,
            endpoint: b.endpoint,
            region: b.region,
            addressing_style,
            ca_bundle: (!b.ca_bundle.is_empty()).then_some(b.ca_bundle),
            insecure_skip_verify: b.insecure_skip_verify,
            key_segment_guard: !b.literal_keys,
            egress: b.egress.map(Egress::from).unwrap_or_default(),
            limits: b.limits.map(BackendLimits::from).unwrap_or_default(),
        })
    }
}

// === ListBuckets ===

impl From<&Listing> for pb::ListingResponse {
    fn from(l: &Listing) -> Self {
        pb::ListingResponse {
            entries: l
                .entries
                .iter()
                .map(|e| pb::BucketEntry {
                    name: e.name.clone(),
                    backend: e.backend.clone(),
                    backend_bucket: e.backend_bucket.clone(),
                })
                .collect(),
            default_backend: l.default_backend.clone().unwrap_or_default(),
            backends: l
                .backends
                .iter()
                .map(|b| pb::BackendListing {
                    backend: Some(pb::Backend::from(&*b.backend)),
                    credentials: Some(pb::BackendCredentials::from(&*b.credentials)),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::ListingResponse> for Listing {
    type Error = DecodeError;

    fn try_from(l: pb::ListingResponse) -> Result<Self, DecodeError> {
        let backends = l
            .backends
            .into_iter()
            .map(|b| {
                Ok(BackendListing {
                    backend: Arc::new(
                        b.backend
                            .ok_or(DecodeError("listing without backend"))?
                            .try_into()?,
                    ),
                    credentials: Arc::new(
                        b.credentials
                            .ok_or(DecodeError("listing without credentials"))?
                            .try_into()?,
                    ),
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(Listing {
            entries: l
                .entries
                .into_iter()
                .map(|e| BucketEntry {
                    name: e.name,
                    backend: e.backend,
                    backend_bucket: e.backend_bucket,
                })
                .collect(),
            default_backend: (!l.default_backend.is_empty()).then_some(l.default_backend),
            backends,
        })
    }
}

// === backend egress and limits ===

impl From<&Egress> for pb::BackendEgress {
    fn from(e: &Egress) -> Self {
        pb::BackendEgress {
            proxy: e.proxy.clone().unwrap_or_default(),
            no_proxy: e.no_proxy.clone(),
            proxy_credentials: e.proxy_credentials.clone().unwrap_or_default(),
        }
    }
}

impl From<pb::BackendEgress> for Egress {
    fn from(e: pb::BackendEgress) -> Self {
        Egress {
            proxy: (!e.proxy.is_empty()).then_some(e.proxy),
            no_proxy: e.no_proxy,
            proxy_credentials: (!e.proxy_credentials.is_empty()).then_some(e.proxy_credentials),
        }
    }
}

impl From<&BackendLimits> for pb::BackendLimits {
    fn from(l: &BackendLimits) -> Self {
        pb::BackendLimits {
            max_connections: l.max_connections,
            connect_timeout_ms: l.connect_timeout.map_or(0, ms),
            response_timeout_ms: ms(l.response_timeout),
        }
    }
}

/// Zero fields (an older peer, or "default") take the defaults.
impl From<pb::BackendLimits> for BackendLimits {
    fn from(l: pb::BackendLimits) -> Self {
        let d = BackendLimits::default();
        BackendLimits {
            max_connections: if l.max_connections == 0 {
                d.max_connections
            } else {
                l.max_connections
            },
            connect_timeout: (l.connect_timeout_ms != 0)
                .then(|| Duration::from_millis(l.connect_timeout_ms)),
            response_timeout: if l.response_timeout_ms == 0 {
                d.response_timeout
            } else {
                Duration::from_millis(l.response_timeout_ms)
            },
        }
    }
}

// === CORS rules ===

impl From<&BucketCors> for pb::GetBucketCorsResponse {
    fn from(c: &BucketCors) -> Self {
        pb::GetBucketCorsResponse {
            cors: c.rules.iter().map(pb::CorsRule::from).collect(),
            ttl_ms: ms(c.ttl),
        }
    }
}

impl From<pb::GetBucketCorsResponse> for BucketCors {
    fn from(c: pb::GetBucketCorsResponse) -> Self {
        BucketCors {
            rules: c.cors.into_iter().map(CorsRule::from).collect(),
            ttl: Duration::from_millis(c.ttl_ms),
        }
    }
}

impl From<&CorsRule> for pb::CorsRule {
    fn from(r: &CorsRule) -> Self {
        pb::CorsRule {
            allowed_origins: r.allowed_origins.clone(),
            allowed_methods: r.allowed_methods.clone(),
            allowed_headers: r.allowed_headers.clone(),
            expose_headers: r.expose_headers.clone(),
            max_age: r.max_age,
        }
    }
}

/// Any content decodes: a rule carries no secret and widens nothing by
/// being empty (a rule without origins or methods matches nothing). The
/// control plane validated it before it was stored.
impl From<pb::CorsRule> for CorsRule {
    fn from(r: pb::CorsRule) -> Self {
        CorsRule {
            allowed_origins: r.allowed_origins,
            allowed_methods: r.allowed_methods,
            allowed_headers: r.allowed_headers,
            expose_headers: r.expose_headers,
            max_age: r.max_age,
        }
    }
}

impl From<&BackendCredentials> for pb::BackendCredentials {
    fn from(c: &BackendCredentials) -> Self {
        use pb::backend_credentials::Auth;
        let auth = match &c.auth {
            BackendAuth::SigV4 {
                access_key,
                secret_key,
                session_token,
            } => Auth::Sigv4(pb::SigV4Credentials {
                access_key: access_key.clone(),
                secret_key: secret_key.expose().clone(),
                session_token: session_token
                    .as_ref()
                    .map(|t| t.expose().clone())
                    .unwrap_or_default(),
            }),
            BackendAuth::Bearer {
                token,
                service_instance_id,
            } => Auth::Bearer(pb::BearerCredentials {
                token: token.expose().clone(),
                service_instance_id: service_instance_id.clone().unwrap_or_default(),
            }),
        };
        pb::BackendCredentials {
            expires_unix: c.expires_unix.unwrap_or_default(),
            auth: Some(auth),
            per_principal: c.per_principal,
        }
    }
}

impl TryFrom<pb::BackendCredentials> for BackendCredentials {
    type Error = DecodeError;

    fn try_from(c: pb::BackendCredentials) -> Result<Self, DecodeError> {
        use pb::backend_credentials::Auth;
        let auth = match c.auth {
            Some(Auth::Sigv4(s)) if !s.access_key.is_empty() && !s.secret_key.is_empty() => {
                BackendAuth::SigV4 {
                    access_key: s.access_key,
                    secret_key: Redacted::new(s.secret_key),
                    session_token: (!s.session_token.is_empty())
                        .then(|| Redacted::new(s.session_token)),
                }
            }
            Some(Auth::Bearer(b)) if !b.token.is_empty() => BackendAuth::Bearer {
                token: Redacted::new(b.token),
                service_instance_id: (!b.service_instance_id.is_empty())
                    .then_some(b.service_instance_id),
            },
            _ => return Err(DecodeError("route without usable credentials")),
        };
        Ok(BackendCredentials {
            auth,
            expires_unix: (c.expires_unix != 0).then_some(c.expires_unix),
            per_principal: c.per_principal,
        })
    }
}

// === watch ===

impl Invalidation {
    pub fn to_event(&self, version: u64) -> pb::WatchEvent {
        use pb::watch_event::Event;
        let event = match self {
            Invalidation::Key(k) => Event::KeyChanged(pb::KeyChanged {
                access_key: k.clone(),
            }),
            Invalidation::Policy => Event::PolicyChanged(pb::PolicyChanged {}),
            Invalidation::Bucket(b) => {
                Event::BucketChanged(pb::BucketChanged { bucket: b.clone() })
            }
            Invalidation::All => Event::FlushAll(pb::FlushAll {}),
        };
        pb::WatchEvent {
            version,
            event: Some(event),
        }
    }

    /// `None` for Hello (and for events this data plane does not know, which
    /// the caller should treat as [`Invalidation::All`]).
    pub fn from_event(event: &pb::WatchEvent) -> Option<Self> {
        use pb::watch_event::Event;
        match event.event.as_ref()? {
            Event::Hello(_) => None,
            Event::KeyChanged(k) => Some(Invalidation::Key(k.access_key.clone())),
            Event::PolicyChanged(_) => Some(Invalidation::Policy),
            Event::BucketChanged(b) => Some(Invalidation::Bucket(b.bucket.clone())),
            Event::FlushAll(_) => Some(Invalidation::All),
        }
    }
}

impl fmt::Debug for pb::KeyWithSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyWithSecret")
            .field("key", &self.key)
            .field("secret_key", &"<redacted>")
            .field("version", &self.version)
            .finish()
    }
}

impl fmt::Debug for pb::StaticHmacSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        key_pair_debug(f, "StaticHmacSpec", &self.access_key)
    }
}

impl fmt::Debug for pb::IbmIamSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IbmIamSpec")
            .field("api_key", &"<redacted>")
            .field("iam_endpoint", &self.iam_endpoint)
            .field("service_instance_id", &self.service_instance_id)
            .field("ca_bundle", &self.ca_bundle)
            .finish()
    }
}

impl fmt::Debug for pb::AwsAssumeRoleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsAssumeRoleSpec")
            .field("role_arn", &self.role_arn)
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .field("sts_endpoint", &self.sts_endpoint)
            .field("duration_seconds", &self.duration_seconds)
            .field("session_name", &self.session_name)
            .field("external_id", &self.external_id)
            .field("ca_bundle", &self.ca_bundle)
            .field("sts_region", &self.sts_region)
            .finish()
    }
}

impl fmt::Debug for pb::PutBackendRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutBackendRequest")
            .field("backend", &self.backend)
            .field("secret_key", &"<redacted>")
            .field("session_token", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        Principal {
            name: Arc::from("alice"),
            groups: Arc::from([Arc::from("g1")]),
            access_key: Some(Arc::from("AK")),
        }
    }

    #[test]
    fn round_trips() {
        let grant = SigningKeyGrant {
            key: SigningKey::from_bytes([7; 32]),
            principal: alice(),
            ttl: Duration::from_secs(5),
            session: None,
        };
        let back = SigningKeyGrant::try_from(pb::SigningKeyResponse::from(&grant)).unwrap();
        assert_eq!(back.key.as_bytes(), &[7; 32]);
        assert_eq!(back.principal, alice());
        assert_eq!(back.ttl, Duration::from_secs(5));

        for resource in [
            Resource::Bucket,
            Resource::Object("k".into()),
            Resource::Prefix("".into()),
        ] {
            let req = AuthorizeRequest {
                principal: alice(),
                action: Cow::Borrowed("s3:GetObject"),
                bucket: "b".into(),
                resource,
                context: RequestContext {
                    client_ip: Some("192.0.2.1".parse().unwrap()),
                    identity_source: Cow::Borrowed("key"),
                    claims: Arc::from([("email".to_owned(), "a@example.com".to_owned())]),
                    method: Cow::Borrowed("GET"),
                    headers: vec![("content-type", "text/plain".into())],
                },
            };
            assert_eq!(
                AuthorizeRequest::try_from(pb::AuthorizeRequest::from(&req)).unwrap(),
                req
            );
        }
        let creds = BackendCredentials {
            auth: BackendAuth::SigV4 {
                access_key: "AK".into(),
                secret_key: Redacted::new("SK"),
                session_token: Some(Redacted::new("TOK")),
            },
            expires_unix: Some(1_900_000_000),
            per_principal: true,
        };
        assert_eq!(
            BackendCredentials::try_from(pb::BackendCredentials::from(&creds)).unwrap(),
            creds
        );
        let identity = Identity {
            principal: alice(),
            ttl: Duration::from_secs(60),
            source: Arc::from("oidc:corp"),
            claims: Arc::from([("sub".to_owned(), "alice".to_owned())]),
        };
        assert_eq!(
            Identity::try_from(pb::AuthenticateResponse::from(&identity)).unwrap(),
            identity
        );
        for presented in [
            PresentedCredential::BearerToken(Redacted::new("eyJ.x.y")),
            PresentedCredential::ClientCertificate {
                der: Arc::from(&b"\x30\x03"[..]),
                name: "svc".into(),
            },
        ] {
            let msg = pb::AuthenticateRequest::from(&presented);
            assert_eq!(PresentedCredential::try_from(msg).unwrap(), presented);
        }
        let anon = Principal::anonymous();
        assert_eq!(
            Principal::try_from(pb::Principal::from(&anon)).unwrap(),
            anon
        );

        for scope in [Scope::Exact, Scope::Bucket, Scope::Prefix("p/".into())] {
            let d = Decision {
                allow: true,
                reason: "r".into(),
                scope,
                ttl: Duration::from_millis(1500),
                decided_by: Some("rules:r".into()),
            };
            assert_eq!(
                Decision::try_from(pb::AuthorizeResponse::from(&d)).unwrap(),
                d
            );
        }
    }

    #[test]
    fn sigv2_round_trips_and_decodes_strictly() {
        let req = SigV2Request {
            access_key: "AK".into(),
            string_to_sign: "GET\n\n\n1\n/b/k".into(),
            signature: [9; 20],
        };
        let msg = pb::VerifySigV2Request::from(&req);
        assert_eq!(SigV2Request::try_from(msg.clone()).unwrap(), req);
        let mut short = msg;
        short.signature.pop();
        assert!(SigV2Request::try_from(short).is_err());

        let grant = SigV2Grant {
            principal: alice(),
            ttl: Duration::from_secs(30),
        };
        let ok = sigv2_response(&Ok(grant.clone())).unwrap();
        assert_eq!(sigv2_answer(ok).unwrap().unwrap(), grant);
        let mismatch = sigv2_response(&Err(ControlPlaneError::SignatureMismatch)).unwrap();
        assert!(matches!(
            sigv2_answer(mismatch).unwrap(),
            Err(ControlPlaneError::SignatureMismatch)
        ));
        assert!(sigv2_response(&Err(ControlPlaneError::UnknownAccessKey)).is_none());
        // an empty answer, or a match without a principal, is never a grant
        assert!(sigv2_answer(pb::VerifySigV2Response::default()).is_err());
        assert!(sigv2_answer(pb::VerifySigV2Response {
            result: pb::SigV2Result::Match as i32,
            principal: None,
            ttl_ms: 1,
        })
        .is_err());
        assert!(sigv2_answer(pb::VerifySigV2Response {
            result: pb::SigV2Result::Match as i32,
            principal: Some((&Principal::anonymous()).into()),
            ttl_ms: 1,
        })
        .is_err());
        // the mismatch as a status fails closed
        let e: ControlPlaneError = Status::from(ControlPlaneError::SignatureMismatch).into();
        assert!(matches!(e, ControlPlaneError::Unavailable(_)));
        let dbg = format!("{req:?} {:?}", pb::VerifySigV2Request::from(&req));
        assert!(!dbg.contains("/b/k") && !dbg.contains("[9"), "{dbg}");
    }

    #[test]
    fn strict_decoding() {
        let mut bad = pb::SigningKeyResponse::from(&SigningKeyGrant {
            key: SigningKey::from_bytes([1; 32]),
            principal: alice(),
            ttl: Duration::ZERO,
            session: None,
        });
        bad.key.pop();
        assert!(SigningKeyGrant::try_from(bad).is_err());
        let d = pb::AuthorizeResponse {
            allow: true,
            ..Default::default()
        };
        assert!(
            Decision::try_from(d).is_err(),
            "an unspecified scope never decodes"
        );
        // a principal that claims to be the anonymous marker by name is refused
        let p = pb::Principal {
            name: Principal::ANONYMOUS.into(),
            ..Default::default()
        };
        assert!(Principal::try_from(p).is_err());
    }

    #[test]
    fn sessions_round_trip_and_decode_strictly() {
        let grant = SigningKeyGrant {
            key: SigningKey::from_bytes([3; 32]),
            principal: alice(),
            ttl: Duration::from_secs(9),
            session: Some(Arc::new(SessionGrant {
                token_sha256: [5; 32],
                expires_unix: 1_900_000_000,
                claims: Arc::from([("email".to_owned(), "a@example.com".to_owned())]),
            })),
        };
        let msg = pb::SigningKeyResponse::from(&grant);
        let back = SigningKeyGrant::try_from(msg.clone()).unwrap();
        assert_eq!(back.session, grant.session);
        // Half a binding never becomes a long-term key.
        let mut no_hash = msg.clone();
        no_hash.session_token_sha256.clear();
        assert!(SigningKeyGrant::try_from(no_hash).is_err());
        let mut no_expiry = msg.clone();
        no_expiry.session_expires_unix = 0;
        assert!(SigningKeyGrant::try_from(no_expiry).is_err());
        let mut short = msg;
        short.session_token_sha256.pop();
        assert!(SigningKeyGrant::try_from(short).is_err());

        let req = WebIdentityRequest {
            role_arn: "arn:aws:iam::000000000000:role/r".into(),
            role_session_name: "s1".into(),
            token: Redacted::new("jwt-value"),
            duration_seconds: Some(900),
            provider_id: None,
        };
        let msg = pb::AssumeRoleWithWebIdentityRequest::from(&req);
        assert!(!format!("{msg:?}").contains("jwt-value"));
        assert_eq!(WebIdentityRequest::from(msg), req);

        let minted = AssumedRole {
            access_key: "ASIAAAAAAAAAAAAAAAAA".into(),
            secret_key: Redacted::new("secret-value"),
            session_token: Redacted::new("token-value"),
            expires_unix: 1_900_000_000,
            subject: "sub".into(),
            audience: "aud".into(),
            provider: "iss".into(),
            assumed_role_arn: "arn".into(),
            assumed_role_id: "id".into(),
            principal: "alice".into(),
        };
        for result in [
            Ok(minted.clone()),
            Err(StsError::refused(StsErrorCode::AccessDenied, "no")),
        ] {
            let msg = pb::AssumeRoleWithWebIdentityResponse::from_result(&result).unwrap();
            let dbg = format!("{msg:?}");
            assert!(
                !dbg.contains("secret-value") && !dbg.contains("token-value"),
                "{dbg}"
            );
            assert_eq!(msg.into_result().unwrap(), result);
        }
        assert_eq!(
            pb::AssumeRoleWithWebIdentityResponse::from_result(&Err(StsError::Unavailable(
                "x".into()
            )))
            .unwrap_err()
            .code(),
            Code::Unavailable
        );
        let unknown = pb::AssumeRoleWithWebIdentityResponse {
            result: Some(pb::assume_role_with_web_identity_response::Result::Refusal(
                pb::StsRefusal {
                    code: "SomethingNew".into(),
                    message: String::new(),
                },
            )),
        };
        assert!(unknown.into_result().is_err());
        let mut half = pb::AssumeRoleWithWebIdentityResponse::from_result(&Ok(minted)).unwrap();
        if let Some(pb::assume_role_with_web_identity_response::Result::Credentials(c)) =
            half.result.as_mut()
        {
            c.session_token.clear();
        }
        assert!(half.into_result().is_err());
    }

    #[test]
    fn statuses_fail_closed() {
        for (err, code) in [
            (ControlPlaneError::UnknownAccessKey, Code::Unauthenticated),
            (ControlPlaneError::NoSuchBucket, Code::NotFound),
        ] {
            let status: Status = err.into();
            assert_eq!(status.code(), code);
        }
        // an expired credential stays distinguishable across the wire
        let status: Status =
            ControlPlaneError::CredentialExpired("token has expired".into()).into();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert!(matches!(
            ControlPlaneError::from(status),
            ControlPlaneError::CredentialExpired(m) if m == "token has expired"
        ));
        let plain = Status::unauthenticated("no");
        assert!(matches!(
            ControlPlaneError::from(plain),
            ControlPlaneError::UnknownAccessKey
        ));
        for code in [
            Code::PermissionDenied,
            Code::Internal,
            Code::Unknown,
            Code::InvalidArgument,
        ] {
            let e: ControlPlaneError = Status::new(code, "x").into();
            assert!(matches!(e, ControlPlaneError::Unavailable(_)), "{code:?}");
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = pb::BackendCredentials {
            expires_unix: 0,
            per_principal: false,
            auth: Some(pb::backend_credentials::Auth::Sigv4(pb::SigV4Credentials {
                access_key: "AK".into(),
                secret_key: "very-secret".into(),
                session_token: "tok-value".into(),
            })),
        };
        let t = pb::AuthenticateRequest::from(&PresentedCredential::BearerToken(Redacted::new(
            "bearer-value",
        )));
        let dbg = format!("{c:?} {t:?}");
        for secret in ["very-secret", "tok-value", "bearer-value"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        let mut empty = pb::BackendCredentials::from(&BackendCredentials::try_from(c).unwrap());
        empty.auth = None;
        assert!(BackendCredentials::try_from(empty).is_err());
        let bearer = pb::BackendCredentials {
            expires_unix: 0,
            per_principal: false,
            auth: Some(pb::backend_credentials::Auth::Bearer(
                pb::BearerCredentials {
                    token: "iam-token-value".into(),
                    service_instance_id: "crn:x".into(),
                },
            )),
        };
        let ibm = pb::IbmIamSpec {
            api_key: "api-key-value".into(),
            ..Default::default()
        };
        let aws = pb::AwsAssumeRoleSpec {
            secret_key: "role-secret".into(),
            session_token: "role-token".into(),
            ..Default::default()
        };
        let dbg = format!("{bearer:?} {ibm:?} {aws:?}");
        for secret in [
            "iam-token-value",
            "api-key-value",
            "role-secret",
            "role-token",
        ] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(dbg.contains("crn:x"), "{dbg}");
    }

    #[test]
    fn bearer_credentials_round_trip() {
        let creds = BackendCredentials {
            auth: BackendAuth::Bearer {
                token: Redacted::new("tok"),
                service_instance_id: Some("crn:v1:x".into()),
            },
            expires_unix: Some(1_900_000_000),
            per_principal: false,
        };
        assert_eq!(
            BackendCredentials::try_from(pb::BackendCredentials::from(&creds)).unwrap(),
            creds
        );
        let mut empty = pb::BackendCredentials::from(&creds);
        empty.auth = Some(pb::backend_credentials::Auth::Bearer(
            pb::BearerCredentials::default(),
        ));
        assert!(BackendCredentials::try_from(empty).is_err());
    }
}
