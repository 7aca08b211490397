//! What the agent gets so that it trusts leash's CA, and the environment variables that name it.
//!
//! What it enforces:
//! - only certificates are written, never a key; files are 0644 in a directory leash creates 0755,
//!   so the agent (another uid) can read them but not replace them; an existing symlink in place of
//!   the directory or a file is refused rather than followed;
//! - `ca.pem`: the leash CA alone; `bundle.pem`: the system roots, then the leash CA;
//! - `truststore.p12`: the same certificates as `bundle.pem` as a PKCS#12 truststore for Java. Java
//!   reads a PKCS#12 certificate bag as a trusted entry only when the bag carries Oracle's
//!   trusted-key-usage attribute (OID 2.16.840.1.113894.746875.1.1), so every bag has it (value
//!   anyExtendedKeyUsage) plus a friendlyName alias (`leash-ca`, `system-root-N`). Certificates are
//!   not encrypted (they are public); integrity is an HMAC-SHA256 MAC keyed from the password
//!   [`TRUSTSTORE_PASSWORD`] by the PKCS#12 KDF (RFC 7292 appendix B), one iteration, which
//!   Java 12+ and OpenSSL 1.1+ check. Java is told `trustStoreType=PKCS12`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rustls_pki_types::CertificateDer;

use super::roots_cache;
use super::upstream::system_roots;
use super::{CertificateAuthority, Result, TlsError};

/// Parent of every sandbox's trust directory (`/run/leash/<sandbox>/`) and of the roots cache.
pub const RUN_DIR: &str = "/run/leash";

/// The Java truststore password (`changeit`, Java's usual default: the store holds only public
/// certificates, the password only keys its integrity MAC).
pub const TRUSTSTORE_PASSWORD: &str = "changeit";
/// The alias of leash's CA in the truststore.
pub const CA_ALIAS: &str = "leash-ca";

/// The files written for the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentTrust {
    pub dir: PathBuf,
    /// The leash CA alone (PEM).
    pub ca_pem: PathBuf,
    /// The system roots followed by the leash CA (PEM).
    pub bundle_pem: PathBuf,
    /// PKCS#12 truststore with the same certificates as `bundle_pem`.
    pub truststore: PathBuf,
    /// How many system roots went into `bundle_pem` and the truststore.
    pub system_roots: usize,
}

impl AgentTrust {
    /// The variables to set in the agent's environment (DESIGN.md, "The agent's environment").
    /// `NODE_EXTRA_CA_CERTS` names `ca.pem`: Node adds it to its own built-in roots. If the agent
    /// already has `JAVA_TOOL_OPTIONS`, the caller should append the existing value after ours.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let bundle = path_str(&self.bundle_pem);
        let mut vars: Vec<(String, String)> =
            ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "DENO_CERT"]
                .into_iter()
                .map(|name| (name.to_string(), bundle.clone()))
                .collect();
        vars.push(("NODE_EXTRA_CA_CERTS".into(), path_str(&self.ca_pem)));
        vars.push(("JAVA_TOOL_OPTIONS".into(), self.java_tool_options()));
        vars
    }

    /// `-Djavax.net.ssl.trustStore=… -Djavax.net.ssl.trustStorePassword=changeit
    /// -Djavax.net.ssl.trustStoreType=PKCS12`; the first option is double-quoted when the path has
    /// whitespace (Java 9+ honours quotes in `JAVA_TOOL_OPTIONS`).
    pub fn java_tool_options(&self) -> String {
        let store = format!("-Djavax.net.ssl.trustStore={}", path_str(&self.truststore));
        let store = if store.contains(char::is_whitespace) { format!("\"{store}\"") } else { store };
        format!(
            "{store} -Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD} -Djavax.net.ssl.trustStoreType=PKCS12"
        )
    }
}

/// `write_agent_trust` checked that every path is UTF-8.
fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Creates `dir` (0755) and writes `ca.pem`, `bundle.pem` and `truststore.p12` (0644) in it.
pub fn write_agent_trust(dir: &Path, ca: &CertificateAuthority) -> Result<AgentTrust> {
    warn_of_store_errors();
    write_with_roots(dir, ca, system_agent_roots())
}

/// Writes the same files in the existing directory `written_in` (a filesystem of their own,
/// reached through `/proc/self/fd/N`), which the agent finds at `seen_at`: the paths returned,
/// and named in its environment, are under `seen_at`.
pub fn write_agent_trust_at(written_in: &Path, seen_at: &Path, ca: &CertificateAuthority) -> Result<AgentTrust> {
    warn_of_store_errors();
    write_files(written_in, seen_at, ca, system_agent_roots())
}

fn warn_of_store_errors() {
    for error in &system_roots().errors {
        crate::say!("leash: warning: agent CA bundle: system certificate store: {error}");
    }
}

/// The roots the agent trusts besides leash's CA, encoded for its bundle and its truststore.
struct AgentRoots<'a> {
    count: usize,
    /// The certificates as PEM, in order.
    pem: std::borrow::Cow<'a, str>,
    /// One truststore bag per certificate, aliases `system-root-1`, ... in order.
    bags: std::borrow::Cow<'a, [u8]>,
}

impl<'a> AgentRoots<'a> {
    /// `certs`, whose PEM is `pem` when given.
    fn encode(certs: &[CertificateDer<'static>], pem: Option<&'a str>) -> Self {
        let pem = match pem {
            Some(text) => text.into(),
            None => certs.iter().map(|c| self::pem(c)).collect::<String>().into(),
        };
        let aliases = (1..).map(|i| format!("system-root-{i}"));
        let bags = pkcs12::cert_bags(aliases.zip(certs.iter().map(|c| c.as_ref()))).into();
        Self { count: certs.len(), pem, bags }
    }
}

/// The system roots encoded once per process, or as this host's roots cache holds them:
/// [`prepare_system_roots`] gets them on a thread of its own while leash starts (most of the
/// agent's trust files is the system's roots).
fn system_agent_roots() -> &'static AgentRoots<'static> {
    static ROOTS: std::sync::OnceLock<AgentRoots<'static>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| match roots_cache::lookup() {
        Some(roots_cache::Lookup::Hit(cached)) => {
            AgentRoots { count: cached.certs.len(), pem: cached.pem.into(), bags: cached.bags.into() }
        }
        _ => {
            let system = system_roots();
            AgentRoots::encode(&system.certs, Some(&system.pem))
        }
    })
}

/// Gets the system's roots and their encoding for the agent's files ahead of use: from this
/// host's roots cache, else decoded, encoded and kept there for the next run (as root, and only
/// when the store is one file that read without error).
pub fn prepare_system_roots() {
    let system = system_roots();
    let agent = system_agent_roots();
    if let Some(roots_cache::Lookup::Miss { path, text }) = roots_cache::lookup() {
        if system.errors.is_empty() && !system.certs.is_empty() {
            let text = text.as_bytes();
            let _ = roots_cache::store(Path::new(RUN_DIR), path, text, &system.certs, &system.pem, &agent.bags);
        }
    }
}

/// Creates `dir` and writes the files in it with `roots` as the system's.
fn write_with_roots(dir: &Path, ca: &CertificateAuthority, roots: &AgentRoots<'_>) -> Result<AgentTrust> {
    usable(dir)?;
    make_dir(dir)?;
    write_files(dir, dir, ca, roots)
}

/// A path the agent's environment can name: UTF-8, and no quote (`JAVA_TOOL_OPTIONS`).
fn usable(dir: &Path) -> Result<()> {
    match dir.to_str() {
        Some(s) if !s.contains(['"', '\'']) => Ok(()),
        _ => Err(TlsError::UnusablePath { path: dir.to_path_buf() }),
    }
}

/// Writes the files in `written_in` with `roots` as the system's, for the agent to find at
/// `seen_at`.
fn write_files(
    written_in: &Path,
    seen_at: &Path,
    ca: &CertificateAuthority,
    roots: &AgentRoots<'_>,
) -> Result<AgentTrust> {
    usable(seen_at)?;
    let trust = AgentTrust {
        dir: seen_at.to_path_buf(),
        ca_pem: seen_at.join(CA_PEM),
        bundle_pem: seen_at.join(BUNDLE_PEM),
        truststore: seen_at.join(TRUSTSTORE),
        system_roots: roots.count,
    };
    write_file(&written_in.join(CA_PEM), &[ca.cert_pem().as_bytes()])?;
    write_file(&written_in.join(BUNDLE_PEM), &[roots.pem.as_bytes(), ca.cert_pem().as_bytes()])?;
    let ca_bag = pkcs12::cert_bags([(CA_ALIAS.to_string(), ca.cert_der().as_ref())]);
    let salt = rand::random::<[u8; 16]>();
    let store = pkcs12::truststore(&[&ca_bag, &roots.bags], TRUSTSTORE_PASSWORD, &salt, pkcs12::ITERATIONS);
    write_file(&written_in.join(TRUSTSTORE), &store.iter().map(AsRef::as_ref).collect::<Vec<_>>())?;
    Ok(trust)
}

/// The files' names.
const CA_PEM: &str = "ca.pem";
const BUNDLE_PEM: &str = "bundle.pem";
const TRUSTSTORE: &str = "truststore.p12";

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// Creates `dir` if needed and makes it 0755; refuses a symlink or a non-directory there.
fn make_dir(dir: &Path) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(TlsError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a directory"),
            })
        }
        Err(_) => fs::create_dir_all(dir).map_err(io_error(dir))?,
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(io_error(dir))
}

/// Writes `parts` one after the other to `path` as 0644, not following a symlink there.
fn write_file(path: &Path, parts: &[&[u8]]) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_error(path))?;
    for bytes in parts {
        file.write_all(bytes).map_err(io_error(path))?;
    }
    file.set_permissions(fs::Permissions::from_mode(0o644)).map_err(io_error(path))
}

/// One PEM `CERTIFICATE` block, 64 columns.
pub(super) fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A PKCS#12 (RFC 7292) truststore writer: certificate bags only, MAC'd with HMAC-SHA256.
pub(crate) mod pkcs12 {

    /// MAC iterations: one, as `openssl pkcs12 -nomaciter` writes (Java and OpenSSL read any
    /// count). The password is public (`changeit`, in the agent's environment), so iterations
    /// protect nothing; the file's integrity comes from its owner and mode. Java's own 10,000
    /// cost a `leash run` 1-2 ms of hashing before its agent could start, openssl's 2,048 0.5 ms.
    pub const ITERATIONS: u32 = 1;

    const DATA: &[u64] = &[1, 2, 840, 113_549, 1, 7, 1];
    const CERT_BAG: &[u64] = &[1, 2, 840, 113_549, 1, 12, 10, 1, 3];
    const X509_CERTIFICATE: &[u64] = &[1, 2, 840, 113_549, 1, 9, 22, 1];
    const FRIENDLY_NAME: &[u64] = &[1, 2, 840, 113_549, 1, 9, 20];
    pub const ORACLE_TRUSTED_KEY_USAGE: &[u64] = &[2, 16, 840, 1, 113_894, 746_875, 1, 1];
    const ANY_EXTENDED_KEY_USAGE: &[u64] = &[2, 5, 29, 37, 0];
    const SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];

    /// One trusted certificate bag per `(alias, DER)`, encoded one after the other (the content
    /// of a `SafeContents`).
    pub fn cert_bags<'a>(entries: impl IntoIterator<Item = (String, &'a [u8])>) -> Vec<u8> {
        let mut bags = Der(Vec::new());
        for (alias, der) in entries {
            bags.cert_bag(&alias, der);
        }
        bags.0
    }

    /// `PFX` holding the certificate bags `bags` (from [`cert_bags`], in order), as the parts to
    /// write one after the other: the bags are not copied (the system's are most of the store),
    /// each wrapper's header is written knowing the length of what it wraps.
    pub fn truststore<'a>(bags: &[&'a [u8]], password: &str, salt: &[u8], iterations: u32) -> Vec<Part<'a>> {
        let bags_len: usize = bags.iter().map(|b| b.len()).sum();
        // Inside out: `SafeContents`, its `ContentInfo`, the `AuthenticatedSafe` sequence.
        let mut auth_safe_head = header(SEQUENCE, bags_len);
        let inner = data_content_info_header(auth_safe_head.len() + bags_len);
        let inner_len = inner.len() + auth_safe_head.len() + bags_len;
        auth_safe_head = [header(SEQUENCE, inner_len), inner, auth_safe_head].concat();
        let auth_safe_len = auth_safe_head.len() + bags_len;
        let mut mac_input = vec![&auth_safe_head[..]];
        mac_input.extend_from_slice(bags);
        let mac = hmac_sha256(&mac_key(password, salt, iterations), &mac_input);
        let digest_info = seq(&[&seq(&[&oid(SHA256), &[0x05, 0x00]]), &octets(&mac)]);
        // `iterations INTEGER DEFAULT 1`: DER leaves a default value out.
        let count = if iterations == 1 { Vec::new() } else { integer(u64::from(iterations)) };
        let mac_data = seq(&[&digest_info, &octets(salt), &count]);
        let version = integer(3);
        let outer = data_content_info_header(auth_safe_len);
        let pfx_len = version.len() + outer.len() + auth_safe_len + mac_data.len();
        let head = [header(SEQUENCE, pfx_len), version, outer, auth_safe_head].concat();
        let mut parts = vec![Part::Owned(head)];
        parts.extend(bags.iter().map(|b| Part::Borrowed(b)));
        parts.push(Part::Owned(mac_data));
        parts
    }

    /// A piece of an encoding: made for it, or a slice encoded before.
    pub enum Part<'a> {
        Owned(Vec<u8>),
        Borrowed(&'a [u8]),
    }

    impl AsRef<[u8]> for Part<'_> {
        fn as_ref(&self) -> &[u8] {
            match self {
                Part::Owned(v) => v,
                Part::Borrowed(s) => s,
            }
        }
    }

    const SEQUENCE: u8 = 0x30;
    const OCTET_STRING: u8 = 0x04;
    const EXPLICIT_0: u8 = 0xa0;

    /// The tag and length of an element whose content is `len` bytes.
    fn header(tag: u8, len: usize) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(length_octets(len));
        out
    }

    /// Everything of `ContentInfo { data, [0] OCTET STRING { content } }` before a content of
    /// `len` bytes.
    fn data_content_info_header(len: usize) -> Vec<u8> {
        let octets = header(OCTET_STRING, len);
        let explicit = header(EXPLICIT_0, octets.len() + len);
        let data = oid(DATA);
        let mut out = header(SEQUENCE, data.len() + explicit.len() + octets.len() + len);
        for part in [data, explicit, octets] {
            out.extend(part);
        }
        out
    }

    /// A DER encoder writing into one buffer: an element's length goes in once its content is
    /// written (a move of that content, within the buffer, when it is 128 bytes or more).
    struct Der(Vec<u8>);

    impl Der {
        fn put(&mut self, encoded: &[u8]) {
            self.0.extend_from_slice(encoded);
        }

        fn nest(&mut self, tag: u8, content: impl FnOnce(&mut Self)) {
            self.0.push(tag);
            let at = self.0.len();
            self.0.push(0);
            content(self);
            let len = self.0.len() - at - 1;
            self.0.splice(at..at + 1, length_octets(len));
        }

        /// `SafeBag { certBag, [0] CertBag { x509Certificate, [0] OCTET STRING }, {friendlyName, trustedKeyUsage} }`
        fn cert_bag(&mut self, alias: &str, der: &[u8]) {
            let alias: Vec<u8> = alias.encode_utf16().flat_map(u16::to_be_bytes).collect();
            let attributes = set_of(vec![
                seq(&[&oid(FRIENDLY_NAME), &set_of(vec![tlv(0x1e, &alias)])]),
                seq(&[&oid(ORACLE_TRUSTED_KEY_USAGE), &set_of(vec![oid(ANY_EXTENDED_KEY_USAGE)])]),
            ]);
            self.nest(SEQUENCE, |d| {
                d.put(&oid(CERT_BAG));
                d.nest(EXPLICIT_0, |d| {
                    d.nest(SEQUENCE, |d| {
                        d.put(&oid(X509_CERTIFICATE));
                        d.nest(EXPLICIT_0, |d| d.nest(OCTET_STRING, |d| d.put(der)));
                    })
                });
                d.put(&attributes);
            });
        }
    }

    /// RFC 7292 B.2 with SHA-256 (u = 32, v = 64), ID 3 (MAC key), n = 32: one block suffices.
    pub fn mac_key(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        const V: usize = 64;
        let mut bmp: Vec<u8> = password.encode_utf16().flat_map(u16::to_be_bytes).collect();
        bmp.extend([0, 0]);
        let fill = |src: &[u8]| -> Vec<u8> {
            let len = src.len().div_ceil(V) * V;
            src.iter().copied().cycle().take(len).collect()
        };
        let mut input = vec![3u8; V];
        input.extend(fill(salt));
        input.extend(fill(&bmp));
        let sha256 = sha256();
        let mut a = sha256.hash(&input);
        for _ in 1..iterations {
            a = sha256.hash(a.as_ref());
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&a.as_ref()[..32]);
        key
    }

    /// HMAC-SHA256 (RFC 2104) of the concatenation of `message`, hashed part by part.
    pub fn hmac_sha256(key: &[u8; 32], message: &[&[u8]]) -> Vec<u8> {
        const BLOCK: usize = 64;
        let (mut inner_pad, mut outer_pad) = ([0x36u8; BLOCK], [0x5cu8; BLOCK]);
        for (i, k) in key.iter().enumerate() {
            inner_pad[i] ^= k;
            outer_pad[i] ^= k;
        }
        let mut inner = sha256().start();
        inner.update(&inner_pad);
        for part in message {
            inner.update(part);
        }
        let mut outer = sha256().start();
        outer.update(&outer_pad);
        outer.update(inner.finish().as_ref());
        outer.finish().as_ref().to_vec()
    }

    /// HMAC-SHA256 as rustls's ring provider computes it, to check [`hmac_sha256`] against.
    #[cfg(test)]
    pub fn ring_hmac_sha256(key: &[u8; 32], message: &[u8]) -> Vec<u8> {
        use rustls::crypto::tls13::OkmBlock;
        tls13_sha256().hkdf_provider.hmac_sign(&OkmBlock::new(key), message).as_ref().to_vec()
    }

    /// SHA-256 and HMAC come from rustls's ring provider (through a SHA-256 TLS 1.3 suite).
    fn tls13_sha256() -> &'static rustls::Tls13CipherSuite {
        match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
            rustls::SupportedCipherSuite::Tls13(suite) => suite,
            rustls::SupportedCipherSuite::Tls12(_) => unreachable!("TLS13_AES_128_GCM_SHA256 is a TLS 1.3 suite"),
        }
    }

    fn sha256() -> &'static dyn rustls::crypto::hash::Hash {
        tls13_sha256().common.hash_provider
    }

    // DER encoding.

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend(length_octets(content.len()));
        out.extend_from_slice(content);
        out
    }

    /// A DER length: one octet below 128, else the count of big-endian octets then those.
    fn length_octets(len: usize) -> Vec<u8> {
        if len < 0x80 {
            return vec![len as u8];
        }
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        let mut out = vec![0x80 | bytes.len() as u8];
        out.extend(bytes);
        out
    }

    fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    /// DER `SET OF`: elements sorted by their encoding.
    fn set_of(mut elements: Vec<Vec<u8>>) -> Vec<u8> {
        elements.sort();
        tlv(0x31, &elements.concat())
    }

    fn octets(bytes: &[u8]) -> Vec<u8> {
        tlv(0x04, bytes)
    }

    fn integer(value: u64) -> Vec<u8> {
        let mut bytes: Vec<u8> = value.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        if bytes.first().is_none_or(|b| b & 0x80 != 0) {
            bytes.insert(0, 0);
        }
        tlv(0x02, &bytes)
    }

    pub fn oid(arcs: &[u64]) -> Vec<u8> {
        let mut body = Vec::new();
        let first = arcs.first().copied().unwrap_or(0) * 40 + arcs.get(1).copied().unwrap_or(0);
        for arc in std::iter::once(first).chain(arcs.iter().skip(2).copied()) {
            let mut groups = vec![(arc & 0x7f) as u8];
            let mut rest = arc >> 7;
            while rest > 0 {
                groups.push(0x80 | (rest & 0x7f) as u8);
                rest >>= 7;
            }
            body.extend(groups.into_iter().rev());
        }
        tlv(0x06, &body)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The one-buffer encoder and the headers written ahead of a content write what nested
        /// `tlv`s do, at every length form.
        #[test]
        fn nesting_in_one_buffer_matches_nested_encodings() {
            for n in [0, 1, 125, 126, 127, 128, 255, 256, 65_535, 65_536, 70_000] {
                let content = vec![7u8; n];
                let mut der = Der(Vec::new());
                der.nest(SEQUENCE, |d| d.nest(OCTET_STRING, |d| d.put(&content)));
                assert_eq!(der.0, tlv(SEQUENCE, &tlv(OCTET_STRING, &content)), "content of {n} bytes");
                let nested = seq(&[&oid(DATA), &tlv(EXPLICIT_0, &octets(&content))]);
                assert_eq!([data_content_info_header(n), content].concat(), nested, "content of {n} bytes");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use rustls_pki_types::pem::PemObject;

    use super::super::testing::scratch_dir;
    use super::*;

    /// A DER element: (tag, content, rest of input).
    fn next(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = input[0];
        let (len, header) = match input[1] {
            n if n < 0x80 => (n as usize, 2),
            n => {
                let count = (n & 0x7f) as usize;
                (input[2..2 + count].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize), 2 + count)
            }
        };
        (tag, &input[header..header + len], &input[header + len..])
    }

    fn children(mut input: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (tag, content, rest) = next(input);
            out.push((tag, content));
            input = rest;
        }
        out
    }

    /// The OCTET STRING inside `ContentInfo { data, [0] OCTET STRING }`.
    fn data_of(content_info: &[u8]) -> &[u8] {
        let parts = children(content_info);
        assert_eq!(parts[0], (0x06, &pkcs12::oid(&[1, 2, 840, 113_549, 1, 7, 1])[2..]));
        let (tag, inner) = (parts[1].0, children(parts[1].1));
        assert_eq!(tag, 0xa0);
        assert_eq!(inner[0].0, 0x04);
        inner[0].1
    }

    /// Walks the PFX, checks its MAC, and returns (alias, trusted?, DER) per bag.
    fn parse_truststore(pfx: &[u8], password: &str) -> Vec<(String, bool, Vec<u8>)> {
        let (tag, body, rest) = next(pfx);
        assert_eq!((tag, rest.len()), (0x30, 0));
        let top = children(body);
        assert_eq!(top[0], (0x02, &[3u8][..]), "version 3");
        let auth_safe = data_of(top[1].1);
        let mac_data = children(top[2].1);
        let digest_info = children(mac_data[0].1);
        let salt = mac_data[1].1;
        let iterations = mac_data.get(2).map_or(1, |(_, n)| n.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)));
        let key = pkcs12::mac_key(password, salt, iterations);
        assert_eq!(digest_info[1].1, pkcs12::ring_hmac_sha256(&key, auth_safe), "MAC checks");
        assert_ne!(digest_info[1].1, pkcs12::ring_hmac_sha256(&pkcs12::mac_key("wrong", salt, iterations), auth_safe));

        let trusted_oid = pkcs12::oid(pkcs12::ORACLE_TRUSTED_KEY_USAGE);
        let (_, safes, _) = next(auth_safe);
        let mut out = Vec::new();
        for (_, content_info) in children(safes) {
            let (_, bags, _) = next(data_of(content_info));
            for (_, bag) in children(bags) {
                let parts = children(bag);
                let cert_bag = children(children(parts[1].1)[0].1);
                let der = children(cert_bag[1].1)[0].1.to_vec();
                let mut alias = String::new();
                let mut trusted = false;
                for (_, attribute) in children(parts[2].1) {
                    let attr = children(attribute);
                    if attr[0].1 == &trusted_oid[2..] {
                        trusted = true;
                    } else if attr[0].1 == &pkcs12::oid(&[1, 2, 840, 113_549, 1, 9, 20])[2..] {
                        let bmp = children(attr[1].1)[0].1;
                        let units: Vec<u16> = bmp.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
                        alias = String::from_utf16(&units).unwrap();
                    }
                }
                out.push((alias, trusted, der));
            }
        }
        out
    }

    #[test]
    fn der_helpers() {
        assert_eq!(
            pkcs12::oid(&[1, 2, 840, 113_549, 1, 7, 1]),
            [0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]
        );
        assert_eq!(pkcs12::tlv(0x04, &[0u8; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(pkcs12::tlv(0x04, &[0u8; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }

    #[test]
    fn writes_ca_bundle_and_truststore() {
        let dir = scratch_dir("bundle").join("trust");
        let ca = CertificateAuthority::generate().unwrap();
        let roots = &system_roots().certs;
        let trust = write_agent_trust(&dir, &ca).unwrap();
        assert_eq!(trust.system_roots, roots.len());

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o755);
        for file in [&trust.ca_pem, &trust.bundle_pem, &trust.truststore] {
            assert_eq!(mode(file), 0o644, "{file:?}");
        }

        let ca_pem = CertificateDer::pem_file_iter(&trust.ca_pem).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(ca_pem, vec![ca.cert_der().clone()]);
        let bundle = CertificateDer::pem_file_iter(&trust.bundle_pem).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(bundle.len(), roots.len() + 1, "system roots + leash CA");
        assert_eq!(bundle.last(), Some(ca.cert_der()));
        assert_eq!(&bundle[..roots.len()], &roots[..]);

        let store = fs::read(&trust.truststore).unwrap();
        let entries = parse_truststore(&store, TRUSTSTORE_PASSWORD);
        assert_eq!(entries.len(), roots.len() + 1);
        assert!(entries.iter().all(|(_, trusted, _)| *trusted), "every bag carries the trusted-key-usage attribute");
        assert_eq!(entries[0].0, CA_ALIAS);
        assert_eq!(&entries[0].2, ca.cert_der().as_ref());

        // Rewriting over the existing files works.
        write_agent_trust(&dir, &ca).unwrap();
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn java_reads_the_truststore() {
        let dir = scratch_dir("keytool");
        let ca = CertificateAuthority::generate().unwrap();
        let other = CertificateAuthority::generate().unwrap();
        // A small store keeps keytool's output short; the system roots are covered above.
        let trust = write_with_roots(&dir, &ca, &AgentRoots::encode(&[other.cert_der().clone()], None)).unwrap();
        let keytool = Command::new("keytool")
            .args(["-list", "-keystore"])
            .arg(&trust.truststore)
            .args(["-storetype", "PKCS12", "-storepass", TRUSTSTORE_PASSWORD])
            .output();
        match keytool {
            Err(e) => crate::say!("keytool not found ({e}): Java check skipped, structure and MAC checked only"),
            Ok(out) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "keytool failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
                assert!(stdout.contains("Your keystore contains 2 entries"), "{stdout}");
                assert!(stdout.contains(&format!("{CA_ALIAS}, ")), "{stdout}");
                assert!(stdout.contains("system-root-1, "), "{stdout}");
                assert_eq!(stdout.matches("trustedCertEntry").count(), 2, "{stdout}");
                // A wrong password fails the MAC check.
                let bad = Command::new("keytool")
                    .args(["-list", "-keystore"])
                    .arg(&trust.truststore)
                    .args(["-storetype", "PKCS12", "-storepass", "wrongpass"])
                    .output()
                    .unwrap();
                assert!(!bad.status.success(), "keytool accepted a wrong password");
            }
        }
        fs::remove_dir_all(dir).unwrap();
    }

    /// Java, configured only through `env_vars()`'s `JAVA_TOOL_OPTIONS`, completes a handshake
    /// with a leaf minted by the CA (hostname checked, ALPN h2).
    #[tokio::test]
    async fn java_trusts_a_leaf_through_java_tool_options() {
        if Command::new("java").arg("-version").output().is_err() {
            crate::say!("java not found: Java handshake check skipped");
            return;
        }
        let dir = scratch_dir("java");
        let ca = std::sync::Arc::new(CertificateAuthority::generate().unwrap());
        let trust = write_with_roots(&dir, &ca, &AgentRoots::encode(&[], None)).unwrap();
        let source = dir.join("Probe.java");
        fs::write(
            &source,
            r#"import javax.net.ssl.*;
public class Probe {
    public static void main(String[] a) throws Exception {
        SSLSocket s = (SSLSocket) SSLSocketFactory.getDefault().createSocket("localhost", Integer.parseInt(a[0]));
        SSLParameters p = s.getSSLParameters();
        p.setEndpointIdentificationAlgorithm("HTTPS");
        p.setApplicationProtocols(new String[] {"h2", "http/1.1"});
        s.setSSLParameters(p);
        s.startHandshake();
        s.getOutputStream().write('x');
        s.getOutputStream().flush();
        System.out.println("alpn=" + s.getApplicationProtocol() + " echo=" + (char) s.getInputStream().read());
    }
}
"#,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = super::super::LeafCache::new(ca, 4).server_config_for("localhost").unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 1];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            tls.write_all(&b).await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        });
        let mut java = tokio::process::Command::new("java");
        java.arg(&source).arg(port.to_string()).env_remove("JDK_JAVA_OPTIONS");
        for (name, value) in trust.env_vars() {
            java.env(name, value);
        }
        let out = java.output().await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "java failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.trim(), "alpn=h2 echo=x");
        server.await.unwrap().unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn env_vars_name_the_files() {
        let trust = AgentTrust {
            dir: "/run/leash/x".into(),
            ca_pem: "/run/leash/x/ca.pem".into(),
            bundle_pem: "/run/leash/x/bundle.pem".into(),
            truststore: "/run/leash/x/truststore.p12".into(),
            system_roots: 0,
        };
        let vars: std::collections::HashMap<_, _> = trust.env_vars().into_iter().collect();
        for name in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "DENO_CERT"] {
            assert_eq!(vars[name], "/run/leash/x/bundle.pem", "{name}");
        }
        assert_eq!(vars["NODE_EXTRA_CA_CERTS"], "/run/leash/x/ca.pem");
        assert_eq!(
            vars["JAVA_TOOL_OPTIONS"],
            "-Djavax.net.ssl.trustStore=/run/leash/x/truststore.p12 -Djavax.net.ssl.trustStorePassword=changeit -Djavax.net.ssl.trustStoreType=PKCS12"
        );
        let spaced = AgentTrust { truststore: "/tmp/a b/truststore.p12".into(), ..trust };
        assert!(spaced.java_tool_options().starts_with("\"-Djavax.net.ssl.trustStore=/tmp/a b/truststore.p12\" "));
    }

    #[test]
    fn refuses_symlinks_and_quotes() {
        let dir = scratch_dir("links");
        let ca = CertificateAuthority::generate().unwrap();
        let target = dir.join("elsewhere");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("victim"), "x").unwrap();
        let out = dir.join("out");
        fs::create_dir(&out).unwrap();
        std::os::unix::fs::symlink(target.join("victim"), out.join("ca.pem")).unwrap();
        assert!(matches!(write_with_roots(&out, &ca, &AgentRoots::encode(&[], None)), Err(TlsError::Io { .. })));
        assert_eq!(fs::read_to_string(target.join("victim")).unwrap(), "x");
        let link_dir = dir.join("linkdir");
        std::os::unix::fs::symlink(&target, &link_dir).unwrap();
        assert!(matches!(write_with_roots(&link_dir, &ca, &AgentRoots::encode(&[], None)), Err(TlsError::Io { .. })));
        assert!(matches!(
            write_with_roots(&dir.join("it's"), &ca, &AgentRoots::encode(&[], None)),
            Err(TlsError::UnusablePath { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
