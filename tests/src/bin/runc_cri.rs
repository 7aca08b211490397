//! `runc_cri`: the node test's runc, standing in for the part of containerd's CRI plugin that
//! `ctr` 1.6 lacks. On `runc create --bundle DIR` it sets the container's process user and group
//! from the annotation [`RUN_AS`] (what the CRI plugin does with a pod's `runAsUser` and
//! `runAsGroup`) and gives the container a private cgroup namespace (the CRI plugin's default on
//! cgroup v2), then execs the real runc with the same arguments. Anything else passes through.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;

use leash_tests::node_spec::RUN_AS;
use serde_json::{json, Value};

const RUNC: &str = "/usr/sbin/runc";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "create") {
        if let Some(bundle) = args.iter().position(|a| a == "--bundle" || a == "-b").and_then(|i| args.get(i + 1)) {
            if let Err(e) = patch(Path::new(bundle)) {
                eprintln!("runc_cri: {bundle}: {e}");
                std::process::exit(1);
            }
        }
    }
    let e = Command::new(RUNC).args(&args).exec();
    eprintln!("runc_cri: exec {RUNC}: {e}");
    std::process::exit(1);
}

fn patch(bundle: &Path) -> Result<(), String> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| e.to_string())?;
    let mut spec: Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    if let Some(run_as) = spec["annotations"][RUN_AS].as_str().map(str::to_owned) {
        let (uid, gid) = run_as.split_once(':').ok_or("run-as is not uid:gid")?;
        let uid: u32 = uid.parse().map_err(|_| "bad uid")?;
        let gid: u32 = gid.parse().map_err(|_| "bad gid")?;
        spec["process"]["user"] = json!({ "uid": uid, "gid": gid });
    }
    let namespaces = spec["linux"]["namespaces"].as_array_mut().ok_or("no linux.namespaces")?;
    if !namespaces.iter().any(|n| n["type"] == "cgroup") {
        namespaces.push(json!({ "type": "cgroup" }));
    }
    std::fs::write(&path, serde_json::to_vec(&spec).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}
