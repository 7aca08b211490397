//! Loading and attaching leash's BPF-LSM programs (`sandbox-ebpf/src/lsm/`) and registering
//! sandboxes with them.
//!
//! Unlike the network programs, the LSM programs attach to the kernel's security hooks, once per
//! host, and run for every task; `LEASH_LSM_SANDBOXES` (cgroup id -> [`LsmPolicy`]) says which
//! tasks are in a sandbox and what each sandbox is refused. A hook this kernel lacks (no
//! `bpf_lsm_<hook>` in its BTF, e.g. `userns_create` before 6.1) is recorded as unavailable and the
//! others still attach. The attachments live as long as the [`LsmPrograms`] value.
//!
//! Needs a kernel with `CONFIG_BPF_LSM`, `bpf` in the active LSMs (`lsm=` boot parameter) and BTF;
//! minimum kernel 5.7. Not yet used by `leash run`.

use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap, MapData, RingBuf};
use aya::programs::Lsm;
use aya::{Btf, Ebpf};
use sandbox_common::{map_names, program_names, LsmPolicy};

use super::programs::OBJECT;

/// A hook that did not attach, and why.
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub hook: &'static str,
    pub reason: String,
}

/// The loaded and attached BPF-LSM programs and their maps.
pub struct LsmPrograms {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    unavailable: Vec<Unavailable>,
}

impl LsmPrograms {
    /// Loads leash's eBPF object and attaches every LSM program whose hook this kernel has.
    /// Fails only when none attaches (BPF-LSM is off, or the object is unusable).
    pub fn load() -> Result<Self> {
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
        let mut ebpf = aya::EbpfLoader::new().btf(Some(&btf)).load(OBJECT).context("loading leash's eBPF object")?;
        let mut attached = Vec::new();
        let mut unavailable = Vec::new();
        for (program, hook) in program_names::LSM_HOOKS {
            match attach_one(&mut ebpf, program, hook, &btf) {
                Ok(()) => attached.push(hook),
                Err(e) => unavailable.push(Unavailable { hook, reason: format!("{e:#}") }),
            }
        }
        if attached.is_empty() {
            let reasons: Vec<String> = unavailable.iter().map(|u| format!("{}: {}", u.hook, u.reason)).collect();
            return Err(anyhow!("no BPF-LSM hook attached ({})", reasons.join("; ")));
        }
        Ok(Self { ebpf, attached, unavailable })
    }

    /// The hooks whose programs are attached, in attach order.
    pub fn attached(&self) -> Vec<&'static str> {
        self.attached.clone()
    }

    /// The hooks that did not attach, with the reason.
    pub fn unavailable(&self) -> &[Unavailable] {
        &self.unavailable
    }

    /// Makes `cgroup_id` a sandbox refused what `policy` says (replacing any earlier entry).
    pub fn add_sandbox(&mut self, cgroup_id: u64, policy: LsmPolicy) -> Result<()> {
        self.sandboxes()?.insert(cgroup_id, policy, 0).context("writing the LSM sandbox map entry")
    }

    /// Forgets `cgroup_id`; a missing entry is not an error.
    pub fn remove_sandbox(&mut self, cgroup_id: u64) {
        if let Ok(mut m) = self.sandboxes() {
            let _ = m.remove(&cgroup_id);
        }
    }

    /// The deny-event ring buffer of this program set; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(map_names::EVENTS).ok_or_else(|| anyhow!("events map already taken"))?;
        Ok(RingBuf::try_from(map)?)
    }

    fn sandboxes(&mut self) -> Result<HashMap<&mut MapData, u64, LsmPolicy>> {
        let map = self.ebpf.map_mut(map_names::LSM_SANDBOXES).ok_or_else(|| anyhow!("LSM sandbox map missing"))?;
        Ok(HashMap::try_from(map)?)
    }
}

/// Loads `program` against `bpf_lsm_<hook>` and attaches it.
fn attach_one(ebpf: &mut Ebpf, program: &str, hook: &str, btf: &Btf) -> Result<()> {
    let prog = ebpf.program_mut(program).ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?;
    let lsm: &mut Lsm = prog.try_into()?;
    lsm.load(hook, btf).with_context(|| format!("loading {program}"))?;
    lsm.attach().with_context(|| format!("attaching {program}"))?;
    Ok(())
}
