//! Which pods may use leash, and with which policy: the pod's `leash.dev/policy` annotation as
//! the watched view of the node's pods has it (`node_pods.rs`), else the node's
//! `--default-policy` for a pod known to have no annotation, else none (refused). A pod the view
//! does not have after `--pod-wait-ms` is refused, never given the default. Without an API
//! server, every pod gets the default.
//!
//! The policy is chosen once per request: a sandbox keeps the policy it was confined under when
//! its pod's annotation changes later; the pod's next confine gets the new one.

use std::time::Duration;

use super::kube::{self, KubeConfig, PodInfo};
use super::node_pods::NodePods;
use crate::confine_api::protocol::{ErrorCode, Reply};

pub struct Admission {
    /// The node's pods, when an API server is configured.
    pods: Option<NodePods>,
    default_policy: Option<String>,
    /// How long a request waits for its pod to appear in `pods`.
    pod_wait: Duration,
    runtime: tokio::runtime::Handle,
}

/// A pod's permission to use leash.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub policy: String,
    /// The pod as the API knows it (none without an API server).
    pub pod: Option<PodInfo>,
}

impl Admission {
    /// Starts watching the node's pods when `kube` is given.
    pub fn new(
        kube: Option<KubeConfig>,
        default_policy: Option<String>,
        pod_wait: Duration,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        let pods = kube.map(|config| NodePods::start(config, &runtime));
        Self { pods, default_policy, pod_wait, runtime }
    }

    /// The policy pod `pod_uid` may use; `requested` must match it when given. Blocks (up to the
    /// pod wait) while the pod is not in the view yet: call it outside the runtime.
    pub fn admit(&self, pod_uid: &str, requested: Option<&str>) -> Result<Admitted, Reply> {
        let pod = match &self.pods {
            Some(pods) => Some(
                self.runtime
                    .block_on(pods.lookup(pod_uid, self.pod_wait))
                    .map_err(|why| Reply::error(ErrorCode::NotAllowed, format!("{why}: refused")))?,
            ),
            None => None,
        };
        let annotated = pod.as_ref().and_then(|p| p.policy.clone());
        let policy = match (annotated, &self.default_policy) {
            (Some(p), _) => p,
            (None, Some(d)) => d.clone(),
            (None, None) => {
                let who = pod.as_ref().map(|p| format!("pod {}/{}", p.namespace, p.name));
                return Err(Reply::error(
                    ErrorCode::NotAllowed,
                    format!(
                        "{} has no {} annotation and this node has no default policy",
                        who.unwrap_or_else(|| format!("pod {pod_uid}")),
                        kube::POLICY_ANNOTATION
                    ),
                ));
            }
        };
        if let Some(r) = requested {
            if r != policy {
                return Err(Reply::error(
                    ErrorCode::NotAllowed,
                    format!("this pod may use policy `{policy}`, not `{r}`"),
                ));
            }
        }
        Ok(Admitted { policy, pod })
    }
}
