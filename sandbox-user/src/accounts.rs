//! Users and groups as the host names them: the one place leash looks them up.
//!
//! A dynamically linked leash asks its C library, so every source `/etc/nsswitch.conf` names
//! (files, systemd, sssd, LDAP) answers as it does for any program on the host.
//!
//! The release build is statically linked (`cargo xtask build --release`): without the dynamic
//! loader a warm `leash run` starts sooner. A static glibc still *loads* NSS modules other than
//! `files` and `dns` with `dlopen`, and those work only with the very glibc version leash was
//! linked with: after a libc upgrade a lookup could fail, or answer wrongly, in ways leash could
//! not tell from "no such user". So a static leash lets its glibc load no module at all
//! ([`init`]): users and groups come from the local files, and when those lack a name while
//! nsswitch.conf names other sources, from the host's own `getent` (linked against the host's
//! glibc, so its NSS as configured). Host names resolve from `/etc/hosts` and DNS
//! (`hosts: files dns`); mDNS and `myhostname` names do not.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};
use nix::unistd::{Gid, Uid};

/// Whether this leash was linked statically (its C library cannot load the host's NSS modules).
pub const STATIC: bool = cfg!(target_feature = "crt-static");

/// Where a static leash finds the host's `getent`; never through `PATH`, which the caller set.
const GETENT: [&str; 2] = ["/usr/bin/getent", "/bin/getent"];

/// A user account: what leash needs of a passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
}

/// A static leash: configure its C library to load no NSS module (passwd and group from the
/// files, hosts from the files and DNS). Call first in `main`, before any thread starts: the
/// configuration is not thread-safe. A dynamic leash: nothing.
pub fn init() {
    #[cfg(target_feature = "crt-static")]
    {
        extern "C" {
            fn __nss_configure_lookup(db: *const libc::c_char, services: *const libc::c_char) -> libc::c_int;
        }
        for (db, services) in [(c"passwd", c"files"), (c"group", c"files"), (c"hosts", c"files dns")] {
            // SAFETY: two NUL-terminated strings that live as long as the program; no other
            // thread exists yet. glibc keeps this over later changes of nsswitch.conf.
            unsafe { __nss_configure_lookup(db.as_ptr(), services.as_ptr()) };
        }
    }
}

/// The account named `name`, `None` if the host has none.
pub fn user_by_name(name: &str) -> Result<Option<Account>> {
    match nix::unistd::User::from_name(name).with_context(|| format!("looking up user {name:?}"))? {
        Some(user) => Ok(Some(account(user))),
        None => getent_user(name, |a| a.name == name),
    }
}

/// The account of `uid`, `None` if the host has none.
pub fn user_by_uid(uid: Uid) -> Result<Option<Account>> {
    match nix::unistd::User::from_uid(uid).with_context(|| format!("looking up uid {uid}"))? {
        Some(user) => Ok(Some(account(user))),
        None => getent_user(&uid.to_string(), |a| a.uid == uid),
    }
}

/// The id of the group named `name`, `None` if the host has none.
pub fn group_by_name(name: &str) -> Result<Option<Gid>> {
    match nix::unistd::Group::from_name(name).with_context(|| format!("looking up group {name:?}"))? {
        Some(group) => Ok(Some(group.gid)),
        None => getent_group(name, |(n, _)| n == name),
    }
}

/// `gid` if the host has a group with that id.
pub fn group_by_gid(gid: Gid) -> Result<Option<Gid>> {
    match nix::unistd::Group::from_gid(gid).with_context(|| format!("looking up gid {gid}"))? {
        Some(group) => Ok(Some(group.gid)),
        None => getent_group(&gid.to_string(), |(_, g)| *g == gid),
    }
}

/// What `getent passwd key` answers, if it is the entry `asked` for (getent takes a key that is
/// all digits for an id).
fn getent_user(key: &str, asked: impl Fn(&Account) -> bool) -> Result<Option<Account>> {
    let Some(line) = ask_getent(Database::Passwd, key)? else { return Ok(None) };
    let entry = parse_passwd(&line)?;
    if !asked(&entry) {
        bail!("getent passwd {key:?} answered another entry");
    }
    Ok(Some(entry))
}

/// What `getent group key` answers, if it is the entry `asked` for.
fn getent_group(key: &str, asked: impl Fn(&(String, Gid)) -> bool) -> Result<Option<Gid>> {
    let Some(line) = ask_getent(Database::Group, key)? else { return Ok(None) };
    let entry = parse_group(&line)?;
    if !asked(&entry) {
        bail!("getent group {key:?} answered another entry");
    }
    Ok(Some(entry.1))
}

fn account(user: nix::unistd::User) -> Account {
    Account { name: user.name, uid: user.uid, gid: user.gid, home: user.dir }
}

#[derive(Debug, Clone, Copy)]
enum Database {
    Passwd,
    Group,
}

impl Database {
    fn name(self) -> &'static str {
        match self {
            Database::Passwd => "passwd",
            Database::Group => "group",
        }
    }
}

/// A static leash whose files lacked `key`: the host's `getent` line for it, when nsswitch.conf
/// names sources beyond the files (else `None`, as glibc would answer). A dynamic leash: `None`,
/// its C library asked every source already.
fn ask_getent(db: Database, key: &str) -> Result<Option<String>> {
    if !STATIC {
        return Ok(None);
    }
    let conf = match std::fs::read_to_string("/etc/nsswitch.conf") {
        Ok(conf) => conf,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading /etc/nsswitch.conf"),
    };
    let others = sources(&conf, db.name()).into_iter().filter(|s| s != "files").collect::<Vec<_>>();
    if others.is_empty() {
        return Ok(None);
    }
    let Some(getent) = GETENT.iter().find(|p| std::path::Path::new(p).is_file()) else {
        bail!(
            "no {} entry {key:?} in the local files, and /etc/nsswitch.conf names other sources ({}) that this \
             statically linked leash asks through getent, which is not installed; install it (libc-bin), or \
             build leash with `cargo xtask install --dynamic`",
            db.name(),
            others.join(" ")
        );
    };
    let out = Command::new(getent)
        .args([db.name(), "--", key])
        .env_clear()
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("running {getent} {} {key:?}", db.name()))?;
    match out.status.code() {
        Some(0) => {
            let text = String::from_utf8(out.stdout).map_err(|_| anyhow!("{getent}: an entry that is not UTF-8"))?;
            let line = text.lines().next().unwrap_or_default().to_owned();
            Ok(Some(line))
        }
        // getent(1): 2 is "one or more supplied key could not be found in the database".
        Some(2) => Ok(None),
        _ => bail!("{getent} {} {key:?} failed ({})", db.name(), out.status),
    }
}

/// The sources nsswitch.conf names for `db`, in order, without the `[STATUS=action]` items.
fn sources(conf: &str, db: &str) -> Vec<String> {
    let Some(line) = conf.lines().map(|l| l.split('#').next().unwrap_or_default()).find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        (name.trim() == db).then_some(rest)
    }) else {
        return Vec::new();
    };
    let mut named = Vec::new();
    let mut in_action = false;
    for token in line.split_whitespace() {
        let mut word = String::new();
        for c in token.chars() {
            match c {
                '[' => in_action = true,
                ']' => in_action = false,
                c if !in_action => word.push(c),
                _ => {}
            }
        }
        if !word.is_empty() {
            named.push(word);
        }
    }
    named
}

/// `name:password:uid:gid:gecos:home:shell`.
fn parse_passwd(line: &str) -> Result<Account> {
    let bad = || anyhow!("getent: a passwd entry that is not one: {:?}", crate::stderr::printable(line));
    let fields: Vec<&str> = line.split(':').collect();
    let [name, _, uid, gid, _, home, _] = fields[..] else { return Err(bad()) };
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = gid.parse().map_err(|_| bad())?;
    if name.is_empty() {
        return Err(bad());
    }
    Ok(Account { name: name.to_owned(), uid: Uid::from_raw(uid), gid: Gid::from_raw(gid), home: home.into() })
}

/// `name:password:gid:members`: the name and the id.
fn parse_group(line: &str) -> Result<(String, Gid)> {
    let bad = || anyhow!("getent: a group entry that is not one: {:?}", crate::stderr::printable(line));
    let fields: Vec<&str> = line.split(':').collect();
    let [name, _, gid, _] = fields[..] else { return Err(bad()) };
    if name.is_empty() {
        return Err(bad());
    }
    Ok((name.to_owned(), Gid::from_raw(gid.parse().map_err(|_| bad())?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_read_as_glibc_reads_them() {
        let conf = "# comment\npasswd:  files systemd  # trailing\ngroup: files [NOTFOUND=return] sss\n\
                    hosts: files mdns4_minimal [ NOTFOUND = return ] dns\nshadow:\n";
        assert_eq!(sources(conf, "passwd"), ["files", "systemd"]);
        assert_eq!(sources(conf, "group"), ["files", "sss"]);
        assert_eq!(sources(conf, "hosts"), ["files", "mdns4_minimal", "dns"]);
        assert!(sources(conf, "shadow").is_empty());
        assert!(sources(conf, "netgroup").is_empty());
    }

    #[test]
    fn an_entry_is_taken_whole_or_refused() {
        let alice = parse_passwd("alice:x:1000:1001:Alice,,,:/home/alice:/bin/bash").unwrap();
        assert_eq!(
            alice,
            Account {
                name: "alice".into(),
                uid: Uid::from_raw(1000),
                gid: Gid::from_raw(1001),
                home: "/home/alice".into()
            }
        );
        for bad in ["", "alice:x:1000:1001", "alice:x:-1:1:a:/h:/s", ":x:1:1:a:/h:/s", "a:x:1:1:a:/h:/s:extra"] {
            assert!(parse_passwd(bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(parse_group("staff:x:50:alice,bob").unwrap(), ("staff".into(), Gid::from_raw(50)));
        for bad in ["staff:x:50", "staff:x:fifty:", ":x:50:"] {
            assert!(parse_group(bad).is_err(), "{bad:?} was taken");
        }
    }

    /// The C library's answer, in either build, for an account every Debian host has.
    #[test]
    fn root_is_found_by_name_and_by_id() {
        let root = user_by_name("root").unwrap().expect("root has an entry");
        assert!(root.uid.is_root());
        assert_eq!(user_by_uid(Uid::from_raw(0)).unwrap(), Some(root));
        assert_eq!(group_by_gid(Gid::from_raw(0)).unwrap(), Some(Gid::from_raw(0)));
        assert_eq!(group_by_name("root").unwrap(), Some(Gid::from_raw(0)));
        assert_eq!(user_by_name("no-such-user-leash").unwrap(), None);
    }
}
