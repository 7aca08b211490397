//! Request targets as the agent writes them: normalisation and the readings the proxy judges.
//! Checks: no panic; normalisation is idempotent (a canonical path normalises to itself,
//! borrowed); the canonical path has none of the ambiguous spellings, nor anything else the Rego
//! policy's `normalized_path` refuses; a target and its canonical form have the same readings
//! once each is normalised, so every policy judges them alike.
#![no_main]

use std::borrow::Cow;
use std::collections::BTreeSet;

use leash::policy::normalize;
use leash::policy::readings::readings;
use libfuzzer_sys::fuzz_target;

/// The readings of a request, each as the decider sees it (method, normalised path or error);
/// `None` when the request is refused before any (more than `MAX_OVERRIDES` override values).
fn judged(method: &str, overrides: &[&str], target: &str) -> Option<BTreeSet<(String, Result<String, String>)>> {
    let all = readings(method, overrides.iter().copied(), target)?;
    Some(
        all.into_iter()
            .map(|r| {
                let path = normalize(&r.target).map(|n| n.path.into_owned()).map_err(|e| e.to_string());
                (r.method.into_owned(), path)
            })
            .collect(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `target` or `target\noverride`.
    let (target, overrides) = match text.split_once('\n') {
        Some((t, o)) => (t, vec![o]),
        None => (text, vec![]),
    };
    let _ = readings("get", overrides.iter().copied(), target);
    let Ok(n) = normalize(target) else {
        return;
    };
    let path = n.path.as_ref();
    assert!(path.starts_with('/') && !path.contains("//"), "{target:?} -> {path:?}");
    assert!(path.split('/').all(|s| s != "." && s != ".."), "{target:?} -> {path:?}");
    let lower = path.to_ascii_lowercase();
    assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%2e"), "{path:?}");
    // What `normalized_path` in policies/sandbox.rego also requires, or Rego would refuse a path
    // the decider judges: no backslash, control character, space, `?` or `#`, and no dot
    // segment with `;parameters`.
    assert!(!path.bytes().any(|b| b <= b' ' || b == 0x7f || matches!(b, b'\\' | b'?' | b'#')), "{path:?}");
    let dot_params = |s: &str| matches!(s.split(';').next(), Some("." | "..")) && s.contains(';');
    assert!(!path.split('/').any(dot_params), "{target:?} -> {path:?}");
    let again = normalize(path).expect("a canonical path normalises");
    assert!(matches!(again.path, Cow::Borrowed(_)), "{target:?}: {path:?} became {:?}", again.path);
    let canonical = match n.query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    assert_eq!(judged("GET", &overrides, target), judged("GET", &overrides, &canonical), "{target:?} vs {canonical:?}");
});
