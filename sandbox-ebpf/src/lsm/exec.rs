//! `lsm/bprm_check_security`: with `kernel.exec.allow`, a sandbox runs only the executables the
//! policy names, identified by (device, inode) — resolved by userspace when the sandbox starts —
//! so renaming, copying to a new path or linking does not help. The hook sees the file the
//! kernel is about to run, once per binfmt step (a `#!` script, then its interpreter), so it
//! also refuses `execveat(AT_EMPTY_PATH)` of a memfd or a deleted file (no inode in the list; a
//! file with no link left is refused even if listed). `ld.so /path/bin` runs ld.so itself: it is
//! refused unless the policy names the loader. Library entries of the same map (`exec_right::MAP`:
//! mappable, see `mmap.rs`) do not run. Minimum kernel: 5.7.

use aya_ebpf::{helpers::bpf_probe_read_kernel_str_bytes, macros::lsm, programs::LsmContext};
use sandbox_common::{exec_right, lsm_rule, Hook, InodeKey};

use super::kernel::{file_identity, read_u32, read_u64};
use super::{current_sandbox, deny, layout, Event, ALLOW};
use crate::maps::LSM_EXEC_ALLOW;

#[lsm(hook = "bprm_check_security")]
pub fn leash_lsm_bprm_check_security(ctx: LsmContext) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.rules & lsm_rule::EXEC_ALLOWLIST == 0 {
        return ALLOW;
    }
    let bprm: u64 = ctx.arg(0);
    let mut event = Event::new(Hook::LsmExec);
    let Some(layout) = layout() else {
        return deny(&sandbox, &event);
    };
    if let Some(filename) = read_u64(bprm, layout.binprm_filename) {
        // SAFETY: the helper bounds the copy by the buffer and checks the source address.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(filename as *const u8, &mut event.path) };
    }
    let Some((dev, ino, inode)) = read_u64(bprm, layout.binprm_file).and_then(|f| file_identity(f, &layout)) else {
        return deny(&sandbox, &event);
    };
    let nlink = read_u32(inode, layout.inode_nlink).unwrap_or(0);
    event.target_dev = dev;
    event.target_ino = ino;
    let key = InodeKey { sandbox: sandbox.id, ino, dev, _pad: 0 };
    // SAFETY: the value is copied out at once.
    let right = unsafe { LSM_EXEC_ALLOW.get(&key) }.copied().unwrap_or(0);
    if nlink != 0 && right & exec_right::RUN != 0 {
        return ALLOW;
    }
    deny(&sandbox, &event)
}
