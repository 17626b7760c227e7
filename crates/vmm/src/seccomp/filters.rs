//! The allow-list of each VMM thread kind, built from observation:
//! `strace -f` of kvmini running the smoke guests here and, in the nested
//! rig, `run` and `exec` with disks, a NIC and the consoles (see
//! docs/architecture.md, "Seccomp"), then trimmed to what kvmini's own
//! code paths need. Every call not listed traps.
//!
//! What every thread needs: memory for the allocator (`mmap`/`mprotect`
//! never with PROT_EXEC), `futex` for locks, `write` (eventfds, and the
//! SIGSYS message itself), leaving (`exit`, `exit_group` for the SIGSYS
//! handler's `_exit`, `sigaltstack` and `munmap` when Rust tears down the
//! thread's signal stack, `madvise` when glibc frees its stack, `close`
//! for the descriptors a thread owns and drops, and `fcntl(F_GETFD)`,
//! which debug builds of Rust's std make before each close), `poll` (the
//! logger checks stderr has room before writing a message),
//! `rt_sigreturn` and `rt_sigprocmask`. No thread may open files, create
//! sockets, fork, exec, ptrace or change credentials.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events};
use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// KVM's ioctl type.
const KVMIO: u64 = 0xAE;

/// `_IOC(dir, type, nr, size)` of the kernel's ioctl.h.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = ioc(0, KVMIO, 0x80, 0);
/// `KVM_GET_REGS`, `KVM_GET_SREGS`, `KVM_TRANSLATE`, `KVM_GET_VCPU_EVENTS`:
/// read-only looks at the vCPU for error reports (emulation failures,
/// triple faults).
pub const KVM_GET_REGS: u64 = ioc(IOC_READ, KVMIO, 0x81, size_of::<kvm_regs>());
pub const KVM_GET_SREGS: u64 = ioc(IOC_READ, KVMIO, 0x83, size_of::<kvm_sregs>());
pub const KVM_TRANSLATE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    KVMIO,
    0x85,
    size_of::<kvm_translation>(),
);
pub const KVM_GET_VCPU_EVENTS: u64 = ioc(IOC_READ, KVMIO, 0x9f, size_of::<kvm_vcpu_events>());
/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: u64 = ioc(IOC_WRITE, b'T' as u64, 208, 4);

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// The rules of `kind`'s allow-list.
pub fn rules(kind: ThreadKind) -> Result<Rules, BackendError> {
    let mut r = Rules::new();
    common(&mut r)?;
    match kind {
        ThreadKind::Vcpu => vcpu(&mut r)?,
        ThreadKind::VcpuVhostUser => {
            vcpu(&mut r)?;
            // A virtio-fs device's vhost-user messages on activation and
            // reset (descriptors attached), on the socket it connected
            // before the filters were installed. Only VMs with one.
            allow(&mut r, &[libc::SYS_sendmsg, libc::SYS_recvmsg]);
        }
        ThreadKind::EventLoop => event_loop(&mut r)?,
        ThreadKind::DiskIo => disk_io(&mut r)?,
        ThreadKind::Writer => writer(&mut r)?,
    }
    Ok(r)
}

fn allow(r: &mut Rules, calls: &[i64]) {
    for &c in calls {
        r.insert(c, Vec::new());
    }
}

/// Allows `call` only when argument `arg` equals one of `values`.
fn allow_arg(r: &mut Rules, call: i64, arg: u8, values: &[u64]) -> Result<(), BackendError> {
    let rules = r.entry(call).or_default();
    for &v in values {
        rules.push(SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            v,
        )?])?);
    }
    Ok(())
}

/// Allows `call` only when `arg` has none of the bits in `mask`.
fn allow_without_bits(r: &mut Rules, call: i64, arg: u8, mask: u64) -> Result<(), BackendError> {
    r.entry(call)
        .or_default()
        .push(SeccompRule::new(vec![SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        )?])?);
    Ok(())
}

fn common(r: &mut Rules) -> Result<(), BackendError> {
    allow(
        r,
        &[
            libc::SYS_futex,
            libc::SYS_write,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_brk,
            libc::SYS_mremap,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_close,
            // The logger waits a little for room on stderr before it
            // drops a message (never long for a stalled reader).
            libc::SYS_poll,
            libc::SYS_ppoll,
        ],
    );
    allow_arg(r, libc::SYS_fcntl, 1, &[libc::F_GETFD as u64])?;
    // Anonymous memory for the allocator; never executable.
    allow_without_bits(r, libc::SYS_mmap, 2, libc::PROT_EXEC as u64)?;
    allow_without_bits(r, libc::SYS_mprotect, 2, libc::PROT_EXEC as u64)?;
    Ok(())
}

/// `vcpu<N>`: KVM_RUN, the error reports' reads of the vCPU, and what a
/// guest's MMIO and port writes reach: eventfds (irqfds, queue kicks,
/// exit), a disk's flush when the driver resets it, a NIC's offloads on
/// activation and reset.
fn vcpu(r: &mut Rules) -> Result<(), BackendError> {
    allow_arg(
        r,
        libc::SYS_ioctl,
        1,
        &[
            KVM_RUN,
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_TRANSLATE,
            KVM_GET_VCPU_EVENTS,
            TUNSETOFFLOAD,
        ],
    )?;
    allow(r, &[libc::SYS_fdatasync]);
    Ok(())
}

/// `event-loop`: epoll, eventfd and TAP reads and writes, console input,
/// the NIC's rate-limit timer.
fn event_loop(r: &mut Rules) -> Result<(), BackendError> {
    allow(
        r,
        &[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            libc::SYS_timerfd_settime,
        ],
    );
    Ok(())
}

/// `disk<N>`: its own epoll loop (queue kick, stop, rate-limit timer),
/// positioned reads and writes, flush, discard and write-zeroes, and the
/// sleep that holds an interrupt back for the coalescing window (glibc
/// since 2.31 sleeps with clock_nanosleep, older glibc and musl with
/// nanosleep; a sleep cut by SIGSTOP/SIGCONT resumes through
/// restart_syscall).
fn disk_io(r: &mut Rules) -> Result<(), BackendError> {
    allow(
        r,
        &[
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_restart_syscall,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_read,
            libc::SYS_preadv,
            libc::SYS_pwritev,
            libc::SYS_pwrite64,
            libc::SYS_fdatasync,
            libc::SYS_fallocate,
            libc::SYS_timerfd_settime,
        ],
    );
    Ok(())
}

/// `writer-*`: writes to its sink (stdout, stderr, a file, a pipe), and
/// truncating exec's share spool when the guest sends too much.
fn writer(r: &mut Rules) -> Result<(), BackendError> {
    allow(r, &[libc::SYS_ftruncate]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // From linux/kvm.h as the kernel defines them (x86_64).
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        let libc_value = libc::TUNSETOFFLOAD as u64;
        assert_eq!(TUNSETOFFLOAD, libc_value);
    }

    /// Only the vCPUs of a VM with a vhost-user device may send or receive
    /// messages (with descriptors) on a socket.
    #[test]
    fn only_vhost_user_vcpus_may_send_messages() {
        for kind in ThreadKind::ALL {
            let r = rules(kind).unwrap();
            let may = kind == ThreadKind::VcpuVhostUser;
            for call in [libc::SYS_sendmsg, libc::SYS_recvmsg] {
                assert_eq!(r.contains_key(&call), may, "{kind:?}: {call}");
            }
        }
    }

    #[test]
    fn no_kind_may_open_fork_or_exec() {
        for kind in ThreadKind::ALL {
            let r = rules(kind).unwrap();
            for forbidden in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_socket,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_fork,
                libc::SYS_execve,
                libc::SYS_ptrace,
                libc::SYS_getppid,
                libc::SYS_io_uring_setup,
            ] {
                assert!(!r.contains_key(&forbidden), "{kind:?} allows {forbidden}");
            }
        }
    }
}
