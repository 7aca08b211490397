//! The TLS material of the intercepting proxy.
//!
//! - [`ca`]: the ephemeral certificate authority, made once per `leash run` (once per node in daemon
//!   mode). Its private key lives only in leash's memory: it is never written to disk, so the agent
//!   (another uid, no ptrace, `PR_SET_DUMPABLE=0` on leash's side) cannot read it.
//! - [`leaves`]: leaf certificates minted per host on demand and cached, and the `ServerConfig` the
//!   proxy presents to the agent after a CONNECT (ALPN `h2`, `http/1.1`).
//! - [`upstream`]: the `ClientConfig` the proxy uses towards the real servers, trusting the system
//!   roots plus every `--upstream-ca` file (ALPN `h2`, `http/1.1`).
//! - [`bundle`]: what the agent is given so it trusts leash's CA — `ca.pem`, `bundle.pem` (system
//!   roots + leash CA), a PKCS#12 truststore for Java — and the environment variables naming them.
//! - [`roots_cache`]: the system roots as read and encoded for the agent, kept per host between
//!   runs.
//!
//! Every config here is built on rustls's `ring` provider explicitly, with TLS 1.2 and 1.3.

pub mod bundle;
pub mod ca;
pub mod leaves;
pub mod roots_cache;
pub mod upstream;

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use bundle::{
    prepare_system_roots, write_agent_trust, write_agent_trust_at, AgentTrust, RUN_DIR, TRUSTSTORE_PASSWORD,
};
pub use ca::CertificateAuthority;
pub use leaves::{client_sni, sni_mismatch, LeafCache};
pub use upstream::{read_pem_certificates, system_roots, upstream_client_config, SystemRoots};

/// The ALPN protocols offered on both legs, in preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Errors of the TLS layer. The `Display` text is meant for the user: it names the file or host
/// involved and never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0:?} is not a DNS name or IP address leash can issue a certificate for")]
    InvalidHost(String),
    #[error("leash's CA expired (it is valid for {days} days); restart leash to make a new one", days = ca::CA_LIFETIME.as_secs() / 86_400)]
    CaExpired,
    #[error("the system clock is before 1970")]
    Clock,
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("--upstream-ca {}: {reason}", path.display())]
    UpstreamCa { path: PathBuf, reason: String },
    #[error("no trusted roots for upstream TLS: the system certificate store gave none ({0}) and no --upstream-ca was given")]
    NoRoots(String),
    #[error("{}: path is not UTF-8 or contains a quote, so it cannot be handed to the agent in its environment", path.display())]
    UnusablePath { path: PathBuf },
}

/// `Result` with [`TlsError`].
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// rustls's `ring` provider, chosen explicitly (the workspace builds rustls without aws-lc).
pub(crate) fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions both legs accept.
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The ALPN list as rustls wants it.
pub(crate) fn alpn_protocols() -> Vec<Vec<u8>> {
    ALPN.iter().map(|p| p.to_vec()).collect()
}

#[cfg(test)]
pub(crate) mod testing {
    //! Helpers shared by this module's tests.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh empty directory under the system temp dir; the caller removes it.
    pub fn scratch_dir(tag: &str) -> PathBuf {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("leash-tls-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch dir");
        dir
    }
}
