//! [`RelPath`]: a path from the wire, checked once so every later step can trust it.
//!
//! Names are bytes, not strings: Linux file names need not be UTF-8 and a copy must keep them
//! exactly. What a name may not be is whatever could move a walk out of the root ("..", a
//! leading '/'), or could never be a single directory entry ("", ".", '/', NUL).

use std::fmt;

/// The longest single component Linux accepts (`NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// The longest whole path accepted from the wire (`PATH_MAX`). Operations walk one component
/// at a time, so this is a sanity bound on what a peer may send, not an OS limit.
pub const MAX_PATH: usize = 4096;
/// The first component the receiver keeps for itself (staging data lives under it).
pub const RESERVED: &[u8] = b".haul";

/// Why a path was refused. Each message says what was wrong and why it matters.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum PathError {
    /// The path starts with '/'.
    #[error(
        "the path is absolute (starts with '/'): only paths relative to the receiver's root are accepted"
    )]
    Absolute,
    /// Two '/' in a row, or a trailing '/'.
    #[error("the path has an empty component ('//' or a trailing '/'), which names no file")]
    EmptyComponent,
    /// A "." component.
    #[error("the path has a '.' component, which names no file of its own")]
    Dot,
    /// A ".." component.
    #[error("the path has a '..' component, which could climb out of the receiver's root")]
    DotDot,
    /// A NUL byte.
    #[error("the path contains a NUL byte, which no file name can hold")]
    Nul,
    /// A single name (given to [`RelPath::push`]) contains '/'.
    #[error("the name contains '/', so it is not a single file name")]
    Slash,
    /// One component is longer than 255 bytes.
    #[error("a path component is {len} bytes long: file names are limited to {MAX_NAME} bytes")]
    NameTooLong {
        /// Length of the offending component in bytes.
        len: usize,
    },
    /// The whole path is longer than 4096 bytes.
    #[error("the path is {len} bytes long: paths are limited to {MAX_PATH} bytes")]
    PathTooLong {
        /// Length of the whole path in bytes.
        len: usize,
    },
    /// The first component is `.haul`.
    #[error(
        "the path starts with '.haul', which the receiver reserves for its staging data: rename it on the source"
    )]
    Reserved,
}

/// A validated relative path: components are arbitrary bytes (not necessarily UTF-8) except
/// they are never empty, ".", "..", and contain no '/' or NUL. The first component is never
/// `.haul`. The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct RelPath {
    /// The components joined by '/'; empty for the root. Kept joined so that a parent is a
    /// prefix slice, which lets the directory cache look ancestors up without allocating.
    bytes: Vec<u8>,
}

/// Checks one component. `first` is whether it would be the path's first component.
fn check_name(name: &[u8], first: bool) -> Result<(), PathError> {
    match name {
        b"" => return Err(PathError::EmptyComponent),
        b"." => return Err(PathError::Dot),
        b".." => return Err(PathError::DotDot),
        _ => {}
    }
    if name.contains(&0) {
        return Err(PathError::Nul);
    }
    if name.len() > MAX_NAME {
        return Err(PathError::NameTooLong { len: name.len() });
    }
    if first && name == RESERVED {
        return Err(PathError::Reserved);
    }
    Ok(())
}

impl RelPath {
    /// Parses '/'-separated bytes from the wire. Empty input is the root itself.
    ///
    /// Rejects a leading '/', empty components ("a//b", a trailing '/'), ".", "..", NUL, a
    /// component longer than 255 bytes, a total longer than 4096 bytes, and a first component
    /// `.haul`.
    pub fn parse(bytes: &[u8]) -> Result<RelPath, PathError> {
        if bytes.is_empty() {
            return Ok(RelPath::root());
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute);
        }
        if bytes.len() > MAX_PATH {
            return Err(PathError::PathTooLong { len: bytes.len() });
        }
        for (i, name) in bytes.split(|&b| b == b'/').enumerate() {
            check_name(name, i == 0)?;
        }
        Ok(RelPath {
            bytes: bytes.to_vec(),
        })
    }

    /// The root itself: no components.
    pub fn root() -> RelPath {
        RelPath { bytes: Vec::new() }
    }

    /// Whether this is the root (no components).
    pub fn is_root(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `self` followed by `other`. Both are already valid, so the result is too, except that it
    /// may exceed 4096 bytes; that is harmless here because every operation walks one component
    /// at a time.
    pub fn join(&self, other: &RelPath) -> RelPath {
        if self.is_root() {
            return other.clone();
        }
        if other.is_root() {
            return self.clone();
        }
        let mut bytes = Vec::with_capacity(self.bytes.len() + 1 + other.bytes.len());
        bytes.extend_from_slice(&self.bytes);
        bytes.push(b'/');
        bytes.extend_from_slice(&other.bytes);
        RelPath { bytes }
    }

    /// Appends one name, with the same checks as [`RelPath::parse`] (and '/' refused).
    pub fn push(&mut self, name: &[u8]) -> Result<(), PathError> {
        if name.contains(&b'/') {
            return Err(PathError::Slash);
        }
        check_name(name, self.is_root())?;
        let len = self.bytes.len() + usize::from(!self.is_root()) + name.len();
        if len > MAX_PATH {
            return Err(PathError::PathTooLong { len });
        }
        if !self.is_root() {
            self.bytes.push(b'/');
        }
        self.bytes.extend_from_slice(name);
        Ok(())
    }

    /// The parent and the last name; `None` for the root.
    pub fn parent_and_name(&self) -> Option<(RelPath, &[u8])> {
        if self.is_root() {
            return None;
        }
        Some(match self.bytes.iter().rposition(|&b| b == b'/') {
            Some(slash) => (
                RelPath {
                    bytes: self.bytes[..slash].to_vec(),
                },
                &self.bytes[slash + 1..],
            ),
            None => (RelPath::root(), &self.bytes[..]),
        })
    }

    /// The components, first to last (none for the root).
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        // `split` on an empty slice yields one empty item; the root has no components.
        let skip_all = self.is_root();
        self.bytes.split(|&b| b == b'/').filter(move |_| !skip_all)
    }

    /// The '/'-joined bytes, as they travel on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// True when `self` is `base` or lies below it (whole components: `ab` is not below `a`).
    pub fn starts_with(&self, base: &RelPath) -> bool {
        self.strip_prefix(base).is_some()
    }

    /// `self` relative to `base`, when it is `base` (the root path) or lies below it.
    pub fn strip_prefix(&self, base: &RelPath) -> Option<RelPath> {
        if base.is_root() {
            return Some(self.clone());
        }
        let (me, b) = (self.as_bytes(), base.as_bytes());
        if me == b {
            return Some(RelPath::root());
        }
        let rest = me.strip_prefix(b)?.strip_prefix(b"/")?;
        RelPath::parse(rest).ok()
    }

    /// The joined bytes without copying (crate-internal, for cache look-ups).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lossy UTF-8, for messages only.
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `escape_ascii` keeps invalid UTF-8 and control bytes visible in logs.
        write!(f, "RelPath(\"{}\")", self.bytes.escape_ascii())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_and_name_splits_last_component() {
        let p = RelPath::parse(b"a/b/c").unwrap();
        let (parent, name) = p.parent_and_name().unwrap();
        assert_eq!(parent, RelPath::parse(b"a/b").unwrap());
        assert_eq!(name, b"c");
        let single = RelPath::parse(b"x").unwrap();
        let (parent, name) = single.parent_and_name().unwrap();
        assert!(parent.is_root());
        assert_eq!(name, b"x");
        assert!(RelPath::root().parent_and_name().is_none());
    }

    #[test]
    fn prefixes_are_whole_components() {
        let p = |s: &[u8]| RelPath::parse(s).unwrap();
        assert!(p(b"a/b").starts_with(&p(b"a")));
        assert!(p(b"a").starts_with(&p(b"a")));
        assert!(p(b"a").starts_with(&RelPath::root()));
        assert!(!p(b"ab").starts_with(&p(b"a")));
        assert!(!p(b"a").starts_with(&p(b"a/b")));
        assert_eq!(p(b"a/b/c").strip_prefix(&p(b"a")), Some(p(b"b/c")));
        assert_eq!(p(b"a").strip_prefix(&p(b"a")), Some(RelPath::root()));
    }

    #[test]
    fn components_of_root_is_empty() {
        assert_eq!(RelPath::root().components().count(), 0);
        let p = RelPath::parse(b"a/b").unwrap();
        assert_eq!(p.components().collect::<Vec<_>>(), vec![&b"a"[..], b"b"]);
    }
}
