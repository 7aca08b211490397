//! The audit trail: every denial (kernel or proxy) and every proxy decision becomes one
//! OCSF-shaped JSON line in `--audit-log FILE`; denials also print one short line on stderr.
//! Nothing secret is ever passed in here: events carry addresses, names and verdicts only.

mod ocsf;
mod rate;
mod tally;

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use sandbox_common::{DenyEvent, Hook};

pub use ocsf::{DnsDecision, ProxyDecision};
pub use rate::Rate;

/// Denial lines on stderr each second, one by one; the rest are counted in one line (the audit
/// log and the summary at exit have them all). A sandbox that makes denials as fast as it can
/// must not fill the terminal (a stderr nobody reads then fills thousands of times slower).
const STDERR_LINES_PER_SECOND: u32 = 20;

/// Where audit events go. Cheap to clone; safe to share between the proxy and the event pump.
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the JSON lines go: a file, stdout (the node daemon, for the cluster's log
    /// collector), or nowhere.
    file: Option<Mutex<Box<dyn std::io::Write + Send>>>,
    sandbox: String,
    stderr_lines: bool,
    /// The budget of those lines.
    line_rate: Rate,
    /// The budget of the lines of connections from outside the sandbox, apart from the agent's
    /// own denials (which must not hide another user's probe), and bounded too: any local user
    /// can connect to the proxy.
    outsider_rate: Rate,
    /// What was denied, for the summary at exit.
    tally: Mutex<tally::Tally>,
}

impl Auditor {
    /// An auditor for `sandbox`, appending JSON lines to `log` when given (created mode 0600).
    pub fn new(sandbox: &str, log: Option<&Path>, stderr_lines: bool) -> Result<Self> {
        let file = match log {
            Some(path) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(path)
                    .with_context(|| format!("opening audit log {}", path.display()))?,
            ),
            None => None,
        };
        Ok(Self::to_file(sandbox, file, stderr_lines))
    }

    /// An auditor for `sandbox` appending JSON lines to `file`, already opened by the caller
    /// (`leash run` opens it with the checks of `launcher::host_files`).
    pub fn to_file(sandbox: &str, file: Option<std::fs::File>, stderr_lines: bool) -> Self {
        Self::writing(sandbox, file.map(|f| Box::new(f) as Box<dyn std::io::Write + Send>), stderr_lines)
    }

    /// An auditor writing JSON lines to stdout, for a node daemon whose events serve many
    /// sandboxes (named per event with [`Auditor::kernel_denied_in`]).
    pub fn stdout(name: &str) -> Self {
        Self::writing(name, Some(Box::new(std::io::stdout())), false)
    }

    fn writing(sandbox: &str, out: Option<Box<dyn std::io::Write + Send>>, stderr_lines: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                file: out.map(Mutex::new),
                sandbox: sandbox.to_owned(),
                stderr_lines,
                line_rate: Rate::new(STDERR_LINES_PER_SECOND),
                outsider_rate: Rate::new(STDERR_LINES_PER_SECOND),
                tally: Mutex::default(),
            }),
        }
    }

    /// A denial reported by one of the kernel programs. `target` names the file of an exec or
    /// open denial when the rules know it.
    pub fn kernel_denied(&self, event: &DenyEvent, target: Option<&std::path::Path>) {
        self.kernel_denied_in(&self.inner.sandbox, event, target);
    }

    /// [`Auditor::kernel_denied`] for a denial in sandbox `sandbox`.
    pub fn kernel_denied_in(&self, sandbox: &str, event: &DenyEvent, target: Option<&std::path::Path>) {
        let is_lsm = Hook::from_u32(event.hook).is_some_and(|h| h as u32 >= Hook::LsmSocketCreate as u32);
        if let Ok(mut t) = self.inner.tally.lock() {
            t.kernel(Hook::from_u32(event.hook).map(Hook::name).unwrap_or("unknown"));
        }
        let (json, line) =
            if is_lsm { ocsf::lsm_denial(sandbox, event, target) } else { ocsf::kernel_denial(sandbox, event) };
        self.emit(&json, Some(&line));
    }

    /// A decision of the proxy; denials also get a stderr line.
    pub fn proxy_decision(&self, decision: &ProxyDecision) {
        if !decision.allowed {
            if let Ok(mut t) = self.inner.tally.lock() {
                let rule = decision.rule.clone().unwrap_or_else(|| decision.reason.clone());
                t.proxy(decision.path.is_some(), format!("{}:{}", decision.host, decision.port), rule);
            }
        }
        if !self.records(decision.allowed) {
            return;
        }
        let (json, line) = ocsf::proxy_decision(&self.inner.sandbox, decision);
        self.emit(&json, (!decision.allowed).then_some(line.as_str()));
    }

    /// An answer of leash's resolver; refusals also get a stderr line.
    pub fn dns_decision(&self, decision: &DnsDecision) {
        if !decision.allowed {
            if let Ok(mut t) = self.inner.tally.lock() {
                t.name(decision.name.clone().unwrap_or_else(|| "?".into()));
            }
        }
        if !self.records(decision.allowed) {
            return;
        }
        let (json, line) = ocsf::dns_decision(&self.inner.sandbox, decision);
        self.emit(&json, (!decision.allowed).then_some(line.as_str()));
    }

    /// A refusal of leash's resolver beyond the rate audited one by one: counted for the
    /// summary only.
    pub fn dns_refusal_counted(&self, name: Option<&str>) {
        if let Ok(mut t) = self.inner.tally.lock() {
            t.name(name.unwrap_or("?").to_owned());
        }
    }

    /// A connection to the proxy from outside its sandbox, closed unread.
    pub fn outsider_refused(&self, peer: std::net::SocketAddr) {
        if let Ok(mut t) = self.inner.tally.lock() {
            t.outsider();
        }
        let (json, line) = ocsf::outsider_refused(&self.inner.sandbox, peer);
        self.emit(&json, None);
        if self.inner.stderr_lines {
            let (shown, held) = self.inner.outsider_rate.admit();
            if held > 0 {
                eprintln!(
                    "leash: {held} more connection(s) from outside the sandbox in one second not shown one by one"
                );
            }
            if shown {
                eprintln!("leash: {line}");
            }
        }
    }

    /// A connection to the proxy its client reset before the proxy read it: counted for the
    /// summary only. Nothing is left to say whose it was, and nothing of it was read.
    pub fn reset_before_read(&self) {
        if let Ok(mut t) = self.inner.tally.lock() {
            t.reset_before_read();
        }
    }

    /// The lines of the summary of what was denied so far; first, how many denial lines the
    /// last second held back, if any.
    pub fn summary(&self) -> Vec<String> {
        let (denials, outsiders) = (self.inner.line_rate.take_held(), self.inner.outsider_rate.take_held());
        let held = [
            (denials > 0).then(|| format!("{denials} more denial line(s) in the last second not shown one by one")),
            (outsiders > 0).then(|| {
                format!(
                    "{outsiders} more connection(s) from outside the sandbox in the last second not shown one by one"
                )
            }),
        ];
        held.into_iter().flatten().chain(self.inner.tally.lock().map(|t| t.lines()).unwrap_or_default()).collect()
    }

    /// Whether a decision with this outcome goes anywhere: denials always (stderr), allowed
    /// decisions only to an audit file. Callers on the hot path check this before building one.
    pub fn records(&self, allowed: bool) -> bool {
        !allowed || self.inner.file.is_some()
    }

    fn emit(&self, json: &serde_json::Value, line: Option<&str>) {
        if let Some(file) = &self.inner.file {
            if let Ok(mut f) = file.lock() {
                let mut text = json.to_string();
                text.push('\n');
                // Audit must never take the sandbox down; a full disk loses lines, not the agent.
                let _ = f.write_all(text.as_bytes());
                let _ = f.flush();
            }
        }
        if let (true, Some(line)) = (self.inner.stderr_lines, line) {
            let (shown, held) = self.inner.line_rate.admit();
            if held > 0 {
                eprintln!("leash: {held} more denial line(s) in one second not shown one by one");
            }
            if shown {
                eprintln!("leash: {line}");
            }
        }
    }
}
