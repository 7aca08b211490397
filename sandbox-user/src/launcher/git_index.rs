//! The gitlinks of a git index (`.git/index`): the paths git treats as nested repositories
//! (submodules), which `git status` in the repository looks into, running their own config
//! (`core.fsmonitor`) and hooks. The working-directory guard names at exit the ones whose `.git`
//! the agent made. Index versions 2, 3 and 4 (prefix-compressed paths), SHA-1 or SHA-256 object
//! names; anything malformed ends the reading with what was read.

use std::path::PathBuf;

/// `S_IFGITLINK` in an entry's mode.
const GITLINK: u32 = 0o160000;
/// The object type bits of a mode.
const TYPE_MASK: u32 = 0o170000;

/// The gitlink paths of index `bytes`, whose object names are `hash_len` bytes long (20 for
/// SHA-1, 32 for SHA-256). At most `max` entries are read.
pub fn gitlinks(bytes: &[u8], hash_len: usize, max: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let u32_at = |at: usize| bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    if bytes.get(..4) != Some(b"DIRC") {
        return out;
    }
    let (Some(version), Some(count)) = (u32_at(4), u32_at(8)) else { return out };
    if !(2..=4).contains(&version) {
        return out;
    }
    let mut at = 12;
    let mut previous: Vec<u8> = Vec::new();
    // ctime, mtime, dev, ino, mode, uid, gid, size: ten 32-bit fields; the mode is the seventh.
    let fixed = 40 + hash_len;
    for _ in 0..(count as usize).min(max) {
        let start = at;
        let Some(mode) = u32_at(at + 24) else { break };
        let Some(flags) = bytes.get(at + fixed..at + fixed + 2).map(|b| u16::from_be_bytes([b[0], b[1]])) else {
            break;
        };
        at += fixed + 2;
        if version >= 3 && flags & 0x4000 != 0 {
            at += 2;
        }
        let name = if version == 4 {
            // How many bytes of the previous name to drop, as git's varint, then the rest.
            let Some((drop, used)) = varint(bytes.get(at..).unwrap_or_default()) else { break };
            at += used;
            let Some(end) = bytes.get(at..).and_then(|b| b.iter().position(|&c| c == 0)) else { break };
            let keep = previous.len().saturating_sub(drop);
            let mut name = previous[..keep].to_vec();
            name.extend_from_slice(&bytes[at..at + end]);
            at += end + 1;
            name
        } else {
            let Some(end) = bytes.get(at..).and_then(|b| b.iter().position(|&c| c == 0)) else { break };
            let name = bytes[at..at + end].to_vec();
            // Entries are padded with one to eight NULs to a multiple of eight bytes.
            let length = at + end - start;
            at = start + (length + 8) / 8 * 8;
            name
        };
        if mode & TYPE_MASK == GITLINK {
            use std::os::unix::ffi::OsStrExt as _;
            out.push(PathBuf::from(std::ffi::OsStr::from_bytes(&name)));
        }
        previous = name;
    }
    out
}

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
            let found = gitlinks(&index, 20, 1000);
            assert_eq!(found, [PathBuf::from("a/sub"), PathBuf::from("vendor/lib"), PathBuf::from("z")], "v{version}");
        }
    }

    #[test]
    fn garbage_ends_the_reading() {
        assert!(gitlinks(b"DIRC\0\0\0\x02\0\0\0\x05short", 20, 1000).is_empty());
        assert!(gitlinks(b"not an index", 20, 1000).is_empty());
        assert_eq!(varint(&[0x80, 0x00]), Some((128, 2)));
        assert_eq!(varint(&[0x05]), Some((5, 1)));
    }
}
