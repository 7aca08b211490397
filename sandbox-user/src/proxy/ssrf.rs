//! Where the proxy may dial: host-name normalisation and the address check (SSRF defence).
//!
//! Three rules, applied in this order by the proxy:
//!
//! 1. [`normalize_host`] turns the host the agent asked for into one canonical spelling or
//!    refuses it. Spellings that different resolvers read differently are refused rather than
//!    guessed at: a trailing dot, `user@host`, `%` escapes and zone ids, control characters,
//!    non-ASCII (IDN) names, and every numeric IPv4 form other than a plain dotted quad
//!    (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`). `[v6]` literals and dotted quads become
//!    [`NormalizedHost::Ip`].
//! 2. [`AddressPolicy::check`] refuses addresses inside the host or its networks: unspecified,
//!    loopback, link-local, cloud metadata, private, CGNAT, multicast, broadcast, documentation
//!    and reserved ranges, and IPv6 forms that embed such an IPv4 address (IPv4-mapped,
//!    IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) — unless the endpoint's
//!    `allowed_ips` contains the address.
//! 3. [`resolve_checked`] resolves a name once, checks **every** address it got (one blocked
//!    address fails the whole answer, so a split answer cannot smuggle an internal address past
//!    the check) and returns the addresses it checked: the caller dials exactly those, never the
//!    name again, so the answer cannot change between check and connect (DNS rebinding).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::policy::IpNetwork;

/// Longest DNS name, in characters, without a trailing dot.
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label, in characters.
const MAX_LABEL_LEN: usize = 63;

/// A host the proxy may try to resolve: a checked lower-case name, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NormalizedHost {
    /// A lower-case DNS name of letters, digits, `-` and `_` labels (punycode `xn--` labels are
    /// ordinary labels here). Never numeric-looking, never with a trailing dot.
    Name(String),
    /// An IPv4 dotted quad or a bracketed IPv6 literal.
    Ip(IpAddr),
}

impl NormalizedHost {
    /// The host as a URI or `Host:` header writes it (IPv6 in brackets).
    pub fn uri_host(&self) -> String {
        match self {
            NormalizedHost::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for NormalizedHost {
    /// The name, or the address in its canonical text form (IPv6 without brackets). This is the
    /// spelling to match against the policy's host patterns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NormalizedHost::Name(name) => f.write_str(name),
            NormalizedHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Why a host is refused by [`normalize_host`]. Messages never repeat user information.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Nothing to resolve.
    #[error("the host is empty")]
    Empty,
    /// NUL, CR, LF, TAB or another control character.
    #[error("the host contains a control character (NUL, CR, LF or another)")]
    ControlCharacter,
    /// A space or other whitespace.
    #[error("the host contains whitespace")]
    Whitespace,
    /// `user@host`: the part before `@` is not a host.
    #[error("the host contains `@`: user information (`user@host`) is not part of a host name")]
    UserInfo,
    /// `%`: percent-encoded names and IPv6 zone ids (`fe80::1%eth0`).
    #[error("the host contains `%`: percent-encoded names and IPv6 zone ids are not allowed")]
    Percent,
    /// A non-ASCII (internationalised) name; it could be a confusable of an allowed one.
    #[error("the host is not ASCII: send internationalised names in punycode (`xn--...`)")]
    NonAscii,
    /// `api.github.com.`: a different spelling of the same name; write it without the dot.
    #[error("the host ends with a dot: write the name without the trailing dot")]
    TrailingDot,
    /// A leading dot or two dots in a row.
    #[error("the host has an empty label (a leading dot or two dots in a row)")]
    EmptyLabel,
    /// Longer than 253 characters.
    #[error("the host is longer than 253 characters")]
    NameTooLong,
    /// A label longer than 63 characters.
    #[error("the host has a label longer than 63 characters")]
    LabelTooLong,
    /// A character outside letters, digits, `-`, `_` and `.` (`:` included: pass the port apart).
    #[error("the host has an invalid character `{0}` (allowed: letters, digits, `-`, `_`, `.`)")]
    InvalidCharacter(char),
    /// A label that starts or ends with `-`.
    #[error("the host has a label that starts or ends with `-`")]
    HyphenAtLabelEdge,
    /// A numeric host other than a plain dotted quad: decimal, octal, hex or shortened forms
    /// that resolvers disagree on.
    #[error("`{0}` is an ambiguous numeric host (decimal, octal, hex or shortened IPv4 form): write the address as a plain dotted quad a.b.c.d")]
    AmbiguousNumeric(String),
    /// `[...]` that does not hold exactly one IPv6 address.
    #[error("a bracketed host must be exactly one IPv6 address, without a zone id")]
    InvalidIpv6Literal,
}

/// Checks and canonicalises the host the agent asked for (without the port).
///
/// Lower-cases ASCII letters. Refuses rather than repairs anything that different resolvers or
/// URL parsers could read as different hosts: see [`HostError`]. Punycode (`xn--`) labels are
/// accepted as ordinary labels, so a policy that lists the punycode spelling matches it and
/// nothing else; they are not decoded.
pub fn normalize_host(raw: &str) -> Result<NormalizedHost, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if raw.chars().any(char::is_control) {
        return Err(HostError::ControlCharacter);
    }
    if raw.chars().any(char::is_whitespace) {
        return Err(HostError::Whitespace);
    }
    if raw.contains('@') {
        return Err(HostError::UserInfo);
    }
    if raw.contains('%') {
        return Err(HostError::Percent);
    }
    if !raw.is_ascii() {
        return Err(HostError::NonAscii);
    }
    if let Some(inner) = raw.strip_prefix('[') {
        let v6 = inner
            .strip_suffix(']')
            .and_then(|text| text.parse::<Ipv6Addr>().ok())
            .ok_or(HostError::InvalidIpv6Literal)?;
        return Ok(NormalizedHost::Ip(IpAddr::V6(v6)));
    }
    let host = raw.to_ascii_lowercase();
    if host.ends_with('.') {
        return Err(HostError::TrailingDot);
    }
    if host.len() > MAX_NAME_LEN {
        return Err(HostError::NameTooLong);
    }
    for label in host.split('.') {
        check_label(label)?;
    }
    let last = host.rsplit('.').next().unwrap_or_default();
    if is_numeric_label(last) {
        // A name whose last label is a number is an IPv4 address to URL parsers and
        // `inet_aton`: accept only the form everyone reads the same way.
        return host
            .parse::<Ipv4Addr>()
            .map(|v4| NormalizedHost::Ip(IpAddr::V4(v4)))
            .map_err(|_| HostError::AmbiguousNumeric(host.clone()));
    }
    Ok(NormalizedHost::Name(host))
}

/// Checks one label of a lower-cased name.
fn check_label(label: &str) -> Result<(), HostError> {
    if label.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(HostError::LabelTooLong);
    }
    if let Some(bad) = label.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(HostError::InvalidCharacter(bad));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(HostError::HyphenAtLabelEdge);
    }
    Ok(())
}

/// Whether a label reads as a number to an IPv4 parser: decimal/octal digits, or `0x` hex.
fn is_numeric_label(label: &str) -> bool {
    let all_digits = !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit());
    let hex = label.strip_prefix("0x").is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_hexdigit()));
    all_digits || hex
}

/// Why an address may not be dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockReason {
    /// `0.0.0.0`, `::` (reaches the local host). `allowed_ips` cannot unlock it.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// A cloud metadata service (`169.254.169.254`, `169.254.170.2`, `fd00:ec2::254`): only an
    /// `allowed_ips` entry naming that single address unlocks it, never a wider range.
    CloudMetadata,
    /// `10/8`, `172.16/12`, `192.168/16`, `fc00::/7`, and deprecated site-local `fec0::/10`.
    Private,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedAddressSpace,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`.
    Benchmarking,
    /// Anything else that is not ordinary global unicast: `0/8`, `192.0.0/24`, `192.88.99/24`,
    /// `240/4`, IPv4-compatible `::/96`, local-use NAT64 `64:ff9b:1::/48`, `2001::/23` (Teredo,
    /// ORCHID, ...) and IPv6 outside `2000::/3`.
    Reserved,
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockReason::Unspecified => "unspecified address",
            BlockReason::Loopback => "loopback address",
            BlockReason::LinkLocal => "link-local address",
            BlockReason::CloudMetadata => "cloud metadata service",
            BlockReason::Private => "private address",
            BlockReason::SharedAddressSpace => "carrier-grade NAT address",
            BlockReason::Multicast => "multicast address",
            BlockReason::Broadcast => "broadcast address",
            BlockReason::Documentation => "documentation address",
            BlockReason::Benchmarking => "benchmarking address",
            BlockReason::Reserved => "reserved address",
        })
    }
}

/// An address [`AddressPolicy::check`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockedAddress {
    /// The address as resolved or written.
    pub addr: IpAddr,
    /// The IPv4 address an IPv6 address embeds, when that is what was judged.
    pub embedded: Option<Ipv4Addr>,
    /// Which range it is in.
    pub reason: BlockReason,
}

impl fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "address {} is blocked: {}", self.addr, self.reason)?;
        if let Some(v4) = self.embedded {
            write!(f, " (embedded IPv4 {v4})")?;
        }
        f.write_str("; list it in the endpoint's `allowed_ips` if the agent must reach it")
    }
}

impl std::error::Error for BlockedAddress {}

/// The addresses one endpoint may reach: every public address, plus what its `allowed_ips`
/// lists. [`Default`] lists nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<IpNetwork>,
}

impl AddressPolicy {
    /// The policy of an endpoint whose `allowed_ips` is `allowed_ips`.
    pub fn new(allowed_ips: &[IpNetwork]) -> Self {
        Self { allowed: allowed_ips.to_vec() }
    }

    /// Whether `addr` may be dialled. See [`BlockReason`] for what is refused and how
    /// `allowed_ips` unlocks it (an IPv6 address embedding IPv4 is unlocked by a network
    /// containing either form).
    pub fn check(&self, addr: IpAddr) -> Result<(), BlockedAddress> {
        let Some((reason, embedded)) = classify(addr) else {
            return Ok(());
        };
        let candidates = [Some(addr), embedded.map(IpAddr::V4)];
        let unlocked = match reason {
            BlockReason::Unspecified => false,
            BlockReason::CloudMetadata => {
                candidates.into_iter().flatten().any(|ip| self.allowed.iter().any(|net| names_only(net, ip)))
            }
            _ => candidates.into_iter().flatten().any(|ip| self.allowed.iter().any(|net| net.contains(ip))),
        };
        if unlocked {
            Ok(())
        } else {
            Err(BlockedAddress { addr, embedded, reason })
        }
    }
}

/// Whether `net` is the single address `ip` (a /32 or /128): any wider block also contains the
/// address that differs from `ip` in its last bit.
fn names_only(net: &IpNetwork, ip: IpAddr) -> bool {
    let neighbour = match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4) ^ 1)),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) ^ 1)),
    };
    net.contains(ip) && !net.contains(neighbour)
}

/// The range an address is blocked for, with the IPv4 address that decided it when an IPv6
/// address embeds one; `None` for ordinary public unicast.
fn classify(addr: IpAddr) -> Option<(BlockReason, Option<Ipv4Addr>)> {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4).map(|reason| (reason, None)),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Cloud metadata services reachable over IPv4 (AWS/GCP/Azure/OCI, and the ECS task endpoint).
const METADATA_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(169, 254, 170, 2)];
/// The AWS metadata service over IPv6.
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// Classifies an IPv4 address.
fn classify_v4(v4: Ipv4Addr) -> Option<BlockReason> {
    let [a, b, c, _] = v4.octets();
    let reason = if v4.is_unspecified() {
        BlockReason::Unspecified
    } else if METADATA_V4.contains(&v4) {
        BlockReason::CloudMetadata
    } else if v4.is_broadcast() {
        BlockReason::Broadcast
    } else {
        match (a, b, c) {
            (0, _, _) => BlockReason::Reserved,
            (10, _, _) => BlockReason::Private,
            (100, 64..=127, _) => BlockReason::SharedAddressSpace,
            (127, _, _) => BlockReason::Loopback,
            (169, 254, _) => BlockReason::LinkLocal,
            (172, 16..=31, _) => BlockReason::Private,
            (192, 0, 0) | (192, 88, 99) => BlockReason::Reserved,
            (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => BlockReason::Documentation,
            (192, 168, _) => BlockReason::Private,
            (198, 18..=19, _) => BlockReason::Benchmarking,
            (224..=239, _, _) => BlockReason::Multicast,
            (240..=255, _, _) => BlockReason::Reserved,
            _ => return None,
        }
    };
    Some(reason)
}

/// Classifies an IPv6 address, judging an embedded IPv4 address by the IPv4 rules.
fn classify_v6(v6: Ipv6Addr) -> Option<(BlockReason, Option<Ipv4Addr>)> {
    let seg = v6.segments();
    let bits = u128::from(v6);
    // The low 32 bits, where mapped, compatible and NAT64 addresses carry IPv4.
    let low_v4 = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    let embedded = |v4: Ipv4Addr| classify_v4(v4).map(|reason| (reason, Some(v4)));
    if v6.is_unspecified() {
        return Some((BlockReason::Unspecified, None));
    }
    if v6.is_loopback() {
        return Some((BlockReason::Loopback, None));
    }
    if v6 == METADATA_V6 {
        return Some((BlockReason::CloudMetadata, None));
    }
    if let Some(v4) = v6.to_ipv4_mapped() {
        return embedded(v4);
    }
    if bits >> 32 == 0 {
        // IPv4-compatible (deprecated): never legitimate, whatever it embeds.
        return Some((embedded(low_v4).map_or(BlockReason::Reserved, |(r, _)| r), Some(low_v4)));
    }
    match seg {
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => return embedded(low_v4),
        [0x64, 0xff9b, 1, ..] => return Some((BlockReason::Reserved, None)),
        [0x2002, hi, lo, ..] => {
            let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
            return embedded(v4);
        }
        _ => {}
    }
    let reason = if seg[0] & 0xe000 != 0x2000 {
        // Outside global unicast 2000::/3.
        match seg[0] {
            0xfc00..=0xfdff => BlockReason::Private,
            0xfe80..=0xfebf => BlockReason::LinkLocal,
            0xfec0..=0xfeff => BlockReason::Private,
            0xff00..=0xffff => BlockReason::Multicast,
            _ => BlockReason::Reserved,
        }
    } else if (seg[0] == 0x2001 && seg[1] == 0x0db8) || (seg[0] == 0x3fff && seg[1] < 0x1000) {
        BlockReason::Documentation
    } else if seg[0] == 0x2001 && seg[1] < 0x0200 {
        // 2001::/23: IETF protocol assignments (Teredo, benchmarking, ORCHID, ...).
        BlockReason::Reserved
    } else {
        return None;
    };
    Some((reason, None))
}

/// Why [`resolve_checked`] gives no address to dial.
#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    /// The resolver failed.
    #[error("resolving {host} failed: {error}")]
    Resolve {
        /// The host as normalised.
        host: String,
        /// The resolver's error.
        #[source]
        error: std::io::Error,
    },
    /// The resolver answered with no address.
    #[error("{host} resolved to no address")]
    NoAddress {
        /// The host as normalised.
        host: String,
    },
    /// At least one address the host resolved to is blocked.
    #[error("{host}: {blocked}")]
    Blocked {
        /// The host as normalised.
        host: String,
        /// The first blocked address.
        blocked: BlockedAddress,
    },
}

/// Resolves `host` once and checks every address; returns the checked addresses, which are the
/// only ones the caller may dial. An IP host is checked without a lookup.
pub async fn resolve_checked(
    host: &NormalizedHost,
    port: u16,
    policy: &AddressPolicy,
) -> Result<Vec<SocketAddr>, SsrfError> {
    let addrs: Vec<SocketAddr> = match host {
        NormalizedHost::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        NormalizedHost::Name(name) => tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|error| SsrfError::Resolve { host: host.to_string(), error })?
            .collect(),
    };
    check_resolved(host, addrs, policy)
}

/// Checks a resolver answer for `host`: all addresses must pass, or none is returned.
/// Duplicates are removed, order is kept.
pub fn check_resolved(
    host: &NormalizedHost,
    addrs: impl IntoIterator<Item = SocketAddr>,
    policy: &AddressPolicy,
) -> Result<Vec<SocketAddr>, SsrfError> {
    let mut checked: Vec<SocketAddr> = Vec::new();
    for addr in addrs {
        policy.check(addr.ip()).map_err(|blocked| SsrfError::Blocked { host: host.to_string(), blocked })?;
        if !checked.contains(&addr) {
            checked.push(addr);
        }
    }
    if checked.is_empty() {
        return Err(SsrfError::NoAddress { host: host.to_string() });
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn net(text: &str) -> IpNetwork {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn blocked(policy: &AddressPolicy, text: &str) -> BlockReason {
        match policy.check(ip(text)) {
            Err(b) => b.reason,
            Ok(()) => panic!("{text} passed"),
        }
    }

    #[test]
    fn names_are_lower_cased() {
        assert_eq!(normalize_host("API.GitHub.com"), Ok(NormalizedHost::Name("api.github.com".into())));
        assert_eq!(normalize_host("xn--80ak6aa92e.com"), Ok(NormalizedHost::Name("xn--80ak6aa92e.com".into())));
        assert_eq!(normalize_host("_dmarc.example.com"), Ok(NormalizedHost::Name("_dmarc.example.com".into())));
        assert_eq!(normalize_host("1.2.3.example"), Ok(NormalizedHost::Name("1.2.3.example".into())));
        assert_eq!(normalize_host("0xabc.com"), Ok(NormalizedHost::Name("0xabc.com".into())));
    }

    #[test]
    fn dotted_quad_and_brackets_are_addresses() {
        assert_eq!(normalize_host("93.184.216.34"), Ok(NormalizedHost::Ip(ip("93.184.216.34"))));
        assert_eq!(normalize_host("[::1]"), Ok(NormalizedHost::Ip(ip("::1"))));
        let v6 = normalize_host("[2001:DB8::1]").expect("v6");
        assert_eq!(v6, NormalizedHost::Ip(ip("2001:db8::1")));
        assert_eq!(v6.to_string(), "2001:db8::1");
        assert_eq!(v6.uri_host(), "[2001:db8::1]");
        assert_eq!(normalize_host("[::ffff:127.0.0.1]"), Ok(NormalizedHost::Ip(ip("::ffff:127.0.0.1"))));
    }

    #[test]
    fn ambiguous_numeric_forms_are_refused() {
        for raw in [
            "2130706433",
            "0x7f000001",
            "0x7f.1",
            "0177.0.0.1",
            "0177.1",
            "127.1",
            "127.0.1",
            "1.2.3.4.5",
            "0x7f.0x0.0x0.0x1",
            "010.0.0.1",
            "127.0.0.01",
            "0x",
            "example.123",
            "256.1.1.1",
        ] {
            assert!(
                matches!(normalize_host(raw), Err(HostError::AmbiguousNumeric(_))),
                "{raw}: {:?}",
                normalize_host(raw)
            );
        }
    }

    #[test]
    fn malformed_hosts_are_refused() {
        let cases = [
            ("", HostError::Empty),
            ("api.github.com.", HostError::TrailingDot),
            (".", HostError::TrailingDot),
            ("api.github.com\0.evil.org", HostError::ControlCharacter),
            ("api.github.com\r\nX: y", HostError::ControlCharacter),
            ("a\tb.com", HostError::ControlCharacter),
            ("a b.com", HostError::Whitespace),
            ("user@api.github.com", HostError::UserInfo),
            ("x-access-token:secret@github.com", HostError::UserInfo),
            ("api%2egithub.com", HostError::Percent),
            ("[fe80::1%25eth0]", HostError::Percent),
            ("аpple.com", HostError::NonAscii),
            ("bücher.de", HostError::NonAscii),
            ("api..github.com", HostError::EmptyLabel),
            (".github.com", HostError::EmptyLabel),
            ("api.github.com:443", HostError::InvalidCharacter(':')),
            ("::1", HostError::InvalidCharacter(':')),
            ("a/b.com", HostError::InvalidCharacter('/')),
            ("a*.com", HostError::InvalidCharacter('*')),
            ("-a.com", HostError::HyphenAtLabelEdge),
            ("a-.com", HostError::HyphenAtLabelEdge),
            ("[::1", HostError::InvalidIpv6Literal),
            ("[1.2.3.4]", HostError::InvalidIpv6Literal),
            ("[::1]:443", HostError::InvalidIpv6Literal),
            ("[]", HostError::InvalidIpv6Literal),
        ];
        for (raw, expected) in cases {
            assert_eq!(normalize_host(raw), Err(expected), "{raw:?}");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert_eq!(normalize_host(&long_label), Err(HostError::LabelTooLong));
        let long_name = ["a".repeat(63).as_str(); 5].join(".");
        assert_eq!(normalize_host(&long_name), Err(HostError::NameTooLong));
        let max_name = format!("{}.{}", ["a".repeat(63).as_str(); 3].join("."), "b".repeat(61));
        assert_eq!(max_name.len(), 253);
        assert!(normalize_host(&max_name).is_ok());
    }

    #[test]
    fn user_info_is_not_echoed() {
        let err = normalize_host("bob:hunter2@example.com").expect_err("refused");
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn every_blocked_ipv4_range() {
        let policy = AddressPolicy::default();
        let cases = [
            ("0.0.0.0", BlockReason::Unspecified),
            ("0.1.2.3", BlockReason::Reserved),
            ("10.0.0.1", BlockReason::Private),
            ("10.255.255.255", BlockReason::Private),
            ("100.64.0.1", BlockReason::SharedAddressSpace),
            ("100.127.255.254", BlockReason::SharedAddressSpace),
            ("127.0.0.1", BlockReason::Loopback),
            ("127.255.0.9", BlockReason::Loopback),
            ("169.254.1.1", BlockReason::LinkLocal),
            ("169.254.169.254", BlockReason::CloudMetadata),
            ("169.254.170.2", BlockReason::CloudMetadata),
            ("172.16.0.1", BlockReason::Private),
            ("172.31.255.255", BlockReason::Private),
            ("192.0.0.8", BlockReason::Reserved),
            ("192.0.2.1", BlockReason::Documentation),
            ("192.88.99.1", BlockReason::Reserved),
            ("192.168.1.1", BlockReason::Private),
            ("198.18.0.1", BlockReason::Benchmarking),
            ("198.19.255.1", BlockReason::Benchmarking),
            ("198.51.100.7", BlockReason::Documentation),
            ("203.0.113.9", BlockReason::Documentation),
            ("224.0.0.1", BlockReason::Multicast),
            ("239.255.255.250", BlockReason::Multicast),
            ("240.0.0.1", BlockReason::Reserved),
            ("255.255.255.255", BlockReason::Broadcast),
        ];
        for (text, reason) in cases {
            assert_eq!(blocked(&policy, text), reason, "{text}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        let policy = AddressPolicy::default();
        for text in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "169.253.1.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:93.184.216.34",
        ] {
            assert_eq!(policy.check(ip(text)), Ok(()), "{text}");
        }
    }

    #[test]
    fn every_blocked_ipv6_range() {
        let policy = AddressPolicy::default();
        let cases = [
            ("::", BlockReason::Unspecified),
            ("::1", BlockReason::Loopback),
            ("fe80::1", BlockReason::LinkLocal),
            ("febf::1", BlockReason::LinkLocal),
            ("fec0::1", BlockReason::Private),
            ("fc00::1", BlockReason::Private),
            ("fd12:3456::1", BlockReason::Private),
            ("fd00:ec2::254", BlockReason::CloudMetadata),
            ("ff02::1", BlockReason::Multicast),
            ("2001:db8::1", BlockReason::Documentation),
            ("3fff::1", BlockReason::Documentation),
            ("2001::1", BlockReason::Reserved),
            ("2001:2::1", BlockReason::Reserved),
            ("100::1", BlockReason::Reserved),
            ("5f00::1", BlockReason::Reserved),
            ("64:ff9b:1::a00:1", BlockReason::Reserved),
        ];
        for (text, reason) in cases {
            assert_eq!(blocked(&policy, text), reason, "{text}");
        }
    }

    #[test]
    fn ipv6_forms_embedding_blocked_ipv4_are_blocked() {
        let policy = AddressPolicy::default();
        let cases = [
            ("::ffff:127.0.0.1", BlockReason::Loopback, "127.0.0.1"),
            ("::ffff:7f00:1", BlockReason::Loopback, "127.0.0.1"),
            ("::ffff:10.1.2.3", BlockReason::Private, "10.1.2.3"),
            ("::ffff:169.254.169.254", BlockReason::CloudMetadata, "169.254.169.254"),
            ("::ffff:0.0.0.0", BlockReason::Unspecified, "0.0.0.0"),
            ("::127.0.0.1", BlockReason::Loopback, "127.0.0.1"),
            ("::8.8.8.8", BlockReason::Reserved, "8.8.8.8"),
            ("64:ff9b::127.0.0.1", BlockReason::Loopback, "127.0.0.1"),
            ("64:ff9b::a9fe:a9fe", BlockReason::CloudMetadata, "169.254.169.254"),
            ("64:ff9b::192.168.0.1", BlockReason::Private, "192.168.0.1"),
            ("2002:7f00:1::", BlockReason::Loopback, "127.0.0.1"),
            ("2002:a00:1::1", BlockReason::Private, "10.0.0.1"),
        ];
        for (text, reason, v4) in cases {
            let err = policy.check(ip(text)).expect_err(text);
            assert_eq!(err.reason, reason, "{text}");
            assert_eq!(err.embedded, Some(v4.parse().expect("v4")), "{text}");
            assert!(err.to_string().contains(v4), "{err}");
        }
    }

    #[test]
    fn allowed_ips_unlock_private_ranges() {
        let policy = AddressPolicy::new(&[net("10.0.0.0/8"), net("fd00::/8")]);
        assert_eq!(policy.check(ip("10.1.2.3")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:10.1.2.3")), Ok(()));
        assert_eq!(policy.check(ip("fd12::1")), Ok(()));
        assert_eq!(blocked(&policy, "192.168.1.1"), BlockReason::Private);
        assert_eq!(blocked(&policy, "127.0.0.1"), BlockReason::Loopback);
        // fd00:ec2::254 is in fd00::/8, but only naming it exactly unlocks the metadata service.
        assert_eq!(blocked(&policy, "fd00:ec2::254"), BlockReason::CloudMetadata);
    }

    #[test]
    fn metadata_needs_an_exact_entry_and_unspecified_never_passes() {
        let wide = AddressPolicy::new(&[net("0.0.0.0/0"), net("169.254.0.0/16"), net("::/0")]);
        assert_eq!(wide.check(ip("169.254.1.1")), Ok(()));
        assert_eq!(wide.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(blocked(&wide, "169.254.169.254"), BlockReason::CloudMetadata);
        assert_eq!(blocked(&wide, "::ffff:169.254.169.254"), BlockReason::CloudMetadata);
        assert_eq!(blocked(&wide, "fd00:ec2::254"), BlockReason::CloudMetadata);
        assert_eq!(blocked(&wide, "0.0.0.0"), BlockReason::Unspecified);
        assert_eq!(blocked(&wide, "::"), BlockReason::Unspecified);

        let exact = AddressPolicy::new(&[net("169.254.169.254/32"), net("fd00:ec2::254/128")]);
        assert_eq!(exact.check(ip("169.254.169.254")), Ok(()));
        assert_eq!(exact.check(ip("::ffff:169.254.169.254")), Ok(()));
        assert_eq!(exact.check(ip("fd00:ec2::254")), Ok(()));
        assert_eq!(blocked(&exact, "169.254.170.2"), BlockReason::CloudMetadata);
        assert_eq!(blocked(&exact, "169.254.169.253"), BlockReason::LinkLocal);
    }

    #[test]
    fn one_blocked_address_fails_the_whole_answer() {
        let host = NormalizedHost::Name("split.example".into());
        let answer = [SocketAddr::new(ip("93.184.216.34"), 443), SocketAddr::new(ip("10.0.0.5"), 443)];
        let err = check_resolved(&host, answer, &AddressPolicy::default()).expect_err("blocked");
        match err {
            SsrfError::Blocked { host, blocked } => {
                assert_eq!(host, "split.example");
                assert_eq!(blocked.addr, ip("10.0.0.5"));
            }
            other => panic!("{other}"),
        }
        let ok = check_resolved(
            &host,
            [answer[0], answer[0], SocketAddr::new(ip("1.1.1.1"), 443)],
            &AddressPolicy::default(),
        )
        .expect("public");
        assert_eq!(ok, [answer[0], SocketAddr::new(ip("1.1.1.1"), 443)]);
        assert!(matches!(check_resolved(&host, [], &AddressPolicy::default()), Err(SsrfError::NoAddress { .. })));
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback_and_is_blocked() {
        let host = normalize_host("localhost").expect("name");
        let err = resolve_checked(&host, 80, &AddressPolicy::default()).await.expect_err("blocked");
        match err {
            SsrfError::Blocked { blocked, .. } => assert_eq!(blocked.reason, BlockReason::Loopback),
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn ip_hosts_are_checked_without_lookup() {
        let public = NormalizedHost::Ip(ip("93.184.216.34"));
        let addrs = resolve_checked(&public, 443, &AddressPolicy::default()).await.expect("public");
        assert_eq!(addrs, [SocketAddr::new(ip("93.184.216.34"), 443)]);
        let meta = NormalizedHost::Ip(ip("169.254.169.254"));
        assert!(matches!(resolve_checked(&meta, 80, &AddressPolicy::default()).await, Err(SsrfError::Blocked { .. })));
    }
}
