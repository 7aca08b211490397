//! The proxy's own answers: every refusal is JSON `{error, detail, reason, policy}` with the
//! status that says what went wrong.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::ProxyBody;

/// A refusal. `reason` is machine-readable (`no_matching_policy`, `credential_endpoint_mismatch`,
/// `misdirected_request`, ...); `detail` is for people.
pub struct Refusal<'a> {
    pub status: StatusCode,
    pub reason: &'a str,
    pub detail: String,
    pub policy: Option<&'a str>,
}

impl Refusal<'_> {
    pub fn into_response(self) -> Response<ProxyBody> {
        let error = match self.status {
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::MISDIRECTED_REQUEST => "misdirected_request",
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::BAD_GATEWAY => "bad_gateway",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            _ => "error",
        };
        let body = json!({ "error": error, "detail": self.detail, "reason": self.reason, "policy": self.policy });
        let mut resp = Response::new(full(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status;
        resp.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        resp
    }
}

/// Shorthand for a refusal response.
pub fn refuse(
    status: StatusCode,
    reason: &str,
    detail: impl Into<String>,
    policy: Option<&str>,
) -> Response<ProxyBody> {
    Refusal { status, reason, detail: detail.into(), policy }.into_response()
}

/// A complete body.
pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}
