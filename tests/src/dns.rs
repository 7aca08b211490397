//! The network's resolver, for transparent-mode tests: a UDP DNS server on a loopback address
//! of its own (port 53) that answers every `*.test` name with 127.0.0.1 and records every name
//! it was asked, so a test can show that leash's resolver forwarded nothing. leash itself (its
//! proxy, resolving the hosts it dials) uses it through a `resolv.conf` bound over
//! `/etc/resolv.conf` in a mount namespace of the test's own ([`leash_run_resolving`]), so no
//! query of a test ever goes to the machine's real resolver.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

/// The address the test resolver listens on (and `resolv.conf` names).
pub const RESOLVER: &str = "127.0.0.153";

/// The shared test resolver (one per test process: port 53 can be bound once).
pub struct TestResolver {
    asked: Arc<Mutex<Vec<String>>>,
}

impl TestResolver {
    /// Starts the resolver the first time; later calls return the same one.
    pub fn get() -> &'static TestResolver {
        static ONE: OnceLock<TestResolver> = OnceLock::new();
        ONE.get_or_init(|| {
            let socket = UdpSocket::bind((RESOLVER, 53)).expect("binding the test resolver (root needed for port 53)");
            let asked = Arc::new(Mutex::new(Vec::new()));
            let record = asked.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok((len, from)) = socket.recv_from(&mut buf) {
                    if let Some((name, reply)) = answer(&buf[..len]) {
                        record.lock().unwrap().push(name);
                        let _ = socket.send_to(&reply, from);
                    }
                }
            });
            TestResolver { asked }
        })
    }

    /// Every name asked so far containing `needle`.
    pub fn asked_for(&self, needle: &str) -> Vec<String> {
        self.asked.lock().unwrap().iter().filter(|n| n.contains(needle)).cloned().collect()
    }
}

/// The name of a one-question query and the answer: A 127.0.0.1 for an A query of a `.test`
/// name, no data otherwise.
pub fn answer(query: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    while *query.get(pos)? != 0 {
        let len = *query.get(pos)? as usize;
        labels.push(String::from_utf8_lossy(query.get(pos + 1..pos + 1 + len)?).into_owned());
        pos += 1 + len;
    }
    let name = labels.join(".");
    let qtype = u16::from_be_bytes([*query.get(pos + 1)?, *query.get(pos + 2)?]);
    let question = query.get(12..pos + 5)?;
    let a = qtype == 1 && name.ends_with(".test");
    let mut out = query[..2].to_vec();
    out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(a), 0, 0, 0, 0]);
    out.extend_from_slice(question);
    if a {
        out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 1]);
    }
    Some((name, out))
}

/// `leash run --policy POLICY [extra] -- CMD...` in a mount namespace of its own where
/// `/etc/resolv.conf` names only the test resolver.
pub fn leash_run_resolving(scratch: &Path, policy: &Path, extra: &[&str], cmd: &[&str]) -> Output {
    leash_resolving(scratch, policy, extra, cmd).output().expect("running leash under unshare")
}

/// [`leash_run_resolving`]'s command, to spawn; its process becomes leash's (same pid).
pub fn leash_resolving(scratch: &Path, policy: &Path, extra: &[&str], cmd: &[&str]) -> Command {
    TestResolver::get();
    let resolv = scratch.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {RESOLVER}\noptions timeout:2 attempts:1\n"))
        .expect("writing resolv.conf");
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
        ])
        .arg(&resolv)
        .arg(crate::leash_bin())
        .args(["run", "--policy"])
        .arg(policy)
        .args(extra)
        .arg("--")
        .args(cmd);
    command
}
