//! A pod's container as `ctr run` arguments: what the kubelet and containerd's CRI plugin make of
//! a PodSpec, for the node test (`vm_init`'s `node` suite), which runs deploy/'s DaemonSet and
//! runner pod with containerd and runc, and no kubelet.
//!
//! Translated field by field from the manifests, never restated: command and args; env (values,
//! the downward API's `fieldRef`s, `secretKeyRef`s from the test's secrets, and the API server's
//! address the kubelet gives every pod); working directory; the security context, pod and
//! container level merged (user and group, `runAsNonRoot`, capabilities on top of the runtime's
//! default set, `privileged`, `allowPrivilegeEscalation` as no_new_privs, read-only root,
//! `RuntimeDefault` seccomp as containerd's default profile); resources (memory limit, CPU quota
//! and shares); `hostPID`; the pod's network namespace; volumes (`hostPath`, `configMap`,
//! `emptyDir`, a `persistentVolumeClaim` through its bound PV, the service account's token) and
//! their mounts (read-only, propagation); and the cgroup the kubelet's cgroupfs driver gives a
//! container, `kubepods/<qos>/pod<uid>/<id>`.
//!
//! What `ctr` 1.6 cannot express is applied by the runc wrapper `runc_cri` from an annotation, as
//! the CRI plugin would: the process's user and group ([`RUN_AS`]), and a private cgroup
//! namespace. A field this does not translate is an error naming it, so a manifest that starts
//! using one fails the node test instead of running with the field silently dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PersistentVolume, PersistentVolumeClaim, PodSpec, ResourceRequirements, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotation `runc_cri` reads the process's `uid:gid` from.
pub const RUN_AS: &str = "io.leash.node-test/run-as";

/// Where the kubelet mounts a pod's service account token.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The node a pod runs on: its name, where volumes live, and the objects a pod's volumes and env
/// refer to.
pub struct Node {
    pub name: String,
    /// The kubelet's directory (`<root>/pods/<uid>/volumes/...`).
    pub root: PathBuf,
    pub config_maps: Vec<ConfigMap>,
    pub volumes: Vec<PersistentVolume>,
    pub claims: Vec<PersistentVolumeClaim>,
    /// Secret values by (namespace, secret, key).
    pub secrets: BTreeMap<(String, String, String), String>,
    /// The API server (or its stand-in) every pod is told about, with the token it accepts.
    pub api: Option<ApiAccess>,
    /// The capabilities the runtime gives a container by default (`ctr oci spec`).
    pub default_caps: Vec<String>,
}

pub struct ApiAccess {
    pub host: String,
    pub port: u16,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
}

/// A pod as the node sees it: its object metadata (with the uid the API server gave it) and spec.
pub struct Pod<'a> {
    pub meta: &'a ObjectMeta,
    pub spec: &'a PodSpec,
    pub uid: String,
}

/// One container to start: `ctr run <args> <image> <id> <command...>`.
#[derive(Debug, Clone)]
pub struct CtrRun {
    pub id: String,
    pub image: String,
    pub args: Vec<String>,
    pub command: Vec<String>,
    /// The container's cgroup, below the cgroup2 root (no leading `/`).
    pub cgroup: String,
    /// `uid:gid` of its processes.
    pub user: String,
}

impl CtrRun {
    /// Every argument after `ctr run`.
    pub fn argv(&self) -> Vec<String> {
        let mut argv = self.args.clone();
        argv.push(self.image.clone());
        argv.push(self.id.clone());
        argv.extend(self.command.iter().cloned());
        argv
    }
}

impl Pod<'_> {
    fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or("default")
    }

    fn volume_dir(&self, node: &Node, plugin: &str, name: &str) -> PathBuf {
        node.root.join("pods").join(&self.uid).join("volumes").join(plugin).join(name)
    }

    /// The pod's QoS class, as the kubelet derives it from every container's resources:
    /// guaranteed when each container's CPU and memory limits equal its requests (unset requests
    /// default to the limits), best-effort when no container sets any, else burstable.
    pub fn qos(&self) -> &'static str {
        let containers: Vec<&Container> =
            self.spec.containers.iter().chain(self.spec.init_containers.iter().flatten()).collect();
        let resources: Vec<Option<&ResourceRequirements>> = containers.iter().map(|c| c.resources.as_ref()).collect();
        let set = |r: &ResourceRequirements| {
            r.requests.as_ref().is_some_and(|m| !m.is_empty()) || r.limits.as_ref().is_some_and(|m| !m.is_empty())
        };
        if !resources.iter().flatten().any(|r| set(r)) {
            return "besteffort";
        }
        let pinned = |r: &ResourceRequirements| {
            ["cpu", "memory"].iter().all(|k| {
                let limit = r.limits.as_ref().and_then(|m| m.get(*k));
                let request = r.requests.as_ref().and_then(|m| m.get(*k)).or(limit);
                limit.is_some() && limit == request
            })
        };
        if resources.iter().all(|r| r.is_some_and(pinned)) {
            "guaranteed"
        } else {
            "burstable"
        }
    }

    /// The pod's cgroup under the cgroupfs driver.
    pub fn cgroup(&self) -> String {
        match self.qos() {
            "guaranteed" => format!("kubepods/pod{}", self.uid),
            qos => format!("kubepods/{qos}/pod{}", self.uid),
        }
    }

    /// Creates the pod's volumes on the node, as the kubelet does before the first container:
    /// returns each volume's host path by name.
    pub fn prepare_volumes(&self, node: &Node) -> Result<BTreeMap<String, PathBuf>, String> {
        let mut paths = BTreeMap::new();
        for volume in self.spec.volumes.iter().flatten() {
            paths.insert(volume.name.clone(), self.prepare_volume(node, volume)?);
        }
        if let (Some(api), true) = (&node.api, self.automounts_token()) {
            let dir = self.volume_dir(node, "kubernetes.io~projected", "kube-api-access");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for (name, from) in [("token", &api.token_file), ("ca.crt", &api.ca_file)] {
                std::fs::copy(from, dir.join(name)).map_err(|e| format!("service account {name}: {e}"))?;
            }
            std::fs::write(dir.join("namespace"), self.namespace()).map_err(|e| e.to_string())?;
            paths.insert(TOKEN_VOLUME.to_owned(), dir);
        }
        Ok(paths)
    }

    fn automounts_token(&self) -> bool {
        self.spec.automount_service_account_token != Some(false)
    }

    fn prepare_volume(&self, node: &Node, volume: &Volume) -> Result<PathBuf, String> {
        let name = &volume.name;
        let err = |e: std::io::Error| format!("volume {name}: {e}");
        if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            match host.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => {
                    std::fs::create_dir_all(&path).map_err(err)?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
                }
                "Directory" if !path.is_dir() => {
                    return Err(format!("volume {name}: hostPath {} is not a directory", path.display()))
                }
                "Directory" | "" => {}
                other => return Err(format!("volume {name}: hostPath type {other} is not translated")),
            }
            Ok(path)
        } else if let Some(empty) = &volume.empty_dir {
            if empty.medium.as_deref().is_some_and(|m| !m.is_empty()) {
                return Err(format!("volume {name}: emptyDir medium is not translated"));
            }
            let dir = self.volume_dir(node, "kubernetes.io~empty-dir", name);
            std::fs::create_dir_all(&dir).map_err(err)?;
            // The kubelet makes emptyDir world-writable: a pod's non-root users share it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(err)?;
            Ok(dir)
        } else if let Some(source) = &volume.config_map {
            let map = node
                .config_maps
                .iter()
                .find(|c| {
                    c.metadata.name.as_deref() == Some(&source.name)
                        && c.metadata.namespace.as_deref() == Some(self.namespace())
                })
                .ok_or_else(|| format!("volume {name}: no ConfigMap {} in {}", source.name, self.namespace()))?;
            if source.items.is_some() {
                return Err(format!("volume {name}: configMap items are not translated"));
            }
            let dir = self.volume_dir(node, "kubernetes.io~configmap", name);
            std::fs::create_dir_all(&dir).map_err(err)?;
            let mode = source.default_mode.unwrap_or(0o644) as u32;
            for (key, value) in map.data.iter().flatten() {
                let file = dir.join(key);
                std::fs::write(&file, value).map_err(err)?;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).map_err(err)?;
            }
            Ok(dir)
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let pvc = node
                .claims
                .iter()
                .find(|c| {
                    c.metadata.name.as_deref() == Some(&claim.claim_name)
                        && c.metadata.namespace.as_deref() == Some(self.namespace())
                })
                .ok_or_else(|| format!("volume {name}: no claim {} in {}", claim.claim_name, self.namespace()))?;
            let bound = pvc
                .spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .ok_or_else(|| format!("volume {name}: claim names no volume"))?;
            let pv = node
                .volumes
                .iter()
                .find(|v| v.metadata.name.as_deref() == Some(bound))
                .ok_or_else(|| format!("volume {name}: no PersistentVolume {bound}"))?;
            let spec = pv.spec.as_ref().ok_or_else(|| format!("volume {name}: PV {bound} has no spec"))?;
            // The PV must agree to be bound to this claim.
            let claim_ref =
                spec.claim_ref.as_ref().ok_or_else(|| format!("volume {name}: PV {bound} has no claimRef"))?;
            if claim_ref.name.as_deref() != Some(&claim.claim_name)
                || claim_ref.namespace.as_deref() != Some(self.namespace())
            {
                return Err(format!("volume {name}: PV {bound} is reserved for another claim"));
            }
            let host =
                spec.host_path.as_ref().ok_or_else(|| format!("volume {name}: PV {bound} is not a hostPath volume"))?;
            let path = PathBuf::from(&host.path);
            if host.type_.as_deref() == Some("Directory") && !path.is_dir() {
                return Err(format!("volume {name}: PV {bound}'s {} is not a directory", path.display()));
            }
            Ok(path)
        } else {
            Err(format!("volume {name}: its type is not translated"))
        }
    }

    /// `container` as `ctr run` arguments, with `volumes` from [`prepare_volumes`] and the pod's
    /// network namespace at `netns`.
    pub fn container_run(
        &self,
        node: &Node,
        container: &Container,
        volumes: &BTreeMap<String, PathBuf>,
        netns: &Path,
        id: &str,
    ) -> Result<CtrRun, String> {
        let name = &container.name;
        let fail = |what: &str| Err(format!("container {name}: {what}"));
        let mut args = Flags::default();
        let image = container.image.clone().ok_or_else(|| format!("container {name}: no image"))?;
        let Some(command) = container.command.clone() else {
            return fail("no command: the node test does not read the image's entrypoint");
        };
        let command: Vec<String> = command.into_iter().chain(container.args.iter().flatten().cloned()).collect();
        if container.stdin == Some(true) || container.tty == Some(true) {
            return fail("stdin/tty are not translated");
        }
        if self.spec.host_network == Some(true) || self.spec.host_ipc == Some(true) {
            return fail("hostNetwork/hostIPC are not translated");
        }
        if let Some(dir) = &container.working_dir {
            args.pair("--cwd", dir.clone());
        }
        for (key, value) in self.env(node, container)? {
            args.pair("--env", format!("{key}={value}"));
        }

        // Security context: the container's fields over the pod's.
        let pod_sc = self.spec.security_context.clone().unwrap_or_default();
        let sc = container.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(pod_sc.run_as_user).unwrap_or(0);
        let gid = sc.run_as_group.or(pod_sc.run_as_group).unwrap_or(0);
        if sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true) && uid == 0 {
            return fail("runAsNonRoot with uid 0: the kubelet refuses to start it");
        }
        if pod_sc.fs_group.is_some() || pod_sc.supplemental_groups.as_ref().is_some_and(|g| !g.is_empty()) {
            return fail("fsGroup/supplementalGroups are not translated");
        }
        args.pair("--annotation", format!("{RUN_AS}={uid}:{gid}"));
        if sc.privileged == Some(true) {
            args.flag("--privileged");
        }
        // Kubernetes sets no_new_privs only for allowPrivilegeEscalation: false; ctr sets it
        // unless told otherwise.
        if sc.allow_privilege_escalation != Some(false) {
            args.flag("--allow-new-privs");
        }
        if sc.read_only_root_filesystem == Some(true) {
            args.flag("--read-only");
        }
        let seccomp = sc.seccomp_profile.as_ref().or(pod_sc.seccomp_profile.as_ref()).map(|p| p.type_.as_str());
        match seccomp {
            Some("RuntimeDefault") => args.flag("--seccomp"),
            // containerd's CRI plugin runs a container without a profile as Unconfined.
            Some("Unconfined") | None => {}
            Some(other) => return fail(&format!("seccompProfile {other} is not translated")),
        }
        // AppArmor: the VM's kernel has no AppArmor (lsm=...,bpf), so Unconfined is what every
        // container gets there; a profile to load would be an error.
        let apparmor = sc.app_armor_profile.as_ref().or(pod_sc.app_armor_profile.as_ref()).map(|p| p.type_.as_str());
        if !matches!(apparmor, None | Some("Unconfined") | Some("RuntimeDefault")) {
            return fail("a Localhost AppArmor profile is not translated");
        }
        let (add, drop) = self.capabilities(node, container)?;
        for cap in add {
            args.pair("--cap-add", cap);
        }
        for cap in drop {
            args.pair("--cap-drop", cap);
        }

        // Resources.
        if let Some(limits) = container.resources.as_ref().and_then(|r| r.limits.as_ref()) {
            if let Some(memory) = limits.get("memory") {
                args.pair("--memory-limit", quantity_bytes(&memory.0)?.to_string());
            }
            if let Some(cpu) = limits.get("cpu") {
                args.pair("--cpu-period", "100000".into());
                args.pair("--cpu-quota", (quantity_millis(&cpu.0)? * 100).to_string());
            }
        }
        if let Some(cpu) = container.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("cpu")) {
            args.pair("--cpu-shares", (quantity_millis(&cpu.0)? * 1024 / 1000).max(2).to_string());
        }

        // Namespaces: the pod's network; the node's PID namespace with hostPID.
        args.pair("--with-ns", format!("network:{}", netns.display()));
        if self.spec.host_pid == Some(true) {
            args.pair("--with-ns", "pid:/proc/1/ns/pid".into());
        }

        // Mounts.
        for mount in container.volume_mounts.iter().flatten() {
            if mount.sub_path.is_some() || mount.sub_path_expr.is_some() {
                return fail("subPath is not translated");
            }
            let source =
                volumes.get(&mount.name).ok_or_else(|| format!("container {name}: no volume {}", mount.name))?;
            let propagation = match mount.mount_propagation.as_deref() {
                None | Some("None") => "rprivate",
                Some("HostToContainer") => "rslave",
                Some("Bidirectional") => "rshared",
                Some(other) => return fail(&format!("mountPropagation {other}")),
            };
            let rw = if mount.read_only == Some(true) { "ro" } else { "rw" };
            args.pair(
                "--mount",
                format!("type=bind,src={},dst={},options=rbind:{rw}:{propagation}", source.display(), mount.mount_path),
            );
        }
        if let Some(token) = volumes.get(TOKEN_VOLUME) {
            args.pair(
                "--mount",
                format!("type=bind,src={},dst={SERVICE_ACCOUNT_DIR},options=rbind:ro", token.display()),
            );
        }

        let cgroup = format!("{}/{id}", self.cgroup());
        args.pair("--cgroup", format!("/{cgroup}"));
        Ok(CtrRun { id: id.to_owned(), image, args: args.0, command, cgroup, user: format!("{uid}:{gid}") })
    }

    /// The environment the kubelet gives `container`.
    fn env(&self, node: &Node, container: &Container) -> Result<Vec<(String, String)>, String> {
        let mut env = Vec::new();
        if let Some(api) = &node.api {
            env.push(("KUBERNETES_SERVICE_HOST".to_owned(), api.host.clone()));
            env.push(("KUBERNETES_SERVICE_PORT".to_owned(), api.port.to_string()));
        }
        if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
            return Err(format!("container {}: envFrom is not translated", container.name));
        }
        for var in container.env.iter().flatten() {
            if let Some(value) = self.env_value(node, var)? {
                env.push((var.name.clone(), value));
            }
        }
        Ok(env)
    }

    /// One variable's value; `None` for an optional secret that does not exist (the kubelet then
    /// leaves the variable out).
    fn env_value(&self, node: &Node, var: &EnvVar) -> Result<Option<String>, String> {
        let Some(from) = &var.value_from else { return Ok(Some(var.value.clone().unwrap_or_default())) };
        if let Some(field) = &from.field_ref {
            let path = field.field_path.as_str();
            let value = match path {
                "spec.nodeName" => node.name.clone(),
                "metadata.name" => self.meta.name.clone().unwrap_or_default(),
                "metadata.namespace" => self.namespace().to_owned(),
                "metadata.uid" => self.uid.clone(),
                _ => match path.strip_prefix("metadata.annotations['").and_then(|p| p.strip_suffix("']")) {
                    Some(key) => self.meta.annotations.as_ref().and_then(|a| a.get(key)).cloned().unwrap_or_default(),
                    None => return Err(format!("env {}: fieldRef {path} is not translated", var.name)),
                },
            };
            return Ok(Some(value));
        }
        if let Some(secret) = &from.secret_key_ref {
            let key = (self.namespace().to_owned(), secret.name.clone(), secret.key.clone());
            return match node.secrets.get(&key) {
                Some(v) => Ok(Some(v.clone())),
                None if secret.optional == Some(true) => Ok(None),
                None => Err(format!("env {}: no secret {}/{}", var.name, secret.name, secret.key)),
            };
        }
        Err(format!("env {}: valueFrom is not translated", var.name))
    }

    /// `--cap-add` and `--cap-drop` lists that turn the runtime's default set into the one the
    /// security context asks for (Kubernetes: drop, then add, on top of the default).
    fn capabilities(&self, node: &Node, container: &Container) -> Result<(Vec<String>, Vec<String>), String> {
        let default: BTreeSet<String> = node.default_caps.iter().cloned().collect();
        let mut set = default.clone();
        let caps = container.security_context.as_ref().and_then(|s| s.capabilities.as_ref());
        let spell = |c: &str| if c.starts_with("CAP_") { c.to_owned() } else { format!("CAP_{c}") };
        for cap in caps.and_then(|c| c.drop.as_ref()).into_iter().flatten() {
            if cap == "ALL" {
                set.clear();
            } else {
                set.remove(&spell(cap));
            }
        }
        for cap in caps.and_then(|c| c.add.as_ref()).into_iter().flatten() {
            if cap == "ALL" {
                return Err(format!("container {}: capabilities.add ALL is not translated", container.name));
            }
            set.insert(spell(cap));
        }
        Ok((set.difference(&default).cloned().collect(), default.difference(&set).cloned().collect()))
    }
}

/// `ctr run` flags under construction.
#[derive(Default)]
struct Flags(Vec<String>);

impl Flags {
    fn flag(&mut self, name: &str) {
        self.0.push(name.to_owned());
    }

    fn pair(&mut self, name: &str, value: String) {
        self.0.push(name.to_owned());
        self.0.push(value);
    }
}

/// The name of the service account token's volume in the map [`Pod::prepare_volumes`] returns.
const TOKEN_VOLUME: &str = "kube-api-access (kubelet)";

/// A memory quantity (`256Mi`, `1Gi`, `64M`, `1000`) in bytes.
pub fn quantity_bytes(q: &str) -> Result<u64, String> {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, unit) = units.iter().find_map(|(s, u)| q.strip_suffix(s).map(|n| (n, *u))).unwrap_or((q, 1));
    number.parse::<u64>().map(|n| n * unit).map_err(|_| format!("quantity {q:?} is not translated"))
}

/// A CPU quantity (`50m`, `1`, `0.5`) in millicores.
pub fn quantity_millis(q: &str) -> Result<u64, String> {
    if let Some(m) = q.strip_suffix('m') {
        return m.parse().map_err(|_| format!("cpu quantity {q:?}"));
    }
    q.parse::<f64>().map(|c| (c * 1000.0).round() as u64).map_err(|_| format!("cpu quantity {q:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, SecurityContext};

    fn node(root: &Path) -> Node {
        Node {
            name: "node-a".into(),
            root: root.to_path_buf(),
            config_maps: Vec::new(),
            volumes: Vec::new(),
            claims: Vec::new(),
            secrets: BTreeMap::new(),
            api: None,
            default_caps: vec!["CAP_CHOWN".into(), "CAP_KILL".into(), "CAP_NET_RAW".into()],
        }
    }

    fn container(sc: SecurityContext) -> Container {
        Container {
            name: "c".into(),
            image: Some("example.com/i:1".into()),
            command: Some(vec!["/bin/x".into()]),
            args: Some(vec!["--y".into()]),
            security_context: Some(sc),
            ..Default::default()
        }
    }

    #[test]
    fn security_context_becomes_ctr_flags() {
        let dir = std::env::temp_dir().join(format!("node-spec-{}", std::process::id()));
        let node = node(&dir);
        let spec = PodSpec {
            host_pid: Some(true),
            security_context: Some(PodSecurityContext {
                run_as_user: Some(1000),
                run_as_group: Some(1001),
                ..Default::default()
            }),
            ..Default::default()
        };
        let meta = ObjectMeta::default();
        let pod = Pod { meta: &meta, spec: &spec, uid: "u-1".into() };
        let c = container(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["BPF".into(), "KILL".into()]),
            }),
            ..Default::default()
        });
        let run = pod.container_run(&node, &c, &BTreeMap::new(), Path::new("/proc/7/ns/net"), "abc").unwrap();
        let argv = run.argv().join(" ");
        assert!(argv.contains(&format!("--annotation {RUN_AS}=1000:1001")), "{argv}");
        assert!(argv.contains("--read-only"), "{argv}");
        assert!(!argv.contains("--allow-new-privs"), "{argv}");
        assert!(argv.contains("--cap-add CAP_BPF"), "{argv}");
        assert!(!argv.contains("--cap-add CAP_KILL") && !argv.contains("--cap-drop CAP_KILL"), "{argv}");
        assert!(argv.contains("--cap-drop CAP_CHOWN") && argv.contains("--cap-drop CAP_NET_RAW"), "{argv}");
        assert!(argv.contains("--with-ns pid:/proc/1/ns/pid"), "{argv}");
        assert!(argv.ends_with("example.com/i:1 abc /bin/x --y"), "{argv}");
        assert_eq!(run.cgroup, "kubepods/besteffort/podu-1/abc");

        let root =
            container(SecurityContext { run_as_non_root: Some(true), run_as_user: Some(0), ..Default::default() });
        assert!(pod.container_run(&node, &root, &BTreeMap::new(), Path::new("/x"), "abc").is_err());
        let mut no_command = container(SecurityContext::default());
        no_command.command = None;
        assert!(pod.container_run(&node, &no_command, &BTreeMap::new(), Path::new("/x"), "abc").is_err());
    }

    #[test]
    fn qos_classes_follow_the_kubelets_rule() {
        use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
        let resources = |cpu: &str, memory: &str, requests: bool| {
            let m = BTreeMap::from([
                ("cpu".to_owned(), Quantity(cpu.into())),
                ("memory".to_owned(), Quantity(memory.into())),
            ]);
            ResourceRequirements { limits: Some(m.clone()), requests: requests.then_some(m), ..Default::default() }
        };
        let meta = ObjectMeta::default();
        let class = |containers: Vec<Container>| {
            let spec = PodSpec { containers, ..Default::default() };
            Pod { meta: &meta, spec: &spec, uid: "u".into() }.qos()
        };
        let with = |r: Option<ResourceRequirements>| Container { name: "c".into(), resources: r, ..Default::default() };
        assert_eq!(class(vec![with(None)]), "besteffort");
        assert_eq!(class(vec![with(Some(resources("1", "1Gi", false)))]), "guaranteed");
        assert_eq!(class(vec![with(Some(resources("1", "1Gi", true))), with(None)]), "burstable");
        let mut partial = resources("1", "1Gi", true);
        partial.requests.as_mut().unwrap().insert("cpu".into(), Quantity("500m".into()));
        assert_eq!(class(vec![with(Some(partial))]), "burstable");
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("256Mi"), Ok(256 << 20));
        assert_eq!(quantity_bytes("1000"), Ok(1000));
        assert!(quantity_bytes("1.5Gi").is_err());
        assert_eq!(quantity_millis("50m"), Ok(50));
        assert_eq!(quantity_millis("1"), Ok(1000));
        assert_eq!(quantity_millis("0.5"), Ok(500));
    }
}
