//! Hot reload of the proxy's policy when the policy file changes. A file that does not load is
//! rejected with its error and the policy in force stays; connections already open keep the
//! policy they were accepted under.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::policy;
use crate::proxy::Proxy;

/// How often the file's modification time is checked.
const POLL: Duration = Duration::from_millis(500);

/// Watches `path` and reloads `proxy` on every change until the task is aborted.
pub fn watch(path: PathBuf, proxy: Arc<Proxy>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = modified(&path);
        loop {
            tokio::time::sleep(POLL).await;
            let now = modified(&path);
            if now == seen {
                continue;
            }
            seen = now;
            reload_from(&path, &proxy);
        }
    })
}

/// Loads `path` and puts it in force, or says why not.
pub fn reload_from(path: &std::path::Path, proxy: &Proxy) {
    let result =
        policy::load(path).map_err(|e| e.to_string()).and_then(|p| proxy.reload(p).map_err(|e| format!("{e:#}")));
    match result {
        Ok(()) => eprintln!("leash: policy reloaded from {}", path.display()),
        Err(e) => eprintln!("leash: policy reload rejected, the previous policy stays in force: {e}"),
    }
}

fn modified(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
