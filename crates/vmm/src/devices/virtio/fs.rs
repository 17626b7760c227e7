//! virtio-fs (virtio 1.2, 5.11) whose data path is a vhost-user backend:
//! virtiofsd, the virtio-fs project's daemon, serves the FUSE requests
//! straight from guest memory (which is therefore shared, a memfd: see
//! [`crate::vmm::ram`]). kvmini speaks the vhost-user control protocol
//! through rust-vmm's `vhost` crate ([`Frontend`]): at start-up it connects
//! and reads the backend's features; on the driver's DRIVER_OK it hands the
//! backend the memory table, each queue's size, addresses and eventfds,
//! and enables the queues.
//!
//! The guest's queue notifications (KVM ioeventfds) go to the backend
//! directly. The backend's "used buffers" signals (one call eventfd per
//! queue) come to kvmini's event loop ([`FsHandler`]), which sets the
//! transport's interrupt status and raises the interrupt: virtio-mmio needs
//! the status register right, so they cannot be irqfds themselves.
//!
//! The backend is trusted no more than it must be: every reply is checked
//! by the `vhost` crate, a backend that does not answer within
//! [`REPLY_TIMEOUT`] fails the activation (the driver sees
//! DEVICE_NEEDS_RESET) rather than holding a vCPU, and a backend that goes
//! away leaves the guest's requests unanswered, never the VMM stopped.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{kv_escape, parse_kv, ConfigError};
use crate::devices::virtio::{feature, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

/// Device ID of virtio-fs (virtio 1.2, 5).
pub const TYPE_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// The longest tag the config space holds (`struct virtio_fs_config`).
pub const TAG_MAX: usize = 36;
/// Queue 0 is the high-priority queue, queue 1 the one request queue.
const QUEUES: usize = 2;
/// Entries per queue: as deep as the guest's FUSE layer makes use of.
pub const QUEUE_SIZE: u16 = 1024;
/// How long one vhost-user request may wait for the backend's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit in the feature word,
/// never offered to the guest.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// The protocol features kvmini uses when the backend has them: replies to
/// every request (so that a refused memory table or ring fails activation
/// there and then) and more than one queue.
const WANTED_PROTOCOL: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::REPLY_ACK.union(VhostUserProtocolFeatures::MQ);

/// One `--fs`: a virtio-fs device whose backend listens on `socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// What the guest mounts: `mount -t virtiofs TAG DIR`.
    pub tag: String,
    /// The vhost-user socket of a running virtiofsd.
    pub socket: PathBuf,
    /// Where kvmini's guests mount it (default `/mnt/TAG`).
    pub mount: Option<String>,
}

impl FsConfig {
    /// The flag value that gives this config back.
    pub fn to_arg(&self) -> String {
        let mut s = format!(
            "tag={},socket={}",
            kv_escape(&self.tag),
            kv_escape(&self.socket.display().to_string())
        );
        if let Some(m) = &self.mount {
            s.push_str(&format!(",mount={}", kv_escape(m)));
        }
        s
    }

    /// The kernel command-line word that tells kvmini's guests to mount it:
    /// `kvmini.fs=TAG:DIR` (both checked to be plain words).
    pub fn cmdline_word(&self) -> String {
        let dir = self
            .mount
            .clone()
            .unwrap_or_else(|| format!("/mnt/{}", self.tag));
        format!("kvmini.fs={}:{dir}", self.tag)
    }
}

/// A tag or guest path character that is safe on the kernel command line
/// and in the guest's shell.
fn plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.-".contains(c)
}

/// Parses `--fs tag=TAG,socket=PATH[,mount=DIR]`.
pub fn parse_fs(s: &str) -> Result<FsConfig, ConfigError> {
    let err = |why: String| ConfigError::Fs(s.to_string(), why);
    let (mut tag, mut socket, mut mount) = (None, None, None);
    for (k, v) in parse_kv(s, &["tag", "socket", "mount"]).map_err(err)? {
        match k.as_str() {
            "tag" => tag = Some(v),
            "socket" => socket = Some(PathBuf::from(v)),
            _ => mount = Some(v),
        }
    }
    let tag = tag.ok_or_else(|| err("tag=TAG is required (the name the guest mounts)".into()))?;
    if tag.is_empty() || tag.len() > TAG_MAX || !tag.chars().all(plain) {
        return Err(err(format!(
            "the tag must be 1 to {TAG_MAX} letters, digits, '_', '.' or '-'"
        )));
    }
    let socket = socket.ok_or_else(|| {
        err("socket=PATH is required: the vhost-user socket of a running virtiofsd".into())
    })?;
    if socket.as_os_str().is_empty() {
        return Err(err("empty socket path".into()));
    }
    if let Some(m) = &mount {
        let ok = m.starts_with('/')
            && m.len() > 1
            && m.split('/').skip(1).all(|part| {
                !part.is_empty() && part != "." && part != ".." && part.chars().all(plain)
            });
        if !ok {
            return Err(err(format!(
                "mount={m}: an absolute guest path of plain names (letters, digits, '_', '.', '-')"
            )));
        }
    }
    Ok(FsConfig { tag, socket, mount })
}

/// Checks that no two `--fs` share a tag (the guest could mount only one).
pub fn check_tags(fs: &[FsConfig]) -> Result<(), ConfigError> {
    for (i, a) in fs.iter().enumerate() {
        if fs[..i].iter().any(|b| b.tag == a.tag) {
            return Err(ConfigError::Fs(
                a.to_arg(),
                format!("tag '{}' is given twice", a.tag),
            ));
        }
    }
    Ok(())
}

/// Why a virtio-fs device could not be set up.
#[derive(Debug)]
pub enum FsError {
    Connect(PathBuf, std::io::Error),
    Backend(PathBuf, vhost::Error),
    /// The backend lacks something virtio-fs needs.
    Unsupported(PathBuf, &'static str),
    EventFd(std::io::Error),
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(p, e) => write!(
                f,
                "cannot connect to the vhost-user socket {}: {e} (start virtiofsd first: \
                 virtiofsd --socket-path {} --shared-dir DIR)",
                p.display(),
                p.display()
            ),
            Self::Backend(p, e) => write!(f, "vhost-user backend at {}: {e}", p.display()),
            Self::Unsupported(p, what) => {
                write!(f, "vhost-user backend at {}: {what}", p.display())
            }
            Self::EventFd(e) => write!(f, "cannot create an eventfd: {e}"),
        }
    }
}

impl std::error::Error for FsError {}

pub struct Fs {
    socket: PathBuf,
    frontend: Frontend,
    /// What the backend offers, vhost-user's own bit removed.
    features: u64,
    /// Whether the backend speaks the protocol-features extension (then
    /// queues start disabled and are enabled one by one).
    protocol: bool,
    config: [u8; TAG_MAX + 4],
    queue_evts: [EventFd; QUEUES],
    call_evts: [EventFd; QUEUES],
    /// The transport's interrupt while the device runs, for the handler.
    interrupt: Arc<Mutex<Option<Arc<Interrupt>>>>,
    /// Queues handed to the backend, to stop on reset.
    started: usize,
}

impl Fs {
    /// Connects to the backend of `config` and learns its features.
    pub fn new(config: &FsConfig) -> Result<Self, FsError> {
        let path = &config.socket;
        let backend = |e| FsError::Backend(path.clone(), e);
        let stream = UnixStream::connect(path).map_err(|e| FsError::Connect(path.clone(), e))?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| FsError::Connect(path.clone(), e))?;
        let mut frontend = Frontend::from_stream(stream, QUEUES as u64);
        frontend.set_owner().map_err(backend)?;
        let offered = frontend.get_features().map_err(backend)?;
        if offered & feature(VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::Unsupported(
                path.clone(),
                "it does not offer VIRTIO_F_VERSION_1",
            ));
        }
        let protocol = offered & PROTOCOL_FEATURES != 0;
        if protocol {
            let theirs = frontend.get_protocol_features().map_err(backend)?;
            let ours = theirs & WANTED_PROTOCOL;
            frontend.set_protocol_features(ours).map_err(backend)?;
            if ours.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend.get_queue_num().map_err(backend)?;
                if n < QUEUES as u64 {
                    return Err(FsError::Unsupported(path.clone(), "it has too few queues"));
                }
            }
            if ours.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let mut cfg = [0u8; TAG_MAX + 4];
        cfg[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        // num_request_queues: one.
        cfg[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd);
        Ok(Self {
            socket: path.clone(),
            frontend,
            features: offered & !PROTOCOL_FEATURES,
            protocol,
            config: cfg,
            queue_evts: [evt()?, evt()?],
            call_evts: [evt()?, evt()?],
            interrupt: Arc::new(Mutex::new(None)),
            started: 0,
        })
    }

    /// The event-loop subscriber that turns the backend's signals into
    /// the guest's interrupt.
    pub fn event_handler(&self) -> Result<FsHandler, FsError> {
        let calls = [
            self.call_evts[0].try_clone().map_err(FsError::EventFd)?,
            self.call_evts[1].try_clone().map_err(FsError::EventFd)?,
        ];
        Ok(FsHandler {
            calls,
            interrupt: self.interrupt.clone(),
        })
    }

    /// Hands the queues to the backend and starts them.
    fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        acked: u64,
        queues: &[Queue],
    ) -> Result<(), vhost::Error> {
        let wire = if self.protocol { PROTOCOL_FEATURES } else { 0 };
        self.frontend.set_features(acked | wire)?;
        let regions = mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend.set_mem_table(&regions)?;
        let host = |a: u64| {
            mem.get_host_address(GuestAddress(a))
                .map(|p| p as u64)
                .map_err(|_| vhost::Error::InvalidGuestMemory)
        };
        for (i, q) in queues.iter().enumerate() {
            self.frontend.set_vring_num(i, q.size())?;
            self.frontend.set_vring_addr(
                i,
                &VringConfigData {
                    queue_max_size: q.max_size(),
                    queue_size: q.size(),
                    flags: 0,
                    desc_table_addr: host(q.desc_table())?,
                    used_ring_addr: host(q.used_ring())?,
                    avail_ring_addr: host(q.avail_ring())?,
                    log_addr: None,
                },
            )?;
            self.frontend.set_vring_base(i, q.next_avail())?;
            self.frontend.set_vring_call(i, &self.call_evts[i])?;
            self.frontend.set_vring_kick(i, &self.queue_evts[i])?;
            self.started = i + 1;
            if self.protocol {
                self.frontend.set_vring_enable(i, true)?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; QUEUES]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUES {
            return Err(ActivateError::QueueCount {
                expected: QUEUES,
                got: queues.len(),
            });
        }
        let mut slot = crate::sync::lock(&self.interrupt);
        if slot.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        *slot = Some(interrupt);
        drop(slot);
        self.start(&mem, acked_features, &queues).map_err(|e| {
            self.reset();
            ActivateError::Backend(format!(
                "vhost-user backend at {}: {e}",
                self.socket.display()
            ))
        })
    }

    fn reset(&mut self) {
        crate::sync::lock(&self.interrupt).take();
        for i in 0..std::mem::take(&mut self.started) {
            // GET_VRING_BASE stops the ring in the backend.
            if let Err(e) = self.frontend.get_vring_base(i) {
                log::warn!(
                    "virtio-fs: the backend at {} did not stop queue {i}: {e}",
                    self.socket.display()
                );
            }
        }
    }
}

/// The backend's call eventfds, on the event loop.
pub struct FsHandler {
    calls: [EventFd; QUEUES],
    interrupt: Arc<Mutex<Option<Arc<Interrupt>>>>,
}

impl MutEventSubscriber for FsHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            return;
        }
        let fd = events.fd();
        let Some(call) = self
            .calls
            .iter()
            .find(|c| std::os::fd::AsRawFd::as_raw_fd(*c) == fd)
        else {
            return;
        };
        // Cleared first: a signal after this read raises a new event.
        if call.read().is_err() {
            return;
        }
        if let Some(irq) = crate::sync::lock(&self.interrupt).as_ref() {
            if let Err(e) = irq.signal_used_queue() {
                log::warn!("virtio-fs: cannot raise the interrupt: {e}");
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for call in &self.calls {
            if let Err(e) = ops.add(Events::new(call, EventSet::IN)) {
                log::error!("virtio-fs: cannot watch the backend's signals: {e}");
            }
        }
    }
}

/// Whether `path` could be a vhost-user socket now (for an early, clear
/// error before the VM is built).
pub fn check_socket(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => Ok(()),
        Ok(_) => Err(format!("{} is not a socket", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A real virtiofsd for tests, no KVM needed.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use vmm_sys_util::tempdir::TempDir;

    /// A virtiofsd to test against: `KVMINI_VIRTIOFSD`, or the one
    /// resources/virtiofsd/build.sh provides (built on first use, cached).
    /// A test that cannot have one fails, saying it did not run.
    pub fn virtiofsd() -> PathBuf {
        if let Some(p) = std::env::var_os("KVMINI_VIRTIOFSD") {
            return p.into();
        }
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../resources/virtiofsd/build.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("NOT RUN: cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "NOT RUN: {} could not provide virtiofsd ({})",
            script.display(),
            out.status
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    /// A virtiofsd serving an empty directory of its own, listening on
    /// `socket`; killed when dropped, however the test ends.
    pub struct Backend {
        child: Child,
        pub socket: PathBuf,
        _dir: TempDir,
    }

    impl Backend {
        pub fn start() -> Self {
            let bin = virtiofsd();
            let dir = TempDir::new_with_prefix("/tmp/kvmini-fs-test").unwrap();
            let shared = dir.as_path().join("shared");
            std::fs::create_dir(&shared).unwrap();
            let socket = dir.as_path().join("vfs.sock");
            let child = Command::new(&bin)
                .arg("--socket-path")
                .arg(&socket)
                .arg("--shared-dir")
                .arg(&shared)
                .args(["--sandbox", "none", "--log-level", "error"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let backend = Self {
                child,
                socket,
                _dir: dir,
            };
            let t0 = Instant::now();
            while super::check_socket(&backend.socket).is_err() {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "virtiofsd made no socket"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            backend
        }
    }

    impl Drop for Backend {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_round_trip() {
        let f = parse_fs("tag=src,socket=/run/a,,b.sock").unwrap();
        assert_eq!(f.tag, "src");
        assert_eq!(f.socket, PathBuf::from("/run/a,b.sock"));
        assert_eq!(f.mount, None);
        assert_eq!(f.cmdline_word(), "kvmini.fs=src:/mnt/src");
        assert_eq!(parse_fs(&f.to_arg()).unwrap(), f);
        let f = parse_fs("tag=a.b-c_1,socket=s,mount=/w/x.y").unwrap();
        assert_eq!(f.cmdline_word(), "kvmini.fs=a.b-c_1:/w/x.y");
        assert_eq!(parse_fs(&f.to_arg()).unwrap(), f);
        assert!(parse_fs(&format!("tag={},socket=s", "t".repeat(TAG_MAX))).is_ok());
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        for (arg, why) in [
            ("socket=/s", "tag=TAG is required"),
            ("tag=t", "socket=PATH is required"),
            ("tag=t,socket=", "empty socket path"),
            ("tag=,socket=/s", "the tag must be"),
            ("tag=a:b,socket=/s", "the tag must be"),
            ("tag=a b,socket=/s", "the tag must be"),
            ("tag=t,socket=/s,mount=rel", "an absolute guest path"),
            ("tag=t,socket=/s,mount=/", "an absolute guest path"),
            ("tag=t,socket=/s,mount=/a/../b", "an absolute guest path"),
            ("tag=t,socket=/s,mount=/a//b", "an absolute guest path"),
            ("tag=t,socket=/s,mount=/a;b", "an absolute guest path"),
            ("tag=t,socket=/s,ro=on", "unknown key 'ro'"),
        ] {
            let e = parse_fs(arg).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("--fs"), "{arg}: {e}");
        }
        let long = format!("tag={},socket=s", "t".repeat(TAG_MAX + 1));
        assert!(parse_fs(&long).is_err());
        let twice = [
            parse_fs("tag=t,socket=/a").unwrap(),
            parse_fs("tag=t,socket=/b").unwrap(),
        ];
        assert!(check_tags(&twice)
            .unwrap_err()
            .to_string()
            .contains("given twice"));
        assert!(check_tags(&twice[..1]).is_ok());
    }

    #[test]
    fn a_missing_socket_is_a_clear_error() {
        let e = check_socket(Path::new("/nonexistent/vfs.sock")).unwrap_err();
        assert!(e.contains("/nonexistent/vfs.sock"), "{e}");
        let e = check_socket(Path::new("/")).unwrap_err();
        assert!(e.contains("not a socket"), "{e}");
        let f = parse_fs("tag=t,socket=/nonexistent/vfs.sock").unwrap();
        let e = Fs::new(&f).err().expect("no backend there").to_string();
        assert!(e.contains("start virtiofsd first"), "{e}");
    }

    /// The backend's call eventfd becomes the transport's VRING interrupt
    /// (status bit and irqfd), and only while the device runs.
    #[test]
    fn backend_signals_raise_the_interrupt_while_active() {
        use event_manager::{EventManager, SubscriberOps};
        let calls = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let slot = Arc::new(Mutex::new(None));
        let handler = FsHandler {
            calls: [calls[0].try_clone().unwrap(), calls[1].try_clone().unwrap()],
            interrupt: slot.clone(),
        };
        let mut events = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
        events.add_subscriber(Box::new(handler));
        let irq = Arc::new(Interrupt::new().unwrap());
        // Not active: the signal is consumed, no interrupt.
        calls[1].write(1).unwrap();
        assert_eq!(events.run_with_timeout(100).unwrap(), 1);
        assert_eq!(irq.status(), 0);
        *slot.lock().unwrap() = Some(irq.clone());
        calls[1].write(1).unwrap();
        assert_eq!(events.run_with_timeout(100).unwrap(), 1);
        assert_eq!(irq.status(), crate::devices::virtio::VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.eventfd().read().unwrap(), 1);
        irq.ack(crate::devices::virtio::VIRTIO_MMIO_INT_VRING);
        calls[0].write(1).unwrap();
        assert_eq!(events.run_with_timeout(100).unwrap(), 1);
        assert_eq!(irq.status(), crate::devices::virtio::VIRTIO_MMIO_INT_VRING);
        // Each signal was read: nothing left to wake the loop.
        assert_eq!(events.run_with_timeout(0).unwrap(), 0);
    }

    /// The whole data path against a real virtiofsd, no KVM needed: the
    /// backend maps the shared guest RAM it was handed, reads a FUSE_INIT
    /// request from the request queue after the kick, writes its answer
    /// into guest memory and signals, which becomes the VRING interrupt.
    /// Then a reset stops the queues.
    #[test]
    fn a_fuse_request_through_a_real_virtiofsd() {
        use crate::devices::virtio::{
            VIRTIO_MMIO_INT_VRING, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
        };
        use crate::vmm::ram::GuestRam;
        use event_manager::{EventManager, SubscriberOps};
        use virtio_queue::desc::{split::Descriptor, RawDescriptor};
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::Bytes;

        let backend = testing::Backend::start();
        let sock = backend.socket.clone();

        let ram = GuestRam::new_shared(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let mem = ram.mem().clone();
        let config = FsConfig {
            tag: "t".into(),
            socket: sock.clone(),
            mount: None,
        };
        let mut fs = Fs::new(&config).unwrap();
        assert_ne!(fs.avail_features() & feature(VIRTIO_F_VERSION_1), 0);
        assert_eq!(
            fs.avail_features() & PROTOCOL_FEATURES,
            0,
            "a vhost-user bit offered to the guest"
        );
        assert_eq!(&fs.config_space()[..2], b"t\0");

        // FUSE_INIT (opcode 26, protocol 7.38): in-header and init_in,
        // then room for the out-header and init_out.
        let (req, reply) = (0x10_0000u64, 0x11_0000u64);
        let mut msg = [0u8; 40 + 64];
        msg[0..4].copy_from_slice(&(40u32 + 64).to_le_bytes());
        msg[4..8].copy_from_slice(&26u32.to_le_bytes());
        msg[8..16].copy_from_slice(&0x5eed_u64.to_le_bytes());
        msg[40..44].copy_from_slice(&7u32.to_le_bytes());
        msg[44..48].copy_from_slice(&38u32.to_le_bytes());
        mem.write_slice(&msg, GuestAddress(req)).unwrap();
        let hiprio = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let requests = MockSplitQueue::create(&mem, GuestAddress(0x2_0000), 16);
        requests
            .add_desc_chains(
                &[
                    RawDescriptor::from(Descriptor::new(
                        req,
                        msg.len() as u32,
                        VRING_DESC_F_NEXT,
                        1,
                    )),
                    RawDescriptor::from(Descriptor::new(reply, 256, VRING_DESC_F_WRITE, 0)),
                ],
                0,
            )
            .unwrap();
        let queues = vec![
            hiprio.create_queue::<Queue>().unwrap(),
            requests.create_queue::<Queue>().unwrap(),
        ];

        let irq = Arc::new(Interrupt::new().unwrap());
        let mut events = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
        events.add_subscriber(Box::new(fs.event_handler().unwrap()));
        fs.activate(
            mem.clone(),
            feature(VIRTIO_F_VERSION_1),
            queues,
            irq.clone(),
        )
        .unwrap();
        fs.queue_events()[1].write(1).unwrap();
        let t0 = std::time::Instant::now();
        while irq.status() & VIRTIO_MMIO_INT_VRING == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no answer from virtiofsd"
            );
            events.run_with_timeout(100).unwrap();
        }
        let used = requests.used_addr().0;
        assert_eq!(mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap(), 1);
        let written = mem.read_obj::<u32>(GuestAddress(used + 8)).unwrap();
        assert!(written >= 16 + 8, "reply of {written} bytes");
        let mut out = [0u8; 24];
        mem.read_slice(&mut out, GuestAddress(reply)).unwrap();
        let field = |at: usize| u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
        assert_eq!(field(0), written, "out-header length");
        assert_eq!(field(4), 0, "FUSE error");
        assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), 0x5eed);
        assert_eq!(field(16), 7, "FUSE major version");
        fs.reset();
        // A second activation after the reset is accepted again.
        assert!(crate::sync::lock(&fs.interrupt).is_none());
    }
}
