//! `connbench`: times N loopback TCP connect+close and prints one JSON line.
//!
//! ```text
//! connbench ADDR N          N connects to ADDR (e.g. 127.0.0.1:3128)
//! connbench proxy N         N connects to the proxy named by $HTTP_PROXY (http://IP:PORT)
//! connbench sandbox ADDR N  the same from a new sandbox cgroup with leash's network programs,
//!                           confined to ADDR as `leash run` confines its agent to its proxy
//!                           (owner records, transparent mode); as root
//! ```
//!
//! Output: `{"ops":N,"ns_per_op":...,"median_ns":...,"p99_ns":...,"stalls":S}`: the mean, median
//! and 99th percentile of the N per-op times, and how many ops stalled (see below).
//!
//! One op is `socket` + `connect` + `setsockopt(SO_LINGER 0)` + `close`. The zero linger makes the
//! close an RST, so no TIME_WAIT socket is left behind: hundreds of thousands of connects in a
//! minute would otherwise exhaust the ephemeral ports and time port selection, not the connect
//! path. Nothing is ever sent.
//!
//! Ops run in bursts of 32 with a 0.5 ms sleep between bursts, and only the ops are timed
//! (`ns_per_op` is their mean). A connect returns as soon as the kernel completes the handshake,
//! before the listener accepts, so an unpaced loop fills the listener's accept queue faster than
//! a proxy that serves each connection can drain it; the kernel then drops a SYN and that connect
//! waits a whole second for the retransmit. Pacing keeps the queue short so the numbers are those
//! of the connect path. Should a SYN still be dropped (the proxy did not run for a few ms, say
//! on a busy machine), that op takes a second or more: such stalls (>= 0.5 s) are counted in
//! `stalls` and left out of the mean, which one of them would otherwise dominate.
//!
//! A few hundred untimed ops warm caches first. The first failing connect ends the run (exit 1,
//! the error on stderr).
//!
//! `cargo xtask bench connect` runs this inside and outside a sandbox against the same proxy,
//! and with `sandbox` against a plain listener, where both sides are served alike and only the
//! programs differ.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::exit;
use std::time::{Duration, Instant};

const WARMUP: usize = 256;
const BURST: usize = 32;
const PAUSE: Duration = Duration::from_micros(500);
const STALL_NS: u64 = 500_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() == 3 && args[0] == "sandbox" {
        match sandboxed(parse_addr(&args[1]), &args[2]) {
            Ok(line) => {
                println!("{line}");
                exit(0)
            }
            Err(e) => {
                eprintln!("connbench: {e}");
                exit(1)
            }
        }
    }
    if args.len() != 2 {
        usage();
    }
    let addr = parse_addr(&args[0]);
    let n: usize = args[1].parse().ok().filter(|&n| n > 0).unwrap_or_else(|| usage());

    for i in 0..WARMUP {
        pace(i);
        op(addr);
    }
    let mut per_op = Vec::with_capacity(n);
    for i in 0..n {
        pace(i);
        let start = Instant::now();
        op(addr);
        per_op.push(start.elapsed().as_nanos() as u64);
    }
    let stalls = per_op.iter().filter(|&&t| t >= STALL_NS).count();
    let total: u64 = per_op.iter().filter(|&&t| t < STALL_NS).sum();
    let mean = total / (n - stalls).max(1) as u64;
    per_op.sort_unstable();
    println!(
        "{{\"ops\":{n},\"ns_per_op\":{mean},\"median_ns\":{},\"p99_ns\":{},\"stalls\":{stalls}}}",
        percentile(&per_op, 50),
        percentile(&per_op, 99)
    );
}

/// Sleeps between bursts so the listener can drain its accept queue.
fn pace(i: usize) {
    if i > 0 && i.is_multiple_of(BURST) {
        std::thread::sleep(PAUSE);
    }
}

/// One connect+close; exits the process on failure.
fn op(addr: SocketAddr) {
    match TcpStream::connect(addr) {
        Ok(stream) => {
            let linger = libc::linger { l_onoff: 1, l_linger: 0 };
            // SAFETY: setsockopt on a socket this function owns, with a correctly sized value.
            let r = unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            if r != 0 {
                eprintln!("connbench: setsockopt(SO_LINGER): {}", std::io::Error::last_os_error());
                exit(1);
            }
        }
        Err(e) => {
            eprintln!("connbench: connect to {addr}: {e}");
            exit(1);
        }
    }
}

/// Nearest-rank percentile of sorted, non-empty `v`.
fn percentile(v: &[u64], p: usize) -> u64 {
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank - 1]
}

fn parse_addr(text: &str) -> SocketAddr {
    let text = if text == "proxy" {
        let v = std::env::var("HTTP_PROXY").unwrap_or_else(|_| {
            eprintln!("connbench: HTTP_PROXY is not set");
            exit(2)
        });
        v.trim_start_matches("http://").trim_end_matches('/').to_owned()
    } else {
        text.to_owned()
    };
    text.parse().unwrap_or_else(|_| {
        eprintln!("connbench: not an IP:PORT address: {text}");
        exit(2)
    })
}

/// Runs `connbench ADDR N` in a new sandbox cgroup confined to `addr` by leash's network
/// programs, and returns its line; the cgroup and its links are removed after.
fn sandboxed(addr: SocketAddr, n: &str) -> Result<String, String> {
    use leash::kernel::{generation::Generation, mounts, programs, sandbox::KernelSandbox};
    use std::os::unix::process::CommandExt as _;
    let err = |e: anyhow::Error| format!("{e:#}");
    let mut generation = Generation::open_host().map_err(err)?;
    let name = format!("connbench-{}", std::process::id());
    // As `leash run` confines its agent: owner records, transparent mode.
    let ports = programs::TransparentPorts { tcp: addr.port(), dns: addr.port() };
    let net = programs::transparent(programs::sandbox_net(addr, true), ports);
    let sandbox =
        KernelSandbox::create(&mut generation, &mounts::cgroup2_root().map_err(err)?, &name, net).map_err(err)?;
    let cgroup = sandbox.cgroup().clone();
    let measured = (|| {
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(cgroup.path().join("cgroup.procs"))
            .map_err(|e| format!("opening cgroup.procs: {e}"))?;
        let fd = procs.as_raw_fd();
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg(addr.to_string()).arg(n);
        // SAFETY: one write(2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().map_err(|e| format!("running connbench in the sandbox: {e}"))?;
        if !out.status.success() {
            return Err(format!("connbench in the sandbox: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })();
    let removed = sandbox.remove(&mut generation).map_err(err);
    let line = measured?;
    removed?;
    Ok(line)
}

fn usage() -> ! {
    eprintln!("usage: connbench ADDR|proxy N, or connbench sandbox ADDR N");
    exit(2)
}
