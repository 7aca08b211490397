//! The ephemeral certificate authority that signs the proxy's leaf certificates.
//!
//! What it enforces:
//! - one fresh ECDSA P-256 key per CA, generated in memory and never serialised to disk; the
//!   PKCS#8 copies leash makes itself are wiped on drop (`Zeroizing`). rcgen's `KeyPair` and ring's
//!   key inside it are not wiped: rcgen is built without its `zeroize` feature, and ring offers no
//!   way to wipe a key;
//! - a short life: valid from one hour ago (clock skew) for [`CA_LIFETIME`];
//! - it can sign leaves only: basic constraints `CA:TRUE, pathlen:0`, key usage `keyCertSign` and
//!   `cRLSign`, nothing else;
//! - leaves are for one host each (a DNS name or an IP literal as SAN), `serverAuth` only, and never
//!   outlive the CA.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use zeroize::Zeroizing;

use super::{Result, TlsError};

/// How long a CA is valid after it is made.
pub const CA_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far back validity starts, to tolerate clients whose clock is behind.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// X.520 upper bound of a common name; longer host names get a SAN only.
const MAX_COMMON_NAME: usize = 64;

/// A host a leaf certificate is issued for, in canonical form (lower case, no trailing dot, no
/// brackets around IPv6).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeafHost {
    Dns(String),
    Ip(IpAddr),
}

impl LeafHost {
    /// Parses what a client may send as SNI or as a CONNECT host.
    pub fn parse(host: &str) -> Result<Self> {
        let invalid = || TlsError::InvalidHost(host.to_string());
        let trimmed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
        if let Ok(ip) = trimmed.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let lower = trimmed.to_ascii_lowercase();
        match ServerName::try_from(lower.as_str()).map_err(|_| invalid())? {
            ServerName::DnsName(_) => Ok(Self::Dns(lower)),
            _ => Err(invalid()),
        }
    }

    /// The canonical text, used as the cache key and the common name.
    pub fn as_string(&self) -> String {
        match self {
            Self::Dns(name) => name.clone(),
            Self::Ip(ip) => ip.to_string(),
        }
    }

    fn san(&self) -> Result<SanType> {
        Ok(match self {
            Self::Dns(name) => SanType::DnsName(name.as_str().try_into()?),
            Self::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

/// The CA: its certificate, and the key that signs leaves (held in memory only).
pub struct CertificateAuthority {
    params: CertificateParams,
    key: KeyPair,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    name: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("name", &self.name)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Makes a new CA named "leash ephemeral CA <random hex>", valid from an hour ago for
    /// [`CA_LIFETIME`].
    pub fn generate() -> Result<Self> {
        let now = SystemTime::now();
        let not_before = now.checked_sub(BACKDATE).ok_or(TlsError::Clock)?;
        let not_after = now.checked_add(CA_LIFETIME).ok_or(TlsError::Clock)?;
        let name = format!("leash ephemeral CA {}", hex(&rand::random::<[u8; 8]>()));

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        dn.push(DnType::OrganizationName, "leash");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = not_before.into();
        params.not_after = not_after.into();

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), cert_der: cert.der().clone(), params, key, name, not_before, not_after })
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM (one `CERTIFICATE` block).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's common name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When the CA (and so every leaf) stops being valid; a long-lived daemon must make a new CA
    /// before then.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Issues a leaf for `host` (a DNS name, or an IP literal which becomes an IP SAN) with a fresh
    /// P-256 key, `serverAuth`, valid from an hour ago (not before the CA) until the CA expires.
    /// The chain holds the leaf only: clients trust the CA itself.
    pub fn mint_leaf(&self, host: &str) -> Result<CertifiedKey> {
        self.mint(&LeafHost::parse(host)?)
    }

    pub(crate) fn mint(&self, host: &LeafHost) -> Result<CertifiedKey> {
        let now = SystemTime::now();
        if now >= self.not_after {
            return Err(TlsError::CaExpired);
        }
        let not_before = now.checked_sub(BACKDATE).ok_or(TlsError::Clock)?.max(self.not_before);

        let mut params = CertificateParams::default();
        let text = host.as_string();
        let mut dn = DistinguishedName::new();
        if text.len() <= MAX_COMMON_NAME {
            dn.push(DnType::CommonName, text.as_str());
        }
        params.distinguished_name = dn;
        params.subject_alt_names = vec![host.san()?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = not_before.into();
        params.not_after = self.not_after.into();

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &Issuer::from_params(&self.params, &self.key))?;
        let pkcs8 = Zeroizing::new(key.serialize_der());
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_slice()));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)?;
        Ok(CertifiedKey::new(vec![cert.der().clone()], signer))
    }
}

/// A random positive 128-bit serial number.
fn random_serial() -> SerialNumber {
    let mut bytes = rand::random::<[u8; 16]>();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never a leading zero byte, so the encoding keeps its 16 bytes
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::RootCertStore;
    use rustls_pki_types::UnixTime;

    use super::*;

    fn verifier(ca: &CertificateAuthority) -> Arc<WebPkiServerVerifier> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).expect("CA as trust anchor");
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::super::ring_provider())
            .build()
            .expect("verifier")
    }

    fn verify(ca: &CertificateAuthority, leaf: &CertifiedKey, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).expect("server name");
        verifier(ca).verify_server_cert(leaf.end_entity_cert()?, &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn ca_is_named_and_exports_pem() {
        let ca = CertificateAuthority::generate().unwrap();
        assert!(ca.name().starts_with("leash ephemeral CA "));
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.not_after() > SystemTime::now() + CA_LIFETIME - Duration::from_secs(60));
        let other = CertificateAuthority::generate().unwrap();
        assert_ne!(ca.name(), other.name(), "each CA is a new one");
        assert!(!format!("{ca:?}").contains("key"), "Debug must not show key material");
    }

    #[test]
    fn dns_leaf_verifies_against_the_ca_only() {
        let ca = CertificateAuthority::generate().unwrap();
        let leaf = ca.mint_leaf("Example.TEST.").unwrap();
        leaf.keys_match().unwrap();
        verify(&ca, &leaf, "example.test").unwrap();
        assert!(verify(&ca, &leaf, "other.test").is_err(), "leaf is for one host");
        let stranger = CertificateAuthority::generate().unwrap();
        assert!(verify(&stranger, &leaf, "example.test").is_err(), "another CA does not vouch for it");
    }

    #[test]
    fn ip_leaf_carries_an_ip_san() {
        let ca = CertificateAuthority::generate().unwrap();
        for host in ["127.0.0.1", "[::1]"] {
            let leaf = ca.mint_leaf(host).unwrap();
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            verify(&ca, &leaf, ip).unwrap();
        }
        let leaf = ca.mint_leaf("127.0.0.1").unwrap();
        assert!(verify(&ca, &leaf, "127.0.0.2").is_err());
    }

    #[test]
    fn junk_hosts_are_refused() {
        let ca = CertificateAuthority::generate().unwrap();
        for host in ["", "a b", "*.example.test", "exa\u{e9}mple.test", "x/y"] {
            assert!(matches!(ca.mint_leaf(host), Err(TlsError::InvalidHost(_))), "{host:?}");
        }
    }

    #[test]
    fn long_names_get_a_san_only() {
        let ca = CertificateAuthority::generate().unwrap();
        let host = format!("{}.{}.test", "a".repeat(60), "b".repeat(60));
        let leaf = ca.mint_leaf(&host).unwrap();
        verify(&ca, &leaf, &host).unwrap();
    }
}
