//! `proxybench`: the local HTTPS upstream and the load client of `cargo xtask bench proxy`.
//!
//! ```text
//! proxybench upstream --listen 127.0.0.1:0 --ca-out CA.pem [--threads T] [--lifetime-s S]
//! proxybench client --target https://localhost:PORT/ [--proxy IP:PORT] --ca CA.pem [--ca ...]
//!                   --connections C --duration-ms D [--warmup-ms W] [--http1] [--threads T]
//!                   [--max-requests N]
//! proxybench idle --proxy IP:PORT --target HOST:PORT --ca CA.pem [--ca ...] --tunnels N
//!                 --hold-ms H [--request]
//! ```
//!
//! - `upstream` makes its own CA and a leaf for `localhost`, `127.0.0.1` and `::1`, writes the
//!   CA certificate to `--ca-out`, listens on `--listen` (and on `[::1]` at the same port when
//!   that is `127.0.0.1`, so a client resolving `localhost` to either reaches it), prints its
//!   address on stdout and answers every request, HTTP/1.1 or HTTP/2 (ALPN), with 200 and a fixed
//!   small body. It exits after `--lifetime-s` (default 900) unless killed first.
//! - `client` opens C connections (through `--proxy` with CONNECT, else directly), completes TLS
//!   on each trusting only the `--ca` files, then on each runs sequential keep-alive GETs: W ms of
//!   warm-up (untimed), then D ms measured. It prints one JSON line
//!   `{"requests":..,"seconds":..,"rps":..,"p50_us":..,"p99_us":..}`: requests started in the
//!   measured window, the window's length, their rate, and the median and 99th percentile of
//!   their times (request written to response body read). `--http1` offers only `http/1.1` in
//!   ALPN; otherwise `h2` is offered first.
//! - `idle` opens N tunnels (CONNECT + TLS through the proxy, and with `--request` one GET each,
//!   so the proxy also holds its upstream side), prints `{"open":N,"seconds":..}` once all are
//!   open, holds them H ms, and exits. The caller reads the proxy's memory meanwhile.
//!
//! Every run is bounded: in time (`--duration-ms`, `--hold-ms`, 10 s timeouts on each connect,
//! handshake and request) and in count (`--max-requests`, default 2,000,000 in all). It only
//! connects to the addresses it is given, which the benchmark keeps on loopback. Any failure
//! ends the run: exit 1 with the error on stderr.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::exit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// What the upstream answers every request with.
const BODY: &[u8] = b"hello from the proxybench upstream\n";
/// Bound on each connect, CONNECT exchange, TLS handshake and request.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest CONNECT response head read.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else { usage() };
    let opts = Opts::parse(rest, &["--http1", "--request"]);
    let threads: usize = opts.num("--threads", 1);
    let result = runtime(threads).block_on(async {
        match mode.as_str() {
            "upstream" => upstream(&opts).await,
            "client" => client(&opts).await,
            "idle" => idle(&opts).await,
            _ => usage(),
        }
    });
    if let Err(e) = result {
        eprintln!("proxybench {mode}: {e}");
        exit(1);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: proxybench upstream --listen ADDR --ca-out FILE\n       \
         proxybench client --target URL [--proxy ADDR] --ca FILE --connections C --duration-ms D [--warmup-ms W] [--http1]\n       \
         proxybench idle --proxy ADDR --target HOST:PORT --ca FILE --tunnels N --hold-ms H [--request]"
    );
    exit(2)
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    let mut b = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    b.enable_all().build().expect("building the tokio runtime")
}

/// `--name value` options (repeatable) and `--flag` switches.
struct Opts {
    values: HashMap<String, Vec<String>>,
}

impl Opts {
    fn parse(args: &[String], flags: &[&str]) -> Self {
        let mut values: HashMap<String, Vec<String>> = HashMap::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if !a.starts_with("--") {
                eprintln!("proxybench: unexpected argument {a:?}");
                usage();
            }
            let value =
                if flags.contains(&a.as_str()) { String::new() } else { it.next().cloned().unwrap_or_else(|| usage()) };
            values.entry(a.clone()).or_default().push(value);
        }
        Self { values }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.last()).map(String::as_str)
    }

    fn req(&self, name: &str) -> &str {
        self.get(name).unwrap_or_else(|| {
            eprintln!("proxybench: {name} is required");
            usage()
        })
    }

    fn all(&self, name: &str) -> Vec<PathBuf> {
        self.values.get(name).map(|v| v.iter().map(PathBuf::from).collect()).unwrap_or_default()
    }

    fn flag(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| {
                eprintln!("proxybench: {name} {v:?} is not a number");
                usage()
            }),
        }
    }
}

// --- upstream ------------------------------------------------------------------------------------

async fn upstream(opts: &Opts) -> Result<()> {
    let listen: SocketAddr = opts.req("--listen").parse()?;
    let ca_out = PathBuf::from(opts.req("--ca-out"));
    let lifetime = Duration::from_secs(opts.num("--lifetime-s", 900));
    let (ca_pem, config) = upstream_tls()?;
    std::fs::write(&ca_out, ca_pem).map_err(|e| format!("writing {}: {e}", ca_out.display()))?;

    let listener = TcpListener::bind(listen).await.map_err(|e| format!("binding {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(config);
    if addr.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST) {
        // Best effort: `localhost` may resolve to ::1 first.
        if let Ok(v6) = TcpListener::bind((Ipv6Addr::LOCALHOST, addr.port())).await {
            tokio::spawn(serve(v6, acceptor.clone()));
        }
    }
    tokio::spawn(serve(listener, acceptor));
    println!("{addr}");
    std::io::stdout().flush()?;
    tokio::time::sleep(lifetime).await;
    Ok(())
}

/// A fresh CA and a server config presenting a leaf it signed for localhost, 127.0.0.1 and ::1.
fn upstream_tls() -> Result<(String, Arc<ServerConfig>)> {
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, "proxybench upstream CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    leaf.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.subject_alt_names.push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let chain = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((ca_cert.pem(), Arc::new(config)))
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(STEP_TIMEOUT, acceptor.accept(stream)).await else { return };
            let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
                resp.headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
                Ok::<_, Infallible>(resp)
            });
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service).await;
        });
    }
}

// --- the client side, shared by `client` and `idle` ----------------------------------------------

/// Where requests go and how the client gets there.
#[derive(Clone)]
struct Route {
    /// `host:port` as written in CONNECT and Host.
    authority: String,
    host: String,
    port: u16,
    path: String,
    proxy: Option<SocketAddr>,
    tls: Arc<ClientConfig>,
}

/// One open connection's request side.
enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

fn client_tls(cas: &[PathBuf], http1_only: bool) -> Result<Arc<ClientConfig>> {
    if cas.is_empty() {
        return Err("at least one --ca is required".into());
    }
    let mut roots = RootCertStore::empty();
    for path in cas {
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("reading {}: {e}", path.display()))? {
            roots.add(cert.map_err(|e| format!("reading {}: {e}", path.display()))?)?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols =
        if http1_only { vec![b"http/1.1".to_vec()] } else { vec![b"h2".to_vec(), b"http/1.1".to_vec()] };
    Ok(Arc::new(config))
}

/// `host:port` or `https://host:port/path`.
fn parse_target(text: &str) -> Result<(String, u16, String)> {
    let rest = text.strip_prefix("https://").unwrap_or(text);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) =
        authority.rsplit_once(':').ok_or_else(|| format!("{text}: the target needs an explicit port"))?;
    let port: u16 = port.parse().map_err(|_| format!("{text}: bad port"))?;
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_string(), port, path.to_string()))
}

async fn timed<T, E: Into<Error>>(
    what: &str,
    f: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", e.into()).into()),
        Err(_) => Err(format!("{what}: timed out after {STEP_TIMEOUT:?}").into()),
    }
}

/// TCP to the proxy (then CONNECT) or to the target, TLS, and an HTTP connection over it.
async fn open(route: &Route) -> Result<Sender> {
    let mut tcp = match route.proxy {
        Some(proxy) => timed("connecting to the proxy", TcpStream::connect(proxy)).await?,
        None => timed("connecting to the target", TcpStream::connect((route.host.as_str(), route.port))).await?,
    };
    tcp.set_nodelay(true)?;
    if route.proxy.is_some() {
        timed("CONNECT", connect_tunnel(&mut tcp, &route.authority)).await?;
    }
    let name = match route.host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(route.host.clone())?,
    };
    let tls = timed("TLS handshake", TlsConnector::from(route.tls.clone()).connect(name, tcp)).await?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let (sender, conn) = timed("HTTP/2 handshake", http2::handshake(TokioExecutor::new(), io)).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = timed("HTTP/1.1 handshake", http1::handshake(io)).await?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}

/// Sends `CONNECT authority` and reads the proxy's answer, which must be 2xx.
async fn connect_tunnel(tcp: &mut TcpStream, authority: &str) -> Result<()> {
    tcp.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes()).await?;
    // Nothing follows the head until the client speaks TLS, so reading past it cannot happen.
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err("the proxy closed the connection during CONNECT".into());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_CONNECT_HEAD {
            return Err("the CONNECT response head is too long".into());
        }
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or_default();
    match status_line.split_whitespace().nth(1) {
        Some(code) if code.starts_with('2') => Ok(()),
        _ => Err(format!("the proxy answered CONNECT with {status_line:?}").into()),
    }
}

/// One GET; returns when the whole response body has been read.
async fn get(sender: &mut Sender, route: &Route) -> Result<()> {
    let resp = match sender {
        Sender::H1(s) => {
            s.ready().await?;
            let req = Request::get(route.path.as_str())
                .header(hyper::header::HOST, route.authority.as_str())
                .body(Empty::new())?;
            s.send_request(req).await?
        }
        Sender::H2(s) => {
            s.ready().await?;
            let uri = format!("https://{}{}", route.authority, route.path);
            s.send_request(Request::get(uri).body(Empty::new())?).await?
        }
    };
    let status = resp.status();
    resp.into_body().collect().await?;
    if status != StatusCode::OK {
        return Err(format!("the response was {status}").into());
    }
    Ok(())
}

/// Raises the open-file limit to its hard limit (1,000 tunnels need more than the usual 1,024).
fn raise_nofile() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn route(opts: &Opts, proxy: Option<SocketAddr>) -> Result<Route> {
    let (host, port, path) = parse_target(opts.req("--target"))?;
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let tls = client_tls(&opts.all("--ca"), opts.flag("--http1"))?;
    Ok(Route { authority, host, port, path, proxy, tls })
}

// --- client --------------------------------------------------------------------------------------

async fn client(opts: &Opts) -> Result<()> {
    raise_nofile();
    let proxy = opts.get("--proxy").map(str::parse::<SocketAddr>).transpose()?;
    let route = route(opts, proxy)?;
    let connections: usize = opts.num("--connections", 1).max(1);
    let duration = Duration::from_millis(opts.num("--duration-ms", 5000));
    let warmup = Duration::from_millis(opts.num("--warmup-ms", 1000));
    let max_requests: usize = opts.num("--max-requests", 2_000_000);
    let per_connection = max_requests.div_ceil(connections).max(1);

    // Open every connection first: the handshakes are not what is measured.
    let mut opening = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let route = route.clone();
        opening.spawn(async move { open(&route).await });
    }
    let mut senders = Vec::with_capacity(connections);
    while let Some(r) = opening.join_next().await {
        senders.push(r??);
    }

    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let mut loops = tokio::task::JoinSet::new();
    for mut sender in senders {
        let route = route.clone();
        loops.spawn(async move {
            let mut samples: Vec<u32> = Vec::with_capacity(4096);
            for _ in 0..per_connection {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                timed("request", get(&mut sender, &route)).await?;
                if start >= measure_from {
                    samples.push(start.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                }
            }
            Ok::<_, Error>(samples)
        });
    }
    let mut samples = Vec::new();
    while let Some(r) = loops.join_next().await {
        samples.extend(r??);
    }
    if samples.is_empty() {
        return Err("no request completed in the measured window".into());
    }
    samples.sort_unstable();
    let seconds = duration.as_secs_f64();
    let us = |ns: u32| (ns as f64 / 100.0).round() / 10.0;
    println!(
        "{{\"requests\":{},\"seconds\":{seconds},\"rps\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
        samples.len(),
        samples.len() as f64 / seconds,
        us(percentile(&samples, 50)),
        us(percentile(&samples, 99)),
    );
    Ok(())
}

/// Nearest-rank percentile of sorted, non-empty `v`.
fn percentile(v: &[u32], p: usize) -> u32 {
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}

// --- idle ----------------------------------------------------------------------------------------

/// How many tunnels are being opened at once.
const OPEN_CONCURRENCY: usize = 32;

async fn idle(opts: &Opts) -> Result<()> {
    raise_nofile();
    let proxy: SocketAddr = opts.req("--proxy").parse()?;
    let route = Arc::new(route(opts, Some(proxy))?);
    let tunnels: usize = opts.num("--tunnels", 1000);
    let hold = Duration::from_millis(opts.num("--hold-ms", 3000));
    let request = opts.flag("--request");

    let started = Instant::now();
    let mut open_ones = Vec::with_capacity(tunnels);
    let mut opening = tokio::task::JoinSet::new();
    let mut next = 0;
    while open_ones.len() < tunnels {
        while next < tunnels && opening.len() < OPEN_CONCURRENCY {
            let route = route.clone();
            opening.spawn(async move {
                let mut sender = open(&route).await?;
                if request {
                    timed("request", get(&mut sender, &route)).await?;
                }
                Ok::<_, Error>(sender)
            });
            next += 1;
        }
        let r = opening.join_next().await.expect("a tunnel is being opened");
        open_ones.push(r??);
    }
    println!("{{\"open\":{},\"seconds\":{:.3}}}", open_ones.len(), started.elapsed().as_secs_f64());
    std::io::stdout().flush()?;
    tokio::time::sleep(hold).await;
    drop(open_ones);
    Ok(())
}
