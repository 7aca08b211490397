//! Finding placeholders in a request and swapping in the real values.
//!
//! Enforces: a value is only ever written into a request whose host the credential is bound to;
//! if any placeholder in the part being rewritten is unknown or bound elsewhere, nothing is
//! rewritten at all (all-or-nothing, decided before any value is copied).
//!
//! Where placeholders are looked for, and what replaces them:
//!
//! | where | placeholder spelling | replaced by |
//! |---|---|---|
//! | every header value | literal | the value |
//! | `Authorization: Basic` credentials | literal, after base64 decoding | the value, then re-encoded |
//! | path and query of the request target (opted-in endpoints) | literal or percent-encoded (`leash%3Aresolve%3Aenv%3ANAME`, any mix) | the value, percent-encoded except `A-Z a-z 0-9 - . _ ~` |
//! | body (opted-in endpoints) | literal | the value |
//! | body (opted-in endpoints) | with at least one `%XX` escape | the value, percent-encoded as in the target |
//!
//! The scheme and authority of an absolute-form target are never rewritten.

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use hyper::http::header::AUTHORIZATION;
use hyper::http::request::Parts;
use hyper::http::uri::PathAndQuery;
use hyper::http::{HeaderValue, Uri};
use zeroize::Zeroizing;

use super::store::SecretStore;
use super::{CredentialError, PLACEHOLDER_PREFIXES, URL_VALUE};

/// What a rewrite did, for the audit log: credential names, never values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteReport {
    /// Names of the credentials swapped in, sorted, without duplicates.
    pub credentials: Vec<String>,
}

impl RewriteReport {
    /// Whether nothing was replaced.
    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty()
    }

    fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut credentials: Vec<String> = names.into_iter().map(str::to_owned).collect();
        credentials.sort();
        credentials.dedup();
        Self { credentials }
    }
}

/// One placeholder found in some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    /// Byte range in the input.
    start: usize,
    end: usize,
    /// The credential name it refers to.
    name: String,
    /// Whether it was spelled with at least one `%XX` escape.
    escaped: bool,
}

/// Whether `bytes` hold a placeholder, literal or percent-encoded. For callers that want to
/// audit a body they pass through untouched (such a body reaches the upstream with the literal
/// placeholder, which leaks nothing).
pub fn contains_placeholder(bytes: &[u8]) -> bool {
    !find(bytes, true).is_empty()
}

/// Replaces placeholders in the header values and `Authorization: Basic` of a request to `host`
/// (the normalised host the proxy connects to), and in its target when `in_target` (the
/// endpoint's `request_target_credential_rewrite`). Returns the names swapped in; on error the
/// request is unchanged.
pub fn rewrite_request_head(
    parts: &mut Parts,
    host: &str,
    store: &SecretStore,
    in_target: bool,
) -> Result<RewriteReport, CredentialError> {
    // Pass 1: find every placeholder, touching no value.
    let mut header_hits: Vec<HeaderHits> = Vec::new();
    for (index, (name, value)) in parts.headers.iter().enumerate() {
        let basic = if name == AUTHORIZATION { BasicAuth::parse(value.as_bytes()) } else { None };
        let hits = match basic {
            Some(basic) => match find(&basic.decoded, false) {
                found if !found.is_empty() => Hits::Basic { basic, found },
                _ => Hits::Plain(find(value.as_bytes(), false)),
            },
            None => Hits::Plain(find(value.as_bytes(), false)),
        };
        if !hits.found().is_empty() {
            header_hits.push(HeaderHits { index, hits });
        }
    }
    let target = parts.uri.path_and_query().map(PathAndQuery::as_str);
    let target_found = target.map(|t| find(t.as_bytes(), true)).unwrap_or_default();

    let all_names = header_hits.iter().flat_map(|h| h.hits.found()).chain(&target_found).map(|f| f.name.as_str());
    check_bound(all_names.clone(), host, store)?;
    if !in_target && !target_found.is_empty() {
        return Err(CredentialError::TargetNotOptedIn);
    }
    let report = RewriteReport::from_names(all_names);
    if report.is_empty() {
        return Ok(report);
    }

    // Pass 2: build every new value, still without changing the request.
    let mut new_headers: Vec<(usize, HeaderValue)> = Vec::with_capacity(header_hits.len());
    for HeaderHits { index, hits } in &header_hits {
        let header_name = || parts.headers.iter().nth(*index).map(|(n, _)| n.as_str().to_owned()).unwrap_or_default();
        let original = parts.headers.iter().nth(*index).map(|(_, v)| v.as_bytes());
        let bytes = match (hits, original) {
            (Hits::Basic { basic, found }, Some(original)) => {
                let decoded = substitute(&basic.decoded, found, host, store, Encoding::Raw)?;
                let mut out = Zeroizing::new(original[..basic.token_start].to_vec());
                out.extend_from_slice(Zeroizing::new(STANDARD.encode(&*decoded)).as_bytes());
                out
            }
            (Hits::Plain(found), Some(original)) => substitute(original, found, host, store, Encoding::Raw)?,
            (_, None) => continue,
        };
        let mut value = HeaderValue::from_bytes(&bytes)
            .map_err(|_| CredentialError::InvalidHeaderValue { header: header_name() })?;
        value.set_sensitive(true);
        new_headers.push((*index, value));
    }
    let new_uri = match target {
        Some(target) if !target_found.is_empty() => {
            let bytes = substitute(target.as_bytes(), &target_found, host, store, Encoding::Url)?;
            let path_and_query = PathAndQuery::try_from(&bytes[..]).map_err(|_| CredentialError::InvalidTarget)?;
            let mut uri_parts = parts.uri.clone().into_parts();
            uri_parts.path_and_query = Some(path_and_query);
            Some(Uri::from_parts(uri_parts).map_err(|_| CredentialError::InvalidTarget)?)
        }
        _ => None,
    };

    // Pass 3: apply.
    let mut replacements = new_headers.into_iter().peekable();
    for (index, (_, value)) in parts.headers.iter_mut().enumerate() {
        if replacements.peek().is_some_and(|(i, _)| *i == index) {
            if let Some((_, new)) = replacements.next() {
                *value = new;
            }
        }
    }
    if let Some(uri) = new_uri {
        parts.uri = uri;
    }
    Ok(report)
}

/// Replaces placeholders in a body sent to `host`, for endpoints with
/// `request_body_credential_rewrite: true`. `None` when the body holds no placeholder; an error
/// when it is longer than `limit` bytes or names a credential not bound to `host`. The caller
/// sends the returned body and sets `Content-Length` to its length.
pub fn rewrite_body(
    body: &[u8],
    host: &str,
    store: &SecretStore,
    limit: usize,
) -> Result<Option<Vec<u8>>, CredentialError> {
    if body.len() > limit {
        return Err(CredentialError::BodyTooLarge { limit });
    }
    let found = find(body, true);
    if found.is_empty() {
        return Ok(None);
    }
    check_bound(found.iter().map(|f| f.name.as_str()), host, store)?;
    let rewritten = substitute(body, &found, host, store, Encoding::ByEscaping)?;
    Ok(Some(rewritten.to_vec()))
}

/// Fails with the first name that is unknown or not bound to `host`.
fn check_bound<'a>(
    names: impl IntoIterator<Item = &'a str>,
    host: &str,
    store: &SecretStore,
) -> Result<(), CredentialError> {
    match names.into_iter().find(|name| !store.is_bound(name, host)) {
        Some(name) => Err(CredentialError::EndpointMismatch { credential: name.to_owned() }),
        None => Ok(()),
    }
}

/// The placeholders found in one header value.
struct HeaderHits {
    /// Position in `HeaderMap::iter()` order.
    index: usize,
    hits: Hits,
}

enum Hits {
    /// In the value as sent.
    Plain(Vec<Found>),
    /// In the decoded credentials of `Authorization: Basic`.
    Basic { basic: BasicAuth, found: Vec<Found> },
}

impl Hits {
    fn found(&self) -> &[Found] {
        match self {
            Hits::Plain(found) | Hits::Basic { found, .. } => found,
        }
    }
}

/// A parsed `Basic` authorization value.
struct BasicAuth {
    /// Where the base64 token starts in the header value (after `Basic` and spaces).
    token_start: usize,
    /// `user:password`, decoded.
    decoded: Zeroizing<Vec<u8>>,
}

impl BasicAuth {
    /// Parses `Basic <base64>` (scheme case-insensitive, padding optional); `None` for any
    /// other scheme or a token that is not base64.
    fn parse(value: &[u8]) -> Option<Self> {
        let scheme_len = value.iter().position(|b| *b == b' ')?;
        if !value[..scheme_len].eq_ignore_ascii_case(b"basic") {
            return None;
        }
        let token_start = scheme_len + value[scheme_len..].iter().take_while(|b| **b == b' ').count();
        let token = value[token_start..].trim_ascii_end();
        let decoded = STANDARD.decode(token).or_else(|_| STANDARD_NO_PAD.decode(token)).ok()?;
        Some(Self { token_start, decoded: Zeroizing::new(decoded) })
    }
}

/// How a value is written where its placeholder was.
#[derive(Clone, Copy)]
enum Encoding {
    /// As is.
    Raw,
    /// Percent-encoded (request target).
    Url,
    /// Percent-encoded if the placeholder was, else as is (bodies).
    ByEscaping,
}

/// `input` with each found placeholder replaced by its value.
fn substitute(
    input: &[u8],
    found: &[Found],
    host: &str,
    store: &SecretStore,
    encoding: Encoding,
) -> Result<Zeroizing<Vec<u8>>, CredentialError> {
    let mut out = Zeroizing::new(Vec::with_capacity(input.len() + 64 * found.len()));
    let mut copied = 0;
    for f in found {
        let value = store
            .bound_value(&f.name, host)
            .ok_or_else(|| CredentialError::EndpointMismatch { credential: f.name.clone() })?;
        out.extend_from_slice(&input[copied..f.start]);
        let url = match encoding {
            Encoding::Raw => false,
            Encoding::Url => true,
            Encoding::ByEscaping => f.escaped,
        };
        if url {
            for piece in percent_encoding::utf8_percent_encode(value, URL_VALUE) {
                out.extend_from_slice(piece.as_bytes());
            }
        } else {
            out.extend_from_slice(value.as_bytes());
        }
        copied = f.end;
    }
    out.extend_from_slice(&input[copied..]);
    Ok(out)
}

/// Every placeholder in `input`, left to right, not overlapping. With `percent`, each character
/// of a placeholder may also be spelled `%XX` (hex case-insensitive).
fn find(input: &[u8], percent: bool) -> Vec<Found> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        match placeholder_at(input, pos, percent) {
            Some(found) => {
                pos = found.end;
                out.push(found);
            }
            None => pos += 1,
        }
    }
    out
}

/// The placeholder starting at `start`, if any; its name is the longest valid run.
fn placeholder_at(input: &[u8], start: usize, percent: bool) -> Option<Found> {
    'prefixes: for prefix in PLACEHOLDER_PREFIXES {
        let mut pos = start;
        let mut escaped = false;
        for &want in prefix.as_bytes() {
            match unit_at(input, pos, percent) {
                Some((got, len)) if got == want => {
                    escaped |= len > 1;
                    pos += len;
                }
                _ => continue 'prefixes,
            }
        }
        let mut name = String::new();
        while let Some((c, len)) = unit_at(input, pos, percent) {
            let valid = c == b'_' || c.is_ascii_alphabetic() || (!name.is_empty() && c.is_ascii_digit());
            if !valid {
                break;
            }
            name.push(char::from(c));
            escaped |= len > 1;
            pos += len;
        }
        if !name.is_empty() {
            return Some(Found { start, end: pos, name, escaped });
        }
    }
    None
}

/// The byte at `pos` and how many input bytes spell it (3 for a `%XX` escape when `percent`).
fn unit_at(input: &[u8], pos: usize, percent: bool) -> Option<(u8, usize)> {
    let byte = *input.get(pos)?;
    if percent && byte == b'%' {
        let hex = input.get(pos + 1..pos + 3)?;
        let high = char::from(hex[0]).to_digit(16)?;
        let low = char::from(hex[1]).to_digit(16)?;
        return u8::try_from(high * 16 + low).ok().map(|b| (b, 3));
    }
    Some((byte, 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Credential;
    use hyper::http::Request;

    const GITHUB: &str = "ghp_REALgithubVALUE123";
    const NPM: &str = "npm/tok+en=";

    fn store() -> SecretStore {
        let cred = |name: &str, hosts: &[&str]| Credential {
            name: name.to_owned(),
            hosts: hosts.iter().map(|h| h.parse().expect("pattern")).collect(),
            required: true,
        };
        let creds =
            [cred("GITHUB_TOKEN", &["github.com", "api.github.com"]), cred("NPM_TOKEN", &["registry.npmjs.org"])];
        let text = format!("GITHUB_TOKEN={GITHUB}\nNPM_TOKEN={NPM}\n");
        SecretStore::from_file_text(&creds, "test", &text).expect("store")
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    fn header<'a>(parts: &'a Parts, name: &str) -> &'a str {
        parts.headers.get(name).and_then(|v| v.to_str().ok()).expect("header")
    }

    fn names(list: &[&str]) -> RewriteReport {
        RewriteReport { credentials: list.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn bound_host_gets_the_value_in_a_header() {
        let mut p = parts(
            "/user",
            &[
                ("authorization", "Bearer leash:resolve:env:GITHUB_TOKEN"),
                ("x-other", "a leash:resolve:env:GITHUB_TOKEN b"),
                ("accept", "application/json"),
            ],
        );
        let report = rewrite_request_head(&mut p, "api.github.com", &store(), true).expect("rewrite");
        assert_eq!(report, names(&["GITHUB_TOKEN"]));
        assert_eq!(header(&p, "authorization"), format!("Bearer {GITHUB}"));
        assert_eq!(header(&p, "x-other"), format!("a {GITHUB} b"));
        assert_eq!(header(&p, "accept"), "application/json");
        assert!(p.headers["authorization"].is_sensitive());
        assert!(!format!("{p:?}").contains(GITHUB), "rewritten headers print as Sensitive");
    }

    #[test]
    fn openshell_prefix_and_repeated_headers() {
        let mut p = parts(
            "/",
            &[
                ("x-token", "openshell:resolve:env:GITHUB_TOKEN"),
                ("x-token", "plain"),
                ("x-token", "leash:resolve:env:GITHUB_TOKEN"),
            ],
        );
        rewrite_request_head(&mut p, "github.com", &store(), true).expect("rewrite");
        let values: Vec<&str> = p.headers.get_all("x-token").iter().map(|v| v.to_str().expect("ascii")).collect();
        assert_eq!(values, [GITHUB, "plain", GITHUB]);
    }

    #[test]
    fn query_and_percent_encoded_path() {
        let mut p = parts("/pkg/leash%3Aresolve%3aenv%3ANPM_TOKEN/x?token=leash:resolve:env:NPM_TOKEN&b=1", &[]);
        let report = rewrite_request_head(&mut p, "registry.npmjs.org", &store(), true).expect("rewrite");
        assert_eq!(report, names(&["NPM_TOKEN"]));
        // The value is percent-encoded where it lands in the URL.
        assert_eq!(
            p.uri.path_and_query().map(PathAndQuery::as_str),
            Some("/pkg/npm%2Ftok%2Ben%3D/x?token=npm%2Ftok%2Ben%3D&b=1")
        );
    }

    #[test]
    fn target_is_rewritten_only_when_the_endpoint_opts_in() {
        let mut p = parts("/pkg/leash:resolve:env:NPM_TOKEN", &[("x", "leash:resolve:env:NPM_TOKEN")]);
        let before = format!("{p:?}");
        let err = rewrite_request_head(&mut p, "registry.npmjs.org", &store(), false).expect_err("not opted in");
        assert_eq!((err.clone(), err.code()), (CredentialError::TargetNotOptedIn, "credential_in_target"));
        assert_eq!(format!("{p:?}"), before, "request unchanged");
        // Headers alone need no opt-in; an unbound name is still a mismatch first.
        let mut p = parts("/pkg", &[("x", "leash:resolve:env:NPM_TOKEN")]);
        assert!(rewrite_request_head(&mut p, "registry.npmjs.org", &store(), false).is_ok());
        let mut p = parts("/?q=leash:resolve:env:GITHUB_TOKEN", &[]);
        let err = rewrite_request_head(&mut p, "registry.npmjs.org", &store(), false).expect_err("unbound");
        assert_eq!(err.code(), "credential_endpoint_mismatch");
    }

    #[test]
    fn absolute_form_keeps_scheme_and_authority() {
        let mut p = parts("http://api.github.com/repos?access_token=%6Ceash:resolve:env:GITHUB_TOKEN", &[]);
        rewrite_request_head(&mut p, "api.github.com", &store(), true).expect("rewrite");
        assert_eq!(p.uri.to_string(), format!("http://api.github.com/repos?access_token={GITHUB}"));
    }

    #[test]
    fn basic_auth_user_and_password_are_swapped_and_reencoded() {
        // What git sends for https://x-access-token:leash:resolve:env:GITHUB_TOKEN@github.com
        let sent = STANDARD.encode("x-access-token:leash:resolve:env:GITHUB_TOKEN");
        let mut p = parts("/org/repo.git/info/refs", &[("authorization", &format!("Basic {sent}"))]);
        let report = rewrite_request_head(&mut p, "github.com", &store(), true).expect("rewrite");
        assert_eq!(report, names(&["GITHUB_TOKEN"]));
        let expected = STANDARD.encode(format!("x-access-token:{GITHUB}"));
        assert_eq!(header(&p, "authorization"), format!("Basic {expected}"));

        // The placeholder as the user name, unpadded token, lower-case scheme.
        let sent = STANDARD_NO_PAD.encode("leash:resolve:env:GITHUB_TOKEN:x-oauth-basic");
        let mut p = parts("/", &[("authorization", &format!("basic  {sent}"))]);
        rewrite_request_head(&mut p, "github.com", &store(), true).expect("rewrite");
        let expected = STANDARD.encode(format!("{GITHUB}:x-oauth-basic"));
        assert_eq!(header(&p, "authorization"), format!("basic  {expected}"));
    }

    #[test]
    fn unbound_host_is_a_mismatch_and_nothing_changes() {
        let basic = format!("Basic {}", STANDARD.encode("u:leash:resolve:env:GITHUB_TOKEN"));
        let cases: [(&str, Vec<(&str, &str)>); 4] = [
            ("/", vec![("authorization", "token leash:resolve:env:GITHUB_TOKEN")]),
            ("/?q=leash%3Aresolve%3Aenv%3AGITHUB_TOKEN", vec![]),
            ("/", vec![("authorization", basic.as_str())]),
            // A bound placeholder does not carry an unbound one through.
            ("/?a=leash:resolve:env:NPM_TOKEN", vec![("x-a", "leash:resolve:env:GITHUB_TOKEN")]),
        ];
        for (uri, headers) in cases {
            let mut p = parts(uri, &headers);
            let before = format!("{p:?}");
            let err = rewrite_request_head(&mut p, "registry.npmjs.org", &store(), true).expect_err("mismatch");
            assert_eq!(err, CredentialError::EndpointMismatch { credential: "GITHUB_TOKEN".into() }, "{uri}");
            assert_eq!(err.code(), "credential_endpoint_mismatch");
            assert_eq!(format!("{p:?}"), before, "request unchanged");
            assert!(!format!("{err} {err:?}").contains(GITHUB));
        }
        // Pattern matching is by the policy's host patterns: a lookalike is not bound.
        let mut p = parts("/", &[("x", "leash:resolve:env:GITHUB_TOKEN")]);
        assert!(rewrite_request_head(&mut p, "github.com.evil.org", &store(), true).is_err());
    }

    #[test]
    fn unknown_name_is_a_mismatch() {
        let mut p = parts("/", &[("x", "openshell:resolve:env:AWS_SECRET")]);
        let err = rewrite_request_head(&mut p, "github.com", &store(), true).expect_err("unknown");
        assert_eq!(err, CredentialError::EndpointMismatch { credential: "AWS_SECRET".into() });
        // The longest name is taken: a known name followed by more name characters is unknown.
        let mut p = parts("/", &[("x", "leash:resolve:env:GITHUB_TOKENX")]);
        assert!(rewrite_request_head(&mut p, "github.com", &store(), true).is_err());
    }

    #[test]
    fn requests_without_placeholders_are_untouched() {
        let mut p = parts(
            "/a?b=leash:resolve:env:&c=leash:resolve:env:1X",
            &[("x", "leash:resolve:env:"), ("y", "LEASH:resolve:env:GITHUB_TOKEN")],
        );
        let before = format!("{p:?}");
        let report = rewrite_request_head(&mut p, "github.com", &store(), true).expect("nothing");
        assert!(report.is_empty());
        assert_eq!(format!("{p:?}"), before);
    }

    #[test]
    fn body_rewrite() {
        let s = store();
        let body = br#"{"token":"leash:resolve:env:NPM_TOKEN","n":1}"#;
        let out = rewrite_body(body, "registry.npmjs.org", &s, 1024).expect("rewrite").expect("changed");
        assert_eq!(out, format!(r#"{{"token":"{NPM}","n":1}}"#).into_bytes());
        // Form-encoded: the escaped placeholder gets the escaped value.
        let form = b"user=me&pass=leash%3Aresolve%3Aenv%3ANPM_TOKEN";
        let out = rewrite_body(form, "registry.npmjs.org", &s, 1024).expect("rewrite").expect("changed");
        assert_eq!(out, b"user=me&pass=npm%2Ftok%2Ben%3D".to_vec());
        assert_eq!(rewrite_body(b"{}", "registry.npmjs.org", &s, 1024), Ok(None));
        assert_eq!(
            rewrite_body(body, "registry.npmjs.org", &s, body.len() - 1),
            Err(CredentialError::BodyTooLarge { limit: body.len() - 1 })
        );
        assert!(rewrite_body(body, "registry.npmjs.org", &s, body.len()).is_ok());
        assert_eq!(
            rewrite_body(body, "github.com", &s, 1024),
            Err(CredentialError::EndpointMismatch { credential: "NPM_TOKEN".into() })
        );
        assert!(contains_placeholder(body) && contains_placeholder(form));
        assert!(!contains_placeholder(b"leash:resolve:env:"));
    }

    #[test]
    fn scanner_edges() {
        assert_eq!(
            find(b"xleash:resolve:env:A_1-", false),
            [Found { start: 1, end: 22, name: "A_1".into(), escaped: false }]
        );
        assert!(find(b"leash%3Aresolve%3Aenv%3AA", false).is_empty());
        assert_eq!(find(b"leash%3Aresolve%3Aenv%3A%41", true)[0].name, "A");
        assert!(find(b"leash%3", true).is_empty());
        assert!(find(b"leash%zzresolve", true).is_empty());
        assert_eq!(
            find(b"leash:resolve:env:Aleash:resolve:env:B", false).iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["Aleash"]
        );
    }
}

/// Generated placeholders in every spelling and place (issue 16); the `rewrite` fuzz target
/// checks the same on arbitrary requests.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::policy::Credential;
    use proptest::prelude::*;

    const VALUE: &str = "s3cret/VALUE+x";

    fn store() -> SecretStore {
        let cred = Credential {
            name: "TOKEN".into(),
            hosts: vec!["api.example.com".parse().expect("pattern")],
            required: true,
        };
        SecretStore::from_file_text(&[cred], "test", &format!("TOKEN={VALUE}\n")).expect("store")
    }

    /// Every percent-escape decoded (any case), for finding the value however it was written.
    fn leaks(bytes: &[u8]) -> bool {
        let decoded: Vec<u8> = percent_encoding::percent_decode(bytes).collect();
        [bytes, &decoded[..]].iter().any(|b| b.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()))
    }

    /// The placeholder, spelled as `how` says: 0 literal, 1 percent-encoded (each character
    /// escaped when its bit in `mask` is set), 2 upper-cased prefix, 3 a base64 of the literal
    /// (outside Basic), 4 the prefix alone (the name split off).
    fn spell(how: u8, mask: u32, prefix: &str) -> String {
        let literal = format!("{prefix}TOKEN");
        match how {
            0 => literal,
            1 => literal
                .bytes()
                .enumerate()
                .map(|(i, b)| if mask >> (i % 32) & 1 == 1 { format!("%{b:02x}") } else { char::from(b).to_string() })
                .collect(),
            2 => literal.to_ascii_uppercase(),
            3 => STANDARD.encode(&literal),
            _ => prefix.to_owned(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn the_value_goes_only_to_its_host_and_only_for_a_placeholder_it_recognises(
            how in 0u8..5,
            mask in any::<u32>(),
            openshell in any::<bool>(),
            bound in any::<bool>(),
            place in 0u8..4,
            before in "[a-z =/]{0,4}",
            after in "[ =/.-]{0,4}",
        ) {
            let prefix = PLACEHOLDER_PREFIXES[usize::from(openshell)];
            let host = if bound { "api.example.com" } else { "evil.example.com" };
            let spelled = spell(how, mask, prefix);
            let text = format!("{before}{spelled}{after}");
            let escaped = text != format!("{before}{prefix}TOKEN{after}");
            let store = store();
            let recognised = match place {
                // A header value: literal only.
                0 => how == 0 || how == 1 && !escaped,
                // Basic credentials: literal only, after base64 decoding.
                1 => how == 0 || how == 1 && !escaped,
                // The target and the body: literal or percent-encoded.
                _ => how <= 1,
            };
            let expect_value = bound && recognised && !(place == 2 && text.contains(['/', ' ']));
            let leaked = match place {
                0 | 1 => {
                    let value = if place == 0 { text.clone() } else { format!("Basic {}", STANDARD.encode(&text)) };
                    let Ok(value) = HeaderValue::from_str(&value) else { return Ok(()); };
                    let mut parts = hyper::http::Request::builder().uri("/").body(()).expect("request").into_parts().0;
                    parts.headers.insert(AUTHORIZATION, value);
                    let _ = rewrite_request_head(&mut parts, host, &store, true);
                    let out = parts.headers[AUTHORIZATION].as_bytes().to_vec();
                    let basic = BasicAuth::parse(&out).map(|b| b.decoded.to_vec()).unwrap_or_default();
                    leaks(&out) || leaks(&basic)
                }
                2 => {
                    let target = format!("/x?q={}", text.replace(' ', "+"));
                    let Ok(mut parts) = hyper::http::Request::builder().uri(&target).body(()).map(|r| r.into_parts().0) else {
                        return Ok(());
                    };
                    let _ = rewrite_request_head(&mut parts, host, &store, true);
                    leaks(parts.uri.to_string().as_bytes())
                }
                _ => rewrite_body(text.as_bytes(), host, &store, 1 << 16).ok().flatten().is_some_and(|b| leaks(&b)),
            };
            if !bound || !recognised {
                prop_assert!(!leaked, "{text:?} to {host} in place {place}");
            } else if expect_value {
                prop_assert!(leaked, "{text:?} to {host} in place {place} was not rewritten");
            }
        }
    }
}
