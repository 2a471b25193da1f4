//! Validated MooseFS paths and names. A path is parsed once at the edge into
//! [`MfsPath`]: components of 1..=255 bytes without NUL or `/`, never `.` or
//! `..`, so nothing below can escape the exported root.

use std::fmt;

use crate::error::MfsError;
use crate::proto::MAX_NAME_LEN;

/// One validated path component.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Name(String);

impl Name {
    pub fn parse(name: &str) -> Result<Self, MfsError> {
        let bad = |reason: &str| MfsError::InvalidPath {
            path: name.to_string(),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(bad("empty name"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad(&format!(
                "name is {} bytes, the limit is {MAX_NAME_LEN}",
                name.len()
            )));
        }
        if name.contains('\0') {
            return Err(bad("name contains a NUL byte"));
        }
        if name.contains('/') {
            return Err(bad("name contains '/'"));
        }
        if name == "." || name == ".." {
            return Err(bad("'.' and '..' are not allowed"));
        }
        Ok(Name(name.to_string()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A path below the exported root: a list of validated components
/// (empty = the root itself). `a/b` and `/a/b` are the same path; repeated
/// slashes are ignored; `.` and `..` are rejected, never resolved.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct MfsPath {
    components: Vec<Name>,
}

impl MfsPath {
    pub fn root() -> Self {
        MfsPath::default()
    }

    pub fn parse(path: &str) -> Result<Self, MfsError> {
        if path.contains('\0') {
            return Err(MfsError::InvalidPath {
                path: path.replace('\0', "\\0"),
                reason: "path contains a NUL byte".into(),
            });
        }
        let mut components = Vec::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let name = Name::parse(part).map_err(|e| match e {
                MfsError::InvalidPath { reason, .. } => MfsError::InvalidPath {
                    path: path.to_string(),
                    reason: format!("component {part:?}: {reason}"),
                },
                other => other,
            })?;
            components.push(name);
        }
        Ok(MfsPath { components })
    }

    pub fn components(&self) -> &[Name] {
        &self.components
    }

    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The parent path and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(MfsPath, &Name)> {
        let (last, parent) = self.components.split_last()?;
        Some((
            MfsPath {
                components: parent.to_vec(),
            },
            last,
        ))
    }

    pub fn file_name(&self) -> Option<&Name> {
        self.components.last()
    }

    pub fn join(&self, name: &Name) -> MfsPath {
        let mut components = self.components.clone();
        components.push(name.clone());
        MfsPath { components }
    }
}

impl fmt::Display for MfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.components.is_empty() {
            return f.write_str("/");
        }
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MfsPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MfsPath({self})")
    }
}

impl std::str::FromStr for MfsPath {
    type Err = MfsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MfsPath::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_slashes() {
        let p = MfsPath::parse("//a///b/").unwrap();
        assert_eq!(p.to_string(), "/a/b");
        assert_eq!(MfsPath::parse("a/b").unwrap(), p);
        assert!(MfsPath::parse("/").unwrap().is_root());
    }

    #[test]
    fn rejects_escapes_and_bad_names() {
        for bad in ["/a/../b", "..", "/a/./b", "a\0b"] {
            assert!(
                matches!(MfsPath::parse(bad), Err(MfsError::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
        let long = format!("/x/{}", "n".repeat(256));
        assert!(matches!(
            MfsPath::parse(&long),
            Err(MfsError::InvalidPath { .. })
        ));
        assert!(MfsPath::parse(&format!("/x/{}", "n".repeat(255))).is_ok());
    }

    #[test]
    fn split_last_gives_parent() {
        let p = MfsPath::parse("/a/b/c").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!(parent.to_string(), "/a/b");
        assert_eq!(name.as_str(), "c");
        assert!(MfsPath::root().split_last().is_none());
    }
}
