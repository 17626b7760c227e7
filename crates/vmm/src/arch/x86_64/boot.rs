//! Kernel, initrd and command line loading, and the Linux `boot_params` ("zero page").
//!
//! Both vmlinux (ELF) and bzImage kernels are entered through the 64-bit Linux boot
//! protocol; the PVH entry note of ELF kernels is ignored.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::mem::size_of;

use linux_loader::cmdline::Cmdline;
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, EI_CLASS, ELFCLASS64, EM_X86_64, PT_LOAD};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap,
    GuestMemoryRegion,
};

use super::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_START, ZERO_PAGE_START,
};

/// ELF magic at offset 0.
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Offset of the "HdrS" magic of the Linux boot protocol setup header.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// "HdrS" as read at [`BZIMAGE_MAGIC_OFFSET`].
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// "HdrS" as the little-endian `setup_header.header` field.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// Offset of the setup header in a bzImage.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// Offset of the 64-bit entry point from the start of the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `xloadflags`: the kernel has the 64-bit entry point at 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Boot protocol version that introduced `xloadflags`.
const BOOT_PROTOCOL_XLOADFLAGS: u16 = 0x020c;
/// Boot sector signature.
const BOOT_FLAG: u16 = 0xaa55;
/// Default kernel alignment (16 MiB).
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// Boot loader type "undefined".
const TYPE_OF_LOADER: u8 = 0xff;
/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// Maximum number of e820 entries in the zero page.
const E820_MAX_ENTRIES: usize = 128;
const PAGE_SIZE: u64 = 0x1000;

/// Kernel image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An uncompressed vmlinux ELF image.
    Elf,
    /// A bzImage with a Linux boot protocol setup header.
    BzImage,
}

/// Where to start the kernel, and the bzImage setup header when there is one.
#[derive(Debug, Clone, Copy)]
pub struct KernelEntry {
    /// 64-bit entry point.
    pub entry: GuestAddress,
    /// Setup header of a bzImage kernel, `None` for ELF.
    pub setup_header: Option<setup_header>,
    /// First byte above the kernel: the ELF's last segment, or for a
    /// bzImage the end of the area it decompresses itself into
    /// (`pref_address + init_size`). Nothing else may be loaded below it.
    pub end: GuestAddress,
}

/// Errors while loading the kernel, initrd or command line, or writing the zero page.
#[derive(Debug)]
pub enum BootError {
    /// Reading the kernel image failed.
    ReadKernel(io::Error),
    /// The kernel image is empty.
    EmptyKernel,
    /// The file is neither an ELF nor a bzImage kernel.
    NotAKernel,
    /// The kernel image ends before the data its headers describe.
    TruncatedKernel,
    /// The kernel image is malformed.
    MalformedKernel(&'static str),
    /// The kernel is not an x86_64 kernel with a 64-bit entry point.
    NotX86_64Kernel,
    /// The kernel asks to be loaded below high memory, over the boot structures.
    KernelLoadAddress(u64),
    /// The kernel does not fit in guest memory.
    KernelDoesNotFit,
    /// linux-loader failed to load the kernel.
    LoadKernel(linux_loader::loader::Error),
    /// The kernel entry point overflowed.
    EntryOverflow,
    /// Reading the initrd failed.
    ReadInitrd(io::Error),
    /// The initrd is empty.
    EmptyInitrd,
    /// The initrd does not fit in low memory above the kernel area.
    InitrdDoesNotFit(u64),
    /// The initrd (its size) would overlap the kernel, which ends at the
    /// address given: the guest has too little memory for both.
    InitrdOverlapsKernel(u64, GuestAddress),
    /// Copying the initrd into guest memory failed.
    WriteInitrd(vm_memory::GuestMemoryError),
    /// The caller stopped the initrd's copy (a time limit ran out).
    InitrdInterrupted,
    /// Archives to append were given, but no initrd to append them to.
    AppendWithoutInitrd,
    /// The command line (with its NUL) is longer than [`CMDLINE_MAX_SIZE`].
    CmdlineTooLong(usize),
    /// Writing the command line to guest memory failed.
    LoadCmdline(linux_loader::loader::Error),
    /// Guest memory has no RAM at 0 reaching above 1 MiB.
    NoLowMemory,
    /// More RAM regions than the zero page's e820 table holds.
    TooManyE820Entries(usize),
    /// A boot_params field cannot hold this value.
    BootParamOverflow(&'static str),
    /// Writing boot_params to guest memory failed.
    WriteBootParams(vm_memory::GuestMemoryError),
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadKernel(e) => write!(f, "failed to read the kernel image: {e}"),
            Self::EmptyKernel => write!(f, "the kernel image is empty"),
            Self::NotAKernel => write!(f, "not a kernel image: neither ELF nor bzImage"),
            Self::TruncatedKernel => write!(f, "the kernel image is truncated"),
            Self::MalformedKernel(what) => write!(f, "malformed kernel image: {what}"),
            Self::NotX86_64Kernel => {
                write!(f, "not an x86_64 kernel with a 64-bit entry point")
            }
            Self::KernelLoadAddress(a) => write!(
                f,
                "the kernel wants to be loaded at {a:#x}, below {:#x}",
                HIMEM_START.0
            ),
            Self::KernelDoesNotFit => write!(f, "the kernel does not fit in guest memory"),
            Self::LoadKernel(e) => write!(f, "failed to load the kernel: {e}"),
            Self::EntryOverflow => write!(f, "the kernel entry point overflowed"),
            Self::ReadInitrd(e) => write!(f, "failed to read the initrd: {e}"),
            Self::EmptyInitrd => write!(f, "the initrd is empty"),
            Self::InitrdDoesNotFit(size) => {
                write!(
                    f,
                    "the initrd ({size} bytes) does not fit in low guest memory"
                )
            }
            Self::InitrdOverlapsKernel(size, end) => write!(
                f,
                "the initrd ({size} bytes) does not fit between the kernel (which ends at \
                 {:#x}) and the end of low guest memory: give the VM more memory (--memory)",
                end.0
            ),
            Self::WriteInitrd(e) => write!(f, "failed to copy the initrd to guest memory: {e}"),
            Self::InitrdInterrupted => write!(f, "the initrd's copy was stopped"),
            Self::AppendWithoutInitrd => {
                write!(f, "archives to append to the initrd, but no initrd")
            }
            Self::CmdlineTooLong(len) => write!(
                f,
                "the kernel command line is {len} bytes, the maximum is {CMDLINE_MAX_SIZE}"
            ),
            Self::LoadCmdline(e) => write!(f, "failed to write the kernel command line: {e}"),
            Self::NoLowMemory => write!(f, "guest memory must start at 0 and extend past 1 MiB"),
            Self::TooManyE820Entries(n) => {
                write!(
                    f,
                    "{n} e820 entries, the zero page holds {E820_MAX_ENTRIES}"
                )
            }
            Self::BootParamOverflow(field) => {
                write!(f, "boot_params field {field} cannot hold the value")
            }
            Self::WriteBootParams(e) => write!(f, "failed to write boot_params: {e}"),
        }
    }
}

impl std::error::Error for BootError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::ReadKernel(e) | Self::ReadInitrd(e) => Some(e),
            Self::LoadKernel(e) | Self::LoadCmdline(e) => Some(e),
            Self::WriteInitrd(e) | Self::WriteBootParams(e) => Some(e),
            _ => None,
        }
    }
}

/// Maps a read error: hitting the end of the file means the image is truncated.
fn kernel_read_error(e: io::Error) -> BootError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        BootError::TruncatedKernel
    } else {
        BootError::ReadKernel(e)
    }
}

/// Identifies a kernel image from its first bytes (at least 0x206 of them for a bzImage).
pub fn kernel_kind(head: &[u8]) -> Result<KernelKind, BootError> {
    if head.is_empty() {
        return Err(BootError::EmptyKernel);
    }
    if head.starts_with(ELF_MAGIC) {
        return Ok(KernelKind::Elf);
    }
    let magic_end = BZIMAGE_MAGIC_OFFSET + BZIMAGE_MAGIC.len();
    match head.get(BZIMAGE_MAGIC_OFFSET..magic_end) {
        Some(m) if m == BZIMAGE_MAGIC => Ok(KernelKind::BzImage),
        _ => Err(BootError::NotAKernel),
    }
}

/// Reads the start of `kernel` and identifies its format.
pub fn detect_kernel(kernel: &mut File) -> Result<KernelKind, BootError> {
    kernel.rewind().map_err(BootError::ReadKernel)?;
    let mut head = Vec::with_capacity(BZIMAGE_MAGIC_OFFSET + BZIMAGE_MAGIC.len());
    kernel
        .by_ref()
        .take((BZIMAGE_MAGIC_OFFSET + BZIMAGE_MAGIC.len()) as u64)
        .read_to_end(&mut head)
        .map_err(BootError::ReadKernel)?;
    kernel_kind(&head)
}

fn file_len(f: &File) -> Result<u64, BootError> {
    f.metadata().map(|m| m.len()).map_err(BootError::ReadKernel)
}

/// Checks an ELF kernel before handing it to linux-loader: x86_64, segments inside the
/// file, loaded above 1 MiB and inside guest memory.
fn check_elf(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<(), BootError> {
    let len = file_len(kernel)?;
    kernel.rewind().map_err(BootError::ReadKernel)?;
    let mut ehdr = Elf64_Ehdr::default();
    kernel
        .read_exact(ehdr.as_mut_slice())
        .map_err(kernel_read_error)?;
    if ehdr.e_ident[EI_CLASS] != ELFCLASS64 || ehdr.e_machine != EM_X86_64 {
        return Err(BootError::NotX86_64Kernel);
    }
    if usize::from(ehdr.e_phentsize) != size_of::<Elf64_Phdr>() {
        return Err(BootError::MalformedKernel("unexpected program header size"));
    }
    let ph_end = u64::from(ehdr.e_phnum)
        .checked_mul(size_of::<Elf64_Phdr>() as u64)
        .and_then(|s| s.checked_add(ehdr.e_phoff))
        .ok_or(BootError::MalformedKernel("program header table overflows"))?;
    if ph_end > len {
        return Err(BootError::TruncatedKernel);
    }
    kernel
        .seek(SeekFrom::Start(ehdr.e_phoff))
        .map_err(BootError::ReadKernel)?;
    let mut loads = 0;
    for _ in 0..ehdr.e_phnum {
        let mut phdr = Elf64_Phdr::default();
        kernel
            .read_exact(phdr.as_mut_slice())
            .map_err(kernel_read_error)?;
        if phdr.p_type != PT_LOAD || phdr.p_filesz == 0 {
            continue;
        }
        loads += 1;
        let data_end = phdr
            .p_offset
            .checked_add(phdr.p_filesz)
            .ok_or(BootError::MalformedKernel("segment offset overflows"))?;
        if data_end > len {
            return Err(BootError::TruncatedKernel);
        }
        if phdr.p_paddr < HIMEM_START.0 {
            return Err(BootError::KernelLoadAddress(phdr.p_paddr));
        }
        let size = usize::try_from(phdr.p_memsz.max(phdr.p_filesz))
            .map_err(|_| BootError::KernelDoesNotFit)?;
        if !mem.check_range(GuestAddress(phdr.p_paddr), size) {
            return Err(BootError::KernelDoesNotFit);
        }
    }
    if loads == 0 {
        return Err(BootError::MalformedKernel("no loadable segment"));
    }
    if ehdr.e_entry < HIMEM_START.0 {
        return Err(BootError::KernelLoadAddress(ehdr.e_entry));
    }
    Ok(())
}

/// Reads and checks the setup header of a bzImage: 64-bit entry point, complete image,
/// protected-mode kernel fits in guest memory at [`HIMEM_START`].
fn check_bzimage(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<(), BootError> {
    let len = file_len(kernel)?;
    kernel
        .seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .map_err(BootError::ReadKernel)?;
    let mut hdr = setup_header::default();
    kernel
        .read_exact(hdr.as_mut_slice())
        .map_err(kernel_read_error)?;
    if hdr.version < 0x0200 || hdr.loadflags & 0x1 == 0 {
        return Err(BootError::MalformedKernel(
            "not a bzImage (old zImage protocol)",
        ));
    }
    if hdr.version >= BOOT_PROTOCOL_XLOADFLAGS && hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::NotX86_64Kernel);
    }
    let setup_sects = if hdr.setup_sects == 0 {
        4
    } else {
        u64::from(hdr.setup_sects)
    };
    let setup_size = (setup_sects + 1) * 512;
    let kernel_size = len
        .checked_sub(setup_size)
        .filter(|s| *s > 0)
        .ok_or(BootError::TruncatedKernel)?;
    let kernel_size = usize::try_from(kernel_size).map_err(|_| BootError::KernelDoesNotFit)?;
    if !mem.check_range(HIMEM_START, kernel_size) {
        return Err(BootError::KernelDoesNotFit);
    }
    Ok(())
}

/// Loads an ELF (vmlinux) or bzImage kernel into guest memory and returns its 64-bit entry.
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<KernelEntry, BootError> {
    match detect_kernel(kernel)? {
        KernelKind::Elf => {
            check_elf(mem, kernel)?;
            let res =
                Elf::load(mem, None, kernel, Some(HIMEM_START)).map_err(BootError::LoadKernel)?;
            Ok(KernelEntry {
                entry: res.kernel_load,
                setup_header: None,
                end: GuestAddress(res.kernel_end),
            })
        }
        KernelKind::BzImage => {
            check_bzimage(mem, kernel)?;
            let res = BzImage::load(mem, Some(HIMEM_START), kernel, Some(HIMEM_START))
                .map_err(BootError::LoadKernel)?;
            let entry = res
                .kernel_load
                .checked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
                .ok_or(BootError::EntryOverflow)?;
            // The kernel decompresses itself to pref_address and needs
            // init_size bytes there, more than the file holds.
            let decompressed = res.setup_header.map_or(0, |h| {
                let (pref, init) = ({ h.pref_address }, u64::from(h.init_size));
                pref.saturating_add(init)
            });
            Ok(KernelEntry {
                entry,
                setup_header: res.setup_header,
                end: GuestAddress(res.kernel_end.max(decompressed)),
            })
        }
    }
}

/// End (exclusive) of the RAM region starting at 0, capped at the MMIO gap.
fn low_mem_end(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    let region = mem
        .find_region(GuestAddress(0))
        .ok_or(BootError::NoLowMemory)?;
    let end = region
        .start_addr()
        .checked_add(region.len())
        .ok_or(BootError::NoLowMemory)?;
    Ok(end.0.min(MMIO_GAP_START))
}

/// Page-aligned address of an initrd of `size` bytes at the top of low memory ending at
/// `low_mem_end`, or `None` if it would reach below [`HIMEM_START`].
pub fn initrd_address(low_mem_end: u64, size: u64) -> Option<GuestAddress> {
    let start = low_mem_end.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= HIMEM_START.0).then_some(GuestAddress(start))
}

/// How much of the initrd is copied between two calls of `keep_going` in
/// [`load_initrd`]: a bench initramfs is ~90 MB, seconds of copying under
/// emulation, and `exec --timeout` must not wait for all of it. Small, so a
/// limit is kept to a fraction of a second even on a loaded host, where
/// faulting in fresh guest pages can take 1 s per 8 MiB under emulation
/// (one CI run overshot `--timeout 5s` by 3.3 s with 8 MiB chunks); the
/// clock read between chunks costs nothing next to the copy.
pub const INITRD_CHUNK: usize = 1 << 20;

/// Copies the initrd to the top of low memory, followed by `append` (more
/// archives, e.g. `exec`'s job: zero padding to a 4-byte boundary first,
/// which the kernel skips between archives), so the caller's file is used
/// as it is and never copied on the host; returns the address and size of
/// the whole. Before each [`INITRD_CHUNK`] of the file it asks
/// `keep_going`, and stops with [`BootError::InitrdInterrupted`] when that
/// says no.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    kernel_end: GuestAddress,
    initrd: &mut File,
    append: &[u8],
    keep_going: &mut dyn FnMut() -> bool,
) -> Result<(GuestAddress, usize), BootError> {
    let file_size = initrd.metadata().map_err(BootError::ReadInitrd)?.len();
    // An empty file is fine when archives follow (QEMU's engines, which get
    // one combined file, accept it too).
    if file_size == 0 && append.is_empty() {
        return Err(BootError::EmptyInitrd);
    }
    let pad = if append.is_empty() || file_size == 0 {
        0
    } else {
        (4 - file_size % 4) % 4
    };
    let size = file_size
        .checked_add(pad + append.len() as u64)
        .ok_or(BootError::InitrdDoesNotFit(file_size))?;
    let addr = initrd_address(low_mem_end(mem)?, size).ok_or(BootError::InitrdDoesNotFit(size))?;
    // Checked before a byte is copied: an initrd written over the kernel
    // would fail only later, inside the guest, and say nothing useful.
    if addr < kernel_end {
        return Err(BootError::InitrdOverlapsKernel(size, kernel_end));
    }
    let total = usize::try_from(size).map_err(|_| BootError::InitrdDoesNotFit(size))?;
    let len = usize::try_from(file_size).map_err(|_| BootError::InitrdDoesNotFit(size))?;
    initrd.rewind().map_err(BootError::ReadInitrd)?;
    let mut done = 0;
    while done < len {
        if !keep_going() {
            return Err(BootError::InitrdInterrupted);
        }
        let n = (len - done).min(INITRD_CHUNK);
        let at = addr
            .checked_add(done as u64)
            .ok_or(BootError::InitrdDoesNotFit(size))?;
        mem.read_exact_volatile_from(at, initrd, n)
            .map_err(BootError::WriteInitrd)?;
        done += n;
    }
    if !append.is_empty() {
        let mut tail = vec![0u8; pad as usize];
        tail.extend_from_slice(append);
        let at = addr
            .checked_add(file_size)
            .ok_or(BootError::InitrdDoesNotFit(size))?;
        mem.write_slice(&tail, at).map_err(BootError::WriteInitrd)?;
    }
    Ok((addr, total))
}

/// Writes the kernel command line (NUL-terminated) at [`CMDLINE_START`].
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<(), BootError> {
    let len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .map_err(|_| BootError::LoadCmdline(linux_loader::loader::Error::InvalidCommandLine))?;
    if len > CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong(len));
    }
    linux_loader::loader::load_cmdline(mem, CMDLINE_START, cmdline).map_err(BootError::LoadCmdline)
}

fn e820_ram(addr: u64, size: u64) -> boot_e820_entry {
    boot_e820_entry {
        addr,
        size,
        r#type: E820_RAM,
    }
}

/// The e820 map for RAM `regions` (start, length), sorted by address: the region at 0 is
/// split around the reserved [EBDA_START, HIMEM_START) hole; other regions are listed as is.
pub fn e820_table(regions: &[(GuestAddress, u64)]) -> Result<Vec<boot_e820_entry>, BootError> {
    let mut table = Vec::with_capacity(regions.len() + 1);
    let mut has_low = false;
    for &(start, len) in regions {
        let end = start.0.checked_add(len).ok_or(BootError::NoLowMemory)?;
        if start.0 == 0 {
            if end <= HIMEM_START.0 {
                return Err(BootError::NoLowMemory);
            }
            has_low = true;
            table.push(e820_ram(0, EBDA_START.0));
            table.push(e820_ram(HIMEM_START.0, end - HIMEM_START.0));
        } else if len > 0 {
            table.push(e820_ram(start.0, len));
        }
    }
    if !has_low {
        return Err(BootError::NoLowMemory);
    }
    if table.len() > E820_MAX_ENTRIES {
        return Err(BootError::TooManyE820Entries(table.len()));
    }
    Ok(table)
}

/// The setup header: the bzImage's when given, else protocol defaults; plus command line
/// and initrd location.
fn boot_header(
    cmdline_size: usize,
    initrd: Option<(GuestAddress, usize)>,
    setup_header: Option<setup_header>,
) -> Result<setup_header, BootError> {
    let mut hdr = setup_header.unwrap_or(setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        kernel_alignment: KERNEL_ALIGNMENT,
        ..Default::default()
    });
    hdr.type_of_loader = TYPE_OF_LOADER;
    hdr.cmd_line_ptr =
        u32::try_from(CMDLINE_START.0).map_err(|_| BootError::BootParamOverflow("cmd_line_ptr"))?;
    hdr.cmdline_size =
        u32::try_from(cmdline_size).map_err(|_| BootError::BootParamOverflow("cmdline_size"))?;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image =
            u32::try_from(addr.0).map_err(|_| BootError::BootParamOverflow("ramdisk_image"))?;
        hdr.ramdisk_size =
            u32::try_from(size).map_err(|_| BootError::BootParamOverflow("ramdisk_size"))?;
    }
    Ok(hdr)
}

/// Writes `boot_params` (setup header, command line and initrd location, e820 map, and
/// where the ACPI RSDP is, if there is one) at [`ZERO_PAGE_START`].
pub fn configure_system(
    mem: &GuestMemoryMmap,
    cmdline_size: usize,
    initrd: Option<(GuestAddress, usize)>,
    setup_header: Option<setup_header>,
    acpi_rsdp: Option<GuestAddress>,
) -> Result<(), BootError> {
    let mut params = boot_params {
        hdr: boot_header(cmdline_size, initrd, setup_header)?,
        acpi_rsdp_addr: acpi_rsdp.map_or(0, |a| a.0),
        ..Default::default()
    };
    let mut regions: Vec<(GuestAddress, u64)> =
        mem.iter().map(|r| (r.start_addr(), r.len())).collect();
    regions.sort_by_key(|(start, _)| *start);
    let table = e820_table(&regions)?;
    for (slot, entry) in params.e820_table.iter_mut().zip(&table) {
        *slot = *entry;
    }
    params.e820_entries =
        u8::try_from(table.len()).map_err(|_| BootError::TooManyE820Entries(table.len()))?;
    mem.write_obj(params, ZERO_PAGE_START)
        .map_err(BootError::WriteBootParams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{ram_regions, MMIO_GAP_END};
    use std::io::Write;
    use vmm_sys_util::tempfile::TempFile;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&ram_regions(size)).unwrap()
    }

    fn file_with(bytes: &[u8]) -> File {
        let tmp = TempFile::new().unwrap();
        let mut f = tmp.into_file();
        f.write_all(bytes).unwrap();
        f.rewind().unwrap();
        f
    }

    fn regions(size: u64) -> Vec<(GuestAddress, u64)> {
        ram_regions(size)
            .into_iter()
            .map(|(a, s)| (a, s as u64))
            .collect()
    }

    fn entries(table: &[boot_e820_entry]) -> Vec<(u64, u64, u32)> {
        table.iter().map(|e| (e.addr, e.size, e.r#type)).collect()
    }

    /// A minimal x86_64 ELF executable: one PT_LOAD segment of `code` at `paddr`.
    fn tiny_elf(paddr: u64, entry: u64, code: &[u8]) -> Vec<u8> {
        let phoff = size_of::<Elf64_Ehdr>() as u64;
        let data_off = phoff + size_of::<Elf64_Phdr>() as u64;
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..4].copy_from_slice(ELF_MAGIC);
        ehdr.e_ident[EI_CLASS] = ELFCLASS64;
        ehdr.e_ident[5] = 1; // little endian
        ehdr.e_ident[6] = 1; // EV_CURRENT
        ehdr.e_type = 2; // ET_EXEC
        ehdr.e_machine = EM_X86_64;
        ehdr.e_version = 1;
        ehdr.e_entry = entry;
        ehdr.e_phoff = phoff;
        ehdr.e_ehsize = size_of::<Elf64_Ehdr>() as u16;
        ehdr.e_phentsize = size_of::<Elf64_Phdr>() as u16;
        ehdr.e_phnum = 1;
        let phdr = Elf64_Phdr {
            p_type: PT_LOAD,
            p_flags: 5,
            p_offset: data_off,
            p_vaddr: paddr,
            p_paddr: paddr,
            p_filesz: code.len() as u64,
            p_memsz: code.len() as u64 + 0x100,
            p_align: 0x1000,
        };
        let mut out = ehdr.as_slice().to_vec();
        out.extend_from_slice(phdr.as_slice());
        out.extend_from_slice(code);
        out
    }

    /// A minimal bzImage: boot sector + setup header, one setup sector, then `payload`.
    fn tiny_bzimage(payload: &[u8], xloadflags: u16) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512];
        let hdr = setup_header {
            setup_sects: 1,
            boot_flag: BOOT_FLAG,
            header: HDRS_MAGIC,
            version: 0x020f,
            loadflags: 1,
            code32_start: 0x10_0000,
            xloadflags,
            ..Default::default()
        };
        let off = SETUP_HEADER_OFFSET as usize;
        img[off..off + size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn e820_128m() {
        let t = e820_table(&regions(128 * MIB)).unwrap();
        assert_eq!(
            entries(&t),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x10_0000, 128 * MIB - 0x10_0000, E820_RAM)
            ]
        );
    }

    #[test]
    fn e820_3_5g() {
        let t = e820_table(&regions(3 * GIB + 512 * MIB)).unwrap();
        assert_eq!(
            entries(&t),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x10_0000, MMIO_GAP_START - 0x10_0000, E820_RAM),
                (MMIO_GAP_END, 3 * GIB + 512 * MIB - MMIO_GAP_START, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_6g() {
        let t = e820_table(&regions(6 * GIB)).unwrap();
        assert_eq!(
            entries(&t),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x10_0000, 0xd000_0000 - 0x10_0000, E820_RAM),
                (4 * GIB, 6 * GIB - 0xd000_0000, E820_RAM),
            ]
        );
        let ram: u64 = t.iter().map(|e| e.size).sum();
        assert_eq!(ram, 6 * GIB - (0x10_0000 - 0x9fc00));
    }

    #[test]
    fn e820_needs_low_memory() {
        assert!(matches!(
            e820_table(&regions(MIB)),
            Err(BootError::NoLowMemory)
        ));
        assert!(matches!(
            e820_table(&[(GuestAddress(4 * GIB), GIB)]),
            Err(BootError::NoLowMemory)
        ));
    }

    #[test]
    fn configure_system_writes_zero_page() {
        let m = mem(128 * MIB);
        let initrd = Some((GuestAddress(0x700_0000), 0x1234));
        configure_system(&m, 42, initrd, None, Some(GuestAddress(0xe0000))).unwrap();
        let p: boot_params = m.read_obj(ZERO_PAGE_START).unwrap();
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, 0x5372_6448);
        assert_eq!({ p.hdr.kernel_alignment }, 0x0100_0000);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!(
            (p.hdr.ramdisk_image, p.hdr.ramdisk_size),
            (0x700_0000, 0x1234)
        );
        assert_eq!(p.e820_entries, 2);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        assert_eq!({ p.e820_table[1].addr }, 0x10_0000);
    }

    #[test]
    fn configure_system_keeps_bzimage_header() {
        let m = mem(128 * MIB);
        let hdr = setup_header {
            header: HDRS_MAGIC,
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            type_of_loader: 0,
            ..Default::default()
        };
        configure_system(&m, 10, None, Some(hdr), None).unwrap();
        let p: boot_params = m.read_obj(ZERO_PAGE_START).unwrap();
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!((p.hdr.ramdisk_image, p.hdr.ramdisk_size), (0, 0));
        assert_eq!({ p.acpi_rsdp_addr }, 0);
    }

    #[test]
    fn initrd_placement() {
        assert_eq!(
            initrd_address(128 * MIB, 0x1800),
            Some(GuestAddress(128 * MIB - 0x2000))
        );
        assert_eq!(
            initrd_address(128 * MIB, 0x1000),
            Some(GuestAddress(128 * MIB - 0x1000))
        );
        assert_eq!(initrd_address(128 * MIB, 127 * MIB), Some(HIMEM_START));
        assert_eq!(initrd_address(128 * MIB, 127 * MIB + 1), None);
        assert_eq!(initrd_address(MIB, 2 * MIB), None);
    }

    #[test]
    fn load_initrd_at_top_of_low_memory() {
        let m = mem(6 * GIB);
        let data: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let (addr, size) =
            load_initrd(&m, HIMEM_START, &mut file_with(&data), &[], &mut || true).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr, GuestAddress(MMIO_GAP_START - 0x2000));
        let mut back = vec![0u8; 5000];
        m.read_slice(&mut back, addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn load_initrd_asks_before_each_chunk_and_stops_when_told() {
        let m = mem(256 * MIB);
        let data: Vec<u8> = (0..2 * INITRD_CHUNK + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut asked = 0;
        let (addr, size) = load_initrd(&m, HIMEM_START, &mut file_with(&data), &[], &mut || {
            asked += 1;
            true
        })
        .unwrap();
        assert_eq!((size, asked), (data.len(), 3), "one question per chunk");
        let mut back = vec![0u8; data.len()];
        m.read_slice(&mut back, addr).unwrap();
        assert!(back == data, "the chunks land in order");

        let mut asked = 0;
        let stopped = load_initrd(&m, HIMEM_START, &mut file_with(&data), &[], &mut || {
            asked += 1;
            asked < 2
        });
        assert!(matches!(stopped, Err(BootError::InitrdInterrupted)));
        assert_eq!(asked, 2, "stops at the first no");
    }

    #[test]
    fn load_initrd_appends_after_padding_to_four_bytes() {
        let m = mem(64 * MIB);
        let data = vec![7u8; 4097];
        let (addr, size) = load_initrd(
            &m,
            HIMEM_START,
            &mut file_with(&data),
            b"070701job",
            &mut || true,
        )
        .unwrap();
        assert_eq!(size, 4097 + 3 + 9, "file, 3 bytes of padding, the archive");
        assert_eq!(addr.0 % 4096, 0);
        let mut back = vec![0u8; size];
        m.read_slice(&mut back, addr).unwrap();
        assert!(back[..4097] == data[..]);
        assert_eq!(&back[4097..4100], &[0, 0, 0]);
        assert_eq!(&back[4100..], b"070701job");
        // An empty file with an archive after it: just the archive.
        let (_, size) =
            load_initrd(&m, HIMEM_START, &mut file_with(&[]), b"abcd", &mut || true).unwrap();
        assert_eq!(size, 4);
        // A file already on a 4-byte boundary gets no padding.
        let (_, size) = load_initrd(
            &m,
            HIMEM_START,
            &mut file_with(&data[..4096]),
            b"x",
            &mut || true,
        )
        .unwrap();
        assert_eq!(size, 4097);
    }

    #[test]
    fn load_initrd_errors() {
        let m = mem(2 * MIB);
        assert!(matches!(
            load_initrd(&m, HIMEM_START, &mut file_with(&[]), &[], &mut || true),
            Err(BootError::EmptyInitrd)
        ));
        assert!(matches!(
            load_initrd(
                &m,
                HIMEM_START,
                &mut file_with(&vec![1u8; (MIB + 1) as usize]),
                &[],
                &mut || true
            ),
            Err(BootError::InitrdDoesNotFit(_))
        ));
    }

    /// An initrd that would land on the kernel is refused before a byte of
    /// it is copied (the kernel stays intact), naming the way out.
    #[test]
    fn initrd_never_overwrites_the_kernel() {
        let m = mem(64 * MIB);
        let kernel = vec![0xccu8; 4096];
        let kernel_at = GuestAddress(40 * MIB);
        m.write_slice(&kernel, kernel_at).unwrap();
        let kernel_end = GuestAddress(41 * MIB);
        // 24 MiB lands at 40 MiB: below the kernel's end.
        let err = load_initrd(
            &m,
            kernel_end,
            &mut file_with(&vec![1u8; (24 * MIB) as usize]),
            &[],
            &mut || true,
        )
        .unwrap_err();
        assert!(matches!(err, BootError::InitrdOverlapsKernel(_, end) if end == kernel_end));
        assert!(err.to_string().contains("--memory"), "{err}");
        let mut back = vec![0u8; 4096];
        m.read_slice(&mut back, kernel_at).unwrap();
        assert_eq!(back, kernel);
        // 23 MiB lands at 41 MiB, right above it: fine.
        let (addr, _) = load_initrd(
            &m,
            kernel_end,
            &mut file_with(&vec![1u8; (23 * MIB) as usize]),
            &[],
            &mut || true,
        )
        .unwrap();
        assert_eq!(addr, kernel_end);
    }

    #[test]
    fn cmdline_written_and_bounded() {
        let m = mem(4 * MIB);
        let mut cl = Cmdline::new(4096).unwrap();
        cl.insert_str("console=ttyS0 reboot=k").unwrap();
        load_cmdline(&m, &cl).unwrap();
        let mut buf = [0u8; 23];
        m.read_slice(&mut buf, CMDLINE_START).unwrap();
        assert_eq!(&buf, b"console=ttyS0 reboot=k\0");

        let mut long = Cmdline::new(4096).unwrap();
        long.insert_str("x".repeat(CMDLINE_MAX_SIZE)).unwrap();
        assert!(matches!(
            load_cmdline(&m, &long),
            Err(BootError::CmdlineTooLong(2049))
        ));
    }

    #[test]
    fn kind_detection() {
        assert_eq!(kernel_kind(b"\x7fELF\x02\x01").unwrap(), KernelKind::Elf);
        let bz = tiny_bzimage(&[0u8; 16], XLF_KERNEL_64);
        assert_eq!(kernel_kind(&bz).unwrap(), KernelKind::BzImage);
        assert!(matches!(kernel_kind(b""), Err(BootError::EmptyKernel)));
        assert!(matches!(
            kernel_kind(&[0u8; 0x300]),
            Err(BootError::NotAKernel)
        ));
        assert!(matches!(
            kernel_kind(&bz[..0x204]),
            Err(BootError::NotAKernel)
        ));
    }

    #[test]
    fn garbage_and_empty_kernels() {
        let m = mem(32 * MIB);
        assert!(matches!(
            load_kernel(&m, &mut file_with(&[])),
            Err(BootError::EmptyKernel)
        ));
        assert!(matches!(
            load_kernel(&m, &mut file_with(&[0xabu8; 4096])),
            Err(BootError::NotAKernel)
        ));
        assert!(matches!(
            load_kernel(&m, &mut file_with(b"hello")),
            Err(BootError::NotAKernel)
        ));
    }

    #[test]
    fn tiny_elf_loads_with_right_entry() {
        let m = mem(32 * MIB);
        let code = [0xf4u8, 0xeb, 0xfd]; // hlt; jmp hlt
        let elf = tiny_elf(0x100_0000, 0x100_0000, &code);
        let k = load_kernel(&m, &mut file_with(&elf)).unwrap();
        assert_eq!(k.entry, GuestAddress(0x100_0000));
        assert!(k.setup_header.is_none());
        let mut buf = [0u8; 3];
        m.read_slice(&mut buf, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(buf, code);
    }

    #[test]
    fn elf_errors() {
        let m = mem(32 * MIB);
        let elf = tiny_elf(0x100_0000, 0x100_0000, &[0x90; 64]);
        // Truncated inside the header, the program headers and the segment data.
        for cut in [10, 80, elf.len() - 1] {
            assert!(
                matches!(
                    load_kernel(&m, &mut file_with(&elf[..cut])),
                    Err(BootError::TruncatedKernel)
                ),
                "cut at {cut}"
            );
        }
        let big = tiny_elf(64 * MIB, 64 * MIB, &[0x90; 64]);
        assert!(matches!(
            load_kernel(&m, &mut file_with(&big)),
            Err(BootError::KernelDoesNotFit)
        ));
        let low = tiny_elf(0x1000, 0x1000, &[0x90; 64]);
        assert!(matches!(
            load_kernel(&m, &mut file_with(&low)),
            Err(BootError::KernelLoadAddress(0x1000))
        ));
        let mut arm = elf.clone();
        arm[18] = 183; // EM_AARCH64
        assert!(matches!(
            load_kernel(&m, &mut file_with(&arm)),
            Err(BootError::NotX86_64Kernel)
        ));
    }

    #[test]
    fn tiny_bzimage_loads_with_64bit_entry() {
        let m = mem(32 * MIB);
        let payload = [0x55u8; 4096];
        let bz = tiny_bzimage(&payload, XLF_KERNEL_64);
        let k = load_kernel(&m, &mut file_with(&bz)).unwrap();
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        let mut buf = [0u8; 16];
        m.read_slice(&mut buf, HIMEM_START).unwrap();
        assert_eq!(buf, [0x55; 16]);
    }

    #[test]
    fn bzimage_errors() {
        let m = mem(2 * MIB);
        let no64 = tiny_bzimage(&[0u8; 16], 0);
        assert!(matches!(
            load_kernel(&m, &mut file_with(&no64)),
            Err(BootError::NotX86_64Kernel)
        ));
        let header_only = tiny_bzimage(&[], XLF_KERNEL_64);
        assert!(matches!(
            load_kernel(&m, &mut file_with(&header_only)),
            Err(BootError::TruncatedKernel)
        ));
        let huge = tiny_bzimage(&vec![0u8; (MIB + 1) as usize], XLF_KERNEL_64);
        assert!(matches!(
            load_kernel(&m, &mut file_with(&huge)),
            Err(BootError::KernelDoesNotFit)
        ));
    }
}
