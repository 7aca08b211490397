//! The command line: argument parsing and the mapping from outcomes to exit codes.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use leash::audit::LogLimit;

/// Confine an AI coding agent: its network reaches only leash's proxy (enforced by eBPF in its
/// cgroup), its files only what the policy allows (Landlock), and it never runs as root.
#[derive(Debug, Parser)]
#[command(name = "leash", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD confined to a fresh sandbox and its own proxy (needs root; the agent does not
    /// run as root). Exits with CMD's status, 125 if leash failed before starting it, 126 if CMD
    /// is not executable, 127 if it is not found.
    Run(RunArgs),
    /// Probe each enforcement layer on this host by trying it; exit 0 only if all work.
    Doctor {
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check or evaluate policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the egress proxy alone (no sandbox), for clients configured to use it. Reloads the
    /// policy on SIGHUP and when the file changes.
    Proxy(ProxyArgs),
    /// Node mode (a Kubernetes DaemonSet): load the programs once for this node and confine the
    /// processes of pods that ask on the Confine API socket. Needs root and CAP_BPF,
    /// CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN. Sandboxes stay confined while it is down; a
    /// restarted daemon adopts them.
    Daemon(DaemonArgs),
    /// From inside an unprivileged pod: start leash's proxy here, ask the node daemon to confine
    /// CMD to it, and run CMD. Exits with CMD's status, 125 if leash failed before starting it
    /// (daemon unreachable, pod not allowed, policy refused), 126/127 as `leash run`.
    Confine(ConfineArgs),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The Confine API socket (mounted into pods from the host, e.g. /run/leash/leash.sock).
    #[arg(long)]
    pub socket: PathBuf,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Directory of policies, one `<NAME>.yaml` each (a mounted ConfigMap); reloaded on change.
    #[arg(long, default_value = "/etc/leash/policies")]
    pub policies: PathBuf,
    /// Where the daemon records its sandboxes, for the next daemon to adopt.
    #[arg(long, default_value = "/run/leash/state")]
    pub state_dir: PathBuf,
    /// The bpffs mount (default: found in /proc/self/mountinfo, mounted if absent).
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
    /// The cgroup2 mount (default: found in /proc/self/mountinfo).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// This node's name, to list its pods (default: $NODE_NAME).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Let every pod on this node use this policy when it has no `leash.dev/policy` annotation.
    /// Without it, only annotated pods may use leash.
    #[arg(long)]
    pub default_policy: Option<String>,
    /// How long a request from a pod the daemon has not seen yet on the API server waits for the
    /// watch to report it, in ms; then it is refused (never given --default-policy, which is only
    /// for pods known to have no annotation).
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    pub pod_wait_ms: u64,
    /// API server as host:port (default: the in-cluster service from $KUBERNETES_SERVICE_HOST).
    #[arg(long, requires_all = ["kube_token_file", "kube_ca_file"])]
    pub kube_api: Option<String>,
    /// Bearer token file for --kube-api.
    #[arg(long)]
    pub kube_token_file: Option<PathBuf>,
    /// CA certificate (PEM) of --kube-api.
    #[arg(long)]
    pub kube_ca_file: Option<PathBuf>,
    /// Most sandboxes this node runs at once.
    #[arg(long, default_value_t = 2048)]
    pub max_sandboxes: usize,
    /// Most sandboxes one pod holds at once (default: half of --max-sandboxes), so that one pod
    /// cannot take the node's whole budget.
    #[arg(long)]
    pub max_sandboxes_per_pod: Option<usize>,
    /// How often emptied sandboxes are collected and the policies directory is checked, in ms.
    #[arg(long, default_value_t = 500)]
    pub gc_interval_ms: u64,
    /// Name of the program generation to load or adopt (default: derived from this build).
    #[arg(long, hide = true)]
    pub generation: Option<String>,
}

#[derive(Debug, Args)]
pub struct ConfineArgs {
    /// The node daemon's Confine API socket.
    #[arg(long, default_value = "/run/leash/leash.sock")]
    pub socket: PathBuf,
    /// The policy to ask for; it must be the one the pod may use (default: that one).
    #[arg(long)]
    pub policy: Option<String>,
    #[command(flatten)]
    pub proxy: AgentProxyArgs,
    /// Start the agent even without a Landlock domain (its process isolation), reporting it.
    #[arg(long)]
    pub allow_degraded: bool,
    /// The command to confine, after `--`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// The agent's own proxy, under `leash run` and `leash confine`.
#[derive(Debug, Args)]
pub struct AgentProxyArgs {
    /// Address the agent's proxy listens on (loopback; inside the pod under `leash confine`);
    /// port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub proxy_listen: SocketAddr,
    /// Append OCSF audit events (JSON lines) to this file; denials also go to stderr.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Write at most this much to the audit log (K, M, G: 1024-based), then one line saying the
    /// limit was reached; later events are only counted in the summary. The agent decides how
    /// many events there are, so the log must not be able to fill the disk.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub audit_log_max: LogLimit,
    /// Read credential values from this file of NAME=value lines instead of leash's environment.
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// Also trust the CA certificates in this PEM file for upstream connections (repeatable).
    #[arg(long)]
    pub upstream_ca: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Policy file whose network_policies the proxy enforces.
    #[arg(long)]
    pub policy: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3128")]
    pub listen: SocketAddr,
    /// Write leash's (ephemeral) CA certificate here, for the proxy's clients to trust.
    #[arg(long)]
    pub ca_out: Option<PathBuf>,
    /// Also trust the CA certificates in this PEM file for upstream connections (repeatable).
    #[arg(long)]
    pub upstream_ca: Vec<PathBuf>,
    /// Read credential values from this file of NAME=value lines instead of the environment.
    #[arg(long)]
    pub credentials_file: Option<PathBuf>,
    /// Append OCSF audit events (JSON lines) to this file.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Write at most this much to the audit log (K, M, G: 1024-based), then one line saying the
    /// limit was reached.
    #[arg(long, value_name = "SIZE", default_value = "256M")]
    pub audit_log_max: LogLimit,
    /// Worker threads serving connections; raise it for many concurrent clients on a large host.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file (YAML). Default: the built-in policy (policies/default.yaml).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub proxy: AgentProxyArgs,
    /// Start the agent even when a layer the policy needs is missing, reporting each one.
    #[arg(long)]
    pub allow_degraded: bool,
    /// No summary of what was denied when the agent ends.
    #[arg(long, short)]
    pub quiet: bool,
    /// Learning mode: the proxy allows and records every connection and request the policy
    /// would deny (the kernel still confines the agent to the proxy), and at exit a policy that
    /// allows what the agent did is written to this file. Kernel and filesystem rules are not
    /// learned.
    #[arg(long, value_name = "OUT.yaml")]
    pub learn: Option<PathBuf>,
    /// With --learn: also learn hosts that resolve to loopback or private addresses, each with
    /// an `allowed_ips` entry naming exactly those addresses (otherwise they are refused and
    /// listed as not learned).
    #[arg(long, requires = "learn")]
    pub learn_allow_private: bool,
    /// When the agent's user has no home directory of its own (root running leash without
    /// sudo: the agent is `nobody`), use DIR as its home and keep it after exit, instead of a
    /// private one removed at exit. Created if missing (owned by the agent, mode 0700); an
    /// existing DIR must be a directory the agent owns. Not under /tmp, /var/tmp, /dev/shm or
    /// /run, which the agent gets empty.
    #[arg(long, value_name = "DIR")]
    pub keep_home: Option<PathBuf>,
    /// The command to confine, after `--`.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate FILE: exit 0 when valid, 1 with `FILE:LINE:COL: message` when not.
    Check { file: PathBuf },
    /// Suggest allows for what an audit log (`--audit-log`) shows denied: no endpoint for the
    /// host and port, an executable `binaries:` does not list, a request no rule allows. Prints
    /// a policy, or with --merge adds the suggestions to FILE without changing its own lines.
    Suggest {
        /// The audit log (OCSF JSON lines).
        #[arg(long, value_name = "AUDIT.jsonl")]
        from: PathBuf,
        /// A policy file to add the suggestions to (its lines, comments and order are kept).
        #[arg(long, value_name = "FILE")]
        merge: Option<PathBuf>,
        /// Write the result here instead of stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Print FILE as leash enforces it: the file, then what leash adds on its own (protected
    /// names in the working directory, private directories, kernel rules), marked as comments.
    Show { file: PathBuf },
    /// Print, as JSON, the decision the proxy makes with FILE for a connection to HOST:PORT (and,
    /// with --method and --path, for a request on it), with the rule that made it: the same
    /// decider the proxy runs, which is tested against policies/sandbox.rego.
    /// A request is judged under every reading the proxy judges (method overrides, `;params`, a
    /// trailing slash); the first that is denied, or else the request as sent, is printed, and
    /// `reading` names it.
    Eval {
        file: PathBuf,
        #[arg(long)]
        host: String,
        #[arg(long)]
        port: u16,
        /// Request method (GET, POST, ...).
        #[arg(long)]
        method: Option<String>,
        /// Request target: path and query.
        #[arg(long)]
        path: Option<String>,
        /// The executable making the connection (for `binaries:` rules).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// A request header, `NAME: VALUE` (repeatable): method-override headers are judged as
        /// the proxy judges them.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
    },
}
