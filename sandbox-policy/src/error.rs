//! Errors from reading, parsing and validating a policy file.
//!
//! Every error names the file; errors tied to a place in the file also carry its 1-based line and
//! column, so `leash policy check` can print `FILE:LINE:COL: message` the way compilers do.

use std::fmt;

/// A place in a policy file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// Line number, starting at 1.
    pub line: usize,
    /// Column number, starting at 1.
    pub column: usize,
}

/// Why a policy file could not be turned into a [`super::CompiledPolicy`].
///
/// Display is `FILE:LINE:COL: message` when the place is known and `FILE: message` otherwise.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read at all.
    #[error("{file}: cannot read policy file: {error}")]
    Read {
        /// The file as the user named it.
        file: String,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The text is not a valid policy: YAML syntax, an unknown key, a wrong type or a bad value.
    #[error("{file}{}: {message}", At(.location))]
    Invalid {
        /// The file as the user named it (or the label given to [`super::parse_str`]).
        file: String,
        /// Where in the file, when the parser knows.
        location: Option<Location>,
        /// What is wrong, without the location.
        message: String,
    },
}

impl PolicyError {
    /// The error's place in the file, if known.
    pub fn location(&self) -> Option<Location> {
        match self {
            PolicyError::Read { .. } => None,
            PolicyError::Invalid { location, .. } => *location,
        }
    }

    /// Builds an [`PolicyError::Invalid`] from a YAML deserialization error, moving the
    /// location out of the message into its own field.
    pub(crate) fn from_yaml(file: &str, error: &serde_norway::Error) -> Self {
        let location = error.location().map(|l| Location { line: l.line(), column: l.column() });
        let mut message = error.to_string();
        if let Some(at) = location {
            message = message.replacen(&format!(" at line {} column {}", at.line, at.column), "", 1);
        }
        PolicyError::Invalid { file: file.to_owned(), location, message: explain_unsupported(message) }
    }
}

/// Formats an optional location as `:LINE:COL`, or nothing.
struct At<'a>(&'a Option<Location>);

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(at) => write!(f, ":{}:{}", at.line, at.column),
            None => Ok(()),
        }
    }
}

/// Keys of the OpenShell policy schema that leash does not implement yet, with the feature each
/// one belongs to. They are rejected like any unknown key, but the message says what they are so
/// an existing OpenShell policy fails with a reason instead of a bare "unknown field".
const UNSUPPORTED_OPENSHELL_KEYS: &[(&str, &str)] = &[
    ("network_middlewares", "network middlewares"),
    ("allow_encoded_slash", "encoded-slash path handling"),
    ("websocket_credential_rewrite", "credential rewriting in WebSocket messages"),
    ("allow_uninspected_credentials", "credentials on uninspected connections"),
    ("persisted_queries", "GraphQL inspection"),
    ("graphql_persisted_queries", "GraphQL inspection"),
    ("graphql_max_body_bytes", "GraphQL inspection"),
    ("operation_type", "GraphQL inspection"),
    ("operation_name", "GraphQL inspection"),
    ("fields", "GraphQL inspection"),
    ("credential_signing", "request signing"),
    ("signing_service", "request signing"),
    ("signing_region", "request signing"),
    ("json_rpc", "JSON-RPC inspection"),
    ("mcp", "MCP inspection"),
    ("tool", "MCP inspection"),
    ("params", "MCP inspection"),
    ("command", "command matching"),
    ("query", "query-string matching"),
    ("harness", "the deprecated `harness` flag (remove it)"),
];

/// Appends a note to serde's unknown-field message when the key is an OpenShell feature leash
/// does not implement yet.
fn explain_unsupported(message: String) -> String {
    let Some(key) = unknown_field_name(&message) else {
        return message;
    };
    match UNSUPPORTED_OPENSHELL_KEYS.iter().find(|(name, _)| *name == key) {
        Some((_, feature)) => {
            format!("{message} (`{key}` is an OpenShell policy key for {feature}, which leash does not implement yet)")
        }
        None => message,
    }
}

/// The key named by serde's "unknown field `KEY`, expected ..." message.
fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = &message[message.find("unknown field `")? + "unknown field `".len()..];
    Some(&rest[..rest.find('`')?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_and_without_location() {
        let located = PolicyError::Invalid {
            file: "p.yaml".into(),
            location: Some(Location { line: 3, column: 7 }),
            message: "bad".into(),
        };
        assert_eq!(located.to_string(), "p.yaml:3:7: bad");
        let unlocated = PolicyError::Invalid { file: "p.yaml".into(), location: None, message: "bad".into() };
        assert_eq!(unlocated.to_string(), "p.yaml: bad");
        let read = PolicyError::Read { file: "p.yaml".into(), error: std::io::Error::other("gone") };
        assert_eq!(read.to_string(), "p.yaml: cannot read policy file: gone");
    }

    #[test]
    fn openshell_keys_are_explained() {
        let explained = explain_unsupported("x: unknown field `mcp`, expected `host`".into());
        assert!(explained.contains("MCP inspection"), "{explained}");
        let plain = explain_unsupported("x: unknown field `hots`, expected `host`".into());
        assert_eq!(plain, "x: unknown field `hots`, expected `host`");
    }
}
