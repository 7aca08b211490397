//! Who the agent runs as when the host's NSS knows the account and its files do not: the debug
//! build (dynamically linked: the C library asks every source) and the release build as
//! installed (statically linked: it asks the host's `getent` for what the files lack, and never
//! lets its own C library load an NSS module, which would work only with the glibc it was built
//! with). Both must resolve the same account, and both must refuse one no source knows.
//!
//! The account is a systemd userdb drop-in (`/run/userdb/NAME.user`), which `libnss_systemd`
//! serves (nsswitch.conf `passwd: files systemd`, Debian's default) without a running systemd.
//! Each run is in a mount namespace of its own, with a tmpfs on `/run/userdb` (and, where a test
//! needs an account in the files, a copy of `/etc/passwd` bound over it): the host's own account
//! databases are never written.

use std::path::Path;
use std::process::{Command, Output};

use leash_tests::*;

/// A user and its group that only NSS's systemd source knows: their records, as the shell
/// commands that write them into `/run/userdb` (a private tmpfs).
struct NssOnlyAccount {
    name: String,
    id: u32,
}

impl NssOnlyAccount {
    fn new() -> Self {
        let name = format!("leash-nss-{}", std::process::id());
        let id = (0..1000)
            .map(|k| 60_000 + (std::process::id() + k) % 1000)
            .find(|id| !known("passwd", &id.to_string()) && !known("group", &id.to_string()))
            .expect("a free id in 60000..61000");
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        assert!(!passwd.contains(&name), "setup: the account must not be in the files");
        NssOnlyAccount { name, id }
    }

    /// Shell commands that publish the account in `/run/userdb` (a fresh tmpfs there).
    fn publish(&self) -> String {
        let (name, id) = (&self.name, self.id);
        format!(
            "mkdir -p /run/userdb && mount -t tmpfs tmpfs /run/userdb && cd /run/userdb && \
             echo '{{\"userName\":\"{name}\",\"uid\":{id},\"gid\":{id},\"homeDirectory\":\"/nonexistent\",\"disposition\":\"regular\"}}' > {name}.user && \
             echo '{{\"groupName\":\"{name}\",\"gid\":{id},\"disposition\":\"regular\"}}' > {name}.group && \
             ln -s {name}.user {id}.user && ln -s {name}.group {id}.group && cd / && \
             getent passwd {name} >/dev/null && getent group {name} >/dev/null && getent passwd {id} >/dev/null \
             || {{ echo 'setup: NSS here does not serve /run/userdb drop-ins (needs libnss-systemd and \
             passwd/group: files systemd in /etc/nsswitch.conf)' >&2; exit 99; }}"
        )
    }
}

/// Whether the host's `getent DB KEY` finds an entry.
fn known(db: &str, key: &str) -> bool {
    Command::new("getent").args([db, key]).output().is_ok_and(|o| o.status.success())
}

/// `bin run --policy POLICY -- sh -c 'id -u; id -g'` with `env`, in a mount namespace of its own
/// after the shell commands `setup`.
fn ids_under(bin: &Path, policy: &Path, env: &[(&str, String)], setup: &str) -> Output {
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(format!("{setup} && exec \"$0\" run --policy \"$1\" -- /bin/sh -c 'id -u; id -g'"))
        .arg(bin)
        .arg(policy);
    c.env_remove("SUDO_UID").env_remove("SUDO_GID").env_remove("SUDO_USER");
    c.envs(env.iter().map(|(k, v)| (k, v)));
    let out = c.output().expect("running unshare");
    assert_ne!(out.status.code(), Some(99), "{}", stderr(&out));
    out
}

#[test]
fn an_account_only_nss_knows_runs_the_agent_in_both_builds() {
    require_root();
    let account = NssOnlyAccount::new();
    let scratch = Scratch::new("accounts");
    let (name, id) = (&account.name, account.id);
    let by_name = scratch.file(
        "by-name.yaml",
        &format!("version: 1\nnetwork_policies: {{}}\nprocess: {{ run_as_user: {name}, run_as_group: {name} }}\n"),
    );
    let by_id = scratch
        .file("by-id.yaml", &format!("version: 1\nnetwork_policies: {{}}\nprocess: {{ run_as_user: \"{id}\" }}\n"));
    let sudo = scratch.file("sudo.yaml", "version: 1\nnetwork_policies: {}\n");
    let sudo_env = [("SUDO_UID", id.to_string()), ("SUDO_GID", id.to_string())];
    for bin in [leash_bin(), leash_static_bin()] {
        for (how, policy, env) in
            [("by name", &by_name, &[][..]), ("by id", &by_id, &[][..]), ("as SUDO_UID", &sudo, &sudo_env[..])]
        {
            let out = ids_under(&bin, policy, env, &account.publish());
            assert_eq!(
                stdout(&out),
                format!("{id}\n{id}\n"),
                "{} ({how}): the agent must run as the account NSS names: {}",
                bin.display(),
                stderr(&out)
            );
        }
    }
}

#[test]
fn an_account_no_source_knows_is_refused_in_both_builds() {
    require_root();
    let scratch = Scratch::new("accounts-none");
    let name = format!("leash-nobody-knows-{}", std::process::id());
    assert!(!known("passwd", &name), "setup: {name} must not exist");
    let policy =
        scratch.file("p.yaml", &format!("version: 1\nnetwork_policies: {{}}\nprocess: {{ run_as_user: {name} }}\n"));
    let plain = scratch.file("plain.yaml", "version: 1\nnetwork_policies: {}\n");
    // getent reads `-0` as uid 0: root's entry must not come back for it.
    let minus_zero = scratch.file("m0.yaml", "version: 1\nnetwork_policies: {}\nprocess: { run_as_user: \"-0\" }\n");
    let unknown_uid = [("SUDO_UID", "60999999".to_owned())];
    for bin in [leash_bin(), leash_static_bin()] {
        for (how, policy, env, says) in [
            ("by name", &policy, &[][..], format!("no user `{name}`")),
            ("-0", &minus_zero, &[][..], "no user `-0`".to_owned()),
            ("an unknown SUDO_UID", &plain, &unknown_uid[..], "SUDO_UID 60999999 names no user".to_owned()),
        ] {
            let out = ids_under(&bin, policy, env, "true");
            assert!(!out.status.success(), "{} ({how}): the agent ran: {}", bin.display(), stdout(&out));
            assert!(stdout(&out).is_empty(), "{} ({how}): the agent ran: {}", bin.display(), stdout(&out));
            assert!(
                stderr(&out).contains(&says),
                "{} ({how}): the refusal must say so: {}",
                bin.display(),
                stderr(&out)
            );
        }
    }
}

/// An account whose uid is 4294967295: set*id(2) read that as -1, "leave unchanged", so the
/// agent would have stayed root. It must not start, in either build.
#[test]
fn an_account_with_uid_minus_one_is_refused_not_left_root() {
    require_root();
    let scratch = Scratch::new("accounts-minus-one");
    let mut passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    passwd.push_str("leash-minus-one:x:4294967295:1000::/nonexistent:/bin/sh\n");
    let fake = scratch.file("passwd", &passwd);
    let policy =
        scratch.file("p.yaml", "version: 1\nnetwork_policies: {}\nprocess: { run_as_user: leash-minus-one }\n");
    let setup = format!("mount --bind {} /etc/passwd", fake.display());
    for bin in [leash_bin(), leash_static_bin()] {
        let out = ids_under(&bin, &policy, &[], &setup);
        assert!(stdout(&out).is_empty(), "{}: the agent ran, as {}", bin.display(), stdout(&out));
        assert!(!out.status.success(), "{}: leash must refuse: {}", bin.display(), stderr(&out));
        assert!(
            stderr(&out).contains("4294967295"),
            "{}: the refusal must name the id: {}",
            bin.display(),
            stderr(&out)
        );
    }
}
