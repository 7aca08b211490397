//! Which pod and container a process belongs to, from its cgroup path alone.
//!
//! The kubelet lays out cgroups in one of two ways, and each container runtime names its
//! container's cgroup its own way:
//!
//! | driver | path below the cgroup2 root |
//! |---|---|
//! | systemd | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope` (`crio-<id>.scope` for CRI-O) |
//! | cgroupfs | `kubepods/burstable/pod<uid>/<id>` (`crio-<id>` for CRI-O) |
//!
//! The QoS level (`burstable`, `besteffort`) is absent for guaranteed pods; the systemd driver
//! writes the pod uid with `_` for `-`. Whatever precedes the first `kubepods` component is kept
//! as a prefix (tests build the tree below a scratch cgroup). A process may sit in a cgroup below
//! its container's (nested cgroups, or a leash sandbox): the container is still the one above.

use std::path::{Path, PathBuf};

use super::process::Process;

/// The pod and container a cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContainer {
    /// The pod's uid, in the API's spelling (with `-`).
    pub pod_uid: String,
    pub container_id: String,
    pub runtime: Runtime,
    pub driver: Driver,
    /// The container's cgroup, relative to the cgroup2 root (no leading `/`).
    pub container_cgroup: PathBuf,
    /// The leash sandbox the process is in, when it is in one (the `leash-<id>` directory).
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// A cgroupfs container directory named by its id alone (containerd's usual spelling).
    Unnamed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// Why a cgroup path is not a pod's container.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAPod {
    #[error("cgroup {0} is not below a kubepods cgroup")]
    NoKubepods(String),
    #[error("cgroup {0} has no pod<uid> level")]
    NoPod(String),
    #[error("cgroup {0} is a pod's cgroup, not one of its containers'")]
    NoContainer(String),
}

/// Prefix of a leash sandbox cgroup's directory name (also used by `leash run`).
const SANDBOX_PREFIX: &str = "leash-";

/// Parses the cgroup path of a process (as in `/proc/<pid>/cgroup`, `0::<path>`).
pub fn parse(path: &str) -> Result<PodContainer, NotAPod> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let start = parts.iter().position(|p| *p == "kubepods" || *p == "kubepods.slice");
    let Some(start) = start else { return Err(NotAPod::NoKubepods(path.into())) };
    let driver = if parts[start] == "kubepods.slice" { Driver::Systemd } else { Driver::Cgroupfs };
    let mut i = start + 1;
    // The QoS level, when there is one.
    if let Some(p) = parts.get(i) {
        let qos = match driver {
            Driver::Systemd => matches!(*p, "kubepods-burstable.slice" | "kubepods-besteffort.slice"),
            Driver::Cgroupfs => matches!(*p, "burstable" | "besteffort"),
        };
        if qos {
            i += 1;
        }
    }
    let pod = parts.get(i).ok_or_else(|| NotAPod::NoPod(path.into()))?;
    let pod_uid = match driver {
        Driver::Systemd => pod
            .strip_suffix(".slice")
            .and_then(|p| p.rsplit_once("-pod"))
            .filter(|(head, _)| head.starts_with("kubepods"))
            .map(|(_, uid)| uid.replace('_', "-")),
        Driver::Cgroupfs => pod.strip_prefix("pod").map(str::to_owned),
    }
    .filter(|uid| is_uid(uid))
    .ok_or_else(|| NotAPod::NoPod(path.into()))?;
    i += 1;
    let container = parts.get(i).ok_or_else(|| NotAPod::NoContainer(path.into()))?;
    let (runtime, container_id) = container_id(container, driver).ok_or_else(|| NotAPod::NoContainer(path.into()))?;
    let container_cgroup: PathBuf = parts[..=i].iter().collect();
    let sandbox = parts[i + 1..].iter().find_map(|p| p.strip_prefix(SANDBOX_PREFIX)).map(str::to_owned);
    Ok(PodContainer { pod_uid, container_id, runtime, driver, container_cgroup, sandbox })
}

/// The runtime and container id a container cgroup's name encodes.
fn container_id(name: &str, driver: Driver) -> Option<(Runtime, String)> {
    let (runtime, id) = match driver {
        Driver::Systemd => {
            let stem = name.strip_suffix(".scope")?;
            if let Some(id) = stem.strip_prefix("cri-containerd-") {
                (Runtime::Containerd, id)
            } else if let Some(id) = stem.strip_prefix("crio-") {
                (Runtime::CriO, id)
            } else if let Some(id) = stem.strip_prefix("docker-") {
                (Runtime::Docker, id)
            } else {
                return None;
            }
        }
        Driver::Cgroupfs => match name.strip_prefix("crio-") {
            Some(id) => (Runtime::CriO, id),
            None => (Runtime::Unnamed, name),
        },
    };
    // CRI-O's monitor (`crio-conmon-<id>`) and anything else not a hex id is not a container.
    (id.len() >= 12 && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (runtime, id.to_owned()))
}

/// A Kubernetes uid: 36 characters of hex digits and dashes in the 8-4-4-4-12 pattern.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The cgroup v2 path of process `pid` (the `0::` line of `/proc/<pid>/cgroup`).
pub fn cgroup_of(pid: u32) -> std::io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| std::io::Error::other(format!("process {pid} has no cgroup v2 membership")))
}

/// The pod and container of `process`, read while it is certainly that process.
pub fn of_process(process: &Process) -> Result<PodContainer, DiscoveryError> {
    let path = process.read(cgroup_of).map_err(|e| DiscoveryError::NoProcess(process.pid(), e.to_string()))?;
    if path.contains("/..") {
        // A cgroup outside this process's cgroup namespace: the daemon did not join the host's.
        return Err(DiscoveryError::OutsideNamespace(path));
    }
    parse(&path).map_err(DiscoveryError::NotAPod)
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("process {0} does not exist ({1})")]
    NoProcess(u32, String),
    #[error("cgroup {0} is outside the daemon's cgroup namespace")]
    OutsideNamespace(String),
    #[error(transparent)]
    NotAPod(NotAPod),
}

/// The directory of a pod container's cgroup below the cgroup2 mount `root`.
pub fn container_dir(root: &Path, pod: &PodContainer) -> PathBuf {
    root.join(&pod.container_cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
    const ID: &str = "4f9e1c2d3b4a59687766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn systemd_driver_with_containerd_and_crio() {
        let uid_ = UID.replace('-', "_");
        let p = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
        ))
        .unwrap();
        assert_eq!((p.pod_uid.as_str(), p.container_id.as_str()), (UID, ID));
        assert_eq!((p.runtime, p.driver, p.sandbox), (Runtime::Containerd, Driver::Systemd, None));
        let p = parse(&format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope/leash-7f")).unwrap();
        assert_eq!((p.runtime, p.sandbox.as_deref()), (Runtime::CriO, Some("7f")));
        assert_eq!(
            p.container_cgroup,
            PathBuf::from(format!("kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"))
        );
    }

    #[test]
    fn cgroupfs_driver_with_a_prefix() {
        let p = parse(&format!("/test-root/kubepods/besteffort/pod{UID}/{ID}")).unwrap();
        assert_eq!((p.pod_uid.as_str(), p.runtime, p.driver), (UID, Runtime::Unnamed, Driver::Cgroupfs));
        assert_eq!(p.container_cgroup, PathBuf::from(format!("test-root/kubepods/besteffort/pod{UID}/{ID}")));
        let p = parse(&format!("/kubepods/pod{UID}/crio-{ID}/nested")).unwrap();
        assert_eq!(p.runtime, Runtime::CriO);
    }

    #[test]
    fn what_is_not_a_pod_container() {
        assert!(matches!(parse("/user.slice/user-0.slice/session-1.scope"), Err(NotAPod::NoKubepods(_))));
        assert!(matches!(parse(&format!("/kubepods/burstable/pod{UID}")), Err(NotAPod::NoContainer(_))));
        assert!(matches!(parse("/kubepods/burstable/podnot-a-uid/abc"), Err(NotAPod::NoPod(_))));
        let uid_ = UID.replace('-', "_");
        let conmon = format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope");
        assert!(matches!(parse(&conmon), Err(NotAPod::NoContainer(_))));
        // The first kubepods level counts: a pod cannot pass itself off as another one nested in it.
        let nested = format!("/kubepods/pod{UID}/{ID}/kubepods/pod11111111-2222-3333-4444-555555555555/{ID}");
        assert_eq!(parse(&nested).unwrap().pod_uid, UID);
    }
}
