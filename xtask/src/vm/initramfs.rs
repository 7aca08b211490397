//! The VM's root filesystem: an uncompressed newc cpio archive (what the kernel unpacks into its
//! initial tmpfs), written here without an external `cpio`.
//!
//! Layout: `/init` is the static `vm_init`, `/bin` holds static `leash` and the test binaries,
//! `/etc` a minimal passwd/group (root, nobody) for leash's user lookups and the host's CA bundle, `/etc/leash-vm/` what
//! this boot should do, and `/dev/console` so PID 1 starts with a console.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::static_build::Binaries;

/// What an archive entry holds.
enum Body {
    Dir,
    Bytes(Vec<u8>),
    /// A host file, copied when the archive is written.
    HostFile(PathBuf),
    Symlink(String),
    CharDevice(u32, u32),
}

struct Entry {
    mode: u32,
    body: Body,
}

/// An initramfs under construction: absolute paths to entries, parents added as needed.
#[derive(Default)]
pub struct Image {
    entries: BTreeMap<String, Entry>,
}

/// A dynamically linked program (`/usr/bin/true`) and what it needs to run, copied from the host,
/// and one more system library (libm) for the tests that preload a copy of it.
const DYNAMIC_PROGRAM: &[(&str, u32)] = &[
    ("/usr/bin/true", 0o755),
    ("/lib64/ld-linux-x86-64.so.2", 0o755),
    ("/lib/x86_64-linux-gnu/libc.so.6", 0o755),
    ("/lib/x86_64-linux-gnu/libm.so.6", 0o644),
];

/// Debian's CA bundle, where rustls-native-certs looks first.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Image {
    /// The fixed part: directories, /init, binaries, users, console.
    pub fn base(bins: &Binaries) -> Result<Self> {
        let mut image = Image::default();
        for dir in ["/bin", "/dev", "/proc", "/sys", "/run", "/etc", "/root", "/var", "/usr/bin", "/sbin"] {
            image.dir(dir, 0o755);
        }
        image.dir("/tmp", 0o1777);
        image.dir("/var/tmp", 0o1777);
        image.char_device("/dev/console", 0o600, 5, 1);
        image.char_device("/dev/null", 0o666, 1, 3);
        for (name, path) in bins.all()? {
            if name == "vm_init" {
                image.host_file("/init", &path, 0o755);
            } else {
                image.host_file(&format!("/bin/{name}"), &path, 0o755);
            }
        }
        image.file(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            0o644,
        );
        image.file("/etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644);
        image.file("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files\n", 0o644);
        image.file("/etc/hosts", b"127.0.0.1 localhost\n::1 localhost\n", 0o644);
        // leash's proxy refuses to start without upstream trust roots: lend it the host's.
        let bundle = Path::new(CA_BUNDLE);
        if bundle.is_file() {
            image.host_file(CA_BUNDLE, bundle, 0o644);
        }
        image.dir("/etc/leash-vm", 0o755);
        // One dynamically linked program with its loader and libc, for the checks that the exec
        // allowlist holds when a program is started through the dynamic loader (`ld.so prog`).
        for (path, mode) in DYNAMIC_PROGRAM {
            let source = Path::new(path);
            if source.is_file() {
                image.host_file(path, source, *mode);
            }
        }
        Ok(image)
    }

    pub fn dir(&mut self, path: &str, mode: u32) {
        self.insert(path, Entry { mode: S_IFDIR | mode, body: Body::Dir });
    }

    pub fn file(&mut self, path: &str, bytes: &[u8], mode: u32) {
        self.insert(path, Entry { mode: S_IFREG | mode, body: Body::Bytes(bytes.to_vec()) });
    }

    pub fn host_file(&mut self, path: &str, source: &Path, mode: u32) {
        self.insert(path, Entry { mode: S_IFREG | mode, body: Body::HostFile(source.to_path_buf()) });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Entry { mode: S_IFLNK | 0o777, body: Body::Symlink(target.to_owned()) });
    }

    fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.insert(path, Entry { mode: S_IFCHR | mode, body: Body::CharDevice(major, minor) });
    }

    /// Adds `path`, creating missing parent directories (0755); an explicit entry wins over an
    /// implied directory.
    fn insert(&mut self, path: &str, entry: Entry) {
        let path = format!("/{}", path.trim_matches('/'));
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| *p != Path::new("/")) {
            self.entries
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Entry { mode: S_IFDIR | 0o755, body: Body::Dir });
            parent = p.parent();
        }
        self.entries.insert(path, entry);
    }

    /// Writes the archive to `out`; returns its size in bytes.
    pub fn write(&self, out: &Path) -> Result<u64> {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = Cpio { out: BufWriter::new(file), written: 0, next_inode: 1 };
        // BTreeMap order puts every directory before its contents.
        for (path, entry) in &self.entries {
            let name = path.trim_start_matches('/');
            match &entry.body {
                Body::Dir => w.entry(name, entry.mode, 0, &[])?,
                Body::Bytes(bytes) => w.entry(name, entry.mode, 0, bytes)?,
                Body::Symlink(target) => w.entry(name, entry.mode, 0, target.as_bytes())?,
                Body::CharDevice(major, minor) => w.entry(name, entry.mode, (*major << 8) | *minor, &[])?,
                Body::HostFile(source) => {
                    let bytes = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
                    w.entry(name, entry.mode, 0, &bytes)?
                }
            }
        }
        w.entry("TRAILER!!!", 0, 0, &[])?;
        w.out.flush()?;
        Ok(w.written)
    }
}

/// `base` with `kernel`'s socket-diagnostics modules appended as a second archive (the kernel
/// unpacks one after the other) and listed in `/etc/leash-vm/kernel-modules`, which vm_init
/// loads at boot: `leash run`'s proxy needs them (`kernel/sock_diag.rs`), and a VM has no
/// modprobe to load them on first use. `base` itself when the kernel builds them in.
pub fn with_kernel_modules(base: &Path, kernel: &super::kernels::Kernel) -> Result<PathBuf> {
    let modules = kernel.sock_diag_modules()?;
    if modules.is_empty() {
        return Ok(base.to_path_buf());
    }
    let mut extra = Image::default();
    let mut list = String::new();
    for (i, module) in modules.iter().enumerate() {
        let name = module.file_name().unwrap_or_default().to_string_lossy();
        let inside = format!("/lib/modules/leash/kernel/{i:02}-{name}");
        extra.host_file(&inside, module, 0o644);
        list.push_str(&inside);
        list.push('\n');
    }
    extra.file("/etc/leash-vm/kernel-modules", list.as_bytes(), 0o644);
    let base_name = base.file_name().unwrap_or_default().to_string_lossy();
    let out = base.with_file_name(format!("{base_name}-{}", kernel.release));
    // Written aside and renamed: another xtask may be booting the last one.
    let appended = base.with_file_name(format!("{base_name}-{}.{}.modules", kernel.release, std::process::id()));
    let partial = base.with_file_name(format!("{base_name}-{}.{}.partial", kernel.release, std::process::id()));
    extra.write(&appended)?;
    let mut file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    std::io::copy(&mut std::fs::File::open(base)?, &mut file)?;
    std::io::copy(&mut std::fs::File::open(&appended)?, &mut file)?;
    drop(file);
    let _ = std::fs::remove_file(&appended);
    std::fs::rename(&partial, &out)?;
    Ok(out)
}

/// A newc ("070701") cpio stream.
struct Cpio<W: Write> {
    out: W,
    written: u64,
    next_inode: u32,
}

impl<W: Write> Cpio<W> {
    /// One entry; `rdev` is `major << 8 | minor` for device nodes.
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) -> Result<()> {
        let inode = self.next_inode;
        self.next_inode += 1;
        let nlink = if mode & S_IFMT == S_IFDIR { 2 } else { 1 };
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible images
            u32::try_from(data.len()).context("file larger than 4 GiB")?,
            0, // devmajor
            0, // devminor
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0, // check
        ];
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_newc_with_parents_and_trailer() {
        let mut image = Image::default();
        image.file("/a/b/c.txt", b"hello", 0o644);
        image.symlink("/bin/sh", "busybox");
        let out = std::env::temp_dir().join(format!("xtask-cpio-{}.cpio", std::process::id()));
        let size = image.write(&out).unwrap();
        let data = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        assert_eq!(size as usize, data.len());
        assert_eq!(data.len() % 4, 0);
        let text = String::from_utf8_lossy(&data);
        assert!(text.starts_with("070701"));
        let order: Vec<_> = ["a\0", "a/b\0", "a/b/c.txt\0", "bin\0", "bin/sh\0", "TRAILER!!!\0"]
            .iter()
            .map(|n| text.find(n).unwrap_or_else(|| panic!("{n:?} missing")))
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert!(text.contains("hello"));
    }
}
