//! Finding (and where needed mounting) the kernel filesystems leash works through: the cgroup v2
//! hierarchy and bpffs. Paths come from `/proc/self/mountinfo`, never from assumptions: on hybrid
//! hosts cgroup2 lives at `/sys/fs/cgroup/unified`, on others at `/sys/fs/cgroup`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where bpffs is mounted when leash has to mount it itself.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Overrides the mountinfo file read (tests use it to simulate a host without cgroup v2).
pub const MOUNTINFO_ENV: &str = "LEASH_MOUNTINFO";

/// The mount points of every filesystem of type `fstype`, in mountinfo order.
pub fn mount_points(fstype: &str) -> Result<Vec<PathBuf>> {
    let path = std::env::var_os(MOUNTINFO_ENV).map(PathBuf::from).unwrap_or_else(|| "/proc/self/mountinfo".into());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_mountinfo(&text, fstype))
}

/// Mount points of `fstype` in mountinfo text: field 5 is the mount point, and the filesystem
/// type follows the `-` separator.
fn parse_mountinfo(text: &str, fstype: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let ty = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (ty == fstype).then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4]).ok().and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where cgroup v2 is mounted: alone (a unified host), or beside the v1 controllers (systemd's
/// hybrid layout).
const CGROUP2_PLACES: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

/// The cgroup v2 mount point, or an error saying there is none: the first of [`CGROUP2_PLACES`]
/// the kernel says is the root of a cgroup v2 mount (statfs: a tenth of a millisecond less of
/// every start than reading mountinfo), else the first one mountinfo lists.
pub fn cgroup2_root() -> Result<PathBuf> {
    if std::env::var_os(MOUNTINFO_ENV).is_none() {
        let usual = CGROUP2_PLACES.iter().map(Path::new).find(|p| is_fs(p, CGROUP2_SUPER_MAGIC) && is_mount_root(p));
        if let Some(place) = usual {
            return Ok(place.to_path_buf());
        }
    }
    match mount_points("cgroup2")?.into_iter().next() {
        Some(p) => Ok(p),
        None => {
            bail!("no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo); leash needs cgroup v2")
        }
    }
}

/// [`DEFAULT_BPFFS`], mounting bpffs there when it is not a bpffs. Never another bpffs mount
/// found on the host: one under a directory some user can rename (a test's scratch mount, say)
/// would let that user swap in the programs and maps leash opens as root.
/// Whether it is a bpffs is asked of the kernel (statfs), not read from mountinfo: a bpffs mounted
/// over another hides every pin leash has made.
pub fn bpffs_root() -> Result<PathBuf> {
    let default = Path::new(DEFAULT_BPFFS);
    if is_bpffs(default) {
        return Ok(default.to_path_buf());
    }
    mount_bpffs(default)?;
    Ok(PathBuf::from(DEFAULT_BPFFS))
}

/// [`DEFAULT_BPFFS`] if a bpffs is mounted there now (nothing is mounted).
pub fn mounted_bpffs() -> Option<PathBuf> {
    let default = Path::new(DEFAULT_BPFFS);
    is_bpffs(default).then(|| default.to_path_buf())
}

/// `BPF_FS_MAGIC` and `CGROUP2_SUPER_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Whether `path` is the root of a mounted bpffs.
fn is_bpffs(path: &Path) -> bool {
    is_fs(path, BPF_FS_MAGIC)
}

/// Whether the filesystem at `path` is of type `magic` (its root or not).
fn is_fs(path: &Path, magic: i64) -> bool {
    // The type of `f_type` differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let is = |s: nix::sys::statfs::Statfs| s.filesystem_type().0 as i64 == magic;
    nix::sys::statfs::statfs(path).is_ok_and(is)
}

/// Whether `path` is the root of a mount (its parent is on another device).
fn is_mount_root(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    path.parent().is_some_and(|parent| dev(path).is_some() && dev(path) != dev(parent))
}

fn mount_bpffs(at: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    mount(Some("bpf"), at, Some("bpf"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("mode=0700"))
        .with_context(|| format!("mounting bpffs at {}", at.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
31 25 0:27 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:28 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
40 25 0:35 / /sys/fs/my\\040bpf rw shared:20 - bpf bpf rw,mode=700
";

    /// The statfs shortcut names the mount mountinfo lists first, on this host's layout.
    #[test]
    fn the_usual_places_agree_with_mountinfo() {
        let listed = mount_points("cgroup2").unwrap();
        let shortcut = CGROUP2_PLACES.iter().map(Path::new).find(|p| is_fs(p, CGROUP2_SUPER_MAGIC) && is_mount_root(p));
        if shortcut.is_some() {
            assert_eq!(shortcut, listed.first().map(PathBuf::as_path), "mountinfo lists {listed:?}");
        }
        assert_eq!(cgroup2_root().ok(), listed.first().cloned());
        assert!(!is_mount_root(Path::new("/proc/self")), "a directory inside a mount is not its root");
    }

    #[test]
    fn finds_cgroup2_in_hybrid_layout() {
        assert_eq!(parse_mountinfo(SAMPLE, "cgroup2"), vec![PathBuf::from("/sys/fs/cgroup/unified")]);
    }

    #[test]
    fn unescapes_octal_in_mount_points() {
        assert_eq!(parse_mountinfo(SAMPLE, "bpf"), vec![PathBuf::from("/sys/fs/my bpf")]);
    }

    #[test]
    fn absent_type_is_empty() {
        assert!(parse_mountinfo(SAMPLE, "securityfs").is_empty());
    }
}
