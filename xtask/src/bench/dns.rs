//! `bench dns`: allowed-name answers per second and latency from inside a transparent sandbox
//! (the query goes to port 53 and the kernel sends it to leash's resolver), beside the same loop
//! outside against a resolver on loopback that answers from memory (`dnsbench serve`: the fastest
//! a host resolver could be). Inside and outside alternate for a few rounds; the medians are
//! reported with their ratio. All queries stay on loopback.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::{field, median, Ctx};

/// Queries per loop.
const QUERIES: u32 = 20_000;
const ROUNDS: usize = 3;

pub fn run(ctx: &Ctx) -> Result<()> {
    let dnsbench = ctx.leash.with_file_name("dnsbench");
    if !dnsbench.is_file() {
        bail!("{} is missing after the build", dnsbench.display());
    }
    let policy = ctx.dir.join("dns-policy.yaml");
    std::fs::write(&policy, "version: 1\nnetwork:\n  transparent: true\nnetwork_policies:\n  bench:\n    name: bench\n    endpoints:\n      - { host: bench.test, port: 443 }\n")?;
    let mut server =
        Command::new(&dnsbench).arg("serve").stdout(Stdio::piped()).spawn().context("starting dnsbench serve")?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().context("dnsbench serve's stdout")?).read_line(&mut line)?;
    let peer = line.trim().to_owned();
    println!("dns: {QUERIES} sequential A queries per loop; peer resolver (from memory) on {peer}");
    // (queries per second, median latency) of each round.
    type Rounds = Vec<(f64, f64)>;
    let result = (|| -> Result<(Rounds, Rounds)> {
        let (mut inside, mut outside) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let n = QUERIES.to_string();
            let mut leash = Command::new(&ctx.leash);
            leash.args(["run", "-q", "--policy"]).arg(&policy).arg("--").arg(&dnsbench).args([
                "query",
                "127.0.0.153:53",
                "bench.test",
                &n,
            ]);
            let mut direct = Command::new(&dnsbench);
            direct.args(["query", &peer, "bench.test", &n]);
            for (label, cmd, into) in [("inside", &mut leash, &mut inside), ("outside", &mut direct, &mut outside)] {
                let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {label}"))?;
                let text = String::from_utf8_lossy(&out.stdout);
                let json = text.lines().rev().find(|l| l.starts_with('{')).unwrap_or("");
                if !out.status.success() || json.is_empty() {
                    bail!("{label}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
                }
                let (qps, p50) = (field(json, "qps")?, field(json, "median_us")?);
                println!("dns: round {} {label:<7} {qps:>9.0} answers/s, p50 {p50:>6.1} µs", round + 1);
                into.push((qps, p50));
            }
        }
        Ok((inside, outside))
    })();
    let _ = server.kill();
    let _ = server.wait();
    let (inside, outside) = result?;
    let med = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let (iq, ip) = (med(&inside, |r| r.0), med(&inside, |r| r.1));
    let (oq, op) = (med(&outside, |r| r.0), med(&outside, |r| r.1));
    println!("dns: inside a transparent sandbox (leash's resolver): {iq:.0} answers/s, p50 {ip:.1} µs");
    println!("dns: outside, resolver on loopback from memory:       {oq:.0} answers/s, p50 {op:.1} µs");
    println!("dns: inside/outside answers/s = {:.2}, p50 = {:.2}", iq / oq, ip / op);
    Ok(())
}
