//! Credential placeholders: the agent holds `leash:resolve:env:NAME` (or the OpenShell spelling
//! `openshell:resolve:env:NAME`), the proxy swaps in the real value on the way out.
//!
//! What this enforces:
//!
//! * [`SecretStore`] loads the value of every credential the policy declares, from leash's
//!   environment or a `--credentials-file`, and fails closed: a declared credential without a
//!   value, an empty value, or a value with CR, LF, NUL or another control character (which
//!   could split a header) is an error at load. Values live in [`zeroize::Zeroizing`] buffers
//!   and no `Display` or `Debug` in this module prints one.
//! * [`rewrite_request_head`] replaces placeholders in header values and inside
//!   `Authorization: Basic`, and in the request target (literal or percent-encoded) for
//!   endpoints that set `request_target_credential_rewrite: true` — but only when every
//!   placeholder in the request names a credential bound to the request's host. Otherwise it
//!   changes nothing and returns [`CredentialError::EndpointMismatch`]: the proxy answers 403
//!   `credential_endpoint_mismatch` and audits it. A placeholder in the target of an endpoint
//!   without the opt-in is [`CredentialError::TargetNotOptedIn`].
//! * [`rewrite_body`] does the same for a buffered body, for endpoints that set
//!   `request_body_credential_rewrite: true`; the caller fixes `Content-Length`.
//! * [`Reflections`] (from [`SecretStore::reflections`]) goes the other way: it replaces any real
//!   value in a response with its placeholder, so a host that echoes request data back cannot
//!   hand the agent the value (`reflection.rs`).
//!
//! Errors and [`RewriteReport`] name credentials, never values. After a rewrite the request
//! holds real values: log the request before rewriting, not after (rewritten header values are
//! marked sensitive, so their `Debug` prints `Sensitive`, but the URI has no such marker).

mod reflection;
mod rewrite;
mod store;

pub use reflection::{RedactedBody, Reflections};
pub use rewrite::{contains_placeholder, rewrite_body, rewrite_request_head, RewriteReport};
pub use store::{CredentialLoadError, MalformedLine, SecretSource, SecretStore};

/// The placeholder prefixes, leash's own first. A placeholder is a prefix followed by a name
/// matching `[A-Za-z_][A-Za-z0-9_]*` (the longest such run).
pub const PLACEHOLDER_PREFIXES: [&str; 2] = ["leash:resolve:env:", "openshell:resolve:env:"];

/// Bytes percent-encoded when a value goes into a URL: all but RFC 3986 "unreserved".
const URL_VALUE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// The placeholder leash puts in the agent's environment for credential `name`.
pub fn placeholder(name: &str) -> String {
    format!("{}{name}", PLACEHOLDER_PREFIXES[0])
}

/// Why a request cannot be rewritten. Never carries a credential's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A placeholder names a credential that is unknown or not bound to the request's host.
    /// Nothing was changed; answer 403 `credential_endpoint_mismatch` and audit it.
    #[error("the request carries a placeholder for credential `{credential}`, which is not bound to this host")]
    EndpointMismatch {
        /// The name in the placeholder.
        credential: String,
    },
    /// A placeholder is in the request target of an endpoint that swaps them only in headers;
    /// nothing was changed.
    #[error("the request target holds a credential placeholder, and this endpoint swaps placeholders only in headers (the endpoint can opt in with `request_target_credential_rewrite: true`)")]
    TargetNotOptedIn,
    /// The body is larger than the rewrite limit; nothing was changed.
    #[error("the request body is larger than the {limit}-byte limit for credential rewriting")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A rewritten header value is not a valid header value (cannot happen for values the
    /// store accepted; reported rather than assumed).
    #[error("header `{header}` is not a valid header value after credential rewriting")]
    InvalidHeaderValue {
        /// The header's name.
        header: String,
    },
    /// The rewritten request target is not a valid URI (same remark).
    #[error("the request target is not a valid URI after credential rewriting")]
    InvalidTarget,
}

impl CredentialError {
    /// The machine-readable error code for the proxy's JSON answer.
    pub fn code(&self) -> &'static str {
        match self {
            CredentialError::EndpointMismatch { .. } => "credential_endpoint_mismatch",
            CredentialError::TargetNotOptedIn => "credential_in_target",
            CredentialError::BodyTooLarge { .. } => "credential_body_too_large",
            CredentialError::InvalidHeaderValue { .. } | CredentialError::InvalidTarget => "credential_rewrite_failed",
        }
    }
}
