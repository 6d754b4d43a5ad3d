//! STS at the S3 endpoint: `AssumeRoleWithWebIdentity`, so SDKs configured
//! with `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN` + `AWS_ENDPOINT_URL`
//! get temporary keys from s3gate itself.
//!
//! Recognised before authentication (`handle`): the call is unsigned, the
//! web identity token is its credential, and only the control plane can
//! judge it. This stage reads the form (at most 64 KiB, within the body
//! deadline, charged to the buffer budget), checks the parameters' shape,
//! asks the control plane, and answers with STS's XML — the session, or an
//! `ErrorResponse`. The token is never logged.

use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};
use s3gate_proto::{Redacted, StsError, StsErrorCode, WebIdentityRequest};
use s3gate_s3::sts::{self, StsCall, StsFault};
use tracing::{debug, warn};

use super::{Ctx, Exchange};
use crate::body::{self, Body, ClientBody, CollectError, TimedBody};

/// Answers one STS call.
pub async fn answer(
    cx: &Ctx,
    head: &Parts,
    body: ClientBody,
    call: StsCall,
    ex: &mut Exchange,
) -> Response<Body> {
    ex.trace.op = Some(sts::ASSUME_ROLE_WITH_WEB_IDENTITY);
    // The call's credential is the web identity token (a JWT).
    ex.trace.identity = Some("jwt");
    let request_id = ex.request_id;
    match assume(cx, head, body, call, ex).await {
        Ok(xml) => {
            ex.trace.decision = Some("allow");
            document(StatusCode::OK, xml)
        }
        Err((fault, close)) => {
            ex.trace.decision = Some("deny");
            debug!(
                request_id = request_id.as_str(),
                code = fault.code.as_str(),
                message = %fault.message,
                "STS call refused"
            );
            let mut response = document(fault.code.status(), fault.to_xml(request_id.as_str()));
            if close {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

/// The session as XML, or the fault and whether the connection must close
/// (a body not read to its end).
async fn assume(
    cx: &Ctx,
    head: &Parts,
    body: ClientBody,
    call: StsCall,
    ex: &mut Exchange,
) -> Result<String, (StsFault, bool)> {
    let form = match call {
        StsCall::Form => read_form(cx, body, ex).await?,
        StsCall::Query => bytes::Bytes::new(),
    };
    let params = sts::parse(head.uri.query().unwrap_or(""), &form).map_err(|f| (f, false))?;
    let req = WebIdentityRequest {
        role_arn: params.role_arn,
        role_session_name: params.role_session_name,
        token: Redacted::new(params.web_identity_token),
        duration_seconds: params.duration_seconds,
        provider_id: params.provider_id,
    };
    let session_name = req.role_session_name.clone();
    match cx.control_plane.assume_role_with_web_identity(req).await {
        Ok(role) => {
            ex.trace.principal = Some(role.principal.as_str().into());
            Ok(sts::WebIdentityResult {
                access_key_id: &role.access_key,
                secret_access_key: role.secret_key.expose(),
                session_token: role.session_token.expose(),
                expiration: role.expires_unix,
                subject: &role.subject,
                audience: &role.audience,
                provider: &role.provider,
                assumed_role_arn: &role.assumed_role_arn,
                assumed_role_id: &role.assumed_role_id,
            }
            .to_xml(ex.request_id.as_str()))
        }
        Err(StsError::Refused { code, message }) => Err((StsFault::new(code, message), false)),
        Err(StsError::Unavailable(why)) => {
            warn!(request_id = ex.request_id.as_str(), session_name, error = %why, "STS call failed: control plane unavailable");
            Err((
                StsFault::new(
                    StsErrorCode::ServiceUnavailable,
                    "the token service is unavailable, please retry",
                ),
                false,
            ))
        }
    }
}

/// The form body, read whole: bounded in size and time, charged to the
/// buffer budget while it is held.
async fn read_form(
    cx: &Ctx,
    body: ClientBody,
    ex: &Exchange,
) -> Result<bytes::Bytes, (StsFault, bool)> {
    let limits = &cx.cfg.limits;
    let body = body::timed(TimedBody::new(
        body,
        limits.body_idle_timeout,
        ex.slot.clone(),
    ));
    let mut reservation = cx.budget.reservation();
    let read = tokio::time::timeout(
        limits.body_deadline,
        body::collect_limited(body, sts::MAX_BODY, &mut reservation),
    )
    .await;
    let fault = |code, message: &str| StsFault::new(code, message);
    match read {
        Ok(Ok(form)) => Ok(form),
        Ok(Err(CollectError::TooLarge)) => Err((
            fault(
                StsErrorCode::ValidationError,
                "the request body is larger than 64 KiB",
            ),
            true,
        )),
        Ok(Err(CollectError::OverBudget)) => Err((
            fault(
                StsErrorCode::ServiceUnavailable,
                "the gateway is busy, please retry",
            ),
            true,
        )),
        Ok(Err(CollectError::Body(_))) => Err((
            fault(
                StsErrorCode::ValidationError,
                "the request body could not be read",
            ),
            true,
        )),
        Err(_) => Err((
            fault(
                StsErrorCode::ValidationError,
                "the request body did not arrive in time",
            ),
            true,
        )),
    }
}

fn document(status: StatusCode, xml: String) -> Response<Body> {
    let len = xml.len();
    let mut response = Response::new(body::full(xml));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/xml"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    response
}
