//! Who the agent runs as when the host's NSS knows the account and its files do not: the debug
//! build (dynamically linked: the C library asks every source) and the release build as
//! installed (statically linked: it asks the host's `getent` for what the files lack, and never
//! lets its own C library load an NSS module, which would work only with the glibc it was built
//! with). Both must resolve the same account, and both must refuse one no source knows.
//!
//! The account is a systemd userdb drop-in (`/run/userdb/NAME.user`), which `libnss_systemd`
//! serves (nsswitch.conf `passwd: files systemd`, Debian's default) without a running systemd.

use std::path::PathBuf;
use std::process::Command;

use leash_tests::*;

/// A user and its group that only NSS's systemd source knows, removed on drop.
struct NssOnlyAccount {
    name: String,
    id: u32,
    files: Vec<PathBuf>,
}

impl NssOnlyAccount {
    fn new() -> Self {
        let name = format!("leash-nss-{}", std::process::id());
        let id = (0..1000)
            .map(|k| 60_000 + (std::process::id() + k) % 1000)
            .find(|id| !known("passwd", &id.to_string()) && !known("group", &id.to_string()))
            .expect("a free id in 60000..61000");
        let dir = PathBuf::from("/run/userdb");
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for (kind, record) in [
            (
                "user",
                format!(
                    r#"{{"userName":"{name}","uid":{id},"gid":{id},"homeDirectory":"/nonexistent","disposition":"regular"}}"#
                ),
            ),
            ("group", format!(r#"{{"groupName":"{name}","gid":{id},"disposition":"regular"}}"#)),
        ] {
            let file = dir.join(format!("{name}.{kind}"));
            std::fs::write(&file, record).unwrap();
            let by_id = dir.join(format!("{id}.{kind}"));
            let _ = std::fs::remove_file(&by_id);
            std::os::unix::fs::symlink(&file, &by_id).unwrap();
            files.extend([file, by_id]);
        }
        let account = NssOnlyAccount { name, id, files };
        assert!(
            known("passwd", &account.name) && known("group", &account.name) && known("passwd", &id.to_string()),
            "setup: this host's NSS does not serve /run/userdb drop-ins (needs libnss-systemd and \
             `passwd: files systemd` / `group: files systemd` in /etc/nsswitch.conf)"
        );
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        assert!(!passwd.contains(&account.name), "setup: the account must not be in the files");
        account
    }
}

impl Drop for NssOnlyAccount {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Whether the host's `getent DB KEY` finds an entry.
fn known(db: &str, key: &str) -> bool {
    Command::new("getent").args([db, key]).output().is_ok_and(|o| o.status.success())
}

/// `bin run --policy POLICY -- sh -c 'id -u; id -g'` with `env`, its output.
fn ids_under(bin: &std::path::Path, policy: &std::path::Path, env: &[(&str, String)]) -> std::process::Output {
    let mut c = Command::new(bin);
    c.args(["run", "--policy"]).arg(policy).args(["--", "/bin/sh", "-c", "id -u; id -g"]);
    c.env_remove("SUDO_UID").env_remove("SUDO_GID").env_remove("SUDO_USER");
    c.envs(env.iter().map(|(k, v)| (k, v)));
    c.output().expect("running leash")
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
            let out = ids_under(&bin, policy, env);
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
    for bin in [leash_bin(), leash_static_bin()] {
        let out = ids_under(&bin, &policy, &[]);
        assert!(!out.status.success(), "{}: the agent ran as an account no source knows", bin.display());
        assert!(stdout(&out).is_empty(), "{}: the agent ran: {}", bin.display(), stdout(&out));
        assert!(
            stderr(&out).contains(&format!("no user `{name}`")),
            "{}: the refusal must say which user: {}",
            bin.display(),
            stderr(&out)
        );
    }
}
