//! Named API tokens for the HTTP API.
//!
//! Tokens are configured as `NAME:SHA256HEX` entries: the SHA-256 digest of
//! the token, never the token itself (`INGEST_API_TOKENS`, comma-separated,
//! and/or `INGEST_API_TOKENS_FILE`, one entry a line, `#` comments). The
//! legacy `INGEST_API_TOKEN` holds one plain token, named `default`, hashed on
//! load. A presented bearer token is hashed and compared with every configured
//! digest in constant time; the caller is then known by the token's name,
//! which is what the logs show.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Longest accepted token name.
const MAX_NAME_LEN: usize = 64;

/// A token's configuration problem. The messages never contain a token or a
/// configured entry (a plain token put there by mistake would leak).
#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("{origin}: entry {entry} is not NAME:SHA256HEX")]
    Malformed { origin: String, entry: usize },
    #[error("{origin}: entry {entry}: a token name has 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -")]
    BadName { origin: String, entry: usize },
    #[error(
        "{origin}: token {name:?}: the digest must be the SHA-256 of the token as 64 hex digits"
    )]
    BadDigest { origin: String, name: String },
    #[error("{origin}: token name {name:?} is configured twice")]
    DuplicateName { origin: String, name: String },
    #[error("{origin}: the token is empty")]
    EmptyToken { origin: String },
    #[error("cannot read the token file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One configured token: its name and the SHA-256 of its value.
#[derive(Clone)]
struct NamedToken {
    name: String,
    digest: [u8; 32],
}

/// The accepted tokens. Empty accepts nothing.
#[derive(Clone, Default)]
pub struct ApiTokens {
    tokens: Vec<NamedToken>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTokens")
            .field("names", &self.names().collect::<Vec<_>>())
            .finish()
    }
}

/// The SHA-256 of a token, as lowercase hex (what the configuration holds).
pub fn token_digest_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl ApiTokens {
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The names, in configuration order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(|t| t.name.as_str())
    }

    fn push(&mut self, origin: &str, name: &str, digest: [u8; 32]) -> Result<(), TokenConfigError> {
        if self.tokens.iter().any(|t| t.name == name) {
            return Err(TokenConfigError::DuplicateName {
                origin: origin.to_string(),
                name: name.to_string(),
            });
        }
        self.tokens.push(NamedToken {
            name: name.to_string(),
            digest,
        });
        Ok(())
    }

    /// Adds one `NAME:SHA256HEX` entry (the `entry`-th of `origin`, 1-based).
    fn add_entry(
        &mut self,
        origin: &str,
        entry: usize,
        text: &str,
    ) -> Result<(), TokenConfigError> {
        let (name, hex) =
            text.trim()
                .split_once(':')
                .ok_or_else(|| TokenConfigError::Malformed {
                    origin: origin.to_string(),
                    entry,
                })?;
        let (name, hex) = (name.trim(), hex.trim());
        if !valid_name(name) {
            return Err(TokenConfigError::BadName {
                origin: origin.to_string(),
                entry,
            });
        }
        let digest = parse_digest(hex).ok_or_else(|| TokenConfigError::BadDigest {
            origin: origin.to_string(),
            name: name.to_string(),
        })?;
        self.push(origin, name, digest)
    }

    /// Adds comma-separated `NAME:SHA256HEX` entries (empty entries skipped).
    pub fn add_list(&mut self, origin: &str, list: &str) -> Result<(), TokenConfigError> {
        for (i, entry) in list.split(',').enumerate() {
            if !entry.trim().is_empty() {
                self.add_entry(origin, i + 1, entry)?;
            }
        }
        Ok(())
    }

    /// Adds the entries of a file: one `NAME:SHA256HEX` a line; blank lines
    /// and lines starting with `#` are skipped.
    pub fn add_file(&mut self, path: &Path) -> Result<(), TokenConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let origin = path.display().to_string();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                self.add_entry(&origin, i + 1, line)?;
            }
        }
        Ok(())
    }

    /// Adds a plain token under `name` (it is hashed; the value is not kept).
    pub fn add_plain(
        &mut self,
        origin: &str,
        name: &str,
        token: &str,
    ) -> Result<(), TokenConfigError> {
        if token.trim().is_empty() {
            return Err(TokenConfigError::EmptyToken {
                origin: origin.to_string(),
            });
        }
        self.push(origin, name, Sha256::digest(token.as_bytes()).into())
    }

    /// The name of the token `presented` is, if any. Every configured digest
    /// is compared, each in constant time, so the time does not tell which
    /// one (or how much of one) matched.
    pub fn verify(&self, presented: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.digest.ct_eq(&digest)) {
                found = Some(token.name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[(&str, &str)]) -> String {
        entries
            .iter()
            .map(|(n, t)| format!("{n}:{}", token_digest_hex(t)))
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn tokens_are_known_by_name() {
        let mut tokens = ApiTokens::default();
        tokens
            .add_list(
                "INGEST_API_TOKENS",
                &list(&[("alice", "a-secret"), ("bob", "b-secret")]),
            )
            .unwrap();
        tokens
            .add_plain("INGEST_API_TOKEN", "default", "plain")
            .unwrap();
        assert_eq!(tokens.verify("a-secret"), Some("alice"));
        assert_eq!(tokens.verify("b-secret"), Some("bob"));
        assert_eq!(tokens.verify("plain"), Some("default"));
        for wrong in ["a-secreT", "a-secret ", "", &token_digest_hex("a-secret")] {
            assert_eq!(tokens.verify(wrong), None, "{wrong:?}");
        }
        assert_eq!(
            tokens.names().collect::<Vec<_>>(),
            ["alice", "bob", "default"]
        );
    }

    #[test]
    fn bad_entries_are_refused_without_echoing_them() {
        let digest = token_digest_hex("x");
        for bad in [
            "alice".to_string(),
            "alice:zz".to_string(),
            format!("alice:{}", &digest[..63]),
            format!("bad name:{digest}"),
            format!(":{digest}"),
            format!("{}:{digest}", "n".repeat(65)),
            format!("a:{digest},a:{digest}"),
        ] {
            let err = ApiTokens::default().add_list("T", &bad).unwrap_err();
            assert!(!err.to_string().contains(&digest), "{err}");
        }
        let err = ApiTokens::default()
            .add_plain("T", "default", " ")
            .unwrap_err();
        assert!(matches!(err, TokenConfigError::EmptyToken { .. }));
    }

    #[test]
    fn uppercase_digests_and_blank_entries_are_fine() {
        let mut tokens = ApiTokens::default();
        tokens
            .add_list(
                "T",
                &format!(" a:{} ,,", token_digest_hex("t").to_uppercase()),
            )
            .unwrap();
        assert_eq!(tokens.verify("t"), Some("a"));
        assert_eq!(tokens.len(), 1);
    }
}
