//! The system's trust roots as a `leash run` on this host last read and encoded them, kept for
//! the next run.
//!
//! Reading the distribution's bundle (some 150 certificates, 200 KB of PEM), decoding it, encoding
//! the agent's truststore bags and parsing each certificate into the upstream client's trust
//! anchors cost every start more than a millisecond before its agent could run. One file per bundle
//! path, `/run/leash/system-roots-<hash of the path>`, keeps the result with the bundle's exact
//! content. Each run still reads the bundle (tens of microseconds) and uses the cache only when the
//! content is byte for byte the same: a bundle changed in any way (a package update,
//! `update-ca-certificates` removing a distrusted root) is decoded again. Only a store that is one
//! file is kept (no `SSL_CERT_DIR`).
//!
//! What it enforces:
//! - the file is trusted only when it is a regular file owned by root that neither group nor
//!   others may write, in a directory owned by root that neither group nor others may write,
//!   each opened without following a symlink and checked on the descriptor: a user who could
//!   plant roots for every sandbox could read every agent's TLS. Anything else, and a file that
//!   does not parse, is a miss;
//! - the roots in it were derived, by root, from the very bytes they are used for;
//! - it is written aside (`O_EXCL`, mode 0600) and renamed into place: a reader never sees half
//!   of one, and two runs writing at once leave one whole;
//! - it holds public certificates only, never leash's CA or its key.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, Der, TrustAnchor};

/// First line of the file: what it is, the layout's version, and the leash release that wrote it
/// (the trust anchors are as that build's rustls parsed them).
const MAGIC: &[u8] = concat!("leash system roots v3 ", env!("CARGO_PKG_VERSION"), "\n").as_bytes();
/// How the cache files (and those being written) are named.
const PREFIX: &str = "system-roots-";

/// The roots a cache file holds, borrowed from the file mapped for the rest of the process.
pub struct Cached {
    pub certs: Vec<CertificateDer<'static>>,
    /// The certificates as PEM, in order.
    pub pem: &'static str,
    /// One truststore bag per certificate, in order.
    pub bags: &'static [u8],
    /// The certificates that parse as trust anchors, as rustls's `RootCertStore` parsed them
    /// when the file was made.
    pub anchors: Vec<TrustAnchor<'static>>,
}

/// The store's one file, looked up in the cache.
pub enum Lookup {
    /// The cache holds the roots of the file's present content.
    Hit(Cached),
    /// It does not: the file, as this process read it.
    Miss { path: PathBuf, text: String },
}

/// The system store looked up once per process: `None` when it is not one file (`SSL_CERT_DIR`),
/// or the file cannot be read as text. A hit never copies the file: it is compared with the
/// cached content as it is read.
pub fn lookup() -> Option<&'static Lookup> {
    static LOOKUP: std::sync::OnceLock<Option<Lookup>> = std::sync::OnceLock::new();
    LOOKUP
        .get_or_init(|| {
            let path = super::upstream::single_file_store()?;
            let mut file = File::open(&path).ok()?;
            // Only a regular file can be read twice from its start (not a pipe, say).
            if file.metadata().is_ok_and(|m| m.is_file()) {
                if let Some(cached) = load(Path::new(super::bundle::RUN_DIR), &path, &mut file) {
                    return Some(Lookup::Hit(cached));
                }
                file.rewind().ok()?;
            }
            let mut text = String::new();
            file.read_to_string(&mut text).ok()?;
            Some(Lookup::Miss { path, text })
        })
        .as_ref()
}

/// The cache's name for the bundle at `path`.
fn cache_name(path: &Path) -> String {
    // FNV-1a: a name per path, stable across builds.
    let hash = path
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("{PREFIX}{hash:016x}")
}

/// The roots cached in `dir` for the bundle at `path`, if the cache there is trusted and was made
/// from the very content `bundle` reads.
pub fn load(dir: &Path, path: &Path, bundle: &mut impl io::Read) -> Option<Cached> {
    let dir = open_trusted_dir(dir)?;
    let file = File::from(open_in(&dir, &cache_name(path), libc::O_RDONLY | libc::O_NONBLOCK)?);
    let meta = file.metadata().ok()?;
    if !(meta.is_file() && root_only(&meta)) {
        return None;
    }
    parse(map(&file)?, path, bundle)
}

/// Keeps `certs` (as PEM `pem` and truststore bags `bags`), read from the bundle at `path`
/// holding `text`, in `dir`.
pub fn store(
    dir: &Path,
    path: &Path,
    text: &[u8],
    certs: &[CertificateDer<'_>],
    pem: &str,
    bags: &[u8],
) -> io::Result<()> {
    let untrusted = || io::Error::new(io::ErrorKind::PermissionDenied, "not a directory only root may write");
    let dir = open_trusted_dir(dir).ok_or_else(untrusted)?;
    reap_aside(&dir);
    let mut out = Vec::with_capacity(text.len() + pem.len() + bags.len() * 2 + 4096);
    out.extend_from_slice(MAGIC);
    put(&mut out, path.as_os_str().as_bytes());
    put(&mut out, text);
    out.extend_from_slice(&(certs.len() as u64).to_le_bytes());
    for cert in certs {
        put(&mut out, cert.as_ref());
    }
    put(&mut out, pem.as_bytes());
    put(&mut out, bags);
    let mut parsed = rustls::RootCertStore::empty();
    parsed.add_parsable_certificates(certs.iter().cloned());
    out.extend_from_slice(&(parsed.roots.len() as u64).to_le_bytes());
    for anchor in &parsed.roots {
        put(&mut out, &anchor.subject);
        put(&mut out, &anchor.subject_public_key_info);
        // Never empty when present: the extension's value is a DER sequence.
        put(&mut out, anchor.name_constraints.as_deref().unwrap_or_default());
    }
    let name = cache_name(path);
    let aside = format!(".{name}.{}", std::process::id());
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let file = open_in(&dir, &aside, flags).ok_or_else(io::Error::last_os_error)?;
    let written = File::from(file).write_all(&out).and_then(|()| rename_in(&dir, &aside, &name));
    if written.is_err() {
        // Ours alone: made above with O_EXCL.
        unlink_in(&dir, &aside);
    }
    written
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Owned by root, writable by root alone.
fn root_only(meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0 && meta.mode() & 0o022 == 0
}

/// `dir` opened (not through a symlink) if it is a directory only root may write.
fn open_trusted_dir(dir: &Path) -> Option<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_dir() && root_only(&meta)).then_some(file)
}

fn c_name(name: &str) -> Option<std::ffi::CString> {
    std::ffi::CString::new(name).ok()
}

/// `name` in `dir`, opened with `flags` (never through a symlink), mode 0600 if made.
fn open_in(dir: &File, name: &str, flags: libc::c_int) -> Option<OwnedFd> {
    let name = c_name(name)?;
    // SAFETY: openat(2) on a descriptor we hold and a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o600) };
    // SAFETY: a descriptor the kernel just made, ours alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn rename_in(dir: &File, from: &str, to: &str) -> io::Result<()> {
    let (Some(from), Some(to)) = (c_name(from), c_name(to)) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"));
    };
    // SAFETY: renameat(2) within a directory we hold, NUL-terminated names.
    match unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn unlink_in(dir: &File, name: &str) {
    if let Some(name) = c_name(name) {
        // SAFETY: unlinkat(2) within a directory we hold, a NUL-terminated name.
        unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    }
}

/// Removes what writers killed mid-write left (`.system-roots-<hash>.<pid>` of a pid that is
/// gone).
fn reap_aside(dir: &File) {
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd())) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with('.') && n[1..].starts_with(PREFIX)) else { continue };
        let pid = name.rsplit('.').next().and_then(|p| p.parse::<libc::pid_t>().ok());
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        if pid.is_some_and(|pid| {
            pid > 0
                && unsafe { libc::kill(pid, 0) } != 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        }) {
            unlink_in(dir, name);
        }
    }
}

/// The file's bytes, mapped read-only for the rest of the process (the roots borrow from them;
/// leash replaces the file by rename, never rewrites it in place).
fn map(file: &File) -> Option<&'static [u8]> {
    let len = usize::try_from(file.metadata().ok()?.len()).ok().filter(|n| *n > 0)?;
    // SAFETY: a private read-only mapping of a file we opened; checked for failure below.
    let at = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_PRIVATE, file.as_raw_fd(), 0) };
    if at == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: `len` readable bytes at `at`, never unmapped, so valid for 'static.
    Some(unsafe { std::slice::from_raw_parts(at.cast::<u8>(), len) })
}

/// The roots of a cache file's `bytes`, if they parse whole and were made from the bundle at
/// `path` with the content `bundle` reads.
fn parse(bytes: &'static [u8], path: &Path, bundle: &mut impl io::Read) -> Option<Cached> {
    let mut r = Reader(bytes.strip_prefix(MAGIC)?);
    if OsStr::from_bytes(r.take()?) != path.as_os_str() || !reads_as(bundle, r.take()?) {
        return None;
    }
    let count = usize::try_from(r.number()?).ok()?;
    let mut certs = Vec::with_capacity(count.min(bytes.len() / 8));
    for _ in 0..count {
        certs.push(CertificateDer::from(r.take()?));
    }
    let pem = std::str::from_utf8(r.take()?).ok()?;
    let bags = r.take()?;
    let count = usize::try_from(r.number()?).ok()?;
    let mut anchors = Vec::with_capacity(count.min(certs.len()));
    for _ in 0..count {
        let (subject, spki, constraints) = (r.take()?, r.take()?, r.take()?);
        anchors.push(TrustAnchor {
            subject: Der::from_slice(subject),
            subject_public_key_info: Der::from_slice(spki),
            name_constraints: (!constraints.is_empty()).then(|| Der::from_slice(constraints)),
        });
    }
    (r.0.is_empty() && anchors.len() <= certs.len()).then_some(Cached { certs, pem, bags, anchors })
}

/// Whether `bundle` reads to exactly `expected`, compared a piece at a time: no copy of the
/// whole bundle is made (200 KB of fresh memory was 50 page faults of every start).
fn reads_as(bundle: &mut impl io::Read, mut expected: &[u8]) -> bool {
    let mut piece = [0u8; 8192];
    loop {
        match bundle.read(&mut piece) {
            Ok(0) => return expected.is_empty(),
            Ok(n) => match expected.strip_prefix(&piece[..n]) {
                Some(rest) => expected = rest,
                None => return false,
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

struct Reader(&'static [u8]);

impl Reader {
    fn bytes(&mut self, n: usize) -> Option<&'static [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn number(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    /// A length-prefixed field.
    fn take(&mut self) -> Option<&'static [u8]> {
        let n = usize::try_from(self.number()?).ok()?;
        self.bytes(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::super::testing::scratch_dir;
    use super::super::CertificateAuthority;
    use super::*;

    /// A bundle of two roots in a scratch directory only root may write, and its cache there
    /// (bags `bags`): (directory, bundle, certificates, PEM).
    fn cached(tag: &str) -> (PathBuf, PathBuf, Vec<CertificateDer<'static>>, String) {
        let dir = scratch_dir(tag);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let cas = [CertificateAuthority::generate().unwrap(), CertificateAuthority::generate().unwrap()];
        let certs: Vec<_> = cas.iter().map(|c| c.cert_der().clone()).collect();
        let pem: String = cas.iter().map(|c| c.cert_pem()).collect();
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, &pem).unwrap();
        store(&dir, &bundle, pem.as_bytes(), &certs, &pem, b"bags").unwrap();
        (dir, bundle, certs, pem)
    }

    /// A reader that returns one byte per read, and is interrupted before each.
    struct Trickle<'a>(&'a [u8], bool);

    impl io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.0.len().min(buf.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// A cache made from a bundle is read back whole for that bundle's path and exact content,
    /// and is a miss for any other content (one byte more, or the same size with one byte
    /// changed, as an edit within one timestamp tick would leave) or another path.
    #[test]
    fn a_cache_is_used_only_for_the_content_it_was_made_from() {
        let (dir, bundle, certs, pem) = cached("roots-cache");
        let cached = load(&dir, &bundle, &mut pem.as_bytes()).expect("a hit");
        assert_eq!(cached.certs, certs);
        assert_eq!((cached.pem, cached.bags), (pem.as_str(), &b"bags"[..]));
        let mut parsed = rustls::RootCertStore::empty();
        parsed.add_parsable_certificates(certs.iter().cloned());
        assert_eq!(cached.anchors, parsed.roots, "the anchors are those rustls parses from the certificates");
        assert_eq!(cached.anchors.len(), 2);

        let mut edited = pem.clone().into_bytes();
        let at = edited.len() / 2;
        edited[at] ^= 1;
        assert!(load(&dir, &bundle, &mut &edited[..]).is_none(), "same size, one byte changed");
        assert!(load(&dir, &bundle, &mut format!("{pem}\n").as_bytes()).is_none(), "one byte more");
        assert!(load(&dir, &bundle, &mut &pem.as_bytes()[1..]).is_none(), "one byte fewer");
        assert!(load(&dir, &dir.join("other.pem"), &mut pem.as_bytes()).is_none(), "another bundle");
        assert!(load(&dir, &bundle, &mut Trickle(pem.as_bytes(), false)).is_some(), "read a byte at a time");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Roots planted by anyone but root are never read: a cache file another user owns or may
    /// write, a symlink to a root-owned cache, a directory others may write or reached through a
    /// symlink; a truncated or padded file is a miss too. A writer killed mid-write leaves no
    /// file behind once the next one writes.
    #[test]
    fn a_cache_anyone_but_root_could_have_written_is_not_read() {
        let (dir, bundle, certs, pem) = cached("roots-cache-planted");
        let file = dir.join(cache_name(&bundle));
        let hit = || load(&dir, &bundle, &mut pem.as_bytes()).is_some();
        assert!(hit());

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o622)).unwrap();
        assert!(!hit(), "writable by others");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        assert!(!hit(), "owned by another user");
        std::os::unix::fs::chown(&file, Some(0), None).unwrap();

        let real = dir.join("real");
        std::fs::rename(&file, &real).unwrap();
        std::os::unix::fs::symlink(&real, &file).unwrap();
        assert!(!hit(), "a symlink is not followed");
        std::fs::remove_file(&file).unwrap();
        std::fs::rename(&real, &file).unwrap();
        let linked = dir.with_extension("link");
        std::os::unix::fs::symlink(&dir, &linked).unwrap();
        assert!(load(&linked, &bundle, &mut pem.as_bytes()).is_none(), "a directory reached through a symlink");
        std::fs::remove_file(&linked).unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!hit(), "a directory others may write");
        assert!(store(&dir, &bundle, pem.as_bytes(), &certs, &pem, b"bags").is_err(), "nor is one written there");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

        let whole = std::fs::read(&file).unwrap();
        for bad in [&whole[..whole.len() - 1], &[&whole[..], b"x"].concat()] {
            std::fs::write(&file, bad).unwrap();
            assert!(!hit(), "{} bytes of {}", bad.len(), whole.len());
        }

        // A pid no process has (above the kernel's limit) and one alive (this test's).
        let dead = dir.join(format!(".{}.{}", cache_name(&bundle), 1 << 23));
        let alive = dir.join(format!(".{}.{}", cache_name(&dir), std::process::id()));
        std::fs::write(&dead, "half").unwrap();
        std::fs::write(&alive, "half").unwrap();
        store(&dir, &bundle, pem.as_bytes(), &certs, &pem, b"bags").unwrap();
        assert!(hit() && !dead.exists() && alive.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
