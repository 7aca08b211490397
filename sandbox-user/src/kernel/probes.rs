//! Finding out what this kernel supports by trying it: each probe does the real thing on a
//! throwaway object (a probe cgroup, a do-nothing program) and undoes it.

use anyhow::{anyhow, Context, Result};
use aya::programs::Lsm;
use aya::{Btf, Ebpf};
use sandbox_common::program_names;

use super::cgroup::SandboxCgroup;
use super::generation::{this_generation, Generation};
use super::hold::{self, Held};
use super::mounts;
use super::programs::OBJECT;

/// cgroup v2: mounted, and a child cgroup can be created and removed.
pub fn cgroup_v2() -> Result<String> {
    let root = mounts::cgroup2_root()?;
    let probe = SandboxCgroup::create(&root, &format!("probe-{}", std::process::id()))?;
    probe.remove()?;
    Ok(format!("mounted at {}", root.display()))
}

/// bpffs: mounted (mounting it if needed) and writable.
pub fn bpffs() -> Result<String> {
    let root = mounts::bpffs_root()?;
    let dir = root.join(format!("leash-probe-{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::remove_dir(&dir)?;
    Ok(format!("mounted at {}", root.display()))
}

/// BTF: the kernel's type information can be read and parsed.
pub fn btf() -> Result<String> {
    Btf::from_sys_fs().context("reading /sys/kernel/btf/vmlinux")?;
    Ok("/sys/kernel/btf/vmlinux parsed".into())
}

/// cgroup programs: the host's generation of programs opens (or loads now, every network program
/// passing the verifier), and they attach to a probe cgroup.
pub fn cgroup_programs() -> Result<String> {
    let bpffs = mounts::bpffs_root()?;
    let mut generation = Generation::open_or_create(&bpffs, this_generation())?;
    let root = mounts::cgroup2_root()?;
    let name = format!("probe-{}", std::process::id());
    let probe = SandboxCgroup::create(&root, &name)?;
    let attached = generation.attach(
        probe.path(),
        &name,
        sandbox_common::SANDBOX_RECORD_OWNERS | sandbox_common::SANDBOX_TRANSPARENT,
    );
    let detached = generation.detach(&name, None);
    probe.remove()?;
    attached?;
    detached?;
    let how = if generation.created() { "loaded now" } else { "already loaded" };
    let held = match generation.hooks_held() {
        Held::Yes => format!("hooks held between sandboxes in {}", root.join(hold::CGROUP).display()),
        Held::Refused => "hooks not held between sandboxes (refused: `leash run` said why)".to_owned(),
        Held::NotYet => "hooks not held yet (the next `leash run` holds them)".to_owned(),
    };
    Ok(format!("every network program attaches (programs {}, {how}; {held})", generation.name()))
}

/// BPF-LSM: a do-nothing LSM program loads and attaches.
pub fn bpf_lsm() -> Result<String> {
    let btf = Btf::from_sys_fs().context("BPF-LSM needs BTF")?;
    let mut ebpf = Ebpf::load(OBJECT).context("loading leash's eBPF object")?;
    let prog: &mut Lsm =
        ebpf.program_mut(program_names::LSM_PROBE).ok_or_else(|| anyhow!("LSM probe program missing"))?.try_into()?;
    prog.load("socket_create", &btf).context("loading lsm/socket_create")?;
    prog.attach().context("attaching lsm/socket_create (is `bpf` in the lsm= boot parameter?)")?;
    Ok("lsm/socket_create loaded and attached".into())
}
