//! `kind = "ibm_iam"`: an IBM Cloud API key exchanged at IAM for a bearer
//! token (`POST` of `grant_type=urn:ibm:params:oauth:grant-type:apikey`,
//! answered with `access_token`, `expires_in` and `expiration`).

use bytes::Bytes;
use http_body_util::Full;
use s3gate_proto::{BackendAuth, Redacted};
use serde::Deserialize;

use super::http::Poster;
use super::{form_encode, Temporary};
use crate::config::Secret;

pub(super) struct IbmIam {
    endpoint: String,
    api_key: Secret,
    service_instance_id: Option<String>,
    poster: Poster,
}

/// What IAM answers; unknown fields (`refresh_token`, `scope`) are ignored.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    /// Unix seconds.
    #[serde(default)]
    expiration: Option<i64>,
}

/// IAM's error document: the code is safe to repeat, the message is not
/// shown (it may quote the request).
#[derive(Deserialize)]
struct ErrorAnswer {
    #[serde(default, rename = "errorCode")]
    error_code: Option<String>,
}

impl IbmIam {
    pub(super) fn new(
        endpoint: &str,
        api_key: Secret,
        service_instance_id: Option<String>,
        ca_bundle: Option<&str>,
    ) -> Result<Self, String> {
        Ok(Self {
            endpoint: endpoint.to_owned(),
            api_key,
            service_instance_id,
            poster: Poster::new(ca_bundle)?,
        })
    }

    pub(super) async fn exchange(&self) -> Result<Temporary, String> {
        let body = format!(
            "grant_type={}&apikey={}",
            form_encode("urn:ibm:params:oauth:grant-type:apikey"),
            form_encode(self.api_key.expose())
        );
        let req = http::Request::post(self.endpoint.as_str())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("s3gate/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| "iam_endpoint is not a usable URL".to_owned())?;
        let answer = self.poster.send(req).await?;
        if !answer.status.is_success() {
            let code = serde_json::from_slice::<ErrorAnswer>(&answer.body)
                .ok()
                .and_then(|e| e.error_code)
                .filter(|c| c.len() <= 32 && c.chars().all(|c| c.is_ascii_alphanumeric()))
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            return Err(format!(
                "IAM answered HTTP {}{code}",
                answer.status.as_u16()
            ));
        }
        let token: TokenAnswer = serde_json::from_slice(&answer.body)
            .map_err(|_| "IAM answered 200 without a token document".to_owned())?;
        if token.access_token.is_empty() {
            return Err("IAM answered an empty access_token".to_owned());
        }
        if token
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err("IAM answered a token that is not a bearer token".to_owned());
        }
        let now = crate::unix_now();
        let expires_unix = match (token.expiration, token.expires_in) {
            (Some(at), _) if at > 0 => at,
            (_, Some(secs)) if secs > 0 => now.saturating_add(secs),
            _ => return Err("IAM answered a token without expiration or expires_in".to_owned()),
        };
        if expires_unix <= now {
            return Err("IAM answered a token that has already expired".to_owned());
        }
        Ok(Temporary {
            auth: BackendAuth::Bearer {
                token: Redacted::new(token.access_token),
                service_instance_id: self.service_instance_id.clone(),
            },
            expires_unix,
        })
    }
}
