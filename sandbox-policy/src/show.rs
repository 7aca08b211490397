//! `leash policy show`: the policy as written, followed by what leash enforces on its own
//! beyond it, as YAML comments marked as such (so the output is still the same valid policy).

use std::fmt::Write as _;

use super::CompiledPolicy;

/// The text of the policy file followed by leash's own additions.
pub fn render(text: &str, policy: &CompiledPolicy) -> String {
    let mut out = text.to_owned();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("\n# ---- added by leash (not in the file above; always in force) ----\n");
    let protect: Vec<String> = policy.protect_in_workdir().iter().map(|p| p.display().to_string()).collect();
    let source = match policy.filesystem().and_then(|f| f.protect_in_workdir.as_ref()) {
        Some(_) => "the policy's list",
        None => "leash's default list",
    };
    let _ = writeln!(out, "# filesystem_policy:");
    let _ = writeln!(
        out,
        "#   protect_in_workdir: [{}]   # {source}: read-only in the working directory, held empty where missing",
        protect.join(", ")
    );
    out.push_str(
        "# private to the sandbox: /tmp, /var/tmp, /dev/shm (empty at start, gone at exit); /run holds only leash's CA bundle\n\
         # sockets: AF_UNIX, AF_INET, AF_INET6 and NETLINK_ROUTE only; no io_uring\n\
         # network: TCP to leash's proxy only, which serves this sandbox alone\n\
         # identity: never root, no supplementary groups, no_new_privs, a session and terminal of its own\n",
    );
    if policy.transparent() {
        out.push_str(
            "# network.transparent: TCP to any address is redirected to the proxy and judged by the name it was for;\n\
             #   DNS (UDP port 53, any address) goes to leash's resolver: allowed names only, nothing forwarded\n",
        );
    }
    match policy.kernel() {
        Some(kernel) => {
            let _ = writeln!(out, "# kernel:");
            let _ = writeln!(
                out,
                "#   deny: [ptrace, kill_outside, bpf]   # added to the policy's {} rule(s)",
                kernel.deny.len()
            );
        }
        None => {
            let _ = writeln!(out, "# kernel:   # leash run's baseline where BPF-LSM works (not required elsewhere)");
            let _ = writeln!(out, "#   deny: [ptrace, kill_outside, bpf]");
        }
    }
    let _ = writeln!(out, "#   deny_open: [--credentials-file]      # leash's own secrets, added to the policy's list");
    let _ = writeln!(out, "#   IP connects and sends only to the proxy (io_uring included)");
    let _ = writeln!(
        out,
        "#   unix: the sandbox's own sockets{}",
        if policy.kernel().is_some_and(|k| !k.unix_allow.is_empty()) { " and the policy's list" } else { " only" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_default_protected_names_and_the_policys_own_list() {
        let text = "version: 1\n";
        let shown = render(text, &crate::parse_str("p.yaml", text).unwrap());
        assert!(shown.starts_with(text));
        assert!(shown.contains(".git/config") && shown.contains("leash's default list"), "{shown}");
        assert!(crate::parse_str("shown.yaml", &shown).is_ok(), "the output is still a valid policy");
        let text = "version: 1\nfilesystem_policy: { protect_in_workdir: [.envrc] }\nkernel: { deny: [mount] }\n";
        let shown = render(text, &crate::parse_str("p.yaml", text).unwrap());
        assert!(shown.contains("protect_in_workdir: [.envrc]   # the policy's list"), "{shown}");
        assert!(shown.contains("deny: [ptrace, kill_outside, bpf]"), "{shown}");
    }

    #[test]
    fn workdir_paths_stay_inside_it() {
        for bad in ["/etc/passwd", "../x", ".git/../../x", ""] {
            let text = format!("version: 1\nfilesystem_policy: {{ protect_in_workdir: [\"{bad}\"] }}\n");
            assert!(crate::parse_str("p.yaml", &text).is_err(), "{bad}");
        }
    }
}
