//! The daemon's only use of the Kubernetes API: the pods of its own node
//! (`fieldSelector=spec.nodeName=<node>`), listed once and then watched, to read their
//! `leash.dev/policy` annotation. HTTPS with the service account's token, verified against the
//! service account's CA; `node_pods.rs` keeps the view these calls feed.
//!
//! Why not kube-rs with k8s-openapi: the daemon needs one list and one watch of one resource
//! (pods, three metadata fields), not a general client. This file is that surface, typed, on the
//! hyper and rustls the daemon already links for its proxy; kube-rs would add its own stack
//! (tower, its HTTP and TLS layers, the whole generated API) to a privileged binary on every node,
//! and minutes to each build, for calls that fit here. What kube-rs would have given for free is
//! written out in `node_pods.rs`: resourceVersion handling, bookmarks, re-list on 410 Gone.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;

/// The annotation that lets a pod use leash, naming its policy.
pub const POLICY_ANNOTATION: &str = "leash.dev/policy";

/// Largest pod list the daemon reads (a node runs at most a few hundred pods).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Largest single watch event (one pod; etcd stores at most 1.5 MiB per object).
const MAX_EVENT: usize = 8 * 1024 * 1024;

/// A watch that sends nothing (not even a bookmark) for this long past its own timeout is dead.
const WATCH_GRACE: Duration = Duration::from_secs(30);

/// Where and how to reach the API server.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// `host:port` of the API server.
    pub server: String,
    /// The file holding the bearer token (read on every request: projected tokens rotate).
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    pub node: String,
}

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl KubeConfig {
    /// The in-cluster configuration (`KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted service
    /// account), or `None` outside a cluster.
    pub fn in_cluster(node: &str) -> Option<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let server = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Some(Self {
            server,
            token_file: PathBuf::from(SERVICE_ACCOUNT).join("token"),
            ca_file: PathBuf::from(SERVICE_ACCOUNT).join("ca.crt"),
            node: node.to_owned(),
        })
    }
}

/// What the daemon knows of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The value of [`POLICY_ANNOTATION`], if the pod has it.
    pub policy: Option<String>,
}

/// The node's pods at one resourceVersion, by uid.
#[derive(Debug)]
pub struct PodList {
    pub resource_version: String,
    pub pods: HashMap<String, PodInfo>,
}

/// One change of the node's pods, as a watch reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum PodEvent {
    /// A pod was added or changed (`ADDED`, `MODIFIED`): its state now.
    Applied {
        uid: String,
        pod: PodInfo,
        resource_version: String,
    },
    Deleted {
        uid: String,
        resource_version: String,
    },
    /// Nothing changed for this node up to this resourceVersion (`BOOKMARK`).
    Bookmark {
        resource_version: String,
    },
}

/// How a watch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchEnd {
    /// The server ended it (its timeout, or a restart): watch again from the last resourceVersion.
    Closed,
    /// The watch cannot go on from where it was (410 Gone: the resourceVersion is too old; or an
    /// event the daemon cannot read): list again. The reason, for the log.
    Relist(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawList {
    #[serde(default)]
    metadata: ListMetadata,
    #[serde(default)]
    items: Vec<RawPod>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListMetadata {
    #[serde(default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct RawPod {
    metadata: PodMetadata,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodMetadata {
    uid: String,
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    resource_version: String,
}

impl PodMetadata {
    fn into_pod(self) -> (String, PodInfo) {
        let policy = self.annotations.get(POLICY_ANNOTATION).cloned();
        (self.uid, PodInfo { namespace: self.namespace, name: self.name, policy })
    }
}

/// A line of a watch stream.
#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

/// The API's `Status` (what an `ERROR` event carries).
#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
}

/// A bookmark's object: only its resourceVersion means anything.
#[derive(Deserialize)]
struct BookmarkObject {
    metadata: ListMetadata,
}

/// Lists the pods of the configured node, with the list's resourceVersion to watch from.
pub async fn list_pods(config: &KubeConfig) -> Result<PodList> {
    let response =
        get(config, &format!("/api/v1/pods?fieldSelector={}", node_selector(config))).await.context("listing pods")?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the pod list: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!("listing pods: API server answered {status}: {}", excerpt(&body));
    }
    let list: RawList = serde_json::from_slice(&body).context("parsing the pod list")?;
    if list.metadata.resource_version.is_empty() {
        bail!("the pod list has no resourceVersion to watch from");
    }
    Ok(PodList {
        resource_version: list.metadata.resource_version,
        pods: list.items.into_iter().map(|p| p.metadata.into_pod()).collect(),
    })
}

/// Watches the node's pods from `resource_version`, handing each event to `on_event` in order,
/// until the server ends the watch (after `timeout` at the latest). `Err`: the API server could
/// not be reached or refused the watch; watching again from the same place may work.
pub async fn watch_pods(
    config: &KubeConfig,
    resource_version: &str,
    timeout: Duration,
    on_event: &mut (dyn FnMut(PodEvent) + Send),
) -> Result<WatchEnd> {
    let rv = percent_encoding::utf8_percent_encode(resource_version, QUERY);
    let path = format!(
        "/api/v1/pods?fieldSelector={}&watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds={}",
        node_selector(config),
        timeout.as_secs().max(1)
    );
    let response = get(config, &path).await.context("watching pods")?;
    let status = response.status();
    if status == hyper::StatusCode::GONE {
        return Ok(WatchEnd::Relist(format!("resourceVersion {resource_version} expired (410 Gone)")));
    }
    if !status.is_success() {
        let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        bail!("watching pods: API server answered {status}: {}", excerpt(&body));
    }
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    let idle = timeout + WATCH_GRACE;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => bail!("the watch sent nothing for {} s", idle.as_secs()),
            Ok(None) => return Ok(WatchEnd::Closed),
            Ok(Some(frame)) => frame.map_err(|e| anyhow!("reading the watch: {e}"))?,
        };
        let Ok(data) = frame.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line = pending.split_to(end + 1);
            if let Some(relist) = handle_line(&line, on_event) {
                return Ok(relist);
            }
        }
        if pending.len() > MAX_EVENT {
            return Ok(WatchEnd::Relist(format!("a watch event is longer than {MAX_EVENT} bytes")));
        }
    }
}

/// Reads one line of a watch stream and hands its event on; `Some` when the watch must end.
fn handle_line(line: &[u8], on_event: &mut (dyn FnMut(PodEvent) + Send)) -> Option<WatchEnd> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return None;
    }
    match parse_event(line) {
        Ok(Some(event)) => {
            on_event(event);
            None
        }
        Ok(None) => None,
        Err(end) => Some(end),
    }
}

/// One watch line as an event: `Ok(None)` for a type the daemon has no use for, `Err` when the
/// watch must end with a re-list.
fn parse_event(line: &[u8]) -> Result<Option<PodEvent>, WatchEnd> {
    let unreadable = |e: serde_json::Error| WatchEnd::Relist(format!("unreadable watch event: {e}"));
    let raw: RawEvent = serde_json::from_slice(line).map_err(unreadable)?;
    let event = match raw.kind.as_str() {
        "ADDED" | "MODIFIED" => {
            let pod: RawPod = serde_json::from_value(raw.object).map_err(unreadable)?;
            let resource_version = pod.metadata.resource_version.clone();
            let (uid, pod) = pod.metadata.into_pod();
            PodEvent::Applied { uid, pod, resource_version }
        }
        "DELETED" => {
            let pod: RawPod = serde_json::from_value(raw.object).map_err(unreadable)?;
            PodEvent::Deleted { uid: pod.metadata.uid, resource_version: pod.metadata.resource_version }
        }
        "BOOKMARK" => {
            let object: BookmarkObject = serde_json::from_value(raw.object).map_err(unreadable)?;
            PodEvent::Bookmark { resource_version: object.metadata.resource_version }
        }
        "ERROR" => {
            let status: Status = serde_json::from_value(raw.object).map_err(unreadable)?;
            let what = if status.code == 410 { "expired" } else { "failed" };
            return Err(WatchEnd::Relist(format!(
                "the watch {what}: {} {} {}",
                status.code,
                status.reason,
                status.message.chars().take(300).collect::<String>()
            )));
        }
        _ => return Ok(None),
    };
    Ok(Some(event))
}

// Node names are DNS subdomains: letters, digits, `-` and `.` pass as they are.
const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'.').remove(b'-');

/// `spec.nodeName=<node>`, encoded for a query.
fn node_selector(config: &KubeConfig) -> String {
    percent_encoding::utf8_percent_encode(&format!("spec.nodeName={}", config.node), QUERY).to_string()
}

/// The start of an error body for a message (the API's own Status, never a secret).
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// One GET on a connection of its own; the response as it starts (the body still streaming).
async fn get(config: &KubeConfig, path: &str) -> Result<hyper::Response<hyper::body::Incoming>> {
    let token = std::fs::read_to_string(&config.token_file)
        .with_context(|| format!("reading the service account token {}", config.token_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&config.ca_file)
        .with_context(|| format!("reading the API server CA {}", config.ca_file.display()))?
    {
        roots.add(cert.context("parsing the API server CA")?).context("adding the API server CA")?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let host = config.server.rsplit_once(':').map(|(h, _)| h).unwrap_or(&config.server);
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|_| anyhow!("API server host {host} is not a valid name"))?;
    let tcp = tokio::net::TcpStream::connect(&config.server)
        .await
        .with_context(|| format!("connecting to the API server {}", config.server))?;
    let stream =
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.context("TLS to the API server")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .context("HTTP to the API server")?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", &config.server)
        .header("authorization", format!("Bearer {}", token.trim()))
        .header("accept", "application/json")
        .body(Empty::<Bytes>::new())?;
    Ok(sender.send_request(request).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> (Vec<PodEvent>, Option<WatchEnd>) {
        let mut seen = Vec::new();
        let mut end = None;
        for line in text.split_inclusive('\n') {
            if let Some(e) = handle_line(line.as_bytes(), &mut |ev| seen.push(ev)) {
                end = Some(e);
                break;
            }
        }
        (seen, end)
    }

    #[test]
    fn watch_lines_become_events_and_an_expiry_ends_the_watch() {
        let text = concat!(
            r#"{"type":"ADDED","object":{"metadata":{"uid":"u1","name":"a","namespace":"ci","resourceVersion":"7","annotations":{"leash.dev/policy":"p"}}}}"#,
            "\n\n",
            r#"{"type":"MODIFIED","object":{"metadata":{"uid":"u1","name":"a","namespace":"ci","resourceVersion":"8"}}}"#,
            "\n",
            r#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"12"}}}"#,
            "\n",
            r#"{"type":"DELETED","object":{"metadata":{"uid":"u1","name":"a","resourceVersion":"13"}}}"#,
            "\n",
            r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired","message":"too old"}}"#,
            "\n",
            r#"{"type":"ADDED","object":{"metadata":{"uid":"u2","name":"b","resourceVersion":"14"}}}"#,
            "\n",
        );
        let (seen, end) = events(text);
        let pod =
            |policy: Option<&str>| PodInfo { namespace: "ci".into(), name: "a".into(), policy: policy.map(Into::into) };
        assert_eq!(
            seen,
            vec![
                PodEvent::Applied { uid: "u1".into(), pod: pod(Some("p")), resource_version: "7".into() },
                PodEvent::Applied { uid: "u1".into(), pod: pod(None), resource_version: "8".into() },
                PodEvent::Bookmark { resource_version: "12".into() },
                PodEvent::Deleted { uid: "u1".into(), resource_version: "13".into() },
            ]
        );
        assert!(matches!(end, Some(WatchEnd::Relist(why)) if why.contains("410")));
    }

    #[test]
    fn an_unreadable_event_ends_the_watch_for_a_relist() {
        for bad in [
            "not json\n",
            "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"no-uid\"}}}\n",
            "{\"type\":\"ADDED\"}\n",
            "{\"type\":\"BOOKMARK\",\"object\":{}}\n",
        ] {
            let (seen, end) = events(bad);
            assert!(seen.is_empty(), "{bad}");
            assert!(matches!(end, Some(WatchEnd::Relist(_))), "{bad}");
        }
        // Types the daemon has no use for are skipped.
        let (seen, end) = events("{\"type\":\"SOMETHING\",\"object\":{}}\n");
        assert!(seen.is_empty() && end.is_none());
    }
}
