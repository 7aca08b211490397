//! The audit writer fed what an agent controls: host, method, path, binary path, credential
//! names, and a kernel event's process name and file path (`prctl(PR_SET_NAME)`, any bytes).
//! Checks: no panic; every record is exactly one line holding one JSON object, and its
//! summary (`message`, also printed on stderr) holds no control character.
#![no_main]

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt as _;
use std::sync::OnceLock;

use leash::audit::{Auditor, ProxyDecision};
use libfuzzer_sys::fuzz_target;
use sandbox_common::{DenyEvent, Hook};

/// The audit log, reused across runs (truncated each time; appended to, so writes start at 0).
fn log() -> &'static (std::fs::File, Auditor) {
    static LOG: OnceLock<(std::fs::File, Auditor)> = OnceLock::new();
    LOG.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("leash-fuzz-ocsf-{}.jsonl", std::process::id()));
        let file = std::fs::OpenOptions::new().create(true).read(true).append(true).open(&path);
        let file = file.expect("a temporary audit log");
        let _ = std::fs::remove_file(&path);
        let auditor = Auditor::to_file("fuzz", Some(file.try_clone().expect("a second handle")), None, false);
        (file, auditor)
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let fields: Vec<&[u8]> = data.split(|b| *b == 0xff).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or_default();
    let (file, auditor) = log();
    file.set_len(0).expect("truncate");
    let decision = ProxyDecision {
        allowed: field(0).first().is_some_and(|b| b & 1 == 1),
        method: text(field(1)),
        host: text(field(2)),
        port: 443,
        path: Some(text(field(3))),
        policy: Some(text(field(4))),
        rule: Some(text(field(5))),
        reason: text(field(6)),
        binary: Some(text(field(7))),
        credentials: vec![text(field(8))],
        client: None,
        redirected_from: None,
    };
    let _ = auditor.proxy_decision(&decision);
    let hooks = [Hook::Connect4, Hook::LsmOpen, Hook::LsmExec, Hook::LsmConnect, Hook::LsmKill];
    let mut event = DenyEvent {
        cgroup_id: 1,
        time_ns: 0,
        pid: 7,
        uid: 1000,
        hook: hooks[field(0).len() % hooks.len()] as u32,
        family: if field(0).len() % 2 == 0 { 2 } else { 1 },
        sock_type: 1,
        protocol: 6,
        addr: [0; 16],
        port: 443,
        _pad: [0; 6],
        comm: [0; 16],
        target_ino: 0,
        target_dev: 0,
        target_pid: 0,
        path: [0; 64],
    };
    let comm = field(9);
    event.comm[..comm.len().min(16)].copy_from_slice(&comm[..comm.len().min(16)]);
    let path = field(10);
    event.path[..path.len().min(64)].copy_from_slice(&path[..path.len().min(64)]);
    let target: &std::path::Path = std::ffi::OsStr::from_bytes(field(11)).as_ref();
    auditor.kernel_denied(&event, Some(target));

    let mut written = String::new();
    let mut reader = file;
    reader.seek(SeekFrom::Start(0)).expect("seek");
    reader.read_to_string(&mut written).expect("the log is UTF-8");
    let lines: Vec<&str> = written.split_terminator('\n').collect();
    assert_eq!(lines.len(), 2, "{written:?}");
    for line in lines {
        let value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert!(value.is_object());
        let message = value["message"].as_str().expect("a message");
        assert!(!message.chars().any(char::is_control), "control character in summary {message:?}");
    }
});
