//! The kernel's cgroup-BPF hooks, kept switched on between sandboxes.
//!
//! Each cgroup attach type has a static key in the kernel (before 5.12, one key for all): the
//! first program of that type attached anywhere on the host switches it on, the last one
//! detached switches it off, and each switch rewrites kernel text on every CPU. On a host with no
//! other cgroup programs every sandbox paid nine such switches at its start and nine at its end:
//! about 1 ms of a 6.7 ms warm `leash run` on a 2-CPU VM (its links took 0.55 ms to attach,
//! 0.04 ms with the keys on).
//!
//! So a generation attaches each network program once more, to `<cgroup2 root>/leash.hold`, a
//! cgroup no process runs in, and pins those links in
//! `<generation>/hold/`. The programs never run there; a process root put there would be denied
//! every network operation (the cgroup has no sandbox entry). The keys stay on while the
//! generation is pinned: until a leash of another build retires it, the host reboots, or it is
//! removed by hand (the next `leash run` loads a new one and holds them again).
//!
//! What that costs processes in no sandbox: each `socket`, `connect`, unconnected UDP `sendmsg`,
//! UDP `recvmsg` that asks for the sender's address, and IP packet goes into the kernel's
//! cgroup-BPF code and finds its cgroup's list of programs empty; `connect` and UDP
//! `sendmsg`/`recvmsg` take the socket's lock for it. Hosts where a CNI attaches
//! socket-address programs pay that already. It is a speed-up and nothing depends on it: a host
//! where it cannot be made starts sandboxes as before.
//!
//! The BPF-LSM programs are not held: attached, they run on their hook for every process, so they
//! are attached only while a sandbox uses them (`generation.rs`).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::attach::{self, PinnedProgram};
use super::pins::remove_tree;
use super::programs::Kind;

/// The cgroup, under the cgroup2 root. Not `leash-` like a sandbox's: the reaper and the daemon
/// never take it for one.
pub const CGROUP: &str = "leash.hold";

/// A generation's directory of the links, once whole.
const DIR: &str = "hold";

/// Where the links are pinned before they are whole; a leash killed here leaves it to the next.
const BUILDING: &str = "hold-building";

/// Made in a generation where holding failed, so that later starts do not try again (each try
/// takes the host's lock and may switch the hooks on and off).
const UNAVAILABLE: &str = "hold-unavailable";

/// Whether the generation at `generation` holds the hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Yes,
    /// Tried and refused (`leash run` said why, once).
    Refused,
    /// Not tried yet: the next `leash run` does.
    NotYet,
}

impl Held {
    pub fn of(generation: &Path) -> Self {
        if generation.join(DIR).is_dir() {
            Held::Yes
        } else if generation.join(UNAVAILABLE).is_dir() {
            Held::Refused
        } else {
            Held::NotYet
        }
    }
}

/// Whether holding was done, or found impossible, for the generation at `generation`.
pub fn settled(generation: &Path) -> bool {
    Held::of(generation) != Held::NotYet
}

/// Attaches each of `programs` to the hold cgroup under `cgroup_root` (made if missing) and pins
/// the links in `<generation>/hold/`, renamed into place once all are. Refused where
/// `cgroup_root` is not its hierarchy's root (a cgroup namespace's, in a container: the cgroup
/// would outlive leash in a cgroup the runtime removes) and where the cgroup has processes. A
/// failure is remembered in the generation and returned once. The caller holds the host's lock.
pub(super) fn hold(
    generation: &Path,
    cgroup_root: &Path,
    programs: &[(&'static str, Kind, PinnedProgram)],
) -> Result<()> {
    if settled(generation) {
        return Ok(());
    }
    let building = generation.join(BUILDING);
    remove_tree(&building)?;
    let made = (|| -> Result<()> {
        // The kernel gives every cgroup but a hierarchy's root a `cgroup.type`.
        if cgroup_root.join("cgroup.type").exists() {
            bail!("{} is not the root of its cgroup hierarchy", cgroup_root.display());
        }
        let cgroup = cgroup_root.join(CGROUP);
        match std::fs::create_dir(&cgroup) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating cgroup {}", cgroup.display())),
        }
        // `populated` counts the cgroup's descendants too, where the programs would apply as well.
        let events = cgroup.join("cgroup.events");
        let text = std::fs::read_to_string(&events).with_context(|| format!("reading {}", events.display()))?;
        if !text.lines().any(|l| l.trim() == "populated 0") {
            bail!("processes run in {} or below it", cgroup.display());
        }
        std::fs::create_dir(&building).with_context(|| format!("creating {}", building.display()))?;
        let dir = File::open(&cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        // Every network program: transparent mode's `recvmsg4/6` too, as it is the default.
        for (name, kind, program) in programs {
            let link =
                program.attach_cgroup(dir.as_fd(), kind.attach_type()).with_context(|| format!("attaching {name}"))?;
            let path = building.join(name);
            attach::pin(&link, &path).with_context(|| format!("pinning {}", path.display()))?;
        }
        let dir = generation.join(DIR);
        std::fs::rename(&building, &dir).with_context(|| format!("publishing {}", dir.display()))
    })();
    if made.is_err() {
        let _ = remove_tree(&building);
        let _ = std::fs::create_dir(generation.join(UNAVAILABLE));
    }
    made
}
