//! Judging one request against its endpoint's rules: every reading of it
//! ([`crate::policy::readings`]) must pass.

use hyper::http::request::Parts;

use std::convert::Infallible;

use crate::policy::readings::{judge_all, readings, METHOD_OVERRIDES};
use crate::policy::{Decider, EndpointRef, RequestVerdict};

/// Why a request was refused before any rule was consulted.
pub enum Malformed {
    Method(String),
}

/// The verdict for the request as all its readings ([`judge_all`]): the first refusal, else an
/// audit-only verdict if any reading was only audited, else the verdict of the request as sent.
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
    let judged = judge_all(
        &readings,
        |r| Ok::<_, Infallible>(decider.request(endpoint, &r.method, &r.target)),
        RequestVerdict::outcome,
    );
    let Ok(chosen) = judged;
    Ok(chosen.map_or_else(|| decider.request(endpoint, method, target), |(verdict, _)| verdict))
}
