//! `bench connect`: the cost of the sandbox on the connect path, measured against the same proxy
//! from inside and outside one sandbox.
//!
//! One `leash run` (allow-nothing policy) starts a shell as the agent. It writes `$HTTP_PROXY` to
//! a file, says `ready`, then runs `connbench proxy N` each time xtask writes `run` to its stdin,
//! answering with connbench's JSON line on stdout; end of input ends it. While that sandbox is
//! alive, xtask (root, not sandboxed) runs the same `connbench` against the address from the file.
//! Inside and outside alternate, one after the other and never at once, for a few rounds, swapping
//! which goes first each round. All connects go to leash's proxy on loopback.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{median, Ctx};

/// The most a connect from inside the sandbox may cost against one from outside (issue 13).
const CONNECT_GOAL: f64 = 1.05;

/// One connbench result (nanoseconds).
#[derive(Clone, Copy)]
struct Loop {
    mean: u64,
    median: u64,
    p99: u64,
    /// Connects that waited for a SYN retransmit (left out of `mean`).
    stalls: u64,
}

pub fn run(ctx: &Ctx, rounds: u32, connects: u32) -> Result<()> {
    let addr_file = ctx.dir.join("proxy-addr");
    std::fs::write(&addr_file, "")?;
    // The agent runs as an unprivileged user; the directory stays root's, the file is writable.
    std::fs::set_permissions(&addr_file, std::fs::Permissions::from_mode(0o666))?;
    for path in [&addr_file, &ctx.connbench] {
        if path.to_string_lossy().contains('\'') {
            bail!("{} contains a quote; use a TMPDIR without one", path.display());
        }
    }
    let script = format!(
        "echo \"$HTTP_PROXY\" > '{file}' || exit 1\n\
         echo ready\n\
         while read -r cmd && [ \"$cmd\" = run ]; do\n  '{cb}' proxy {connects} || echo connbench-failed\ndone\n",
        file = addr_file.display(),
        cb = ctx.connbench.display(),
    );
    println!("connect: starting a sandbox whose agent runs connbench on request ...");
    let mut session = Session::start(ctx, &script)?;
    session.expect_line("ready", Duration::from_secs(30))?;
    let addr = proxy_addr(&std::fs::read_to_string(&addr_file)?)?;
    let per_loop = Duration::from_secs(30) + Duration::from_micros(200) * connects;

    let mut inside = Vec::new();
    let mut outside = Vec::new();
    for r in 0..rounds {
        for first_inside in [r % 2 == 0, r % 2 != 0] {
            if first_inside {
                session.send("run")?;
                let line = session.next_line(per_loop, "connbench inside the sandbox")?;
                inside.push(
                    parse(&line).with_context(|| {
                        format!("connbench inside the sandbox printed {line:?}{}", session.stderr())
                    })?,
                );
            } else {
                outside.push(outside_loop(ctx, addr, connects)?);
            }
        }
        let (i, o) = (inside.last().expect("ran"), outside.last().expect("ran"));
        println!("connect: round {} of {rounds}: median inside {} ns, outside {} ns", r + 1, i.median, o.median);
    }
    session.finish()?;

    println!();
    println!(
        "connect: loopback connect+close to leash's proxy at {addr}, {rounds} rounds x {connects} connects (ns per op)"
    );
    println!("{:<8} {:>35}   {:>35}", "", "inside the sandbox (agent)", "outside (root, no sandbox)");
    let header = format!("{:>8} {:>8} {:>8} {:>8}", "median", "mean", "p99", "stalls");
    println!("{:<8} {header}   {header}", "round");
    let row = |l: &Loop| format!("{:>8} {:>8} {:>8} {:>8}", l.median, l.mean, l.p99, l.stalls);
    for (r, (i, o)) in inside.iter().zip(&outside).enumerate() {
        println!("{:<8} {}   {}", r + 1, row(i), row(o));
    }
    let summary = |v: &[Loop]| {
        let col = |f: fn(&Loop) -> u64| median(&v.iter().map(f).collect::<Vec<_>>());
        Loop {
            median: col(|l| l.median),
            mean: col(|l| l.mean),
            p99: col(|l| l.p99),
            stalls: v.iter().map(|l| l.stalls).sum(),
        }
    };
    let (i, o) = (summary(&inside), summary(&outside));
    println!("{:<8} {}   {}", "median", row(&i), row(&o));
    let ratio = i.median as f64 / o.median as f64;
    println!(
        "ratio inside/outside = {ratio:.3} on the per-op median (goal <= {CONNECT_GOAL}: {}); {:.3} on the mean, {:.3} on p99",
        if ratio <= CONNECT_GOAL { "met" } else { "NOT met" },
        i.mean as f64 / o.mean as f64,
        i.p99 as f64 / o.p99 as f64,
    );
    if i.stalls + o.stalls > 0 {
        println!(
            "(stalls: connects whose SYN the kernel dropped because the proxy's accept queue was full; \
             each waited >= 1 s for the retransmit and is left out of the mean)"
        );
    }
    println!(
        "(connbench resets each connection as it closes, mostly before the proxy accepts it: the proxy \
         then finds no client socket and counts it, inside and outside alike, so this ratio also counts \
         the proxy's admission work; the programs alone follow)"
    );
    println!();
    programs_alone(ctx, rounds, connects)
}

/// The network programs' own cost: connect+close to a plain listener (accept, read to the end)
/// from a sandbox cgroup confined to it (`connbench sandbox`: the programs `leash run` attaches,
/// owner records and transparent mode included) against the same from outside, alternating.
/// Both sides are served alike; only the programs differ.
fn programs_alone(ctx: &Ctx, rounds: u32, connects: u32) -> Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the plain listener")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut sink = [0u8; 512];
            while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
        }
    });
    let (mut inside, mut outside) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        for first_inside in [r % 2 == 0, r % 2 != 0] {
            if first_inside {
                let out = Command::new(&ctx.connbench)
                    .args(["sandbox", &addr.to_string(), &connects.to_string()])
                    .stdin(Stdio::null())
                    .output()
                    .context("running connbench sandbox")?;
                let stdout = String::from_utf8_lossy(&out.stdout);
                if !out.status.success() {
                    bail!("connbench sandbox failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
                }
                inside.push(parse(stdout.trim()).with_context(|| format!("connbench sandbox printed {stdout:?}"))?);
            } else {
                outside.push(outside_loop(ctx, addr, connects)?);
            }
        }
    }
    let medians = |v: &[Loop]| median(&v.iter().map(|l| l.median).collect::<Vec<_>>());
    let (i, o) = (medians(&inside), medians(&outside));
    println!("connect: programs alone, plain listener at {addr}, {rounds} rounds x {connects} connects (ns per op, median of round medians)");
    println!("  in a sandbox cgroup {i:>8}   outside {o:>8}");
    let ratio = i as f64 / o as f64;
    println!(
        "ratio inside/outside (programs alone) = {ratio:.3} (goal <= {CONNECT_GOAL}: {})",
        if ratio <= CONNECT_GOAL { "met" } else { "NOT met" }
    );
    Ok(())
}

/// `http://IP:PORT` from the agent's environment, which must be a loopback address.
fn proxy_addr(text: &str) -> Result<SocketAddr> {
    let text = text.trim();
    let addr: SocketAddr = text
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("the agent's HTTP_PROXY is not http://IP:PORT: {text:?}"))?;
    if !addr.ip().is_loopback() {
        bail!("the proxy listens on {addr}, not on loopback; this benchmark only sends loopback traffic");
    }
    Ok(addr)
}

fn outside_loop(ctx: &Ctx, addr: SocketAddr, connects: u32) -> Result<Loop> {
    let out = Command::new(&ctx.connbench)
        .arg(addr.to_string())
        .arg(connects.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running connbench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("connbench outside the sandbox failed ({}): {}", out.status, stderr.trim());
    }
    if !stderr.trim().is_empty() {
        println!("connect: outside: {}", stderr.trim());
    }
    parse(stdout.trim()).with_context(|| format!("connbench printed {stdout:?}"))
}

/// Reads connbench's one JSON line; its fields are plain integers.
fn parse(line: &str) -> Result<Loop> {
    let field = |key: &str| -> Result<u64> {
        let pat = format!("\"{key}\":");
        let at = line.find(&pat).with_context(|| format!("no {key} in connbench output"))? + pat.len();
        let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
        digits.parse().with_context(|| format!("{key} is not a number"))
    };
    Ok(Loop { mean: field("ns_per_op")?, median: field("median_ns")?, p99: field("p99_ns")?, stalls: field("stalls")? })
}

/// A running `leash run` whose agent is a shell that xtask drives through stdin and stdout.
/// Dropping it stops leash (SIGTERM, which leash forwards, then SIGKILL).
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Session {
    fn start(ctx: &Ctx, script: &str) -> Result<Self> {
        let mut child = Command::new(&ctx.leash)
            .arg("run")
            .arg("--policy")
            .arg(&ctx.policy)
            .args(["--", "/bin/sh", "-c", script])
            .current_dir(&ctx.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting leash run")?;
        let stdout = child.stdout.take().context("leash stdout")?;
        let mut stderr_pipe = child.stderr.take().context("leash stderr")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("stderr lock").push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdin = child.stdin.take();
        Ok(Self { child, stdin, lines, stderr })
    }

    /// leash's stderr so far, formatted to end an error message.
    fn stderr(&self) -> String {
        let s = self.stderr.lock().expect("stderr lock");
        if s.trim().is_empty() {
            String::new()
        } else {
            format!("; leash's stderr:\n{}", s.trim_end())
        }
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("agent stdin closed")?;
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .with_context(|| format!("writing to the agent{}", self.stderr()))
    }

    /// The agent's next non-empty stdout line, waiting at most `timeout`.
    fn next_line(&self, timeout: Duration, what: &str) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => return Ok(line),
                Err(RecvTimeoutError::Timeout) => bail!("{what}: no answer within {timeout:?}{}", self.stderr()),
                Err(RecvTimeoutError::Disconnected) => {
                    // Give the stderr reader a moment to catch leash's last words.
                    std::thread::sleep(Duration::from_millis(100));
                    bail!("{what}: the sandbox exited early{}", self.stderr())
                }
            }
        }
    }

    fn expect_line(&self, want: &str, timeout: Duration) -> Result<()> {
        let line = self.next_line(timeout, "the sandboxed shell")?;
        if line.trim() != want {
            bail!("the sandboxed shell said {line:?} instead of {want:?}{}", self.stderr());
        }
        Ok(())
    }

    /// Ends the agent's input and waits for leash to exit successfully.
    fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        match self.wait_for(Duration::from_secs(20))? {
            Some(status) if status.success() => Ok(()),
            Some(status) => bail!("leash run exited with {status}{}", self.stderr()),
            None => bail!("leash run did not exit within 20 s after its agent's input ended{}", self.stderr()),
        }
    }

    fn wait_for(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // leash is our unreaped child, so its pid cannot have been reused.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        if !matches!(self.wait_for(Duration::from_secs(5)), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
