//! The agent's view of leash's CA: `/run/leash/<sandbox>/` holds the CA certificate, a bundle of
//! the system roots plus the CA and a Java truststore (never the key, which stays in leash's
//! memory), and the agent's environment names them (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`, ...).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::kernel::sandbox_id::SandboxId;
use crate::proxy::tls::{write_agent_trust, AgentTrust, CertificateAuthority, RUN_DIR};

/// The written trust files of one sandbox; removed when dropped.
pub struct AgentTrustDir {
    trust: AgentTrust,
}

impl AgentTrustDir {
    pub fn write(id: &SandboxId, ca: &CertificateAuthority) -> Result<Self> {
        Self::write_in(Path::new(RUN_DIR), &id.to_string(), ca)
    }

    /// Writes the files in `<base>/<name>` (`leash confine`, which cannot write `/run/leash`).
    pub fn write_in(base: &Path, name: &str, ca: &CertificateAuthority) -> Result<Self> {
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let trust = write_agent_trust(&base.join(name), ca).context("writing the agent's CA bundle")?;
        Ok(Self { trust })
    }

    /// The directory the agent must be able to read.
    pub fn dir(&self) -> &Path {
        &self.trust.dir
    }

    /// Points the agent's TLS clients at the bundle. An existing `JAVA_TOOL_OPTIONS` is kept
    /// after leash's options.
    pub fn add_env(&self, env: &mut Vec<(OsString, OsString)>) {
        for (name, value) in self.trust.env_vars() {
            let key = OsString::from(&name);
            match env.iter_mut().find(|(k, _)| *k == key) {
                Some((_, existing)) if name == "JAVA_TOOL_OPTIONS" => {
                    let mut joined = OsString::from(value);
                    joined.push(" ");
                    joined.push(&*existing);
                    *existing = joined;
                }
                Some((_, existing)) => *existing = value.into(),
                None => env.push((key, value.into())),
            }
        }
    }
}

impl Drop for AgentTrustDir {
    /// The directory goes with the sandbox, on every path out of `leash run`.
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.trust.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("leash: teardown: removing {}: {e}", self.trust.dir.display());
            }
        }
    }
}

/// Removes trust directories whose leash is gone (it died before cleaning up).
pub fn reap_stale() {
    let Ok(entries) = std::fs::read_dir(RUN_DIR) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if SandboxId::parse(&name).is_some_and(|id| !id.owner_alive()) {
            let path: PathBuf = entry.path();
            let _ = std::fs::remove_dir_all(path);
        }
    }
}
