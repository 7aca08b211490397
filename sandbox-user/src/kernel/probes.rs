//! Finding out what this kernel supports by trying it: each probe does the real thing on a
//! throwaway object (a probe cgroup, a do-nothing program) and undoes it.

use std::os::fd::AsFd;

use anyhow::{anyhow, Context, Result};
use aya::programs::{CgroupAttachMode, CgroupSockAddr, Lsm};
use aya::{Btf, Ebpf};
use sandbox_common::program_names;

use super::cgroup::SandboxCgroup;
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

/// cgroup programs: every network program passes the verifier, and connect4 attaches to a probe
/// cgroup.
pub fn cgroup_programs() -> Result<String> {
    super::programs::NetPrograms::load()?;
    let root = mounts::cgroup2_root()?;
    let probe = SandboxCgroup::create(&root, &format!("probe-{}", std::process::id()))?;
    let result = (|| -> Result<()> {
        let mut ebpf = super::programs::load_object()?;
        let prog: &mut CgroupSockAddr =
            ebpf.program_mut(program_names::CONNECT4).ok_or_else(|| anyhow!("connect4 program missing"))?.try_into()?;
        prog.load().context("loading cgroup/connect4")?;
        let dir = probe.dir()?;
        prog.attach(dir.as_fd(), CgroupAttachMode::Single).context("attaching cgroup/connect4")?;
        Ok(())
    })();
    probe.remove()?;
    result.map(|()| "all network programs load; cgroup/connect4 attaches".into())
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
