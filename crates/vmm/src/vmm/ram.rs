//! Guest RAM, mapped so that KVM can back it with 2 MiB pages.
//!
//! KVM maps a guest page with a 2 MiB page of the host (one EPT/NPT entry,
//! one fault, one TLB entry instead of 512) only where the guest-physical
//! and the host-virtual address agree modulo 2 MiB and the host memory is
//! a transparent huge page. An anonymous `mmap` of the kernels we run on
//! (before Linux 6.7) starts on any 4 KiB boundary, so guest RAM mapped by
//! `GuestMemoryMmap::from_ranges` usually got 4 KiB pages only. Measured in
//! the nested rig: 48,106 nested page faults to reach a guest's `/init`
//! with an 85 MB initramfs, against 97 for Firecracker booting the same
//! guest, and the guest's initramfs unpacking 3.5x slower
//! (docs/benchmarks.md).
//!
//! So each region is mapped here, on a 2 MiB boundary, and handed to
//! vm-memory as a mapping it uses but does not own. [`GuestRam`] owns it:
//! it unmaps it when nothing else holds the regions any more (every device
//! and vCPU thread gone), and otherwise leaves it to the process's exit.
//!
//! Shared RAM ([`GuestRam::new_shared`], for vhost-user devices such as
//! `--fs`): the regions are a memfd mapped `MAP_SHARED` at the same aligned
//! addresses, and each region carries its file and offset, which the
//! vhost-user backend maps in its own process. Linux backs such memory
//! with huge pages only when the host's `shmem_enabled` says so (Debian:
//! `never`), so private anonymous memory stays the default.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::ptr::null_mut;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// The alignment of every region's host address: an x86 large page.
pub const HUGE_PAGE: usize = 2 << 20;

/// The host's base page.
const PAGE: usize = 4096;

/// One anonymous mapping of ours: `[addr, addr + len)`.
struct Mapping {
    addr: *mut u8,
    len: usize,
}

/// Guest RAM and the mappings behind it.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    regions: Vec<Arc<GuestRegionMmap>>,
    maps: Vec<Mapping>,
}

impl GuestRam {
    /// Maps `ranges` (guest address, length), each on a [`HUGE_PAGE`]
    /// boundary of the host, as private anonymous memory.
    pub fn new(ranges: &[(GuestAddress, usize)]) -> io::Result<Self> {
        Self::build(ranges, None)
    }

    /// Like [`Self::new`], but the memory is one memfd, mapped shared, and
    /// every region knows its file and offset: a vhost-user backend can map
    /// it too.
    pub fn new_shared(ranges: &[(GuestAddress, usize)]) -> io::Result<Self> {
        let total = ranges.iter().try_fold(0u64, |sum, &(_, len)| {
            sum.checked_add(page_span(len)? as u64)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
        })?;
        // SAFETY: the name is a NUL-terminated string; memfd_create only
        // creates a new descriptor.
        let fd = unsafe {
            libc::memfd_create(
                c"kvmini-guest-ram".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(total)?;
        // Its size is final: a backend that truncated it would make the
        // VMM's own accesses to guest memory fault (SIGBUS).
        // SAFETY: F_ADD_SEALS on a descriptor we own; no memory involved.
        let sealed = unsafe {
            libc::fcntl(
                file.as_raw_fd(),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
            )
        };
        if sealed < 0 {
            return Err(io::Error::last_os_error());
        }
        Self::build(ranges, Some(Arc::new(file)))
    }

    fn build(ranges: &[(GuestAddress, usize)], file: Option<Arc<File>>) -> io::Result<Self> {
        // Built up in place, so that on any error below its Drop unmaps
        // what was mapped so far (no region is shared with anyone yet).
        let mut ram = Self {
            mem: GuestMemoryMmap::default(),
            regions: Vec::with_capacity(ranges.len()),
            maps: Vec::with_capacity(ranges.len()),
        };
        let mut offset = 0u64;
        for &(base, len) in ranges {
            let map = map_aligned(len)?;
            let addr = map.addr;
            let span = map.len;
            ram.maps.push(map);
            let mut builder = MmapRegionBuilder::new(len)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE);
            if let Some(file) = &file {
                map_file_over(addr, span, file, offset)?;
                builder = builder
                    .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
                    .with_file_offset(FileOffset::from_arc(file.clone(), offset));
                offset += span as u64;
            }
            // SAFETY: `addr..addr + len` is the mapping just made, readable
            // and writable, and it stays mapped until `Self::drop`, which
            // unmaps it only when no region built on it is left.
            let mapping = unsafe { builder.with_raw_mmap_pointer(addr) }
                .build()
                .map_err(|e| io::Error::other(format!("{e}")))?;
            let region = GuestRegionMmap::new(mapping, base).ok_or_else(|| {
                io::Error::other(format!("guest range at {:#x} wraps around", base.0))
            })?;
            ram.regions.push(Arc::new(region));
        }
        ram.mem = GuestMemoryMmap::from_arc_regions(ram.regions.clone())
            .map_err(|e| io::Error::other(format!("{e}")))?;
        Ok(ram)
    }

    /// The guest memory, to clone into devices and vCPU threads.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // Ours, and then only ours: if anything else still holds a region
        // (a thread that did not stop in time), the memory stays mapped
        // until the process exits, even after that holder is gone.
        self.mem = GuestMemoryMmap::default();
        if self.regions.iter().any(|r| Arc::strong_count(r) > 1) {
            log::debug!("guest memory still in use; left to the process's exit");
            self.maps.clear();
            return;
        }
        self.regions.clear();
        for m in self.maps.drain(..) {
            // SAFETY: `m` is a mapping of ours, and no region built on it is
            // left (checked above), so nothing can reach it any more.
            unsafe { libc::munmap(m.addr.cast(), m.len) };
        }
    }
}

/// `len` rounded up to whole pages (a length that is not a multiple of
/// 4 KiB still ends on a page boundary, so a mapping's tail can be unmapped).
fn page_span(len: usize) -> io::Result<usize> {
    len.checked_next_multiple_of(PAGE)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Replaces the mapping `[addr, addr + span)` (one of ours) with `file`
/// from `offset` on, shared.
fn map_file_over(addr: *mut u8, span: usize, file: &File, offset: u64) -> io::Result<()> {
    let off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: MAP_FIXED over `[addr, addr + span)`, which is a mapping of
    // ours that nothing refers to yet (no region is built on it): only it
    // is replaced.
    let got = unsafe {
        libc::mmap(
            addr.cast(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_NORESERVE | libc::MAP_FIXED,
            file.as_raw_fd(),
            off,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An anonymous private mapping of `len` bytes whose start is a multiple of
/// [`HUGE_PAGE`]: `len + HUGE_PAGE` bytes are mapped, and the slack before
/// and after the aligned part is unmapped again.
fn map_aligned(len: usize) -> io::Result<Mapping> {
    // The part kept, whole pages.
    let span = page_span(len)?;
    let over = span
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new anonymous mapping at an address the kernel picks: no
    // existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            null_mut(),
            over,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let head = aligned - start;
    let tail = over - head - span;
    // SAFETY: both ranges lie inside the mapping just made, which nothing
    // else knows of; unmapping page-aligned parts of it leaves the rest.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + span) as *mut libc::c_void, tail);
        }
    }
    // No MADV_HUGEPAGE: with the kernel's default THP defrag setting
    // (`madvise`) it makes every first touch of a 2 MiB page compact
    // memory synchronously when none is free. In the rig that stalled the
    // initrd copy for seconds (`exec --timeout 5s` ended after 7.9 s).
    // Hosts whose THP mode is `always` (Debian's default) give huge pages
    // without it, when they have them free.
    Ok(Mapping {
        addr: aligned as *mut u8,
        len: span,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

    const MIB: usize = 1 << 20;

    #[test]
    fn every_region_starts_on_a_huge_page_and_holds_data() {
        let ranges = [
            (GuestAddress(0), 6 * MIB + 4096),
            (GuestAddress(1 << 32), 2 * MIB),
        ];
        let ram = GuestRam::new(&ranges).unwrap();
        let mem = ram.mem();
        assert_eq!(mem.num_regions(), 2);
        for (region, &(base, len)) in mem.iter().zip(&ranges) {
            let host = region.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE, 0, "region at {base:?} maps to {host:#x}");
            assert_eq!(region.start_addr(), base);
            assert_eq!(region.len(), len as u64);
        }
        // The last byte of each region is there, and the byte after the
        // first one is not guest memory.
        mem.write_obj(0xa5u8, GuestAddress(6 * MIB as u64 + 4095))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(6 * MIB as u64 + 4095))
                .unwrap(),
            0xa5
        );
        assert!(mem
            .write_obj(1u8, GuestAddress(6 * MIB as u64 + 4096))
            .is_err());
        mem.write_obj(7u64, GuestAddress((1 << 32) + 2 * MIB as u64 - 8))
            .unwrap();
    }

    /// The mapping is gone once the RAM and every clone of its memory are.
    #[test]
    fn unmapped_when_the_last_user_is_gone() {
        let ram = GuestRam::new(&[(GuestAddress(0), 4 * MIB)]).unwrap();
        let clone = ram.mem().clone();
        let host = clone.get_host_address(GuestAddress(0)).unwrap() as usize;
        drop(ram);
        // A clone is still out: still mapped, still usable.
        clone.write_obj(3u32, GuestAddress(64)).unwrap();
        assert!(is_mapped(host));
        drop(clone);
        // Leaked (a clone outlived the owner): left to the process's exit.
        assert!(is_mapped(host));

        let ram = GuestRam::new(&[(GuestAddress(0), 4 * MIB)]).unwrap();
        let host = ram.mem().get_host_address(GuestAddress(0)).unwrap() as usize;
        assert!(is_mapped(host));
        drop(ram);
        assert!(!is_mapped(host));
    }

    /// Shared RAM: aligned like private RAM, and what the guest writes is in
    /// the memfd at the region's offset, where a backend process finds it.
    #[test]
    fn shared_regions_are_the_memfd_at_their_offsets() {
        use std::os::unix::fs::FileExt;
        let ranges = [
            (GuestAddress(0), 2 * MIB + 4096),
            (GuestAddress(1 << 32), 2 * MIB),
        ];
        let ram = GuestRam::new_shared(&ranges).unwrap();
        let mem = ram.mem();
        let mut offsets = Vec::new();
        for region in mem.iter() {
            let host = region.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE, 0);
            let fo = region.file_offset().expect("a shared region has a file");
            offsets.push(fo.start());
        }
        assert_eq!(offsets, [0, 2 * MIB as u64 + 4096]);
        mem.write_obj(0x1234_5678u32, GuestAddress(2 * MIB as u64))
            .unwrap();
        mem.write_obj(0xabu8, GuestAddress((1 << 32) + 17)).unwrap();
        let file = mem.iter().next().unwrap().file_offset().unwrap().file();
        let mut word = [0u8; 4];
        file.read_exact_at(&mut word, 2 * MIB as u64).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0x1234_5678);
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, 2 * MIB as u64 + 4096 + 17)
            .unwrap();
        assert_eq!(byte[0], 0xab);
        // And the other way round: the backend's writes reach the guest.
        file.write_all_at(&[0x5a], 100).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(100)).unwrap(), 0x5a);
        // Nobody can change its size, nor unseal it.
        assert!(file.set_len(0).is_err());
        assert!(file.set_len(64 << 20).is_err());
        // Private RAM has no file.
        let private = GuestRam::new(&ranges[..1]).unwrap();
        assert!(private.mem().iter().next().unwrap().file_offset().is_none());
    }

    /// Whether the page at `addr` is mapped (mincore fails with ENOMEM on
    /// an unmapped one).
    fn is_mapped(addr: usize) -> bool {
        let mut vec = [0u8; 1];
        // SAFETY: mincore only reads the page tables for one page and writes
        // one byte into `vec`.
        unsafe { libc::mincore(addr as *mut libc::c_void, 4096, vec.as_mut_ptr()) == 0 }
    }
}
