//! Hot reload of the policy when the policy file changes: the proxy's rules, and the `kernel:`
//! rules' lists (files re-resolved to inodes) when BPF-LSM enforces them. A file that does not
//! load is rejected with its error and the policy in force stays; connections already open keep
//! the policy they were accepted under.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use super::sandbox::KernelRulesUpdater;
use crate::kernel::deny_open::TooManyReplaced;
use crate::kernel::lsm_rules::LsmRules;
use crate::policy;
use crate::proxy::Proxy;

/// The sandbox whose `kernel:` rules a reload updates, and the files leash always protects.
pub struct KernelTarget {
    pub updater: KernelRulesUpdater,
    pub protect: Vec<PathBuf>,
}

/// What a reload does with the policy's `kernel:` section.
pub enum KernelReload {
    /// No sandbox (`leash proxy`): the section is not leash's to enforce.
    NoSandbox,
    /// A sandbox whose BPF-LSM rules are not in force (no BPF-LSM here): a reload that brings
    /// a `kernel:` section is refused, unless the run was started with `--allow-degraded`.
    Unenforced { allow_degraded: bool },
    /// The sandbox's BPF-LSM rules, replaced on every reload.
    Update(KernelTarget),
}

/// How often the file's modification time is checked.
const POLL: Duration = Duration::from_millis(500);
/// How often the open deny list's paths are looked up again.
const DENY_OPEN_POLL: Duration = Duration::from_millis(100);
/// The longest wait between two tries of a reload that keeps failing.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Watches `path` and reloads `proxy` on every change until the task is aborted. A reload that
/// failed is tried again, less and less often, until one succeeds, saying why only when the
/// file changed:
/// a revocation must not be lost to a passing failure (descriptors running out, say, which the
/// agent can bring about).
pub fn watch(path: PathBuf, proxy: Arc<Proxy>, kernel: KernelReload) -> tokio::task::JoinHandle<()> {
    let kernel = Arc::new(kernel);
    tokio::spawn(async move {
        let mut seen = modified(&path);
        // While reloads fail: when to try again, and how long to wait after that one.
        let mut retry: Option<(tokio::time::Instant, Duration)> = None;
        loop {
            tokio::time::sleep(POLL).await;
            let now = modified(&path);
            let changed = now != seen;
            let due = retry.is_some_and(|(at, _)| tokio::time::Instant::now() >= at);
            if !changed && !due {
                continue;
            }
            seen = now;
            // Blocking: the kernel rules' files are looked up, and their maps written under locks
            // the deny list's follower holds while it looks.
            let (p, x, k) = (path.clone(), proxy.clone(), kernel.clone());
            let applied =
                tokio::task::spawn_blocking(move || load_and_apply(&p, &x, &k, changed)).await.unwrap_or(false);
            retry = match (applied, retry) {
                (true, _) => None,
                // A file that does not load is parsed again less and less often, up to every
                // RETRY_MAX; a change tries at once.
                (false, Some((_, wait))) if !changed => {
                    Some((tokio::time::Instant::now() + wait, (wait * 2).min(RETRY_MAX)))
                }
                (false, _) => Some((tokio::time::Instant::now() + POLL, POLL * 2)),
            };
        }
    })
}

/// Looks the open deny list's paths up every [`DENY_OPEN_POLL`] and puts what they name now in
/// force ([`crate::kernel::deny_open`]), until the task is aborted; after a failed reload, puts
/// the rules in force again. A failure is said once, until a look succeeds again; an agent that
/// renames listed files aside faster than they can be followed is ended.
pub fn follow_deny_open(updater: KernelRulesUpdater) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(DENY_OPEN_POLL).await;
            // Most policies list no file: no hop to a blocking thread for nothing.
            if updater.deny_open_idle() {
                continue;
            }
            // Blocking: a path may lead anywhere the agent can plant a link (a slow mount), and
            // ending the agent waits for its processes.
            let looking = updater.clone();
            let failed = tokio::task::spawn_blocking(move || {
                let e = looking.follow_deny_open().err()?;
                if e.downcast_ref::<TooManyReplaced>().is_some() {
                    crate::say!("leash: error: {e}: ending the agent");
                    return looking.end_sandbox().err().map(|e| e.context("ending the agent"));
                }
                Some(e)
            })
            .await;
            match failed {
                Ok(None) => failing = false,
                Ok(Some(e)) if !failing => {
                    failing = true;
                    crate::say!("leash: warning: kernel.deny_open: following replaced files failed: {e:#}");
                }
                _ => {}
            }
        }
    })
}

/// Loads `path` and puts it in force, or says why not. The kernel rules are resolved first, so
/// a file whose `kernel:` section does not resolve changes nothing.
pub fn reload_from(path: &std::path::Path, proxy: &Proxy, kernel: &KernelReload) {
    load_and_apply(path, proxy, kernel, true);
}

/// [`reload_from`], saying why a reload failed only when `say_why`; whether it succeeded.
fn load_and_apply(path: &std::path::Path, proxy: &Proxy, kernel: &KernelReload, say_why: bool) -> bool {
    let result = policy::load(path).map_err(|e| e.to_string()).and_then(|p| {
        if p.transparent() != proxy.transparent() {
            return Err("the new policy changes network.transparent, which is set when the sandbox starts: run the agent again for that".to_owned());
        }
        match kernel {
            KernelReload::NoSandbox | KernelReload::Unenforced { allow_degraded: true } => {}
            KernelReload::Unenforced { allow_degraded: false } => {
                if p.kernel().is_some() {
                    return Err(
                        "the new policy has a `kernel:` section, which BPF-LSM cannot put in force here".to_owned()
                    );
                }
            }
            KernelReload::Update(target) => LsmRules::for_reload(p.kernel(), &target.protect)
                .map(|r| r.with_binaries_rules(!p.binaries_restricted().is_empty()).for_leash_run())
                .and_then(|r| target.updater.update(&r).context("updating the BPF-LSM maps"))
                .map_err(|e| format!("{e:#}"))?,
        }
        proxy.reload(p).map_err(|e| format!("{e:#}"))
    });
    match result {
        Ok(()) => {
            crate::say!("leash: policy reloaded from {}", path.display());
            true
        }
        Err(e) => {
            if say_why {
                crate::say!(
                    "leash: policy reload rejected, the previous policy stays in force: {}",
                    without_quotes(&e)
                );
            }
            false
        }
    }
}

/// `message` with every quoted span (between backticks or double quotes) replaced by `…`: a
/// reload error names the place in the file, never what the file holds there.
fn without_quotes(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None if c == '`' || c == '"' => {
                out.push(c);
                out.push('…');
                open = Some(c);
            }
            None => out.push(c),
        }
    }
    out
}

fn modified(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reload_errors_keep_the_place_and_drop_the_contents() {
        let e = "p.yaml:3:6: network_policies.x: invalid type: string \"root:$6$SECRET\", expected a mapping";
        assert_eq!(
            super::without_quotes(e),
            "p.yaml:3:6: network_policies.x: invalid type: string \"…\", expected a mapping"
        );
        assert_eq!(
            super::without_quotes("unknown field `root:x`, expected `version`"),
            "unknown field `…`, expected `…`"
        );
    }
}
