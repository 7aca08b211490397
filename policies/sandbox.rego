# leash sandbox policy: the source of truth for network and request decisions.
#
# leash evaluates this file with regorus. The proxy's hot path uses a compiled index and a
# decision cache (sandbox-policy/src/decide.rs) instead of the interpreter; differential
# tests check that both give the same verdict, rule and reason on thousands of inputs, so a
# change here must be mirrored there (and the tests say where they disagree).
#
# data:  the policy file as JSON (sandbox-policy/src/data.rs), with network_policies as a
#        list in file order and implicit values spelled out:
#          {"network_policies": [{"name", "endpoints": [{"host", "ports", "protocol", "access"?,
#            "rules", "deny_rules", "enforcement", "tls"?}], "binaries"?: [{"path"}]}], ...}
# input: {"exec": {"path", "ancestors"}, "network": {"host", "port"},
#         "request": {"method", "path", "query"}}
#        request.path is already normalised by leash (sandbox-policy/src/normalize.rs):
#        no `//`, no dot segments, no encoded slashes. A path that is not is refused here too.
#
# Decisions:
#   network_decision  {"allow", "policy", "endpoint", "policy_index", "endpoint_index", "rule", "reason"}
#   request_decision  {"allow", "audit", "policy", "endpoint", "rule", "reason"}
#   allow_network, allow_request  the booleans of the two
#
# `rule` names what made the decision:
#   network: "network_policies.<name>.endpoints[<i>]" (allowed by that endpoint),
#            "network_policies.<name>.binaries" (covered, but not for this executable),
#            "invalid-host", "default-deny"
#   request: "deny_rules[<i>]", "rules[<i>]", "access:<preset>", "protocol:tcp",
#            "default-deny" (no rule allows it), "path-not-normalized", or the network rule
#            when the connection itself is refused. (A target leash cannot normalise, such as
#            `/a%2Fb` or `/../x`, never gets here: leash refuses it as "path-rejected".)

package leash.sandbox

# ---------------------------------------------------------------------------------------------
# Access presets. Must equal READ_ONLY_METHODS / READ_WRITE_METHODS in sandbox-policy/src/compile.rs.
# `full` allows every method and is handled on its own.
# ---------------------------------------------------------------------------------------------

preset_methods := {
	"read-only": {"GET", "HEAD", "OPTIONS"},
	"read-write": {"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"},
}

# ---------------------------------------------------------------------------------------------
# Hosts. Patterns are stored lower-case: `api.github.com` (exact), `*.x` (exactly one more
# label), `**.x` (one or more labels). Matching is case-insensitive. A host with a character
# outside [A-Za-z0-9._-] or a trailing dot never matches: the agent must not reach a host under
# a spelling the policy author did not write (and `lower` must not fold non-ASCII letters such
# as the Kelvin sign into ASCII).
# ---------------------------------------------------------------------------------------------

valid_host if {
	regex.match(`^[A-Za-z0-9._-]+$`, input.network.host)
	not endswith(input.network.host, ".")
}

host := lower(input.network.host)

# One label of a queried host under a wildcard.
host_label(label) if regex.match(`^[a-z0-9_-]{1,63}$`, label)

# Exact pattern.
host_matches(pattern) if {
	not startswith(pattern, "*")
	host == pattern
}

# `*.suffix`: the part before `.suffix` is one valid label.
host_matches(pattern) if {
	startswith(pattern, "*.")
	suffix := trim_prefix(pattern, "*") # ".suffix"
	endswith(host, suffix)
	host_label(trim_suffix(host, suffix))
}

# `**.suffix`: the part before `.suffix` is one or more valid labels.
host_matches(pattern) if {
	startswith(pattern, "**.")
	suffix := trim_prefix(pattern, "**") # ".suffix"
	endswith(host, suffix)
	labels := split(trim_suffix(host, suffix), ".")
	every label in labels {
		host_label(label)
	}
}

# ---------------------------------------------------------------------------------------------
# Network (L4, at CONNECT): the first endpoint in file order whose host pattern and ports cover
# host:port, among the policies the executable may use, allows the connection.
# ---------------------------------------------------------------------------------------------

# [policy index, endpoint index] of every endpoint covering host:port.
covering contains [pi, ei] if {
	valid_host
	some pi, policy in data.network_policies
	some ei, ep in policy.endpoints
	input.network.port in ep.ports
	endswith(host, trim_left(ep.host, "*")) # cheap necessary condition, before the full match
	host_matches(ep.host)
}

# A policy without `binaries:` is for every executable; one with it only for those listed
# (by exact path). An unknown executable gets only the unrestricted policies.
binary_allowed(policy) if not policy.binaries

binary_allowed(policy) if {
	some binary in policy.binaries
	binary.path == input.exec.path
}

# Covering endpoints this executable may use.
usable contains m if {
	some m in covering
	binary_allowed(data.network_policies[m[0]])
}

network_decision := decision if {
	not valid_host
	decision := {
		"allow": false, "policy": null, "endpoint": null,
		"policy_index": null, "endpoint_index": null,
		"rule": "invalid-host",
		"reason": "the host is not a valid DNS name (or ends with a dot)",
	}
} else := decision if {
	count(usable) > 0
	decision := endpoint_decision(sort(usable)[0], true)
} else := decision if {
	count(covering) > 0
	decision := endpoint_decision(sort(covering)[0], false)
} else := {
	"allow": false, "policy": null, "endpoint": null,
	"policy_index": null, "endpoint_index": null,
	"rule": "default-deny",
	"reason": "no endpoint covers this host and port",
}

# The decision naming endpoint m = [policy index, endpoint index]: allowed by it, or refused
# because its policy's `binaries` do not list the executable.
endpoint_decision(m, allowed) := decision if {
	policy := data.network_policies[m[0]]
	decision := {
		"allow": allowed,
		"policy": policy.name,
		"endpoint": policy.endpoints[m[1]].host,
		"policy_index": m[0],
		"endpoint_index": m[1],
		"rule": endpoint_rule(policy, m[1], allowed),
		"reason": endpoint_reason(allowed),
	}
}

endpoint_rule(policy, ei, true) := sprintf("network_policies.%s.endpoints[%d]", [policy.name, ei])

endpoint_rule(policy, _, false) := sprintf("network_policies.%s.binaries", [policy.name])

endpoint_reason(true) := "an endpoint covers this host and port"

endpoint_reason(false) := "the endpoints covering this host and port are restricted to other executables"

allow_network := network_decision.allow

# ---------------------------------------------------------------------------------------------
# Request paths. Globs: `*` or `**` alone match any path; otherwise, split on `/`, a segment
# `**` matches zero or more whole segments (`/repos/**` matches `/repos`, `/repos/` and
# `/repos/a/b`; `/**/info/refs` matches `/info/refs`), and `*` inside any other segment matches
# any characters except `/`. Everything else is literal and case-sensitive. A glob is compiled
# to an anchored regular expression.
# ---------------------------------------------------------------------------------------------

path_matches(glob, _) if glob in {"*", "**"}

path_matches(glob, path) if {
	not glob in {"*", "**"}
	regex.match(glob_regex(glob), path)
}

glob_regex(glob) := concat("", ["^", concat("", parts), "$"]) if {
	segments := split(glob, "/")
	parts := [segment_regex(i, segment) | some i, segment in segments]
}

# The first segment is what precedes the glob's leading `/` (always empty).
segment_regex(0, segment) := literal_regex(segment)

segment_regex(i, "**") := `(?:/[^/]*)*` if i > 0

segment_regex(i, segment) := concat("", ["/", literal_regex(segment)]) if {
	i > 0
	segment != "**"
}

# A segment with `*` wildcards: literal pieces (regex metacharacters escaped) joined by [^/]*.
literal_regex(segment) := concat(`[^/]*`, [escaped |
	some piece in split(segment, "*")
	escaped := regex.replace(piece, `[\\.+*?()|\[\]{}^$]`, `\$0`)
])

# The path leash normalised: starts with `/`; no `//`, `\`, `.`/`..` segments (with or without
# `;` parameters), encoded slash, backslash or dot, control characters, `?` or `#`.
normalized_path(path) if {
	startswith(path, "/")
	not contains(path, "//")
	not contains(path, `\`)
	not regex.match(`%(2[fF]|5[cC]|2[eE])`, path)
	not regex.match(`[\x00-\x20\x7f?#]`, path)
	not regex.match(`(^|/)\.\.?(;[^/]*)?(/|$)`, path)
}

# ---------------------------------------------------------------------------------------------
# Requests (L7, per request inside an inspected tunnel). The endpoint is the one
# network_decision chose (`chosen`). Deny rules win; then the access preset, or the first allow rule.
# With `enforcement: audit`, a request the rules refuse is let through with `audit: true`.
# ---------------------------------------------------------------------------------------------

chosen := data.network_policies[network_decision.policy_index].endpoints[network_decision.endpoint_index]

method_matches(rule_method) if rule_method == "*"

method_matches(rule_method) if rule_method == input.request.method

request_matches(rule) if {
	method_matches(rule.method)
	path_matches(rule.path, input.request.path)
}

# Indices of the deny rules and allow rules the request matches. A deny rule on GET refuses
# HEAD too: servers run the GET handler for a HEAD. Allow rules stay as written.
matching_deny contains i if {
	some i, rule in chosen.deny_rules
	request_matches(rule)
}

matching_deny contains i if {
	input.request.method == "HEAD"
	some i, rule in chosen.deny_rules
	rule.method == "GET"
	path_matches(rule.path, input.request.path)
}

matching_allow contains i if {
	some i, rule in chosen.rules
	request_matches(rule.allow)
}

# What the endpoint's rules say, before `enforcement` is applied.
rules_verdict := {
	"allow": false, "rule": sprintf("deny_rules[%d]", [min(matching_deny)]),
	"reason": "a deny rule matches the request",
} if {
	count(matching_deny) > 0
} else := {
	"allow": true, "rule": "access:full",
	"reason": "the access preset allows every request",
} if {
	chosen.access == "full"
} else := {
	"allow": true, "rule": sprintf("access:%s", [chosen.access]),
	"reason": "the access preset allows the method",
} if {
	input.request.method in preset_methods[chosen.access]
} else := {
	"allow": false, "rule": sprintf("access:%s", [chosen.access]),
	"reason": "the access preset does not allow the method",
} if {
	chosen.access
} else := {
	"allow": true, "rule": sprintf("rules[%d]", [min(matching_allow)]),
	"reason": "an allow rule matches the request",
} if {
	count(matching_allow) > 0
} else := {
	"allow": false, "rule": "default-deny",
	"reason": "no allow rule matches the request",
}

# A refused request on an `enforcement: audit` endpoint passes, flagged.
enforced(verdict) := {
	"allow": true, "audit": true, "rule": verdict.rule,
	"reason": concat("", ["audit: ", verdict.reason]),
} if {
	not verdict.allow
	chosen.enforcement == "audit"
} else := {"allow": verdict.allow, "audit": false, "rule": verdict.rule, "reason": verdict.reason}

request_outcome := {
	"allow": false, "audit": false, "rule": network_decision.rule,
	"reason": concat("", ["connection refused: ", network_decision.reason]),
} if {
	not network_decision.allow
} else := {
	"allow": false, "audit": false, "rule": "path-not-normalized",
	"reason": "the request path is not in normalised form",
} if {
	not normalized_path(input.request.path)
} else := {
	"allow": true, "audit": false, "rule": "protocol:tcp",
	"reason": "tcp endpoints are not inspected",
} if {
	chosen.protocol != "rest"
} else := enforced(rules_verdict)

request_decision := {
	"allow": request_outcome.allow,
	"audit": request_outcome.audit,
	"policy": network_decision.policy,
	"endpoint": network_decision.endpoint,
	"rule": request_outcome.rule,
	"reason": request_outcome.reason,
}

allow_request := request_decision.allow
