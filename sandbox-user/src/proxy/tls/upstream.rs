//! The proxy's TLS client towards the real servers.
//!
//! What it enforces:
//! - upstream certificates are verified (webpki) against the system roots plus every certificate of
//!   every `--upstream-ca` file; there is no way to turn verification off;
//! - an `--upstream-ca` file that cannot be read, is not PEM, or holds no certificate is an error
//!   naming the file;
//! - a missing or unreadable system store is tolerated only when `--upstream-ca` gives roots;
//! - ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3, ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{alpn_protocols, ring_provider, Result, TlsError, VERSIONS};

/// The system's trusted roots: the file `SSL_CERT_FILE` names, else the distribution's bundle
/// file, plus every file of each directory `SSL_CERT_DIR` names; with none of these, as
/// rustls-native-certs finds them (it also reads every file of the certificate directory).
#[derive(Debug, Default, Clone)]
pub struct SystemRoots {
    pub certs: Vec<CertificateDer<'static>>,
    /// `certs` as PEM, when they were read from one file: its `CERTIFICATE` blocks as written
    /// (nothing else of the file), so the agent's bundle is copied rather than encoded again.
    pub pem: Option<String>,
    /// What went wrong while reading the store, one line each.
    pub errors: Vec<String>,
}

/// Reads the system store once per process (the upstream config and the agent's bundle both
/// need it). Never fails: an absent store is an empty list plus errors.
pub fn system_roots() -> SystemRoots {
    static ROOTS: std::sync::OnceLock<SystemRoots> = std::sync::OnceLock::new();
    ROOTS.get_or_init(read_system_roots).clone()
}

fn read_system_roots() -> SystemRoots {
    let file = match std::env::var_os("SSL_CERT_FILE") {
        Some(f) => Some(PathBuf::from(f)),
        None => DISTRIBUTION_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file()),
    };
    let dirs: Vec<PathBuf> =
        std::env::var_os("SSL_CERT_DIR").map(|d| std::env::split_paths(&d).collect()).unwrap_or_default();
    if file.is_none() && dirs.is_empty() {
        let found = rustls_native_certs::load_native_certs();
        let errors = found.errors.iter().map(ToString::to_string).collect();
        return SystemRoots { certs: found.certs, pem: None, errors };
    }
    let mut roots = SystemRoots::default();
    if let Some(file) = &file {
        // The bundle's roots are public: a plain base64 decoder reads them in a tenth of the time
        // rustls' constant-time one took (2.5 ms of every start). rustls reads what it cannot.
        match std::fs::read_to_string(file).ok().and_then(|text| pem_certificates(&text)) {
            Some((certs, pem)) => (roots.certs, roots.pem) = (certs, Some(pem)),
            None => roots.add(rustls_native_certs::load_certs_from_paths(Some(file), None)),
        }
    }
    for dir in &dirs {
        roots.add(rustls_native_certs::load_certs_from_paths(None, Some(dir)));
        roots.pem = None;
    }
    // A directory usually holds the bundle's certificates again, as hashed links.
    let mut seen = std::collections::HashSet::new();
    roots.certs.retain(|c| seen.insert(c.as_ref().to_vec()));
    roots
}

impl SystemRoots {
    fn add(&mut self, found: rustls_native_certs::CertificateResult) {
        self.certs.extend(found.certs);
        self.errors.extend(found.errors.iter().map(ToString::to_string));
    }
}

/// Where distributions keep every trusted root in one PEM file, kept current by their tools
/// (`update-ca-certificates`, `update-ca-trust`) together with the hashed directory beside it.
const DISTRIBUTION_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Alpine, Arch
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",                            // openSUSE
    "/etc/ssl/cert.pem",                                 // others
];

/// Every `CERTIFICATE` block of PEM `text`, decoded and as written (each block on its own
/// lines), or `None` if one does not decode. Whatever else the file holds is left out.
fn pem_certificates(text: &str) -> Option<(Vec<CertificateDer<'static>>, String)> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut blocks = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let end = body.find(END)?;
        let b64: String = body[..end].split_ascii_whitespace().collect();
        certs.push(CertificateDer::from(base64::engine::general_purpose::STANDARD.decode(b64).ok()?));
        blocks.push_str(&rest[start..start + BEGIN.len() + end + END.len()]);
        blocks.push('\n');
        rest = &body[end + END.len()..];
    }
    Some((certs, blocks))
}

/// Every certificate in the PEM file `path` (other PEM sections such as keys are skipped).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |reason: String| TlsError::UpstreamCa { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM CERTIFICATE".into()));
    }
    Ok(certs)
}

/// The client config for upstream connections: system roots plus the certificates of every
/// `extra_roots` file (`--upstream-ca`).
pub fn upstream_client_config(extra_roots: &[PathBuf]) -> Result<Arc<ClientConfig>> {
    let system = system_roots();
    let mut roots = RootCertStore::empty();
    let (system_added, system_ignored) = roots.add_parsable_certificates(system.certs);

    let mut extra_added = 0;
    for path in extra_roots {
        for cert in read_pem_certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::UpstreamCa { path: path.clone(), reason: format!("unusable as a root: {e}") })?;
            extra_added += 1;
        }
    }

    if system_added == 0 && extra_added == 0 {
        let why = if system.errors.is_empty() { "empty store".to_string() } else { system.errors.join("; ") };
        return Err(TlsError::NoRoots(why));
    }
    if system_added == 0 {
        eprintln!("leash: warning: upstream TLS: no system root certificates; trusting --upstream-ca only");
    }
    for error in &system.errors {
        eprintln!("leash: warning: upstream TLS: system certificate store: {error}");
    }
    if system_ignored > 0 {
        eprintln!("leash: warning: upstream TLS: {system_ignored} unparsable system roots skipped");
    }

    let mut config = ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn_protocols();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::super::testing::scratch_dir;
    use super::super::{CertificateAuthority, LeafCache};
    use super::*;

    #[test]
    fn loads_extra_ca_and_offers_both_alpns() {
        let dir = scratch_dir("upstream-ok");
        let (a, b) = (CertificateAuthority::generate().unwrap(), CertificateAuthority::generate().unwrap());
        let file = dir.join("two.pem");
        std::fs::write(&file, format!("junk line\n{}{}", a.cert_pem(), b.cert_pem())).unwrap();
        assert_eq!(read_pem_certificates(&file).unwrap().len(), 2);
        let config = upstream_client_config(&[file]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The plain decoder of the distribution bundle reads what rustls' own PEM reader reads: on
    /// this host's bundle, and on a file with junk, other blocks and CRLF line ends; a block that
    /// does not decode sends the caller to the general path. The blocks it keeps as text are the
    /// certificates alone (a key beside them in the file never reaches the agent's bundle).
    #[test]
    fn the_bundle_decoder_agrees_with_rustls() {
        let (a, b) = (CertificateAuthority::generate().unwrap(), CertificateAuthority::generate().unwrap());
        let crafted = format!(
            "junk\n{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{}",
            a.cert_pem(),
            b.cert_pem().replace('\n', "\r\n")
        );
        let mut texts = vec![crafted];
        texts.extend(DISTRIBUTION_BUNDLES.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
        for text in &texts {
            let theirs: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes()).collect::<Result<_, _>>().unwrap();
            let (certs, blocks) = pem_certificates(text).unwrap();
            assert_eq!(certs, theirs);
            // The blocks as written (copied into the agent's bundle) hold those certificates and
            // nothing else of the file.
            let again: Vec<_> = CertificateDer::pem_slice_iter(blocks.as_bytes()).collect::<Result<_, _>>().unwrap();
            assert_eq!(again, theirs);
            assert_eq!(blocks.matches("-----BEGIN").count(), theirs.len());
        }
        let (certs, blocks) = pem_certificates(&texts[0]).unwrap();
        assert_eq!(certs.len(), 2);
        assert!(!blocks.contains("PRIVATE KEY") && !blocks.contains("junk"), "{blocks}");
        assert!(pem_certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_none());
        assert!(pem_certificates("-----BEGIN CERTIFICATE-----\nAAAA\n").is_none(), "no END");
    }

    #[test]
    fn rejects_empty_missing_and_garbled_files() {
        let dir = scratch_dir("upstream-bad");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let keys_only = dir.join("key.pem");
        std::fs::write(&keys_only, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let garbled = dir.join("garbled.pem");
        std::fs::write(&garbled, "-----BEGIN CERTIFICATE-----\n!!!\n").unwrap();
        let missing = dir.join("missing.pem");
        for path in [empty, keys_only, garbled, missing] {
            let e = upstream_client_config(std::slice::from_ref(&path)).unwrap_err();
            assert!(matches!(e, TlsError::UpstreamCa { .. }), "{path:?}: {e}");
            assert!(e.to_string().contains(&*path.to_string_lossy()), "error names the file: {e}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The upstream config completes a real handshake with a server whose chain comes from the
    /// `--upstream-ca` file, negotiating h2, and refuses the same server without that file.
    #[tokio::test]
    async fn verifies_upstream_against_extra_ca() {
        let dir = scratch_dir("upstream-hs");
        let upstream_ca = Arc::new(CertificateAuthority::generate().unwrap());
        let file = dir.join("ca.pem");
        std::fs::write(&file, upstream_ca.cert_pem()).unwrap();
        let server = LeafCache::new(upstream_ca, 4).server_config().unwrap();

        let connect = |client: Arc<ClientConfig>| {
            let server = server.clone();
            async move {
                let (c, s) = tokio::io::duplex(64 * 1024);
                let srv = async move {
                    let mut tls = TlsAcceptor::from(server).accept(s).await.map_err(|e| e.to_string())?;
                    let mut b = [0u8; 1];
                    tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
                    tls.write_all(&b).await.map_err(|e| e.to_string())?;
                    tls.flush().await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(())
                };
                let cli = async move {
                    let name = ServerName::try_from("upstream.test").unwrap();
                    let mut tls = TlsConnector::from(client).connect(name, c).await.map_err(|e| e.to_string())?;
                    tls.write_all(b"x").await.map_err(|e| e.to_string())?;
                    let mut b = [0u8; 1];
                    tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
                    Ok::<_, String>(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
                };
                let (s, c) = tokio::join!(srv, cli);
                s.and(c)
            }
        };
        let alpn = connect(upstream_client_config(&[file]).unwrap()).await.unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        if !system_roots().certs.is_empty() {
            assert!(
                connect(upstream_client_config(&[]).unwrap()).await.is_err(),
                "system roots alone must not trust it"
            );
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
