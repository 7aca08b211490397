//! The kernel matrix: Debian cloud kernels fetched with `apt-get download` through a private apt
//! state (sources list, lists, cache under `~/.cache/leash/vm/apt/<suite>/`), so the system's own
//! apt configuration and package lists stay untouched.
//!
//! Each series resolves to the newest kernel its suite (plus `<suite>-security`) offers, through
//! the `linux-image-cloud-amd64` metapackage. The vmlinuz and the few modules a boot may need
//! (fuse, virtiofs and virtio for `xtask run`; the TCP socket diagnostics `leash run`'s proxy
//! asks) are pulled out of the .deb (ar, then data.tar.xz) and cached in
//! `~/.cache/leash/vm/kernels/<release>/`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};

use super::progress;

/// One column of the matrix: a kernel series and the Debian suite that ships it.
#[derive(Debug)]
pub struct Series {
    /// What `--kernel` names: `5.10`, `6.1`, `6.12`, `7`.
    pub name: &'static str,
    pub suite: &'static str,
    /// Whether `<suite>-security` exists (it carries the newest kernels of stable releases).
    pub security: bool,
}

pub const MATRIX: [Series; 4] = [
    Series { name: "5.10", suite: "bullseye", security: true },
    Series { name: "6.1", suite: "bookworm", security: true },
    Series { name: "6.12", suite: "trixie", security: true },
    Series { name: "7", suite: "sid", security: false },
];

/// The keyring Debian's own apt uses to verify the archive.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// How old a suite's package lists may get before `apt-get update` runs again.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// What `xtask run` needs to mount the shared project directory (module names).
const VIRTIOFS_MODULES: [&str; 2] = ["virtio_pci", "virtiofs"];
/// What `leash run`'s proxy needs to tell which socket holds a connection's client end
/// (`kernel/sock_diag.rs`); a host's kernel loads them on first use, a VM without modprobe cannot.
const SOCK_DIAG_MODULES: [&str; 2] = ["inet_diag", "tcp_diag"];
/// Written into a cached kernel's directory once everything above was extracted: a cache made
/// before a module was added lacks it, and is fetched again.
const CACHE_COMPLETE: &str = "complete-2";

/// The series `--kernel` names (`all` or nothing: every one).
pub fn select(names: &[String]) -> Result<Vec<&'static Series>> {
    if names.is_empty() || names.iter().any(|n| n == "all") {
        return Ok(MATRIX.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            MATRIX.iter().find(|s| s.name == n || n.strip_suffix(".x") == Some(s.name) || s.suite == n).with_context(
                || {
                    let known: Vec<_> = MATRIX.iter().map(|s| s.name).collect();
                    format!("unknown kernel {n:?}: pick one of {} or all", known.join(", "))
                },
            )
        })
        .collect()
}

/// A fetched kernel, ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub series: &'static str,
    /// `uname -r`: `6.1.0-50-cloud-amd64`.
    pub release: String,
    /// The upstream version: `6.1.176`.
    pub version: String,
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The modules `xtask run` must load (dependencies first) to mount a virtiofs share; empty
    /// when the kernel has them built in. Debian's packages ship no modules.dep (depmod writes it
    /// at install time), so dependencies come from each module's `.modinfo` `depends=`.
    pub fn virtiofs_modules(&self) -> Result<Vec<PathBuf>> {
        self.modules(&VIRTIOFS_MODULES)
    }

    /// The modules every boot loads for `leash run` (dependencies first); empty when built in.
    /// A module neither cached nor listed in `modules.builtin` is an error, not a silent boot
    /// without it.
    pub fn sock_diag_modules(&self) -> Result<Vec<PathBuf>> {
        let builtin = std::fs::read_to_string(self.dir.join("modules.builtin")).unwrap_or_default();
        let mut available = std::collections::BTreeMap::new();
        collect_modules(&self.dir.join("modules"), &mut available)?;
        for name in SOCK_DIAG_MODULES {
            let built_in = builtin.lines().any(|l| module_name(l) == name);
            if !available.contains_key(name) && !built_in {
                bail!("kernel {}: module {name} is neither in the cache nor built in", self.release);
            }
        }
        self.modules(&SOCK_DIAG_MODULES)
    }

    fn modules(&self, names: &[&str]) -> Result<Vec<PathBuf>> {
        let mut available = std::collections::BTreeMap::new();
        collect_modules(&self.dir.join("modules"), &mut available)?;
        let mut order = Vec::new();
        for name in names {
            add_with_dependencies(name, &available, &mut order, 0)?;
        }
        Ok(order)
    }
}

/// Every cached `.ko` under `dir`, by module name.
fn collect_modules(dir: &Path, into: &mut std::collections::BTreeMap<String, PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_modules(&path, into)?;
        } else if let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) {
            if name.contains(".ko") {
                into.insert(module_name(&name), path);
            }
        }
    }
    Ok(())
}

/// Appends `name`'s dependencies, then `name`, to `order`. A module with no file in the cache
/// is taken to be built in (Debian's cloud kernels from 6.12 on build virtiofs in).
fn add_with_dependencies(
    name: &str,
    available: &std::collections::BTreeMap<String, PathBuf>,
    order: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<()> {
    let Some(path) = available.get(name) else { return Ok(()) };
    if order.contains(path) {
        return Ok(());
    }
    if depth > 16 {
        bail!("module dependencies of {name} loop");
    }
    for dep in modinfo_depends(path)? {
        add_with_dependencies(&dep, available, order, depth + 1)?;
    }
    order.push(path.clone());
    Ok(())
}

/// The `depends=` list of a kernel module's `.modinfo` section.
fn modinfo_depends(path: &Path) -> Result<Vec<String>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bad = || anyhow::anyhow!("{} is not a 64-bit ELF module", path.display());
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        return Err(bad());
    }
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4")) as usize);
    let u64_at = |o: usize| data.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8")) as usize);
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(0x28).ok_or_else(bad)?,
        u16_at(0x3a).ok_or_else(bad)?,
        u16_at(0x3c).ok_or_else(bad)?,
        u16_at(0x3e).ok_or_else(bad)?,
    );
    let section = |i: usize| -> Option<(usize, usize, usize)> {
        let h = shoff + i * shentsize;
        Some((u32_at(h)?, u64_at(h + 0x18)?, u64_at(h + 0x20)?))
    };
    let (_, names_at, _) = section(shstrndx).ok_or_else(bad)?;
    for i in 0..shnum {
        let (name, offset, size) = section(i).ok_or_else(bad)?;
        let name_bytes = data.get(names_at + name..).ok_or_else(bad)?;
        let name = name_bytes.split(|b| *b == 0).next().unwrap_or_default();
        if name != b".modinfo" {
            continue;
        }
        let info = data.get(offset..offset + size).ok_or_else(bad)?;
        for field in info.split(|b| *b == 0) {
            if let Some(list) = field.strip_prefix(b"depends=") {
                return Ok(String::from_utf8_lossy(list)
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(|d| d.replace('-', "_"))
                    .collect());
            }
        }
        return Ok(Vec::new());
    }
    Ok(Vec::new())
}

/// `kernel/fs/fuse/virtiofs.ko.xz` -> `virtiofs` (module names spell `-` and `_` alike).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// Resolves `series` to its newest kernel and makes sure its files are in the cache.
pub fn fetch(series: &'static Series) -> Result<Kernel> {
    let apt = Apt::for_suite(series)?;
    apt.update_if_stale()?;
    let (release, package_version) = apt.newest_kernel(series)?;
    let version = package_version.split('-').next().unwrap_or(&package_version).to_owned();
    let dir = cache_root().join("kernels").join(&release);
    let kernel = Kernel { series: series.name, release: release.clone(), version, dir };
    if kernel.vmlinuz().exists() && kernel.dir.join(CACHE_COMPLETE).exists() {
        progress(&format!("kernel {}: {} cached in {}", series.name, release, kernel.dir.display()));
        return Ok(kernel);
    }
    // The image package, or (sid) the linux-binary package it depends on, holds the vmlinuz.
    let image = format!("linux-image-{release}");
    let binary = format!("linux-binary-{release}");
    let mut packages = vec![image.clone()];
    if apt.depends(&image)?.iter().any(|d| d == &binary) {
        packages = vec![binary];
    }
    // Where modules live separately (sid), they may be needed for virtiofs.
    let modules = format!("linux-modules-{release}");
    if apt.depends(&image)?.iter().any(|d| d == &modules) {
        packages.push(modules);
    }
    let staging = kernel.dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    for package in &packages {
        let deb = apt.download(package)?;
        progress(&format!(
            "kernel {}: extracting {}",
            series.name,
            deb.file_name().unwrap_or_default().to_string_lossy()
        ));
        extract_kernel_files(&deb, &release, &staging)?;
    }
    if !staging.join("vmlinuz").exists() {
        bail!("no vmlinuz for {release} in {}", packages.join(", "));
    }
    std::fs::write(staging.join(CACHE_COMPLETE), b"")?;
    let _ = std::fs::remove_dir_all(&kernel.dir);
    std::fs::rename(&staging, &kernel.dir)?;
    apt.forget_debs_except(&release);
    progress(&format!("kernel {}: {} cached in {}", series.name, release, kernel.dir.display()));
    Ok(kernel)
}

/// Copies what booting needs out of a kernel .deb into `dest`: `vmlinuz`, `config`,
/// `modules.builtin`, and the fuse/virtio/socket-diagnostics modules under `modules/`
/// (decompressed).
fn extract_kernel_files(deb: &Path, release: &str, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(deb).with_context(|| format!("opening {}", deb.display()))?;
    let mut archive = ar::Archive::new(file);
    while let Some(entry) = archive.next_entry() {
        let entry = entry.with_context(|| format!("reading {}", deb.display()))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        if !name.starts_with("data.tar") {
            continue;
        }
        let data: Box<dyn Read> = match name.as_str() {
            "data.tar.xz" => Box::new(liblzma::read::XzDecoder::new(entry)),
            "data.tar" => Box::new(entry),
            other => bail!("{}: {other} is compressed in a way xtask does not read", deb.display()),
        };
        let mut tar = tar::Archive::new(data);
        for item in tar.entries()? {
            let mut item = item?;
            let path = item.path()?.to_string_lossy().trim_start_matches("./").to_owned();
            let Some(target) = kernel_file_target(&path, release) else { continue };
            let out = dest.join(&target);
            std::fs::create_dir_all(out.parent().expect("has a parent"))?;
            if path.ends_with(".ko.xz") {
                let mut text = Vec::new();
                liblzma::read::XzDecoder::new(&mut item).read_to_end(&mut text)?;
                std::fs::write(&out, text)?;
            } else {
                item.unpack(&out).with_context(|| format!("unpacking {path}"))?;
            }
        }
        return Ok(());
    }
    bail!("{} has no data.tar member", deb.display())
}

/// Where a path of a kernel package goes in the cache, if it is wanted at all.
fn kernel_file_target(path: &str, release: &str) -> Option<String> {
    if path == format!("boot/vmlinuz-{release}") || path == format!("usr/lib/modules/{release}/vmlinuz") {
        return Some("vmlinuz".into());
    }
    if path == format!("boot/config-{release}") {
        return Some("config".into());
    }
    let rest = path
        .strip_prefix(&format!("lib/modules/{release}/"))
        .or_else(|| path.strip_prefix(&format!("usr/lib/modules/{release}/")))?;
    match rest {
        "modules.builtin" => Some(rest.into()),
        _ if (rest.starts_with("kernel/fs/fuse/")
            || rest.starts_with("kernel/drivers/virtio/")
            || rest.starts_with("kernel/net/ipv4/inet_diag.ko")
            || rest.starts_with("kernel/net/ipv4/tcp_diag.ko"))
            && rest.contains(".ko") =>
        {
            // Stored decompressed, under the name without `.xz`.
            Some(format!("modules/{}", rest.trim_end_matches(".xz")))
        }
        _ => None,
    }
}

/// `~/.cache/leash/vm`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("leash/vm")
}

/// apt-get and apt-cache bound to one suite's private state.
struct Apt {
    suite: &'static str,
    root: PathBuf,
}

impl Apt {
    fn for_suite(series: &'static Series) -> Result<Self> {
        let root = cache_root().join("apt").join(series.suite);
        for dir in ["lists/partial", "cache/archives/partial", "debs"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let (archive, security) = mirrors()?;
        let mut list = format!("deb [arch=amd64 signed-by={KEYRING}] {archive} {} main\n", series.suite);
        if let (true, Some(security)) = (series.security, security) {
            list.push_str(&format!("deb [arch=amd64 signed-by={KEYRING}] {security} {}-security main\n", series.suite));
        }
        let path = root.join("sources.list");
        if std::fs::read_to_string(&path).ok().as_deref() != Some(list.as_str()) {
            std::fs::write(&path, list)?;
            // New sources: the old lists no longer match them.
            let _ = std::fs::remove_file(root.join("updated"));
        }
        Ok(Apt { suite: series.suite, root })
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(tool);
        let dir = |d: &str| self.root.join(d).display().to_string();
        for (key, value) in [
            ("Dir::Etc::SourceList", dir("sources.list")),
            ("Dir::Etc::SourceParts", "/dev/null".into()),
            ("Dir::State::Lists", dir("lists")),
            ("Dir::Cache", dir("cache")),
            ("Acquire::Languages", "none".into()),
            // apt drops to _apt for downloads, which cannot write into root's cache.
            ("APT::Sandbox::User", "root".into()),
        ] {
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        cmd
    }

    /// `apt-get update` for this suite unless its lists are younger than a day. A failed update
    /// with lists already present only warns (offline runs keep working).
    fn update_if_stale(&self) -> Result<()> {
        let stamp = self.root.join("updated");
        let age = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_some_and(|a| a < LISTS_MAX_AGE) {
            return Ok(());
        }
        progress(&format!("apt: updating the {} package lists (private state in {})", self.suite, self.root.display()));
        let out = self.command("apt-get").args(["-q", "update"]).output().context("running apt-get update")?;
        let failed = !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("\nE:");
        if failed {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if age.is_some() {
                progress(&format!("apt: update of {} failed, using the lists from before: {}", self.suite, err.trim()));
                return Ok(());
            }
            bail!("apt-get update for {} failed:\n{err}", self.suite);
        }
        std::fs::write(&stamp, "")?;
        Ok(())
    }

    /// Fields of the candidate version of `package`.
    fn show(&self, package: &str) -> Result<String> {
        let out = self
            .command("apt-cache")
            .args(["show", "--no-all-versions", package])
            .output()
            .context("running apt-cache")?;
        if !out.status.success() {
            bail!("apt-cache show {package} ({}): {}", self.suite, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Package names `package` depends on (first alternative of each).
    fn depends(&self, package: &str) -> Result<Vec<String>> {
        let fields = self.show(package)?;
        Ok(field(&fields, "Depends")
            .unwrap_or_default()
            .split(',')
            .filter_map(|d| d.split('|').next()?.split_whitespace().next().map(str::to_owned))
            .collect())
    }

    /// The kernel release (`uname -r`) and package version the cloud metapackage points at.
    fn newest_kernel(&self, series: &Series) -> Result<(String, String)> {
        let meta = "linux-image-cloud-amd64";
        let release = self
            .depends(meta)?
            .into_iter()
            .find_map(|d| d.strip_prefix("linux-image-").map(str::to_owned))
            .with_context(|| format!("{meta} in {} depends on no linux-image package", self.suite))?;
        if !release.starts_with(&format!("{}.", series.name)) {
            bail!(
                "{} now ships kernel {release}, not series {}: update the matrix in xtask/src/vm/kernels.rs",
                self.suite,
                series.name
            );
        }
        let version =
            field(&self.show(&format!("linux-image-{release}"))?, "Version").context("no Version field")?.to_owned();
        Ok((release, version))
    }

    /// Removes downloaded packages of other kernel releases (their files stay cached).
    fn forget_debs_except(&self, release: &str) {
        let Ok(entries) = std::fs::read_dir(self.root.join("debs")) else { return };
        for entry in entries.filter_map(|e| e.ok()) {
            if !entry.file_name().to_string_lossy().contains(release) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Downloads `package` (once) and returns the .deb's path.
    fn download(&self, package: &str) -> Result<PathBuf> {
        let debs = self.root.join("debs");
        let prefix = format!("{package}_");
        let find = || -> Option<PathBuf> {
            std::fs::read_dir(&debs).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&prefix) && n.ends_with(".deb")
                })
            })
        };
        if let Some(deb) = find() {
            return Ok(deb);
        }
        progress(&format!("apt: downloading {package}"));
        let out = self
            .command("apt-get")
            .args(["-q", "download", package])
            .current_dir(&debs)
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            bail!("apt-get download {package} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        find().with_context(|| format!("apt-get download {package} left no .deb in {}", debs.display()))
    }
}

/// The value of `name:` in an apt-cache record.
fn field<'a>(record: &'a str, name: &str) -> Option<&'a str> {
    record.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

/// The Debian archive and security mirrors this machine's apt uses (from /etc/apt's sources),
/// or `$LEASH_VM_DEBIAN_MIRROR` (and `$LEASH_VM_DEBIAN_SECURITY_MIRROR`) when set.
fn mirrors() -> Result<(String, Option<String>)> {
    if let Ok(archive) = std::env::var("LEASH_VM_DEBIAN_MIRROR") {
        return Ok((archive, std::env::var("LEASH_VM_DEBIAN_SECURITY_MIRROR").ok()));
    }
    let mut uris = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let name = file.to_string_lossy().into_owned();
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        if name.ends_with(".sources") {
            for line in text.lines() {
                if let Some(list) = line.strip_prefix("URIs:") {
                    uris.extend(list.split_whitespace().map(str::to_owned));
                }
            }
        } else if name.ends_with(".list") {
            for line in text.lines().map(str::trim).filter(|l| l.starts_with("deb ")) {
                // deb [options] URI suite components
                let rest = line.trim_start_matches("deb ").trim();
                let rest = match rest.strip_prefix('[') {
                    Some(r) => r.split_once(']').map(|(_, r)| r.trim()).unwrap_or(""),
                    None => rest,
                };
                uris.extend(rest.split_whitespace().next().map(str::to_owned));
            }
        }
    }
    let uris: Vec<String> = uris.into_iter().map(|u| u.trim_end_matches('/').to_owned()).collect();
    let archive = uris
        .iter()
        .find(|u| u.ends_with("/debian"))
        .cloned()
        .context("no Debian archive (a URI ending in /debian) in /etc/apt's sources: set LEASH_VM_DEBIAN_MIRROR")?;
    let security = uris.iter().find(|u| u.ends_with("/debian-security")).cloned();
    Ok((archive, security))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_files_booting_needs() {
        let r = "6.12.117+deb13-cloud-amd64";
        assert_eq!(kernel_file_target("boot/vmlinuz-6.12.117+deb13-cloud-amd64", r).as_deref(), Some("vmlinuz"));
        assert_eq!(
            kernel_file_target("usr/lib/modules/6.12.117+deb13-cloud-amd64/vmlinuz", r).as_deref(),
            Some("vmlinuz")
        );
        assert_eq!(
            kernel_file_target("usr/lib/modules/6.12.117+deb13-cloud-amd64/kernel/fs/fuse/cuse.ko.xz", r).as_deref(),
            Some("modules/kernel/fs/fuse/cuse.ko")
        );
        assert_eq!(kernel_file_target("usr/lib/modules/6.12.117+deb13-cloud-amd64/kernel/net/x.ko.xz", r), None);
        assert_eq!(
            kernel_file_target("lib/modules/6.12.117+deb13-cloud-amd64/kernel/net/ipv4/tcp_diag.ko.xz", r).as_deref(),
            Some("modules/kernel/net/ipv4/tcp_diag.ko")
        );
        assert_eq!(kernel_file_target("lib/modules/6.12.117+deb13-cloud-amd64/kernel/net/ipv4/udp_diag.ko", r), None);
        assert_eq!(module_name("kernel/drivers/virtio/virtio_pci.ko"), "virtio_pci");
        assert_eq!(module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz"), "virtio_rng");
    }

    #[test]
    fn selects_series() {
        assert_eq!(select(&[]).unwrap().len(), 4);
        assert_eq!(
            select(&["7".into(), "6.1".into()]).unwrap().iter().map(|s| s.suite).collect::<Vec<_>>(),
            ["sid", "bookworm"]
        );
        assert!(select(&["4.19".into()]).is_err());
    }
}
