//! The readings of one request that are judged, closing the gaps between how the policy reads a
//! request and how servers do. The proxy and `leash policy eval` both judge every reading, and
//! a request passes only if every reading passes:
//!
//! - the method as sent, which must be canonical (upper-case): `delete` would dodge a `DELETE`
//!   deny rule and still run as DELETE on servers that upper-case it;
//! - each method-override header (`X-HTTP-Method-Override`, ...) as a method, each item of a
//!   comma-separated value too (Express's `method-override` takes the first), and each `_method`
//!   parameter of the query (Laravel, Symfony and gorilla take it as the method);
//! - the path with `;parameters` removed from every segment and without a trailing slash, since
//!   many servers route `/admin;x/secret` and `/settings/` to the same handler as
//!   `/admin/secret` and `/settings`.
//!
//! [`judge_all`] is how the readings' verdicts make one: the proxy runs it with the compiled
//! decider, `leash policy eval` with the Rego policy, so the two cannot combine them differently.

use std::borrow::Cow;

use super::normalize::normalize;

/// Headers some frameworks take as the real method.
pub const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// One way a server may read a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading<'a> {
    pub method: Cow<'a, str>,
    pub target: Cow<'a, str>,
    /// What this reading is: `as sent`, `method override`, `without ;parameters`, ...
    pub name: &'static str,
}

/// Most distinct method-override and `_method` values one request may carry: each is a reading
/// of the whole target, and a request head may hold thousands of comma-separated items.
pub const MAX_OVERRIDES: usize = 8;

/// Every reading of a request with `method`, method-override header values `overrides` and
/// `target`, the request as sent first. `None` when the method is not canonical, or the request
/// carries more than [`MAX_OVERRIDES`] distinct override values.
pub fn readings<'a>(
    method: &'a str,
    overrides: impl IntoIterator<Item = &'a str>,
    target: &'a str,
) -> Option<Vec<Reading<'a>>> {
    if !is_canonical_method(method) {
        return None;
    }
    let mut methods: Vec<(Cow<'a, str>, &'static str)> = vec![(Cow::Borrowed(method), "as sent")];
    // Every value, whatever it is spelled as: one that names no method matches no allow rule, so
    // a server that reads it otherwise (trimming more, or other bytes) gets nothing past a list
    // of what is allowed. (Learning writes only those that are methods: `learn::request_rules`.)
    // `_method` counts on POST only, as every framework that reads it does.
    let overridden =
        overrides.into_iter().flat_map(|v| v.split(',')).map(|m| (m.trim().to_ascii_uppercase(), "method override"));
    let parameters = if method == "POST" { query_methods(target) } else { Vec::new() };
    let parameters = parameters.into_iter().map(|m| (m.trim().to_ascii_uppercase(), "_method parameter"));
    for (m, name) in overridden.chain(parameters) {
        if !methods.iter().any(|(seen, _)| *seen == m) {
            methods.push((Cow::Owned(m), name));
        }
        if methods.len() > MAX_OVERRIDES + 1 {
            return None;
        }
    }

    let targets = target_readings(target);
    let mut out = Vec::new();
    for (m, method_name) in &methods {
        for (t, target_name) in &targets {
            let name = if *target_name == "as sent" { method_name } else { target_name };
            out.push(Reading { method: m.clone(), target: t.clone(), name });
        }
    }
    Some(out)
}

/// The values of the `_method` parameters of `target`'s query, percent-decoded (`+` as a
/// space, as forms write it). A key is read as PHP reads it: leading spaces dropped, cut at a
/// NUL, and `.`, ` ` and `[` as `_` (so `.method` and ` _method` are `_method` to Laravel).
fn query_methods(target: &str) -> Vec<String> {
    let Some((_, query)) = target.split_once('?') else { return Vec::new() };
    let as_php_reads = |key: &str| -> String {
        let key = percent_decoded(key);
        let key = key.trim_start_matches(' ');
        let key = key.split('\0').next().unwrap_or_default();
        key.chars().map(|c| if matches!(c, '.' | ' ' | '[') { '_' } else { c }).collect()
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| as_php_reads(key) == "_method")
        .map(|(_, value)| percent_decoded(value))
        .collect()
}

/// `text` with `+` as a space and `%XX` escapes decoded (a malformed one kept as written), as
/// a server reads a query parameter.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How one reading's verdict counts when all the readings are judged together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// Refused by the rules of an endpoint that only audits: let through, and recorded.
    Audited,
    Refused,
}

/// The verdict on a request as all its `readings`, with `judge` giving each reading's verdict and
/// `outcome` saying how it counts: the first refused reading decides; else the first one only
/// audited (so the audit record is written); else the request as sent (the first reading).
/// The verdict comes with the name of the reading that gave it; `None` only with no readings.
pub fn judge_all<V, E>(
    readings: &[Reading<'_>],
    mut judge: impl FnMut(&Reading<'_>) -> Result<V, E>,
    outcome: impl Fn(&V) -> Outcome,
) -> Result<Option<(V, &'static str)>, E> {
    let mut chosen: Option<(V, &'static str, Outcome)> = None;
    for reading in readings {
        let verdict = judge(reading)?;
        let counts = outcome(&verdict);
        if counts == Outcome::Refused {
            return Ok(Some((verdict, reading.name)));
        }
        let better = match &chosen {
            None => true,
            Some((_, _, was)) => counts == Outcome::Audited && *was != Outcome::Audited,
        };
        if better {
            chosen = Some((verdict, reading.name, counts));
        }
    }
    Ok(chosen.map(|(verdict, name, _)| (verdict, name)))
}

/// RFC 9110 methods are case-sensitive tokens; the ones servers act on are upper-case.
pub fn is_canonical_method(method: &str) -> bool {
    !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// The target as sent, plus the readings servers commonly give it. Those are taken from the
/// canonical form when the target has one, so `/a/b/.` is read as `/a/b/` is (with `/a/b`).
fn target_readings(target: &str) -> Vec<(Cow<'_, str>, &'static str)> {
    let canonical = normalize(target).ok();
    let (path, query) = match &canonical {
        Some(n) => (n.path.as_ref(), n.query),
        None => match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        },
    };
    let mut out = vec![(Cow::Borrowed(target), "as sent")];
    let with_query = |p: &str| match query {
        Some(q) => format!("{p}?{q}"),
        None => p.to_owned(),
    };
    let without_slash = |p: &str| {
        let trimmed = p.trim_end_matches('/');
        (trimmed.len() < p.len() && !trimmed.is_empty()).then(|| with_query(trimmed))
    };
    let semicolons = path.replace("%3B", ";").replace("%3b", ";");
    if semicolons.contains(';') {
        let stripped: Vec<&str> = semicolons.split('/').map(|seg| seg.split(';').next().unwrap_or("")).collect();
        let stripped = stripped.join("/");
        out.push((Cow::Owned(with_query(&stripped)), "without ;parameters"));
        if let Some(both) = without_slash(&stripped) {
            out.push((Cow::Owned(both), "without ;parameters"));
        }
    }
    if let Some(trimmed) = without_slash(path) {
        out.push((Cow::Owned(trimmed), "without the trailing slash"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(target: &str) -> Vec<String> {
        target_readings(target).into_iter().map(|(t, _)| t.into_owned()).collect()
    }

    #[test]
    fn readings_strip_parameters_and_trailing_slashes() {
        assert_eq!(targets("/admin;x/secret?a=1"), ["/admin;x/secret?a=1", "/admin/secret?a=1"]);
        assert_eq!(targets("/admin%3Bx/secret"), ["/admin%3Bx/secret", "/admin/secret"]);
        assert_eq!(targets("/settings/"), ["/settings/", "/settings"]);
        assert_eq!(targets("/"), ["/"]);
    }

    #[test]
    fn dot_segments_do_not_hide_the_trailing_slash_reading() {
        // Found by the `normalize` fuzz target: `/a/b/./` was judged only as `/a/b/`, so a rule
        // on `/a/b` that `/a/b/` meets (through its trailing-slash reading) let it through.
        assert_eq!(targets("/a/b/./?c?x=1"), ["/a/b/./?c?x=1", "/a/b?c?x=1"]);
        assert_eq!(targets("/admin/."), ["/admin/.", "/admin"]);
        assert_eq!(targets("/admin;x/"), ["/admin;x/", "/admin/", "/admin", "/admin;x"]);
    }

    #[test]
    fn overrides_are_readings_of_their_own() {
        let r = readings("POST", ["delete"], "/x/").unwrap();
        let pairs: Vec<(&str, &str, &str)> = r.iter().map(|r| (&*r.method, &*r.target, r.name)).collect();
        assert_eq!(
            pairs,
            [
                ("POST", "/x/", "as sent"),
                ("POST", "/x", "without the trailing slash"),
                ("DELETE", "/x/", "method override"),
                ("DELETE", "/x", "without the trailing slash"),
            ]
        );
    }

    /// Express's `method-override` takes the first item of a comma-separated header; Laravel,
    /// Symfony and gorilla take a `_method` query parameter (percent-decoded) as the method.
    #[test]
    fn override_lists_and_method_parameters_are_readings_too() {
        let methods = |overrides: &[&str], target: &str| -> Vec<String> {
            let r = readings("POST", overrides.iter().copied(), target).unwrap();
            let mut m: Vec<String> = r.iter().map(|r| r.method.to_string()).collect();
            m.dedup();
            m
        };
        assert_eq!(methods(&["DELETE, GET"], "/x"), ["POST", "DELETE", "GET"]);
        assert_eq!(methods(&[], "/item/1?_method=delete"), ["POST", "DELETE"]);
        assert_eq!(methods(&[], "/item/1?a=1&%5Fmethod=DEL%45TE"), ["POST", "DELETE"]);
        assert_eq!(methods(&[], "/item/1?_methodx=DELETE&b=_method"), ["POST"]);
        // On POST only; and no more than MAX_OVERRIDES distinct values.
        let get: Vec<String> =
            readings("GET", [], "/x?_method=").unwrap().iter().map(|r| r.method.to_string()).collect();
        assert!(get.iter().all(|m| m == "GET"), "{get:?}");
        let many = ["A,B,C,D,E,F,G,H,I"];
        assert!(readings("POST", many.iter().copied(), "/x").is_none(), "nine distinct overrides are refused");
        let repeated = vec![",,,,,,,,,,,,DELETE,DELETE"; 100];
        assert_eq!(readings("POST", repeated.iter().copied(), "/x").map(|r| r.len()), Some(3), "repeats count once");
        // PHP's reading of the key.
        assert_eq!(methods(&[], "/x?.method=delete"), ["POST", "DELETE"]);
        assert_eq!(methods(&[], "/x?+_method=delete"), ["POST", "DELETE"]);
        assert_eq!(methods(&[], "/x?_method%00x=delete"), ["POST", "DELETE"]);
        // A value not spelled as a method is a reading too: it matches no allow rule. (Trimmed
        // as servers trim: `DELETE` and a no-break space is DELETE.)
        assert_eq!(methods(&["DEL'ETE"], "/x"), ["POST", "DEL'ETE"]);
        assert_eq!(methods(&["DELETE\u{a0}"], "/x"), ["POST", "DELETE"]);
        assert_eq!(percent_decoded("a%2"), "a%2");
        assert_eq!(percent_decoded("%zz+b"), "%zz b");
    }

    #[test]
    fn only_upper_case_methods_are_canonical() {
        assert!(is_canonical_method("DELETE") && is_canonical_method("GET"));
        assert!(!is_canonical_method("delete") && !is_canonical_method("Get") && !is_canonical_method(""));
        assert!(readings("get", [], "/").is_none());
    }
}

/// Generated targets (issue 16); the `normalize` fuzz target checks the same on arbitrary input.
#[cfg(test)]
mod properties {
    use std::collections::BTreeSet;

    use super::*;
    use crate::normalize::PathError;
    use proptest::prelude::*;

    const PIECES: [&str; 16] =
        ["/", "//", "a", "admin", ".", "..", "%2e", "%2E", "%3b", "%3B", ";", ";x", "x=1", "?", "%41", "b"];

    /// The readings of a request as the decider judges them: method and normalised path.
    fn judged(method: &str, overrides: &[&str], target: &str) -> BTreeSet<(String, Result<String, String>)> {
        readings(method, overrides.iter().copied(), target)
            .expect("a canonical method")
            .into_iter()
            .map(|r| {
                let path = normalize(&r.target).map(|n| n.path.into_owned()).map_err(|e: PathError| e.to_string());
                (r.method.into_owned(), path)
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every policy judges a request and its canonical spelling alike: the decider sees each
        /// reading only through `normalize`, so equal sets of normalised readings mean equal
        /// verdicts (a path that normalises to an allowed one is allowed under every reading, a
        /// denied one denied under all).
        #[test]
        fn a_target_and_its_canonical_form_have_the_same_readings(
            pieces in proptest::collection::vec(proptest::sample::select(&PIECES[..]), 0..10),
            overrides in proptest::collection::vec(proptest::sample::select(&["delete", " PUT", "get"][..]), 0..2),
        ) {
            let target = format!("/{}", pieces.concat());
            let Ok(n) = normalize(&target) else { return Ok(()); };
            let canonical = match n.query {
                Some(q) => format!("{}?{q}", n.path),
                None => n.path.into_owned(),
            };
            prop_assert_eq!(judged("GET", &overrides, &target), judged("GET", &overrides, &canonical), "{} vs {}", target, canonical);
        }
    }
}
