//! A local stand-in for the Kubernetes API server's pods, for the node daemon's tests: HTTPS on
//! loopback with a CA and a bearer token of its own, answering what `leash daemon` asks of a real
//! one, with the same semantics:
//!
//! - `GET /api/v1/pods?fieldSelector=spec.nodeName=N`: node N's pods and the list's
//!   resourceVersion (each one counted, [`FakeApi::lists`]).
//! - the same with `watch=1&resourceVersion=RV`: a chunked stream of JSON lines, an `ADDED`,
//!   `MODIFIED` or `DELETED` event for each change of node N's pods after RV (those already past
//!   first), and with `allowWatchBookmarks=true` a `BOOKMARK` when the test asks for one. It ends
//!   after `timeoutSeconds`, or when the test hangs up the watches. A resourceVersion older than
//!   the last compaction gets 410 Gone: as the HTTP status, or as an `ERROR` event with code 410
//!   (servers do both), as the test chooses.
//!
//! resourceVersions are one counter over every pod, as etcd's revision is: a change to another
//! node's pod moves it without an event for node N. The watch of node N learns the new place
//! only from a bookmark. One request per connection, one thread per connection.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The node the daemon under test runs on (`--node-name`).
pub const NODE: &str = "node-a";

const TOKEN: &str = "test-token";

/// How the server says that a watch's resourceVersion is too old.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Gone {
    /// `410 Gone` as the response's status.
    #[default]
    Status,
    /// `200 OK`, then one `ERROR` event whose Status has code 410.
    ErrorEvent,
}

pub struct FakeApi {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    requests: AtomicUsize,
    lists: AtomicUsize,
    watches: AtomicUsize,
    bookmarks_sent: AtomicUsize,
}

#[derive(Default)]
struct State {
    revision: u64,
    /// Watches from a resourceVersion below this one are gone.
    compacted: u64,
    pods: BTreeMap<String, FakePod>,
    /// Every change, oldest first.
    events: Vec<Event>,
    /// Bookmarks asked for: each open watch sends one when this moves.
    bookmarks: u64,
    /// Hang-ups asked for: each open watch ends when this moves.
    hangups: u64,
    gone: Gone,
    list_delay: Duration,
    closed: bool,
}

#[derive(Clone)]
struct FakePod {
    node: String,
    policy: Option<String>,
    revision: u64,
}

struct Event {
    revision: u64,
    kind: &'static str,
    node: String,
    object: Value,
}

impl State {
    /// Sets pod `uid` (on `node`) to `policy`, or deletes it (`None`), as one change.
    fn change(&mut self, uid: &str, pod: Option<(&str, Option<&str>)>) {
        self.revision += 1;
        let revision = self.revision;
        let (kind, now) = match pod {
            Some((node, policy)) => {
                let kind = if self.pods.contains_key(uid) { "MODIFIED" } else { "ADDED" };
                let pod = FakePod { node: node.into(), policy: policy.map(Into::into), revision };
                self.pods.insert(uid.into(), pod.clone());
                (kind, pod)
            }
            None => {
                let mut pod = self.pods.remove(uid).expect("deleting a pod the fake API server has");
                pod.revision = revision;
                ("DELETED", pod)
            }
        };
        self.events.push(Event { revision, kind, node: now.node.clone(), object: pod_object(uid, &now) });
    }
}

/// A pod as the API serves it (the fields the daemon reads, and the node it runs on).
fn pod_object(uid: &str, pod: &FakePod) -> Value {
    let mut annotations = serde_json::Map::new();
    if let Some(p) = &pod.policy {
        annotations.insert("leash.dev/policy".into(), p.clone().into());
    }
    let suffix = uid.rsplit('-').next().unwrap_or(uid);
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "uid": uid, "name": format!("runner-{suffix}"), "namespace": "ci",
            "resourceVersion": pod.revision.to_string(), "annotations": annotations,
        },
        "spec": {"nodeName": pod.node},
    })
}

fn status(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message})
        .to_string()
}

impl FakeApi {
    /// A server whose node [`NODE`] runs `pods` (uid, `leash.dev/policy` annotation).
    pub fn start(dir: &Path, pods: Vec<(String, Option<String>)>) -> Self {
        Self::start_slow(dir, pods, Duration::ZERO)
    }

    /// A server that takes `delay` to answer each list.
    pub fn start_slow(dir: &Path, pods: Vec<(String, Option<String>)>, delay: Duration) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.join("api-ca.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut state = State { list_delay: delay, ..State::default() };
        for (uid, policy) in &pods {
            state.change(uid, Some((NODE, policy.as_deref())));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            changed: Condvar::new(),
            requests: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
            watches: AtomicUsize::new(0),
            bookmarks_sent: AtomicUsize::new(0),
        });
        let serving = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (shared, config) = (serving.clone(), config.clone());
                std::thread::spawn(move || serve(stream, config, &shared));
            }
        });
        Self { addr, token_file, ca_file, shared }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// Changes the state and wakes the open watches.
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state());
        self.shared.changed.notify_all();
    }

    /// Creates pod `uid` on [`NODE`], or changes its annotation.
    pub fn set_pod(&self, uid: &str, policy: Option<&str>) {
        self.update(|s| s.change(uid, Some((NODE, policy))));
    }

    pub fn delete_pod(&self, uid: &str) {
        self.update(|s| s.change(uid, None));
    }

    /// `n` pods created on another node: the resourceVersion moves, node A's watches see nothing.
    pub fn churn_elsewhere(&self, n: usize) {
        self.update(|s| {
            for _ in 0..n {
                let uid = format!("elsewhere-{}", s.revision);
                s.change(&uid, Some(("node-b", None)));
            }
        });
    }

    /// Each open watch that allows bookmarks sends one, at the current resourceVersion.
    pub fn bookmark(&self) {
        self.update(|s| s.bookmarks += 1);
    }

    /// Forgets the history up to now: watches from an older resourceVersion get `gone`.
    pub fn compact(&self, gone: Gone) {
        self.update(|s| {
            s.compacted = s.revision;
            s.gone = gone;
        });
    }

    /// Ends every open watch (as a restarting API server does).
    pub fn hang_up(&self) {
        self.update(|s| s.hangups += 1);
    }

    /// A watch expiry as it happens: other objects change, the history is compacted past the
    /// daemon's place, and its watch is cut; it comes back with a resourceVersion that is gone.
    pub fn expire(&self, gone: Gone) {
        self.churn_elsewhere(1);
        self.compact(gone);
        self.hang_up();
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// LIST requests answered (not counting watches).
    pub fn lists(&self) -> usize {
        self.shared.lists.load(Ordering::SeqCst)
    }

    /// Watch requests, the refused ones included.
    pub fn watches(&self) -> usize {
        self.shared.watches.load(Ordering::SeqCst)
    }

    pub fn bookmarks_sent(&self) -> usize {
        self.shared.bookmarks_sent.load(Ordering::SeqCst)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.update(|s| s.closed = true);
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// Answers the one request of a connection.
fn serve(stream: TcpStream, config: Arc<rustls::ServerConfig>, shared: &Shared) {
    let Ok(conn) = rustls::ServerConnection::new(config) else { return };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 && tls.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let mut words = head.split(' ');
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    if !head.to_lowercase().contains(&format!("\r\nauthorization: bearer {TOKEN}\r\n")) {
        return respond(&mut tls, "401 Unauthorized", &status(401, "Unauthorized", "Unauthorized"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if method != "GET" || path != "/api/v1/pods" {
        return respond(&mut tls, "404 Not Found", &status(404, "NotFound", "not served here"));
    }
    let params: HashMap<String, String> =
        query.split('&').filter_map(|p| p.split_once('=')).map(|(k, v)| (decode(k), decode(v))).collect();
    let Some(node) = params.get("fieldSelector").and_then(|s| s.strip_prefix("spec.nodeName=")) else {
        return respond(&mut tls, "400 Bad Request", &status(400, "BadRequest", "a node's pods only"));
    };
    match params.get("watch").map(String::as_str) {
        Some("1" | "true") => watch(&mut tls, shared, node, &params),
        _ => list(&mut tls, shared, node),
    }
}

fn list(tls: &mut Tls, shared: &Shared, node: &str) {
    shared.lists.fetch_add(1, Ordering::SeqCst);
    let delay = shared.state.lock().unwrap().list_delay;
    std::thread::sleep(delay);
    let state = shared.state.lock().unwrap();
    let items: Vec<Value> =
        state.pods.iter().filter(|(_, p)| p.node == node).map(|(uid, p)| pod_object(uid, p)).collect();
    let body = json!({
        "kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion": state.revision.to_string()},
        "items": items,
    });
    drop(state);
    respond(tls, "200 OK", &body.to_string());
}

fn watch(tls: &mut Tls, shared: &Shared, node: &str, params: &HashMap<String, String>) {
    shared.watches.fetch_add(1, Ordering::SeqCst);
    let Some(from) = params.get("resourceVersion").and_then(|v| v.parse::<u64>().ok()) else {
        return respond(tls, "400 Bad Request", &status(400, "BadRequest", "watch from a resourceVersion"));
    };
    let bookmarks = params.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = params.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800);
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let state = shared.state.lock().unwrap();
    if from < state.compacted {
        let message = format!("too old resource version: {from} ({})", state.compacted);
        let gone = state.gone;
        drop(state);
        let expired = status(410, "Expired", &message);
        return match gone {
            Gone::Status => respond(tls, "410 Gone", &expired),
            Gone::ErrorEvent => {
                let line = format!(
                    "{}\n",
                    json!({"type": "ERROR", "object": serde_json::from_str::<Value>(&expired).unwrap()})
                );
                let _ = start_stream(tls).and_then(|()| chunk(tls, line.as_bytes())).and_then(|()| end_stream(tls));
            }
        };
    }
    let (hangups, mut bookmarks_seen, mut cursor) = (state.hangups, state.bookmarks, from);
    drop(state);
    if start_stream(tls).is_err() {
        return;
    }
    loop {
        let mut lines = String::new();
        let ended;
        {
            let mut state = shared.state.lock().unwrap();
            loop {
                for e in state.events.iter().filter(|e| e.revision > cursor && e.node == node) {
                    lines.push_str(&format!("{}\n", json!({"type": e.kind, "object": e.object})));
                }
                cursor = state.revision;
                if state.bookmarks != bookmarks_seen {
                    bookmarks_seen = state.bookmarks;
                    if bookmarks {
                        let object = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": state.revision.to_string()}});
                        lines.push_str(&format!("{}\n", json!({"type": "BOOKMARK", "object": object})));
                        shared.bookmarks_sent.fetch_add(1, Ordering::SeqCst);
                    }
                }
                let now = Instant::now();
                if !lines.is_empty() || state.closed || state.hangups != hangups || now >= deadline {
                    ended = state.closed || state.hangups != hangups || now >= deadline;
                    break;
                }
                let wait = (deadline - now).min(Duration::from_secs(1));
                state = shared.changed.wait_timeout(state, wait).unwrap().0;
            }
        }
        if !lines.is_empty() && chunk(tls, lines.as_bytes()).is_err() {
            return;
        }
        if ended {
            let _ = end_stream(tls);
            return;
        }
    }
}

fn start_stream(tls: &mut Tls) -> std::io::Result<()> {
    write!(
        tls,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )?;
    tls.flush()
}

fn chunk(tls: &mut Tls, data: &[u8]) -> std::io::Result<()> {
    write!(tls, "{:x}\r\n", data.len())?;
    tls.write_all(data)?;
    tls.write_all(b"\r\n")?;
    tls.flush()
}

fn end_stream(tls: &mut Tls) -> std::io::Result<()> {
    tls.write_all(b"0\r\n\r\n")?;
    tls.flush()?;
    tls.conn.send_close_notify();
    tls.flush()
}

fn respond(tls: &mut Tls, status: &str, body: &str) {
    let _ = write!(
        tls,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

/// A query component, percent-decoded.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%').then(|| s.get(i + 1..i + 3)).flatten().and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(if b[i] == b'+' { b' ' } else { b[i] });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
