//! The proxy's other side and its clients, for the TLS proxy tests:
//!
//! - [`Upstream`]: an HTTPS (or plain HTTP) server on loopback with its own test CA that answers
//!   every request with JSON describing what it received (method, target, HTTP version, headers,
//!   body, the SNI and ALPN of its connection) and records it, so tests can check what the proxy
//!   forwarded — and that it forwarded nothing. `/ws` with `Upgrade:` answers 101 and echoes raw
//!   bytes; with a git root it serves repositories through `git http-backend` (smart HTTP);
//!   `/reflect/...` plays a host that hands request data back (headers, chunked or gzip body).
//! - [`StandaloneProxy`]: `leash proxy` as a child process (killed on drop), optionally in its
//!   own network namespace so that nothing it dials can leave the machine.
//! - The client: CONNECT through the proxy, TLS trusting only leash's CA with a chosen SNI and
//!   ALPN, then HTTP/1.1 or HTTP/2 with hyper ([`Session`]), or raw bytes ([`Tunnel`]).
//!
//! The upstream runs on its own tokio runtime in a background thread, so it serves whatever the
//! test's own runtime is doing.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::{leash_bin, Scratch};

/// How long any single client step (connect, handshake, request) may take before the test fails.
pub const STEP: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------
// The upstream
// ---------------------------------------------------------------------------------------------

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query, as received.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Header names lower-case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The SNI of the TLS connection it came on (`None`: no SNI, or plain HTTP).
    pub sni: Option<String>,
    /// The ALPN protocol negotiated on that connection.
    pub alpn: Option<String>,
}

impl Seen {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Everything received, as one string, to search for a value that must not be there.
    pub fn everything(&self) -> String {
        let mut s = format!("{} {} {}\n", self.method, self.target, self.version);
        for (n, v) in &self.headers {
            s.push_str(&format!("{n}: {v}\n"));
        }
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }

    fn to_json(&self, n: usize) -> Value {
        let mut headers = BTreeMap::<String, String>::new();
        for (k, v) in &self.headers {
            headers
                .entry(k.clone())
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(v)
                })
                .or_insert_with(|| v.clone());
        }
        json!({
            "n": n,
            "method": self.method,
            "path": self.target,
            "version": self.version,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
            "sni": self.sni,
            "alpn": self.alpn,
        })
    }
}

/// What kind of upstream to run.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// TLS with the test CA; `false` is plain HTTP (h1, or h2 with prior knowledge).
    pub tls: bool,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<&'static str>,
    /// Serve `/<name>.git/...` from bare repositories in this directory via `git http-backend`.
    pub git_root: Option<PathBuf>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self { tls: true, alpn: vec!["h2", "http/1.1"], git_root: None }
    }
}

/// A test server on 127.0.0.1 that describes every request it gets. Stopped on drop.
pub struct Upstream {
    pub addr: SocketAddr,
    /// The test CA that signed the upstream's certificate (for `--upstream-ca`); empty path for
    /// plain HTTP.
    pub ca_pem: PathBuf,
    /// The CA certificate, PEM.
    pub ca_text: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: Scratch,
}

/// The test CA and the upstream's leaf (SANs `localhost`, `other.localhost`, `127.0.0.1`).
struct TestPki {
    ca_pem: String,
    leaf_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn test_pki() -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca.distinguished_name.push(DnType::CommonName, "leash tests upstream CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca.self_signed(&ca_key).expect("self-signing the test CA");
    let mut leaf = CertificateParams::new(vec![
        "localhost".to_string(),
        "other.localhost".to_string(),
        "127.0.0.1".to_string(),
        "allowed.test".to_string(),
    ])
    .expect("leaf params");
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::from_params(&ca, &ca_key)).expect("signing the leaf");
    TestPki { ca_pem: ca_cert.pem(), leaf_der: leaf_cert.der().clone(), key_der: leaf_key.serialize_der() }
}

#[derive(Clone)]
struct ConnInfo {
    sni: Option<String>,
    alpn: Option<String>,
}

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    git_root: Option<PathBuf>,
}

impl Upstream {
    /// HTTPS, ALPN `h2` and `http/1.1`.
    pub fn https() -> Self {
        Self::start(UpstreamOptions::default())
    }

    /// HTTPS that only speaks HTTP/1.1 (ALPN `http/1.1`).
    pub fn https_h1_only() -> Self {
        Self::start(UpstreamOptions { alpn: vec!["http/1.1"], ..Default::default() })
    }

    /// Plain HTTP (for absolute-form `http://` requests).
    pub fn plain() -> Self {
        Self::start(UpstreamOptions { tls: false, alpn: vec![], git_root: None })
    }

    /// HTTPS that also serves the bare repositories in `git_root` over git's smart HTTP.
    pub fn https_git(git_root: &Path) -> Self {
        Self::start(UpstreamOptions { git_root: Some(git_root.to_owned()), ..Default::default() })
    }

    pub fn start(options: UpstreamOptions) -> Self {
        let dir = Scratch::new("upstream");
        let pki = test_pki();
        let ca_pem = if options.tls { dir.file("upstream-ca.pem", &pki.ca_pem) } else { PathBuf::new() };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("upstream address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared { seen: seen.clone(), git_root: options.git_root.clone() };
        let acceptor = options.tls.then(|| {
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![pki.leaf_der.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key_der.clone())),
                )
                .expect("upstream server config");
            config.alpn_protocols = options.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("upstream runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let (tcp, _) = tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    let shared = shared.clone();
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        match acceptor {
                            Some(acceptor) => {
                                let Ok(tls) = acceptor.accept(tcp).await else { return };
                                let info = ConnInfo {
                                    sni: tls.get_ref().1.server_name().map(str::to_owned),
                                    alpn: tls
                                        .get_ref()
                                        .1
                                        .alpn_protocol()
                                        .map(|p| String::from_utf8_lossy(p).into_owned()),
                                };
                                serve(TokioIo::new(tls), info, shared).await;
                            }
                            None => serve(TokioIo::new(tcp), ConnInfo { sni: None, alpn: None }, shared).await,
                        }
                    });
                }
            });
            rt.shutdown_timeout(Duration::from_millis(200));
        });
        Self { addr, ca_pem, ca_text: pki.ca_pem, seen, stop: Some(stop_tx), thread: Some(thread), _dir: dir }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many requests reached the upstream.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Option<Seen> {
        self.seen.lock().unwrap().last().cloned()
    }

    /// Whether `needle` appears anywhere in what the upstream received.
    pub fn received_text(&self, needle: &str) -> bool {
        self.seen().iter().any(|s| s.everything().contains(needle))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve<I>(io: TokioIo<I>, info: ConnInfo, shared: Shared)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, info.clone(), shared.clone()));
    let _ = auto::Builder::new(TokioExecutor::new()).serve_connection_with_upgrades(io, service).await;
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

fn full(bytes: Bytes) -> UpBody {
    Full::new(bytes).boxed()
}

fn record(shared: &Shared, parts: &hyper::http::request::Parts, body: Vec<u8>, info: &ConnInfo) -> (usize, Seen) {
    let seen = Seen {
        method: parts.method.to_string(),
        target: parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| parts.uri.to_string()),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body,
        sni: info.sni.clone(),
        alpn: info.alpn.clone(),
    };
    let mut all = shared.seen.lock().unwrap();
    all.push(seen.clone());
    (all.len(), seen)
}

async fn handle(
    mut req: Request<Incoming>,
    info: ConnInfo,
    shared: Shared,
) -> Result<Response<UpBody>, std::convert::Infallible> {
    let is_upgrade = req.uri().path().starts_with("/ws") && req.headers().contains_key(hyper::header::UPGRADE);
    if is_upgrade {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _body) = req.into_parts();
        record(&shared, &parts, Vec::new(), &info);
        tokio::spawn(async move {
            let Ok(upgraded) = on_upgrade.await else { return };
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(hyper::header::UPGRADE, HeaderValue::from_static("websocket"));
        resp.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("Upgrade"));
        return Ok(resp);
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes().to_vec()).unwrap_or_default();
    if let Some(root) = &shared.git_root {
        if parts.uri.path().contains(".git/") {
            record(&shared, &parts, body.clone(), &info);
            return Ok(git_http_backend(root, &parts, body).await);
        }
    }
    let (n, seen) = record(&shared, &parts, body, &info);
    if let Some(kind) = parts.uri.path().strip_prefix("/reflect/") {
        let history: Vec<String> = shared.seen.lock().unwrap().iter().map(|s| s.target.clone()).collect();
        return Ok(reflect(kind, &seen, json!({ "request": seen.to_json(n), "history": history })));
    }
    let mut resp = Response::new(full(Bytes::from(seen.to_json(n).to_string())));
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// `/reflect/...`: a hostile upstream that hands request data back. The request's
/// `Authorization` and target come back in response headers, and the description of the request
/// with every target this upstream has received (`history`, as a later directory listing would)
/// in the body: in 7-byte chunks (chunked on HTTP/1.1, so a value is split across chunks), or
/// for `/reflect/gzip/...` gzip-compressed whatever the request accepted. A `Range: bytes=A-B`
/// is honoured (206, that slice), as file servers do; `/reflect/partial/...` answers 206 with
/// the first half whatever the request asked.
fn reflect(kind: &str, seen: &Seen, description: Value) -> Response<UpBody> {
    let text = description.to_string();
    let range = seen.header("range").and_then(|r| {
        let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
        let a: usize = a.parse().ok()?;
        let b: usize = b.parse::<usize>().unwrap_or(usize::MAX).min(text.len().saturating_sub(1));
        (a <= b).then_some((a, b))
    });
    let range = if kind.starts_with("partial/") { Some((0, text.len() / 2)) } else { range };
    let mut resp = if kind.starts_with("gzip/") {
        let mut r = Response::new(full(Bytes::from(gzip(text.as_bytes()))));
        r.headers_mut().insert(hyper::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else if let Some((a, b)) = range {
        let mut r = Response::new(full(Bytes::copy_from_slice(&text.as_bytes()[a..=b])));
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let content_range = format!("bytes {a}-{b}/{}", text.len());
        r.headers_mut().insert(hyper::header::CONTENT_RANGE, HeaderValue::from_str(&content_range).expect("ascii"));
        r
    } else {
        Response::new(Chunks(text.as_bytes().chunks(7).map(Bytes::copy_from_slice).collect()).boxed())
    };
    let headers = resp.headers_mut();
    headers.insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    for (name, value) in
        [("x-reflected-authorization", seen.header("authorization")), ("x-reflected-target", Some(&seen.target))]
    {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            headers.insert(name, value);
        }
    }
    resp
}

/// `bytes` compressed by gzip(1).
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child =
        Command::new("gzip").arg("-c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("running gzip");
    child.stdin.take().expect("stdin").write_all(bytes).expect("writing to gzip");
    child.wait_with_output().expect("gzip output").stdout
}

/// A body sent as the given chunks, each its own frame.
struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

/// Runs `git http-backend` as a CGI for one request.
async fn git_http_backend(root: &Path, parts: &hyper::http::request::Parts, body: Vec<u8>) -> Response<UpBody> {
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut cmd = tokio::process::Command::new("/usr/bin/git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let failed = |why: String| {
        let mut r = Response::new(full(Bytes::from(why)));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("git http-backend: {e}")),
    };
    let mut stdin = child.stdin.take().unwrap();
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => return failed(format!("git http-backend: {e}")),
    };
    // CGI output: headers, a blank line, the body.
    let text = out.stdout;
    let (head_end, sep) = match find(&text, b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => match find(&text, b"\n\n") {
            Some(i) => (i, 2),
            None => {
                return failed(format!("git http-backend gave no CGI header: {}", String::from_utf8_lossy(&out.stderr)))
            }
        },
    };
    let head = String::from_utf8_lossy(&text[..head_end]).into_owned();
    let mut resp = Response::new(full(Bytes::copy_from_slice(&text[head_end + sep..])));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse::<u16>().ok()).unwrap_or(500);
            *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(n), Ok(v)) =
            (hyper::header::HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value))
        {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The proxy under test
// ---------------------------------------------------------------------------------------------

/// `leash proxy` running as a child process; killed on drop.
pub struct StandaloneProxy {
    child: Child,
    pub addr: SocketAddr,
    pub dir: Scratch,
    pub policy: PathBuf,
    /// leash's CA (`--ca-out`), the only root the test clients trust.
    pub ca_pem: PathBuf,
    pub audit_log: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl StandaloneProxy {
    /// Starts the proxy with `policy` (YAML), trusting `upstream_cas`, with credentials file
    /// `credentials` (`NAME=value` lines).
    pub fn start(policy: &str, upstream_cas: &[&Path], credentials: &str) -> Self {
        Self::launch(policy, upstream_cas, credentials, false)
    }

    /// Like [`start`](Self::start), in a new network namespace holding only a loopback
    /// interface: nothing the proxy dials can leave the machine. Needs root. Reach it with
    /// [`connect_in_netns`].
    pub fn start_isolated(policy: &str, credentials: &str) -> Self {
        Self::launch(policy, &[], credentials, true)
    }

    fn launch(policy: &str, upstream_cas: &[&Path], credentials: &str, isolated: bool) -> Self {
        let dir = Scratch::new("proxy");
        let policy_path = dir.file("policy.yaml", policy);
        let creds = dir.file("credentials", credentials);
        let ca_pem = dir.0.join("leash-ca.pem");
        let audit_log = dir.0.join("audit.jsonl");
        let mut cmd = Command::new(leash_bin());
        cmd.arg("proxy")
            .arg("--policy")
            .arg(&policy_path)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--ca-out")
            .arg(&ca_pem)
            .arg("--credentials-file")
            .arg(&creds)
            .arg("--audit-log")
            .arg(&audit_log);
        for ca in upstream_cas {
            cmd.arg("--upstream-ca").arg(ca);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        if isolated {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: only async-signal-safe calls (unshare, socket, ioctl, close) between fork
            // and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    loopback_up()
                });
            }
        }
        let mut child = cmd.spawn().expect("starting leash proxy");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        {
            let pipe = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.strip_prefix("leash: proxy listening on ") {
                        if let Ok(a) = addr.trim().parse() {
                            let _ = tx.send(a);
                        }
                    }
                    let mut s = stderr.lock().unwrap();
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!("leash proxy did not start ({status:?}); stderr:\n{}", stderr.lock().unwrap());
            }
        };
        assert!(ca_pem.exists(), "--ca-out {} was not written", ca_pem.display());
        Self { child, addr, dir, policy: policy_path, ca_pem, audit_log, stderr }
    }

    /// Everything the proxy printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The audit log so far.
    pub fn audit(&self) -> String {
        std::fs::read_to_string(&self.audit_log).unwrap_or_default()
    }

    /// The audit log's JSON lines.
    pub fn audit_events(&self) -> Vec<Value> {
        self.audit().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Replaces the policy file atomically (write + rename, so the file poll never sees it half
    /// written).
    pub fn replace_policy(&self, yaml: &str) {
        let tmp = self.dir.file("policy.yaml.new", yaml);
        std::fs::rename(&tmp, &self.policy).expect("replacing the policy file");
    }

    /// Sends SIGHUP (reload the policy).
    pub fn hup(&self) {
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// The network namespace the proxy runs in.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.child.id()))
    }

    /// Whether the proxy is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for StandaloneProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sets `lo` up in the current network namespace (async-signal-safe: for `pre_exec`).
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain syscalls on a socket we own; `ifreq` is zero-initialised and the name fits.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut ifr) != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let rc = libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &ifr);
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(e);
        }
    }
    Ok(())
}

/// A TCP connection to `addr` made from inside the network namespace `netns` (a thread joins
/// it, connects, and hands the socket back; the socket stays in that namespace).
pub fn connect_in_netns(netns: &Path, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let netns = netns.to_owned();
    let std_stream = std::thread::spawn(move || -> std::io::Result<std::net::TcpStream> {
        let ns = std::fs::File::open(&netns)?;
        // SAFETY: setns on this (fresh, short-lived) thread only; the fd is valid.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        std::net::TcpStream::connect_timeout(&addr, STEP)
    })
    .join()
    .expect("netns thread")?;
    std_stream.set_nonblocking(true)?;
    TcpStream::from_std(std_stream)
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub version: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// `reason` of a proxy refusal.
    pub fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or("").to_owned()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.version, self.status, self.text())
    }
}

/// Reads one HTTP/1.1 response (head, then `Content-Length` bytes of body, or until EOF when
/// there is none and the status has a body) from `io`.
pub async fn read_response<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<Reply> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if io.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed after {:?}", String::from_utf8_lossy(&head)),
            ));
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_owned();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {status_line:?}"))
    })?;
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((n, v)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) =
                (hyper::header::HeaderName::from_bytes(n.trim().as_bytes()), HeaderValue::from_str(v.trim()))
            {
                headers.append(n, v);
            }
        }
    }
    let chunked = headers
        .get("transfer-encoding")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let body = read_chunked(io).await?;
        return Ok(Reply { status, version, headers, body: Bytes::from(body) });
    }
    let length = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let mut body = vec![0u8; length.unwrap_or(0)];
    io.read_exact(&mut body).await?;
    if length.is_none() && status != 101 && status != 204 && status != 304 && !(200..300).contains(&status) {
        // No length on an error: read what arrives until the peer closes or goes quiet.
        let _ = tokio::time::timeout(Duration::from_millis(500), io.read_to_end(&mut body)).await;
    }
    Ok(Reply { status, version, headers, body: Bytes::from(body) })
}

async fn read_line<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if io.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "EOF in a chunked body"));
        }
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    Ok(String::from_utf8_lossy(&line).into_owned())
}

async fn read_chunked<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(io).await?;
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size {line:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(io).await?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        io.read_exact(&mut body[start..]).await?;
        body.truncate(start + size);
    }
}

/// Sends `CONNECT target` on `tcp` and reads the answer. `Ok(stream)` when the proxy answered
/// 200, else `Err(answer)`. `target` is sent byte for byte (it may hold NUL or a trailing dot).
pub async fn connect_over(mut tcp: TcpStream, target: &[u8]) -> Result<TcpStream, Reply> {
    let mut req = b"CONNECT ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    req.extend_from_slice(target);
    req.extend_from_slice(b"\r\n\r\n");
    let exchange = async {
        tcp.write_all(&req).await?;
        read_response(&mut tcp).await
    };
    let reply = tokio::time::timeout(STEP, exchange)
        .await
        .unwrap_or_else(|_| panic!("CONNECT {} timed out", String::from_utf8_lossy(target)))
        .unwrap_or_else(|e| panic!("CONNECT {}: {e}", String::from_utf8_lossy(target)));
    if reply.status == 200 {
        Ok(tcp)
    } else {
        Err(reply)
    }
}

/// Connects to the proxy at `proxy` and sends `CONNECT target`.
pub async fn connect(proxy: SocketAddr, target: &str) -> Result<TcpStream, Reply> {
    let tcp = tokio::time::timeout(STEP, TcpStream::connect(proxy))
        .await
        .expect("connecting to the proxy timed out")
        .expect("connecting to the proxy");
    connect_over(tcp, target.as_bytes()).await
}

/// Verifies the server's certificate against fixed roots for fixed names (valid for any one of
/// them), whatever SNI the client sent (so a test can send a fronted SNI and still check who
/// answered).
#[derive(Debug)]
struct VerifyAs {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for VerifyAs {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = Err(rustls::Error::General("no name to verify".into()));
        for name in &self.names {
            last = self.inner.verify_server_cert(end_entity, intermediates, name, ocsp, now);
            if last.is_ok() {
                break;
            }
        }
        last
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn server_name(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap_or_else(|e| panic!("{name:?} is not a server name: {e}"))
}

/// TLS options of a tunnel.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// The roots trusted (PEM file): leash's CA for inspected endpoints.
    pub ca_pem: PathBuf,
    /// What the client sends as SNI (an IP address sends none).
    pub sni: String,
    /// The certificate must be valid for one of these names.
    pub verify_as: Vec<String>,
    /// ALPN offered.
    pub alpn: Vec<&'static str>,
}

impl TlsOptions {
    /// SNI = the verified name = `host`, trusting `ca_pem`, offering `alpn`.
    pub fn new(ca_pem: &Path, host: &str, alpn: &[&'static str]) -> Self {
        Self { ca_pem: ca_pem.to_owned(), sni: host.to_owned(), verify_as: vec![host.to_owned()], alpn: alpn.to_vec() }
    }
}

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS over an established tunnel.
pub async fn tls_over(tcp: TcpStream, opts: &TlsOptions) -> std::io::Result<ClientTls> {
    let pem = std::fs::read(&opts.ca_pem)?;
    let mut roots = RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        let cert: CertificateDer<'static> =
            cert.map_err(|e| std::io::Error::other(format!("{}: {e:?}", opts.ca_pem.display())))?;
        roots.add(cert).map_err(std::io::Error::other)?;
    }
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(std::io::Error::other)?;
    let verifier = Arc::new(VerifyAs { inner, names: opts.verify_as.iter().map(|n| server_name(n)).collect() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = opts.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(STEP, connector.connect(server_name(&opts.sni), tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}

/// A raw TLS tunnel through the proxy: write bytes, read answers.
pub struct Tunnel {
    pub tls: ClientTls,
}

impl Tunnel {
    /// CONNECT `target` through `proxy`, then TLS with `opts`. Panics unless both succeed.
    pub async fn open(proxy: SocketAddr, target: &str, opts: &TlsOptions) -> Self {
        let tcp = connect(proxy, target).await.unwrap_or_else(|r| panic!("CONNECT {target} refused: {r}"));
        let tls = tls_over(tcp, opts).await.unwrap_or_else(|e| panic!("TLS through the tunnel to {target}: {e}"));
        Self { tls }
    }

    /// The ALPN protocol the proxy chose.
    pub fn alpn(&self) -> Option<String> {
        self.tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// Writes `bytes` and reads one HTTP/1.1 response.
    pub async fn exchange(&mut self, bytes: &[u8]) -> std::io::Result<Reply> {
        tokio::time::timeout(STEP, async {
            self.tls.write_all(bytes).await?;
            self.tls.flush().await?;
            read_response(&mut self.tls).await
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
    }

    /// Whether the proxy closed the connection (EOF or error) within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 256];
        matches!(tokio::time::timeout(wait, self.tls.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// An HTTP session (HTTP/1.1 or HTTP/2, as ALPN decided) inside a tunnel through the proxy.
pub struct Session {
    sender: Sender,
    /// `host:port` of the CONNECT, used for `Host` / `:authority` by [`Session::request`].
    pub authority: String,
    /// The ALPN protocol the proxy chose.
    pub alpn: Option<String>,
}

impl Session {
    /// CONNECT `target` through `proxy`, TLS with `opts`, and an HTTP handshake. Panics unless
    /// all succeed.
    pub async fn open(proxy: SocketAddr, target: &str, opts: &TlsOptions) -> Self {
        let tunnel = Tunnel::open(proxy, target, opts).await;
        Self::over(tunnel.tls, target).await
    }

    /// An HTTP session over an established TLS stream.
    pub async fn over(tls: ClientTls, authority: &str) -> Self {
        let alpn = tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some("h2") {
            let (s, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io).await.expect("h1 handshake");
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Self { sender, authority: authority.to_owned(), alpn }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// A request for `path` naming the tunnel's authority: `Host` on HTTP/1.1, `:authority`
    /// (absolute URI) on HTTP/2.
    pub fn request(&self, method: &str, path: &str) -> hyper::http::request::Builder {
        match self.sender {
            Sender::H1(_) => Request::builder().method(method).uri(path).header("host", &self.authority),
            Sender::H2(_) => Request::builder()
                .method(method)
                .uri(format!("https://{}{path}", self.authority))
                .version(Version::HTTP_2),
        }
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Reply {
        let req = self.request("GET", path).body(Full::new(Bytes::new())).unwrap();
        self.send(req).await
    }

    /// Sends `req` and reads the whole answer. Panics on a transport error or timeout.
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        self.try_send(req).await.unwrap_or_else(|e| panic!("request failed: {e}"))
    }

    /// Sends `req`; a transport error is returned as text.
    pub async fn try_send(&mut self, mut req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let fut = async {
            let resp = match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await.map_err(|e| e.to_string())?;
                    s.send_request(req).await.map_err(|e| e.to_string())?
                }
                Sender::H2(s) => {
                    *req.version_mut() = Version::HTTP_2;
                    s.ready().await.map_err(|e| e.to_string())?;
                    s.send_request(req).await.map_err(|e| e.to_string())?
                }
            };
            let (parts, body) = resp.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Reply {
                status: parts.status.as_u16(),
                version: format!("{:?}", parts.version),
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(STEP, fut).await.map_err(|_| "timed out".to_string())?
    }
}

/// Reads `path` fully (a helper for log greps).
pub fn read_text(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}
