//! The host's pathname unix sockets, found as the sandbox is made (a few milliseconds before the
//! agent starts, while leash waits for its TLS material) so that the agent's mount namespace
//! can cover each one (`mount_ns`): a service listening under `/var/lib`, `/srv` or a home
//! directory — the places an emptied `/run` and a private `/tmp` do not reach — is then not there
//! for the agent to connect to, on any kernel, with or without BPF-LSM.
//!
//! Every network namespace's `/proc/<pid>/net/unix` is read (one process per namespace), so a
//! container's socket bind-mounted onto the host at the same path is found too. What it cannot
//! find: a socket bound after that, and one reached under another name than its
//! binder used (a bind mount of the socket elsewhere, a link to it); those the kernel's unix
//! rules cover where BPF-LSM exists, and file permissions elsewhere.

use std::collections::HashSet;
use std::os::unix::fs::FileTypeExt as _;
use std::path::{Path, PathBuf};

use crate::kernel::proc_stat;

/// How many sockets are covered at most; more than this is a host leash does not expect.
pub const MAX_COVERED: usize = 4096;

/// The bound paths in one `/proc/net/unix` table: the eighth column, when it is an absolute path
/// (abstract names start with `@`, unbound sockets have none).
pub fn bound_paths(table: &str) -> impl Iterator<Item = &str> {
    table.lines().skip(1).filter_map(|line| {
        // Seven fields of fixed form, then the path, which may itself hold spaces.
        let mut rest = line.trim_start();
        for _ in 0..7 {
            let end = rest.find(' ')?;
            rest = rest[end..].trim_start_matches(' ');
        }
        rest.starts_with('/').then_some(rest)
    })
}

/// Pathname sockets bound on this host now, as sockets at those paths in leash's own view, not
/// under `skip` (directories the agent gets empty anyway) and not in `keep` (sockets the policy
/// lets the agent reach). Sorted, at most [`MAX_COVERED`]; the count of those left out is returned
/// with them.
pub fn find(skip: &[&Path], keep: &[PathBuf]) -> (Vec<PathBuf>, usize) {
    let mut namespaces = HashSet::new();
    let mut found = HashSet::new();
    let proc_dir = std::fs::File::open("/proc");
    let kernel_threads = kernel_threads();
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    for entry in pids {
        let name = entry.file_name();
        if !name.as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        if std::str::from_utf8(name.as_encoded_bytes())
            .ok()
            .and_then(|p| p.parse().ok())
            .is_some_and(|p: u32| kernel_threads.contains(&p))
        {
            continue;
        }
        let Some(netns) = proc_dir.as_ref().ok().and_then(|d| net_namespace(d, name.as_encoded_bytes())) else {
            continue;
        };
        if !namespaces.insert(netns) {
            continue;
        }
        let Ok(table) = std::fs::read_to_string(entry.path().join("net/unix")) else { continue };
        found.extend(bound_paths(&table).map(PathBuf::from));
    }
    let mut sockets: Vec<PathBuf> = found
        .into_iter()
        .filter(|p| !skip.iter().any(|d| p.starts_with(d)))
        .filter(|p| !keep.contains(p))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .collect();
    sockets.sort();
    let left_out = sockets.len().saturating_sub(MAX_COVERED);
    sockets.truncate(MAX_COVERED);
    (sockets, left_out)
}

/// `PF_KTHREAD`, in the flags of `/proc/<pid>/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The kernel's own processes: kthreadd's children, when pid 2 is kthreadd (a kernel thread by
/// its flags, which no process can set; in a container's pid namespace pid 2 is an ordinary
/// process, and nothing is skipped). They are the kernel threads, which never leave the initial
/// network namespace, and the programs the kernel runs itself (modprobe, a `core_pattern` pipe),
/// which start in it; that namespace is read through kthreadd. Skipping them saves a lookup in
/// `/proc` each, most of the processes of an idle host (65 of 73 here; hundreds on a host with
/// many CPUs). What this misses: a socket such a root-run helper binds after moving itself to
/// another network namespace (BPF-LSM's unix rules cover it where they run). Empty where `/proc`
/// does not list children (`CONFIG_PROC_CHILDREN`).
fn kernel_threads() -> HashSet<u32> {
    let kthreadd = std::fs::read_to_string("/proc/2/stat").ok().and_then(|s| proc_stat::flags(&s));
    if kthreadd.is_none_or(|flags| flags & PF_KTHREAD == 0) {
        return HashSet::new();
    }
    let children = std::fs::read_to_string("/proc/2/task/2/children").unwrap_or_default();
    children.split_ascii_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// The network namespace of process `pid` (its decimal digits) as `/proc/<pid>/ns/net` names it
/// (`net:[<inode>]`). Read as a link, which asks the kernel less than a stat through it (half the
/// time, with one such call per process on the host).
fn net_namespace(proc_dir: &std::fs::File, pid: &[u8]) -> Option<Vec<u8>> {
    use std::os::fd::AsRawFd as _;
    let mut path = [0u8; 32];
    let rest = b"/ns/net\0";
    if pid.len() + rest.len() > path.len() {
        return None;
    }
    path[..pid.len()].copy_from_slice(pid);
    path[pid.len()..pid.len() + rest.len()].copy_from_slice(rest);
    let mut link = [0u8; 64];
    // SAFETY: a NUL-terminated path relative to an open directory, and a buffer of its length.
    let n =
        unsafe { libc::readlinkat(proc_dir.as_raw_fd(), path.as_ptr().cast(), link.as_mut_ptr().cast(), link.len()) };
    let n = usize::try_from(n).ok().filter(|&n| n < link.len())?;
    Some(link[..n].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_eighth_column_spaces_and_all() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 23456 /var/lib/app/app.sock\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 23457 @/tmp/.X11-unix/X0\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 23458\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 23459 /srv/my app/s.sock\n";
        let paths: Vec<&str> = bound_paths(table).collect();
        assert_eq!(paths, ["/var/lib/app/app.sock", "/srv/my app/s.sock"]);
    }

    /// The namespace is named by the link's text, the same for two processes of one namespace.
    #[test]
    fn a_processs_network_namespace_is_read_from_its_link() {
        let proc_dir = std::fs::File::open("/proc").unwrap();
        let ours = net_namespace(&proc_dir, std::process::id().to_string().as_bytes()).unwrap();
        let expected = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(ours, expected.as_os_str().as_encoded_bytes());
        assert!(ours.starts_with(b"net:["));
        assert!(net_namespace(&proc_dir, b"999999999").is_none(), "no such process");
    }

    /// Every process skipped is a child of kthreadd, as `/proc` says, and all are where pid 2 is
    /// kthreadd (kernel threads among them).
    #[test]
    fn only_kthreadds_children_are_skipped() {
        let skipped = kernel_threads();
        let parent = |pid: u32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            stat.rsplit_once(')')?.1.split_ascii_whitespace().nth(1)?.parse::<u32>().ok()
        };
        let kthreadd = std::fs::read_to_string("/proc/2/stat").ok().and_then(|s| proc_stat::flags(&s));
        if kthreadd.is_some_and(|f| f & PF_KTHREAD != 0) && Path::new("/proc/2/task/2/children").exists() {
            assert!(!skipped.is_empty(), "kthreadd has no children?");
            let listed: Vec<u32> = std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|pid| parent(*pid) == Some(2))
                .collect();
            // Those still there; one may have started or ended in between.
            assert!(listed.iter().filter(|p| skipped.contains(p)).count() + 2 >= listed.len(), "{listed:?}");
        }
        for pid in &skipped {
            // A process gone since is gone.
            if let Some(ppid) = parent(*pid) {
                assert_eq!(ppid, 2, "pid {pid} is not kthreadd's child");
            }
        }
        assert!(!skipped.contains(&std::process::id()));
    }

    #[test]
    fn a_socket_bound_here_is_found_and_skipped_or_kept_on_request() {
        let dir = std::env::temp_dir().join(format!("leash-host-sockets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(find(&[], &[]).0.contains(&path));
        assert!(!find(&[dir.as_path()], &[]).0.contains(&path));
        assert!(!find(&[], std::slice::from_ref(&path)).0.contains(&path));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
