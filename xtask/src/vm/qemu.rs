//! Booting a kernel and an initramfs in `qemu-system-x86_64`, with the serial console captured
//! to a log file and parsed for vm_init's `LEASH-*` lines.
//!
//! TCG (`-accel tcg -cpu max`) is the default: KVM is used only when `/dev/kvm` is usable, the
//! CPU advertises virtualisation, and a probe boot under KVM finishes within seconds (on
//! machines where `-accel kvm` hangs, the probe times out and TCG is used).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::kernels::Kernel;
use super::progress;

const QEMU: &str = "qemu-system-x86_64";
/// BPF last, so BPF-LSM programs run after the other LSMs have had their say.
const LSM: &str = "lockdown,capability,landlock,bpf";
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes sure qemu is installed, installing Debian's `qemu-system-x86` when it is not.
pub fn ensure_installed() -> Result<()> {
    if Command::new(QEMU).arg("--version").output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    super::apt_install(&["qemu-system-x86"])?;
    if !Command::new(QEMU).arg("--version").output().is_ok_and(|o| o.status.success()) {
        bail!("{QEMU} still does not run after installing qemu-system-x86");
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => "TCG",
        })
    }
}

impl Accel {
    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// KVM when it demonstrably works here, else TCG. `$LEASH_VM_ACCEL=tcg|kvm` overrides.
pub fn choose_accel(kernel: &Kernel, initrd: &Path, logs: &Path) -> Accel {
    match std::env::var("LEASH_VM_ACCEL").as_deref() {
        Ok("tcg") => return Accel::Tcg,
        Ok("kvm") => return Accel::Kvm,
        _ => {}
    }
    let usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap_or("");
    let virt = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    if !usable || !virt {
        let why = if usable { "the CPU does not advertise vmx/svm" } else { "/dev/kvm is not usable" };
        progress(&format!("qemu: using TCG ({why})"));
        return Accel::Tcg;
    }
    progress(&format!("qemu: probing KVM with a {}s test boot", KVM_PROBE_TIMEOUT.as_secs()));
    let probe = Boot {
        kernel,
        initrd,
        cmdline: "leash.suite=none".into(),
        accel: Accel::Kvm,
        timeout: KVM_PROBE_TIMEOUT,
        log: logs.join("kvm-probe.log"),
        echo: Echo::Quiet,
        extra_args: Vec::new(),
        memory_mib: MEMORY_MIB,
    };
    match probe.run() {
        Ok(o) if o.verdict.is_some() => {
            progress("qemu: KVM works, using it");
            Accel::Kvm
        }
        _ => {
            progress(&format!(
                "qemu: KVM probe boot did not finish, using TCG (log: {})",
                logs.join("kvm-probe.log").display()
            ));
            Accel::Tcg
        }
    }
}

/// What to show on the terminal while the VM runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Echo {
    Quiet,
    /// One progress line per `LEASH-RESULT`.
    Results,
    /// Everything vm_init and the command print (kernel messages stay in the log).
    Console,
}

pub struct Boot<'a> {
    pub kernel: &'a Kernel,
    pub initrd: &'a Path,
    /// Appended to the fixed kernel command line.
    pub cmdline: String,
    pub accel: Accel,
    pub timeout: Duration,
    pub log: PathBuf,
    pub echo: Echo,
    /// More qemu arguments (shared directories).
    pub extra_args: Vec<String>,
    /// The guest's memory.
    pub memory_mib: u32,
}

/// The guest memory of a boot, unless it needs more (the node test's containers).
pub const MEMORY_MIB: u32 = 1024;

/// What a boot produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// (check name, passed, detail) per `LEASH-RESULT` line.
    pub results: Vec<(String, bool, String)>,
    /// `LEASH-VERDICT`, if it came.
    pub verdict: Option<bool>,
    /// `LEASH-EXIT`, if it came (`xtask run`).
    pub exit: Option<i32>,
    /// `LEASH-KERNEL`: the release vm_init saw.
    pub release: Option<String>,
    /// The first kernel panic line, if any.
    pub panic: Option<String>,
    pub timed_out: bool,
    pub seconds: f64,
}

impl Outcome {
    /// Passed only with a PASS verdict over at least one result, no panic and no timeout.
    pub fn passed(&self) -> bool {
        self.failure().is_none() && self.verdict == Some(true)
    }

    /// Why the boot failed, in a few words.
    pub fn failure(&self) -> Option<String> {
        if let Some(p) = &self.panic {
            Some(format!("kernel panic: {p}"))
        } else if self.timed_out {
            Some("timed out".into())
        } else if self.verdict.is_none() && self.exit.is_none() {
            Some("no verdict".into())
        } else if self.verdict.is_some() && self.results.is_empty() {
            Some("no results".into())
        } else if self.verdict == Some(false) {
            let failed: Vec<_> = self.results.iter().filter(|r| !r.1).map(|r| r.0.as_str()).collect();
            Some(format!("failed: {}", failed.join(", ")))
        } else {
            None
        }
    }
}

impl Boot<'_> {
    /// The qemu command line, booting `initrd` (the image with this kernel's modules).
    fn command(&self, initrd: &Path) -> Command {
        let mut cmd = Command::new(QEMU);
        cmd.args(self.accel.args())
            .args([
                "-m",
                &self.memory_mib.to_string(),
                "-smp",
                "1",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-nic",
                "none",
            ])
            .args(["-serial", "stdio", "-monitor", "none"])
            .arg("-kernel")
            .arg(self.kernel.vmlinuz())
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 lsm={LSM} rdinit=/init {}", self.cmdline))
            .args(&self.extra_args);
        cmd
    }

    /// Boots, waits for power-off (or the timeout), and parses the console.
    pub fn run(&self) -> Result<Outcome> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut log = std::fs::File::create(&self.log).with_context(|| format!("creating {}", self.log.display()))?;
        let initrd = super::initramfs::with_kernel_modules(self.initrd, self.kernel)?;
        let mut cmd = self.command(&initrd);
        writeln!(log, "# {cmd:?}")?;
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {QEMU}"))?;
        let (tx, rx) = mpsc::channel::<String>();
        let forward = |r: Box<dyn Read + Send>, prefix: &'static str, tx: mpsc::Sender<String>| {
            std::thread::spawn(move || {
                let mut r = BufReader::new(r);
                let mut buf = Vec::new();
                while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned();
                    if tx.send(format!("{prefix}{line}")).is_err() {
                        break;
                    }
                    buf.clear();
                }
            })
        };
        forward(Box::new(child.stdout.take().expect("piped")), "", tx.clone());
        forward(Box::new(child.stderr.take().expect("piped")), "qemu: ", tx);
        let deadline = started + self.timeout;
        let mut outcome = Outcome::default();
        let mut in_userspace = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    writeln!(log, "{line}")?;
                    self.show(&line, &mut in_userspace);
                    parse_line(&line, &mut outcome);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    outcome.timed_out = true;
                    let _ = child.kill();
                    writeln!(log, "# xtask: killed qemu after {} s", self.timeout.as_secs())?;
                    break;
                }
            }
        }
        let status = child.wait()?;
        outcome.seconds = started.elapsed().as_secs_f64();
        writeln!(log, "# xtask: qemu exited ({status}) after {:.1} s", outcome.seconds)?;
        Ok(outcome)
    }

    fn show(&self, line: &str, in_userspace: &mut bool) {
        match self.echo {
            Echo::Quiet => {}
            Echo::Results => {
                if let Some(rest) = line.strip_prefix("LEASH-RESULT ") {
                    progress(&format!("  {} {rest}", self.kernel.series));
                }
            }
            Echo::Console => {
                if line.starts_with("LEASH-KERNEL") {
                    *in_userspace = true;
                }
                let kernel_message = line.starts_with('[') && line.contains(']');
                let failed_check = line.starts_with("LEASH-RESULT") && line.contains(" FAIL ");
                if (*in_userspace && !kernel_message && !line.starts_with("LEASH-"))
                    || failed_check
                    || line.contains("Kernel panic")
                {
                    println!("{line}");
                }
            }
        }
    }
}

fn parse_line(line: &str, outcome: &mut Outcome) {
    // Kernel messages may interleave with ours on the console: find the marker anywhere.
    if let Some(at) = line.find("LEASH-RESULT ") {
        let mut parts = line[at + "LEASH-RESULT ".len()..].splitn(3, ' ');
        let name = parts.next().unwrap_or("").to_owned();
        let passed = parts.next() == Some("PASS");
        let detail = parts.next().unwrap_or("").to_owned();
        outcome.results.push((name, passed, detail));
    } else if let Some(at) = line.find("LEASH-VERDICT ") {
        outcome.verdict = Some(line[at..].split_whitespace().nth(1) == Some("PASS"));
    } else if let Some(at) = line.find("LEASH-EXIT ") {
        outcome.exit = line[at..].split_whitespace().nth(1).and_then(|c| c.parse().ok());
    } else if let Some(at) = line.find("LEASH-KERNEL ") {
        outcome.release = line[at..].split_whitespace().nth(1).map(str::to_owned);
    } else if line.contains("Kernel panic") && outcome.panic.is_none() {
        outcome.panic = Some(line.trim().to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_results_verdict_and_panics() {
        let mut o = Outcome::default();
        for line in [
            "LEASH-KERNEL 6.1.0-50-cloud-amd64",
            "LEASH-RESULT boot:setup PASS mounted (0.0s)",
            "[    3.1] random: crng init done LEASH-RESULT net:x FAIL want ok (1.0s)",
            "LEASH-VERDICT FAIL",
        ] {
            parse_line(line, &mut o);
        }
        assert_eq!(o.release.as_deref(), Some("6.1.0-50-cloud-amd64"));
        assert_eq!(o.results.len(), 2);
        assert!(o.results[0].1 && !o.results[1].1);
        assert_eq!(o.verdict, Some(false));
        assert_eq!(o.failure().as_deref(), Some("failed: net:x"));
        let mut p = Outcome { verdict: Some(true), ..Default::default() };
        parse_line("[    1.2] Kernel panic - not syncing: Attempted to kill init!", &mut p);
        assert!(!p.passed());
        assert!(Outcome::default().failure().unwrap().contains("no verdict"));
    }
}
