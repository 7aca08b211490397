//! The daemon's HTTP endpoints: Prometheus `/metrics`, `/healthz` (the process serves) and
//! `/readyz` (programs loaded, policies read, socket listening).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `leash_sandboxes_active` | gauge | — |
//! | `leash_requests_total` | counter | `op`, `result` (`ok` or the error code) |
//! | `leash_confine_duration_seconds` | histogram | — |
//! | `leash_kernel_verdicts_total` | counter | `layer`, `verdict`, `rule` (the kernel counters of every sandbox) |
//! | `leash_denials_total` | counter | `layer`, `hook` (every deny event) |
//! | `leash_bpf_program_run_seconds_total`, `leash_bpf_program_runs_total` | counter | `program` |

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sandbox_common::counter;

use super::sandboxes::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub layer: String,
    pub hook: String,
}

/// The metric handles the daemon updates as it works.
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub confine_seconds: Histogram,
    pub denials: Family<DenialLabels, Counter>,
    /// Verdict counters of removed sandboxes (their map entries are gone).
    retired: Mutex<[u64; counter::COUNT]>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            // 50 µs .. ~1.6 s
            confine_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            denials: Family::default(),
            retired: Mutex::new([0; counter::COUNT]),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn retire(&self, c: &sandbox_common::Counters) {
        if let Ok(mut r) = self.retired.lock() {
            for (t, v) in r.iter_mut().zip(c.values) {
                *t += v;
            }
        }
    }

    pub fn retired(&self) -> [u64; counter::COUNT] {
        self.retired.lock().map(|r| *r).unwrap_or([0; counter::COUNT])
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The registry `/metrics` encodes: the handles above plus what is read at scrape time.
pub fn registry(metrics: &Metrics, node: Weak<Node>) -> Registry {
    let mut r = Registry::with_prefix("leash");
    r.register("requests", "Confine API requests by operation and result", metrics.requests.clone());
    r.register(
        "confine_duration_seconds",
        "Time from a confine request to the process confined",
        metrics.confine_seconds.clone(),
    );
    r.register("denials", "Deny events from the kernel programs", metrics.denials.clone());
    r.register_collector(Box::new(KernelCollector { node }));
    r
}

/// Reads the number of sandboxes, the kernel's verdict counters and program statistics at
/// scrape time.
#[derive(Debug)]
struct KernelCollector {
    node: Weak<Node>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    layer: &'static str,
    verdict: &'static str,
    rule: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: &'static str,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(node) = self.node.upgrade() else { return Ok(()) };
        let active = node.state().map(|s| s.registry.len() as i64).unwrap_or(0);
        let gauge = ConstGauge::new(active);
        gauge.encode(encoder.encode_descriptor(
            "sandboxes_active",
            "Sandboxes this daemon runs",
            None,
            gauge.metric_type(),
        )?)?;
        let totals = node.counter_totals();
        let mut verdicts = encoder.encode_descriptor(
            "kernel_verdicts",
            "Verdicts of the network programs, over every sandbox",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (i, name) in counter::NAMES.iter().enumerate() {
            let verdict = if i == counter::CONNECT_ALLOWED { "allowed" } else { "denied" };
            let labels = VerdictLabels { layer: "network", verdict, rule: name };
            ConstCounter::new(totals[i]).encode(verdicts.encode_family(&labels)?)?;
        }
        let stats = node.state().map(|s| s.programs.program_stats()).unwrap_or_default();
        let mut seconds = encoder.encode_descriptor(
            "bpf_program_run_seconds",
            "Time the kernel spent running each program (while BPF statistics are enabled)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (program, time, _) in &stats {
            ConstCounter::new(time.as_secs_f64()).encode(seconds.encode_family(&ProgramLabels { program })?)?;
        }
        let mut runs = encoder.encode_descriptor(
            "bpf_program_runs",
            "Runs of each program (while BPF statistics are enabled)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (program, _, count) in &stats {
            ConstCounter::new(*count).encode(runs.encode_family(&ProgramLabels { program })?)?;
        }
        Ok(())
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>, registry: Arc<Registry>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (status, body) = respond(req.uri().path(), &metrics, &registry);
                let response = hyper::Response::builder()
                    .status(status)
                    .header(
                        "content-type",
                        if req.uri().path() == "/metrics" {
                            "application/openmetrics-text; version=1.0.0; charset=utf-8"
                        } else {
                            "text/plain"
                        },
                    )
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)));
                async move { response }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

fn respond(path: &str, metrics: &Metrics, registry: &Registry) -> (u16, String) {
    match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => (200, text),
                Err(_) => (500, "encoding metrics failed\n".into()),
            }
        }
        "/healthz" => (200, "ok\n".into()),
        "/readyz" if metrics.is_ready() => (200, "ready\n".into()),
        "/readyz" => (503, "not ready\n".into()),
        _ => (404, "not found: try /metrics, /healthz or /readyz\n".into()),
    }
}
