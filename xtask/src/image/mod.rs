//! `cargo xtask image`: leash's container image, built here with no registry and no container
//! tool, as an OCI archive (`target/image/leash.oci.tar`) that `ctr images import` and
//! `podman load` read.
//!
//! It is the registry-free equivalent of `deploy/Containerfile`: the same `leash` at
//! `/usr/local/bin/leash` and the same ENTRYPOINT and CMD (read from the Containerfile), under
//! the image name the DaemonSet asks for (read from `deploy/daemonset.yaml`), both statically
//! linked (so a runner pod can copy it into any image, glibc or not). One difference, because no
//! base image can be pulled here: the base is Debian's static busybox (the `cp` and `sh` that the
//! runner pod's init container and a shell need) instead of `debian:bookworm-slim`.

pub mod oci;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::static_build;
use crate::vm::{ensure_busybox, progress, BUSYBOX};
use crate::workspace_root;

#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Where to write the OCI archive.
    #[arg(long, default_value = "target/image/leash.oci.tar")]
    pub out: PathBuf,
}

/// Busybox applets the image links: what the manifests and a person debugging the pod use.
const APPLETS: &[&str] = &["sh", "cp", "ls", "cat", "mkdir", "rm", "sleep", "echo", "test", "env", "id"];

/// `cargo xtask image`.
pub fn run(args: ImageArgs) -> Result<()> {
    let out = if args.out.is_absolute() { args.out } else { workspace_root().join(args.out) };
    ensure_busybox()?;
    progress("building static leash (target/static)");
    let bins = static_build::build_leash()?;
    let image = leash_image(&bins.path("leash"))?;
    let written = image.write(&out)?;
    println!(
        "image: {} ({}) written to {}: {:.1} MiB (root filesystem {:.1} MiB)",
        image.name,
        written.digest,
        out.display(),
        written.size as f64 / (1 << 20) as f64,
        written.layer_size as f64 / (1 << 20) as f64
    );
    println!("load it with `ctr images import {0}` or `podman load -i {0}`", out.display());
    Ok(())
}

/// leash's image around the static binary `leash`.
pub fn leash_image(leash: &Path) -> Result<oci::Image> {
    let root = workspace_root();
    let containerfile =
        std::fs::read_to_string(root.join("deploy/Containerfile")).context("reading deploy/Containerfile")?;
    let daemonset =
        std::fs::read_to_string(root.join("deploy/daemonset.yaml")).context("reading deploy/daemonset.yaml")?;
    let mut image = oci::Image::new(&image_name(&daemonset)?);
    image.entrypoint = exec_form(&containerfile, "ENTRYPOINT")?;
    image.cmd = exec_form(&containerfile, "CMD")?;
    image.host_file("/usr/local/bin/leash", leash, 0o755);
    image.host_file("/bin/busybox", Path::new(BUSYBOX), 0o755);
    for applet in APPLETS {
        image.symlink(&format!("/bin/{applet}"), "busybox");
    }
    for dir in ["/tmp", "/run", "/proc", "/sys", "/dev", "/etc"] {
        image.dir(dir);
    }
    Ok(image)
}

/// The `image:` of the DaemonSet's container.
fn image_name(daemonset: &str) -> Result<String> {
    let names: Vec<_> =
        daemonset.lines().filter_map(|l| l.trim().strip_prefix("image:")).map(|v| v.trim().to_owned()).collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("deploy/daemonset.yaml names {} images; expected exactly one", names.len()),
    }
}

/// The JSON array of the Containerfile's last `instruction` line (`ENTRYPOINT ["..."]`).
fn exec_form(containerfile: &str, instruction: &str) -> Result<Vec<String>> {
    let line = containerfile
        .lines()
        .filter_map(|l| l.strip_prefix(instruction).filter(|rest| rest.starts_with(' ')))
        .next_back()
        .with_context(|| format!("deploy/Containerfile has no {instruction}"))?;
    serde_json::from_str(line.trim())
        .with_context(|| format!("deploy/Containerfile: {instruction} is not in exec form (a JSON array)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entrypoint_cmd_and_name_come_from_the_deploy_files() {
        let root = workspace_root();
        let containerfile = std::fs::read_to_string(root.join("deploy/Containerfile")).unwrap();
        assert_eq!(exec_form(&containerfile, "ENTRYPOINT").unwrap(), ["/usr/local/bin/leash"]);
        assert_eq!(exec_form(&containerfile, "CMD").unwrap().first().map(String::as_str), Some("daemon"));
        let daemonset = std::fs::read_to_string(root.join("deploy/daemonset.yaml")).unwrap();
        assert!(image_name(&daemonset).unwrap().contains("/leash:"));
        assert!(exec_form("FROM x\nCMD daemon --x\n", "CMD").is_err());
    }
}
