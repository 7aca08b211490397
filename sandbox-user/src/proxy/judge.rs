//! Judging one request against its endpoint's rules: every reading of it
//! ([`crate::policy::readings`]) must pass.

use hyper::http::request::Parts;

use std::convert::Infallible;

use crate::policy::readings::{is_canonical_method, judge_all, readings, METHOD_OVERRIDES};
use crate::policy::{Decider, EndpointRef, RequestVerdict};

/// Why a request was refused before any rule was consulted.
pub enum Malformed {
    Method(String),
    /// More than `MAX_OVERRIDES` distinct method-override values.
    Overrides,
}

/// What [`judge`] reads of a request head (its method and method-override headers), kept to
/// judge the request again later (at a reload) without holding its other headers.
pub fn judged_head(parts: &Parts) -> Parts {
    let (mut head, ()) = hyper::Request::new(()).into_parts();
    head.method = parts.method.clone();
    for name in METHOD_OVERRIDES {
        for value in parts.headers.get_all(name) {
            head.headers.append(hyper::header::HeaderName::from_static(name), value.clone());
        }
    }
    head
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
    // A value that is not text is read byte by byte as Latin-1, as Node reads headers (so that
    // `DELETE` and a no-break space, which Express trims to DELETE, is DELETE here too).
    let overrides: Vec<String> = METHOD_OVERRIDES
        .iter()
        .flat_map(|name| parts.headers.get_all(*name))
        .map(|v| v.as_bytes().iter().map(|&b| b as char).collect())
        .collect();
    let Some(readings) = readings(method, overrides.iter().map(String::as_str), target) else {
        if is_canonical_method(method) {
            return Err(Malformed::Overrides);
        }
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

#[cfg(test)]
mod tests {
    #[test]
    fn the_judged_head_keeps_what_judge_reads_and_nothing_else() {
        let (parts, ()) = hyper::Request::builder()
            .method("POST")
            .header("x-http-method-override", "DELETE")
            .header("x-method-override", "PUT")
            .header("authorization", "Bearer secret")
            .body(())
            .unwrap()
            .into_parts();
        let head = super::judged_head(&parts);
        assert_eq!(head.method, "POST");
        assert_eq!(head.headers["x-http-method-override"], "DELETE");
        assert_eq!(head.headers["x-method-override"], "PUT");
        assert_eq!(head.headers.len(), 2);
    }
}
