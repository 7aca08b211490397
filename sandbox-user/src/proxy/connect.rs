//! Handling one request to the proxy: `CONNECT host:port` is judged against the policy and, when
//! allowed, answered 200 and turned into a byte tunnel to the upstream. Every decision is audited.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::audit::{Auditor, ProxyDecision};
use crate::policy::{CompiledPolicy, NetworkDecision};

use super::ssrf::normalize_host;
use super::upstream::{dial_checked, DialError};

type Body = Full<Bytes>;

pub async fn handle(
    req: Request<hyper::body::Incoming>,
    client: SocketAddr,
    policy: Arc<CompiledPolicy>,
    audit: Auditor,
) -> Result<Response<Body>, std::convert::Infallible> {
    if req.method() != Method::CONNECT {
        return Ok(error(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_request",
            "this proxy only tunnels CONNECT requests (https://); plain http:// forwarding is not supported yet",
            None,
        ));
    }
    let Some((raw_host, port)) = target(&req) else {
        return Ok(error(StatusCode::BAD_REQUEST, "bad_target", "CONNECT needs host:port", None));
    };
    let normalized = match normalize_host(&raw_host) {
        Ok(h) => h,
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, "bad_host", &e.to_string(), None)),
    };
    let host = normalized.to_string();
    let decision = policy.network_decision(&host, port);
    let (allowed, policy_name, reason) = match &decision {
        NetworkDecision::Allow { policy, .. } => (true, Some(policy.clone()), "allowed"),
        NetworkDecision::Deny => (false, None, "no_matching_policy"),
    };
    audit.proxy_decision(&ProxyDecision {
        allowed,
        method: "CONNECT".into(),
        host: host.clone(),
        port,
        policy: policy_name.clone(),
        reason: reason.into(),
        client: Some(client),
    });
    if !allowed {
        return Ok(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!("no network policy allows {host}:{port}"),
            Some(reason),
        ));
    }
    let addresses = super::addresses::for_target(&policy, &normalized, port);
    let upstream = match dial_checked(&normalized, port, &addresses).await {
        Ok(s) => s,
        Err(e @ DialError::Blocked(_)) => {
            return Ok(error(StatusCode::FORBIDDEN, "forbidden", &e.to_string(), Some("blocked_address")));
        }
        Err(e) => return Ok(error(StatusCode::BAD_GATEWAY, "upstream_unreachable", &e.to_string(), None)),
    };
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut client_io = TokioIo::new(upgraded);
            let mut upstream = upstream;
            let _ = tokio::io::copy_bidirectional(&mut client_io, &mut upstream).await;
        }
    });
    Ok(Response::new(Body::default()))
}

/// Host (as written, IPv6 in brackets) and port of a CONNECT request's authority.
fn target<B>(req: &Request<B>) -> Option<(String, u16)> {
    let authority = req.uri().authority()?;
    let port = authority.port_u16()?;
    let host = authority.host().to_owned();
    (!host.is_empty()).then_some((host, port))
}

/// A JSON error answer `{error, detail, reason}`.
fn error(status: StatusCode, error: &str, detail: &str, reason: Option<&str>) -> Response<Body> {
    let body = json!({ "error": error, "detail": detail, "reason": reason.unwrap_or(error) }).to_string();
    let mut resp = Response::new(Body::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}
