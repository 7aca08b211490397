//! Turning a policy's `kernel:` section into what the BPF-LSM maps hold: deny flags, and files
//! resolved to (device, inode) — executables for the exec allowlist, files for the open deny
//! list — plus the unix sockets the agent may reach, and the hooks all of that needs.
//!
//! With `kernel.exec.allow`, only listed files may also be *mapped* executable (`mmap.rs`), so
//! the list carries the shared libraries programs load: every shared object (`*.so`, `*.so.*`,
//! the dynamic loader included) under the system library directories ([`SYSTEM_LIBRARY_DIRS`])
//! that root owns and no one else can write, and every `*.so*` file a `kernel.exec.allow` glob
//! matches (executable or not). A policy naming `/usr/bin/**` thus runs dynamically linked
//! programs without listing `/usr/lib`; a library of the agent's own (in the workdir, `/tmp`, a
//! memfd) cannot be mapped unless the policy names its path.
//!
//! Files are identified by inode so that a second name (hard link, symlink, bind mount of the
//! same filesystem) is the same file. Resolution happens when the sandbox starts and again on
//! reload; a file replaced afterwards (new inode) is no longer covered until the next reload.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use sandbox_common::{lsm_deny, lsm_rule, program_names, UnixKey, UNIX_PATH_MAX};

use super::deny_open::DenyOpenFiles;
use super::fs_root::FsRoot;
use crate::policy::{KernelDeny, KernelRules, UnixSocketName};

/// Most executables one sandbox's allowlist may resolve to.
pub const MAX_EXEC_FILES: usize = 32_768;

/// Most shared libraries one sandbox's allowlist may resolve to.
pub const MAX_LIBRARY_FILES: usize = 16_384;

/// Where the dynamic loader finds system libraries; their shared objects may be mapped
/// executable in a sandbox with an exec allowlist. A directory that is a symlink (merged `/usr`)
/// is covered by its target.
pub const SYSTEM_LIBRARY_DIRS: [&str; 9] =
    ["/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32", "/usr/local/lib"];

/// A file as the kernel names it: `major << 20 | minor` and the inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileId {
    pub dev: u32,
    pub ino: u64,
}

impl FileId {
    /// The file at `path`, following symlinks.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self::from_meta(&meta))
    }

    pub(crate) fn from_meta(meta: &std::fs::Metadata) -> Self {
        let dev = meta.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        FileId { dev: (major << 20) | minor, ino: meta.ino() }
    }
}

/// The `kernel:` section, resolved against this host's filesystem.
#[derive(Debug, Clone, Default)]
pub struct LsmRules {
    /// `lsm_deny` flags.
    pub deny: u32,
    /// `lsm_rule` flags (without the proxy, which the sandbox adds).
    pub rules: u32,
    /// Executables that may run, with one path each for reports; empty unless
    /// `lsm_rule::EXEC_ALLOWLIST`.
    pub exec: BTreeMap<FileId, PathBuf>,
    /// Shared libraries that may be mapped executable but not run (see the module header);
    /// empty unless `lsm_rule::EXEC_ALLOWLIST`.
    pub libraries: BTreeMap<FileId, PathBuf>,
    /// The paths of files that may not be opened, as named (`lsm_rule::DENY_OPEN` is set when
    /// there are any); looked up again while the sandbox runs ([`super::deny_open`]).
    pub deny_open_paths: Vec<PathBuf>,
    /// The files they name now, with their path.
    pub deny_open: BTreeMap<FileId, PathBuf>,
    /// deny_open paths that do not exist here yet (refused once they do).
    pub missing_deny_open: Vec<PathBuf>,
    /// Unix socket addresses (without the sandbox id) the agent may reach.
    pub unix: Vec<(u32, [u8; UNIX_PATH_MAX])>,
}

impl LsmRules {
    /// Resolves `kernel`. `protect` are files leash itself needs kept from the agent (its
    /// credentials file); they join the open deny list. Self-protection is always on: ptrace,
    /// signals and bpf(2) never reach outside the sandbox.
    pub fn resolve(kernel: &KernelRules, protect: &[PathBuf]) -> Result<Self> {
        Self::resolve_in(&FsRoot::Own, kernel, protect)
    }

    /// The rules for a policy: its `kernel:` section resolved, or, when it has none, the
    /// baseline every sandbox gets where BPF-LSM works: the self-protection above,
    /// unix sockets limited to the sandbox's own (`lsm_rule::UNIX_ALLOWLIST` with an empty list)
    /// and `protect` unopenable.
    pub fn for_policy(kernel: Option<&KernelRules>, protect: &[PathBuf]) -> Result<Self> {
        Self::resolve(kernel.unwrap_or(&KernelRules::default()), protect)
    }

    /// [`LsmRules::for_policy`] for a reload while the agent runs: an open deny list's path
    /// whose lookup fails (a loop the agent made) names no file here and is said, rather than
    /// refusing the reload (the sandbox's own list keeps what the path named,
    /// [`super::deny_open`]).
    pub fn for_reload(kernel: Option<&KernelRules>, protect: &[PathBuf]) -> Result<Self> {
        Self::resolve_with(&FsRoot::Own, kernel.unwrap_or(&KernelRules::default()), protect, false)
    }

    /// [`LsmRules::resolve`] with the paths looked up in `root` (a pod's filesystem, for the
    /// node daemon).
    pub fn resolve_in(root: &FsRoot, kernel: &KernelRules, protect: &[PathBuf]) -> Result<Self> {
        Self::resolve_with(root, kernel, protect, true)
    }

    /// `strict`: a deny_open path whose lookup fails for another reason than a missing file is
    /// an error.
    fn resolve_with(root: &FsRoot, kernel: &KernelRules, protect: &[PathBuf], strict: bool) -> Result<Self> {
        let mut rules = LsmRules {
            deny: lsm_deny::PTRACE | lsm_deny::BPF | lsm_deny::KILL_OUTSIDE,
            rules: lsm_rule::UNIX_ALLOWLIST,
            ..Default::default()
        };
        for d in &kernel.deny {
            rules.deny |= deny_flag(*d);
        }
        if let Some(globs) = &kernel.exec_allow {
            rules.rules |= lsm_rule::EXEC_ALLOWLIST;
            for glob in globs {
                if expand_executables(root, glob, &mut rules.exec, &mut rules.libraries)? == 0 {
                    crate::say!("leash: note: kernel.exec.allow `{glob}` matches no executable here");
                }
            }
            if rules.exec.is_empty() {
                bail!("kernel.exec.allow matches no executable on this host, so nothing could run");
            }
            add_system_libraries(root, &mut rules.libraries)?;
        }
        rules.deny_open_paths = kernel.deny_open.iter().chain(protect).cloned().collect();
        let files = match strict {
            true => DenyOpenFiles::open(root, &rules.deny_open_paths, 0)?,
            false => DenyOpenFiles::looked_up(root, &rules.deny_open_paths, 0),
        };
        rules.deny_open = files.denied();
        rules.missing_deny_open = files.missing();
        // Only a sandbox with files to refuse pays for the open hook's inode lookup.
        if !rules.deny_open_paths.is_empty() {
            rules.rules |= lsm_rule::DENY_OPEN;
        }
        for name in &kernel.unix_allow {
            rules.unix.push(unix_address(name));
        }
        Ok(rules)
    }

    /// These rules for a policy that has `binaries:` rules, or not: with them, no process of the
    /// sandbox may attach to another ([`lsm_rule::NO_ATTACH_INSIDE`]).
    pub fn with_binaries_rules(mut self, binaries: bool) -> Self {
        if binaries {
            self.rules |= lsm_rule::NO_ATTACH_INSIDE;
        }
        self
    }

    /// These rules for a sandbox of `leash run`, whose proxy is leash itself: no process outside
    /// but root reads its processes ([`lsm_rule::NO_READ_FROM_OUTSIDE`]).
    pub fn for_leash_run(mut self) -> Self {
        self.rules |= lsm_rule::NO_READ_FROM_OUTSIDE;
        self
    }

    /// The BPF-LSM hooks these rules need, by `bpf_lsm_<hook>` name, with those of the proxy
    /// rule every sandbox adds; a missing one means part of the policy is not enforced.
    pub fn required_hooks(&self) -> Vec<&'static str> {
        let rules = self.rules | lsm_rule::PROXY_ONLY;
        program_names::LSM_HOOKS.iter().filter(|h| h.required && h.serves(self.deny, rules)).map(|h| h.hook).collect()
    }

    /// The unix-allowlist keys of sandbox `id`.
    pub fn unix_keys(&self, id: u64) -> impl Iterator<Item = UnixKey> + '_ {
        self.unix.iter().map(move |(len, path)| UnixKey { sandbox: id, len: *len, path: *path })
    }
}

/// The `lsm_deny` flag of one `kernel.deny` word.
pub fn deny_flag(d: KernelDeny) -> u32 {
    match d {
        KernelDeny::Ptrace => lsm_deny::PTRACE,
        KernelDeny::Bpf => lsm_deny::BPF,
        KernelDeny::Mount => lsm_deny::MOUNT,
        KernelDeny::Userns => lsm_deny::USERNS,
        KernelDeny::PerfEvent => lsm_deny::PERF_EVENT,
        KernelDeny::RawSocket => lsm_deny::RAW_SOCKET,
        KernelDeny::PacketSocket => lsm_deny::PACKET_SOCKET,
        KernelDeny::KillOutside => lsm_deny::KILL_OUTSIDE,
        KernelDeny::KernelModule => lsm_deny::KERNEL_MODULE,
        KernelDeny::Vsock => lsm_deny::VSOCK,
        KernelDeny::Netlink => lsm_deny::NETLINK,
    }
}

/// A socket address as the kernel compares it: (meaningful length, sun_path bytes).
fn unix_address(name: &UnixSocketName) -> (u32, [u8; UNIX_PATH_MAX]) {
    let mut path = [0u8; UNIX_PATH_MAX];
    let bytes: Vec<u8> = match name {
        UnixSocketName::Path(p) => p.as_os_str().as_encoded_bytes().to_vec(),
        UnixSocketName::Abstract(n) => std::iter::once(0).chain(n.iter().copied()).collect(),
    };
    // The policy parser bounds both forms to 108 bytes.
    let len = bytes.len().min(UNIX_PATH_MAX);
    path[..len].copy_from_slice(&bytes[..len]);
    (len as u32, path)
}

/// Adds every executable regular file matching `glob` (`*` and `?` within one component, `**`
/// across components) to `out`, and every other shared object it matches to `libraries`,
/// following symlinks to the file they name. Returns how many executables matched (files
/// another glob already listed included).
fn expand_executables(
    root: &FsRoot,
    glob: &str,
    out: &mut BTreeMap<FileId, PathBuf>,
    libraries: &mut BTreeMap<FileId, PathBuf>,
) -> Result<usize> {
    let parts: Vec<&str> = glob.trim_start_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    let mut matched = 0;
    let mut walk = Walk { root, out, libraries, matched: &mut matched, budget: Budget::new() };
    walk.walk(Path::new("/"), &parts, 0);
    if walk.budget.exhausted {
        // A tree the agent can write (a pod's own files, under the node daemon) must not make
        // resolving the policy cost what the agent likes.
        bail!(
            "kernel.exec.allow `{glob}` visits more than {MAX_WALK_ENTRIES} entries or takes more than {} s to resolve; name narrower paths",
            MAX_WALK_TIME.as_secs()
        );
    }
    if out.len() > MAX_EXEC_FILES {
        bail!("kernel.exec.allow resolves to more than {MAX_EXEC_FILES} files; name narrower paths");
    }
    Ok(matched)
}

/// Adds the shared objects of [`SYSTEM_LIBRARY_DIRS`] in `root` to `out`: regular files (symlinks
/// followed) owned by root and writable by no one else, any depth below (symlinked directories
/// are not descended into). Under the node daemon `root` is a pod's image, whose directories the
/// pod chose: there they are read as a stream (no listing is held, whatever its size) and the
/// walk has [`MAX_LIBRARY_WALK_TIME`]. An image's Python or ML stack can hold hundreds of
/// thousands of entries, so they are not counted.
pub fn add_system_libraries(root: &FsRoot, out: &mut BTreeMap<FileId, PathBuf>) -> Result<()> {
    fn walk(root: &FsRoot, dir: &Path, depth: usize, out: &mut BTreeMap<FileId, PathBuf>, budget: &mut Budget) {
        if depth > 16 || out.len() > MAX_LIBRARY_FILES || !budget.spend(0) {
            return;
        }
        root.each_entry(dir, |entry| {
            let Ok(lmeta) = root.symlink_metadata(&entry) else { return budget.spend(0) };
            if lmeta.is_dir() {
                walk(root, &entry, depth + 1, out, budget);
            } else if entry.file_name().is_some_and(|n| is_shared_object(&n.to_string_lossy())) {
                match root.metadata(&entry) {
                    Ok(m) if m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0 => {
                        out.entry(FileId::from_meta(&m)).or_insert(entry);
                    }
                    _ => {}
                }
            }
            out.len() <= MAX_LIBRARY_FILES && budget.spend(0)
        });
    }
    // A pod's image (the node daemon's roots) is the pod's to fill; this host's is root's.
    let mut budget = match root {
        FsRoot::Own => Budget::unlimited(),
        FsRoot::Dir(_) => Budget::timed(MAX_LIBRARY_WALK_TIME),
    };
    for dir in SYSTEM_LIBRARY_DIRS {
        let dir = Path::new(dir);
        if root.symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
            walk(root, dir, 0, out, &mut budget);
        }
    }
    if budget.exhausted {
        bail!("the system library directories take more than {} s to list", MAX_LIBRARY_WALK_TIME.as_secs());
    }
    if out.len() > MAX_LIBRARY_FILES {
        bail!("the system library directories hold more than {MAX_LIBRARY_FILES} shared objects");
    }
    Ok(())
}

/// How long listing a pod image's system library directories may take.
const MAX_LIBRARY_WALK_TIME: std::time::Duration =
    if cfg!(test) { std::time::Duration::from_millis(200) } else { std::time::Duration::from_secs(10) };

/// `*.so` or `*.so.*`: a shared object's file name.
fn is_shared_object(name: &str) -> bool {
    name.ends_with(".so") || name.contains(".so.")
}

/// Directory entries one glob may visit, and how long it may take, before it is refused.
const MAX_WALK_ENTRIES: usize = if cfg!(test) { 1_000 } else { 200_000 };
const MAX_WALK_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// What one walk of a tree may look at: so many entries, in [`MAX_WALK_TIME`].
struct Budget {
    limit: usize,
    /// Entries looked at so far.
    visited: usize,
    deadline: Option<std::time::Instant>,
    /// Set once the walk ran out of entries or time; nothing more is looked at.
    exhausted: bool,
}

impl Budget {
    /// [`MAX_WALK_ENTRIES`] in [`MAX_WALK_TIME`].
    fn new() -> Self {
        let deadline = Some(std::time::Instant::now() + MAX_WALK_TIME);
        Self { limit: MAX_WALK_ENTRIES, visited: 0, deadline, exhausted: false }
    }

    /// No bound: for a tree only root can change (this host's own system libraries).
    fn unlimited() -> Self {
        Self { limit: usize::MAX - 1, visited: 0, deadline: None, exhausted: false }
    }

    /// A bound in time only.
    fn timed(time: std::time::Duration) -> Self {
        Self { deadline: Some(std::time::Instant::now() + time), ..Self::unlimited() }
    }

    /// Counts `n` more entries; false (and exhausted) once past the budget.
    fn spend(&mut self, n: usize) -> bool {
        self.visited = self.visited.saturating_add(n);
        if self.visited > self.limit || self.deadline.is_some_and(|d| std::time::Instant::now() > d) {
            self.exhausted = true;
        }
        !self.exhausted
    }

    /// How many more entries one directory listing may hold: one past them means too many.
    fn left(&self) -> usize {
        self.limit.saturating_sub(self.visited) + 1
    }
}

/// One glob's expansion in one root.
struct Walk<'a> {
    root: &'a FsRoot,
    out: &'a mut BTreeMap<FileId, PathBuf>,
    libraries: &'a mut BTreeMap<FileId, PathBuf>,
    matched: &'a mut usize,
    budget: Budget,
}

impl Walk<'_> {
    /// The entries of `dir`, read no further than the budget left: a directory holding more
    /// spends it all (its entries are counted as the walk visits them).
    fn list(&mut self, dir: &Path) -> Vec<PathBuf> {
        let left = self.budget.left();
        let entries = self.root.read_dir_sorted(dir, left);
        if entries.len() >= left {
            self.budget.spend(left);
            return Vec::new();
        }
        entries
    }

    fn walk(&mut self, dir: &Path, parts: &[&str], depth: usize) {
        if depth > 32 || self.out.len() > MAX_EXEC_FILES || !self.budget.spend(1) {
            return;
        }
        let Some((first, rest)) = parts.split_first() else {
            *self.matched += self.add_if_executable(dir) as usize;
            return;
        };
        if *first == "**" {
            // `**` matching no component; or this entry, and (in a directory) more below it.
            // Symlinked directories are not descended into (no loops, no escaping the tree).
            self.walk(dir, rest, depth + 1);
            for entry in self.list(dir) {
                let is_symlink =
                    self.root.symlink_metadata(&entry).map(|m| m.file_type().is_symlink()).unwrap_or(false);
                let is_dir = self.root.metadata(&entry).map(|m| m.is_dir()).unwrap_or(false);
                if is_dir && !is_symlink {
                    self.walk(&entry, parts, depth + 1);
                } else {
                    self.walk(&entry, rest, depth + 1);
                }
            }
            return;
        }
        if !first.contains(['*', '?']) {
            let next = dir.join(first);
            if self.root.exists(&next) {
                self.walk(&next, rest, depth + 1);
            }
            return;
        }
        for entry in self.list(dir) {
            let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if component_matches(first, &name) {
                self.walk(&entry, rest, depth + 1);
            }
        }
    }

    fn add_if_executable(&mut self, path: &Path) -> bool {
        match self.root.metadata(path) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {
                self.out.entry(FileId::from_meta(&meta)).or_insert_with(|| path.to_path_buf());
                true
            }
            Ok(meta) if meta.is_file() && path.file_name().is_some_and(|n| is_shared_object(&n.to_string_lossy())) => {
                if self.libraries.len() < MAX_LIBRARY_FILES {
                    self.libraries.entry(FileId::from_meta(&meta)).or_insert_with(|| path.to_path_buf());
                }
                false
            }
            _ => false,
        }
    }
}

/// `*` (any run of characters) and `?` (one character) within one path component.
fn component_matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!("leash-lsm-rules-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rules(exec: Option<&[&str]>, deny_open: &[&str], deny: &[KernelDeny]) -> KernelRules {
        KernelRules {
            exec_allow: exec.map(|g| g.iter().map(|s| s.to_string()).collect()),
            deny_open: deny_open.iter().map(PathBuf::from).collect(),
            deny: deny.to_vec(),
            unix_allow: vec![],
        }
    }

    #[test]
    fn components_match_like_a_shell() {
        assert!(component_matches("*", "curl"));
        assert!(component_matches("py*3", "python3"));
        assert!(component_matches("ba?h", "bash"));
        assert!(!component_matches("ba?h", "bsh"));
        assert!(!component_matches("curl", "curl2"));
    }

    #[test]
    fn globs_resolve_to_executable_inodes() {
        let dir = Scratch::new("globs");
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(bin.join("sub")).unwrap();
        for (name, mode) in [("tool", 0o755), ("data", 0o644), ("sub/deep", 0o700)] {
            let p = bin.join(name);
            std::fs::write(&p, b"#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::hard_link(bin.join("tool"), bin.join("tool-link")).unwrap();
        let one = format!("{}/*", bin.display());
        let r = LsmRules::resolve(&rules(Some(&[&one]), &[], &[]), &[]).unwrap();
        // tool and its hard link are one inode; data is not executable; sub/deep is one level down.
        assert_eq!(r.exec.len(), 1);
        assert!(r.exec.contains_key(&FileId::of(&bin.join("tool")).unwrap()));
        let all = format!("{}/**", bin.display());
        let r = LsmRules::resolve(&rules(Some(&[&all]), &[], &[]), &[]).unwrap();
        assert_eq!(r.exec.len(), 2);
        assert_ne!(r.rules & lsm_rule::EXEC_ALLOWLIST, 0);
        let none = format!("{}/nothing-*", bin.display());
        let err = LsmRules::resolve(&rules(Some(&[&none]), &[], &[]), &[]).unwrap_err();
        assert!(err.to_string().contains("matches no executable"), "{err}");
    }

    #[test]
    fn a_glob_over_a_huge_tree_is_refused_not_walked_for_ever() {
        let dir = Scratch::new("huge");
        for i in 0..(MAX_WALK_ENTRIES + 10) {
            std::fs::create_dir_all(dir.path().join(format!("d{i}"))).unwrap();
        }
        std::fs::write(dir.path().join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.path().join("tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let all = format!("{}/**", dir.path().display());
        let err = LsmRules::resolve(&rules(Some(&[&all]), &[], &[]), &[]).unwrap_err();
        assert!(err.to_string().contains("name narrower paths"), "{err}");
        let one = format!("{}/tool", dir.path().display());
        assert!(LsmRules::resolve(&rules(Some(&[&one]), &[], &[]), &[]).is_ok(), "a plain path costs nothing");
    }

    /// Under the node daemon the system library directories are a pod's image, as big as the pod
    /// likes: they are read as a stream, and a walk longer than its time is refused. An image
    /// with many entries but few libraries resolves.
    #[test]
    fn library_directories_of_a_pods_image_are_streamed_and_timed() {
        let dir = Scratch::new("huge-libs");
        let lib = dir.path().join("usr/lib");
        std::fs::create_dir_all(&lib).unwrap();
        for i in 0..(MAX_WALK_ENTRIES + 10) {
            std::fs::write(lib.join(format!("junk-{i}")), b"").unwrap();
        }
        std::fs::write(lib.join("libc.so.6"), b"x").unwrap();
        let root = FsRoot::Dir(std::fs::File::open(dir.path()).unwrap().into());
        let mut found = BTreeMap::new();
        add_system_libraries(&root, &mut found).expect("many entries, few libraries");
        assert_eq!(found.len(), 1);
        // Deep enough that the walk outlasts its time (200 ms under test).
        let mut deep = lib.clone();
        for level in 0..16 {
            deep = deep.join(format!("d{level}"));
            std::fs::create_dir_all(&deep).unwrap();
            for i in 0..2_000 {
                std::fs::create_dir(deep.join(format!("e{i}"))).unwrap();
            }
        }
        let err = add_system_libraries(&root, &mut BTreeMap::new()).unwrap_err();
        assert!(err.to_string().contains("to list"), "{err}");
        assert_eq!(root.read_dir_sorted(Path::new("/usr/lib"), 5).len(), 5, "a listing stops at its bound");
    }

    #[test]
    fn exec_lists_carry_libraries_to_map() {
        let dir = Scratch::new("libs");
        let lib = dir.path().join("opt/lib");
        std::fs::create_dir_all(&lib).unwrap();
        for (name, mode) in [("tool", 0o755), ("libtool.so.1", 0o644), ("notes.txt", 0o644)] {
            std::fs::write(lib.join(name), b"x").unwrap();
            std::fs::set_permissions(lib.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let glob = format!("{}/**", dir.path().display());
        let r = LsmRules::resolve(&rules(Some(&[&glob]), &[], &[]), &[]).unwrap();
        assert!(r.exec.contains_key(&FileId::of(&lib.join("tool")).unwrap()));
        // A 0644 shared object under an allowed path may be mapped, not run; other files neither.
        assert!(r.libraries.contains_key(&FileId::of(&lib.join("libtool.so.1")).unwrap()));
        assert!(!r.exec.contains_key(&FileId::of(&lib.join("libtool.so.1")).unwrap()));
        assert!(!r.libraries.contains_key(&FileId::of(&lib.join("notes.txt")).unwrap()));
        // The system's C library comes with every exec list (this host's dynamic loader at least).
        let loader = ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1", "/lib/ld-musl-x86_64.so.1"]
            .iter()
            .find_map(|p| FileId::of(Path::new(p)).ok());
        if let Some(loader) = loader {
            assert!(r.libraries.contains_key(&loader) || r.exec.contains_key(&loader));
        }
        let hooks = r.required_hooks();
        for h in ["bprm_check_security", "mmap_file", "file_mprotect"] {
            assert!(hooks.contains(&h), "{h} missing from {hooks:?}");
        }
        // Without an exec list there is nothing to map-check.
        let none = LsmRules::resolve(&rules(None, &[], &[]), &[]).unwrap();
        assert!(none.libraries.is_empty() && !none.required_hooks().contains(&"mmap_file"));
    }

    #[test]
    fn a_deny_open_path_that_fails_refuses_the_start_not_a_reload() {
        let dir = Scratch::new("deny-broken");
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        // Its directory is a file: ENOTDIR, not "missing".
        let path = dir.path().join("file/token");
        let kernel = rules(None, &[path.to_str().unwrap()], &[]);
        assert!(LsmRules::resolve(&kernel, &[]).is_err(), "at the start, a failing lookup is an error");
        let reload = LsmRules::for_reload(Some(&kernel), &[]).unwrap();
        assert!(reload.deny_open.is_empty());
        assert_eq!(reload.deny_open_paths, [path]);
        assert_ne!(reload.rules & lsm_rule::DENY_OPEN, 0);
    }

    #[test]
    fn deny_open_and_flags() {
        let dir = Scratch::new("deny");
        let secret = dir.path().join("token");
        std::fs::write(&secret, b"x").unwrap();
        let missing = dir.path().join("later");
        let r = LsmRules::resolve(
            &rules(None, &[secret.to_str().unwrap(), missing.to_str().unwrap()], &[KernelDeny::Mount]),
            &[],
        )
        .unwrap();
        assert!(r.deny_open.contains_key(&FileId::of(&secret).unwrap()));
        assert_ne!(r.rules & lsm_rule::DENY_OPEN, 0);
        assert_eq!(r.missing_deny_open, [missing]);
        assert_eq!(r.rules & lsm_rule::EXEC_ALLOWLIST, 0);
        // Self-protection is always on.
        for flag in [lsm_deny::PTRACE, lsm_deny::BPF, lsm_deny::KILL_OUTSIDE, lsm_deny::MOUNT] {
            assert_ne!(r.deny & flag, 0);
        }
        let hooks = r.required_hooks();
        for h in ["sb_mount", "task_kill", "file_open", "socket_connect", "unix_stream_connect", "unix_may_send", "bpf"]
        {
            assert!(hooks.contains(&h), "{h} missing from {hooks:?}");
        }
        assert!(!hooks.contains(&"bprm_check_security"));
        assert!(!hooks.contains(&"userns_create"));
    }

    #[test]
    fn unix_addresses_are_kernel_shaped() {
        let (len, path) = unix_address(&UnixSocketName::Path("/run/a.sock".into()));
        assert_eq!(len, 11);
        assert_eq!(&path[..11], b"/run/a.sock");
        assert!(path[11..].iter().all(|&b| b == 0));
        let (len, path) = unix_address(&UnixSocketName::Abstract(b"x11".to_vec()));
        assert_eq!(len, 4);
        assert_eq!(&path[..4], b"\0x11");
    }
}
