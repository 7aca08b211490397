//! The `leash` binary: parse the command line, run the subcommand, exit with its code.

// Lines on stderr go through `say!` (`stderr.rs`), which never panics.
#![deny(clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use leash::launcher::{self, exit, RunOptions};
use leash::policy;

mod cli;

// The allocator is glibc's. mimalloc, measured side by side, cost `leash run` 0.6 ms of its start
// (200 more page faults: its arenas and per-thread pages) and gained the proxy nothing
// measurable in `cargo xtask bench proxy`.

use cli::{Cli, Command, PolicyCommand};

/// Raises the soft descriptor limit to the hard one: a proxy holds two per tunnel.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() -> ExitCode {
    // Before any thread: a static leash's C library is told to load no NSS module.
    if let Err(e) = leash::accounts::init() {
        leash::say!("leash: error: {e:#}");
        return ExitCode::from(exit::LEASH_FAILED as u8);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    raise_fd_limit();
    let code = match cli.command {
        Command::Run(args) => run(args),
        Command::Doctor { json } => doctor(json),
        Command::Policy(PolicyCommand::Check { file }) => match policy::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                0
            }
            Err(e) => {
                leash::say!("{e}");
                1
            }
        },
        Command::Policy(PolicyCommand::Show { file }) => match show_policy(&file) {
            Ok(shown) => {
                print!("{shown}");
                0
            }
            Err(e) => {
                leash::say!("{e}");
                1
            }
        },
        Command::Policy(PolicyCommand::Suggest { from, merge, out }) => match suggest(&from, merge.as_deref()) {
            Ok(text) => write_out(&text, out.as_deref()),
            Err(e) => {
                leash::say!("leash: error: {e}");
                1
            }
        },
        Command::Policy(PolicyCommand::Eval { file, host, port, method, path, binary, headers }) => {
            let request = (method.is_some() || path.is_some())
                .then(|| (method.as_deref().unwrap_or("GET"), path.as_deref().unwrap_or("/"), headers.as_slice()));
            eval(&file, &host, port, request, binary.as_deref())
        }
        Command::Proxy(args) => standalone_proxy(args),
        Command::Daemon(args) => daemon(args),
        Command::Confine(args) => confine(args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(exit::LEASH_FAILED as u8))
}

/// `leash policy show FILE`: the file and what leash adds, or the error (`FILE:LINE:COL: ...`).
fn show_policy(file: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let policy = policy::parse_str(&file.display().to_string(), &text).map_err(|e| e.to_string())?;
    Ok(policy::show::render(&text, &policy))
}

/// `leash policy suggest`: the denials of the audit log `from` as a policy, or merged into `merge`.
fn suggest(from: &std::path::Path, merge: Option<&std::path::Path>) -> Result<String, String> {
    let log = std::fs::read_to_string(from).map_err(|e| format!("{}: {e}", from.display()))?;
    let seen = policy::suggest::observations(&log).map_err(|e| format!("{}: {e}", from.display()))?;
    let learned = policy::learn::Learned::from_observations(&seen);
    let source = format!("the denials in {}", from.display());
    let Some(file) = merge else {
        return Ok(learned.document(&source));
    };
    let original = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if learned.is_empty() {
        return Ok(original);
    }
    policy::merge::merge(&original, &file.display().to_string(), learned, &source)
}

/// Writes `text` to `out`, or to stdout.
fn write_out(text: &str, out: Option<&std::path::Path>) -> i32 {
    let Some(path) = out else {
        print!("{text}");
        return 0;
    };
    match std::fs::write(path, text) {
        Ok(()) => 0,
        Err(e) => {
            leash::say!("leash: error: writing {}: {e}", path.display());
            1
        }
    }
}

/// Help and version go to stdout as usual. A usage error is printed on one line; for `leash run`
/// it exits 125 like every other failure before exec, elsewhere 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let rendered = e.render().to_string();
    let message: Vec<&str> =
        rendered.lines().map(str::trim).take_while(|l| !l.starts_with("Usage:")).filter(|l| !l.is_empty()).collect();
    leash::say!("leash: {} (see `leash --help`)", message.join(" "));
    let is_run = matches!(std::env::args().nth(1).as_deref(), Some("run" | "confine"));
    ExitCode::from(if is_run { exit::LEASH_FAILED as u8 } else { 2 })
}

/// The async runtime, with `threads` workers. One agent's proxy gains nothing from more: on
/// small hosts the hand-offs between worker threads cost more than they bring.
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("starting the tokio runtime")
}

/// `leash run`'s runtime: one thread, leash's main one, runs the launcher and the proxy's tasks.
/// A worker thread beside it served one agent no faster, and each step of the start that
/// waited for a task paid a hand-off between threads (0.2-0.4 ms of a warm start).
fn main_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("starting the tokio runtime")
}

fn run(args: cli::RunArgs) -> i32 {
    // Before the agent shares it: `stderr::restore` puts it back as it was given.
    leash::stderr::remember();
    // leash's memory will hold the credentials and its CA's key: no core file of it, and no access
    // to it through /proc for a process of the same uid (an agent run as root without BPF-LSM).
    // The watchdog, forked next, inherits this.
    if let Err(e) = nix::sys::prctl::set_dumpable(false) {
        leash::say!("leash: error: making leash non-dumpable: {e}");
        return exit::LEASH_FAILED;
    }
    // SAFETY: first thing, while leash has one thread (the runtime starts below).
    let watchdog = match unsafe { launcher::watchdog::Watchdog::fork() } {
        Ok(w) => w,
        Err(e) => {
            leash::say!("leash: error: {e:#}");
            return exit::LEASH_FAILED;
        }
    };
    let opts = RunOptions {
        policy: args.policy,
        proxy_listen: args.proxy.proxy_listen,
        audit_log: args.proxy.audit_log,
        audit_log_max: args.proxy.audit_log_max,
        credentials_file: args.proxy.credentials_file,
        upstream_ca: args.proxy.upstream_ca,
        allow_degraded: args.allow_degraded,
        quiet: args.quiet,
        learn: args.learn,
        learn_allow_private: args.learn_allow_private,
        keep_home: args.keep_home,
        command: args.command,
    };
    let begun = match launcher::begin(opts, watchdog) {
        Ok(begun) => begun,
        Err(e) => {
            leash::say!("leash: error: {e:#}");
            return exit::LEASH_FAILED;
        }
    };
    match main_thread_runtime().block_on(launcher::run(begun)) {
        Ok(code) => code,
        Err(e) => {
            leash::say!("leash: error: {e:#}");
            exit::LEASH_FAILED
        }
    }
}

fn daemon(args: cli::DaemonArgs) -> i32 {
    let kube = match (args.kube_api, args.kube_token_file, args.kube_ca_file) {
        (Some(server), Some(token_file), Some(ca_file)) => {
            let Some(node) = args.node_name.clone().or_else(|| std::env::var("NODE_NAME").ok()) else {
                leash::say!("leash daemon: error: --kube-api needs --node-name (or $NODE_NAME)");
                return 2;
            };
            Some(leash::daemon::kube::KubeConfig { server, token_file, ca_file, node })
        }
        _ => None,
    };
    let opts = leash::daemon::DaemonOptions {
        socket: args.socket,
        metrics: args.metrics,
        policies: args.policies,
        state_dir: args.state_dir,
        bpffs: args.bpffs,
        cgroup_root: args.cgroup_root,
        node_name: args.node_name,
        default_policy: args.default_policy,
        pod_wait: std::time::Duration::from_millis(args.pod_wait_ms),
        kube,
        max_sandboxes: args.max_sandboxes,
        max_sandboxes_per_pod: args.max_sandboxes_per_pod,
        gc_interval: std::time::Duration::from_millis(args.gc_interval_ms.max(10)),
        generation: args.generation,
    };
    match leash::daemon::run(opts) {
        Ok(()) => 0,
        Err(e) => {
            leash::say!("leash daemon: error: {e:#}");
            1
        }
    }
}

fn confine(args: cli::ConfineArgs) -> i32 {
    let opts = launcher::confine::ConfineOptions {
        socket: args.socket,
        policy: args.policy,
        proxy_listen: args.proxy.proxy_listen,
        audit_log: args.proxy.audit_log,
        audit_log_max: args.proxy.audit_log_max,
        credentials_file: args.proxy.credentials_file,
        upstream_ca: args.proxy.upstream_ca,
        allow_degraded: args.allow_degraded,
        command: args.command,
    };
    match runtime(1).block_on(launcher::confine::confine(opts)) {
        Ok(code) => code,
        Err(e) => {
            leash::say!("leash: error: {e:#}");
            exit::LEASH_FAILED
        }
    }
}

fn doctor(json: bool) -> i32 {
    let rows = leash::doctor::check();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
    } else {
        print!("{}", leash::doctor::render(&rows));
    }
    if rows.iter().all(|r| r.available) {
        0
    } else {
        1
    }
}

/// `leash policy eval`: Rego's decision for a connection, or for a request (method, target,
/// headers) under each reading the proxy judges.
fn eval(
    file: &std::path::Path,
    host: &str,
    port: u16,
    request: Option<(&str, &str, &[String])>,
    binary: Option<&std::path::Path>,
) -> i32 {
    let policy = match policy::load(file) {
        Ok(p) => p,
        Err(e) => {
            leash::say!("{e}");
            return 1;
        }
    };
    match eval_readings(&policy, host, port, request, binary) {
        Ok(decision) => {
            println!("{decision}");
            0
        }
        Err(e) => {
            leash::say!("leash: error: evaluating {}: {e}", file.display());
            1
        }
    }
}

/// The decision on the request as all its readings (`judge_all`), made by the decider the proxy
/// runs (the Rego reference gives the same JSON: `sandbox-policy/tests/decisions.rs`).
fn eval_readings(
    policy: &policy::CompiledPolicy,
    host: &str,
    port: u16,
    request: Option<(&str, &str, &[String])>,
    binary: Option<&std::path::Path>,
) -> Result<serde_json::Value, String> {
    use policy::readings::{readings, METHOD_OVERRIDES};
    let decider = policy::Decider::new(policy);
    let Some((method, target, headers)) = request else {
        return Ok(decider.eval_json(host, port, None, None, binary));
    };
    let mut overrides = Vec::new();
    for header in headers {
        let Some((name, value)) = header.split_once(':') else {
            return Err(format!("--header `{header}` is not `NAME: VALUE`"));
        };
        if METHOD_OVERRIDES.iter().any(|o| o.eq_ignore_ascii_case(name.trim())) {
            overrides.push(value.trim());
        }
    }
    let Some(all) = readings(method, overrides, target) else {
        return Ok(serde_json::json!({
            "input": { "host": host, "port": port, "method": method, "path": target },
            "allow": false,
            "reading": "as sent",
            "reason": format!("method `{method}` is not canonical (upper-case)"),
        }));
    };
    let outcome = |d: &serde_json::Value| match (d["allow"].as_bool(), d["request"]["audit"].as_bool()) {
        (Some(true), Some(true)) => policy::readings::Outcome::Audited,
        (Some(true), _) => policy::readings::Outcome::Allowed,
        _ => policy::readings::Outcome::Refused,
    };
    let judge = |r: &policy::readings::Reading<'_>| {
        Ok::<_, std::convert::Infallible>(decider.eval_json(host, port, Some(&r.method), Some(&r.target), binary))
    };
    let Ok(judged) = policy::readings::judge_all(&all, judge, outcome);
    let (mut decision, reading) = judged.ok_or_else(|| "no reading to judge".to_owned())?;
    decision["reading"] = serde_json::json!(reading);
    Ok(decision)
}

fn standalone_proxy(args: cli::ProxyArgs) -> i32 {
    let policy = match policy::load(&args.policy) {
        Ok(p) => p,
        Err(e) => {
            leash::say!("{e}");
            return 1;
        }
    };
    let result: anyhow::Result<()> = runtime(args.threads).block_on(async {
        use anyhow::Context as _;
        let audit = leash::audit::Auditor::new("standalone", args.audit_log.as_deref(), args.audit_log_max, true)?;
        let secrets = match args.credentials_file {
            Some(path) => leash::proxy::Secrets::File(path),
            None => leash::proxy::Secrets::Environment,
        };
        let config = leash::proxy::ProxyConfig { upstream_ca: args.upstream_ca, secrets };
        let proxy = leash::proxy::Proxy::new(policy, &config, audit)?;
        if let Some(out) = &args.ca_out {
            std::fs::write(out, proxy.ca().cert_pem()).with_context(|| format!("writing {}", out.display()))?;
        }
        let bound = leash::proxy::BoundProxy::bind(args.listen).await?;
        leash::say!("leash: proxy listening on {}", bound.addr());
        let task = bound.serve(proxy.clone());
        let watcher = launcher::watch_policy(args.policy.clone(), proxy.clone(), launcher::KernelReload::NoSandbox);
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = hup.recv() => launcher::reload_policy(&args.policy, &proxy, &launcher::KernelReload::NoSandbox),
            }
        }
        task.abort();
        watcher.abort();
        Ok(())
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            leash::say!("leash: error: {e:#}");
            exit::LEASH_FAILED
        }
    }
}
