//! Reading the guest's share changes: a tar archive from the guest's exec
//! init, treated as hostile. This pass only reads (the archive is a file in
//! exec's private directory); it checks every header and name and decides
//! what would change, so nothing on the host changes unless the whole
//! archive is complete and valid.
//!
//! Layout, n being the share's number in `/kvmini/job` (1-based):
//!
//! ```text
//! n/manifest   every path of the share after the command (`find . -print0`)
//! n/upper/     the share's overlay upper layer: what the command created,
//! n/upper/...  changed or replaced (whiteouts, char 0:0, are skipped)
//! end          empty, last: the archive is complete
//! ```
//!
//! Read with the `tar` crate's entry iterator, never its `unpack`: names are
//! parsed by [`RelPath`], an entry's parent must be a directory listed
//! before it, hard links must point at a file listed before, and extension
//! headers (long names) are bounded before the crate reads them into memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::EntryType;

use super::pack::Snapshot;
use super::path::{RelPath, PATH_MAX};
use super::ShareError;

/// Largest GNU long-name or PAX extension header accepted.
const MAX_EXTENSION: u64 = 8 << 10;

/// Most bytes of names the archive may hold in all (kept in memory while
/// it is checked; 64 MiB is 16k names of the longest length).
const MAX_NAME_BYTES: usize = 64 << 20;

/// A writable share whose changes the archive may carry.
pub struct ShareIn<'a> {
    /// Its number in the guest's job (the archive's top-level directory).
    pub number: usize,
    /// What it held when packed.
    pub before: &'a Snapshot,
    /// At most this many upper entries (the image's inode count).
    pub max_entries: u64,
}

/// What an upper entry becomes on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        mtime: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// A hard link to the `File` at this index of the same plan.
    Link {
        to: usize,
    },
}

#[derive(Debug)]
pub struct Upper {
    pub path: RelPath,
    pub kind: Kind,
}

/// The changes to one share.
#[derive(Debug, Default)]
pub struct Plan {
    /// Written in this order (a directory before what is in it).
    pub uppers: Vec<Upper>,
    /// Per entry of the pack-time [`Snapshot`]: still there after the command.
    pub present: Vec<bool>,
    /// Entries left out, with why (device nodes, FIFOs).
    pub skipped: Vec<String>,
    /// Entries whose set-uid/set-gid/sticky bits were dropped.
    pub special_bits: Vec<String>,
    manifest: bool,
    /// Path -> index in `uppers` (`None`: a skipped entry).
    seen: HashMap<Vec<u8>, Option<usize>>,
}

/// The archive, checked: one plan per share, and which archive entries (by
/// position) hold file data, for the share and upper entry they belong to.
#[derive(Debug)]
pub struct Layout {
    pub plans: Vec<Plan>,
    pub files: HashMap<usize, (usize, usize)>,
}

/// Reads and checks the whole archive; changes nothing.
pub fn read(archive: &Path, shares: &[ShareIn]) -> Result<Layout, ShareError> {
    let stream = |e| ShareError::Stream(archive.to_path_buf(), e);
    let max_entries = shares.iter().map(|s| s.max_entries + 2).sum::<u64>() + 1;
    check_headers(archive, max_entries)?;

    let mut ar = tar::Archive::new(File::open(archive).map_err(stream)?);
    let mut plans: Vec<Plan> = shares
        .iter()
        .map(|s| Plan {
            present: vec![false; s.before.entries.len()],
            ..Plan::default()
        })
        .collect();
    let mut files = HashMap::new();
    let mut ended = false;
    let mut name_bytes = 0usize;
    for (ordinal, entry) in ar.entries_with_seek().map_err(stream)?.enumerate() {
        let mut entry = entry.map_err(stream)?;
        let name = entry.path_bytes().into_owned();
        let refuse = |why: &str| ShareError::Refused(shown(&name), why.to_string());
        name_bytes += name.len();
        if name_bytes > MAX_NAME_BYTES {
            return Err(refuse(
                "the names in the archive add up to more than 64 MiB",
            ));
        }
        if ended {
            return Err(refuse("an entry after the end marker"));
        }
        let ty = entry.header().entry_type();
        if name == b"end" {
            if !ty.is_file() || entry.size() != 0 {
                return Err(refuse("the end marker must be an empty file"));
            }
            ended = true;
            continue;
        }
        let path = RelPath::parse(&name, ty.is_dir()).map_err(refuse)?;
        let comps = path.components();
        let s = shares
            .iter()
            .position(|s| comps[0].as_bytes() == s.number.to_string().as_bytes())
            .ok_or_else(|| refuse("not under the number of a writable share"))?;
        let plan = &mut plans[s];
        match (comps.get(1).map(|c| c.as_bytes()), comps.len()) {
            (Some(b"manifest"), 2) => {
                if !ty.is_file() || plan.manifest {
                    return Err(refuse("a second manifest, or one that is not a file"));
                }
                plan.manifest = true;
                read_manifest(&mut entry, shares[s].before, &mut plan.present).map_err(
                    |e| match e {
                        Bad::Io(e) => stream(e),
                        Bad::Why(why) => refuse(&why),
                    },
                )?;
            }
            (Some(b"upper"), 2) if ty.is_dir() => {}
            (Some(b"upper"), 2) => return Err(refuse("upper/ must be a directory")),
            (Some(b"upper"), _) => {
                let prefix = format!("{}/upper/", shares[s].number);
                let rel = RelPath::parse(&name[prefix.len()..], ty.is_dir()).map_err(refuse)?;
                if plan.seen.len() as u64 >= shares[s].max_entries {
                    return Err(ShareError::TooManyEntries(shares[s].max_entries));
                }
                if let Some(idx) =
                    upper(&mut entry, prefix.as_bytes(), &rel, ty, plan).map_err(|e| match e {
                        Bad::Io(e) => stream(e),
                        Bad::Why(why) => refuse(&why),
                    })?
                {
                    files.insert(ordinal, (s, idx));
                }
            }
            _ => return Err(refuse("neither a manifest nor under upper/")),
        }
    }
    if !ended {
        return Err(ShareError::Incomplete(archive.to_path_buf()));
    }
    if let Some(s) = plans.iter().position(|p| !p.manifest) {
        return Err(ShareError::Refused(
            format!("{}/manifest", shares[s].number),
            "missing: the archive does not say what the share holds".into(),
        ));
    }
    Ok(Layout { plans, files })
}

/// The entry's name for messages: printable, escapes for the rest.
fn shown(name: &[u8]) -> String {
    name.escape_ascii().to_string()
}

enum Bad {
    Io(io::Error),
    Why(String),
}

impl From<io::Error> for Bad {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// Before the `tar` crate reads long names into memory: every extension
/// header is small, and the archive has at most `max` entries.
fn check_headers(archive: &Path, max: u64) -> Result<(), ShareError> {
    let stream = |e| ShareError::Stream(archive.to_path_buf(), e);
    let mut ar = tar::Archive::new(File::open(archive).map_err(stream)?);
    let mut count = 0u64;
    for entry in ar.entries_with_seek().map_err(stream)?.raw(true) {
        let entry = entry.map_err(stream)?;
        count += 1;
        if count > 2 * max {
            return Err(ShareError::TooManyEntries(max));
        }
        let ty = entry.header().entry_type();
        let extension = ty.is_gnu_longname()
            || ty.is_gnu_longlink()
            || ty.is_pax_local_extensions()
            || ty.is_pax_global_extensions();
        if extension && entry.size() > MAX_EXTENSION {
            return Err(ShareError::Refused(
                format!("entry {count}"),
                format!(
                    "an extension header of {} bytes (at most {MAX_EXTENSION})",
                    entry.size()
                ),
            ));
        }
    }
    Ok(())
}

/// Marks the pack-time paths the manifest lists. Paths are `./a/b`, each
/// ended by a NUL, the first `.`.
fn read_manifest(r: impl Read, before: &Snapshot, present: &mut [bool]) -> Result<(), Bad> {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut r).take(PATH_MAX as u64 + 3).read_until(0, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.pop() != Some(0) {
            return Err(Bad::Why(
                "the manifest holds a path that is too long or not ended by NUL".into(),
            ));
        }
        if buf == b"." {
            continue;
        }
        let Some(p) = buf.strip_prefix(b"./") else {
            return Err(Bad::Why(format!(
                "the manifest path '{}' does not start with ./",
                shown(&buf)
            )));
        };
        RelPath::parse(p, false)
            .map_err(|why| Bad::Why(format!("the manifest path '{}': {why}", shown(p))))?;
        if let Some(i) = before.find(p) {
            present[i] = true;
        }
    }
}

/// Checks one entry under `n/upper/` and adds it to `plan`; returns its
/// index if its data is to be staged.
fn upper(
    entry: &mut tar::Entry<impl Read>,
    prefix: &[u8],
    rel: &RelPath,
    ty: EntryType,
    plan: &mut Plan,
) -> Result<Option<usize>, Bad> {
    let key = rel.to_bytes();
    if plan.seen.contains_key(&key) {
        return Err(Bad::Why("the archive lists this path twice".into()));
    }
    if rel.depth() > 1 {
        let parent = RelPath::parse(&key[..key.len() - rel.name().len() - 1], false)
            .map_err(|w| Bad::Why(w.into()))?;
        match plan.seen.get(&parent.to_bytes()) {
            Some(Some(i)) if matches!(plan.uppers[*i].kind, Kind::Dir { .. }) => {}
            Some(Some(_)) => {
                return Err(Bad::Why(
                    "its parent in the archive is not a directory (a file or symlink)".into(),
                ))
            }
            _ => {
                return Err(Bad::Why(
                    "its parent directory is not in the archive before it".into(),
                ))
            }
        }
    }
    let header = entry.header();
    let raw_mode = header.mode()?;
    let mode = raw_mode & 0o777;
    let kind = match ty {
        EntryType::Regular | EntryType::Continuous => Kind::File {
            mode,
            size: entry.size(),
            mtime: header.mtime()?,
        },
        EntryType::Directory => Kind::Dir { mode },
        EntryType::Symlink => {
            let target = entry.link_name_bytes().map(|t| t.into_owned());
            match target {
                Some(t) if !t.is_empty() && t.len() <= PATH_MAX && !t.contains(&0) => {
                    Kind::Symlink { target: t }
                }
                _ => return Err(Bad::Why("a symlink with an empty or invalid target".into())),
            }
        }
        EntryType::Link => {
            let target = entry.link_name_bytes().map(|t| t.into_owned());
            match link_target(target.as_deref(), prefix, plan)? {
                Some(to) => Kind::Link { to },
                None => {
                    // Overlayfs makes its whiteouts hard links of one
                    // another; a link to a skipped entry is skipped too.
                    plan.seen.insert(key, None);
                    return Ok(None);
                }
            }
        }
        EntryType::Char | EntryType::Block | EntryType::Fifo => {
            let whiteout = ty == EntryType::Char
                && header.device_major().ok().flatten() == Some(0)
                && header.device_minor().ok().flatten() == Some(0);
            if !whiteout {
                plan.skipped.push(format!("{rel}: a device node or FIFO"));
            }
            plan.seen.insert(key, None);
            return Ok(None);
        }
        EntryType::GNUSparse => {
            return Err(Bad::Why(
                "a sparse archive entry (the guest sends files in full)".into(),
            ))
        }
        _ => return Err(Bad::Why("an entry of a type kvmini does not accept".into())),
    };
    if raw_mode & 0o7000 != 0 && !matches!(kind, Kind::Symlink { .. } | Kind::Link { .. }) {
        plan.special_bits.push(rel.to_string());
    }
    let is_file = matches!(kind, Kind::File { .. });
    let idx = plan.uppers.len();
    plan.uppers.push(Upper {
        path: rel.clone(),
        kind,
    });
    plan.seen.insert(key, Some(idx));
    Ok(is_file.then_some(idx))
}

/// A hard link's target: `n/upper/PATH` (`prefix` is `n/upper/`) of a
/// file listed before; returns the index of that file, or `None` if the
/// target is a skipped entry (a whiteout, a device node).
fn link_target(target: Option<&[u8]>, prefix: &[u8], plan: &Plan) -> Result<Option<usize>, Bad> {
    let refuse = || Bad::Why("a hard link to something other than a file listed before it".into());
    let rest = target
        .and_then(|t| t.strip_prefix(prefix))
        .ok_or_else(refuse)?;
    let rel = RelPath::parse(rest, false).map_err(|_| refuse())?;
    let Some(i) = plan.seen.get(&rel.to_bytes()).copied().ok_or_else(refuse)? else {
        return Ok(None);
    };
    match plan.uppers[i].kind {
        Kind::File { .. } => Ok(Some(i)),
        Kind::Link { to } => Ok(Some(to)),
        _ => Err(refuse()),
    }
}
