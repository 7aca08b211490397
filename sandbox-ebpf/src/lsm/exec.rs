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

use super::{current_sandbox, deny, Event, ALLOW};
use crate::kernel::{field, file_id, offset};
use crate::maps::LSM_EXEC_ALLOW;

#[lsm(hook = "bprm_check_security")]
pub fn leash_lsm_bprm_check_security(ctx: LsmContext) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.rules & lsm_rule::EXEC_ALLOWLIST == 0 {
        return ALLOW;
    }
    // `bprm` is typed (`struct linux_binprm *`), and so is the file loaded through it.
    let bprm: u64 = ctx.arg(0);
    let mut event = Event::new(Hook::LsmExec);
    if let Some(id) = file_id(field(bprm, offset!(binprm_file))) {
        let key = InodeKey { sandbox: sandbox.id, ino: id.ino, dev: id.dev, _pad: 0 };
        // SAFETY: the value is copied out at once.
        let right = unsafe { LSM_EXEC_ALLOW.get(&key) }.copied().unwrap_or(0);
        if id.linked() && right & exec_right::RUN != 0 {
            return ALLOW;
        }
        event.target_dev = id.dev;
        event.target_ino = id.ino;
    }
    // Refused: only now is the name worth copying, for the audit record.
    let filename: u64 = field(bprm, offset!(binprm_filename));
    // SAFETY: the helper bounds the copy by the buffer and checks the source address.
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(filename as *const u8, &mut event.path) };
    deny(&sandbox, &event)
}
