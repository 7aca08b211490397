//! Judging one request against its endpoint's rules: every reading of it
//! ([`crate::policy::readings`]) must pass.

use hyper::http::request::Parts;

use crate::policy::readings::{readings, METHOD_OVERRIDES};
use crate::policy::{Decider, EndpointRef, RequestVerdict};

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
    let overrides =
        METHOD_OVERRIDES.iter().flat_map(|name| parts.headers.get_all(*name)).map(|v| v.to_str().unwrap_or(""));
    let Some(readings) = readings(method, overrides, target) else {
        return Err(Malformed::Method(method.to_owned()));
    };
    let mut chosen: Option<RequestVerdict> = None;
    for r in &readings {
        let verdict = decider.request(endpoint, &r.method, &r.target);
        if !verdict.allow && !verdict.audit {
            return Ok(verdict);
        }
        match &chosen {
            None => chosen = Some(verdict),
            Some(c) if verdict.audit && !c.audit => chosen = Some(verdict),
            Some(_) => {}
        }
    }
    Ok(chosen.unwrap_or_else(|| decider.request(endpoint, method, target)))
}
