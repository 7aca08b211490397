//! `cargo xtask fuzz`: the `cargo fuzz` targets of `fuzz/`, one at a time, each for a fixed
//! time on its corpus (`fuzz/corpus/TARGET`), with one line per target of what the run did.
//!
//! The fuzz crate is not a workspace member: it builds with nightly and sanitizers into
//! `fuzz/target` (whatever `CARGO_TARGET_DIR` says). libFuzzer's own output goes to
//! `fuzz/target/logs/TARGET.log`; a crash, leak, timeout or out-of-memory fails the task, naming
//! the target and the input it wrote (`fuzz/artifacts/TARGET/...`). New inputs the runs find
//! are added to `fuzz/corpus/TARGET`, where git ignores them until someone minimises the corpus
//! and adds it (README, "Fuzzing"); `fuzz/regressions/TARGET` holds inputs that once failed,
//! read with the corpus on every run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{run_cmd, setup, workspace_root};

/// The cargo-fuzz release installed when it is missing.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Run only this target (a file name in fuzz/fuzz_targets without `.rs`); default: all.
    #[arg(long, value_name = "T")]
    pub target: Option<String>,
    /// Seconds each target runs.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub time: u64,
}

/// What one target's run did, from libFuzzer's final lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    executions: Option<u64>,
    per_second: Option<u64>,
    cov: Option<u64>,
    ft: Option<u64>,
    corpus: Option<u64>,
    /// The input libFuzzer wrote for a failure (`Test unit written to PATH`).
    artifact: Option<String>,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    if args.time == 0 {
        bail!("--time must be at least 1 second");
    }
    let fuzz_dir = workspace_root().join("fuzz");
    let all = targets(&fuzz_dir)?;
    let targets = match &args.target {
        None => all,
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target `{t}` (targets: {})", all.join(", ")),
    };
    setup::ensure()?;
    ensure_cargo_fuzz()?;
    let target_dir = fuzz_dir.join("target");
    let logs = target_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    let started = Instant::now();
    println!("fuzz: building {} target(s) (nightly, sanitizers; minutes the first time) ...", targets.len());
    let mut build = fuzz_command(&fuzz_dir, "build");
    if let [one] = targets.as_slice() {
        build.arg(one);
    }
    run_cmd(&mut build)?;
    println!("fuzz: built in {:.0} s; {} s per target", started.elapsed().as_secs_f64(), args.time);

    let mut rows = Vec::new();
    for target in &targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let log = logs.join(format!("{target}.log"));
        let (status, stats) = run_target(&fuzz_dir, target, &corpus, args.time, &log)?;
        let summary = summary(&stats);
        if !status.success() {
            let artifact = stats.artifact.as_deref().unwrap_or("none written");
            println!("fuzz: {target}: FAILED ({status}) after {summary}; the end of libFuzzer's report:");
            print_tail(&log, 60);
            bail!(
                "fuzz target {target} failed: input {artifact}; libFuzzer's report: {} \
                 (replay: cargo +nightly fuzz run -O {target} {artifact})",
                log.display()
            );
        }
        println!("fuzz: {target}: {summary}");
        rows.push((target.clone(), stats));
    }
    print_table(&rows);
    println!("fuzz: {} target(s), no failure, in {:.0} s", rows.len(), started.elapsed().as_secs_f64());
    Ok(())
}

/// The targets: `fuzz/fuzz_targets/*.rs`, sorted.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let dir = fuzz_dir.join("fuzz_targets");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            if let Some(stem) = path.file_stem() {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no fuzz targets in {}", dir.display());
    }
    Ok(names)
}

/// `cargo +nightly fuzz SUBCOMMAND -O` on the fuzz crate, building into `fuzz/target`.
fn fuzz_command(fuzz_dir: &Path, subcommand: &str) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir))
        .args(["+nightly", "fuzz", subcommand, "-O", "--fuzz-dir"])
        .arg(fuzz_dir)
        .arg("--target-dir")
        .arg(fuzz_dir.join("target"));
    cmd
}

/// Runs one target for `seconds` on `corpus`, libFuzzer's output into `log`.
fn run_target(
    fuzz_dir: &Path,
    target: &str,
    corpus: &Path,
    seconds: u64,
    log: &Path,
) -> Result<(std::process::ExitStatus, Stats)> {
    println!("fuzz: {target}: running {seconds} s on {} ...", corpus.display());
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = fuzz_command(fuzz_dir, "run");
    cmd.arg(target).arg(corpus);
    // Inputs that once failed: read with the corpus on every run, never minimised away.
    let regressions = fuzz_dir.join("regressions").join(target);
    if regressions.is_dir() {
        cmd.arg(regressions);
    }
    cmd.arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes seconds is a finding (and must not hold CI for libFuzzer's 20 minutes).
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .stdout(file.try_clone()?)
        .stderr(file);
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    let text = std::fs::read(log).with_context(|| format!("reading {}", log.display()))?;
    Ok((status, parse_stats(&String::from_utf8_lossy(&text))))
}

/// Prints the last `lines` lines of `log`, so that a CI log shows the panic and the input.
fn print_tail(log: &Path, lines: usize) {
    let text = std::fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    for line in &all[all.len().saturating_sub(lines)..] {
        println!("  | {line}");
    }
}

/// Reads libFuzzer's status lines (`#N ... cov: C ft: F corp: K/...`), final statistics
/// (`stat::number_of_executed_units: N`) and artifact line.
fn parse_stats(log: &str) -> Stats {
    let mut stats = Stats::default();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("stat::number_of_executed_units:") {
            stats.executions = rest.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("stat::average_exec_per_sec:") {
            stats.per_second = rest.trim().parse().ok();
        } else if line.starts_with('#') && line.contains(" cov: ") {
            let words: Vec<&str> = line.split_whitespace().collect();
            let after = |key: &str| {
                let at = words.iter().position(|w| *w == key)?;
                let value = words.get(at + 1)?;
                value.split('/').next()?.parse().ok()
            };
            stats.cov = after("cov:").or(stats.cov);
            stats.ft = after("ft:").or(stats.ft);
            stats.corpus = after("corp:").or(stats.corpus);
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            stats.artifact = Some(path.trim().to_owned());
        }
    }
    stats
}

fn number(value: Option<u64>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

fn summary(stats: &Stats) -> String {
    format!(
        "{} executions, {} exec/s, cov {}, ft {}, corpus {}",
        number(stats.executions),
        number(stats.per_second),
        number(stats.cov),
        number(stats.ft),
        number(stats.corpus)
    )
}

fn print_table(rows: &[(String, Stats)]) {
    let header = ["target", "executions", "exec/s", "cov", "ft", "corpus"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|(t, s)| {
            [t.clone(), number(s.executions), number(s.per_second), number(s.cov), number(s.ft), number(s.corpus)]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |row: [&str; 6]| {
        let padded: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:>w$}")).collect();
        println!("{}", padded.join("  "));
    };
    println!();
    line(header);
    for row in &cells {
        line([&*row[0], &*row[1], &*row[2], &*row[3], &*row[4], &*row[5]]);
    }
    println!();
}

/// Installs cargo-fuzz when `cargo +nightly fuzz` does not run, as `setup` installs bpf-linker.
fn ensure_cargo_fuzz() -> Result<()> {
    let works = || {
        Command::new("cargo")
            .args(["+nightly", "fuzz", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works() {
        return Ok(());
    }
    println!("setup: cargo-fuzz is missing; installing cargo-fuzz {CARGO_FUZZ_VERSION} (a minute or two) ...");
    run_cmd(Command::new("cargo").args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]))?;
    if !works() {
        bail!(
            "cargo-fuzz was installed but `cargo +nightly fuzz` does not run: is {} on PATH?",
            setup::cargo_bin().display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_final_lines() {
        let log = "\
INFO: Seed: 1
#2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 30Mb
#4096\tpulse  cov: 120 ft: 300 corp: 40/2Kb lim: 40 exec/s: 2048 rss: 40Mb
#70000\tDONE   cov: 130 ft: 321 corp: 44/3Kb lim: 60 exec/s: 3500 rss: 41Mb
Done 70000 runs in 20 second(s)
stat::number_of_executed_units: 70000
stat::average_exec_per_sec:     3500
stat::new_units_added:          43
";
        let stats = parse_stats(log);
        assert_eq!(
            stats,
            Stats {
                executions: Some(70000),
                per_second: Some(3500),
                cov: Some(130),
                ft: Some(321),
                corpus: Some(44),
                artifact: None
            }
        );
    }

    #[test]
    fn finds_the_artifact_of_a_crash() {
        let log = "\
==12==ERROR: libFuzzer: deadly signal
artifact_prefix='/w/fuzz/artifacts/hosts/'; Test unit written to /w/fuzz/artifacts/hosts/crash-ab12
Base64: YQ==
";
        let stats = parse_stats(log);
        assert_eq!(stats.artifact.as_deref(), Some("/w/fuzz/artifacts/hosts/crash-ab12"));
        assert_eq!(stats.executions, None);
        assert_eq!(summary(&stats), "? executions, ? exec/s, cov ?, ft ?, corpus ?");
    }
}
