//! The `node` suite (`cargo xtask node-test`): deploy/'s DaemonSet and runner pod, run as
//! containers by a real containerd and runc on a kernel with full cgroup v2 and BPF-LSM.
//!
//! There is no kubelet and no API server (neither can be had on these machines). Their parts are
//! played here, in the open:
//! - the kubelet: each container's `ctr run` arguments are translated from the manifests by
//!   `leash_tests::node_spec` (volumes, env, security context, resources, hostPID, the cgroupfs
//!   driver's cgroup path); a pod's network namespace is held by a thread of this process, as the
//!   pause container holds it for a kubelet's pod;
//! - the API server: `leash_tests::kube_api::FakeApi`, listening in the daemon pod's network
//!   namespace, is what the daemon's in-cluster configuration reaches;
//! - the cluster admin: the secret the runner reads, and the test's additions, each in
//!   [`TestOverlay`].
//!
//! The stand-in agent (`node-agent.sh`, installed as `claude` in the agent image xtask builds)
//! reports what it could do; the suite also looks at the containers from the node (their
//! capabilities, their cgroups) and acts on them as a cluster would: it kills the daemon's
//! container and starts a new one while the agent runs, then removes the runner pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod as KubePod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use leash_tests::kube_api::{FakeApi, NODE};
use leash_tests::manifests::{parse_object, yaml_documents, Object};
use leash_tests::node_spec::{ApiAccess, CtrRun, Node, Pod};
use leash_tests::upstream::Upstream;

use super::*;

const MANIFESTS: [(&str, &str); 3] = [
    ("daemonset.yaml", include_str!("../../../../deploy/daemonset.yaml")),
    ("configmap.yaml", include_str!("../../../../deploy/configmap.yaml")),
    ("runner-pod.yaml", include_str!("../../../../deploy/runner-pod.yaml")),
];

/// The OCI archives xtask put in the VM image.
const IMAGES: &str = "/var/lib/leash-node/images";
const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
const KUBELET_ROOT: &str = "/var/lib/kubelet";
const LOGS: &str = "/var/log/leash-node";
/// runc behind the wrapper that applies what ctr cannot say (`runc_cri`).
const RUNC_WRAPPER: &str = "/bin/runc_cri";
/// The daemon's socket on the node (the DaemonSet's `socket` hostPath).
const NODE_SOCKET: &str = "/run/leash/sock/leash.sock";
/// The agent image holds this file (readable by anyone); the test's policy denies opening it.
const AGENT_SECRET: &str = "/etc/node-test/secret";
/// The value of the runner's `anthropic` secret: what the upstream must see, never the agent.
const API_KEY: &str = "sk-node-test-0123456789abcdef";
const TEST_POLICY: &str = "node-test";
/// Under TCG a cold start of a container is slow: the longest wait for one step.
const WAIT: Duration = Duration::from_secs(240);

/// What the test adds to the manifests, and nothing else: a policy for the local servers (the
/// ConfigMap's `hardened` policy with one more endpoint and file), the runner pod's annotation
/// naming it, the secret the runner pod reads, and the trust root of the local servers.
struct TestOverlay;

impl TestOverlay {
    /// `hardened.yaml` plus an endpoint for the local HTTPS server (which receives the API key),
    /// one for a local HTTP server that only curl may use (a `binaries:` rule, which needs the
    /// daemon's connection owners), and the agent image's secret file in `deny_open`.
    fn policy(hardened: &str, upstream_port: u16, curl_only_port: u16) -> Result<String, String> {
        let mut policy: serde_json::Value =
            serde_norway::from_str(hardened).map_err(|e| format!("hardened.yaml: {e}"))?;
        policy["network_policies"]["node_test"] = serde_json::json!({
            "name": "node_test",
            "endpoints": [{ "host": "127.0.0.1", "port": upstream_port, "protocol": "rest", "access": "full" }],
        });
        policy["network_policies"]["node_test_curl_only"] = serde_json::json!({
            "name": "node_test_curl_only",
            "endpoints": [{ "host": "127.0.0.1", "port": curl_only_port, "protocol": "rest", "access": "full" }],
            "binaries": [{ "path": "/usr/bin/curl" }],
        });
        let hosts = policy["credentials"]["ANTHROPIC_API_KEY"]["hosts"]
            .as_array_mut()
            .ok_or("hardened.yaml binds no ANTHROPIC_API_KEY")?;
        hosts.push("127.0.0.1".into());
        let deny = policy["kernel"]["deny_open"].as_array_mut().ok_or("hardened.yaml has no kernel.deny_open")?;
        deny.push(AGENT_SECRET.into());
        serde_norway::to_string(&policy).map_err(|e| e.to_string())
    }
}

/// The suite's results, in order; a failed step that the rest needs ends the suite.
#[derive(Default)]
struct Report(Vec<(String, Result<String, String>)>);

impl Report {
    fn check(&mut self, name: &str, result: Result<String, String>) -> bool {
        let ok = result.is_ok();
        self.0.push((format!("node:{name}"), result));
        ok
    }

    fn step<T>(&mut self, name: &str, result: Result<(T, String), String>) -> Option<T> {
        match result {
            Ok((value, detail)) => {
                self.check(name, Ok(detail));
                Some(value)
            }
            Err(e) => {
                self.check(name, Err(e));
                None
            }
        }
    }
}

pub fn node_suite() -> Vec<Check> {
    let mut report = Report::default();
    let started = Instant::now();
    // Every early return has recorded its failed step, but for a missing object of the spec.
    if run(&mut report, started).is_none() && report.0.iter().all(|(_, r)| r.is_ok()) {
        report.check("suite", Err("ended early: a manifest lacks an object the suite needs".into()));
    }
    // For whoever reads the console log of a failed run: what containerd and each container said.
    if report.0.iter().any(|(_, r)| r.is_err()) {
        for entry in std::fs::read_dir(LOGS).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(60)..] {
                println!("node-log {}: {line}", entry.file_name().to_string_lossy());
            }
        }
    }
    report.0.into_iter().map(|(name, result)| Check::new(name, move || result)).collect()
}

fn run(report: &mut Report, started: Instant) -> Option<()> {
    let containerd = report.step("containerd", Containerd::launch())?;
    let default_caps = report.step("runtime-default-capabilities", default_capabilities())?;
    for archive in ["leash.oci.tar", "agent.oci.tar"] {
        report.step(&format!("import-{archive}"), import(&format!("{IMAGES}/{archive}")))?;
    }
    let manifests = report.step("manifests", Manifests::read())?;

    // The daemon's pod: its network namespace, with the API server's stand-in listening in it.
    // The pods it knows: the runner, and a fake pod outside containers (the latency's peer).
    let (runner_uid, fake_pod_uid) = (uuid(), uuid());
    let daemon_net = report.step("daemon-pod-network", PodNetwork::new())?;
    let api_dir = PathBuf::from("/var/lib/node-test/api");
    let _ = std::fs::create_dir_all(&api_dir);
    let pods =
        vec![(runner_uid.clone(), Some(TEST_POLICY.to_owned())), (fake_pod_uid.clone(), Some(TEST_POLICY.to_owned()))];
    let api = daemon_net.run(move || FakeApi::start(&api_dir, pods));
    let (api_host, api_port) = api.addr.rsplit_once(':').map(|(h, p)| (h.to_owned(), p.parse().unwrap_or(0)))?;

    // The runner's pod network holds the local servers: the allowed HTTPS one, and one the
    // policy does not name.
    let runner_net = report.step("runner-pod-network", PodNetwork::new())?;
    let (upstream, denied, curl_only) = runner_net.run(|| (Upstream::https(), Upstream::plain(), Upstream::plain()));
    let hardened = manifests.policy_text("hardened.yaml")?;
    let policy = TestOverlay::policy(&hardened, upstream.port(), curl_only.port());
    let policy = report.step("test-policy", policy.map(|p| (p, String::new())))?;

    let mut node = Node {
        name: NODE.to_owned(),
        root: PathBuf::from(KUBELET_ROOT),
        config_maps: manifests.config_maps.clone(),
        volumes: manifests.volumes.clone(),
        claims: manifests.claims.clone(),
        secrets: BTreeMap::from([(("leash-runners".into(), "anthropic".into(), "api-key".into()), API_KEY.into())]),
        api: Some(ApiAccess {
            host: api_host,
            port: api_port,
            token_file: api.token_file.clone(),
            ca_file: api.ca_file.clone(),
        }),
        default_caps,
    };
    manifests.add_policy(&mut node, &format!("{TEST_POLICY}.yaml"), &policy)?;

    // The daemon.
    let daemon_pod = manifests.daemon_pod();
    let daemon = report.step("daemon-start", start_pod_container(&containerd, &node, &daemon_pod, &daemon_net, 0))?;
    report.step("daemon-socket", wait_for_socket(&daemon))?;
    report.check("daemon-ready", readiness(&daemon_net, &manifests.daemon_set));
    report.check("daemon-security-context", daemon_process_checks(&daemon, &manifests.daemon_set));

    // The runner pod: its init container copies leash, then the agent runs.
    let runner = manifests.runner_pod(&runner_uid);
    let runner_pod = Pod { meta: &runner.metadata, spec: runner.spec.as_ref()?, uid: runner_uid.clone() };
    let volumes = report.step("runner-volumes", runner_pod.prepare_volumes(&node).map(|v| (v, String::new())))?;
    let workspace = volumes.get("workspace")?.clone();
    report.step("runner-workspace", write_test_env(&workspace, &upstream, &denied, &curl_only))?;
    let init = runner_pod.spec.init_containers.as_ref()?.first()?;
    let init_run = runner_pod.container_run(&node, init, &volumes, Path::new(&runner_net.path), &container_id());
    report.step("runner-init-container", init_run.and_then(|r| containerd.run_to_end(&r)))?;
    let agent_container = runner_pod.spec.containers.first()?;
    let agent_run =
        runner_pod.container_run(&node, agent_container, &volumes, Path::new(&runner_net.path), &container_id());
    let agent = report.step("runner-start", agent_run.and_then(|r| containerd.start(&r)))?;
    let agent_out = report.step("agent-ran", agent.wait_for_line("AGENT done", WAIT))?;
    let first_request = upstream.seen().first().map(|_| started.elapsed());
    agent_checks(report, &agent_out, &upstream, &denied, &curl_only);
    report.check(
        "figure-start-to-first-confined-request",
        first_request
            .map(|t| format!("{:.1} s from the suite's start (containerd, imports, daemon, runner)", t.as_secs_f64()))
            .ok_or_else(|| "no request reached the upstream".to_owned()),
    );
    runner_container_checks(report, &agent);
    report.check("figure-confine-latency", confine_latency(&agent, &fake_pod_uid));

    // The daemon's container killed and a new one started while the agent runs.
    restart_checks(report, &containerd, &node, &daemon_pod, &daemon, &daemon_net, &agent, &denied)?;

    // The runner pod removed: the daemon collects its sandbox.
    removal_checks(report, &agent, &workspace, &api, &runner_uid, &daemon_net);
    drop(containerd);
    Some(())
}

// ---------------------------------------------------------------------------------------------
// containerd

/// containerd, started for this boot (CRI plugin off: ctr speaks its own API), stopped on drop.
struct Containerd(std::process::Child);

impl Containerd {
    fn launch() -> Result<(Self, String), String> {
        std::fs::create_dir_all("/etc/containerd").map_err(|e| e.to_string())?;
        std::fs::create_dir_all(LOGS).map_err(|e| e.to_string())?;
        std::fs::write(
            CONTAINERD_CONFIG,
            format!(
                "version = 2\nroot = \"/var/lib/containerd\"\nstate = \"/run/containerd\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{CONTAINERD_SOCKET}\"\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(format!("{LOGS}/containerd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("/usr/bin/containerd")
            .args(["--config", CONTAINERD_CONFIG])
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting containerd: {e}"))?;
        let containerd = Containerd(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Path::new(CONTAINERD_SOCKET).exists() {
            if Instant::now() > deadline {
                return Err(format!("containerd made no socket in 60 s: {}", tail(&format!("{LOGS}/containerd.log"))));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let version = ctr(&["version"])
            .map(|o| o.stdout.lines().filter(|l| l.contains("Version")).collect::<Vec<_>>().join(", "))?;
        Ok((containerd, version))
    }

    /// Runs `run` in the foreground to its end; fails unless it exits 0.
    fn run_to_end(&self, run: &CtrRun) -> Result<(Running, String), String> {
        let out = self.ctr_run(run, &[])?;
        Ok((Running::of(run, PathBuf::new()), out.describe()))
    }

    /// Starts `run` detached, its output in a log file.
    fn start(&self, run: &CtrRun) -> Result<(Running, String), String> {
        let log = PathBuf::from(format!("{LOGS}/{}.log", &run.id[..12]));
        self.ctr_run(run, &["--detach".into(), "--log-uri".into(), format!("file://{}", log.display())])?;
        Ok((Running::of(run, log), format!("{} in /sys/fs/cgroup/{}", run.image, run.cgroup)))
    }

    /// `ctr run` of `run` through the runc wrapper, with `flags`; fails unless it exits 0.
    fn ctr_run(&self, run: &CtrRun, flags: &[String]) -> Result<Output, String> {
        let mut args = vec!["run".to_owned(), "--runc-binary".into(), RUNC_WRAPPER.into()];
        args.extend_from_slice(flags);
        args.extend(run.argv());
        let out = ctr(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        if out.status != Some(0) {
            return Err(format!("{}: {}", run.id, out.describe()));
        }
        Ok(out)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A started container.
struct Running {
    id: String,
    cgroup: String,
    /// `uid:gid` of its processes (and of `exec`s in it).
    user: String,
    log: PathBuf,
}

impl Running {
    fn of(run: &CtrRun, log: PathBuf) -> Self {
        Running { id: run.id.clone(), cgroup: run.cgroup.clone(), user: run.user.clone(), log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a line of output holding `needle`; returns the output so far.
    fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<(String, String), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if out.contains(needle) {
                return Ok((out, String::new()));
            }
            if Instant::now() > deadline || !self.alive() {
                return Err(format!("no {needle:?} within {} s; output: {}", timeout.as_secs(), out.trim()));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The container's init process, from the node's PID namespace.
    fn pid(&self) -> Option<i32> {
        let out = ctr(&["task", "ls"]).ok()?;
        out.stdout.lines().find(|l| l.starts_with(&self.id))?.split_whitespace().nth(1)?.parse().ok()
    }

    fn alive(&self) -> bool {
        ctr(&["task", "ls"]).is_ok_and(|o| o.stdout.lines().any(|l| l.starts_with(&self.id) && l.contains("RUNNING")))
    }

    /// `ctr task exec` of `argv` in the container: its user, capabilities, seccomp, namespaces.
    fn exec(&self, argv: &[&str]) -> Result<Output, String> {
        let exec_id = format!("exec-{}", &container_id()[..8]);
        let mut args = vec!["task", "exec", "--exec-id", &exec_id, "--user", &self.user, &self.id];
        args.extend_from_slice(argv);
        ctr(&args)
    }

    /// SIGKILL, then the task and the container deleted (the snapshot with it).
    fn remove(&self) -> Result<String, String> {
        let _ = ctr(&["task", "kill", "--signal", "SIGKILL", &self.id]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let task = ctr(&["task", "delete", &self.id])?;
        let container = ctr(&["container", "delete", &self.id])?;
        if container.status != Some(0) {
            return Err(format!("ctr container delete: {} (task delete: {})", container.describe(), task.describe()));
        }
        Ok(format!("{} removed", &self.id[..12]))
    }
}

fn ctr(args: &[&str]) -> Result<Output, String> {
    output(
        Command::new("/usr/bin/ctr")
            .args(args)
            .env("CONTAINERD_ADDRESS", CONTAINERD_SOCKET)
            .env("CONTAINERD_NAMESPACE", "k8s.io")
            .env("CONTAINERD_SNAPSHOTTER", "native"),
    )
}

/// The runtime's default capability set, as ctr builds a container's spec.
fn default_capabilities() -> Result<(Vec<String>, String), String> {
    let out = ctr(&["oci", "spec"])?;
    let spec: serde_json::Value = serde_json::from_str(&out.stdout).map_err(|e| format!("ctr oci spec: {e}"))?;
    let caps: Vec<String> = spec["process"]["capabilities"]["bounding"]
        .as_array()
        .ok_or("ctr oci spec has no bounding set")?
        .iter()
        .filter_map(|c| c.as_str().map(str::to_owned))
        .collect();
    let detail = caps.join(" ");
    Ok((caps, detail))
}

fn import(archive: &str) -> Result<((), String), String> {
    let started = Instant::now();
    let out = ctr(&["images", "import", archive])?;
    if out.status != Some(0) {
        return Err(out.describe());
    }
    Ok(((), format!("{} in {:.1} s", out.stdout.trim(), started.elapsed().as_secs_f64())))
}

// ---------------------------------------------------------------------------------------------
// The manifests, read as the API objects they are

struct Manifests {
    daemon_set: DaemonSet,
    config_maps: Vec<ConfigMap>,
    volumes: Vec<PersistentVolume>,
    claims: Vec<PersistentVolumeClaim>,
    runner: KubePod,
}

impl Manifests {
    fn read() -> Result<(Self, String), String> {
        let (mut daemon_sets, mut config_maps, mut volumes, mut claims, mut pods) =
            (vec![], vec![], vec![], vec![], vec![]);
        for (file, text) in MANIFESTS {
            for doc in yaml_documents(file, text)? {
                match parse_object(&doc).map_err(|e| format!("{file}: {e}"))? {
                    Object::DaemonSet(d) => daemon_sets.push(*d),
                    Object::ConfigMap(c) => config_maps.push(c),
                    Object::PersistentVolume(v) => volumes.push(*v),
                    Object::PersistentVolumeClaim(c) => claims.push(*c),
                    Object::Pod(p) => pods.push(*p),
                    _ => {}
                }
            }
        }
        let [daemon_set] = <[DaemonSet; 1]>::try_from(daemon_sets).map_err(|d| format!("{} DaemonSets", d.len()))?;
        let [runner] = <[KubePod; 1]>::try_from(pods).map_err(|p| format!("{} Pods", p.len()))?;
        let detail = format!("{} ConfigMaps, {} PVs, {} PVCs", config_maps.len(), volumes.len(), claims.len());
        Ok((Manifests { daemon_set, config_maps, volumes, claims, runner }, detail))
    }

    fn policies_map(&self) -> Result<&ConfigMap, String> {
        self.config_maps
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some("leash-policies"))
            .ok_or_else(|| "no ConfigMap leash-policies".into())
    }

    fn policy_text(&self, key: &str) -> Option<String> {
        self.policies_map().ok()?.data.as_ref()?.get(key).cloned()
    }

    /// The policies ConfigMap as the node sees it, with `key` added (the test's overlay).
    fn add_policy(&self, node: &mut Node, key: &str, text: &str) -> Option<()> {
        let map = node.config_maps.iter_mut().find(|c| c.metadata.name.as_deref() == Some("leash-policies"))?;
        map.data.get_or_insert_with(Default::default).insert(key.to_owned(), text.to_owned());
        Some(())
    }

    /// The DaemonSet's pod on this node: its template, in the DaemonSet's namespace.
    fn daemon_pod(&self) -> (ObjectMeta, PodSpec, String) {
        let template = self.daemon_set.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
        let mut meta = template.metadata.unwrap_or_default();
        meta.namespace = self.daemon_set.metadata.namespace.clone();
        meta.name = Some(format!("leash-{}", &uuid()[..5]));
        (meta, template.spec.unwrap_or_default(), uuid())
    }

    /// The runner pod, with the test's policy named in its annotation, and leash's proxy told to
    /// trust the local HTTPS server (`SSL_CERT_FILE`, which [`write_test_env`] fills).
    fn runner_pod(&self, uid: &str) -> KubePod {
        let mut pod = self.runner.clone();
        pod.metadata.uid = Some(uid.to_owned());
        pod.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("leash.dev/policy".into(), TEST_POLICY.into());
        if let Some(agent) = pod.spec.as_mut().and_then(|s| s.containers.first_mut()) {
            agent.env.get_or_insert_with(Vec::new).push(k8s_openapi::api::core::v1::EnvVar {
                name: "SSL_CERT_FILE".into(),
                value: Some("/workspace/.node-test/upstream-ca.pem".into()),
                value_from: None,
            });
        }
        pod
    }
}

/// Starts the one container of a (daemon) pod.
fn start_pod_container(
    containerd: &Containerd,
    node: &Node,
    (meta, spec, uid): &(ObjectMeta, PodSpec, String),
    net: &PodNetwork,
    index: usize,
) -> Result<(Running, String), String> {
    let pod = Pod { meta, spec, uid: uid.clone() };
    let volumes = pod.prepare_volumes(node)?;
    let container = spec.containers.get(index).ok_or("no container")?;
    let run = pod.container_run(node, container, &volumes, Path::new(&net.path), &container_id())?;
    containerd.start(&run)
}

fn wait_for_socket(daemon: &Running) -> Result<((), String), String> {
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(NODE_SOCKET).is_err() {
        if started.elapsed() > WAIT || !daemon.alive() {
            return Err(format!("no daemon socket at {NODE_SOCKET}; daemon output: {}", daemon.output().trim()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(((), format!("{NODE_SOCKET} answers after {:.1} s", started.elapsed().as_secs_f64())))
}

/// The DaemonSet's (first and only) container.
fn daemon_container(daemon_set: &DaemonSet) -> Result<&k8s_openapi::api::core::v1::Container, String> {
    daemon_set
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .ok_or_else(|| "no container".to_owned())
}

/// The readiness probe of the DaemonSet, as the kubelet would run it, from the pod's network.
fn readiness(net: &PodNetwork, daemon_set: &DaemonSet) -> Result<String, String> {
    let container = daemon_container(daemon_set)?;
    let probe =
        container.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).ok_or("no httpGet readiness probe")?;
    let port = match &probe.port {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(p) => *p,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .ok_or_else(|| format!("no port named {name}"))?,
    };
    let path = probe.path.clone().unwrap_or_else(|| "/".into());
    let deadline = Instant::now() + WAIT;
    loop {
        let path = path.clone();
        let answer = net.run(move || http_get(port as u16, &path));
        match answer {
            Ok((200, _)) => return Ok(format!("GET :{port}{} -> 200", probe.path.as_deref().unwrap_or("/"))),
            other if Instant::now() > deadline => return Err(format!("readiness: {other:?}")),
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// Capability numbers, by name (`linux/capability.h`).
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// What the daemon's process holds, read from the node: uid 0 with exactly the capabilities the
/// DaemonSet adds (after dropping all), containerd's default seccomp filter, and the node's PID
/// namespace.
fn daemon_process_checks(daemon: &Running, daemon_set: &DaemonSet) -> Result<String, String> {
    let container = daemon_container(daemon_set)?;
    let added = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default();
    let mut want = 0u64;
    for name in &added {
        let bit = CAPABILITIES.iter().position(|c| c == name).ok_or_else(|| format!("unknown capability {name}"))?;
        want |= 1 << bit;
    }
    let pid = daemon.pid().ok_or("no daemon task")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("").to_owned();
    let eff = u64::from_str_radix(&field("CapEff:"), 16).map_err(|e| e.to_string())?;
    let same_pid_ns =
        std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok() == std::fs::read_link("/proc/1/ns/pid").ok();
    let detail = format!(
        "pid {pid}: uid {}, CapEff {eff:#x} (the DaemonSet's {}), Seccomp {}, NoNewPrivs {}, node PID namespace {same_pid_ns}",
        field("Uid:").split_whitespace().next().unwrap_or("?"),
        added.join(" "),
        field("Seccomp:"),
        field("NoNewPrivs:")
    );
    let ok = eff == want && field("Seccomp:") == "2" && same_pid_ns && field("Uid:").starts_with('0');
    if ok {
        Ok(detail)
    } else {
        Err(format!("{detail}; want CapEff {want:#x}, a seccomp filter, the node PID namespace, uid 0"))
    }
}

// ---------------------------------------------------------------------------------------------
// The runner pod

/// What the stand-in agent reads: the servers' ports, and the local HTTPS server's trust root
/// (the test's overlay sets `SSL_CERT_FILE` to it for leash's proxy).
fn write_test_env(
    workspace: &Path,
    upstream: &Upstream,
    denied: &Upstream,
    curl_only: &Upstream,
) -> Result<((), String), String> {
    let dir = workspace.join(".node-test");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let env = format!("UPSTREAM={}\nDENIED={}\nCURL_ONLY={}\n", upstream.port(), denied.port(), curl_only.port());
    std::fs::write(dir.join("env"), env).map_err(|e| e.to_string())?;
    std::fs::copy(&upstream.ca_pem, dir.join("upstream-ca.pem")).map_err(|e| e.to_string())?;
    set_mode(&dir.to_string_lossy(), 0o777);
    Ok(((), format!("upstream :{}, unlisted :{}", upstream.port(), denied.port())))
}

/// The outcome of each attempt the agent reported, against what the policy allows.
fn agent_checks(report: &mut Report, out: &str, upstream: &Upstream, denied: &Upstream, curl_only: &Upstream) {
    let lines: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.strip_prefix("AGENT ")?.split_once(' ')).collect();
    // A connection that ignores the proxy is redirected to it and refused there: an HTTP 403,
    // or a closed connection (curl's 000).
    let want: [(&str, &[&str]); 9] = [
        ("uid", &["1000"]),
        ("allowed-https", &["200"]),
        ("unlisted-through-proxy", &["403"]),
        ("unlisted-direct", &["403", "000"]),
        ("open", &["EPERM"]),
        ("ptrace-attach", &["EPERM"]),
        ("write-workspace", &["ok"]),
        // `binaries: [/usr/bin/curl]`: curl is served, busybox's wget is not.
        ("curl-only-by-curl", &["200"]),
        ("curl-only-by-wget", &["refused"]),
    ];
    for (name, expected) in want {
        let got = lines.get(name).copied().unwrap_or("(not reported)");
        let result =
            if expected.contains(&got) { Ok(got.to_owned()) } else { Err(format!("{got}, want {expected:?}")) };
        report.check(&format!("agent-{name}"), result);
    }
    let key = lines.get("api-key").copied().unwrap_or("");
    report.check(
        "agent-holds-a-placeholder",
        if !key.is_empty() && key != API_KEY {
            Ok(format!("{key:.24}..."))
        } else {
            Err(format!("agent's ANTHROPIC_API_KEY: {key:?}"))
        },
    );
    let seen: Vec<String> = upstream.seen().iter().map(|s| s.header("x-api-key").unwrap_or("").to_owned()).collect();
    report.check(
        "upstream-got-the-real-key",
        if !seen.is_empty() && seen.iter().all(|k| k == API_KEY) {
            Ok(format!("{} requests", seen.len()))
        } else {
            Err(format!("keys seen: {seen:?}"))
        },
    );
    report.check(
        "curl-only-server-reached-by-curl-alone",
        if curl_only.count() == 1 { Ok("1 request".into()) } else { Err(format!("{} requests", curl_only.count())) },
    );
    report.check(
        "unlisted-server-reached-by-nothing",
        if denied.count() == 0 { Ok("0 connections".into()) } else { Err(format!("{} requests", denied.count())) },
    );
}

/// The runner container itself, outside leash's sandbox (`ctr task exec`): no BPF, a read-only
/// root and socket directory, no view of the daemon's state; the agent's secret file is readable
/// there (so the agent's EACCES came from leash's policy).
fn runner_container_checks(report: &mut Report, agent: &Running) {
    let probe = "/usr/local/bin/lsm_probe";
    let attempts: [(&str, &[&str], &str); 5] = [
        ("runner-cannot-load-bpf", &[probe, "--attempt", "bpf-map-create"], "EPERM"),
        ("runner-root-is-read-only", &[probe, "--attempt", "open-write", "/node-test-write"], "EROFS"),
        (
            "runner-cannot-write-the-socket-directory",
            &[probe, "--attempt", "open-write", "/run/leash/intruder"],
            "EROFS",
        ),
        ("runner-cannot-see-daemon-state", &[probe, "--attempt", "open", "/run/leash/state"], "ENOENT"),
        ("control-secret-readable-outside-the-sandbox", &[probe, "--attempt", "open", AGENT_SECRET], "ok"),
    ];
    for (name, argv, want) in attempts {
        let result = agent.exec(argv).and_then(|o| {
            let got = o
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("AGENT "))
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or("")
                .to_owned();
            if got == want {
                Ok(got)
            } else {
                Err(format!("want {want}; {}", o.describe()))
            }
        });
        report.check(name, result);
    }
}

/// Confine latency through the Confine API (what `cargo xtask bench confine` measures: fork a
/// child, have the daemon confine it, kill it), as the pod's user inside the runner container,
/// against the same from a process of a fake pod outside any container (a cgroup of the kubelet's
/// layout made by hand, as the `daemon` suite and the bench use), in the same VM and run.
fn confine_latency(agent: &Running, fake_pod_uid: &str) -> Result<String, String> {
    const CYCLES: &str = "40";
    let parse = |out: Output| -> Result<(f64, f64), String> {
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).map_err(|_| out.describe())?;
        if v["errors"] != 0 {
            return Err(out.describe());
        }
        Ok((v["median_us"].as_f64().unwrap_or(0.0) / 1e3, v["p99_us"].as_f64().unwrap_or(0.0) / 1e3))
    };
    let inside = parse(agent.exec(&[
        "/usr/local/bin/podclient",
        "--cgroup",
        "-",
        "cycles",
        "/run/leash/leash.sock",
        CYCLES,
    ])?)?;
    let container = format!("/sys/fs/cgroup/kubepods/besteffort/pod{fake_pod_uid}/{}", container_id());
    std::fs::create_dir_all(&container).map_err(|e| e.to_string())?;
    let outside = output(Command::new("/bin/podclient").args([
        "--cgroup",
        &container,
        "--uid",
        "1000",
        "cycles",
        NODE_SOCKET,
        CYCLES,
    ]));
    let _ = std::fs::remove_dir(&container);
    let outside = parse(outside?)?;
    Ok(format!(
        "median {:.2} ms, p99 {:.2} ms in the runner container; {:.2} / {:.2} ms in a fake pod outside containers \
         (ratio {:.2} on the median; {CYCLES} confines each, under emulation)",
        inside.0,
        inside.1,
        outside.0,
        outside.1,
        inside.0 / outside.0
    ))
}

// ---------------------------------------------------------------------------------------------
// The daemon replaced, the runner removed

#[allow(clippy::too_many_arguments)]
fn restart_checks(
    report: &mut Report,
    containerd: &Containerd,
    node: &Node,
    daemon_pod: &(ObjectMeta, PodSpec, String),
    daemon: &Running,
    daemon_net: &PodNetwork,
    agent: &Running,
    denied: &Upstream,
) -> Option<()> {
    report.step("daemon-killed", daemon.remove().map(|d| ((), d)))?;
    let gap_started = agent.output().lines().count();
    // The agent goes on trying while no daemon runs.
    std::thread::sleep(Duration::from_secs(5));
    let (meta, spec, _) = daemon_pod;
    let replacement = (meta.clone(), spec.clone(), uuid());
    let new_daemon =
        report.step("daemon-replaced", start_pod_container(containerd, node, &replacement, daemon_net, 0))?;
    report.step("daemon-replaced-socket", wait_for_socket(&new_daemon))?;
    let adopted = wait_for_metric(daemon_net, "leash_sandboxes_active", |v| v >= 1.0);
    report.check("new-daemon-adopts-the-sandbox", adopted);
    // Loop lines after the replacement: the agent is still confined, and served.
    std::thread::sleep(Duration::from_secs(3));
    let out = agent.output();
    let loops: Vec<&str> = out.lines().skip(gap_started).filter_map(|l| l.strip_prefix("AGENT loop ")).collect();
    report.check(
        "agent-confined-throughout",
        if loops.len() >= 3 && denied.count() == 0 {
            Ok(format!(
                "{} direct attempts while and after the daemon was replaced, none reached the unlisted server",
                loops.len()
            ))
        } else {
            Err(format!("{} attempts ({loops:?}); the unlisted server saw {}", loops.len(), denied.count()))
        },
    );
    let served_after = loops.iter().rev().take(2).any(|l| l.starts_with("200"));
    report.check(
        "agent-served-after-replacement",
        if served_after { Ok(format!("last: {:?}", loops.last())) } else { Err(format!("{loops:?}")) },
    );
    Some(())
}

fn removal_checks(
    report: &mut Report,
    agent: &Running,
    workspace: &Path,
    api: &FakeApi,
    runner_uid: &str,
    daemon_net: &PodNetwork,
) {
    let _ = std::fs::write(workspace.join(".node-test/stop"), "");
    let sandboxes_before = sandbox_cgroups(&agent.cgroup);
    report.check("runner-removed", agent.remove());
    api.delete_pod(runner_uid);
    let collected = wait_for_metric(daemon_net, "leash_sandboxes_active", |v| v == 0.0);
    let left = sandbox_cgroups(&agent.cgroup);
    report.check(
        "runner-sandbox-collected",
        match collected {
            Ok(d) if left.is_empty() && !sandboxes_before.is_empty() => {
                Ok(format!("{d}; {} sandbox cgroup(s) before, none after", sandboxes_before.len()))
            }
            other => Err(format!("{other:?}; sandbox cgroups before {sandboxes_before:?}, after {left:?}")),
        },
    );
}

/// leash sandbox cgroups below the container's cgroup.
fn sandbox_cgroups(container_cgroup: &str) -> Vec<String> {
    let dir = Path::new("/sys/fs/cgroup").join(container_cgroup);
    std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("leash-"))
                .collect()
        })
        .unwrap_or_default()
}

fn wait_for_metric(net: &PodNetwork, name: &'static str, ok: impl Fn(f64) -> bool) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    while Instant::now() < deadline {
        let body = net.run(|| http_get(9464, "/metrics"));
        if let Ok((200, body)) = &body {
            last = body.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok());
            if last.is_some_and(&ok) {
                return Ok(format!("{name} {}", last.unwrap_or_default()));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("{name} is {last:?} after 60 s"))
}

// ---------------------------------------------------------------------------------------------
// Pod networks

/// A pod's network namespace (loopback only), held by a thread of this process as the pause
/// container holds a kubelet pod's; work that must listen or connect inside it runs there.
struct PodNetwork {
    /// `/proc/<pid>/task/<tid>/ns/net`, for `ctr run --with-ns`.
    path: String,
    jobs: mpsc::Sender<Box<dyn FnOnce() + Send>>,
}

impl PodNetwork {
    fn new() -> Result<(Self, String), String> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (jobs, queue) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::spawn(move || {
            // SAFETY: unshare and gettid have no memory-safety preconditions; CLONE_NEWNET moves
            // only this thread.
            let made = if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                Err(std::io::Error::last_os_error().to_string())
            } else {
                loopback_up().map(|()| unsafe { libc::gettid() }).map_err(|e| e.to_string())
            };
            let _ = ready_tx.send(made);
            for job in queue {
                job();
            }
        });
        let tid = ready_rx.recv().map_err(|e| e.to_string())??;
        let path = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
        Ok((PodNetwork { path: path.clone(), jobs }, path))
    }

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs.send(Box::new(move || drop(tx.send(f())))).expect("the pod network's thread runs");
        rx.recv().expect("the pod network's thread answers")
    }
}

/// A plain HTTP GET to 127.0.0.1:`port` (in the calling thread's network namespace).
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    leash_tests::http_get(&format!("127.0.0.1:{port}"), path).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A container id as containerd's CRI plugin makes them: 64 hex digits.
fn container_id() -> String {
    random_hex(32)
}

/// A pod uid as the API server makes them.
fn uuid() -> String {
    let h = random_hex(16);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn tail(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join(" | ")
}
