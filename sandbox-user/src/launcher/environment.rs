//! The agent's environment: leash's own, minus every credential the policy declares (replaced by
//! its placeholder), with the proxy variables pointing at the sandbox's proxy and the identity
//! variables matching the user the agent runs as.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;

use super::identity::Identity;
use crate::proxy::credentials::placeholder;

const PROXY_VARS: [&str; 6] = ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"];
const NO_PROXY_VARS: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// Builds the environment from `base` (normally leash's own).
pub fn agent_env(
    base: impl IntoIterator<Item = (OsString, OsString)>,
    proxy: SocketAddr,
    identity: &Identity,
    credentials: &Credentials<'_>,
) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = base.into_iter().collect();
    for name in credentials.declared {
        env.remove(std::ffi::OsStr::new(name));
    }
    for name in credentials.offered {
        env.insert((*name).into(), placeholder(name).into());
    }
    let url = format!("http://{proxy}");
    for var in PROXY_VARS {
        env.insert(var.into(), url.clone().into());
    }
    for var in NO_PROXY_VARS {
        env.insert(var.into(), OsString::new());
    }
    // Node's fetch ignores the proxy variables unless asked (Node 22.21+/24.5+ honour this).
    env.insert("NODE_USE_ENV_PROXY".into(), "1".into());
    env.insert("HOME".into(), identity.home.clone().into_os_string());
    env.insert("USER".into(), identity.name.clone().into());
    env.insert("LOGNAME".into(), identity.name.clone().into());
    env.insert("LEASH_SANDBOX".into(), "1".into());
    env.into_iter().collect()
}

/// The policy's credentials as the agent's environment sees them.
pub struct Credentials<'a> {
    /// Every credential the policy declares: never passed on with leash's own value.
    pub declared: &'a [&'a str],
    /// Those the proxy holds a value for: the agent gets their placeholders.
    pub offered: &'a [&'a str],
}

/// Variables an agent cannot work without: never dropped. One that holds a credential's value
/// stops the run instead.
const ESSENTIAL: [&str; 7] = ["PATH", "HOME", "TERM", "LANG", "USER", "LOGNAME", "SHELL"];

fn essential(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    ESSENTIAL.contains(&name.as_ref()) || name.starts_with("LC_")
}

/// Drops every variable whose value contains a credential's value (an alias, a URL with the
/// token in it), with one note per variable dropped; an essential variable (`PATH`, `HOME`,
/// `TERM`, `LANG`, `LC_*`, `USER`, `LOGNAME`, `SHELL`) holding one is an error naming it.
pub fn drop_leaking(
    env: &mut Vec<(OsString, OsString)>,
    leaks: impl Fn(&std::ffi::OsStr) -> bool,
) -> anyhow::Result<()> {
    if let Some((name, _)) = env.iter().find(|(name, value)| essential(name) && leaks(value)) {
        anyhow::bail!(
            "{} contains a credential's value; leash neither passes it to the agent nor runs the agent without it: remove the value from it",
            name.to_string_lossy()
        );
    }
    env.retain(|(name, value)| {
        let leaking = leaks(value);
        if leaking {
            crate::say!(
                "leash: note: {} is not passed to the agent: it contains a credential's value",
                name.to_string_lossy()
            );
        }
        !leaking
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::unistd::{Gid, Uid};

    fn ident() -> Identity {
        Identity {
            uid: Uid::from_raw(1000),
            gid: Gid::from_raw(1000),
            groups: vec![],
            name: "dev".into(),
            home: "/home/dev".into(),
        }
    }

    fn get<'a>(env: &'a [(OsString, OsString)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.to_str())
    }

    #[test]
    fn credentials_are_replaced_by_placeholders() {
        let base = vec![("GITHUB_TOKEN".into(), "ghp_realsecret".into()), ("PATH".into(), "/usr/bin".into())];
        let names = ["GITHUB_TOKEN", "ANTHROPIC_API_KEY"];
        let creds = Credentials { declared: &names, offered: &names };
        let env = agent_env(base, "127.0.0.1:3128".parse().unwrap(), &ident(), &creds);
        assert_eq!(get(&env, "GITHUB_TOKEN"), Some("leash:resolve:env:GITHUB_TOKEN"));
        assert_eq!(get(&env, "ANTHROPIC_API_KEY"), Some("leash:resolve:env:ANTHROPIC_API_KEY"));
        assert!(env.iter().all(|(_, v)| v.to_str() != Some("ghp_realsecret")));
        assert_eq!(get(&env, "PATH"), Some("/usr/bin"));
    }

    #[test]
    fn leaking_variables_are_dropped_and_essential_ones_stop_the_run() {
        let leaks = |v: &std::ffi::OsStr| v.to_string_lossy().contains("s3cr3t-value");
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/usr/bin".into()),
            ("ALIAS".into(), "s3cr3t-value".into()),
            ("LC_ALL".into(), "C.UTF-8".into()),
        ];
        drop_leaking(&mut env, leaks).unwrap();
        assert_eq!(env.iter().map(|(n, _)| n.to_str().unwrap()).collect::<Vec<_>>(), ["PATH", "LC_ALL"]);
        let mut env: Vec<(OsString, OsString)> = vec![("PATH".into(), "/opt/s3cr3t-value/bin".into())];
        let err = drop_leaking(&mut env, leaks).unwrap_err().to_string();
        assert!(err.starts_with("PATH contains") && !err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn a_credential_without_a_value_in_the_proxy_is_neither_offered_nor_passed_on() {
        let base = vec![("GITHUB_TOKEN".into(), "ghp_realsecret".into())];
        let creds = Credentials { declared: &["GITHUB_TOKEN"], offered: &[] };
        let env = agent_env(base, "127.0.0.1:3128".parse().unwrap(), &ident(), &creds);
        assert_eq!(get(&env, "GITHUB_TOKEN"), None);
    }

    #[test]
    fn proxy_variables_point_at_the_proxy_and_no_proxy_is_empty() {
        let base = vec![("NO_PROXY".into(), "*".into()), ("https_proxy".into(), "http://elsewhere:1".into())];
        let env =
            agent_env(base, "127.0.0.1:3128".parse().unwrap(), &ident(), &Credentials { declared: &[], offered: &[] });
        for var in PROXY_VARS {
            assert_eq!(get(&env, var), Some("http://127.0.0.1:3128"), "{var}");
        }
        assert_eq!(get(&env, "NO_PROXY"), Some(""));
        assert_eq!(get(&env, "HOME"), Some("/home/dev"));
    }
}
