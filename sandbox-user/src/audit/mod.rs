//! The audit trail: every denial (kernel or proxy) and every proxy decision becomes one
//! OCSF-shaped JSON line in `--audit-log FILE`; denials also print one short line on stderr.
//! Nothing secret is ever passed in here: events carry addresses, names and verdicts only.

mod limit;
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

pub use limit::LogLimit;
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
    file: Option<Mutex<Sink>>,
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
    /// An auditor for `sandbox`, appending JSON lines to `log` when given (created mode 0600),
    /// `limit` bytes of them at most.
    pub fn new(sandbox: &str, log: Option<&Path>, limit: LogLimit, stderr_lines: bool) -> Result<Self> {
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
        Ok(Self::to_file(sandbox, file, limit, stderr_lines))
    }

    /// An auditor for `sandbox` appending JSON lines to `file`, already opened by the caller
    /// (`leash run` opens it with the checks of `launcher::host_files`), `limit` bytes at most.
    pub fn to_file(sandbox: &str, file: Option<std::fs::File>, limit: LogLimit, stderr_lines: bool) -> Self {
        let sink = file.map(|f| Sink::new(Box::new(f), Some(limit)));
        Self::writing(sandbox, sink, stderr_lines)
    }

    /// An auditor writing JSON lines to stdout, for a node daemon whose events serve many
    /// sandboxes (named per event with [`Auditor::kernel_denied_in`]). No limit: the container
    /// runtime keeps (and rotates) what a daemon writes there.
    pub fn stdout(name: &str) -> Self {
        Self::writing(name, Some(Sink::new(Box::new(std::io::stdout()), None)), false)
    }

    fn writing(sandbox: &str, sink: Option<Sink>, stderr_lines: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                file: sink.map(Mutex::new),
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
        let unwritten = self.inner.file.as_ref().and_then(|f| f.lock().ok()).and_then(|s| s.unwritten());
        let (denials, outsiders) = (self.inner.line_rate.take_held(), self.inner.outsider_rate.take_held());
        let held = [
            (denials > 0).then(|| format!("{denials} more denial line(s) in the last second not shown one by one")),
            (outsiders > 0).then(|| {
                format!(
                    "{outsiders} more connection(s) from outside the sandbox in the last second not shown one by one"
                )
            }),
        ];
        held.into_iter()
            .flatten()
            .chain(self.inner.tally.lock().map(|t| t.lines()).unwrap_or_default())
            .chain(unwritten)
            .collect()
    }

    /// Whether a decision with this outcome goes anywhere: denials always (stderr), allowed
    /// decisions only to an audit file. Callers on the hot path check this before building one.
    pub fn records(&self, allowed: bool) -> bool {
        !allowed || self.inner.file.is_some()
    }

    fn emit(&self, json: &serde_json::Value, line: Option<&str>) {
        if let Some(file) = &self.inner.file {
            if let Ok(mut sink) = file.lock() {
                sink.write(&self.inner.sandbox, json);
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

/// The audit log's writer, and how much more this sandbox may write to it.
struct Sink {
    out: Box<dyn std::io::Write + Send>,
    /// The limit, and the bytes of events still allowed under it; `None`: no limit.
    budget: Option<(LogLimit, u64)>,
    /// Events not written since the limit was reached.
    unwritten: u64,
}

impl Sink {
    fn new(out: Box<dyn std::io::Write + Send>, limit: Option<LogLimit>) -> Self {
        Self { out, budget: limit.map(|l| (l, l.0)), unwritten: 0 }
    }

    /// Writes one event as a JSON line, if the limit leaves room for it. The first event
    /// beyond the limit is replaced by one line saying the limit was reached (over the limit:
    /// a reader must learn why the log stops), and every later one is only counted.
    fn write(&mut self, sandbox: &str, json: &serde_json::Value) {
        let mut text = json.to_string();
        text.push('\n');
        if let Some((limit, left)) = &mut self.budget {
            if text.len() as u64 > *left {
                *left = 0;
                self.unwritten += 1;
                if self.unwritten > 1 {
                    return;
                }
                eprintln!("leash: the audit log reached its limit of {limit} (--audit-log-max); later events are counted, not written");
                text = ocsf::audit_limit_reached(sandbox, limit.0).to_string();
                text.push('\n');
            } else {
                *left -= text.len() as u64;
            }
        }
        // Audit must never take the sandbox down; a full disk loses lines, not the agent.
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
    }

    /// The summary's line about events the limit kept out of the log, if any.
    fn unwritten(&self) -> Option<String> {
        let (limit, _) = self.budget?;
        (self.unwritten > 0).then(|| {
            format!("{} event(s) are not in the audit log, which reached its limit of {limit}", self.unwritten)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose bytes the test can read after the sink took it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_log_stops_at_its_limit_with_one_line_saying_so() {
        let out = Shared::default();
        let mut sink = Sink::new(Box::new(out.clone()), Some(LogLimit(4096)));
        let event = serde_json::json!({ "message": "x".repeat(100) });
        for _ in 0..1000 {
            sink.write("s1", &event);
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let events = 4096 / (event.to_string().len() + 1);
        assert_eq!(lines.len(), events + 1, "the events that fit, then the marker");
        assert!(lines[..events].iter().all(|l| l.contains("xxxx")));
        assert!(lines[events].contains("limit"), "{}", lines[events]);
        assert!(text.len() - lines[events].len() - 1 <= 4096);
        let said = sink.unwritten().unwrap();
        assert_eq!(
            said,
            format!("{} event(s) are not in the audit log, which reached its limit of 4 KiB", 1000 - events)
        );
        let unlimited = Sink::new(Box::new(Shared::default()), None);
        assert_eq!(unlimited.unwritten(), None);
    }
}
