//! The gitlinks of a git index (`.git/index`): the paths git treats as nested repositories
//! (submodules), which `git status` in the repository looks into, running their own config
//! (`core.fsmonitor`) and hooks. The working-directory guard names at exit the ones whose `.git`
//! the agent made. [`listed_gitlinks`] finds a working directory's index as git does;
//! [`read`] reads index versions 2, 3 and 4 (prefix-compressed paths), SHA-1 or SHA-256 object
//! names, and the split index's `link` extension (the entries then come from a shared index
//! too). The agent writes the index, so what cannot be read whole is an error, never a shorter
//! list: the caller warns that the index was not checked.

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// `S_IFGITLINK` in an entry's mode.
const GITLINK: u32 = 0o160000;
/// The object type bits of a mode.
const TYPE_MASK: u32 = 0o170000;
/// The longest path an entry may name (Linux's `PATH_MAX`): no checkout holds a longer one.
const MAX_NAME: usize = 4096;
/// The most gitlinks read from one index: each is kept, and looked at on the disk after.
pub const MAX_GITLINKS: usize = 4096;

/// The most entries whose names are all kept ([`read`]'s `every_name`).
pub const MAX_NAMED: usize = 1 << 16;

/// What an index names: its gitlinks, and the object name of the shared index it is split from.
#[derive(Debug, Default, PartialEq)]
pub struct Index {
    pub gitlinks: Vec<PathBuf>,
    /// Whether a gitlink entry has no name of its own: in a split index, an entry that replaces
    /// one of the shared index's takes that one's name (`CE_STRIP_NAME`).
    pub unnamed_gitlinks: bool,
    pub shared: Option<Vec<u8>>,
    /// Every entry's name, when [`read`] is asked for them.
    pub names: Vec<PathBuf>,
}

/// Reads index `bytes`, whose object names are `hash_len` bytes long (20 for SHA-1, 32 for
/// SHA-256), of at most `max_entries` entries, keeping `every_name` (of at most [`MAX_NAMED`]
/// entries) or only the gitlinks'. `Err` says why it could not be read whole.
pub fn read(bytes: &[u8], hash_len: usize, max_entries: usize, every_name: bool) -> Result<Index, String> {
    let malformed = |what: &str| format!("not an index git writes ({what})");
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    if bytes.get(..4) != Some(b"DIRC") {
        return Err(malformed("no signature"));
    }
    let (Some(version), Some(count)) = (u32_at(4), u32_at(8)) else { return Err(malformed("short header")) };
    if !(2..=4).contains(&version) {
        return Err(malformed("unknown version"));
    }
    if count as usize > max_entries {
        return Err(format!("more than {max_entries} entries"));
    }
    if every_name && count as usize > MAX_NAMED {
        return Err(format!("a split index replaces entries of a shared index of more than {MAX_NAMED}"));
    }
    let mut index = Index::default();
    let mut at = 12;
    // Version 4's previous name, changed in place: each entry costs only its own bytes.
    let mut name: Vec<u8> = Vec::new();
    // ctime, mtime, dev, ino, mode, uid, gid, size: ten 32-bit fields; the mode is the seventh.
    let fixed = 40 + hash_len;
    for _ in 0..count {
        let start = at;
        let mode = u32_at(at + 24).ok_or_else(|| malformed("short entry"))?;
        let flags = bytes
            .get(at + fixed..at + fixed + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| malformed("short entry"))?;
        at += fixed + 2;
        if version >= 3 && flags & 0x4000 != 0 {
            at += 2;
        }
        let rest = bytes.get(at..).unwrap_or_default();
        // The name's length as git keeps it in the flags (12 bits; 0xFFF: that long or longer).
        // Git sizes the entry by it: a name whose NUL comes elsewhere is not one git reads.
        let length = (flags & 0x0FFF) as usize;
        if version == 4 {
            // How many bytes of the previous name to drop, as git's varint, then the rest.
            let (drop, used) = varint(rest).ok_or_else(|| malformed("bad name prefix"))?;
            let end = rest[used..].iter().position(|&c| c == 0).ok_or_else(|| malformed("unterminated name"))?;
            if drop > name.len() || name.len() - drop + end > MAX_NAME {
                return Err(malformed("name prefix out of range"));
            }
            name.truncate(name.len() - drop);
            name.extend_from_slice(&rest[used..used + end]);
            if length < 0x0FFF && name.len() != length {
                return Err(malformed("name length"));
            }
            at += used + end + 1;
        } else {
            let end = rest.iter().position(|&c| c == 0).ok_or_else(|| malformed("unterminated name"))?;
            if end > MAX_NAME {
                return Err(malformed("name too long"));
            }
            if length < 0x0FFF && end != length {
                return Err(malformed("name length"));
            }
            name.clear();
            name.extend_from_slice(&rest[..end]);
            // Entries are padded with one to eight NULs to a multiple of eight bytes.
            let size = at + end - start;
            at = start + (size + 8) / 8 * 8;
        }
        use std::os::unix::ffi::OsStrExt as _;
        let path = || PathBuf::from(std::ffi::OsStr::from_bytes(&name));
        if mode & TYPE_MASK == GITLINK && name.is_empty() {
            index.unnamed_gitlinks = true;
        } else if mode & TYPE_MASK == GITLINK {
            if index.gitlinks.len() == MAX_GITLINKS {
                return Err(format!("more than {MAX_GITLINKS} nested repositories"));
            }
            index.gitlinks.push(path());
        }
        if every_name && !name.is_empty() {
            index.names.push(path());
        }
    }
    // Extensions, each a signature and a length, up to the index's own checksum.
    let end = bytes.len().checked_sub(hash_len).filter(|&end| end >= at).ok_or_else(|| malformed("short"))?;
    while at < end {
        let (Some(signature), Some(size)) = (bytes.get(at..at + 4), u32_at(at + 4)) else {
            return Err(malformed("short extension"));
        };
        let data = at
            .checked_add(8 + size as usize)
            .filter(|&next| next <= end)
            .map(|next| &bytes[at + 8..next])
            .ok_or_else(|| malformed("extension past the end"))?;
        if signature == b"link" {
            let shared = data.get(..hash_len).ok_or_else(|| malformed("short link extension"))?;
            index.shared = Some(shared.to_vec());
        }
        at += 8 + data.len();
    }
    Ok(index)
}

/// The paths the index of the working directory `workdir` lists as gitlinks (relative to it),
/// read as git reads it: through a link, from a worktree's or a submodule's git directory (`.git`
/// as a "gitdir:" file), with the shared index a split index names (and, when an entry there
/// takes a shared entry's name, every shared name). None when there is no index; `Err` says why
/// it could not be read whole.
pub fn listed_gitlinks(workdir: &Path) -> Result<Vec<PathBuf>, String> {
    let dot_git = workdir.join(".git");
    let git = match std::fs::symlink_metadata(&dot_git) {
        Ok(m) if m.is_file() => match read_limited(&dot_git, 4096)? {
            Some(text) => match String::from_utf8_lossy(&text).trim().strip_prefix("gitdir:") {
                Some(dir) => workdir.join(dir.trim()),
                None => return Ok(Vec::new()),
            },
            None => return Ok(Vec::new()),
        },
        _ => dot_git,
    };
    let Some(bytes) = read_limited(&git.join("index"), MAX_INDEX)? else { return Ok(Vec::new()) };
    let hash_len = if object_format_sha256(&git) { 32 } else { 20 };
    let index = read(&bytes, hash_len, MAX_INDEX_ENTRIES, false).map_err(|e| format!("index: {e}"))?;
    let mut gitlinks = index.gitlinks;
    match index.shared {
        Some(shared) => {
            let hex: String = shared.iter().map(|b| format!("{b:02x}")).collect();
            let name = format!("sharedindex.{hex}");
            let bytes = read_limited(&git.join(&name), MAX_INDEX)?.ok_or_else(|| format!("{name} is missing"))?;
            // A gitlink without a name replaces a shared entry and takes its name: which one the
            // split index's bitmaps say; every shared name is looked at instead.
            let base = read(&bytes, hash_len, MAX_INDEX_ENTRIES, index.unnamed_gitlinks)
                .map_err(|e| format!("{name}: {e}"))?;
            gitlinks.extend(base.gitlinks);
            gitlinks.extend(base.names);
        }
        None if index.unnamed_gitlinks => return Err("index: a gitlink without a name, and no shared index".into()),
        None => {}
    }
    Ok(gitlinks)
}

/// Whether the repository of git directory `git` names objects with SHA-256: its config says
/// so, or that of the directory its `commondir` names.
fn object_format_sha256(git: &Path) -> bool {
    let says = |config: &Path| {
        let text = read_limited(config, 1 << 20).ok().flatten().unwrap_or_default();
        String::from_utf8_lossy(&text)
            .to_ascii_lowercase()
            .lines()
            .any(|l| l.split_whitespace().collect::<String>() == "objectformat=sha256")
    };
    let common = read_limited(&git.join("commondir"), 4096).ok().flatten();
    says(&git.join("config"))
        || common.is_some_and(|c| says(&git.join(String::from_utf8_lossy(&c).trim()).join("config")))
}

/// The content of the file at `path` (a link followed, as git follows it), if there is one: a
/// file that is not a regular one or is larger than `max` is an error. Opened without waiting
/// (a FIFO the agent left there), and read through the descriptor that was checked.
fn read_limited(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read as _;
    let file = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let meta = file.metadata().map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    if meta.len() > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > max {
        return Err(format!("{} is larger than {max} bytes", path.display()));
    }
    Ok(Some(bytes))
}

/// The largest index read at exit, and the most entries read of it (the largest repositories'
/// indexes are tens of MiB, a few million entries).
const MAX_INDEX: u64 = 256 << 20;
const MAX_INDEX_ENTRIES: usize = 4 << 20;

/// Git's offset varint (`decode_varint`): seven bits a byte, high bit set on all but the last,
/// each continuation adding one. The value and the bytes used.
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value: usize = 0;
    for (i, &b) in bytes.iter().enumerate().take(9) {
        if i > 0 {
            value = value.checked_add(1)?.checked_shl(7)?;
        }
        value |= (b & 0x7f) as usize;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn repo(name: &str, index_version: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("leash-index-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/file"), "x").unwrap();
        let git = |args: &[&str]| {
            let out = Command::new("git").args(args).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        git(&["init", "-q"]);
        git(&["add", "a/b/file"]);
        if index_version == "3" {
            // Intent to add: an entry with the extended flags, which only version 3 writes (git
            // writes 2 without them).
            std::fs::write(dir.join("a/intent"), "y").unwrap();
            git(&["add", "-N", "a/intent"]);
        }
        for path in ["a/sub", "vendor/lib", "z"] {
            git(&[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,1111111111111111111111111111111111111111,{path}"),
            ]);
        }
        git(&["update-index", "--index-version", index_version]);
        dir
    }

    #[test]
    fn gitlinks_are_read_from_index_versions_2_3_and_4() {
        for version in ["2", "3", "4"] {
            let dir = repo(&format!("v{version}"), version);
            let index = std::fs::read(dir.join(".git/index")).unwrap();
            assert_eq!(index[7], version.parse::<u8>().unwrap(), "the premise: index version {version}");
            let found = read(&index, 20, 1000, false).unwrap();
            let expected = [PathBuf::from("a/sub"), PathBuf::from("vendor/lib"), PathBuf::from("z")];
            assert_eq!(found.gitlinks, expected, "v{version}");
            assert_eq!(found.shared, None);
            assert!(read(&index, 20, 2, false).is_err(), "v{version}: more entries than allowed read as fewer");
        }
    }

    #[test]
    fn a_split_index_names_its_shared_index() {
        let dir = repo("split", "2");
        let out = Command::new("git").args(["update-index", "--split-index"]).current_dir(&dir).output().unwrap();
        assert!(out.status.success());
        let index = read(&std::fs::read(dir.join(".git/index")).unwrap(), 20, 1000, false).unwrap();
        let shared = index.shared.expect("a split index has a link extension");
        let hex: String = shared.iter().map(|b| format!("{b:02x}")).collect();
        let base = std::fs::read(dir.join(format!(".git/sharedindex.{hex}"))).expect("the shared index it names");
        assert_eq!(read(&base, 20, 1000, false).unwrap().gitlinks.len(), 3);
    }

    /// A split index writes an entry that replaces a shared one without its name: a gitlink put
    /// over a file of the shared index has none, and takes the file's.
    #[test]
    fn a_gitlink_replacing_a_shared_entry_has_no_name_of_its_own() {
        let dir = repo("split-unnamed", "2");
        let git = |args: &[&str]| {
            let out = Command::new("git").args(args).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        git(&["update-index", "--split-index"]);
        git(&["update-index", "--cacheinfo", "160000,2222222222222222222222222222222222222222,a/b/file"]);
        let index = read(&std::fs::read(dir.join(".git/index")).unwrap(), 20, 1000, false).unwrap();
        assert!(index.unnamed_gitlinks, "the premise: git stripped the name ({index:?})");
        assert!(!index.gitlinks.iter().any(|p| p.as_os_str().is_empty()));
        let hex: String = index.shared.unwrap().iter().map(|b| format!("{b:02x}")).collect();
        let base = std::fs::read(dir.join(format!(".git/sharedindex.{hex}"))).unwrap();
        let names = read(&base, 20, 1000, true).unwrap().names;
        assert!(names.contains(&PathBuf::from("a/b/file")), "{names:?}");
    }

    /// Git sizes an entry by the name length in its flags: a name whose NUL comes before that
    /// length made leash read a decoy where git reads another entry.
    #[test]
    fn a_name_that_does_not_end_where_its_flags_say_is_an_error() {
        let mut index = b"DIRC\0\0\0\x02".to_vec();
        index.extend(1u32.to_be_bytes());
        index.extend([0u8; 24]);
        index.extend(GITLINK.to_be_bytes());
        index.extend([0u8; 12 + 20]);
        index.extend(10u16.to_be_bytes());
        index.extend(b"ab\0cdefgh\0\0\0\0\0\0");
        index.extend([0u8; 20]);
        let err = read(&index, 20, 1000, false).unwrap_err();
        assert!(err.contains("name length"), "{err}");
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert!(read(b"DIRC\0\0\0\x02\0\0\0\x05short", 20, 1000, false).is_err());
        assert!(read(b"not an index", 20, 1000, false).is_err());
        let index = std::fs::read(repo("cut", "4").join(".git/index")).unwrap();
        for cut in [index.len() - 21, 40, 13] {
            assert!(read(&index[..cut], 20, 1000, false).is_err(), "cut at {cut}");
        }
        assert_eq!(varint(&[0x80, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0x05]), Some((5, 1)));
    }

    /// Version 4 names share a prefix with the previous one: a long first name, then entries
    /// keeping all of it, made the reading copy it for every entry (terabytes, as root at exit).
    #[test]
    fn a_version_4_name_longer_than_a_path_is_an_error() {
        let mut index = b"DIRC\0\0\0\x04".to_vec();
        index.extend(3u32.to_be_bytes());
        let entry = |index: &mut Vec<u8>, drop: u8, suffix: &[u8]| {
            index.extend([0u8; 24]);
            index.extend(GITLINK.to_be_bytes());
            index.extend([0u8; 12 + 20]);
            // The flags' length says "0xFFF or longer".
            index.extend([0x0F, 0xFF]);
            index.push(drop);
            index.extend(suffix);
            index.push(0);
        };
        entry(&mut index, 0, &[b'a'; 3000]);
        entry(&mut index, 0, &[b'b'; 1000]);
        entry(&mut index, 0, &[b'c'; 1000]);
        index.extend([0u8; 20]);
        let err = read(&index, 20, 1000, false).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }
}
