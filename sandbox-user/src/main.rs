//! The `leash` binary: parse the command line, run the subcommand, exit with its code.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use leash::launcher::{self, exit, RunOptions};
use leash::policy::{self, NetworkDecision};

mod cli;

use cli::{Cli, Command, PolicyCommand};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let code = match cli.command {
        Command::Run(args) => run(args),
        Command::Doctor { json } => doctor(json),
        Command::Policy(PolicyCommand::Check { file }) => match policy::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Command::Policy(PolicyCommand::Eval { file, host, port }) => eval(&file, &host, port),
        Command::Proxy { policy, listen, audit_log } => standalone_proxy(&policy, listen, audit_log.as_deref()),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(exit::LEASH_FAILED as u8))
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
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:"))
        .filter(|l| !l.is_empty())
        .collect();
    eprintln!("leash: {} (see `leash --help`)", message.join(" "));
    let is_run = std::env::args().nth(1).as_deref() == Some("run");
    ExitCode::from(if is_run { exit::LEASH_FAILED as u8 } else { 2 })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("starting the tokio runtime")
}

fn run(args: cli::RunArgs) -> i32 {
    let opts = RunOptions {
        policy: args.policy,
        proxy_listen: args.proxy_listen,
        audit_log: args.audit_log,
        allow_degraded: args.allow_degraded,
        command: args.command,
    };
    // block_on keeps the agent's fork on the main thread, which PR_SET_PDEATHSIG is tied to.
    match runtime().block_on(launcher::run(opts)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("leash: error: {e:#}");
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
    if rows.iter().all(|r| r.available) { 0 } else { 1 }
}

fn eval(file: &std::path::Path, host: &str, port: u16) -> i32 {
    let policy = match policy::load(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let decision = match policy.network_decision(host, port) {
        NetworkDecision::Allow { policy, endpoint_host } => {
            serde_json::json!({ "allow": true, "host": host, "port": port, "policy": policy, "endpoint": endpoint_host })
        }
        NetworkDecision::Deny => {
            serde_json::json!({ "allow": false, "host": host, "port": port, "reason": "no_matching_policy" })
        }
    };
    println!("{decision}");
    0
}

fn standalone_proxy(policy_path: &std::path::Path, listen: std::net::SocketAddr, audit_log: Option<&std::path::Path>) -> i32 {
    let policy = match policy::load(policy_path) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let result: anyhow::Result<()> = runtime().block_on(async {
        let audit = leash::audit::Auditor::new("standalone", audit_log, true)?;
        let proxy = leash::proxy::BoundProxy::bind(listen).await?;
        eprintln!("leash: proxy listening on {}", proxy.addr());
        let task = proxy.serve(policy, audit);
        tokio::signal::ctrl_c().await?;
        task.abort();
        Ok(())
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("leash: error: {e:#}");
            exit::LEASH_FAILED
        }
    }
}
