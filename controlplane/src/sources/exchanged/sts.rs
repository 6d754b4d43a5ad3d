//! `kind = "aws_assume_role"`: STS `AssumeRole`, signed with SigV4 by the
//! long-lived key pair; the session it answers (access key, secret, token,
//! expiration) is what backend requests are signed with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::Full;
use quick_xml::events::Event;
use s3gate_proto::{BackendAuth, Redacted};

use super::http::Poster;
use super::{form_encode, Temporary};
use crate::config::Secret;

pub(super) struct AssumeRole {
    endpoint: String,
    region: String,
    identity: Identity,
    /// The form body without its varying parts: it is the same every time.
    body: String,
    poster: Poster,
}

pub(super) struct Settings<'a> {
    pub endpoint: &'a str,
    pub region: Option<&'a str>,
    pub role_arn: &'a str,
    pub access_key: &'a str,
    pub secret_key: &'a Secret,
    pub session_token: Option<&'a Secret>,
    pub duration: Duration,
    pub session_name: &'a str,
    pub external_id: Option<&'a str>,
    pub ca_bundle: Option<&'a str>,
}

impl AssumeRole {
    pub(super) fn new(s: Settings<'_>) -> Result<Self, String> {
        let mut body = format!(
            "Action=AssumeRole&Version=2011-06-15&RoleArn={}&RoleSessionName={}&DurationSeconds={}",
            form_encode(s.role_arn),
            form_encode(s.session_name),
            s.duration.as_secs()
        );
        if let Some(id) = s.external_id {
            body.push_str("&ExternalId=");
            body.push_str(&form_encode(id));
        }
        Ok(Self {
            endpoint: s.endpoint.trim_end_matches('/').to_owned() + "/",
            region: s
                .region
                .map(str::to_owned)
                .unwrap_or_else(|| region_of(s.endpoint)),
            identity: Credentials::new(
                s.access_key,
                s.secret_key.expose().clone(),
                s.session_token.map(|t| t.expose().clone()),
                None,
                "s3gate-assume-role",
            )
            .into(),
            body,
            poster: Poster::new(s.ca_bundle)?,
        })
    }

    pub(super) async fn exchange(&self) -> Result<Temporary, String> {
        const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";
        let headers = [("content-type", CONTENT_TYPE)];
        let signable = SignableRequest::new(
            "POST",
            self.endpoint.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(self.body.as_bytes()),
        )
        .map_err(|_| "sts_endpoint is not a usable URL".to_owned())?;
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("sts")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|_| "cannot build the signing parameters".to_owned())?
            .into();
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|_| "cannot sign the AssumeRole request".to_owned())?
            .into_parts();
        let mut req = http::Request::post(self.endpoint.as_str())
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .header(
                http::header::USER_AGENT,
                concat!("s3gate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(self.body.clone())))
            .map_err(|_| "sts_endpoint is not a usable URL".to_owned())?;
        instructions.apply_to_request_http1x(&mut req);
        let answer = self.poster.send(req).await?;
        let fields = read_fields(&answer.body);
        if !answer.status.is_success() {
            let code = fields
                .code
                .filter(|c| c.len() <= 64 && c.chars().all(|c| c.is_ascii_alphanumeric()))
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            return Err(format!(
                "STS answered HTTP {}{code}",
                answer.status.as_u16()
            ));
        }
        let (Some(access_key), Some(secret_key), Some(session_token), Some(expiration)) = (
            fields.access_key,
            fields.secret_key,
            fields.session_token,
            fields.expiration,
        ) else {
            return Err("STS answered 200 without a complete session".to_owned());
        };
        let expires_unix = humantime::parse_rfc3339_weak(expiration.trim_end_matches('Z'))
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok())
            .ok_or_else(|| "STS answered an unreadable Expiration".to_owned())?;
        if expires_unix <= crate::unix_now() || access_key.is_empty() || secret_key.is_empty() {
            return Err("STS answered a session that is unusable or already expired".to_owned());
        }
        Ok(Temporary {
            auth: BackendAuth::SigV4 {
                access_key,
                secret_key: Redacted::new(secret_key),
                session_token: Some(Redacted::new(session_token)),
            },
            expires_unix,
        })
    }
}

/// The region in `https://sts.<region>.amazonaws.com`; us-east-1 for the
/// global endpoint and any other host.
fn region_of(endpoint: &str) -> String {
    let host = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    match host.strip_prefix("sts.").and_then(|h| h.split_once('.')) {
        Some((region, rest)) if rest.starts_with("amazonaws.com") && !region.is_empty() => {
            region.to_owned()
        }
        _ => "us-east-1".to_owned(),
    }
}

/// The parts of an `AssumeRoleResponse` (or an `ErrorResponse`) read.
#[derive(Default)]
struct Fields {
    access_key: Option<String>,
    secret_key: Option<String>,
    session_token: Option<String>,
    expiration: Option<String>,
    code: Option<String>,
}

/// The text of the elements of interest, wherever they sit. A document
/// that does not parse gives what was read before the fault.
fn read_fields(xml: &[u8]) -> Fields {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut fields = Fields::default();
    let mut current: Option<Vec<u8>> = None;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => current = Some(e.local_name().as_ref().to_vec()),
            Ok(Event::End(_)) => current = None,
            Ok(Event::Text(t)) => {
                let Some(name) = current.as_deref() else {
                    buf.clear();
                    continue;
                };
                let Ok(text) = t.unescape() else { break };
                let text = text.trim().to_owned();
                let slot = match name {
                    b"AccessKeyId" => &mut fields.access_key,
                    b"SecretAccessKey" => &mut fields.secret_key,
                    b"SessionToken" => &mut fields.session_token,
                    b"Expiration" => &mut fields.expiration,
                    b"Code" => &mut fields.code,
                    _ => {
                        buf.clear();
                        continue;
                    }
                };
                if slot.is_none() {
                    *slot = Some(text);
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
        buf.clear();
    }
    fields
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn regions_from_endpoints() {
        assert_eq!(region_of("https://sts.amazonaws.com"), "us-east-1");
        assert_eq!(
            region_of("https://sts.eu-west-1.amazonaws.com"),
            "eu-west-1"
        );
        assert_eq!(
            region_of("https://sts.eu-west-1.amazonaws.com:443/"),
            "eu-west-1"
        );
        assert_eq!(region_of("http://127.0.0.1:5000"), "us-east-1");
    }

    #[test]
    fn reads_a_session_and_an_error() {
        let ok = br#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult><Credentials>
    <SessionToken>TOKEN&amp;1</SessionToken><SecretAccessKey>SECRET</SecretAccessKey>
    <Expiration>2030-01-01T00:00:00.123Z</Expiration><AccessKeyId>ASIAX</AccessKeyId>
  </Credentials></AssumeRoleResult></AssumeRoleResponse>"#;
        let f = read_fields(ok);
        assert_eq!(f.access_key.as_deref(), Some("ASIAX"));
        assert_eq!(f.secret_key.as_deref(), Some("SECRET"));
        assert_eq!(f.session_token.as_deref(), Some("TOKEN&1"));
        assert_eq!(f.expiration.as_deref(), Some("2030-01-01T00:00:00.123Z"));
        let err = br#"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code>
            <Message>not allowed</Message></Error></ErrorResponse>"#;
        assert_eq!(read_fields(err).code.as_deref(), Some("AccessDenied"));
        assert!(read_fields(b"<<<not xml").access_key.is_none());
    }
}
