//! The agent's own view of the host's filesystem: a mount namespace, made by the thread of leash
//! that then clones the agent into it (`child.rs`), in which
//! - `/tmp`, `/var/tmp` and `/dev/shm` are fresh tmpfs mounts: nothing is shared with other
//!   sandboxes or the host (a tmux socket, a planted script), and all of it is gone when the
//!   sandbox's last process exits;
//! - `/run` (and `/var/run` when it is not a link to it) is an empty tmpfs holding only leash's
//!   files for the agent, read-only (its trust files, a tmpfs of their own mounted nowhere else:
//!   [`detached_tmpfs`], `trust`): host daemons' sockets (docker, containerd, podman, dbus,
//!   systemd, the user's `/run/user/<uid>` with its ssh and gpg agents) are not there to connect to;
//! - every pathname unix socket bound on the host as the sandbox is made, wherever it is, is
//!   covered with `/dev/null` (`host_sockets`), except those the policy's `kernel.unix.allow`
//!   names;
//! - `/dev/pts` is a devpts of the agent's own, holding its terminal ([`detached_devpts`]): the
//!   user's other terminals are not there to open;
//! - `/proc` is a procfs of its own showing only the processes the agent may look into
//!   ([`PROC`]);
//! - files in the working directory that run code later, outside the sandbox, are read-only,
//!   and so are the empty directories leash holds where such names are missing
//!   (`workdir_guard`).
//!
//! Mounts made on the host later still reach the sandbox (the namespace is a slave of the host's).
//! A Landlock rule follows the directory it was made on, which the new mounts hide: the rules the
//! policy gives the emptied directories are made again on the new ones ([`PrivateMounts::with_landlock`]).
//! What this does not cover: a socket a host service binds after the agent started, outside
//! the emptied directories.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::host_sockets;

/// Directories that become private, empty and sticky (mode 1777); defined with the policy code,
/// whose learning grants them whole.
const SCRATCH: &[&str] = &crate::policy::learn_files::SCRATCH;
/// Directories emptied of host sockets.
const RUNTIME: &[&str] = &["/run", "/var/run"];

/// The agent's devpts.
enum Terminals {
    /// None: no `/dev/pts` on this host.
    None,
    /// [`detached_devpts`], holding the agent's terminal.
    Detached(RawFd),
    /// A new instance made in the namespace with mount(2) ([`devpts_data`]), where the new
    /// mount API is refused; the agent's terminal is then the host's (its path is not there).
    New(CString),
}

/// Directories the agent gets as new instances of the same filesystems, whose names stay: a
/// policy's rules for paths beneath them are made again on the new ones too.
pub fn remounted() -> impl Iterator<Item = &'static Path> {
    [TERMINALS, PROC].into_iter().map(Path::new)
}

/// Every directory the agent gets new (private or emptied), its terminals' and `/proc` among
/// them.
pub fn emptied() -> impl Iterator<Item = &'static Path> {
    SCRATCH.iter().chain(RUNTIME).chain([&TERMINALS, &PROC]).map(Path::new)
}

/// The agent's `/proc`: a procfs of its own that shows only the processes it may look into
/// (`hidepid=2`), not every process of the host with its command line and the secrets people
/// pass there. From 5.8, each procfs mount has its own options; before, they were shared by every
/// mount of the PID namespace, and the host's `/proc` would change: none is made there.
const PROC_C: &std::ffi::CStr = c"/proc";
const PROC: &str = match PROC_C.to_str() {
    Ok(path) => path,
    Err(_) => panic!("a path in UTF-8"),
};
/// Refuses a working directory inside one the agent gets new and empty: the agent would start
/// in the host's directory (a working directory is held by reference, not by path), reaching
/// the host's `/tmp` through relative paths while its absolute ones name its own, and leash's
/// guard of the working directory would be built in the wrong one.
pub fn check_workdir(workdir: &Path) -> Result<()> {
    match emptied().find(|dir| workdir.starts_with(dir)) {
        Some(dir) => anyhow::bail!(
            "the working directory {} is inside {}, which the agent gets as a new, empty directory of its own: run leash from the project's directory",
            workdir.display(),
            dir.display()
        ),
        None => Ok(()),
    }
}

/// How many directories can be put back under them.
const MAX_KEPT: usize = 4;

/// A directory of leash's that the agent reads under an emptied `/run`.
#[derive(Clone, Copy)]
pub struct KeptDir<'a> {
    /// Where the agent finds it.
    pub path: &'a Path,
    /// Where it is: a host directory at `path` (`None`), or a filesystem mounted nowhere on the
    /// host ([`detached_tmpfs`]), by descriptor.
    pub detached: Option<BorrowedFd<'a>>,
}

/// One directory leash puts back under an emptied `/run`, read-only.
struct Kept {
    /// Its path, which is also where it goes back.
    path: CString,
    /// A detached mount to put there; else the host's directory at `path` is bound there.
    detached: Option<RawFd>,
    /// Directories to create in the new tmpfs, parents first; the last is the mount point.
    create: Vec<CString>,
}

/// From `<linux/mount.h>` (5.2+), which the libc crate does not export yet.
mod new_mount_api {
    pub const FSOPEN_CLOEXEC: libc::c_uint = 1;
    pub const FSCONFIG_SET_STRING: libc::c_uint = 1;
    pub const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    pub const FSMOUNT_CLOEXEC: libc::c_uint = 1;
    pub const MOUNT_ATTR_NOSUID: libc::c_uint = 0x2;
    pub const MOUNT_ATTR_NODEV: libc::c_uint = 0x4;
    pub const MOUNT_ATTR_NOEXEC: libc::c_uint = 0x8;
    pub const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
}

/// A new tmpfs (mode 0755, nosuid, nodev, noexec) mounted nowhere: leash writes in it through
/// the descriptor, and the agent's namespace mounts it under its `/run` ([`PrivateMounts::enter`]).
/// Nothing of it is ever on the host's filesystem, so nothing is left to remove: it goes when the
/// descriptor is closed and the agent's namespace is gone. Fails on kernels before 5.2 and where
/// a seccomp profile refuses the new mount API.
pub fn detached_tmpfs() -> io::Result<OwnedFd> {
    use new_mount_api::*;
    let options = [(c"mode", c"0755"), (c"source", c"leash")];
    detached(c"tmpfs", &options, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC)
}

/// A new filesystem of type `fstype` with `options`, mounted nowhere, with mount attributes
/// `attrs`: its descriptor.
fn detached(fstype: &CStr, options: &[(&CStr, &CStr)], attrs: libc::c_uint) -> io::Result<OwnedFd> {
    use new_mount_api::*;
    // SAFETY: the new mount API's calls with NUL-terminated strings and descriptors checked and
    // owned here.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC);
        if fs < 0 {
            return Err(io::Error::last_os_error());
        }
        let fs = OwnedFd::from_raw_fd(fs as RawFd);
        for (key, value) in options {
            if libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr(), 0)
                < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        let null: *const libc::c_char = std::ptr::null();
        if libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_CMD_CREATE, null, null, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mount = libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs);
        if mount < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(mount as RawFd))
    }
}

/// A new devpts instance (nosuid, noexec) mounted nowhere: the agent's namespace mounts it at
/// `/dev/pts` ([`PrivateMounts::prepare`]), and leash makes the agent's own terminal in
/// it (`terminal.rs`). The host's terminals, the user's other shells among them, are not there
/// to open: an agent running as the user owns them, and could read what is typed in them or
/// turn their echo off. Fails where [`detached_tmpfs`] does.
pub fn detached_devpts() -> io::Result<OwnedFd> {
    use new_mount_api::*;
    let options = devpts_options();
    let options: Vec<(&CStr, &CStr)> = options.iter().map(|(k, v)| (k.as_c_str(), v.as_c_str())).collect();
    detached(c"devpts", &options, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC)
}

/// Most terminals an agent's devpts holds: the instances besides the host's share one pool
/// (`kernel.pty.max` less `kernel.pty.reserve`), which one agent must not use up.
const MAX_TERMINALS: &str = "256";

/// The options of the agent's devpts: new terminals in group `tty` (as `/dev/ptmx` is; glibc
/// before 2.33 refuses a terminal `grantpt` cannot give that group), mode 0620, at most
/// [`MAX_TERMINALS`].
fn devpts_options() -> Vec<(CString, CString)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut options = vec![(c"mode".into(), c"0620".into()), (c"ptmxmode".into(), c"0666".into())];
    if let Ok(max) = CString::new(MAX_TERMINALS) {
        options.push((c"max".into(), max));
    }
    match std::fs::metadata("/dev/ptmx").map(|m| m.gid()) {
        Ok(gid) if gid != 0 => options.extend(CString::new(gid.to_string()).ok().map(|g| (c"gid".into(), g))),
        _ => {}
    }
    options
}

/// The same options in the form mount(2) takes, for a devpts made in the agent's namespace
/// where [`detached_devpts`] could not be.
fn devpts_data() -> CString {
    let text: Vec<String> = std::iter::once("newinstance".to_owned())
        .chain(devpts_options().iter().map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())))
        .collect();
    CString::new(text.join(",")).unwrap_or_default()
}

/// Where the host's terminals are, and the agent gets a devpts of its own.
const TERMINALS_C: &std::ffi::CStr = c"/dev/pts";
const TERMINALS: &str = match TERMINALS_C.to_str() {
    Ok(path) => path,
    Err(_) => panic!("a path in UTF-8"),
};

/// Where an agent whose user has no usable home directory gets one: in its private `/tmp`, so it
/// is its own and gone when the sandbox ends.
pub const PRIVATE_HOME: &std::ffi::CStr = c"/tmp/leash-home";

/// A home directory made for the agent in its new `/tmp`.
pub struct PrivateHome {
    pub uid: u32,
    pub gid: u32,
    /// The prepared Landlock ruleset and its read-write rights, to allow the new directory.
    pub landlock: Option<(std::os::fd::RawFd, u64)>,
    /// `--keep-home`: a directory leash already made the agent's (`host_files::kept_home`),
    /// by descriptor; `None` makes [`PRIVATE_HOME`] in the private `/tmp`.
    pub kept: Option<std::os::fd::RawFd>,
}

/// Everything the namespace needs, prepared before it is made.
pub struct PrivateMounts {
    scratch: Vec<CString>,
    runtime: Vec<CString>,
    kept: Vec<Kept>,
    read_only: Vec<CString>,
    /// Directories bound onto themselves (before `read_only`): a mount point cannot be renamed.
    fixed: Vec<CString>,
    /// Host sockets covered with `/dev/null`.
    covered: Vec<CString>,
    /// The agent's devpts, mounted at [`TERMINALS`].
    terminals: Terminals,
    /// Whether a procfs of its own is mounted at [`PROC`].
    own_proc: bool,
    home: Option<PrivateHome>,
    /// The agent's Landlock ruleset and the new directories it allows, with their rights.
    landlock: Option<(RawFd, Vec<(CString, u64)>)>,
}

fn c_path(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).with_context(|| format!("{} contains a NUL byte", p.display()))
}

/// A real directory (not a link to one) at `p`.
fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// The host's bound unix sockets the agent's namespace covers: every one outside the directories
/// it gets empty, but `unix_allowed`. Walks every process's network namespace (see
/// `host_sockets`), so `leash run` does it while it waits for its TLS material.
pub struct HostSockets {
    found: Vec<PathBuf>,
    left_out: usize,
}

impl HostSockets {
    pub fn find(unix_allowed: &[PathBuf]) -> Self {
        let emptied: Vec<&Path> = emptied().collect();
        let (found, left_out) = host_sockets::find(&emptied, unix_allowed);
        Self { found, left_out }
    }
}

impl PrivateMounts {
    /// Prepares the namespace for an agent, keeping `keep` (directories under `/run` the agent
    /// must read, such as its CA bundle) visible, `fixed` where they are (mount points, which
    /// cannot be renamed or removed), `read_only` read-only and `sockets` out of reach. Its
    /// `/dev/pts` is `devpts` ([`detached_devpts`], open until the agent started), else a new
    /// instance made in the namespace.
    pub fn prepare<'a>(
        keep: &[KeptDir<'_>],
        fixed: impl Iterator<Item = &'a Path>,
        read_only: impl Iterator<Item = &'a Path>,
        sockets: &HostSockets,
        devpts: Option<BorrowedFd<'_>>,
    ) -> Result<Self> {
        let scratch = SCRATCH.iter().map(Path::new).filter(|p| is_dir(p)).map(c_path).collect::<Result<_>>()?;
        let runtime = RUNTIME.iter().map(Path::new).filter(|p| is_dir(p)).map(c_path).collect::<Result<Vec<_>>>()?;
        let mut kept = Vec::new();
        if keep.len() > MAX_KEPT {
            anyhow::bail!("at most {MAX_KEPT} directories can be kept visible under /run");
        }
        for &KeptDir { path: dir, detached } in keep {
            let Some(root) = RUNTIME.iter().map(Path::new).find(|r| dir.starts_with(r) && is_dir(r)) else {
                // A host directory outside them is in the agent's view as it is; a detached
                // filesystem is in it only if mounted here.
                if detached.is_some() {
                    anyhow::bail!("{} is under no directory the agent's namespace empties", dir.display());
                }
                continue;
            };
            let relative = dir.strip_prefix(root).unwrap_or(dir);
            let mut create = Vec::new();
            let mut at = root.to_path_buf();
            for part in relative.components() {
                at.push(part);
                create.push(c_path(&at)?);
            }
            kept.push(Kept { path: c_path(dir)?, detached: detached.map(|fd| fd.as_raw_fd()), create });
        }
        let fixed = fixed.map(c_path).collect::<Result<_>>()?;
        let read_only = read_only.map(c_path).collect::<Result<_>>()?;
        if sockets.left_out > 0 {
            anyhow::bail!(
                "this host has more than {} bound unix sockets ({} more); leash cannot cover them all for the agent",
                host_sockets::MAX_COVERED,
                sockets.left_out
            );
        }
        let covered = sockets.found.iter().map(|p| c_path(p)).collect::<Result<_>>()?;
        let own_proc = is_dir(Path::new(PROC)) && crate::kernel::btf::running_kernel_at_least(5, 8);
        let terminals = match (is_dir(Path::new(TERMINALS)), devpts) {
            (false, _) => Terminals::None,
            (true, Some(devpts)) => Terminals::Detached(devpts.as_raw_fd()),
            (true, None) => Terminals::New(devpts_data()),
        };
        Ok(Self { scratch, runtime, kept, read_only, fixed, covered, terminals, own_proc, home: None, landlock: None })
    }

    /// Lets the Landlock ruleset `ruleset` allow each of `emptied` (paths the policy names, with
    /// their rights) in its new form, once made.
    pub fn with_landlock(&mut self, ruleset: RawFd, emptied: &[(PathBuf, u64)]) -> Result<()> {
        let rules = emptied.iter().map(|(p, bits)| Ok((c_path(p)?, *bits))).collect::<Result<_>>()?;
        self.landlock = Some((ruleset, rules));
        Ok(())
    }

    /// Gives the agent its home: a kept one, or [`PRIVATE_HOME`]; false when there is no private
    /// `/tmp` to make the latter in.
    pub fn with_home(&mut self, home: PrivateHome) -> bool {
        if home.kept.is_none() && !self.scratch.iter().any(|d| d.as_bytes() == b"/tmp") {
            return false;
        }
        self.home = Some(home);
        true
    }

    /// Makes the namespace for the calling thread (which then clones the agent into it), as root.
    pub fn enter(&self) -> io::Result<()> {
        const NONE: *const libc::c_char = std::ptr::null();
        let tmpfs = c"tmpfs";
        // SAFETY: every pointer is a NUL-terminated string prepared before, or null.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(NONE, c"/".as_ptr(), NONE, libc::MS_REC | libc::MS_SLAVE, std::ptr::null()))?;
            for dir in &self.scratch {
                let data = c"mode=1777";
                let flags = libc::MS_NOSUID | libc::MS_NODEV;
                check(libc::mount(tmpfs.as_ptr(), dir.as_ptr(), tmpfs.as_ptr(), flags, data.as_ptr().cast()))?;
            }
            // Opened in this namespace before `/run` is covered, bound back from the descriptor
            // after (a descriptor opened before `unshare` names a mount of the host's namespace,
            // which mount(2) refuses to bind from).
            // Closed on every way out (this runs in leash, whose descriptors outlive it).
            let mut sources = Vec::with_capacity(self.kept.len());
            for k in self.kept.iter().filter(|k| k.detached.is_none()) {
                let fd =
                    libc::open(k.path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                sources.push(OwnedFd::from_raw_fd(fd));
            }
            for dir in &self.runtime {
                let data = c"mode=0755";
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                check(libc::mount(tmpfs.as_ptr(), dir.as_ptr(), tmpfs.as_ptr(), flags, data.as_ptr().cast()))?;
            }
            let mut bound = sources.iter();
            for k in &self.kept {
                for dir in &k.create {
                    if libc::mkdir(dir.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                        return Err(io::Error::last_os_error());
                    }
                }
                let Some(target) = k.create.last() else { continue };
                match k.detached {
                    Some(mount) => {
                        let flags = new_mount_api::MOVE_MOUNT_F_EMPTY_PATH;
                        let moved = libc::syscall(
                            libc::SYS_move_mount,
                            mount,
                            c"".as_ptr(),
                            libc::AT_FDCWD,
                            target.as_ptr(),
                            flags,
                        );
                        if moved < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        remount_read_only(target.as_ptr(), libc::MS_NOEXEC)?;
                    }
                    None => {
                        let source = bound.next().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
                        let mut buf = [0u8; 32];
                        bind_read_only(proc_fd_path(source.as_raw_fd(), &mut buf), target.as_ptr())?;
                    }
                }
            }
            drop(sources);
            for dir in &self.fixed {
                let flags = libc::MS_BIND | libc::MS_REC;
                check(libc::mount(dir.as_ptr(), dir.as_ptr(), NONE, flags, std::ptr::null()))?;
            }
            for path in &self.read_only {
                bind_read_only(path.as_ptr(), path.as_ptr())?;
            }
            match &self.terminals {
                Terminals::None => {}
                Terminals::Detached(devpts) => {
                    let flags = new_mount_api::MOVE_MOUNT_F_EMPTY_PATH;
                    let target = TERMINALS_C.as_ptr();
                    let moved =
                        libc::syscall(libc::SYS_move_mount, *devpts, c"".as_ptr(), libc::AT_FDCWD, target, flags);
                    if moved < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Terminals::New(data) => {
                    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
                    let devpts = c"devpts".as_ptr();
                    check(libc::mount(devpts, TERMINALS_C.as_ptr(), devpts, flags, data.as_ptr().cast()))?;
                }
            }
            if self.own_proc {
                // Best effort: where procfs cannot be mounted (an unprivileged container, say), the
                // agent keeps the host's, as before.
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                let proc = c"proc".as_ptr();
                let _ = libc::mount(proc, PROC_C.as_ptr(), proc, flags, c"hidepid=2".as_ptr().cast());
            }
            for socket in &self.covered {
                // A socket gone since it was found needs no cover.
                if libc::mount(c"/dev/null".as_ptr(), socket.as_ptr(), NONE, libc::MS_BIND, std::ptr::null()) != 0
                    && *libc::__errno_location() != libc::ENOENT
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((ruleset, rules)) = &self.landlock {
                for (path, access) in rules {
                    let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                    if fd < 0 {
                        // A name the policy gives under `/proc` or `/dev/pts` that the new
                        // instance has not: nothing to allow.
                        if *libc::__errno_location() == libc::ENOENT {
                            continue;
                        }
                        return Err(io::Error::last_os_error());
                    }
                    let mut st: libc::stat = std::mem::zeroed();
                    let is_dir = libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                    // A rule on a file takes only the rights a file has.
                    let access = if is_dir { *access } else { *access & LANDLOCK_FILE_RIGHTS };
                    let added = allow_beneath(*ruleset, fd, access);
                    libc::close(fd);
                    added?;
                }
            }
            if let Some(home) = &self.home {
                make_home(home)?;
            }
        }
        Ok(())
    }
}

/// Creates the private home, owned by the agent and open to it alone, and lets the agent's
/// Landlock domain write there whatever the policy says of `/tmp`.
unsafe fn make_home(home: &PrivateHome) -> io::Result<()> {
    let path = PRIVATE_HOME;
    // SAFETY: NUL-terminated path; the attribute lives through the call.
    unsafe {
        if home.kept.is_none() {
            check(libc::mkdir(path.as_ptr(), 0o700))?;
            check(libc::chown(path.as_ptr(), home.uid, home.gid))?;
        }
        if let Some((ruleset, access)) = home.landlock {
            let dir = match home.kept {
                Some(kept) => libc::fcntl(kept, libc::F_DUPFD_CLOEXEC, 0),
                None => libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC),
            };
            if dir < 0 {
                return Err(io::Error::last_os_error());
            }
            let added = allow_beneath(ruleset, dir, access);
            libc::close(dir);
            added?;
        }
    }
    Ok(())
}

/// Adds to the Landlock ruleset `ruleset` a rule giving `access` beneath the directory open as
/// `dir`.
/// The Landlock rights a rule on a file (not a directory) may carry: execute, write, read,
/// truncate (ABI 3) and device ioctls (ABI 5).
const LANDLOCK_FILE_RIGHTS: u64 = 1 | 1 << 1 | 1 << 2 | 1 << 14 | 1 << 15;

fn allow_beneath(ruleset: RawFd, dir: RawFd, access: u64) -> io::Result<()> {
    /// `struct landlock_path_beneath_attr`.
    #[repr(C, packed)]
    struct PathBeneath {
        allowed_access: u64,
        parent_fd: i32,
    }
    const RULE_PATH_BENEATH: libc::c_int = 1;
    let attr = PathBeneath { allowed_access: access, parent_fd: dir };
    // SAFETY: the attribute lives through the call.
    let added = unsafe {
        libc::syscall(libc::SYS_landlock_add_rule, ruleset, RULE_PATH_BENEATH, &attr as *const PathBeneath, 0u32)
    };
    if added != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds `source` on `target`, read-only.
unsafe fn bind_read_only(source: *const libc::c_char, target: *const libc::c_char) -> io::Result<()> {
    // SAFETY: NUL-terminated strings, as mount(2) takes them.
    unsafe {
        check(libc::mount(source, target, std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
        remount_read_only(target, 0)
    }
}

/// Makes the mount at `target` read-only, nosuid, nodev and `more`, that mount alone.
unsafe fn remount_read_only(target: *const libc::c_char, more: libc::c_ulong) -> io::Result<()> {
    const NONE: *const libc::c_char = std::ptr::null();
    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | more;
    // SAFETY: a NUL-terminated string and nulls, as mount(2) takes them.
    unsafe { check(libc::mount(NONE, target, NONE, flags, std::ptr::null())) }
}

/// `/proc/self/fd/<fd>` written into `buf` without allocating, NUL-terminated.
fn proc_fd_path(fd: libc::c_int, buf: &mut [u8; 32]) -> *const libc::c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.max(0) as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
