//! Red-team attempts against the TLS-inspecting proxy, made as the agent: it holds only
//! placeholders (`leash:resolve:env:TOK`) and talks to `leash proxy` (standalone, as in
//! `tls_proxy.rs`) or lives inside `leash run`.
//!
//! Tests named `escape_*` are ways through that worked when they were written (and failed until
//! the hole was closed); they stay as regression tests. The others pin down attempts that were
//! refused from the start and that
//! `tls_proxy.rs` does not cover. Every test also does the legitimate thing and checks that it
//! works (positive control), so a refusal cannot pass by accident. All traffic stays on
//! loopback, or inside a network namespace holding only `lo`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use leash_tests::upstream::*;
use leash_tests::{leash_bin, local_policy, require_root, wait_until, Listener, Scratch};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The real value behind `leash:resolve:env:TOK`; it must reach bound hosts only.
const SECRET: &str = "real-token-7d1f0c9b3e";
const CREDS: &str = "TOK=real-token-7d1f0c9b3e\n";
const PH: &str = "leash:resolve:env:TOK";

const H1: &[&str] = &["http/1.1"];
const H2: &[&str] = &["h2"];

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

/// See [`leash_tests::local_policy`].
fn policy(endpoints: &str, credentials: &str) -> String {
    local_policy(endpoints, credentials)
}

/// An inspected endpoint `host:port` with loopback allowed and extra keys (indented by 8).
fn rest(host: &str, port: u16, extra: &str) -> String {
    format!("      - host: {host}\n        port: {port}\n        protocol: rest\n        allowed_ips: [127.0.0.0/8]\n{extra}")
}

const FULL: &str = "        access: full\n";
const TOK_LOCALHOST: &str = "  TOK: { hosts: [localhost] }\n";

/// Whether `word`, written on a WebSocket `t`, comes back (the test upstream echoes).
async fn echoed(t: &mut Tunnel, word: &[u8]) -> bool {
    let mut buf = vec![0u8; word.len()];
    t.tls.write_all(word).await.is_ok()
        && matches!(tokio::time::timeout(Duration::from_secs(2), t.tls.read_exact(&mut buf)).await, Ok(Ok(_)))
        && buf == word
}

/// Puts `yaml` in the proxy's policy file, signals it, and waits for the reload to be reported.
fn reload_and_wait(proxy: &StandaloneProxy, yaml: &str) {
    let before = proxy.stderr().matches("leash: policy reloaded").count();
    proxy.replace_policy(yaml);
    proxy.hup();
    assert!(wait_until(5, || proxy.stderr().matches("leash: policy reloaded").count() > before), "{}", proxy.stderr());
}

fn start(policy: &str, upstreams: &[&Upstream]) -> StandaloneProxy {
    let cas: Vec<&std::path::Path> =
        upstreams.iter().filter(|u| !u.ca_pem.as_os_str().is_empty()).map(|u| u.ca_pem.as_path()).collect();
    StandaloneProxy::start(policy, &cas, CREDS)
}

async fn session(proxy: &StandaloneProxy, host: &str, port: u16, alpn: &[&'static str]) -> Session {
    Session::open(proxy.addr, &format!("{host}:{port}"), &TlsOptions::new(&proxy.ca_pem, host, alpn)).await
}

async fn tunnel(proxy: &StandaloneProxy, host: &str, port: u16) -> Tunnel {
    Tunnel::open(proxy.addr, &format!("{host}:{port}"), &TlsOptions::new(&proxy.ca_pem, host, H1)).await
}

/// Sends `bytes` on a fresh connection to the proxy (absolute-form requests) and reads one answer.
async fn to_proxy(proxy: SocketAddr, bytes: &[u8]) -> Reply {
    let mut tcp = TcpStream::connect(proxy).await.expect("connecting to the proxy");
    tcp.write_all(bytes).await.expect("writing to the proxy");
    tokio::time::timeout(STEP, read_response(&mut tcp))
        .await
        .expect("the proxy answered in time")
        .expect("an HTTP answer")
}

/// The proxy's pid (its network namespace link names it).
fn proxy_pid(proxy: &StandaloneProxy) -> i32 {
    let ns = proxy.netns();
    ns.components()
        .nth(2)
        .and_then(|c| c.as_os_str().to_str())
        .and_then(|s| s.parse().ok())
        .expect("pid in /proc/<pid>/ns/net")
}

/// Fails if the value appears in the proxy's stderr or audit log.
fn assert_not_logged(proxy: &StandaloneProxy) {
    assert!(!proxy.stderr().contains(SECRET), "the credential value is in the proxy's stderr");
    assert!(!proxy.audit().contains(SECRET), "the credential value is in the audit log");
}

// ---------------------------------------------------------------------------------------------
// A plain-HTTP upstream of our own: answers `Upgrade:` with 101 and then serves HTTP/2 on the
// upgraded stream (what an h2c-capable server does), and `/redirect` with a 302.
// ---------------------------------------------------------------------------------------------

struct UpgradingUpstream {
    addr: SocketAddr,
    /// `h1 GET /path` or `h2 GET /path`, in arrival order.
    seen: Arc<Mutex<Vec<String>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UpgradingUpstream {
    fn start(redirect_to: Option<SocketAddr>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shared = seen.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let tcp = tokio::select! {
                        _ = &mut stop_rx => break,
                        a = listener.accept() => match a { Ok((t, _)) => t, Err(_) => continue },
                    };
                    let seen = shared.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                seen.lock().unwrap().push(format!("h1 {} {}", req.method(), req.uri().path()));
                                if req.uri().path() == "/redirect" {
                                    let to = redirect_to.map(|a| format!("http://{a}/pwn")).unwrap_or_default();
                                    let mut r = Response::new(empty());
                                    *r.status_mut() = StatusCode::FOUND;
                                    r.headers_mut().insert("location", to.parse().unwrap());
                                    return Ok::<_, std::convert::Infallible>(r);
                                }
                                if let Some(proto) = req.headers().get("upgrade").cloned() {
                                    let on_upgrade = hyper::upgrade::on(&mut req);
                                    let seen = seen.clone();
                                    tokio::spawn(async move {
                                        let Ok(up) = on_upgrade.await else { return };
                                        let svc =
                                            hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                                                seen.lock().unwrap().push(format!(
                                                    "h2 {} {}",
                                                    req.method(),
                                                    req.uri().path()
                                                ));
                                                async {
                                                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                                        Bytes::from_static(b"served after upgrade"),
                                                    )))
                                                }
                                            });
                                        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                            .serve_connection(up, svc)
                                            .await;
                                    });
                                    let mut r = Response::new(empty());
                                    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                                    r.headers_mut().insert("upgrade", proto);
                                    r.headers_mut().insert("connection", "Upgrade".parse().unwrap());
                                    return Ok(r);
                                }
                                Ok(Response::new(Full::new(Bytes::from_static(b"plain answer"))))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        });
        Self { addr, seen, stop: Some(stop_tx), thread: Some(thread) }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for UpgradingUpstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// =============================================================================================
// 1. Holes: credential exfiltration
// =============================================================================================

/// An endpoint the agent reaches with TLS (`CONNECT localhost:443`) is also reachable as
/// absolute-form `http://localhost:443/`: the decision looks at host and port only, so the
/// proxy speaks plaintext to the HTTPS port and writes the real credential into it, in clear,
/// for anyone on the path. (With the default policy: `http://api.github.com:443/` with the
/// GITHUB_TOKEN placeholder.) The proxy runs in a network namespace with only `lo`, where the
/// test listens on 127.0.0.1:443 and records the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_credential_written_in_cleartext_to_a_tls_port() {
    require_root();
    let yaml = policy(&rest("localhost", 443, FULL), TOK_LOCALHOST);
    let proxy = StandaloneProxy::start_isolated(&yaml, CREDS);
    let recorder = Recorder::at_443(&proxy.netns());
    let received = recorder.bytes.clone();

    // Control: the endpoint is the HTTPS one (CONNECT is accepted and the client speaks TLS).
    let tcp = connect_in_netns(&proxy.netns(), proxy.addr).expect("reaching the proxy");
    assert!(connect_over(tcp, b"localhost:443").await.is_ok(), "control: CONNECT localhost:443 must be allowed");

    // The placeholder as a bearer token, and in Basic credentials spelt as the check before the
    // rewrite did not read them (scheme in capitals; base64 without its padding) but the
    // rewriter does: `x:leash:resolve:env:TOK`.
    let mut answers = Vec::new();
    for auth in [
        format!("Bearer {PH}"),
        "BASIC eDpsZWFzaDpyZXNvbHZlOmVudjpUT0s=".into(),
        "Basic eDpsZWFzaDpyZXNvbHZlOmVudjpUT0s".into(),
    ] {
        let mut tcp = connect_in_netns(&proxy.netns(), proxy.addr).expect("reaching the proxy");
        let request =
            format!("GET http://localhost:443/user HTTP/1.1\r\nHost: localhost:443\r\nAuthorization: {auth}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        answers.push(tokio::time::timeout(Duration::from_secs(3), read_response(&mut tcp)).await);
    }
    let answer = answers;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let wire = String::from_utf8_lossy(&received.lock().unwrap()).into_owned();
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("x:{SECRET}"));
    assert!(
        !wire.contains(SECRET) && !wire.contains(&basic),
        "the real credential crossed the wire in cleartext to port 443 (answer {answer:?}); bytes on the wire:\n{wire}"
    );
}

/// A raw recorder on 127.0.0.1:443 inside a proxy's network namespace: what connected there,
/// and the bytes it sent.
struct Recorder {
    bytes: Arc<Mutex<Vec<u8>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    fn at_443(netns: &std::path::Path) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::<u8>::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (rec, count, netns) = (bytes.clone(), connections.clone(), netns.to_owned());
        let ready = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            use std::io::Read as _;
            use std::os::fd::AsRawFd as _;
            let ns = std::fs::File::open(&netns).expect("netns");
            // SAFETY: setns on this thread only.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            let l = std::net::TcpListener::bind("127.0.0.1:443").expect("bind 443 in the netns");
            let _ = ready.0.send(());
            for conn in l.incoming().take(4) {
                let Ok(mut c) = conn else { continue };
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                c.set_read_timeout(Some(Duration::from_millis(700))).unwrap();
                let mut buf = [0u8; 4096];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    rec.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        });
        ready.1.recv_timeout(STEP).expect("recorder ready");
        Self { bytes, connections }
    }
}

/// `Host: other.example:443@localhost:P` named the tunnel's host to the proxy, which read the
/// host after the `@`, and went upstream as sent, credential and all. nginx reads a Host at its
/// first `:` and would route it to the virtual host `other.example`. User information in `Host`
/// is refused now, and the upstream gets the host as the proxy judged it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_user_information_in_host_names_another_site_to_the_upstream() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(&policy(&rest("localhost", p, FULL), ""), &[&up]);
    let mut t = tunnel(&proxy, "localhost", p).await;
    let r = t.exchange(format!("GET /control HTTP/1.1\r\nHost: LocalHost:{p}\r\n\r\n").as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "control: {r}");
    let host = up.last().and_then(|s| s.header("host").map(str::to_owned));
    assert_eq!(host.as_deref(), Some(format!("localhost:{p}").as_str()), "the upstream gets the host as judged");
    let mut t = tunnel(&proxy, "localhost", p).await;
    let r = t
        .exchange(format!("GET /fronted HTTP/1.1\r\nHost: other.example:443@localhost:{p}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let seen: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert!(!seen.iter().any(|t| t == "/fronted"), "a Host naming another site went upstream (answer {r}): {seen:?}");
    assert_eq!(r.status, 421, "{r}");
}

/// A `*` request target (legal in HTTP/1.1, and as an HTTP/2 `:path`) was appended to the
/// tunnel's origin: `https://localhost:8443*`. The dialler read the port back from that, found
/// none, and dialled 443, the scheme's default, with the credential bound to `localhost`, while
/// the request was judged and audited as `localhost:8443`. Over HTTP/1.1 that connection became
/// the tunnel's own, so every later request of the tunnel went there too. (The recorder is the
/// service on the port the policy never allowed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_a_star_target_moves_the_upstream_to_another_port() {
    require_root();
    let yaml = policy(&rest("localhost", 8443, FULL), TOK_LOCALHOST);
    let proxy = StandaloneProxy::start_isolated(&yaml, CREDS);
    let recorder = Recorder::at_443(&proxy.netns());
    let tcp = connect_in_netns(&proxy.netns(), proxy.addr).expect("reaching the proxy");
    let tcp = connect_over(tcp, b"localhost:8443").await.expect("CONNECT localhost:8443 is allowed");
    let tls = tls_over(tcp, &TlsOptions::new(&proxy.ca_pem, "localhost", H1)).await.expect("TLS");
    let mut tunnel = Tunnel { tls };
    let star = format!("GET * HTTP/1.1\r\nHost: localhost:8443\r\nAuthorization: Bearer {PH}\r\n\r\n");
    let answer = tunnel.exchange(star.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connections = recorder.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(connections, 0, "a `*` target reached port 443, which the policy does not allow (answer {answer:?})");
    let answer = answer.expect("an answer");
    assert_eq!(answer.status, 400, "{answer}");
    assert!(proxy.audit().contains("bad_target"), "the refusal is audited: {}", proxy.audit());
}

/// The address policy (`allowed_ips`) of a connection is taken from the FIRST endpoint in the
/// file that covers host:port, while the decision may have picked a later one (the first is in
/// a policy restricted to other executables). An agent that is not `git` thereby gets the
/// loopback/private reach that only git's policy grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_allowed_ips_borrowed_from_a_policy_for_another_executable() {
    let up = Upstream::https();
    let p = up.port();
    let git_only = format!(
        "version: 1\nnetwork_policies:\n  git_only:\n    name: git_only\n    endpoints:\n{}    binaries: [{{ path: /usr/bin/git }}]\n  anyone:\n    name: anyone\n    endpoints:\n      - {{ host: localhost, port: {p}, protocol: rest, access: full }}\n",
        rest("localhost", p, FULL)
    );
    // Control 1: `anyone` alone (no allowed_ips) cannot reach loopback.
    let alone = StandaloneProxy::start(
        &format!("version: 1\nnetwork_policies:\n  anyone:\n    name: anyone\n    endpoints:\n      - {{ host: localhost, port: {p}, protocol: rest, access: full }}\n"),
        &[up.ca_pem.as_path()],
        CREDS,
    );
    let refused = match connect(alone.addr, &format!("localhost:{p}")).await {
        Err(r) => r.status == 403,
        Ok(tcp) => {
            let tls = tls_over(tcp, &TlsOptions::new(&alone.ca_pem, "localhost", H1)).await.expect("TLS");
            Session::over(tls, &format!("localhost:{p}")).await.get("/alone").await.status == 403
        }
    };
    assert!(refused, "control: an endpoint without allowed_ips must not reach loopback");
    assert_eq!(up.count(), 0);
    drop(alone);

    // Control 2: the same name with allowed_ips on the endpoint the agent may use works.
    let granted = start(&policy(&rest("localhost", p, FULL), ""), &[&up]);
    assert_eq!(session(&granted, "localhost", p, H1).await.get("/granted").await.status, 200);
    drop(granted);

    // The attempt: git_only (first, with allowed_ips) refuses this client; anyone allows it.
    let proxy = start(&git_only, &[&up]);
    let before = up.count();
    let outcome = match connect(proxy.addr, &format!("localhost:{p}")).await {
        Err(r) => format!("CONNECT refused: {r}"),
        Ok(tcp) => {
            let tls = tls_over(tcp, &TlsOptions::new(&proxy.ca_pem, "localhost", H1)).await.expect("TLS");
            let r = Session::over(tls, &format!("localhost:{p}")).await.get("/borrowed").await;
            format!("GET answered {}", r.status)
        }
    };
    let decided_by =
        proxy.audit_events().into_iter().find_map(|e| e["firewall_rule"]["name"].as_str().map(str::to_owned));
    assert_eq!(
        up.count(),
        before,
        "the request reached loopback through policy {decided_by:?}, which has no allowed_ips ({outcome})"
    );
}

/// Only the variables the policy names are replaced by placeholders; the same value under any
/// other name in leash's environment (`GH_TOKEN` next to `GITHUB_TOKEN`, a URL with the token
/// in it) reaches the agent in clear.
#[test]
fn escape_credential_value_under_another_variable_name() {
    require_root();
    let scratch = Scratch::new("envalias");
    let policy = scratch.file(
        "p.yaml",
        "version: 1\nprocess: { run_as_user: nobody }\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      - { host: localhost, port: 9, protocol: rest, access: full }\ncredentials:\n  TOK: { hosts: [localhost] }\n",
    );
    let out = Command::new(leash_bin())
        .args(["run", "--policy"])
        .arg(&policy)
        .args(["--", "/bin/sh", "-c", "echo \"TOK=$TOK\"; echo \"ALIAS=$ALIAS_TOKEN\"; echo \"URL=$REMOTE_URL\""])
        .env("TOK", SECRET)
        .env("ALIAS_TOKEN", SECRET)
        .env("REMOTE_URL", format!("https://x-access-token:{SECRET}@localhost/repo.git"))
        .output()
        .expect("leash run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("TOK={PH}")), "control: the declared variable holds the placeholder: {text}");
    assert!(!text.contains(SECRET), "the credential's value reached the agent under another name:\n{text}");
}

/// Upstream connections are pooled for 90 s and the address check runs only when one is
/// dialled: after a reload that takes `allowed_ips` away, requests keep riding the connection
/// dialled under the old policy to the now-forbidden loopback address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_pooled_connection_outlives_an_allowed_ips_revocation() {
    let up = Upstream::https();
    let other = Upstream::https();
    let (p, q) = (up.port(), other.port());
    let with_ips = policy(&format!("{}{}", rest("localhost", p, FULL), rest("localhost", q, FULL)), "");
    let without = policy(&format!("      - {{ host: localhost, port: {p}, protocol: rest, access: full }}\n      - {{ host: localhost, port: {q}, protocol: rest, access: full }}\n"), "");
    let proxy = start(&with_ips, &[&up, &other]);
    assert_eq!(session(&proxy, "localhost", p, H2).await.get("/before").await.status, 200);
    proxy.replace_policy(&without);
    proxy.hup();
    assert!(wait_until(5, || proxy.stderr().contains("leash: policy reloaded")), "{}", proxy.stderr());
    // Control: a port never dialled before is refused under the new policy.
    let r = session(&proxy, "localhost", q, H2).await.get("/fresh").await;
    assert_eq!((r.status, other.count()), (403, 0), "control: {r}");
    let before = up.count();
    let r = session(&proxy, "localhost", p, H2).await.get("/after-revocation").await;
    assert_eq!(up.count(), before, "a request reached loopback after allowed_ips was revoked (answer {})", r.status);
}

/// A tunnel kept open across a reload kept the rules it was opened under: an HTTP/1.1
/// keep-alive connection, or an HTTP/2 one (pinged every 20 s), never met the rule, endpoint or
/// credential a reload took away. Tunnels end at a reload now (gracefully), and a request that
/// comes in on one meanwhile is refused (421, over a new connection it is judged anew).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_a_tunnel_opened_before_a_reload_keeps_the_old_rules() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(&policy(&rest("localhost", p, FULL), ""), &[&up]);
    let mut h1 = session(&proxy, "localhost", p, H1).await;
    let mut h2 = session(&proxy, "localhost", p, H2).await;
    assert!(h2.is_h2(), "the premise: an HTTP/2 tunnel");
    for s in [&mut h1, &mut h2] {
        let r = s.send(s.request("POST", "/before").body(empty()).unwrap()).await;
        assert_eq!(r.status, 200, "control: POST is allowed before the reload: {r}");
    }
    proxy.replace_policy(&policy(&rest("localhost", p, "        access: read-only\n"), ""));
    proxy.hup();
    assert!(wait_until(5, || proxy.stderr().contains("leash: policy reloaded")), "{}", proxy.stderr());
    // Control: a new tunnel is judged by the new policy.
    let mut fresh = session(&proxy, "localhost", p, H1).await;
    let r = fresh.send(fresh.request("POST", "/fresh").body(empty()).unwrap()).await;
    assert_eq!(r.status, 403, "control: the reloaded policy refuses POST: {r}");
    let mut answers = Vec::new();
    for s in [&mut h1, &mut h2] {
        answers.push(s.try_send(s.request("POST", "/after-reload").body(empty()).unwrap()).await.map(|r| r.status));
    }
    let seen: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert!(
        !seen.iter().any(|t| t == "/after-reload"),
        "a request the reloaded policy refuses went over a tunnel opened before the reload (answers {answers:?}): {seen:?}"
    );
}

/// A WebSocket outlived a reload that took its endpoint away. A reload asks again: one the new
/// policy still allows stays open (a no-op save of the file closes nothing), one it does not is
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_a_websocket_outlives_its_endpoints_removal() {
    let up = Upstream::https();
    let p = up.port();
    let other = "      - { host: other.example, port: 443, protocol: rest, access: full }\n";
    let proxy = start(&policy(&rest("localhost", p, FULL), ""), &[&up]);
    let mut t = tunnel(&proxy, "localhost", p).await;
    let handshake = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let r = t.exchange(handshake.as_bytes()).await.unwrap();
    assert_eq!(r.status, 101, "control: the WebSocket opens: {r}");
    assert!(echoed(&mut t, b"before").await, "control: the upstream echoes");
    let reload = |yaml: String| reload_and_wait(&proxy, &yaml);
    reload(policy(&format!("{}{other}", rest("localhost", p, FULL)), ""));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(echoed(&mut t, b"still-allowed").await, "a reload that still allows the WebSocket closed it");
    reload(policy(other, ""));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !echoed(&mut t, b"after-removal").await,
        "a WebSocket to an endpoint the reload removed still carried data"
    );
}

/// A WebSocket was judged again at a reload by its target as sent, with GET, where its opening
/// request was judged by every reading (trailing slash, `;parameters`, method overrides): one
/// opened at `/ws/admin/` stayed open after a reload denied `GET /ws/admin`, which a new request
/// there meets at once. It is judged again as it was opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_a_websocket_is_judged_again_by_fewer_readings() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(&policy(&rest("localhost", p, FULL), ""), &[&up]);
    let open = |path: &'static str| {
        let proxy = &proxy;
        async move {
            let mut t = tunnel(proxy, "localhost", p).await;
            let handshake = format!(
                "GET {path} HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            );
            let r = t.exchange(handshake.as_bytes()).await.unwrap();
            assert_eq!(r.status, 101, "control: the WebSocket at {path} opens: {r}");
            t
        }
    };
    let mut sockets = [open("/ws/admin/").await, open("/ws/admin;x").await];
    let denied = "        access: full\n        deny_rules: [{ method: GET, path: \"/ws/admin\" }]\n";
    proxy.replace_policy(&policy(&rest("localhost", p, denied), ""));
    proxy.hup();
    assert!(wait_until(5, || proxy.stderr().contains("leash: policy reloaded")), "{}", proxy.stderr());
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (path, t) in ["/ws/admin/", "/ws/admin;x"].into_iter().zip(sockets.iter_mut()) {
        let mut fresh = tunnel(&proxy, "localhost", p).await;
        let r = fresh.exchange(format!("GET {path} HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await.unwrap();
        assert_eq!(r.status, 403, "the premise: the new policy refuses GET {path}: {r}");
        assert!(
            !echoed(t, b"after-deny").await,
            "the WebSocket at {path} still carried data after the reload denied it"
        );
    }
}

/// A reload ends a tunnel once its exchange under way is done: an upload (or a download) that
/// went on carried on under the rules it began with, with no end. The rest of an exchange's
/// body passes only while the policy in force allows the exchange; control: a reload that still
/// allows it lets the upload finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_an_upload_under_way_outlives_a_reload_that_removes_its_endpoint() {
    let up = Upstream::https();
    let p = up.port();
    let other = "      - { host: other.example, port: 443, protocol: rest, access: full }\n";
    let proxy = start(&policy(&rest("localhost", p, FULL), ""), &[&up]);
    let reload = |yaml: String| reload_and_wait(&proxy, &yaml);
    let upload = |path: &'static str| {
        let proxy = &proxy;
        async move {
            let mut t = tunnel(proxy, "localhost", p).await;
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: localhost:{p}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
            );
            t.tls.write_all(head.as_bytes()).await.unwrap();
            t.tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            t
        }
    };
    let arrived = |path: &str| up.seen().into_iter().filter(|s| s.target == path).map(|s| s.body).collect::<Vec<_>>();
    // Control: the reload still allows the upload.
    let mut kept = upload("/kept").await;
    reload(policy(&format!("{}{other}", rest("localhost", p, FULL)), ""));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = kept.tls.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await;
    let _ = kept.tls.flush().await;
    assert!(wait_until(5, || arrived("/kept") == [b"firstsecond".to_vec()]), "control: {:?}", arrived("/kept"));
    // The reload takes the endpoint away while the upload is under way.
    let mut cut = upload("/cut").await;
    reload(policy(other, ""));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = cut.tls.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await;
    let _ = cut.tls.flush().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = arrived("/cut");
    assert!(
        !bodies.iter().any(|b| b.windows(6).any(|w| w == b"second")),
        "the rest of an upload went upstream after a reload removed its endpoint: {bodies:?}"
    );
}

/// A passed-through connection (`protocol: tcp`) outlived a reload that took its endpoint away.
/// A reload asks again: it is closed, while one the new policy still allows stays (control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_a_passed_through_connection_outlives_its_endpoints_removal() {
    let (gone_up, kept_up) = (Upstream::plain(), Upstream::plain());
    let tcp =
        |port: u16| format!("      - {{ host: localhost, port: {port}, protocol: tcp, allowed_ips: [127.0.0.0/8] }}\n");
    let both = policy(&format!("{}{}", tcp(gone_up.port()), tcp(kept_up.port())), "");
    let proxy = start(&both, &[&gone_up, &kept_up]);
    let request = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut open = Vec::new();
    for up in [&gone_up, &kept_up] {
        let mut c = connect(proxy.addr, &format!("localhost:{}", up.port())).await.expect("CONNECT is allowed");
        c.write_all(request).await.unwrap();
        let r = tokio::time::timeout(STEP, read_response(&mut c)).await.expect("an answer").expect("HTTP");
        assert_eq!(r.status, 200, "control: the connection works before the reload: {r}");
        open.push(c);
    }
    proxy.replace_policy(&policy(&tcp(kept_up.port()), ""));
    proxy.hup();
    assert!(wait_until(5, || proxy.stderr().contains("leash: policy reloaded")), "{}", proxy.stderr());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = gone_up.count();
    let (gone, kept) = open.split_at_mut(1);
    let _ = gone[0].write_all(request).await;
    let answer = tokio::time::timeout(Duration::from_secs(2), read_response(&mut gone[0])).await;
    assert!(
        !matches!(answer, Ok(Ok(_))) && gone_up.count() == before,
        "a connection to an endpoint the reload removed still carried a request: {answer:?}"
    );
    kept[0].write_all(request).await.unwrap();
    let r = tokio::time::timeout(STEP, read_response(&mut kept[0])).await.expect("an answer").expect("HTTP");
    assert_eq!(r.status, 200, "control: a connection the new policy still allows stays open: {r}");
}

// =============================================================================================
// 2. Holes: L7 rules
// =============================================================================================

/// `deny_rules: [{ method: GET, path: /secret }]` let `HEAD /secret` through, and servers run the
/// GET handler for a HEAD (Express, Flask, Django, Rails, Spring, Go's ServeMux): its side
/// effects happen and its headers come back. A deny rule on GET refuses HEAD too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_head_runs_a_denied_get_handler() {
    let up = Upstream::https();
    let p = up.port();
    let rules = "        access: full\n        deny_rules: [{ method: GET, path: \"/secret\" }]\n";
    let proxy = start(&policy(&rest("localhost", p, rules), ""), &[&up]);
    let mut t = tunnel(&proxy, "localhost", p).await;
    let r = t.exchange(format!("GET /secret HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await.unwrap();
    assert_eq!(r.status, 403, "control: GET is denied: {r}");
    // (A reader of answers would wait for the body a HEAD's answer announces: the upstream's
    // count says what went through.)
    for path in ["/open", "/secret"] {
        let before = up.count();
        let mut t = tunnel(&proxy, "localhost", p).await;
        let _ = t.tls.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        if path == "/open" {
            assert_eq!(up.count(), before + 1, "control: HEAD elsewhere passes");
            continue;
        }
        assert_eq!(up.count(), before, "HEAD reached the handler GET is denied: {:?}", up.last().map(|s| s.target));
    }
}

/// `deny_rules: [{ method: DELETE }]` is matched case-sensitively: `delete` passes and reaches
/// the upstream. Servers that fold the method (Django and Werkzeug upper-case it, h11/uvicorn
/// accept any token) then run a DELETE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_lower_case_method_slips_past_a_deny_rule() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(
        &policy(
            &rest("localhost", p, "        access: full\n        deny_rules: [{ method: DELETE, path: \"/**\" }]\n"),
            "",
        ),
        &[&up],
    );
    let mut t = tunnel(&proxy, "localhost", p).await;
    let r = t.exchange(format!("DELETE /repo HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await.unwrap();
    assert_eq!((r.status, r.reason().as_str()), (403, "request_denied"), "control: DELETE is denied: {r}");
    let r = t.exchange(format!("GET /repo HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "control: GET passes: {r}");
    let mut leaked = Vec::new();
    for method in ["delete", "Delete", "dElEtE"] {
        let mut t = tunnel(&proxy, "localhost", p).await;
        let before = up.count();
        let r = t.exchange(format!("{method} /repo HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await;
        if up.count() > before {
            leaked.push(format!(
                "{method} -> {:?}, upstream saw method {:?}",
                r.map(|r| r.status),
                up.last().unwrap().method
            ));
        }
    }
    assert!(leaked.is_empty(), "a DELETE under another spelling passed the deny rule:\n{}", leaked.join("\n"));
}

/// `access: read-write` allows POST but not DELETE. `POST` with `X-HTTP-Method-Override:
/// DELETE` (honoured by Google APIs, Rack::MethodOverride, Express's method-override, ...) is
/// forwarded untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_method_override_header_turns_post_into_delete() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(&policy(&rest("localhost", p, "        access: read-write\n"), ""), &[&up]);
    let mut s = session(&proxy, "localhost", p, H1).await;
    let r = s.send(s.request("DELETE", "/item/1").body(empty()).unwrap()).await;
    assert_eq!(r.status, 403, "control: DELETE is not in read-write: {r}");
    let r = s.send(s.request("POST", "/item").body(empty()).unwrap()).await;
    assert_eq!(r.status, 200, "control: POST is: {r}");
    let mut through = Vec::new();
    for header in ["x-http-method-override", "x-http-method", "x-method-override"] {
        let before = up.count();
        let r = s.send(s.request("POST", "/item/1").header(header, "DELETE").body(empty()).unwrap()).await;
        if up.count() > before && up.last().unwrap().header(header) == Some("DELETE") {
            through.push(format!("{header}: DELETE -> {}", r.status));
        }
    }
    assert!(
        through.is_empty(),
        "method overrides reached the upstream past `access: read-write`:\n{}",
        through.join("\n")
    );
}

/// Other spellings servers read as DELETE get past a DELETE deny rule: Express's
/// `method-override` takes the first item of a comma list and trims a no-break space (Node reads
/// header bytes as Latin-1); Laravel, Symfony and gorilla take `_method` from the query of a
/// POST, and PHP reads the key `.method` as `_method`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_method_override_spellings_servers_read_as_delete() {
    let up = Upstream::https();
    let p = up.port();
    let rules = "        access: full\n        deny_rules:\n          - { method: DELETE, path: \"/**\" }\n";
    let proxy = start(&policy(&rest("localhost", p, rules), ""), &[&up]);
    let request = |target: &str, header: &[u8]| {
        let mut r = format!("POST {target} HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Length: 0\r\n").into_bytes();
        r.extend_from_slice(header);
        r.extend_from_slice(b"\r\n");
        r
    };
    let mut through = Vec::new();
    let attempts: [(&str, Vec<u8>); 4] = [
        ("comma list", request("/item/1", b"X-HTTP-Method-Override: DELETE, GET\r\n")),
        ("no-break space", request("/item/1", b"X-HTTP-Method-Override: DELETE\xa0\r\n")),
        ("_method", request("/item/1?_method=DELETE", b"")),
        (".method", request("/item/1?.method=delete", b"")),
    ];
    for (what, bytes) in attempts {
        let mut t = tunnel(&proxy, "localhost", p).await;
        let before = up.count();
        let r = t.exchange(&bytes).await.unwrap();
        if r.status != 403 || up.count() > before {
            through.push(format!("{what} -> {}", r.status));
        }
    }
    assert!(through.is_empty(), "spellings of DELETE got past the deny rule:\n{}", through.join("\n"));
    // The control: plain POST, and a GET whose `_method` no framework reads, pass.
    let mut t = tunnel(&proxy, "localhost", p).await;
    let r = t.exchange(&request("/item/1", b"")).await.unwrap();
    assert_eq!(r.status, 200, "control: POST passes");
    let mut t = tunnel(&proxy, "localhost", p).await;
    let get = format!("GET /item/1?_method=DELETE HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n");
    assert_eq!(t.exchange(get.as_bytes()).await.unwrap().status, 200, "control: GET ignores _method");
}

/// `deny_rules: [{ path: "/admin/**" }]` does not match `/admin;x/secret` or
/// `/admin%3Bx/secret` (Tomcat, Jetty and Spring drop `;` parameters and serve /admin/secret),
/// and an exact `path: /admin` deny does not match `/admin/` (Express's default routing and many
/// others treat the trailing slash as the same route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_deny_rule_dodged_by_path_parameters_and_trailing_slash() {
    let up = Upstream::https();
    let p = up.port();
    let rules = "        access: full\n        deny_rules:\n          - { path: \"/admin/**\" }\n          - { path: \"/settings\" }\n";
    let proxy = start(&policy(&rest("localhost", p, rules), ""), &[&up]);
    let mut controls = Vec::new();
    for path in ["/admin/secret", "/admin", "/settings", "//admin/secret", "/%61dmin/secret", "/x/../admin/secret"] {
        let mut t = tunnel(&proxy, "localhost", p).await;
        let r = t.exchange(format!("GET {path} HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await.unwrap();
        if !matches!(r.status, 400 | 403) {
            controls.push(format!("{path} -> {}", r.status));
        }
    }
    assert!(controls.is_empty(), "control: these spellings must be refused:\n{}", controls.join("\n"));
    assert_eq!(up.count(), 0);
    assert_eq!(session(&proxy, "localhost", p, H1).await.get("/public").await.status, 200, "control: other paths pass");
    let mut passed = Vec::new();
    for path in ["/admin;x/secret", "/admin%3Bx/secret", "/admin;/secret", "/settings/", "/settings;x"] {
        let mut t = tunnel(&proxy, "localhost", p).await;
        let before = up.count();
        let r = t.exchange(format!("GET {path} HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await.unwrap();
        if up.count() > before {
            passed.push(format!("{path} -> {}", r.status));
        }
    }
    assert!(passed.is_empty(), "denied resources reached under another spelling:\n{}", passed.join("\n"));
}

/// Only the request that asks for the upgrade is judged; after the upstream answers 101 the
/// proxy pipes raw bytes. With `Upgrade: h2c` to a server that accepts it, the agent then sends
/// any request it likes over HTTP/2 inside the pipe (h2c smuggling). The rules here allow only
/// `GET /allowed/**`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_h2c_upgrade_smuggles_unjudged_requests() {
    let up = UpgradingUpstream::start(None);
    let p = up.addr.port();
    let proxy = start(
        &policy(&rest("localhost", p, "        rules: [{ allow: { method: GET, path: \"/allowed/**\" } }]\n"), ""),
        &[],
    );
    // Controls: the rules are in force for ordinary requests.
    let r = to_proxy(
        proxy.addr,
        format!("GET http://localhost:{p}/secret HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403, "control: /secret is refused: {r}");
    let r = to_proxy(
        proxy.addr,
        format!("GET http://localhost:{p}/allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200, "control: /allowed/x passes: {r}");

    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let upgrade = format!(
        "GET http://localhost:{p}/allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let r = tokio::time::timeout(STEP, read_response(&mut tcp)).await.unwrap().unwrap();
    let mut smuggled = None;
    if r.status == 101 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 over the upgraded pipe");
        tokio::spawn(conn);
        let req = Request::builder().method("GET").uri(format!("http://localhost:{p}/secret")).body(empty()).unwrap();
        smuggled =
            tokio::time::timeout(STEP, sender.send_request(req)).await.ok().and_then(Result::ok).map(|r| r.status());
    }
    let seen = up.seen();
    assert!(
        !seen.iter().any(|s| s.ends_with("/secret")),
        "a request the rules refuse reached the upstream through the upgraded pipe (upgrade answered {}, smuggled answer {smuggled:?}); upstream saw {seen:?}",
        r.status
    );
}

// =============================================================================================
// 3. Holes: denial of service (bounded)
// =============================================================================================

/// When the proxy runs out of file descriptors, `accept` fails with EMFILE and the accept loop
/// retries at once, forever: a core at 100% for as long as the agent holds its connections.
/// The proxy's descriptor limit is lowered to 64 with prlimit so a few dozen connections do it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_descriptor_exhaustion_makes_the_accept_loop_spin() {
    require_root();
    let up = Upstream::https();
    let proxy = start(&policy(&rest("localhost", up.port(), FULL), ""), &[&up]);
    let pid = proxy_pid(&proxy);
    let limit = libc::rlimit { rlim_cur: 64, rlim_max: 64 };
    // SAFETY: prlimit on our own child with a valid struct.
    assert_eq!(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) }, 0, "prlimit");
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
        f[11] + f[12] // utime + stime (fields 14, 15), in clock ticks
    };
    // Control: idle, the proxy uses (almost) no CPU.
    let c0 = cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = cpu() - c0;
    let mut held = Vec::new();
    for _ in 0..80 {
        if let Ok(s) = std::net::TcpStream::connect(proxy.addr) {
            held.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c1 = cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = cpu() - c1;
    drop(held);
    // Control: it recovers once the descriptors are free.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        session(&proxy, "localhost", up.port(), H1).await.get("/after").await.status,
        200,
        "control: the proxy serves again"
    );
    assert!(idle < 20, "control: the idle proxy used {idle} ticks in 1 s");
    assert!(
        busy < 50,
        "at its descriptor limit the proxy burnt {busy} clock ticks (of 100) in one second: the accept loop spins"
    );
}

/// Neither the TLS handshake after CONNECT nor a request head has a deadline: a connection that
/// stops half-way holds its task, buffers and descriptor for ever (slowloris). 35 s is past
/// the 30 s hyper would use by default for request heads if the server had a timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_half_open_connections_are_never_timed_out() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(&policy(&rest("localhost", p, FULL), ""), &[&up]);
    // Control: a complete exchange works.
    assert_eq!(session(&proxy, "localhost", p, H1).await.get("/ok").await.status, 200);
    let mut half_head = TcpStream::connect(proxy.addr).await.unwrap();
    half_head.write_all(format!("CONNECT localhost:{p} HTTP/1.1\r\nHost: local").as_bytes()).await.unwrap();
    let mut no_tls = connect(proxy.addr, &format!("localhost:{p}")).await.expect("CONNECT");
    no_tls.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // the first bytes of a ClientHello, then nothing
    tokio::time::sleep(Duration::from_secs(35)).await;
    let closed = |r: Result<std::io::Result<usize>, tokio::time::error::Elapsed>| matches!(r, Ok(Ok(0)) | Ok(Err(_)));
    let mut buf = [0u8; 64];
    let head_closed = closed(tokio::time::timeout(Duration::from_millis(300), half_head.read(&mut buf)).await);
    let tls_closed = closed(tokio::time::timeout(Duration::from_millis(300), no_tls.read(&mut buf)).await);
    assert!(
        head_closed && tls_closed,
        "after 35 s: half-sent CONNECT closed: {head_closed}, stalled TLS handshake closed: {tls_closed}"
    );
}

/// On an endpoint with `request_body_credential_rewrite`, every request body is buffered (up
/// to 1 MiB) until it ends, with no bound on how many are buffered at once and no deadline:
/// streams that send 1 MiB and never finish pin that memory in leash (root) for ever. 64
/// stalled HTTP/2 streams on one connection; the proxy's resident memory must not grow by more
/// than 32 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_stalled_rewrite_bodies_pin_unbounded_memory() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(
        &policy(
            &rest("localhost", p, "        access: full\n        request_body_credential_rewrite: true\n"),
            TOK_LOCALHOST,
        ),
        &[&up],
    );
    let pid = proxy_pid(&proxy);
    let rss_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
    };
    // Control: a complete body is rewritten and forwarded.
    let mut s = session(&proxy, "localhost", p, H2).await;
    let r = s.send(s.request("POST", "/body").body(Full::new(Bytes::from(format!("t={PH}")))).unwrap()).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(up.last().unwrap().body, format!("t={SECRET}").into_bytes());
    let before = rss_kib();

    let tls = tls_over(
        connect(proxy.addr, &format!("localhost:{p}")).await.expect("CONNECT"),
        &TlsOptions::new(&proxy.ca_pem, "localhost", H2),
    )
    .await
    .unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(256 << 20)
        .handshake::<_, chunked_body::ChunkBody>(TokioIo::new(tls))
        .await
        .expect("h2");
    let conn = tokio::spawn(conn);
    let mut pending = Vec::new();
    let mut feeds = Vec::new();
    for _ in 0..64 {
        let (tx, body) = chunked_body::channel();
        let req = Request::builder().method("POST").uri(format!("https://localhost:{p}/stall")).body(body).unwrap();
        let mut sender = sender.clone();
        pending.push(tokio::spawn(async move {
            let _ = sender.ready().await;
            let _ = sender.send_request(req).await;
        }));
        // 1 MiB minus a little, in 64 KiB pieces; the body is never ended.
        for _ in 0..15 {
            let _ = tx.send(Bytes::from(vec![b'a'; 64 << 10]));
        }
        let _ = tx.send(Bytes::from(vec![b'a'; (64 << 10) - 64]));
        feeds.push(tx);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    conn.abort();
    drop(feeds);
    for p in pending {
        p.abort();
    }
    assert!(grown_mib <= 32, "64 stalled 1 MiB bodies grew the proxy's resident memory by {grown_mib} MiB");
}

/// A request body fed from a channel; it ends only when the sender is dropped.
mod chunked_body {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use hyper::body::Frame;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    pub struct ChunkBody(UnboundedReceiver<Bytes>);

    impl hyper::body::Body for ChunkBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
        }
    }

    pub fn channel() -> (UnboundedSender<Bytes>, ChunkBody) {
        let (tx, rx) = unbounded_channel();
        (tx, ChunkBody(rx))
    }
}

// =============================================================================================
// 4. Refused today: credential placeholders
// =============================================================================================

/// `localhost` is bound to TOK; `127.0.0.1` (the same upstream) is not.
fn bound_and_unbound(p: u16) -> String {
    policy(
        &format!(
            "{}      - host: 127.0.0.1\n        port: {p}\n        protocol: rest\n        access: full\n",
            rest("localhost", p, FULL)
        ),
        TOK_LOCALHOST,
    )
}

/// Spellings that are not the placeholder (case, double encoding, lookalikes, split across
/// header lines, base64 outside `Basic`) never turn into the value: nothing but the proxy holds
/// it, and it writes it only for a literal or singly-encoded placeholder. A literal placeholder
/// in any header, cookies included (HTTP/1.1 and HTTP/2), is refused for an unbound host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholder_variants_never_carry_the_value_to_an_unbound_host() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(&bound_and_unbound(p), &[&up]);
    let b64 = base64::engine::general_purpose::STANDARD;
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("x-a", b"LEASH:RESOLVE:ENV:TOK".to_vec()),
        ("x-a", b"Leash:resolve:env:TOK".to_vec()),
        ("x-a", b"leash%3Aresolve%3Aenv%3ATOK".to_vec()),
        ("x-a", b"leash%253Aresolve%253Aenv%253ATOK".to_vec()),
        ("x-a", "\u{ff4c}eash:resolve:env:TOK".as_bytes().to_vec()),
        ("x-a", "leash\u{200b}:resolve:env:TOK".as_bytes().to_vec()),
        ("x-a", b"leash:resolve:env: TOK".to_vec()),
        ("authorization", format!("Bearer {}", b64.encode(PH)).into_bytes()),
        ("authorization", format!("Basic\t{}", b64.encode(format!("u:{PH}"))).into_bytes()),
    ];
    let mut s = session(&proxy, "127.0.0.1", p, H1).await;
    for (name, value) in &variants {
        let req = s
            .request("GET", "/variant")
            .header(*name, hyper::header::HeaderValue::from_bytes(value).unwrap())
            .body(empty())
            .unwrap();
        let r = s.send(req).await;
        assert!(matches!(r.status, 200 | 403), "{name}: {:?}: {r}", String::from_utf8_lossy(value));
    }
    // Split over two lines of one header (a server joining them reads "leash:resolve:, env:TOK").
    let r = s
        .send(
            s.request("GET", "/split").header("x-a", "leash:resolve:").header("x-a", "env:TOK").body(empty()).unwrap(),
        )
        .await;
    assert_eq!(r.status, 200, "{r}");
    for target in [
        "/q?k=leash%253Aresolve%253Aenv%253ATOK",
        "/q?k=LEASH%3ARESOLVE%3AENV%3ATOK",
        "/q?k=leash%3aresolve%3aenv%3a%54OK%2",
    ] {
        let mut t = tunnel(&proxy, "127.0.0.1", p).await;
        let r = t.exchange(format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n").as_bytes()).await.unwrap();
        assert!(matches!(r.status, 200 | 400 | 403), "{target}: {r}");
    }
    // A literal placeholder in a cookie is a placeholder like any other.
    for alpn in [H1, H2] {
        let mut s = session(&proxy, "127.0.0.1", p, alpn).await;
        let before = up.count();
        let r = s
            .send(
                s.request("GET", "/cookie")
                    .header("cookie", "a=1")
                    .header("cookie", format!("sid={PH}"))
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!((r.status, r.reason().as_str()), (403, "credential_endpoint_mismatch"), "{alpn:?}: {r}");
        assert_eq!(up.count(), before, "{alpn:?}: forwarded");
    }
    let unbound: Vec<Seen> = up.seen();
    assert!(!unbound.is_empty(), "some variants were forwarded");
    assert!(
        unbound.iter().all(|s| !s.everything().contains(SECRET)),
        "the value reached the unbound host: {unbound:?}"
    );
    // Control: the bound host gets the value in the cookie, on both protocols.
    for alpn in [H1, H2] {
        let mut s = session(&proxy, "localhost", p, alpn).await;
        let r = s.send(s.request("GET", "/cookie").header("cookie", format!("sid={PH}")).body(empty()).unwrap()).await;
        assert_eq!(r.status, 200, "{r}");
        assert!(up.last().unwrap().everything().contains(&format!("sid={SECRET}")), "{alpn:?}: {:?}", up.last());
    }
    assert_not_logged(&proxy);
}

/// What the agent puts on the CONNECT request itself (its target, `Proxy-Authorization`, any
/// header) is never forwarded, and hop-by-hop headers of inner requests (`Proxy-Authorization`,
/// those named by `Connection`) stop at the proxy even after the rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_request_and_hop_by_hop_headers_carry_nothing() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(&bound_and_unbound(p), &[&up]);
    // A placeholder as the CONNECT target.
    for target in [format!("{PH}:443"), PH.to_string(), format!("[{PH}]:{p}")] {
        let tcp = TcpStream::connect(proxy.addr).await.unwrap();
        match connect_over(tcp, target.as_bytes()).await {
            Ok(_) => panic!("CONNECT {target} accepted"),
            Err(r) => assert_eq!(r.status, 400, "CONNECT {target}: {r}"),
        }
    }
    // Placeholders on the CONNECT head, to the unbound host.
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(format!("CONNECT 127.0.0.1:{p} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nProxy-Authorization: Bearer {PH}\r\nX-Tok: {PH}\r\n\r\n").as_bytes()).await.unwrap();
    let r = tokio::time::timeout(STEP, read_response(&mut tcp)).await.unwrap().unwrap();
    if r.status == 200 {
        let tls = tls_over(tcp, &TlsOptions::new(&proxy.ca_pem, "127.0.0.1", H1)).await.unwrap();
        let mut s = Session::over(tls, &format!("127.0.0.1:{p}")).await;
        assert_eq!(s.get("/after-connect-headers").await.status, 200);
        let seen = up.last().unwrap();
        assert!(
            !seen.everything().contains(SECRET) && !seen.everything().contains(PH),
            "CONNECT headers leaked into the tunnel: {seen:?}"
        );
    }
    // Inner hop-by-hop headers to the bound host: rewritten or not, never forwarded.
    let mut s = session(&proxy, "localhost", p, H1).await;
    let req = s
        .request("GET", "/hop")
        .header("authorization", format!("Bearer {PH}"))
        .header("proxy-authorization", format!("Bearer {PH}"))
        .header("connection", "x-smuggle")
        .header("x-smuggle", PH)
        .body(empty())
        .unwrap();
    let r = s.send(req).await;
    assert_eq!(r.status, 200, "{r}");
    let seen = up.last().unwrap();
    assert_eq!(
        seen.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str()),
        "control: the end-to-end header is rewritten"
    );
    assert!(
        seen.header("proxy-authorization").is_none() && seen.header("x-smuggle").is_none(),
        "hop-by-hop headers forwarded: {seen:?}"
    );
    assert_eq!(seen.everything().matches(SECRET).count(), 1, "the value appears once, in Authorization: {seen:?}");
    assert_not_logged(&proxy);
}

/// Bodies of endpoints without the opt-in and chunked trailers are not rewritten: the upstream
/// gets the literal placeholder, bound host or not, so nothing leaks (note: an unbound
/// placeholder there is not refused or audited either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_in_unopted_bodies_and_trailers_stay_literal() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(&bound_and_unbound(p), &[&up]);
    let chunk = format!("{{\"t\":\"{PH}\"}}");
    for host in ["127.0.0.1", "localhost"] {
        let mut t = tunnel(&proxy, host, p).await;
        let req = format!(
            "POST /body HTTP/1.1\r\nHost: {host}:{p}\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\nTrailer: X-T\r\n\r\n{:x}\r\n{chunk}\r\n0\r\nX-T: {PH}\r\n\r\n",
            chunk.len()
        );
        let r = t.exchange(req.as_bytes()).await.unwrap();
        assert_eq!(r.status, 200, "{host}: {r}");
        let seen = up.last().unwrap();
        assert_eq!(String::from_utf8_lossy(&seen.body), chunk, "{host}: the body passes unchanged");
    }
    assert!(up.seen().iter().all(|s| !s.everything().contains(SECRET)));
    // Control: the same placeholder in a header reaches the bound host as the value.
    let mut s = session(&proxy, "localhost", p, H1).await;
    s.send(s.request("GET", "/h").header("x-key", PH).body(empty()).unwrap()).await;
    assert_eq!(up.last().unwrap().header("x-key"), Some(SECRET));
}

/// Absolute-form `http://` requests: the `Host` header must name the same host and port as the
/// target, so a request cannot be judged (and its credential bound) by one name and routed or
/// virtual-hosted by another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_host_header_must_name_the_target() {
    let up = Upstream::plain();
    let p = up.port();
    let proxy = start(&bound_and_unbound(p), &[]);
    let auth = format!("Authorization: Bearer {PH}\r\n");
    for (target, hosts) in [
        (format!("http://127.0.0.1:{p}/a"), vec![format!("localhost:{p}")]),
        (format!("http://localhost:{p}/a"), vec![format!("127.0.0.1:{p}")]),
        (format!("http://localhost:{p}/a"), vec![format!("localhost:{p}"), format!("127.0.0.1:{p}")]),
        (format!("http://localhost:{p}/a"), vec![format!("localhost:{}", p.wrapping_add(1).max(1))]),
    ] {
        let head: String = hosts.iter().map(|h| format!("Host: {h}\r\n")).collect();
        let r = to_proxy(proxy.addr, format!("GET {target} HTTP/1.1\r\n{head}{auth}\r\n").as_bytes()).await;
        assert!(matches!(r.status, 400 | 403 | 421), "{target} with {hosts:?}: {r}");
    }
    for target in [format!("http://localhost:{p}@127.0.0.1:{p}/a"), format!("http://{PH}@localhost:{p}/a")] {
        let r = to_proxy(proxy.addr, format!("GET {target} HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await;
        assert_eq!(r.status, 400, "{target}: {r}");
    }
    assert_eq!(up.count(), 0, "a mismatched request reached the upstream");
    // Control: a matching absolute-form request goes through; with a placeholder it is refused,
    // since credentials are only swapped into requests that travel over TLS.
    let r =
        to_proxy(proxy.addr, format!("GET http://localhost:{p}/a HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes())
            .await;
    assert_eq!(r.status, 200, "control: {r}");
    let r = to_proxy(
        proxy.addr,
        format!("GET http://localhost:{p}/a HTTP/1.1\r\nHost: localhost:{p}\r\n{auth}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403, "a placeholder over plaintext: {r}");
    assert_eq!(up.count(), 1, "only the control reached the upstream");
    assert_not_logged(&proxy);
}

/// Upstream connections are pooled by the tunnel's own host and port: a request in a tunnel to
/// the unbound name never rides a connection dialled (and TLS-verified) for the bound one, and
/// the reverse, over HTTP/1.1 and HTTP/2 upstreams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_upstream_connections_are_not_shared_between_hosts() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(&bound_and_unbound(p), &[&up]);
    for alpn in [H1, H2] {
        for round in 0..2 {
            let mut bound = session(&proxy, "localhost", p, alpn).await;
            let r = bound
                .send(
                    bound
                        .request("GET", &format!("/bound/{round}"))
                        .header("authorization", format!("Bearer {PH}"))
                        .body(empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(r.status, 200, "{r}");
            let mut unbound = session(&proxy, "127.0.0.1", p, alpn).await;
            assert_eq!(unbound.get(&format!("/unbound/{round}")).await.status, 200);
            let r = unbound
                .send(
                    unbound
                        .request("GET", "/unbound/ph")
                        .header("authorization", format!("Bearer {PH}"))
                        .body(empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(r.status, 403, "{r}");
        }
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 8);
    for s in &seen {
        if s.target.starts_with("/bound/") {
            assert_eq!(s.sni.as_deref(), Some("localhost"), "{s:?}");
            assert_eq!(s.header("authorization"), Some(format!("Bearer {SECRET}").as_str()));
        } else {
            assert_eq!(s.sni, None, "a request for 127.0.0.1 came on a connection dialled for another name: {s:?}");
            assert!(!s.everything().contains(SECRET));
        }
    }
}

// =============================================================================================
// 5. Refused today: L7 rules and framing
// =============================================================================================

fn allowed_only(p: u16) -> String {
    policy(&rest("localhost", p, "        rules:\n          - allow: { method: GET, path: \"/allowed/**\" }\n          - allow: { method: POST, path: \"/allowed/**\" }\n"), "")
}

/// Framing variants that make a front end and a back end disagree about where a request ends
/// (obs-fold, `chunked, identity`, space before the colon, bare LF, duplicate or unknown
/// Transfer-Encoding, chunk-size overflow): whatever the proxy does with each, the request
/// hidden in the body (`GET /secret`, refused by the rules) never reaches the upstream, because
/// the proxy parses once and re-frames every request it forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_variants_never_deliver_the_hidden_request() {
    let up = Upstream::https_h1_only();
    let p = up.port();
    let proxy = start(&allowed_only(p), &[&up]);
    let hidden = format!("GET /secret HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n");
    let chunked_then_hidden = format!("0\r\n\r\n{hidden}");
    let n = chunked_then_hidden.len();
    let heads = [
        format!("Content-Length: {n}\r\nTransfer-Encoding:\r\n chunked"),
        format!("Content-Length: {n}\r\nTransfer-Encoding: chunked, identity"),
        format!("Content-Length: {n}\r\nTransfer-Encoding : chunked"),
        format!("Content-Length: {n}\r\nTransfer Encoding: chunked"),
        format!("Content-Length: {n}\r\nTransfer-Encoding: xchunked"),
        format!("Content-Length: {n}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity"),
        format!("Content-Length: {n}\r\nTransfer-Encoding:\tchunked"),
        format!("Content-Length: {n}\r\nTransfer-Encoding: \"chunked\""),
        format!("Content-Length: +{n}"),
        format!("Content-Length: {n}\r\nContent-Length: 0"),
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked".to_string(),
    ];
    let mut wrong = Vec::new();
    for head in &heads {
        let mut t = tunnel(&proxy, "localhost", p).await;
        let req = format!("POST /allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\n{head}\r\n\r\n{chunked_then_hidden}");
        let first = t.exchange(req.as_bytes()).await.map(|r| r.status);
        let _ = tokio::time::timeout(Duration::from_millis(500), read_response(&mut t.tls)).await;
        if up.seen().iter().any(|s| s.target == "/secret") {
            wrong.push(format!("{head:?} -> {first:?}"));
        }
    }
    // Bare LF line endings throughout, with CL and TE.
    let mut t = tunnel(&proxy, "localhost", p).await;
    let lf = format!("POST /allowed/lf HTTP/1.1\nHost: localhost:{p}\nContent-Length: {n}\nTransfer-Encoding: chunked\n\n{chunked_then_hidden}");
    let _ = t.exchange(lf.as_bytes()).await;
    let _ = tokio::time::timeout(Duration::from_millis(500), read_response(&mut t.tls)).await;
    // A chunk size that overflows 64 bits.
    let mut t = tunnel(&proxy, "localhost", p).await;
    let overflow = format!("POST /allowed/of HTTP/1.1\r\nHost: localhost:{p}\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000001\r\nA\r\n0\r\n\r\n{hidden}");
    let _ = t.exchange(overflow.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if up.seen().iter().any(|s| s.target == "/secret") {
        wrong.push("bare LF or chunk-size overflow".into());
    }
    assert!(wrong.is_empty(), "the hidden request reached the upstream:\n{}", wrong.join("\n"));
    // Control: honest pipelining works, and a pipelined refused request is judged on its own.
    let mut t = tunnel(&proxy, "localhost", p).await;
    let two = format!("GET /allowed/1 HTTP/1.1\r\nHost: localhost:{p}\r\n\r\nGET /allowed/2 HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n{hidden}");
    let a = t.exchange(two.as_bytes()).await.unwrap();
    let b = tokio::time::timeout(STEP, read_response(&mut t.tls)).await.unwrap().unwrap();
    let c = tokio::time::timeout(STEP, read_response(&mut t.tls)).await.unwrap().unwrap();
    assert_eq!((a.status, b.status, c.status), (200, 200, 403));
    let targets: Vec<String> = up.seen().into_iter().map(|s| s.target).collect();
    assert!(targets.ends_with(&["/allowed/1".to_string(), "/allowed/2".to_string()]), "{targets:?}");
    assert!(!targets.iter().any(|t| t == "/secret"));
}

/// Method spellings the rules do not name fail closed when only allow rules apply, and HTTP/2
/// extended CONNECT (RFC 8441) is not offered; a CONNECT sent inside a tunnel opens no pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_methods_fail_closed_and_connect_inside_a_tunnel_opens_no_pipe() {
    let up = Upstream::https_h1_only();
    let p = up.port();
    let proxy = start(&allowed_only(p), &[&up]);
    for method in ["get", "Get", "GET ", "CONNECT", "TRACE", "PRI"] {
        let mut t = tunnel(&proxy, "localhost", p).await;
        let r = t.exchange(format!("{method} /allowed/x HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await;
        assert!(r.as_ref().map_or(true, |r| matches!(r.status, 400 | 403 | 405)), "{method:?}: {r:?}");
    }
    assert_eq!(up.count(), 0, "{:?}", up.seen());
    // h2 extended CONNECT: the proxy does not advertise it.
    let mut s = session(&proxy, "localhost", p, H2).await;
    let mut req = Request::builder()
        .method("CONNECT")
        .uri(format!("https://localhost:{p}/allowed/ws"))
        .version(hyper::Version::HTTP_2)
        .body(empty())
        .unwrap();
    req.extensions_mut().insert(hyper::ext::Protocol::from_static("websocket"));
    assert!(s.try_send(req).await.map(|r| r.status != 200).unwrap_or(true));
    assert_eq!(up.count(), 0);
    // CONNECT inside a tunnel whose rules let any method through `/`: whatever the answer, what
    // the agent writes afterwards is not piped anywhere.
    let full = start(
        &policy(&rest("localhost", p, "        access: full\n        deny_rules: [{ path: \"/secret\" }]\n"), ""),
        &[&up],
    );
    let mut t = tunnel(&full, "localhost", p).await;
    let r = t.exchange(format!("CONNECT localhost:{p} HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await;
    let _ = t.tls.write_all(format!("GET /secret HTTP/1.1\r\nHost: localhost:{p}\r\n\r\n").as_bytes()).await;
    let _ = t.tls.flush().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !up.seen().iter().any(|s| s.target == "/secret"),
        "CONNECT inside the tunnel ({r:?}) opened a pipe: {:?}",
        up.seen()
    );
    // Control.
    assert_eq!(session(&proxy, "localhost", p, H1).await.get("/allowed/ok").await.status, 200);
}

// =============================================================================================
// 6. Refused today: SSRF
// =============================================================================================

/// Names that resolve to loopback through /etc/hosts (`vm`, `runsc` here), wildcard patterns
/// over `localhost`, and IPv6 spellings of 127.0.0.1 are refused without dialling; the redirect
/// an allowed upstream answers with is handed back, not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_by_other_names_and_redirects_are_not_reached() {
    let target = Listener::new("127.0.0.1:0");
    let up = UpgradingUpstream::start(Some(target.addr));
    let p = up.addr.port();
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let alias = ["vm", "runsc"]
        .into_iter()
        .find(|n| hosts.lines().any(|l| l.starts_with("127.") && l.split_whitespace().skip(1).any(|w| w == *n)));
    let alias = alias.unwrap_or("localhost");
    let q = target.addr.port();
    let eps = format!(
        "      - {{ host: {alias}, port: {p}, protocol: rest, access: full }}\n      - {{ host: \"**.localhost\", port: {p}, protocol: rest, access: full }}\n      - {{ host: {alias}, port: {q}, protocol: tcp }}\n      - {{ host: localhost, port: {q}, protocol: rest, access: full }}\n{}",
        rest("localhost", p, FULL)
    );
    let proxy = start(&policy(&eps, ""), &[]);
    let get = |host: &str, port: u16, path: &str| {
        format!("GET http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n")
    };
    let mut wrong = Vec::new();
    for (host, port) in [
        (alias, p),
        ("a.localhost", p),
        ("[::ffff:127.0.0.1]", p),
        ("[::1]", p),
        ("[::ffff:7f00:1]", p),
        ("[::127.0.0.1]", p),
        ("[64:ff9b::7f00:1]", p),
        ("localhost", q),
    ] {
        let r = to_proxy(proxy.addr, get(host, port, "/x").as_bytes()).await;
        if !matches!(r.status, 400 | 403 | 502) {
            wrong.push(format!("http://{host}:{port}/ -> {r}"));
        }
    }
    for t in [format!("{alias}:{q}"), format!("[::ffff:127.0.0.1]:{q}"), format!("[::1]:{q}")] {
        if connect(proxy.addr, &t).await.is_ok() {
            wrong.push(format!("CONNECT {t} accepted"));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(wrong.is_empty(), "loopback reached by another name:\n{}", wrong.join("\n"));
    assert!(up.seen().is_empty(), "{:?}", up.seen());
    assert_eq!(target.accepted(), 0);
    // Control: the endpoint that lists allowed_ips is reached; its redirect comes back as is.
    let r = to_proxy(proxy.addr, get("localhost", p, "/plain").as_bytes()).await;
    assert_eq!(r.status, 200, "{r}");
    let r = to_proxy(proxy.addr, get("localhost", p, "/redirect").as_bytes()).await;
    assert_eq!(r.status, 302, "{r}");
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("http://{}/pwn", target.addr).as_str())
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(target.accepted(), 0, "the proxy followed the redirect");
}

// =============================================================================================
// 7. Refused today: garbage and floods (bounded)
// =============================================================================================

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK for `GET https://authority/path` with literal fields only (no dynamic table).
fn hpack_get(authority: &str, path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87, 0x04, path.len() as u8];
    b.extend_from_slice(path.as_bytes());
    b.extend_from_slice(&[0x01, authority.len() as u8]);
    b.extend_from_slice(authority.as_bytes());
    b
}

/// `type:flags:stream[:goaway code]` of each frame in `bytes`, for messages.
fn frames(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 9 <= bytes.len() {
        let len = (usize::from(bytes[i]) << 16) | (usize::from(bytes[i + 1]) << 8) | usize::from(bytes[i + 2]);
        let (kind, flags) = (bytes[i + 3], bytes[i + 4]);
        let stream = u32::from_be_bytes([bytes[i + 5], bytes[i + 6], bytes[i + 7], bytes[i + 8]]);
        let payload = &bytes[i + 9..(i + 9 + len).min(bytes.len())];
        let code = if kind == 0x7 && payload.len() >= 8 {
            format!(":{}", u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]))
        } else {
            String::new()
        };
        out.push(format!("{kind}:{flags}:{stream}{code}"));
        i += 9 + len;
    }
    out.join(" ")
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Writes `bytes` and then reads until the peer closes or goes quiet; returns what was read.
async fn write_and_drain(t: &mut Tunnel, bytes: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(STEP, t.tls.write_all(bytes)).await;
    let _ = t.tls.flush().await;
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1500), t.tls.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// Huge heads, hundreds of tunnels at once, garbage instead of TLS, an HTTP/2 rapid-reset burst
/// and a CONTINUATION flood: each is refused or absorbed, the proxy keeps running and answers
/// the next ordinary request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_and_floods_leave_the_proxy_serving() {
    let up = Upstream::https();
    let p = up.port();
    let mut proxy = start(&policy(&rest("localhost", p, FULL), ""), &[&up]);
    let authority = format!("localhost:{p}");

    // A 1 MiB header, and 20 000 small ones, inside a tunnel and on the front door.
    let big = format!("GET /big HTTP/1.1\r\nHost: {authority}\r\nX-Big: {}\r\n\r\n", "a".repeat(1 << 20));
    let many = format!("GET /many HTTP/1.1\r\nHost: {authority}\r\n{}\r\n", "X-A: b\r\n".repeat(20_000));
    for req in [&big, &many] {
        let mut t = tunnel(&proxy, "localhost", p).await;
        if let Ok(r) = t.exchange(req.as_bytes()).await {
            assert!(r.status >= 400, "{}", r.status);
        }
        let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
        let _ = tcp.write_all(req.replacen("GET /", &format!("GET http://{authority}/"), 1).as_bytes()).await;
        if let Ok(Ok(r)) = tokio::time::timeout(STEP, read_response(&mut tcp)).await {
            assert!(r.status >= 400, "{}", r.status);
        }
    }
    // 300 tunnels at once, each with a request.
    let mut tasks = Vec::new();
    for i in 0..300 {
        let (addr, ca) = (proxy.addr, proxy.ca_pem.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Session::open(addr, &format!("localhost:{p}"), &TlsOptions::new(&ca, "localhost", H1)).await;
            s.get(&format!("/many/{i}")).await.status
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap_or(0) == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 300, "concurrent tunnels served");
    // Garbage instead of a ClientHello.
    let mut tcp = connect(proxy.addr, &authority).await.expect("CONNECT");
    let garbage: Vec<u8> = (0..8192u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let _ = tcp.write_all(&garbage).await;
    let mut buf = [0u8; 512];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
            Err(_) => break false,
        }
    };
    assert!(closed, "the proxy kept a tunnel whose TLS handshake was garbage");

    // Control for the hand-made frames: one well-formed request is answered (HEADERS on 1).
    let block = hpack_get(&authority, "/reset");
    let mut t = Tunnel::open(proxy.addr, &authority, &TlsOptions::new(&proxy.ca_pem, "localhost", H2)).await;
    let mut one = H2_PREFACE.to_vec();
    one.extend(h2_frame(0x4, 0, 0, &[]));
    one.extend(h2_frame(0x1, 0x5, 1, &block));
    let answer = write_and_drain(&mut t, &one).await;
    assert!(
        frames(&answer).split(' ').any(|f| f.starts_with("1:") && f.ends_with(":1")),
        "no answer to a hand-made request: {}",
        frames(&answer)
    );
    drop(t);

    // HTTP/2 rapid reset: 5000 streams opened and cancelled at once.
    let before = up.count();
    let mut t = Tunnel::open(proxy.addr, &authority, &TlsOptions::new(&proxy.ca_pem, "localhost", H2)).await;
    let mut burst = H2_PREFACE.to_vec();
    burst.extend(h2_frame(0x4, 0, 0, &[]));
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        burst.extend(h2_frame(0x1, 0x5, id, &block));
        burst.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    let answer = write_and_drain(&mut t, &burst).await;
    let goaway = answer.windows(4).any(|w| w[3] == 0x7 && w[..3] != [0, 0, 0]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let forwarded = up.count() - before;
    eprintln!(
        "rapid reset: goaway={goaway}, {} bytes back, {forwarded} requests forwarded upstream: {}",
        answer.len(),
        frames(&answer)
    );
    assert!(forwarded <= 5000, "{forwarded}");

    // CONTINUATION flood: one header block that never ends.
    let mut t = Tunnel::open(proxy.addr, &authority, &TlsOptions::new(&proxy.ca_pem, "localhost", H2)).await;
    let mut flood = H2_PREFACE.to_vec();
    flood.extend(h2_frame(0x4, 0, 0, &[]));
    flood.extend(h2_frame(0x1, 0x1, 1, &block));
    let junk: Vec<u8> = [0x40u8, 3, b'x', b'-', b'a', 8].iter().copied().chain(*b"aaaaaaaa").collect();
    for _ in 0..20_000 {
        flood.extend(h2_frame(0x9, 0, 1, &junk));
    }
    let _ = write_and_drain(&mut t, &flood).await;

    assert!(proxy.running(), "the proxy died; stderr:\n{}", proxy.stderr());
    let mut s = session(&proxy, "localhost", p, H2).await;
    assert_eq!(s.get("/after").await.status, 200, "control: the proxy still serves");
}

/// A body over the 1 MiB rewrite limit on an opted-in endpoint is refused with 413 and nothing
/// is forwarded (with Content-Length, chunked, and HTTP/2); a body under it is rewritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_rewrite_limit_is_413_and_not_forwarded() {
    let up = Upstream::https();
    let p = up.port();
    let proxy = start(
        &policy(
            &rest("localhost", p, "        access: full\n        request_body_credential_rewrite: true\n"),
            TOK_LOCALHOST,
        ),
        &[&up],
    );
    let over = format!("{PH}{}", "a".repeat((1 << 20) + 1 - PH.len()));
    for alpn in [H1, H2] {
        let mut s = session(&proxy, "localhost", p, alpn).await;
        let r = s.try_send(s.request("POST", "/big").body(Full::new(Bytes::from(over.clone()))).unwrap()).await;
        if let Ok(r) = r {
            assert_eq!(r.status, 413, "{alpn:?}: {}", r.status);
        }
    }
    let mut t = tunnel(&proxy, "localhost", p).await;
    let mut chunked =
        format!("POST /big HTTP/1.1\r\nHost: localhost:{p}\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for _ in 0..17 {
        chunked.extend_from_slice(format!("10000\r\n{}\r\n", "b".repeat(1 << 16)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    if let Ok(r) = t.exchange(&chunked).await {
        assert_eq!(r.status, 413, "chunked: {}", r.status);
    }
    assert_eq!(up.count(), 0, "an oversized body was forwarded");
    let mut s = session(&proxy, "localhost", p, H1).await;
    let r = s.send(s.request("POST", "/small").body(Full::new(Bytes::from(format!("k={PH}")))).unwrap()).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(up.last().unwrap().body, format!("k={SECRET}").into_bytes());
}

// =============================================================================================
// 8. Refused today: leash's secrets from inside `leash run`
// =============================================================================================

/// As the agent (`nobody`), inside `leash run`: leash's environment and memory (it holds TOK in
/// both), a 0600 credentials file, the environment of a process of the agent's own uid outside
/// the sandbox, private keys in `/run/leash/<id>/`, and core dumps are all out of reach. The
/// controls show each secret is really there: root reads leash's environment while it runs,
/// `nobody` outside the sandbox reads the same-uid process's environment.
#[test]
fn agent_cannot_read_leash_secrets() {
    require_root();
    let scratch = Scratch::new("secrets");
    let creds = scratch.file("creds", CREDS);
    std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).unwrap();
    let policy = scratch.file(
        "p.yaml",
        "version: 1\nprocess: { run_as_user: nobody }\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      - { host: localhost, port: 9, protocol: rest, access: full }\ncredentials:\n  TOK: { hosts: [localhost] }\n",
    );
    // A process of the agent's uid, outside, holding the value in its environment (the user's
    // own shell when the agent runs as the invoking user).
    let (uid, gid) = (65534, 65534);
    let mut victim = Command::new("/bin/sleep").arg("30").env("TOK", SECRET).uid(uid).gid(gid).spawn().expect("victim");
    let vpid = victim.id();
    let control = Command::new("/bin/sh")
        .args(["-c", &format!("tr '\\0' '\\n' < /proc/{vpid}/environ")])
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&control.stdout).contains(SECRET),
        "control: nobody outside reads a nobody process's environment"
    );

    let script = format!(
        "sleep 1\n\
         echo \"env=$TOK\"\n\
         echo \"leash_environ=$(tr '\\0' '\\n' < /proc/$PPID/environ 2>&1 | grep -c {SECRET})\"\n\
         echo \"leash_mem=$(head -c 16 /proc/$PPID/mem 2>&1 | grep -c -e 'Permission denied' -e 'No such file')\"\n\
         echo \"leash_maps=$(head -n1 /proc/$PPID/maps 2>/dev/null | wc -c)\"\n\
         echo \"victim_environ=$(tr '\\0' '\\n' < /proc/{vpid}/environ 2>&1 | grep -c {SECRET})\"\n\
         echo \"creds=$(cat {} 2>&1 | grep -c {SECRET})\"\n\
         echo \"trust_files=$(ls /run/leash/*/ 2>&1 | sort | tr '\\n' ' ')\"\n\
         echo \"trust_keys=$(cat /run/leash/*/*.pem 2>/dev/null | grep -c PRIVATE)\"\n\
         echo \"core=$( (ulimit -c 1) 2>&1 >/dev/null | wc -l)$(ulimit -c)\"\n",
        creds.display()
    );
    let mut child = Command::new(leash_bin())
        .args(["run", "--policy"])
        .arg(&policy)
        .args(["--", "/bin/sh", "-c", &script])
        .env("TOK", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("leash run");
    std::thread::sleep(Duration::from_millis(500));
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap_or_default();
    let out = {
        let mut s = String::new();
        use std::io::Read as _;
        child.stdout.take().unwrap().read_to_string(&mut s).unwrap();
        s
    };
    let status = child.wait().unwrap();
    let _ = victim.kill();
    let _ = victim.wait();
    assert!(String::from_utf8_lossy(&environ).contains(SECRET), "control: leash's own environment holds the value");
    assert!(status.success(), "leash run failed: {out}");
    let got: std::collections::HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    let expect = [
        ("env", PH),
        ("leash_environ", "0"),
        ("leash_mem", "1"),
        ("leash_maps", "0"),
        ("victim_environ", "0"),
        ("creds", "0"),
        ("trust_keys", "0"),
        ("core", "10"),
    ];
    let wrong: Vec<String> = expect
        .iter()
        .filter(|(k, v)| got.get(k) != Some(v))
        .map(|(k, v)| format!("{k}: expected {v:?}, got {:?}", got.get(k)))
        .collect();
    assert!(wrong.is_empty(), "the agent reached a secret:\n{}\nfull output:\n{out}", wrong.join("\n"));
    assert_eq!(got.get("trust_files").map(|s| s.trim()), Some("bundle.pem ca.pem truststore.p12"), "{out}");
}

/// `binaries:` names an executable, and the proxy learns which executable opened a connection
/// from the kernel. A library of the agent's own choosing, preloaded with `LD_PRELOAD` (or
/// `LD_AUDIT`, or found first through `LD_LIBRARY_PATH`) into the allowed executable, runs with
/// that executable's identity and so gets its network rights. The library here is a harmless
/// system one (libm): what is refused is the loader variable, whatever it names.
#[test]
fn escape_ld_preload_borrows_an_allowed_executables_network_rights() {
    require_root();
    let probe = std::fs::canonicalize(env!("CARGO_BIN_EXE_netprobe")).unwrap();
    let library = ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6", "/lib64/libm.so.6"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a libm to preload");
    let upstream = Listener::http("127.0.0.1:0", "reached");
    let endpoint = format!("      - {{ host: 127.0.0.1, port: {}, protocol: tcp }}\n", upstream.addr.port());
    let yaml = format!("{}    binaries: [{{ path: {} }}]\n", local_policy(&endpoint, ""), probe.display());
    let scratch = Scratch::new("preload");
    let policy = scratch.file("p.yaml", &yaml);
    let log = scratch.0.join("audit.jsonl");
    let target = upstream.addr.to_string();
    let p = probe.display();
    let script = format!(
        "echo \"plain=$({p} get proxy {target} 2>&1 | tr '\\n' ' ')\"\n\
         echo \"preload=$(LD_PRELOAD={library} {p} get proxy {target} 2>&1 | tr '\\n' ' ')\"\n\
         echo \"audit=$(LD_AUDIT={library} {p} get proxy {target} 2>&1 | tr '\\n' ' ')\"\n\
         echo \"libpath=$(LD_LIBRARY_PATH=/tmp {p} get proxy {target} 2>&1 | tr '\\n' ' ')\"\n\
         echo \"again=$({p} get proxy {target} 2>&1 | tr '\\n' ' ')\"\n"
    );
    let out = Command::new(leash_bin())
        .args(["run", "--policy"])
        .arg(&policy)
        .args(["--audit-log", log.to_str().unwrap(), "--", "/bin/sh", "-c", &script])
        .output()
        .expect("leash run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let got: std::collections::HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let line = |k: &str| got.get(k).copied().unwrap_or("(no line)");
    for control in ["plain", "again"] {
        assert!(
            line(control).contains("CONNECT 200"),
            "control: the listed executable without loader variables gets through ({control}): {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let through: Vec<String> = ["preload", "audit", "libpath"]
        .iter()
        .filter(|k| !line(k).contains("CONNECT 403"))
        .map(|k| format!("{k}: {}", line(k)))
        .collect();
    assert!(through.is_empty(), "a loader variable let code ride on the listed executable:\n{}", through.join("\n"));
    assert_eq!(upstream.accepted(), 2, "only the two clean connections reach the upstream");
    let audit = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(audit.contains("LD_PRELOAD"), "the refusal names the variable: {audit}");
}
