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
    AddressingStyle, AuthorizeRequest, Backend, BackendCredentials, ControlPlaneError, Decision,
    Invalidation, Principal, Resource, Route, Scope, SigningKey, SigningKeyGrant,
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

impl From<ControlPlaneError> for Status {
    fn from(e: ControlPlaneError) -> Self {
        match e {
            ControlPlaneError::UnknownAccessKey => Status::unauthenticated("unknown access key"),
            ControlPlaneError::NoSuchBucket => Status::not_found("no such bucket"),
            ControlPlaneError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

impl From<Status> for ControlPlaneError {
    /// Only the two answers the data plane acts on are decoded; anything else
    /// means "could not decide", and the data plane fails closed.
    fn from(s: Status) -> Self {
        match s.code() {
            Code::Unauthenticated => ControlPlaneError::UnknownAccessKey,
            Code::NotFound => ControlPlaneError::NoSuchBucket,
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
        pb::SigningKeyResponse {
            key: g.key.as_bytes().to_vec(),
            principal: Some((&g.principal).into()),
            ttl_ms: ms(g.ttl),
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
        Ok(SigningKeyGrant {
            key: SigningKey::from_bytes(key),
            principal,
            ttl: Duration::from_millis(r.ttl_ms),
        })
    }
}

impl fmt::Debug for pb::SigningKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyResponse")
            .field("key", &"<redacted>")
            .field("principal", &self.principal)
            .field("ttl_ms", &self.ttl_ms)
            .finish()
    }
}

impl fmt::Debug for pb::BackendCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendCredentials")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .field("session_token", &"<redacted>")
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
        pb::AuthorizeRequest {
            principal: Some((&r.principal).into()),
            action: r.action.to_string(),
            bucket: r.bucket.clone(),
            kind: kind as i32,
            key,
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
            backend: Some(pb::Backend {
                name: b.name.clone(),
                endpoint: b.endpoint.clone(),
                region: b.region.clone(),
                addressing_style: match b.addressing_style {
                    AddressingStyle::Path => pb::AddressingStyle::Path,
                    AddressingStyle::Virtual => pb::AddressingStyle::Virtual,
                } as i32,
                ca_bundle: b.ca_bundle.clone().unwrap_or_default(),
                insecure_skip_verify: b.insecure_skip_verify,
            }),
            credentials: Some(pb::BackendCredentials {
                access_key: r.credentials.access_key.clone(),
                secret_key: r.credentials.secret_key.clone(),
                session_token: r.credentials.session_token.clone().unwrap_or_default(),
                expires_unix: r.credentials.expires_unix.unwrap_or_default(),
            }),
            ttl_ms: ms(r.ttl),
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
        let addressing_style = match pb::AddressingStyle::try_from(b.addressing_style) {
            Ok(pb::AddressingStyle::Path) => AddressingStyle::Path,
            Ok(pb::AddressingStyle::Virtual) => AddressingStyle::Virtual,
            _ => return Err(DecodeError("unspecified addressing style")),
        };
        if r.bucket.is_empty() || r.backend_bucket.is_empty() || b.endpoint.is_empty() {
            return Err(DecodeError(
                "route needs bucket, backend bucket and endpoint",
            ));
        }
        Ok(Route {
            bucket: r.bucket,
            backend_bucket: r.backend_bucket,
            backend: Arc::new(Backend {
                name: b.name,
                endpoint: b.endpoint,
                region: b.region,
                addressing_style,
                ca_bundle: (!b.ca_bundle.is_empty()).then_some(b.ca_bundle),
                insecure_skip_verify: b.insecure_skip_verify,
            }),
            credentials: Arc::new(BackendCredentials {
                access_key: c.access_key,
                secret_key: c.secret_key,
                session_token: (!c.session_token.is_empty()).then_some(c.session_token),
                expires_unix: (c.expires_unix != 0).then_some(c.expires_unix),
            }),
            ttl: Duration::from_millis(r.ttl_ms),
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
            };
            assert_eq!(
                AuthorizeRequest::try_from(pb::AuthorizeRequest::from(&req)).unwrap(),
                req
            );
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
            };
            assert_eq!(
                Decision::try_from(pb::AuthorizeResponse::from(&d)).unwrap(),
                d
            );
        }
    }

    #[test]
    fn strict_decoding() {
        let mut bad = pb::SigningKeyResponse::from(&SigningKeyGrant {
            key: SigningKey::from_bytes([1; 32]),
            principal: alice(),
            ttl: Duration::ZERO,
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
    fn statuses_fail_closed() {
        for (err, code) in [
            (ControlPlaneError::UnknownAccessKey, Code::Unauthenticated),
            (ControlPlaneError::NoSuchBucket, Code::NotFound),
        ] {
            let status: Status = err.into();
            assert_eq!(status.code(), code);
        }
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
            access_key: "AK".into(),
            secret_key: "very-secret".into(),
            session_token: "tok".into(),
            expires_unix: 0,
        };
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("very-secret") && !dbg.contains("tok\""),
            "{dbg}"
        );
    }
}
