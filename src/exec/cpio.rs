//! A minimal writer for the "newc" cpio format the kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//! `kvmini exec` appends one such archive, holding its init script and the
//! job, to the guest's initrd: the kernel unpacks concatenated archives in
//! order, later files on top of earlier ones.

use std::fs::File;
use std::io::{self, Write};

/// One archive member.
pub enum Entry<'a> {
    Dir {
        path: &'a str,
        mode: u32,
    },
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, nlink: u32, size: usize, name: &str) {
    // Fields: magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check.
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

/// The archive, 4-byte aligned, ending with the trailer.
pub fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, e) in (1u32..).zip(entries) {
        match e {
            Entry::Dir { path, mode } => header(&mut out, ino, S_IFDIR | mode, 2, 0, path),
            Entry::File { path, mode, data } => {
                header(&mut out, ino, S_IFREG | mode, 1, data.len(), path);
                out.extend_from_slice(data);
                pad4(&mut out);
            }
        }
    }
    header(&mut out, 0, 0, 1, 0, "TRAILER!!!");
    out
}

/// Writes the initrd `base` (compressed or not) followed by `extra` to
/// `out`: zero padding to a 4-byte boundary first, which the kernel skips
/// between archives. The base is copied by the kernel (copy_file_range),
/// not read into kvmini: a bench initrd is ~90 MB, and `exec --timeout`
/// counts this time.
pub fn append_file(base: &mut File, extra: &[u8], out: &mut File) -> io::Result<()> {
    let n = io::copy(base, out)?;
    let pad = (4 - (n % 4) as usize) % 4;
    out.write_all(&[0u8; 3][..pad])?;
    out.write_all(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let a = archive(&[
            Entry::Dir {
                path: "kvmini",
                mode: 0o755,
            },
            Entry::File {
                path: "kvmini/job",
                mode: 0o644,
                data: b"hello",
            },
        ]);
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        // Directory header: 110 bytes + "kvmini\0" (7) = 117, padded to 120.
        let second = &a[120..];
        assert!(second.starts_with(b"070701"));
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        assert_eq!(field(&a, 1), 0o040755);
        assert_eq!(field(second, 1), 0o100644);
        assert_eq!(field(second, 6), 5, "file size");
        assert_eq!(field(second, 11), 11, "name size with NUL");
        // Header 110 + name 11 = 121 -> 124, then the data.
        assert_eq!(&second[124..129], b"hello");
        let trailer = &second[132..];
        assert!(trailer.starts_with(b"070701"));
        assert_eq!(&trailer[110..121], b"TRAILER!!!\0");
    }

    #[test]
    fn append_pads_to_four_bytes() {
        let join = |base: &[u8], extra: &[u8]| {
            let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
            let (b, o) = (dir.as_path().join("base"), dir.as_path().join("out"));
            std::fs::write(&b, base).unwrap();
            let mut out = File::create(&o).unwrap();
            append_file(&mut File::open(&b).unwrap(), extra, &mut out).unwrap();
            std::fs::read(&o).unwrap()
        };
        let joined = join(&[1, 2, 3, 4, 5], b"0707");
        assert_eq!(joined, [1, 2, 3, 4, 5, 0, 0, 0, b'0', b'7', b'0', b'7']);
        assert_eq!(join(&[1, 2, 3, 4], b"x"), [1, 2, 3, 4, b'x']);
    }
}
