//! The agent dies with leash. `PR_SET_PDEATHSIG` reaches only the agent's first process; a
//! detached grandchild would outlive a SIGKILLed leash, confined by the pinned programs to a
//! proxy address nobody serves any more, which another local user could then bind and serve.
//! So `leash run` starts a watchdog beside itself (outside the sandbox, as root, so the agent
//! cannot signal it), blocked reading a pipe whose only write end leash holds. When leash exits
//! for any reason the read returns, and the watchdog kills every process left in the sandbox
//! cgroup. It holds the proxy's listening socket until then, so the port cannot be taken by anyone
//! else while a process of the sandbox is alive. Once the sandbox is empty it also removes the
//! directories leash held in the working directory (`workdir_guard`), which leash sends it over
//! the same pipe, so a killed leash leaves none behind. Cleaning up the cgroup and pins stays with
//! the next run's reaper.
//!
//! The watchdog is a clone of leash sharing its memory (`CLONE_VM`, not a thread: it survives
//! leash's exit, which then leaves the memory mapped for it), on a stack and with data of its own
//! in a mapping leash never unmaps, making raw system calls only (no allocation, no lock, no libc
//! state such as `errno`). Starting a copy of leash's binary instead cost every start about 1 ms
//! of exec and dynamic linking, and its exit another; copying leash's page tables (fork) cost
//! leash a copy-on-write fault on every page it wrote afterwards.

use std::ffi::CString;
use std::os::fd::{AsRawFd as _, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The watchdog's name in `/proc/<pid>/comm`.
const NAME: &[u8] = b"leash-watchdog\0";

/// A running watchdog; dropping it (or leash dying) releases it.
pub struct Watchdog {
    /// The pipe's write end: closing it is the signal.
    alive: OwnedFd,
    pid: libc::pid_t,
}

impl Watchdog {
    /// Starts a watchdog for the sandbox cgroup at `cgroup`, holding the proxy's `listener`.
    pub fn start(cgroup: &Path, listener: BorrowedFd<'_>) -> Result<Self> {
        let name = cgroup.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        if !name.starts_with(b"leash-") {
            bail!("{} is not a leash sandbox cgroup", cgroup.display());
        }
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("watchdog pipe")?;
        let region = Region::map(cgroup, read.as_raw_fd(), listener.as_raw_fd())?;
        let pid = region.clone_watchdog().context("starting leash's watchdog")?;
        // The watchdog has its own copy of the read end.
        drop(read);
        Ok(Self { alive: write, pid })
    }

    /// Tells the watchdog about directories leash holds for the agent (device, inode, path), to
    /// remove if leash dies before it does.
    pub fn hold<'a>(&self, held: impl Iterator<Item = (u64, u64, &'a Path)>) -> Result<()> {
        for (dev, ino, path) in held {
            let mut record = format!("{dev} {ino} ").into_bytes();
            record.extend_from_slice(path.as_os_str().as_encoded_bytes());
            record.push(0);
            let mut rest = record.as_slice();
            while !rest.is_empty() {
                let n = nix::unistd::write(&self.alive, rest).context("telling the watchdog")?;
                rest = &rest[n..];
            }
        }
        Ok(())
    }

    /// Stops the watchdog after a clean teardown.
    pub fn stop(self) {
        let Self { alive, pid } = self;
        drop(alive);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
}

/// Bounds what leash may send (a few dozen names of the policy's list, each a path).
const MAX_HELD_BYTES: usize = 1 << 20;
/// The watchdog's stack.
const STACK_BYTES: usize = 64 << 10;
/// Longest cgroup path the watchdog takes (its file names are appended to it).
const MAX_PATH: usize = 4000;
/// `AT_FDCWD` as a system call argument.
const AT_FDCWD: usize = libc::AT_FDCWD as isize as usize;
/// How long the watchdog waits for the killed sandbox to empty.
const KILL_TIMEOUT_NS: i64 = 5_000_000_000;

/// The watchdog's own mapping: stack, what it was told at start, and a buffer for what leash
/// sends. Mapped once per start and never unmapped (leash's memory outlives leash only while the
/// watchdog runs).
struct Region {
    base: *mut u8,
}

/// What the watchdog is told, written before the clone; after it, leash never touches it again.
#[repr(C)]
struct Plan {
    read_fd: libc::c_int,
    listener_fd: libc::c_int,
    /// `<cgroup>/` and room for a file name, NUL-terminated.
    cgroup: [u8; MAX_PATH + 32],
    cgroup_len: usize,
    /// The buffer held records are read into (`MAX_HELD_BYTES`).
    held: *mut u8,
    /// The pids of `cgroup.procs` are read into this.
    procs: [u8; 8192],
}

impl Region {
    const PLAN_OFFSET: usize = STACK_BYTES;
    const HELD_OFFSET: usize = STACK_BYTES + std::mem::size_of::<Plan>().next_multiple_of(4096);
    const LEN: usize = Self::HELD_OFFSET + MAX_HELD_BYTES + 1;

    fn map(cgroup: &Path, read_fd: libc::c_int, listener_fd: libc::c_int) -> Result<Self> {
        let dir = CString::new(cgroup.as_os_str().as_bytes()).context("a cgroup path with a NUL byte")?;
        let dir = dir.as_bytes();
        if dir.len() > MAX_PATH {
            bail!("cgroup path {} is too long for the watchdog", cgroup.display());
        }
        // SAFETY: a fresh anonymous private mapping, checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mapping the watchdog's memory");
        }
        let base = base.cast::<u8>();
        // A guard page below the stack.
        // SAFETY: the first page of the mapping just made.
        if unsafe { libc::mprotect(base.cast(), 4096, libc::PROT_NONE) } != 0 {
            let error = std::io::Error::last_os_error();
            // SAFETY: the mapping just made, unused.
            unsafe { libc::munmap(base.cast(), Self::LEN) };
            return Err(error).context("mapping the watchdog's memory");
        }
        // SAFETY: the plan lies inside the mapping (zero-filled: a valid `Plan` apart from the
        // fields set here), aligned to a page.
        unsafe {
            let plan = &mut *base.add(Self::PLAN_OFFSET).cast::<Plan>();
            plan.read_fd = read_fd;
            plan.listener_fd = listener_fd;
            plan.cgroup[..dir.len()].copy_from_slice(dir);
            plan.cgroup[dir.len()] = b'/';
            plan.cgroup_len = dir.len() + 1;
            plan.held = base.add(Self::HELD_OFFSET);
        }
        Ok(Self { base })
    }

    /// Clones the watchdog; returns its pid.
    fn clone_watchdog(self) -> std::io::Result<libc::pid_t> {
        // Blocked across the clone: leash's handlers must never run in the watchdog, which resets
        // them before it unblocks.
        let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        let mut old = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigfillset and pthread_sigmask write the local sets; clone runs `watch` on its
        // own stack at the top of the mapping with the plan, which nothing changes after this.
        unsafe {
            libc::sigfillset(all.as_mut_ptr());
            libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
            let stack_top = self.base.add(STACK_BYTES).cast::<libc::c_void>();
            let plan = self.base.add(Self::PLAN_OFFSET).cast::<libc::c_void>();
            let pid = libc::clone(watch, stack_top, libc::CLONE_VM | libc::SIGCHLD, plan);
            let error = std::io::Error::last_os_error();
            libc::pthread_sigmask(libc::SIG_SETMASK, old.as_ptr(), std::ptr::null_mut());
            if pid < 0 {
                libc::munmap(self.base.cast(), Self::LEN);
                return Err(error);
            }
            Ok(pid)
        }
    }
}

/// The watchdog: wait for leash to go, empty the sandbox cgroup, remove the held directories.
/// Exit code 0 when the cgroup is empty or gone.
extern "C" fn watch(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` is the `Plan` of the watchdog's mapping, which stays mapped and is the
    // watchdog's alone from the clone on.
    let plan = unsafe { &mut *plan.cast::<Plan>() };
    // SAFETY: raw system calls on the watchdog's own memory and descriptors.
    unsafe {
        for signal in 1..=64 {
            let default = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
            sys(libc::SYS_rt_sigaction, [signal, &default as *const _ as usize, 0, 8, 0, 0]);
        }
        let none: u64 = 0;
        sys(libc::SYS_rt_sigprocmask, [libc::SIG_SETMASK as usize, &none as *const u64 as usize, 0, 8, 0, 0]);
        // Its own process group: a Ctrl-C on the terminal is for the agent, not for it.
        sys(libc::SYS_setpgid, [0, 0, 0, 0, 0, 0]);
        sys(libc::SYS_prctl, [libc::PR_SET_NAME as usize, NAME.as_ptr() as usize, 0, 0, 0, 0]);
        keep_only(&mut [2, plan.read_fd, plan.listener_fd]);

        // Returns 0 (end of file) when the last write end closes, that is when leash is gone.
        let mut held = 0usize;
        loop {
            let room = MAX_HELD_BYTES - held;
            let buffer = if room == 0 { plan.procs.as_mut_ptr() } else { plan.held.add(held) };
            let len = if room == 0 { plan.procs.len() } else { room };
            let n = sys(libc::SYS_read, [plan.read_fd as usize, buffer as usize, len, 0, 0, 0]);
            if n == -(libc::EINTR as isize) {
                continue;
            }
            if n <= 0 {
                break;
            }
            if room > 0 {
                held += n as usize;
            }
        }
        let empty = kill_all(plan);
        if empty {
            remove_held(std::slice::from_raw_parts(plan.held, held));
        }
        // The listener goes first: the port is free once no process of the sandbox is left.
        sys(libc::SYS_close, [plan.listener_fd as usize, 0, 0, 0, 0, 0]);
        if empty {
            0
        } else {
            say(b"leash watchdog: processes still running in the sandbox cgroup after SIGKILL\n");
            1
        }
    }
}

/// Kills every process of the cgroup (`cgroup.kill`, 5.14+; else each pid of `cgroup.procs`)
/// and waits until it is empty or gone. True once it is.
///
/// # Safety
/// Only in the watchdog.
unsafe fn kill_all(plan: &mut Plan) -> bool {
    // SAFETY: raw system calls on the plan's buffers.
    unsafe {
        let kill_file = path_in(plan, b"cgroup.kill\0");
        let fd = sys(libc::SYS_openat, [AT_FDCWD, kill_file, (libc::O_WRONLY | libc::O_CLOEXEC) as usize, 0, 0, 0]);
        let mut killed = false;
        if fd >= 0 {
            killed = sys(libc::SYS_write, [fd as usize, b"1".as_ptr() as usize, 1, 0, 0, 0]) == 1;
            sys(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
        }
        let deadline = now_ns().saturating_add(KILL_TIMEOUT_NS);
        loop {
            let procs = path_in(plan, b"cgroup.procs\0");
            let fd = sys(libc::SYS_openat, [AT_FDCWD, procs, (libc::O_RDONLY | libc::O_CLOEXEC) as usize, 0, 0, 0]);
            if fd < 0 {
                // Gone: another run's reaper emptied and removed a dead leash's sandbox.
                return fd == -(libc::ENOENT as isize);
            }
            let n = sys(libc::SYS_read, [fd as usize, plan.procs.as_mut_ptr() as usize, plan.procs.len(), 0, 0, 0]);
            sys(libc::SYS_close, [fd as usize, 0, 0, 0, 0, 0]);
            let Some(text) = usize::try_from(n).ok().and_then(|n| plan.procs.get(..n)) else { return false };
            if text.iter().all(|b| b.is_ascii_whitespace()) {
                return true;
            }
            if !killed {
                for pid in text.split(|b| *b == b'\n').filter_map(decimal) {
                    sys(libc::SYS_kill, [pid as usize, libc::SIGKILL as usize, 0, 0, 0, 0]);
                }
            }
            if now_ns() > deadline {
                return false;
            }
            let pause = libc::timespec { tv_sec: 0, tv_nsec: 5_000_000 };
            sys(libc::SYS_nanosleep, [&pause as *const _ as usize, 0, 0, 0, 0, 0]);
        }
    }
}

/// Removes each held directory (`<dev> <ino> <path>\0` records) that is still the empty one
/// leash made; a record cut short by the size bound is ignored.
///
/// # Safety
/// Only in the watchdog.
unsafe fn remove_held(records: &[u8]) {
    let at = AT_FDCWD;
    let mut rest = records;
    while let Some(end) = rest.iter().position(|b| *b == 0) {
        // `record` ends with its NUL, which ends the path too.
        let (record, after) = rest.split_at(end + 1);
        rest = after;
        let Some((_, body)) = record.split_last() else { continue };
        let mut parts = body.splitn(3, |b| *b == b' ');
        let (Some(dev), Some(ino), Some(path)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let (Some(dev), Some(ino)) = (decimal(dev), decimal(ino)) else { continue };
        let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
        let nofollow = libc::AT_SYMLINK_NOFOLLOW as usize;
        // SAFETY: `path` is followed by the record's NUL; the kernel fills a local struct.
        let found = unsafe {
            sys(libc::SYS_newfstatat, [at, path.as_ptr() as usize, stat.as_mut_ptr() as usize, nofollow, 0, 0])
        };
        // SAFETY: zero-filled, then filled by the kernel.
        let stat = unsafe { stat.assume_init() };
        if found == 0 && stat.st_mode & libc::S_IFMT == libc::S_IFDIR && stat.st_dev == dev && stat.st_ino == ino {
            // SAFETY: as above.
            unsafe { sys(libc::SYS_unlinkat, [at, path.as_ptr() as usize, libc::AT_REMOVEDIR as usize, 0, 0, 0]) };
        }
    }
}

/// `<cgroup>/<file>` in the plan's path buffer (`file` NUL-terminated), as a pointer.
fn path_in(plan: &mut Plan, file: &[u8]) -> usize {
    let start = plan.cgroup_len;
    if let Some(slot) = plan.cgroup.get_mut(start..start + file.len()) {
        slot.copy_from_slice(file);
    }
    plan.cgroup.as_ptr() as usize
}

/// A decimal number (surrounding whitespace allowed), without allocating or panicking.
fn decimal(text: &[u8]) -> Option<u64> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return None;
    }
    let mut n = 0u64;
    for b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// Closes every descriptor but `keep`.
///
/// # Safety
/// Only in the watchdog (its descriptor table is its own copy).
unsafe fn keep_only(keep: &mut [libc::c_int; 3]) {
    keep.sort_unstable();
    let mut next = 0u32;
    for fd in keep.iter().filter_map(|fd| u32::try_from(*fd).ok()) {
        if fd > next {
            // SAFETY: close_range on the watchdog's own table.
            unsafe { sys(libc::SYS_close_range, [next as usize, (fd - 1) as usize, 0, 0, 0, 0]) };
        }
        next = next.max(fd.saturating_add(1));
    }
    // SAFETY: as above.
    unsafe { sys(libc::SYS_close_range, [next as usize, u32::MAX as usize, 0, 0, 0, 0]) };
}

/// CLOCK_MONOTONIC in nanoseconds.
fn now_ns() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: the kernel fills a local struct.
    unsafe { sys(libc::SYS_clock_gettime, [libc::CLOCK_MONOTONIC as usize, &mut ts as *mut _ as usize, 0, 0, 0, 0]) };
    ts.tv_sec.saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec)
}

/// Writes `message` to stderr.
fn say(message: &[u8]) {
    // SAFETY: write(2) of a static buffer.
    unsafe { sys(libc::SYS_write, [2, message.as_ptr() as usize, message.len(), 0, 0, 0]) };
}

/// The kernel's `struct sigaction` for rt_sigaction(2) (libc's differs from it).
#[repr(C)]
struct KernelSigaction {
    handler: libc::sighandler_t,
    flags: libc::c_ulong,
    restorer: usize,
    mask: u64,
}

/// A system call that returns `-errno` on failure and never touches libc's `errno` (which, in a
/// clone sharing leash's memory, would be the cloning thread's).
///
/// # Safety
/// As the system call itself.
#[cfg(target_arch = "x86_64")]
unsafe fn sys(number: libc::c_long, args: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the x86-64 system call convention; the kernel clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number as isize => ret,
            in("rdi") args[0], in("rsi") args[1], in("rdx") args[2],
            in("r10") args[3], in("r8") args[4], in("r9") args[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// See the x86-64 version.
///
/// # Safety
/// As the system call itself.
#[cfg(target_arch = "aarch64")]
unsafe fn sys(number: libc::c_long, args: [usize; 6]) -> isize {
    let ret: isize;
    // SAFETY: the arm64 system call convention.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") number,
            inlateout("x0") args[0] as isize => ret,
            in("x1") args[1], in("x2") args[2], in("x3") args[3], in("x4") args[4], in("x5") args[5],
            options(nostack),
        );
    }
    ret
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_without_surprises() {
        assert_eq!(decimal(b" 42\n"), Some(42));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal(b"18446744073709551616"), None);
        assert_eq!(decimal(b""), None);
        assert_eq!(decimal(b"4x"), None);
    }
}
