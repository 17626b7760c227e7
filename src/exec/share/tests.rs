//! Tests of `--share`: parsing; the copy-back driven by archives a hostile
//! guest could send (each attack of issue 13 leaves a canary tree outside
//! the share unchanged and fails with a clear message), by honest ones,
//! and by the guest init's own pack step run under the host's busybox.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use tar::{EntryType, Header};
use vmm_sys_util::tempdir::TempDir;

use super::*;
use crate::exec::capture::Spool;

pub(super) fn dir() -> TempDir {
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
    // A mode in capitals is a wrong mode, not a wrong GUEST path.
    let e = ShareSpec::parse(&format!("{h}:/mnt:RO")).unwrap_err();
    assert!(e.to_string().contains("after GUEST comes ro or rw"), "{e}");
}

/// Builds archives header by header, as a hostile guest can: any name,
/// type, mode or size, no checks.
struct Ar(tar::Builder<Vec<u8>>);

impl Ar {
    /// An archive for share 1 with its upper root.
    fn new() -> Self {
        Self(tar::Builder::new(Vec::new())).dir("1/upper", 0o755)
    }

    fn header(name: &[u8], ty: EntryType, mode: u32, size: u64, link: &[u8]) -> Header {
        let mut h = Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_device_major(0).unwrap();
        h.set_device_minor(0).unwrap();
        h.set_cksum();
        h
    }

    fn raw(mut self, name: &[u8], ty: EntryType, mode: u32, data: &[u8], link: &[u8]) -> Self {
        let short = if name.len() > 99 {
            let long = [name, b"\0"].concat();
            let h = Self::header(
                b"././@LongLink",
                EntryType::GNULongName,
                0,
                long.len() as u64,
                b"",
            );
            self.0.append(&h, &long[..]).unwrap();
            &name[..99]
        } else {
            name
        };
        let h = Self::header(short, ty, mode, data.len() as u64, link);
        self.0.append(&h, data).unwrap();
        self
    }

    fn dir(self, name: &str, mode: u32) -> Self {
        self.raw(
            format!("{name}/").as_bytes(),
            EntryType::Directory,
            mode,
            b"",
            b"",
        )
    }

    fn file(self, name: &str, mode: u32, data: &[u8]) -> Self {
        self.raw(name.as_bytes(), EntryType::Regular, mode, data, b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.raw(
            name.as_bytes(),
            EntryType::Symlink,
            0o777,
            b"",
            target.as_bytes(),
        )
    }

    fn hard_link(self, name: &str, target: &str) -> Self {
        self.raw(
            name.as_bytes(),
            EntryType::Link,
            0o644,
            b"",
            target.as_bytes(),
        )
    }

    /// Share 1's manifest: `.` and `./P` for each of `paths`.
    fn manifest(self, paths: &[&str]) -> Self {
        let mut m = b".\0".to_vec();
        for p in paths {
            m.extend_from_slice(format!("./{p}\0").as_bytes());
        }
        self.file("1/manifest", 0o644, &m)
    }

    fn end(self) -> Vec<u8> {
        self.file("end", 0o644, b"").0.into_inner().unwrap()
    }

    fn unfinished(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Every entry below `root` (but `skip`), with its type, mode and bytes:
/// equal trees are byte-identical.
fn tree(root: &Path, skip: Option<&str>) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if skip.is_some_and(|s| rel == Path::new(s)) {
                continue;
            }
            let m = p.symlink_metadata().unwrap();
            let mode = m.mode() & 0o7777;
            let what = if m.file_type().is_symlink() {
                format!("symlink -> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                todo.push(p.clone());
                format!("dir {mode:o}")
            } else if m.is_file() {
                format!("file {mode:o} {}", fs::read(&p).unwrap().escape_ascii())
            } else {
                format!("special {mode:o} {:x}", m.rdev())
            };
            out.insert(rel, what);
        }
    }
    out
}

/// A share (`t/share`) beside a canary tree (`t/canary`, `t/victim`) that
/// no archive may change.
struct Fx {
    t: TempDir,
    spec: ShareSpec,
    packed: Packed,
}

impl Fx {
    fn new(setup: impl FnOnce(&Path)) -> Self {
        let t = dir();
        let share = t.as_path().join("share");
        let canary = t.as_path().join("canary");
        fs::create_dir_all(&share).unwrap();
        fs::create_dir_all(canary.join(".ssh")).unwrap();
        fs::write(canary.join(".ssh/authorized_keys"), "ssh-ed25519 AAAA host").unwrap();
        fs::write(canary.join("secret"), "do not read").unwrap();
        fs::set_permissions(canary.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(t.as_path().join("victim"), "victim").unwrap();
        setup(&share);
        Self::packed(t, &share)
    }

    fn packed(t: TempDir, share: &Path) -> Self {
        let spec = ShareSpec::parse(&format!("{}:/mnt/s", share.display())).unwrap();
        let root = Dir::open_ambient_dir(share, cap_std::ambient_authority()).unwrap();
        let before = pack::snapshot(&root);
        let inodes = before.inodes + 1000;
        Self {
            t,
            spec,
            packed: Packed {
                root,
                before,
                image_bytes: 1 << 30,
                inodes,
            },
        }
    }

    fn share(&self) -> PathBuf {
        self.t.as_path().join("share")
    }

    fn outside(&self) -> BTreeMap<PathBuf, String> {
        let t = tree(self.t.as_path(), Some("share"));
        assert!(t.len() >= 5, "the canary is there: {t:?}");
        t
    }

    fn inside(&self) -> BTreeMap<PathBuf, String> {
        tree(&self.share(), None)
    }

    fn apply(&self, archive: &[u8]) -> Result<Vec<apply::Applied>, ShareError> {
        let a = dir();
        let p = a.as_path().join("shares.tar");
        fs::write(&p, archive).unwrap();
        copy_back(
            &[CopyBack {
                number: 1,
                spec: &self.spec,
                packed: &self.packed,
            }],
            &p,
        )
    }

    /// `archive` is refused with a message containing `why`; nothing
    /// changed, inside the share or out.
    fn refused(&self, archive: &[u8], why: &str) {
        let (outside, inside) = (self.outside(), self.inside());
        let e = self.apply(archive).expect_err("accepted").to_string();
        assert!(e.contains(why), "'{why}' not in: {e}");
        assert!(e.contains("nothing was copied back"), "{e}");
        assert_eq!(self.outside(), outside, "changed outside the share");
        assert_eq!(self.inside(), inside, "changed the share");
    }

    /// `archive` is applied; nothing outside the share changed.
    fn applied(&self, archive: &[u8]) -> apply::Applied {
        let outside = self.outside();
        let mut done = self.apply(archive).unwrap();
        assert_eq!(self.outside(), outside, "changed outside the share");
        done.remove(0)
    }
}

// Attack 1: names that climb out of the share.
#[test]
fn attack_path_traversal_names_are_refused() {
    let fx = Fx::new(|s| fs::write(s.join("a"), "a").unwrap());
    let deep = format!("1/upper/{}{}canary/evil", "d/".repeat(40), "../".repeat(60));
    for (name, why) in [
        ("1/upper/../../canary/evil", "'..'"),
        ("1/upper/a/../../../canary/evil", "'..'"),
        ("../canary/evil", "'..'"),
        ("/tmp/evil", "absolute"),
        ("1/upper//evil", "empty component"),
        ("1/upper/./evil", "'.'"),
        (deep.as_str(), "'..'"),
    ] {
        let ar = Ar::new().manifest(&["a"]).file(name, 0o644, b"pwned");
        fx.refused(&ar.end(), why);
    }
    // Hard links and the manifest are names too.
    let ar = Ar::new()
        .manifest(&["a"])
        .hard_link("1/upper/h", "1/upper/../../victim");
    fx.refused(&ar.end(), "hard link");
    let ar = Ar::new().manifest(&["../canary/secret"]);
    fx.refused(&ar.end(), "'..'");
    // A share number that is not a writable share.
    let ar = Ar::new().manifest(&["a"]).file("2/upper/x", 0o644, b"x");
    fx.refused(&ar.end(), "not under the number of a writable share");
}

// Attack 2: symlinks the guest planted (at the old predictable temporary
// name and elsewhere) are replaced, never written through.
#[test]
fn attack_planted_symlinks_are_replaced_not_followed() {
    let pid = std::process::id();
    let tmp = format!(".kvmini-copy.{pid}");
    let fx = Fx::new(|s| {
        let t = s.parent().unwrap();
        symlink(t.join("victim"), s.join(&tmp)).unwrap();
        symlink("../victim", s.join("f")).unwrap();
        symlink("../canary/.ssh", s.join("d")).unwrap();
        symlink(t.join("canary"), s.join(".kvmini-staging-0")).unwrap();
    });
    let ar = Ar::new()
        .manifest(&[&tmp, "f", "d", "d/authorized_keys", ".kvmini-staging-0"])
        .file(&format!("1/upper/{tmp}"), 0o4777, b"pwned")
        .file("1/upper/f", 0o644, b"pwned")
        .dir("1/upper/d", 0o755)
        .file("1/upper/d/authorized_keys", 0o644, b"pwned");
    fx.applied(&ar.end());
    let share = fx.share();
    assert_eq!(fs::read(share.join(&tmp)).unwrap(), b"pwned");
    assert_eq!(
        share.join(&tmp).symlink_metadata().unwrap().mode() & 0o7777,
        0o777
    );
    assert!(share.join("f").symlink_metadata().unwrap().is_file());
    assert!(share.join("d").symlink_metadata().unwrap().is_dir());
    assert_eq!(fs::read(share.join("d/authorized_keys")).unwrap(), b"pwned");
    assert!(share
        .join(".kvmini-staging-0")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
}

// Attack 3: a directory replaced by a symlink to outside, then written
// under; and deletions next to symlinks.
#[test]
fn attack_dir_replaced_by_symlink_is_not_written_under() {
    let fx = Fx::new(|s| {
        fs::create_dir_all(s.join("d/sub")).unwrap();
        fs::write(s.join("d/x"), "x").unwrap();
        symlink("../canary", s.join("planted")).unwrap();
    });
    let t = fx.t.as_path().to_path_buf();
    for target in ["../canary", t.join("canary").to_str().unwrap()] {
        let ar = Ar::new()
            .manifest(&["d", "d/x", "planted"])
            .symlink("1/upper/d", target)
            .file("1/upper/d/secret", 0o644, b"pwned");
        fx.refused(&ar.end(), "its parent in the archive is not a directory");
    }
    // Under a symlink planted by an earlier run, without naming it.
    let ar = Ar::new().manifest(&["d", "d/x", "planted"]).file(
        "1/upper/planted/secret",
        0o644,
        b"pwned",
    );
    fx.refused(
        &ar.end(),
        "its parent directory is not in the archive before it",
    );

    // Honest form: d becomes a symlink; what was in d is deleted on the
    // host side of d, before d is replaced, never through the symlink; the
    // planted symlink is deleted itself.
    let ar = Ar::new().manifest(&["d"]).symlink("1/upper/d", "../canary");
    let done = fx.applied(&ar.end());
    assert_eq!(
        done.deleted, 3,
        "d/x, d/sub and planted (d itself is replaced)"
    );
    assert_eq!(
        fs::read_link(fx.share().join("d")).unwrap(),
        Path::new("../canary")
    );
    assert!(fx.share().join("planted").symlink_metadata().is_err());
}

// Attack 4: the host's cost is bounded.
#[test]
fn attack_huge_and_sparse_entries_are_bounded() {
    let mut fx = Fx::new(|s| fs::write(s.join("a"), "a").unwrap());
    // A header claiming 15 TiB whose data never comes: incomplete.
    let mut ar = Ar::new().manifest(&["a"]);
    let h = Ar::header(b"1/upper/huge", EntryType::Regular, 0o644, 15 << 40, b"");
    ar.0.get_mut().extend_from_slice(h.as_bytes());
    fx.refused(&ar.unfinished(), "end early");
    // A sparse entry claiming 15 TiB.
    let mut h = Ar::header(b"1/upper/sparse", EntryType::GNUSparse, 0o644, 0, b"");
    h.as_gnu_mut().unwrap().set_real_size(15 << 40);
    h.set_cksum();
    let mut ar = Ar::new().manifest(&["a"]);
    ar.0.append(&h, &b""[..]).unwrap();
    fx.refused(&ar.end(), "sparse");
    // An oversized long-name header is refused before it is read.
    let ar = Ar::new()
        .manifest(&["a"])
        .raw(&[b'n'; 100_000], EntryType::Regular, 0o644, b"", b"");
    fx.refused(&ar.end(), "extension header");
    // More entries than the share's image has inodes.
    fx.packed.inodes = 10;
    let mut ar = Ar::new().manifest(&["a"]);
    for i in 0..20 {
        ar = ar.file(&format!("1/upper/f{i}"), 0o644, b"");
    }
    fx.refused(&ar.end(), "more than 10 entries");
    // More bytes than the shares' images hold never reach the archive:
    // the spool keeps at most `stream_limit` bytes, then refuses.
    fx.packed.image_bytes = 64 << 10;
    let ar = Ar::new()
        .manifest(&["a"])
        .file("1/upper/big", 0o644, &vec![7u8; 1 << 20])
        .end();
    let spool_dir = dir();
    let mut spool = Spool::create(
        &spool_dir.as_path().join("shares.tar"),
        fx.packed.stream_limit(),
    )
    .unwrap();
    std::io::Write::write_all(&mut spool, &ar).unwrap();
    let e = spool.finish().unwrap_err().to_string();
    assert!(
        e.contains("more than") && e.contains("nothing was copied back"),
        "{e}"
    );
    // Within the bound, a file of zeros is written sparse.
    fx.packed.inodes = 1000;
    let mut data = vec![0u8; 8 << 20];
    data[4 << 20] = 1;
    let ar = Ar::new()
        .manifest(&["a", "zeros"])
        .file("1/upper/zeros", 0o644, &data);
    fx.applied(&ar.end());
    let m = fs::metadata(fx.share().join("zeros")).unwrap();
    assert_eq!(m.len(), 8 << 20);
    assert!(m.blocks() * 512 <= 64 << 10, "{} blocks", m.blocks());
}

// Attack 5: set-uid, set-gid and sticky bits never reach the host.
#[test]
fn attack_setuid_bits_are_dropped() {
    let fx = Fx::new(|_| {});
    let ar = Ar::new()
        .manifest(&["suid", "sgid", "dir"])
        .file("1/upper/suid", 0o4755, b"#!/bin/sh\n")
        .file("1/upper/sgid", 0o2711, b"x")
        .dir("1/upper/dir", 0o3777);
    let a = dir();
    let p = a.as_path().join("shares.tar");
    fs::write(&p, ar.end()).unwrap();
    let ins = [archive::ShareIn {
        number: 1,
        before: &fx.packed.before,
        max_entries: 100,
    }];
    let layout = archive::read(&p, &ins).unwrap();
    assert_eq!(layout.plans[0].special_bits, ["suid", "sgid", "dir"]);
    fx.applied(&fs::read(&p).unwrap());
    let mode = |n: &str| {
        fx.share()
            .join(n)
            .symlink_metadata()
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(
        (mode("suid"), mode("sgid"), mode("dir")),
        (0o755, 0o711, 0o777)
    );
}

/// The host share of the honest tests, before the guest's changes.
fn honest_share(s: &Path) {
    fs::write(s.join("keep.txt"), "keep").unwrap();
    fs::write(s.join("mod.txt"), "old").unwrap();
    fs::write(s.join("del.txt"), "bye").unwrap();
    fs::write(s.join("old-name.txt"), "rename me").unwrap();
    fs::write(s.join("script.sh"), "echo hi\n").unwrap();
    fs::set_permissions(s.join("script.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir_all(s.join("dirfile/inner")).unwrap();
    fs::write(s.join("dirfile/inner/x"), "x").unwrap();
    fs::write(s.join("filedir"), "was a file").unwrap();
    fs::create_dir_all(s.join("olddir/sub")).unwrap();
    fs::write(s.join("olddir/sub/y"), "y").unwrap();
    fs::create_dir_all(s.join("gone/deep")).unwrap();
    fs::write(s.join("gone/deep/z"), "z").unwrap();
}

#[test]
fn honest_changes_are_mirrored() {
    let fx = Fx::new(honest_share);
    let keep_ino = fs::metadata(fx.share().join("keep.txt")).unwrap().ino();
    let ar = Ar::new()
        .manifest(&[
            "keep.txt",
            "mod.txt",
            "new-name.txt",
            "script.sh",
            "dirfile",
            "filedir",
            "filedir/in.txt",
            "renamed",
            "renamed/sub",
            "renamed/sub/y",
            "new",
            "new/n.bin",
            "new/hard",
            "link",
        ])
        .file("1/upper/mod.txt", 0o644, b"new")
        .file("1/upper/new-name.txt", 0o644, b"rename me")
        .file("1/upper/script.sh", 0o755, b"echo hi\n")
        .file("1/upper/dirfile", 0o600, b"now a file")
        .dir("1/upper/filedir", 0o750)
        .file("1/upper/filedir/in.txt", 0o644, b"inside")
        .dir("1/upper/renamed", 0o755)
        .dir("1/upper/renamed/sub", 0o755)
        .file("1/upper/renamed/sub/y", 0o644, b"y")
        .dir("1/upper/new", 0o700)
        .file("1/upper/new/n.bin", 0o644, b"\0\x01\xff\r\n")
        .hard_link("1/upper/new/hard", "1/upper/new/n.bin")
        .symlink("1/upper/link", "keep.txt")
        .raw(b"1/upper/del.txt", EntryType::Char, 0, b"", b"");
    let done = fx.applied(&ar.end());
    let want: BTreeMap<PathBuf, String> = [
        ("keep.txt", "file 644 keep"),
        ("mod.txt", "file 644 new"),
        ("new-name.txt", "file 644 rename me"),
        ("script.sh", "file 755 echo hi\\n"),
        ("dirfile", "file 600 now a file"),
        ("filedir", "dir 750"),
        ("filedir/in.txt", "file 644 inside"),
        ("renamed", "dir 755"),
        ("renamed/sub", "dir 755"),
        ("renamed/sub/y", "file 644 y"),
        ("new", "dir 700"),
        ("new/n.bin", "file 644 \\x00\\x01\\xff\\r\\n"),
        ("new/hard", "file 644 \\x00\\x01\\xff\\r\\n"),
        ("link", "symlink -> keep.txt"),
    ]
    .into_iter()
    .map(|(p, w)| (PathBuf::from(p), w.to_string()))
    .collect();
    assert_eq!(fx.inside(), want);
    // Untouched files are left alone, hard links stay links.
    assert_eq!(
        fs::metadata(fx.share().join("keep.txt")).unwrap().ino(),
        keep_ino
    );
    assert_eq!(
        fs::metadata(fx.share().join("new/hard")).unwrap().ino(),
        fs::metadata(fx.share().join("new/n.bin")).unwrap().ino()
    );
    assert!(done.kept.is_empty(), "{:?}", done.kept);
    assert_eq!(done.deleted, 10);
    // No staging directory is left behind.
    assert!(!fx
        .inside()
        .keys()
        .any(|p| p.to_string_lossy().contains("staging")));
}

#[test]
fn deletions_spare_what_the_host_changed_during_the_run() {
    let fx = Fx::new(honest_share);
    // The host works on the share while the guest runs.
    fs::write(fx.share().join("gone/made-on-host"), "mine").unwrap();
    fs::write(fx.share().join("del.txt"), "changed on the host").unwrap();
    let ar = Ar::new().manifest(&[
        "keep.txt",
        "mod.txt",
        "old-name.txt",
        "script.sh",
        "dirfile",
        "dirfile/inner",
        "dirfile/inner/x",
        "filedir",
        "olddir",
        "olddir/sub",
        "olddir/sub/y",
    ]);
    let done = fx.applied(&ar.end());
    assert_eq!(done.kept.len(), 2, "{:?}", done.kept);
    assert_eq!(
        fs::read(fx.share().join("gone/made-on-host")).unwrap(),
        b"mine"
    );
    assert!(!fx.share().join("gone/deep").exists());
    assert_eq!(
        fs::read(fx.share().join("del.txt")).unwrap(),
        b"changed on the host"
    );
}

#[test]
fn read_only_share_is_never_changed() {
    // Share 1 is writable, share 2 read-only: copy_back only ever gets the
    // writable ones, and an archive naming the other is refused whole.
    let fx = Fx::new(|s| fs::write(s.join("a"), "a").unwrap());
    let ro = fx.t.as_path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::write(ro.join("keep"), "keep").unwrap();
    let before = tree(&ro, None);
    let ar = Ar::new()
        .manifest(&["a", "new"])
        .file("1/upper/new", 0o644, b"new")
        .dir("2/upper", 0o755)
        .file("2/manifest", 0o644, b".\0")
        .file("2/upper/keep", 0o644, b"pwned");
    fx.refused(&ar.end(), "not under the number of a writable share");
    assert_eq!(tree(&ro, None), before);
}

#[test]
fn damaged_archives_change_nothing() {
    let fx = Fx::new(|s| fs::write(s.join("a"), "a").unwrap());
    let base = || Ar::new().manifest(&[]).file("1/upper/new", 0o644, b"n");
    fx.refused(&base().unfinished(), "end early");
    fx.refused(b"", "end early");
    fx.refused(&[0x55; 2048], "damaged");
    let ar = base()
        .file("end", 0o644, b"")
        .file("1/upper/late", 0o644, b"x");
    fx.refused(&ar.end(), "after the end marker");
    let ar = Ar::new().file("1/upper/new", 0o644, b"n");
    fx.refused(&ar.end(), "manifest");
    let ar = base().file("1/upper/new", 0o644, b"again");
    fx.refused(&ar.end(), "twice");
    let ar = base().raw(b"1/upper/pipe", EntryType::new(b'Z'), 0o644, b"", b"");
    fx.refused(&ar.end(), "type");
}

#[test]
fn device_nodes_and_whiteouts_are_skipped() {
    let fx = Fx::new(|s| fs::write(s.join("a"), "a").unwrap());
    let ar = Ar::new()
        .manifest(&["a", "fifo", "blk"])
        .raw(b"1/upper/fifo", EntryType::Fifo, 0o644, b"", b"")
        .raw(b"1/upper/blk", EntryType::Block, 0o644, b"", b"")
        .raw(b"1/upper/gone", EntryType::Char, 0, b"", b"");
    fx.applied(&ar.end());
    assert_eq!(fx.inside().len(), 1, "{:?}", fx.inside());
}

/// The init's share functions (between its markers), for busybox sh.
fn init_share_functions() -> String {
    let init = crate::exec::exec_init();
    let begin = init.find("# --- share functions: begin").unwrap();
    let end = init.find("# --- share functions: end").unwrap();
    init[begin..end].to_string()
}

/// What an honest command does to a share, run in the guest's overlay and
/// on a plain copy (the expected result).
const HONEST_COMMAND: &str = "
echo created >created.txt
mkdir -p newdir/deeper && printf '\\000\\001\\377' >newdir/deeper/bin
echo changed >mod.txt
rm del.txt
mv old-name.txt new-name.txt
mv olddir renamed-dir
chmod 755 script.sh
rm -r dirfile && echo now-a-file >dirfile
rm filedir && mkdir filedir && echo inside >filedir/in.txt
ln -s created.txt link
ln created.txt hard
rm -r gone
";

/// The exec init's pack step for real: `share_layers`, the overlay, an
/// honest command, `share_manifest`, `share_send`, all under the host's
/// busybox in a private mount namespace (needs root and overlayfs, as in
/// the guest); then the host applies the archive. The share must end up
/// exactly as the same command leaves a plain copy.
#[test]
fn init_pack_step_round_trip_under_busybox() {
    let fx = Fx::new(honest_share);
    let t = fx.t.as_path();
    let (img, merged, expect) = (t.join("img"), t.join("merged"), t.join("expect"));
    fs::create_dir(&merged).unwrap();
    for copy in [&img, &expect] {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(fx.share())
            .arg(copy)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let script = format!(
        "{functions}
set -e
share_layers \"$IMG\"
[ -d \"$IMG/lower/gone/deep\" ] && [ -d \"$IMG/upper\" ] && [ -d \"$IMG/work\" ]
if ! share_overlay \"$IMG\" \"$MERGED\" 2>/dev/null; then echo no-overlay; exit 0; fi
(cd \"$MERGED\" && {HONEST_COMMAND})
share_manifest \"$MERGED\" \"$IMG/manifest\"
umount \"$MERGED\"
mkdir \"$OUT/1\"
mount -o bind \"$IMG\" \"$OUT/1\"
share_send \"$OUT\" 1 >\"$OUT/shares.tar\"
umount \"$OUT/1\"
echo sent
",
        functions = init_share_functions()
    );
    let out_dir = dir();
    let run = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "busybox",
            "sh",
            "-c",
            &script,
        ])
        .env("IMG", &img)
        .env("MERGED", &merged)
        .env("OUT", out_dir.as_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() && !stdout.contains("sent") {
        let why = String::from_utf8_lossy(&run.stderr);
        if why.contains("unshare failed") || why.contains("Operation not permitted") {
            eprintln!("skipped: no private mount namespace here ({why})");
            return;
        }
    }
    if stdout.contains("no-overlay") {
        eprintln!("skipped: this host cannot mount overlayfs");
        return;
    }
    assert!(
        run.status.success() && stdout.contains("sent"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("cd \"$EXPECT\" && {HONEST_COMMAND}"))
        .env("EXPECT", &expect)
        .status()
        .unwrap();
    assert!(ok.success());

    let archive = fs::read(out_dir.as_path().join("shares.tar")).unwrap();
    let done = fx.applied(&archive);
    assert!(done.kept.is_empty(), "{:?}", done.kept);
    assert_eq!(fx.inside(), tree(&expect, None));
    assert_eq!(
        fs::metadata(fx.share().join("hard")).unwrap().ino(),
        fs::metadata(fx.share().join("created.txt")).unwrap().ino()
    );
}
