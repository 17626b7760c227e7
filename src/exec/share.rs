//! `--share HOST:GUEST[:ro]`: a host directory made visible in the guest.
//!
//! kvmini's devices are virtio-blk, net and console, so a share travels as
//! a disk: the directory is packed into a sparse ext4 image
//! (`mke2fs -d`, no journal, so what the guest syncs is in place for a
//! reader that does not replay journals), attached as a virtio-blk disk and
//! mounted at GUEST. When the command has finished and the guest has
//! unmounted it, a writable share's image is read back with `debugfs
//! rdump` and every file the guest created or changed is copied into HOST
//! (deletions are not carried back: a crashed or misbehaving guest must not
//! be able to empty a host directory). Both tools come with e2fsprogs.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

/// A parsed `--share`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    pub host: PathBuf,
    pub guest: String,
    pub readonly: bool,
}

#[derive(Debug)]
pub enum ShareError {
    Syntax(String, &'static str),
    NotADirectory(PathBuf, String),
    Tool(&'static str, io::Error),
    ToolFailed(&'static str, PathBuf, String),
    Image(PathBuf, io::Error),
    CopyBack(PathBuf, io::Error),
}

impl fmt::Display for ShareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(s, why) => write!(f, "invalid --share '{s}': {why} (use HOST:GUEST[:ro])"),
            Self::NotADirectory(p, e) => {
                write!(
                    f,
                    "--share: '{}' is not a usable directory: {e}",
                    p.display()
                )
            }
            Self::Tool(tool, e) => write!(
                f,
                "--share needs `{tool}` from e2fsprogs, which could not run ({e}); \
                 install it: apt-get install e2fsprogs"
            ),
            Self::ToolFailed(tool, p, out) => {
                write!(
                    f,
                    "--share '{}': {tool} failed: {}",
                    p.display(),
                    out.trim()
                )
            }
            Self::Image(p, e) => write!(f, "cannot create the share image '{}': {e}", p.display()),
            Self::CopyBack(p, e) => write!(
                f,
                "cannot copy the guest's changes back into '{}': {e}",
                p.display()
            ),
        }
    }
}

impl std::error::Error for ShareError {}

impl ShareSpec {
    pub fn parse(s: &str) -> Result<Self, ShareError> {
        let err = |why| ShareError::Syntax(s.to_string(), why);
        let (rest, readonly) = match s.rsplit_once(':') {
            Some((rest, "ro")) => (rest, true),
            Some((rest, "rw")) => (rest, false),
            _ => (s, false),
        };
        let (host, guest) = rest
            .rsplit_once(':')
            .ok_or_else(|| err("no ':' between HOST and GUEST"))?;
        if host.is_empty() {
            return Err(err("HOST is empty"));
        }
        let gpath = Path::new(guest);
        if !gpath.is_absolute() || guest == "/" {
            return Err(err("GUEST must be an absolute path other than /"));
        }
        if gpath
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(err("GUEST must not contain . or .."));
        }
        if guest.contains(['\n', '\0']) {
            return Err(err("GUEST must not contain newlines"));
        }
        let host = PathBuf::from(host);
        let meta = fs::metadata(&host)
            .map_err(|e| ShareError::NotADirectory(host.clone(), e.to_string()))?;
        if !meta.is_dir() {
            return Err(ShareError::NotADirectory(host, "not a directory".into()));
        }
        Ok(Self {
            host,
            guest: guest.trim_end_matches('/').to_string(),
            readonly,
        })
    }
}

/// Bytes and inodes a copy of `dir` needs (4 KiB blocks, a little metadata
/// per inode). Unreadable entries are skipped: mke2fs reports them.
fn usage(dir: &Path) -> (u64, u64) {
    let (mut bytes, mut inodes) = (0u64, 1u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            inodes += 1;
            bytes += m.len().div_ceil(4096) * 4096 + 256;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// Packs `spec.host` into a new sparse ext4 image at `image`. A writable
/// share gets room to grow (1 GiB or its own size more, whichever is
/// bigger); the file is sparse, so unused room costs nothing.
pub fn make_image(spec: &ShareSpec, image: &Path) -> Result<(), ShareError> {
    let (bytes, inodes) = usage(&spec.host);
    let room = if spec.readonly { 0 } else { bytes.max(1 << 30) };
    let size = (bytes + bytes / 4 + (64 << 20) + room).div_ceil(1 << 20) << 20;
    let inodes = inodes + inodes / 4 + if spec.readonly { 1024 } else { 65536 };
    let f = fs::File::create(image).map_err(|e| ShareError::Image(image.to_path_buf(), e))?;
    f.set_len(size)
        .map_err(|e| ShareError::Image(image.to_path_buf(), e))?;
    drop(f);
    let out = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
        ])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(&spec.host)
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ShareError::Tool("mke2fs", e))?;
    if !out.status.success() {
        return Err(ShareError::ToolFailed(
            "mke2fs",
            spec.host.clone(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// Copies what the guest left in `image` back into `spec.host`: new and
/// changed files, directories and symlinks. Returns how many were updated.
pub fn copy_back(spec: &ShareSpec, image: &Path, staging: &Path) -> Result<usize, ShareError> {
    fs::create_dir_all(staging).map_err(|e| ShareError::Image(staging.to_path_buf(), e))?;
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", staging.display()))
        .arg(image)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ShareError::Tool("debugfs", e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs exits 0 even when a command fails; its banner is on stderr.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .filter(|l| !l.contains("while changing ownership") && !l.contains("while setting"))
        .collect();
    if !out.status.success() || !errors.is_empty() {
        return Err(ShareError::ToolFailed(
            "debugfs rdump",
            spec.host.clone(),
            errors.join("; "),
        ));
    }
    let lost_found = spec.host.join("lost+found").exists();
    let mut updated = 0;
    merge(staging, &spec.host, !lost_found, &mut updated)
        .map_err(|e| ShareError::CopyBack(spec.host.clone(), e))?;
    Ok(updated)
}

/// Copies `from` into `to` where they differ; `skip_lost_found` leaves out
/// the top-level lost+found that mke2fs creates.
fn merge(from: &Path, to: &Path, skip_lost_found: bool, updated: &mut usize) -> io::Result<()> {
    for e in fs::read_dir(from)? {
        let e = e?;
        if skip_lost_found && e.file_name() == "lost+found" {
            continue;
        }
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let meta = src.symlink_metadata()?;
        let existing = dst.symlink_metadata().ok();
        if meta.is_dir() {
            if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                if existing.is_some() {
                    fs::remove_file(&dst)?;
                }
                fs::create_dir(&dst)?;
                fs::set_permissions(&dst, fs::Permissions::from_mode(meta.permissions().mode()))?;
                *updated += 1;
            }
            merge(&src, &dst, false, updated)?;
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&src)?;
            if fs::read_link(&dst).ok().as_ref() != Some(&target) {
                remove_any(&dst, existing.as_ref())?;
                symlink(&target, &dst)?;
                *updated += 1;
            }
        } else if meta.is_file() {
            let same = existing
                .as_ref()
                .is_some_and(|m| m.is_file() && m.len() == meta.len())
                && fs::read(&src)? == fs::read(&dst)?;
            let mode = meta.permissions().mode() & 0o7777;
            if !same {
                // Write beside and rename: a reader never sees half a file.
                let tmp = to.join(format!(".kvmini-copy.{}", std::process::id()));
                fs::copy(&src, &tmp)?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
                if existing.as_ref().is_some_and(|m| m.is_dir()) {
                    fs::remove_dir_all(&dst)?;
                }
                fs::rename(&tmp, &dst)?;
                *updated += 1;
            } else if existing.is_some_and(|m| m.permissions().mode() & 0o7777 != mode) {
                fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
                *updated += 1;
            }
        }
        // Device nodes, FIFOs and sockets made in the guest stay there.
    }
    Ok(())
}

fn remove_any(p: &Path, meta: Option<&fs::Metadata>) -> io::Result<()> {
    match meta {
        Some(m) if m.is_dir() => fs::remove_dir_all(p),
        Some(_) => fs::remove_file(p),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn dir() -> TempDir {
        TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-share-test.")).unwrap()
    }

    #[test]
    fn parse_specs() {
        let d = dir();
        let h = d.as_path().to_str().unwrap();
        let s = ShareSpec::parse(&format!("{h}:/mnt/x")).unwrap();
        assert_eq!((s.guest.as_str(), s.readonly), ("/mnt/x", false));
        let s = ShareSpec::parse(&format!("{h}:/mnt/x/:ro")).unwrap();
        assert_eq!((s.guest.as_str(), s.readonly), ("/mnt/x", true));
        assert!(
            !ShareSpec::parse(&format!("{h}:/mnt/x:rw"))
                .unwrap()
                .readonly
        );
        for bad in [
            h.to_string(),
            format!("{h}:relative"),
            format!("{h}:/"),
            format!("{h}:/a/../b"),
            ":/mnt".to_string(),
            "/nonexistent/kvmini:/mnt".to_string(),
        ] {
            assert!(ShareSpec::parse(&bad).is_err(), "{bad} accepted");
        }
        let f = d.as_path().join("file");
        fs::write(&f, "x").unwrap();
        let e = ShareSpec::parse(&format!("{}:/mnt", f.display())).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn merge_copies_new_and_changed_keeps_the_rest() {
        let (a, b) = (dir(), dir());
        let (from, to) = (a.as_path(), b.as_path());
        fs::create_dir_all(from.join("sub")).unwrap();
        fs::create_dir_all(from.join("lost+found")).unwrap();
        fs::write(from.join("same"), "same").unwrap();
        fs::write(from.join("changed"), "new!").unwrap();
        fs::write(from.join("sub/new"), b"\0\xffbin").unwrap();
        symlink("same", from.join("link")).unwrap();
        fs::write(to.join("same"), "same").unwrap();
        fs::write(to.join("changed"), "old!").unwrap();
        fs::write(to.join("only-on-host"), "keep").unwrap();
        let mut n = 0;
        merge(from, to, true, &mut n).unwrap();
        assert_eq!(n, 4, "changed, sub/, sub/new, link");
        assert_eq!(fs::read(to.join("changed")).unwrap(), b"new!");
        assert_eq!(fs::read(to.join("sub/new")).unwrap(), b"\0\xffbin");
        assert_eq!(fs::read_link(to.join("link")).unwrap(), Path::new("same"));
        assert_eq!(fs::read(to.join("only-on-host")).unwrap(), b"keep");
        assert!(!to.join("lost+found").exists());
        let mut again = 0;
        merge(from, to, true, &mut again).unwrap();
        assert_eq!(again, 0, "nothing changes twice");
    }

    /// Round trip through the real tools, when e2fsprogs is installed (it
    /// is part of tests/run-all.sh's package list).
    #[test]
    fn image_round_trip_with_e2fsprogs() {
        let (h, t) = (dir(), dir());
        let host = h.as_path();
        fs::write(host.join("a.txt"), "alpha").unwrap();
        fs::create_dir(host.join("d")).unwrap();
        fs::write(host.join("d/b.bin"), [0u8, 1, 2, 255]).unwrap();
        let spec = ShareSpec::parse(&format!("{}:/mnt/s", host.display())).unwrap();
        let image = t.as_path().join("share.img");
        make_image(&spec, &image).expect("mke2fs (install e2fsprogs)");
        assert!(
            fs::metadata(&image).unwrap().len() >= 1 << 30,
            "room to grow"
        );
        // Change the host copy, then copy back: the image's content wins.
        fs::write(host.join("a.txt"), "changed on the host").unwrap();
        fs::remove_file(host.join("d/b.bin")).unwrap();
        let n = copy_back(&spec, &image, &t.as_path().join("staging")).unwrap();
        assert_eq!(n, 2);
        assert_eq!(fs::read(host.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(fs::read(host.join("d/b.bin")).unwrap(), [0u8, 1, 2, 255]);
        assert!(!host.join("lost+found").exists());
    }
}
