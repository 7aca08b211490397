//! Credential placeholder rewriting over a request the agent writes: header values,
//! `Authorization: Basic`, the request target and the (collected) body. Checks: no panic; a
//! credential's real value (as is, percent-encoded, or inside a Basic token) leaves only toward
//! a host it is bound to, and only where the request held its placeholder in a spelling the
//! rewrite documents; a split, case-changed or otherwise mangled placeholder yields no value.
#![no_main]

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use leash::policy::Credential;
use leash::proxy::credentials::{rewrite_body, rewrite_request_head, SecretStore};
use libfuzzer_sys::fuzz_target;

/// Credential name, bound host, value (with characters that need percent-encoding).
const SECRETS: [(&str, &str, &str); 2] =
    [("A", "a.example.com", "alpha-SECRET/7+x"), ("B_2", "b.example.com", "bravo SECRET=9")];
const HOSTS: [&str; 3] = ["a.example.com", "b.example.com", "c.example.com"];
const PREFIXES: [&str; 2] = ["leash:resolve:env:", "openshell:resolve:env:"];

fn store() -> SecretStore {
    let credentials: Vec<Credential> = SECRETS
        .iter()
        .map(|(name, host, _)| Credential {
            name: (*name).to_owned(),
            hosts: vec![host.parse().expect("a host pattern")],
            required: true,
        })
        .collect();
    let text: String = SECRETS.iter().map(|(name, _, value)| format!("{name}={value}\n")).collect();
    SecretStore::from_file_text(&credentials, "fuzz", &text).expect("the fuzz secrets load")
}

/// Whether `bytes` hold `value` as is or percent-encoded (any hex case, any mix).
fn leaks(bytes: &[u8], value: &str) -> bool {
    contains(bytes, value.as_bytes()) || contains(&percent_decode_loose(bytes), value.as_bytes())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn percent_decode_loose(bytes: &[u8]) -> Vec<u8> {
    percent_encoding::percent_decode(bytes).collect()
}

/// Whether `input` holds the placeholder for `name` in a spelling the rewrite documents.
fn has_placeholder(input: &[u8], name: &str, percent: bool) -> bool {
    PREFIXES.iter().any(|prefix| {
        let literal = format!("{prefix}{name}");
        contains(input, literal.as_bytes()) || (percent && contains(&percent_decode_loose(input), literal.as_bytes()))
    })
}

/// The decoded credentials of a `Basic` header value, if it is one.
fn basic(value: &[u8]) -> Option<Vec<u8>> {
    let space = value.iter().position(|b| *b == b' ')?;
    if !value[..space].eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let token = value[space..].trim_ascii();
    STANDARD.decode(token).or_else(|_| STANDARD_NO_PAD.decode(token)).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let host = HOSTS[usize::from(flags % 3)];
    let in_target = flags & 4 != 0;
    // `target\nname: value\n...\n\nbody`
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (rest, &[][..]),
    };
    // Inputs that already hold a value (as is, percent-encoded, or inside a Basic token) prove
    // nothing about the rewrite: the agent sends what it knows.
    let tokens: Vec<Vec<u8>> = head
        .split(|b| *b == b'\n')
        .filter_map(|line| basic(line[line.iter().position(|b| *b == b':')? + 1..].trim_ascii()))
        .collect();
    if SECRETS.iter().any(|(_, _, v)| leaks(rest, v) || tokens.iter().any(|t| leaks(t, v))) {
        return;
    }
    let mut lines = head.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let mut builder = hyper::Request::builder().uri(target);
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        builder = builder.header(&line[..colon], line[colon + 1..].trim_ascii());
    }
    let store = store();
    if let Ok(request) = builder.body(()) {
        let (mut parts, ()) = request.into_parts();
        let before_target = parts.uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
        let before: Vec<Vec<u8>> = parts.headers.values().map(|v| v.as_bytes().to_vec()).collect();
        let result = rewrite_request_head(&mut parts, host, &store, in_target);
        let target_after = parts.uri.to_string();
        if result.is_err() {
            assert_eq!(parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or_default(), before_target);
        }
        for (name, bound, value) in SECRETS {
            let ok_here = result.is_ok() && host == bound;
            let mut out: Vec<Vec<u8>> = parts.headers.values().map(|v| v.as_bytes().to_vec()).collect();
            out.extend(parts.headers.values().filter_map(|v| basic(v.as_bytes())));
            out.push(target_after.clone().into_bytes());
            for bytes in &out {
                if !leaks(bytes, value) {
                    continue;
                }
                assert!(ok_here, "{name}'s value sent to {host}");
                let placed = before.iter().any(|b| {
                    has_placeholder(b, name, false) || basic(b).is_some_and(|d| has_placeholder(&d, name, false))
                }) || (in_target && has_placeholder(before_target.as_bytes(), name, true));
                assert!(placed, "{name}'s value without its placeholder");
            }
        }
    }
    match rewrite_body(body, host, &store, 1 << 16) {
        Ok(Some(out)) => {
            for (name, bound, value) in SECRETS {
                if leaks(&out, value) {
                    assert_eq!(host, bound, "{name}'s value sent to {host}");
                    assert!(has_placeholder(body, name, true), "{name}'s value without its placeholder");
                }
            }
        }
        Ok(None) | Err(_) => {}
    }
});
