//! The daemon's only use of the Kubernetes API: listing the pods of its own node (with
//! `fieldSelector=spec.nodeName=<node>`) to read their `leash.dev/policy` annotation. One HTTPS
//! GET with the service account's token, verified against the service account's CA.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Empty};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;

/// The annotation that lets a pod use leash, naming its policy.
pub const POLICY_ANNOTATION: &str = "leash.dev/policy";

/// Largest pod list the daemon reads (a node runs at most a few hundred pods).
const MAX_BODY: usize = 32 * 1024 * 1024;

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

#[derive(Deserialize)]
struct PodList {
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Metadata {
    uid: String,
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// Lists the pods of the configured node, by uid.
pub async fn node_pods(config: &KubeConfig) -> Result<HashMap<String, PodInfo>> {
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
    // Node names are DNS subdomains: letters, digits, `-` and `.` pass as they are.
    const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'.').remove(b'-');
    let selector = percent_encoding::utf8_percent_encode(&format!("spec.nodeName={}", config.node), QUERY).to_string();
    let request = hyper::Request::get(format!("/api/v1/pods?fieldSelector={selector}"))
        .header("host", &config.server)
        .header("authorization", format!("Bearer {}", token.trim()))
        .header("accept", "application/json")
        .body(Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await.context("listing pods")?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the pod list: {e}"))?
        .to_bytes();
    if !status.is_success() {
        // The body of an error is the API's own Status message, never a secret.
        bail!("listing pods: API server answered {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
    }
    let list: PodList = serde_json::from_slice(&body).context("parsing the pod list")?;
    Ok(list
        .items
        .into_iter()
        .map(|p| {
            let m = p.metadata;
            let policy = m.annotations.get(POLICY_ANNOTATION).cloned();
            (m.uid, PodInfo { namespace: m.namespace, name: m.name, policy })
        })
        .collect())
}
