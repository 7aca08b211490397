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
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, MapData};
use aya::Ebpf;
use sandbox_common::{
    deny_open_filter_slot, exec_right, lsm_filter_slot, lsm_rule, map_names, prefilter, program_names, InodeKey,
    LsmPolicy, SandboxNet, UnixKey, MAX_SANDBOX_LEVEL, SANDBOX_TRANSPARENT,
};

use super::lsm_rules::{FileId, LsmRules};
use super::pins;

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
    /// The sandbox's proxy, the one IP address its sockets may reach (`lsm_rule::PROXY_ONLY`),
    /// as its network entry holds it (with the transparent ports in transparent mode).
    pub proxy: Option<SandboxNet>,
}

/// The BPF-LSM maps: which cgroups are sandboxes, their lists, and the cgroup levels of sandboxes
/// with descendants. Taken from a freshly loaded object, or opened from pins.
///
/// Every process that changes them holds the host lock (`generation.rs`): the pre-filter counts
/// (`LEASH_LSM_FILTER`, `LEASH_LSM_DENY_OPEN_FILTER`) and the levels are read, changed and written
/// back, and a lost update could leave a slot at zero that an entry needs, which the programs
/// read as "not a sandbox" or "no sandbox denies this file".
pub struct LsmMaps {
    sandboxes: HashMap<MapData, u64, LsmPolicy>,
    exec_allow: HashMap<MapData, InodeKey, u8>,
    deny_open: HashMap<MapData, InodeKey, u8>,
    /// Per slot, how many `deny_open` entries name a file in it.
    deny_open_filter: Array<MapData, u32>,
    unix_allow: HashMap<MapData, UnixKey, u8>,
    filter: Array<MapData, u32>,
    /// Bit `n`: a sandbox with descendants at cgroup level `n`.
    levels: Array<MapData, u32>,
}

impl LsmMaps {
    /// Takes the maps out of a loaded object (before any program attaches).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let mut take =
            |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"));
        Ok(Self {
            sandboxes: HashMap::try_from(take(map_names::LSM_SANDBOXES)?)?,
            exec_allow: HashMap::try_from(take(map_names::LSM_EXEC_ALLOW)?)?,
            deny_open: HashMap::try_from(take(map_names::LSM_DENY_OPEN)?)?,
            deny_open_filter: Array::try_from(take(map_names::LSM_DENY_OPEN_FILTER)?)?,
            unix_allow: HashMap::try_from(take(map_names::LSM_UNIX_ALLOW)?)?,
            filter: Array::try_from(take(map_names::LSM_FILTER)?)?,
            levels: Array::try_from(take(map_names::LSM_LEVELS)?)?,
        })
    }

    /// Opens the maps pinned as `<dir>/<map name>`.
    pub fn open_pinned(dir: &Path) -> Result<Self> {
        let open = |name: &str| pins::open_map(&dir.join(name));
        Ok(Self {
            sandboxes: HashMap::try_from(open(map_names::LSM_SANDBOXES)?)?,
            exec_allow: HashMap::try_from(open(map_names::LSM_EXEC_ALLOW)?)?,
            deny_open: HashMap::try_from(open(map_names::LSM_DENY_OPEN)?)?,
            deny_open_filter: Array::try_from(open(map_names::LSM_DENY_OPEN_FILTER)?)?,
            unix_allow: HashMap::try_from(open(map_names::LSM_UNIX_ALLOW)?)?,
            filter: Array::try_from(open(map_names::LSM_FILTER)?)?,
            levels: Array::try_from(open(map_names::LSM_LEVELS)?)?,
        })
    }

    /// Makes `cgroup_id` a sandbox refused only the flags in `policy` (no lists, no proxy rule).
    /// A new entry's pre-filter count is raised first, so no program sees it behind a zero.
    pub fn add_sandbox(&mut self, cgroup_id: u64, policy: LsmPolicy) -> Result<()> {
        if self.sandboxes.get(&cgroup_id, 0).is_err() {
            self.count(cgroup_id, Change::Add)?;
        }
        self.sandboxes.insert(cgroup_id, policy, 0).context("writing the LSM sandbox map entry")
    }

    /// Raises or lowers the pre-filter count of `cgroup_id`'s slot by one.
    fn count(&mut self, cgroup_id: u64, change: Change) -> Result<()> {
        adjust(&mut self.filter, LSM_FILTER_LABEL, lsm_filter_slot(cgroup_id), change)
    }

    /// The open deny list's pre-filter count of the slot of files with inode number `ino`.
    pub fn deny_open_filter_count(&self, ino: u64) -> Result<u32> {
        Ok(prefilter::decode(self.deny_open_filter.get(&deny_open_filter_slot(ino), 0)?))
    }

    /// The pre-filter count of `cgroup_id`'s slot.
    pub fn filter_count(&self, cgroup_id: u64) -> Result<u32> {
        Ok(prefilter::decode(self.filter.get(&lsm_filter_slot(cgroup_id), 0)?))
    }

    /// Registers a sandbox with its full rules: lists first, then the sandbox entry that puts
    /// them in force. On failure nothing of it is left: list entries of a sandbox without an
    /// entry would never be removed, and the node-wide lists would fill for good (a full
    /// allowlist map refuses every later sandbox with one).
    pub fn register(&mut self, r: &Registration<'_>) -> Result<()> {
        let registered = self.register_entries(r);
        if registered.is_err() {
            self.remove_sandbox(r.cgroup_id);
        }
        registered
    }

    /// Replaces a registered sandbox's rules (a reload, a replaced `deny_open` file). On
    /// failure the sandbox stays registered, with its old entries and some of the new (new
    /// entries go in before stale ones leave): never without its rules, as a removal would leave
    /// it. A sandbox removed meanwhile is not made again.
    pub fn update(&mut self, r: &Registration<'_>) -> Result<()> {
        self.still_registered(r.cgroup_id)?;
        self.register_entries(r)
    }

    /// An error unless sandbox `cgroup_id` is registered: what changes it must not make it again.
    fn still_registered(&self, cgroup_id: u64) -> Result<()> {
        if self.sandboxes.get(&cgroup_id, 0).is_err() {
            bail!("the sandbox is no longer registered with the BPF-LSM programs");
        }
        Ok(())
    }

    /// Adds files `added` to registered sandbox `cgroup_id`'s open deny list and takes
    /// `removed` out: only those entries are written (a replaced file followed, not the whole
    /// list synced). Each addition is counted in the pre-filter before it goes in; a removal
    /// lowers it after it is gone.
    pub fn change_deny_open(&mut self, cgroup_id: u64, added: &[FileId], removed: &[FileId]) -> Result<()> {
        self.still_registered(cgroup_id)?;
        let key = |f: &FileId| InodeKey { sandbox: cgroup_id, ino: f.ino, dev: f.dev, _pad: 0 };
        for file in added {
            let key = key(file);
            if self.deny_open.get(&key, 0).is_err() {
                let filter = Some(deny_open_counts(&mut self.deny_open_filter));
                insert_counted(&mut self.deny_open, map_names::LSM_DENY_OPEN, filter, &key, 1)?;
            }
        }
        for file in removed {
            let key = key(file);
            if self.deny_open.remove(&key).is_ok() {
                let _ = adjust(&mut self.deny_open_filter, DENY_OPEN_FILTER_LABEL, file_slot(&key), Change::Remove);
            }
        }
        Ok(())
    }

    fn register_entries(&mut self, r: &Registration<'_>) -> Result<()> {
        let id = r.cgroup_id;
        self.replace_lists(id, r.rules)?;
        let mut policy = LsmPolicy { deny: r.rules.deny, rules: r.rules.rules, ..Default::default() };
        if let Some(net) = r.proxy {
            if net.flags & SANDBOX_TRANSPARENT != 0 {
                policy.rules |= lsm_rule::TRANSPARENT;
                policy.transparent_port = net.transparent_port;
                policy.dns_port = net.dns_port;
            }
            policy.rules |= lsm_rule::PROXY_ONLY;
            policy.proxy_addr = net.addr;
            policy.proxy_port = net.port;
        }
        if r.descendants {
            if r.level >= MAX_SANDBOX_LEVEL {
                return Err(anyhow!("cgroup level {} is too deep for a sandbox with descendants", r.level));
            }
            policy.rules |= lsm_rule::DESCENDANTS;
            let levels = self.levels.get(&0, 0).context("reading the sandbox levels map")?;
            self.levels.set(0, levels | 1 << r.level, 0).context("writing the sandbox levels map")?;
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
        sync_set(&mut self.exec_allow, map_names::LSM_EXEC_ALLOW, id, |k| k.sandbox, &exec, None)?;
        let deny_filter = Some(deny_open_counts(&mut self.deny_open_filter));
        sync_set(&mut self.deny_open, map_names::LSM_DENY_OPEN, id, |k| k.sandbox, &deny, deny_filter)?;
        let unix: Vec<_> = rules.unix_keys(id).map(|k| (k, 1)).collect();
        sync_set(&mut self.unix_allow, map_names::LSM_UNIX_ALLOW, id, |k| k.sandbox, &unix, None)?;
        Ok(())
    }

    /// Forgets sandbox `cgroup_id` and its lists; missing entries are not an error. The
    /// pre-filter count goes down only after the entry is gone, and only if there was one.
    pub fn remove_sandbox(&mut self, cgroup_id: u64) {
        if self.sandboxes.remove(&cgroup_id).is_ok() {
            let _ = self.count(cgroup_id, Change::Remove);
        }
        let _ = self.replace_lists(cgroup_id, &LsmRules::default());
    }

    /// Copies the entries of sandboxes `ids` from another generation's maps pinned in `old`
    /// (lists first, then the entries that put them in force), and the levels of its sandboxes
    /// with descendants. Only the maps every build has are read, so an older build's generation
    /// can be copied from; one without a levels map contributes none.
    pub fn copy_from(&mut self, old: &Path, ids: &[u64]) -> Result<()> {
        let open = |name: &str| pins::open_map(&old.join(name));
        let wanted = |k: &InodeKey| ids.contains(&k.sandbox);
        copy_entries(&HashMap::try_from(open(map_names::LSM_EXEC_ALLOW)?)?, &mut self.exec_allow, wanted)?;
        let theirs: HashMap<MapData, InodeKey, u8> = HashMap::try_from(open(map_names::LSM_DENY_OPEN)?)?;
        for entry in theirs.iter() {
            let (key, value) = entry?;
            if wanted(&key) && self.deny_open.get(&key, 0).is_err() {
                let filter = Some(deny_open_counts(&mut self.deny_open_filter));
                insert_counted(&mut self.deny_open, map_names::LSM_DENY_OPEN, filter, &key, value)?;
            }
        }
        let unix: HashMap<MapData, UnixKey, u8> = HashMap::try_from(open(map_names::LSM_UNIX_ALLOW)?)?;
        copy_entries(&unix, &mut self.unix_allow, |k| ids.contains(&k.sandbox))?;
        if old.join(map_names::LSM_LEVELS).exists() {
            let theirs: Array<MapData, u32> = Array::try_from(open(map_names::LSM_LEVELS)?)?;
            let levels = theirs.get(&0, 0)? | self.levels.get(&0, 0)?;
            self.levels.set(0, levels, 0).context("writing the sandbox levels map")?;
        }
        let sandboxes: HashMap<MapData, u64, LsmPolicy> = HashMap::try_from(open(map_names::LSM_SANDBOXES)?)?;
        for entry in sandboxes.iter() {
            let (id, policy) = entry?;
            if ids.contains(&id) {
                self.add_sandbox(id, policy)?;
            }
        }
        Ok(())
    }

    /// Every cgroup id with an LSM sandbox entry.
    pub fn entries(&self) -> Vec<u64> {
        self.sandboxes.keys().filter_map(|k| k.ok()).collect()
    }
}

/// Which way a pre-filter count moves.
#[derive(Clone, Copy)]
enum Change {
    Add,
    Remove,
}

/// Raises or lowers the count of `slot` in the pre-filter `counts` (called `label` in errors)
/// by one, in the encoding the programs read ([`prefilter`]).
fn adjust(counts: &mut Array<MapData, u32>, label: &str, slot: u32, change: Change) -> Result<()> {
    let n = prefilter::decode(counts.get(&slot, 0).with_context(|| format!("reading {label}"))?);
    let n = match change {
        Change::Add if n < prefilter::MAX => n + 1,
        Change::Add => bail!("{label}: slot {slot} overflows"),
        // Already zero: only an entry removed twice could get here.
        Change::Remove => n.saturating_sub(1),
    };
    counts.set(slot, prefilter::encode(n), 0).with_context(|| format!("writing {label}"))
}

/// The pre-filter of a set-map: per slot, how many of its keys fall in it.
struct Filter<'a, K> {
    counts: &'a mut Array<MapData, u32>,
    label: &'static str,
    slot: fn(&K) -> u32,
}

/// What errors call the two pre-filters.
const LSM_FILTER_LABEL: &str = "the LSM pre-filter";
const DENY_OPEN_FILTER_LABEL: &str = "the open deny list's pre-filter";

/// The open deny list's pre-filter (`counts`), as [`sync_set`] keeps it.
fn deny_open_counts(counts: &mut Array<MapData, u32>) -> Filter<'_, InodeKey> {
    Filter { counts, label: DENY_OPEN_FILTER_LABEL, slot: file_slot }
}

/// The open deny list's pre-filter slot of an entry's file.
fn file_slot(key: &InodeKey) -> u32 {
    deny_open_filter_slot(key.ino)
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

/// Makes the entries of sandbox `id` in set-map `set` (named `name`) exactly `want`, keeping
/// its pre-filter's counts, if it has one: a count goes up before its entry goes in, down after
/// its entry is gone, so it is never below the entries in its slot.
fn sync_set<K: aya::Pod + Ord>(
    set: &mut HashMap<MapData, K, u8>,
    name: &str,
    id: u64,
    sandbox_of: impl Fn(&K) -> u64,
    want: &[(K, u8)],
    mut filter: Option<Filter<'_, K>>,
) -> Result<()> {
    let had: std::collections::BTreeSet<K> =
        set.keys().filter_map(|k| k.ok()).filter(|k| sandbox_of(k) == id).collect();
    for (key, value) in want {
        // An entry already there is counted already.
        let new = filter.as_mut().filter(|_| !had.contains(key)).map(|f| Filter { counts: &mut *f.counts, ..*f });
        insert_counted(set, name, new, key, *value)?;
    }
    let wanted: std::collections::BTreeSet<&K> = want.iter().map(|(k, _)| k).collect();
    for key in had.iter().filter(|k| !wanted.contains(k)) {
        if set.remove(key).is_ok() {
            if let Some(f) = filter.as_mut() {
                let _ = adjust(f.counts, f.label, (f.slot)(key), Change::Remove);
            }
        }
    }
    Ok(())
}

/// Inserts `key` into set-map `set` (named `name`), counting it in `filter` first when given
/// (the count is lowered again if the insert fails).
fn insert_counted<K: aya::Pod>(
    set: &mut HashMap<MapData, K, u8>,
    name: &str,
    mut filter: Option<Filter<'_, K>>,
    key: &K,
    value: u8,
) -> Result<()> {
    if let Some(f) = filter.as_mut() {
        adjust(f.counts, f.label, (f.slot)(key), Change::Add)?;
    }
    let inserted =
        set.insert(key, value, 0).with_context(|| format!("writing {name} (is the list larger than the map?)"));
    if let (Err(_), Some(f)) = (&inserted, filter) {
        let _ = adjust(f.counts, f.label, (f.slot)(key), Change::Remove);
    }
    inserted
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
