//! Applying checked changes ([`Layout`]) to the shares on the host.
//!
//! Everything is done through a directory handle on the share root, one
//! path component at a time, never following a symlink ([`open_dirs`]):
//! 1. stage: file data and symlinks are written into a fresh hidden
//!    directory in the share root (random name, created with mkdir, which
//!    fails rather than reuse anything that exists; files inside created
//!    with `O_EXCL`), holes for zero blocks, modes masked to 0o777;
//! 2. commit: what the guest deleted goes (only what was there when
//!    packed, unchanged since, directories only once empty), then each
//!    entry is renamed into place, parents first; directory modes last;
//! 3. the staging directory is removed, also after an error.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{FileTimes, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, DirBuilder, DirBuilderExt, OpenOptions, OpenOptionsExt};

use super::archive::{Kind, Layout, Plan, Upper};
use super::pack::{Ident, Snapshot};
use super::path::open_dirs;
use super::ShareError;

/// Zero blocks of this size become holes.
const BLOCK: usize = 4096;

/// A random name for the staging directory: 128 bits from the kernel.
fn random_name() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(".kvmini-staging-{hex}"))
}

/// The hidden directory in a share root where changes wait to be applied.
pub struct Staging {
    name: OsString,
    dir: Dir,
    /// Upper entry index -> staged name.
    staged: HashMap<usize, String>,
}

impl Staging {
    pub fn create(root: &Dir) -> io::Result<Self> {
        let name = OsString::from(random_name()?);
        let mut builder = DirBuilder::new();
        builder.mode(0o700);
        root.create_dir_with(&name, &builder)?;
        let dir = root.open_dir_nofollow(&name)?;
        Ok(Self {
            name,
            dir,
            staged: HashMap::new(),
        })
    }

    fn next_name(&self) -> String {
        self.staged.len().to_string()
    }

    fn file(
        &mut self,
        idx: usize,
        data: impl Read,
        (mode, size, mtime): (u32, u64, u64),
    ) -> io::Result<()> {
        let name = self.next_name();
        let mut opts = OpenOptions::new();
        opts.write(true)
            .create_new(true)
            .mode(0o600)
            .follow(FollowSymlinks::No);
        let mut f = self.dir.open_with(&name, &opts)?.into_std();
        write_sparse(data, &mut f, size)?;
        f.set_permissions(Permissions::from_mode(mode & 0o777))?;
        let when = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(mtime))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        f.set_times(FileTimes::new().set_modified(when))?;
        self.staged.insert(idx, name);
        Ok(())
    }

    fn symlink(&mut self, idx: usize, target: &[u8]) -> io::Result<()> {
        let name = self.next_name();
        self.dir
            .symlink_contents(OsStr::from_bytes(target), &name)?;
        self.staged.insert(idx, name);
        Ok(())
    }

    fn link(&mut self, idx: usize, to: usize) -> io::Result<()> {
        let name = self.next_name();
        let src = self.staged.get(&to).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "hard link to a file not staged")
        })?;
        self.dir.hard_link(src, &self.dir, &name)?;
        self.staged.insert(idx, name);
        Ok(())
    }

    /// Removes the staging directory and what is left in it (only files
    /// and symlinks this module made).
    pub fn remove(self, root: &Dir) -> io::Result<()> {
        for e in self.dir.entries()? {
            self.dir.remove_file_or_symlink(e?.file_name())?;
        }
        root.remove_dir(&self.name)
    }
}

/// Copies `size` bytes from `data` into `f`, seeking over zero blocks.
fn write_sparse(mut data: impl Read, f: &mut std::fs::File, size: u64) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut done = 0u64;
    loop {
        let n = data.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for chunk in buf[..n].chunks(BLOCK) {
            if chunk.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(chunk.len() as i64))?;
            } else {
                f.write_all(chunk)?;
            }
        }
        done += n as u64;
    }
    if done != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the archive entry ended after {done} of {size} bytes"),
        ));
    }
    f.set_len(size)
}

/// Writes every staged entry of `layout` into the stagings (one per plan,
/// same order), reading file data from the archive.
pub fn stage(archive: &Path, layout: &Layout, stagings: &mut [Staging]) -> Result<(), ShareError> {
    let stream = |e| ShareError::Stream(archive.to_path_buf(), e);
    let mut ar = tar::Archive::new(std::fs::File::open(archive).map_err(stream)?);
    for (ordinal, entry) in ar.entries_with_seek().map_err(stream)?.enumerate() {
        let entry = entry.map_err(stream)?;
        let Some(&(s, idx)) = layout.files.get(&ordinal) else {
            continue;
        };
        let upper = &layout.plans[s].uppers[idx];
        if let Kind::File { mode, size, mtime } = upper.kind {
            stagings[s]
                .file(idx, entry, (mode, size, mtime))
                .map_err(|e| ShareError::Stage(upper.path.to_path(), e))?;
        }
    }
    for (plan, staging) in layout.plans.iter().zip(stagings.iter_mut()) {
        for (idx, u) in plan.uppers.iter().enumerate() {
            let done = match &u.kind {
                Kind::Symlink { target } => staging.symlink(idx, target),
                Kind::Link { to } => staging.link(idx, *to),
                _ => Ok(()),
            };
            done.map_err(|e| ShareError::Stage(u.path.to_path(), e))?;
        }
    }
    Ok(())
}

/// What a commit did.
#[derive(Debug, Default)]
pub struct Applied {
    pub written: usize,
    pub deleted: usize,
    /// Changes not made because the host changed the same path during the
    /// run, with why.
    pub kept: Vec<String>,
    pub failed: Vec<(String, io::Error)>,
}

/// Applies one share's plan: deletions, staged entries, directory modes.
pub fn commit(root: &Dir, before: &Snapshot, plan: &Plan, staging: &Staging) -> Applied {
    let mut out = Applied::default();
    let mut gone: Vec<_> = before
        .entries
        .iter()
        .zip(&plan.present)
        .filter(|(_, present)| !**present)
        .map(|(b, _)| b)
        .collect();
    gone.sort_by_key(|b| Reverse(b.path.depth()));
    for b in gone {
        if let Err(e) = delete(root, &b.path, b.ident, &mut out) {
            out.failed.push((format!("deleting {}", b.path), e));
        }
    }
    for (idx, u) in plan.uppers.iter().enumerate() {
        if let Err(e) = put(root, staging, idx, u, &mut out) {
            out.failed.push((u.path.to_string(), e));
        }
    }
    let mut dirs: Vec<_> = plan
        .uppers
        .iter()
        .filter_map(|u| match u.kind {
            Kind::Dir { mode } => Some((u, mode)),
            _ => None,
        })
        .collect();
    dirs.sort_by_key(|(u, _)| Reverse(u.path.depth()));
    for (u, mode) in dirs {
        if let Err(e) = dir_mode(root, u, mode) {
            out.failed.push((format!("mode of {}", u.path), e));
        }
    }
    out
}

fn not_found(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
}

/// Deletes what the guest deleted, if it is still what was packed.
fn delete(
    root: &Dir,
    path: &super::path::RelPath,
    ident: Option<Ident>,
    out: &mut Applied,
) -> io::Result<()> {
    // A parent that is gone or no longer a directory: nothing to delete.
    let Ok(parent) = open_dirs(root, path.parent()) else {
        return Ok(());
    };
    let name = path.name();
    let m = match parent.symlink_metadata(name) {
        Ok(m) => m,
        Err(e) if not_found(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    match ident {
        None if m.is_dir() => match parent.remove_dir(name) {
            Ok(()) => out.deleted += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => out.kept.push(format!(
                "{path}: deleted in the guest, but it holds files made on the host during the run"
            )),
            Err(e) => return Err(e),
        },
        Some(id) if !m.is_dir() && Ident::of(&m) == id => {
            parent.remove_file_or_symlink(name)?;
            out.deleted += 1;
        }
        _ => out.kept.push(format!(
            "{path}: deleted in the guest, but changed on the host during the run"
        )),
    }
    Ok(())
}

/// Puts one upper entry in place: a directory is made (replacing a
/// non-directory), anything else renamed from the staging directory.
fn put(root: &Dir, staging: &Staging, idx: usize, u: &Upper, out: &mut Applied) -> io::Result<()> {
    let parent = open_dirs(root, u.path.parent())?;
    let name = u.path.name();
    let existing = match parent.symlink_metadata(name) {
        Ok(m) => Some(m),
        Err(e) if not_found(&e) => None,
        Err(e) => return Err(e),
    };
    if let Kind::Dir { .. } = u.kind {
        match existing {
            Some(m) if m.is_dir() => return Ok(()),
            Some(_) => parent.remove_file_or_symlink(name)?,
            None => {}
        }
        let mut builder = DirBuilder::new();
        builder.mode(0o700);
        parent.create_dir_with(name, &builder)?;
        out.written += 1;
        return Ok(());
    }
    if existing.is_some_and(|m| m.is_dir()) {
        if let Err(e) = parent.remove_dir(name) {
            if e.raw_os_error() == Some(libc::ENOTEMPTY) {
                out.kept.push(format!(
                    "{}: replaced by a file in the guest, but the directory holds files \
                     made on the host during the run",
                    u.path
                ));
                return Ok(());
            }
            return Err(e);
        }
    }
    let staged = staging
        .staged
        .get(&idx)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not staged"))?;
    staging.dir.rename(staged, &parent, name)?;
    out.written += 1;
    Ok(())
}

/// Sets a directory's mode through a handle opened without following a
/// symlink.
fn dir_mode(root: &Dir, u: &Upper, mode: u32) -> io::Result<()> {
    let parent = open_dirs(root, u.path.parent())?;
    let mut opts = OpenOptions::new();
    opts.read(true)
        .custom_flags(libc::O_DIRECTORY)
        .follow(FollowSymlinks::No);
    let d = parent.open_with(u.path.name(), &opts)?.into_std();
    d.set_permissions(Permissions::from_mode(mode & 0o777))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_blocks_become_holes() {
        let t = super::super::tests::dir();
        let p = t.as_path().join("f");
        let mut data = vec![0u8; 1 << 20];
        data[5000] = 1;
        let mut f = std::fs::File::create(&p).unwrap();
        write_sparse(&data[..], &mut f, data.len() as u64).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&p).unwrap();
        assert!(m.blocks() * 512 < 64 << 10, "{} blocks", m.blocks());
        let mut f = std::fs::File::create(&p).unwrap();
        let e = write_sparse(&data[..10], &mut f, 20).unwrap_err();
        assert!(e.to_string().contains("ended after 10 of 20"), "{e}");
    }

    #[test]
    fn staging_names_are_random_and_fresh() {
        let t = super::super::tests::dir();
        let root = Dir::open_ambient_dir(t.as_path(), cap_std::ambient_authority()).unwrap();
        let (a, b) = (
            Staging::create(&root).unwrap(),
            Staging::create(&root).unwrap(),
        );
        assert_ne!(a.name, b.name);
        assert!(a.name.to_string_lossy().starts_with(".kvmini-staging-"));
        a.remove(&root).unwrap();
        b.remove(&root).unwrap();
        assert_eq!(std::fs::read_dir(t.as_path()).unwrap().count(), 0);
    }
}
