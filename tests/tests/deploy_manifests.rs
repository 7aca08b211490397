//! deploy/: the Kubernetes manifests of leash's node daemon and of the example runner pod.
//!
//! Every YAML document is read as the Kubernetes object its `apiVersion` and `kind` name
//! (k8s-openapi, Kubernetes 1.33); an unknown kind, or a field the API does not have, is an error.
//! Then what deploy/README.md promises: the runner pod passes the `restricted` Pod Security
//! Standard (checked here rule by rule, and the checker is shown to reject each violation), the
//! daemon is not privileged, drops every capability and justifies each one it adds in a comment,
//! RBAC grants reads of pods and nothing else, every policy in the ConfigMap is a valid leash
//! policy, and the socket's path agrees from the daemon's arguments to the runner's wrapper.
//! No cluster is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, Container, ContainerPort, HostPathVolumeSource, Lifecycle, Namespace, PersistentVolume,
    PersistentVolumeClaim, Pod, PodSpec, Probe, SecurityContext, ServiceAccount, Volume,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(name: &str) -> String {
    let path = deploy_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `kustomization.yaml` configures kustomize; it is not an object of the Kubernetes API.
const KUSTOMIZATION: &str = "kustomization.yaml";
/// The example workload, applied on its own rather than by `kubectl apply -k deploy/`.
const RUNNER: &str = "runner-pod.yaml";

// --- Reading the manifests --------------------------------------------------------------------

use leash_tests::manifests::{parse_object, yaml_documents, Object};

/// Every object of every deploy/*.yaml (kustomization.yaml aside), with its file name.
fn load_all() -> Vec<(String, Object)> {
    let mut objects = Vec::new();
    for file in yaml_files() {
        if file == KUSTOMIZATION {
            continue;
        }
        let text = read(&file);
        let documents = yaml_documents(&file, &text).unwrap_or_else(|e| panic!("{e}"));
        assert!(!documents.is_empty(), "{file} holds no document");
        for (index, document) in documents.iter().enumerate() {
            let object = parse_object(document).unwrap_or_else(|e| panic!("{file}: document {}: {e}", index + 1));
            objects.push((file.clone(), object));
        }
    }
    objects
}

fn yaml_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir())
        .expect("listing deploy/")
        .map(|entry| entry.expect("listing deploy/").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

/// The manifests, sorted by kind.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<(String, Namespace)>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<(String, ConfigMap)>,
    daemon_sets: Vec<DaemonSet>,
    pods: Vec<(String, Pod)>,
    persistent_volumes: Vec<PersistentVolume>,
    persistent_volume_claims: Vec<PersistentVolumeClaim>,
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for (file, object) in load_all() {
        match object {
            Object::Namespace(o) => m.namespaces.push((file, o)),
            Object::ServiceAccount(o) => m.service_accounts.push(o),
            Object::ClusterRole(o) => m.cluster_roles.push(o),
            Object::ClusterRoleBinding(o) => m.cluster_role_bindings.push(o),
            Object::ConfigMap(o) => m.config_maps.push((file, o)),
            Object::DaemonSet(o) => m.daemon_sets.push(*o),
            Object::Pod(o) => m.pods.push((file, *o)),
            Object::PersistentVolume(o) => m.persistent_volumes.push(*o),
            Object::PersistentVolumeClaim(o) => m.persistent_volume_claims.push(*o),
        }
    }
    m
}

impl Manifests {
    fn daemon_set(&self) -> &DaemonSet {
        assert_eq!(self.daemon_sets.len(), 1, "deploy/ holds exactly one DaemonSet");
        &self.daemon_sets[0]
    }

    fn daemon_spec(&self) -> &PodSpec {
        let ds = self.daemon_set();
        ds.spec.as_ref().and_then(|s| s.template.spec.as_ref()).expect("the DaemonSet has a pod template spec")
    }

    fn daemon_container(&self) -> &Container {
        let spec = self.daemon_spec();
        assert_eq!(spec.containers.len(), 1, "the daemon pod runs one container");
        &spec.containers[0]
    }

    fn policies(&self) -> &ConfigMap {
        let volume = self
            .daemon_spec()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount_of(self.daemon_container(), &self.daemon_flag("--policies")).name)
            .expect("--policies is a mounted volume");
        let name = &volume.config_map.as_ref().expect("--policies is a ConfigMap volume").name;
        let namespace = self.daemon_set().metadata.namespace.as_deref();
        self.config_maps
            .iter()
            .map(|(_, cm)| cm)
            .find(|cm| cm.metadata.name.as_deref() == Some(name) && cm.metadata.namespace.as_deref() == namespace)
            .unwrap_or_else(|| panic!("no ConfigMap {name} in the daemon's namespace"))
    }

    fn runner(&self) -> &Pod {
        let runners: Vec<&Pod> = self.pods.iter().filter(|(file, _)| file == RUNNER).map(|(_, p)| p).collect();
        assert_eq!(runners.len(), 1, "{RUNNER} holds one Pod");
        runners[0]
    }

    /// The value after `flag` in the daemon's arguments.
    fn daemon_flag(&self, flag: &str) -> String {
        flag_value(self.daemon_container().args.as_deref().unwrap_or_default(), flag)
            .unwrap_or_else(|| panic!("the daemon has no {flag}"))
    }
}

fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).cloned()
}

/// The volume mount of `container` whose mount path holds `path`, the deepest one.
fn mount_of<'a>(container: &'a Container, path: &str) -> &'a k8s_openapi::api::core::v1::VolumeMount {
    container
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| panic!("container {} mounts nothing at {path}", container.name))
}

fn volume<'a>(spec: &'a PodSpec, name: &str) -> &'a Volume {
    spec.volumes.iter().flatten().find(|v| v.name == name).unwrap_or_else(|| panic!("no volume {name}"))
}

fn host_path(volume: &Volume) -> &HostPathVolumeSource {
    volume.host_path.as_ref().unwrap_or_else(|| panic!("volume {} is not a hostPath", volume.name))
}

// --- The `restricted` Pod Security Standard ---------------------------------------------------

/// Volume types `restricted` allows.
const RESTRICTED_VOLUME_TYPES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// Sysctls `baseline` (and so `restricted`) allows.
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// SELinux types `baseline` allows.
const SAFE_SELINUX_TYPES: &[&str] = &["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// What one container of a pod exposes to the standard, whichever list it is in.
struct ContainerView<'a> {
    label: String,
    security_context: Option<&'a SecurityContext>,
    host_ports: Vec<i32>,
    probe_and_hook_hosts: Vec<String>,
}

impl<'a> ContainerView<'a> {
    /// The view of one container, from the fields `Container` and `EphemeralContainer` share.
    fn new(
        label: String,
        security_context: Option<&'a SecurityContext>,
        ports: Option<&Vec<ContainerPort>>,
        probes: [Option<&Probe>; 3],
        lifecycle: Option<&Lifecycle>,
    ) -> Self {
        let probe_targets = probes.into_iter().flatten().map(|p| (p.http_get.as_ref(), p.tcp_socket.as_ref()));
        let hook_targets = lifecycle
            .into_iter()
            .flat_map(|l| [l.post_start.as_ref(), l.pre_stop.as_ref()])
            .flatten()
            .map(|h| (h.http_get.as_ref(), h.tcp_socket.as_ref()));
        let probe_and_hook_hosts = probe_targets
            .chain(hook_targets)
            .flat_map(|(http, tcp)| [http.and_then(|h| h.host.clone()), tcp.and_then(|t| t.host.clone())])
            .flatten()
            .collect();
        let host_ports = ports.into_iter().flatten().filter_map(|p| p.host_port).collect();
        Self { label, security_context, host_ports, probe_and_hook_hosts }
    }
}

/// The view of `$c`, a `Container` or an `EphemeralContainer` (same field names, two types).
macro_rules! container_view {
    ($label:expr, $c:expr) => {
        ContainerView::new(
            $label,
            $c.security_context.as_ref(),
            $c.ports.as_ref(),
            [$c.liveness_probe.as_ref(), $c.readiness_probe.as_ref(), $c.startup_probe.as_ref()],
            $c.lifecycle.as_ref(),
        )
    };
}

fn containers_of(spec: &PodSpec) -> Vec<ContainerView<'_>> {
    let regular = spec.containers.iter().map(|c| container_view!(format!("container {}", c.name), c));
    let init = spec.init_containers.iter().flatten().map(|c| container_view!(format!("initContainer {}", c.name), c));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| container_view!(format!("ephemeralContainer {}", c.name), c));
    regular.chain(init).chain(ephemeral).collect()
}

/// The volume type of `volume`: its one field besides `name`.
fn volume_type(volume: &Volume) -> String {
    let value = serde_json::to_value(volume).expect("a volume serialises");
    let types: Vec<&String> =
        value.as_object().expect("a volume is an object").keys().filter(|k| *k != "name").collect();
    assert_eq!(types.len(), 1, "volume {} has one type, not {types:?}", volume.name);
    types[0].clone()
}

/// Every way `pod` breaks the `restricted` Pod Security Standard (which includes `baseline`), as
/// the standard's policy names and the field at fault. Empty when the pod passes.
fn restricted_violations(pod: &Pod) -> Vec<String> {
    let mut out = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return vec!["the pod has no spec".into()];
    };
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let containers = containers_of(spec);

    // Baseline: Host Namespaces.
    for (field, value) in [("hostNetwork", spec.host_network), ("hostPID", spec.host_pid), ("hostIPC", spec.host_ipc)] {
        if value == Some(true) {
            out.push(format!("host namespaces: spec.{field} is true"));
        }
    }
    // Baseline: HostProcess.
    if pod_sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        out.push("hostProcess: spec.securityContext.windowsOptions.hostProcess is true".into());
    }
    // Baseline: AppArmor, in the pod's fields and the older annotations.
    let apparmor_ok = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    if let Some(profile) = &pod_sc.app_armor_profile {
        if !apparmor_ok(&profile.type_) {
            out.push(format!("appArmor: spec.securityContext.appArmorProfile.type is {}", profile.type_));
        }
    }
    for (key, value) in pod.metadata.annotations.iter().flatten() {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
            && value != "runtime/default"
            && !value.starts_with("localhost/")
        {
            out.push(format!("appArmor: annotation {key} is {value}"));
        }
    }
    // Baseline: SELinux.
    let selinux = |options: &k8s_openapi::api::core::v1::SELinuxOptions, at: &str, out: &mut Vec<String>| {
        let type_ = options.type_.as_deref().unwrap_or("");
        if !SAFE_SELINUX_TYPES.contains(&type_) {
            out.push(format!("seLinuxOptions: {at}.seLinuxOptions.type is {type_}"));
        }
        if options.user.as_deref().is_some_and(|u| !u.is_empty())
            || options.role.as_deref().is_some_and(|r| !r.is_empty())
        {
            out.push(format!("seLinuxOptions: {at}.seLinuxOptions sets user or role"));
        }
    };
    if let Some(options) = &pod_sc.se_linux_options {
        selinux(options, "spec.securityContext", &mut out);
    }
    // Baseline: Sysctls.
    for sysctl in pod_sc.sysctls.iter().flatten() {
        if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            out.push(format!("sysctls: {} is not in the safe set", sysctl.name));
        }
    }
    // Baseline: Seccomp (never Unconfined); restricted: RuntimeDefault or Localhost, set on the pod
    // or on every container.
    let seccomp_ok = |t: &str| t == "RuntimeDefault" || t == "Localhost";
    let pod_seccomp = pod_sc.seccomp_profile.as_ref().map(|p| p.type_.clone());
    if let Some(type_) = &pod_seccomp {
        if !seccomp_ok(type_) {
            out.push(format!("seccompProfile: spec.securityContext.seccompProfile.type is {type_}"));
        }
    }
    // Restricted: Running as Non-root (on the pod, or on every container).
    let pod_non_root = pod_sc.run_as_non_root == Some(true);
    if pod_sc.run_as_non_root == Some(false) {
        out.push("runAsNonRoot: spec.securityContext.runAsNonRoot is false".into());
    }
    // Restricted: Running as Non-root user.
    if pod_sc.run_as_user == Some(0) {
        out.push("runAsUser: spec.securityContext.runAsUser is 0".into());
    }
    // Baseline: HostPath Volumes; restricted: Volume Types.
    for volume in spec.volumes.iter().flatten() {
        let type_ = volume_type(volume);
        if type_ == "hostPath" {
            out.push(format!("hostPath volumes: volume {} is a hostPath", volume.name));
        }
        if !RESTRICTED_VOLUME_TYPES.contains(&type_.as_str()) {
            out.push(format!("volume types: volume {} is of type {type_}", volume.name));
        }
    }

    for c in &containers {
        let label = &c.label;
        let sc = c.security_context.cloned().unwrap_or_default();
        // Baseline: Privileged Containers.
        if sc.privileged == Some(true) {
            out.push(format!("privileged: {label} is privileged"));
        }
        // Baseline: HostProcess.
        if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
            out.push(format!("hostProcess: {label} sets windowsOptions.hostProcess"));
        }
        // Baseline: Host Ports.
        for port in &c.host_ports {
            if *port != 0 {
                out.push(format!("hostPorts: {label} uses host port {port}"));
            }
        }
        // Baseline: Host Probes / Lifecycle Hooks.
        for host in &c.probe_and_hook_hosts {
            if !host.is_empty() {
                out.push(format!("probe/lifecycle host: {label} targets host {host}"));
            }
        }
        // Baseline: AppArmor.
        if let Some(profile) = &sc.app_armor_profile {
            if !apparmor_ok(&profile.type_) {
                out.push(format!("appArmor: {label} appArmorProfile.type is {}", profile.type_));
            }
        }
        // Baseline: SELinux.
        if let Some(options) = &sc.se_linux_options {
            selinux(options, label, &mut out);
        }
        // Baseline: /proc Mount Type.
        if let Some(proc_mount) = &sc.proc_mount {
            if proc_mount != "Default" {
                out.push(format!("procMount: {label} procMount is {proc_mount}"));
            }
        }
        // Seccomp, per container.
        match sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()) {
            Some(type_) if !seccomp_ok(type_) => {
                out.push(format!("seccompProfile: {label} seccompProfile.type is {type_}"));
            }
            None if pod_seccomp.is_none() => {
                out.push(format!("seccompProfile: {label} has none and the pod sets none"));
            }
            _ => {}
        }
        // Restricted: Privilege Escalation (must be set, to false).
        if sc.allow_privilege_escalation != Some(false) {
            out.push(format!("allowPrivilegeEscalation: {label} does not set it to false"));
        }
        // Restricted: Running as Non-root.
        match sc.run_as_non_root {
            Some(false) => out.push(format!("runAsNonRoot: {label} sets runAsNonRoot false")),
            None if !pod_non_root => out.push(format!("runAsNonRoot: {label} has none and the pod sets none")),
            _ => {}
        }
        // Restricted: Running as Non-root user.
        if sc.run_as_user == Some(0) {
            out.push(format!("runAsUser: {label} runs as uid 0"));
        }
        // Baseline: Capabilities; restricted: drop ALL, add at most NET_BIND_SERVICE.
        let caps = sc.capabilities.clone().unwrap_or(Capabilities { add: None, drop: None });
        for cap in caps.add.iter().flatten() {
            if cap != "NET_BIND_SERVICE" {
                out.push(format!("capabilities: {label} adds {cap}"));
            }
        }
        if !caps.drop.iter().flatten().any(|c| c == "ALL") {
            out.push(format!("capabilities: {label} does not drop ALL"));
        }
    }
    out
}

/// The runner pod's container named `name`, for mutating a copy.
fn container_mut<'a>(pod: &'a mut Pod, name: &str) -> &'a mut Container {
    let spec = pod.spec.as_mut().expect("spec");
    spec.containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn security_context_mut<'a>(pod: &'a mut Pod, name: &str) -> &'a mut SecurityContext {
    container_mut(pod, name).security_context.get_or_insert_with(Default::default)
}

fn pod_security_context_mut(pod: &mut Pod) -> &mut k8s_openapi::api::core::v1::PodSecurityContext {
    pod.spec.as_mut().expect("spec").security_context.get_or_insert_with(Default::default)
}

// --- Tests ------------------------------------------------------------------------------------

#[test]
fn every_document_is_a_kubernetes_object_of_a_known_kind() {
    let objects = load_all();
    let kinds: BTreeSet<&str> = objects
        .iter()
        .map(|(_, o)| match o {
            Object::Namespace(_) => "Namespace",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
            Object::ConfigMap(_) => "ConfigMap",
            Object::DaemonSet(_) => "DaemonSet",
            Object::Pod(_) => "Pod",
            Object::PersistentVolume(_) => "PersistentVolume",
            Object::PersistentVolumeClaim(_) => "PersistentVolumeClaim",
        })
        .collect();
    let expected: BTreeSet<&str> = [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Pod",
        "PersistentVolume",
        "PersistentVolumeClaim",
    ]
    .into();
    assert_eq!(kinds, expected);
    let files: BTreeSet<String> = objects.iter().map(|(f, _)| f.clone()).collect();
    for file in ["namespace.yaml", "rbac.yaml", "configmap.yaml", "daemonset.yaml", RUNNER] {
        assert!(files.contains(file), "deploy/{file} is missing");
    }
}

#[test]
fn the_reader_rejects_unknown_kinds_and_fields() {
    let deployment = yaml_documents("inline", "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n").unwrap();
    assert!(parse_object(&deployment[0]).unwrap_err().contains("not a kind"));
    let wrong_group = yaml_documents("inline", "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: x}\n").unwrap();
    assert!(parse_object(&wrong_group[0]).is_err());

    let typo =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  hostPId: true\n  containers: [{name: a, image: b}]\n";
    let error = parse_object(&yaml_documents("inline", typo).unwrap()[0]).unwrap_err();
    assert!(error.contains(".spec.hostPId"), "{error}");

    let nested = "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n    - name: a\n      image: b\n      securityContext: {allowPrivilegeEscalaton: false}\n";
    let error = parse_object(&yaml_documents("inline", nested).unwrap()[0]).unwrap_err();
    assert!(error.contains(".spec.containers[0].securityContext.allowPrivilegeEscalaton"), "{error}");

    let two = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n---\n";
    assert_eq!(yaml_documents("inline", two).unwrap().len(), 2);
}

#[test]
fn kustomization_installs_everything_but_the_example() {
    let documents = yaml_documents(KUSTOMIZATION, &read(KUSTOMIZATION)).unwrap();
    assert_eq!(documents.len(), 1);
    let k = documents[0].as_object().expect("a mapping");
    let keys: BTreeSet<&str> = k.keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["apiVersion", "kind", "resources"]), "keys of {KUSTOMIZATION}");
    assert_eq!(k["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(k["kind"], "Kustomization");
    let resources: Vec<&str> = k["resources"]
        .as_array()
        .expect("resources is a list")
        .iter()
        .map(|r| r.as_str().expect("a file name"))
        .collect();
    let listed: BTreeSet<&str> = resources.iter().copied().collect();
    let files = yaml_files();
    let expected: BTreeSet<&str> =
        files.iter().map(String::as_str).filter(|f| *f != KUSTOMIZATION && *f != RUNNER).collect();
    assert_eq!(listed, expected, "kustomization.yaml lists every manifest except {RUNNER}");
    assert_eq!(resources.first(), Some(&"namespace.yaml"), "the namespace comes first");
}

#[test]
fn runner_pod_passes_the_restricted_pod_security_standard() {
    let m = manifests();
    let runner = m.runner();
    let violations = restricted_violations(runner);
    assert!(violations.is_empty(), "{RUNNER} breaks `restricted`:\n{}", violations.join("\n"));

    // It runs in a namespace that enforces `restricted`.
    let namespace = runner.metadata.namespace.as_deref().expect("the runner names its namespace");
    let (_, ns) = m
        .namespaces
        .iter()
        .find(|(_, ns)| ns.metadata.name.as_deref() == Some(namespace))
        .unwrap_or_else(|| panic!("namespace {namespace} is not in deploy/"));
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("restricted"));

    // Beyond the standard: no service account token for the agent, and the policy annotation.
    let spec = runner.spec.as_ref().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert!(runner.metadata.annotations.as_ref().is_some_and(|a| a.contains_key("leash.dev/policy")));
}

#[test]
fn the_restricted_checker_rejects_each_violation() {
    let m = manifests();
    let runner = m.runner().clone();
    assert!(restricted_violations(&runner).is_empty());

    type Mutation = fn(&mut Pod);
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "privilege escalation",
            |p| security_context_mut(p, "agent").allow_privilege_escalation = Some(true),
            "allowPrivilegeEscalation",
        ),
        (
            "escalation left unset",
            |p| security_context_mut(p, "install-leash").allow_privilege_escalation = None,
            "allowPrivilegeEscalation",
        ),
        (
            "a hostPath volume",
            |p| {
                let volume = Volume {
                    name: "host".into(),
                    host_path: Some(HostPathVolumeSource { path: "/run/leash".into(), type_: None }),
                    ..Default::default()
                };
                p.spec.as_mut().unwrap().volumes.get_or_insert_with(Vec::new).push(volume);
            },
            "hostPath volumes",
        ),
        (
            "a nfs volume",
            |p| {
                let volume = Volume {
                    name: "nfs".into(),
                    nfs: Some(k8s_openapi::api::core::v1::NFSVolumeSource {
                        path: "/x".into(),
                        server: "nfs".into(),
                        read_only: None,
                    }),
                    ..Default::default()
                };
                p.spec.as_mut().unwrap().volumes.get_or_insert_with(Vec::new).push(volume);
            },
            "volume types",
        ),
        (
            "an added capability",
            |p| {
                let caps = security_context_mut(p, "agent").capabilities.get_or_insert_with(Default::default);
                caps.add = Some(vec!["NET_RAW".into()]);
            },
            "adds NET_RAW",
        ),
        (
            "capabilities not dropped",
            |p| security_context_mut(p, "install-leash").capabilities = None,
            "does not drop ALL",
        ),
        ("root", |p| pod_security_context_mut(p).run_as_user = Some(0), "runAsUser"),
        ("root container", |p| security_context_mut(p, "agent").run_as_user = Some(0), "runAsUser"),
        ("runAsNonRoot false", |p| security_context_mut(p, "agent").run_as_non_root = Some(false), "runAsNonRoot"),
        ("runAsNonRoot unset", |p| pod_security_context_mut(p).run_as_non_root = None, "runAsNonRoot"),
        (
            "seccomp unconfined",
            |p| {
                pod_security_context_mut(p).seccomp_profile = Some(k8s_openapi::api::core::v1::SeccompProfile {
                    type_: "Unconfined".into(),
                    localhost_profile: None,
                })
            },
            "seccompProfile",
        ),
        ("seccomp unset", |p| pod_security_context_mut(p).seccomp_profile = None, "seccompProfile"),
        ("privileged", |p| security_context_mut(p, "agent").privileged = Some(true), "privileged"),
        ("hostNetwork", |p| p.spec.as_mut().unwrap().host_network = Some(true), "hostNetwork"),
        ("hostPID", |p| p.spec.as_mut().unwrap().host_pid = Some(true), "hostPID"),
        ("hostIPC", |p| p.spec.as_mut().unwrap().host_ipc = Some(true), "hostIPC"),
        (
            "a host port",
            |p| {
                container_mut(p, "agent").ports =
                    Some(vec![ContainerPort { container_port: 8080, host_port: Some(8080), ..Default::default() }])
            },
            "hostPorts",
        ),
        (
            "a probe aimed at a host",
            |p| {
                container_mut(p, "agent").liveness_probe = Some(Probe {
                    http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
                        host: Some("169.254.169.254".into()),
                        port: IntOrString::Int(80),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            },
            "probe/lifecycle host",
        ),
        ("unmasked /proc", |p| security_context_mut(p, "agent").proc_mount = Some("Unmasked".into()), "procMount"),
        (
            "an unsafe sysctl",
            |p| {
                pod_security_context_mut(p).sysctls =
                    Some(vec![k8s_openapi::api::core::v1::Sysctl { name: "kernel.msgmax".into(), value: "1".into() }])
            },
            "sysctls",
        ),
        (
            "AppArmor unconfined",
            |p| {
                security_context_mut(p, "agent").app_armor_profile = Some(k8s_openapi::api::core::v1::AppArmorProfile {
                    type_: "Unconfined".into(),
                    localhost_profile: None,
                })
            },
            "appArmor",
        ),
        (
            "AppArmor unconfined by annotation",
            |p| {
                p.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert("container.apparmor.security.beta.kubernetes.io/agent".into(), "unconfined".into());
            },
            "appArmor",
        ),
        (
            "SELinux spc_t",
            |p| {
                security_context_mut(p, "agent").se_linux_options = Some(k8s_openapi::api::core::v1::SELinuxOptions {
                    type_: Some("spc_t".into()),
                    ..Default::default()
                })
            },
            "seLinuxOptions",
        ),
        (
            "a Windows host process",
            |p| {
                pod_security_context_mut(p).windows_options =
                    Some(k8s_openapi::api::core::v1::WindowsSecurityContextOptions {
                        host_process: Some(true),
                        ..Default::default()
                    })
            },
            "hostProcess",
        ),
    ];
    for (what, mutate, expected) in cases {
        let mut pod = runner.clone();
        mutate(&mut pod);
        let violations = restricted_violations(&pod);
        assert!(
            violations.iter().any(|v| v.contains(expected)),
            "{what}: expected a violation mentioning {expected:?}, got {violations:?}"
        );
    }
}

/// Each item of a block-style `add:` list under `capabilities:` in `text`, with the comment block
/// directly above it (a blank line ends a block) and any comment after it on its line.
fn added_capabilities_with_comments(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut out = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if line.trim() != "add:" {
            continue;
        }
        let add_indent = indent(line);
        let parent = lines[..index].iter().rev().find(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#') && indent(l) < add_indent
        });
        if parent.map(|p| p.trim()) != Some("capabilities:") {
            continue;
        }
        let mut comment: Vec<&str> = Vec::new();
        for line in &lines[index + 1..] {
            let trimmed = line.trim_start();
            if trimmed.is_empty() {
                comment.clear();
                continue;
            }
            let is_item = trimmed.starts_with("- ");
            if indent(line) < add_indent || (indent(line) == add_indent && !is_item) {
                break;
            }
            if let Some(text) = trimmed.strip_prefix('#') {
                comment.push(text.trim());
            } else if let Some(item) = trimmed.strip_prefix("- ") {
                let (name, trailing) = item.split_once(" #").unwrap_or((item, ""));
                let mut justification = comment.join(" ");
                if !trailing.trim().is_empty() {
                    justification = format!("{justification} {}", trailing.trim());
                }
                out.push((name.trim().to_string(), justification.trim().to_string()));
                comment.clear();
            } else {
                break;
            }
        }
    }
    out
}

#[test]
fn daemon_is_not_privileged_and_justifies_each_capability() {
    let m = manifests();
    let spec = m.daemon_spec();
    let container = m.daemon_container();
    let sc = container.security_context.as_ref().expect("the daemon has a securityContext");

    assert_ne!(sc.privileged, Some(true), "the daemon must not be privileged");
    let caps = sc.capabilities.as_ref().expect("the daemon names its capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]), "drop ALL, then add each one needed");
    let added: Vec<String> = caps.add.clone().unwrap_or_default();
    let added_set: BTreeSet<&str> = added.iter().map(String::as_str).collect();
    // A capability added here is a decision to review: this list changes with the YAML.
    let expected =
        BTreeSet::from(["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH", "SYS_RESOURCE"]);
    assert_eq!(added_set, expected, "the daemon's added capabilities");
    assert_eq!(added.len(), added_set.len(), "no capability is listed twice");

    // Every added capability has a comment of its own in the YAML source, naming it.
    let text = read("daemonset.yaml");
    let commented = added_capabilities_with_comments(&text);
    let commented_names: Vec<&str> = commented.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        commented_names,
        added.iter().map(String::as_str).collect::<Vec<_>>(),
        "capabilities.add must be a block list, one item per line (what the YAML parser read and what \
         the comment check read must agree)"
    );
    for (name, justification) in &commented {
        assert!(
            justification.starts_with(&format!("CAP_{name}:")),
            "the comment above {name} must start with `CAP_{name}:` and say why: {justification:?}"
        );
        assert!(
            justification.split_whitespace().count() >= 10,
            "the justification of {name} is too thin: {justification:?}"
        );
    }
    let unique: BTreeSet<&str> = commented.iter().map(|(_, j)| j.as_str()).collect();
    assert_eq!(unique.len(), commented.len(), "each capability has its own justification");

    // Kubernetes rejects allowPrivilegeEscalation: false with privileged or CAP_SYS_ADMIN; it
    // matches only the spelling CAP_SYS_ADMIN, this check matches both.
    if sc.allow_privilege_escalation == Some(false) {
        assert!(!added.iter().any(|c| c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN"));
    }
    assert_eq!(sc.run_as_user, Some(0), "uid 0 owns the cgroup files, so no CAP_DAC_OVERRIDE");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()), Some("RuntimeDefault"));

    // Host namespaces: the PID namespace only.
    assert_eq!(spec.host_pid, Some(true), "SO_PEERCRED pids must be the node's");
    assert_ne!(spec.host_network, Some(true));
    assert_ne!(spec.host_ipc, Some(true));
    assert!(spec.init_containers.as_ref().is_none_or(Vec::is_empty), "the daemon has no init container");

    // Host paths: exactly these, and none shared back to the node (Bidirectional needs privileged).
    let host_paths: BTreeMap<&str, &str> = spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.host_path.as_ref().map(|h| (v.name.as_str(), h.path.as_str())))
        .collect();
    let paths: BTreeSet<&str> = host_paths.values().copied().collect();
    assert_eq!(
        paths,
        BTreeSet::from([
            "/sys/fs/bpf",
            "/sys/fs/cgroup",
            "/sys/kernel/security",
            "/sys/kernel/btf",
            "/run/leash/sock",
            "/run/leash/state"
        ])
    );
    for mount in container.volume_mounts.iter().flatten() {
        assert_ne!(mount.mount_propagation.as_deref(), Some("Bidirectional"), "{}", mount.name);
        if let Some(path) = host_paths.get(mount.name.as_str()) {
            if path.starts_with("/sys/kernel/") {
                assert_eq!(mount.read_only, Some(true), "{path} is only read");
            }
        }
    }
    for name in host_paths.keys() {
        assert!(container.volume_mounts.iter().flatten().any(|m| m.name == *name), "host path {name} is not mounted");
    }
}

#[test]
fn daemon_is_wired_to_its_socket_policies_metrics_and_node() {
    let m = manifests();
    let ds = m.daemon_set();
    let spec = m.daemon_spec();
    let container = m.daemon_container();
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(container.command.as_deref(), Some(&["/usr/local/bin/leash".to_string()][..]));
    assert_eq!(args.first().map(String::as_str), Some("daemon"));

    // Each path flag lies in a mounted volume: bpffs and cgroup2 from the node at the same path.
    for (flag, host) in [("--bpffs", "/sys/fs/bpf"), ("--cgroup-root", "/sys/fs/cgroup")] {
        let path = m.daemon_flag(flag);
        let mount = mount_of(container, &path);
        assert_eq!(mount.mount_path, path, "{flag}");
        assert_eq!(host_path(volume(spec, &mount.name)).path, host, "{flag}");
    }
    for flag in ["--socket", "--state-dir"] {
        let path = m.daemon_flag(flag);
        assert!(host_path(volume(spec, &mount_of(container, &path).name)).path.starts_with("/run/leash/"), "{flag}");
    }
    let state = mount_of(container, &m.daemon_flag("--state-dir")).name.clone();
    let socket = mount_of(container, &m.daemon_flag("--socket")).name.clone();
    assert_ne!(state, socket, "the socket's directory, which runner pods see, holds no state");

    // The policies: a ConfigMap in the daemon's namespace, holding the default policy.
    let policies = m.policies();
    let keys: BTreeSet<String> = policies.data.clone().unwrap_or_default().into_keys().collect();
    let default = m.daemon_flag("--default-policy");
    assert!(keys.contains(&format!("{default}.yaml")), "--default-policy {default} is not in {keys:?}");

    // Metrics, health and readiness on the one port Prometheus is told about.
    let metrics = m.daemon_flag("--metrics");
    let port: i32 = metrics.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).expect("--metrics HOST:PORT");
    assert_eq!(port, 9464);
    let named =
        container.ports.iter().flatten().find(|p| p.container_port == port).expect("the metrics port is declared");
    let port_of = |probe: Option<&Probe>, path: &str| {
        let get = probe.and_then(|p| p.http_get.as_ref()).unwrap_or_else(|| panic!("no httpGet probe for {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        match &get.port {
            IntOrString::Int(p) => assert_eq!(*p, port),
            IntOrString::String(name) => assert_eq!(Some(name), named.name.as_ref()),
        }
    };
    port_of(container.liveness_probe.as_ref(), "/healthz");
    port_of(container.readiness_probe.as_ref(), "/readyz");
    let annotations =
        ds.spec.as_ref().unwrap().template.metadata.as_ref().and_then(|m| m.annotations.clone()).unwrap_or_default();
    assert_eq!(annotations.get("prometheus.io/scrape").map(String::as_str), Some("true"));
    assert_eq!(annotations.get("prometheus.io/port"), Some(&port.to_string()));
    assert_eq!(annotations.get("prometheus.io/path").map(String::as_str), Some("/metrics"));

    // The node's name from the downward API.
    let node = container.env.iter().flatten().find(|e| e.name == "NODE_NAME").expect("NODE_NAME is set");
    let field = node.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("NODE_NAME comes from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // Limits, so a runaway daemon cannot starve the node; requests, so it is scheduled.
    let resources = container.resources.as_ref().expect("resources");
    for key in ["cpu", "memory"] {
        assert!(resources.requests.as_ref().is_some_and(|r| r.contains_key(key)), "request {key}");
        assert!(resources.limits.as_ref().is_some_and(|r| r.contains_key(key)), "limit {key}");
    }

    // On every node, first in and last out, one node at a time.
    assert!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()),
        "a toleration of every taint"
    );
    assert_eq!(spec.priority_class_name.as_deref(), Some("system-node-critical"));
    let strategy = ds.spec.as_ref().unwrap().update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(strategy.rolling_update.as_ref().and_then(|r| r.max_unavailable.clone()), Some(IntOrString::Int(1)));

    // Its identity: the ServiceAccount of rbac.yaml, in the namespace of namespace.yaml, which
    // admits it (`privileged`).
    let namespace = ds.metadata.namespace.clone().expect("the DaemonSet names its namespace");
    let sa = spec.service_account_name.clone().expect("serviceAccountName");
    assert!(m
        .service_accounts
        .iter()
        .any(|s| s.metadata.name.as_deref() == Some(&sa) && s.metadata.namespace.as_deref() == Some(&namespace)));
    let (file, ns) = m
        .namespaces
        .iter()
        .find(|(_, ns)| ns.metadata.name.as_deref() == Some(&namespace))
        .expect("the namespace is in deploy/");
    assert_eq!(file, "namespace.yaml");
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("pod-security.kubernetes.io/enforce").map(String::as_str), Some("privileged"));

    // The image's default command is the DaemonSet's.
    let containerfile = read("Containerfile");
    let instruction = |name: &str| -> Vec<String> {
        let line = containerfile
            .lines()
            .rfind(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("Containerfile has no {name}"));
        serde_json::from_str(&line[name.len() + 1..]).unwrap_or_else(|e| panic!("{name} is not a JSON array: {e}"))
    };
    assert_eq!(Some(instruction("ENTRYPOINT")), container.command);
    assert_eq!(instruction("CMD"), args);
    // The release build as `cargo xtask install` makes it: static, from the lock file.
    assert!(containerfile.contains("RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --locked"));
    assert!(containerfile.contains("-p sandbox-user --bin leash"));
    assert!(containerfile.contains("cargo xtask setup"));
}

#[test]
fn cluster_role_grants_only_reads_of_pods() {
    let m = manifests();
    assert_eq!(m.cluster_roles.len(), 1);
    let role = &m.cluster_roles[0];
    assert!(role.aggregation_rule.is_none());
    let rules = role.rules.clone().unwrap_or_default();
    assert_eq!(rules.len(), 1, "one rule");
    let rule = &rules[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]), "the core group only");
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]), "pods only (no subresources)");
    let verbs: BTreeSet<&str> = rule.verbs.iter().map(String::as_str).collect();
    assert_eq!(verbs, BTreeSet::from(["get", "list", "watch"]));
    assert!(rule.non_resource_urls.is_none() && rule.resource_names.is_none());

    // Bound to the daemon's ServiceAccount and nothing else; no other role anywhere.
    assert_eq!(m.cluster_role_bindings.len(), 1);
    let binding = &m.cluster_role_bindings[0];
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let ds = m.daemon_set();
    let subjects = binding.subjects.clone().unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), m.daemon_spec().service_account_name.as_ref());
    assert_eq!(subjects[0].namespace, ds.metadata.namespace);
}

#[test]
fn policies_configmap_holds_valid_leash_policies() {
    let m = manifests();
    let policies = m.policies();
    let (file, _) = m.config_maps.iter().find(|(_, cm)| cm.metadata.name == policies.metadata.name).unwrap();
    let data = policies.data.clone().unwrap_or_default();
    assert!(data.contains_key("default.yaml"), "the ConfigMap holds default.yaml");
    for (key, text) in &data {
        let name = key.strip_suffix(".yaml").unwrap_or_else(|| panic!("{key}: policy keys are <NAME>.yaml"));
        assert!(!name.is_empty());
        let policy = leash::policy::parse_str(&format!("deploy/{file}:{key}"), text).unwrap_or_else(|e| panic!("{e}"));
        // `default` must work on every node, BPF-LSM or not: the daemon refuses kernel: rules on
        // a node without it.
        if name == "default" {
            assert!(policy.kernel().is_none(), "{key} has kernel: rules, which nodes without BPF-LSM refuse");
        }
    }

    let default = leash::policy::parse_str("default.yaml", &data["default.yaml"]).unwrap();
    let decider = leash::policy::decide::Decider::new(&default);
    for host in ["api.anthropic.com", "github.com", "api.github.com"] {
        assert!(decider.network(host, 443, None).allow, "{host}:443");
    }
    assert!(!decider.network("example.com", 443, None).allow);
    assert!(!decider.network("api.anthropic.com", 80, None).allow);

    // The runner's annotation names one of them.
    let runner = m.runner();
    let wanted = &runner.metadata.annotations.as_ref().unwrap()["leash.dev/policy"];
    assert!(data.contains_key(&format!("{wanted}.yaml")), "the runner asks for {wanted}, which the ConfigMap lacks");
}

/// The runner's wrapper script, from its ConfigMap.
fn wrapper(m: &Manifests) -> (String, String) {
    let runner = m.runner();
    let spec = runner.spec.as_ref().unwrap();
    let agent = &spec.containers[0];
    let command = agent.command.clone().unwrap_or_default();
    let script_path = command.first().expect("the agent runs the wrapper").clone();
    let mount = mount_of(agent, &script_path);
    let cm_name = &volume(spec, &mount.name).config_map.as_ref().expect("the wrapper comes from a ConfigMap").name;
    let key = Path::new(&script_path).strip_prefix(&mount.mount_path).unwrap().to_string_lossy().into_owned();
    let (_, cm) = m
        .config_maps
        .iter()
        .find(|(_, cm)| {
            cm.metadata.name.as_deref() == Some(cm_name) && cm.metadata.namespace == runner.metadata.namespace
        })
        .unwrap_or_else(|| panic!("no ConfigMap {cm_name} in the runner's namespace"));
    let text = cm.data.as_ref().and_then(|d| d.get(&key)).unwrap_or_else(|| panic!("{cm_name} has no {key}")).clone();
    (script_path, text)
}

#[test]
fn the_socket_reaches_the_runner_pod_through_its_claim() {
    let m = manifests();
    let daemon_socket = PathBuf::from(m.daemon_flag("--socket"));
    let daemon_volume = volume(m.daemon_spec(), &mount_of(m.daemon_container(), daemon_socket.to_str().unwrap()).name);
    let daemon_mount = mount_of(m.daemon_container(), daemon_socket.to_str().unwrap());
    let relative = daemon_socket.strip_prefix(&daemon_mount.mount_path).unwrap();
    let node_dir = &host_path(daemon_volume).path;

    // The runner mounts a claim, read-only...
    let runner = m.runner();
    let namespace = runner.metadata.namespace.clone().unwrap();
    let spec = runner.spec.as_ref().unwrap();
    let agent = &spec.containers[0];
    let claim_volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.persistent_volume_claim.is_some())
        .expect("the runner mounts the socket's claim");
    let source = claim_volume.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(source.read_only, Some(true));
    let mount =
        agent.volume_mounts.iter().flatten().find(|v| v.name == claim_volume.name).expect("the agent mounts it");
    assert_eq!(mount.read_only, Some(true));

    // ...bound to a PV that shows the node's socket directory, and to nothing else...
    let pvc = m
        .persistent_volume_claims
        .iter()
        .find(|c| {
            c.metadata.name.as_deref() == Some(&source.claim_name)
                && c.metadata.namespace.as_deref() == Some(&namespace)
        })
        .expect("the claim is in deploy/");
    let pvc_spec = pvc.spec.as_ref().unwrap();
    let pv = m
        .persistent_volumes
        .iter()
        .find(|v| v.metadata.name == pvc_spec.volume_name)
        .expect("the claim names its PV (volumeName)");
    let pv_spec = pv.spec.as_ref().unwrap();
    let claim_ref = pv_spec.claim_ref.as_ref().expect("the PV is reserved for the claim (claimRef)");
    assert_eq!(claim_ref.namespace.as_deref(), Some(namespace.as_str()));
    assert_eq!(claim_ref.name.as_ref(), pvc.metadata.name.as_ref());
    let pv_host = pv_spec.host_path.as_ref().expect("a hostPath PV");
    assert_eq!(&pv_host.path, node_dir, "the PV shows the directory the daemon's socket is in");
    assert_eq!(pv_host.type_.as_deref(), Some("Directory"), "created by the daemon, not by the runner");
    assert!(pv_spec.node_affinity.is_none(), "every node has its own socket at the same path");
    for modes in [&pv_spec.access_modes, &pvc_spec.access_modes] {
        assert_eq!(modes.as_deref(), Some(&["ReadOnlyMany".to_string()][..]));
    }
    assert_eq!(pv_spec.storage_class_name.as_deref(), Some(""));
    assert_eq!(pvc_spec.storage_class_name.as_deref(), Some(""), "no default StorageClass provisions it");
    // The directory holds nothing of the daemon but its socket.
    let state_dir = m.daemon_flag("--state-dir");
    let state_host = &host_path(volume(m.daemon_spec(), &mount_of(m.daemon_container(), &state_dir).name)).path;
    assert!(!Path::new(state_host).starts_with(node_dir), "the state directory is not shown to runners");

    // ...and the wrapper connects to the socket where that mount puts it.
    let in_pod = Path::new(&mount.mount_path).join(relative);
    let (_, script) = wrapper(&m);
    let socket_line = script.lines().find_map(|l| l.trim().strip_prefix("socket=")).expect("the wrapper sets socket=");
    assert_eq!(Path::new(socket_line), in_pod);
    let exec = script.lines().find(|l| l.trim_start().starts_with("exec ")).expect("the wrapper execs leash");
    assert!(
        exec.contains(
            "leash confine --socket \"$socket\" ${LEASH_POLICY:+--policy \"$LEASH_POLICY\"} -- claude \"$@\""
        ),
        "{exec}"
    );

    // The policy the wrapper asks for is the one the daemon reads: the pod's annotation.
    let policy_env = agent.env.iter().flatten().find(|e| e.name == "LEASH_POLICY").expect("LEASH_POLICY is set");
    let field = policy_env.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).expect("from the downward API");
    assert_eq!(field.field_path, "metadata.annotations['leash.dev/policy']");

    // The leash binary the wrapper runs is copied from the daemon's image.
    let install = spec.init_containers.iter().flatten().find(|c| c.name == "install-leash").expect("install-leash");
    assert_eq!(install.image, m.daemon_container().image);
    let binary = exec.split_whitespace().nth(1).unwrap();
    assert_eq!(install.command.as_ref().and_then(|c| c.last()).map(String::as_str), Some(binary));
}

#[test]
fn the_wrapper_is_valid_sh() {
    let m = manifests();
    let (_, script) = wrapper(&m);
    assert!(script.starts_with("#!/bin/sh\n"));
    let dir = std::env::temp_dir().join(format!("leash-deploy-wrapper-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("wrapper.sh");
    std::fs::write(&path, &script).unwrap();
    let status = Command::new("sh").arg("-n").arg(&path).status().expect("running sh -n");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "sh -n rejects the wrapper");

    // The ConfigMap makes it executable (0555).
    let spec = m.runner().spec.as_ref().unwrap();
    let cm_volume = spec.volumes.iter().flatten().find(|v| v.config_map.is_some()).unwrap();
    assert_eq!(cm_volume.config_map.as_ref().unwrap().default_mode, Some(0o555));
}

#[test]
fn the_wrapper_waits_for_the_socket_and_runs_leash_confine() {
    let m = manifests();
    let (_, script) = wrapper(&m);
    let dir = std::env::temp_dir().join(format!("leash-deploy-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The same script with the pod's paths moved into a scratch directory: a listening socket
    // and a `leash` that prints its arguments.
    let socket = dir.join("leash.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fake_leash = dir.join("leash");
    std::fs::write(&fake_leash, "#!/bin/sh\nprintf '%s\\n' \"$@\"\n").unwrap();
    std::fs::set_permissions(&fake_leash, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let exec = script.lines().find(|l| l.trim_start().starts_with("exec ")).unwrap();
    let binary = exec.split_whitespace().nth(1).unwrap();
    let socket_line = script.lines().find_map(|l| l.trim().strip_prefix("socket=")).unwrap();
    let script = script.replace(socket_line, socket.to_str().unwrap()).replace(binary, fake_leash.to_str().unwrap());
    let path = dir.join("wrapper.sh");
    std::fs::write(&path, &script).unwrap();

    let run = |policy: &str| -> Vec<String> {
        let out = Command::new("sh")
            .arg(&path)
            .args(["-p", "two words"])
            .env("LEASH_POLICY", policy)
            .output()
            .expect("running the wrapper");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
    };
    let socket = socket.to_str().unwrap().to_owned();
    assert_eq!(
        run("strict"),
        ["confine", "--socket", &socket, "--policy", "strict", "--", "claude", "-p", "two words"]
    );
    // No annotation: no --policy, the daemon applies the node's default.
    assert_eq!(run(""), ["confine", "--socket", &socket, "--", "claude", "-p", "two words"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `--flags` among `args`.
fn flags(args: &[String]) -> BTreeSet<&str> {
    args.iter().map(String::as_str).filter(|a| a.starts_with("--") && *a != "--").collect()
}

#[test]
fn the_manifests_use_only_flags_leash_has() {
    let help = |command: &str| {
        let out = leash_tests::leash(&[command, "--help"]).output().expect("running leash");
        assert!(out.status.success(), "leash {command} --help: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let m = manifests();
    let args = m.daemon_container().args.clone().unwrap_or_default();
    let daemon_help = help("daemon");
    for flag in flags(&args) {
        assert!(daemon_help.contains(&format!("{flag} ")), "leash daemon has no {flag}");
    }
    let (_, script) = wrapper(&m);
    let exec = script.lines().find(|l| l.trim_start().starts_with("exec ")).unwrap();
    let words: Vec<String> =
        exec.split_whitespace().map(|w| w.trim_start_matches("${LEASH_POLICY:+").to_owned()).collect();
    assert_eq!(words.get(2).map(String::as_str), Some("confine"));
    let confine_help = help("confine");
    for flag in flags(&words) {
        assert!(confine_help.contains(&format!("{flag} ")), "leash confine has no {flag}");
    }
}
