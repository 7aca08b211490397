//! Where an HTTP request is judged: inside an inspected tunnel (or an absolute-form `http://`
//! request) each request must name the tunnel's host, have unambiguous framing, pass the
//! endpoint's rules, and carry credential placeholders only for hosts they are bound to; then
//! the placeholders are swapped for the real values and the request is forwarded.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::audit::ProxyDecision;
use crate::policy::{Inspection, RequestVerdict};

use super::answers::{full, refuse};
use super::credentials::{rewrite_body, rewrite_request_head, CredentialError};
use super::headers::{check_framing, strip_hop_by_hop, targets_tunnel, wants_upgrade};
use super::intercept::Tunnel;
use super::upstream::DialError;
use super::ProxyBody;

/// Largest request body read into memory for credential rewriting.
pub const BODY_REWRITE_LIMIT: usize = 1 << 20;

pub async fn handle(req: Request<Incoming>, t: Arc<Tunnel>) -> Result<Response<ProxyBody>, Infallible> {
    Ok(judge_and_forward(req, &t).await)
}

async fn judge_and_forward(req: Request<Incoming>, t: &Tunnel) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let host = t.host.to_string();
    let audit = |allowed: bool, reason: &str, rule: Option<&str>, credentials: Vec<String>| {
        if !t.proxy.audit.records(allowed) {
            return;
        }
        t.proxy.audit.proxy_decision(&ProxyDecision {
            allowed,
            method: method.clone(),
            host: host.clone(),
            port: t.port,
            path: Some(target.clone()),
            policy: t.policy.as_deref().map(str::to_owned),
            rule: rule.map(str::to_owned),
            reason: reason.to_owned(),
            binary: t.binary.as_ref().map(|b| b.display().to_string()),
            credentials,
            client: Some(t.client),
        });
    };

    if t.sni_mismatch || !targets_tunnel(&parts, &t.host, t.port, t.default_port()) {
        audit(false, "misdirected_request", None, vec![]);
        let detail = format!("this connection is for {}:{}; SNI, Host and :authority must name it", t.host.uri_host(), t.port);
        return refuse(StatusCode::MISDIRECTED_REQUEST, "misdirected_request", detail, t.policy.as_deref());
    }
    if let Err(why) = check_framing(&parts.headers) {
        audit(false, "ambiguous_framing", None, vec![]);
        return refuse(StatusCode::BAD_REQUEST, "ambiguous_framing", format!("request has {why}"), t.policy.as_deref());
    }
    let verdict: RequestVerdict = t.state.decider.request(t.endpoint, &method, &target);
    if !verdict.allow && !verdict.audit {
        audit(false, &verdict.reason, Some(&verdict.rule), vec![]);
        let reason = if &*verdict.rule == "path-rejected" { "path_rejected" } else { "request_denied" };
        let status = if reason == "path_rejected" { StatusCode::BAD_REQUEST } else { StatusCode::FORBIDDEN };
        return refuse(status, reason, format!("{method} {target}: {}", verdict.reason), verdict.policy.as_deref());
    }
    let report = match rewrite_request_head(&mut parts, &host, &t.state.secrets) {
        Ok(r) => r,
        Err(e) => {
            audit(false, e.code(), Some(&verdict.rule), vec![]);
            return refuse(StatusCode::FORBIDDEN, e.code(), e.to_string(), t.policy.as_deref());
        }
    };
    let body: ProxyBody = if rewrites_bodies(t) {
        match rewritten_body(body, &mut parts, &host, t).await {
            Ok(b) => b,
            Err(resp) => {
                audit(false, "credential_rewrite_failed", Some(&verdict.rule), vec![]);
                return *resp;
            }
        }
    } else {
        body.map_err(Into::into).boxed_unsync()
    };
    let reason = if verdict.audit { "audit_only" } else { "allowed" };
    audit(true, reason, Some(&verdict.rule), report.credentials);
    // The target again: the rewrite may have put credential values into it.
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());

    let upgrade = wants_upgrade(&parts.headers);
    let agent_upgrade = if upgrade { parts.extensions.remove::<OnUpgrade>() } else { None };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.version = Version::HTTP_11;
    parts.uri = match upstream_uri(t, &target) {
        Ok(u) => u,
        Err(detail) => return refuse(StatusCode::BAD_REQUEST, "bad_target", detail, t.policy.as_deref()),
    };
    // A protocol upgrade needs an HTTP/1.1 upstream connection (HTTP/2 has no Upgrade).
    let client = if upgrade { &t.proxy.client_h1 } else { &t.proxy.client };
    let response = match client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => return forward_failed(t, &e),
    };
    let (mut rparts, rbody) = response.into_parts();
    let switching = rparts.status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let (Some(agent), Some(upstream)) = (agent_upgrade, rparts.extensions.remove::<OnUpgrade>()) {
            join_upgraded(agent, upstream);
        }
    }
    strip_hop_by_hop(&mut rparts.headers, switching);
    Response::from_parts(rparts, rbody.map_err(Into::into).boxed_unsync())
}

fn rewrites_bodies(t: &Tunnel) -> bool {
    let Some(policy) = t.state.policy.network_policies().get(t.endpoint.policy as usize) else { return false };
    let Some(endpoint) = policy.endpoints.get(t.endpoint.endpoint as usize) else { return false };
    matches!(&endpoint.inspection, Inspection::Http(rules) if rules.rewrite_body_credentials)
}

/// Reads the body (bounded), swaps placeholders bound to `host`, fixes Content-Length.
async fn rewritten_body(
    body: Incoming,
    parts: &mut hyper::http::request::Parts,
    host: &str,
    t: &Tunnel,
) -> Result<ProxyBody, Box<Response<ProxyBody>>> {
    let too_large = || {
        Box::new(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("bodies of this endpoint are rewritten and may be at most {BODY_REWRITE_LIMIT} bytes"),
            t.policy.as_deref(),
        ))
    };
    let bytes = match Limited::new(body, BODY_REWRITE_LIMIT).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Err(too_large()),
    };
    let new = match rewrite_body(&bytes, host, &t.state.secrets, BODY_REWRITE_LIMIT) {
        Ok(Some(new)) => Bytes::from(new),
        Ok(None) => bytes,
        Err(CredentialError::BodyTooLarge { .. }) => return Err(too_large()),
        Err(e) => return Err(Box::new(refuse(StatusCode::FORBIDDEN, e.code(), e.to_string(), t.policy.as_deref()))),
    };
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    parts.headers.insert(hyper::header::CONTENT_LENGTH, new.len().into());
    Ok(full(new))
}

fn upstream_uri(t: &Tunnel, target: &str) -> Result<Uri, String> {
    let authority = if t.port == t.default_port() { t.host.uri_host() } else { format!("{}:{}", t.host.uri_host(), t.port) };
    format!("{}://{authority}{target}", t.scheme).parse().map_err(|e| format!("{e}"))
}

/// Pipes the two sides of a switched protocol (WebSocket) together.
fn join_upgraded(agent: OnUpgrade, upstream: OnUpgrade) {
    tokio::spawn(async move {
        let (Ok(a), Ok(u)) = (agent.await, upstream.await) else { return };
        let (mut a, mut u) = (TokioIo::new(a), TokioIo::new(u));
        let _ = tokio::io::copy_bidirectional(&mut a, &mut u).await;
    });
}

/// The answer when forwarding failed: 403 when the upstream's address is not allowed, else 502.
fn forward_failed(t: &Tunnel, e: &(dyn std::error::Error + 'static)) -> Response<ProxyBody> {
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(dial @ DialError::Blocked(_)) = s.downcast_ref::<DialError>() {
            return refuse(StatusCode::FORBIDDEN, "blocked_address", dial.to_string(), t.policy.as_deref());
        }
        source = s.source();
    }
    let detail = format!("forwarding to {}:{} failed: {}", t.host.uri_host(), t.port, error_chain(e));
    refuse(StatusCode::BAD_GATEWAY, "upstream_failed", detail, t.policy.as_deref())
}

/// An error and its sources on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
