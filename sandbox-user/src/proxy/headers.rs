//! Header rules of an intercepted request: framing that could smuggle a second request is
//! refused, the target must be the host the tunnel was opened to, and hop-by-hop headers stop at
//! the proxy.

use hyper::header::{self, HeaderMap, HeaderName};
use hyper::http::request::Parts;

use super::ssrf::{normalize_host, NormalizedHost};

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Refuses ambiguous message framing: `Content-Length` together with `Transfer-Encoding`, or
/// several `Content-Length` values (a front end and a back end could each pick another one).
pub fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    let lengths = headers.get_all(header::CONTENT_LENGTH).iter().count();
    if lengths > 1 {
        return Err("more than one Content-Length header");
    }
    if let Some(v) = headers.get(header::CONTENT_LENGTH) {
        if v.to_str().map(|s| s.contains(',')).unwrap_or(true) {
            return Err("a Content-Length with several values");
        }
        if headers.contains_key(header::TRANSFER_ENCODING) {
            return Err("both Content-Length and Transfer-Encoding");
        }
    }
    Ok(())
}

/// Whether every name the request gives for its target (`Host`, the URI's authority — HTTP/2's
/// `:authority`) is the tunnel's host and port. A request naming no host at all is refused too,
/// and so is one with user information (`Host: other.example:443@host`): servers such as nginx
/// read the host at the first `:` and would route it to another site.
pub fn targets_tunnel(parts: &Parts, host: &NormalizedHost, port: u16, default_port: u16) -> bool {
    let mut named = 0;
    if let Some(authority) = parts.uri.authority() {
        named += 1;
        if authority.as_str().contains('@')
            || !same_target(authority.host(), authority.port_u16(), host, port, default_port)
        {
            return false;
        }
    }
    let hosts: Vec<_> = parts.headers.get_all(header::HOST).iter().collect();
    if hosts.len() > 1 {
        return false;
    }
    if let Some(value) = hosts.first() {
        named += 1;
        let Ok(text) = value.to_str() else { return false };
        let Ok(authority) = text.parse::<hyper::http::uri::Authority>() else { return false };
        if text.contains('@') || !same_target(authority.host(), authority.port_u16(), host, port, default_port) {
            return false;
        }
    }
    named > 0
}

fn same_target(raw: &str, raw_port: Option<u16>, host: &NormalizedHost, port: u16, default_port: u16) -> bool {
    normalize_host(raw).is_ok_and(|h| &h == host) && raw_port.unwrap_or(default_port) == port
}

/// Removes hop-by-hop headers and those the `Connection` header names. With `keep_upgrade`
/// (a protocol upgrade such as WebSocket) `Connection: upgrade` and `Upgrade` are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && name == "connection" {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, header::HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether the request asks to switch protocols (HTTP/1.1 `Upgrade`, e.g. WebSocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn host(h: &str) -> NormalizedHost {
        normalize_host(h).unwrap()
    }

    #[test]
    fn framing_conflicts_are_refused() {
        let p = parts("/", &[("content-length", "5"), ("transfer-encoding", "chunked")]);
        assert!(check_framing(&p.headers).is_err());
        let p = parts("/", &[("content-length", "5"), ("content-length", "6")]);
        assert!(check_framing(&p.headers).is_err());
        let p = parts("/", &[("content-length", "5, 6")]);
        assert!(check_framing(&p.headers).is_err());
        let p = parts("/", &[("content-length", "5")]);
        assert!(check_framing(&p.headers).is_ok());
    }

    #[test]
    fn host_and_authority_must_name_the_tunnel() {
        let h = host("api.github.com");
        assert!(targets_tunnel(&parts("/x", &[("host", "api.github.com")]), &h, 443, 443));
        assert!(targets_tunnel(&parts("/x", &[("host", "API.github.com:443")]), &h, 443, 443));
        assert!(!targets_tunnel(&parts("/x", &[("host", "evil.com")]), &h, 443, 443));
        assert!(!targets_tunnel(&parts("/x", &[("host", "api.github.com:8443")]), &h, 443, 443));
        assert!(!targets_tunnel(&parts("/x", &[]), &h, 443, 443));
        assert!(targets_tunnel(&parts("https://api.github.com/x", &[]), &h, 443, 443));
        assert!(!targets_tunnel(&parts("https://evil.com/x", &[("host", "api.github.com")]), &h, 443, 443));
        assert!(!targets_tunnel(&parts("/x", &[("host", "api.github.com"), ("host", "evil.com")]), &h, 443, 443));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut p = parts(
            "/",
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "1"),
                ("te", "trailers"),
                ("upgrade", "websocket"),
                ("accept", "*/*"),
            ],
        );
        strip_hop_by_hop(&mut p.headers, false);
        assert!(
            p.headers.get("x-secret").is_none() && p.headers.get("te").is_none() && p.headers.get("upgrade").is_none()
        );
        assert!(p.headers.get("accept").is_some());
        let mut p = parts("/", &[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(wants_upgrade(&p.headers));
        strip_hop_by_hop(&mut p.headers, true);
        assert_eq!(p.headers.get("upgrade").unwrap(), "websocket");
        assert_eq!(p.headers.get("connection").unwrap(), "upgrade");
    }
}
