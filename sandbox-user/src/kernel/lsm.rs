//! Registering sandboxes with leash's BPF-LSM programs (`sandbox-ebpf/src/lsm/`): the maps.
//!
//! Unlike the network programs, the LSM programs attach to the kernel's security hooks, not to a
//! cgroup: they run for every task, and the maps say which tasks are in a sandbox and what each
//! sandbox is refused (`LEASH_LSM_SANDBOXES`, keyed by cgroup id, plus the inode and unix-socket
//! lists). A hook this kernel lacks (no `bpf_lsm_<hook>` in its BTF, e.g. `userns_create` before
//! 6.1) is recorded as unavailable and the others still attach; callers compare that with what
//! their policy needs ([`LsmRules::required_hooks`]). `generation.rs` loads, attaches and
//! detaches the programs.
//!
//! The kernel struct offsets the programs read are not in a map: `generation.rs` sets them as a
//! read-only global when it loads the object (`KernelBtf::lsm_layout`).
//!
//! Needs a kernel with `CONFIG_BPF_LSM`, `bpf` in the active LSMs (`lsm=` boot parameter) and BTF;
//! minimum kernel 5.7.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap, MapData};
use aya::Ebpf;
use sandbox_common::{exec_right, lsm_rule, map_names, program_names, InodeKey, LsmPolicy, UnixKey, MAX_SANDBOX_LEVEL};

use super::lsm_rules::{FileId, LsmRules};
use super::pins;
use super::programs::sandbox_net;

/// A hook that did not attach, and why.
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub hook: &'static str,
    pub reason: String,
}

/// What one sandbox is registered with: its rules, where it sits and what it may reach.
pub struct Registration<'a> {
    pub cgroup_id: u64,
    /// Its cgroup's depth below the cgroup2 root (the root is level 0).
    pub level: u32,
    /// Whether cgroups below it belong to it too.
    pub descendants: bool,
    pub rules: &'a LsmRules,
    /// The proxy, the one IP address its sockets may reach (`lsm_rule::PROXY_ONLY`).
    pub proxy: Option<SocketAddr>,
}

/// The BPF-LSM maps: which cgroups are sandboxes, their lists, and the cgroup levels of sandboxes
/// with descendants. Taken from a freshly loaded object, or opened from pins.
pub struct LsmMaps {
    sandboxes: HashMap<MapData, u64, LsmPolicy>,
    exec_allow: HashMap<MapData, InodeKey, u8>,
    deny_open: HashMap<MapData, InodeKey, u8>,
    unix_allow: HashMap<MapData, UnixKey, u8>,
    levels_map: Array<MapData, u32>,
    /// What `levels_map` holds: bit `n` for a sandbox with descendants at cgroup level `n`.
    levels: u32,
}

/// The LSM maps by name, in the order [`LsmMaps`] holds them.
pub const LSM_MAPS: [&str; 5] = [
    map_names::LSM_SANDBOXES,
    map_names::LSM_EXEC_ALLOW,
    map_names::LSM_DENY_OPEN,
    map_names::LSM_UNIX_ALLOW,
    map_names::LSM_LEVELS,
];

impl LsmMaps {
    /// Takes the maps out of a loaded object (before any program attaches).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take =
            |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"));
        Ok(Self {
            sandboxes: HashMap::try_from(take(map_names::LSM_SANDBOXES)?)?,
            exec_allow: HashMap::try_from(take(map_names::LSM_EXEC_ALLOW)?)?,
            deny_open: HashMap::try_from(take(map_names::LSM_DENY_OPEN)?)?,
            unix_allow: HashMap::try_from(take(map_names::LSM_UNIX_ALLOW)?)?,
            levels_map: Array::try_from(take(map_names::LSM_LEVELS)?)?,
            levels: 0,
        })
    }

    /// Opens the maps pinned as `<dir>/<map name>`, with the levels they hold.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let open = |name: &str| pins::open_map(&dir.join(name));
        let levels_map: Array<MapData, u32> = Array::try_from(open(map_names::LSM_LEVELS)?)?;
        let levels = levels_map.get(&0, 0).context("reading the pinned sandbox levels")?;
        Ok(Self {
            sandboxes: HashMap::try_from(open(map_names::LSM_SANDBOXES)?)?,
            exec_allow: HashMap::try_from(open(map_names::LSM_EXEC_ALLOW)?)?,
            deny_open: HashMap::try_from(open(map_names::LSM_DENY_OPEN)?)?,
            unix_allow: HashMap::try_from(open(map_names::LSM_UNIX_ALLOW)?)?,
            levels_map,
            levels,
        })
    }

    /// Makes `cgroup_id` a sandbox refused only the flags in `policy` (no lists, no proxy rule).
    pub fn add_sandbox(&mut self, cgroup_id: u64, policy: LsmPolicy) -> Result<()> {
        self.sandboxes.insert(cgroup_id, policy, 0).context("writing the LSM sandbox map entry")
    }

    /// Registers a sandbox with its full rules: lists first, then the sandbox entry that puts
    /// them in force.
    pub fn register(&mut self, r: &Registration<'_>) -> Result<()> {
        let id = r.cgroup_id;
        self.replace_lists(id, r.rules)?;
        let mut policy = LsmPolicy { deny: r.rules.deny, rules: r.rules.rules, ..Default::default() };
        if let Some(proxy) = r.proxy {
            let net = sandbox_net(proxy, false);
            policy.rules |= lsm_rule::PROXY_ONLY;
            policy.proxy_addr = net.addr;
            policy.proxy_port = net.port;
        }
        if r.descendants {
            if r.level >= MAX_SANDBOX_LEVEL {
                return Err(anyhow!("cgroup level {} is too deep for a sandbox with descendants", r.level));
            }
            policy.rules |= lsm_rule::DESCENDANTS;
            self.levels |= 1 << r.level;
            self.levels_map.set(0, self.levels, 0).context("writing the sandbox levels map")?;
        }
        self.add_sandbox(id, policy)
    }

    /// Replaces the exec allowlist (executables to run, libraries to map), open deny list and
    /// unix allowlist of sandbox `id` (on reload). New entries go in before stale ones leave, so
    /// nothing allowed lapses.
    pub fn replace_lists(&mut self, id: u64, rules: &LsmRules) -> Result<()> {
        let inode = |f: &FileId| InodeKey { sandbox: id, ino: f.ino, dev: f.dev, _pad: 0 };
        // A file both listed to run and found as a library runs.
        let mut exec: BTreeMap<InodeKey, u8> = rules.libraries.keys().map(|f| (inode(f), exec_right::MAP)).collect();
        exec.extend(rules.exec.keys().map(|f| (inode(f), exec_right::RUN)));
        let exec: Vec<(InodeKey, u8)> = exec.into_iter().collect();
        let deny: Vec<(InodeKey, u8)> = rules.deny_open.keys().map(|f| (inode(f), 1)).collect();
        sync_set(&mut self.exec_allow, map_names::LSM_EXEC_ALLOW, id, |k| k.sandbox, &exec)?;
        sync_set(&mut self.deny_open, map_names::LSM_DENY_OPEN, id, |k| k.sandbox, &deny)?;
        let unix: Vec<_> = rules.unix_keys(id).map(|k| (k, 1)).collect();
        sync_set(&mut self.unix_allow, map_names::LSM_UNIX_ALLOW, id, |k| k.sandbox, &unix)?;
        Ok(())
    }

    /// Forgets sandbox `cgroup_id` and its lists; missing entries are not an error.
    pub fn remove_sandbox(&mut self, cgroup_id: u64) {
        let _ = self.sandboxes.remove(&cgroup_id);
        let _ = self.replace_lists(cgroup_id, &LsmRules::default());
    }

    /// Copies the entries of sandboxes `ids` in `old` (another generation's maps) into these.
    pub fn copy_from(&mut self, old: &LsmMaps, ids: &[u64]) -> Result<()> {
        copy_entries(&old.sandboxes, &mut self.sandboxes, |k| ids.contains(k))?;
        copy_entries(&old.exec_allow, &mut self.exec_allow, |k| ids.contains(&k.sandbox))?;
        copy_entries(&old.deny_open, &mut self.deny_open, |k| ids.contains(&k.sandbox))?;
        copy_entries(&old.unix_allow, &mut self.unix_allow, |k| ids.contains(&k.sandbox))
    }

    /// Every cgroup id with an LSM sandbox entry.
    pub fn entries(&self) -> Vec<u64> {
        self.sandboxes.keys().filter_map(|k| k.ok()).collect()
    }
}

/// Inserts every entry of `from` whose key is `wanted` into `to`.
fn copy_entries<K: aya::Pod, V: aya::Pod>(
    from: &HashMap<MapData, K, V>,
    to: &mut HashMap<MapData, K, V>,
    wanted: impl Fn(&K) -> bool,
) -> Result<()> {
    for entry in from.iter() {
        let (k, v) = entry?;
        if wanted(&k) {
            to.insert(k, v, 0)?;
        }
    }
    Ok(())
}

/// Makes the entries of sandbox `id` in set-map `set` (named `name`) exactly `want`.
fn sync_set<K: aya::Pod + Ord>(
    set: &mut HashMap<MapData, K, u8>,
    name: &str,
    id: u64,
    sandbox_of: impl Fn(&K) -> u64,
    want: &[(K, u8)],
) -> Result<()> {
    for (key, value) in want {
        set.insert(key, value, 0).with_context(|| format!("writing {name} (is the list larger than the map?)"))?;
    }
    let wanted: std::collections::BTreeSet<&K> = want.iter().map(|(k, _)| k).collect();
    let stale: Vec<K> =
        set.keys().filter_map(|k| k.ok()).filter(|k| sandbox_of(k) == id && !wanted.contains(k)).collect();
    for key in stale {
        let _ = set.remove(&key);
    }
    Ok(())
}

/// The program that attaches to `hook`.
pub fn program_of(hook: &str) -> Option<&'static str> {
    program_names::LSM_HOOKS.iter().find(|h| h.hook == hook).map(|h| h.program)
}

/// The hook program `program` attaches to.
pub fn hook_of(program: &str) -> Option<&'static str> {
    program_names::LSM_HOOKS.iter().find(|h| h.program == program).map(|h| h.hook)
}

#[cfg(test)]
mod tests {
    use sandbox_common::program_names::{LSM_HOOKS, LSM_PROBE};

    /// The hook table and the object cannot drift apart: every BPF-LSM program built is in the
    /// table (and named after its hook), and every entry of the table was built.
    #[test]
    fn the_hook_table_lists_exactly_the_lsm_programs_of_the_object() {
        let object = aya_obj::Object::parse(super::super::programs::OBJECT).expect("the built object parses");
        let mut built: Vec<&str> = object
            .programs
            .iter()
            .filter(|(_, p)| matches!(p.section, aya_obj::ProgramSection::Lsm { .. }))
            .map(|(name, _)| name.as_str())
            .filter(|name| *name != LSM_PROBE)
            .collect();
        built.sort_unstable();
        let mut listed: Vec<&str> = LSM_HOOKS.iter().map(|h| h.program).collect();
        listed.sort_unstable();
        assert_eq!(built, listed);
        for h in LSM_HOOKS {
            assert_eq!(h.program, format!("leash_lsm_{}", h.hook), "program named after its hook");
        }
    }
}
