//! Judging one request against its endpoint's rules, closing the gaps between how the policy
//! reads a request and how servers do:
//!
//! - the method must be canonical (upper-case): `delete` would dodge a `DELETE` deny rule and
//!   still run as DELETE on servers that upper-case it;
//! - a method-override header (`X-HTTP-Method-Override`, ...) is judged as a method too;
//! - the path is also judged with `;parameters` removed from every segment and without a
//!   trailing slash, since many servers route `/admin;x/secret` and `/settings/` to the same
//!   handler as `/admin/secret` and `/settings`.
//!
//! A request passes only if every reading of it passes.

use std::borrow::Cow;

use hyper::http::request::Parts;

use crate::policy::{Decider, EndpointRef, RequestVerdict};

/// Headers some frameworks take as the real method.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// Why a request was refused before any rule was consulted.
pub enum Malformed {
    Method(String),
}

/// The verdict for the request as all its readings: the first refusal, else an audit-only
/// verdict if any reading was only audited, else the verdict of the request as sent.
pub fn judge(
    decider: &Decider,
    endpoint: EndpointRef,
    parts: &Parts,
    target: &str,
) -> Result<RequestVerdict, Malformed> {
    let method = parts.method.as_str();
    if !is_canonical_method(method) {
        return Err(Malformed::Method(method.to_owned()));
    }
    let mut methods: Vec<Cow<'_, str>> = vec![Cow::Borrowed(method)];
    for name in METHOD_OVERRIDES {
        for value in parts.headers.get_all(name) {
            let text = value.to_str().unwrap_or("").trim().to_ascii_uppercase();
            methods.push(Cow::Owned(text));
        }
    }
    let targets = readings(target);
    let mut chosen: Option<RequestVerdict> = None;
    for m in &methods {
        for t in &targets {
            let verdict = decider.request(endpoint, m, t);
            if !verdict.allow && !verdict.audit {
                return Ok(verdict);
            }
            match &chosen {
                None => chosen = Some(verdict),
                Some(c) if verdict.audit && !c.audit => chosen = Some(verdict),
                Some(_) => {}
            }
        }
    }
    Ok(chosen.unwrap_or_else(|| decider.request(endpoint, method, target)))
}

/// RFC 9110 methods are case-sensitive tokens; the ones servers act on are upper-case.
fn is_canonical_method(method: &str) -> bool {
    !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// The target as sent, plus the readings servers commonly give it.
fn readings(target: &str) -> Vec<Cow<'_, str>> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = vec![Cow::Borrowed(target)];
    let with_query = |p: String| match query {
        Some(q) => format!("{p}?{q}"),
        None => p,
    };
    let semicolons = path.replace("%3B", ";").replace("%3b", ";");
    if semicolons.contains(';') {
        let stripped: Vec<&str> = semicolons.split('/').map(|seg| seg.split(';').next().unwrap_or("")).collect();
        out.push(Cow::Owned(with_query(stripped.join("/"))));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.len() < path.len() && !trimmed.is_empty() {
        out.push(Cow::Owned(with_query(trimmed.to_owned())));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_strip_parameters_and_trailing_slashes() {
        let r = readings("/admin;x/secret?a=1");
        assert_eq!(r, vec!["/admin;x/secret?a=1", "/admin/secret?a=1"]);
        let r = readings("/admin%3Bx/secret");
        assert_eq!(r, vec!["/admin%3Bx/secret", "/admin/secret"]);
        assert_eq!(readings("/settings/"), vec!["/settings/", "/settings"]);
        assert_eq!(readings("/"), vec!["/"]);
    }

    #[test]
    fn only_upper_case_methods_are_canonical() {
        assert!(is_canonical_method("DELETE") && is_canonical_method("GET"));
        assert!(!is_canonical_method("delete") && !is_canonical_method("Get") && !is_canonical_method(""));
    }
}
