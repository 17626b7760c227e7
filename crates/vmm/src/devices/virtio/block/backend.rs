//! The host side of a virtio-blk disk: a raw image file (or block device),
//! opened and locked once, then read and written at offsets (pread/pwrite)
//! straight into and out of guest memory.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{
    GuestAddress, GuestMemory, Permissions, ReadVolatile, VolatileMemoryError, VolatileSlice,
    WriteVolatile,
};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

/// virtio-blk sectors are always 512 bytes.
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

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

    /// Reads `len` bytes of the disk at `offset` into guest memory at `addr`.
    pub fn read_to<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        let mut at = FileAt {
            file: &self.file,
            offset,
        };
        check_range(mem, addr, len, Permissions::Write)?;
        let slices = mem
            .get_slices(addr, len, Permissions::Write)
            .map_err(io::Error::other)?;
        for slice in slices {
            let mut slice = slice.map_err(io::Error::other)?;
            at.read_exact_volatile(&mut slice).map_err(volatile_err)?;
        }
        Ok(())
    }

    /// Writes `len` bytes of guest memory at `addr` to the disk at `offset`.
    pub fn write_from<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        addr: GuestAddress,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        if self.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        let mut at = FileAt {
            file: &self.file,
            offset,
        };
        check_range(mem, addr, len, Permissions::Read)?;
        let slices = mem
            .get_slices(addr, len, Permissions::Read)
            .map_err(io::Error::other)?;
        for slice in slices {
            let slice = slice.map_err(io::Error::other)?;
            at.write_all_volatile(&slice).map_err(volatile_err)?;
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

fn volatile_err(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        e => io::Error::other(e),
    }
}

/// A file position for pread/pwrite, so one file serves every request
/// without seeking.
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    fn advance(&mut self, n: isize) -> Result<usize, VolatileMemoryError> {
        if n < 0 {
            return Err(VolatileMemoryError::IOError(io::Error::last_os_error()));
        }
        let n = n as usize;
        self.offset += n as u64;
        Ok(n)
    }

    fn offset(&self) -> Result<libc::off64_t, VolatileMemoryError> {
        libc::off64_t::try_from(self.offset)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::from_raw_os_error(libc::EINVAL)))
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the fd is open for the lifetime of `self.file`; the
        // destination is valid for writes of `buf.len()` bytes, as the
        // VolatileSlice (and its guard, alive across the call) guarantees.
        let n = unsafe {
            libc::pread64(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        let n = self.advance(n)?;
        buf.bitmap().mark_dirty(0, n);
        Ok(n)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let offset = self.offset()?;
        let guard = buf.ptr_guard();
        // SAFETY: the fd is open for the lifetime of `self.file`; the source
        // is valid for reads of `buf.len()` bytes, as the VolatileSlice (and
        // its guard, alive across the call) guarantees.
        let n = unsafe {
            libc::pwrite64(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        self.advance(n)
    }
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
