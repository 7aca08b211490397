//! Leaf certificates per host, minted on demand by the CA and kept in a bounded cache, and the
//! `ServerConfig` the proxy presents to the agent.
//!
//! What it enforces:
//! - [`LeafCache`] as a resolver on its own serves the leaf for the client's SNI and refuses the
//!   handshake (no certificate) when there is no SNI;
//! - [`LeafCache::server_config_for`] is for a connection whose CONNECT target is known: it serves
//!   the leaf for the SNI when there is one, else for the CONNECT host (IP literal targets, clients
//!   that send no SNI). It does not reject an SNI that differs from the CONNECT host: the caller
//!   reads the SNI from the accepted connection ([`client_sni`]) and decides with
//!   [`sni_mismatch`] (domain fronting), so that it can audit and answer instead of failing the
//!   handshake blindly;
//! - ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3, ring provider;
//! - at most `capacity` leaves (and as many per-CONNECT-host configs) are kept; concurrent
//!   handshakes for the same host mint once.

use std::fmt;
use std::sync::Arc;

use quick_cache::sync::Cache;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use super::ca::{CertificateAuthority, LeafHost};
use super::{alpn_protocols, ring_provider, Result, VERSIONS};

/// Leaves and configs kept when the caller has no better number.
pub const DEFAULT_CAPACITY: usize = 1024;

/// Leaf certificates by canonical host, and server configs by CONNECT host.
pub struct LeafCache {
    leaves: Arc<Leaves>,
    configs: Cache<String, Arc<ServerConfig>>,
}

/// The leaves alone: what resolvers hold (configs hold resolvers, so holding the whole
/// [`LeafCache`] there would make a reference cycle).
struct Leaves {
    ca: Arc<CertificateAuthority>,
    cache: Cache<String, Arc<CertifiedKey>>,
}

impl fmt::Debug for LeafCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafCache").field("leaves", &self.leaves).field("configs", &self.configs.len()).finish()
    }
}

impl fmt::Debug for Leaves {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaves").field("ca", &self.ca.name()).field("cached", &self.cache.len()).finish()
    }
}

impl LeafCache {
    /// A cache keeping at most `capacity` leaves and `capacity` configs (at least 1 each).
    pub fn new(ca: Arc<CertificateAuthority>, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { leaves: Arc::new(Leaves { ca, cache: Cache::new(capacity) }), configs: Cache::new(capacity) }
    }

    /// The CA the leaves are signed by.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.leaves.ca
    }

    /// The leaf for `host` (DNS name or IP literal), minted on first use.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>> {
        self.leaves.leaf(&LeafHost::parse(host)?)
    }

    /// A config that serves leaves by SNI only: handshakes without SNI are refused.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>> {
        build_server_config(self.leaves.clone())
    }

    /// The config for a connection that was CONNECTed to `connect_host`: SNI decides the leaf when
    /// present, else `connect_host` does. Configs are cached per CONNECT host, so TLS session
    /// resumption works across connections to the same target.
    pub fn server_config_for(&self, connect_host: &str) -> Result<Arc<ServerConfig>> {
        let host = LeafHost::parse(connect_host)?;
        self.configs.get_or_insert_with(&host.as_string(), || {
            build_server_config(Arc::new(ConnectResolver {
                leaves: self.leaves.clone(),
                connect_host: host.as_string(),
            }))
        })
    }
}

impl Leaves {
    fn leaf(&self, host: &LeafHost) -> Result<Arc<CertifiedKey>> {
        self.cache.get_or_insert_with(&host.as_string(), || self.ca.mint(host).map(Arc::new))
    }

    /// A resolver outcome: the leaf, or `None` (handshake refused) with the reason on stderr.
    fn resolve_host(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        match LeafHost::parse(host).and_then(|h| self.leaf(&h)) {
            Ok(leaf) => Some(leaf),
            Err(e) => {
                crate::say!("leash: TLS: no certificate for {host:?}: {e}");
                None
            }
        }
    }
}

/// By SNI only; `None` (handshake refused) without SNI.
impl ResolvesServerCert for LeafCache {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.leaves.resolve(client_hello)
    }
}

impl ResolvesServerCert for Leaves {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.resolve_host(client_hello.server_name()?)
    }
}

/// Resolves by SNI, falling back to the CONNECT host when the client sent none.
#[derive(Debug)]
struct ConnectResolver {
    leaves: Arc<Leaves>,
    connect_host: String,
}

impl ResolvesServerCert for ConnectResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.leaves.resolve_host(client_hello.server_name().unwrap_or(&self.connect_host))
    }
}

fn build_server_config(resolver: Arc<dyn ResolvesServerCert>) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn_protocols();
    Ok(Arc::new(config))
}

/// The SNI the agent sent on an accepted connection (`None` when it sent none).
pub fn client_sni<IO>(conn: &tokio_rustls::server::TlsStream<IO>) -> Option<&str> {
    conn.get_ref().1.server_name()
}

/// True when the agent's SNI names another host than its CONNECT target (domain fronting).
/// Comparison ignores case, a trailing dot and IPv6 brackets. A missing SNI is not a mismatch:
/// clients send none for IP literal targets.
pub fn sni_mismatch(connect_host: &str, sni: Option<&str>) -> bool {
    let Some(sni) = sni else { return false };
    match (LeafHost::parse(connect_host), LeafHost::parse(sni)) {
        (Ok(a), Ok(b)) => a != b,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;

    fn client_trusting(ca: &CertificateAuthority, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let mut config = ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(VERSIONS)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// One in-memory handshake plus a byte each way. Returns (ALPN, SNI seen by the server).
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> Result<(Option<Vec<u8>>, Option<String>), String> {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(name.to_string()).unwrap();
        let server_side = async move {
            let mut tls = TlsAcceptor::from(server).accept(s).await.map_err(|e| format!("server: {e}"))?;
            let sni = client_sni(&tls).map(str::to_string);
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            tls.write_all(&b).await.map_err(|e| e.to_string())?;
            tls.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(sni)
        };
        let client_side = async move {
            let mut tls = TlsConnector::from(client).connect(name, c).await.map_err(|e| format!("client: {e}"))?;
            tls.write_all(b"x").await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        };
        let (sni, alpn) = tokio::join!(server_side, client_side);
        Ok((alpn?, sni?))
    }

    fn cache() -> LeafCache {
        LeafCache::new(Arc::new(CertificateAuthority::generate().unwrap()), 16)
    }

    #[tokio::test]
    async fn handshake_by_sni_negotiates_h2() {
        let leaves = cache();
        let client = client_trusting(leaves.ca(), &[b"h2", b"http/1.1"]);
        let (alpn, sni) = handshake(leaves.server_config().unwrap(), client, "example.test").await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(sni.as_deref(), Some("example.test"));
    }

    #[tokio::test]
    async fn http11_only_client_gets_http11() {
        let leaves = cache();
        let client = client_trusting(leaves.ca(), &[b"http/1.1"]);
        let config = leaves.server_config_for("example.test").unwrap();
        let (alpn, _) = handshake(config, client, "example.test").await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    }

    #[tokio::test]
    async fn ip_target_without_sni_gets_the_connect_host_leaf() {
        let leaves = cache();
        let client = client_trusting(leaves.ca(), &[b"h2", b"http/1.1"]);
        // rustls sends no SNI for an IP address.
        let config = leaves.server_config_for("127.0.0.1").unwrap();
        let (alpn, sni) = handshake(config, client.clone(), "127.0.0.1").await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(sni, None);
        // The SNI-only resolver refuses the same handshake.
        let refused = handshake(leaves.server_config().unwrap(), client, "127.0.0.1").await;
        assert!(refused.is_err(), "no SNI and no default host must refuse");
    }

    #[tokio::test]
    async fn fronted_sni_is_visible_to_the_caller() {
        let leaves = cache();
        let client = client_trusting(leaves.ca(), &[b"http/1.1"]);
        let config = leaves.server_config_for("allowed.test").unwrap();
        let (_, sni) = handshake(config, client, "other.test").await.unwrap();
        assert_eq!(sni.as_deref(), Some("other.test"));
        assert!(sni_mismatch("allowed.test", sni.as_deref()));
    }

    #[test]
    fn same_host_same_leaf() {
        let leaves = cache();
        let a = leaves.leaf("example.test").unwrap();
        let b = leaves.leaf("EXAMPLE.test.").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = leaves.leaf("other.test").unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        let d = leaves.server_config_for("example.test").unwrap();
        let e = leaves.server_config_for("example.test").unwrap();
        assert!(Arc::ptr_eq(&d, &e));
        assert!(leaves.leaf("not a host").is_err());
        assert!(leaves.server_config_for("not a host").is_err());
    }

    #[test]
    fn cache_is_bounded() {
        let leaves = cache();
        for i in 0..100 {
            leaves.leaf(&format!("h{i}.test")).unwrap();
        }
        let kept = leaves.leaves.cache.len();
        assert!(kept <= 16, "{kept} leaves kept");
    }

    #[test]
    fn sni_comparison() {
        assert!(!sni_mismatch("example.test", None));
        assert!(!sni_mismatch("example.test", Some("EXAMPLE.test.")));
        assert!(!sni_mismatch("::1", Some("[::1]")));
        assert!(sni_mismatch("example.test", Some("evil.test")));
        assert!(sni_mismatch("example.test", Some("bad sni")));
    }
}
