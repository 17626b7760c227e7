//! Helpers for the unit tests (compiled only for `cargo test`).

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};

use crate::devices::virtio::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use crate::sync::lock;

/// A writer the test can look into: every byte written, in order.
#[derive(Clone, Default)]
pub struct Shared(pub Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Linux's `CAP_NET_ADMIN` capability number.
const CAP_NET_ADMIN: u32 = 12;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per capability set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) with a version-3 header (pid 0: this thread) writes
    // two CapData structs, which `data` holds; both outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

fn capset(data: &[CapData; 2]) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset(2) with a version-3 header (pid 0: this thread) reads
    // two CapData structs from `data`; both outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether this thread (not the whole process: capabilities are per
/// thread) may administer network interfaces.
pub fn thread_has_net_admin() -> bool {
    capget().is_ok_and(|d| d[0].effective & (1 << CAP_NET_ADMIN) != 0)
}

/// Runs `f` with CAP_NET_ADMIN out of this thread's effective set, then puts
/// it back, so a test run as root can take the unprivileged path for real.
/// Only this thread's own system calls are affected: a program it starts
/// gets root's capabilities back at exec. Panics if the capability cannot be
/// dropped (the test could not run what it claims to).
pub fn without_net_admin<T>(f: impl FnOnce() -> T) -> T {
    let saved = capget().unwrap_or_else(|e| panic!("TEST NOT RUN: capget failed: {e}"));
    let mut dropped = saved;
    dropped[0].effective &= !(1 << CAP_NET_ADMIN);
    capset(&dropped).unwrap_or_else(|e| panic!("TEST NOT RUN: cannot drop CAP_NET_ADMIN: {e}"));
    assert!(
        !thread_has_net_admin(),
        "TEST NOT RUN: CAP_NET_ADMIN still effective after capset"
    );
    // Put the capability back even if `f` panics (with --test-threads=1 the
    // next test runs on this same thread).
    struct Restore([CapData; 2]);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Err(e) = capset(&self.0) {
                eprintln!("cannot restore this thread's capabilities: {e}");
            }
        }
    }
    let _restore = Restore(saved);
    f()
}

/// A descriptor: (guest address, length, device-writable).
pub type Desc = (u64, u32, bool);

/// A descriptor chain as the driver lays it out from index `start` on:
/// each descriptor linked to the next.
pub fn desc_chain(start: u16, descs: &[Desc]) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, &(addr, len, w))| {
            let last = i + 1 == descs.len();
            let mut flags = if w { VRING_DESC_F_WRITE } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT;
            }
            let next = if last { 0 } else { start + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
        })
        .collect()
}
