//! Attaching programs the host's generation pinned, with plain bpf(2) calls.
//!
//! A warm start only opens pinned programs and attaches them. aya opens a pinned program as a
//! `Program` by asking for its name, and that first question makes aya probe every feature of
//! the kernel (nine BTF and five program loads, 0.4 ms of every start). Opening the pin and
//! making the link need three commands, so they are made here.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use aya_obj::generated::bpf_attach_type;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const BPF_LINK_CREATE: libc::c_long = 28;

/// `bpf_attr` for `BPF_OBJ_PIN` and `BPF_OBJ_GET`.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `bpf_attr` for `BPF_LINK_CREATE`, as far as a cgroup link needs it.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// `bpf_attr` for `BPF_RAW_TRACEPOINT_OPEN` (with no name: the hook the program was loaded for).
#[repr(C)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// `bpf_attr` for `BPF_PROG_QUERY`, whole: kernels with multi-program attachment write
/// `revision` (its last field) whatever size they are given.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}
const _: () = assert!(std::mem::size_of::<QueryAttr>() == 64);

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// One bpf(2) command; its non-negative result.
///
/// # Safety
/// `attr` is a `#[repr(C)]` prefix of `union bpf_attr` for `cmd` (the kernel reads no further
/// and zero-fills the rest), and every pointer in it is valid for what `cmd` does with it.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: as the caller guarantees.
    let done = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>()) };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(done)
}

/// One bpf(2) command returning a new descriptor.
///
/// # Safety
/// As for [`bpf`].
unsafe fn bpf_fd<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    // SAFETY: as the caller guarantees.
    let fd = unsafe { bpf(cmd, attr)? };
    // SAFETY: a descriptor the kernel just made for this process, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// How long [`PinnedProgram::attach_lsm`] waits for the kernel to release an unpinned link of
/// the same program.
const LSM_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A program opened from its pin.
pub struct PinnedProgram {
    fd: OwnedFd,
}

impl PinnedProgram {
    pub fn open(path: &Path) -> io::Result<Self> {
        let path = c_path(path)?;
        // SAFETY: the path lives through the call.
        let fd = unsafe { bpf_fd(BPF_OBJ_GET, &ObjAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0 })? };
        Ok(Self { fd })
    }

    /// Links the program to the cgroup open as `cgroup` at `attach_type`. Links always coexist
    /// with the cgroup's other programs.
    pub fn attach_cgroup(&self, cgroup: BorrowedFd<'_>, attach_type: bpf_attach_type) -> io::Result<OwnedFd> {
        let attr = LinkCreateAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: attach_type as u32,
            flags: 0,
        };
        // SAFETY: no pointers; the descriptors live through the call.
        unsafe { bpf_fd(BPF_LINK_CREATE, &attr) }
    }

    /// The program's run time and run count (counted while BPF statistics are on).
    pub fn stats(&self) -> io::Result<(std::time::Duration, u64)> {
        // SAFETY: a plain C struct of integers and pointers, for which zero is valid.
        let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
        let attr = InfoAttr {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: std::mem::size_of_val(&info) as u32,
            info: std::ptr::addr_of_mut!(info) as u64,
        };
        // SAFETY: the kernel writes at most `info_len` bytes into `info`, which lives through the
        // call; the array pointers in it are zero, so nothing else is written.
        unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)? };
        Ok((std::time::Duration::from_nanos(info.run_time_ns), info.run_cnt))
    }

    /// Links a BPF-LSM program to the hook it was loaded for (5.7+).
    ///
    /// The kernel refuses a second link of one program to one hook (`EBUSY`), and it releases an
    /// unpinned link from a worker, after the unpin has returned: a sandbox starting just after
    /// the last one ended (its links unpinned) met the old link still there. So `EBUSY` is
    /// retried for up to [`LSM_RELEASE_WAIT`].
    pub fn attach_lsm(&self) -> io::Result<OwnedFd> {
        let attr = RawTracepointAttr { name: 0, prog_fd: self.fd.as_raw_fd() as u32, _pad: 0 };
        let deadline = std::time::Instant::now() + LSM_RELEASE_WAIT;
        loop {
            // SAFETY: no name pointer; the descriptor lives through the call.
            match unsafe { bpf_fd(BPF_RAW_TRACEPOINT_OPEN, &attr) } {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                done => return done,
            }
        }
    }
}

/// Ids of the programs attached to the cgroup open as `cgroup` at `attach_type` (its own, not
/// those it inherits); an error (`ENOSPC`) when there are more than 64.
pub fn attached_to_cgroup(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..QueryAttr::default()
    };
    let size = std::mem::size_of::<QueryAttr>();
    // SAFETY: `attr` is the `BPF_PROG_QUERY` part of `union bpf_attr`, every field the kernel may
    // write included; it writes at most `prog_cnt` ids into `ids` and the rest into `attr`, both
    // living through the call (the other id arrays are null, so nothing is written there).
    let done = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, std::ptr::addr_of_mut!(attr), size) };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ids[..(attr.prog_cnt as usize).min(ids.len())].to_vec())
}

/// Pins `link` at `path`: it then stays attached when every descriptor of it is closed.
pub fn pin(link: impl AsFd, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    let attr = ObjAttr { pathname: path.as_ptr() as u64, bpf_fd: link.as_fd().as_raw_fd() as u32, file_flags: 0 };
    // SAFETY: the path and descriptor live through the call.
    unsafe { bpf(BPF_OBJ_PIN, &attr)? };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pin_is_an_error_naming_why() {
        let e = PinnedProgram::open(Path::new("/sys/fs/bpf/leash-no-such-pin")).err().expect("no such pin");
        assert!(matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EPERM) | Some(libc::EACCES)), "{e}");
        assert!(PinnedProgram::open(Path::new("/a\0b")).is_err());
    }
}
