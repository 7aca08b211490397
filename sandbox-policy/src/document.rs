//! The policy file as parsed from YAML: one Rust type per YAML mapping, one enum per closed set.
//!
//! Parsing and checking happen together: every value is read into a type that can only hold a
//! valid value ([`HostPattern`], [`Port`], [`AbsolutePath`], ...), and mappings whose keys depend
//! on each other (an endpoint's `port`/`ports`, its L7 settings) are checked as soon as they are
//! read. That way every error carries the line and column of the value or mapping at fault.
//! Unknown keys are errors (`deny_unknown_fields`), and so are duplicate keys.
//!
//! The document keeps the file's shape; [`super::compile()`] turns it into the form the
//! enforcement layers use.

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::error::PolicyError;
use super::hosts::{HostPattern, IpNetwork};

/// The only policy format version leash reads.
pub const SUPPORTED_VERSION: u64 = 1;

/// Reads a policy document from YAML text. `file_label` names the file in errors.
pub fn parse(file_label: &str, text: &str) -> Result<Document, PolicyError> {
    serde_norway::from_str(text).map_err(|e| PolicyError::from_yaml(file_label, &e))
}

/// A whole policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Format version; always [`SUPPORTED_VERSION`].
    pub version: Version,
    /// What the agent may read and write (Landlock). Absent: no filesystem restriction.
    pub filesystem_policy: Option<FilesystemPolicy>,
    /// How strictly the filesystem policy must be enforced.
    pub landlock: Option<Landlock>,
    /// Which user and group the agent runs as.
    pub process: Option<Process>,
    /// Named sets of endpoints the agent may reach through the proxy, in file order.
    #[serde(default)]
    pub network_policies: Entries<PolicyName, NetworkPolicy>,
    /// Secrets the agent only ever sees as placeholders (leash extension), in file order.
    #[serde(default)]
    pub credentials: Entries<EnvVarName, CredentialSpec>,
    /// BPF-LSM rules (leash extension).
    pub kernel: Option<Kernel>,
    /// How the sandbox reaches the proxy (leash extension).
    pub network: Option<Network>,
}

/// `network:` — how the agent's connections reach the proxy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Transparent mode: a TCP connection to any address (not only to the proxy) is redirected
    /// to the proxy in the kernel and judged by the name it was meant for, and DNS queries go to
    /// leash's resolver, which answers only names the policy allows. For clients that do not
    /// honour `HTTPS_PROXY`. Read when the sandbox starts (a reload may not change it). Absent:
    /// on.
    pub transparent: Option<bool>,
}

/// The `version:` key; reading it fails unless it is [`SUPPORTED_VERSION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version(u64);

/// `filesystem_policy:` — paths the agent may read, or read and write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesystemPolicy {
    /// Also grant read-write access to the directory `leash run` was started in.
    #[serde(default)]
    pub include_workdir: bool,
    /// Paths (and everything beneath them) the agent may read.
    #[serde(default)]
    pub read_only: Vec<AbsolutePath>,
    /// Paths (and everything beneath them) the agent may read and write.
    #[serde(default)]
    pub read_write: Vec<AbsolutePath>,
    /// Names in the working directory the agent may not change (they run code later, outside
    /// the sandbox); absent means leash's default list, `[]` protects nothing.
    pub protect_in_workdir: Option<Vec<WorkdirPath>>,
}

/// `landlock:` — enforcement strictness for the filesystem policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Landlock {
    /// Absent means [`LandlockCompat::BestEffort`].
    pub compatibility: Option<LandlockCompat>,
}

/// What to do when the kernel's Landlock cannot enforce the whole filesystem policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LandlockCompat {
    /// Enforce what the kernel supports and report the rest.
    #[default]
    BestEffort,
    /// Refuse to start the agent unless everything is enforced.
    HardRequirement,
}

/// `process:` — the identity the agent runs under.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// User name or numeric uid; never root.
    pub run_as_user: Option<AccountName>,
    /// Group name or numeric gid; never root.
    pub run_as_group: Option<AccountName>,
}

/// One entry of `network_policies:`.
#[derive(Debug, Clone)]
pub struct NetworkPolicy {
    /// The `name:` key, informational (OpenShell files repeat the map key here).
    pub name: Option<String>,
    /// Where this policy lets the agent connect; never empty.
    pub endpoints: Vec<Endpoint>,
    /// Executables allowed to use this policy; `None` means any. Never `Some(empty)`.
    pub binaries: Option<Vec<Binary>>,
}

/// `binaries:` entry: an executable allowed to use a network policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binary {
    /// Absolute path of the executable.
    pub path: AbsolutePath,
}

/// One entry of a network policy's `endpoints:`.
///
/// Reading it guarantees: exactly one of `port`/`ports` was given; the L7 keys (`access`,
/// `rules`, `deny_rules`, `enforcement`, `request_body_credential_rewrite`,
/// `request_target_credential_rewrite`) appear only with
/// `protocol: rest`; `protocol: rest` has either `access` or `rules`, not both; `tls: skip` is not
/// combined with anything that needs to see requests.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Which hosts this endpoint covers.
    pub host: HostPattern,
    /// The ports from `port:` or `ports:`.
    pub ports: PortList,
    /// `rest` (HTTP, may be inspected) or `tcp` (tunnelled); absent behaves like `tcp`.
    pub protocol: Option<Protocol>,
    /// Preset request rules for `protocol: rest`.
    pub access: Option<Access>,
    /// Explicit allow rules for `protocol: rest`.
    pub rules: Vec<AllowRule>,
    /// Requests refused even when allowed by `access` or `rules`.
    pub deny_rules: Vec<RequestMatch>,
    /// Block or only log requests the rules refuse; absent means enforce.
    pub enforcement: Option<Enforcement>,
    /// `skip`: tunnel TLS without interception.
    pub tls: Option<Tls>,
    /// Addresses this host may resolve to even if they are private.
    pub allowed_ips: Vec<IpNetwork>,
    /// Rewrite credential placeholders in request bodies too, not only headers.
    pub request_body_credential_rewrite: bool,
    /// Rewrite credential placeholders in the request target (path and query) too.
    pub request_target_credential_rewrite: bool,
}

/// The ports of an endpoint: at least one, each in 1..=65535.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(Vec<u16>);

impl PortList {
    /// The ports, in file order (at least one).
    pub fn as_slice(&self) -> &[u16] {
        &self.0
    }

    /// Whether `port` is one of them.
    pub fn contains(&self, port: u16) -> bool {
        self.0.contains(&port)
    }
}

/// One TCP port number, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

/// `protocol:` of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP(S): requests can be checked against rules.
    Rest,
    /// Any TCP stream: tunnelled without inspection.
    Tcp,
}

/// `access:` preset of a `protocol: rest` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// GET, HEAD, OPTIONS.
    ReadOnly,
    /// GET, HEAD, OPTIONS, POST, PUT, PATCH.
    ReadWrite,
    /// Every method.
    Full,
}

/// `enforcement:` of an endpoint's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Refuse requests the rules do not allow.
    #[default]
    Enforce,
    /// Let them through and record an audit finding.
    Audit,
}

/// `tls:` of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Tunnel the TLS connection as is; the proxy sees no request.
    Skip,
    /// Terminate TLS and inspect each request: what `protocol: rest` does anyway (OpenShell's
    /// explicit spelling).
    Terminate,
}

/// `rules:` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// Requests this rule lets through.
    pub allow: RequestMatch,
}

/// A request pattern: `{ method: GET, path: "/repos/**" }`. A missing key matches anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    /// An upper-case HTTP method or `*`; absent means any.
    pub method: Option<Method>,
    /// A path glob starting with `/` (`*` one segment, `**` any depth); absent means any.
    pub path: Option<RequestPath>,
}

/// An HTTP method in a rule: upper-case letters (`GET`), or `*` for any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method(String);

impl Method {
    /// The method, or `None` for `*`.
    pub fn name(&self) -> Option<&str> {
        (self.0 != "*").then_some(self.0.as_str())
    }
}

/// A request path glob in a rule: starts with `/`, or is `*` / `**`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath(String);

impl RequestPath {
    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `credentials:` value: which hosts may receive a credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    /// Hosts the real value may be sent to; empty means none (the agent only holds a placeholder).
    #[serde(default)]
    pub hosts: Vec<HostPattern>,
    /// Whether the agent must not start without it; otherwise a missing value is a note and the
    /// agent gets no placeholder for it.
    #[serde(default)]
    pub required: bool,
}

/// `kernel:` — rules enforced by BPF-LSM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Which executables may run; absent means any.
    pub exec: Option<ExecRules>,
    /// Files the agent may never open.
    #[serde(default)]
    pub deny_open: Vec<AbsolutePath>,
    /// Operations refused to the agent.
    #[serde(default)]
    pub deny: Vec<KernelDeny>,
    /// Which unix sockets the agent may connect or send to; absent means none.
    pub unix: Option<UnixRules>,
}

/// `kernel.unix:` — the unix sockets the agent may reach: absolute socket paths, and abstract
/// names written with a leading `@` (`@/tmp/.X11-unix/X0`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixRules {
    #[serde(default)]
    pub allow: Vec<UnixSocketName>,
}

/// A unix socket address from `kernel.unix.allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixSocketName {
    /// A pathname socket (absolute path).
    Path(PathBuf),
    /// An abstract socket (the name after `@`).
    Abstract(Vec<u8>),
}

impl FromStr for UnixSocketName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // sun_path holds 108 bytes; an abstract name also spends one on its leading zero.
        if let Some(name) = text.strip_prefix('@') {
            if name.is_empty() || name.len() > 107 {
                return Err(format!("abstract socket name `{text}` must have 1 to 107 bytes after `@`"));
            }
            return Ok(UnixSocketName::Abstract(name.as_bytes().to_vec()));
        }
        check_absolute(text, "unix socket path (or `@name` for an abstract socket)")?;
        if text.len() > 107 {
            return Err(format!("unix socket path `{text}` is longer than 107 bytes"));
        }
        Ok(UnixSocketName::Path(PathBuf::from(text)))
    }
}

impl<'de> Deserialize<'de> for UnixSocketName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `kernel.exec:`.
#[derive(Debug, Clone)]
pub struct ExecRules {
    /// Absolute path globs (`/usr/bin/**`); never empty.
    pub allow: Vec<PathGlob>,
}

/// An operation `kernel.deny` can refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelDeny {
    /// ptrace(2) and process_vm_* on any process.
    Ptrace,
    /// bpf(2).
    Bpf,
    /// mount(2), umount(2), pivot_root(2) and the new mount API.
    Mount,
    /// Creating user namespaces.
    Userns,
    /// perf_event_open(2).
    PerfEvent,
    /// SOCK_RAW sockets.
    RawSocket,
    /// AF_PACKET sockets.
    PacketSocket,
    /// Signals to processes outside the sandbox.
    KillOutside,
    /// Loading kernel modules.
    KernelModule,
    /// AF_VSOCK sockets.
    Vsock,
    /// AF_NETLINK sockets other than NETLINK_ROUTE.
    Netlink,
}

impl KernelDeny {
    /// The name as written in the policy.
    pub fn as_str(self) -> &'static str {
        match self {
            KernelDeny::Ptrace => "ptrace",
            KernelDeny::Bpf => "bpf",
            KernelDeny::Mount => "mount",
            KernelDeny::Userns => "userns",
            KernelDeny::PerfEvent => "perf_event",
            KernelDeny::RawSocket => "raw_socket",
            KernelDeny::PacketSocket => "packet_socket",
            KernelDeny::KillOutside => "kill_outside",
            KernelDeny::KernelModule => "kernel_module",
            KernelDeny::Vsock => "vsock",
            KernelDeny::Netlink => "netlink",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checked scalar values
// ---------------------------------------------------------------------------------------------

/// An absolute filesystem path from the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsolutePath(PathBuf);

impl AbsolutePath {
    /// The path.
    pub fn into_path_buf(self) -> PathBuf {
        self.0
    }
}

impl FromStr for AbsolutePath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        check_absolute(text, "path")?;
        Ok(AbsolutePath(PathBuf::from(text)))
    }
}

/// A path relative to the working directory, staying inside it (`.git/config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkdirPath(PathBuf);

impl WorkdirPath {
    /// The path.
    pub fn into_path_buf(self) -> PathBuf {
        self.0
    }
}

impl FromStr for WorkdirPath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let path = std::path::Path::new(text);
        let inside = path.components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if text.is_empty() || text.contains('\0') || !inside {
            return Err(format!(
                "`{}` must be a path inside the working directory (relative, no `..`)",
                text.escape_debug()
            ));
        }
        Ok(WorkdirPath(path.to_path_buf()))
    }
}

/// An absolute path glob (`/usr/bin/**`) from `kernel.exec.allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathGlob(String);

impl PathGlob {
    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PathGlob {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        check_absolute(text, "path glob")?;
        Ok(PathGlob(text.to_owned()))
    }
}

/// Fails unless `text` starts with `/` and has no NUL byte.
fn check_absolute(text: &str, what: &str) -> Result<(), String> {
    if !text.starts_with('/') {
        return Err(format!("{what} `{text}` must be absolute (start with `/`)"));
    }
    if text.contains('\0') {
        return Err(format!("{what} `{}` contains a NUL byte", text.escape_debug()));
    }
    Ok(())
}

/// The name of an environment variable holding a credential (`GITHUB_TOKEN`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvVarName(String);

impl EnvVarName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EnvVarName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut chars = text.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            Ok(EnvVarName(text.to_owned()))
        } else {
            Err(format!(
                "credential name `{text}` is not an environment variable name (letters, digits and `_`, not starting with a digit)"
            ))
        }
    }
}

/// The key of a `network_policies:` entry: letters, digits, `_`, `-`, `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PolicyName(String);

impl PolicyName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PolicyName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let ok = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if ok {
            Ok(PolicyName(text.to_owned()))
        } else {
            Err(format!("network policy name `{text}` may only contain letters, digits, `_`, `-` and `.`"))
        }
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "*" || (!text.is_empty() && text.chars().all(|c| c.is_ascii_uppercase())) {
            Ok(Method(text.to_owned()))
        } else if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphabetic()) {
            Err(format!("HTTP method `{text}` must be upper case (`{}`)", text.to_ascii_uppercase()))
        } else {
            Err(format!("`{text}` is not an HTTP method (upper-case letters, or `*` for any)"))
        }
    }
}

impl FromStr for RequestPath {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let shape_ok = text.starts_with('/') || text == "*" || text == "**";
        if shape_ok && !text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Ok(RequestPath(text.to_owned()))
        } else {
            Err(format!("request path `{text}` must start with `/` (or be `**` for any path) and contain no spaces"))
        }
    }
}

/// A user or group for the agent, by name or number; never root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountName(String);

impl AccountName {
    /// The name, or the number as text.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for AccountName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "root" || text.trim_start_matches('0').is_empty() && !text.is_empty() {
            return Err(format!(
                "`{text}` is the root account: the agent never runs as root; name an unprivileged one"
            ));
        }
        let ok = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        if ok {
            Ok(AccountName(text.to_owned()))
        } else {
            Err(format!("`{text}` is not a user or group name"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deserialization helpers. Each check runs inside the visitor of the YAML node it concerns, so
// serde_norway attaches that node's line and column to the error.
// ---------------------------------------------------------------------------------------------

/// Visitor for a string scalar parsed with `FromStr`.
struct ParseStr<T> {
    expecting: &'static str,
    target: PhantomData<T>,
}

impl<T> Visitor<'_> for ParseStr<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }
}

/// Implements `Deserialize` for a type read from a string scalar with `FromStr`.
macro_rules! deserialize_from_str {
    ($($ty:ty => $expecting:literal),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(ParseStr { expecting: $expecting, target: PhantomData })
            }
        }
    )*};
}

deserialize_from_str! {
    HostPattern => "a host name pattern such as `api.github.com`, `*.example.com` or `**.example.com`",
    IpNetwork => "an IP address or CIDR block such as `10.0.0.0/8`",
    AbsolutePath => "an absolute path",
    WorkdirPath => "a path inside the working directory such as `.git/config`",
    PathGlob => "an absolute path glob such as `/usr/bin/**`",
    Method => "an HTTP method such as `GET`, or `*`",
    RequestPath => "a request path glob such as `/repos/**`",
}

/// Reads an unsigned integer scalar and converts it with `check`.
struct Number<T> {
    expecting: &'static str,
    check: fn(u64) -> Result<T, String>,
}

impl<T> Visitor<'_> for Number<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        (self.check)(value).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        let value = u64::try_from(value).map_err(|_| E::custom(format!("{value} is negative")))?;
        self.visit_u64(value)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u64(Number { expecting: "the policy format version (1)", check: check_version })
    }
}

/// Accepts only [`SUPPORTED_VERSION`].
fn check_version(value: u64) -> Result<Version, String> {
    if value == SUPPORTED_VERSION {
        Ok(Version(value))
    } else {
        Err(format!("unsupported policy version {value}: this leash reads version {SUPPORTED_VERSION}"))
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u64(Number { expecting: "a port number (1-65535)", check: check_port })
    }
}

/// Accepts 1..=65535.
fn check_port(value: u64) -> Result<Port, String> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Ok(Port(port)),
        _ => Err(format!("port {value} is out of range (1-65535)")),
    }
}

/// Visitor for `run_as_user` / `run_as_group`: a name, or a number (uid/gid).
struct AccountVisitor;

impl Visitor<'_> for AccountVisitor {
    type Value = AccountName;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a user or group name, or a numeric id")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<AccountName, E> {
        text.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, id: u64) -> Result<AccountName, E> {
        if u32::try_from(id).is_err() {
            return Err(E::custom(format!("id {id} is out of range")));
        }
        self.visit_str(&id.to_string())
    }

    fn visit_i64<E: de::Error>(self, id: i64) -> Result<AccountName, E> {
        let id = u64::try_from(id).map_err(|_| E::custom(format!("id {id} is negative")))?;
        self.visit_u64(id)
    }
}

impl<'de> Deserialize<'de> for AccountName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AccountVisitor)
    }
}

/// Visitor for a mapping read as `Raw` (with derived `Deserialize`) and then checked. The check
/// runs inside `visit_map`, so its error points at the mapping.
struct Checked<Raw, T> {
    expecting: &'static str,
    check: fn(Raw) -> Result<T, String>,
}

impl<'de, Raw: Deserialize<'de>, T> Visitor<'de> for Checked<Raw, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = Raw::deserialize(de::value::MapAccessDeserializer::new(map))?;
        (self.check)(raw).map_err(de::Error::custom)
    }
}

/// Reads a mapping as `Raw`, then checks it with `check`.
fn deserialize_checked<'de, D, Raw, T>(
    deserializer: D,
    expecting: &'static str,
    check: fn(Raw) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    Raw: Deserialize<'de>,
{
    deserializer.deserialize_map(Checked { expecting, check })
}

// ---------------------------------------------------------------------------------------------
// Mappings with cross-key rules
// ---------------------------------------------------------------------------------------------

/// An endpoint exactly as written, before its keys are checked against each other.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    host: HostPattern,
    port: Option<Port>,
    ports: Option<Vec<Port>>,
    protocol: Option<Protocol>,
    access: Option<Access>,
    #[serde(default)]
    rules: Vec<AllowRule>,
    #[serde(default)]
    deny_rules: Vec<RequestMatch>,
    enforcement: Option<Enforcement>,
    tls: Option<Tls>,
    #[serde(default)]
    allowed_ips: Vec<IpNetwork>,
    #[serde(default)]
    request_body_credential_rewrite: bool,
    #[serde(default)]
    request_target_credential_rewrite: bool,
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked(deserializer, "an endpoint mapping (host, port, ...)", check_endpoint)
    }
}

/// Applies the cross-key rules documented on [`Endpoint`].
fn check_endpoint(raw: RawEndpoint) -> Result<Endpoint, String> {
    let ports = endpoint_ports(&raw)?;
    check_l7_keys(&raw)?;
    Ok(Endpoint {
        host: raw.host,
        ports,
        protocol: raw.protocol,
        access: raw.access,
        rules: raw.rules,
        deny_rules: raw.deny_rules,
        enforcement: raw.enforcement,
        tls: raw.tls,
        allowed_ips: raw.allowed_ips,
        request_body_credential_rewrite: raw.request_body_credential_rewrite,
        request_target_credential_rewrite: raw.request_target_credential_rewrite,
    })
}

/// The endpoint's ports: exactly one of `port` and a non-empty `ports`.
fn endpoint_ports(raw: &RawEndpoint) -> Result<PortList, String> {
    let host = &raw.host;
    match (raw.port, &raw.ports) {
        (Some(port), None) => Ok(PortList(vec![port.0])),
        (None, Some(ports)) if !ports.is_empty() => Ok(PortList(ports.iter().map(|p| p.0).collect())),
        (None, Some(_)) => Err(format!("endpoint `{host}`: `ports` is empty")),
        (Some(_), Some(_)) => Err(format!("endpoint `{host}`: give either `port` or `ports`, not both")),
        (None, None) => Err(format!("endpoint `{host}`: missing `port` (or `ports`)")),
    }
}

/// Checks that the L7 keys fit the endpoint's protocol and TLS mode.
fn check_l7_keys(raw: &RawEndpoint) -> Result<(), String> {
    let host = &raw.host;
    let l7_keys = l7_keys_present(raw);
    if raw.protocol != Some(Protocol::Rest) {
        if let Some(key) = l7_keys.first() {
            return Err(format!("endpoint `{host}`: `{key}` needs `protocol: rest` (tcp endpoints are not inspected)"));
        }
        return Ok(());
    }
    match (raw.access.is_some(), raw.rules.is_empty()) {
        (true, false) => return Err(format!("endpoint `{host}`: give either `access` or `rules`, not both")),
        (false, true) => return Err(format!("endpoint `{host}`: `protocol: rest` needs `access` or `rules`")),
        _ => {}
    }
    let needs_requests = raw.access != Some(Access::Full)
        || !raw.deny_rules.is_empty()
        || raw.enforcement == Some(Enforcement::Audit)
        || raw.request_body_credential_rewrite
        || raw.request_target_credential_rewrite;
    if raw.tls == Some(Tls::Skip) && needs_requests {
        return Err(format!(
            "endpoint `{host}`: `tls: skip` tunnels without interception, so it only goes with `access: full` and no other request rules"
        ));
    }
    Ok(())
}

/// The L7 keys an endpoint sets, by name.
fn l7_keys_present(raw: &RawEndpoint) -> Vec<&'static str> {
    let present = [
        ("access", raw.access.is_some()),
        ("rules", !raw.rules.is_empty()),
        ("deny_rules", !raw.deny_rules.is_empty()),
        ("enforcement", raw.enforcement.is_some()),
        ("request_body_credential_rewrite", raw.request_body_credential_rewrite),
        ("request_target_credential_rewrite", raw.request_target_credential_rewrite),
        ("tls: terminate", raw.tls == Some(Tls::Terminate)),
    ];
    present.iter().filter(|(_, set)| *set).map(|(key, _)| *key).collect()
}

/// A network policy exactly as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetworkPolicy {
    name: Option<String>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
    binaries: Option<Vec<Binary>>,
}

impl<'de> Deserialize<'de> for NetworkPolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked(deserializer, "a network policy mapping (name, endpoints, binaries)", check_network_policy)
    }
}

/// A network policy needs endpoints, and `binaries:`, when present, must list some.
fn check_network_policy(raw: RawNetworkPolicy) -> Result<NetworkPolicy, String> {
    if raw.endpoints.is_empty() {
        return Err("network policy has no `endpoints`".to_owned());
    }
    if raw.binaries.as_ref().is_some_and(Vec::is_empty) {
        return Err("`binaries` is empty, so no executable could use this policy; omit it to allow any".to_owned());
    }
    Ok(NetworkPolicy { name: raw.name, endpoints: raw.endpoints, binaries: raw.binaries })
}

/// `kernel.exec` exactly as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExecRules {
    allow: Vec<PathGlob>,
}

impl<'de> Deserialize<'de> for ExecRules {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked(deserializer, "an exec rules mapping (allow)", check_exec_rules)
    }
}

/// An empty allow list would stop the agent itself from starting.
fn check_exec_rules(raw: RawExecRules) -> Result<ExecRules, String> {
    if raw.allow.is_empty() {
        return Err("`exec.allow` is empty, so nothing could run; omit `exec` to allow any executable".to_owned());
    }
    Ok(ExecRules { allow: raw.allow })
}

// ---------------------------------------------------------------------------------------------
// Maps with unique keys
// ---------------------------------------------------------------------------------------------

/// A YAML mapping read in file order, refusing duplicate keys (a plain map would silently keep
/// the last one, and a policy must not mean something its reader cannot see).
#[derive(Debug, Clone)]
pub struct Entries<K, V>(Vec<(K, V)>);

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Entries(Vec::new())
    }
}

impl<K, V> Entries<K, V> {
    /// The entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K, V> IntoIterator for Entries<K, V> {
    type Item = (K, V);
    type IntoIter = std::vec::IntoIter<(K, V)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Seed reading one key of an [`Entries`] map, failing (at the key) if it was seen before.
struct NewKey<'a, K> {
    seen: &'a BTreeSet<String>,
    key: PhantomData<K>,
}

impl<'de, K> DeserializeSeed<'de> for NewKey<'_, K>
where
    K: FromStr,
    K::Err: fmt::Display,
{
    type Value = (String, K);

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<K> Visitor<'_> for NewKey<'_, K>
where
    K: FromStr,
    K::Err: fmt::Display,
{
    type Value = (String, K);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a name")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if self.seen.contains(text) {
            return Err(E::custom(format!("duplicate key `{text}`")));
        }
        Ok((text.to_owned(), text.parse().map_err(E::custom)?))
    }
}

/// Visitor building an [`Entries`] map.
struct EntriesVisitor<K, V>(PhantomData<(K, V)>);

impl<'de, K, V> Visitor<'de> for EntriesVisitor<K, V>
where
    K: FromStr,
    K::Err: fmt::Display,
    V: Deserialize<'de>,
{
    type Value = Entries<K, V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of names")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = BTreeSet::new();
        let mut entries = Vec::new();
        while let Some((text, key)) = map.next_key_seed(NewKey { seen: &seen, key: PhantomData })? {
            let value = map.next_value()?;
            seen.insert(text);
            entries.push((key, value));
        }
        Ok(Entries(entries))
    }
}

impl<'de, K, V> Deserialize<'de> for Entries<K, V>
where
    K: FromStr,
    K::Err: fmt::Display,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Location;

    /// Parses `text` and returns the error's location and Display.
    fn parse_err(text: &str) -> (Option<Location>, String) {
        match parse("p.yaml", text) {
            Ok(doc) => panic!("expected an error, parsed {doc:?}"),
            Err(e) => (e.location(), e.to_string()),
        }
    }

    fn at(line: usize, column: usize) -> Option<Location> {
        Some(Location { line, column })
    }

    #[test]
    fn unknown_top_level_key_is_located_and_named() {
        let (loc, msg) = parse_err("version: 1\nnetwork_polices: {}\n");
        assert_eq!(loc, at(2, 1));
        assert!(msg.starts_with("p.yaml:2:1: unknown field `network_polices`"), "{msg}");
        assert!(msg.contains("network_policies"), "allowed keys listed: {msg}");
    }

    #[test]
    fn unknown_endpoint_key_is_located_at_the_key() {
        let text = "\
version: 1
network_policies:
  gh:
    endpoints:
      - host: api.github.com
        port: 443
        protocl: rest
";
        let (loc, msg) = parse_err(text);
        assert_eq!(loc, at(7, 9));
        assert!(msg.contains("unknown field `protocl`"), "{msg}");
        assert!(msg.contains("`protocol`"), "{msg}");
        assert!(msg.contains("network_policies.gh.endpoints[0]"), "path named: {msg}");
    }

    #[test]
    fn openshell_only_key_names_the_feature() {
        let text = "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - { host: a.com, port: 443, mcp: {} }\n";
        let (loc, msg) = parse_err(text);
        assert_eq!(loc.map(|l| l.line), Some(5));
        assert!(msg.contains("MCP inspection"), "{msg}");
    }

    #[test]
    fn malformed_yaml_is_located() {
        let (loc, msg) = parse_err("version: 1\nfilesystem_policy:\n  read_only: [/usr\n  read_write: []\n");
        assert!(loc.is_some(), "{msg}");
        let loc = loc.expect("location");
        assert!(msg.starts_with(&format!("p.yaml:{}:{}: ", loc.line, loc.column)), "{msg}");
        let repeated = format!(" at line {} column {}", loc.line, loc.column);
        assert!(!msg.contains(&repeated), "location not repeated: {msg}");
        let (loc, msg) = parse_err("version: 1\nkernel:\n\tdeny: []\n");
        assert_eq!(loc, at(3, 1), "a tab cannot indent YAML: {msg}");
    }

    #[test]
    fn bad_enum_value_is_located() {
        let text = "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - host: a.com\n        port: 443\n        protocol: http\n";
        let (loc, msg) = parse_err(text);
        assert_eq!(loc, at(7, 19));
        assert!(msg.contains("unknown variant `http`"), "{msg}");
        let (loc, msg) = parse_err("version: 1\nlandlock: { compatibility: strict }\n");
        assert_eq!(loc, at(2, 28));
        assert!(msg.contains("best_effort"), "{msg}");
        let (_, msg) = parse_err("version: 1\nkernel: { deny: [ptrace, sudo] }\n");
        assert!(msg.contains("unknown variant `sudo`"), "{msg}");
    }

    #[test]
    fn root_is_rejected_at_its_location() {
        for user in ["root", "0", "\"0\"", "000"] {
            let text = format!("version: 1\nprocess:\n  run_as_user: {user}\n");
            let (loc, msg) = parse_err(&text);
            assert_eq!(loc, at(3, 16), "{user}: {msg}");
            assert!(msg.contains("never runs as root"), "{msg}");
        }
        let (loc, _) = parse_err("version: 1\nprocess: { run_as_user: sandbox, run_as_group: root }\n");
        assert_eq!(loc.map(|l| l.line), Some(2));
        let ok = parse("p.yaml", "version: 1\nprocess: { run_as_user: 1000, run_as_group: sandbox }\n");
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn version_must_be_one() {
        let (loc, msg) = parse_err("version: 2\n");
        assert_eq!(loc, at(1, 10));
        assert!(msg.contains("unsupported policy version 2"), "{msg}");
        let (_, msg) = parse_err("filesystem_policy: {}\n");
        assert!(msg.contains("missing field `version`"), "{msg}");
    }

    #[test]
    fn ports_are_checked() {
        let endpoint = |ports: &str| {
            format!("version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - {{ host: a.com, {ports} }}\n")
        };
        let (loc, msg) = parse_err(&endpoint("port: 0"));
        assert_eq!(loc.map(|l| l.line), Some(5));
        assert!(msg.contains("out of range"), "{msg}");
        let (_, msg) = parse_err(&endpoint("port: 70000"));
        assert!(msg.contains("out of range"), "{msg}");
        let (loc, msg) = parse_err(&endpoint("port: 443, ports: [80]"));
        assert_eq!(loc, at(5, 9));
        assert!(msg.contains("not both"), "{msg}");
        let (_, msg) = parse_err(&endpoint("ports: []"));
        assert!(msg.contains("`ports` is empty"), "{msg}");
        let (_, msg) = parse_err(&endpoint("protocol: tcp"));
        assert!(msg.contains("missing `port`"), "{msg}");
    }

    #[test]
    fn l7_keys_need_rest() {
        let endpoint = |extra: &str| {
            format!(
                "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - {{ host: a.com, port: 443, {extra} }}\n"
            )
        };
        let (_, msg) = parse_err(&endpoint("protocol: tcp, access: read-only"));
        assert!(msg.contains("`access` needs `protocol: rest`"), "{msg}");
        let (_, msg) = parse_err(&endpoint("deny_rules: [{ method: DELETE }]"));
        assert!(msg.contains("`deny_rules` needs `protocol: rest`"), "{msg}");
        let (_, msg) = parse_err(&endpoint("protocol: rest"));
        assert!(msg.contains("needs `access` or `rules`"), "{msg}");
        let (_, msg) = parse_err(&endpoint("protocol: rest, access: full, rules: [{ allow: { method: GET } }]"));
        assert!(msg.contains("not both"), "{msg}");
        let (_, msg) = parse_err(&endpoint("protocol: rest, access: read-only, tls: skip"));
        assert!(msg.contains("tls: skip"), "{msg}");
        assert!(parse("p.yaml", &endpoint("protocol: rest, access: full, tls: skip")).is_ok());
        // OpenShell's explicit spelling of what `protocol: rest` does.
        assert!(parse("p.yaml", &endpoint("protocol: rest, access: read-only, tls: terminate")).is_ok());
        let (_, msg) = parse_err(&endpoint("protocol: tcp, tls: terminate"));
        assert!(msg.contains("tls: terminate"), "{msg}");
        let enforce = "protocol: rest, access: full, enforcement: enforce, tls: skip";
        assert!(parse("p.yaml", &endpoint(enforce)).is_ok());
        let audit = "protocol: rest, access: full, enforcement: audit, tls: skip";
        let (_, msg) = parse_err(&endpoint(audit));
        assert!(msg.contains("tls: skip"), "{msg}");
    }

    #[test]
    fn rule_values_are_checked() {
        let rules = |rule: &str| {
            format!("version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - {{ host: a.com, port: 443, protocol: rest, rules: [{rule}] }}\n")
        };
        let (_, msg) = parse_err(&rules("{ allow: { method: get } }"));
        assert!(msg.contains("must be upper case (`GET`)"), "{msg}");
        let (_, msg) = parse_err(&rules("{ allow: { path: repos } }"));
        assert!(msg.contains("must start with `/`"), "{msg}");
        let (_, msg) = parse_err(&rules("{ allow: { method: GET, query: { a: b } } }"));
        assert!(msg.contains("query-string matching"), "{msg}");
        assert!(parse("p.yaml", &rules("{ allow: { method: '*', path: '/**' } }")).is_ok());
    }

    #[test]
    fn credential_names_and_hosts_are_checked() {
        let (loc, msg) = parse_err("version: 1\ncredentials:\n  GITHUB-TOKEN: { hosts: [github.com] }\n");
        assert_eq!(loc, at(3, 3));
        assert!(msg.contains("not an environment variable name"), "{msg}");
        let (loc, msg) = parse_err("version: 1\ncredentials:\n  T: { hosts: [\"https://github.com\"] }\n");
        assert_eq!(loc.map(|l| l.line), Some(3));
        assert!(msg.contains("URL scheme"), "{msg}");
    }

    #[test]
    fn duplicate_keys_are_rejected_at_the_second_key() {
        let text = "version: 1\ncredentials:\n  A: { hosts: [a.com] }\n  A: { hosts: [b.com] }\n";
        let (loc, msg) = parse_err(text);
        assert_eq!(loc, at(4, 3));
        assert!(msg.contains("duplicate key `A`"), "{msg}");
        let (_, msg) = parse_err("version: 1\nversion: 1\n");
        assert!(msg.contains("duplicate field `version`"), "{msg}");
    }

    #[test]
    fn paths_must_be_absolute() {
        let (loc, msg) = parse_err("version: 1\nfilesystem_policy:\n  read_only:\n    - usr\n");
        assert_eq!(loc, at(4, 7));
        assert!(msg.contains("must be absolute"), "{msg}");
        let (_, msg) = parse_err("version: 1\nkernel: { exec: { allow: [bin/*] } }\n");
        assert!(msg.contains("must be absolute"), "{msg}");
        let (_, msg) = parse_err("version: 1\nkernel: { exec: { allow: [] } }\n");
        assert!(msg.contains("nothing could run"), "{msg}");
    }

    #[test]
    fn network_policy_shape_is_checked() {
        let (_, msg) = parse_err("version: 1\nnetwork_policies:\n  a: { name: a }\n");
        assert!(msg.contains("no `endpoints`"), "{msg}");
        let (_, msg) =
            parse_err("version: 1\nnetwork_policies:\n  a: { endpoints: [{ host: a.com, port: 1 }], binaries: [] }\n");
        assert!(msg.contains("`binaries` is empty"), "{msg}");
        let (loc, msg) = parse_err("version: 1\nnetwork_policies:\n  a/b: { endpoints: [{ host: a.com, port: 1 }] }\n");
        assert_eq!(loc, at(3, 3));
        assert!(msg.contains("may only contain"), "{msg}");
    }

    #[test]
    fn empty_document_is_an_error_without_panic() {
        let err = parse("p.yaml", "").expect_err("empty");
        assert!(err.to_string().starts_with("p.yaml"), "{err}");
        let err = parse("p.yaml", "# only a comment\n").expect_err("comment only");
        assert!(err.to_string().starts_with("p.yaml"), "{err}");
    }
}
