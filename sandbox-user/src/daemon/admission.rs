//! Which pods may use leash, and with which policy: the pod's `leash.dev/policy` annotation
//! (read from the API server), else the node's `--default-policy`, else none (refused).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::kube::{self, KubeConfig, PodInfo};
use super::protocol::{ErrorCode, Reply};

/// The pod list is fetched again for an unknown pod at most this often.
const MIN_REFRESH: Duration = Duration::from_millis(500);

pub struct Admission {
    kube: Option<KubeConfig>,
    default_policy: Option<String>,
    cache: Mutex<Cache>,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct Cache {
    pods: HashMap<String, PodInfo>,
    fetched: Option<Instant>,
}

/// A pod's permission to use leash.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub policy: String,
    /// The pod as the API knows it (none without an API server).
    pub pod: Option<PodInfo>,
}

impl Admission {
    pub fn new(kube: Option<KubeConfig>, default_policy: Option<String>, runtime: tokio::runtime::Handle) -> Self {
        Self { kube, default_policy, cache: Mutex::new(Cache::default()), runtime }
    }

    /// The policy pod `pod_uid` may use; `requested` must match it when given.
    pub fn admit(&self, pod_uid: &str, requested: Option<&str>) -> Result<Admitted, Reply> {
        let pod = match &self.kube {
            Some(config) => self.lookup(config, pod_uid)?,
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

    /// The pod from the cache, refreshing it (rate-limited) when the pod is not in it.
    fn lookup(&self, config: &KubeConfig, pod_uid: &str) -> Result<Option<PodInfo>, Reply> {
        let mut cache = self.cache.lock().map_err(|_| Reply::error(ErrorCode::Internal, "pod cache poisoned"))?;
        if let Some(p) = cache.pods.get(pod_uid) {
            return Ok(Some(p.clone()));
        }
        if cache.fetched.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
            return Ok(None);
        }
        let fetched = self.runtime.block_on(kube::list_pods(config)).map(|l| l.pods).map_err(|e| {
            Reply::error(ErrorCode::Internal, format!("cannot read this node's pods from the API server: {e:#}"))
        })?;
        cache.pods = fetched;
        cache.fetched = Some(Instant::now());
        Ok(cache.pods.get(pod_uid).cloned())
    }
}
