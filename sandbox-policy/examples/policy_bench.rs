//! Policy decisions per second for a generated 1,000-endpoint policy.
//!
//! ```text
//! cargo run --release -p sandbox-policy --example policy_bench [-- ENDPOINTS]
//! ```
//!
//! Measures, in one run and on the same inputs:
//!
//! * `Decider` (the proxy's hot path) on cache hits: a working set of 1,000 inputs, repeated;
//! * `Decider` on cache misses: every input unique, so each one walks the index and is inserted
//!   into the (bounded, evicting) cache;
//! * `RegoPolicy` (regorus interpreting `policies/sandbox.rego`), the peer: the same unique
//!   inputs, fewer of them;
//!
//! each for network decisions (CONNECT: host, port, executable) and request decisions (method,
//! path, in an allowed tunnel), on one thread and, for the decider, on every core. Prints
//! decisions/s and the ratios against the interpreter.

#[path = "../tests/support/synthetic.rs"]
mod synthetic;

use std::collections::HashSet;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox_policy::{parse_str, CompiledPolicy, Decider, EndpointRef, NetworkInput, RegoPolicy, RequestInput};
use synthetic::Rng;

/// One generated decision input.
struct Input {
    host: String,
    port: u16,
    binary: Option<PathBuf>,
    method: &'static str,
    target: String,
}

/// Request methods, weighted towards reads as agents' traffic is.
const BENCH_METHODS: &[&str] = &["GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD"];

/// Minimum time each measurement runs.
const MIN_TIME: Duration = Duration::from_millis(1500);

fn main() {
    let endpoints = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1000);
    let yaml = synthetic::policy_yaml(endpoints, 7);
    let policy = match parse_str("synthetic.yaml", &yaml) {
        Ok(policy) => policy,
        Err(e) => return eprintln!("policy_bench: {e}"),
    };
    let build = Instant::now();
    let decider = Decider::new(&policy);
    let build_decider = build.elapsed();
    let build = Instant::now();
    let rego = match RegoPolicy::new(&policy) {
        Ok(rego) => rego,
        Err(e) => return eprintln!("policy_bench: {e}"),
    };
    let build_rego = build.elapsed();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "policy: {} endpoints in {} network policies; build: Decider {:.1} ms, RegoPolicy {:.1} ms; {threads} cores",
        decider.endpoint_count(),
        policy.network_policies().len(),
        build_decider.as_secs_f64() * 1e3,
        build_rego.as_secs_f64() * 1e3,
    );

    // Unique inputs aimed at the policy's endpoints (most are allowed, so requests get judged).
    let unique = inputs(&policy, 400_000, 1);
    let working_set = inputs(&policy, 1_000, 2);
    let allowed_share =
        unique.iter().take(10_000).filter(|i| decider.network(&i.host, i.port, i.binary.as_deref()).allow).count()
            as f64
            / 100.0;
    println!("inputs: {allowed_share:.0}% of connections allowed\n");

    let decider = Arc::new(Decider::new(&policy));
    let rows = [
        ("network", "Decider, cache hit", measure_network(&decider, &working_set, true, 1)),
        ("network", "Decider, cache miss", measure_network(&decider, &unique, false, 1)),
        ("network", "RegoPolicy (regorus)", measure_rego_network(&rego, &unique)),
        ("request", "Decider, cache hit", measure_request(&decider, &working_set, true, 1)),
        ("request", "Decider, cache miss", measure_request(&decider, &unique, false, 1)),
        ("request", "RegoPolicy (regorus)", measure_rego_request(&rego, &decider, &unique)),
    ];
    println!("{:<8} {:<24} {:>16} {:>12}", "decision", "evaluator (1 thread)", "decisions/s", "vs regorus");
    for (kind, name, rate) in &rows {
        let peer = rows.iter().find(|(k, n, _)| k == kind && n.starts_with("RegoPolicy")).map_or(f64::NAN, |r| r.2);
        println!("{kind:<8} {name:<24} {rate:>16.0} {:>11.0}x", rate / peer);
    }
    if threads > 1 {
        println!("\n{threads} threads sharing one Decider (Arc):");
        let rows = [
            ("network", "cache hit", measure_network(&decider, &working_set, true, threads)),
            ("network", "cache miss", measure_network(&decider, &unique, false, threads)),
            ("request", "cache hit", measure_request(&decider, &working_set, true, threads)),
            ("request", "cache miss", measure_request(&decider, &unique, false, threads)),
        ];
        for (kind, name, rate) in rows {
            println!("{kind:<8} {name:<24} {rate:>16.0}");
        }
    }
}

/// `count` inputs, each with a new (host, port, executable) and a new request target: hosts
/// covered by an endpoint (wildcards get unique labels), an executable (git, ssh, or one of its
/// own, which also keeps exact hosts' keys unique), a method and a unique path.
fn inputs(policy: &CompiledPolicy, count: usize, seed: u64) -> Vec<Input> {
    let endpoints: Vec<_> = policy.network_policies().iter().flat_map(|p| &p.endpoints).collect();
    let mut rng = Rng::new(seed);
    // Network keys seen, so that every input of the set is a new (host, port, executable).
    let mut seen = HashSet::new();
    (0..count)
        .map(|i| {
            let endpoint = rng.pick(&endpoints);
            let pattern = endpoint.host.to_string();
            let host = if let Some(suffix) = pattern.strip_prefix("**.") {
                format!("h{i}.x.{suffix}")
            } else if let Some(suffix) = pattern.strip_prefix("*.") {
                format!("h{i}.{suffix}")
            } else {
                pattern
            };
            let binary = match rng.below(4) {
                0 => Some(PathBuf::from("/usr/bin/git")),
                1 => Some(PathBuf::from("/usr/bin/ssh")),
                _ => Some(PathBuf::from(format!("/opt/agent/bin/tool-{i}"))),
            };
            let glob = *rng.pick(synthetic::GLOBS);
            let target = glob
                .split('/')
                .map(|s| if s.contains('*') { format!("w{i}") } else { s.to_owned() })
                .collect::<Vec<_>>()
                .join("/");
            let target = if glob.contains('*') { target } else { format!("{target}/u{i}") };
            let port = *rng.pick(endpoint.ports.as_slice());
            let binary = if seen.insert((host.clone(), port, binary.clone())) {
                binary
            } else {
                Some(PathBuf::from(format!("/opt/agent/bin/tool-{i}")))
            };
            Input { host, port, binary, method: BENCH_METHODS[rng.below(BENCH_METHODS.len())], target }
        })
        .collect()
}

/// Runs `step(i)` for successive `i` on `threads` threads until [`MIN_TIME`] has passed (whole
/// passes over `len` inputs when `repeat`, a single pass otherwise); returns calls per second.
fn run(threads: usize, len: usize, repeat: bool, step: impl Fn(usize) + Sync) -> f64 {
    let start = Instant::now();
    let total: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let step = &step;
                scope.spawn(move || {
                    let mut done = 0;
                    // Each thread takes its own slice of the inputs so misses stay misses.
                    let (from, to) = (len * t / threads, len * (t + 1) / threads);
                    let mut i = from;
                    loop {
                        step(i);
                        done += 1;
                        i += 1;
                        if i == to {
                            if !repeat || start.elapsed() >= MIN_TIME {
                                break;
                            }
                            i = from;
                        } else if !repeat && done % 1024 == 0 && start.elapsed() >= MIN_TIME {
                            break;
                        }
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

fn measure_network(decider: &Decider, inputs: &[Input], hit: bool, threads: usize) -> f64 {
    if hit {
        warm(decider, inputs);
    }
    run(threads, inputs.len(), hit, |i| {
        let input = &inputs[i];
        black_box(decider.network(&input.host, input.port, input.binary.as_deref()));
    })
}

fn measure_request(decider: &Decider, inputs: &[Input], hit: bool, threads: usize) -> f64 {
    // Connections are judged outside the timed loop: this measures request decisions only.
    let endpoints: Vec<EndpointRef> = inputs
        .iter()
        .map(|i| {
            decider
                .network(&i.host, i.port, i.binary.as_deref())
                .endpoint_ref
                .unwrap_or(EndpointRef { policy: 0, endpoint: 0 })
        })
        .collect();
    if hit {
        for (input, endpoint) in inputs.iter().zip(&endpoints) {
            decider.request(*endpoint, input.method, &input.target);
        }
    }
    run(threads, inputs.len(), hit, |i| {
        let input = &inputs[i];
        black_box(decider.request(endpoints[i], input.method, &input.target));
    })
}

fn warm(decider: &Decider, inputs: &[Input]) {
    for input in inputs {
        decider.network(&input.host, input.port, input.binary.as_deref());
    }
}

/// Inputs the interpreter gets (it is thousands of times slower).
const REGO_INPUTS: usize = 300;

fn network_input(input: &Input) -> NetworkInput<'_> {
    NetworkInput { host: &input.host, port: input.port, binary: input.binary.as_deref().map(Path::new) }
}

fn measure_rego_network(rego: &RegoPolicy, inputs: &[Input]) -> f64 {
    let inputs = &inputs[..REGO_INPUTS.min(inputs.len())];
    let start = Instant::now();
    for input in inputs {
        if let Err(e) = black_box(rego.decide_network(&network_input(input))) {
            eprintln!("policy_bench: {e}");
        }
    }
    inputs.len() as f64 / start.elapsed().as_secs_f64()
}

fn measure_rego_request(rego: &RegoPolicy, decider: &Decider, inputs: &[Input]) -> f64 {
    // Only requests on allowed connections, like the decider's.
    let inputs: Vec<&Input> = inputs
        .iter()
        .filter(|i| decider.network(&i.host, i.port, i.binary.as_deref()).allow)
        .take(REGO_INPUTS)
        .collect();
    let start = Instant::now();
    for input in &inputs {
        let request = RequestInput { network: network_input(input), method: input.method, target: &input.target };
        if let Err(e) = black_box(rego.decide_request(&request)) {
            eprintln!("policy_bench: {e}");
        }
    }
    inputs.len() as f64 / start.elapsed().as_secs_f64()
}
