//! `leash run --learn`'s kernel side: the learning program (`sandbox-ebpf/src/learn.rs`,
//! `fexit/security_file_open`) attached for as long as one learning run lives, and that run's
//! sandbox marked as learning. Its records arrive in the sandbox's own event ring
//! ([`KernelEvent::Learned`](super::events::KernelEvent)).
//!
//! Each learning run attaches its own link, which the kernel closes with the run's last
//! descriptor (even after SIGKILL): no pin, so nothing of it outlives the run but the sandbox's
//! `LEARNERS` entry, which goes with the sandbox's other entries.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use crate::policy::learn_files::{FileUse, Use};
use anyhow::{bail, Context, Result};
use aya::maps::{HashMap, MapData};
use aya::programs::FExit;
use sandbox_common::{learn_kind, map_names, program_names, LearnEvent};

use super::pins::open_map;

/// The learning program, attached while this value lives.
pub struct Learning {
    _program: FExit,
}

impl Learning {
    /// Marks the sandbox `cgroup_id` as learning and attaches the learning program pinned in the
    /// generation directory `dir`.
    pub fn start(dir: &Path, cgroup_id: u64) -> Result<Self> {
        let pin = dir.join("progs").join(program_names::LEARN_FILE_OPEN);
        if !pin.exists() {
            bail!(
                "this kernel refused leash's learning program (fexit on {}: needs kernel 5.10+ with BTF, and some hosts refuse fexit programs even to root)",
                program_names::LEARN_FILE_OPEN_FUNCTION
            );
        }
        learners(dir)?.insert(cgroup_id, 1, 0).context("marking the sandbox as learning")?;
        let mut program = FExit::from_pin(&pin).context("opening the learning program")?;
        program.attach().context("attaching the learning program")?;
        Ok(Self { _program: program })
    }
}

/// The learning sandboxes' marks in the generation directory `dir`.
pub fn learners(dir: &Path) -> Result<HashMap<MapData, u64, u8>> {
    Ok(HashMap::try_from(open_map(&dir.join("maps").join(map_names::LEARNERS))?)?)
}

/// Loads the learning program of `ebpf` (the object being made into a generation) against the
/// kernel's types `btf` and pins it in `progs`. Fails on kernels without fexit or `bpf_d_path`
/// for this function.
pub fn load(ebpf: &mut aya::Ebpf, progs: &Path, btf: &aya::Btf) -> Result<()> {
    let name = program_names::LEARN_FILE_OPEN;
    let program: &mut FExit = ebpf.program_mut(name).with_context(|| format!("program {name} missing"))?.try_into()?;
    program.load(program_names::LEARN_FILE_OPEN_FUNCTION, btf).with_context(|| format!("loading {name}"))?;
    program.pin(progs.join(name)).with_context(|| format!("pinning {name}"))?;
    Ok(())
}

/// Most files one learning run keeps (the agent decides how many it opens; leash's memory
/// must not follow): past it, records are counted as unnamed.
const MAX_RECORDED: usize = 100_000;

/// What the learning program reported of one sandbox, as paths.
#[derive(Debug, Default)]
pub struct Recorded {
    pub uses: BTreeSet<FileUse>,
    /// Records without a path (longer than the record holds), or past [`MAX_RECORDED`].
    pub unnamed: usize,
}

impl Recorded {
    pub fn add(&mut self, event: &LearnEvent) {
        let how = match event.kind {
            learn_kind::READ => Use::Read,
            learn_kind::WRITE => Use::Write,
            learn_kind::EXEC => Use::Exec,
            _ => return,
        };
        let end = event.path.iter().position(|b| *b == 0).unwrap_or(event.path.len());
        match &event.path[..end] {
            [] => self.unnamed += 1,
            bytes => {
                let seen = FileUse { how, path: PathBuf::from(OsStr::from_bytes(bytes)) };
                if self.uses.len() < MAX_RECORDED || self.uses.contains(&seen) {
                    self.uses.insert(seen);
                } else {
                    self.unnamed += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u32, path: &[u8]) -> LearnEvent {
        let mut e = LearnEvent { cgroup_id: 1, kind, _pad: 0, path: [0; sandbox_common::LEARN_PATH_MAX] };
        e.path[..path.len()].copy_from_slice(path);
        e
    }

    #[test]
    fn records_become_uses_and_pathless_ones_are_counted() {
        let mut r = Recorded::default();
        r.add(&event(learn_kind::EXEC, b"/usr/bin/curl"));
        r.add(&event(learn_kind::WRITE, b"/tmp/x"));
        r.add(&event(learn_kind::READ, b""));
        r.add(&event(99, b"/etc/passwd"));
        let uses: Vec<_> = r.uses.iter().map(|u| (u.how, u.path.display().to_string())).collect();
        assert_eq!(uses, [(Use::Write, "/tmp/x".to_owned()), (Use::Exec, "/usr/bin/curl".to_owned())]);
        assert_eq!(r.unnamed, 1);
    }
}
