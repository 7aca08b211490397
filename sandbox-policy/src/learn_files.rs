//! What a learning run did with files → `filesystem_policy:` and `kernel.exec.allow` entries
//! (`leash run --learn`; the kernel reports each file opened, `sandbox-ebpf/src/learn.rs`).
//!
//! The entries are generalised the way a person would write them, so that the same session
//! passes again with new file names:
//! - a file read grants its directory (the kernel reports reads once per directory); anything
//!   under a system directory grants that directory, as the default policy does (`/usr`, `/etc`);
//! - a file written grants its directory (the session will create new files there), or, when
//!   that directory is gone by the end of the run (a temporary one), the nearest one still there;
//!   anything under a scratch directory (`/tmp`, `/var/tmp`, `/dev/shm`) grants the scratch
//!   directory, a device grants itself (terminals: `/dev/pts`), `/proc` and `/sys` themselves;
//! - anything in the working directory sets `include_workdir`;
//! - each program run is listed in `kernel.exec.allow`, except the ELF interpreter the kernel
//!   loads with every dynamic program (`ld-linux*.so*`, mappable as a system library anyway).
//!
//! Never granted as a directory: `/`, the agent's home, and the directories above the working
//! directory or the home (a file read or written directly in them grants that file alone).
//! Entries beneath another entry with as much access are dropped. The agent names its files:
//! every path is written escaped (a YAML double-quoted scalar when it is not plain printable
//! ASCII), and so are the comments.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How a file was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Use {
    Read,
    Write,
    Exec,
}

/// One file the agent opened, with the path it saw.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileUse {
    pub how: Use,
    pub path: PathBuf,
}

/// What a path is now, at the end of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    Directory,
    Device,
    Other,
}

/// What the generalisation needs to know about the host.
pub struct Host<'a> {
    /// The directory the agent was started in.
    pub workdir: &'a Path,
    /// leash's own paths the agent was given (its CA bundle): never learned.
    pub exclude: &'a [PathBuf],
    /// The agent's home directory.
    pub home: Option<&'a Path>,
    /// What a path is now.
    pub probe: &'a dyn Fn(&Path) -> PathKind,
    /// Whether this host enforces `kernel.exec` (BPF-LSM): if not, the list is written as
    /// comments, since a policy with it would not start here.
    pub exec_enforced: bool,
}

/// Directories the default policy grants as a whole (read-only).
const SYSTEM: [&str; 10] = ["/usr", "/lib", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/proc", "/dev", "/sys"];
/// The directories every sandbox gets new, empty and its own (`mount_ns.rs` makes them):
/// granted as a whole (read-write) when anything in them is written.
pub const SCRATCH: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];
/// Where writes grant the whole directory: their paths name processes and objects of this run.
const WRITE_AS_A_WHOLE: [&str; 3] = ["/proc", "/sys", "/dev/pts"];

/// Files and programs learned, ready to be written.
#[derive(Debug, Default)]
pub struct LearnedFiles {
    /// Path → why (the comment).
    read_only: BTreeMap<PathBuf, String>,
    read_write: BTreeMap<PathBuf, String>,
    /// Why the working directory is included, when it is.
    workdir: Option<String>,
    exec: BTreeMap<PathBuf, String>,
    exec_enforced: bool,
    /// Records whose path could not be used (too long, or no path at all).
    unnamed: usize,
    /// Directories listed that are too broad to grant (`/`, the home, above the working directory).
    left_out: BTreeSet<PathBuf>,
    /// Records the kernel could not deliver (its ring was full).
    lost: u64,
}

impl LearnedFiles {
    /// Folds `uses` together for `host`; `unnamed` counts records that had no usable path.
    pub fn from_uses<'a>(uses: impl IntoIterator<Item = &'a FileUse>, unnamed: usize, host: &Host<'_>) -> Self {
        let mut learned = Self { exec_enforced: host.exec_enforced, unnamed, ..Self::default() };
        for u in uses {
            let Some(path) = usable(&u.path) else {
                learned.unnamed += 1;
                continue;
            };
            if host.exclude.iter().any(|e| path.starts_with(e)) {
                continue;
            }
            match u.how {
                Use::Read => {
                    // A directory listed grants itself; a file, the directory it is in.
                    let listed = (host.probe)(&path) == PathKind::Directory;
                    if listed && too_broad(&path, host) && !path.starts_with(host.workdir) {
                        learned.left_out.insert(path.clone());
                        continue;
                    }
                    let dir = match path.parent() {
                        Some(p) if !listed => p.to_path_buf(),
                        _ => path.clone(),
                    };
                    learned.grant(&dir, Use::Read, &path, host);
                }
                Use::Exec => {
                    // `kernel.exec.allow` expands `*` and `?`: a program named with them would
                    // allow more than itself (its directory is still granted below).
                    let glob = path.to_string_lossy().contains(['*', '?']);
                    if !is_elf_interpreter(&path) && !glob {
                        learned.exec.entry(path.clone()).or_insert_with(|| "run".to_owned());
                    }
                    // Landlock's read access includes running: the directory must be readable.
                    let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
                    learned.grant(&dir, Use::Exec, &path, host);
                }
                Use::Write => {
                    if let Some(whole) = WRITE_AS_A_WHOLE.iter().map(Path::new).find(|w| path.starts_with(w)) {
                        learned.grant(whole, Use::Write, &path, host);
                    } else if (host.probe)(&path) == PathKind::Device {
                        learned.read_write.entry(path.clone()).or_insert_with(|| "written (a device)".to_owned());
                    } else {
                        let dir = surviving(path.parent().unwrap_or(Path::new("/")), host);
                        learned.grant(&dir, Use::Write, &path, host);
                    }
                }
            }
        }
        learned.collapse();
        learned
    }

    /// Says that the kernel lost `lost` records: the file may miss entries.
    pub fn with_lost(mut self, lost: u64) -> Self {
        self.lost = lost;
        self
    }

    /// Grants `dir` for `how`, generalised (see the module doc); `example` is what was opened.
    fn grant(&mut self, dir: &Path, how: Use, example: &Path, host: &Host<'_>) {
        let verb = match how {
            Use::Read => "read",
            Use::Write => "written",
            Use::Exec => "run",
        };
        // A working directory of `/` would cover everything: it is not taken as one.
        if host.workdir != Path::new("/") && dir.starts_with(host.workdir) {
            let why = format!("the agent's working directory: {verb} ({})", example.display());
            if how == Use::Write || self.workdir.is_none() {
                self.workdir = Some(why);
            }
            return;
        }
        if how == Use::Write {
            if let Some(s) = SCRATCH.iter().map(Path::new).find(|s| dir.starts_with(s)) {
                let why = format!("scratch space: written ({})", example.display());
                self.read_write.entry(s.to_path_buf()).or_insert(why);
                return;
            }
            if too_broad(dir, host) {
                self.read_write.entry(example.to_path_buf()).or_insert_with(|| "written (the file alone)".to_owned());
                return;
            }
            let why = format!("written ({})", example.display());
            self.read_write.entry(dir.to_path_buf()).or_insert(why);
            return;
        }
        let (path, why) = match SYSTEM.iter().map(Path::new).find(|s| dir.starts_with(s)) {
            Some(s) => (s.to_path_buf(), format!("system directory: {verb} ({})", example.display())),
            None if too_broad(dir, host) => (example.to_path_buf(), format!("{verb} (the file alone)")),
            None => (dir.to_path_buf(), format!("{verb} ({})", example.display())),
        };
        self.read_only.entry(path).or_insert(why);
    }

    /// Drops entries beneath another entry with as much access (each entry's ancestors looked
    /// up: the agent decides how many entries there are).
    fn collapse(&mut self) {
        let writable: BTreeSet<PathBuf> = self.read_write.keys().cloned().collect();
        let beneath = |p: &Path, set: &BTreeSet<PathBuf>| p.ancestors().skip(1).any(|a| set.contains(a));
        self.read_write.retain(|p, _| !beneath(p, &writable));
        let readable: BTreeSet<PathBuf> = self.read_only.keys().cloned().collect();
        self.read_only.retain(|p, _| !writable.contains(p) && !beneath(p, &writable) && !beneath(p, &readable));
    }

    /// The `filesystem_policy:` and `kernel:` sections, with their comments.
    pub fn write(&self, out: &mut String) {
        if self.unnamed > 0 {
            let _ = writeln!(
                out,
                "# {} files opened were not learned: no usable path (too long for the kernel's record, not in a filesystem, unprintable), or past the number a run keeps",
                self.unnamed
            );
        }
        if self.lost > 0 {
            let _ = writeln!(
                out,
                "# {} records were lost while learning (the kernel's event ring was full): entries may be missing; run the session again, or add them by hand",
                self.lost
            );
        }
        for dir in &self.left_out {
            let _ = writeln!(
                out,
                "# not granted: listing {} (a rule there would open everything beneath it)",
                printable(&dir.display().to_string())
            );
        }
        out.push_str("# files the agent opened, each entry with the first file that needed it\n");
        out.push_str("filesystem_policy:\n");
        if let Some(why) = &self.workdir {
            let _ = writeln!(out, "  # {}", printable(why));
            out.push_str("  include_workdir: true\n");
        }
        write_list(out, "read_only", &self.read_only);
        write_list(out, "read_write", &self.read_write);
        if self.exec.is_empty() {
            return;
        }
        if self.exec_enforced {
            out.push_str("# the programs the agent ran (kernel.exec: BPF-LSM)\n");
            out.push_str("kernel:\n  exec:\n    allow:\n");
            for path in self.exec.keys() {
                let _ = writeln!(out, "      - {}", quote(&path.display().to_string()));
            }
        } else {
            out.push_str("# the programs the agent ran. Not written as `kernel.exec.allow`: this host has no\n");
            out.push_str("# BPF-LSM, so a policy with it would not start here. On a host with BPF-LSM:\n");
            out.push_str("# kernel:\n#   exec:\n#     allow:\n");
            for path in self.exec.keys() {
                let _ = writeln!(out, "#       - {}", quote(&path.display().to_string()));
            }
        }
    }
}

/// `dir`, or when it is gone by now (made and removed during the run), its nearest ancestor
/// still there — never `/`, and never above the working directory or a scratch directory,
/// which are granted as a whole anyway.
fn surviving(dir: &Path, host: &Host<'_>) -> PathBuf {
    let in_workdir = |d: &Path| host.workdir != Path::new("/") && d.starts_with(host.workdir);
    let whole = |d: &Path| in_workdir(d) || SCRATCH.iter().any(|s| d.starts_with(s));
    if whole(dir) {
        return dir.to_path_buf();
    }
    let mut at = dir.to_path_buf();
    while (host.probe)(&at) != PathKind::Directory {
        if !at.pop() || at == Path::new("/") {
            return dir.to_path_buf();
        }
    }
    at
}

fn write_list(out: &mut String, key: &str, entries: &BTreeMap<PathBuf, String>) {
    if entries.is_empty() {
        let _ = writeln!(out, "  {key}: []");
        return;
    }
    let _ = writeln!(out, "  {key}:");
    for (path, why) in entries {
        let _ = writeln!(out, "    # {}", printable(why));
        let _ = writeln!(out, "    - {}", quote(&path.display().to_string()));
    }
}

/// The path as a policy can name it: absolute, without the kernel's " (deleted)" mark; `None`
/// for what is not in a filesystem (`pipe:[..]`, `anon_inode:..`, `/memfd:..`).
fn usable(path: &Path) -> Option<PathBuf> {
    let text = path.to_str()?;
    let text = text.strip_suffix(" (deleted)").unwrap_or(text);
    // The agent names its files: what YAML cannot hold even escaped is not learned (everything
    // else is escaped where written); nor is a name with a `.` or `..` component, which would
    // mean more than the file once written into a policy (a file named `.. (deleted)` is
    // reported as `/home/u/.. (deleted)`, which the mark's removal made `/home/u/..`).
    let unholdable = |c: char| c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}';
    let dotted = text.split('/').any(|segment| segment == "." || segment == "..");
    if !text.starts_with('/') || text.starts_with("/memfd:") || text.chars().any(unholdable) || dotted {
        return None;
    }
    Some(PathBuf::from(text))
}

/// The dynamic loader (`ld-linux-x86-64.so.2`, `ld-musl-x86_64.so.1`), which the kernel opens for
/// every dynamic program.
fn is_elf_interpreter(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ld-") && n.contains(".so"))
}

/// Whether a directory is too broad to grant for one file in it: `/`, the agent's home, or
/// above the working directory or the home.
fn too_broad(dir: &Path, host: &Host<'_>) -> bool {
    dir == Path::new("/")
        || (host.workdir.starts_with(dir) && host.workdir != dir)
        || host.home.is_some_and(|home| home.starts_with(dir))
}

/// A YAML scalar for `text`: single-quoted when it is plain printable ASCII, else double-quoted
/// with every other character escaped (YAML takes U+2028 and U+0085 for line breaks, even
/// inside quotes). For every name a learned policy writes.
pub(crate) fn quote(text: &str) -> String {
    if text.chars().all(|c| matches!(c, ' '..='~')) {
        return format!("'{}'", text.replace('\'', "''"));
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08X}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// `text` for a comment: printable ASCII as it is, anything else escaped.
fn printable(text: &str) -> String {
    text.chars().map(|c| if matches!(c, ' '..='~') { c.to_string() } else { c.escape_unicode().to_string() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(list: &[(Use, &str)]) -> Vec<FileUse> {
        list.iter().map(|(how, p)| FileUse { how: *how, path: PathBuf::from(p) }).collect()
    }

    fn probe(p: &Path) -> PathKind {
        match p.to_str().unwrap_or("") {
            "/dev/null" | "/dev/pts/3" => PathKind::Device,
            "/" | "/home" | "/home/u" | "/home/u/.cache" | "/home/u/proj" | "/var" | "/var/cache" => {
                PathKind::Directory
            }
            _ => PathKind::Missing,
        }
    }

    fn learn(list: &[(Use, &str)], exec_enforced: bool) -> String {
        learn_in("/home/u/proj", list, exec_enforced)
    }

    /// The learned sections (after `version: 1`) for a run started in `workdir`; they parse.
    fn learn_in(workdir: &str, list: &[(Use, &str)], exec_enforced: bool) -> String {
        let exclude = [PathBuf::from("/run/leash")];
        let host = Host {
            workdir: Path::new(workdir),
            exclude: &exclude,
            home: Some(Path::new("/home/u")),
            probe: &probe,
            exec_enforced,
        };
        let learned = LearnedFiles::from_uses(&uses(list), 0, &host);
        let mut text = String::from("version: 1\n");
        learned.write(&mut text);
        crate::parse_str("learned.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        text
    }

    #[test]
    fn reads_grant_directories_and_system_directories_whole() {
        let text = learn(
            &[
                (Use::Read, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
                (Use::Read, "/etc/ssl/certs/ca.pem"),
                (Use::Read, "/home/u/.config/git/config"),
                (Use::Read, "/home/u/.config/git/sub/x"),
                (Use::Read, "/.dockerenv"),
                (Use::Read, "/run/leash/ca.pem"),
                (Use::Read, "pipe:[1234]"),
                (Use::Write, "/home/u/x\rkernel: {}\n/y"),
            ],
            true,
        );
        assert!(text.contains("- '/usr'") && text.contains("- '/etc'"), "{text}");
        assert!(text.contains("- '/home/u/.config/git'") && !text.contains("/home/u/.config/git/sub'"), "{text}");
        assert!(text.contains("- '/.dockerenv'"), "a file in / grants itself, not /:\n{text}");
        assert!(!text.contains("/run/leash") && !text.contains("pipe"), "{text}");
        assert!(!text.contains('\r') && !text.contains("\nkernel:"), "a name with a line break is dropped:\n{text}");
        assert!(text.contains("read_write: []"), "{text}");
    }

    #[test]
    fn writes_grant_directories_scratch_devices_and_the_workdir() {
        let text = learn(
            &[
                (Use::Write, "/tmp/tmp.Xy12/out"),
                (Use::Write, "/dev/null"),
                (Use::Write, "/dev/pts/3"),
                (Use::Write, "/home/u/proj/src/main.rs"),
                (Use::Write, "/home/u/.cache/tool/a1b2/blob (deleted)"),
                (Use::Read, "/home/u/.cache/tool/index"),
                (Use::Write, "/proc/4242/oom_score_adj"),
            ],
            true,
        );
        assert!(text.contains("- '/tmp'") && !text.contains("Xy12'"), "{text}");
        assert!(text.contains("- '/dev/null'") && text.contains("- '/dev/pts'"), "{text}");
        assert!(text.contains("include_workdir: true"), "{text}");
        // The directory made during the run is gone: its nearest surviving ancestor is granted,
        // and the read beneath it needs no entry of its own.
        assert!(text.contains("- '/home/u/.cache'") && !text.contains("- '/home/u/.cache/tool'"), "{text}");
        assert!(text.contains("- '/proc'") && !text.contains("4242'"), "{text}");
        let policy = crate::parse_str("learned.yaml", &text).expect("parses");
        let fs = policy.filesystem().expect("filesystem_policy");
        assert!(fs.read_write.contains(&PathBuf::from("/home/u/.cache")));
        assert!(fs.read_only.is_empty(), "{text}");
    }

    /// The agent names its own files, and learning runs without Landlock: a file named
    /// `.. (deleted)` (reported as `/home/u/.. (deleted)`) must not become `/home/u/..`, nor one
    /// named `.` the whole home, nor a program named `**` an exec glob.
    #[test]
    fn names_that_would_mean_more_than_the_file_are_not_learned() {
        let text = learn(
            &[
                (Use::Write, "/home/u/.. (deleted)"),
                (Use::Write, "/home/u/. (deleted)"),
                (Use::Write, "/home/u/proj/../../etc/x"),
                (Use::Exec, "/home/u/**"),
                (Use::Exec, "/home/u/bin/to?l"),
                (Use::Write, "/home/u/proj/ok"),
            ],
            true,
        );
        let policy = crate::parse_str("learned.yaml", &text).expect("parses");
        let fs = policy.filesystem().expect("filesystem_policy");
        let granted: Vec<_> = fs.read_write.iter().chain(&fs.read_only).collect();
        let dotted = |p: &&PathBuf| p.to_string_lossy().split('/').any(|s| s == "." || s == "..");
        assert!(!granted.iter().any(dotted), "a dotted path was granted: {text}");
        let exec = policy.kernel().map(|k| format!("{:?}", k.exec_allow)).unwrap_or_default();
        assert!(!exec.contains("**") && !exec.contains("to?l"), "a glob was learned: {text}");
        assert!(text.contains("include_workdir: true"), "control: the ordinary write is learned: {text}");
    }

    #[test]
    fn a_working_directory_of_root_covers_nothing() {
        let text = learn_in("/", &[(Use::Write, "/var/cache/x"), (Use::Read, "/etc/passwd")], true);
        assert!(!text.contains("include_workdir"), "{text}");
        assert!(text.contains("- '/var/cache'") && text.contains("- '/etc'"), "{text}");
    }

    #[test]
    fn listing_or_touching_files_in_broad_directories_grants_no_directory() {
        let text = learn(
            &[
                (Use::Read, "/home/u/proj"),
                (Use::Read, "/home"),
                (Use::Read, "/"),
                (Use::Read, "/home/u/.gitconfig"),
                (Use::Write, "/home/u/.bash_history"),
                (Use::Write, "/f"),
                (Use::Exec, "/x"),
            ],
            true,
        );
        assert!(text.contains("include_workdir: true"), "{text}");
        assert!(text.contains("not granted: listing /home ") && text.contains("not granted: listing / "), "{text}");
        assert!(text.contains("- '/home/u/.gitconfig'") && text.contains("- '/home/u/.bash_history'"), "{text}");
        assert!(text.contains("- '/f'") && text.contains("- '/x'"), "{text}");
        let policy = crate::parse_str("learned.yaml", &text).expect("parses");
        let fs = policy.filesystem().expect("filesystem_policy");
        for broad in ["/", "/home", "/home/u"] {
            let p = PathBuf::from(broad);
            assert!(!fs.read_only.contains(&p) && !fs.read_write.contains(&p), "{broad} granted:\n{text}");
        }
    }

    #[test]
    fn names_with_line_breaks_of_any_kind_stay_one_entry() {
        let sneaky = "/srv/a\u{2028}    - /etc #\u{2029}b/f";
        let text = learn(&[(Use::Read, sneaky), (Use::Read, "/srv/\u{e9}t\u{e9}/x")], true);
        let policy = crate::parse_str("learned.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let fs = policy.filesystem().expect("filesystem_policy");
        let expected = [PathBuf::from("/srv/a\u{2028}    - /etc #\u{2029}b"), PathBuf::from("/srv/\u{e9}t\u{e9}")];
        assert_eq!(fs.read_only, expected, "{text}");
        assert!(text.is_ascii(), "every character outside printable ASCII is escaped:\n{text}");
    }

    #[test]
    fn records_the_kernel_lost_are_owned_up_to() {
        let host = Host { workdir: Path::new("/w"), exclude: &[], home: None, probe: &probe, exec_enforced: true };
        let mut text = String::new();
        LearnedFiles::from_uses(&uses(&[(Use::Read, "/etc/passwd")]), 0, &host).with_lost(3).write(&mut text);
        assert!(text.contains("# 3 records were lost while learning"), "{text}");
        let mut quiet = String::new();
        LearnedFiles::from_uses(&uses(&[(Use::Read, "/etc/passwd")]), 0, &host).write(&mut quiet);
        assert!(!quiet.contains("lost"), "{quiet}");
    }

    #[test]
    fn programs_run_are_listed_without_the_loader_and_commented_where_unenforced() {
        let list = [
            (Use::Exec, "/usr/bin/curl"),
            (Use::Exec, "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
            (Use::Exec, "/home/u/proj/run.sh"),
            (Use::Exec, "/usr/bin/dash"),
        ];
        let text = learn(&list, true);
        let policy = crate::parse_str("learned.yaml", &text).expect("parses");
        let exec = policy.kernel().and_then(|k| k.exec_allow.clone()).expect("kernel.exec.allow");
        assert_eq!(exec, ["/home/u/proj/run.sh", "/usr/bin/curl", "/usr/bin/dash"], "{text}");
        assert!(text.contains("- '/usr'"), "the programs' directory is readable:\n{text}");
        let commented = learn(&list, false);
        let policy = crate::parse_str("learned.yaml", &commented).expect("parses");
        assert!(policy.kernel().is_none(), "{commented}");
        assert!(commented.contains("#       - '/usr/bin/curl'"), "{commented}");
    }
}
