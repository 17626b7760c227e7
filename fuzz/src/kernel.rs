//! The `kernel` target: the input is a kernel image file, identified with
//! `detect_kernel` and loaded with `load_kernel` into a guest of 1 MiB +
//! 32 KiB, then described in the zero page with `configure_system`.
//!
//! Checks: the kind matches the magic bytes (`\x7fELF` at 0, else `HdrS`
//! at 0x202), and `kernel_kind` on the first bytes agrees with
//! `detect_kernel` on the file; loading, whether it succeeds or fails,
//! changes guest memory only inside the image's PT_LOAD segments (their
//! file bytes, as the headers in the input say) or, for a bzImage, inside
//! [1 MiB, 1 MiB + the protected-mode kernel's size), and never below
//! 1 MiB; a loaded ELF enters at its `e_entry`, at or above 1 MiB; a
//! loaded bzImage at 1 MiB + 0x200 with its setup header's `code32_start`
//! set to 1 MiB; `configure_system` then succeeds and writes only the zero
//! page.

use std::cell::RefCell;
use std::fs::File;
use std::mem::size_of;
use std::os::unix::fs::FileExt;

use kvmini::arch::x86_64::boot::{
    configure_system, detect_kernel, kernel_kind, load_kernel, KernelKind,
};
use kvmini::arch::x86_64::layout::{HIMEM_START, ZERO_PAGE_START};
use linux_loader::loader::bootparam::boot_params;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use crate::guest::{assert_changes_within, canary, Range};

pub const MEM_SIZE: usize = 0x10_8000;
const PT_LOAD: u32 = 1;

struct State {
    mem: GuestMemoryMmap,
    canary: Vec<u8>,
    /// Scratch copies of guest memory.
    now: Vec<u8>,
    before: Vec<u8>,
    file: File,
}

thread_local! {
    static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
}

fn le<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(d: &[u8], at: usize) -> Option<u64> {
    le::<2>(d, at).map(|b| u64::from(u16::from_le_bytes(b)))
}

fn u32_at(d: &[u8], at: usize) -> Option<u64> {
    le::<4>(d, at).map(|b| u64::from(u32::from_le_bytes(b)))
}

fn u64_at(d: &[u8], at: usize) -> Option<u64> {
    le::<8>(d, at).map(u64::from_le_bytes)
}

/// The file bytes of every PT_LOAD segment with data, from the program
/// headers in `data` (as many as are there).
fn elf_segments(data: &[u8]) -> Vec<Range> {
    let (Some(phoff), Some(phnum)) = (u64_at(data, 0x20), u16_at(data, 0x38)) else {
        return Vec::new();
    };
    (0..phnum)
        .map_while(|i| {
            let at = usize::try_from(phoff.checked_add(i * 56)?).ok()?;
            Some((
                u32_at(data, at)?,
                u64_at(data, at + 24)?,
                u64_at(data, at + 32)?,
            ))
        })
        .filter(|&(kind, _, filesz)| kind == PT_LOAD as u64 && filesz > 0)
        .map(|(_, paddr, filesz)| Range::new(paddr, filesz))
        .collect()
}

/// Where a bzImage's protected-mode kernel goes.
fn bzimage_range(data: &[u8]) -> Range {
    let sects = data.get(0x1f1).copied().unwrap_or(0);
    let sects = if sects == 0 { 4 } else { u64::from(sects) };
    let len = (data.len() as u64).saturating_sub((sects + 1) * 512);
    Range::new(HIMEM_START.0, len)
}

fn read_all(mem: &GuestMemoryMmap, into: &mut [u8]) {
    mem.read_slice(into, GuestAddress(0))
        .expect("guest memory is mapped");
}

pub fn run(data: &[u8]) {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let s = s.get_or_insert_with(|| {
            let mut tmp =
                TempFile::new_with_prefix(std::env::temp_dir().join("kvmini-fuzz-kernel."))
                    .expect("cannot create the fuzz kernel file");
            let file = tmp.as_file().try_clone().expect("dup the kernel file");
            // Unlinked at once: nothing is left behind when libFuzzer exits.
            tmp.remove().expect("unlink the kernel file");
            State {
                mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
                    .expect("guest memory can be mapped"),
                canary: (0..MEM_SIZE as u64).map(canary).collect(),
                now: vec![0; MEM_SIZE],
                before: vec![0; MEM_SIZE],
                file,
            }
        });
        s.file.set_len(0).expect("truncate the kernel file");
        s.file.write_all_at(data, 0).expect("write the kernel file");
        s.mem
            .write_slice(&s.canary, GuestAddress(0))
            .expect("guest memory is mapped");
        check(data, s);
    })
}

fn check(data: &[u8], s: &mut State) {
    let (mem, file) = (&s.mem, &mut s.file);
    let head = &data[..data.len().min(0x206)];
    let kind = kernel_kind(head);
    let want = if data.is_empty() {
        None
    } else if data.starts_with(b"\x7fELF") {
        Some(KernelKind::Elf)
    } else if data.get(0x202..0x206) == Some(b"HdrS") {
        Some(KernelKind::BzImage)
    } else {
        None
    };
    assert_eq!(kind.as_ref().ok().copied(), want, "kernel_kind");
    let detected = detect_kernel(file);
    assert_eq!(
        detected.as_ref().ok().copied(),
        want,
        "detect_kernel and kernel_kind disagree"
    );

    let loaded = load_kernel(mem, file);
    let allowed = match want {
        Some(KernelKind::Elf) => elf_segments(data),
        Some(KernelKind::BzImage) => vec![bzimage_range(data)],
        None => Vec::new(),
    };
    read_all(mem, &mut s.now);
    let low = HIMEM_START.0 as usize;
    assert_changes_within(
        0,
        &s.canary[..low],
        &s.now[..low],
        &[],
        "the kernel loader (below 1 MiB)",
    );
    assert_changes_within(0, &s.canary, &s.now, &allowed, "the kernel loader");
    let Ok(entry) = loaded else { return };
    match want {
        Some(KernelKind::Elf) => {
            let e_entry = u64_at(data, 0x18).expect("a loaded ELF has a header");
            assert_eq!(entry.entry.0, e_entry, "ELF entry point");
            assert!(entry.entry >= HIMEM_START, "ELF entry below 1 MiB");
            assert!(entry.setup_header.is_none());
        }
        Some(KernelKind::BzImage) => {
            assert_eq!(entry.entry.0, HIMEM_START.0 + 0x200, "bzImage entry point");
            let hdr = entry.setup_header.expect("a bzImage has a setup header");
            assert_eq!(u64::from(hdr.code32_start), HIMEM_START.0);
        }
        None => panic!("loaded a kernel of no known kind"),
    }
    read_all(mem, &mut s.before);
    configure_system(mem, 64, None, entry.setup_header, None).expect("configure_system");
    read_all(mem, &mut s.now);
    let zero_page = Range::new(ZERO_PAGE_START.0, size_of::<boot_params>() as u64);
    assert_changes_within(0, &s.before, &s.now, &[zero_page], "configure_system");
}
