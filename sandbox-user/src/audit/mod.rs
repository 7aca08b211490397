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

/// Refusal lines on stderr each second, of each kind, one by one; the rest are counted in one
/// line (the summary at exit has them all). A sandbox that makes denials as fast as it can must
/// not fill the terminal (a stderr nobody reads then fills thousands of times slower).
const STDERR_LINES_PER_SECOND: u32 = 20;

/// Refusal lines in a sandbox's audit log each second, of each kind, one by one; the rest are
/// counted in one line there. With `--audit-log-max` this keeps a denial in a loop (an agent
/// retrying what it may not do) from filling the log within minutes.
const LOG_LINES_PER_SECOND: u32 = 200;

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
    /// The budgets of the sandbox's own denials.
    denials: Budgets,
    /// The budgets of connections from outside the sandbox: apart from the agent's denials,
    /// which must not hide another user's probe, and bounded too, since any local user can
    /// connect to the proxy.
    outsiders: Budgets,
    /// What was denied, for the summary at exit.
    tally: Mutex<tally::Tally>,
}

/// What an audit line is about.
#[derive(Clone, Copy)]
enum Kind {
    /// An allowed decision: written whole, never held back; when the log has no room left the
    /// decision is refused instead (`Auditor::proxy_decision`).
    Allowed,
    /// A denial of the sandbox's own action, under `Inner::denials`.
    Denial,
    /// A connection from outside the sandbox, under `Inner::outsiders`.
    Outsider,
}

/// The per-second budgets of one kind of refusal line, on stderr and in the audit log.
struct Budgets {
    /// What the lines are, as counted: "denial line(s)".
    what: &'static str,
    stderr: Rate,
    log: Rate,
}

impl Budgets {
    fn new(what: &'static str) -> Self {
        Self { what, stderr: Rate::new(STDERR_LINES_PER_SECOND), log: Rate::new(LOG_LINES_PER_SECOND) }
    }
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
        Ok(Self::to_file(sandbox, file, Some(limit), stderr_lines))
    }

    /// An auditor for `sandbox` appending JSON lines to `file`, already opened by the caller
    /// (`leash run` opens it with the checks of `launcher::host_files`), `limit` bytes at most;
    /// a log with a limit also takes refusal lines within a budget a second. `None`: every line,
    /// without end (for the fuzz target, which checks each line it makes).
    pub fn to_file(sandbox: &str, file: Option<std::fs::File>, limit: Option<LogLimit>, stderr_lines: bool) -> Self {
        let sink = file.map(|f| Sink::new(sandbox, Box::new(f), limit));
        Self::writing(sandbox, sink, stderr_lines)
    }

    /// An auditor writing JSON lines to stdout, for a node daemon whose events serve many
    /// sandboxes (named per event with [`Auditor::kernel_denied_in`]). No limit and no
    /// per-second budget (one pod's denials must not hold back another's): the container
    /// runtime keeps (and rotates) what a daemon writes there.
    pub fn stdout(name: &str) -> Self {
        Self::writing(name, Some(Sink::new(name, Box::new(std::io::stdout()), None)), false)
    }

    fn writing(sandbox: &str, sink: Option<Sink>, stderr_lines: bool) -> Self {
        Self {
            inner: Arc::new(Inner {
                file: sink.map(Mutex::new),
                sandbox: sandbox.to_owned(),
                stderr_lines,
                denials: Budgets::new("denial line(s)"),
                outsiders: Budgets::new("connection(s) from outside the sandbox"),
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
        self.emit(Kind::Denial, &json, Some(&line));
    }

    /// A decision of the proxy; denials also get a stderr line. Returns whether an allowed
    /// decision may stand: not when the audit log has reached its limit, since what cannot be
    /// audited is not done (denials always stand).
    #[must_use = "an allowed decision the audit log could not take must be refused"]
    pub fn proxy_decision(&self, decision: &ProxyDecision) -> bool {
        if !decision.allowed {
            if let Ok(mut t) = self.inner.tally.lock() {
                let rule = decision.rule.clone().unwrap_or_else(|| decision.reason.clone());
                t.proxy(decision.path.is_some(), format!("{}:{}", decision.host, decision.port), rule);
            }
        }
        if !self.records(decision.allowed) {
            return true;
        }
        let (json, line) = ocsf::proxy_decision(&self.inner.sandbox, decision);
        if decision.allowed {
            self.emit(Kind::Allowed, &json, None)
        } else {
            self.emit(Kind::Denial, &json, Some(&line));
            true
        }
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
        // An address handed out is not yet a connection: the proxy audits (and, with the log
        // full, refuses) the connection to it.
        let kind = if decision.allowed { Kind::Allowed } else { Kind::Denial };
        self.emit(kind, &json, (!decision.allowed).then_some(line.as_str()));
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
        self.emit(Kind::Outsider, &json, Some(&line));
    }

    /// A connection the sandbox made to its proxy from another local address than the proxy's
    /// (`pid` connected it), closed unread: the proxy serves only its own address, where no
    /// other user can have bound the port. The sandbox's own denial, under its budgets.
    pub fn other_address_refused(&self, peer: std::net::SocketAddr, pid: u32) {
        if let Ok(mut t) = self.inner.tally.lock() {
            t.proxy(false, format!("proxy from {}", peer.ip()), ocsf::OTHER_ADDRESS_RULE.to_owned());
        }
        let (json, line) = ocsf::other_address_refused(&self.inner.sandbox, peer, pid);
        self.emit(Kind::Denial, &json, Some(&line));
    }

    /// A connection to the proxy its client reset before the proxy read it: counted for the
    /// summary only. Nothing is left to say whose it was, and nothing of it was read.
    pub fn reset_before_read(&self) {
        if let Ok(mut t) = self.inner.tally.lock() {
            t.reset_before_read();
        }
    }

    /// The lines of the summary of what was denied so far; first, how many refusal lines the
    /// last second held back from stderr, if any. What it held back from the log is written
    /// there now.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for budgets in [&self.inner.denials, &self.inner.outsiders] {
            let held = budgets.stderr.take_held();
            if held > 0 {
                lines.push(format!("{held} more {} in the last second not shown one by one", budgets.what));
            }
            let held = budgets.log.take_held();
            if let (true, Some(Ok(mut sink))) = (held > 0, self.inner.file.as_ref().map(|f| f.lock())) {
                sink.write(&ocsf::held_back(&self.inner.sandbox, held, budgets.what));
            }
        }
        let unwritten = self.inner.file.as_ref().and_then(|f| f.lock().ok()).and_then(|s| s.unwritten());
        lines.extend(self.inner.tally.lock().map(|t| t.lines()).unwrap_or_default());
        lines.extend(unwritten);
        lines
    }

    /// Whether a decision with this outcome goes anywhere: denials always (stderr), allowed
    /// decisions only to an audit file. Callers on the hot path check this before building one.
    pub fn records(&self, allowed: bool) -> bool {
        !allowed || self.inner.file.is_some()
    }

    /// Writes `json` to the log and `line` to stderr, each within `kind`'s budgets. Returns
    /// whether the log took it (or has no place for it), which matters for allowed decisions
    /// only.
    fn emit(&self, kind: Kind, json: &serde_json::Value, line: Option<&str>) -> bool {
        let budgets = match kind {
            Kind::Allowed => None,
            Kind::Denial => Some(&self.inner.denials),
            Kind::Outsider => Some(&self.inner.outsiders),
        };
        let written = self.log(budgets, json);
        if let (true, Some(line), Some(budgets)) = (self.inner.stderr_lines, line, budgets) {
            let (shown, held) = budgets.stderr.admit();
            if held > 0 {
                crate::say!("leash: {held} more {} in one second not shown one by one", budgets.what);
            }
            if shown {
                crate::say!("leash: {line}");
            }
        }
        written
    }

    fn log(&self, budgets: Option<&Budgets>, json: &serde_json::Value) -> bool {
        let Some(file) = &self.inner.file else { return true };
        let Ok(mut sink) = file.lock() else { return false };
        if let (Some(budgets), true) = (budgets, sink.is_limited()) {
            let (admitted, held) = budgets.log.admit();
            if held > 0 {
                sink.write(&ocsf::held_back(&self.inner.sandbox, held, budgets.what));
            }
            if !admitted {
                return true;
            }
        }
        sink.write(json)
    }
}

/// The audit log's writer, and how much more this sandbox may write to it.
struct Sink {
    out: Box<dyn std::io::Write + Send>,
    /// Whose log this is, for the line saying it reached its limit.
    sandbox: String,
    /// The limit, and the bytes of events still allowed under it; `None`: no limit.
    budget: Option<(LogLimit, u64)>,
    /// Events not written since the limit was reached.
    unwritten: u64,
}

impl Sink {
    fn new(sandbox: &str, out: Box<dyn std::io::Write + Send>, limit: Option<LogLimit>) -> Self {
        Self { out, sandbox: sandbox.to_owned(), budget: limit.map(|l| (l, l.0)), unwritten: 0 }
    }

    /// Whether this log has a limit (a sandbox's file; not the daemon's stdout).
    fn is_limited(&self) -> bool {
        self.budget.is_some()
    }

    /// Writes one event as a JSON line if the limit leaves room for it, and says whether it
    /// did. The first event beyond the limit is replaced by one line saying the limit was
    /// reached (over the limit: a reader must learn why the log stops), and every later one is
    /// only counted.
    fn write(&mut self, json: &serde_json::Value) -> bool {
        let mut text = ocsf::json_line(json);
        text.push('\n');
        let mut written = true;
        if let Some((limit, left)) = &mut self.budget {
            if text.len() as u64 > *left {
                *left = 0;
                self.unwritten += 1;
                if self.unwritten > 1 {
                    return false;
                }
                crate::say!(
                    "leash: the audit log reached its limit of {limit} (--audit-log-max): later events are counted, not \
                     written, and the proxy allows nothing more"
                );
                text = ocsf::json_line(&ocsf::audit_limit_reached(&self.sandbox, limit.0));
                text.push('\n');
                written = false;
            } else {
                *left -= text.len() as u64;
            }
        }
        // Audit must never take the sandbox down; a full disk loses lines, not the agent.
        let _ = self.out.write_all(text.as_bytes());
        let _ = self.out.flush();
        written
    }

    /// The summary's line about events the limit kept out of the log, if any.
    fn unwritten(&self) -> Option<String> {
        let (limit, _) = self.budget?;
        (self.unwritten > 0).then(|| {
            format!(
                "{} event(s) are not in the audit log, which reached its limit of {limit}; the proxy allowed nothing after that",
                self.unwritten
            )
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
        let mut sink = Sink::new("s1", Box::new(out.clone()), Some(LogLimit(4096)));
        let event = serde_json::json!({ "message": "x".repeat(100) });
        let written = (0..1000).filter(|_| sink.write(&event)).count();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let events = 4096 / (event.to_string().len() + 1);
        assert_eq!(written, events, "the sink says which events it took");
        assert_eq!(lines.len(), events + 1, "the events that fit, then the marker");
        assert!(lines[..events].iter().all(|l| l.contains("xxxx")));
        assert!(lines[events].contains("limit"), "{}", lines[events]);
        assert!(text.len() - lines[events].len() - 1 <= 4096);
        let said = sink.unwritten().unwrap();
        let expected =
            format!("{} event(s) are not in the audit log, which reached its limit of 4 KiB;", 1000 - events);
        assert!(said.starts_with(&expected), "{said}");
        let unlimited = Sink::new("s1", Box::new(Shared::default()), None);
        assert_eq!(unlimited.unwritten(), None);
    }

    /// A log with a limit takes each kind of refusal line within a budget a second, the rest
    /// counted in one line; one kind's flood does not take another's budget, and allowed
    /// decisions are never held back.
    #[test]
    fn refusal_lines_have_a_budget_a_second_of_each_kind() {
        let dir = std::env::temp_dir().join(format!("leash-audit-budget-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        let auditor = Auditor::new("s1", Some(&path), LogLimit::DEFAULT, false).unwrap();
        let peer: std::net::SocketAddr = "127.0.0.2:4000".parse().unwrap();
        for _ in 0..1000 {
            auditor.other_address_refused(peer, 7);
        }
        auditor.outsider_refused(peer);
        let allowed = ProxyDecision { allowed: true, host: "example.test".into(), port: 443, ..Default::default() };
        let taken = (0..300).filter(|_| auditor.proxy_decision(&allowed)).count();
        let _ = auditor.summary();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(count(ocsf::OTHER_ADDRESS_RULE), LOG_LINES_PER_SECOND as usize, "denials one by one");
        let held = format!("\"count\":{}", 1000 - LOG_LINES_PER_SECOND);
        assert!(text.lines().any(|l| l.contains(&held) && l.contains("denial line(s)")), "the rest counted: {text}");
        assert_eq!(count("proxy_serves_own_sandbox_only"), 1, "the outsider has a budget of its own");
        assert_eq!((taken, count("example.test")), (300, 300), "allowed decisions are all written");
    }
}
