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
//! ([`init`]: every database is `files`, hosts `files dns`, and nscd is not asked): users and
//! groups come from the local files first, whatever order nsswitch.conf gives, and what those
//! lack from the host's own `getent` (linked against the host's glibc, so its NSS as
//! configured). Host names resolve from `/etc/hosts` and DNS; mDNS, `myhostname` and
//! systemd-resolved's own module do not answer.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::unistd::{Gid, Uid};

/// Whether this leash was linked statically (its C library cannot load the host's NSS modules).
pub const STATIC: bool = cfg!(target_feature = "crt-static");

/// Where a static leash finds the host's `getent`; never through `PATH`, which the caller set.
const GETENT: [&str; 2] = ["/usr/bin/getent", "/bin/getent"];
/// How long `getent` may take (a backend that hangs would hold leash's start).
const GETENT_PATIENCE: Duration = Duration::from_secs(10);

/// A user account: what leash needs of a passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
}

/// A static leash: configure its C library to load no NSS module and ask no nscd (every
/// database from the files, hosts from the files and DNS). Call first in `main`, before any
/// thread starts: the configuration is not thread-safe. A dynamic leash: nothing.
pub fn init() -> Result<()> {
    #[cfg(target_feature = "crt-static")]
    {
        extern "C" {
            fn __nss_configure_lookup(db: *const libc::c_char, services: *const libc::c_char) -> libc::c_int;
        }
        let databases = [
            c"aliases",
            c"ethers",
            c"group",
            c"gshadow",
            c"initgroups",
            c"netgroup",
            c"networks",
            c"passwd",
            c"protocols",
            c"publickey",
            c"rpc",
            c"services",
            c"shadow",
        ];
        let all = databases.iter().map(|db| (*db, c"files")).chain([(c"hosts", c"files dns")]);
        for (db, services) in all {
            // SAFETY: two NUL-terminated strings that live as long as the program; no other
            // thread exists yet. glibc keeps this over later changes of nsswitch.conf.
            if unsafe { __nss_configure_lookup(db.as_ptr(), services.as_ptr()) } != 0 {
                bail!("configuring this static leash's C library to load no NSS module failed ({db:?})");
            }
        }
    }
    Ok(())
}

/// The account named `name`, `None` if the host has none.
pub fn user_by_name(name: &str) -> Result<Option<Account>> {
    match nix::unistd::User::from_name(name).with_context(|| format!("looking up user {name:?}"))? {
        Some(user) => Ok(Some(account(user))),
        None if numeric(name) => Ok(None),
        None => getent_user(name, |_| true),
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
        None if numeric(name) => Ok(None),
        None => getent_group(name, |_| true),
    }
}

/// `gid` if the host has a group with that id.
pub fn group_by_gid(gid: Gid) -> Result<Option<Gid>> {
    match nix::unistd::Group::from_gid(gid).with_context(|| format!("looking up gid {gid}"))? {
        Some(group) => Ok(Some(group.gid)),
        None => getent_group(&gid.to_string(), |(_, g)| *g == gid),
    }
}

/// Whether getent would read `key` as an id rather than a name (it parses with `strtoul`: `-0`
/// and `4294967296` are root's entry). A name lookup never sends such a key: the C library's
/// own lookup by name does not read it as a number either.
fn numeric(key: &str) -> bool {
    let digits = key.trim_start().trim_start_matches(['+', '-']);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// What `getent passwd key` answers, if it is the entry `asked` for.
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

/// A static leash whose files lacked `key`: the host's `getent` line for it, `None` when no
/// source knows it. A dynamic leash: `None`, its C library asked every source already.
fn ask_getent(db: Database, key: &str) -> Result<Option<Vec<u8>>> {
    if !STATIC {
        return Ok(None);
    }
    let Some(getent) = GETENT.iter().find(|p| std::path::Path::new(p).is_file()) else {
        let conf = std::fs::read_to_string("/etc/nsswitch.conf").unwrap_or_default();
        let others: Vec<String> = sources(&conf, db.name()).into_iter().filter(|s| s != "files").collect();
        if others.is_empty() {
            return Ok(None);
        }
        bail!(
            "no {} entry {key:?} in the local files, and /etc/nsswitch.conf may name other sources ({}) that this \
             statically linked leash asks through getent, which is not installed; install it (libc-bin), or \
             build leash with `cargo xtask install --dynamic`",
            db.name(),
            others.join(" ")
        );
    };
    let mut child = Command::new(getent)
        .args([db.name(), "--", key])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("running {getent} {} {key:?}", db.name()))?;
    let deadline = Instant::now() + GETENT_PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for getent")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{getent} {} {key:?} took longer than {}s", db.name(), GETENT_PATIENCE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut out = Vec::new();
    if let Some(mut stdout) = child.stdout.take() {
        std::io::Read::read_to_end(&mut stdout, &mut out).context("reading getent's answer")?;
    }
    match status.code() {
        Some(0) => Ok(Some(out.split(|b| *b == b'\n').next().unwrap_or_default().to_vec())),
        // getent(1): 2 is "one or more supplied key could not be found in the database".
        Some(2) => Ok(None),
        _ => bail!("{getent} {} {key:?} failed ({status})", db.name()),
    }
}

/// The sources nsswitch.conf names for `db`, in order, without the `[STATUS=action]` items;
/// read wide (glibc takes the last line for a database and `#` only at a line's start; here
/// every line for it counts, and so does what follows a `#`), since this decides only whether a
/// missing getent is an error.
fn sources(conf: &str, db: &str) -> Vec<String> {
    let mut named = Vec::new();
    for line in conf.lines().map(str::trim_start).filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(db) else { continue };
        if !rest.starts_with([':', ' ', '\t']) {
            continue;
        }
        let mut in_action = false;
        for token in rest.trim_start_matches([':', ' ', '\t']).split_whitespace() {
            let mut word = String::new();
            for c in token.chars() {
                match c {
                    '[' => in_action = true,
                    ']' => in_action = false,
                    '#' => {}
                    c if !in_action => word.push(c),
                    _ => {}
                }
            }
            if !word.is_empty() {
                named.push(word);
            }
        }
    }
    named
}

/// `name:password:uid:gid:gecos:home:shell`; the name must be UTF-8, the rest need not.
fn parse_passwd(line: &[u8]) -> Result<Account> {
    let bad = || anyhow!("getent: a passwd entry that is not one: {:?}", String::from_utf8_lossy(line));
    let fields: Vec<&[u8]> = line.split(|b| *b == b':').collect();
    let [name, _, uid, gid, _, home, _] = fields[..] else { return Err(bad()) };
    let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty()).ok_or_else(bad)?;
    Ok(Account {
        name: name.to_owned(),
        uid: Uid::from_raw(id(uid).ok_or_else(bad)?),
        gid: Gid::from_raw(id(gid).ok_or_else(bad)?),
        home: OsStr::from_bytes(home).into(),
    })
}

/// `name:password:gid:members`: the name and the id.
fn parse_group(line: &[u8]) -> Result<(String, Gid)> {
    let bad = || anyhow!("getent: a group entry that is not one: {:?}", String::from_utf8_lossy(line));
    let fields: Vec<&[u8]> = line.split(|b| *b == b':').collect();
    let [name, _, gid, _] = fields[..] else { return Err(bad()) };
    let name = std::str::from_utf8(name).ok().filter(|n| !n.is_empty()).ok_or_else(bad)?;
    Ok((name.to_owned(), Gid::from_raw(id(gid).ok_or_else(bad)?)))
}

/// A decimal id as a passwd or group entry writes it.
fn id(field: &[u8]) -> Option<u32> {
    std::str::from_utf8(field).ok().filter(|f| f.bytes().all(|b| b.is_ascii_digit()))?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_read_wide() {
        let conf = "# passwd: sss\npasswd:  files systemd  # trailing\ngroup: files [NOTFOUND=return] sss\n\
                    hosts: files mdns4_minimal [ NOTFOUND = return ] dns\nshadow:\n  passwd files # ldap\n";
        // The last passwd line, without a colon, and what follows its `#`, count too.
        assert_eq!(sources(conf, "passwd"), ["files", "systemd", "trailing", "files", "ldap"]);
        assert_eq!(sources(conf, "group"), ["files", "sss"]);
        assert_eq!(sources(conf, "hosts"), ["files", "mdns4_minimal", "dns"]);
        assert!(sources(conf, "shadow").is_empty());
        assert!(sources(conf, "netgroup").is_empty());
        assert!(sources("passwdx: sss\n", "passwd").is_empty());
    }

    #[test]
    fn an_entry_is_taken_whole_or_refused() {
        let alice = parse_passwd(b"alice:x:1000:1001:Alice,,,:/home/alice:/bin/bash").unwrap();
        assert_eq!(
            alice,
            Account {
                name: "alice".into(),
                uid: Uid::from_raw(1000),
                gid: Gid::from_raw(1001),
                home: "/home/alice".into()
            }
        );
        // A home that is not UTF-8 is the host's to have.
        assert_eq!(
            parse_passwd(b"bob:x:1:1::/home/b\xe9:/bin/sh").unwrap().home.as_os_str().as_bytes(),
            b"/home/b\xe9"
        );
        for bad in [
            &b""[..],
            b"alice:x:1000:1001",
            b"alice:x:-1:1:a:/h:/s",
            b"alice:x:+1:1:a:/h:/s",
            b"alice:x:4294967296:1:a:/h:/s",
            b":x:1:1:a:/h:/s",
            b"a:x:1:1:a:/h:/s:extra",
            b"\xff:x:1:1:a:/h:/s",
        ] {
            assert!(parse_passwd(bad).is_err(), "{:?} was taken", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_group(b"staff:x:50:alice,bob").unwrap(), ("staff".into(), Gid::from_raw(50)));
        for bad in [&b"staff:x:50"[..], b"staff:x:fifty:", b":x:50:"] {
            assert!(parse_group(bad).is_err(), "{:?} was taken", String::from_utf8_lossy(bad));
        }
    }

    /// getent reads these as ids (root's, for the first three): never sent as names.
    #[test]
    fn a_name_getent_would_read_as_an_id_is_no_name() {
        for key in ["-0", "4294967296", "-4294967296", "+0", " 0", "0"] {
            assert!(numeric(key), "{key:?}");
        }
        for key in ["alice", "0a", "-", "", "a-0"] {
            assert!(!numeric(key), "{key:?}");
        }
        assert_eq!(user_by_name("-0").unwrap(), None);
        assert_eq!(group_by_name("-0").unwrap(), None);
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
