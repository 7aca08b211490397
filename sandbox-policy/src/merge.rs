//! Adding what was learned to an existing policy file as text (`leash policy suggest --merge`):
//! the file's own lines, comments and order stay as they are; new `network_policies:` entries
//! are inserted after the last line of that block (or the block is added at the end).
//!
//! A host and port the file already covers are judged by the endpoint that covers them (the
//! first in file order), so a new entry for them would never be consulted: the rules such
//! requests need are written as a comment instead, for a person to add to that endpoint.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::compile::parse_str;
use super::learn::Learned;
use super::learn_files::quote;

/// `original` (named `file_label` in errors) with `learned` added; the result is checked to
/// parse. `source` says where the suggestions come from, for their comment.
pub fn merge(original: &str, file_label: &str, mut learned: Learned, source: &str) -> Result<String, String> {
    let existing = parse_str(file_label, original).map_err(|e| e.to_string())?;
    let mut covered = String::new();
    for (host, port) in learned.endpoints() {
        let Some((policy, _)) = existing.matching_endpoints(&host, port).next() else { continue };
        let name = policy.name.clone();
        let rules = learned.take(&host, port);
        let _ = writeln!(covered, "# {host}:{port} is covered by network policy `{name}`, which refused:");
        if rules.is_empty() {
            let _ = writeln!(covered, "#   connections from an executable its `binaries:` do not list");
        }
        for (method, path) in rules {
            let _ = writeln!(covered, "#   - allow: {{ method: {}, path: {} }}", quote(&method), quote(&path));
        }
    }
    let taken: BTreeSet<String> = existing.network_policies().iter().map(|p| p.name.clone()).collect();
    let lines: Vec<&str> = original.split_inclusive('\n').collect();
    let header = lines.iter().position(|l| l.starts_with("network_policies:"));
    let mut out = String::new();
    match header {
        None => {
            out.push_str(original);
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str("network_policies:\n");
            out.push_str(&block(&learned, "  ", &taken, &covered, source));
        }
        Some(at) => {
            let line = lines[at];
            let rest = line["network_policies:".len()..].trim_end();
            let (value, comment) = split_comment(rest);
            match value.trim() {
                "" => {
                    let (indent, last) = block_extent(&lines, at);
                    for (i, l) in lines.iter().enumerate() {
                        out.push_str(l);
                        if i == last {
                            if !l.ends_with('\n') {
                                out.push('\n');
                            }
                            out.push_str(&block(&learned, &indent, &taken, &covered, source));
                        }
                    }
                }
                "{}" => {
                    for (i, l) in lines.iter().enumerate() {
                        if i == at {
                            let _ = writeln!(out, "network_policies:{comment}");
                            out.push_str(&block(&learned, "  ", &taken, &covered, source));
                        } else {
                            out.push_str(l);
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "{file_label}:{}: `network_policies:` is a flow mapping; --merge adds entries to a block-style one (one key per line)",
                        at + 1
                    ))
                }
            }
        }
    }
    parse_str(file_label, &out).map_err(|e| format!("the merged policy does not parse (a bug): {e}"))?;
    Ok(out)
}

/// The inserted lines: a comment naming the source, the new entries, the covered hosts.
fn block(learned: &Learned, indent: &str, taken: &BTreeSet<String>, covered: &str, source: &str) -> String {
    let mut out = format!("{indent}# suggested by leash from {source}; review before use\n");
    out.push_str(&learned.network_policies(indent, taken));
    for line in covered.lines() {
        let _ = writeln!(out, "{indent}{line}");
    }
    out
}

/// `value  # comment` → (`value`, `  # comment`).
fn split_comment(text: &str) -> (&str, &str) {
    match text.find(" #").or_else(|| text.starts_with('#').then_some(0)) {
        Some(i) => {
            let value = text[..i].trim_end();
            (value, &text[value.len()..])
        }
        None => (text, ""),
    }
}

/// The indentation of the block under line `at` and the index of its last indented line.
fn block_extent(lines: &[&str], at: usize) -> (String, usize) {
    let mut indent: Option<String> = None;
    let mut last = at;
    for (i, line) in lines.iter().enumerate().skip(at + 1) {
        let trimmed = line.trim_start();
        if trimmed.trim().is_empty() {
            continue;
        }
        let width = line.len() - trimmed.len();
        if width == 0 {
            if trimmed.starts_with('#') {
                continue;
            }
            break;
        }
        if indent.is_none() && !trimmed.starts_with('#') {
            indent = Some(line[..width].to_owned());
        }
        last = i;
    }
    (indent.unwrap_or_else(|| "  ".to_owned()), last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{Observation, Seen};

    const ORIGINAL: &str = "\
# my policy: keep this comment
version: 1
network_policies:
    # GitHub first
    github:
        endpoints:
            - { host: api.github.com, port: 443, protocol: rest, access: read-only }  # reads only

# the filesystem comes last
filesystem_policy:
    read_only: [/usr]
";

    fn learned() -> Learned {
        let seen = [
            Observation { host: "new.example".into(), port: 443, binary: None, seen: Seen::Refused },
            Observation {
                host: "api.github.com".into(),
                port: 443,
                binary: None,
                seen: Seen::Request {
                    method: "POST".into(),
                    target: "/repos/o/r/issues".into(),
                    overrides: vec![],
                    credentials: vec![],
                },
            },
        ];
        Learned::from_observations(&seen)
    }

    #[test]
    fn block_style_keeps_every_line_and_order() {
        let merged = merge(ORIGINAL, "p.yaml", learned(), "audit.jsonl").unwrap_or_else(|e| panic!("{e}"));
        let kept: Vec<&str> = merged.lines().filter(|l| ORIGINAL.lines().any(|o| o == *l)).collect();
        assert_eq!(kept, ORIGINAL.lines().collect::<Vec<_>>(), "{merged}");
        let new_at = merged.find("    new.example:").unwrap_or_else(|| panic!("{merged}"));
        assert!(new_at > merged.find("reads only").unwrap_or(usize::MAX), "{merged}");
        assert!(new_at < merged.find("# the filesystem comes last").unwrap_or(0), "{merged}");
        assert!(merged.contains("#   - allow: { method: 'POST', path: '/repos/o/r/issues' }"), "{merged}");
        let policy = parse_str("m.yaml", &merged).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(policy.network_policies().len(), 2);
    }

    #[test]
    fn empty_and_missing_blocks() {
        let inline = "version: 1\nnetwork_policies: {}  # none yet\n";
        let merged = merge(inline, "p.yaml", learned(), "a").unwrap_or_else(|e| panic!("{e}"));
        assert!(merged.starts_with("version: 1\nnetwork_policies:  # none yet\n"), "{merged}");
        let missing = merge("version: 1", "p.yaml", learned(), "a").unwrap_or_else(|e| panic!("{e}"));
        assert!(missing.contains("network_policies:\n"), "{missing}");
        let flow = "version: 1\nnetwork_policies: { a: { endpoints: [{ host: a.b, port: 1 }] } }\n";
        let err = merge(flow, "p.yaml", learned(), "a").expect_err("flow");
        assert!(err.starts_with("p.yaml:2:"), "{err}");
    }
}
