//! Where an HTTP request is judged: inside an inspected tunnel (or an absolute-form `http://`
//! request) each request must name the tunnel's host, have unambiguous framing, pass the
//! endpoint's rules, and carry credential placeholders only for hosts they are bound to; then
//! the placeholders are swapped for the real values and the request is forwarded. The response
//! comes back with every real value replaced by its placeholder (`credentials/reflection.rs`).

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

use super::answers::{full, refuse, Refusal, AUDIT_LOG_FULL};
use super::connect::decide_for_owner;
use super::credentials::{
    contains_placeholder, rewrite_body, rewrite_request_head, CredentialError, RedactedBody, Reflections,
};
use super::headers::{check_framing, strip_hop_by_hop, targets_tunnel, wants_upgrade};
use super::intercept::Tunnel;
use super::judge::{judge, judged_head, Malformed};
use super::learning;
use super::rejudged::{rejudged, StillAllowed};
use super::state::PolicyState;
use super::upstream::DialError;
use super::ProxyBody;
use crate::policy::readings::MAX_OVERRIDES;

/// Largest request body read into memory for credential rewriting.
pub const BODY_REWRITE_LIMIT: usize = 1 << 20;
/// How many bodies may be held for rewriting at once (so at most this many MiB).
pub const BODY_REWRITE_SLOTS: usize = 16;
/// How long a body being held for rewriting may take to arrive.
const BODY_REWRITE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

pub async fn handle(req: Request<Incoming>, t: Arc<Tunnel>) -> Result<Response<ProxyBody>, Infallible> {
    Ok(judge_and_forward(req, &t).await)
}

async fn judge_and_forward(req: Request<Incoming>, t: &Tunnel) -> Response<ProxyBody> {
    // Watched from before the state is compared: a reload from here on reaches a WebSocket this
    // request opens.
    let reloads = t.proxy.state.reloads();
    let (mut parts, body) = req.into_parts();
    let method = parts.method.as_str().to_owned();
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
    let host = &t.host_text;
    // Whether the decision may stand (`Auditor::proxy_decision`).
    let audit = |allowed: bool, reason: &str, rule: Option<&str>, credentials: Vec<String>| {
        if !t.proxy.audit.records(allowed) {
            return true;
        }
        t.proxy.audit.proxy_decision(&ProxyDecision {
            allowed,
            method: method.clone(),
            host: host.to_owned(),
            port: t.port,
            path: Some(target.clone()),
            policy: t.policy.as_deref().map(str::to_owned),
            rule: rule.map(str::to_owned),
            reason: reason.to_owned(),
            binary: t.client.binary.as_ref().map(|b| b.display().to_string()),
            credentials,
            client: Some(t.client.addr),
            redirected_from: t.client.redirected_from,
        })
    };

    // A tunnel accepted under an older policy serves no new request (it is being shut down):
    // the agent opens a new connection, which the policy in force judges.
    if !t.proxy.state.is_current(&t.state) {
        audit(false, Refusal::PolicyReloaded.code(), None, vec![]);
        let detail = "the policy was reloaded since this connection was opened; send the request over a new one";
        let mut answer = refuse(Refusal::PolicyReloaded, detail, t.policy.as_deref());
        if parts.version < Version::HTTP_2 {
            answer.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
        }
        return answer;
    }
    if t.sni_mismatch || !targets_tunnel(&parts, &t.host, t.port, t.default_port()) {
        audit(false, Refusal::MisdirectedRequest.code(), None, vec![]);
        let detail =
            format!("this connection is for {}:{}; SNI, Host and :authority must name it", t.host.uri_host(), t.port);
        return refuse(Refusal::MisdirectedRequest, detail, t.policy.as_deref());
    }
    // The upstream reads the host as the proxy judged it, whatever else the spelling sent
    // (case, a trailing dot, the default port written out) would mean to it.
    if parts.headers.contains_key(hyper::header::HOST) {
        if let Ok(value) = hyper::header::HeaderValue::from_str(t.authority()) {
            parts.headers.insert(hyper::header::HOST, value);
        }
    }
    // Only a path is appended to the tunnel's origin: `*` (legal in HTTP/1.1 and as an HTTP/2
    // `:path`) made `https://host:8443*`, whose port the dialler could not read, so it dialled
    // the scheme's default port while the request was judged as the tunnel's.
    if !target.starts_with('/') {
        audit(false, Refusal::BadTarget.code(), None, vec![]);
        let detail = format!("request target {target:?}: only a path starting with `/` is forwarded");
        return refuse(Refusal::BadTarget, detail, t.policy.as_deref());
    }
    if let Err(why) = check_framing(&parts.headers) {
        audit(false, Refusal::AmbiguousFraming.code(), None, vec![]);
        return refuse(Refusal::AmbiguousFraming, format!("request has {why}"), t.policy.as_deref());
    }
    if t.scheme == "http" && carries_placeholder(&parts, &target) {
        audit(false, Refusal::CredentialRequiresTls.code(), None, vec![]);
        let detail = "credential placeholders are only swapped in requests sent over TLS (use https://)";
        return refuse(Refusal::CredentialRequiresTls, detail, t.policy.as_deref());
    }
    if wants_upgrade(&parts.headers) && !upgrades_to_websocket(&parts.headers) {
        audit(false, Refusal::UpgradeRefused.code(), None, vec![]);
        let detail = "only WebSocket upgrades are proxied: other protocols would carry requests no rule judges";
        return refuse(Refusal::UpgradeRefused, detail, t.policy.as_deref());
    }
    let verdict: RequestVerdict = match judge(&t.state.decider, t.endpoint, &parts, &target) {
        Ok(v) => v,
        Err(Malformed::Method(m)) => {
            audit(false, Refusal::MethodNotCanonical.code(), None, vec![]);
            let detail = format!("method {m:?}: methods must be upper-case");
            return refuse(Refusal::MethodNotCanonical, detail, t.policy.as_deref());
        }
        Err(Malformed::Overrides) => {
            audit(false, Refusal::BadRequest.code(), None, vec![]);
            let detail = format!("more than {MAX_OVERRIDES} distinct method overrides (headers and _method)");
            return refuse(Refusal::BadRequest, detail, t.policy.as_deref());
        }
    };
    // The exchange is judged again at each reload, as this request was (every reading of its
    // method, overrides too, and target): its bodies, and a WebSocket it opens, carry on only
    // while the policy in force allows it.
    let still_allowed: StillAllowed = {
        let head = judged_head(&parts);
        let (judged_target, host, port, client) = (target.clone(), t.host.clone(), t.port, t.client.clone());
        Arc::new(move |state: &PolicyState| {
            let host_text = host.to_string();
            let verdict = decide_for_owner(state, &host_text, port, &client);
            verdict.allow
                && verdict
                    .endpoint_ref
                    .is_some_and(|e| judge(&state.decider, e, &head, &judged_target).is_ok_and(|v| v.allow || v.audit))
        })
    };
    // Learning (`learning.rs`): a request the rules refuse goes through and is recorded.
    let learned = !verdict.allow && !verdict.audit && t.proxy.learner.get().is_some();
    if !verdict.allow && !verdict.audit && !learned {
        audit(false, &verdict.reason, Some(&verdict.rule), vec![]);
        let why = if &*verdict.rule == "path-rejected" { Refusal::PathRejected } else { Refusal::RequestDenied };
        return refuse(why, format!("{method} {target}: {}", verdict.reason), verdict.policy.as_deref());
    }
    let overrides = if t.proxy.learner.get().is_some() { learning::method_overrides(&parts) } else { vec![] };
    let report = match rewrite_request_head(&mut parts, host, &t.state.secrets, rewrites_target(t)) {
        Ok(r) => r,
        Err(e) => {
            audit(false, e.code(), Some(&verdict.rule), vec![]);
            return refuse(Refusal::Credential(e.code()), e.to_string(), t.policy.as_deref());
        }
    };
    // Whatever spelling got a placeholder past the check above (`BASIC`, unpadded base64), a
    // value swapped in never leaves over plain HTTP: this request, values and all, is dropped.
    if t.scheme != "https" && !report.credentials.is_empty() {
        audit(false, Refusal::CredentialRequiresTls.code(), None, vec![]);
        let detail = "credential placeholders are only swapped in requests sent over TLS (use https://)";
        return refuse(Refusal::CredentialRequiresTls, detail, t.policy.as_deref());
    }
    // A WebSocket's frames are not scanned for credential values: no WebSocket to a host a
    // credential is bound to (it could echo a value the handshake carries, or hand back one it
    // stored earlier).
    let upgrade = wants_upgrade(&parts.headers);
    if upgrade && (!report.credentials.is_empty() || t.state.secrets.any_bound_to(host)) {
        audit(false, Refusal::UpgradeRefused.code(), None, vec![]);
        let detail = "no WebSocket to a host a credential is bound to: its frames are not scanned for the value";
        return refuse(Refusal::UpgradeRefused, detail, t.policy.as_deref());
    }
    // Bodies are swapped over TLS only (over plain HTTP a placeholder goes out as it is), and
    // never into a protocol upgrade's.
    let body: ProxyBody = if rewrites_bodies(t) && t.scheme == "https" && !upgrade {
        match rewritten_body(body, &mut parts, host, t).await {
            Ok(b) => b,
            Err(resp) => {
                audit(false, "credential_rewrite_failed", Some(&verdict.rule), vec![]);
                return *resp;
            }
        }
    } else {
        body.map_err(Into::into).boxed_unsync()
    };
    let body = rejudged(body, t.proxy.clone(), reloads.clone(), still_allowed.clone());
    let reason = if learned {
        "learned"
    } else if verdict.audit {
        "audit_only"
    } else {
        "allowed"
    };
    learning::request_passed(t, &method, &target, overrides, &report.credentials);
    if !audit(true, reason, Some(&verdict.rule), report.credentials) {
        return refuse(Refusal::AuditLogFull, AUDIT_LOG_FULL, t.policy.as_deref());
    }
    // The target again: the rewrite may have put credential values into it.
    let target = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());

    let reflections = t.state.secrets.reflections();
    if !reflections.is_empty() {
        // Responses are scanned for credential values: ask for bodies that can be read, and
        // whole (a value split between two ranges would be in neither).
        parts.headers.insert(hyper::header::ACCEPT_ENCODING, hyper::header::HeaderValue::from_static("identity"));
        parts.headers.remove(hyper::header::RANGE);
        parts.headers.remove(hyper::header::IF_RANGE);
    }
    let head_only = parts.method == hyper::Method::HEAD;
    let sequential = parts.version == Version::HTTP_11 && !upgrade;
    let agent_upgrade = if upgrade { parts.extensions.remove::<OnUpgrade>() } else { None };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.version = Version::HTTP_11;
    parts.uri = match upstream_uri(t, &target) {
        Ok(u) => u,
        Err(detail) => return refuse(Refusal::BadTarget, detail, t.policy.as_deref()),
    };
    let request = Request::from_parts(parts, body);
    let response = if sequential {
        match send_on_own_connection(t, request).await {
            Ok(r) => r,
            Err(e) => return forward_failed(t, e.as_ref()),
        }
    } else {
        // A protocol upgrade needs an HTTP/1.1 upstream connection (HTTP/2 has no Upgrade).
        let Some(client) = t.state.client(t.endpoint, upgrade) else {
            return refuse(Refusal::NoMatchingPolicy, "endpoint gone", t.policy.as_deref());
        };
        match client.request(request).await {
            Ok(r) => r,
            Err(e) => return forward_failed(t, &e),
        }
    };
    let (mut rparts, rbody) = response.into_parts();
    let switching = rparts.status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let (Some(agent), Some(upstream)) = (agent_upgrade, rparts.extensions.remove::<OnUpgrade>()) {
            // A WebSocket's frames are not scanned: none to a host a credential is now bound to.
            let (host_text, allowed) = (t.host.to_string(), still_allowed.clone());
            let still_allowed = move |state: &PolicyState| allowed(state) && !state.secrets.any_bound_to(&host_text);
            join_upgraded(agent, upstream, t.proxy.clone(), reloads.clone(), still_allowed);
        }
    }
    strip_hop_by_hop(&mut rparts.headers, switching);
    let body = rejudged(rbody.map_err(Into::into).boxed_unsync(), t.proxy.clone(), reloads, still_allowed);
    if reflections.is_empty() {
        return Response::from_parts(rparts, body);
    }
    if rparts.status == StatusCode::PARTIAL_CONTENT {
        audit(false, Refusal::EncodedResponseRefused.code(), Some(&verdict.rule), vec![]);
        let detail = "the upstream sent part of a body though the proxy asked for all of it; responses are scanned for credential values and a part cannot be";
        return refuse(Refusal::EncodedResponseRefused, detail, t.policy.as_deref());
    }
    if let Some(encoding) = unscannable_encoding(&rparts.headers) {
        audit(false, Refusal::EncodedResponseRefused.code(), Some(&verdict.rule), vec![]);
        let detail = format!(
            "the upstream sent a body with Content-Encoding `{encoding}` though the proxy asked for identity; responses are scanned for credential values and a body that cannot be read is not passed on"
        );
        return refuse(Refusal::EncodedResponseRefused, detail, t.policy.as_deref());
    }
    redacted_response(rparts, body, reflections, head_only)
}

/// The response with every credential value replaced by its placeholder: headers now, the body
/// as it streams. A reason phrase is dropped (it is not scanned), and so is `Content-Length`
/// when there is a body, since replacing a value can change its length.
fn redacted_response(
    mut parts: hyper::http::response::Parts,
    body: ProxyBody,
    reflections: Arc<Reflections>,
    head_only: bool,
) -> Response<ProxyBody> {
    reflections.redact_headers(&mut parts.headers);
    parts.extensions.remove::<hyper::ext::ReasonPhrase>();
    let bodiless = head_only
        || parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if bodiless {
        return Response::from_parts(parts, body);
    }
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Response::from_parts(parts, RedactedBody::new(body, reflections).boxed_unsync())
}

/// The response's content coding when it is one the scan cannot read through (anything but
/// `identity`).
fn unscannable_encoding(headers: &hyper::HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("(not text)").split(','))
        .map(str::trim)
        .find(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
        .map(|coding| coding.chars().filter(|c| c.is_ascii_graphic()).take(40).collect())
}

/// Whether the request head names a credential placeholder anywhere (headers or target).
fn carries_placeholder(parts: &hyper::http::request::Parts, target: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(target).collect::<Vec<u8>>();
    contains_placeholder(target.as_bytes())
        || contains_placeholder(&decoded)
        || parts
            .headers
            .values()
            .any(|v| contains_placeholder(v.as_bytes()) || basic_auth_has_placeholder(v.as_bytes()))
}

/// `Authorization: Basic base64(user:password)` with a placeholder inside.
fn basic_auth_has_placeholder(value: &[u8]) -> bool {
    use base64::Engine as _;
    let Some(encoded) = value.strip_prefix(b"Basic ").or_else(|| value.strip_prefix(b"basic ")) else { return false };
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .is_ok_and(|plain| contains_placeholder(&plain))
}

/// `Upgrade: websocket` and nothing else.
fn upgrades_to_websocket(headers: &hyper::HeaderMap) -> bool {
    let values: Vec<&str> = headers.get_all(hyper::header::UPGRADE).iter().filter_map(|v| v.to_str().ok()).collect();
    values.len() == 1 && values[0].trim().eq_ignore_ascii_case("websocket")
}

fn rewrites_bodies(t: &Tunnel) -> bool {
    t.state
        .endpoint(t.endpoint)
        .is_some_and(|e| matches!(&e.inspection, Inspection::Http(rules) if rules.rewrite_body_credentials))
}

fn rewrites_target(t: &Tunnel) -> bool {
    t.state
        .endpoint(t.endpoint)
        .is_some_and(|e| matches!(&e.inspection, Inspection::Http(rules) if rules.rewrite_target_credentials))
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
            Refusal::BodyTooLarge,
            format!("bodies of this endpoint are rewritten and may be at most {BODY_REWRITE_LIMIT} bytes"),
            t.policy.as_deref(),
        ))
    };
    // Bodies held for rewriting share a fixed budget and a deadline, so stalled uploads cannot
    // pin the proxy's memory.
    let Ok(_permit) = t.proxy.rewrite_budget.clone().try_acquire_owned() else {
        return Err(Box::new(refuse(
            Refusal::RewriteBudgetExhausted,
            "too many request bodies are being rewritten at once; retry",
            t.policy.as_deref(),
        )));
    };
    let collected = tokio::time::timeout(BODY_REWRITE_DEADLINE, Limited::new(body, BODY_REWRITE_LIMIT).collect()).await;
    let bytes = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(_)) => return Err(too_large()),
        Err(_) => {
            return Err(Box::new(refuse(
                Refusal::BodyTimeout,
                "the request body did not arrive in time",
                t.policy.as_deref(),
            )))
        }
    };
    let new = match rewrite_body(&bytes, host, &t.state.secrets, BODY_REWRITE_LIMIT) {
        Ok(Some(new)) => Bytes::from(new),
        Ok(None) => bytes,
        Err(CredentialError::BodyTooLarge { .. }) => return Err(too_large()),
        Err(e) => return Err(Box::new(refuse(Refusal::Credential(e.code()), e.to_string(), t.policy.as_deref()))),
    };
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    parts.headers.insert(hyper::header::CONTENT_LENGTH, new.len().into());
    Ok(full(new))
}

/// The URI the request is forwarded to: the tunnel's origin and `target`. The dialler reads the
/// host and port back from it, so it must name exactly the host and port the tunnel was judged
/// for.
fn upstream_uri(t: &Tunnel, target: &str) -> Result<Uri, String> {
    let uri: Uri = format!("{}{target}", t.origin).parse().map_err(|e| format!("{e}"))?;
    let port = uri.port_u16().or(uri.port().is_none().then(|| t.default_port()));
    if !target.starts_with('/') || uri.host() != Some(t.host.uri_host().as_str()) || port != Some(t.port) {
        return Err(format!("request target {target:?} would leave {}:{}", t.host.uri_host(), t.port));
    }
    Ok(uri)
}

/// Pipes the two sides of a switched protocol (WebSocket) together, until either closes or a
/// reload leaves it no longer allowed: its host, port and opening request (as a GET) are judged
/// again, and no credential may be bound to the host.
fn join_upgraded(
    agent: OnUpgrade,
    upstream: OnUpgrade,
    proxy: Arc<super::Proxy>,
    reloads: tokio::sync::watch::Receiver<u64>,
    still_allowed: impl Fn(&PolicyState) -> bool + Send + 'static,
) {
    tokio::spawn(async move {
        let (Ok(a), Ok(u)) = (agent.await, upstream.await) else { return };
        let (mut a, mut u) = (TokioIo::new(a), TokioIo::new(u));
        super::passthrough::copy_while_allowed(&mut a, &mut u, &proxy, reloads, still_allowed).await;
    });
}

/// Sends `request` over the tunnel's own HTTP/1.1 upstream connection, dialling it (checked
/// addresses only) when there is none or the last one closed.
async fn send_on_own_connection(
    t: &Tunnel,
    mut request: Request<ProxyBody>,
) -> Result<hyper::Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    let mut own = t.upstream.lock().await;
    if own.as_ref().is_none_or(|s| s.is_closed()) {
        let connector = t.state.http1_connector(t.endpoint).ok_or("endpoint gone")?;
        let io = connector.connect(request.uri().clone()).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(connection);
        *own = Some(sender);
    }
    let sender = own.as_mut().ok_or("no upstream connection")?;
    sender.ready().await?;
    // On its own connection the request goes in origin form, with its Host header.
    if !request.headers().contains_key(hyper::header::HOST) {
        if let Some(authority) = request.uri().authority() {
            let host = hyper::header::HeaderValue::from_str(authority.as_str())?;
            request.headers_mut().insert(hyper::header::HOST, host);
        }
    }
    let origin: Uri = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").parse()?;
    *request.uri_mut() = origin;
    Ok(sender.send_request(request).await?)
}

/// The answer when forwarding failed: 403 when the upstream's address is not allowed, else 502.
fn forward_failed(t: &Tunnel, e: &(dyn std::error::Error + 'static)) -> Response<ProxyBody> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(dial @ DialError::Blocked(_)) = s.downcast_ref::<DialError>() {
            return refuse(Refusal::BlockedAddress, dial.to_string(), t.policy.as_deref());
        }
        source = s.source();
    }
    let detail = format!("forwarding to {}:{} failed: {}", t.host.uri_host(), t.port, error_chain(e));
    // The chain can hold what the upstream said (an HTTP/2 GOAWAY's debug data), which may echo
    // a credential value the request carried.
    let reflections = t.state.secrets.reflections();
    let detail = match reflections.redact(detail.as_bytes()) {
        Some(redacted) => String::from_utf8_lossy(&redacted).into_owned(),
        None => detail,
    };
    refuse(Refusal::UpstreamFailed, detail, t.policy.as_deref())
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
