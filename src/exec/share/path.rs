//! Paths that come from the guest, and how the host follows them.
//!
//! A guest-supplied path is accepted only as a list of single, plain
//! components (no `/` inside one, no `.` or `..`, no NUL, not empty), and it
//! is only ever resolved one component at a time from a directory handle on
//! the share root, each component opened as a real directory without
//! following a symlink (`cap-std` handles plus `O_NOFOLLOW`). So nothing the
//! guest names can lead outside the share, whatever the share holds.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;

/// Longest path accepted (Linux's PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// Longest name accepted (Linux's NAME_MAX).
pub const NAME_MAX: usize = 255;

/// A relative path inside a share, made of validated components.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelPath(Vec<OsString>);

impl RelPath {
    /// Parses `a/b/c` (no leading `/`; one trailing `/` only if
    /// `trailing_slash` allows it, as tar writes directories).
    pub fn parse(bytes: &[u8], trailing_slash: bool) -> Result<Self, &'static str> {
        if bytes.is_empty() {
            return Err("the name is empty");
        }
        if bytes.len() > PATH_MAX {
            return Err("the name is longer than 4096 bytes");
        }
        if bytes.contains(&0) {
            return Err("the name contains a NUL byte");
        }
        if bytes[0] == b'/' {
            return Err("the name is an absolute path");
        }
        let body = match bytes.strip_suffix(b"/") {
            Some(b) if trailing_slash => b,
            Some(_) => return Err("the name ends with '/' but is not a directory"),
            None => bytes,
        };
        let mut parts = Vec::new();
        for c in body.split(|&b| b == b'/') {
            match c {
                b"" => return Err("the name has an empty component ('//')"),
                b"." | b".." => return Err("the name has a '.' or '..' component"),
                c if c.len() > NAME_MAX => {
                    return Err("the name has a component longer than 255 bytes")
                }
                c => parts.push(OsStr::from_bytes(c).to_os_string()),
            }
        }
        Ok(Self(parts))
    }

    pub fn components(&self) -> &[OsString] {
        &self.0
    }

    /// The last component.
    pub fn name(&self) -> &OsStr {
        self.0.last().map_or(OsStr::new(""), |n| n.as_os_str())
    }

    /// The components before the last.
    pub fn parent(&self) -> &[OsString] {
        &self.0[..self.0.len().saturating_sub(1)]
    }

    pub fn depth(&self) -> usize {
        self.0.len()
    }

    /// `a/b/c` as bytes (the key the pack-time list uses).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(b'/');
            }
            out.extend_from_slice(c.as_bytes());
        }
        out
    }

    /// For messages only.
    pub fn to_path(&self) -> PathBuf {
        self.0.iter().collect()
    }

    pub fn join(&self, name: &OsStr) -> Self {
        let mut v = self.0.clone();
        v.push(name.to_os_string());
        Self(v)
    }

    pub fn empty() -> Self {
        Self(Vec::new())
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_path())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            Path::new(OsStr::from_bytes(&self.to_bytes())).display()
        )
    }
}

/// Opens `components` below `root` one at a time, each as a real directory
/// (a symlink anywhere on the way fails with ELOOP/ENOTDIR).
pub fn open_dirs(root: &Dir, components: &[OsString]) -> io::Result<Dir> {
    let mut dir = root.try_clone()?;
    for c in components {
        dir = dir.open_dir_nofollow(c)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_components() {
        let ok = RelPath::parse(b"a/b c/d", false).unwrap();
        assert_eq!(ok.depth(), 3);
        assert_eq!(ok.to_bytes(), b"a/b c/d");
        assert_eq!(ok.name(), "d");
        assert_eq!(RelPath::parse(b"dir/", true).unwrap().to_bytes(), b"dir");
        let long = vec![b'x'; 256];
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"a/./b",
            b"a//b",
            b"..",
            b".",
            b"a\0b",
            b"dir/",
            &long,
        ] {
            assert!(RelPath::parse(bad, false).is_err(), "{bad:?} accepted");
        }
        assert!(RelPath::parse(&[b'a'; 4097], false).is_err());
    }
}
