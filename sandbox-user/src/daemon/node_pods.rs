//! This node's pods as the API server has them, kept current the way node agents do it: list
//! once, then watch from the list's resourceVersion and apply each event as it comes; bookmarks
//! move the place a watch resumes from without a change. When the server ends a watch (its
//! timeout, a restart), the next starts from the last resourceVersion seen; when that place is
//! gone (410, or an event the daemon cannot read), the pods are listed again, once, and watched
//! from there. So the API server sees one LIST per daemon start and per expiry, however many
//! confines the node serves.
//!
//! A request from a pod the view does not have yet (created moments ago, its event still on the
//! way) waits for it, up to a bound, then is refused: an unknown pod is never taken for one
//! without an annotation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::kube::{self, KubeConfig, PodEvent, PodInfo, WatchEnd};

/// How long one watch runs; the server ends it then and the daemon starts the next.
const WATCH_TIMEOUT: Duration = Duration::from_secs(300);

/// The wait after a failed list or watch, doubling from the first to the last while it fails.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_LAST: Duration = Duration::from_secs(16);

/// A watch that ends sooner than this after it started counts as a failure (no busy loop
/// against a server that answers and hangs up at once).
const HEALTHY: Duration = Duration::from_secs(1);

/// The view, and the task that keeps it (running on the runtime given to [`NodePods::start`]).
pub struct NodePods {
    view: Arc<watch::Sender<View>>,
    node: String,
}

#[derive(Default)]
struct View {
    /// A list has been read: `pods` are the node's, as of the last event applied.
    synced: bool,
    /// By uid.
    pods: HashMap<String, PodInfo>,
    /// Why the last list or watch failed, while it is the latest news from the API server.
    trouble: Option<String>,
}

impl NodePods {
    /// Starts keeping the view of `config.node`'s pods.
    pub fn start(config: KubeConfig, runtime: &tokio::runtime::Handle) -> Self {
        let view = Arc::new(watch::Sender::new(View::default()));
        let node = config.node.clone();
        runtime.spawn(keep_current(config, view.clone()));
        Self { view, node }
    }

    /// The pod `uid`, waiting up to `wait` for the view to have it; else why not, in words.
    pub async fn lookup(&self, uid: &str, wait: Duration) -> Result<PodInfo, String> {
        let mut seen = self.view.subscribe();
        let found = match tokio::time::timeout(wait, seen.wait_for(|v| v.pods.contains_key(uid))).await {
            Ok(Ok(view)) => view.pods.get(uid).cloned(),
            _ => None,
        };
        if let Some(pod) = found {
            return Ok(pod);
        }
        let view = self.view.borrow();
        let trouble = view.trouble.as_ref().map(|t| format!("; the API server: {t}")).unwrap_or_default();
        let ms = wait.as_millis();
        Err(if view.synced {
            format!(
                "pod {uid} is not among node {}'s pods at the API server (waited {ms} ms for it){trouble}",
                self.node
            )
        } else {
            format!(
                "this daemon has not read node {}'s pods from the API server yet (waited {ms} ms){trouble}",
                self.node
            )
        })
    }
}

/// List, then watch for as long as the daemon runs.
async fn keep_current(config: KubeConfig, view: Arc<watch::Sender<View>>) {
    let mut retry = Retry::default();
    loop {
        let list = match kube::list_pods(&config).await {
            Ok(list) => list,
            Err(e) => {
                let why = format!("{e:#}");
                crate::say!("leash daemon: cannot list node {}'s pods: {why}", config.node);
                view.send_modify(|v| v.trouble = Some(why));
                retry.wait().await;
                continue;
            }
        };
        crate::say!(
            "leash daemon: node {} has {} pods at resourceVersion {}; watching them",
            config.node,
            list.pods.len(),
            list.resource_version
        );
        let mut place = list.resource_version;
        view.send_modify(|v| {
            v.pods = list.pods;
            v.synced = true;
            v.trouble = None;
        });
        loop {
            let started = Instant::now();
            let from = place.clone();
            let ended =
                kube::watch_pods(&config, &from, WATCH_TIMEOUT, &mut |event| apply(&view, event, &mut place)).await;
            if started.elapsed() < HEALTHY {
                retry.wait().await;
            } else {
                retry.reset();
            }
            match ended {
                Ok(WatchEnd::Closed) => {}
                Ok(WatchEnd::Relist(why)) => {
                    crate::say!("leash daemon: listing node {}'s pods again: {why}", config.node);
                    break;
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    crate::say!("leash daemon: watching node {}'s pods from {place}: {why}", config.node);
                    view.send_modify(|v| v.trouble = Some(why));
                }
            }
        }
    }
}

/// One event into the view; `place` follows the events' resourceVersions.
fn apply(view: &watch::Sender<View>, event: PodEvent, place: &mut String) {
    let resource_version = match event {
        PodEvent::Applied { uid, pod, resource_version } => {
            view.send_modify(|v| {
                v.pods.insert(uid, pod);
                v.trouble = None;
            });
            resource_version
        }
        PodEvent::Deleted { uid, resource_version } => {
            view.send_modify(|v| {
                v.pods.remove(&uid);
            });
            resource_version
        }
        PodEvent::Bookmark { resource_version } => resource_version,
    };
    if !resource_version.is_empty() {
        *place = resource_version;
    }
}

/// The wait between failing attempts.
struct Retry(Duration);

impl Default for Retry {
    fn default() -> Self {
        Self(RETRY_FIRST)
    }
}

impl Retry {
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(RETRY_LAST);
    }

    fn reset(&mut self) {
        self.0 = RETRY_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> NodePods {
        NodePods { view: Arc::new(watch::Sender::new(View::default())), node: "node-a".into() }
    }

    fn pod(policy: &str) -> PodInfo {
        PodInfo { namespace: "ci".into(), name: "runner".into(), policy: Some(policy.into()) }
    }

    #[tokio::test]
    async fn a_lookup_waits_for_the_event_that_brings_its_pod() {
        let pods = pods();
        let view = pods.view.clone();
        let mut place = "1".to_owned();
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let event = PodEvent::Applied { uid: "u1".into(), pod: pod("p"), resource_version: "2".into() };
            apply(&view, event, &mut place);
            place
        });
        assert_eq!(pods.lookup("u1", Duration::from_secs(5)).await, Ok(pod("p")));
        assert_eq!(later.await.ok().as_deref(), Some("2"));
    }

    #[tokio::test]
    async fn an_unknown_pod_is_refused_after_the_wait_with_what_is_known() {
        let pods = pods();
        let err = pods.lookup("u1", Duration::from_millis(50)).await.unwrap_err();
        assert!(err.contains("has not read node node-a's pods"), "{err}");
        pods.view.send_modify(|v| v.synced = true);
        let err = pods.lookup("u1", Duration::from_millis(50)).await.unwrap_err();
        assert!(err.contains("pod u1 is not among node node-a's pods") && err.contains("50 ms"), "{err}");
    }

    #[test]
    fn deletes_leave_the_view_and_bookmarks_move_only_the_place() {
        let pods = pods();
        let mut place = "1".to_owned();
        apply(
            &pods.view,
            PodEvent::Applied { uid: "u1".into(), pod: pod("p"), resource_version: "2".into() },
            &mut place,
        );
        apply(&pods.view, PodEvent::Bookmark { resource_version: "9".into() }, &mut place);
        assert_eq!(place, "9");
        assert!(pods.view.borrow().pods.contains_key("u1"));
        apply(&pods.view, PodEvent::Deleted { uid: "u1".into(), resource_version: "10".into() }, &mut place);
        assert_eq!(place, "10");
        assert!(pods.view.borrow().pods.is_empty());
    }
}
