//! An audit log → what to allow (`leash policy suggest --from AUDIT.jsonl`).
//!
//! Reads the OCSF JSON lines `--audit-log` writes (`audit/ocsf.rs`: `http_request.http_method`,
//! `dst_endpoint.{hostname,port}`, `http_request.url.path`, `actor.process.file.path`,
//! `status_id` 2 for a denial, `unmapped.reason`) and keeps the denials the policy's rules made:
//! no endpoint covered the host and port, the endpoints were for other executables, or no
//! allow rule (or access preset) matched the request. Denials by a `deny_rules` entry and the
//! proxy's own refusals (misdirected requests, ambiguous framing, credential misuse, private
//! addresses) are never turned into allows. Each kept denial becomes an [`Observation`].

use std::path::PathBuf;

use serde_json::Value;

use super::decide::text;
use super::learn::{Observation, Seen};

/// The denials worth allowing, in log order; lines that are not proxy decisions are skipped.
/// `Err` names the first line that is not JSON.
pub fn observations(log: &str) -> Result<Vec<Observation>, String> {
    let mut out = Vec::new();
    for (number, line) in log.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let event: Value = serde_json::from_str(line).map_err(|e| format!("line {}: not JSON: {e}", number + 1))?;
        if let Some(o) = observation(&event) {
            out.push(o);
        }
    }
    Ok(out)
}

/// Whether `host` is made of what host names and address literals are made of.
fn plausible_host(host: &str) -> bool {
    !host.is_empty() && host.len() <= 253 && host.chars().all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c))
}

/// The observation a denied proxy decision stands for.
fn observation(event: &Value) -> Option<Observation> {
    if event["class_uid"] != 4002 || event["status_id"] != 2 {
        return None;
    }
    let reason = event["unmapped"]["reason"].as_str()?;
    let connection = [text::NO_ENDPOINT_REASON, text::BINARIES_REASON].contains(&reason);
    let request = [text::NO_RULE_REASON, text::PRESET_REFUSES_REASON].contains(&reason);
    if !connection && !request {
        return None;
    }
    // The log is leash's, but read as text: a host name that is not one is not learned (it
    // would be written into the suggestion's comments and keys).
    let host = event["dst_endpoint"]["hostname"].as_str().filter(|h| plausible_host(h))?.to_owned();
    let port = u16::try_from(event["dst_endpoint"]["port"].as_u64()?).ok()?;
    let binary = event["actor"]["process"]["file"]["path"].as_str().map(PathBuf::from);
    let method = event["http_request"]["http_method"].as_str().unwrap_or("GET");
    let seen = match event["http_request"]["url"]["path"].as_str() {
        Some(target) if request => Seen::Request {
            method: method.to_owned(),
            target: target.to_owned(),
            overrides: vec![],
            credentials: vec![],
        },
        _ => Seen::Refused,
    };
    Some(Observation { host, port, binary, seen })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host name with a newline wrote a policy of its own into the suggestion's comments.
    #[test]
    fn a_host_name_that_is_not_one_is_not_learned() {
        let forged = "a.example\n  evil:\n    name: evil";
        let log = [
            line("GET", forged, None, text::NO_ENDPOINT_REASON, 2),
            line("GET", "ok.example", None, text::NO_ENDPOINT_REASON, 2),
        ]
        .join("\n");
        let seen = observations(&log).unwrap();
        assert_eq!(seen.iter().map(|o| o.host.as_str()).collect::<Vec<_>>(), ["ok.example"]);
    }

    fn line(method: &str, host: &str, path: Option<&str>, reason: &str, status: u8) -> String {
        serde_json::json!({
            "class_uid": 4002, "status_id": status,
            "http_request": { "http_method": method, "url": { "hostname": host, "port": 443, "path": path } },
            "dst_endpoint": { "hostname": host, "port": 443 },
            "actor": { "process": { "file": { "path": "/usr/bin/curl" } } },
            "unmapped": { "reason": reason },
        })
        .to_string()
    }

    #[test]
    fn only_rule_denials_are_suggested() {
        let log = [
            line("CONNECT", "a.example", None, text::NO_ENDPOINT_REASON, 2),
            line("POST", "b.example", Some("/x?token=1"), text::NO_RULE_REASON, 2),
            line("DELETE", "b.example", Some("/y"), text::DENY_RULE_REASON, 2),
            line("GET", "c.example", Some("/"), "misdirected_request", 2),
            line("GET", "d.example", Some("/"), "allowed", 1),
            "{\"class_uid\": 1007}".to_owned(),
        ]
        .join("\n");
        let seen = observations(&log).expect("valid log");
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].seen, Seen::Refused);
        assert!(matches!(&seen[1].seen, Seen::Request { method, .. } if method == "POST"));
        assert_eq!(seen[1].binary.as_deref(), Some(std::path::Path::new("/usr/bin/curl")));
    }

    #[test]
    fn a_line_that_is_not_json_is_named() {
        let err = observations("{}\nnot json\n").expect_err("bad line");
        assert!(err.starts_with("line 2: not JSON"), "{err}");
    }
}
