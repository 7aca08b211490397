//! Waiting for the agent while forwarding SIGINT, SIGTERM and SIGHUP to it.
//!
//! Under `leash confine` a terminal's Ctrl-C already reaches the agent (it shares leash's
//! foreground process group), so SIGINT is forwarded only when it cannot have come from the
//! terminal; otherwise an agent that exits on a second Ctrl-C would see every press twice. Under
//! `leash run` the agent has a session (and terminal) of its own: every SIGINT is forwarded.

use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::child::Agent;
use tokio::signal::unix::{signal, SignalKind};

/// Waits for `child`; returns its exit code, or 128 + signal number if a signal killed it.
/// `own_session`: the agent is in a session of its own, out of reach of leash's terminal.
pub async fn wait_forwarding(mut child: Agent, own_session: bool) -> Result<i32> {
    let pid = Some(Pid::from_raw(child.id() as i32));
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let status = loop {
        let sig = tokio::select! {
            status = child.wait() => break status.context("waiting for the agent")?,
            _ = int.recv() => (own_session || !terminal_delivers_sigint()).then_some(Signal::SIGINT),
            _ = term.recv() => Some(Signal::SIGTERM),
            _ = hup.recv() => Some(Signal::SIGHUP),
        };
        if let (Some(sig), Some(pid)) = (sig, pid) {
            let _ = kill(pid, sig);
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    Ok(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

/// True when stdin is a terminal whose foreground process group is ours, so a Ctrl-C there was
/// delivered to the agent directly.
fn terminal_delivers_sigint() -> bool {
    // SAFETY: plain libc queries on fd 0.
    unsafe { libc::isatty(0) == 1 && libc::tcgetpgrp(0) == libc::getpgrp() }
}
