//! Request-path normalisation: the one spelling of a request path that rules are matched against.
//!
//! An agent that may `GET /repos/**` but not `GET /admin/**` must not reach `/admin` by writing
//! `/repos/../admin`, `/repos/%2e%2e/admin`, `//admin` or `/%61dmin`. Before any rule sees a
//! path, [`normalize`] turns the request target into a canonical form, or refuses it when no
//! single canonical form exists:
//!
//! | input | result |
//! |---|---|
//! | `/a/b?x=1` | path `/a/b`, query `x=1` (the query is split off and returned as is) |
//! | `/%61%7e` | `/a~` (every escape of a printable ASCII character is decoded) |
//! | `/a%2e%2E/` | `/a../` (`%2e` is a dot, and `a..` is a name, not a dot segment) |
//! | `/a%3f` | `/a%3F` (`?`, `#`, `%`, space and non-ASCII bytes stay encoded, hex upper-cased) |
//! | `/a//b///` | `/a/b/` (empty segments collapse; a trailing slash is kept) |
//! | `/a/./b/../c`, `/a/%2e%2e/c` | `/c`, `/c` (dot segments resolved, after decoding) |
//! | `/a/..` | `/` (a trailing dot segment leaves a trailing slash, as RFC 3986 does) |
//! | `/..`, `/a/../..` | error: `..` above the root |
//! | `/a%2Fb`, `/a%5cb`, `/a\b` | error: an encoded slash or any backslash means different paths to different servers |
//! | `/a/..;x/b` | error: a dot segment with parameters (some servers treat `..;` as `..`) |
//! | `/a%00`, `/a\tb`, `/é`, `/a#f`, `a`, `*` | error: control character, non-ASCII, fragment, not origin-form |
//!
//! The canonical path is for matching only: the proxy forwards the request as the agent wrote it,
//! which is why every input whose meaning depends on the server is refused rather than guessed.

use std::borrow::Cow;

/// A request target split into its normalised path and its raw query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedTarget<'a> {
    /// The canonical path: starts with `/`, no empty, `.` or `..` segments, no `%2F`/`%5C`.
    /// Borrowed when the input was already canonical.
    pub path: Cow<'a, str>,
    /// The query after the first `?`, without it, unchanged; `None` when there is no `?`.
    pub query: Option<&'a str>,
}

/// Why a request path has no canonical form; such a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is empty or does not start with `/` (asterisk-form or a relative reference).
    #[error("request path must start with `/`")]
    NotAbsolute,
    /// `%2F`: servers disagree on whether it separates segments.
    #[error("request path contains an encoded slash (`%2F`), which servers interpret differently")]
    EncodedSlash,
    /// `%5C` or a literal `\`: some servers treat a backslash as a slash.
    #[error("request path contains a backslash (`\\` or `%5C`), which some servers treat as `/`")]
    Backslash,
    /// `%` not followed by two hex digits.
    #[error("request path has a malformed percent escape at byte {0}")]
    BadEscape(usize),
    /// A control character or space, raw or percent-encoded (`%00`, `%0A`, ...), in the path,
    /// or a control character in the query.
    #[error("request target contains a control character or space at byte {0}")]
    ControlChar(usize),
    /// A byte outside ASCII (a request target is ASCII; non-ASCII must be percent-encoded).
    #[error("request target contains a non-ASCII character at byte {0}")]
    NonAscii(usize),
    /// A `#`: fragments are never sent to servers.
    #[error("request target contains a fragment (`#`)")]
    Fragment,
    /// More `..` segments than there are segments to remove.
    #[error("request path climbs above the root with `..`")]
    AboveRoot,
    /// `.;x` or `..;x`: some servers drop the parameters and then resolve the dot segment.
    #[error("request path has a dot segment with parameters (`..;`)")]
    DotSegmentParams,
}

/// Normalises a request target in origin form (`/path?query`); see the module documentation.
pub fn normalize(target: &str) -> Result<NormalizedTarget<'_>, PathError> {
    let (raw_path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if let Some(query) = query {
        check_query(query, raw_path.len() + 1)?;
    }
    if !raw_path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode(raw_path)?;
    let path = match decoded {
        Cow::Borrowed(path) => resolve_segments(path)?,
        Cow::Owned(path) => Cow::Owned(resolve_segments(&path)?.into_owned()),
    };
    Ok(NormalizedTarget { path, query })
}

/// Refuses control characters, non-ASCII bytes and fragments in the query (`offset`: where the
/// query starts in the target, for error positions).
fn check_query(query: &str, offset: usize) -> Result<(), PathError> {
    for (i, b) in query.bytes().enumerate() {
        match b {
            b'#' => return Err(PathError::Fragment),
            0x00..=0x20 | 0x7f => return Err(PathError::ControlChar(offset + i)),
            0x80..=0xff => return Err(PathError::NonAscii(offset + i)),
            _ => {}
        }
    }
    Ok(())
}

/// What a percent escape becomes in the canonical path.
enum Escape {
    /// Decoded to this printable ASCII character.
    Decode(u8),
    /// Kept encoded, written with upper-case hex.
    Keep,
}

/// Classifies the byte an escape stands for.
fn classify_escape(value: u8, at: usize) -> Result<Escape, PathError> {
    match value {
        b'/' => Err(PathError::EncodedSlash),
        b'\\' => Err(PathError::Backslash),
        0x00..=0x1f | 0x7f => Err(PathError::ControlChar(at)),
        // Structural characters (and space) would change the path's shape or meaning if decoded.
        b'%' | b'?' | b'#' | b' ' | 0x80..=0xff => Ok(Escape::Keep),
        _ => Ok(Escape::Decode(value)),
    }
}

/// The value of one hex digit.
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Checks every byte of the path and decodes percent escapes; borrows when nothing changes.
fn decode(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::BadEscape(i));
                };
                let value = hi << 4 | lo;
                let canonical: &[u8] = &[b'%', upper_hex(hi), upper_hex(lo)];
                match classify_escape(value, i)? {
                    Escape::Decode(c) => out.get_or_insert_with(|| bytes[..i].to_vec()).push(c),
                    Escape::Keep if &bytes[i..i + 3] == canonical => {
                        if let Some(out) = out.as_mut() {
                            out.extend_from_slice(canonical);
                        }
                    }
                    Escape::Keep => out.get_or_insert_with(|| bytes[..i].to_vec()).extend_from_slice(canonical),
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::Backslash),
            b'#' => return Err(PathError::Fragment),
            0x00..=0x20 | 0x7f => return Err(PathError::ControlChar(i)),
            0x80..=0xff => return Err(PathError::NonAscii(i)),
            _ => {
                if let Some(out) = out.as_mut() {
                    out.push(b);
                }
            }
        }
        i += 1;
    }
    Ok(match out {
        // Only ASCII was pushed: every byte was checked or produced above.
        Some(out) => Cow::Owned(out.into_iter().map(char::from).collect()),
        None => Cow::Borrowed(path),
    })
}

/// An upper-case hex digit for a nibble.
fn upper_hex(nibble: u8) -> u8 {
    b"0123456789ABCDEF"[usize::from(nibble & 0x0f)]
}

/// Whether a decoded segment is `.` or `..`, and refuses those with `;` parameters.
fn dot_segment(segment: &str) -> Result<Option<DotSegment>, PathError> {
    let bare = segment.split_once(';').map_or(segment, |(bare, _)| bare);
    let kind = match bare {
        "." => DotSegment::Current,
        ".." => DotSegment::Parent,
        _ => return Ok(None),
    };
    if bare.len() != segment.len() {
        return Err(PathError::DotSegmentParams);
    }
    Ok(Some(kind))
}

/// `.` or `..`.
#[derive(Clone, Copy)]
enum DotSegment {
    Current,
    Parent,
}

/// Collapses empty segments and resolves dot segments of a decoded path starting with `/`.
fn resolve_segments(path: &str) -> Result<Cow<'_, str>, PathError> {
    let mut segments: Vec<&str> = Vec::new();
    let mut changed = false;
    let mut trailing_slash = false;
    // The first split item is the empty string before the leading `/`.
    for segment in path.split('/').skip(1) {
        trailing_slash = false;
        if segment.is_empty() {
            // `//` in the middle, or the trailing slash (kept only when last).
            trailing_slash = true;
            continue;
        }
        match dot_segment(segment)? {
            Some(DotSegment::Current) => {
                changed = true;
                trailing_slash = true;
            }
            Some(DotSegment::Parent) => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                changed = true;
                trailing_slash = true;
            }
            None => segments.push(segment),
        }
    }
    let mut length = segments.iter().map(|s| s.len() + 1).sum::<usize>();
    if trailing_slash || segments.is_empty() {
        length += 1;
    }
    if !changed && length == path.len() {
        return Ok(Cow::Borrowed(path));
    }
    let mut out = String::with_capacity(length);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The normalised path of `target`, panicking on error.
    fn path(target: &str) -> String {
        match normalize(target) {
            Ok(n) => n.path.into_owned(),
            Err(e) => panic!("{target:?}: {e}"),
        }
    }

    /// The error for `target`, panicking if it normalises.
    fn error(target: &str) -> PathError {
        match normalize(target) {
            Ok(n) => panic!("{target:?} normalised to {:?}", n.path),
            Err(e) => e,
        }
    }

    #[test]
    fn canonical_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/repos/o/r/pulls",
            "/a.b/c..d/...",
            "/~user/x-y_z",
            "/a;b=c/d",
            "/a%3F",
            "/%C3%A9",
            "/a%25b",
            "/a:b@c!$&'()*+,=",
        ] {
            let n = normalize(p).unwrap_or_else(|e| panic!("{p}: {e}"));
            assert!(matches!(n.path, Cow::Borrowed(_)), "{p} was rewritten");
            assert_eq!(n.path, p);
            assert_eq!(n.query, None);
        }
    }

    #[test]
    fn query_is_split_off_unchanged() {
        let n = normalize("/a/../b?x=1&y=%2F/..").expect("valid");
        assert_eq!(n.path, "/b");
        assert_eq!(n.query, Some("x=1&y=%2F/.."));
        let n = normalize("/a?").expect("valid");
        assert_eq!((n.path.as_ref(), n.query), ("/a", Some("")));
        let n = normalize("/a?b?c").expect("valid");
        assert_eq!((n.path.as_ref(), n.query), ("/a", Some("b?c")));
        // The query is not normalised, so `..` and `%2F` in it are fine.
        assert_eq!(path("/?../.."), "/");
    }

    #[test]
    fn query_with_control_characters_or_fragment_is_refused() {
        assert_eq!(error("/a?x=\n"), PathError::ControlChar(5));
        assert_eq!(error("/a?x y"), PathError::ControlChar(4));
        assert_eq!(error("/a?x#f"), PathError::Fragment);
        assert_eq!(error("/a?é"), PathError::NonAscii(3));
    }

    #[test]
    fn unreserved_and_printable_escapes_are_decoded() {
        assert_eq!(path("/%61%62%63"), "/abc");
        assert_eq!(path("/%41%5A%30%39"), "/AZ09");
        assert_eq!(path("/%2D%2e%5F%7E"), "/-._~");
        assert_eq!(path("/user%40host"), "/user@host");
        assert_eq!(path("/a%3bb%3Dc"), "/a;b=c");
        assert_eq!(path("/%7B%7D%22"), "/{}\"");
    }

    #[test]
    fn structural_escapes_stay_encoded_with_upper_case_hex() {
        assert_eq!(path("/a%3fb"), "/a%3Fb");
        assert_eq!(path("/a%23b"), "/a%23b");
        assert_eq!(path("/a%25"), "/a%25");
        assert_eq!(path("/a%20b"), "/a%20b");
        assert_eq!(path("/%c3%a9"), "/%C3%A9");
        // A double-encoded dot is a literal `%2E` after one decoding, not a dot.
        assert_eq!(path("/a/%252e%252e/b"), "/a/%252e%252e/b");
    }

    #[test]
    fn encoded_dots_are_dots() {
        assert_eq!(path("/a/%2e%2e/b"), "/b");
        assert_eq!(path("/a/%2E%2E/b"), "/b");
        assert_eq!(path("/a/.%2e/b"), "/b");
        assert_eq!(path("/a/%2e/b"), "/a/b");
        assert_eq!(path("/a%2e%2e/b"), "/a../b");
        assert_eq!(error("/%2e%2e"), PathError::AboveRoot);
        assert_eq!(error("/a/%2e%2e/%2E%2e/x"), PathError::AboveRoot);
    }

    #[test]
    fn empty_segments_collapse() {
        assert_eq!(path("//"), "/");
        assert_eq!(path("///"), "/");
        assert_eq!(path("//a"), "/a");
        assert_eq!(path("/a//b"), "/a/b");
        assert_eq!(path("/a///b//"), "/a/b/");
        assert_eq!(path("/a/b/"), "/a/b/");
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(path("/."), "/");
        assert_eq!(path("/./"), "/");
        assert_eq!(path("/a/."), "/a/");
        assert_eq!(path("/a/./b"), "/a/b");
        assert_eq!(path("/a/.."), "/");
        assert_eq!(path("/a/../"), "/");
        assert_eq!(path("/a/b/.."), "/a/");
        assert_eq!(path("/a/b/../c"), "/a/c");
        assert_eq!(path("/a/b/../../c"), "/c");
        assert_eq!(path("/repos/../admin"), "/admin");
        assert_eq!(path("/a/./../b/./c/."), "/b/c/");
        assert_eq!(path("/a//..//b"), "/b");
        assert_eq!(path("/.../..../a"), "/.../..../a");
        assert_eq!(path("/.a/..b/a./b.."), "/.a/..b/a./b..");
    }

    #[test]
    fn climbing_above_the_root_is_refused() {
        for p in ["/..", "/../", "/../a", "/a/../..", "/a/../../b", "//..", "/./.."] {
            assert_eq!(error(p), PathError::AboveRoot, "{p}");
        }
    }

    #[test]
    fn encoded_slashes_and_backslashes_are_refused() {
        assert_eq!(error("/a%2fb"), PathError::EncodedSlash);
        assert_eq!(error("/a%2Fb"), PathError::EncodedSlash);
        assert_eq!(error("/%2F"), PathError::EncodedSlash);
        assert_eq!(error("/a%5cb"), PathError::Backslash);
        assert_eq!(error("/a%5Cb"), PathError::Backslash);
        assert_eq!(error("/a\\b"), PathError::Backslash);
        assert_eq!(error("/..\\"), PathError::Backslash);
    }

    #[test]
    fn malformed_escapes_are_refused() {
        assert_eq!(error("/a%"), PathError::BadEscape(2));
        assert_eq!(error("/a%2"), PathError::BadEscape(2));
        assert_eq!(error("/a%g0"), PathError::BadEscape(2));
        assert_eq!(error("/a%0g"), PathError::BadEscape(2));
        assert_eq!(error("/%%32%65"), PathError::BadEscape(1));
        assert_eq!(error("/a%+1"), PathError::BadEscape(2));
    }

    #[test]
    fn control_characters_are_refused_raw_and_encoded() {
        assert_eq!(error("/a\0"), PathError::ControlChar(2));
        assert_eq!(error("/a\tb"), PathError::ControlChar(2));
        assert_eq!(error("/a\r\nb"), PathError::ControlChar(2));
        assert_eq!(error("/a b"), PathError::ControlChar(2));
        assert_eq!(error("/a\x7f"), PathError::ControlChar(2));
        assert_eq!(error("/a%00"), PathError::ControlChar(2));
        assert_eq!(error("/a%0a"), PathError::ControlChar(2));
        assert_eq!(error("/a%0D%0A"), PathError::ControlChar(2));
        assert_eq!(error("/a%1F"), PathError::ControlChar(2));
        assert_eq!(error("/a%7f"), PathError::ControlChar(2));
    }

    #[test]
    fn non_ascii_and_fragments_are_refused() {
        assert_eq!(error("/é"), PathError::NonAscii(1));
        assert_eq!(error("/a/\u{212A}"), PathError::NonAscii(3));
        assert_eq!(error("/a#b"), PathError::Fragment);
        assert_eq!(error("/#"), PathError::Fragment);
    }

    #[test]
    fn targets_not_in_origin_form_are_refused() {
        for t in ["", "a", "a/b", "*", "?x", "http://h/a", "%2Fa", ".", ".."] {
            assert_eq!(error(t), PathError::NotAbsolute, "{t:?}");
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_refused() {
        assert_eq!(error("/a/..;/b"), PathError::DotSegmentParams);
        assert_eq!(error("/a/..;x=1/b"), PathError::DotSegmentParams);
        assert_eq!(error("/a/.;x"), PathError::DotSegmentParams);
        assert_eq!(error("/a/%2e%2e;/b"), PathError::DotSegmentParams);
        assert_eq!(error("/a/%2e%2e%3b/b"), PathError::DotSegmentParams);
        // Not a dot segment: a name that contains dots and a semicolon.
        assert_eq!(path("/a/...;x/b"), "/a/...;x/b");
        assert_eq!(path("/a/;../b"), "/a/;../b");
    }

    #[test]
    fn normalisation_is_idempotent() {
        let inputs = ["/a/%2e%2e/b//c/./d/", "/%61%3f%c3%a9/x", "//x/../y", "/a/b/..", "/repos/o/r/contents/a%3Bb"];
        for input in inputs {
            let once = path(input);
            let twice = normalize(&once).expect("a canonical path normalises");
            assert!(matches!(twice.path, Cow::Borrowed(_)), "{input}: {once} is not canonical, became {}", twice.path);
        }
    }

    #[test]
    fn canonical_output_never_contains_ambiguous_spellings() {
        // A small exhaustive sweep: every target built from these pieces either fails or yields
        // a path without `//`, dot segments, encoded slashes or lower-case escapes.
        let pieces = ["/", "a", ".", "..", "%2e", "%2E", "%2f", "%41", "%3f", ";", "%", "b"];
        let mut targets = vec![String::new()];
        for _ in 0..4 {
            targets = targets.iter().flat_map(|t| pieces.iter().map(move |p| format!("{t}{p}"))).collect();
            for t in &targets {
                let target = format!("/{t}");
                let Ok(n) = normalize(&target) else {
                    continue;
                };
                let p = n.path.as_ref();
                assert!(p.starts_with('/'), "{t}: {p}");
                assert!(!p.contains("//"), "{t}: {p}");
                assert!(p.split('/').all(|s| s != "." && s != ".."), "{t}: {p}");
                assert!(!p.to_ascii_lowercase().contains("%2f"), "{t}: {p}");
                assert!(!p.contains("%2e") && !p.contains("%2E"), "{t}: {p}");
                let again = normalize(p).map(|n| n.path.into_owned());
                assert_eq!(again, Ok(p.to_owned()));
            }
        }
    }
}

/// Generated targets (issue 16); the `normalize` fuzz target checks the same on arbitrary input.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Pieces that exercise every rule: dots raw and encoded, slashes, escapes of every class,
    /// parameters, a query.
    const PIECES: [&str; 20] = [
        "/", "//", "a", "B", ".", "..", "%2e", "%2E", "%2f", "%5c", "%41", "%3f", "%3b", "%3B", ";", "%", "%c3%a9",
        "?", "x=1", "~",
    ];

    fn target() -> impl Strategy<Value = String> {
        let pieces = proptest::collection::vec(proptest::sample::select(&PIECES[..]), 0..10);
        (pieces, "[ -~]{0,4}").prop_map(|(p, tail)| format!("/{}{tail}", p.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn normalisation_is_idempotent_and_canonical(target in target()) {
            if let Ok(n) = normalize(&target) {
                let path = n.path.as_ref();
                prop_assert!(path.starts_with('/') && !path.contains("//"), "{target} -> {path}");
                prop_assert!(path.split('/').all(|s| s != "." && s != ".."), "{target} -> {path}");
                let lower = path.to_ascii_lowercase();
                prop_assert!(!lower.contains("%2f") && !lower.contains("%5c") && !lower.contains("%2e"), "{path}");
                let again = normalize(path).expect("a canonical path normalises");
                prop_assert!(matches!(again.path, Cow::Borrowed(_)), "{target}: {path} became {}", again.path);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(target in "\\PC{0,24}") {
            let _ = normalize(&target);
        }
    }
}
