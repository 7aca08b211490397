//! `leash doctor`: one row per layer, each found by trying it, with the reason when it fails.

use serde::Serialize;

use crate::kernel::probes;

/// The result of probing one layer.
#[derive(Debug, Serialize)]
pub struct Row {
    pub layer: &'static str,
    pub available: bool,
    pub detail: String,
}

/// Probes every layer, in dependency order.
pub fn check() -> Vec<Row> {
    let row = |layer, r: anyhow::Result<String>| match r {
        Ok(detail) => Row { layer, available: true, detail },
        Err(e) => Row { layer, available: false, detail: format!("{e:#}") },
    };
    vec![
        row("cgroup v2", probes::cgroup_v2()),
        row("bpffs", probes::bpffs()),
        row("BTF", probes::btf()),
        row("cgroup programs", probes::cgroup_programs()),
        row("BPF LSM", probes::bpf_lsm()),
        row("Landlock", crate::launcher::landlock_abi().map(|v| format!("ABI {v}")).map_err(anyhow::Error::msg)),
        row("socket diagnostics", socket_diagnostics()),
    ]
}

/// Whether the proxy can ask which socket is at a connection's client end (`kernel/sock_diag.rs`).
fn socket_diagnostics() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    crate::kernel::sock_diag::answers(listener.local_addr()?)?;
    Ok("NETLINK_SOCK_DIAG answers for TCP (the proxy admits by socket)".into())
}

/// The rows as an aligned table.
pub fn render(rows: &[Row]) -> String {
    let width = rows.iter().map(|r| r.layer.len()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let status = if r.available { "available" } else { "missing  " };
        out.push_str(&format!("{:width$}  {status}  {}\n", r.layer, r.detail));
    }
    out
}
