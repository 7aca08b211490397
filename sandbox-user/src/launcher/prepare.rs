//! What `leash run` prepares on a thread of its own while the main thread reads the policy and
//! builds the sandbox: leash's CA and the upstream TLS clients, the agent's trust files and,
//! once the main thread hands the policy over, the proxy.
//!
//! Nothing here depends on the policy until the hand-over, so on a warm start the thread begins
//! before leash's runtime (`launcher::begin`). The trust files are the one thing it writes for
//! the sandbox: a start given up halfway (an error, a bad policy) drops the [`Preparation`],
//! which waits for the thread, and the thread's trust files go with it. A start that goes on
//! takes the thread as the one that starts the agent (`child::AgentThread`).

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};

use super::child::AgentThread;
use super::trust::AgentTrustDir;
use crate::audit::Auditor;
use crate::kernel::sandbox_id::SandboxId;
use crate::policy::CompiledPolicy;
use crate::proxy::{Proxy, ProxyConfig, TlsMaterial};

/// What the proxy is built from, handed over once the policy is read.
struct HandOver {
    policy: CompiledPolicy,
    config: ProxyConfig,
    audit: Auditor,
}

/// The prepared parts of a start.
pub struct Prepared {
    pub proxy: Arc<Proxy>,
    pub trust: AgentTrustDir,
    /// The preparing thread, done preparing, to start the agent on.
    pub agent_thread: Option<AgentThread>,
}

/// The preparing thread of one start.
pub struct Preparation {
    hand_over: Option<mpsc::SyncSender<HandOver>>,
    result: Option<tokio::sync::oneshot::Receiver<Result<Prepared>>>,
    /// The thread, once it has prepared, is the one that starts the agent.
    agent_thread: Option<AgentThread>,
    thread: Option<JoinHandle<()>>,
}

impl Preparation {
    /// Starts preparing sandbox `id`'s TLS material and trust files.
    pub fn start(id: SandboxId, upstream_ca: Vec<PathBuf>) -> Result<Self> {
        let (hand_over, handed) = mpsc::sync_channel(1);
        let (done, result) = tokio::sync::oneshot::channel();
        let (agent_thread, serve) = AgentThread::new();
        let thread = std::thread::Builder::new()
            .name("leash-prepare".into())
            .spawn(move || {
                // A receiver gone is a start given up: what was made is dropped here.
                if done.send(prepare(id, &upstream_ca, &handed)).is_ok() {
                    serve.serve();
                }
            })
            .context("starting leash's preparing thread")?;
        Ok(Self {
            hand_over: Some(hand_over),
            result: Some(result),
            agent_thread: Some(agent_thread),
            thread: Some(thread),
        })
    }

    /// Gives the thread what it needs to build the proxy.
    pub fn hand_over(&mut self, policy: CompiledPolicy, config: ProxyConfig, audit: Auditor) {
        if let Some(sender) = self.hand_over.take() {
            // Only a thread that failed already is gone; `finish` reports why.
            let _ = sender.send(HandOver { policy, config, audit });
        }
    }

    /// Waits for the prepared parts. The thread goes on as their agent thread: it is not waited
    /// for, and ends when that is dropped unused, or with the agent it started.
    pub async fn finish(mut self) -> Result<Prepared> {
        self.hand_over.take();
        let result = self.result.take().ok_or_else(|| anyhow!("the preparation was already taken"))?;
        let prepared = result.await.map_err(|_| anyhow!("leash's preparing thread ended without a result"))??;
        self.thread.take();
        Ok(Prepared { agent_thread: self.agent_thread.take(), ..prepared })
    }
}

impl Drop for Preparation {
    /// Waits for the thread, so that what it made (the trust directory) is gone before leash is.
    fn drop(&mut self) {
        self.hand_over.take();
        self.agent_thread.take();
        drop(self.result.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn prepare(id: SandboxId, upstream_ca: &[PathBuf], handed: &mpsc::Receiver<HandOver>) -> Result<Prepared> {
    crate::proxy::tls::prepare_system_roots();
    let material = TlsMaterial::prepare(upstream_ca)?;
    let trust = AgentTrustDir::write(&id, material.ca())?;
    let HandOver { policy, config, audit } = handed.recv().context("the start was given up")?;
    let proxy = Proxy::with_tls(policy, &config, audit, material)?;
    Ok(Prepared { proxy, trust, agent_thread: None })
}
