//! Booting leash in VMs: `cargo xtask vm-test` (the suites on every kernel of the matrix, one row
//! per kernel) and `cargo xtask run` (one command under `leash run`, with the project directory
//! shared into the VM at the same path).
//!
//! The steps, each a function: build static binaries ([`crate::static_build`]), fetch kernels
//! ([`kernels`]), write the initramfs ([`initramfs`]), boot and parse the console ([`qemu`]).

pub mod initramfs;
pub mod kernels;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::static_build;
use crate::{run_cmd, workspace_root};
use initramfs::Image;
use kernels::Kernel;
use qemu::{Accel, Boot, Echo, Outcome};

#[derive(Debug, Args)]
pub struct VmTestArgs {
    /// Kernel series to test (5.10, 6.1, 6.12, 7) or `all`; repeatable. Default: all.
    #[arg(long = "kernel", value_name = "K")]
    pub kernels: Vec<String>,
    /// Seconds one VM may run before it counts as hung.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// The suites vm_init runs, comma-separated.
    #[arg(long, default_value = "doctor,net,lsm")]
    pub suites: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel series to boot (5.10, 6.1, 6.12, 7).
    #[arg(long, default_value = "6.12")]
    pub kernel: String,
    /// Policy for `leash run` (default: the demo policy, which allows 127.0.0.1:8080 only).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Seconds the VM may run.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// The command to confine, after `--` (default: the demo agent script).
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

/// One progress line.
pub fn progress(message: &str) {
    println!("vm: {message}");
}

/// Runs `f` as a named step, reporting how long it took.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    progress(&format!("{name} ..."));
    let started = Instant::now();
    let value = f().with_context(|| format!("{name} failed"))?;
    progress(&format!("{name}: done in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(value)
}

/// `apt-get install` of Debian packages the VM runner needs (said out loud first).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    progress(&format!("installing {} (apt-get install)", packages.join(" ")));
    crate::privilege::ensure_sudo(&format!("install {}", packages.join(" ")))?;
    let mut update = crate::privilege::as_root("apt-get");
    update.args(["-q", "update"]);
    run_cmd(&mut update)?;
    run_cmd(
        crate::privilege::as_root("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn logs_dir() -> PathBuf {
    workspace_root().join("target/vm/logs")
}

/// `cargo xtask vm-test`.
pub fn vm_test(args: VmTestArgs) -> Result<()> {
    let matrix = kernels::select(&args.kernels)?;
    step("qemu", qemu::ensure_installed)?;
    let bins = step("building static leash and test binaries (target/static)", static_build::build)?;
    let initrd = workspace_root().join("target/vm/initramfs.cpio");
    step("writing the initramfs", || {
        let size = Image::base(&bins)?.write(&initrd)?;
        progress(&format!("{} ({:.1} MiB)", initrd.display(), size as f64 / (1 << 20) as f64));
        Ok(())
    })?;
    test_matrix(&matrix, &initrd, &args.suites, Duration::from_secs(args.timeout), qemu::MEMORY_MIB, "")
}

/// Boots `initrd` on each kernel of `matrix` with `leash.suite=<suites>` and prints one row per
/// kernel; fails when any kernel did. Console logs are `target/vm/logs/<log_prefix><series>.log`.
pub fn test_matrix(
    matrix: &[&'static kernels::Series],
    initrd: &Path,
    suites: &str,
    timeout: Duration,
    memory_mib: u32,
    log_prefix: &str,
) -> Result<()> {
    let mut fetched = Vec::new();
    for series in matrix {
        let kernel = step(&format!("kernel {}: fetching ({})", series.name, series.suite), || kernels::fetch(series));
        fetched.push((series.name, kernel));
    }
    let accel = match fetched.iter().find_map(|(_, k)| k.as_ref().ok()) {
        Some(k) => qemu::choose_accel(k, initrd, &logs_dir()),
        None => Accel::Tcg,
    };
    let mut rows = Vec::new();
    for (series, kernel) in fetched {
        let row = match kernel {
            Ok(kernel) => {
                progress(&format!(
                    "kernel {series}: booting {} ({accel}, timeout {} s)",
                    kernel.release,
                    timeout.as_secs()
                ));
                let boot = Boot {
                    kernel: &kernel,
                    initrd,
                    cmdline: format!("leash.suite={suites}"),
                    accel,
                    timeout,
                    log: logs_dir().join(format!("{log_prefix}{series}.log")),
                    echo: Echo::Results,
                    extra_args: Vec::new(),
                    memory_mib,
                };
                let outcome = boot.run();
                Row::new(series, Some(&kernel), outcome, &boot.log)
            }
            Err(e) => Row::new(series, None, Err(e), Path::new("-")),
        };
        progress(&format!("kernel {series}: {}", row.verdict));
        rows.push(row);
    }
    print_table(&rows);
    let failed = rows.iter().filter(|r| !r.passed).count();
    if failed > 0 {
        bail!("{failed} of {} kernels failed (console logs are in {})", rows.len(), logs_dir().display());
    }
    Ok(())
}

/// Boots each kernel series of `kernels` once, on the base image, with `leash.suite=<suite>`,
/// showing what vm_init and the suite print as it comes; returns each kernel with its outcome and
/// console log (`cargo xtask bench syscall`). With `icount`, TCG runs with `-icount
/// shift=0,sleep=off`: the guest's clock advances 1 ns per instruction executed, so what the
/// guest times counts instructions and does not depend on how busy the host is.
pub fn boot_suite(
    kernels: &[String],
    suite: &str,
    timeout: Duration,
    icount: bool,
) -> Result<Vec<(Kernel, Outcome, PathBuf)>> {
    let matrix = kernels::select(kernels)?;
    step("qemu", qemu::ensure_installed)?;
    let bins = step("building static leash and test binaries (target/static)", static_build::build)?;
    let initrd = workspace_root().join(format!("target/vm/initramfs-{suite}.cpio"));
    step("writing the initramfs", || Image::base(&bins)?.write(&initrd))?;
    let mut boots = Vec::new();
    for series in matrix {
        let kernel = step(&format!("kernel {}: fetching ({})", series.name, series.suite), || kernels::fetch(series))?;
        let accel = if icount { Accel::Tcg } else { qemu::choose_accel(&kernel, &initrd, &logs_dir()) };
        let log = logs_dir().join(format!("{suite}-{}.log", series.name));
        progress(&format!(
            "kernel {}: booting {} ({accel}); console log: {}",
            series.name,
            kernel.release,
            log.display()
        ));
        let outcome = Boot {
            kernel: &kernel,
            initrd: &initrd,
            cmdline: format!("leash.suite={suite}"),
            accel,
            timeout,
            log: log.clone(),
            echo: Echo::Console,
            extra_args: if icount { vec!["-icount".into(), "shift=0,sleep=off".into()] } else { Vec::new() },
            memory_mib: qemu::MEMORY_MIB,
        }
        .run()?;
        boots.push((kernel, outcome, log));
    }
    Ok(boots)
}

/// One line of the vm-test table.
struct Row {
    kernel: String,
    version: String,
    passed: bool,
    verdict: String,
    counts: String,
    seconds: String,
    log: String,
}

impl Row {
    fn new(series: &str, kernel: Option<&Kernel>, outcome: Result<Outcome>, log: &Path) -> Row {
        let version = kernel.map_or("-".into(), |k| k.version.clone());
        let log = log.display().to_string();
        match outcome {
            Ok(o) => {
                let passed = o.passed();
                let verdict = match o.failure() {
                    None => "PASS".to_owned(),
                    Some(why) => format!("FAIL ({why})"),
                };
                let ok = o.results.iter().filter(|r| r.1).count();
                Row {
                    kernel: series.into(),
                    version,
                    passed,
                    verdict,
                    counts: format!("{ok}/{}", o.results.len()),
                    seconds: format!("{:.1}", o.seconds),
                    log,
                }
            }
            Err(e) => Row {
                kernel: series.into(),
                version,
                passed: false,
                verdict: format!("FAIL ({})", format!("{e:#}").replace('\n', " ")),
                counts: "-".into(),
                seconds: "-".into(),
                log,
            },
        }
    }
}

fn print_table(rows: &[Row]) {
    let header = ["kernel", "version", "verdict", "passed/total", "seconds", "log"];
    let cells: Vec<[&str; 6]> =
        rows.iter().map(|r| [&*r.kernel, &*r.version, &*r.verdict, &*r.counts, &*r.seconds, &*r.log]).collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |row: [&str; 6]| {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    println!();
    line(header);
    for row in cells {
        line(row);
    }
}

// ---------------------------------------------------------------------------------------------
// cargo xtask run

/// The default command: a shell script acting like an agent that tries allowed and forbidden
/// things and says what happened to each.
const DEMO_SCRIPT: &str = include_str!("demo.sh");
const DEMO_PATH: &str = "/usr/share/leash/demo.sh";
/// The demo policy: the VM's service on 127.0.0.1:8080 is allowed, the one on :8081 is not;
/// only programs under /bin and /usr/bin run; the demo secret cannot be opened.
const DEMO_POLICY: &str = "\
version: 1
network_policies:
  demo:
    name: demo
    endpoints:
      - { host: 127.0.0.1, port: 8080, protocol: tcp }
kernel:
  exec: { allow: [/bin/**, /usr/bin/**] }
  deny_open: [/etc/leash-vm/secret]
  deny: [ptrace, bpf, mount, userns, perf_event, raw_socket, packet_socket, kill_outside, kernel_module]
";
/// Where Debian's busybox-static puts its binary: the VM's shell and core utilities.
pub const BUSYBOX: &str = "/bin/busybox";
const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "ash", "cat", "echo", "printf", "ls", "id", "env", "grep", "head", "tail", "sleep", "true", "false", "test",
    "[", "uname", "ps", "mkdir", "rm", "touch", "wc", "wget", "nc", "pwd", "cut", "sed", "tr", "cp", "chmod", "kill",
];

/// `cargo xtask run`.
pub fn run(args: RunArgs) -> Result<()> {
    let series = *kernels::select(std::slice::from_ref(&args.kernel))?.first().context("no kernel selected")?;
    step("qemu", qemu::ensure_installed)?;
    step("busybox-static (the VM's shell)", ensure_busybox)?;
    let virtiofsd = step("virtiofsd (shares the project directory)", ensure_virtiofsd)?;
    let bins = step("building static leash and test binaries (target/static)", static_build::build)?;
    let kernel = step(&format!("kernel {}: fetching ({})", series.name, series.suite), || kernels::fetch(series))?;

    let project = workspace_root();
    let cwd = std::env::current_dir().ok().filter(|d| d.starts_with(&project)).unwrap_or_else(|| project.clone());
    let argv = if args.cmd.is_empty() { vec!["/bin/sh".to_owned(), DEMO_PATH.to_owned()] } else { args.cmd.clone() };
    let policy = match &args.policy {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => DEMO_POLICY.as_bytes().to_vec(),
    };
    let initrd = workspace_root().join(format!("target/vm/initramfs-run-{}.cpio", series.name));
    step("writing the initramfs", || {
        run_image(&bins, &kernel, &argv, &policy, &cwd, &project)?.write(&initrd)?;
        Ok(())
    })?;

    let socket = workspace_root().join(format!("target/vm/virtiofs-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let daemon = VirtiofsDaemon::start(&virtiofsd, &socket, &project)?;
    let accel = qemu::choose_accel(&kernel, &initrd, &logs_dir());
    let boot = Boot {
        kernel: &kernel,
        initrd: &initrd,
        cmdline: "leash.run".into(),
        accel,
        timeout: Duration::from_secs(args.timeout),
        log: logs_dir().join(format!("run-{}.log", series.name)),
        echo: Echo::Console,
        extra_args: virtiofs_args(&socket),
        memory_mib: qemu::MEMORY_MIB,
    };
    progress(&format!(
        "booting {} ({accel}); {} is shared read-only at the same path; console log: {}",
        kernel.release,
        project.display(),
        boot.log.display()
    ));
    let outcome = boot.run();
    drop(daemon);
    let _ = std::fs::remove_file(&socket);
    let outcome = outcome?;
    if let Some(p) = &outcome.panic {
        bail!("the VM's kernel panicked ({p}); console log: {}", boot.log.display());
    }
    if outcome.timed_out {
        bail!("the VM did not finish within {} s; console log: {}", args.timeout, boot.log.display());
    }
    match outcome.exit {
        Some(0) => {
            progress(&format!("done in {:.1} s", outcome.seconds));
            Ok(())
        }
        Some(code) => {
            progress(&format!("the command exited with {code} ({:.1} s)", outcome.seconds));
            std::process::exit(code)
        }
        None => {
            bail!("the VM powered off without reporting the command's exit status; console log: {}", boot.log.display())
        }
    }
}

/// The image of `xtask run`: the base image plus busybox, the demo, the policy, the command,
/// the shared directory's mount point and the modules that mounting it needs.
fn run_image(
    bins: &static_build::Binaries,
    kernel: &Kernel,
    argv: &[String],
    policy: &[u8],
    cwd: &Path,
    project: &Path,
) -> Result<Image> {
    let mut image = Image::base(bins)?;
    image.host_file(BUSYBOX, Path::new(BUSYBOX), 0o755);
    for applet in BUSYBOX_APPLETS {
        image.symlink(&format!("/bin/{applet}"), "busybox");
    }
    image.symlink("/usr/bin/env", "/bin/busybox");
    image.file(DEMO_PATH, DEMO_SCRIPT.as_bytes(), 0o755);
    // A file the demo policy's deny_open names, readable by anyone as far as permissions go.
    image.file("/etc/leash-vm/secret", b"demo-token\n", 0o644);
    image.symlink("/usr/share/leash/secret-link", "/etc/leash-vm/secret");
    image.file("/etc/leash-vm/policy.yaml", policy, 0o644);
    image.file("/etc/leash-vm/argv", argv.join("\0").as_bytes(), 0o644);
    image.file("/etc/leash-vm/cwd", cwd.to_string_lossy().as_bytes(), 0o644);
    image.file("/etc/leash-vm/share", project.to_string_lossy().as_bytes(), 0o644);
    image.dir(&project.to_string_lossy(), 0o755);
    let mut list = String::new();
    for (i, module) in kernel.virtiofs_modules()?.iter().enumerate() {
        let inside = format!("/lib/modules/leash/{i:02}-{}", module.file_name().unwrap_or_default().to_string_lossy());
        image.host_file(&inside, module, 0o644);
        list.push_str(&inside);
        list.push('\n');
    }
    image.file("/etc/leash-vm/modules", list.as_bytes(), 0o644);
    Ok(image)
}

/// qemu arguments for a vhost-user-fs device (tag `leash`) served by virtiofsd on `socket`;
/// vhost-user needs the guest's memory in a shareable memfd.
fn virtiofs_args(socket: &Path) -> Vec<String> {
    [
        "-object",
        &format!("memory-backend-memfd,id=mem,size={}M,share=on", qemu::MEMORY_MIB),
        "-numa",
        "node,memdev=mem",
        "-chardev",
        &format!("socket,id=vfs,path={}", socket.display()),
        "-device",
        "vhost-user-fs-pci,chardev=vfs,tag=leash",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Debian's static busybox at [`BUSYBOX`], installed when missing.
pub fn ensure_busybox() -> Result<()> {
    if !Path::new(BUSYBOX).exists() {
        apt_install(&["busybox-static"])?;
    }
    // Debian's dynamic busybox also lives at /bin/busybox: the VM needs the static one.
    if static_build::has_interpreter(Path::new(BUSYBOX))? {
        apt_install(&["busybox-static"])?;
    }
    Ok(())
}

const VIRTIOFSD_VERSION: &str = "1.14.0";

/// The virtiofsd binary: on PATH, in ~/.cargo/bin, or built with `cargo install` (it is not
/// packaged for every Debian release; it needs libcap-ng's and libseccomp's headers).
fn ensure_virtiofsd() -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
        .join("bin/virtiofsd");
    for candidate in [PathBuf::from("virtiofsd"), PathBuf::from("/usr/libexec/virtiofsd"), cargo_bin.clone()] {
        if Command::new(&candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Ok(candidate);
        }
    }
    if !Path::new("/usr/include/cap-ng.h").exists() || !Path::new("/usr/include/seccomp.h").exists() {
        apt_install(&["libcap-ng-dev", "libseccomp-dev"])?;
    }
    progress(&format!("building virtiofsd {VIRTIOFSD_VERSION} with cargo install (a few minutes, once)"));
    run_cmd(Command::new("cargo").args(["install", "virtiofsd", "--locked", "--version", VIRTIOFSD_VERSION]))?;
    Ok(cargo_bin)
}

/// A running virtiofsd serving `dir` read-only on `socket`; stopped on drop.
struct VirtiofsDaemon(std::process::Child);

impl VirtiofsDaemon {
    fn start(binary: &Path, socket: &Path, dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(logs_dir())?;
        let log = std::fs::File::create(logs_dir().join("virtiofsd.log"))?;
        let child = Command::new(binary)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", dir.display()))
            .args(["--readonly", "--sandbox=none", "--cache=auto"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut daemon = VirtiofsDaemon(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if let Some(status) = daemon.0.try_wait()? {
                bail!("virtiofsd exited ({status}); see {}", logs_dir().join("virtiofsd.log").display());
            }
            if Instant::now() > deadline {
                bail!("virtiofsd did not create {} within 10 s", socket.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(daemon)
    }
}

impl Drop for VirtiofsDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
