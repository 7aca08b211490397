//! The system's trust roots as a `leash run` on this host last read and encoded them, kept for
//! the next run.
//!
//! Reading the distribution's bundle (some 150 certificates, 200 KB of PEM), decoding it and
//! encoding the agent's truststore bags cost every start more than a millisecond before its agent
//! could run. One file per bundle path, `/run/leash/system-roots-<hash of the path>`, keeps the
//! result with the identity of the bundle it came from: path, device, inode, size, modification
//! and change times. A bundle changed since (a package update, `update-ca-certificates`) no
//! longer matches and is read again. Only a store that is one file is kept (no `SSL_CERT_DIR`).
//!
//! What it enforces:
//! - the file is trusted only when it is a regular file owned by root that neither group nor
//!   others may write, in a directory owned by root that neither group nor others may write, and
//!   it is opened without following a symlink: a user who could plant roots for every sandbox
//!   could read every agent's TLS. Anything else, and a file that does not parse, is a miss;
//! - it is written aside (`O_EXCL`, mode 0600) and renamed into place: a reader never sees half
//!   of one, and two runs writing at once leave one whole;
//! - it holds public certificates only, never leash's CA or its key.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

/// This host's cache of the system store, looked up once per process: `None` when the store is
/// not one file, or the cache is missing, untrusted or made from another state of it.
pub fn hit() -> Option<&'static Cached> {
    static HIT: std::sync::OnceLock<Option<Cached>> = std::sync::OnceLock::new();
    HIT.get_or_init(|| load(Path::new(super::bundle::RUN_DIR), &Source::of(&super::upstream::single_file_store()?)?))
        .as_ref()
}

/// The cache of the bundle at `path`, in `dir`.
fn cache_file(dir: &Path, path: &Path) -> PathBuf {
    // FNV-1a: a name per path, stable across builds.
    let hash = path
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    dir.join(format!("system-roots-{hash:016x}"))
}
/// First line of the file: what it is, and the layout's version.
const MAGIC: &[u8] = b"leash system roots v1\n";

/// The bundle file the roots are read from, and what identifies its content.
#[derive(Debug, PartialEq, Eq)]
pub struct Source {
    path: PathBuf,
    identity: [i64; 7],
}

impl Source {
    /// The bundle at `path` as it is now; `None` if it cannot be examined.
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        let identity =
            [m.dev() as i64, m.ino() as i64, m.size() as i64, m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()];
        Some(Self { path: path.to_path_buf(), identity })
    }
}

/// The roots a cache file holds, borrowed from the file mapped for the rest of the process.
pub struct Cached {
    pub certs: Vec<CertificateDer<'static>>,
    /// The certificates as PEM, in order.
    pub pem: &'static str,
    /// One truststore bag per certificate, in order.
    pub bags: &'static [u8],
}

/// The roots cached in `dir` for `source`, if the file there is trusted and made from `source`
/// as it is now.
pub fn load(dir: &Path, source: &Source) -> Option<Cached> {
    let file = open_trusted(dir, &cache_file(dir, &source.path))?;
    let bytes = map(&file)?;
    parse(bytes, source)
}

/// Keeps `certs` (as PEM `pem` and truststore bags `bags`) read from `source` in `dir`.
pub fn store(dir: &Path, source: &Source, certs: &[CertificateDer<'_>], pem: &str, bags: &[u8]) -> io::Result<()> {
    if !trusted_dir(dir) {
        return Err(io::Error::new(io::ErrorKind::PermissionDenied, "not a directory only root may write"));
    }
    let mut out = Vec::with_capacity(pem.len() + bags.len() * 2 + 4096);
    out.extend_from_slice(MAGIC);
    put(&mut out, source.path.as_os_str().as_bytes());
    for n in source.identity {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&(certs.len() as u64).to_le_bytes());
    for cert in certs {
        put(&mut out, cert.as_ref());
    }
    put(&mut out, pem.as_bytes());
    put(&mut out, bags);
    let file = cache_file(dir, &source.path);
    let aside = dir.join(format!(".{}.{}", file.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&aside)
        .and_then(|mut f| f.write_all(&out))
        .and_then(|()| std::fs::rename(&aside, &file));
    if written.is_err() {
        let _ = std::fs::remove_file(&aside);
    }
    written
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Owned by root, writable by root alone, not a symlink.
fn root_only(meta: &std::fs::Metadata) -> bool {
    meta.uid() == 0 && meta.mode() & 0o022 == 0
}

fn trusted_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && root_only(&m))
}

fn open_trusted(dir: &Path, path: &Path) -> Option<File> {
    if !trusted_dir(dir) {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    (meta.is_file() && root_only(&meta)).then_some(file)
}

/// The file's bytes, mapped read-only for the rest of the process (the roots borrow from them;
/// the file is replaced by rename, never rewritten in place).
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

/// The roots of a cache file's `bytes`, if they parse whole and were made from `source`.
fn parse(bytes: &'static [u8], source: &Source) -> Option<Cached> {
    let mut r = Reader(bytes.strip_prefix(MAGIC)?);
    let path = PathBuf::from(OsString::from_vec(r.take()?.to_vec()));
    let mut identity = [0i64; 7];
    for n in &mut identity {
        *n = i64::from_le_bytes(r.bytes(8)?.try_into().ok()?);
    }
    if path != source.path || identity != source.identity {
        return None;
    }
    let count = usize::try_from(r.number()?).ok()?;
    let mut certs = Vec::with_capacity(count.min(bytes.len() / 8));
    for _ in 0..count {
        certs.push(CertificateDer::from(r.take()?));
    }
    let pem = std::str::from_utf8(r.take()?).ok()?;
    let bags = r.take()?;
    r.0.is_empty().then_some(Cached { certs, pem, bags })
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
    /// (bags `bags`): (directory, bundle, its source, certificates, PEM).
    fn cached(tag: &str) -> (PathBuf, PathBuf, Source, Vec<CertificateDer<'static>>, String) {
        let dir = scratch_dir(tag);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let cas = [CertificateAuthority::generate().unwrap(), CertificateAuthority::generate().unwrap()];
        let certs: Vec<_> = cas.iter().map(|c| c.cert_der().clone()).collect();
        let pem: String = cas.iter().map(|c| c.cert_pem()).collect();
        let bundle = dir.join("bundle.pem");
        std::fs::write(&bundle, &pem).unwrap();
        let source = Source::of(&bundle).unwrap();
        store(&dir, &source, &certs, &pem, b"bags").unwrap();
        (dir, bundle, source, certs, pem)
    }

    /// A cache made from a bundle reads back whole while the bundle is unchanged, and is a miss
    /// once the bundle changed or for another bundle.
    #[test]
    fn a_cache_is_used_for_the_bundle_it_was_made_from_as_it_was() {
        let (dir, bundle, source, certs, pem) = cached("roots-cache");
        let cached = load(&dir, &source).expect("a hit");
        assert_eq!(cached.certs, certs);
        assert_eq!((cached.pem, cached.bags), (pem.as_str(), &b"bags"[..]));

        std::fs::write(&bundle, format!("{pem}\n")).unwrap();
        assert!(load(&dir, &Source::of(&bundle).unwrap()).is_none(), "the bundle changed");
        let other = dir.join("other.pem");
        std::fs::write(&other, &pem).unwrap();
        assert!(load(&dir, &Source::of(&other).unwrap()).is_none(), "another bundle");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Roots planted by anyone but root are never read: a cache file another user owns or may
    /// write, a symlink to a root-owned cache, a directory others may write; a truncated or
    /// padded file is a miss too.
    #[test]
    fn a_cache_anyone_but_root_could_have_written_is_not_read() {
        let (dir, bundle, source, certs, pem) = cached("roots-cache-planted");
        let file = cache_file(&dir, &bundle);
        assert!(load(&dir, &source).is_some());

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o622)).unwrap();
        assert!(load(&dir, &source).is_none(), "writable by others");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
        assert!(load(&dir, &source).is_none(), "owned by another user");
        std::os::unix::fs::chown(&file, Some(0), None).unwrap();

        let real = dir.join("real");
        std::fs::rename(&file, &real).unwrap();
        std::os::unix::fs::symlink(&real, &file).unwrap();
        assert!(load(&dir, &source).is_none(), "a symlink is not followed");
        std::fs::remove_file(&file).unwrap();
        std::fs::rename(&real, &file).unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(load(&dir, &source).is_none(), "a directory others may write");
        assert!(store(&dir, &source, &certs, &pem, b"bags").is_err(), "nor is one written there");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();

        let whole = std::fs::read(&file).unwrap();
        for bad in [&whole[..whole.len() - 1], &[&whole[..], b"x"].concat()] {
            std::fs::write(&file, bad).unwrap();
            assert!(load(&dir, &source).is_none(), "{} bytes of {}", bad.len(), whole.len());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
