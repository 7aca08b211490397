//! `cargo xtask node-test`: leash's node mode in real containers. In a VM per kernel (full cgroup
//! v2, `lsm=...,bpf`), containerd and runc run the DaemonSet's container and the runner pod's
//! containers as `deploy/` describes them; vm_init's `node` suite (`tests/src/bin/vm_init/node.rs`)
//! translates the manifests, starts the containers and checks what they can and cannot do.
//!
//! Built here, with no registry: leash's image (`cargo xtask image`), and a stand-in for the
//! runner pod's agent image, imported under the name the runner pod asks for: static busybox,
//! Debian's curl with the libraries it links, the tests' static `lsm_probe` and `podclient`, and
//! `tests/src/bin/vm_init/node-agent.sh` as `claude`. The VM image adds Debian's containerd, ctr,
//! containerd-shim-runc-v2 and runc (with libseccomp) from this machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::image::{leash_image, oci};
use crate::static_build;
use crate::vm::initramfs::Image as Initramfs;
use crate::vm::{apt_install, ensure_busybox, kernels, progress, qemu, test_matrix, BUSYBOX};
use crate::workspace_root;

#[derive(Debug, Args)]
pub struct NodeTestArgs {
    /// Kernel series to test (6.1, 6.12, 7; 5.10 lacks BPF-LSM hooks the hardened policy needs); repeatable.
    #[arg(long = "kernel", value_name = "K", default_values_t = ["6.1".to_owned(), "7".to_owned()])]
    pub kernels: Vec<String>,
    /// Seconds one VM may run before it counts as hung.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
}

/// The container runtime, from this machine's Debian packages, at the same paths in the VM.
const RUNTIME: [&str; 4] =
    ["/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/containerd-shim-runc-v2", "/usr/sbin/runc"];
/// runc's one library beyond libc (which the base image carries).
const LIBSECCOMP: &str = "/lib/x86_64-linux-gnu/libseccomp.so.2";
/// Where vm_init's node suite finds the image archives.
const IMAGES_IN_VM: &str = "/var/lib/leash-node/images";
const AGENT_SCRIPT: &str = "tests/src/bin/vm_init/node-agent.sh";
const CURL: &str = "/usr/bin/curl";
/// Applets the stand-in agent's script and the suite's `exec`s use.
const AGENT_APPLETS: &[&str] =
    &["sh", "id", "sleep", "kill", "cat", "echo", "true", "test", "[", "ls", "mkdir", "wget"];
/// The guest memory: the image archives, containerd's content store and one snapshot per
/// container all live in RAM.
const MEMORY_MIB: u32 = 2560;

/// `cargo xtask node-test`.
pub fn run(args: NodeTestArgs) -> Result<()> {
    let matrix = kernels::select(&args.kernels)?;
    if matrix.iter().any(|s| s.name == "5.10") {
        bail!("5.10 has no userns_create hook, which deploy/'s hardened policy needs: pick 6.1, 6.12 or 7");
    }
    qemu::ensure_installed()?;
    ensure_busybox()?;
    let missing: Vec<&str> = [("containerd", "/usr/bin/containerd"), ("runc", "/usr/sbin/runc"), ("curl", CURL)]
        .iter()
        .filter(|(_, path)| !Path::new(path).exists())
        .map(|(package, _)| *package)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    progress("building static leash and test binaries (target/static)");
    let bins = static_build::build()?;
    let dir = workspace_root().join("target/node");

    let leash = leash_image(&bins.path("leash"))?;
    let leash_archive = dir.join("images/leash.oci.tar");
    let written = leash.write(&leash_archive)?;
    progress(&format!("image {}: {:.1} MiB ({})", leash.name, written.size as f64 / (1 << 20) as f64, written.digest));
    let agent = agent_image(&bins, &leash.name)?;
    let agent_archive = dir.join("images/agent.oci.tar");
    let written = agent.write(&agent_archive)?;
    progress(&format!("stand-in agent image {}: {:.1} MiB", agent.name, written.size as f64 / (1 << 20) as f64));

    let mut image = Initramfs::base(&bins)?;
    for path in RUNTIME {
        image.host_file(path, Path::new(path), 0o755);
    }
    image.host_file(
        LIBSECCOMP,
        &std::fs::canonicalize(LIBSECCOMP).context("libseccomp (Debian's libseccomp2)")?,
        0o644,
    );
    image.host_file(&format!("{IMAGES_IN_VM}/leash.oci.tar"), &leash_archive, 0o644);
    image.host_file(&format!("{IMAGES_IN_VM}/agent.oci.tar"), &agent_archive, 0o644);
    let initrd = dir.join("initramfs.cpio");
    let size = image.write(&initrd)?;
    progress(&format!("{} ({:.1} MiB)", initrd.display(), size as f64 / (1 << 20) as f64));
    test_matrix(&matrix, &initrd, "node", Duration::from_secs(args.timeout), MEMORY_MIB, "node-")
}

/// The stand-in for the runner pod's agent image, named as the runner pod's container asks.
/// The stand-in's name: the runner pod's image that is not leash's (`leash_name`).
fn agent_image(bins: &static_build::Binaries, leash_name: &str) -> Result<oci::Image> {
    let runner = std::fs::read_to_string(workspace_root().join("deploy/runner-pod.yaml"))
        .context("reading deploy/runner-pod.yaml")?;
    let names: Vec<&str> = runner
        .lines()
        .filter_map(|l| l.trim().strip_prefix("image:"))
        .map(str::trim)
        .filter(|n| *n != leash_name)
        .collect();
    let [name] = names.as_slice() else {
        bail!("deploy/runner-pod.yaml names {} agent images; expected one besides leash's", names.len());
    };
    let mut image = oci::Image::new(name);
    image.host_file("/bin/busybox", Path::new(BUSYBOX), 0o755);
    for applet in AGENT_APPLETS {
        image.symlink(&format!("/bin/{applet}"), "busybox");
    }
    image.host_file(CURL, Path::new(CURL), 0o755);
    for lib in shared_libraries(Path::new(CURL))? {
        image.host_file(&lib.to_string_lossy(), &std::fs::canonicalize(&lib)?, 0o755);
    }
    // The probe the agent and the suite's `exec`s use, and the Confine API client the suite
    // times confines with.
    for probe in ["lsm_probe", "podclient"] {
        image.host_file(&format!("/usr/local/bin/{probe}"), &bins.path(probe), 0o755);
    }
    image.host_file("/usr/local/bin/claude", &workspace_root().join(AGENT_SCRIPT), 0o755);
    image.file("/etc/node-test/secret", b"a file the test's policy denies opening\n", 0o644);
    image.file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nagent:x:1000:1000:agent:/home/agent:/bin/sh\n", 0o644);
    image.file("/etc/group", b"root:x:0:\nagent:x:1000:\n", 0o644);
    for dir in [
        "/tmp",
        "/workspace",
        "/home/agent",
        "/opt/leash/bin",
        "/opt/leash/wrapper",
        "/run/leash",
        "/proc",
        "/sys",
        "/dev",
    ] {
        image.dir(dir);
    }
    Ok(image)
}

/// The shared libraries `program` loads, and its loader, as `ldd` lists them.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).output().context("running ldd")?;
    if !out.status.success() {
        bail!("ldd {} failed", program.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}
