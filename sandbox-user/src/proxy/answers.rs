//! The proxy's own answers: every refusal is JSON `{error, detail, reason, policy}` with the
//! status that says what went wrong, both named once per reason by [`Refusal`].

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};
use serde_json::json;

use super::ProxyBody;

/// Why the proxy refused: the reason code that both its audit record and its answer carry, and
/// the answer's status. One list, so what is audited and what the agent is told never disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No endpoint of the policy covers the host and port.
    NoMatchingPolicy,
    /// SNI, `Host` and `:authority` do not all name the connection's host.
    MisdirectedRequest,
    /// The policy was reloaded since the connection was accepted: a new one is judged by it.
    PolicyReloaded,
    /// Both `Content-Length` and `Transfer-Encoding`, or several of one.
    AmbiguousFraming,
    /// A placeholder in a request sent without TLS.
    CredentialRequiresTls,
    /// A protocol upgrade other than WebSocket.
    UpgradeRefused,
    /// A method not written in upper case.
    MethodNotCanonical,
    /// The path as written is refused before any rule reads it (`..`, encoded separators).
    PathRejected,
    /// An L7 rule of the endpoint refused the request.
    RequestDenied,
    /// A request target that names no host and port.
    BadTarget,
    /// A host name that is not one.
    BadHost,
    /// A request the proxy cannot act on as sent.
    BadRequest,
    /// An `https://` request in absolute form instead of through CONNECT.
    AbsoluteHttps,
    /// A request that is not for a proxy.
    NotAProxyRequest,
    /// The host resolves to an address the policy does not let it reach (`ssrf.rs`).
    BlockedAddress,
    /// Transparent mode: a connection to a synthetic address the resolver never handed out.
    SyntheticAddressUnknown,
    /// Transparent mode: a connection whose first bytes are neither TLS nor HTTP.
    NotTlsOrHttp,
    /// The upstream could not be reached.
    UpstreamUnreachable,
    /// The upstream failed mid-request.
    UpstreamFailed,
    /// A response body the proxy cannot inspect for credentials.
    EncodedResponseRefused,
    /// A body to rewrite above the limit.
    BodyTooLarge,
    /// Too many bodies held for rewriting at once.
    RewriteBudgetExhausted,
    /// A body to rewrite that did not arrive in time.
    BodyTimeout,
    /// Learning mode could not record the request.
    LearningFailed,
    /// A credential could not be swapped in: the code of its error (`CredentialError::code`).
    Credential(&'static str),
    /// The audit log reached its limit (`--audit-log-max`): nothing more is allowed.
    AuditLogFull,
}

/// The detail of [`Refusal::AuditLogFull`].
pub const AUDIT_LOG_FULL: &str =
    "the sandbox's audit log reached its limit (--audit-log-max): leash allows nothing it cannot audit";

impl Refusal {
    /// The machine-readable reason (`no_matching_policy`, ...).
    pub fn code(self) -> &'static str {
        match self {
            Self::NoMatchingPolicy => "no_matching_policy",
            Self::MisdirectedRequest => "misdirected_request",
            Self::PolicyReloaded => "policy_reloaded",
            Self::AmbiguousFraming => "ambiguous_framing",
            Self::CredentialRequiresTls => "credential_requires_tls",
            Self::UpgradeRefused => "upgrade_refused",
            Self::MethodNotCanonical => "method_not_canonical",
            Self::PathRejected => "path_rejected",
            Self::RequestDenied => "request_denied",
            Self::BadTarget => "bad_target",
            Self::BadHost => "bad_host",
            Self::BadRequest => "bad_request",
            Self::AbsoluteHttps => "absolute_https",
            Self::NotAProxyRequest => "not_a_proxy_request",
            Self::BlockedAddress => "blocked_address",
            Self::SyntheticAddressUnknown => "synthetic_address_unknown",
            Self::NotTlsOrHttp => "not_tls_or_http",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamFailed => "upstream_failed",
            Self::EncodedResponseRefused => "encoded_response_refused",
            Self::BodyTooLarge => "body_too_large",
            Self::RewriteBudgetExhausted => "rewrite_budget_exhausted",
            Self::BodyTimeout => "body_timeout",
            Self::LearningFailed => "learning_failed",
            Self::Credential(code) => code,
            Self::AuditLogFull => "audit_log_full",
        }
    }

    /// The status of the answer (transparent mode's refusals close the connection instead).
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoMatchingPolicy
            | Self::CredentialRequiresTls
            | Self::RequestDenied
            | Self::BlockedAddress
            | Self::SyntheticAddressUnknown
            | Self::LearningFailed
            | Self::Credential(_) => StatusCode::FORBIDDEN,
            Self::MisdirectedRequest | Self::PolicyReloaded => StatusCode::MISDIRECTED_REQUEST,
            Self::AmbiguousFraming
            | Self::UpgradeRefused
            | Self::MethodNotCanonical
            | Self::PathRejected
            | Self::BadTarget
            | Self::BadHost
            | Self::BadRequest
            | Self::AbsoluteHttps
            | Self::NotAProxyRequest
            | Self::NotTlsOrHttp => StatusCode::BAD_REQUEST,
            Self::UpstreamUnreachable | Self::UpstreamFailed | Self::EncodedResponseRefused => StatusCode::BAD_GATEWAY,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RewriteBudgetExhausted | Self::AuditLogFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// The answer to a refused request: JSON `{error, detail, reason, policy}` with the refusal's
/// status; `detail` is for people.
pub fn refuse(why: Refusal, detail: impl Into<String>, policy: Option<&str>) -> Response<ProxyBody> {
    let status = why.status();
    let error = match status {
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::MISDIRECTED_REQUEST => "misdirected_request",
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::BAD_GATEWAY => "bad_gateway",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        _ => "error",
    };
    let body = json!({ "error": error, "detail": detail.into(), "reason": why.code(), "policy": policy });
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}

/// A complete body.
pub fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Refusal; 24] = [
        Refusal::NoMatchingPolicy,
        Refusal::MisdirectedRequest,
        Refusal::PolicyReloaded,
        Refusal::AmbiguousFraming,
        Refusal::CredentialRequiresTls,
        Refusal::UpgradeRefused,
        Refusal::MethodNotCanonical,
        Refusal::PathRejected,
        Refusal::RequestDenied,
        Refusal::BadTarget,
        Refusal::BadHost,
        Refusal::BadRequest,
        Refusal::AbsoluteHttps,
        Refusal::NotAProxyRequest,
        Refusal::BlockedAddress,
        Refusal::SyntheticAddressUnknown,
        Refusal::NotTlsOrHttp,
        Refusal::UpstreamUnreachable,
        Refusal::UpstreamFailed,
        Refusal::EncodedResponseRefused,
        Refusal::BodyTooLarge,
        Refusal::RewriteBudgetExhausted,
        Refusal::BodyTimeout,
        Refusal::LearningFailed,
    ];

    /// Audit records and answers are matched on these codes: each reason has its own, in snake
    /// case, and an error status.
    #[test]
    fn every_refusal_has_its_own_code_and_an_error_status() {
        let codes: std::collections::HashSet<&str> = ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), ALL.len(), "two reasons share a code");
        for r in ALL {
            assert!(r.code().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{r:?}: {}", r.code());
            assert!(r.status().is_client_error() || r.status().is_server_error(), "{r:?}: {}", r.status());
        }
        let credential = Refusal::Credential("credential_endpoint_mismatch");
        assert_eq!((credential.code(), credential.status()), ("credential_endpoint_mismatch", StatusCode::FORBIDDEN));
    }

    /// The answer says the refusal's code with its status, the policy and the detail.
    #[tokio::test]
    async fn the_answer_carries_the_refusals_code_and_status() {
        let resp = refuse(Refusal::PathRejected, "GET /a/../b: path rejected", Some("github"));
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({ "error": "bad_request", "reason": "path_rejected", "policy": "github",
                    "detail": "GET /a/../b: path rejected" })
        );
    }
}
