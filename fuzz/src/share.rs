//! The `share` target: `exec --share`'s copy-back, which applies an archive
//! the guest wrote (hostile bytes) to a host directory.
//!
//! Input: the archive itself, as the guest's exec init would stream it
//! over its virtio-console port (a tar stream; the format is in
//! `kvmini::exec::share::archive`). It is applied with
//! `kvmini::exec::share::copy_back` to share number 1, a small tree
//! ([`populate`]: files, directories, a hard-linked pair, symlinks and a
//! hard link into the canary; put back as it was after every input that
//! changed it) that sits beside a canary tree (`canary/`, `victim`) the
//! archive must never reach.
//!
//! Checks, whatever the archive holds: nothing outside the share changes
//! (every entry in the fixture's directory keeps its type, mode, bytes and
//! link target, and nothing is added there; the canary's hard-link twin of
//! the share's `h` keeps its bytes whatever happens to `h`); an archive that is refused (anything but a
//! failure while applying) leaves the share as it was; no staging directory (`.kvmini-staging-*`) is left behind; what
//! the share holds afterwards is only directories, regular files and
//! symlinks, none with a set-uid, set-gid or sticky bit.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use kvmini::exec::share::{copy_back, pack, CopyBack, Packed, ShareError, ShareSpec};
use vmm_sys_util::tempdir::TempDir;

/// What each entry below a directory is: type, mode, bytes or link target,
/// and with `links` a file's hard-link count. Two equal maps are two
/// byte-identical trees. A directory that cannot be read (a guest may set
/// any mode; only root reads them all) is an entry of its own.
pub fn tree(root: &Path, links: bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let rel = |p: &Path| p.strip_prefix(root).unwrap_or(p).to_path_buf();
        let Ok(rd) = fs::read_dir(&d) else {
            out.insert(rel(&d).join("<unreadable>"), "unreadable".into());
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = p.symlink_metadata() else {
                out.insert(rel(&p), "unreadable".into());
                continue;
            };
            let mode = m.mode() & 0o7777;
            let what = if m.file_type().is_symlink() {
                let to = fs::read_link(&p).map(|t| t.display().to_string());
                format!("symlink -> {}", to.unwrap_or_default())
            } else if m.is_dir() {
                todo.push(p.clone());
                format!("dir {mode:o}")
            } else if m.is_file() {
                let bytes = fs::read(&p).unwrap_or_default();
                let n = if links { m.nlink() } else { 0 };
                format!("file {mode:o} {n} {}", bytes.escape_ascii())
            } else {
                format!("special {mode:o} {:x}", m.rdev())
            };
            out.insert(rel(&p), what);
        }
    }
    out
}

/// The share's contents before the archive is applied; the canary must
/// exist (`canary()`): a symlink points into it, a file is a hard link of
/// one of its files.
fn populate(top: &Path) {
    let share = top.join("share");
    fs::create_dir_all(share.join("d/e")).expect("share dirs");
    fs::write(share.join("a"), "a\n").expect("share file");
    fs::write(share.join("d/b"), "b\n").expect("share file");
    fs::hard_link(share.join("d/b"), share.join("d/b2")).expect("share hard link");
    fs::hard_link(top.join("canary/linked"), share.join("h")).expect("hard link out");
    symlink("../victim", share.join("out")).expect("share symlink");
    symlink(top.join("canary"), share.join("d/root")).expect("share symlink");
}

/// The tree beside the share that no archive may touch.
fn canary(top: &Path) {
    fs::create_dir_all(top.join("canary/.ssh")).expect("canary dirs");
    fs::write(top.join("canary/.ssh/authorized_keys"), "ssh-ed25519 AAAA").expect("canary");
    fs::write(top.join("canary/secret"), "secret").expect("canary");
    fs::set_permissions(top.join("canary/secret"), fs::Permissions::from_mode(0o600))
        .expect("canary mode");
    fs::write(top.join("canary/linked"), "linked").expect("canary");
    fs::write(top.join("victim"), "victim").expect("victim");
}

/// Makes everything below `root` removable again (an archive may leave
/// directories of mode 000, which only root could empty).
fn unlock(root: &Path) {
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o700));
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
}

pub fn run(data: &[u8]) {
    let _ = check(data);
}

/// The fixture, made once per process in `$TMPDIR` (`run.sh` points it at
/// a directory it removes; libFuzzer exits without running destructors): a
/// fresh share for each input would cost most of the time of an execution.
/// After each input the share is put back as [`populate`] made it if the
/// archive changed it.
struct Fixture {
    t: TempDir,
    /// The canary tree and the share as made, for comparison.
    outside: BTreeMap<PathBuf, String>,
    inside: BTreeMap<PathBuf, String>,
}

impl Fixture {
    fn new() -> Self {
        let prefix = std::env::temp_dir().join("kvmini-fuzz-share.");
        let t = TempDir::new_with_prefix(&prefix).expect("temporary directory");
        let f = Self {
            t,
            outside: BTreeMap::new(),
            inside: BTreeMap::new(),
        };
        canary(&f.top());
        populate(&f.top());
        Self {
            outside: f.outside(),
            inside: tree(&f.share(), true),
            ..f
        }
    }

    fn top(&self) -> PathBuf {
        self.t.as_path().join("top")
    }

    fn share(&self) -> PathBuf {
        self.top().join("share")
    }

    /// Everything in the fixture's directory but the share and the
    /// archive (hard-link counts left out: replacing or deleting the
    /// share's `h` changes its canary twin's count, rightly).
    fn outside(&self) -> BTreeMap<PathBuf, String> {
        tree(self.t.as_path(), false)
            .into_iter()
            .filter(|(p, _)| !p.starts_with("top/share") && p != Path::new("shares.tar"))
            .collect()
    }

    /// The share as made again.
    fn restore(&self) {
        unlock(&self.share());
        fs::remove_dir_all(self.share()).expect("remove the share");
        populate(&self.top());
    }
}

thread_local! {
    static FIXTURE: Fixture = Fixture::new();
}

/// Applies `data` as [`run`] does and checks it; returns what the
/// copy-back said: entries written and deleted, or its error.
pub fn check(data: &[u8]) -> Result<(usize, usize), String> {
    FIXTURE.with(|f| check_in(f, data))
}

fn check_in(f: &Fixture, data: &[u8]) -> Result<(usize, usize), String> {
    let share = f.share();
    let archive = f.t.as_path().join("shares.tar");
    fs::write(&archive, data).expect("archive file");

    let spec = ShareSpec::parse(&format!("{}:/mnt/s", share.display())).expect("share spec");
    let root = Dir::open_ambient_dir(&share, cap_std::ambient_authority()).expect("share dir");
    let before = pack::snapshot(&root);
    let inodes = before.inodes + 64;
    let packed = Packed {
        root,
        before,
        image_bytes: 1 << 20,
        inodes,
    };

    let result = copy_back(
        &[CopyBack {
            number: 1,
            spec: &spec,
            packed: &packed,
        }],
        &archive,
    );

    assert_eq!(
        f.outside(),
        f.outside,
        "the copy-back changed something outside the share"
    );
    let inside = tree(&share, true);
    // Refused before anything was applied (checking and staging come
    // first): the share is as it was. `Apply` errors come after changes.
    if result
        .as_ref()
        .is_err_and(|e| !matches!(e, ShareError::Apply(..)))
    {
        assert_eq!(inside, f.inside, "a refused archive changed the share");
    }
    for (p, what) in &inside {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
        assert!(
            !name.is_some_and(|n| n.starts_with(".kvmini-staging-")),
            "a staging directory was left behind: {p:?}"
        );
        assert!(
            ["dir ", "file ", "symlink ", "unreadable"]
                .iter()
                .any(|k| what.starts_with(k)),
            "{p:?} is {what}"
        );
        if what.starts_with("dir ") || what.starts_with("file ") {
            let mode = what
                .split(' ')
                .nth(1)
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .unwrap_or(0);
            assert_eq!(mode & 0o7000, 0, "{p:?} kept a special bit: {what}");
        }
    }
    drop(packed);
    if inside != f.inside {
        f.restore();
    }
    result
        .map(|done| {
            done.iter()
                .fold((0, 0), |(w, d), a| (w + a.written, d + a.deleted))
        })
        .map_err(|e| e.to_string())
}
