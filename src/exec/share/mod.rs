//! `--share HOST:GUEST[:ro]`: a host directory made visible in the guest.
//!
//! Trust model: a writable share is the guest's to change (create, modify,
//! delete, rename, replace a directory by a file) exactly as a process with
//! write access to that directory could; a read-only share is not changed
//! at all; nothing outside the share is touched, read or written, whatever
//! the guest does.
//!
//! The way in: kvmini's devices are virtio-blk, net and console, so the
//! directory is packed into a sparse ext4 image (`mke2fs -d`) on a
//! virtio-blk disk, and the list of what it holds is kept ([`pack`]). The
//! guest's exec init mounts the image, moves its contents under `lower/`
//! and mounts an overlay (lower, `upper/`, `work/` all on the image) at
//! GUEST, so `upper/` ends up holding exactly what the command created or
//! changed.
//!
//! The way out never runs a host tool over the guest-written image (the
//! guest owns every byte of it; a crafted directory entry once made
//! `debugfs rdump` write outside its target): after the command the init
//! lists every path of the merged view (the manifest), unmounts, and
//! streams a tar archive of the manifests and upper dirs over one more
//! virtio-console port. The host captures it into a bounded file in exec's
//! private directory ([`crate::exec::capture::Spool`]), checks the whole
//! archive ([`archive`]) and only then applies it ([`apply`]): staged in a
//! hidden, randomly named directory inside the share, renamed into place
//! through handles that never follow a symlink (`cap-std`), deletions
//! being what was packed and is no longer in the manifest.

pub mod apply;
pub mod archive;
pub mod pack;
pub mod path;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use cap_std::fs::Dir;

use archive::ShareIn;
use pack::Snapshot;

/// Archive bytes allowed per inode of a share on top of its image size
/// (tar headers, long names, the manifest).
const STREAM_BYTES_PER_INODE: u64 = 2 << 10;

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
    Open(PathBuf, io::Error),
    Tool(&'static str, io::Error),
    ToolFailed(&'static str, PathBuf, String),
    Image(PathBuf, io::Error),
    /// The archive from the guest could not be read (damaged, truncated).
    Stream(PathBuf, io::Error),
    /// The archive has no end marker: the guest did not finish sending it.
    Incomplete(PathBuf),
    /// An archive entry breaks the rules: (entry name, why).
    Refused(String, String),
    /// More archive entries than the shares have inodes.
    TooManyEntries(u64),
    /// A change could not be staged in the share: (host path, error).
    Stage(PathBuf, io::Error),
    /// Some changes could not be applied: (share, what, error).
    Apply(PathBuf, Vec<(String, io::Error)>),
}

const NOTHING: &str = "nothing was copied back";

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
            Self::Open(p, e) => write!(f, "--share: cannot open '{}': {e}", p.display()),
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
            Self::Stream(p, e) => write!(
                f,
                "cannot read the guest's changes to the shares ('{}'): {e}; the archive is \
                 damaged, {NOTHING}",
                p.display()
            ),
            Self::Incomplete(p) => write!(
                f,
                "the guest's changes to the shares end early ('{}' has no end marker): the \
                 guest did not finish sending them, {NOTHING}",
                p.display()
            ),
            Self::Refused(entry, why) => write!(
                f,
                "refused the guest's changes to the shares, {NOTHING}: archive entry \
                 '{entry}': {why}"
            ),
            Self::TooManyEntries(n) => write!(
                f,
                "refused the guest's changes to the shares, {NOTHING}: more than {n} entries \
                 (the shares' inode count)"
            ),
            Self::Stage(p, e) => write!(
                f,
                "cannot stage the guest's change to '{}': {e}; {NOTHING} (check the space \
                 and permissions of the share)",
                p.display()
            ),
            Self::Apply(p, failed) => {
                write!(
                    f,
                    "could not apply {} of the guest's changes to '{}' (the others were \
                     applied):",
                    failed.len(),
                    p.display()
                )?;
                for (what, e) in failed.iter().take(5) {
                    write!(f, " {what}: {e};")?;
                }
                write!(f, " check the share's permissions and free space")
            }
        }
    }
}

impl std::error::Error for ShareError {}

impl ShareSpec {
    /// The live share (virtio-fs) for this spec, the `n`th: kvmini starts
    /// virtiofsd on HOST, and the guest mounts it at GUEST.
    pub fn into_fs(self, n: usize) -> crate::config::FsConfig {
        use crate::config::{FsBackend, FsConfig};
        FsConfig {
            tag: format!("kvmini-share{n}"),
            backend: FsBackend::Dir {
                path: self.host,
                readonly: self.readonly,
            },
            mount: Some(self.guest),
        }
    }

    pub fn parse(s: &str) -> Result<Self, ShareError> {
        let err = |why| ShareError::Syntax(s.to_string(), why);
        let (rest, readonly) = match s.rsplit_once(':') {
            Some((rest, "ro")) => (rest, true),
            Some((rest, "rw")) => (rest, false),
            // HOST:GUEST:something, where something is no path: a mode.
            Some((rest, mode)) if rest.contains(':') && !mode.starts_with('/') => {
                return Err(err("after GUEST comes ro or rw (lower case), or nothing"));
            }
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

/// A share as packed: a handle on its directory (kept from packing to
/// copying back, so the share is the same directory even if its path is
/// changed meanwhile), what it held, and its image's size.
pub struct Packed {
    pub root: Dir,
    pub before: Snapshot,
    pub image_bytes: u64,
    pub inodes: u64,
}

impl Packed {
    /// The most the guest may send back for this share: the image's size
    /// plus some per inode for archive headers and the manifest.
    pub fn stream_limit(&self) -> u64 {
        self.image_bytes + self.inodes * STREAM_BYTES_PER_INODE
    }
}

/// Packs `spec.host` into a new sparse ext4 image at `image`. A writable
/// share gets room to grow (1 GiB or its own size more, whichever is
/// bigger); the file is sparse, so unused room costs nothing.
pub fn make_image(spec: &ShareSpec, image: &Path) -> Result<Packed, ShareError> {
    let root = Dir::open_ambient_dir(&spec.host, cap_std::ambient_authority())
        .map_err(|e| ShareError::Open(spec.host.clone(), e))?;
    let before = pack::snapshot(&root);
    let (bytes, inodes) = (before.bytes, before.inodes);
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
    Ok(Packed {
        root,
        before,
        image_bytes: size,
        inodes,
    })
}

/// A writable share to copy back: its number in the guest's job (1-based),
/// what was asked and what was packed.
pub struct CopyBack<'a> {
    pub number: usize,
    pub spec: &'a ShareSpec,
    pub packed: &'a Packed,
}

/// Applies the guest's archive (see [`archive`]) to the writable shares:
/// checks all of it, stages all of it, then applies. Returns what was done
/// per share.
pub fn copy_back(shares: &[CopyBack], archive: &Path) -> Result<Vec<apply::Applied>, ShareError> {
    let ins: Vec<ShareIn> = shares
        .iter()
        .map(|s| ShareIn {
            number: s.number,
            before: &s.packed.before,
            max_entries: s.packed.inodes,
        })
        .collect();
    let layout = archive::read(archive, &ins)?;
    let mut stagings = Vec::new();
    let staged = shares
        .iter()
        .try_for_each(|s| {
            let st = apply::Staging::create(&s.packed.root)
                .map_err(|e| ShareError::Stage(s.spec.host.clone(), e))?;
            stagings.push(st);
            Ok(())
        })
        .and_then(|()| apply::stage(archive, &layout, &mut stagings));
    if let Err(e) = staged {
        for (s, st) in shares.iter().zip(stagings) {
            remove_staging(s, st);
        }
        return Err(e);
    }
    let mut done = Vec::new();
    let mut failed = None;
    for ((s, plan), st) in shares.iter().zip(&layout.plans).zip(stagings) {
        let host = s.spec.host.display();
        for w in &plan.skipped {
            log::warn!("--share {host}: not copied back: {w}");
        }
        for w in &plan.special_bits {
            log::warn!("--share {host}: {w}: set-uid, set-gid and sticky bits dropped");
        }
        let mut applied = apply::commit(&s.packed.root, &s.packed.before, plan, &st);
        remove_staging(s, st);
        for k in &applied.kept {
            log::warn!("--share {host}: kept the host's version: {k}");
        }
        log::info!(
            "--share {host}: {} entries written, {} deleted",
            applied.written,
            applied.deleted
        );
        let errors = std::mem::take(&mut applied.failed);
        if !errors.is_empty() && failed.is_none() {
            failed = Some(ShareError::Apply(s.spec.host.clone(), errors));
        }
        done.push(applied);
    }
    failed.map_or(Ok(done), Err)
}

fn remove_staging(s: &CopyBack, st: apply::Staging) {
    if let Err(e) = st.remove(&s.packed.root) {
        log::warn!(
            "--share {}: cannot remove the staging directory (.kvmini-staging-*): {e}; \
             delete it by hand",
            s.spec.host.display()
        );
    }
}

#[cfg(test)]
mod tests;
