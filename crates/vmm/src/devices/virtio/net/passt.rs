//! The user-mode backend of a virtio-net device (`--net user`): frames go
//! to and come from a `passt` process, which gives the guest DHCP, DNS and
//! its TCP/UDP/ICMP connections through ordinary sockets of the user who
//! runs kvmini, so no TAP and no privilege is needed.
//!
//! kvmini and passt share one end each of a Unix stream socketpair
//! (`passt --fd`), so there is no socket path to race for or clean up, and
//! passt quits when kvmini's end closes (and is killed with SIGKILL should
//! kvmini die first). On the stream every Ethernet frame is preceded by its
//! length as a 32-bit big-endian number (passt's QEMU protocol). passt
//! neither sends nor takes a virtio-net header, so the device offers the
//! guest no segmentation offloads and no checksum offload on transmit
//! ([`FrameIo::vnet_hdr`]), and this backend adds a header to every frame
//! it hands the device and strips it from every frame it sends. passt
//! builds every frame it sends from its own sockets' data with correct
//! checksums, so the device offers VIRTIO_NET_F_GUEST_CSUM and, once the
//! guest takes it, the header says `DATA_VALID`: the guest need not verify
//! them again ([`FrameIo::checksums_valid`]).
//!
//! The stream has no frame boundaries, so both directions keep a partial
//! frame here: a received frame is read in two reads (its length, then
//! exactly its bytes), so anything not yet returned stays in the socket
//! and the socket stays readable for the event loop; a frame the socket
//! took only part of keeps its rest in [`Passt::tx`] until the socket is
//! writable again ([`FrameIo::backlog`], [`FrameIo::flush`]).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::frame::{MAX_FRAME_LEN, VIRTIO_NET_HDR_F_DATA_VALID, VNET_HDR_LEN};
use super::tap::FrameIo;
use crate::devices::bus::lock;

/// The environment variable naming the passt binary (default: `passt` on
/// `PATH`).
pub const PASST_ENV: &str = "KVMINI_PASST";
/// The largest frame passt takes from us (its limit; it quits on more).
pub const PASST_MAX_FRAME: usize = 65535;

/// Extra arguments for every passt kvmini starts, separated by whitespace
/// (e.g. `--ipv4-only`; the emulated machine passes `--no-map-gw`, so
/// that its guest's gateway is the real host's loopback, not its own).
pub const PASST_ARGS_ENV: &str = "KVMINI_PASST_ARGS";

/// `forward=tcp:HOSTPORT:GUESTPORT`: connections to the host's HOSTPORT
/// (any address) reach the guest's GUESTPORT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
}

impl fmt::Display for PortForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp:{}:{}", self.host, self.guest)
    }
}

impl FromStr for PortForward {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("forward={s}: use forward=tcp:HOSTPORT:GUESTPORT (ports 1-65535)");
        let mut parts = s.split(':');
        let (Some("tcp"), Some(host), Some(guest), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let port = |p: &str| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad);
        Ok(Self {
            host: port(host)?,
            guest: port(guest)?,
        })
    }
}

#[derive(Debug)]
pub enum Error {
    /// No passt binary: not installed, or `KVMINI_PASST` names nothing.
    NotFound(String),
    /// The host has no default route, so passt has no interface to copy
    /// the guest's addresses from.
    NoRoute,
    /// A forwarded host port is taken (or may not be bound).
    Port(PortForward, io::Error),
    /// No user namespace may be made here, and passt sandboxes itself in
    /// one (it exits at once without).
    NoUserNamespace(io::Error),
    Socket(io::Error),
    Spawn(PathBuf, io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(why) => write!(
                f,
                "user-mode networking needs passt, and {why}: install it with \
                 `sudo apt-get install passt` (Debian, Ubuntu) or `dnf install passt` \
                 (Fedora), or name the binary in {PASST_ENV}"
            ),
            Self::NoRoute => write!(
                f,
                "user-mode networking needs a host network interface with a default route \
                 (passt gives the guest that interface's addresses), and this host has none \
                 (see `ip route`)"
            ),
            Self::Port(fw, e) if e.kind() == io::ErrorKind::AddrInUse => write!(
                f,
                "forward={fw}: host port {} is already in use; pick another HOSTPORT",
                fw.host
            ),
            Self::Port(fw, e) => write!(f, "forward={fw}: cannot use host port {}: {e}", fw.host),
            Self::NoUserNamespace(e) => write!(
                f,
                "passt sandboxes itself in a user namespace, and this host refuses to make one \
                 ({e}): kvmini runs in a chroot, or user namespaces are disabled \
                 (sysctl user.max_user_namespaces); run kvmini outside the chroot, or use a TAP"
            ),
            Self::Socket(e) => write!(f, "cannot create the socket pair for passt: {e}"),
            Self::Spawn(p, e) => write!(f, "cannot start {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for Error {}

/// The passt binary: `$KVMINI_PASST`, else `passt` on `PATH`.
pub fn find_passt() -> Result<PathBuf, Error> {
    crate::devices::child::find_program(PASST_ENV, "passt", &[]).map_err(Error::NotFound)
}

/// Whether `/proc/net/route` or `/proc/net/ipv6_route` lists a default
/// route that is up (passt's condition for a usable host interface).
pub fn host_has_default_route() -> bool {
    let v4 = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_route_v4(&v4) || default_route_v6(&v6)
}

/// `/proc/net/route`: Iface Destination Gateway Flags ...; destination 0
/// with RTF_UP (1).
fn default_route_v4(table: &str) -> bool {
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3
            && f[1] == "00000000"
            && u32::from_str_radix(f[3], 16).is_ok_and(|flags| flags & 1 != 0)
    })
}

/// `/proc/net/ipv6_route`: dest, prefix length, ..., flags, device; the
/// default route is ::/0 with RTF_UP, not on `lo` (where the kernel keeps
/// its unreachable placeholder).
fn default_route_v6(table: &str) -> bool {
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 10
            && f[0].bytes().all(|b| b == b'0')
            && f[1] == "00"
            && u32::from_str_radix(f[8], 16).is_ok_and(|flags| flags & 1 != 0 && flags & 0x200 == 0)
            && f[9] != "lo"
    })
}

/// What `--net user` needs before the VM is built, checked cheaply: passt,
/// a default route, and every forwarded host port free (passt itself only
/// warns about a port it cannot bind and runs on without it).
pub fn preflight(forwards: &[PortForward]) -> Result<PathBuf, Error> {
    let passt = find_passt()?;
    if !host_has_default_route() {
        return Err(Error::NoRoute);
    }
    for fw in forwards {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, fw.host)).map_err(|e| Error::Port(*fw, e))?;
    }
    user_namespaces_allowed().map_err(Error::NoUserNamespace)?;
    Ok(passt)
}

/// Whether a process may make a user namespace here (passt needs one):
/// a child tries, then runs `true`. The kernel refuses in a chroot and
/// where user namespaces are disabled.
pub fn user_namespaces_allowed() -> io::Result<()> {
    let mut probe = Command::new("true");
    probe
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls unshare(2), which is async-signal-safe.
    unsafe {
        probe.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    probe.status().map(|_| ())
}

/// Starts `passt` for one NIC with `forwards`, on a new socketpair:
/// returns the other end (blocking; frames as the module says) and the
/// process, which is killed when this process dies.
pub fn spawn(passt: &Path, forwards: &[PortForward]) -> Result<(UnixStream, Child), Error> {
    let (ours, theirs) = UnixStream::pair().map_err(Error::Socket)?;
    let mut cmd = Command::new(passt);
    // Foreground, quiet, messages (warnings, errors) on our stderr; the
    // socket is always descriptor 3 in passt (see spawn_with_fd3).
    cmd.args(["--foreground", "--quiet", "--stderr", "--fd", "3"]);
    // As root passt drops to nobody anyway, warning each time unless told
    // to (numerically: a minimal /etc/passwd may have no nobody).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        cmd.args(["--runas", "65534:65534"]);
    }
    if forwards.is_empty() {
        cmd.args(["--tcp-ports", "none"]);
    }
    for fw in forwards {
        cmd.args(["--tcp-ports", &format!("{}:{}", fw.host, fw.guest)]);
    }
    // No UDP ports are forwarded: passt's default is none.
    if let Some(extra) = std::env::var_os(PASST_ARGS_ENV) {
        cmd.args(extra.to_string_lossy().split_whitespace());
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let child = crate::devices::child::spawn_with_fd3(&mut cmd, &theirs)
        .map_err(|e| Error::Spawn(passt.to_path_buf(), e))?;
    drop(theirs);
    log::debug!(
        "passt started (pid {}) with forwards [{}]",
        child.id(),
        forwards
            .iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok((ours, child))
}

/// A received frame in progress.
#[derive(Default)]
struct RxState {
    /// The length prefix as far as it has been read.
    prefix: [u8; 4],
    prefix_have: usize,
    /// The frame's bytes so far (its length is known once `prefix` is).
    frame: Vec<u8>,
    /// The frame is too large for the guest: its bytes are read and
    /// thrown away, `discard` of them still to come.
    oversized: bool,
    discard: usize,
}

/// A running passt and kvmini's end of its socket.
pub struct Passt {
    /// The socket as a file: `read`/`write` are what the event loop's
    /// seccomp filter allows (a `UnixStream` would `recvfrom`/`sendto`).
    stream: File,
    /// passt's pid (`None` in the tests, where the far end is the test).
    /// passt is neither killed nor waited for here: it quits when our end
    /// of the socket closes, and the device may be dropped on a vCPU
    /// thread, whose seccomp filter has no kill or wait4.
    pid: Option<u32>,
    rx: Mutex<RxState>,
    /// Bytes of frames the socket has not taken yet (length prefixes
    /// included), written before any new frame.
    tx: Mutex<Vec<u8>>,
    /// The guest accepted VIRTIO_NET_F_GUEST_CSUM: received frames are
    /// marked DATA_VALID.
    data_valid: AtomicBool,
}

impl Passt {
    /// Starts `passt` (from [`preflight`]) for one NIC, with `forwards`.
    pub fn start(passt: &Path, forwards: &[PortForward]) -> Result<Self, Error> {
        let (ours, child) = spawn(passt, forwards)?;
        ours.set_nonblocking(true).map_err(Error::Socket)?;
        Ok(Self::over(ours, Some(child)))
    }

    pub(super) fn over(stream: UnixStream, child: Option<Child>) -> Self {
        Self {
            stream: File::from(OwnedFd::from(stream)),
            pid: child.map(|c| c.id()),
            rx: Mutex::new(RxState::default()),
            tx: Mutex::new(Vec::new()),
            data_valid: AtomicBool::new(false),
        }
    }

    /// A backend on `stream`, the tests playing passt on the other end
    /// (`child`: a process standing in for passt's).
    #[cfg(test)]
    pub(crate) fn for_tests(stream: UnixStream, child: Option<Child>) -> Self {
        Self::over(stream, child)
    }

    /// passt's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }
}

impl Passt {
    /// Sends what `tx` holds; `WouldBlock` while some remains. A failed
    /// socket loses it all (the stream would be out of step otherwise).
    fn flush_locked(&self, tx: &mut Vec<u8>) -> io::Result<()> {
        match write_some(&self.stream, tx) {
            Ok(n) => {
                tx.drain(..n);
                if tx.is_empty() {
                    Ok(())
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            }
            Err(e) => {
                tx.clear();
                Err(e)
            }
        }
    }
}

impl AsRawFd for Passt {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// `read` that turns end-of-stream into an error (passt went away).
fn read_some(mut s: &File, buf: &mut [u8]) -> io::Result<usize> {
    match s.read(buf)? {
        0 => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "passt closed its socket",
        )),
        n => Ok(n),
    }
}

/// Writes as much of `buf` as the socket takes now; returns how much.
fn write_some(mut s: &File, buf: &[u8]) -> io::Result<usize> {
    let mut at = 0;
    while at < buf.len() {
        match s.write(&buf[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(at)
}

impl FrameIo for Passt {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rx = lock(&self.rx);
        while rx.prefix_have < 4 {
            let have = rx.prefix_have;
            let n = read_some(&self.stream, &mut rx.prefix[have..])?;
            rx.prefix_have += n;
            if rx.prefix_have == 4 {
                let len = u32::from_be_bytes(rx.prefix) as usize;
                // Decided once, here: a frame is read whole or not at all.
                rx.oversized = VNET_HDR_LEN + len > buf.len() || len > MAX_FRAME_LEN;
                if rx.oversized {
                    rx.discard = len;
                } else {
                    rx.frame.reserve(len);
                }
            }
        }
        let len = u32::from_be_bytes(rx.prefix) as usize;
        if rx.oversized {
            // Too large for the guest: read it away, then report its size
            // (larger than `buf`, so the device drops and counts it).
            let mut sink = [0u8; 4096];
            while rx.discard > 0 {
                let want = rx.discard.min(sink.len());
                rx.discard -= read_some(&self.stream, &mut sink[..want])?;
            }
            rx.prefix_have = 0;
            rx.oversized = false;
            // Larger than the device's buffer: dropped and counted there.
            return Ok(VNET_HDR_LEN + len.max(buf.len()));
        }
        while rx.frame.len() < len {
            let have = rx.frame.len();
            rx.frame.resize(len, 0);
            match read_some(&self.stream, &mut rx.frame[have..]) {
                Ok(n) => rx.frame.truncate(have + n),
                Err(e) => {
                    rx.frame.truncate(have);
                    return Err(e);
                }
            }
        }
        buf[..VNET_HDR_LEN].fill(0);
        if self.data_valid.load(Ordering::Relaxed) {
            buf[0] = VIRTIO_NET_HDR_F_DATA_VALID;
        }
        buf[VNET_HDR_LEN..VNET_HDR_LEN + len].copy_from_slice(&rx.frame);
        rx.frame.clear();
        rx.prefix_have = 0;
        Ok(VNET_HDR_LEN + len)
    }

    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        let payload = frame.get(VNET_HDR_LEN..).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "frame shorter than its header")
        })?;
        // passt takes frames of at most 64 KiB - 1 and quits on a larger
        // one: a guest with a larger MTU loses that frame, not its NIC.
        if payload.len() > PASST_MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "frame of {} bytes, passt takes at most {PASST_MAX_FRAME}",
                    payload.len()
                ),
            ));
        }
        let len = payload.len() as u32;
        let mut tx = lock(&self.tx);
        if !tx.is_empty() {
            self.flush_locked(&mut tx)?;
        }
        tx.extend_from_slice(&len.to_be_bytes());
        tx.extend_from_slice(payload);
        match write_some(&self.stream, &tx) {
            // Nothing of it went: the caller keeps the frame and retries.
            Ok(0) => {
                tx.clear();
                Err(io::ErrorKind::WouldBlock.into())
            }
            Ok(n) => {
                tx.drain(..n);
                Ok(frame.len())
            }
            Err(e) => {
                tx.clear();
                Err(e)
            }
        }
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        // Only TUN_F_CSUM can come (GUEST_CSUM is the one offload offered).
        self.data_valid
            .store(flags & libc::TUN_F_CSUM != 0, Ordering::Relaxed);
        Ok(())
    }

    fn checksums_valid(&self) -> bool {
        true
    }

    fn vnet_hdr(&self) -> bool {
        false
    }

    fn backlog(&self) -> bool {
        !lock(&self.tx).is_empty()
    }

    fn flush(&self) -> io::Result<()> {
        self.flush_locked(&mut lock(&self.tx))
    }
}

#[cfg(test)]
mod tests;
