//! `bench proxy`: HTTPS keep-alive requests/s and latency through leash's intercepting proxy
//! against mitmproxy (PyPI) and squid-openssl with ssl-bump (Debian), and the memory each holds
//! for idle tunnels.
//!
//! One local upstream (`proxybench upstream`: TLS, HTTP/1.1 and HTTP/2, 200 with a small body)
//! serves every run. For each of direct (the baseline), leash, mitmproxy and squid, started on
//! 127.0.0.1 one after the other:
//!
//! 1. memory: one tunnel with one request warms the proxy up (certificate minted, helpers
//!    started), then `VmRSS` is read; then `proxybench idle` opens N tunnels (CONNECT, TLS, one
//!    GET each, then idle) and `VmRSS` is read again while it holds them. A proxy's children
//!    (squid's certificate helpers) are read too and shown apart.
//! 2. throughput: `proxybench client` at 1 and at 64 connections, each doing sequential
//!    keep-alive HTTP/1.1 GETs: a warm-up, then a measured window. Added latency is the proxied
//!    percentile minus the direct one at the same concurrency.
//!
//! Then the same client runs inside `leash run` with a transparent policy (`network.transparent`),
//! once through the explicit proxy (CONNECT) and once straight to the upstream, which the kernel
//! redirects to the proxy: the ratio of the two is the cost of the transparent path.
//!
//! leash intercepts: the policy's one endpoint is `protocol: rest, access: full`, so every
//! request is decrypted, judged and forwarded by leash's pooled client; no audit log is written.
//! mitmproxy and squid likewise decrypt and re-encrypt every request. All three verify the
//! upstream against its CA.
//!
//! A peer that is missing (without `--install-peers`) or fails is reported and left out; leash
//! and direct always run. Every process started here is stopped when its guard drops, on error
//! too. All traffic stays on loopback; every run is bounded in time and count by `proxybench`.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{apt_install, field, find_program, rss_kib, tail, Ctx};

/// The mitmproxy release installed from PyPI (the newest that still runs on Debian 12's
/// Python 3.11; it needs Python >= 3.10).
const MITMPROXY: &str = "mitmproxy==11.0.2";
/// Concurrencies each proxy is measured at.
const CONNECTIONS: [u32; 2] = [1, 64];
/// How long a proxy may take to start listening (mitmdump compiles its bytecode on first start).
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Options {
    /// Measured window of each throughput run.
    pub duration: Duration,
    /// Untimed requests before it.
    pub warmup: Duration,
    /// Idle tunnels held for the memory reading.
    pub tunnels: u32,
    /// Install mitmproxy (PyPI, in a venv) and squid-openssl (apt) when missing.
    pub install: bool,
}

/// One proxy's results.
struct Measured {
    name: &'static str,
    /// Per entry of `CONNECTIONS`.
    runs: Vec<Run>,
    memory: Option<Memory>,
}

#[derive(Clone, Copy)]
struct Run {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Run {
    /// A `proxybench client` result line, printed as it comes.
    fn reported(line: &str, connections: u32) -> Result<Self> {
        let run = Run { rps: field(line, "rps")?, p50_us: field(line, "p50_us")?, p99_us: field(line, "p99_us")? };
        println!(
            "proxy:   {connections:>2} connection(s): {:>8.0} req/s, p50 {:>9.1} µs, p99 {:>9.1} µs",
            run.rps, run.p50_us, run.p99_us
        );
        Ok(run)
    }
}

struct Memory {
    /// The proxy process itself, KiB.
    before: u64,
    with: u64,
    /// Its children (squid's helpers): how many and their VmRSS, KiB.
    children_before: (usize, u64),
    children_with: (usize, u64),
}

pub fn run(ctx: &Ctx, opts: &Options) -> Result<()> {
    let proxybench = ctx.leash.with_file_name("proxybench");
    if !proxybench.is_file() {
        bail!("{} is missing after the build", proxybench.display());
    }
    let dir = ctx.dir.join("proxy");
    std::fs::create_dir_all(&dir)?;
    let bench = Bench { proxybench, dir, opts };
    let began = Instant::now();

    // Peers first: installing them is the slow part, and a peer that cannot be had is skipped.
    println!("proxy: looking for mitmproxy and squid-openssl ...");
    let mitmdump = mitmdump(opts.install);
    let squid = squid(opts.install);

    let upstream_ca = bench.dir.join("upstream-ca.pem");
    let mut upstream = Service::spawn(
        "upstream",
        bench.fd_limited(&bench.proxybench).args(["upstream", "--listen", "127.0.0.1:0", "--ca-out"]).arg(&upstream_ca),
        &bench.dir,
        true,
    )?;
    let line = upstream.next_line(Duration::from_secs(10))?;
    let upstream_addr: SocketAddr = line.trim().parse().with_context(|| format!("the upstream printed {line:?}"))?;
    if !upstream_addr.ip().is_loopback() {
        bail!("the upstream listens on {upstream_addr}, not on loopback");
    }
    let target = Target { port: upstream_addr.port(), ca: upstream_ca };
    println!(
        "proxy: upstream listening on {upstream_addr} (and [::1] when free); target https://localhost:{}/",
        target.port
    );

    let mut results = Vec::new();
    let mut skipped: Vec<(&str, String)> = Vec::new();

    println!("proxy: direct (no proxy) ...");
    results.push(Measured { name: "direct", runs: bench.throughput(&target, None, &target.ca)?, memory: None });

    println!("proxy: leash ...");
    results.push(bench.measure("leash", &target, |b| b.start_leash(&ctx.leash, &target))?);

    // Inside `leash run` with a transparent policy: the same client through the explicit proxy
    // and straight to the upstream (the kernel redirects it), to 127.0.0.1 (no name: nothing
    // is resolved on either path).
    for (name, explicit) in [("run-explicit", true), ("run-transp", false)] {
        println!(
            "proxy: {name} (client inside leash run, {}) ...",
            if explicit { "CONNECT to the proxy" } else { "redirected by the kernel" }
        );
        results.push(Measured { name, runs: bench.sandboxed(&ctx.leash, &target, explicit)?, memory: None });
    }

    match mitmdump {
        Ok(mitmdump) => {
            println!("proxy: mitmproxy ({}) ...", mitmdump.display());
            match bench.measure("mitmproxy", &target, |b| b.start_mitmdump(&mitmdump, &target)) {
                Ok(m) => results.push(m),
                Err(e) => skipped.push(("mitmproxy", format!("{e:#}"))),
            }
        }
        Err(why) => skipped.push(("mitmproxy", why)),
    }
    match squid {
        Ok(squid) => {
            println!("proxy: squid ({}) ...", squid.display());
            match bench.measure("squid", &target, |b| b.start_squid(&squid, &target)) {
                Ok(m) => results.push(m),
                Err(e) => skipped.push(("squid", format!("{e:#}"))),
            }
        }
        Err(why) => skipped.push(("squid", why)),
    }
    drop(upstream);

    report(&results, &skipped, opts);
    println!("proxy: done in {:.0} s", began.elapsed().as_secs_f64());
    Ok(())
}

/// The local upstream: its port and the CA its certificate chains to.
struct Target {
    port: u16,
    ca: PathBuf,
}

impl Target {
    fn url(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }
}

/// A started proxy: its process, address and the CA its clients must trust.
struct Started {
    service: Service,
    addr: SocketAddr,
    ca: PathBuf,
}

struct Bench<'a> {
    proxybench: PathBuf,
    dir: PathBuf,
    opts: &'a Options,
}

impl Bench<'_> {
    /// Starts a proxy, reads its memory around the idle tunnels, then measures throughput.
    fn measure(
        &self,
        name: &'static str,
        target: &Target,
        start: impl Fn(&Self) -> Result<Started>,
    ) -> Result<Measured> {
        let started = start(self)?;
        let memory = self.memory(name, target, &started)?;
        let runs = self.throughput(target, Some(started.addr), &started.ca)?;
        drop(started);
        Ok(Measured { name, runs, memory: Some(memory) })
    }

    fn throughput(&self, target: &Target, proxy: Option<SocketAddr>, ca: &Path) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for c in CONNECTIONS {
            let mut cmd = self.fd_limited(&self.proxybench);
            cmd.args(["client", "--http1", "--target", &target.url(), "--ca"])
                .arg(ca)
                .args(["--connections", &c.to_string()])
                .args(["--warmup-ms", &self.opts.warmup.as_millis().to_string()])
                .args(["--duration-ms", &self.opts.duration.as_millis().to_string()]);
            if let Some(p) = proxy {
                cmd.args(["--proxy", &p.to_string()]);
            }
            runs.push(Run::reported(&output_line(&mut cmd)?, c)?);
        }
        Ok(runs)
    }

    /// The client inside `leash run` (transparent policy for `127.0.0.1:PORT`), through the
    /// explicit proxy or straight to the upstream; the client trusts leash's CA only.
    fn sandboxed(&self, leash: &Path, target: &Target, explicit: bool) -> Result<Vec<Run>> {
        let policy = self.dir.join("leash-run-policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "version: 1\nnetwork:\n  transparent: true\nnetwork_policies:\n  bench:\n    name: bench\n    endpoints:\n      - {{ host: 127.0.0.1, port: {}, protocol: rest, access: full, allowed_ips: [127.0.0.0/8] }}\n",
                target.port
            ),
        )?;
        let proxy = if explicit { " --proxy \"${HTTPS_PROXY#http://}\"" } else { "" };
        let mut runs = Vec::new();
        for c in CONNECTIONS {
            let script = format!(
                "ulimit -n 65536 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" client --http1 --target https://127.0.0.1:{}/ --ca \"$SSL_CERT_FILE\" --connections {c} --warmup-ms {} --duration-ms {}{proxy}",
                target.port,
                self.opts.warmup.as_millis(),
                self.opts.duration.as_millis()
            );
            let mut cmd = Command::new(leash);
            cmd.args(["run", "-q", "--policy"])
                .arg(&policy)
                .arg("--upstream-ca")
                .arg(&target.ca)
                .args(["--", "/bin/sh", "-c", &script])
                .arg(&self.proxybench);
            runs.push(Run::reported(&output_line(&mut cmd)?, c)?);
        }
        Ok(runs)
    }

    fn memory(&self, name: &str, target: &Target, started: &Started) -> Result<Memory> {
        let idle = |tunnels: u32, hold_ms: u64| {
            let mut cmd = self.fd_limited(&self.proxybench);
            cmd.args(["idle", "--http1", "--request", "--target", &format!("localhost:{}", target.port), "--ca"])
                .arg(&started.ca)
                .args([
                    "--proxy",
                    &started.addr.to_string(),
                    "--tunnels",
                    &tunnels.to_string(),
                    "--hold-ms",
                    &hold_ms.to_string(),
                ]);
            cmd
        };
        output_line(&mut idle(1, 0)).context("warming the proxy up with one tunnel")?;
        std::thread::sleep(Duration::from_millis(300));
        let pid = started.service.pid();
        let before = rss_kib(pid)?;
        let children_before = children_rss(pid);

        let hold = Duration::from_secs(2);
        let mut holder =
            Service::spawn("idle", &mut idle(self.opts.tunnels, hold.as_millis() as u64), &self.dir, true)?;
        let line = holder
            .next_line(Duration::from_secs(90))
            .with_context(|| format!("opening {} tunnels through {name}", self.opts.tunnels))?;
        let opened = field(&line, "open")?;
        let seconds = field(&line, "seconds")?;
        std::thread::sleep(Duration::from_millis(500));
        let with = rss_kib(pid)?;
        let children_with = children_rss(pid);
        println!("proxy:   {opened:.0} idle tunnels opened in {seconds:.1} s; VmRSS {} -> {}", mib(before), mib(with));
        holder.wait(hold + Duration::from_secs(10))?;
        Ok(Memory { before, with, children_before, children_with })
    }

    /// `program` run through `sh` with the open-file limit raised: 1,000 tunnels take two
    /// descriptors each in a proxy, more than the common default of 1,024.
    fn fd_limited(&self, program: &Path) -> Command {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "ulimit -n 65536 2>/dev/null || ulimit -n \"$(ulimit -Hn)\"; exec \"$0\" \"$@\""]).arg(program);
        cmd
    }

    fn start_leash(&self, leash: &Path, target: &Target) -> Result<Started> {
        let policy = self.dir.join("leash-policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "version: 1\nnetwork_policies:\n  bench:\n    name: bench\n    endpoints:\n      - {{ host: localhost, port: {}, protocol: rest, access: full, allowed_ips: [127.0.0.0/8, \"::1/128\"] }}\n",
                target.port
            ),
        )?;
        let ca = self.dir.join("leash-ca.pem");
        let addr = free_port()?;
        let mut cmd = self.fd_limited(leash);
        cmd.args(["proxy", "--policy"])
            .arg(&policy)
            .args(["--listen", &addr.to_string(), "--ca-out"])
            .arg(&ca)
            .arg("--upstream-ca")
            .arg(&target.ca);
        let mut service = Service::spawn("leash", &mut cmd, &self.dir, false)?;
        service.wait_listening(addr, &[&ca])?;
        Ok(Started { service, addr, ca })
    }

    fn start_mitmdump(&self, mitmdump: &Path, target: &Target) -> Result<Started> {
        let confdir = self.dir.join("mitmproxy");
        std::fs::create_dir_all(&confdir)?;
        let addr = free_port()?;
        let mut cmd = self.fd_limited(mitmdump);
        cmd.args(["-q", "--listen-host", "127.0.0.1", "--listen-port", &addr.port().to_string()])
            .args(["--set", &format!("confdir={}", confdir.display())])
            .args(["--set", &format!("ssl_verify_upstream_trusted_ca={}", target.ca.display())])
            .args(["--set", "flow_detail=0", "--set", "termlog_verbosity=error"]);
        let mut service = Service::spawn("mitmdump", &mut cmd, &self.dir, false)?;
        let ca = confdir.join("mitmproxy-ca-cert.pem");
        service.wait_listening(addr, &[&ca])?;
        Ok(Started { service, addr, ca })
    }

    fn start_squid(&self, squid: &Path, target: &Target) -> Result<Started> {
        let certgen = Path::new("/usr/lib/squid/security_file_certgen");
        if !certgen.is_file() {
            bail!("{} is missing (it comes with squid-openssl)", certgen.display());
        }
        let openssl =
            find_program("openssl").context("`openssl` not found (Debian package openssl); it makes squid's CA")?;
        let dir = self.dir.join("squid");
        std::fs::create_dir_all(&dir)?;
        let (ca, key, db) = (dir.join("ca.pem"), dir.join("ca.key"), dir.join("ssl_db"));
        super::run_quiet(
            Command::new(openssl)
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                ])
                .args(["-subj", "/CN=leash bench squid CA", "-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&ca),
        )
        .context("making squid's CA")?;
        super::run_quiet(Command::new(certgen).arg("-c").arg("-s").arg(&db).args(["-M", "16MB"]))
            .context("initialising squid's certificate database")?;
        let upstream_ca = dir.join("upstream-ca.pem");
        std::fs::copy(&target.ca, &upstream_ca)?;
        let addr = free_port()?;
        let conf = dir.join("squid.conf");
        let d = |p: &Path| p.display().to_string();
        std::fs::write(
            &conf,
            format!(
                "# Written by `cargo xtask bench proxy`: bump every CONNECT, cache nothing, log no access.\n\
                 http_port {addr} ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=16MB tls-cert={ca} tls-key={key}\n\
                 ssl_bump bump all\n\
                 sslcrtd_program {certgen} -s {db} -M 16MB\n\
                 tls_outgoing_options cafile={upstream}\n\
                 http_access allow all\n\
                 cache deny all\n\
                 access_log none\n\
                 cache_log {log}\n\
                 pid_filename {pid}\n\
                 coredump_dir {dir}\n\
                 pinger_enable off\n\
                 shutdown_lifetime 0 seconds\n\
                 max_filedescriptors 65536\n\
                 workers 1\n\
                 {user}",
                ca = d(&ca),
                key = d(&key),
                certgen = d(certgen),
                db = d(&db),
                upstream = d(&upstream_ca),
                log = d(&dir.join("cache.log")),
                pid = d(&dir.join("squid.pid")),
                dir = d(&dir),
                // As root squid switches to this user, which must own its files.
                user = if crate::nix_is_root() { "cache_effective_user proxy\n" } else { "" },
            ),
        )?;
        if crate::nix_is_root() {
            super::run_quiet(Command::new("chown").args(["-R", "proxy:proxy"]).arg(&dir))
                .context("giving squid's directory to user proxy")?;
        }
        super::run_quiet(Command::new(squid).args(["-k", "parse", "-f"]).arg(&conf)).context("squid -k parse")?;
        let mut cmd = self.fd_limited(squid);
        cmd.args(["-N", "-f"]).arg(&conf);
        let mut service = Service::spawn("squid", &mut cmd, &self.dir, false)?;
        service.wait_listening(addr, &[]).map_err(|e| {
            let log = std::fs::read_to_string(dir.join("cache.log")).unwrap_or_default();
            e.context(format!("squid's cache.log ends: {}", tail(&log, 6)))
        })?;
        Ok(Started { service, addr, ca })
    }
}

fn report(results: &[Measured], skipped: &[(&str, String)], opts: &Options) {
    println!();
    println!(
        "proxy: HTTPS keep-alive GETs over HTTP/1.1 to a local upstream; same client (proxybench, 1 thread) for all; \
         {:.1} s warm-up + {:.1} s measured per row",
        opts.warmup.as_secs_f64(),
        opts.duration.as_secs_f64()
    );
    println!(
        "{:<12} {:>5} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "", "conns", "req/s", "p50 µs", "p99 µs", "+p50 µs", "+p99 µs"
    );
    let direct = results.iter().find(|m| m.name == "direct");
    for (i, c) in CONNECTIONS.iter().enumerate() {
        for m in results {
            let r = m.runs[i];
            let added = |f: fn(&Run) -> f64| match direct {
                Some(d) if m.name != "direct" => format!("{:.1}", f(&r) - f(&d.runs[i])),
                _ => "-".into(),
            };
            println!(
                "{:<12} {:>5} {:>9.0} {:>9.1} {:>9.1} {:>10} {:>10}",
                m.name,
                c,
                r.rps,
                r.p50_us,
                r.p99_us,
                added(|r| r.p50_us),
                added(|r| r.p99_us)
            );
        }
    }
    for (name, _) in skipped {
        println!("{name:<12} skipped (below)");
    }

    let get = |name: &str| results.iter().find(|m| m.name == name);
    if let (Some(explicit), Some(transparent)) = (get("run-explicit"), get("run-transp")) {
        let ratios: Vec<String> = CONNECTIONS
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:.2} at {c}", transparent.runs[i].rps / explicit.runs[i].rps))
            .collect();
        let met = CONNECTIONS.iter().enumerate().all(|(i, _)| transparent.runs[i].rps / explicit.runs[i].rps >= 0.95);
        println!(
            "leash run, transparent/explicit req/s: {} (goal >= 0.95: {})",
            ratios.join(", "),
            if met { "met" } else { "NOT met" }
        );
    }
    if let Some(leash) = get("leash") {
        for (peer, goal) in [("mitmproxy", 10.0), ("squid", 1.5)] {
            let Some(p) = get(peer) else { continue };
            let ratios: Vec<String> = CONNECTIONS
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{:.1}× at {c}", leash.runs[i].rps / p.runs[i].rps))
                .collect();
            let met = CONNECTIONS.iter().enumerate().all(|(i, _)| leash.runs[i].rps / p.runs[i].rps >= goal);
            println!(
                "leash/{peer} req/s: {} (goal >= {goal}×: {})",
                ratios.join(", "),
                if met { "met" } else { "NOT met" }
            );
        }
        if let Some(d) = direct {
            let added = leash.runs[0].p50_us - d.runs[0].p50_us;
            println!(
                "leash added p50 latency at 1 connection: {added:.1} µs (goal < 300 µs: {})",
                if added < 300.0 { "met" } else { "NOT met" }
            );
        }
    }

    println!();
    println!("proxy: memory (VmRSS) with {} idle tunnels (CONNECT + TLS + one GET each, then idle)", opts.tunnels);
    println!("{:<10} {:>12} {:>12} {:>12}   children (helpers): before -> with", "", "before", "with", "per tunnel");
    for m in results {
        let Some(mem) = &m.memory else { continue };
        let total = |own: u64, kids: (usize, u64)| own + kids.1;
        let per = (total(mem.with, mem.children_with) as f64 - total(mem.before, mem.children_before) as f64)
            / opts.tunnels as f64;
        let kids = if mem.children_before.0 + mem.children_with.0 == 0 {
            "none".to_string()
        } else {
            format!(
                "{} -> {} processes, {} -> {}",
                mem.children_before.0,
                mem.children_with.0,
                mib(mem.children_before.1),
                mib(mem.children_with.1)
            )
        };
        println!("{:<10} {:>12} {:>12} {:>9.1} KiB   {kids}", m.name, mib(mem.before), mib(mem.with), per);
    }
    println!(
        "(before: after one warm-up tunnel; per tunnel: the growth of the process and its children over the tunnels)"
    );
    for (name, why) in skipped {
        println!("{name}: skipped: {why}");
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// --- peers ---------------------------------------------------------------------------------------

/// `mitmdump` from a venv under the user's cache directory, created with Debian's Python and
/// filled from PyPI when `install` is set. `Err` says why it cannot be had.
fn mitmdump(install: bool) -> Result<PathBuf, String> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .ok_or("neither XDG_CACHE_HOME nor HOME is set")?;
    let venv = cache.join("leash/bench/mitmproxy-venv");
    let bin = venv.join("bin/mitmdump");
    if bin.is_file() {
        return Ok(bin);
    }
    if !install {
        return Err(format!(
            "{} not found; pass --install-peers to install {MITMPROXY} from PyPI into that venv",
            bin.display()
        ));
    }
    let python = Path::new("/usr/bin/python3");
    if !python.is_file() {
        return Err("/usr/bin/python3 not found (Debian package python3)".into());
    }
    println!("proxy: installing {MITMPROXY} into {} ...", venv.display());
    let make_venv = || {
        let _ = std::fs::remove_dir_all(&venv);
        Command::new(python).args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
    };
    if !make_venv() {
        println!("proxy: python3 -m venv failed; installing python3-venv ...");
        apt_install(&["python3-venv"]).map_err(|e| format!("{e:#}"))?;
        if !make_venv() {
            return Err(format!("python3 -m venv {} failed", venv.display()));
        }
    }
    let status = Command::new(venv.join("bin/python"))
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", MITMPROXY])
        .status()
        .map_err(|e| format!("running pip: {e}"))?;
    if !status.success() || !bin.is_file() {
        return Err(format!("pip install {MITMPROXY} failed ({status})"));
    }
    Ok(bin)
}

/// `squid` built with OpenSSL (ssl-bump), from Debian's squid-openssl when `install` is set.
fn squid(install: bool) -> Result<PathBuf, String> {
    let has_ssl = |p: &Path| {
        Command::new(p).arg("-v").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--with-openssl"))
    };
    match find_program("squid") {
        Some(p) if has_ssl(&p) => return Ok(p),
        Some(p) if !install => {
            return Err(format!(
                "{} is built without OpenSSL (no ssl-bump); install squid-openssl or pass --install-peers",
                p.display()
            ))
        }
        None if !install => return Err("`squid` not found; install squid-openssl or pass --install-peers".into()),
        _ => {}
    }
    println!("proxy: installing squid-openssl with apt-get (Debian may also enable its squid service) ...");
    apt_install(&["squid-openssl"]).map_err(|e| format!("{e:#}"))?;
    match find_program("squid") {
        Some(p) if has_ssl(&p) => Ok(p),
        _ => Err("squid with OpenSSL still not found after installing squid-openssl".into()),
    }
}

// --- processes -----------------------------------------------------------------------------------

/// A process started here; dropping it stops it (SIGTERM, then SIGKILL after 5 s).
struct Service {
    name: &'static str,
    child: Child,
    lines: Option<Receiver<String>>,
    log: PathBuf,
}

impl Service {
    /// Starts `cmd` with stderr (and stdout unless `read_stdout`) going to `DIR/NAME.log`.
    fn spawn(name: &'static str, cmd: &mut Command, dir: &Path, read_stdout: bool) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let err = File::create(&log)?;
        let out = if read_stdout { Stdio::piped() } else { Stdio::from(err.try_clone()?) };
        let mut child =
            cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().with_context(|| format!("starting {name}"))?;
        let lines = child.stdout.take().map(|stdout| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        });
        Ok(Self { name, child, lines, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 6)
    }

    /// The next non-empty stdout line, waiting at most `timeout`.
    fn next_line(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let lines = self.lines.as_ref().context("stdout is not read")?;
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.trim().is_empty() => continue,
                Ok(l) => return Ok(l),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{}: no output within {timeout:?}; its log ends: {}", self.name, self.log_tail())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.child.wait();
                    bail!("{} exited; its log ends: {}", self.name, self.log_tail())
                }
            }
        }
    }

    /// Waits until `addr` accepts connections and every file in `files` exists.
    fn wait_listening(&mut self, addr: SocketAddr, files: &[&Path]) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if files.iter().all(|f| f.is_file())
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if self.child.try_wait()?.is_some() {
                bail!("{} exited before listening on {addr}; its log ends: {}", self.name, self.log_tail());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not listen on {addr} within {START_TIMEOUT:?}; its log ends: {}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit by itself, successfully, within `timeout`.
    fn wait(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("{} failed ({status}): {}", self.name, self.log_tail());
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // Our unreaped child, so its pid cannot have been reused.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fields of `/proc/PID/stat` after the command name (state first, then ppid, ...).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default()
}

/// How many descendants `pid` has and their summed VmRSS, KiB.
fn children_rss(pid: u32) -> (usize, u64) {
    let mut parents = vec![pid];
    let mut found = Vec::new();
    let procs: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid = stat_fields(&stat).get(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    while let Some(parent) = parents.pop() {
        for &(p, ppid) in &procs {
            if ppid == parent {
                found.push(p);
                parents.push(p);
            }
        }
    }
    (found.len(), found.iter().filter_map(|&p| rss_kib(p).ok()).sum())
}

/// A loopback address with a port that was free a moment ago.
fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Runs `cmd` to completion and returns the last line it printed, failing with its stderr.
fn output_line(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status);
    }
    stdout.lines().rev().find(|l| !l.trim().is_empty()).map(str::to_owned).context("no output")
}
