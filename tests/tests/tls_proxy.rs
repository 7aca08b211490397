//! The TLS-inspecting proxy against local TLS upstreams, driven by a Rust client: `leash proxy`
//! runs standalone (no sandbox), the client CONNECTs through it, trusts only leash's CA, and
//! speaks HTTP/1.1 or HTTP/2 (or raw bytes) inside the tunnel; the upstream reports what it
//! received. Every refusal is checked together with its positive control, and with the
//! upstream's request counter (a refused request must reach nothing).

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use leash_tests::upstream::*;
use leash_tests::{local_policy, require_root, wait_until};

/// A credential value; it must reach bound upstreams and nothing else (logs included).
const SECRET: &str = "real-token-7d1f0c9b3e";
const GH_SECRET: &str = "ghs_realGitToken4242";
const CREDS: &str = "TOK=real-token-7d1f0c9b3e\nGH=ghs_realGitToken4242\n";

const H1: &[&str] = &["http/1.1"];
const H2: &[&str] = &["h2"];

fn body(b: &str) -> Full<Bytes> {
    Full::new(Bytes::from(b.to_owned()))
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// See [`leash_tests::local_policy`].
fn policy(endpoints: &str, credentials: &str) -> String {
    local_policy(endpoints, credentials)
}

/// An inspected endpoint for `localhost:port` (loopback allowed) with extra keys (each line
/// indented by 8).
fn rest_localhost(port: u16, extra: &str) -> String {
    format!("      - host: localhost\n        port: {port}\n        protocol: rest\n        allowed_ips: [127.0.0.0/8]\n{extra}")
}

fn start(policy: &str, upstreams: &[&Upstream]) -> StandaloneProxy {
    let cas: Vec<&std::path::Path> =
        upstreams.iter().filter(|u| !u.ca_pem.as_os_str().is_empty()).map(|u| u.ca_pem.as_path()).collect();
    StandaloneProxy::start(policy, &cas, CREDS)
}

async fn session(proxy: &StandaloneProxy, host: &str, port: u16, alpn: &[&'static str]) -> Session {
    Session::open(proxy.addr, &format!("{host}:{port}"), &TlsOptions::new(&proxy.ca_pem, host, alpn)).await
}

async fn tunnel(proxy: &StandaloneProxy, host: &str, port: u16, alpn: &[&'static str]) -> Tunnel {
    Tunnel::open(proxy.addr, &format!("{host}:{port}"), &TlsOptions::new(&proxy.ca_pem, host, alpn)).await
}

/// Fails if any of `values` appears in the proxy's stderr or audit log.
fn assert_not_logged(proxy: &StandaloneProxy, values: &[&str]) {
    let (stderr, audit) = (proxy.stderr(), proxy.audit());
    for v in values {
        assert!(!stderr.contains(v), "a credential value appears in the proxy's stderr:\n{stderr}");
        assert!(!audit.contains(v), "a credential value appears in the audit log:\n{audit}");
    }
}

/// Audit events about `path` (the request target as sent).
fn audit_for(proxy: &StandaloneProxy, path: &str) -> Vec<serde_json::Value> {
    proxy.audit_events().into_iter().filter(|e| e["http_request"]["url"]["path"] == path).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Rules, audit mode, protocols, WebSocket
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_get_passes_and_denied_method_or_path_gets_403() {
    let up = Upstream::https();
    let ep = rest_localhost(
        up.port(),
        "        rules:\n          - allow: { method: GET, path: \"/allowed/**\" }\n          - allow: { method: POST, path: \"/allowed/post\" }\n        deny_rules:\n          - { method: GET, path: \"/allowed/private/**\" }\n",
    );
    let proxy = start(&policy(&ep, ""), &[&up]);
    let mut s = session(&proxy, "localhost", up.port(), H1).await;

    let ok = s.get("/allowed/x?q=1").await;
    assert_eq!(ok.status, 200, "allowed GET: {ok}");
    let j = ok.json();
    assert_eq!(
        (j["method"].as_str(), j["path"].as_str(), j["sni"].as_str()),
        (Some("GET"), Some("/allowed/x?q=1"), Some("localhost")),
        "{j}"
    );
    assert_eq!(up.count(), 1);

    let post = s
        .send(s.request("POST", "/allowed/post").header("content-type", "text/plain").body(body("hello body")).unwrap())
        .await;
    assert_eq!(post.status, 200, "allowed POST: {post}");
    assert_eq!(post.json()["body"], "hello body");
    assert_eq!(up.count(), 2);

    for (method, path) in
        [("DELETE", "/allowed/x"), ("POST", "/allowed/x"), ("GET", "/secret"), ("GET", "/allowed/private/key")]
    {
        let r = s.send(s.request(method, path).body(empty()).unwrap()).await;
        assert_eq!(r.status, 403, "{method} {path} must be refused: {r}");
        assert_eq!(r.reason(), "request_denied", "{method} {path}: {r}");
        assert_eq!(r.json()["error"], "forbidden", "{r}");
        assert_eq!(up.count(), 2, "{method} {path} reached the upstream");
        let events = audit_for(&proxy, path);
        assert!(
            events.iter().any(|e| e["disposition_id"] == 2 && e["http_request"]["http_method"] == method),
            "no audit denial for {method} {path}: {}",
            proxy.audit()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_enforcement_logs_audit_only_and_lets_the_request_through() {
    let up = Upstream::https();
    let ep = rest_localhost(
        up.port(),
        "        enforcement: audit\n        rules:\n          - allow: { method: GET, path: \"/allowed/**\" }\n",
    );
    let proxy = start(&policy(&ep, ""), &[&up]);
    let mut s = session(&proxy, "localhost", up.port(), H1).await;

    let r = s.send(s.request("DELETE", "/not/allowed").body(empty()).unwrap()).await;
    assert_eq!(r.status, 200, "audit mode must let a refused request through: {r}");
    assert_eq!(up.count(), 1);
    assert_eq!(up.last().unwrap().method, "DELETE");
    let events = audit_for(&proxy, "/not/allowed");
    assert!(
        events.iter().any(|e| e["unmapped"]["reason"] == "audit_only" && e["http_request"]["http_method"] == "DELETE"),
        "no audit_only event for DELETE /not/allowed: {}",
        proxy.audit()
    );
    // Control: a request the rules allow is logged as allowed, not as an audit finding.
    let ok = s.get("/allowed/y").await;
    assert_eq!(ok.status, 200, "{ok}");
    assert!(audit_for(&proxy, "/allowed/y").iter().all(|e| e["unmapped"]["reason"] == "allowed"), "{}", proxy.audit());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_on_both_legs() {
    let up = Upstream::https();
    let proxy = start(&policy(&rest_localhost(up.port(), "        access: full\n"), ""), &[&up]);
    let mut s = session(&proxy, "localhost", up.port(), H2).await;
    assert_eq!(s.alpn.as_deref(), Some("h2"), "the proxy must offer h2 to the agent");
    let r = s.get("/two").await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.version, "HTTP/2.0", "agent leg");
    let j = r.json();
    assert_eq!(j["version"], "HTTP/2.0", "upstream leg: {j}");
    assert_eq!(j["alpn"], "h2", "{j}");
    assert_eq!(j["path"], "/two");
    // Several streams on the one connection.
    for i in 0..3 {
        assert_eq!(s.get(&format!("/two/{i}")).await.status, 200);
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_agent_leg_and_the_upstream_leg_follows_upstream_alpn() {
    let both = Upstream::https();
    let h1_only = Upstream::https_h1_only();
    let eps = format!(
        "{}{}",
        rest_localhost(both.port(), "        access: full\n"),
        rest_localhost(h1_only.port(), "        access: full\n")
    );
    let proxy = start(&policy(&eps, ""), &[&both, &h1_only]);

    // Agent HTTP/1.1 -> upstream offering h2: the upstream leg is whatever ALPN negotiated.
    let mut s = session(&proxy, "localhost", both.port(), H1).await;
    assert_eq!(s.alpn.as_deref(), Some("http/1.1"));
    let r = s.get("/one").await;
    assert_eq!((r.status, r.version.as_str()), (200, "HTTP/1.1"), "{r}");
    let j = r.json();
    let expected = if j["alpn"] == "h2" { "HTTP/2.0" } else { "HTTP/1.1" };
    assert_eq!(j["version"], expected, "the upstream's version must match its ALPN: {j}");

    // Agent h2 -> upstream that speaks only HTTP/1.1.
    let mut s = session(&proxy, "localhost", h1_only.port(), H2).await;
    let r = s.get("/h2-to-h1").await;
    assert_eq!((r.status, r.version.as_str()), (200, "HTTP/2.0"), "{r}");
    let j = r.json();
    assert_eq!((j["version"].as_str(), j["alpn"].as_str()), (Some("HTTP/1.1"), Some("http/1.1")), "{j}");

    // Agent HTTP/1.1 -> HTTP/1.1 upstream.
    let mut s = session(&proxy, "localhost", h1_only.port(), H1).await;
    let r = s.get("/h1-to-h1").await;
    assert_eq!(r.json()["version"], "HTTP/1.1", "{r}");
    assert_eq!((both.count(), h1_only.count()), (1, 2));
}

fn ws_request(port: u16) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

async fn websocket_round_trip(up: &Upstream) {
    let proxy = start(
        &policy(&rest_localhost(up.port(), "        rules:\n          - allow: { method: GET, path: \"/ws\" }\n"), ""),
        &[up],
    );
    let mut t = tunnel(&proxy, "localhost", up.port(), H1).await;
    let r = t.exchange(&ws_request(up.port())).await.expect("upgrade request");
    assert_eq!(r.status, 101, "expected 101 Switching Protocols, got {r}; upstream saw {:?}", up.seen());
    assert_eq!(
        r.headers.get("upgrade").map(|v| v.to_str().unwrap_or("").to_ascii_lowercase()),
        Some("websocket".into()),
        "{r:?}"
    );
    let seen = up.last().expect("the upstream saw the upgrade");
    assert_eq!(seen.header("upgrade"), Some("websocket"), "upstream saw {seen:?}");
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let msg = b"hello through leash\n";
    t.tls.write_all(msg).await.unwrap();
    t.tls.flush().await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(STEP, t.tls.read_exact(&mut back)).await.expect("echo timed out").expect("reading the echo");
    assert_eq!(&back, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_through_an_allowed_endpoint() {
    // The usual upstream: ALPN offers h2 and http/1.1 (an upgrade needs HTTP/1.1 upstream).
    websocket_round_trip(&Upstream::https()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_to_an_http1_only_upstream() {
    websocket_round_trip(&Upstream::https_h1_only()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_refused_by_rules_gets_403() {
    let up = Upstream::https_h1_only();
    let proxy = start(
        &policy(
            &rest_localhost(up.port(), "        rules:\n          - allow: { method: GET, path: \"/api/**\" }\n"),
            "",
        ),
        &[&up],
    );
    let mut t = tunnel(&proxy, "localhost", up.port(), H1).await;
    let r = t.exchange(&ws_request(up.port())).await.expect("upgrade request");
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(r.reason(), "request_denied", "{r}");
    assert_eq!(up.count(), 0, "the refused upgrade reached the upstream");
    let mut s = session(&proxy, "localhost", up.port(), H1).await;
    assert_eq!(s.get("/api/x").await.status, 200, "control: an allowed path passes");
    assert_eq!(up.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Credential placeholders
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_host_receives_the_real_token() {
    let up = Upstream::https();
    let proxy =
        start(&policy(&rest_localhost(up.port(), "        access: full\n"), "  TOK: { hosts: [localhost] }\n"), &[&up]);
    for alpn in [H1, H2] {
        let mut s = session(&proxy, "localhost", up.port(), alpn).await;
        let req = s
            .request("GET", "/me")
            .header("authorization", "Bearer leash:resolve:env:TOK")
            .header("x-api-key", "openshell:resolve:env:TOK")
            .body(empty())
            .unwrap();
        let r = s.send(req).await;
        assert_eq!(r.status, 200, "{alpn:?}: {r}");
        let seen = up.last().unwrap();
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {SECRET}").as_str()),
            "{alpn:?}: upstream saw {seen:?}"
        );
        assert_eq!(seen.header("x-api-key"), Some(SECRET), "openshell spelling, {alpn:?}");
    }
    let events = audit_for(&proxy, "/me");
    assert!(
        events.iter().any(|e| e["unmapped"]["credentials"] == serde_json::json!(["TOK"])),
        "the audit names the credential used: {}",
        proxy.audit()
    );
    assert_not_logged(&proxy, &[SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_in_the_request_target_is_swapped_for_the_bound_host() {
    let up = Upstream::https();
    let keys = "        access: full\n        request_target_credential_rewrite: true\n";
    let proxy = start(&policy(&rest_localhost(up.port(), keys), "  TOK: { hosts: [localhost] }\n"), &[&up]);
    let mut wrong = Vec::new();
    for alpn in [H1, H2] {
        for target in
            ["/q?key=leash:resolve:env:TOK", "/q?key=leash%3Aresolve%3Aenv%3ATOK", "/p/leash:resolve:env:TOK/x"]
        {
            let mut s = session(&proxy, "localhost", up.port(), alpn).await;
            let r = s.get(target).await;
            let seen = up.last().map(|s| s.target).unwrap_or_default();
            let want = target.replace("leash%3Aresolve%3Aenv%3ATOK", SECRET).replace("leash:resolve:env:TOK", SECRET);
            if r.status != 200 || seen != want {
                wrong.push(format!(
                    "{alpn:?} GET {target}: answered {}, upstream received {seen:?}, expected {want:?}",
                    r.status
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "placeholders in the request target must be replaced:\n{}", wrong.join("\n"));
    assert_not_logged(&proxy, &[SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_for_an_unbound_host_is_403_and_never_forwarded() {
    let up = Upstream::https();
    // Two names for one upstream: `localhost` is bound to TOK, `127.0.0.1` is not.
    let eps = format!(
        "{}      - host: 127.0.0.1\n        port: {}\n        protocol: rest\n        access: full\n",
        rest_localhost(up.port(), "        access: full\n"),
        up.port()
    );
    let proxy = start(&policy(&eps, "  TOK: { hosts: [localhost] }\n"), &[&up]);

    let mut s = session(&proxy, "127.0.0.1", up.port(), H1).await;
    let with = |s: &Session, value: &str| {
        s.request("GET", "/unbound").header("authorization", format!("Bearer {value}")).body(empty()).unwrap()
    };
    let r = s.send(with(&s, "leash:resolve:env:TOK")).await;
    assert_eq!(r.status, 403, "{r}");
    assert_eq!(r.reason(), "credential_endpoint_mismatch", "{r}");
    assert_eq!(up.count(), 0, "a request with a placeholder for another host reached the upstream");
    // A placeholder naming no declared credential is refused the same way, even on a bound host.
    let mut b = session(&proxy, "localhost", up.port(), H1).await;
    let r = b
        .send(
            b.request("GET", "/unknown")
                .header("authorization", "Bearer leash:resolve:env:NOPE")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!((r.status, r.reason().as_str()), (403, "credential_endpoint_mismatch"), "{r}");
    assert_eq!(up.count(), 0);
    // Controls: the same host without a placeholder passes; the bound host gets the value.
    let r = s.send(with(&s, "ordinary")).await;
    assert_eq!(r.status, 200, "{r}");
    let r = b.send(with(&b, "leash:resolve:env:TOK")).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(up.count(), 2);
    assert_eq!(up.seen()[0].header("authorization"), Some("Bearer ordinary"));
    assert_eq!(up.seen()[0].sni, None, "an IP literal target sends no SNI");
    assert!(!up.seen()[0].everything().contains(SECRET));
    assert!(
        proxy.audit().contains("credential_endpoint_mismatch"),
        "the mismatch is an audit finding: {}",
        proxy.audit()
    );
    assert_not_logged(&proxy, &[SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_style_basic_auth_placeholder_is_swapped() {
    let up = Upstream::https();
    let proxy =
        start(&policy(&rest_localhost(up.port(), "        access: full\n"), "  GH: { hosts: [localhost] }\n"), &[&up]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut s = session(&proxy, "localhost", up.port(), H1).await;
    let auth = format!("Basic {}", b64.encode("x-access-token:leash:resolve:env:GH"));
    let r = s
        .send(
            s.request("GET", "/org/repo.git/info/refs?service=git-upload-pack")
                .header("authorization", auth)
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    let seen = up.last().unwrap();
    let got = seen.header("authorization").expect("authorization forwarded");
    let encoded = got.strip_prefix("Basic ").unwrap_or_else(|| panic!("not Basic: {got}"));
    let decoded = String::from_utf8(b64.decode(encoded).expect("valid base64")).unwrap();
    assert_eq!(decoded, format!("x-access-token:{GH_SECRET}"));
    assert_not_logged(&proxy, &[GH_SECRET, encoded]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_placeholders_are_swapped_only_where_the_endpoint_opts_in() {
    let opted = Upstream::https();
    let plain = Upstream::https();
    let eps = format!(
        "{}{}",
        rest_localhost(opted.port(), "        access: full\n        request_body_credential_rewrite: true\n"),
        rest_localhost(plain.port(), "        access: full\n")
    );
    let proxy = start(&policy(&eps, "  TOK: { hosts: [localhost] }\n"), &[&opted, &plain]);
    let sent = r#"{"token":"leash:resolve:env:TOK","n":1}"#;
    for (up, alpn) in [(&opted, H1), (&plain, H1), (&opted, H2), (&plain, H2)] {
        let mut s = session(&proxy, "localhost", up.port(), alpn).await;
        let r = s
            .send(s.request("POST", "/body").header("content-type", "application/json").body(body(sent)).unwrap())
            .await;
        assert_eq!(r.status, 200, "{r}");
    }
    let want = format!(r#"{{"token":"{SECRET}","n":1}}"#);
    for seen in opted.seen() {
        assert_eq!(String::from_utf8_lossy(&seen.body), want, "opted-in endpoint, {}", seen.version);
        if let Some(cl) = seen.header("content-length") {
            assert_eq!(cl, want.len().to_string(), "Content-Length must match the rewritten body");
        }
    }
    for seen in plain.seen() {
        assert_eq!(
            String::from_utf8_lossy(&seen.body),
            sent,
            "without the opt-in the body must pass unchanged, {}",
            seen.version
        );
    }
    assert_eq!((opted.count(), plain.count()), (2, 2));
    assert_not_logged(&proxy, &[SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_http_request_is_judged_and_never_gets_credentials() {
    let up = Upstream::plain();
    let ep = format!(
        "      - host: localhost\n        port: {}\n        protocol: rest\n        allowed_ips: [127.0.0.0/8]\n        rules:\n          - allow: {{ method: GET, path: \"/allowed/**\" }}\n",
        up.port()
    );
    let proxy = start(&policy(&ep, "  TOK: { hosts: [localhost] }\n"), &[]);
    use tokio::io::AsyncWriteExt as _;
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let p = up.port();
    // Credentials are swapped only into requests that travel over TLS.
    let req = format!("GET http://localhost:{p}/allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\nAuthorization: Bearer leash:resolve:env:TOK\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let r = tokio::time::timeout(STEP, read_response(&mut tcp)).await.unwrap().unwrap();
    assert_eq!((r.status, r.reason().as_str()), (403, "credential_requires_tls"), "{r}");
    assert_eq!(up.count(), 0);
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(format!("GET http://localhost:{p}/allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let r = tokio::time::timeout(STEP, read_response(&mut tcp)).await.unwrap().unwrap();
    assert_eq!(r.status, 200, "{r}");
    tcp.write_all(format!("GET http://localhost:{p}/secret HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let r = tokio::time::timeout(STEP, read_response(&mut tcp)).await.unwrap().unwrap();
    assert_eq!((r.status, r.reason().as_str()), (403, "request_denied"), "{r}");
    assert_eq!(up.count(), 1);
    assert_not_logged(&proxy, &[SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_skip_endpoint_is_tunnelled_untouched() {
    let up = Upstream::https();
    let ep = format!("      - host: localhost\n        port: {}\n        protocol: rest\n        access: full\n        tls: skip\n        allowed_ips: [127.0.0.0/8]\n", up.port());
    let proxy = start(&policy(&ep, "  TOK: { hosts: [localhost] }\n"), &[&up]);
    // The agent sees the upstream's own certificate (leash's CA would not verify it)...
    let opts = TlsOptions::new(&up.ca_pem, "localhost", H1);
    let tls = tls_over(connect(proxy.addr, &format!("localhost:{}", up.port())).await.expect("CONNECT"), &opts)
        .await
        .expect("TLS straight to the upstream through the tunnel");
    let mut s = Session::over(tls, &format!("localhost:{}", up.port())).await;
    // ...and the proxy sees nothing, so it rewrites nothing.
    let r = s
        .send(s.request("GET", "/raw").header("authorization", "Bearer leash:resolve:env:TOK").body(empty()).unwrap())
        .await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(up.last().unwrap().header("authorization"), Some("Bearer leash:resolve:env:TOK"));
    // Control: leash's CA is not what the agent sees on this endpoint.
    let leash_opts = TlsOptions::new(&proxy.ca_pem, "localhost", H1);
    let tcp = connect(proxy.addr, &format!("localhost:{}", up.port())).await.expect("CONNECT");
    assert!(tls_over(tcp, &leash_opts).await.is_err(), "a tls: skip endpoint must not be intercepted");
}

// ---------------------------------------------------------------------------------------------
// 3. Fronting, smuggling, paths, hosts, addresses
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_other_than_the_connect_host_is_421() {
    let up = Upstream::https();
    let proxy = start(&policy(&rest_localhost(up.port(), "        access: full\n"), ""), &[&up]);
    let target = format!("localhost:{}", up.port());
    for alpn in [H1, H2] {
        // Whichever name leash's leaf is for (the CONNECT host or the SNI), the handshake is
        // not the refusal under test: the request inside is.
        let fronted = TlsOptions {
            ca_pem: proxy.ca_pem.clone(),
            sni: "other.localhost".into(),
            verify_as: vec!["localhost".into(), "other.localhost".into()],
            alpn: alpn.to_vec(),
        };
        let mut s = Session::open(proxy.addr, &target, &fronted).await;
        let r = s.get("/fronted").await;
        assert_eq!(r.status, 421, "{alpn:?}: {r}");
        assert_eq!(r.reason(), "misdirected_request", "{r}");
    }
    assert_eq!(up.count(), 0, "a fronted request reached the upstream");
    // Control: the matching SNI passes.
    let mut s = session(&proxy, "localhost", up.port(), H1).await;
    assert_eq!(s.get("/fronted").await.status, 200);
    assert_eq!(up.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_other_than_the_connect_host_is_421() {
    let up = Upstream::https();
    let proxy = start(&policy(&rest_localhost(up.port(), "        access: full\n"), ""), &[&up]);
    let p = up.port();
    let mut s = session(&proxy, "localhost", p, H1).await;
    for host in
        [format!("other.localhost:{p}"), format!("localhost:{}", p.wrapping_add(1).max(1)), "example.com".to_string()]
    {
        let req = hyper::Request::builder().method("GET").uri("/x").header("host", &host).body(empty()).unwrap();
        let r = s.send(req).await;
        assert_eq!((r.status, r.reason().as_str()), (421, "misdirected_request"), "Host: {host}: {r}");
    }
    // An absolute-form target naming another host inside the tunnel.
    let req = hyper::Request::builder()
        .method("GET")
        .uri(format!("https://other.localhost:{p}/x"))
        .header("host", format!("localhost:{p}"))
        .body(empty())
        .unwrap();
    let r = s.send(req).await;
    assert_eq!(r.status, 421, "absolute-form target naming another host: {r}");
    assert_eq!(up.count(), 0);
    let r = s.get("/x").await;
    assert_eq!(r.status, 200, "control: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_authority_other_than_the_connect_host_is_421() {
    let up = Upstream::https();
    let proxy = start(&policy(&rest_localhost(up.port(), "        access: full\n"), ""), &[&up]);
    let p = up.port();
    let mut s = session(&proxy, "localhost", p, H2).await;
    assert!(s.is_h2());
    for authority in [format!("other.localhost:{p}"), format!("localhost:{}", p.wrapping_add(1).max(1))] {
        let req = hyper::Request::builder().method("GET").uri(format!("https://{authority}/x")).body(empty()).unwrap();
        let r = s.send(req).await;
        assert_eq!((r.status, r.reason().as_str()), (421, "misdirected_request"), ":authority {authority}: {r}");
    }
    assert_eq!(up.count(), 0);
    let r = s.get("/x").await;
    assert_eq!(r.status, 200, "control: {r}");
    assert_eq!(up.count(), 1);
}

fn smuggling_policy(up: &Upstream) -> String {
    policy(&rest_localhost(up.port(), "        rules:\n          - allow: { method: GET, path: \"/allowed/**\" }\n          - allow: { method: POST, path: \"/allowed/**\" }\n"), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_read_as_chunked_and_closed() {
    // hyper's parser (RFC 9112 6.3) drops Content-Length when Transfer-Encoding is present,
    // reads the body as chunked and closes the connection after answering; the proxy re-frames
    // the request toward the upstream, so the two can never disagree about where it ends.
    let up = Upstream::https();
    let proxy = start(&smuggling_policy(&up), &[&up]);
    let p = up.port();
    let mut wrong = Vec::new();
    for head in ["Content-Length: 5\r\nTransfer-Encoding: chunked", "Transfer-Encoding: chunked\r\nContent-Length: 5"] {
        let mut t = tunnel(&proxy, "localhost", p, H1).await;
        let req = format!("POST /allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\n{head}\r\n\r\n0\r\n\r\n");
        let before = up.count();
        let r = t.exchange(req.as_bytes()).await.unwrap_or_else(|e| panic!("{head:?}: {e}"));
        let closed = t.closed_within(Duration::from_secs(2)).await;
        let seen = up.seen();
        let forwarded = seen.get(before);
        let consistent = match forwarded {
            None => r.status == 400,
            Some(s) => {
                s.header("content-length").is_none_or(|v| v == "0") && s.body.is_empty() && up.count() == before + 1
            }
        };
        if !consistent || !closed {
            wrong.push(format!("{head:?}: answered {r}; closed {closed}; the upstream received {forwarded:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "CL+TE must be refused or read as chunked, and the connection closed:\n{}",
        wrong.join("\n")
    );
}

async fn refused_framing(heads: &[&str]) {
    let up = Upstream::https();
    let proxy = start(&smuggling_policy(&up), &[&up]);
    let p = up.port();
    let mut wrong = Vec::new();
    for head in heads {
        let mut t = tunnel(&proxy, "localhost", p, H1).await;
        let req = format!("POST /allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\n{head}\r\n\r\nhello!");
        let before = up.count();
        let r = t.exchange(req.as_bytes()).await.unwrap_or_else(|e| panic!("{head:?}: {e}"));
        if r.status != 400 || up.count() != before {
            wrong.push(format!("{head:?}: answered {r}; the upstream received {:?}", up.seen().get(before)));
        }
    }
    assert!(wrong.is_empty(), "expected 400 and nothing forwarded:\n{}", wrong.join("\n"));
    // Control: one Content-Length passes.
    let mut t = tunnel(&proxy, "localhost", p, H1).await;
    let r = t
        .exchange(
            format!("POST /allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: 5\r\n\r\nhello").as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "control: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_400() {
    refused_framing(&["Content-Length: 5\r\nContent-Length: 6", "Content-Length: 5, 6"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_content_length_values_are_refused_or_merged() {
    // `Content-Length: 5, 5` is refused; two identical headers are merged by hyper (RFC 9110
    // 8.6 allows it): then the upstream must get exactly one length and that body.
    refused_framing(&["Content-Length: 5, 5"]).await;
    let up = Upstream::https();
    let proxy = start(&smuggling_policy(&up), &[&up]);
    let p = up.port();
    let mut t = tunnel(&proxy, "localhost", p, H1).await;
    let req = format!(
        "POST /allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
    );
    let r = t.exchange(req.as_bytes()).await.unwrap();
    if r.status == 400 {
        assert_eq!(up.count(), 0, "refused, so nothing may be forwarded");
        return;
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "one request: {r}");
    let lengths: Vec<&(String, String)> = seen[0].headers.iter().filter(|(n, _)| n == "content-length").collect();
    assert_eq!(lengths.len(), 1, "one Content-Length upstream: {:?}", seen[0].headers);
    assert_eq!(seen[0].body, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_pipelined_behind_ambiguous_framing_never_reaches_the_upstream() {
    let up = Upstream::https();
    let proxy = start(&smuggling_policy(&up), &[&up]);
    let p = up.port();
    // Read as chunked, the body ends at `0\r\n\r\n` and a second request follows; read by
    // Content-Length, that request is part of the body. RFC 9112 6.1: the server must close the
    // connection after answering such a request.
    let mut t = tunnel(&proxy, "localhost", p, H1).await;
    let req = format!(
        "POST /allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /allowed/smuggled HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n"
    );
    let r = t.exchange(req.as_bytes()).await.expect("an answer");
    // Whatever the first answer, the second request must not be served on this connection.
    let second = tokio::time::timeout(Duration::from_secs(2), read_response(&mut t.tls)).await;
    let closed = t.closed_within(Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert!(
        !targets.iter().any(|t| t == "/allowed/smuggled"),
        "the request pipelined behind CL+TE reached the upstream; first answer {r}; second answer {second:?}; upstream saw {targets:?}"
    );
    assert!(closed, "the proxy must close the connection after a CL+TE request (first answer {r})");
}

/// The path `target` means to a server that decodes `%XX` once, treats `\` as `/` and resolves
/// dot segments (the most generous reading); `None` for `..` above the root.
fn server_view(target: &str) -> Option<String> {
    let path = target.split('?').next().unwrap_or("");
    let mut decoded = Vec::new();
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                decoded.push(v);
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." | "..;" => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(format!("/{}", out.join("/")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_path_traversal_does_not_escape_the_allowed_prefix() {
    let up = Upstream::https();
    let proxy = start(
        &policy(
            &rest_localhost(up.port(), "        rules:\n          - allow: { method: GET, path: \"/allowed/**\" }\n"),
            "",
        ),
        &[&up],
    );
    let p = up.port();
    let attempts = [
        "/allowed/%2e%2e/secret",
        "/allowed/%2E%2E/secret",
        "/allowed/.%2e/secret",
        "/allowed/..%2fsecret",
        "/allowed/..%2Fsecret",
        "/allowed/%2e%2e%2fsecret",
        "/allowed/../secret",
        "/allowed/./../secret",
        "/allowed/x/../../secret",
        "//secret",
        "//allowed/../secret",
        "/allowed//../secret",
        "/allowed/..;/secret",
        "/allowed/..%5csecret",
        "/allowed/..\\secret",
        "/allowed%2f..%2fsecret",
        "/%61llowed/../secret",
    ];
    let mut escaped = Vec::new();
    for path in attempts {
        let before = up.count();
        let mut t = tunnel(&proxy, "localhost", p, H1).await;
        let r = t.exchange(format!("GET {path} HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await;
        let status = r.as_ref().map(|r| r.status).unwrap_or(0);
        if up.count() > before {
            let seen = up.last().unwrap();
            let view = server_view(&seen.target);
            if !view.as_deref().is_some_and(|v| v.starts_with("/allowed/")) {
                escaped.push(format!("{path} -> {status}, upstream received {:?} (= {view:?})", seen.target));
            }
        } else {
            assert!(matches!(status, 400 | 403), "{path}: expected a refusal, got {r:?}");
        }
    }
    assert!(escaped.is_empty(), "paths outside /allowed/ reached the upstream:\n{}", escaped.join("\n"));
    // h2 spelling of the same tricks.
    let mut s = session(&proxy, "localhost", p, H2).await;
    for path in ["/allowed/%2e%2e/secret", "/allowed/..%2fsecret", "//secret"] {
        let before = up.count();
        let r = s.get(path).await;
        assert!(
            up.count() == before || server_view(&up.last().unwrap().target).is_some_and(|v| v.starts_with("/allowed/")),
            "h2 {path}: {r}"
        );
    }
    // Control: a genuine allowed path, and a harmless dot segment inside the prefix.
    let mut s = session(&proxy, "localhost", p, H1).await;
    assert_eq!(s.get("/allowed/ok").await.status, 200);
    let r = s.get("/allowed/a/../b").await;
    assert!(r.status == 200 || r.status == 400, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_malformed_hosts_is_400() {
    let up = Upstream::https();
    let eps = format!(
        "{}      - host: 127.0.0.1\n        port: {}\n        protocol: rest\n        access: full\n",
        rest_localhost(up.port(), "        access: full\n"),
        up.port()
    );
    let proxy = start(&policy(&eps, ""), &[&up]);
    let p = up.port();
    let targets: Vec<Vec<u8>> = vec![
        format!("localhost\0.example:{p}").into_bytes(),
        format!("localhost.:{p}").into_bytes(),
        format!("LOCALHOST.:{p}").into_bytes(),
        format!("localhost%00.example:{p}").into_bytes(),
    ];
    expect_connect_400(&proxy, &up, targets).await;
    // Control: the plain spellings are accepted.
    assert!(connect(proxy.addr, &format!("localhost:{p}")).await.is_ok());
    assert!(connect(proxy.addr, &format!("127.0.0.1:{p}")).await.is_ok());
}

async fn expect_connect_400(proxy: &StandaloneProxy, up: &Upstream, targets: Vec<Vec<u8>>) {
    let mut wrong = Vec::new();
    for target in targets {
        let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let shown = String::from_utf8_lossy(&target).replace('\0', "\\0");
        match connect_over(tcp, &target).await {
            Ok(_) => wrong.push(format!("CONNECT {shown}: 200 (accepted)")),
            Err(r) if r.status != 400 => wrong.push(format!("CONNECT {shown}: {r}")),
            Err(_) => {}
        }
    }
    assert!(wrong.is_empty(), "expected 400:\n{}", wrong.join("\n"));
    assert_eq!(up.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_ambiguous_host_spellings_is_400() {
    let up = Upstream::https();
    let eps = format!(
        "{}      - host: 127.0.0.1\n        port: {}\n        protocol: rest\n        access: full\n",
        rest_localhost(up.port(), "        access: full\n"),
        up.port()
    );
    let proxy = start(&policy(&eps, ""), &[&up]);
    let p = up.port();
    // userinfo (RFC 9110 authority-form has none) and the numeric IPv4 forms resolvers disagree on.
    let targets = vec![
        format!("user@localhost:{p}").into_bytes(),
        format!("127.1:{p}").into_bytes(),
        format!("0x7f.0.0.1:{p}").into_bytes(),
        format!("0177.0.0.1:{p}").into_bytes(),
        format!("2130706433:{p}").into_bytes(),
    ];
    expect_connect_400(&proxy, &up, targets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_resolving_to_loopback_without_allowed_ips_is_403() {
    let up = Upstream::https();
    let eps = format!(
        "      - host: localhost\n        port: {p}\n        protocol: rest\n        access: full\n      - host: localhost\n        port: {q}\n        protocol: tcp\n",
        p = up.port(),
        q = up.port().wrapping_add(1).max(1),
    );
    let proxy = start(&policy(&eps, ""), &[&up]);
    let mut wrong = Vec::new();
    // Tunnelled endpoint: refused at CONNECT (nothing listens on that port; a 403 means the
    // address check came first).
    match connect(proxy.addr, &format!("localhost:{}", up.port().wrapping_add(1).max(1))).await {
        Ok(_) => wrong.push("tcp endpoint: CONNECT accepted".to_string()),
        Err(r) if (r.status, r.reason().as_str()) != (403, "blocked_address") => {
            wrong.push(format!("tcp endpoint: {r}"))
        }
        Err(_) => {}
    }
    // Inspected endpoint: refused at CONNECT or, at the latest, at the first request.
    match connect(proxy.addr, &format!("localhost:{}", up.port())).await {
        Err(r) if r.status != 403 => wrong.push(format!("rest endpoint, CONNECT: {r}")),
        Err(_) => {}
        Ok(tcp) => {
            let tls = tls_over(tcp, &TlsOptions::new(&proxy.ca_pem, "localhost", H1)).await.expect("TLS");
            let mut s = Session::over(tls, &format!("localhost:{}", up.port())).await;
            let r = s.get("/loopback").await;
            if r.status != 403 {
                wrong.push(format!("rest endpoint, GET after CONNECT 200: {r}"));
            }
        }
    }
    assert_eq!(up.count(), 0);
    assert!(wrong.is_empty(), "`localhost` without allowed_ips must be refused with 403:\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_metadata_address_is_refused_before_dialling() {
    require_root();
    // The proxy runs in a network namespace with only `lo`: whatever it does, nothing reaches
    // the real 169.254.169.254; a proxy that tried to dial gets ENETUNREACH (a 502), not a 403.
    let yaml = policy(
        "      - host: 169.254.169.254\n        port: 80\n        protocol: tcp\n      - host: 169.254.169.254\n        port: 443\n        protocol: rest\n        access: full\n",
        "",
    );
    let proxy = StandaloneProxy::start_isolated(&yaml, CREDS);
    let started = Instant::now();
    let mut wrong = Vec::new();
    let tcp = connect_in_netns(&proxy.netns(), proxy.addr).expect("reaching the isolated proxy");
    match tokio::time::timeout(Duration::from_secs(3), connect_over(tcp, b"169.254.169.254:80"))
        .await
        .expect("CONNECT answered")
    {
        Ok(_) => wrong.push("tcp endpoint: CONNECT 169.254.169.254:80 accepted".to_string()),
        Err(r) if r.status != 403 => wrong.push(format!("tcp endpoint, CONNECT 169.254.169.254:80: {r}")),
        Err(_) => {}
    }
    let tcp = connect_in_netns(&proxy.netns(), proxy.addr).expect("reaching the isolated proxy");
    match tokio::time::timeout(Duration::from_secs(3), connect_over(tcp, b"169.254.169.254:443"))
        .await
        .expect("CONNECT answered")
    {
        Err(r) if r.status != 403 => wrong.push(format!("rest endpoint, CONNECT 169.254.169.254:443: {r}")),
        Err(_) => {}
        Ok(tcp) => {
            let tls = tls_over(tcp, &TlsOptions::new(&proxy.ca_pem, "169.254.169.254", H1)).await.expect("TLS");
            let mut s = Session::over(tls, "169.254.169.254:443").await;
            let r = s.get("/latest/meta-data/").await;
            if r.status != 403 {
                wrong.push(format!("rest endpoint, GET /latest/meta-data/ after CONNECT 200: {r}"));
            }
        }
    }
    assert!(wrong.is_empty(), "the metadata address must be refused (403) without dialling:\n{}", wrong.join("\n"));
    assert!(started.elapsed() < Duration::from_secs(4), "refusals took {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------------------------
// 5. Reload
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_keeps_the_old_policy_on_a_broken_file_and_applies_a_valid_one() {
    let up = Upstream::https();
    let allow = policy(
        &rest_localhost(up.port(), "        rules:\n          - allow: { method: GET, path: \"/allowed/**\" }\n"),
        "",
    );
    let deny = policy(
        &rest_localhost(up.port(), "        rules:\n          - allow: { method: GET, path: \"/other/**\" }\n"),
        "",
    );
    let proxy = start(&allow, &[&up]);
    let get = |path: &'static str| {
        let proxy = &proxy;
        let port = up.port();
        async move { session(proxy, "localhost", port, H1).await.get(path).await }
    };
    assert_eq!(get("/allowed/1").await.status, 200);

    proxy.replace_policy("version: 1\nnetwork_policies: [ this is: not valid\n");
    assert!(
        wait_until(5, || proxy.stderr().contains("policy reload rejected")),
        "no rejection on stderr:\n{}",
        proxy.stderr()
    );
    proxy.hup();
    std::thread::sleep(Duration::from_millis(300));
    let r = get("/allowed/2").await;
    assert_eq!(r.status, 200, "after a broken file the old policy must stay in force: {r}");

    proxy.replace_policy(&deny);
    proxy.hup();
    assert!(
        wait_until(5, || proxy.stderr().contains("leash: policy reloaded")),
        "no reload on stderr:\n{}",
        proxy.stderr()
    );
    let r = get("/allowed/3").await;
    assert_eq!((r.status, r.reason().as_str()), (403, "request_denied"), "the new policy must be in force: {r}");
    assert_eq!(get("/other/1").await.status, 200, "control: the new policy's rule allows this");
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/allowed/1", "/allowed/2", "/other/1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_by_file_change_alone() {
    let up = Upstream::https();
    let allow = policy(&rest_localhost(up.port(), "        access: full\n"), "");
    let proxy = start(&allow, &[&up]);
    let mut s = session(&proxy, "localhost", up.port(), H1).await;
    assert_eq!(s.get("/x").await.status, 200);
    proxy.replace_policy(&policy(&rest_localhost(up.port(), "        access: read-only\n"), ""));
    // No SIGHUP: the 0.5 s poll must notice.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = session(&proxy, "localhost", up.port(), H1).await;
        // A tunnel the reload caught between its opening and its request is closed (the next
        // one is judged by the new policy).
        let r = s.try_send(s.request("POST", "/x").body(empty()).unwrap()).await;
        if r.as_ref().is_ok_and(|r| r.status == 403) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "POST still allowed 5 s after the policy became read-only: {r:?}\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.stderr().contains("leash: policy reloaded"), "{}", proxy.stderr());
}
