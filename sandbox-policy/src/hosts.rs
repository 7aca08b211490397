//! Host name patterns and IP ranges, as written in a policy's endpoints and credentials.
//!
//! A [`HostPattern`] is one of:
//!
//! | pattern | matches | does not match |
//! |---|---|---|
//! | `api.github.com` | `api.github.com` | `x.api.github.com` |
//! | `*.example.com` | `a.example.com` (exactly one extra label) | `example.com`, `a.b.example.com` |
//! | `**.example.com` | `a.example.com`, `a.b.example.com` (one or more) | `example.com` |
//!
//! Patterns are case-insensitive (stored lower-case); a wildcard is only allowed as the whole
//! first label. A queried host with a trailing dot (`api.github.com.`) never matches: the proxy
//! must not let an agent reach a host under a spelling the policy author did not write.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Longest DNS name, in characters, without the trailing dot.
const MAX_HOST_LEN: usize = 253;
/// Longest DNS label, in characters.
const MAX_LABEL_LEN: usize = 63;

/// How many labels a pattern's wildcard stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Wildcard {
    /// No wildcard: the host must equal the pattern.
    None,
    /// `*.suffix`: exactly one label before the suffix.
    OneLabel,
    /// `**.suffix`: one or more labels before the suffix.
    AnyDepth,
}

/// A validated host pattern from the policy: exact, `*.suffix` or `**.suffix`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    wildcard: Wildcard,
    /// The pattern without its wildcard label, lower-case.
    suffix: String,
}

/// Why a string is not a valid [`HostPattern`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPatternError {
    /// The pattern is empty.
    #[error("host pattern is empty")]
    Empty,
    /// The pattern contains `://`.
    #[error("host pattern `{0}` has a URL scheme: write only the host name")]
    Scheme(String),
    /// The pattern contains `:`, `/` or another character that belongs to a URL, not a host.
    #[error("host pattern `{0}` has a port or path: write only the host name and use `port:` / `ports:`")]
    PortOrPath(String),
    /// Two dots in a row, or a leading or trailing dot.
    #[error("host pattern `{0}` has an empty label (a leading, trailing or doubled dot)")]
    EmptyLabel(String),
    /// `*` or `**` somewhere other than the whole first label, or with nothing after it.
    #[error("host pattern `{0}`: a wildcard must be the whole first label (`*.example.com` or `**.example.com`)")]
    Wildcard(String),
    /// A label with characters outside `a-z 0-9 - _`, or starting or ending with `-`.
    #[error("host pattern `{pattern}` has an invalid label `{label}` (allowed: letters, digits, `-`, `_`; no leading or trailing `-`)")]
    Label {
        /// The whole pattern.
        pattern: String,
        /// The offending label.
        label: String,
    },
    /// The name is longer than DNS allows.
    #[error("host pattern `{0}` is too long (a label is at most 63 characters, a name at most 253)")]
    TooLong(String),
}

impl HostPattern {
    /// Whether `host` (as the agent asked for it) is covered by this pattern.
    ///
    /// Case-insensitive. A host with a trailing dot, an empty label or characters that cannot
    /// appear in a host name never matches.
    pub fn matches(&self, host: &str) -> bool {
        if host.ends_with('.') {
            return false;
        }
        match self.wildcard {
            Wildcard::None => host.eq_ignore_ascii_case(&self.suffix),
            Wildcard::OneLabel => subdomain_prefix(host, &self.suffix).is_some_and(is_host_label),
            Wildcard::AnyDepth => {
                subdomain_prefix(host, &self.suffix).is_some_and(|prefix| prefix.split('.').all(is_host_label))
            }
        }
    }

    /// Whether the pattern is a plain host name (no wildcard).
    pub fn is_exact(&self) -> bool {
        self.wildcard == Wildcard::None
    }
}

/// The part of `host` before `.suffix`, if `host` is a strict subdomain of `suffix`.
fn subdomain_prefix<'a>(host: &'a str, suffix: &str) -> Option<&'a str> {
    let dot = host.len().checked_sub(suffix.len() + 1)?;
    let (prefix, tail) = (host.get(..dot)?, host.get(dot..)?);
    let matches_suffix = tail.starts_with('.') && tail[1..].eq_ignore_ascii_case(suffix);
    (matches_suffix && !prefix.is_empty()).then_some(prefix)
}

/// Whether `label` is one DNS label a queried host may contain.
fn is_host_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl FromStr for HostPattern {
    type Err = HostPatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let pattern = text.to_ascii_lowercase();
        check_host_shape(&pattern)?;
        let (wildcard, suffix) = split_wildcard(&pattern)?;
        for label in suffix.split('.') {
            check_label(&pattern, label)?;
        }
        Ok(HostPattern { wildcard, suffix: suffix.to_owned() })
    }
}

/// Rejects what is clearly not a host name: empty, URLs, ports, paths, empty labels, too long.
fn check_host_shape(pattern: &str) -> Result<(), HostPatternError> {
    if pattern.is_empty() {
        return Err(HostPatternError::Empty);
    }
    if pattern.contains("://") {
        return Err(HostPatternError::Scheme(pattern.to_owned()));
    }
    if pattern.contains([':', '/', '?', '#', '@', '[', ']']) {
        return Err(HostPatternError::PortOrPath(pattern.to_owned()));
    }
    if pattern.split('.').any(str::is_empty) {
        return Err(HostPatternError::EmptyLabel(pattern.to_owned()));
    }
    if pattern.len() > MAX_HOST_LEN {
        return Err(HostPatternError::TooLong(pattern.to_owned()));
    }
    Ok(())
}

/// Splits `*.` / `**.` off the front of a pattern; any other `*` is an error.
fn split_wildcard(pattern: &str) -> Result<(Wildcard, &str), HostPatternError> {
    let (wildcard, suffix) = if let Some(rest) = pattern.strip_prefix("**.") {
        (Wildcard::AnyDepth, rest)
    } else if let Some(rest) = pattern.strip_prefix("*.") {
        (Wildcard::OneLabel, rest)
    } else {
        (Wildcard::None, pattern)
    };
    if suffix.contains('*') || suffix.is_empty() {
        return Err(HostPatternError::Wildcard(pattern.to_owned()));
    }
    Ok((wildcard, suffix))
}

/// Checks one label of a pattern's suffix.
fn check_label(pattern: &str, label: &str) -> Result<(), HostPatternError> {
    if label.len() > MAX_LABEL_LEN {
        return Err(HostPatternError::TooLong(pattern.to_owned()));
    }
    if !is_host_label(label) || label.starts_with('-') || label.ends_with('-') {
        return Err(HostPatternError::Label { pattern: pattern.to_owned(), label: label.to_owned() });
    }
    Ok(())
}

impl fmt::Display for HostPattern {
    /// Writes the pattern as the policy spells it, lower-case (`**.example.com`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wildcard {
            Wildcard::None => f.write_str(&self.suffix),
            Wildcard::OneLabel => write!(f, "*.{}", self.suffix),
            Wildcard::AnyDepth => write!(f, "**.{}", self.suffix),
        }
    }
}

/// An IP address or CIDR block from an endpoint's `allowed_ips` (`10.0.0.0/8`, `192.168.1.5`,
/// `fd00::/8`): addresses an endpoint's host may resolve to even when they are private.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why a string is not a valid [`IpNetwork`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetworkError {
    /// Not an IPv4 or IPv6 address (before the `/`).
    #[error("`{0}` is not an IP address or CIDR block")]
    Address(String),
    /// The prefix length is not a number or is longer than the address.
    #[error("`{0}` has an invalid prefix length (at most 32 for IPv4, 128 for IPv6)")]
    PrefixLen(String),
    /// Bits set after the prefix, e.g. `10.0.0.1/8`.
    #[error("`{text}` has bits set after the prefix: did you mean `{network}`?")]
    HostBits {
        /// What the policy says.
        text: String,
        /// The block it probably means.
        network: String,
    },
}

impl IpNetwork {
    /// Whether `ip` is inside this block (an IPv4 block never contains an IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                let mask = prefix_mask(self.addr, self.prefix_len);
                addr_bits(ip) & mask == addr_bits(self.addr)
            }
            _ => false,
        }
    }
}

/// The address as a 128-bit number (IPv4 in the low 32 bits).
fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The netmask for `prefix_len` bits of `addr`'s family, as a 128-bit number.
fn prefix_mask(addr: IpAddr, prefix_len: u8) -> u128 {
    let width: u32 = if addr.is_ipv4() { 32 } else { 128 };
    let host_bits = width - u32::from(prefix_len);
    let all = if width == 32 { u128::from(u32::MAX) } else { u128::MAX };
    all.checked_shl(host_bits).map_or(0, |m| m & all)
}

impl FromStr for IpNetwork {
    type Err = IpNetworkError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| IpNetworkError::Address(text.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_text {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(|| IpNetworkError::PrefixLen(text.to_owned()))?,
        };
        let network = IpNetwork { addr, prefix_len };
        if addr_bits(addr) & !prefix_mask(addr, prefix_len) != 0 {
            let masked = IpNetwork { addr: masked_addr(addr, prefix_len), prefix_len };
            return Err(IpNetworkError::HostBits { text: text.to_owned(), network: masked.to_string() });
        }
        Ok(network)
    }
}

/// `addr` with the bits after the prefix cleared.
fn masked_addr(addr: IpAddr, prefix_len: u8) -> IpAddr {
    let bits = addr_bits(addr) & prefix_mask(addr, prefix_len);
    match addr {
        // The mask keeps an IPv4 value within 32 bits.
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(bits as u32)),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(bits)),
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn exact_pattern_matches_only_itself() {
        let p = pattern("api.github.com");
        assert!(p.matches("api.github.com"));
        assert!(!p.matches("x.api.github.com"));
        assert!(!p.matches("github.com"));
        assert!(!p.matches("api.github.com.evil.org"));
        assert!(p.is_exact());
    }

    #[test]
    fn single_star_is_exactly_one_label() {
        let p = pattern("*.example.com");
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a-b_c.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("a.b.example.com"));
        assert!(!p.matches(".example.com"));
        assert!(!p.matches("aexample.com"));
    }

    #[test]
    fn double_star_is_any_depth_but_at_least_one() {
        let p = pattern("**.example.com");
        assert!(p.matches("a.example.com"));
        assert!(p.matches("a.b.c.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("a..example.com"));
        assert!(!p.matches("notexample.com"));
    }

    #[test]
    fn matching_is_case_insensitive_both_ways() {
        let p = pattern("API.GitHub.com");
        assert_eq!(p.to_string(), "api.github.com");
        assert!(p.matches("api.github.com"));
        assert!(p.matches("API.GITHUB.COM"));
        assert!(pattern("*.Example.com").matches("WWW.EXAMPLE.COM"));
    }

    #[test]
    fn trailing_dot_never_matches() {
        assert!(!pattern("api.github.com").matches("api.github.com."));
        assert!(!pattern("*.github.com").matches("api.github.com."));
        assert!(!pattern("**.github.com").matches("a.api.github.com."));
    }

    #[test]
    fn parent_does_not_cover_subdomains() {
        assert!(!pattern("x.com").matches("y.x.com"));
        assert!(pattern("*.x.com").matches("y.x.com"));
    }

    #[test]
    fn queried_host_with_odd_characters_does_not_match_wildcards() {
        assert!(!pattern("*.example.com").matches("a/b.example.com"));
        assert!(!pattern("**.example.com").matches("a b.example.com"));
        assert!(!pattern("*.example.com").matches("é.example.com"));
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        let bad = [
            ("", HostPatternError::Empty),
            ("https://api.github.com", HostPatternError::Scheme("https://api.github.com".into())),
            ("api.github.com:443", HostPatternError::PortOrPath("api.github.com:443".into())),
            ("api.github.com/x", HostPatternError::PortOrPath("api.github.com/x".into())),
            ("api..github.com", HostPatternError::EmptyLabel("api..github.com".into())),
            ("api.github.com.", HostPatternError::EmptyLabel("api.github.com.".into())),
            ("a.*.github.com", HostPatternError::Wildcard("a.*.github.com".into())),
            ("*-aiplatform.googleapis.com", HostPatternError::Wildcard("*-aiplatform.googleapis.com".into())),
            ("*", HostPatternError::Wildcard("*".into())),
            ("***.x.com", HostPatternError::Wildcard("***.x.com".into())),
        ];
        for (text, expected) in bad {
            assert_eq!(text.parse::<HostPattern>(), Err(expected), "{text}");
        }
        assert!(matches!("a b.com".parse::<HostPattern>(), Err(HostPatternError::Label { .. })));
        assert!(matches!("-a.com".parse::<HostPattern>(), Err(HostPatternError::Label { .. })));
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(long_label.parse::<HostPattern>(), Err(HostPatternError::TooLong(_))));
    }

    #[test]
    fn display_round_trips() {
        for text in ["api.github.com", "*.example.com", "**.aiplatform.googleapis.com", "10.0.0.1"] {
            assert_eq!(pattern(text).to_string(), text);
        }
    }

    #[test]
    fn ip_networks() {
        let net: IpNetwork = "10.0.0.0/8".parse().expect("valid");
        assert!(net.contains("10.200.3.4".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        assert!(!net.contains("::1".parse().expect("ip")));
        let single: IpNetwork = "192.168.1.5".parse().expect("valid");
        assert_eq!(single.to_string(), "192.168.1.5/32");
        assert!(single.contains("192.168.1.5".parse().expect("ip")));
        let v6: IpNetwork = "fd00::/8".parse().expect("valid");
        assert!(v6.contains("fd12::1".parse().expect("ip")));
        let all: IpNetwork = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        assert!(
            matches!("10.0.0.1/8".parse::<IpNetwork>(), Err(IpNetworkError::HostBits { network, .. }) if network == "10.0.0.0/8")
        );
        assert!(matches!("10.0.0.0/33".parse::<IpNetwork>(), Err(IpNetworkError::PrefixLen(_))));
        assert!(matches!("example.com".parse::<IpNetwork>(), Err(IpNetworkError::Address(_))));
    }
}

/// Generated patterns and hosts (issue 16); the `hosts` fuzz target checks the same on
/// arbitrary input.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,6}[a-zA-Z0-9_])?"
    }

    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec(label(), 1..4).prop_map(|labels| labels.join("."))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn patterns_print_as_themselves_and_match_by_depth(suffix in name(), prefix in proptest::collection::vec(label(), 1..4)) {
            let exact: HostPattern = suffix.parse().expect("a generated name is a pattern");
            let one: HostPattern = format!("*.{suffix}").parse().expect("*.name");
            let any: HostPattern = format!("**.{suffix}").parse().expect("**.name");
            for p in [&exact, &one, &any] {
                prop_assert_eq!(&p.to_string().parse::<HostPattern>().expect("printed"), p);
            }
            let host = format!("{}.{suffix}", prefix.join("."));
            prop_assert!(exact.matches(&suffix.to_ascii_uppercase()) && !exact.matches(&host));
            prop_assert_eq!(one.matches(&host), prefix.len() == 1);
            prop_assert!(any.matches(&host) && any.matches(&host.to_ascii_uppercase()));
            prop_assert!(!one.matches(&suffix) && !any.matches(&suffix));
            let (host_dot, suffix_dot) = (format!("{host}."), format!("{suffix}."));
            for p in [&exact, &one, &any] {
                prop_assert!(!p.matches(&host_dot) && !p.matches(&suffix_dot), "{}", p);
            }
        }

        #[test]
        fn arbitrary_patterns_and_hosts_never_panic(pattern in "\\PC{0,20}", host in "\\PC{0,20}") {
            if let Ok(p) = pattern.parse::<HostPattern>() {
                let again = p.to_string().parse::<HostPattern>();
                prop_assert_eq!(again, Ok(p.clone()));
                prop_assert_eq!(p.matches(&host), p.matches(&host.to_ascii_uppercase()));
            }
            if let Ok(n) = pattern.parse::<IpNetwork>() {
                prop_assert_eq!(n.to_string().parse::<IpNetwork>(), Ok(n));
            }
        }
    }
}
