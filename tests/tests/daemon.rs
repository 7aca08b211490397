//! `leash daemon` and `leash confine` on this host's kernel, with a simulated kubelet cgroup tree
//! (systemd and cgroupfs drivers, containerd and CRI-O container names), a bpffs instance of
//! each test's own, and a local HTTPS stand-in for the API server's pods (list and watch,
//! `leash_tests::kube_api`).
//!
//! Every test starts its own daemon; pod processes are `podclient` (which moves itself into a
//! fake container cgroup) or `leash confine` started through it as an unprivileged user.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use leash_tests::kube_api::{FakeApi, Gone};
use leash_tests::{
    cgroup2_root, leash_bin, require_root, stderr, stdout, wait_until, Listener, Scratch, PY_EXEC_AFTER_CONNECT,
};

const NOBODY: &str = "65534";

fn bin(name: &str) -> PathBuf {
    leash_bin().with_file_name(name)
}

/// A kubelet-like cgroup tree, a bpffs instance, a policies directory and (when started) a daemon.
struct Node {
    scratch: Scratch,
    tree: PathBuf,
    bpffs: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    api: Option<FakeApi>,
}

#[derive(Clone, Copy)]
enum Layout {
    SystemdContainerd,
    CgroupfsCrio,
}

/// A fake pod's container cgroup.
struct Pod {
    uid: String,
    /// The container's id as it appears in its cgroup's name.
    id: String,
    container: PathBuf,
}

impl Pod {
    /// A process of this pod that sleeps until killed, once it is in the container's cgroup.
    fn sleeper(&self) -> Child {
        let child = podclient_in(&self.container).arg("sleep").spawn().unwrap();
        let pid = child.id().to_string();
        let procs = self.container.join("cgroup.procs");
        let entered = || std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().any(|l| l == pid));
        assert!(wait_until(5, entered), "podclient did not enter {}", self.container.display());
        child
    }

    /// Another container of the same pod.
    fn sibling(&self, n: u8) -> Pod {
        let id = format!("{n:02x}").repeat(32);
        let name = self.container.file_name().unwrap().to_string_lossy().replace(&self.id, &id);
        let container = self.container.with_file_name(name);
        std::fs::create_dir_all(&container).expect("creating a container cgroup");
        Pod { uid: self.uid.clone(), id, container }
    }

    /// `podclient --cgroup <this container> --uid UID ARGS`, started.
    fn spawn_as(&self, uid: &str, args: &[&str]) -> Child {
        Command::new(bin("podclient"))
            .arg("--cgroup")
            .arg(&self.container)
            .args(["--uid", uid])
            .args(args)
            .spawn()
            .unwrap()
    }
}

impl Node {
    fn new(tag: &str) -> Self {
        require_root();
        let scratch = Scratch::new(&format!("daemon-{tag}"));
        let tree = cgroup2_root().join(format!("leashd-test-{tag}-{}", std::process::id()));
        remove_cgroup_tree(&tree);
        std::fs::create_dir_all(&tree).expect("creating the fake kubelet tree");
        let bpffs = scratch.0.join("bpf");
        std::fs::create_dir_all(&bpffs).unwrap();
        let status = Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&bpffs).status().expect("mount");
        assert!(status.success(), "mounting a bpffs instance");
        std::fs::create_dir_all(scratch.0.join("policies")).unwrap();
        let socket = scratch.0.join("leash.sock");
        Self { scratch, tree, bpffs, socket, daemon: None, api: None }
    }

    /// A node whose daemon serves every pod with the policy `default` (`version: 1`), plus `extra`.
    fn serving_default(tag: &str, extra: &[&str]) -> Self {
        let mut node = Self::new(tag);
        node.policy("default", "version: 1\n");
        node.start(&[&["--default-policy", "default"], extra].concat());
        node
    }

    fn policy(&self, name: &str, yaml: &str) {
        std::fs::write(self.scratch.0.join("policies").join(format!("{name}.yaml")), yaml).unwrap();
    }

    fn pod(&self, layout: Layout, n: u8) -> Pod {
        let uid = format!("0a1b2c3d-4e5f-6789-abcd-ef01234567{n:02x}");
        let id = format!("{:02x}", n).repeat(32);
        let container = match layout {
            Layout::SystemdContainerd => self.tree.join(format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{id}.scope",
                uid.replace('-', "_")
            )),
            Layout::CgroupfsCrio => self.tree.join(format!("kubepods/besteffort/pod{uid}/crio-{id}")),
        };
        std::fs::create_dir_all(&container).expect("creating a container cgroup");
        Pod { uid, id, container }
    }

    fn start(&mut self, extra: &[&str]) -> String {
        self.start_with_capabilities(&daemonset_capabilities(), extra)
    }

    /// The daemon as root with only `capabilities` (names without `CAP_`) in its bounding set,
    /// so in its effective set: what the DaemonSet gives it, unless a test says otherwise.
    fn start_with_capabilities(&mut self, capabilities: &[String], extra: &[&str]) -> String {
        let bounding: Vec<String> = capabilities.iter().map(|c| format!("+{}", c.to_lowercase())).collect();
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--bounding-set=-all,{}", bounding.join(",")))
            .arg("--inh-caps=-all")
            .arg("--")
            .arg(leash_bin());
        cmd.arg("daemon")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--policies")
            .arg(self.scratch.0.join("policies"))
            .arg("--state-dir")
            .arg(self.scratch.0.join("state"))
            .arg("--bpffs")
            .arg(&self.bpffs)
            .args(["--gc-interval-ms", "50"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(api) = &self.api {
            cmd.args(["--kube-api", &api.addr, "--node-name", leash_tests::kube_api::NODE])
                .arg("--kube-token-file")
                .arg(&api.token_file)
                .arg("--kube-ca-file")
                .arg(&api.ca_file);
        }
        let _ = std::fs::remove_file(&self.socket);
        let mut child = cmd.spawn().expect("starting leash daemon");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut log = String::new();
        loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("leash daemon exited while starting: {log}");
            }
            log.push_str(&line);
            if line.contains("serving the Confine API") {
                break;
            }
        }
        // Keep draining stderr so the daemon never blocks on it.
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
        });
        self.daemon = Some(child);
        log
    }

    fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    fn kill_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill().ok();
            d.wait().ok();
        }
    }

    /// `podclient --cgroup <pod> ARGS`, waited for.
    fn podclient(&self, pod: &Pod, args: &[&str]) -> Output {
        podclient_in(&pod.container).args(args).output().expect("podclient")
    }

    /// A request from `pod`; the reply as JSON.
    fn call(&self, pod: &Pod, json: &str, extra: Option<&str>) -> serde_json::Value {
        let socket = self.socket.to_str().unwrap();
        let mut args = vec!["call", socket, json];
        if let Some(e) = extra {
            args.push(e);
        }
        let out = self.podclient(pod, &args);
        serde_json::from_str(stdout(&out).trim())
            .unwrap_or_else(|e| panic!("reply {e}: {} {}", stdout(&out), stderr(&out)))
    }

    /// `leash confine` as nobody in `pod`, running `agent`.
    fn confine(&self, pod: &Pod, extra: &[&str], agent: &[&str]) -> Output {
        self.confine_cmd(pod, extra, agent).output().expect("leash confine")
    }

    fn confine_cmd(&self, pod: &Pod, extra: &[&str], agent: &[&str]) -> Command {
        let mut cmd = Command::new(bin("podclient"));
        cmd.arg("--cgroup")
            .arg(&pod.container)
            .args(["exec", NOBODY, "--"])
            .arg(leash_bin())
            .arg("confine")
            .arg("--socket")
            .arg(&self.socket)
            .args(extra)
            .arg("--")
            .args(agent)
            .current_dir("/")
            .env("HOME", "/");
        cmd
    }

    fn state_files(&self) -> usize {
        std::fs::read_dir(self.scratch.0.join("state")).map(|d| d.count()).unwrap_or(0)
    }

    fn pinned_sandboxes(&self) -> usize {
        std::fs::read_dir(self.bpffs.join("leash/sandboxes")).map(|d| d.count()).unwrap_or(0)
    }

    /// Entries in the pinned sandbox map of every generation.
    fn map_entries(&self) -> usize {
        let mut n = 0;
        for generation in std::fs::read_dir(self.bpffs.join("leash")).unwrap().flatten() {
            let path = generation.path().join("maps/LEASH_SANDBOXES");
            if path.exists() {
                let data = aya::maps::MapData::from_pin(&path).expect("opening the pinned sandbox map");
                let map: aya::maps::HashMap<_, u64, sandbox_common::SandboxNet> =
                    aya::maps::HashMap::try_from(aya::maps::Map::from_map_data(data).unwrap()).unwrap();
                n += map.keys().count();
            }
        }
        n
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_daemon();
        remove_cgroup_tree(&self.tree);
        let _ = Command::new("umount").arg(&self.bpffs).status();
    }
}

/// The capabilities deploy/daemonset.yaml adds for the daemon (after dropping all).
fn daemonset_capabilities() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/daemonset.yaml"))
        .expect("reading deploy/daemonset.yaml");
    let documents = leash_tests::manifests::yaml_documents("daemonset.yaml", &text).expect("daemonset.yaml");
    let daemon_set = match leash_tests::manifests::parse_object(&documents[0]).expect("a DaemonSet") {
        leash_tests::manifests::Object::DaemonSet(d) => d,
        _ => panic!("daemonset.yaml holds no DaemonSet"),
    };
    let container = &daemon_set.spec.expect("spec").template.spec.expect("pod spec").containers[0];
    let added = container.security_context.as_ref().and_then(|s| s.capabilities.as_ref()).and_then(|c| c.add.clone());
    let added = added.expect("the DaemonSet adds capabilities");
    assert!(!added.is_empty());
    added
}

/// `podclient --cgroup DIR`, to which the caller adds its command.
fn podclient_in(container: &Path) -> Command {
    let mut cmd = Command::new(bin("podclient"));
    cmd.arg("--cgroup").arg(container);
    cmd
}

/// Kills and reaps a child.
fn stop(child: &mut Child) {
    child.kill().ok();
    child.wait().ok();
}

/// Kills every process below `dir` and removes the cgroups, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    fn rm(d: &Path) {
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rm(&e.path());
                }
            }
        }
        for _ in 0..200 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    rm(dir);
}

/// A plain HTTP GET on loopback: status and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    leash_tests::http_get(addr, path).expect("GET from the metrics port")
}

fn code(reply: &serde_json::Value) -> String {
    reply["error"]["code"].as_str().unwrap_or("ok").to_string()
}

/// The policy the pods get: the upstream's port, reachable only through the proxy.
/// (Transparent mode off: a connect anywhere but the proxy is refused by the kernel.)
fn upstream_policy(port: u16) -> String {
    format!(
        "version: 1\nnetwork:\n  transparent: false\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      - {{ host: 127.0.0.1, port: {port}, protocol: tcp, allowed_ips: [127.0.0.0/8] }}\n"
    )
}

/// The agent's probes: straight to the upstream, then through the proxy.
fn probes(target: &str) -> Vec<String> {
    let probe = bin("netprobe").display().to_string();
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("{probe} tcp {target}; {probe} get proxy {target}; cat /proc/self/cgroup"),
    ]
}

fn assert_only_proxy_reachable(node: &Node, pod: &Pod, upstream: &Listener, extra: &[&str]) {
    let target = upstream.addr.to_string();
    let agent = probes(&target);
    let agent: Vec<&str> = agent.iter().map(String::as_str).collect();
    let out = node.confine(pod, extra, &agent);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "leash confine: {text} {}", stderr(&out));
    let mut lines = text.lines();
    let direct = lines.next().unwrap_or_default();
    assert!(direct.starts_with("err"), "the agent reached {target} directly: {direct}\n{}", stderr(&out));
    let proxied = lines.next().unwrap_or_default();
    assert!(proxied.contains("CONNECT 200 GET 200"), "the proxy did not get through: {proxied}\n{}", stderr(&out));
    assert!(text.contains("/leash-"), "the agent is not in a sandbox cgroup: {text}");
    assert_eq!(upstream.accepted(), 1, "only the proxied connection reaches the upstream");
}

#[test]
fn systemd_containerd_pod_annotated_through_the_api_reaches_only_its_proxy() {
    let upstream = Listener::http("127.0.0.1:0", "upstream");
    let mut node = Node::new("sysd");
    node.policy("runner", &upstream_policy(upstream.addr.port()));
    let pod = node.pod(Layout::SystemdContainerd, 1);
    node.api = Some(FakeApi::start(&node.scratch.0, vec![(pod.uid.clone(), Some("runner".into()))]));
    let log = node.start(&["--metrics", "127.0.0.1:0"]);
    let metrics = log.split("on http://").nth(1).and_then(|r| r.split_whitespace().next()).expect(&log).to_string();
    assert_eq!(http_get(&metrics, "/healthz").0, 200);
    assert_eq!(http_get(&metrics, "/readyz").0, 200);
    assert_only_proxy_reachable(&node, &pod, &upstream, &[]);
    assert!(node.api.as_ref().unwrap().requests() >= 1, "the daemon never asked the API server");
    let (status, text) = http_get(&metrics, "/metrics");
    assert_eq!(status, 200);
    for want in [
        "leash_requests_total{op=\"confine\",result=\"ok\"} 1",
        "leash_kernel_verdicts_total{layer=\"network\",verdict=\"denied\",rule=\"connect_denied\"} 1",
        "leash_denials_total{layer=\"network\",hook=\"connect4\"} 1",
        "leash_confine_duration_seconds_count 1",
        "leash_bpf_program_runs_total{program=\"leash_connect4\"}",
    ] {
        assert!(text.contains(want), "/metrics lacks {want}:\n{text}");
    }
    // The sandbox is collected once the agent exited.
    assert!(wait_until(10, || node.state_files() == 0 && node.pinned_sandboxes() == 0), "sandbox not collected");
    assert_eq!(node.map_entries(), 0);
}

#[test]
fn cgroupfs_crio_pod_with_the_node_default_reaches_only_its_proxy() {
    let upstream = Listener::http("127.0.0.1:0", "upstream");
    let mut node = Node::new("cgfs");
    node.policy("default", &upstream_policy(upstream.addr.port()));
    let pod = node.pod(Layout::CgroupfsCrio, 2);
    node.start(&["--default-policy", "default"]);
    assert_only_proxy_reachable(&node, &pod, &upstream, &["--policy", "default"]);
}

/// Transparent mode (the default) in a pod: the agent's direct connect to an allowed address
/// arrives through the proxy, one to another address reaches nothing, and DNS to any resolver
/// address is answered by leash for allowed names only; the daemon's `owner` records say where
/// each redirected connection was going.
#[test]
fn transparent_mode_in_a_pod_redirects_to_the_proxy() {
    let upstream = Listener::http("127.0.0.1:0", "upstream");
    let other = Listener::http("127.0.0.1:0", "other");
    let mut node = Node::new("transparent");
    node.policy(
        "default",
        &format!(
            "version: 1\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      \
             - {{ host: 127.0.0.1, port: {}, protocol: rest, access: full, allowed_ips: [127.0.0.0/8] }}\n      \
             - {{ host: allowed.test, port: 443 }}\n",
            upstream.addr.port()
        ),
    );
    let pod = node.pod(Layout::CgroupfsCrio, 65);
    node.start(&["--default-policy", "default"]);
    let probe = bin("netprobe").display().to_string();
    let script = format!(
        "{probe} direct-get {}; {probe} direct-get {}; {probe} dns 127.0.0.153:53 allowed.test; {probe} dns 127.0.0.153:53 c2VjcmV0.exfil.test",
        upstream.addr, other.addr
    );
    let out = node.confine(&pod, &[], &["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "leash confine: {text} {}", stderr(&out));
    assert!(text.contains("GET 200 upstream"), "the allowed address through the redirect: {text} {}", stderr(&out));
    assert!(text.contains("GET 0"), "another address: {text}");
    assert!(text.contains("dns rcode=0 answers=1 from=127.0.0.153"), "{text} {}", stderr(&out));
    assert!(text.contains("dns rcode=3 answers=0 from=127.0.0.153"), "{text}");
    assert_eq!((upstream.accepted(), other.accepted()), (1, 0));
    assert!(stderr(&out).contains(&format!("redirected from {}", other.addr)), "{}", stderr(&out));
}

#[test]
fn pods_without_the_annotation_or_asking_for_another_policy_are_refused() {
    let mut node = Node::new("refuse");
    node.policy("runner", "version: 1\n");
    node.policy("other", "version: 1\n");
    let annotated = node.pod(Layout::SystemdContainerd, 3);
    let bare = node.pod(Layout::SystemdContainerd, 4);
    let unknown = node.pod(Layout::CgroupfsCrio, 5);
    node.api = Some(FakeApi::start(
        &node.scratch.0,
        vec![(annotated.uid.clone(), Some("runner".into())), (bare.uid.clone(), None)],
    ));
    node.start(&["--pod-wait-ms", "500"]);
    let out = node.confine(&bare, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "an unannotated pod was confined: {}", stderr(&out));
    assert!(stderr(&out).contains("leash.dev/policy"), "{}", stderr(&out));
    let out = node.confine(&unknown, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "a pod unknown to the API was confined: {}", stderr(&out));
    assert!(stderr(&out).contains("is not among node node-a's pods"), "{}", stderr(&out));
    let out = node.confine(&annotated, &["--policy", "other"], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "a pod got a policy it is not annotated with: {}", stderr(&out));
    assert!(stderr(&out).contains("not `other`"), "{}", stderr(&out));
    let out = node.confine(&annotated, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(0), "the annotated pod was refused: {}", stderr(&out));
    // A process outside every pod is refused too.
    let mut client = leash::confine_api::client::Client::connect(&node.socket).unwrap();
    let err = client.call(leash::confine_api::protocol::Op::Hello {}).unwrap_err().to_string();
    assert!(err.contains("NotInPod"), "{err}");
}

#[test]
fn a_pod_cannot_confine_release_or_query_another_pods_processes() {
    let mut node = Node::new("cross");
    node.policy("default", "version: 1\n");
    let a = node.pod(Layout::SystemdContainerd, 6);
    let b = node.pod(Layout::CgroupfsCrio, 7);
    node.start(&["--default-policy", "default"]);
    let mut sleeper_a = a.sleeper();
    let mut sleeper_b = b.sleeper();
    let pid_a = sleeper_a.id();
    let confine_a = format!(r#"{{"version":1,"op":"confine","pid":{pid_a}}}"#);
    // B may not confine A's process; A may.
    assert_eq!(code(&node.call(&b, &confine_a, Some("--listener"))), "no_such_process");
    let reply = node.call(&a, &confine_a, Some("--listener"));
    assert_eq!(code(&reply), "ok", "{reply}");
    let sandbox = reply["result"]["sandbox"].as_str().unwrap().to_string();
    for op in [
        format!(r#"{{"version":1,"op":"status","sandbox":"{sandbox}"}}"#),
        format!(r#"{{"version":1,"op":"release","sandbox":"{sandbox}"}}"#),
        format!(r#"{{"version":1,"op":"owner","sandbox":"{sandbox}","port":1,"cookie":1}}"#),
    ] {
        assert_eq!(code(&node.call(&b, &op, None)), "no_such_sandbox", "pod B: {op}");
    }
    assert!(sleeper_a.try_wait().unwrap().is_none(), "B's release killed A's process");
    let status = node.call(&a, &format!(r#"{{"version":1,"op":"status","sandbox":"{sandbox}"}}"#), None);
    assert_eq!(status["result"]["processes"], 1, "{status}");
    // The confined process itself may not use the daemon at all (no release of its own sandbox).
    let cgroup = std::fs::read_to_string(format!("/proc/{pid_a}/cgroup")).unwrap();
    assert!(cgroup.contains(&format!("leash-{sandbox}")), "{cgroup}");
    let release = format!(r#"{{"version":1,"op":"release","sandbox":"{sandbox}"}}"#);
    assert_eq!(code(&node.call(&a, &release, None)), "ok");
    assert!(wait_until(5, || sleeper_a.try_wait().unwrap().is_some()), "release did not end A's process");
    sleeper_b.kill().ok();
    sleeper_b.wait().ok();
}

#[test]
fn confined_agents_cannot_ask_the_daemon_for_anything() {
    let mut node = Node::new("inner");
    node.policy("default", "version: 1\n");
    let pod = node.pod(Layout::SystemdContainerd, 8);
    node.start(&["--default-policy", "default"]);
    let inner = format!("{} confine --socket {} -- /bin/true", leash_bin().display(), node.socket.display());
    let out = node.confine(&pod, &[], &["/bin/sh", "-c", &inner]);
    assert_eq!(out.status.code(), Some(125), "a confined agent got itself another sandbox: {}", stderr(&out));
    assert!(stderr(&out).contains("confined"), "{}", stderr(&out));
}

#[test]
fn the_agent_cannot_read_the_credentials_of_leash_confine() {
    const SECRET: &str = "real-token-5e0c2a9d71";
    let mut node = Node::new("secret");
    node.policy(
        "default",
        "version: 1\nnetwork_policies:\n  api:\n    name: api\n    endpoints:\n      - { host: api.example.com, port: 443, protocol: rest, access: full }\ncredentials:\n  TOK: { hosts: [api.example.com] }\n",
    );
    let pod = node.pod(Layout::SystemdContainerd, 15);
    node.start(&["--default-policy", "default"]);
    // The same uid as leash confine: its environment, memory and ptrace are what it would try.
    let script = "echo TOK=$TOK; cat /proc/$PPID/environ; echo; head -c 64 /proc/$PPID/mem; \
                  grep -a real-token /proc/$PPID/cmdline /proc/$PPID/environ; echo done";
    let out = node.confine_cmd(&pod, &[], &["/bin/sh", "-c", script]).env("TOK", SECRET).output().unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("TOK=leash:resolve:env:TOK"), "{text}");
    assert!(stdout(&out).contains("done"), "{text}");
    assert!(!text.contains(SECRET), "the agent read the credential: {text}");
}

#[test]
fn binaries_rules_work_through_the_daemons_connection_owners() {
    let upstream = Listener::http("127.0.0.1:0", "upstream");
    let target = upstream.addr.to_string();
    // The path the kernel reports for the executable (no `..` in it).
    let probe = std::fs::canonicalize(bin("netprobe")).unwrap().display().to_string();
    let mut node = Node::new("owners");
    node.policy(
        "default",
        &format!(
            "version: 1\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      - {{ host: 127.0.0.1, port: {}, protocol: tcp, allowed_ips: [127.0.0.0/8] }}\n    binaries: [{{ path: {probe} }}]\n",
            upstream.addr.port()
        ),
    );
    let pod = node.pod(Layout::CgroupfsCrio, 16);
    node.start(&["--default-policy", "default"]);
    // netprobe is the named binary; curl, through the same proxy, is not.
    let script = format!(
        "{probe} get proxy {target}; /usr/bin/curl -sS -o /dev/null -w 'curl %{{http_code}}\\n' http://{target}/"
    );
    let out = node.confine(&pod, &[], &["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    assert!(text.contains("CONNECT 200 GET 200"), "the named binary was refused: {text} {}", stderr(&out));
    assert!(text.contains("curl 403"), "another binary got through: {text} {}", stderr(&out));
    assert_eq!(upstream.accepted(), 1);
}

/// The pod's proxy checks the environment of the process that connected (a loader variable
/// such as `LD_PRELOAD` withdraws a `binaries:` identity) by the pid the daemon gives it. A
/// process in a PID namespace of its own (which the agent can make, with a user namespace) was
/// given its number there, which in the proxy's namespace is another process: the proxy checked
/// that one's environment, and the listed binary with `LD_PRELOAD` got through.
#[test]
fn a_process_in_a_pid_namespace_of_its_own_is_not_trusted_as_a_listed_binary() {
    let upstream = Listener::http("127.0.0.1:0", "upstream");
    let target = upstream.addr.to_string();
    let probe = std::fs::canonicalize(bin("netprobe")).unwrap().display().to_string();
    let mut node = Node::new("owners-pidns");
    node.policy(
        "default",
        &format!(
            "version: 1\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      - {{ host: 127.0.0.1, port: {}, protocol: tcp, allowed_ips: [127.0.0.0/8] }}\n    binaries: [{{ path: {probe} }}]\n",
            upstream.addr.port()
        ),
    );
    let pod = node.pod(Layout::CgroupfsCrio, 17);
    node.start(&["--default-policy", "default"]);
    let script = format!(
        "echo plain: $(LD_PRELOAD=/nonexistent-leash.so {probe} get proxy {target} 2>/dev/null); \
         unshare -Upf true && echo unshared=ok; \
         echo nested: $(LD_PRELOAD=/nonexistent-leash.so unshare -Upf {probe} get proxy {target} 2>/dev/null)"
    );
    let out = node.confine(&pod, &[], &["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    assert!(text.contains("plain:") && !text.contains("GET 200\nnested"), "the premise: {text} {}", stderr(&out));
    assert!(
        text.contains("unshared=ok"),
        "the premise: the agent cannot make a PID namespace here: {text} {}",
        stderr(&out)
    );
    let nested = text.lines().find(|l| l.starts_with("nested:")).unwrap_or_default();
    assert!(
        !nested.contains("GET 200"),
        "the listed binary with LD_PRELOAD got through from its own PID namespace: {text}"
    );
    assert_eq!(upstream.accepted(), 0, "{text}");
}

/// Issue 19 item 4 under `leash confine`: the daemon answers who connected, and a listed
/// executable exec'd after the connect lends nothing to its parent holding the same socket.
#[test]
fn a_listed_executable_exec_d_after_connect_lends_nothing_under_confine() {
    exec_after_connect_attack("owners-exec", &daemonset_capabilities());
}

/// The same attack against a daemon that cannot read another user's descriptor table (the
/// DaemonSet without CAP_DAC_READ_SEARCH, as it shipped before the node test): a table it cannot
/// read must count as holding the socket, not as holding nothing.
#[test]
fn an_owner_check_that_cannot_read_descriptors_fails_closed() {
    let without: Vec<String> = daemonset_capabilities().into_iter().filter(|c| c != "DAC_READ_SEARCH").collect();
    exec_after_connect_attack("owners-nodac", &without);
}

/// Python connects, forks a child that execs `sleep` (the listed executable) holding the same
/// socket, and sends through it itself: nothing may get through.
fn exec_after_connect_attack(tag: &str, capabilities: &[String]) {
    let upstream = Listener::http("127.0.0.1:0", "for sleep only");
    let sleep = std::fs::canonicalize("/bin/sleep").unwrap().display().to_string();
    let mut node = Node::new(tag);
    node.policy(
        "default",
        &format!(
            "version: 1\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      - {{ host: 127.0.0.1, port: {}, protocol: tcp, allowed_ips: [127.0.0.0/8] }}\n    binaries: [{{ path: {sleep} }}]\n",
            upstream.addr.port()
        ),
    );
    let pod = node.pod(Layout::CgroupfsCrio, 62);
    node.start_with_capabilities(capabilities, &["--default-policy", "default"]);
    let target = upstream.addr.to_string();
    let out = node.confine(&pod, &[], &["/usr/bin/python3", "-c", PY_EXEC_AFTER_CONNECT, &target, &sleep, "8"]);
    let text = stdout(&out);
    assert!(text.contains("through "), "the attack did not run: {text} {}", stderr(&out));
    assert!(text.contains("through 0"), "python used sleep's rights: {text} {}", stderr(&out));
    assert_eq!(upstream.accepted(), 0);
}

/// Issue 19: a pod process that made its own root (a user and mount namespace of its own, where
/// it could bind its files over the image's) asks to be confined: the daemon would resolve the
/// policy's paths, and read `binaries:` identities, in a root of the pod's choosing. Refused.
#[test]
fn a_target_in_a_root_of_its_own_making_is_refused() {
    let mut node = Node::new("own-root");
    node.policy("default", "version: 1\n");
    let pod = node.pod(Layout::SystemdContainerd, 63);
    node.start(&["--default-policy", "default"]);
    // The container's first process, as the runtime started it.
    let mut init = pod.sleeper();
    let confine = format!("{} confine --socket {} -- /bin/true", leash_bin().display(), node.socket.display());
    // Control: from the container's own namespace it is confined.
    let out = node.confine(&pod, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(0), "control: {}", stderr(&out));
    // A mount namespace of its own, where a bind mount over /usr/bin would be the pod's to make.
    let attack = format!("unshare -Um {confine}");
    let out = podclient_in(&pod.container)
        .args(["exec", NOBODY, "--", "/bin/sh", "-c", &attack])
        .current_dir("/")
        .env("HOME", "/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{attack}: {} {}", stdout(&out), stderr(&out));
    assert!(stderr(&out).contains("another root or mount namespace"), "{attack}: {}", stderr(&out));
    stop(&mut init);
}

/// Issue 19, the chroot(2) variant: a pod process that changed its root (in a user namespace of
/// its own, where chroot needs no privilege; the container's mount namespace is kept) is refused
/// when a process of the pod with the same uid asks to confine it by pid; the same request for a
/// process in the container's own root is served.
#[test]
fn a_target_that_changed_its_root_is_refused() {
    use std::io::BufRead as _;
    let mut node = Node::new("chroot");
    node.policy("default", "version: 1\n");
    let pod = node.pod(Layout::CgroupfsCrio, 64);
    node.start(&["--default-policy", "default"]);
    let mut init = pod.sleeper();
    let control = confine_once(&node, &pod);
    assert_eq!(code(&control), "ok", "control: {control}");
    let root = node.scratch.0.join("own-root");
    std::fs::create_dir_all(&root).unwrap();
    let chrooted = format!(
        "import os, sys, time\nos.chroot({root:?})\nos.chdir('/')\nprint('ready', flush=True)\ntime.sleep(30)\n",
        root = root.display().to_string()
    );
    let mut attacker = podclient_in(&pod.container)
        .args(["exec", "0", "--", "unshare", "-Ur", "/usr/bin/python3", "-c", &chrooted])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(attacker.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the chroot did not happen");
    let reply = confine_pid(&node, &pod, attacker.id(), None);
    assert_ne!(code(&reply), "ok", "a process in a root of its own was confined: {reply}");
    assert!(reply.to_string().contains("another root or mount namespace"), "{reply}");
    stop(&mut attacker);
    stop(&mut init);
}

#[test]
fn policies_follow_a_configmap_update() {
    let mut node = Node::new("configmap");
    // A ConfigMap volume: files are symlinks into `..data`, which the kubelet swaps atomically.
    let dir = node.scratch.0.join("policies");
    let v1 = dir.join("..2026_11_29_v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::write(v1.join("default.yaml"), "version: 1\n").unwrap();
    std::os::unix::fs::symlink("..2026_11_29_v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/default.yaml", dir.join("default.yaml")).unwrap();
    let pod = node.pod(Layout::SystemdContainerd, 17);
    node.start(&["--default-policy", "default"]);
    let ask = || {
        node.call(&pod, r#"{"version":1,"op":"policy"}"#, None)["result"]["yaml"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(ask(), "version: 1\n");
    let v2 = dir.join("..2026_11_29_v2");
    std::fs::create_dir_all(&v2).unwrap();
    std::fs::write(v2.join("default.yaml"), "version: 1\nnetwork_policies: {}\n").unwrap();
    std::os::unix::fs::symlink("..2026_11_29_v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    assert!(wait_until(5, || ask().contains("network_policies")), "the daemon kept the old policy");
    // A broken update keeps the last good version in force.
    let v3 = dir.join("..2026_11_29_v3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::write(v3.join("default.yaml"), "version: 1\nnot_a_key: true\n").unwrap();
    std::os::unix::fs::symlink("..2026_11_29_v3", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(ask().contains("network_policies"), "a broken update replaced the policy");
}

#[test]
fn hostile_messages_get_error_replies_and_the_daemon_keeps_serving() {
    let mut node = Node::new("hostile");
    node.policy("default", "version: 1\n");
    let a = node.pod(Layout::SystemdContainerd, 9);
    let b = node.pod(Layout::SystemdContainerd, 10);
    node.start(&["--default-policy", "default"]);
    let mut other = b.sleeper();
    let out = node.podclient(&a, &["hostile", node.socket.to_str().unwrap(), &other.id().to_string()]);
    other.kill().ok();
    other.wait().ok();
    let text = stdout(&out);
    let expect = [
        ("garbage", "bad_request"),
        ("oversized", "too_large"),
        ("truncated", "bad_request"),
        ("empty-frame", "bad_request"),
        ("not-an-object", "bad_request"),
        ("no-version", "bad_request"),
        ("future-version", "unsupported_version"),
        ("unknown-op", "bad_request"),
        ("extra-field", "bad_request"),
        ("deep-json", "bad_request"),
        ("confine-no-fd", "bad_socket"),
        ("confine-dev-null", "bad_socket"),
        ("confine-udp", "bad_socket"),
        ("confine-connected-tcp", "bad_socket"),
        ("confine-any-address", "bad_socket"),
        ("confine-exited-pid", "no_such_process"),
        ("confine-other-pod", "no_such_process"),
        ("confine-pid-1", "no_such_process"),
        ("status-unknown", "no_such_sandbox"),
        ("release-unknown", "no_such_sandbox"),
        ("hello-after", "ok"),
    ];
    for (case, want) in expect {
        let line =
            text.lines().find(|l| l.split(' ').next() == Some(case)).unwrap_or_else(|| panic!("no {case}: {text}"));
        let reply: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).expect(line);
        assert_eq!(code(&reply), want, "{case}: {line}");
    }
    // No answer tells a process that does not exist from one of another pod or the host's init:
    // a scanner learns nothing of what runs outside its pod.
    let message = |case: &str| {
        let line = text.lines().find(|l| l.split(' ').next() == Some(case)).unwrap();
        let reply: serde_json::Value = serde_json::from_str(line.split_once(' ').unwrap().1).unwrap();
        reply["error"]["message"].as_str().unwrap_or_default().replace(|c: char| c.is_ascii_digit(), "")
    };
    assert_eq!(message("confine-exited-pid"), message("confine-other-pod"));
    assert_eq!(message("confine-other-pod"), message("confine-pid-1"));
    assert_eq!(node.state_files(), 0, "a hostile request left a sandbox");
    assert!(node.daemon.as_mut().unwrap().try_wait().unwrap().is_none(), "the daemon died");
}

#[test]
fn sigkill_of_the_daemon_leaves_the_sandbox_confined_and_the_next_daemon_adopts_it() {
    let upstream = Listener::http("127.0.0.1:0", "upstream");
    let mut node = Node::new("adopt");
    node.policy("default", &upstream_policy(upstream.addr.port()));
    let pod = node.pod(Layout::SystemdContainerd, 11);
    node.start(&["--default-policy", "default"]);
    let go = node.scratch.0.join("go");
    let target = upstream.addr.to_string();
    let probe = bin("netprobe").display().to_string();
    // The agent waits for the test's signal (a file), then probes while no daemon runs.
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done; {probe} tcp {target}; {probe} get proxy {target}; sleep 60",
        go = go.display()
    );
    let mut agent = node
        .confine_cmd(&pod, &[], &["/bin/sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent_err = BufReader::new(agent.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("confines the agent") {
        said.clear();
        assert!(agent_err.read_line(&mut said).unwrap() > 0, "the agent was not confined");
    }
    node.daemon.as_mut().unwrap().kill().unwrap(); // SIGKILL
    node.daemon.take().unwrap().wait().ok();
    std::fs::write(&go, "").unwrap();
    let mut out = BufReader::new(agent.stdout.take().unwrap());
    let (mut direct, mut proxied) = (String::new(), String::new());
    out.read_line(&mut direct).unwrap();
    out.read_line(&mut proxied).unwrap();
    assert!(direct.starts_with("err"), "with the daemon dead the agent reached {target} directly: {direct}");
    assert!(proxied.contains("CONNECT 200 GET 200"), "the proxy stopped working without the daemon: {proxied}");

    let log = node.start(&["--default-policy", "default"]);
    assert!(log.contains("adopted pinned programs"), "the new daemon loaded instead of adopting: {log}");
    assert!(log.contains("1 sandboxes on record"), "{log}");
    let sandbox = std::fs::read_dir(node.scratch.0.join("state")).unwrap().next().unwrap().unwrap().path();
    let sandbox = sandbox.file_stem().unwrap().to_str().unwrap().to_string();
    let status = node.call(&pod, &format!(r#"{{"version":1,"op":"status","sandbox":"{sandbox}"}}"#), None);
    assert_eq!(code(&status), "ok", "the adopted sandbox is unknown: {status}");
    assert!(status["result"]["processes"].as_u64().unwrap() >= 1, "{status}");
    // New requests are served, and the adopted sandbox can be released (its `sleep` outlives
    // leash confine, so it would otherwise stay populated).
    let out = node.confine(&pod, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let release = node.call(&pod, &format!(r#"{{"version":1,"op":"release","sandbox":"{sandbox}"}}"#), None);
    assert_eq!(code(&release), "ok", "{release}");
    assert!(wait_until(10, || agent.try_wait().unwrap().is_some()), "releasing the sandbox did not end the agent");
    assert!(wait_until(10, || node.state_files() == 0), "the adopted sandbox was never collected");
    assert!(wait_until(5, || node.map_entries() == 0 && node.pinned_sandboxes() == 0));
}

#[test]
fn sandboxes_of_deleted_pods_and_of_agents_that_ended_while_no_daemon_ran_are_collected() {
    let mut node = Node::new("gone");
    node.policy("default", "version: 1\n");
    let a = node.pod(Layout::SystemdContainerd, 18);
    let b = node.pod(Layout::CgroupfsCrio, 19);
    node.start(&["--default-policy", "default"]);
    let sleeper = |pod: &Pod| {
        let child = pod.sleeper();
        let reply =
            node.call(pod, &format!(r#"{{"version":1,"op":"confine","pid":{}}}"#, child.id()), Some("--listener"));
        assert_eq!(code(&reply), "ok", "{reply}");
        child
    };
    let mut in_a = sleeper(&a);
    let mut in_b = sleeper(&b);
    assert_eq!(node.state_files(), 2);
    // Pod A is deleted: the runtime kills its processes and removes its cgroups, ours included.
    in_a.kill().unwrap();
    in_a.wait().ok();
    remove_cgroup_tree(a.container.parent().unwrap());
    assert!(wait_until(5, || node.state_files() == 1), "the deleted pod's sandbox is still on record");
    // B's agent ends while no daemon runs: the next daemon removes its sandbox at start.
    node.kill_daemon();
    in_b.kill().unwrap();
    in_b.wait().ok();
    let log = node.start(&["--default-policy", "default"]);
    assert!(log.contains("removed 1 sandboxes that ended while no daemon ran"), "{log}");
    assert_eq!(node.state_files(), 0);
    assert_eq!(node.pinned_sandboxes(), 0);
    assert_eq!(node.map_entries(), 0);
}

#[test]
fn ten_thousand_confine_cycles_leave_nothing_behind() {
    let mut node = Node::new("cycles");
    node.policy("default", "version: 1\n");
    let pod = node.pod(Layout::CgroupfsCrio, 12);
    node.start(&["--default-policy", "default"]);
    let socket = node.socket.to_str().unwrap().to_string();
    let warm = node.podclient(&pod, &["cycles", &socket, "200"]);
    assert!(stdout(&warm).contains("\"errors\":0"), "{} {}", stdout(&warm), stderr(&warm));
    assert!(wait_until(10, || node.state_files() == 0));
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", node.daemon_pid())).unwrap().count();
    let before = fds();
    let out = node.podclient(&pod, &["cycles", &socket, "10000"]);
    let report: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!(report["errors"], 0, "{report}");
    eprintln!("10,000 cycles: {report}");
    assert!(wait_until(20, || node.state_files() == 0), "state files left: {}", node.state_files());
    assert!(wait_until(5, || node.pinned_sandboxes() == 0), "pinned links left");
    assert_eq!(node.map_entries(), 0, "map entries left");
    let left: Vec<_> = std::fs::read_dir(&pod.container)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("leash-"))
        .collect();
    assert!(left.is_empty(), "sandbox cgroups left: {}", left.len());
    assert!(fds() <= before + 2, "the daemon's descriptors grew from {before} to {}", fds());
}

/// A container has a PID namespace of its own, so the pid a caller names is a number there: the
/// daemon finds that process among the pod's (found by the node test, where every `confine {pid}`
/// from a real container failed). A number that is free in the caller's namespace names nothing,
/// even where the node has a process of that number in the same pod.
#[test]
fn a_caller_in_its_own_pid_namespace_names_its_child_by_its_own_number() {
    let mut node = Node::new("pidns");
    node.policy("default", "version: 1\n");
    let pod = node.pod(Layout::CgroupfsCrio, 13);
    node.start(&["--default-policy", "default"]);
    let socket = node.socket.to_str().unwrap().to_string();
    // podclient is pid 1 of a new PID namespace; the children it confines are 2, 3, ...
    let in_own_namespace = |args: &[&str]| {
        Command::new("unshare")
            .args(["--pid", "--fork"])
            .arg(bin("podclient"))
            .arg("--cgroup")
            .arg(&pod.container)
            .args(args)
            .output()
            .expect("unshare")
    };
    let out = in_own_namespace(&["cycles", &socket, "20"]);
    let report: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|_| panic!("{} {}", stdout(&out), stderr(&out)));
    assert_eq!(report["errors"], 0, "{report} {}", stderr(&out));

    // A sleeper of the same pod in the node's namespace: its node pid means nothing in the new one.
    let mut sleeper = pod.sleeper();
    let json = format!(r#"{{"version":1,"op":"confine","pid":{}}}"#, sleeper.id());
    let out = in_own_namespace(&["call", &socket, &json, "--listener"]);
    let reply: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|_| panic!("{}", stderr(&out)));
    assert_eq!(code(&reply), "no_such_process", "{reply}");
    stop(&mut sleeper);

    // Another user's process in the caller's namespace is refused with the caller's own number
    // for it: the answer gives away neither that it exists nor its number on the node.
    let setup = "setpriv --reuid 65534 --regid 65534 --clear-groups sleep 30 & sleep 0.3";
    let reply = confine_in_new_pid_namespace(&node, &pod, setup, 2);
    assert_eq!(code(&reply), "no_such_process", "{reply}");
    assert_eq!(reply["error"]["message"], "no process 2 of yours", "{reply}");
}

/// The red-team's scan flood: a pod in its own PID namespace runs thousands of idle processes
/// and asks for a number that names none, so every request would examine every process of the
/// pod. The search stops at its budget and says so; it never walks the whole pod.
#[test]
fn looking_up_a_pid_in_a_crowded_pod_stops_at_its_budget() {
    let mut node = Node::new("pidflood");
    node.policy("default", "version: 1\n");
    let pod = node.pod(Layout::CgroupfsCrio, 15);
    node.start(&["--default-policy", "default"]);
    let reply = confine_in_new_pid_namespace(&node, &pod, "for i in $(seq 4200); do sleep 120 & done", 99999);
    assert_eq!(code(&reply), "not_allowed", "{reply}");
    assert!(reply["error"]["message"].as_str().unwrap_or("").contains("first 4096 processes"), "{reply}");
}

/// In a new PID namespace inside `pod`'s container (as root there): runs the shell commands
/// `setup`, then asks the daemon to confine `pid` (a number of that namespace); the reply, after
/// the namespace's other processes are killed.
fn confine_in_new_pid_namespace(node: &Node, pod: &Pod, setup: &str, pid: u32) -> serde_json::Value {
    let script = format!(
        "{setup}; {podclient} --cgroup {container} call {socket} '{{\"version\":1,\"op\":\"confine\",\"pid\":{pid}}}' --listener; \
         kill $(jobs -p) 2>/dev/null",
        podclient = bin("podclient").display(),
        container = pod.container.display(),
        socket = node.socket.display(),
    );
    let out = podclient_in(&pod.container)
        .args(["exec", "0", "--", "unshare", "--pid", "--fork", "bash", "-c", &script])
        .output()
        .expect("podclient");
    serde_json::from_str(stdout(&out).lines().last().unwrap_or("").trim())
        .unwrap_or_else(|_| panic!("{} {}", stdout(&out), stderr(&out)))
}

/// Why the daemon moves a pod's process into its sandbox rather than having `leash confine` start
/// the agent there with clone3(CLONE_INTO_CGROUP): that needs write access to `cgroup.procs` of
/// the sandbox and of the common ancestor (the container's cgroup), which an unprivileged pod
/// does not have; the daemon would have to delegate the container's cgroup to the pod, which
/// could then move its processes out of their sandboxes. The refusal, checked: root can, the pod
/// cannot.
#[test]
fn an_unprivileged_pod_cannot_clone_into_its_sandbox_cgroup() {
    let mut node = Node::new("clone3");
    node.policy("default", "version: 1\n");
    let pod = node.pod(Layout::CgroupfsCrio, 14);
    node.start(&["--default-policy", "default"]);
    let mut sleeper = pod.sleeper();
    let reply =
        node.call(&pod, &format!(r#"{{"version":1,"op":"confine","pid":{}}}"#, sleeper.id()), Some("--listener"));
    assert_eq!(code(&reply), "ok", "{reply}");
    let sandbox = pod.container.join(format!("leash-{}", reply["result"]["sandbox"].as_str().unwrap()));
    assert!(sandbox.is_dir(), "{}", sandbox.display());
    let clone_into = |uid: Option<&str>| {
        let mut cmd = podclient_in(&pod.container);
        if let Some(uid) = uid {
            cmd.args(["--uid", uid]);
        }
        let out = cmd.arg("clone-into").arg(&sandbox).output().expect("podclient");
        stdout(&out).trim().to_owned()
    };
    assert_eq!(clone_into(None), "ok", "root's clone3 into the sandbox: the call itself works here");
    assert_eq!(clone_into(Some("65534")), format!("errno {}", libc::EACCES), "nobody's clone3 into the sandbox");
    stop(&mut sleeper);
}

#[test]
fn kernel_rules_need_bpf_lsm_on_the_node_or_the_confine_is_refused() {
    let mut node = Node::new("lsm");
    node.policy("default", "version: 1\nkernel:\n  deny: [ptrace, bpf, mount]\n");
    let pod = node.pod(Layout::SystemdContainerd, 14);
    node.start(&["--default-policy", "default"]);
    let hello = node.call(&pod, r#"{"version":1,"op":"hello"}"#, None);
    let layers = hello["result"]["layers"].to_string();
    let out = node.confine(&pod, &[], &["/bin/true"]);
    if layers.contains("BPF-LSM") {
        // A node with BPF-LSM enforces it (the VM suite `daemon` checks each rule).
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    } else {
        eprintln!("this kernel refuses BPF-LSM programs: checking that the daemon refuses the policy");
        assert_eq!(out.status.code(), Some(125), "a kernel: policy ran without BPF-LSM: {}", stderr(&out));
        assert!(stderr(&out).contains("LayerMissing") && stderr(&out).contains("no BPF-LSM"), "{}", stderr(&out));
    }
    assert!(wait_until(10, || node.state_files() == 0));
}

#[test]
fn an_upgrade_moves_every_sandbox_to_the_new_programs_without_a_gap() {
    let upstream = Listener::new("127.0.0.1:0");
    let mut node = Node::new("upgrade");
    node.policy("default", "version: 1\n");
    let pod = node.pod(Layout::SystemdContainerd, 13);
    node.start(&["--default-policy", "default", "--generation", "gen-00000000000000aa"]);
    let probe = bin("netprobe").display().to_string();
    // Tries the upstream directly every few milliseconds for as long as it lives (in transparent
    // mode: redirected to the proxy, which refuses it; a gap in the programs would reach it).
    let script = format!("while true; do {probe} direct-get {}; sleep 0.005; done", upstream.addr);
    let mut agent = node
        .confine_cmd(&pod, &[], &["/bin/sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(agent.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let refused = |l: &str| l == "GET 0" || l.starts_with("err") || l == "ok";
    assert!(refused(first.trim()), "{first}");
    let lines = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in out.lines() {
            match line {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        all
    });
    node.kill_daemon();
    let log = node.start(&["--default-policy", "default", "--generation", "gen-00000000000000bb"]);
    assert!(log.contains("moved every sandbox from programs gen-00000000000000aa"), "{log}");
    let generations: Vec<String> = std::fs::read_dir(node.bpffs.join("leash"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gen-"))
        .collect();
    assert_eq!(generations, vec!["gen-00000000000000bb".to_string()]);
    let sandbox_dir = std::fs::read_dir(node.bpffs.join("leash/sandboxes")).unwrap().next().unwrap().unwrap().path();
    for link in std::fs::read_dir(&sandbox_dir).unwrap().flatten() {
        let name = link.file_name().to_string_lossy().into_owned();
        assert!(name.starts_with("gen-00000000000000bb--"), "an old link is left: {name}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let state = std::fs::read_dir(node.scratch.0.join("state")).unwrap().next().unwrap().unwrap().path();
    let sandbox = state.file_stem().unwrap().to_str().unwrap().to_string();
    node.call(&pod, &format!(r#"{{"version":1,"op":"release","sandbox":"{sandbox}"}}"#), None);
    agent.wait().ok();
    let lines = lines.join().unwrap();
    assert!(lines.len() > 10, "too few probes to tell: {}", lines.len());
    assert!(lines.iter().all(|l| refused(l)), "a probe got an answer during the upgrade: {lines:?}");
    assert_eq!(upstream.accepted(), 0, "the upstream was reached during the upgrade");
}

// ---- Issue 19: callers and targets held by pidfds; every pod's use of the daemon bounded ----

/// Starts `spawn` until the process it starts gets pid `want` (steered by writing the pid before
/// it to `/proc/sys/kernel/ns_last_pid`; other processes of the host, such as another test's, may
/// take it first, and then hold it until they exit).
fn spawn_with_pid(want: u32, mut spawn: impl FnMut() -> Child) -> Child {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        if Path::new(&format!("/proc/{want}")).exists() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        std::fs::write("/proc/sys/kernel/ns_last_pid", (want - 1).to_string()).expect("steering the next pid");
        let mut child = spawn();
        if child.id() == want {
            return child;
        }
        stop(&mut child);
    }
    panic!("could not give pid {want} to a new process: the attack cannot be tried");
}

/// Waits until process `pid` is in cgroup `dir`.
fn wait_in_cgroup(pid: u32, dir: &Path) {
    let procs = dir.join("cgroup.procs");
    let entered = || std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().any(|l| l == pid.to_string()));
    assert!(wait_until(5, entered), "process {pid} did not enter {}", dir.display());
}

fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

#[test]
fn a_connection_never_speaks_for_the_process_that_takes_its_callers_pid() {
    let mut node = Node::new("reuse");
    node.policy("pa", "version: 1\n");
    node.policy("pb", "version: 1\n");
    let a = node.pod(Layout::SystemdContainerd, 20);
    let b = node.pod(Layout::CgroupfsCrio, 21);
    node.api = Some(FakeApi::start(
        &node.scratch.0,
        vec![(a.uid.clone(), Some("pa".into())), (b.uid.clone(), Some("pb".into()))],
    ));
    node.start(&[]);
    // In pod A, a child connects and exits; its parent keeps the connection.
    let mut attacker = podclient_in(&a.container)
        .arg("reuse")
        .arg(&node.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(attacker.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let pid: u32 = line.trim().strip_prefix("child ").and_then(|p| p.parse().ok()).expect(&line);
    // The child's pid now belongs to a process of pod B.
    let mut victim = spawn_with_pid(pid, || podclient_in(&b.container).arg("sleep").spawn().unwrap());
    wait_in_cgroup(pid, &b.container);
    writeln!(attacker.stdin.as_mut().unwrap(), "{pid}").unwrap();
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    attacker.wait().ok();
    let policy = text.lines().find(|l| l.starts_with("policy ")).expect(&text);
    assert!(!policy.contains("\"pb\""), "pod A read pod B's policy on a dead child's connection: {text}");
    assert!(!text.contains("\"ok\":true"), "a request on the dead child's connection was served: {text}");
    assert!(victim.try_wait().unwrap().is_none(), "pod B's process was killed through pod A's connection: {text}");
    assert!(!cgroup_of(pid).contains("/leash-"), "pod B's process was confined by pod A: {text}");
    stop(&mut victim);
}

#[test]
fn a_confine_target_that_exits_while_the_request_waits_is_not_replaced_by_the_next_owner_of_its_pid() {
    let mut node = Node::new("race");
    node.policy("default", "version: 1\n");
    let a = node.pod(Layout::SystemdContainerd, 22);
    let b = node.pod(Layout::CgroupfsCrio, 23);
    // The API server is slow: the confine waits on it after checking its target.
    let pods = vec![(a.uid.clone(), None), (b.uid.clone(), None)];
    node.api = Some(FakeApi::start_slow(&node.scratch.0, pods, Duration::from_secs(4)));
    node.start(&["--default-policy", "default"]);
    let mut target = a.sleeper();
    let pid = target.id();
    let request = podclient_in(&a.container)
        .arg("call")
        .arg(&node.socket)
        .arg(format!(r#"{{"version":1,"op":"confine","pid":{pid}}}"#))
        .arg("--listener")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    target.kill().unwrap();
    target.wait().unwrap();
    let mut victim = spawn_with_pid(pid, || podclient_in(&b.container).arg("sleep").spawn().unwrap());
    wait_in_cgroup(pid, &b.container);
    let out = request.wait_with_output().unwrap();
    let reply: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|_| panic!("{}", stdout(&out)));
    assert!(!cgroup_of(pid).contains("/leash-"), "pod B's process was moved into pod A's sandbox: {reply}");
    assert_eq!(code(&reply), "no_such_process", "{reply}");
    assert!(victim.try_wait().unwrap().is_none());
    stop(&mut victim);
    assert!(wait_until(10, || node.state_files() == 0), "the refused confine left a sandbox");
}

#[test]
fn nobody_cannot_confine_a_root_process_of_another_container_of_its_pod() {
    let node = Node::serving_default("uid", &[]);
    let first = node.pod(Layout::SystemdContainerd, 24);
    let second = first.sibling(25);
    let mut root = second.sleeper();
    let mut nobody = second.spawn_as(NOBODY, &["sleep"]);
    wait_in_cgroup(nobody.id(), &second.container);
    let call_as_nobody = |pid: u32| {
        let json = format!(r#"{{"version":1,"op":"confine","pid":{pid}}}"#);
        let args = ["--uid", NOBODY, "call", node.socket.to_str().unwrap(), &json, "--listener"];
        let out = node.podclient(&first, &args);
        serde_json::from_str::<serde_json::Value>(stdout(&out).trim()).unwrap_or_else(|_| panic!("{}", stdout(&out)))
    };
    let reply = call_as_nobody(root.id());
    assert_eq!(code(&reply), "no_such_process", "nobody confined root's process: {reply}");
    assert!(!cgroup_of(root.id()).contains("/leash-"));
    // A process of the caller's own uid in the other container: allowed.
    let reply = call_as_nobody(nobody.id());
    assert_eq!(code(&reply), "ok", "{reply}");
    assert!(cgroup_of(nobody.id()).contains("/leash-"));
    stop(&mut root);
    stop(&mut nobody);
}

#[test]
fn hello_names_only_the_callers_own_policy() {
    let mut node = Node::new("hello");
    node.policy("runner", "version: 1\n");
    node.policy("secret-team-policy", "version: 1\n");
    let pod = node.pod(Layout::SystemdContainerd, 26);
    node.api = Some(FakeApi::start(&node.scratch.0, vec![(pod.uid.clone(), Some("runner".into()))]));
    node.start(&[]);
    let hello = node.call(&pod, r#"{"version":1,"op":"hello"}"#, None);
    assert_eq!(hello["result"]["policies"], serde_json::json!(["runner"]), "{hello}");
}

/// `podclient flood` in `pod`: started, its `ready N` line read.
fn flood(node: &Node, pod: &Pod, n: usize, mode: &str) -> (Child, BufReader<std::process::ChildStdout>, usize) {
    let mut child = podclient_in(&pod.container)
        .arg("flood")
        .arg(&node.socket)
        .arg(n.to_string())
        .arg(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let held = line.trim().strip_prefix("ready ").and_then(|n| n.parse().ok()).expect(&line);
    (child, out, held)
}

/// The daemon's threads, descriptors and resident memory, for the record of a DoS probe.
fn daemon_usage(node: &Node) -> String {
    let pid = node.daemon_pid();
    let count = |what: &str| std::fs::read_dir(format!("/proc/{pid}/{what}")).map(|d| d.count()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap_or("VmRSS: ?").split_whitespace().nth(1);
    format!("threads {} fds {} VmRSS {} KiB", count("task"), count("fd"), rss.unwrap_or("?"))
}

fn hello_code(node: &Node, pod: &Pod) -> String {
    code(&node.call(pod, r#"{"version":1,"op":"hello"}"#, None))
}

#[test]
fn one_pod_holding_connections_does_not_lock_out_another() {
    let node = Node::serving_default("conns", &[]);
    let a = node.pod(Layout::SystemdContainerd, 27);
    let b = node.pod(Layout::CgroupfsCrio, 28);
    eprintln!("daemon before: {}", daemon_usage(&node));
    let (mut holder, _out, held) = flood(&node, &a, 300, "idle");
    assert_eq!(held, 300);
    assert_eq!(hello_code(&node, &b), "ok", "pod A's idle connections locked pod B out");
    assert_eq!(hello_code(&node, &a), "busy", "pod A got more connections than its share");
    eprintln!("daemon with 300 idle connections from one pod: {}", daemon_usage(&node));
    let threads = std::fs::read_dir(format!("/proc/{}/task", node.daemon_pid())).unwrap().count();
    assert!(threads < 64, "the daemon runs {threads} threads for one pod's connections");
    stop(&mut holder);
}

/// A pod over its share of connections is refused (`busy`) and its connection closed, on the
/// thread that accepts every pod's connections. The pod's last connection carried a TCP socket,
/// its send buffer full and `SO_LINGER` a minute: closing the connection unread dropped the last
/// reference to that socket there, and close(2) waited the minute, while no pod on the node was
/// accepted.
#[test]
fn a_refused_connection_cannot_stall_the_accepting_thread() {
    let node = Node::serving_default("linger", &[]);
    let a = node.pod(Layout::SystemdContainerd, 29);
    let b = node.pod(Layout::CgroupfsCrio, 30);
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", node.daemon_pid())).map(|d| d.count()).unwrap_or(0);
    let before = fds();
    // The socket as it is, nested in a unix socket among 253 descriptors, and eight deep.
    for mode in ["linger", "linger-nested", "linger-deep"] {
        let (mut holder, _out, held) = flood(&node, &a, 16, mode);
        assert_eq!(held, 16);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _ = tx.send(hello_code(&node, &b));
            });
            // A hello takes milliseconds; the lingering close took ten seconds here.
            let answered = rx.recv_timeout(Duration::from_secs(5));
            assert_eq!(
                answered.as_deref(),
                Ok("ok"),
                "{mode}: pod B was not served while pod A's refused connection lingered ({})",
                daemon_usage(&node)
            );
        });
        stop(&mut holder);
    }
    // Nothing received is kept: the descriptors a truncated message brought were left open.
    assert!(
        wait_until(10, || fds() <= before + 8),
        "the daemon kept descriptors: {} before, {}",
        before,
        daemon_usage(&node)
    );
}

/// `leash confine` let the agent go on the daemon's word alone: whoever served the socket
/// path (a pod that could write the directory the node shares it in) answered `confine` with
/// "confined", and the agent ran unconfined, under a policy of that server's choosing. The agent
/// goes on only when it is in its sandbox's cgroup, which no pod can make.
#[test]
fn an_impostor_daemon_cannot_release_the_agent_unconfined() {
    require_root();
    let scratch = Scratch::new("impostor");
    std::fs::set_permissions(&scratch.0, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = scratch.0.join("leash.sock");
    let fake = r#"
import json, os, socket, struct, sys, threading
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777); s.listen(8)
def read(c, n):
    got = b""
    while len(got) < n:
        data, _, _, _ = c.recvmsg(n - len(got), socket.CMSG_SPACE(64))
        if not data:
            return None
        got += data
    return got
def serve(c):
    while True:
        head = read(c, 4)
        if head is None:
            return
        op = json.loads(read(c, struct.unpack(">I", head)[0])).get("op")
        result = {"policy": {"name": "mine", "yaml": "version: 1\nnetwork_policies: {}\n"},
                  "confine": {"sandbox": "0123456789abcdef", "policy": "mine", "proxy": "127.0.0.1:9",
                              "netns_scoped": True, "layers": [], "transparent": True}}.get(op, {})
        out = json.dumps({"version": 1, "ok": True, "result": result}).encode()
        c.sendall(struct.pack(">I", len(out)) + out)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;
    let mut server = Command::new("python3").args(["-c", fake]).arg(&socket).spawn().unwrap();
    assert!(wait_until(10, || socket.exists()), "the impostor never listened");
    use std::os::unix::process::CommandExt as _;
    let out = Command::new(leash_bin())
        .args(["confine", "--socket", socket.to_str().unwrap(), "--", "/bin/sh", "-c", "echo agent-ran"])
        .uid(65534)
        .gid(65534)
        .current_dir("/")
        .env("HOME", "/")
        .output()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        !stdout(&out).contains("agent-ran"),
        "the agent ran on an impostor's word: {} {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("cgroup"), "no word of why: {}", stderr(&out));
}

#[test]
fn a_client_that_never_reads_its_replies_is_dropped() {
    let node = Node::serving_default("noread", &[]);
    let a = node.pod(Layout::SystemdContainerd, 29);
    let threads = || std::fs::read_dir(format!("/proc/{}/task", node.daemon_pid())).map(|d| d.count()).unwrap_or(0);
    let before = threads();
    let (mut holder, mut out, held) = flood(&node, &a, 1, "noread");
    assert_eq!(held, 1);
    // The daemon gives up on the blocked reply after its write timeout (5 s), and the
    // connection's thread ends. On a busy machine it fills the socket late: wait for the thread
    // rather than a fixed time; a daemon that never gives up keeps it, and its reader drains all.
    wait_until(30, || threads() <= before);
    writeln!(holder.stdin.as_mut().unwrap(), "drain").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    eprintln!("a client that does not read: {}; daemon after: {}", line.trim(), daemon_usage(&node));
    let counts: Vec<usize> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert_eq!(counts.len(), 2, "{line}");
    assert!(counts[0] < counts[1], "the daemon waited on the reader for ever: {line}");
    stop(&mut holder);
}

#[test]
fn descriptors_beyond_one_per_frame_are_closed_at_once() {
    let node = Node::serving_default("fds", &[]);
    let a = node.pod(Layout::SystemdContainerd, 30);
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", node.daemon_pid())).unwrap().count();
    let before = fds();
    let (mut holder, _out, held) = flood(&node, &a, 8, "fds");
    assert!(held >= 1);
    std::thread::sleep(Duration::from_millis(300));
    let during = fds();
    eprintln!("daemon while 8 connections sent 2,000 descriptors each: {}", daemon_usage(&node));
    assert!(during < before + 32, "unfinished frames hold {} of the daemon's descriptors", during - before);
    stop(&mut holder);
    assert_eq!(hello_code(&node, &a), "ok");
}

#[test]
fn failed_thread_starts_give_their_connection_slots_back() {
    let node = Node::serving_default("spawn", &[]);
    let a = node.pod(Layout::SystemdContainerd, 31);
    // The daemon in a pids cgroup (v1 controller; the v2 hierarchy here lacks it) with no room
    // for one more thread.
    let pids = PathBuf::from("/sys/fs/cgroup/pids").join(format!("leashd-spawn-{}", std::process::id()));
    assert!(pids.parent().unwrap().join("cgroup.procs").exists(), "no pids controller: the attack cannot be tried");
    std::fs::create_dir_all(&pids).unwrap();
    std::fs::write(pids.join("cgroup.procs"), node.daemon_pid().to_string()).unwrap();
    let current = std::fs::read_to_string(pids.join("pids.current")).unwrap();
    std::fs::write(pids.join("pids.max"), current.trim()).unwrap();
    let (mut holder, _out, held) = flood(&node, &a, 300, "idle");
    // The daemon accepts all 300 (and fails to start a thread for each) while the limit holds.
    std::thread::sleep(Duration::from_secs(2));
    stop(&mut holder);
    std::fs::write(pids.join("pids.max"), "max").unwrap();
    let reply = hello_code(&node, &a);
    std::fs::write(pids.parent().unwrap().join("cgroup.procs"), node.daemon_pid().to_string()).unwrap();
    let _ = std::fs::remove_dir(&pids);
    assert_eq!(held, 300);
    assert_eq!(reply, "ok", "after {held} failed thread starts the daemon stays busy");
}

/// `podclient hold`: confines up to `n` children of `pod`; the running client (close its stdin
/// to end it) and its `ready N` line.
fn hold(node: &Node, pod: &Pod, n: usize) -> (Child, String) {
    let mut hog = podclient_in(&pod.container)
        .args(["hold", node.socket.to_str().unwrap(), &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(hog.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (hog, line)
}

#[test]
fn one_pod_cannot_take_the_whole_sandbox_budget() {
    let node = Node::serving_default("quota", &["--max-sandboxes", "8"]);
    let a = node.pod(Layout::SystemdContainerd, 32);
    let b = node.pod(Layout::CgroupfsCrio, 33);
    let (mut hog, line) = hold(&node, &a, 8);
    let mut sleeper = b.sleeper();
    let reply = node.call(&b, &format!(r#"{{"version":1,"op":"confine","pid":{}}}"#, sleeper.id()), Some("--listener"));
    drop(hog.stdin.take());
    hog.wait().ok();
    stop(&mut sleeper);
    assert_eq!(code(&reply), "ok", "pod A ({line:?}) left pod B no sandbox: {reply}");
    assert_eq!(line.trim(), "ready 4", "pod A got more than half the node's sandboxes");
}

#[test]
fn the_per_pod_quota_can_be_set() {
    let node = Node::serving_default("quota-flag", &["--max-sandboxes", "8", "--max-sandboxes-per-pod", "2"]);
    let a = node.pod(Layout::SystemdContainerd, 34);
    let (mut hog, line) = hold(&node, &a, 8);
    drop(hog.stdin.take());
    hog.wait().ok();
    assert_eq!(line.trim(), "ready 2", "--max-sandboxes-per-pod 2 let the pod hold more");
}

/// Issue 19 item 5: cgroup programs judge a socket by the cgroup it was made in, so a process
/// that brings a TCP or UDP socket made outside into its sandbox could use it freely.
#[test]
fn a_process_holding_network_sockets_made_outside_is_not_confined() {
    let node = Node::serving_default("sockets", &[]);
    let pod = node.pod(Layout::SystemdContainerd, 35);
    let mut holder = podclient_in(&pod.container).arg("sleep-with-sockets").spawn().unwrap();
    let pid = holder.id().to_string();
    let procs = pod.container.join("cgroup.procs");
    assert!(wait_until(5, || std::fs::read_to_string(&procs).is_ok_and(|p| p.lines().any(|l| l == pid))));
    // Its sockets exist before the request.
    assert!(wait_until(5, || std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|l| l.to_string_lossy().starts_with("socket:"))
            .count()
            >= 2)
        .unwrap_or(false)));
    let reply = node.call(&pod, &format!(r#"{{"version":1,"op":"confine","pid":{pid}}}"#), Some("--listener"));
    let mut sleeper = pod.sleeper();
    let control =
        node.call(&pod, &format!(r#"{{"version":1,"op":"confine","pid":{}}}"#, sleeper.id()), Some("--listener"));
    stop(&mut holder);
    stop(&mut sleeper);
    assert_ne!(code(&reply), "ok", "a process with sockets made outside was confined: {reply}");
    assert!(reply.to_string().contains("network socket"), "{reply}");
    assert_eq!(code(&control), "ok", "control: a process without sockets is confined: {control}");
}

// ---- Issue 18: the daemon's view of its node's pods, listed once and then watched ----

/// A fake API server for `node` whose node runs `pods` (pod, `leash.dev/policy` annotation).
fn api_with(node: &mut Node, pods: &[(&Pod, Option<&str>)]) {
    let pods = pods.iter().map(|(p, policy)| (p.uid.clone(), policy.map(Into::into))).collect();
    node.api = Some(FakeApi::start(&node.scratch.0, pods));
}

fn api(node: &Node) -> &FakeApi {
    node.api.as_ref().expect("a fake API server")
}

/// A `confine` of process `pid` from `pod`, asking for policy `requested` if given.
fn confine_pid(node: &Node, pod: &Pod, pid: u32, requested: Option<&str>) -> serde_json::Value {
    let policy = requested.map(|p| format!(r#","policy":"{p}""#)).unwrap_or_default();
    node.call(pod, &format!(r#"{{"version":1,"op":"confine","pid":{pid}{policy}}}"#), Some("--listener"))
}

/// A sleeping process of `pod` confined and stopped again: the reply.
fn confine_once(node: &Node, pod: &Pod) -> serde_json::Value {
    let mut sleeper = pod.sleeper();
    let reply = confine_pid(node, pod, sleeper.id(), None);
    stop(&mut sleeper);
    reply
}

/// The policy the daemon names for `pod` now (`policy` request), or the error code.
fn policy_of(node: &Node, pod: &Pod) -> String {
    let reply = node.call(pod, r#"{"version":1,"op":"policy"}"#, None);
    reply["result"]["name"].as_str().map(String::from).unwrap_or_else(|| code(&reply))
}

fn reply_policy(reply: &serde_json::Value) -> &str {
    reply["result"]["policy"].as_str().unwrap_or("(refused)")
}

#[test]
fn two_pods_created_in_quick_succession_each_get_their_annotated_policy() {
    let mut node = Node::new("succession");
    for p in ["default", "pa", "pb", "pc"] {
        node.policy(p, "version: 1\n");
    }
    let a = node.pod(Layout::SystemdContainerd, 40);
    let b = node.pod(Layout::CgroupfsCrio, 41);
    let c = node.pod(Layout::SystemdContainerd, 42);
    api_with(&mut node, &[(&a, Some("pa"))]);
    // With a default, a wrong answer is a silent downgrade rather than a refusal.
    node.start(&["--default-policy", "default"]);
    let mut sleepers = [a.sleeper(), b.sleeper(), c.sleeper()];
    let first = Instant::now();
    let reply_a = confine_pid(&node, &a, sleepers[0].id(), None);
    // B and C are created moments after A's confine, and confine at once.
    api(&node).set_pod(&b.uid, Some("pb"));
    api(&node).set_pod(&c.uid, Some("pc"));
    let gap = first.elapsed();
    let reply_b = confine_pid(&node, &b, sleepers[1].id(), None);
    // C asks for its policy by name, as deploy/runner-pod.yaml's runner does.
    let reply_c = confine_pid(&node, &c, sleepers[2].id(), Some("pc"));
    for s in &mut sleepers {
        stop(s);
    }
    assert_eq!(reply_policy(&reply_a), "pa", "{reply_a}");
    assert_eq!(reply_policy(&reply_b), "pb", "the second pod did not get its own policy: {reply_b}");
    assert_eq!(reply_policy(&reply_c), "pc", "the third pod did not get its own policy: {reply_c}");
    assert!(gap < Duration::from_millis(500), "B confined {gap:?} after A: too late to test the case");
    assert_eq!(api(&node).lists(), 1, "the daemon listed the pods again");
}

#[test]
fn a_pod_the_api_server_reports_only_after_a_delay_waits_and_gets_its_annotated_policy() {
    let mut node = Node::new("late");
    node.policy("default", "version: 1\n");
    node.policy("late", "version: 1\n");
    let early = node.pod(Layout::SystemdContainerd, 43);
    let late = node.pod(Layout::CgroupfsCrio, 44);
    api_with(&mut node, &[(&early, None)]);
    node.start(&["--default-policy", "default"]);
    let mut sleeper = late.sleeper();
    let started = Instant::now();
    let request = podclient_in(&late.container)
        .arg("call")
        .arg(&node.socket)
        .arg(format!(r#"{{"version":1,"op":"confine","pid":{}}}"#, sleeper.id()))
        .arg("--listener")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    api(&node).set_pod(&late.uid, Some("late"));
    let out = request.wait_with_output().unwrap();
    let waited = started.elapsed();
    stop(&mut sleeper);
    let reply: serde_json::Value =
        serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|_| panic!("{}", stdout(&out)));
    assert_eq!(reply_policy(&reply), "late", "{reply}");
    assert!(waited >= Duration::from_millis(1500), "answered in {waited:?}, before the pod existed: {reply}");
    assert_eq!(api(&node).lists(), 1, "the daemon listed the pods again");
}

#[test]
fn a_pod_that_never_appears_is_refused_after_the_bound_and_never_gets_the_default() {
    let mut node = Node::new("ghost");
    node.policy("default", "version: 1\n");
    let bare = node.pod(Layout::SystemdContainerd, 45);
    let ghost = node.pod(Layout::CgroupfsCrio, 46);
    api_with(&mut node, &[(&bare, None)]);
    node.start(&["--default-policy", "default", "--pod-wait-ms", "1000"]);
    // The default is for a pod known to have no annotation.
    let reply = confine_once(&node, &bare);
    assert_eq!(reply_policy(&reply), "default", "{reply}");
    let mut sleeper = ghost.sleeper();
    let started = Instant::now();
    let reply = confine_pid(&node, &ghost, sleeper.id(), None);
    let waited = started.elapsed();
    stop(&mut sleeper);
    assert_eq!(code(&reply), "not_allowed", "a pod the API server does not have was confined: {reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("pod {} is not among node node-a's pods", ghost.uid)), "{reply}");
    assert!(message.contains("waited 1000 ms"), "{reply}");
    assert!(waited >= Duration::from_millis(1000), "refused after {waited:?}, before the bound");
    assert!(waited < Duration::from_secs(4), "refused only after {waited:?}");
    // leash confine says why, and starts nothing.
    let out = node.confine(&ghost, &[], &["/bin/true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not among node node-a's pods"), "{}", stderr(&out));
    // A deleted pod is unknown again: refused, not defaulted.
    api(&node).delete_pod(&bare.uid);
    assert!(wait_until(5, || policy_of(&node, &bare) == "not_allowed"), "a deleted pod kept its policy");
    assert_eq!(node.state_files(), 0);
}

#[test]
fn list_calls_stay_constant_as_confines_grow() {
    let mut node = Node::new("lists");
    node.policy("runner", "version: 1\n");
    api_with(&mut node, &[]);
    node.start(&[]);
    let mut confined = 0;
    for n in 47..55 {
        // A new pod every round, each confining twice; rounds more than half a second apart, so
        // that a daemon listing on a miss (at most every 500 ms) would list in each.
        std::thread::sleep(Duration::from_millis(600));
        let pod = node.pod(Layout::CgroupfsCrio, n);
        api(&node).set_pod(&pod.uid, Some("runner"));
        for _ in 0..2 {
            let reply = confine_once(&node, &pod);
            assert_eq!(reply_policy(&reply), "runner", "confine {confined}: {reply}");
            confined += 1;
            assert_eq!(api(&node).lists(), 1, "{} LISTs after {confined} confines", api(&node).lists());
        }
    }
    assert_eq!(api(&node).watches(), 1, "the watch was not kept open");
    eprintln!("{confined} confines of 8 pods: {} LIST, {} requests", api(&node).lists(), api(&node).requests());
}

#[test]
fn a_watch_expiry_lists_again_once() {
    let mut node = Node::new("expiry");
    for p in ["pa", "p1", "p2"] {
        node.policy(p, "version: 1\n");
    }
    let a = node.pod(Layout::SystemdContainerd, 56);
    api_with(&mut node, &[(&a, Some("pa"))]);
    node.start(&[]);
    assert!(wait_until(5, || api(&node).watches() == 1), "the daemon does not watch its pods");
    assert_eq!(reply_policy(&confine_once(&node, &a)), "pa");
    // Expired once as an ERROR event in a 200 stream, once as a 410 response.
    for (round, (gone, n, policy)) in [(Gone::ErrorEvent, 57, "p1"), (Gone::Status, 58, "p2")].into_iter().enumerate() {
        let lists = round + 2;
        api(&node).expire(gone);
        assert!(wait_until(5, || api(&node).lists() == lists), "no LIST after the expiry ({gone:?})");
        let pod = node.pod(Layout::CgroupfsCrio, n);
        api(&node).set_pod(&pod.uid, Some(policy));
        let reply = confine_once(&node, &pod);
        assert_eq!(reply_policy(&reply), policy, "after the expiry ({gone:?}): {reply}");
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(api(&node).lists(), lists, "an expiry ({gone:?}) listed more than once");
        // The refused watch, then the one from the new list, which stays open.
        assert_eq!(api(&node).watches(), 2 * lists - 1, "watches after expiry {gone:?}");
    }
}

#[test]
fn a_bookmark_keeps_the_watch_place_so_a_reconnect_needs_no_list() {
    let mut node = Node::new("bookmark");
    node.policy("pa", "version: 1\n");
    node.policy("pb", "version: 1\n");
    let a = node.pod(Layout::SystemdContainerd, 59);
    let b = node.pod(Layout::CgroupfsCrio, 60);
    api_with(&mut node, &[(&a, Some("pa"))]);
    node.start(&[]);
    assert!(wait_until(5, || api(&node).watches() == 1), "the daemon does not watch its pods");
    // Other nodes' pods move the resourceVersion; only a bookmark tells this node's watch.
    api(&node).churn_elsewhere(5);
    api(&node).bookmark();
    assert!(wait_until(5, || api(&node).bookmarks_sent() == 1), "the watch did not ask for bookmarks");
    api(&node).compact(Gone::Status);
    api(&node).hang_up();
    assert!(wait_until(5, || api(&node).watches() == 2), "the daemon did not watch again");
    api(&node).set_pod(&b.uid, Some("pb"));
    let reply = confine_once(&node, &b);
    assert_eq!(reply_policy(&reply), "pb", "{reply}");
    assert_eq!(api(&node).lists(), 1, "the watch resumed from before the bookmark and had to list again");
    assert_eq!(api(&node).watches(), 2);
}

#[test]
fn an_annotation_change_applies_to_new_confines_and_not_to_existing_sandboxes() {
    let mut node = Node::new("reannotate");
    node.policy("pa", "version: 1\n");
    node.policy("pb", "version: 1\n");
    let pod = node.pod(Layout::SystemdContainerd, 61);
    api_with(&mut node, &[(&pod, Some("pa"))]);
    node.start(&[]);
    let mut old = pod.sleeper();
    let first = confine_pid(&node, &pod, old.id(), None);
    assert_eq!(reply_policy(&first), "pa", "{first}");
    let old_sandbox = first["result"]["sandbox"].as_str().unwrap().to_string();
    let status =
        |sandbox: &str| node.call(&pod, &format!(r#"{{"version":1,"op":"status","sandbox":"{sandbox}"}}"#), None);

    api(&node).set_pod(&pod.uid, Some("pb"));
    assert!(wait_until(5, || policy_of(&node, &pod) == "pb"), "the daemon kept the old annotation");
    let mut new = pod.sleeper();
    let second = confine_pid(&node, &pod, new.id(), None);
    assert_eq!(reply_policy(&second), "pb", "a new confine got the old policy: {second}");
    let old_status = status(&old_sandbox);
    assert_eq!(old_status["result"]["policy"], "pa", "the existing sandbox changed policy: {old_status}");
    assert_eq!(old_status["result"]["processes"], 1, "{old_status}");
    assert!(cgroup_of(old.id()).contains(&format!("/leash-{old_sandbox}")), "the old sandbox lost its process");

    // The annotation removed (and no default on this node): new confines are refused, the
    // sandboxes stay as they are.
    api(&node).set_pod(&pod.uid, None);
    assert!(wait_until(5, || policy_of(&node, &pod) == "not_allowed"), "the removed annotation still counts");
    let mut third = pod.sleeper();
    let refused = confine_pid(&node, &pod, third.id(), None);
    assert_eq!(code(&refused), "not_allowed", "{refused}");
    assert!(refused.to_string().contains("has no leash.dev/policy annotation"), "{refused}");
    assert_eq!(status(&old_sandbox)["result"]["policy"], "pa");
    for s in [&mut old, &mut new, &mut third] {
        stop(s);
    }
    assert!(wait_until(10, || node.state_files() == 0), "sandboxes left");
}
