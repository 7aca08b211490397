//! The git index reader, fed what the agent can leave in `.git/index` (leash reads it as root at
//! exit, `launcher/workdir_guard.rs`). Checks: no panic; what it reads stays within its caps (at
//! most `MAX_GITLINKS` gitlinks, each no longer than a path, from at most the entries allowed,
//! and a shared index's name as long as an object name).
#![no_main]

use leash::launcher::git_index::{read, MAX_GITLINKS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = data.first().copied().unwrap_or_default();
    let (hash_len, every_name) = (if first & 1 == 1 { 32 } else { 20 }, first & 2 == 2);
    let max_entries = 64;
    let bytes = data.get(1..).unwrap_or_default();
    let Ok(index) = read(bytes, hash_len, max_entries, every_name) else { return };
    assert!(every_name || index.names.is_empty());
    assert!(index.names.len() <= max_entries);
    assert!(!index.gitlinks.iter().any(|p| p.as_os_str().is_empty()), "a gitlink with no name is not a path");
    assert!(index.gitlinks.len() <= MAX_GITLINKS.min(max_entries));
    assert!(index.gitlinks.iter().all(|p| p.as_os_str().len() <= 4096));
    if let Some(shared) = &index.shared {
        assert_eq!(shared.len(), hash_len);
    }
});
