//! The host side of a virtio-blk disk: a raw image file (or block device),
//! opened and locked once, then read and written at offsets
//! (preadv/pwritev) straight into and out of guest memory.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemory, Permissions};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use super::request::Segment;

/// virtio-blk sectors are always 512 bytes.
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;
/// Ranges per preadv/pwritev (Linux's UIO_MAXIOV).
const IOV_MAX: usize = 1024;
/// Bytes per preadv/pwritev: a stopping VM waits for one call at most.
const MAX_CALL_BYTES: usize = 1 << 20;

#[derive(Debug)]
pub enum Error {
    NotFound(PathBuf),
    Open(PathBuf, io::Error),
    Metadata(PathBuf, io::Error),
    NotADisk(PathBuf),
    Size(PathBuf, u64),
    Locked(PathBuf),
    Lock(PathBuf, io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(p) => write!(f, "disk image {} does not exist", p.display()),
            Self::Open(p, e) => write!(f, "cannot open disk image {}: {e}", p.display()),
            Self::Metadata(p, e) => write!(f, "cannot stat disk image {}: {e}", p.display()),
            Self::NotADisk(p) => write!(
                f,
                "disk image {} is not a regular file or block device",
                p.display()
            ),
            Self::Size(p, s) => write!(
                f,
                "size of disk image {} ({s} bytes) is not a multiple of 512",
                p.display()
            ),
            Self::Locked(p) => write!(
                f,
                "disk image {} is in use by another process (locked)",
                p.display()
            ),
            Self::Lock(p, e) => write!(f, "cannot lock disk image {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Open(_, e) | Self::Metadata(_, e) | Self::Lock(_, e) => Some(e),
            _ => None,
        }
    }
}

pub struct DiskFile {
    file: File,
    path: PathBuf,
    size: u64,
    readonly: bool,
    /// PUNCH_HOLE works on this file (probed at open).
    discard: bool,
    /// ZERO_RANGE works (cleared the first time it does not).
    zero_range: AtomicBool,
    id: [u8; ID_BYTES],
    /// fdatasync calls that succeeded, shared with whoever asked for it
    /// (see [`DiskFile::sync_counter`]).
    syncs: Arc<AtomicU64>,
}

impl DiskFile {
    /// Opens and locks `path`: exclusively when writable, shared when not,
    /// so two VMs never write the same image.
    ///
    /// Only regular files and block devices are opened: the type is checked
    /// before the open (opening a FIFO would block, opening a character
    /// device such as /dev/watchdog has side effects) and again on the open
    /// file, which is opened non-blocking in case the path changed between.
    pub fn open(path: &Path, readonly: bool) -> Result<Self, Error> {
        let not_found = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(path.into()),
            _ => Error::Metadata(path.into(), e),
        };
        if !is_disk_type(std::fs::metadata(path).map_err(not_found)?.file_type()) {
            return Err(Error::NotADisk(path.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotFound(path.into()),
                _ => Error::Open(path.into(), e),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| Error::Metadata(path.into(), e))?;
        let ft = meta.file_type();
        if !is_disk_type(ft) {
            return Err(Error::NotADisk(path.into()));
        }
        clear_nonblocking(&file).map_err(|e| Error::Open(path.into(), e))?;
        lock(&file, readonly).map_err(|e| match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => Error::Locked(path.into()),
            _ => Error::Lock(path.into(), e),
        })?;
        // Block devices report a zero length; their end tells the size.
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| Error::Metadata(path.into(), e))?;
        if size % SECTOR_SIZE != 0 {
            return Err(Error::Size(path.into(), size));
        }
        let discard = !readonly && ft.is_file() && probe_punch_hole(&file, size);
        Ok(Self {
            id: disk_id(meta.dev(), meta.ino()),
            file,
            path: path.into(),
            size,
            readonly,
            discard,
            zero_range: AtomicBool::new(!readonly),
            syncs: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.size >> SECTOR_SHIFT
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// DISCARD can be offered: holes can be punched.
    pub fn supports_discard(&self) -> bool {
        self.discard
    }

    /// The 20-byte serial derived from the image's device and inode numbers.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Reads the disk from `offset` on into the guest ranges `data`, one
    /// after the other (see [`Self::transfer`]).
    pub fn read_into<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        data: &[Segment],
        offset: u64,
        stop: impl Fn() -> io::Result<()>,
    ) -> io::Result<()> {
        self.transfer(mem, data, offset, Direction::Read, MAX_CALL_BYTES, stop)
    }

    /// Writes the guest ranges `data`, one after the other, to the disk
    /// from `offset` on (see [`Self::transfer`]).
    pub fn write_from<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        data: &[Segment],
        offset: u64,
        stop: impl Fn() -> io::Result<()>,
    ) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        self.transfer(mem, data, offset, Direction::Write, MAX_CALL_BYTES, stop)
    }

    /// Moves data between the disk and the guest ranges `data` with as few
    /// system calls as they allow: one preadv/pwritev for up to
    /// [`IOV_MAX`] ranges and `cap` bytes ([`MAX_CALL_BYTES`]; a range
    /// longer than that is split), so a 1 MiB request the guest sends as
    /// 256 page-sized pieces is one call, not 256. Every range is checked
    /// against guest memory before any I/O; `stop` is asked before each
    /// call, so a VM that is stopping gives up within one call's worth of
    /// I/O. A call that moves less than asked is simply continued.
    fn transfer<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        data: &[Segment],
        offset: u64,
        dir: Direction,
        cap: usize,
        stop: impl Fn() -> io::Result<()>,
    ) -> io::Result<()> {
        let access = match dir {
            // Reading the disk writes guest memory.
            Direction::Read => Permissions::Write,
            Direction::Write => Permissions::Read,
        };
        let mut slices = Vec::with_capacity(data.len());
        for seg in data {
            let len = seg.len as usize;
            check_range(mem, seg.addr, len, access)?;
            for slice in mem
                .get_slices(seg.addr, len, access)
                .map_err(io::Error::other)?
            {
                slices.push(slice.map_err(io::Error::other)?);
            }
        }
        // The guards keep the pointers valid until the calls are done.
        let guards: Vec<_> = slices.iter().map(|s| s.ptr_guard_mut()).collect();
        let mut iov: Vec<libc::iovec> = guards
            .iter()
            .zip(&slices)
            .map(|(g, s)| libc::iovec {
                iov_base: g.as_ptr().cast(),
                iov_len: s.len(),
            })
            .collect();
        let mut pos = offset;
        // The first range not done yet, and how many of its bytes are
        // (its iovec is moved past them).
        let (mut first, mut skip) = (0usize, 0usize);
        while first < iov.len() {
            stop()?;
            // This call's ranges: whole ranges within both limits, or the
            // first `cap` bytes of a range longer than `cap`.
            let part;
            let call = if iov[first].iov_len > cap {
                part = [libc::iovec {
                    iov_base: iov[first].iov_base,
                    iov_len: cap,
                }];
                &part[..]
            } else {
                let (mut n, mut bytes) = (0usize, 0usize);
                for v in &iov[first..] {
                    if n == IOV_MAX || bytes + v.iov_len > cap {
                        break;
                    }
                    n += 1;
                    bytes += v.iov_len;
                }
                &iov[first..first + n]
            };
            let at = libc::off64_t::try_from(pos)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let fd = self.file.as_raw_fd();
            // At most IOV_MAX.
            let count = call.len() as libc::c_int;
            let done = match dir {
                // SAFETY: `call` is `count` iovecs describing guest memory
                // valid for writes (checked above; the guards are alive),
                // `fd` is open.
                Direction::Read => unsafe { libc::preadv64(fd, call.as_ptr(), count, at) },
                // SAFETY: as above, valid for reads.
                Direction::Write => unsafe { libc::pwritev64(fd, call.as_ptr(), count, at) },
            };
            if done < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if done == 0 {
                return Err(match dir {
                    Direction::Read => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the disk ended before the request did",
                    ),
                    Direction::Write => io::Error::from(io::ErrorKind::WriteZero),
                });
            }
            let mut left = done as usize;
            pos += left as u64;
            while left > 0 {
                let rest = iov[first].iov_len;
                let take = rest.min(left);
                if dir == Direction::Read {
                    slices[first].bitmap().mark_dirty(skip, take);
                }
                left -= take;
                if take == rest {
                    (first, skip) = (first + 1, 0);
                } else {
                    let v = &mut iov[first];
                    // SAFETY: `take` < the bytes left in this range, so the
                    // pointer stays inside the range its guard keeps valid.
                    v.iov_base = unsafe { v.iov_base.cast::<u8>().add(take).cast() };
                    v.iov_len -= take;
                    skip += take;
                }
            }
        }
        Ok(())
    }

    /// Makes written data durable (fdatasync).
    pub fn flush(&self) -> io::Result<()> {
        if self.readonly {
            return Ok(());
        }
        self.file.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many times written data was made durable (successful fdatasync
    /// calls, including the one on drop). The counter outlives the disk, so
    /// the flush on close can be observed.
    pub fn sync_counter(&self) -> Arc<AtomicU64> {
        self.syncs.clone()
    }

    /// Deallocates a range; it reads back as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.discard {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        fallocate(&self.file, FallocateMode::PunchHole, true, offset, len).map_err(Into::into)
    }

    /// Zeroes a range: by punching a hole when `unmap` is allowed, else with
    /// ZERO_RANGE, else by writing zeros.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        if unmap && self.discard && self.discard(offset, len).is_ok() {
            return Ok(());
        }
        if self.zero_range.load(Ordering::Relaxed) {
            match fallocate(&self.file, FallocateMode::ZeroRange, true, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if matches!(e.errno(), libc::EOPNOTSUPP | libc::EINVAL | libc::ENODEV) => {
                    log::debug!(
                        "{}: no ZERO_RANGE ({e}); writing zeros",
                        self.path.display()
                    );
                    self.zero_range.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.write_zeros_slow(offset, len)
    }

    fn write_zeros_slow(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        const CHUNK: u64 = 64 << 10;
        let zeros = [0u8; CHUNK as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK) as usize;
            let pos = offset
                .checked_add(done)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
            self.file.write_all_at(&zeros[..n], pos)?;
            done += n as u64;
        }
        Ok(())
    }
}

impl Drop for DiskFile {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            log::error!("{}: flushing on close failed: {e}", self.path.display());
        }
    }
}

/// Regular files and block devices are disks; FIFOs, sockets, character
/// devices and directories are not.
fn is_disk_type(ft: std::fs::FileType) -> bool {
    ft.is_file() || ft.is_block_device()
}

/// Back to blocking I/O once the file is known to be a disk.
fn clear_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL on a file descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL with an integer argument on a file descriptor we own.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lock(file: &File, shared: bool) -> io::Result<()> {
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX } | libc::LOCK_NB;
    // SAFETY: flock only takes a file descriptor, which `file` keeps open for
    // the duration of the call; it touches no memory of ours.
    let ret = unsafe { libc::flock(file.as_raw_fd(), op) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether punching holes works, tried past the end of the file where there
/// is no data to lose (KEEP_SIZE leaves the size alone).
fn probe_punch_hole(file: &File, size: u64) -> bool {
    fallocate(file, FallocateMode::PunchHole, true, size, SECTOR_SIZE).is_ok()
}

fn disk_id(dev: u64, ino: u64) -> [u8; ID_BYTES] {
    let s = format!("{:08x}{:012x}", dev as u32, ino & 0xffff_ffff_ffff);
    let mut id = [0u8; ID_BYTES];
    id.copy_from_slice(&s.as_bytes()[..ID_BYTES]);
    id
}

fn check_range<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: usize,
    access: Permissions,
) -> io::Result<()> {
    if mem.check_range(addr, len, access) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("guest range {:#x}+{len:#x} is not in guest memory", addr.0),
        ))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Disk to guest.
    Read,
    /// Guest to disk.
    Write,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;
    use vmm_sys_util::tempdir::TempDir;

    /// Runs `open` on another thread: a FIFO opened for I/O would block
    /// forever, which must show as a failed test, not a hung one.
    fn open_within(path: &Path, readonly: bool, limit: Duration) -> Result<(), String> {
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(DiskFile::open(&p, readonly).map(|_| ()));
        });
        match rx.recv_timeout(limit) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("open blocked".into()),
        }
    }

    /// Guest memory of two adjacent regions (a range can span both), with
    /// dirty bitmaps of type `B`.
    fn two_regions<B: vm_memory::bitmap::NewBitmap>() -> vm_memory::GuestMemoryMmap<B> {
        vm_memory::GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x40_0000),
            (GuestAddress(0x40_0000), 0x40_0000),
        ])
        .unwrap()
    }

    fn disk_of(dir: &TempDir, len: usize) -> DiskFile {
        let img = dir.as_path().join("disk.img");
        std::fs::write(&img, vec![0u8; len]).unwrap();
        DiskFile::open(&img, false).unwrap()
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    /// The bytes of `ranges` in guest memory, one after the other.
    fn gather<M: GuestMemory>(mem: &M, ranges: &[Segment]) -> Vec<u8> {
        use vm_memory::Bytes;
        let mut bytes = Vec::new();
        for s in ranges {
            let mut part = vec![0u8; s.len as usize];
            mem.read_slice(&mut part, s.addr).unwrap();
            bytes.extend(part);
        }
        bytes
    }

    /// Counts the calls `transfer` makes (it asks `stop` before each).
    fn counting(calls: &std::cell::Cell<usize>) -> impl Fn() -> io::Result<()> + '_ {
        move || {
            calls.set(calls.get() + 1);
            Ok(())
        }
    }

    #[test]
    fn ranges_per_call_stop_at_iov_max() {
        use vm_memory::Bytes;
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-disk.")).unwrap();
        let disk = disk_of(&dir, 2 << 20);
        let mem = two_regions::<()>();
        // 512-byte ranges every other KiB, so none merges with the next.
        let ranges = |n: u64| {
            (0..n)
                .map(|i| seg(0x10_0000 + 1024 * i, 512))
                .collect::<Vec<_>>()
        };
        for i in 0..1025u64 {
            mem.write_slice(&[i as u8; 512], GuestAddress(0x10_0000 + 1024 * i))
                .unwrap();
        }
        let calls = std::cell::Cell::new(0);
        disk.write_from(&mem, &ranges(1024), 0, counting(&calls))
            .unwrap();
        assert_eq!(calls.get(), 1, "1024 ranges: one pwritev");
        calls.set(0);
        disk.write_from(&mem, &ranges(1025), 0, counting(&calls))
            .unwrap();
        assert_eq!(calls.get(), 2, "1025 ranges: two");
        use std::os::unix::fs::FileExt;
        let mut file = vec![0u8; 1025 * 512];
        disk.file.read_exact_at(&mut file, 0).unwrap();
        for (i, chunk) in file.chunks(512).enumerate() {
            assert!(chunk.iter().all(|&b| b == i as u8), "range {i} on disk");
        }
    }

    #[test]
    fn scattered_ranges_round_trip_in_megabyte_calls() {
        use std::os::unix::fs::FileExt;
        use vm_memory::Bytes;
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-disk.")).unwrap();
        let disk = disk_of(&dir, 4 << 20);
        let pattern: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        disk.file.write_all_at(&pattern, 4096).unwrap();
        let mem = two_regions::<()>();
        mem.write_slice(&vec![0xeeu8; 0x80_0000], GuestAddress(0))
            .unwrap();
        // 3 MiB in three 1 MiB ranges, out of order in memory, the last
        // across the two regions: one call each.
        let back = [
            seg(0x50_0000, 1 << 20),
            seg(0x10_0000, 1 << 20),
            seg(0x38_0000, 1 << 20),
        ];
        let calls = std::cell::Cell::new(0);
        disk.read_into(&mem, &back, 4096, counting(&calls)).unwrap();
        assert_eq!(calls.get(), 3, "MAX_CALL_BYTES per call");
        let got = gather(&mem, &back);
        assert!(got == pattern, "every byte of the three ranges read back");
        // The same ranges written to another place on the disk.
        disk.write_from(&mem, &back, 0, || Ok(())).unwrap();
        let mut file = vec![0u8; 3 << 20];
        disk.file.read_exact_at(&mut file, 0).unwrap();
        assert!(file == pattern, "every byte written");
    }

    /// Calls that move less than asked (here: every call, at most 777
    /// bytes) are continued where they stopped, ranges of any size and
    /// alignment, an empty one and one across two regions; what is read
    /// is marked dirty, and nothing else.
    #[test]
    fn short_calls_continue_where_they_stopped() {
        use std::os::unix::fs::FileExt;
        use vm_memory::bitmap::AtomicBitmap;
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let mem = two_regions::<AtomicBitmap>();
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-disk.")).unwrap();
        let disk = disk_of(&dir, 1 << 20);
        let data = [
            seg(0x1_0003, 1000),
            seg(0x2_0000, 0),
            seg(0x3f_fe01, 2000),
            seg(0x5_0011, 1),
            seg(0x7_0000, 3 * 4096),
        ];
        let total: usize = data.iter().map(|s| s.len as usize).sum();
        let pattern: Vec<u8> = (0..total).map(|i| (i % 253) as u8 + 1).collect();
        let mut at = 0;
        for s in &data {
            mem.write_slice(&pattern[at..at + s.len as usize], s.addr)
                .unwrap();
            at += s.len as usize;
        }
        disk.transfer(&mem, &data, 512, Direction::Write, 777, || Ok(()))
            .unwrap();
        let mut file = vec![0u8; total];
        disk.file.read_exact_at(&mut file, 512).unwrap();
        assert!(file == pattern, "written across short calls");

        // Into fresh memory: other ranges, nothing marked dirty yet.
        let mem = two_regions::<AtomicBitmap>();
        let dirty = |a: u64| {
            let (r, off) = mem.to_region_addr(GuestAddress(a)).unwrap();
            r.bitmap().dirty_at(off.0 as usize)
        };
        let calls = std::cell::Cell::new(0);
        disk.transfer(&mem, &data, 512, Direction::Read, 777, counting(&calls))
            .unwrap();
        assert!(calls.get() > data.len(), "ranges were split across calls");
        let got = gather(&mem, &data);
        assert!(got == pattern, "read across short calls");
        for s in data.iter().filter(|s| s.len > 0) {
            let (first, last) = (s.addr.0, s.addr.0 + u64::from(s.len) - 1);
            for a in (first..=last).step_by(4096).chain([last]) {
                assert!(dirty(a), "{a:#x} in the range at {first:#x} is dirty");
            }
        }
        assert!(!dirty(0x2_0000), "the empty range's page is not dirty");
        assert!(!dirty(0x6_0000), "a page outside every range is not dirty");
    }

    #[test]
    fn a_stop_or_a_short_disk_ends_the_transfer() {
        use std::os::unix::fs::FileExt;
        use vm_memory::Bytes;
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-disk.")).unwrap();
        let disk = disk_of(&dir, 3 << 20);
        let mem = two_regions::<()>();
        mem.write_slice(&vec![7u8; 2 << 20], GuestAddress(0))
            .unwrap();
        let data = [seg(0, 1 << 20), seg(1 << 20, 1 << 20)];
        // Stopping after the first call: the second megabyte is not written.
        let calls = std::cell::Cell::new(0);
        let stop = || {
            calls.set(calls.get() + 1);
            match calls.get() {
                1 => Ok(()),
                _ => Err(io::Error::new(io::ErrorKind::Interrupted, "stopping")),
            }
        };
        let e = disk.write_from(&mem, &data, 0, stop).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        let mut file = vec![0u8; 3 << 20];
        disk.file.read_exact_at(&mut file, 0).unwrap();
        assert!(file[..1 << 20].iter().all(|&b| b == 7));
        assert!(file[1 << 20..].iter().all(|&b| b == 0));
        // A disk that ends inside the request (it shrank under us): an
        // error, not a loop.
        let e = disk.read_into(&mem, &data, 2 << 20, || Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        // Ranges outside guest memory fail before any I/O: the first
        // range's new bytes never reach the disk.
        mem.write_slice(&[9u8; 512], GuestAddress(0x10_0000))
            .unwrap();
        let e = disk
            .write_from(
                &mem,
                &[seg(0x10_0000, 512), seg(0x80_0000, 512)],
                2 << 20,
                || Ok(()),
            )
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut after = vec![0u8; 512];
        disk.file.read_exact_at(&mut after, 2 << 20).unwrap();
        assert!(after.iter().all(|&b| b == 0), "nothing was written");
    }

    #[test]
    fn only_regular_files_and_block_devices_are_opened() {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kvmini-disk.")).unwrap();
        let fifo = dir.as_path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for readonly in [true, false] {
            let e = open_within(&fifo, readonly, Duration::from_secs(5)).unwrap_err();
            assert!(e.contains("not a regular file or block device"), "{e}");
        }
        // A character device is refused before it is opened at all.
        let e = open_within(Path::new("/dev/null"), true, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("not a regular file or block device"), "{e}");
        let e = open_within(dir.as_path(), true, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("not a regular file or block device"), "{e}");
        let img = dir.as_path().join("disk.img");
        std::fs::write(&img, vec![0u8; 1024]).unwrap();
        open_within(&img, false, Duration::from_secs(5)).unwrap();
        // The disk is back in blocking mode for its I/O.
        let d = DiskFile::open(&img, true).unwrap();
        // SAFETY: F_GETFL on an open descriptor.
        let flags = unsafe { libc::fcntl(d.file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }
}
