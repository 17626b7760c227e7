//! The host side of a virtio-net device: a Linux TAP interface opened
//! through `/dev/net/tun` with a virtio-net header in front of every frame
//! (`IFF_VNET_HDR`), so checksum and segmentation offloads pass through
//! untouched. Non-blocking: the event loop polls it.

use std::ffi::CString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use super::frame::VNET_HDR_LEN;

const TUN_PATH: &str = "/dev/net/tun";

/// Where frames go to and come from: a TAP device, or (in tests) anything
/// that keeps datagram boundaries, such as a Unix socketpair.
pub trait FrameIo: AsRawFd + Send + Sync {
    /// Reads one frame (virtio-net header first); `WouldBlock` if none.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (virtio-net header first); `WouldBlock` if full.
    fn send(&self, frame: &[u8]) -> io::Result<usize>;
    /// Tells the host which offloads the guest accepts (`TUN_F_*`).
    fn set_offload(&self, flags: u32) -> io::Result<()>;
    /// Whether the host side takes and gives the virtio-net header as it
    /// is (a TAP with `IFF_VNET_HDR`); without, the device offers the guest
    /// no checksum or segmentation offloads, and the backend adds and
    /// strips an all-zero header itself.
    fn vnet_hdr(&self) -> bool {
        true
    }
    /// Whether part of a frame `send` accepted is still waiting to go out
    /// (a stream backend): the device then polls for writability.
    fn backlog(&self) -> bool {
        false
    }
    /// Sends what [`Self::backlog`] holds; `WouldBlock` if some remains.
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    /// Without [`Self::vnet_hdr`]: whether every frame this backend hands
    /// over carries correct checksums, which it then marks
    /// `VIRTIO_NET_HDR_F_DATA_VALID` once the guest accepted
    /// VIRTIO_NET_F_GUEST_CSUM (`set_offload` with `TUN_F_CSUM`), sparing
    /// the guest their verification.
    fn checksums_valid(&self) -> bool {
        false
    }
}

#[derive(Debug)]
pub enum Error {
    InvalidName(String),
    OpenTun(io::Error),
    Features(io::Error),
    NoVnetHdr,
    /// TUNSETIFF was refused for lack of privilege.
    NoPermission {
        name: String,
        exists: bool,
        user: String,
    },
    Busy(String),
    NotTap(String),
    Attach(String, io::Error),
    VnetHdrSize(String, io::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName(n) => write!(
                f,
                "invalid TAP name '{n}': 1 to 15 characters, no '/', ':', '%' or whitespace"
            ),
            Self::OpenTun(e) if e.kind() == io::ErrorKind::PermissionDenied => write!(
                f,
                "cannot open {TUN_PATH}: {e} (kvmini needs read-write access to it; most \
                 distributions make it mode 0666)"
            ),
            Self::OpenTun(e) => write!(
                f,
                "cannot open {TUN_PATH}: {e} (is the tun module loaded? `sudo modprobe tun`)"
            ),
            Self::Features(e) => write!(f, "cannot query the TUN driver's features: {e}"),
            Self::NoVnetHdr => write!(
                f,
                "this kernel's TUN driver has no IFF_VNET_HDR, which virtio-net needs"
            ),
            Self::NoPermission {
                name,
                exists: false,
                user,
            } => write!(
                f,
                "TAP device '{name}' does not exist and kvmini may not create it (that needs \
                 CAP_NET_ADMIN); create it once with `sudo ip tuntap add dev {name} mode tap \
                 user {user}`, then `sudo ip link set {name} up`"
            ),
            Self::NoPermission {
                name,
                exists: true,
                user,
            } => write!(
                f,
                "TAP device '{name}' exists but kvmini may not attach to it (it belongs to \
                 another user or group, and kvmini lacks CAP_NET_ADMIN); recreate it with \
                 `sudo ip tuntap del dev {name} mode tap && sudo ip tuntap add dev {name} \
                 mode tap user {user}`"
            ),
            Self::Busy(n) => write!(
                f,
                "TAP device '{n}' is already in use by another process (another kvmini, or QEMU?)"
            ),
            Self::NotTap(n) => write!(
                f,
                "network interface '{n}' exists and is not a TAP device (a TUN device, or \
                 another kind of interface); pick another name"
            ),
            Self::Attach(n, e) => write!(f, "cannot attach to TAP device '{n}': {e}"),
            Self::VnetHdrSize(n, e) => write!(
                f,
                "TAP device '{n}': cannot set the virtio-net header size: {e}"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::OpenTun(e) | Self::Features(e) => Some(e),
            Self::Attach(_, e) | Self::VnetHdrSize(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Whether `name` can be a network interface name (Linux's
/// `dev_valid_name`), and has no `%` (a TUN name template).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || b == 0 || b.is_ascii_whitespace())
}

/// Whether an interface called `name` exists in this network namespace.
pub fn interface_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call;
    // if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// The user to name in `ip tuntap add ... user USER`.
fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            std::fs::metadata("/proc/self")
                .ok()
                .map(|m| m.uid().to_string())
        })
        .unwrap_or_else(|| "$USER".into())
}

/// The TUNSETIFF request for the TAP `name` in the mode kvmini uses
/// (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`).
pub fn tap_ifreq(name: &str) -> Result<libc::ifreq, Error> {
    if !valid_name(name) {
        return Err(Error::InvalidName(name.into()));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // valid_name: shorter than IFNAMSIZ, so the name stays NUL-terminated.
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as _;
    Ok(ifr)
}

/// An open TAP interface in `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` mode with
/// 12-byte (virtio 1.x) headers.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

impl Tap {
    /// Attaches to the TAP interface `name`; if there is none and we have
    /// CAP_NET_ADMIN, the kernel creates it (it disappears when kvmini
    /// exits), and we say so.
    pub fn open(name: &str) -> Result<Self, Error> {
        if !valid_name(name) {
            return Err(Error::InvalidName(name.into()));
        }
        let existed = interface_exists(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(Error::OpenTun)?;

        let mut features: libc::c_uint = 0;
        // SAFETY: TUNGETFEATURES writes one unsigned int into `features`,
        // which lives across the call; `file` is an open TUN fd.
        if unsafe { ioctl_with_mut_ref(&file, libc::TUNGETFEATURES, &mut features) } < 0 {
            return Err(Error::Features(io::Error::last_os_error()));
        }
        if features & libc::IFF_VNET_HDR as libc::c_uint == 0 {
            return Err(Error::NoVnetHdr);
        }

        let mut ifr = tap_ifreq(name)?;
        // SAFETY: TUNSETIFF reads and may update `ifr`, a valid ifreq that
        // lives across the call.
        if unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF, &mut ifr) } < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => Error::NoPermission {
                    name: name.into(),
                    exists: existed,
                    user: current_user(),
                },
                Some(libc::EBUSY) => Error::Busy(name.into()),
                Some(libc::EINVAL) if existed => Error::NotTap(name.into()),
                _ => Error::Attach(name.into(), e),
            });
        }

        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from `hdr_len`, which lives
        // across the call.
        if unsafe { ioctl_with_ref(&file, libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(Error::VnetHdrSize(name.into(), io::Error::last_os_error()));
        }
        let created = !existed;
        if created {
            log::warn!(
                "created TAP device '{name}' (it goes away when kvmini exits); it is down and \
                 has no address: `ip addr add ADDR/LEN dev {name} && ip link set {name} up`, \
                 or add it to a bridge"
            );
        }
        Ok(Self {
            file,
            name: name.into(),
            created,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether kvmini created the interface (it did not exist before).
    pub fn created(&self) -> bool {
        self.created
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl FrameIo for Tap {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; `file` is an
        // attached TAP fd.
        if unsafe { ioctl_with_val(&self.file, libc::TUNSETOFFLOAD, flags.into()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["tap0", "t", "kvmini-tap-1234", "a.b_c"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "tap/0",
            "tap:0",
            "tap%d",
            "tap 0",
            "sixteen-chars-xx",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(matches!(Tap::open("a/b"), Err(Error::InvalidName(_))));
    }

    #[test]
    fn errors_name_the_fix() {
        let e = Error::NoPermission {
            name: "tap7".into(),
            exists: false,
            user: "alice".into(),
        };
        assert!(e
            .to_string()
            .contains("sudo ip tuntap add dev tap7 mode tap user alice"));
        let e = Error::NoPermission {
            name: "tap7".into(),
            exists: true,
            user: "alice".into(),
        };
        assert!(e.to_string().contains("belongs to another user"));
    }

    /// These tests mean nothing without the TUN driver: they fail, loudly.
    fn require_tun() {
        assert!(
            std::path::Path::new(TUN_PATH).exists(),
            "TAP TEST NOT RUN: {TUN_PATH} is missing (sudo modprobe tun)"
        );
    }

    /// The privileged path, with the real ioctls: needs CAP_NET_ADMIN (root,
    /// as in CI); without it the test fails and says so.
    #[test]
    fn open_creates_a_tap_that_goes_away() {
        require_tun();
        assert!(
            crate::testutil::thread_has_net_admin(),
            "TAP TEST NOT RUN: creating a TAP needs CAP_NET_ADMIN (run the tests as root, \
             as tests/run-all.sh does in CI)"
        );
        let name = format!("kvmt{}", std::process::id() % 100_000);
        assert!(!interface_exists(&name), "{name} exists before the test");
        let tap = Tap::open(&name).unwrap_or_else(|e| panic!("cannot create {name}: {e}"));
        assert!(tap.created());
        assert_eq!(tap.name(), name);
        assert!(interface_exists(&name));
        tap.set_offload(libc::TUN_F_CSUM | libc::TUN_F_TSO4)
            .unwrap();
        // A second attach to the same single-queue TAP is refused.
        assert!(matches!(Tap::open(&name), Err(Error::Busy(_))));
        drop(tap);
        assert!(!interface_exists(&name), "a created TAP goes away");
    }

    /// The unprivileged path, for real even as root: CAP_NET_ADMIN is
    /// dropped for this test's thread, so the kernel refuses to create the
    /// TAP and the error names the command to run.
    #[test]
    fn open_without_privilege_explains() {
        require_tun();
        let name = format!("kvmu{}", std::process::id() % 100_000);
        let open = || Tap::open(&name);
        let result = if crate::testutil::thread_has_net_admin() {
            crate::testutil::without_net_admin(open)
        } else {
            open()
        };
        match result {
            Err(Error::NoPermission { exists: false, .. }) => {}
            // An unprivileged user who may not even open the TUN device.
            Err(Error::OpenTun(e)) if e.kind() == io::ErrorKind::PermissionDenied => {}
            other => panic!("expected a permission refusal, got {other:?}"),
        }
        assert!(!interface_exists(&name), "{name} was created anyway");
    }

    /// "lo" always exists and is not a TAP.
    #[test]
    fn a_non_tap_interface_is_refused() {
        require_tun();
        match Tap::open("lo") {
            Err(Error::NotTap(n)) => assert_eq!(n, "lo"),
            Err(Error::OpenTun(e)) if e.kind() == io::ErrorKind::PermissionDenied => {}
            other => panic!("expected lo to be refused as not a TAP, got {other:?}"),
        }
    }
}
