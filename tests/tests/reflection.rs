//! The credential comes back: a host the credential is bound to hands request data back to the
//! agent — its headers echoed in the response body and in a response header, or a request target
//! that becomes a file name the agent lists later. The agent is curl, talking to `leash proxy`
//! (standalone, as in `tls_proxy.rs`) and trusting only leash's CA; the upstream's `/reflect/`
//! paths play the reflecting host (`tests/src/upstream.rs`). Each test also checks that the
//! upstream did receive the real value, so a pass cannot come from a request that carried none.

use std::process::Command;

use base64::Engine as _;
use leash_tests::local_policy;
use leash_tests::upstream::*;

const SECRET: &str = "real-token-7d1f0c9b3e";
const CREDS: &str = "TOK=real-token-7d1f0c9b3e\n";
const PH: &str = "leash:resolve:env:TOK";
const TOK_LOCALHOST: &str = "  TOK: { hosts: [localhost] }\n";

/// An inspected endpoint for `localhost:port` (loopback allowed) with extra keys (indented by 8).
fn rest_localhost(port: u16, extra: &str) -> String {
    format!("      - host: localhost\n        port: {port}\n        protocol: rest\n        allowed_ips: [127.0.0.0/8]\n{extra}")
}

fn start(endpoint_keys: &str, up: &Upstream) -> StandaloneProxy {
    let policy = local_policy(&rest_localhost(up.port(), endpoint_keys), TOK_LOCALHOST);
    StandaloneProxy::start(&policy, &[up.ca_pem.as_path()], CREDS)
}

/// What curl printed (response headers, then the body) and its exit status.
struct Curl {
    output: String,
    ok: bool,
}

/// `curl` through the proxy to `https://localhost:port{target}`, printing the response headers
/// and the (decompressed) body; `args` go before the URL.
fn curl(proxy: &StandaloneProxy, up: &Upstream, target: &str, args: &[&str]) -> Curl {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--path-as-is", "-D", "-", "--proxy"])
        .arg(format!("http://{}", proxy.addr))
        .arg("--cacert")
        .arg(&proxy.ca_pem)
        .args(args)
        .arg(format!("https://localhost:{}{target}", up.port()))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("running curl");
    let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Curl { output, ok: out.status.success() }
}

/// Fails if the real value, or its base64 inside `user:value`, is in what the agent saw.
fn assert_agent_never_sees_it(seen: &Curl, context: &str) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{SECRET}"));
    assert!(!seen.output.contains(SECRET), "{context}: the agent read the real credential back:\n{}", seen.output);
    assert!(
        !seen.output.contains(&basic),
        "{context}: the agent read the real credential back in base64:\n{}",
        seen.output
    );
}

/// Fails if the proxy wrote the value into its stderr or audit log.
fn assert_not_logged(proxy: &StandaloneProxy) {
    assert!(!proxy.stderr().contains(SECRET), "the value is in the proxy's stderr");
    assert!(!proxy.audit().contains(SECRET), "the value is in the audit log");
}

#[test]
fn escape_injected_header_is_echoed_back_in_the_body_and_a_response_header() {
    let up = Upstream::https();
    let proxy = start("        access: full\n", &up);
    let bearer = format!("Authorization: Bearer {PH}");
    let basic = format!("x-access-token:{PH}");
    let b64 = base64::engine::general_purpose::STANDARD;
    let cases: [(&str, Vec<&str>); 4] = [
        ("HTTP/1.1, chunked body", vec!["--http1.1", "-H", &bearer]),
        ("HTTP/2", vec!["--http2", "-H", &bearer]),
        ("HTTP/1.1, Basic auth as git sends it", vec!["--http1.1", "-u", &basic]),
        ("asking for gzip", vec!["--http1.1", "--compressed", "-H", &bearer]),
    ];
    for (case, args) in cases {
        let before = up.count();
        let seen = curl(&proxy, &up, "/reflect/echo", &args);
        assert!(seen.ok, "{case}: curl failed:\n{}", seen.output);
        assert_eq!(up.count(), before + 1, "{case}: the request must reach the upstream");
        let received = up.last().unwrap().header("authorization").unwrap_or_default().to_owned();
        let real = [format!("Bearer {SECRET}"), format!("Basic {}", b64.encode(format!("x-access-token:{SECRET}")))];
        assert!(real.contains(&received), "{case}: the upstream must get the real value, got {received:?}");
        assert_agent_never_sees_it(&seen, case);
        assert!(
            seen.output.to_ascii_lowercase().contains("x-reflected-authorization:"),
            "{case}: the reflecting header must still arrive:\n{}",
            seen.output
        );
        if !case.starts_with("HTTP/1.1, Basic") {
            assert!(
                seen.output.contains(PH),
                "{case}: the agent sees its placeholder where the value was:\n{}",
                seen.output
            );
        }
    }
    assert_not_logged(&proxy);
}

#[test]
fn escape_compressed_reflection_is_not_passed_unscanned() {
    let up = Upstream::https();
    let proxy = start("        access: full\n", &up);
    let bearer = format!("Authorization: Bearer {PH}");
    // The upstream gzips the echo whatever the request accepts.
    let seen = curl(&proxy, &up, "/reflect/gzip/echo", &["--http1.1", "--compressed", "-H", &bearer]);
    assert!(up.last().unwrap().everything().contains(SECRET), "the upstream must get the real value");
    assert_agent_never_sees_it(&seen, "gzip body");
    assert!(seen.output.contains(" 502"), "a body leash cannot scan is refused:\n{}", seen.output);
    assert_eq!(
        up.last().unwrap().header("accept-encoding"),
        Some("identity"),
        "the proxy asks upstreams for bodies it can scan"
    );
    assert_not_logged(&proxy);
}

#[test]
fn escape_placeholder_in_the_url_path_comes_back_in_a_later_listing() {
    let up = Upstream::https();
    let proxy = start("        access: full\n        request_target_credential_rewrite: true\n", &up);
    let target = format!("/reflect/files/{PH}");
    let seen = curl(&proxy, &up, &target, &["--http1.1"]);
    assert!(seen.ok, "curl failed:\n{}", seen.output);
    assert_eq!(up.last().unwrap().target, format!("/reflect/files/{SECRET}"), "the opted-in target gets the value");
    assert_agent_never_sees_it(&seen, "the response to the request itself");
    // Later, a request with no placeholder at all: the host lists what it stored.
    let later = curl(&proxy, &up, "/reflect/list", &["--http2"]);
    assert!(later.ok, "curl failed:\n{}", later.output);
    assert!(later.output.contains("history"), "the listing arrives:\n{}", later.output);
    assert_agent_never_sees_it(&later, "a later listing");
    assert!(later.output.contains(PH), "the listing shows the placeholder:\n{}", later.output);
    assert_not_logged(&proxy);
}

/// The stored value comes back in pieces: the bound host honours `Range`, as file servers and
/// object stores do, and the agent fetches the listing 16 bytes at a time. No piece holds the
/// whole value the scan looks for; put together they do. The proxy asks for whole bodies (no
/// `Range`) and refuses a part sent anyway.
#[test]
fn escape_a_reflected_value_fetched_in_ranges() {
    let up = Upstream::https();
    let proxy = start("        access: full\n        request_target_credential_rewrite: true\n", &up);
    let stored = curl(&proxy, &up, &format!("/reflect/files/{PH}"), &["--http1.1"]);
    assert!(stored.ok, "curl failed:\n{}", stored.output);
    assert_eq!(up.last().unwrap().target, format!("/reflect/files/{SECRET}"), "the host stored the value");
    let mut pieces = String::new();
    for start in (0..640).step_by(16) {
        let range = format!("{start}-{}", start + 15);
        let seen = curl(&proxy, &up, "/reflect/list", &["--http1.1", "-r", &range]);
        let body = seen.output.rsplit("\r\n\r\n").next().unwrap_or_default().to_owned();
        pieces.push_str(&body);
    }
    // The control: the ranges did reach the host as asked, or the proxy dropped them.
    assert!(pieces.contains("history"), "the listing did not come back: {pieces}");
    assert!(!pieces.contains(SECRET), "the agent put the real credential together from ranges:\n{pieces}");
    // An upstream that answers with a part anyway is refused.
    let partial = curl(&proxy, &up, "/reflect/partial/list", &["--http1.1"]);
    assert!(partial.output.contains(" 502"), "a part of a body cannot be scanned:\n{}", partial.output);
    assert_not_logged(&proxy);
}

/// A WebSocket's frames are not scanned, so a host a credential is bound to could echo the value
/// a handshake carries, or hand back one it stored, in them: no WebSocket to such a host is
/// proxied, with a credential in the handshake or without.
#[test]
fn escape_a_websocket_to_a_host_a_credential_is_bound_to_is_refused() {
    let up = Upstream::https();
    let proxy = start("        access: full\n", &up);
    let ws = ["--http1.1", "-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13"];
    let key = ["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="];
    let bearer = format!("Authorization: Bearer {PH}");
    let before = up.count();
    for (case, extra) in [("with the credential", vec!["-H", &bearer]), ("without", vec![])] {
        let seen = curl(&proxy, &up, "/ws", &[&ws[..], &key[..], &extra[..]].concat());
        assert!(seen.output.contains(" 400") && seen.output.contains("upgrade_refused"), "{case}: {}", seen.output);
    }
    assert_eq!(up.count(), before, "a WebSocket handshake reached the host");
    // The control: the same handshake to a host no credential is bound to is proxied.
    let unbound = local_policy(&rest_localhost(up.port(), "        access: full\n"), "");
    let proxy = StandaloneProxy::start(&unbound, &[up.ca_pem.as_path()], CREDS);
    let seen = curl(&proxy, &up, "/ws", &[&ws[..], &key[..], &["--max-time", "3"]].concat());
    assert!(seen.output.contains(" 101"), "a WebSocket to an unbound host must still work:\n{}", seen.output);
}

#[test]
fn placeholder_in_the_target_needs_the_endpoint_opt_in() {
    let up = Upstream::https();
    let proxy = start("        access: full\n", &up);
    let seen = curl(&proxy, &up, &format!("/reflect/files/{PH}?q={PH}"), &["--http1.1"]);
    assert_eq!(up.count(), 0, "a placeholder in the target of an endpoint without the opt-in must not be forwarded");
    assert!(seen.output.contains(" 403") && seen.output.contains("credential_in_target"), "{}", seen.output);
    assert_agent_never_sees_it(&seen, "refusal");
    // Control: the same request without the placeholder passes.
    let control = curl(&proxy, &up, "/reflect/files/plain", &["--http1.1"]);
    assert!(control.ok && control.output.contains(" 200"), "{}", control.output);
    assert_eq!(up.count(), 1);
    assert_not_logged(&proxy);
}
