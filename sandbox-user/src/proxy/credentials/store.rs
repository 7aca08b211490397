//! The real values behind the placeholders, loaded once at start.
//!
//! Enforces: every credential the policy declares has a value (else leash refuses to start);
//! no value is empty or holds a control character (CR, LF and NUL would let a value split a
//! header or the request line); values are held in zeroizing buffers; nothing here prints a
//! value — errors name the credential or the file line, `Debug` lists names only.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::policy::Credential;

use super::{placeholder, Reflections};

/// Where the values come from.
#[derive(Debug, Clone, Copy)]
pub enum SecretSource<'a> {
    /// leash's own environment (`NAME=value` variables).
    Environment,
    /// A `--credentials-file`: `NAME=value` lines; blank lines and lines starting with `#` are
    /// skipped; everything after the first `=` is the value, verbatim (no quotes, no trimming;
    /// a CRLF line ending is not part of it; no spaces around `=`). Names the policy does not declare are ignored.
    File(&'a Path),
}

/// What is wrong with a line of a credentials file (the line itself is never repeated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedLine {
    /// The line has no `=`.
    MissingEquals,
    /// The text before `=` is not `[A-Za-z_][A-Za-z0-9_]*`.
    InvalidName,
}

impl fmt::Display for MalformedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MalformedLine::MissingEquals => "expected `NAME=value`, found no `=`",
            MalformedLine::InvalidName => {
                "the text before `=` is not a variable name (letters, digits and `_`, not starting with a digit; no spaces around `=`)"
            }
        })
    }
}

/// Why the store cannot be built. Names credentials and line numbers, never values.
#[derive(Debug, thiserror::Error)]
pub enum CredentialLoadError {
    /// The credentials file cannot be read.
    #[error("reading credentials file {path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        error: std::io::Error,
    },
    /// The credentials file is not UTF-8.
    #[error("credentials file {path}, line {line}: not valid UTF-8")]
    NotUtf8 {
        /// The file.
        path: String,
        /// The first line with invalid bytes (1-based).
        line: usize,
    },
    /// A line is not `NAME=value`.
    #[error("credentials file {path}, line {line}: {reason}")]
    Malformed {
        /// The file.
        path: String,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        reason: MalformedLine,
    },
    /// A name is set twice in the file.
    #[error("credentials file {path}, line {line}: `{name}` is already set on an earlier line")]
    Duplicate {
        /// The file.
        path: String,
        /// The second occurrence (1-based).
        line: usize,
        /// The credential's name.
        name: String,
    },
    /// A value holds CR, LF, NUL or another control character.
    #[error("credential `{credential}` contains a control character (CR, LF, NUL or another); refused because it could split an HTTP header")]
    ControlCharacter {
        /// The credential's name.
        credential: String,
    },
    /// A value is empty.
    #[error("credential `{credential}` is empty")]
    Empty {
        /// The credential's name.
        credential: String,
    },
    /// A value too short to be told apart from ordinary text (it would be found in `PATH`).
    #[error("credential `{credential}` is shorter than {MIN_VALUE_LEN} characters: too short to be a secret leash can keep out of the agent's environment; set the real token")]
    TooShort {
        /// The credential's name.
        credential: String,
    },
    /// An environment variable holds bytes that are not UTF-8.
    #[error("credential `{credential}` in leash's environment is not valid UTF-8")]
    NotUnicode {
        /// The credential's name.
        credential: String,
    },
    /// The policy requires credentials the source does not provide; leash must not start.
    #[error("the policy requires credentials that {source_name} does not provide: {}", names.join(", "))]
    Missing {
        /// `leash's environment` or `credentials file PATH`.
        source_name: String,
        /// The missing names, in policy order.
        names: Vec<String>,
    },
}

/// One declared credential and its value.
struct Entry {
    credential: Credential,
    value: Zeroizing<String>,
}

/// The shortest credential value leash accepts.
pub const MIN_VALUE_LEN: usize = 8;

/// The values of the policy's credentials, with the hosts each is bound to.
#[derive(Default)]
pub struct SecretStore {
    entries: Vec<Entry>,
    /// Declared, not required, and not provided: no placeholder is offered for them.
    absent: Vec<String>,
    /// Every spelling of every value, to take them out of responses.
    reflections: std::sync::Arc<Reflections>,
}

impl fmt::Debug for SecretStore {
    /// Lists credential names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore").field("credentials", &self.names().collect::<Vec<_>>()).finish()
    }
}

impl SecretStore {
    /// Loads a value for every credential in `credentials` (the policy's
    /// [`CompiledPolicy::credentials`](crate::policy::CompiledPolicy::credentials)) from `source`.
    pub fn load(credentials: &[Credential], source: SecretSource<'_>) -> Result<Self, CredentialLoadError> {
        match source {
            SecretSource::Environment => Self::from_env(credentials),
            SecretSource::File(path) => Self::from_file(credentials, path),
        }
    }

    /// Loads the values from leash's environment.
    pub fn from_env(credentials: &[Credential]) -> Result<Self, CredentialLoadError> {
        Self::collect(credentials, "leash's environment", |name| {
            let Some(raw) = std::env::var_os(name) else {
                return Ok(None);
            };
            let bytes = Zeroizing::new(std::os::unix::ffi::OsStringExt::into_vec(raw));
            match std::str::from_utf8(&bytes) {
                Ok(text) => Ok(Some(Zeroizing::new(text.to_owned()))),
                Err(_) => Err(CredentialLoadError::NotUnicode { credential: name.to_owned() }),
            }
        })
    }

    /// Loads the values from a credentials file (see [`SecretSource::File`]).
    pub fn from_file(credentials: &[Credential], path: &Path) -> Result<Self, CredentialLoadError> {
        let read_error = |error| CredentialLoadError::Read { path: path.to_owned(), error };
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        // Sized up front so the buffer holding the secrets is not reallocated (and copied).
        let mut bytes = Zeroizing::new(Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(1)));
        file.read_to_end(&mut bytes).map_err(read_error)?;
        let label = path.display().to_string();
        let text = std::str::from_utf8(&bytes).map_err(|e| CredentialLoadError::NotUtf8 {
            path: label.clone(),
            line: 1 + bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count(),
        })?;
        Self::from_file_text(credentials, &label, text)
    }

    /// Loads the values from the text of a credentials file; `label` names it in errors.
    pub fn from_file_text(credentials: &[Credential], label: &str, text: &str) -> Result<Self, CredentialLoadError> {
        let mut found: Vec<(&str, &str)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let malformed = |reason| CredentialLoadError::Malformed { path: label.to_owned(), line: line_no, reason };
            let (name, value) = trimmed.split_once('=').ok_or(malformed(MalformedLine::MissingEquals))?;
            if !is_variable_name(name) {
                return Err(malformed(MalformedLine::InvalidName));
            }
            if found.iter().any(|(seen, _)| *seen == name) {
                return Err(CredentialLoadError::Duplicate {
                    path: label.to_owned(),
                    line: line_no,
                    name: name.to_owned(),
                });
            }
            found.push((name, value));
        }
        Self::collect(credentials, &format!("credentials file {label}"), |name| {
            Ok(found.iter().find(|(seen, _)| *seen == name).map(|(_, value)| Zeroizing::new((*value).to_owned())))
        })
    }

    /// Looks up and checks every declared credential; reports all missing required names at once.
    fn collect(
        credentials: &[Credential],
        source_name: &str,
        mut lookup: impl FnMut(&str) -> Result<Option<Zeroizing<String>>, CredentialLoadError>,
    ) -> Result<Self, CredentialLoadError> {
        let mut entries = Vec::with_capacity(credentials.len());
        let (mut missing, mut absent) = (Vec::new(), Vec::new());
        for credential in credentials {
            let Some(value) = lookup(&credential.name)? else {
                if credential.required {
                    missing.push(credential.name.clone());
                } else {
                    absent.push(credential.name.clone());
                }
                continue;
            };
            check_value(&credential.name, &value)?;
            entries.push(Entry { credential: credential.clone(), value });
        }
        if !missing.is_empty() {
            return Err(CredentialLoadError::Missing { source_name: source_name.to_owned(), names: missing });
        }
        let reflections = Reflections::new(entries.iter().map(|e| (placeholder(&e.credential.name), e.value.as_str())));
        Ok(Self { entries, absent, reflections: std::sync::Arc::new(reflections) })
    }

    /// Credentials the policy declares that were not provided (and are not required).
    pub fn absent(&self) -> &[String] {
        &self.absent
    }

    /// What responses are scanned for: every value, each replaced by its placeholder.
    pub fn reflections(&self) -> std::sync::Arc<Reflections> {
        self.reflections.clone()
    }

    /// The credential names, in policy order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.credential.name.as_str())
    }

    /// How many credentials the store holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds no credential.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether credential `name` exists and may be sent to `host`.
    pub fn is_bound(&self, name: &str, host: &str) -> bool {
        self.bound_value(name, host).is_some()
    }

    /// Whether any credential may be sent to `host` (so `host` may hold a value it was sent).
    pub fn any_bound_to(&self, host: &str) -> bool {
        self.entries.iter().any(|e| e.credential.is_bound_to(host))
    }

    /// Whether `text` contains the value of any credential (to keep values that hide under other
    /// names out of the agent's environment). Never says which.
    pub fn appears_in(&self, text: &[u8]) -> bool {
        self.entries.iter().any(|e| {
            let v = e.value.as_bytes();
            !v.is_empty() && text.windows(v.len()).any(|w| w == v)
        })
    }

    /// The value of `name` if it exists and may be sent to `host`.
    pub(super) fn bound_value(&self, name: &str, host: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.credential.name == name && e.credential.is_bound_to(host))
            .map(|e| e.value.as_str())
    }
}

/// Refuses a value that is empty or holds a control character (CR, LF, NUL, TAB, DEL, ...).
fn check_value(name: &str, value: &str) -> Result<(), CredentialLoadError> {
    if value.is_empty() {
        return Err(CredentialLoadError::Empty { credential: name.to_owned() });
    }
    if value.chars().any(char::is_control) {
        return Err(CredentialLoadError::ControlCharacter { credential: name.to_owned() });
    }
    if value.chars().count() < MIN_VALUE_LEN {
        return Err(CredentialLoadError::TooShort { credential: name.to_owned() });
    }
    Ok(())
}

/// Whether `name` matches `[A-Za-z_][A-Za-z0-9_]*`.
pub(super) fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "ghp_s3cr3tVALUE";

    fn cred(name: &str, hosts: &[&str]) -> Credential {
        Credential {
            name: name.to_owned(),
            hosts: hosts.iter().map(|h| h.parse().unwrap_or_else(|e| panic!("{h}: {e}"))).collect(),
            required: true,
        }
    }

    fn assert_no_secret(err: &CredentialLoadError, secret: &str) {
        assert!(!err.to_string().contains(secret), "Display: {err}");
        assert!(!format!("{err:?}").contains(secret), "Debug: {err:?}");
    }

    #[test]
    fn file_with_comments_blank_lines_and_crlf() {
        let creds = [cred("GITHUB_TOKEN", &["github.com"]), cred("NPM", &[])];
        let text = format!("# tokens\n\n  GITHUB_TOKEN={SECRET}\r\nNPM= a=b c d \nUNUSED=x\n");
        let store = SecretStore::from_file_text(&creds, "creds", &text).expect("loads");
        assert_eq!(store.names().collect::<Vec<_>>(), ["GITHUB_TOKEN", "NPM"]);
        assert_eq!(store.bound_value("GITHUB_TOKEN", "github.com"), Some(SECRET));
        assert_eq!(store.bound_value("GITHUB_TOKEN", "api.github.com"), None);
        assert_eq!(store.bound_value("NPM", "github.com"), None);
        assert_eq!(store.entries[1].value.as_str(), " a=b c d ");
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn debug_lists_names_only() {
        let creds = [cred("GITHUB_TOKEN", &["github.com"])];
        let store = SecretStore::from_file_text(&creds, "f", &format!("GITHUB_TOKEN={SECRET}")).expect("loads");
        let debug = format!("{store:?}");
        assert!(debug.contains("GITHUB_TOKEN"), "{debug}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!format!("{store:#?}").contains(SECRET));
    }

    #[test]
    fn malformed_lines_name_the_line_not_the_value() {
        let creds = [cred("GITHUB_TOKEN", &["github.com"])];
        let cases = [
            (format!("# ok\n{SECRET}\n"), 2, MalformedLine::MissingEquals),
            (format!("GITHUB_TOKEN=x\n{SECRET}-x={SECRET}\n"), 2, MalformedLine::InvalidName),
            (format!("1{SECRET}={SECRET}"), 1, MalformedLine::InvalidName),
            (format!("={SECRET}"), 1, MalformedLine::InvalidName),
            (format!("GITHUB_TOKEN = {SECRET}"), 1, MalformedLine::InvalidName),
        ];
        for (text, line_no, expected) in cases {
            let err = SecretStore::from_file_text(&creds, "creds.env", &text).expect_err("malformed");
            match &err {
                CredentialLoadError::Malformed { line, reason, .. } => {
                    assert_eq!((*line, *reason), (line_no, expected), "{text:?}");
                }
                other => panic!("{other}"),
            }
            assert!(err.to_string().contains(&format!("line {line_no}")), "{err}");
            assert_no_secret(&err, SECRET);
        }
        let err = SecretStore::from_file_text(&creds, "f", &format!("GITHUB_TOKEN={SECRET}\nGITHUB_TOKEN={SECRET}2\n"))
            .expect_err("duplicate");
        assert!(matches!(&err, CredentialLoadError::Duplicate { line: 2, name, .. } if name == "GITHUB_TOKEN"));
        assert_no_secret(&err, SECRET);
    }

    #[test]
    fn control_characters_are_refused_at_load() {
        let creds = [cred("TOKEN", &["example.com"])];
        for bad in ["abc\rdef", "abc\0def", "abc\u{7f}", "abc\tdef", "abc\u{1b}[0m"] {
            let text = format!("TOKEN={bad}");
            let err = SecretStore::from_file_text(&creds, "f", &text).expect_err("refused");
            assert!(
                matches!(&err, CredentialLoadError::ControlCharacter { credential } if credential == "TOKEN"),
                "{err:?}"
            );
            assert_no_secret(&err, "abc");
        }
        // LF cannot sit in a file value (it ends the line), but can in the environment; the
        // check is the same function.
        let err = check_value("TOKEN", "ghp_x\nInjected: yes").expect_err("LF refused");
        assert!(matches!(err, CredentialLoadError::ControlCharacter { .. }));
        assert_no_secret(&err, "ghp_x");
    }

    #[test]
    fn missing_and_empty_credentials_fail_closed() {
        let creds = [cred("A_TOKEN", &["a.com"]), cred("B_TOKEN", &["b.com"]), cred("C_TOKEN", &["c.com"])];
        let err = SecretStore::from_file_text(&creds, "f", "B_TOKEN=xxxxxxxxx").expect_err("missing");
        match &err {
            CredentialLoadError::Missing { names, .. } => {
                assert_eq!(names, &["A_TOKEN", "C_TOKEN"])
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("A_TOKEN, C_TOKEN"), "{err}");
        let err = SecretStore::from_file_text(&creds[..1], "f", "A_TOKEN=").expect_err("empty");
        assert!(matches!(err, CredentialLoadError::Empty { .. }));
        let err = SecretStore::from_file_text(&creds[..1], "f", "A_TOKEN=tiny12").expect_err("too short");
        assert!(matches!(err, CredentialLoadError::TooShort { .. }), "{err}");
        assert_no_secret(&err, "tiny12");
    }

    #[test]
    fn an_absent_credential_that_is_not_required_is_skipped() {
        let optional = |name: &str| Credential { required: false, ..cred(name, &["a.com"]) };
        let creds = [optional("A_TOKEN"), cred("B_TOKEN", &["b.com"])];
        let store = SecretStore::from_file_text(&creds, "f", "B_TOKEN=xxxxxxxxx").expect("loads");
        assert_eq!(store.names().collect::<Vec<_>>(), ["B_TOKEN"]);
        assert_eq!(store.absent(), ["A_TOKEN"]);
    }

    #[test]
    fn environment_source() {
        let name = "LEASH_TEST_CREDENTIAL_THAT_IS_NEVER_SET_4b1d";
        let err = SecretStore::load(&[cred(name, &["x.com"])], SecretSource::Environment).expect_err("missing");
        assert!(err.to_string().contains("leash's environment"), "{err}");
        // PATH is always set for the test process.
        let store = SecretStore::from_env(&[cred("PATH", &["x.com"])]).expect("PATH");
        assert!(store.is_bound("PATH", "x.com"));
        assert!(SecretStore::from_env(&[]).expect("nothing declared").is_empty());
    }

    #[test]
    fn file_source_reads_and_reports_lines() {
        let dir = std::env::temp_dir().join(format!("leash-cred-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let good = dir.join("good.env");
        std::fs::write(&good, format!("TOKEN={SECRET}\n")).expect("write");
        let creds = [cred("TOKEN", &["example.com"])];
        let store = SecretStore::load(&creds, SecretSource::File(&good)).expect("loads");
        assert!(store.is_bound("TOKEN", "example.com"));
        let bad = dir.join("bad.env");
        let mut bytes = format!("# c\nTOKEN={SECRET}\nX=").into_bytes();
        bytes.push(0xff);
        std::fs::write(&bad, bytes).expect("write");
        let err = SecretStore::from_file(&creds, &bad).expect_err("not utf-8");
        assert!(matches!(err, CredentialLoadError::NotUtf8 { line: 3, .. }), "{err:?}");
        assert_no_secret(&err, SECRET);
        let err = SecretStore::from_file(&creds, &dir.join("absent.env")).expect_err("absent");
        assert!(matches!(err, CredentialLoadError::Read { .. }));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn variable_names() {
        for ok in ["A", "_", "GITHUB_TOKEN", "a1_b"] {
            assert!(is_variable_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "Ä"] {
            assert!(!is_variable_name(bad), "{bad}");
        }
    }
}
