//! The agent's view of leash's CA: `/run/leash/<sandbox>/` holds the CA certificate, a bundle of
//! the system roots plus the CA and a Java truststore (never the key, which stays in leash's
//! memory), and the agent's environment names them (`SSL_CERT_FILE`, `NODE_EXTRA_CA_CERTS`, ...).
//!
//! `leash run` writes them in a tmpfs of their own that is mounted nowhere on the host: the
//! agent's mount namespace mounts it at that path, read-only (`mount_ns`). The directory is on no
//! filesystem of the host's (a process reaches it only through the agent's `/proc/<pid>/root`),
//! and there is nothing to remove after the agent: the filesystem goes with the namespace (on a
//! host whose `/run` is a disk filesystem, removing the files was a few hundred microseconds of
//! every `leash run`'s exit). Where `fsopen(2)` is refused (before 5.2, or by a seccomp profile),
//! and for `leash confine`, which makes no mount namespace, they are written in a host directory,
//! removed when leash is done. A host that allows `fsopen` but refuses `move_mount` in the agent's
//! namespace makes `leash run` fail there (exit 125), as a host that refuses mount(2) does.

use std::ffi::OsString;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::mount_ns::{self, KeptDir};
use crate::kernel::sandbox_id::SandboxId;
use crate::proxy::tls::{write_agent_trust, write_agent_trust_at, AgentTrust, CertificateAuthority, RUN_DIR};

/// The written trust files of one sandbox.
pub struct AgentTrustDir {
    trust: AgentTrust,
    place: Place,
}

/// Where the files are.
enum Place {
    /// In a host directory at the agent's path, removed when dropped.
    Host,
    /// In a tmpfs mounted nowhere, by descriptor; the agent's namespace mounts it.
    Detached(OwnedFd),
}

impl AgentTrustDir {
    /// Writes sandbox `id`'s files, for the agent to find in `/run/leash/<id>/`.
    pub fn write(id: &SandboxId, ca: &CertificateAuthority) -> Result<Self> {
        let seen_at = Path::new(RUN_DIR).join(id.to_string());
        // The agent's namespace mounts it under its `/run`, which must be there to be emptied.
        std::fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
        let Ok(tmpfs) = mount_ns::detached_tmpfs() else {
            return Self::write_in(Path::new(RUN_DIR), &id.to_string(), ca);
        };
        let written_in = PathBuf::from(format!("/proc/self/fd/{}", tmpfs.as_raw_fd()));
        let trust = write_agent_trust_at(&written_in, &seen_at, ca).context("writing the agent's CA bundle")?;
        Ok(Self { trust, place: Place::Detached(tmpfs) })
    }

    /// Writes the files in `<base>/<name>` (`leash confine`, which cannot write `/run/leash`).
    pub fn write_in(base: &Path, name: &str, ca: &CertificateAuthority) -> Result<Self> {
        std::fs::create_dir_all(base).with_context(|| format!("creating {}", base.display()))?;
        let trust = write_agent_trust(&base.join(name), ca).context("writing the agent's CA bundle")?;
        Ok(Self { trust, place: Place::Host })
    }

    /// The directory where the agent finds the files.
    pub fn dir(&self) -> &Path {
        &self.trust.dir
    }

    /// A path to the directory in leash's own view, for the agent's Landlock rules (which follow
    /// the directory, wherever it is mounted).
    pub fn in_leash_view(&self) -> PathBuf {
        match &self.place {
            Place::Host => self.trust.dir.clone(),
            Place::Detached(fd) => PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        }
    }

    /// The directory as the agent's mount namespace keeps it.
    pub fn kept(&self) -> KeptDir<'_> {
        let detached = match &self.place {
            Place::Host => None,
            Place::Detached(fd) => Some(fd.as_fd()),
        };
        KeptDir { path: self.dir(), detached }
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
    /// A host directory goes with the sandbox, on every path out of `leash run`.
    fn drop(&mut self) {
        if !matches!(self.place, Place::Host) {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.trust.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                crate::say!("leash: teardown: removing {}: {e}", self.trust.dir.display());
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
