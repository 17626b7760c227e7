//! What a share holds when the VM starts: every path in it (deletions are
//! judged against this list, so the host only ever deletes what was there
//! when it was packed) and what an image of it needs. The walk never follows
//! a symlink.

use std::collections::HashMap;
use std::ffi::OsString;

use cap_std::fs::{Dir, MetadataExt};

use super::path::{open_dirs, RelPath};

/// What identifies a non-directory as the very file that was packed, so one
/// the host replaced or changed during the run is not deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Ident {
    pub fn of(m: &cap_std::fs::Metadata) -> Self {
        Self {
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// One entry of the share as packed.
#[derive(Debug)]
pub struct Before {
    pub path: RelPath,
    /// `None` for a directory.
    pub ident: Option<Ident>,
}

/// The share as packed.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub entries: Vec<Before>,
    index: HashMap<Vec<u8>, usize>,
    /// Bytes and inodes a copy needs (4 KiB blocks, some metadata each).
    pub bytes: u64,
    pub inodes: u64,
}

impl Snapshot {
    /// The entry at `path` (`a/b/c`), if it was there when packed.
    pub fn find(&self, path: &[u8]) -> Option<usize> {
        self.index.get(path).copied()
    }

    fn push(&mut self, path: RelPath, ident: Option<Ident>) {
        self.index.insert(path.to_bytes(), self.entries.len());
        self.entries.push(Before { path, ident });
    }
}

/// Lists everything below `root`. Unreadable entries are left out (mke2fs
/// reports them; what is not listed is never deleted).
pub fn snapshot(root: &Dir) -> Snapshot {
    let mut s = Snapshot {
        inodes: 1,
        ..Snapshot::default()
    };
    let mut todo = vec![RelPath::empty()];
    while let Some(dir_path) = todo.pop() {
        let Ok(dir) = open_dirs(root, dir_path.components()) else {
            continue;
        };
        let Ok(entries) = dir.entries() else { continue };
        let mut names: Vec<OsString> = entries.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let Ok(m) = dir.symlink_metadata(&name) else {
                continue;
            };
            let path = dir_path.join(&name);
            s.inodes += 1;
            s.bytes += m.len().div_ceil(4096) * 4096 + 256;
            if m.is_dir() {
                todo.push(path.clone());
                s.push(path, None);
            } else {
                s.push(path, Some(Ident::of(&m)));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn lists_everything_without_following_symlinks() {
        let (a, b) = (super::super::tests::dir(), super::super::tests::dir());
        let root = a.as_path();
        fs::create_dir_all(root.join("d/e")).unwrap();
        fs::write(root.join("d/e/f"), "x").unwrap();
        fs::write(b.as_path().join("outside"), "o").unwrap();
        std::os::unix::fs::symlink(b.as_path(), root.join("link")).unwrap();
        let dir = Dir::open_ambient_dir(root, cap_std::ambient_authority()).unwrap();
        let s = snapshot(&dir);
        let mut paths: Vec<String> = s.entries.iter().map(|e| e.path.to_string()).collect();
        paths.sort();
        assert_eq!(paths, ["d", "d/e", "d/e/f", "link"]);
        assert!(s.find(b"d/e/f").is_some());
        assert!(s.find(b"link/outside").is_none());
        assert_eq!(s.inodes, 5);
    }
}
