//! The proxy's TLS client towards the real servers.
//!
//! What it enforces:
//! - upstream certificates are verified (webpki) against the system roots plus every certificate of
//!   every `--upstream-ca` file; there is no way to turn verification off;
//! - an `--upstream-ca` file that cannot be read, is not PEM, or holds no certificate is an error
//!   naming the file;
//! - a missing or unreadable system store is tolerated only when `--upstream-ca` gives roots;
//! - ALPN `h2` then `http/1.1`, TLS 1.2 and 1.3, ring provider.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

use super::roots_cache::Lookup;
use super::{alpn_protocols, ring_provider, Result, TlsError, VERSIONS};

/// The system's trusted roots: the file `SSL_CERT_FILE` names, else the distribution's bundle
/// file, plus every file of each directory `SSL_CERT_DIR` names; with none of these, as
/// rustls-native-certs finds them (it also reads every file of the certificate directory).
#[derive(Debug, Default)]
pub struct SystemRoots {
    /// Each certificate once, in the order read.
    pub certs: Vec<CertificateDer<'static>>,
    /// `certs` as PEM: the `CERTIFICATE` blocks as the files wrote them (nothing else of those
    /// files), so the agent's bundle is copied rather than encoded again.
    pub pem: std::borrow::Cow<'static, str>,
    /// What went wrong while reading the store, one line each.
    pub errors: Vec<String>,
    /// `certs` that parse as trust anchors, parsed when this host's roots cache was made (when
    /// it held the store); `None` when they are to be parsed now.
    pub anchors: Option<Vec<TrustAnchor<'static>>>,
    /// The indices in `certs` of the certificates with each length and last byte (a certificate
    /// ends with its signature): a new one is compared with those alone.
    seen: std::collections::HashMap<(usize, u8), Vec<usize>>,
}

/// Reads the system store once per process (the upstream config and the agent's bundle both
/// need it). Never fails: an absent store is an empty list plus errors. A store that is one file
/// is decoded only when this host's cache (`roots_cache`) holds nothing for its content.
pub fn system_roots() -> &'static SystemRoots {
    static ROOTS: std::sync::OnceLock<SystemRoots> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| match super::roots_cache::lookup() {
        Some(Lookup::Hit(cached)) => SystemRoots {
            certs: cached.certs.clone(),
            pem: cached.pem.into(),
            anchors: Some(cached.anchors.clone()),
            ..SystemRoots::default()
        },
        Some(Lookup::Miss { path, text }) => {
            let mut roots = SystemRoots::default();
            roots.add_text(path, text);
            roots
        }
        None => read_system_roots(),
    })
}

/// The store's file: `SSL_CERT_FILE`, else the distribution's bundle.
fn store_file() -> Option<PathBuf> {
    match std::env::var_os("SSL_CERT_FILE") {
        Some(f) => Some(PathBuf::from(f)),
        None => DISTRIBUTION_BUNDLES.iter().map(PathBuf::from).find(|p| p.is_file()),
    }
}

/// The directories `SSL_CERT_DIR` adds to the store.
fn store_dirs() -> Vec<PathBuf> {
    std::env::var_os("SSL_CERT_DIR").map(|d| std::env::split_paths(&d).collect()).unwrap_or_default()
}

/// The store's file when it is the whole store (no directory adds to it): what the roots cache
/// keeps.
pub fn single_file_store() -> Option<PathBuf> {
    store_file().filter(|_| store_dirs().is_empty())
}

fn read_system_roots() -> SystemRoots {
    let file = store_file();
    let dirs = store_dirs();
    let mut roots = SystemRoots::default();
    if file.is_none() && dirs.is_empty() {
        roots.add_found(rustls_native_certs::load_native_certs());
        return roots;
    }
    // Each file once: a certificate directory usually holds the bundle itself, and every
    // certificate under two names (its own and its hash's).
    let mut files_read = std::collections::HashSet::new();
    if let Some(file) = &file {
        if let Ok(meta) = std::fs::metadata(file) {
            files_read.insert((meta.dev(), meta.ino()));
        }
        roots.add_file(file);
    }
    for dir in &dirs {
        roots.add_dir(dir, &mut files_read);
    }
    roots
}

impl SystemRoots {
    /// The certificates of PEM file `path`. The roots are public: a plain base64 decoder reads
    /// them in a tenth of the time rustls' constant-time one takes (2.5 ms of every start for a
    /// distribution's bundle); rustls reads what it cannot.
    fn add_file(&mut self, path: &Path) {
        match std::fs::read_to_string(path) {
            Ok(text) => self.add_text(path, &text),
            Err(_) => self.add_found(rustls_native_certs::load_certs_from_paths(Some(path), None)),
        }
    }

    /// The certificates of `text`, the content of PEM file `path`.
    fn add_text(&mut self, path: &Path, text: &str) {
        match pem_certificates(text) {
            Some(found) => {
                for (cert, block) in found {
                    self.add(cert, |pem| {
                        pem.push_str(block);
                        pem.push('\n');
                    });
                }
            }
            None => self.add_found(rustls_native_certs::load_certs_from_paths(Some(path), None)),
        }
    }

    /// The certificates of every file of `dir` (symlinks followed) not read yet.
    fn add_dir(&mut self, dir: &Path, files_read: &mut std::collections::HashSet<(u64, u64)>) {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => return self.errors.push(format!("{}: {e}", dir.display())),
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            // A dangling link is skipped, as OpenSSL and rustls-native-certs do.
            let Ok(meta) = std::fs::metadata(&path) else { continue };
            if meta.is_file() && files_read.insert((meta.dev(), meta.ino())) {
                self.add_file(&path);
            }
        }
    }

    /// Adds `cert` unless it was added before, its PEM written by `pem`.
    fn add(&mut self, cert: CertificateDer<'static>, pem: impl FnOnce(&mut String)) {
        let der = cert.as_ref();
        let same = self.seen.entry((der.len(), der.last().copied().unwrap_or(0))).or_default();
        if same.iter().any(|&i| self.certs.get(i).is_some_and(|c| c.as_ref() == der)) {
            return;
        }
        same.push(self.certs.len());
        self.certs.push(cert);
        pem(self.pem.to_mut());
    }

    fn add_found(&mut self, found: rustls_native_certs::CertificateResult) {
        for cert in found.certs {
            let block = super::bundle::pem(&cert);
            self.add(cert, |pem| pem.push_str(&block));
        }
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

/// Every `CERTIFICATE` block of PEM `text`, decoded, with the block as written (from `-----BEGIN`
/// to the end of `-----END CERTIFICATE-----`), or `None` if one does not decode. Whatever else
/// the file holds is left out.
fn pem_certificates(text: &str) -> Option<Vec<(CertificateDer<'static>, &str)>> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = text;
    let mut b64 = Vec::new();
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let end = body.find(END)?;
        b64.clear();
        b64.extend(body[..end].bytes().filter(|b| !b.is_ascii_whitespace()));
        let der = CertificateDer::from(base64::engine::general_purpose::STANDARD.decode(&b64).ok()?);
        certs.push((der, &rest[start..start + BEGIN.len() + end + END.len()]));
        rest = &body[end + END.len()..];
    }
    Some(certs)
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
    let (system_added, system_ignored) = match &system.anchors {
        Some(anchors) => {
            roots.extend(anchors.iter().cloned());
            (anchors.len(), system.certs.len().saturating_sub(anchors.len()))
        }
        None => roots.add_parsable_certificates(system.certs.iter().cloned()),
    };

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
        crate::say!("leash: warning: upstream TLS: no system root certificates; trusting --upstream-ca only");
    }
    for error in &system.errors {
        crate::say!("leash: warning: upstream TLS: system certificate store: {error}");
    }
    if system_ignored > 0 {
        crate::say!("leash: warning: upstream TLS: {system_ignored} unparsable system roots skipped");
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
            let found = pem_certificates(text).unwrap();
            assert_eq!(found.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(), theirs);
            // The blocks as written (copied into the agent's bundle) hold those certificates and
            // nothing else of the file.
            let blocks: String = found.iter().map(|(_, b)| format!("{b}\n")).collect();
            let again: Vec<_> = CertificateDer::pem_slice_iter(blocks.as_bytes()).collect::<Result<_, _>>().unwrap();
            assert_eq!(again, theirs);
            assert_eq!(blocks.matches("-----BEGIN").count(), theirs.len());
            assert!(!blocks.contains("PRIVATE KEY") && !blocks.contains("junk"), "{blocks}");
        }
        assert_eq!(pem_certificates(&texts[0]).unwrap().len(), 2);
        assert!(pem_certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_none());
        assert!(pem_certificates("-----BEGIN CERTIFICATE-----\nAAAA\n").is_none(), "no END");
    }

    /// A certificate directory as distributions lay it out (the bundle itself, each certificate
    /// under its name and its hash's, links) adds each certificate the bundle lacks, once.
    #[test]
    fn a_certificate_directory_adds_each_new_certificate_once() {
        use std::os::unix::fs::symlink;
        let dir = scratch_dir("cert-dir");
        let [a, b, c] = [(); 3].map(|()| CertificateAuthority::generate().unwrap());
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, format!("{}{}", a.cert_pem(), b.cert_pem())).unwrap();
        let certs = dir.join("certs");
        std::fs::create_dir(&certs).unwrap();
        symlink(&bundle, certs.join("ca-certificates.crt")).unwrap();
        std::fs::write(certs.join("c.pem"), c.cert_pem()).unwrap();
        symlink("c.pem", certs.join("0a1b2c3d.0")).unwrap();
        std::fs::write(certs.join("a-again.pem"), a.cert_pem()).unwrap();
        symlink("missing.pem", certs.join("dangling.0")).unwrap();

        let mut roots = SystemRoots::default();
        let meta = std::fs::metadata(&bundle).unwrap();
        let mut files_read = std::collections::HashSet::from([(meta.dev(), meta.ino())]);
        roots.add_file(&bundle);
        roots.add_dir(&certs, &mut files_read);
        let want: Vec<_> = [&a, &b, &c].iter().map(|ca| ca.cert_der().clone()).collect();
        assert_eq!(roots.certs, want);
        let pem: Vec<_> = CertificateDer::pem_slice_iter(roots.pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        assert_eq!(pem, want, "the PEM holds the same certificates");
        assert!(roots.errors.is_empty(), "{:?}", roots.errors);
        std::fs::remove_dir_all(&dir).unwrap();
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
