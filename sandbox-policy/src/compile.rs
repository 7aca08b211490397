//! The compiled policy: what the launcher, the kernel loader and the proxy read.
//!
//! [`compile()`] turns a checked [`Document`] into a [`CompiledPolicy`]: defaults filled in,
//! `access:` presets expanded into request rules, and each endpoint's need for HTTP inspection
//! decided once. All checking happened while reading the document, so compiling cannot fail.

use std::path::{Path, PathBuf};

use super::document::{
    self, Access, Document, Endpoint, Enforcement, KernelDeny, LandlockCompat, PortList, Protocol, Tls, UnixSocketName,
};
use super::error::PolicyError;
use super::hosts::{HostPattern, IpNetwork};

/// Methods an `access: read-only` endpoint allows.
const READ_ONLY_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS"];
/// Methods an `access: read-write` endpoint allows.
const READ_WRITE_METHODS: &[&str] = &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"];

/// Reads, parses, checks and compiles the policy file at `path`.
pub fn load(path: &Path) -> Result<CompiledPolicy, PolicyError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| PolicyError::Read { file: file.clone(), error })?;
    parse_str(&file, &text)
}

/// Parses, checks and compiles policy text; `file_label` names it in errors.
pub fn parse_str(file_label: &str, text: &str) -> Result<CompiledPolicy, PolicyError> {
    document::parse(file_label, text).map(compile)
}

/// A policy ready for enforcement.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    network: Vec<NetworkPolicy>,
    filesystem: Option<FilesystemRules>,
    run_as: RunAs,
    credentials: Vec<Credential>,
    kernel: Option<KernelRules>,
    transparent: Option<bool>,
}

/// One compiled `network_policies:` entry.
#[derive(Debug, Clone)]
pub struct NetworkPolicy {
    /// Its key in `network_policies`.
    pub name: String,
    /// Where it lets the agent connect (at least one).
    pub endpoints: Vec<CompiledEndpoint>,
    /// Executables allowed to use it; `None` means any, never `Some(empty)`.
    pub binaries: Option<Vec<PathBuf>>,
}

/// One compiled endpoint.
#[derive(Debug, Clone)]
pub struct CompiledEndpoint {
    /// Hosts it covers.
    pub host: HostPattern,
    /// Ports it covers (at least one).
    pub ports: PortList,
    /// `Rest` or `Tcp`; an endpoint without `protocol:` is `Tcp`.
    pub protocol: Protocol,
    /// Tunnel TLS without interception (`tls: skip`). Never set together with [`Inspection::Http`].
    pub tls_skip: bool,
    /// Addresses the host may resolve to even if private.
    pub allowed_ips: Vec<IpNetwork>,
    /// The `access:` preset as written, if any (already expanded into [`Inspection`]; kept so
    /// decisions can name the preset that made them).
    pub access: Option<Access>,
    /// Whether and how requests are inspected.
    pub inspection: Inspection,
}

/// Whether the proxy must look at the HTTP requests of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inspection {
    /// No: the connection is tunnelled (`protocol: tcp`, or `access: full` with nothing else).
    Tunnel,
    /// Yes: each request is checked against these rules.
    Http(HttpRules),
}

/// Request rules of an inspected endpoint. A request passes if it is allowed and not denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRules {
    /// Requests allowed.
    pub allow: AllowedRequests,
    /// Requests refused even when allowed.
    pub deny: Vec<RequestRule>,
    /// Block refused requests, or only record them.
    pub enforcement: Enforcement,
    /// Also rewrite credential placeholders in request bodies.
    pub rewrite_body_credentials: bool,
    /// Also rewrite credential placeholders in the request target (path and query).
    pub rewrite_target_credentials: bool,
}

/// The allow side of [`HttpRules`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedRequests {
    /// Every request (`access: full`).
    Any,
    /// Only requests matching one of these rules.
    Only(Vec<RequestRule>),
}

/// A compiled request pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRule {
    /// Upper-case method, or `None` for any.
    pub method: Option<String>,
    /// Path glob (`/repos/**`); `**` or `/**` for any path.
    pub path: String,
}

/// Landlock rules for the launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesystemRules {
    /// Readable paths (absolute; the launcher skips those that do not exist).
    pub read_only: Vec<PathBuf>,
    /// Readable and writable paths (absolute).
    pub read_write: Vec<PathBuf>,
    /// Also make the working directory read-write.
    pub include_workdir: bool,
    /// What to do if the kernel cannot enforce all of it.
    pub compatibility: LandlockCompat,
    /// `protect_in_workdir`, when the policy sets it.
    pub protect_in_workdir: Option<Vec<PathBuf>>,
}

/// Names in the working directory the agent may not change unless the policy says otherwise
/// (`filesystem_policy.protect_in_workdir`): each runs code for whoever next uses the directory
/// outside the sandbox (git runs `core.fsmonitor`, hooks and `core.pager` from its config;
/// direnv runs `.envrc`; editors run task files; shells read rc files when the working directory
/// is a home directory).
pub const PROTECT_IN_WORKDIR: &[&str] = &[
    ".git/config",
    ".git/hooks",
    ".gitmodules",
    ".envrc",
    ".vscode/tasks.json",
    ".vscode/settings.json",
    ".idea/workspace.xml",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".profile",
    ".zshrc",
    ".zprofile",
    ".zshenv",
];

/// The identity the policy asks the agent to run under; `None` lets the launcher choose
/// (the sudo caller, else `nobody`). Never root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunAs {
    /// User name or numeric uid.
    pub user: Option<String>,
    /// Group name or numeric gid.
    pub group: Option<String>,
}

/// A credential the agent only sees as a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Environment variable name (`GITHUB_TOKEN`).
    pub name: String,
    /// Hosts the real value may be sent to.
    pub hosts: Vec<HostPattern>,
    /// The agent must not start without it (`required: true`).
    pub required: bool,
}

impl CompiledEndpoint {
    /// Whether the proxy copies its bytes without reading them (`protocol: tcp`, `tls: skip`).
    pub fn is_passed_through(&self) -> bool {
        self.protocol == Protocol::Tcp || self.tls_skip
    }

    /// Whether a request's path can change its verdict. When it cannot (`protocol: tcp`, or
    /// `access: full` with no deny rules and no audit), a path with no canonical form — GitLab's
    /// `projects/group%2Fproject` — is not refused: there is nothing to compare it with.
    pub fn judges_paths(&self) -> bool {
        match &self.inspection {
            Inspection::Tunnel => false,
            Inspection::Http(rules) => {
                !(rules.allow == AllowedRequests::Any
                    && rules.deny.is_empty()
                    && rules.enforcement != Enforcement::Audit)
            }
        }
    }
}

impl Credential {
    /// Whether the real value may be sent to `host`.
    pub fn is_bound_to(&self, host: &str) -> bool {
        self.hosts.iter().any(|pattern| pattern.matches(host))
    }
}

/// The `kernel:` section, parsed; enforced by BPF-LSM. The default is an empty section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelRules {
    /// Absolute path globs of executables allowed to run; `None` means any.
    pub exec_allow: Option<Vec<String>>,
    /// Files that may never be opened.
    pub deny_open: Vec<PathBuf>,
    /// Operations refused, without duplicates, in a fixed order.
    pub deny: Vec<KernelDeny>,
    /// Unix sockets the agent may reach; empty means none.
    pub unix_allow: Vec<UnixSocketName>,
}

impl CompiledPolicy {
    /// `network.transparent`: redirect every TCP connection and DNS query to the proxy. On
    /// unless the policy turns it off.
    pub fn transparent(&self) -> bool {
        self.transparent.unwrap_or(true)
    }

    /// The network policy of the first endpoint (in file order) whose host pattern covers the
    /// name `host` on any port: what leash's resolver answers in transparent mode. `binaries:`
    /// are not considered (a query does not say which executable will connect; the connection
    /// is judged when it comes).
    pub fn names(&self, host: &str) -> Option<&str> {
        self.network.iter().find(|p| p.endpoints.iter().any(|e| e.host.matches(host))).map(|p| p.name.as_str())
    }

    /// Every endpoint covering `host:port`, with its policy, in file order.
    pub fn matching_endpoints<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> impl Iterator<Item = (&'a NetworkPolicy, &'a CompiledEndpoint)> + 'a {
        self.network.iter().flat_map(move |policy| {
            policy
                .endpoints
                .iter()
                .filter(move |e| e.ports.contains(port) && e.host.matches(host))
                .map(move |e| (policy, e))
        })
    }

    /// The network policies, in file order.
    pub fn network_policies(&self) -> &[NetworkPolicy] {
        &self.network
    }

    /// Landlock rules; `None` when the document has no `filesystem_policy`.
    pub fn filesystem(&self) -> Option<&FilesystemRules> {
        self.filesystem.as_ref()
    }

    /// The identity the agent should run under.
    pub fn run_as(&self) -> &RunAs {
        &self.run_as
    }

    /// Credentials, in file order.
    pub fn credentials(&self) -> &[Credential] {
        &self.credentials
    }

    /// The `kernel:` section, if any.
    pub fn kernel(&self) -> Option<&KernelRules> {
        self.kernel.as_ref()
    }

    /// The names in the working directory the agent may not change: the policy's
    /// `protect_in_workdir`, else [`PROTECT_IN_WORKDIR`].
    pub fn protect_in_workdir(&self) -> Vec<PathBuf> {
        match self.filesystem.as_ref().and_then(|f| f.protect_in_workdir.as_ref()) {
            Some(list) => list.clone(),
            None => PROTECT_IN_WORKDIR.iter().map(PathBuf::from).collect(),
        }
    }

    /// `policy/host:port` for each endpoint port whose requests must be inspected (see
    /// [`Inspection::Http`]); a CONNECT-only proxy cannot enforce a policy where this is non-empty.
    pub fn l7_endpoints(&self) -> Vec<String> {
        let mut out = Vec::new();
        for policy in &self.network {
            for endpoint in policy.endpoints.iter().filter(|e| matches!(e.inspection, Inspection::Http(_))) {
                for port in endpoint.ports.as_slice() {
                    out.push(format!("{}/{}:{}", policy.name, endpoint.host, port));
                }
            }
        }
        out
    }

    /// Names of the network policies restricted to some executables by `binaries:`.
    pub fn binaries_restricted(&self) -> Vec<String> {
        self.network.iter().filter(|p| p.binaries.is_some()).map(|p| p.name.clone()).collect()
    }
}

/// Compiles a checked document.
pub fn compile(document: Document) -> CompiledPolicy {
    let compatibility = document.landlock.and_then(|l| l.compatibility).unwrap_or_default();
    CompiledPolicy {
        network: document
            .network_policies
            .into_iter()
            .map(|(name, p)| compile_network_policy(name.as_str(), p))
            .collect(),
        filesystem: document.filesystem_policy.map(|fs| compile_filesystem(fs, compatibility)),
        run_as: compile_run_as(document.process),
        credentials: document
            .credentials
            .into_iter()
            .map(|(name, spec)| compile_credential(name.as_str(), spec))
            .collect(),
        kernel: document.kernel.map(compile_kernel),
        transparent: document.network.and_then(|n| n.transparent),
    }
}

/// Compiles one network policy.
fn compile_network_policy(name: &str, policy: document::NetworkPolicy) -> NetworkPolicy {
    NetworkPolicy {
        name: name.to_owned(),
        endpoints: policy.endpoints.into_iter().map(compile_endpoint).collect(),
        binaries: policy.binaries.map(|list| list.into_iter().map(|b| b.path.into_path_buf()).collect()),
    }
}

/// Compiles one endpoint.
fn compile_endpoint(endpoint: Endpoint) -> CompiledEndpoint {
    let inspection = inspection(&endpoint);
    CompiledEndpoint {
        host: endpoint.host,
        ports: endpoint.ports,
        protocol: endpoint.protocol.unwrap_or(Protocol::Tcp),
        tls_skip: endpoint.tls == Some(Tls::Skip),
        allowed_ips: endpoint.allowed_ips,
        access: endpoint.access,
        inspection,
    }
}

/// Decides whether an endpoint's requests must be inspected, and against which rules.
///
/// Inspection is needed for `protocol: rest` with `access: read-only`/`read-write`, explicit
/// `rules`, any `deny_rules`, `enforcement: audit`, `request_body_credential_rewrite` or
/// `request_target_credential_rewrite`;
/// `access: full` alone and everything that is not `rest` are tunnelled.
fn inspection(endpoint: &Endpoint) -> Inspection {
    if endpoint.protocol != Some(Protocol::Rest) {
        return Inspection::Tunnel;
    }
    let allow = allowed_requests(endpoint);
    let enforcement = endpoint.enforcement.unwrap_or_default();
    let needs_inspection = allow != AllowedRequests::Any
        || !endpoint.deny_rules.is_empty()
        || enforcement == Enforcement::Audit
        || endpoint.request_body_credential_rewrite
        || endpoint.request_target_credential_rewrite;
    if !needs_inspection {
        return Inspection::Tunnel;
    }
    Inspection::Http(HttpRules {
        allow,
        deny: endpoint.deny_rules.iter().map(request_rule).collect(),
        enforcement,
        rewrite_body_credentials: endpoint.request_body_credential_rewrite,
        rewrite_target_credentials: endpoint.request_target_credential_rewrite,
    })
}

/// The allow side of a `rest` endpoint: its `access` preset, else its `rules`. (A `rest` endpoint
/// with neither cannot be read; it would allow nothing.)
fn allowed_requests(endpoint: &Endpoint) -> AllowedRequests {
    match endpoint.access {
        Some(Access::Full) => AllowedRequests::Any,
        Some(Access::ReadOnly) => AllowedRequests::Only(method_rules(READ_ONLY_METHODS)),
        Some(Access::ReadWrite) => AllowedRequests::Only(method_rules(READ_WRITE_METHODS)),
        None => AllowedRequests::Only(endpoint.rules.iter().map(|r| request_rule(&r.allow)).collect()),
    }
}

/// One any-path rule per method.
fn method_rules(methods: &[&str]) -> Vec<RequestRule> {
    methods.iter().map(|m| RequestRule { method: Some((*m).to_owned()), path: "/**".to_owned() }).collect()
}

/// Compiles a request pattern; missing keys match anything.
fn request_rule(m: &document::RequestMatch) -> RequestRule {
    RequestRule {
        method: m.method.as_ref().and_then(|m| m.name()).map(str::to_owned),
        path: m.path.as_ref().map_or("/**", |p| p.as_str()).to_owned(),
    }
}

/// Compiles `filesystem_policy` with the `landlock` compatibility.
fn compile_filesystem(fs: document::FilesystemPolicy, compatibility: LandlockCompat) -> FilesystemRules {
    FilesystemRules {
        read_only: fs.read_only.into_iter().map(|p| p.into_path_buf()).collect(),
        read_write: fs.read_write.into_iter().map(|p| p.into_path_buf()).collect(),
        include_workdir: fs.include_workdir,
        compatibility,
        protect_in_workdir: fs.protect_in_workdir.map(|list| list.into_iter().map(|p| p.into_path_buf()).collect()),
    }
}

/// Compiles `process`.
fn compile_run_as(process: Option<document::Process>) -> RunAs {
    let Some(process) = process else {
        return RunAs::default();
    };
    RunAs { user: process.run_as_user.map(|u| u.into_string()), group: process.run_as_group.map(|g| g.into_string()) }
}

/// Compiles one `credentials` entry.
fn compile_credential(name: &str, spec: document::CredentialSpec) -> Credential {
    Credential { name: name.to_owned(), hosts: spec.hosts, required: spec.required }
}

/// Compiles `kernel`.
fn compile_kernel(kernel: document::Kernel) -> KernelRules {
    let mut deny = kernel.deny;
    deny.sort();
    deny.dedup();
    KernelRules {
        exec_allow: kernel.exec.map(|e| e.allow.iter().map(|g| g.as_str().to_owned()).collect()),
        deny_open: kernel.deny_open.into_iter().map(|p| p.into_path_buf()).collect(),
        deny,
        unix_allow: kernel.unix.map(|u| u.allow).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default policy, embedded so the test does not depend on the working directory.
    const DEFAULT_POLICY: &str = include_str!("../../policies/default.yaml");

    /// The policy and endpoint pattern that let a connection to `host:port` through, as the
    /// proxy decides (`Decider`), for a client whose executable is not known.
    fn allowed_by(policy: &CompiledPolicy, host: &str, port: u16) -> Option<(String, String)> {
        let verdict = crate::decide::Decider::new(policy).network(host, port, None);
        let named = |s: Option<&str>| s.unwrap_or_default().to_owned();
        verdict.allow.then(|| (named(verdict.policy.as_deref()), named(verdict.endpoint.as_deref())))
    }

    fn compiled(text: &str) -> CompiledPolicy {
        parse_str("test.yaml", text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn policies_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
    }

    #[test]
    fn default_policy_loads() {
        let policy = compiled(DEFAULT_POLICY);
        assert!(policy.l7_endpoints().is_empty(), "default must not need L7: {:?}", policy.l7_endpoints());
        assert!(policy.kernel().is_none());
        assert!(policy.binaries_restricted().is_empty());
        let fs = policy.filesystem().expect("default has a filesystem policy");
        assert!(fs.include_workdir);
        assert_eq!(fs.compatibility, LandlockCompat::BestEffort);
        assert!(fs.read_write.contains(&PathBuf::from("/tmp")));
        for host in ["api.anthropic.com", "api.github.com", "registry.npmjs.org", "files.pythonhosted.org"] {
            assert!(allowed_by(&policy, host, 443).is_some(), "{host}");
        }
        assert_eq!(allowed_by(&policy, "api.anthropic.com", 80), None);
        assert_eq!(allowed_by(&policy, "example.com", 443), None);
        let names: Vec<&str> = policy.credentials().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ANTHROPIC_API_KEY", "GITHUB_TOKEN"]);
    }

    #[test]
    fn default_policy_file_loads_from_disk() {
        let path = policies_dir().join("default.yaml");
        load(&path).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn every_example_loads() {
        let dir = policies_dir().join("examples");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|ext| ext == "yaml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
        }
        assert!(count >= 2, "expected at least two examples in {}", dir.display());
    }

    #[test]
    fn missing_file_is_a_read_error() {
        let err = load(Path::new("/nonexistent/leash-policy.yaml")).expect_err("missing");
        assert!(matches!(err, PolicyError::Read { .. }));
        assert!(err.to_string().starts_with("/nonexistent/leash-policy.yaml: cannot read policy file"), "{err}");
    }

    #[test]
    fn errors_carry_the_file_label() {
        let err = parse_str("my.yaml", "version: 1\nbogus: 1\n").expect_err("unknown key");
        assert_eq!(err.to_string().split(": ").next(), Some("my.yaml:2:1"));
    }

    const PORTS: &str = "\
version: 1
network_policies:
  web:
    endpoints:
      - { host: example.com, ports: [80, 443] }
      - { host: '*.example.com', port: 8443 }
  db:
    endpoints:
      - { host: db.internal, port: 5432, protocol: tcp }
";

    #[test]
    fn connections_are_judged_by_port_too() {
        let policy = compiled(PORTS);
        let allow = |policy: &str, host: &str| Some((policy.to_owned(), host.to_owned()));
        assert_eq!(allowed_by(&policy, "example.com", 80), allow("web", "example.com"));
        assert_eq!(allowed_by(&policy, "example.com", 443), allow("web", "example.com"));
        assert_eq!(allowed_by(&policy, "example.com", 8443), None);
        assert_eq!(allowed_by(&policy, "a.example.com", 8443), allow("web", "*.example.com"));
        assert_eq!(allowed_by(&policy, "a.example.com", 443), None);
        assert_eq!(allowed_by(&policy, "DB.internal", 5432), allow("db", "db.internal"));
        assert_eq!(allowed_by(&policy, "db.internal.", 5432), None);
        assert_eq!(allowed_by(&policy, "db.internal", 5433), None);
    }

    #[test]
    fn first_match_in_file_order_wins() {
        let text = "\
version: 1
network_policies:
  zeta:
    endpoints: [{ host: '**.example.com', port: 443 }]
  alpha:
    endpoints: [{ host: a.example.com, port: 443 }]
";
        let policy = compiled(text);
        let decision = allowed_by(&policy, "a.example.com", 443);
        assert_eq!(decision, Some(("zeta".to_owned(), "**.example.com".to_owned())));
        assert_eq!(policy.matching_endpoints("a.example.com", 443).count(), 2);
    }

    const L7: &str = "\
version: 1
network_policies:
  gh:
    endpoints:
      - { host: api.github.com, port: 443, protocol: rest, access: read-only }
      - { host: github.com, ports: [443, 8443], protocol: rest, rules: [{ allow: { method: GET, path: '/**' } }] }
      - { host: full.example.com, port: 443, protocol: rest, access: full }
      - { host: deny.example.com, port: 443, protocol: rest, access: full, deny_rules: [{ method: DELETE }] }
      - { host: audit.example.com, port: 443, protocol: rest, access: full, enforcement: audit }
      - { host: enforce.example.com, port: 443, protocol: rest, access: full, enforcement: enforce }
      - { host: tcp.example.com, port: 22, protocol: tcp }
      - { host: plain.example.com, port: 443 }
    binaries: [{ path: /usr/bin/git }]
  other:
    endpoints: [{ host: x.com, port: 443 }]
";

    #[test]
    fn l7_endpoints_lists_what_needs_inspection() {
        let policy = compiled(L7);
        assert_eq!(
            policy.l7_endpoints(),
            [
                "gh/api.github.com:443",
                "gh/github.com:443",
                "gh/github.com:8443",
                "gh/deny.example.com:443",
                "gh/audit.example.com:443",
            ]
        );
        assert_eq!(policy.binaries_restricted(), ["gh"]);
    }

    #[test]
    fn access_presets_expand_to_method_rules() {
        let policy = compiled(L7);
        let (_, endpoint) = policy.matching_endpoints("api.github.com", 443).next().expect("endpoint");
        let Inspection::Http(rules) = &endpoint.inspection else { panic!("read-only must be inspected") };
        let AllowedRequests::Only(allowed) = &rules.allow else { panic!("read-only is a rule list") };
        let methods: Vec<_> = allowed.iter().filter_map(|r| r.method.as_deref()).collect();
        assert_eq!(methods, READ_ONLY_METHODS);
        let (_, deny) = policy.matching_endpoints("deny.example.com", 443).next().expect("endpoint");
        let Inspection::Http(rules) = &deny.inspection else { panic!("deny_rules must be inspected") };
        assert_eq!(rules.allow, AllowedRequests::Any);
        assert_eq!(rules.deny, [RequestRule { method: Some("DELETE".into()), path: "/**".into() }]);
    }

    #[test]
    fn sections_compile() {
        let text = "\
version: 1
filesystem_policy: { read_only: [/usr], read_write: [/tmp] }
landlock: { compatibility: hard_requirement }
process: { run_as_user: sandbox, run_as_group: '1000' }
credentials:
  GITHUB_TOKEN: { hosts: [api.github.com, '*.github.com'] }
  NOWHERE: {}
kernel:
  exec: { allow: ['/usr/bin/**'] }
  deny_open: [/etc/shadow]
  deny: [userns, ptrace, userns]
";
        let policy = compiled(text);
        let fs = policy.filesystem().expect("filesystem");
        assert_eq!(fs.compatibility, LandlockCompat::HardRequirement);
        assert!(!fs.include_workdir);
        assert_eq!(policy.run_as(), &RunAs { user: Some("sandbox".into()), group: Some("1000".into()) });
        let token = &policy.credentials()[0];
        assert!(token.is_bound_to("api.github.com") && token.is_bound_to("uploads.github.com"));
        assert!(!token.is_bound_to("github.com"));
        assert!(policy.credentials()[1].hosts.is_empty());
        let kernel = policy.kernel().expect("kernel");
        assert_eq!(kernel.exec_allow.as_deref(), Some(&["/usr/bin/**".to_owned()][..]));
        assert_eq!(kernel.deny, [KernelDeny::Ptrace, KernelDeny::Userns]);
        assert!(policy.network_policies().is_empty());
    }

    #[test]
    fn minimal_policy_has_no_sections() {
        let policy = compiled("version: 1\n");
        assert!(policy.filesystem().is_none());
        assert!(policy.kernel().is_none());
        assert_eq!(policy.run_as(), &RunAs::default());
        assert_eq!(allowed_by(&policy, "api.github.com", 443), None);
    }
}
