//! `lsm/mmap_file` and `lsm/file_mprotect`: with `kernel.exec.allow`, a sandbox maps executable
//! only the files in its exec allowlist map (`LEASH_LSM_EXEC_ALLOW`, by device and inode), so a
//! library of the agent's own cannot be loaded into an allowed executable (`LD_PRELOAD`,
//! `LD_AUDIT`, `LD_LIBRARY_PATH`, `dlopen`) and borrow its `binaries:` identity.
//!
//! What the list holds for mapping: the allowed executables (the kernel maps them at exec, in
//! the task's context), every shared object under the system library directories (`/lib`,
//! `/usr/lib`, ... with the dynamic loader; root-owned, not writable by others), and `*.so*`
//! files under a path `kernel.exec.allow` names — resolved by userspace (`lsm_rules.rs`).
//! Anonymous executable memory (JITs: node, java) stays allowed: `file` (or `vma->vm_file`) is
//! NULL. A file with no link left (memfd, deleted) is refused even if listed, so a library cannot
//! come in as `/proc/self/fd/N` of a memfd. `mprotect` adding `PROT_EXEC` to a mapping of an
//! unlisted file is refused the same way. Both `reqprot` (what the caller asked) and `prot`
//! (after `READ_IMPLIES_EXEC`) are judged. Minimum kernel: 5.7.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use sandbox_common::{lsm_rule, Hook, InodeKey};

use super::{current_sandbox, deny, Event, ALLOW};
use crate::kernel::{field, file_id, layout_set, offset};
use crate::maps::LSM_EXEC_ALLOW;

const PROT_EXEC: u64 = 4;

#[lsm(hook = "mmap_file")]
pub fn leash_lsm_mmap_file(ctx: LsmContext) -> i32 {
    let file: u64 = ctx.arg(0);
    let (reqprot, prot): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    if file == 0 || (reqprot | prot) & PROT_EXEC == 0 {
        return ALLOW;
    }
    decide(Hook::LsmMmap, || file, reqprot | prot)
}

#[lsm(hook = "file_mprotect")]
pub fn leash_lsm_file_mprotect(ctx: LsmContext) -> i32 {
    let vma: u64 = ctx.arg(0);
    let (reqprot, prot): (u64, u64) = (ctx.arg(1), ctx.arg(2));
    if (reqprot | prot) & PROT_EXEC == 0 {
        return ALLOW;
    }
    // `vma` is typed (`struct vm_area_struct *`).
    decide(Hook::LsmMprotect, || field(vma, offset!(vma_file)), reqprot | prot)
}

/// The verdict on mapping `file()` (a typed `struct file *`, NULL for anonymous memory) executable.
#[inline(always)]
fn decide(hook: Hook, file: impl Fn() -> u64, prot: u64) -> i32 {
    let Some(sandbox) = current_sandbox() else {
        return ALLOW;
    };
    if sandbox.policy.rules & lsm_rule::EXEC_ALLOWLIST == 0 {
        return ALLOW;
    }
    let mut event = Event::new(hook);
    event.protocol = prot as u32;
    if !layout_set() {
        return deny(&sandbox, &event);
    }
    let file = file();
    if file == 0 {
        return ALLOW; // anonymous memory
    }
    let Some(id) = file_id(file) else {
        return deny(&sandbox, &event);
    };
    event.target_dev = id.dev;
    event.target_ino = id.ino;
    let key = InodeKey { sandbox: sandbox.id, ino: id.ino, dev: id.dev, _pad: 0 };
    // SAFETY: only presence is read: any entry may be mapped (`exec_right`).
    if id.linked() && unsafe { LSM_EXEC_ALLOW.get(&key) }.is_some() {
        return ALLOW;
    }
    deny(&sandbox, &event)
}
