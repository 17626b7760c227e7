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
//! by the `vhost` crate; a reply that does not come within
//! [`REPLY_TIMEOUT`] fails the activation (the driver sees
//! DEVICE_NEEDS_RESET), and the device never speaks to that backend again
//! (a vCPU waits at most that long once); a backend that goes away leaves
//! the guest's requests unanswered, never the VMM stopped. The guest is
//! offered only the ring features kvmini knows ([`GUEST_FEATURES`]).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
use crate::devices::virtio::{
    activation, feature, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

/// Device ID of virtio-fs (virtio 1.2, 5).
pub const TYPE_FS: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_FS;
/// The longest tag the config space holds (`struct virtio_fs_config`).
pub const TAG_MAX: usize = 36;
/// Queue 0 is the high-priority queue, queue 1 the one request queue.
const QUEUES: usize = 2;
/// Entries per queue: as deep as the guest's FUSE layer makes use of.
pub const QUEUE_SIZE: u16 = 1024;
/// How long one vhost-user request may wait for the backend's reply. A
/// backend that misses it is not spoken to again (a late reply would be
/// read as the next request's): the device stays broken until the VM ends.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// `VHOST_USER_F_PROTOCOL_FEATURES`: a vhost-user bit in the feature word,
/// never offered to the guest.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// What the guest may be offered of the backend's features: the ring
/// layouts kvmini's transport knows. Anything else (vhost-user's own
/// bits such as VHOST_F_LOG_ALL, which would start virtiofsd's migration
/// walk of the whole share) is never passed on.
const GUEST_FEATURES: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_F_RING_INDIRECT_DESC)
    | feature(VIRTIO_F_RING_EVENT_IDX);
/// The protocol features kvmini uses when the backend has them: replies to
/// every request (so that a refused memory table or ring fails activation
/// there and then) and more than one queue.
const WANTED_PROTOCOL: VhostUserProtocolFeatures =
    VhostUserProtocolFeatures::REPLY_ACK.union(VhostUserProtocolFeatures::MQ);

/// One `--fs`: a virtio-fs device and where its backend comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// What the guest mounts: `mount -t virtiofs TAG DIR`.
    pub tag: String,
    pub backend: FsBackend,
    /// Where kvmini's guests mount it (default `/mnt/TAG`).
    pub mount: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsBackend {
    /// The vhost-user socket of a virtiofsd the user runs.
    Socket(PathBuf),
    /// kvmini runs virtiofsd on this host directory, sandboxed, for the
    /// life of the VM; `readonly`: the guest cannot change anything.
    Dir { path: PathBuf, readonly: bool },
}

impl FsConfig {
    /// Whether kvmini starts a virtiofsd for it (`dir=`).
    pub fn runs_virtiofsd(&self) -> bool {
        matches!(self.backend, FsBackend::Dir { .. })
    }

    /// The flag value that gives this config back.
    pub fn to_arg(&self) -> String {
        let mut s = format!("tag={}", kv_escape(&self.tag));
        match &self.backend {
            FsBackend::Socket(p) => {
                s.push_str(&format!(",socket={}", kv_escape(&p.display().to_string())))
            }
            FsBackend::Dir { path, readonly } => {
                s.push_str(&format!(",dir={}", kv_escape(&path.display().to_string())));
                if *readonly {
                    s.push_str(",ro=on");
                }
            }
        }
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

/// A name (a tag, or one part of a mount point) that travels on the kernel
/// command line and through the guest's shell: plain characters, not `.`
/// or `..`.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && name.chars().all(plain)
}

/// Whether `tag` can name a share: a plain name of at most [`TAG_MAX`]
/// bytes (not `.` or `..`: the default mount point is /mnt/TAG), not
/// starting with `-` (the guest's `mount` would take it for an option).
pub fn valid_tag(tag: &str) -> bool {
    plain_name(tag) && tag.len() <= TAG_MAX && !tag.starts_with('-')
}

/// Whether `dir` can be a share's guest mount point: an absolute path of
/// plain names.
pub fn valid_mount(dir: &str) -> bool {
    dir.starts_with('/') && dir.len() > 1 && dir.split('/').skip(1).all(plain_name)
}

/// Parses `--fs tag=TAG,(socket=PATH | dir=PATH[,ro=on])[,mount=DIR]`.
pub fn parse_fs(s: &str) -> Result<FsConfig, ConfigError> {
    let err = |why: String| ConfigError::Fs(s.to_string(), why);
    let (mut tag, mut socket, mut dir, mut ro, mut mount) = (None, None, None, None, None);
    for (k, v) in parse_kv(s, &["tag", "socket", "dir", "ro", "mount"]).map_err(err)? {
        match k.as_str() {
            "tag" => tag = Some(v),
            "socket" => socket = Some(PathBuf::from(v)),
            "dir" => dir = Some(PathBuf::from(v)),
            "ro" => ro = Some(crate::config::parse_on_off(&k, &v).map_err(err)?),
            _ => mount = Some(v),
        }
    }
    let tag = tag.ok_or_else(|| err("tag=TAG is required (the name the guest mounts)".into()))?;
    if !valid_tag(&tag) {
        return Err(err(format!(
            "the tag must be 1 to {TAG_MAX} letters, digits, '_', '.' or '-', not . or .., \
             not starting with -"
        )));
    }
    let backend = match (socket, dir) {
        (Some(_), Some(_)) => {
            return Err(err(
                "give socket=PATH (a virtiofsd you run) or dir=PATH (kvmini runs one), not both"
                    .into(),
            ))
        }
        (None, None) => {
            return Err(err(
                "dir=PATH (a host directory) or socket=PATH (a running virtiofsd) is required"
                    .into(),
            ))
        }
        (Some(p), None) if ro.is_some() => {
            return Err(err(format!(
                "ro= goes with dir=; for socket={} start virtiofsd with --readonly",
                p.display()
            )))
        }
        (Some(p), None) if p.as_os_str().is_empty() => return Err(err("empty socket path".into())),
        (Some(p), None) => FsBackend::Socket(p),
        (None, Some(p)) if p.as_os_str().is_empty() => {
            return Err(err("empty directory path".into()))
        }
        (None, Some(path)) => FsBackend::Dir {
            path,
            readonly: ro.unwrap_or(false),
        },
    };
    if let Some(m) = mount.as_deref().filter(|m| !valid_mount(m)) {
        return Err(err(format!(
            "mount={m}: an absolute guest path of plain names (letters, digits, '_', '.', '-')"
        )));
    }
    Ok(FsConfig {
        tag,
        backend,
        mount,
    })
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
    Backend(PathBuf, String),
    /// No virtiofsd to start for a `dir=` share.
    NoVirtiofsd(String),
    Start(PathBuf, std::io::Error),
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
            Self::Backend(p, e) => write!(f, "vhost-user backend {}: {e}", p.display()),
            Self::NoVirtiofsd(why) => write!(
                f,
                "--fs dir= needs virtiofsd, and {why}: install it (`cargo install virtiofsd`, \
                 which needs libseccomp-dev and libcap-ng-dev) or name it in {VIRTIOFSD_ENV}"
            ),
            Self::Start(p, e) => write!(f, "cannot start {}: {e}", p.display()),
            Self::Unsupported(p, what) => {
                write!(f, "vhost-user backend at {}: {what}", p.display())
            }
            Self::EventFd(e) => write!(f, "cannot create an eventfd: {e}"),
        }
    }
}

impl std::error::Error for FsError {}

pub struct Fs {
    /// The backend's socket, or the virtiofsd kvmini started: for messages.
    socket: PathBuf,
    /// The virtiofsd kvmini started (`dir=`). Never waited for here (the
    /// device may be dropped on a vCPU thread, whose filter has no wait4):
    /// it exits when our end of its socket closes, or with kvmini.
    _helper: Option<Child>,
    frontend: Frontend,
    /// What the guest is offered: the backend's features within
    /// [`GUEST_FEATURES`].
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
    /// A request to the backend failed: it is not spoken to again.
    broken: bool,
}

impl Fs {
    /// Connects to the backend of `config` (starting virtiofsd first for a
    /// `dir=` share) and learns its features.
    pub fn new(config: &FsConfig) -> Result<Self, FsError> {
        let (path, stream, mut helper) = match &config.backend {
            FsBackend::Socket(path) => {
                let stream =
                    UnixStream::connect(path).map_err(|e| FsError::Connect(path.clone(), e))?;
                (path.clone(), stream, None)
            }
            FsBackend::Dir { path, readonly } => {
                let bin = find_virtiofsd().map_err(FsError::NoVirtiofsd)?;
                let (stream, child) = start_virtiofsd(&bin, path, *readonly)
                    .map_err(|e| FsError::Start(bin.clone(), e))?;
                (bin, stream, Some(child))
            }
        };
        // A backend that fails here is most often a virtiofsd that could
        // not start (its own message is on stderr): say that it exited.
        let backend = |e: vhost::Error, helper: &mut Option<Child>| {
            let exited = helper
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .map(|status| format!(" (virtiofsd exited: {status}; its message is above)"))
                .unwrap_or_default();
            FsError::Backend(path.clone(), format!("{e}{exited}"))
        };
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
            .map_err(|e| FsError::Connect(path.clone(), e))?;
        let mut frontend = Frontend::from_stream(stream, QUEUES as u64);
        let mut setup = || -> Result<(u64, bool), vhost::Error> {
            frontend.set_owner()?;
            let offered = frontend.get_features()?;
            let protocol = offered & PROTOCOL_FEATURES != 0;
            if protocol {
                let theirs = frontend.get_protocol_features()?;
                let ours = theirs & WANTED_PROTOCOL;
                frontend.set_protocol_features(ours)?;
                if ours.contains(VhostUserProtocolFeatures::MQ)
                    && frontend.get_queue_num()? < QUEUES as u64
                {
                    return Err(vhost::Error::VhostUserProtocol(
                        vhost::vhost_user::Error::InvalidParam,
                    ));
                }
                if ours.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                    frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
                }
            }
            Ok((offered, protocol))
        };
        let (offered, protocol) = setup().map_err(|e| backend(e, &mut helper))?;
        if offered & feature(VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::Unsupported(
                path.clone(),
                "it does not offer VIRTIO_F_VERSION_1",
            ));
        }
        let mut cfg = [0u8; TAG_MAX + 4];
        cfg[..config.tag.len()].copy_from_slice(config.tag.as_bytes());
        // num_request_queues: one.
        cfg[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd);
        Ok(Self {
            socket: path,
            frontend,
            _helper: helper,
            features: offered & GUEST_FEATURES,
            protocol,
            config: cfg,
            queue_evts: [evt()?, evt()?],
            call_evts: [evt()?, evt()?],
            interrupt: Arc::new(Mutex::new(None)),
            started: 0,
            broken: false,
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

    /// Queue `i`'s call eventfd, as the backend signals it (tests).
    #[cfg(test)]
    pub fn call_event(&self, i: usize) -> &EventFd {
        &self.call_evts[i]
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
        let (queues, mut slot) = activation::<_, QUEUES>(queues, &self.interrupt)?;
        if self.broken {
            return Err(ActivateError::Backend(format!(
                "vhost-user backend {} failed earlier",
                self.socket.display()
            )));
        }
        *slot = Some(interrupt);
        drop(slot);
        self.start(&mem, acked_features, &queues).map_err(|e| {
            self.broken = true;
            self.reset();
            ActivateError::Backend(format!("vhost-user backend {}: {e}", self.socket.display()))
        })
    }

    fn reset(&mut self) {
        crate::sync::lock(&self.interrupt).take();
        let started = std::mem::take(&mut self.started);
        if self.broken {
            return;
        }
        for i in 0..started {
            // GET_VRING_BASE stops the ring in the backend.
            if let Err(e) = self.frontend.get_vring_base(i) {
                self.broken = true;
                log::warn!(
                    "virtio-fs: the backend at {} did not stop queue {i}: {e}",
                    self.socket.display()
                );
                return;
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

/// Names the virtiofsd binary to start for `dir=` shares.
pub const VIRTIOFSD_ENV: &str = "KVMINI_VIRTIOFSD";

/// A virtiofsd the caller provided ([`set_virtiofsd`]).
static PROVIDED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Uses `path` as virtiofsd from now on (the kvmini binary builds one on
/// first use when the host has none).
pub fn set_virtiofsd(path: PathBuf) {
    let _ = PROVIDED.set(path);
}

/// The virtiofsd for `dir=` shares: the one provided, else
/// `$KVMINI_VIRTIOFSD`, `virtiofsd` on PATH or /usr/libexec/virtiofsd
/// (where Debian 13 and Fedora install it).
pub fn find_virtiofsd() -> Result<PathBuf, String> {
    if let Some(p) = PROVIDED.get() {
        return Ok(p.clone());
    }
    crate::devices::child::find_program(VIRTIOFSD_ENV, "virtiofsd", &["/usr/libexec/virtiofsd"])
}

/// Starts `bin` serving `dir` in its namespace sandbox (virtiofsd's
/// default and recommended one: the directory is its whole view of the
/// host) and returns kvmini's end of its socket. The listening socket is
/// made here and handed over as descriptor 3: kvmini connects before
/// virtiofsd runs and removes the socket's name at once, so no other
/// process can reach the backend, and there is no start-up race.
fn start_virtiofsd(bin: &Path, dir: &Path, readonly: bool) -> std::io::Result<(UnixStream, Child)> {
    use std::os::unix::net::UnixListener;
    let tmp = vmm_sys_util::tempdir::TempDir::new_with_prefix(
        std::env::temp_dir().join("kvmini-virtiofsd."),
    )
    .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let name = tmp.as_path().join("socket");
    let listener = UnixListener::bind(&name)?;
    let stream = UnixStream::connect(&name)?;
    drop(tmp);
    let mut cmd = Command::new(bin);
    cmd.args([
        "--fd",
        "3",
        "--sandbox",
        "namespace",
        "--log-level",
        "error",
    ])
    .arg("--shared-dir")
    .arg(dir);
    if readonly {
        cmd.arg("--readonly");
    }
    cmd.args(root_confinement(dir)?);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let child = crate::devices::child::spawn_with_fd3(&mut cmd, &listener)?;
    log::debug!(
        "virtiofsd started (pid {}) on {}{}",
        child.id(),
        dir.display(),
        if readonly { ", read-only" } else { "" }
    );
    Ok((stream, child))
}

/// virtiofsd's extra arguments when kvmini runs as root (else none: it
/// then runs as the user, who owns what the guest makes). As root it would
/// keep CHOWN, MKNOD, SETFCAP and FSETID, and a guest's root could leave
/// set-uid-root programs, device nodes or file capabilities in the share:
/// more than a process with write access to the directory could. So every
/// guest user and group becomes the directory's owner and group on the
/// host (whatever the guest makes belongs to them, as if they had made
/// it), and device nodes and file capabilities are refused.
fn root_confinement(dir: &Path) -> std::io::Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(Vec::new());
    }
    let owner = std::fs::metadata(dir)?;
    Ok(vec![
        "--modcaps=-mknod:-setfcap".into(),
        format!("--translate-uid=squash-guest:0:{}:4294967295", owner.uid()),
        format!("--translate-gid=squash-guest:0:{}:4294967295", owner.gid()),
    ])
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
        /// The directory it serves.
        pub fn shared(&self) -> PathBuf {
            self._dir.as_path().join("shared")
        }

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
        assert_eq!(f.backend, FsBackend::Socket(PathBuf::from("/run/a,b.sock")));
        assert_eq!(f.mount, None);
        assert_eq!(f.cmdline_word(), "kvmini.fs=src:/mnt/src");
        assert_eq!(parse_fs(&f.to_arg()).unwrap(), f);
        let f = parse_fs("tag=a.b-c_1,socket=s,mount=/w/x.y").unwrap();
        assert_eq!(f.cmdline_word(), "kvmini.fs=a.b-c_1:/w/x.y");
        assert_eq!(parse_fs(&f.to_arg()).unwrap(), f);
        assert!(parse_fs(&format!("tag={},socket=s", "t".repeat(TAG_MAX))).is_ok());
        let f = parse_fs("tag=w,dir=/src/a,,b,ro=on,mount=/w").unwrap();
        assert_eq!(
            f.backend,
            FsBackend::Dir {
                path: "/src/a,b".into(),
                readonly: true
            }
        );
        assert_eq!(parse_fs(&f.to_arg()).unwrap(), f);
        let f = parse_fs("tag=w,dir=.").unwrap();
        assert_eq!(f.to_arg(), "tag=w,dir=.");
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        for (arg, why) in [
            ("socket=/s", "tag=TAG is required"),
            ("tag=t", "dir=PATH (a host directory) or socket=PATH"),
            ("tag=t,socket=/s,dir=/d", "not both"),
            ("tag=t,socket=/s,ro=on", "start virtiofsd with --readonly"),
            ("tag=t,dir=/d,ro=maybe", "ro=maybe: use on or off"),
            ("tag=t,dir=", "empty directory path"),
            ("tag=t,socket=", "empty socket path"),
            ("tag=,socket=/s", "the tag must be"),
            ("tag=a:b,socket=/s", "the tag must be"),
            ("tag=a b,socket=/s", "the tag must be"),
            ("tag=..,socket=/s", "the tag must be"),
            ("tag=-oremount,socket=/s", "the tag must be"),
            ("tag=t,socket=/s,mount=rel", "an absolute guest path"),
            ("tag=t,socket=/s,mount=/", "an absolute guest path"),
            ("tag=t,socket=/s,mount=/a/../b", "an absolute guest path"),
            ("tag=t,socket=/s,mount=/a//b", "an absolute guest path"),
            ("tag=t,socket=/s,mount=/a;b", "an absolute guest path"),
            ("tag=t,socket=/s,rw=on", "unknown key 'rw'"),
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
        let e = crate::config::check_fs_available(&[f])
            .unwrap_err()
            .to_string();
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

    /// A `dir=` share of `path`, tagged `tag`.
    fn dir_share(tag: &str, path: &Path, readonly: bool) -> FsConfig {
        FsConfig {
            tag: tag.into(),
            backend: FsBackend::Dir {
                path: path.to_path_buf(),
                readonly,
            },
            mount: None,
        }
    }

    /// A guest's FUSE client in miniature: requests go on the request
    /// queue of an activated [`Fs`], one chain each, and the answer is
    /// waited for through the interrupt, as a driver would.
    struct Client {
        mem: GuestMemoryMmap,
        _ram: crate::vmm::ram::GuestRam,
        fs: Fs,
        requests: virtio_queue::mock::MockSplitQueue<'static, GuestMemoryMmap>,
        events: event_manager::EventManager<Box<dyn MutEventSubscriber + Send>>,
        irq: Arc<Interrupt>,
        sent: u16,
    }

    /// Request and reply buffers, and the queues, in guest memory.
    const REQ: u64 = 0x10_0000;
    const REPLY: u64 = 0x11_0000;

    impl Client {
        /// `config`'s device, activated on fresh shared RAM, after FUSE_INIT.
        fn start(config: &FsConfig) -> Self {
            use event_manager::SubscriberOps;
            use virtio_queue::mock::MockSplitQueue;
            let ram =
                crate::vmm::ram::GuestRam::new_shared(&[(GuestAddress(0), 16 << 20)]).unwrap();
            let mem = ram.mem().clone();
            // The mock queue borrows the memory for as long as it lives;
            // the test keeps both to its end (a leaked clone of the
            // handle, not of the memory).
            let leaked: &'static GuestMemoryMmap = Box::leak(Box::new(mem.clone()));
            let mut fs = Fs::new(config).unwrap();
            let hiprio = MockSplitQueue::create(leaked, GuestAddress(0x1_0000), 16);
            let requests = MockSplitQueue::create(leaked, GuestAddress(0x2_0000), 16);
            let queues = vec![
                hiprio.create_queue::<Queue>().unwrap(),
                requests.create_queue::<Queue>().unwrap(),
            ];
            let irq = Arc::new(Interrupt::new().unwrap());
            let mut events = event_manager::EventManager::new().unwrap();
            events.add_subscriber(
                Box::new(fs.event_handler().unwrap()) as Box<dyn MutEventSubscriber + Send>
            );
            fs.activate(
                mem.clone(),
                feature(VIRTIO_F_VERSION_1),
                queues,
                irq.clone(),
            )
            .unwrap();
            let mut c = Self {
                mem,
                _ram: ram,
                fs,
                requests,
                events,
                irq,
                sent: 0,
            };
            // FUSE_INIT, protocol 7.38: init_in is major, minor, then zeros.
            let mut init = [0u8; 64];
            init[0..4].copy_from_slice(&7u32.to_le_bytes());
            init[4..8].copy_from_slice(&38u32.to_le_bytes());
            let (err, out) = c.call(26, 0, &init);
            assert_eq!(err, 0, "FUSE_INIT refused");
            assert_eq!(u32::from_le_bytes(out[0..4].try_into().unwrap()), 7);
            c
        }

        /// Sends FUSE request `opcode` on inode `node` with `body`; returns
        /// the reply's error (0 or -errno) and its body.
        fn call(&mut self, opcode: u32, node: u64, body: &[u8]) -> (i32, Vec<u8>) {
            use crate::devices::virtio::{
                VIRTIO_MMIO_INT_VRING, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
            };
            use virtio_queue::desc::{split::Descriptor, RawDescriptor};
            use vm_memory::Bytes;
            let unique = 0x100 + u64::from(self.sent);
            let mut msg = vec![0u8; 40];
            msg[0..4].copy_from_slice(&(40 + body.len() as u32).to_le_bytes());
            msg[4..8].copy_from_slice(&opcode.to_le_bytes());
            msg[8..16].copy_from_slice(&unique.to_le_bytes());
            msg[16..24].copy_from_slice(&node.to_le_bytes());
            msg.extend_from_slice(body);
            self.mem.write_slice(&msg, GuestAddress(REQ)).unwrap();
            let first = 2 * (self.sent % 8);
            self.requests
                .add_desc_chains(
                    &[
                        RawDescriptor::from(Descriptor::new(
                            REQ,
                            msg.len() as u32,
                            VRING_DESC_F_NEXT,
                            first + 1,
                        )),
                        RawDescriptor::from(Descriptor::new(REPLY, 4096, VRING_DESC_F_WRITE, 0)),
                    ],
                    first,
                )
                .unwrap();
            self.sent += 1;
            self.fs.queue_events()[1].write(1).unwrap();
            let used = self.requests.used_addr().0;
            let t0 = std::time::Instant::now();
            while self.mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap() != self.sent {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "no answer from virtiofsd"
                );
                self.events.run_with_timeout(100).unwrap();
            }
            // The answer came with the interrupt.
            while self.irq.status() & VIRTIO_MMIO_INT_VRING == 0 {
                assert!(t0.elapsed() < Duration::from_secs(10), "no interrupt");
                self.events.run_with_timeout(100).unwrap();
            }
            self.irq.ack(VIRTIO_MMIO_INT_VRING);
            let slot = u64::from((self.sent - 1) % 16);
            let written = self
                .mem
                .read_obj::<u32>(GuestAddress(used + 4 + 8 * slot + 4))
                .unwrap() as usize;
            let mut out = vec![0u8; written];
            self.mem.read_slice(&mut out, GuestAddress(REPLY)).unwrap();
            assert!(written >= 16, "reply of {written} bytes");
            assert_eq!(
                u32::from_le_bytes(out[0..4].try_into().unwrap()) as usize,
                written
            );
            assert_eq!(u64::from_le_bytes(out[8..16].try_into().unwrap()), unique);
            let err = i32::from_le_bytes(out[4..8].try_into().unwrap());
            (err, out[16..].to_vec())
        }

        /// FUSE_LOOKUP of `name` in directory `node`: the error, and the
        /// entry's (inode number on the host, mode) when found.
        fn lookup(&mut self, node: u64, name: &str) -> (i32, Option<(u64, u32)>) {
            let mut body = name.as_bytes().to_vec();
            body.push(0);
            let (err, out) = self.call(1, node, &body);
            let field = |at: usize, n: usize| {
                out.get(at..at + n).map(|b| {
                    let mut v = [0u8; 8];
                    v[..n].copy_from_slice(b);
                    u64::from_le_bytes(v)
                })
            };
            // fuse_entry_out: nodeid, generation, 2 valid times (u64), 2
            // nsec (u32), then fuse_attr: ino, size, blocks, 3 times (u64),
            // 3 nsec (u32), mode.
            let entry = (err == 0)
                .then(|| Some((field(40, 8)?, field(100, 4)? as u32)))
                .flatten();
            (err, entry)
        }

        /// FUSE_MKNOD of character device 1:3 (/dev/null's numbers), mode
        /// 0666, named `name` in the root: the reply's error.
        fn mknod(&mut self, name: &str) -> i32 {
            let mut body = Vec::new();
            body.extend_from_slice(&(libc::S_IFCHR | 0o666).to_le_bytes());
            body.extend_from_slice(&((1u32 << 8) | 3).to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            self.call(8, 1, &body).0
        }

        /// FUSE_MKDIR of `name` in the root: the reply's error.
        fn mkdir(&mut self, name: &str) -> i32 {
            let mut body = Vec::new();
            body.extend_from_slice(&0o755u32.to_le_bytes());
            body.extend_from_slice(&0u32.to_le_bytes());
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            self.call(9, 1, &body).0
        }
    }

    /// The whole data path against a real virtiofsd the "user" started, no
    /// KVM needed: the backend maps the shared guest RAM it was handed,
    /// reads requests from the request queue after each kick, writes its
    /// answers into guest memory and signals, which becomes the VRING
    /// interrupt. Then a reset stops the queues.
    #[test]
    fn fuse_requests_through_a_virtiofsd_on_a_socket() {
        let backend = testing::Backend::start();
        let config = FsConfig {
            tag: "t".into(),
            backend: FsBackend::Socket(backend.socket.clone()),
            mount: None,
        };
        let mut c = Client::start(&config);
        assert_ne!(c.fs.avail_features() & feature(VIRTIO_F_VERSION_1), 0);
        assert_eq!(
            c.fs.avail_features() & !GUEST_FEATURES,
            0,
            "a feature outside the allow-list offered to the guest"
        );
        assert_eq!(&c.fs.config_space()[..2], b"t\0");
        assert_eq!(c.mkdir("made"), 0);
        assert!(backend.shared().join("made").is_dir());
        c.fs.reset();
        assert!(crate::sync::lock(&c.fs.interrupt).is_none());
    }

    /// A hostile guest kernel speaks FUSE itself: it still cannot name a
    /// host file outside the share. `..` of the share's root is the root,
    /// a name with a `/` is refused, and a symlink (even one the host put
    /// there, pointing out) is an entry of its own, never followed by the
    /// backend: the guest resolves its target in its own file system.
    #[test]
    fn a_guest_cannot_name_host_files_outside_the_share() {
        use std::os::unix::fs::MetadataExt;
        let backend = testing::Backend::start();
        let shared = backend.shared();
        let outside = shared.parent().unwrap().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "host only").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), shared.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", shared.join("up")).unwrap();
        let root_ino = std::fs::metadata(&shared).unwrap().ino();
        let secret_ino = std::fs::metadata(outside.join("secret")).unwrap().ino();
        let outside_ino = std::fs::metadata(&outside).unwrap().ino();
        let mut c = Client::start(&FsConfig {
            tag: "t".into(),
            backend: FsBackend::Socket(backend.socket.clone()),
            mount: None,
        });
        match c.lookup(1, "..") {
            (0, Some((ino, _))) => assert_eq!(ino, root_ino, "'..' of the root left the share"),
            (0, None) => panic!("no entry in a successful reply"),
            (err, _) => assert!(err < 0),
        }
        for name in ["../outside", "../outside/secret", "up/secret", "/etc"] {
            let (err, entry) = c.lookup(1, name);
            assert!(err < 0, "lookup of {name:?} gave {entry:?}");
        }
        for link in ["abs", "up"] {
            let (err, entry) = c.lookup(1, link);
            let (ino, mode) = entry.unwrap_or_else(|| panic!("{link}: error {err}"));
            assert_eq!(mode & libc::S_IFMT, libc::S_IFLNK, "{link} was followed");
            assert!(ino != secret_ino && ino != outside_ino);
        }
        // Nothing changed outside.
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "host only"
        );
    }

    /// kvmini as root: what the guest's root makes in a `dir=` share
    /// belongs to the directory's owner, and device nodes are refused (a
    /// guest must not leave root-owned or device files in a user's tree).
    #[test]
    fn as_root_guest_files_belong_to_the_directorys_owner() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "NOT RUN: needs root (kvmini confines virtiofsd only as root)"
        );
        set_virtiofsd(testing::virtiofsd());
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/kvmini-fs-own").unwrap();
        std::os::unix::fs::chown(dir.as_path(), Some(4242), Some(4343)).unwrap();
        let mut c = Client::start(&dir_share("w", dir.as_path(), false));
        // The client's requests come from uid 0, gid 0.
        assert_eq!(c.mkdir("made"), 0);
        let made = std::fs::metadata(dir.as_path().join("made")).unwrap();
        assert_eq!((made.uid(), made.gid()), (4242, 4343));
        let err = c.mknod("null");
        assert!(err < 0, "a device node was made");
        assert!(!dir.as_path().join("null").exists());
    }

    /// `dir=`: kvmini starts virtiofsd itself, on the directory, in its
    /// namespace sandbox; `ro=on` makes it refuse every change.
    #[test]
    fn dir_shares_start_their_own_virtiofsd() {
        set_virtiofsd(testing::virtiofsd());
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/kvmini-fs-dir").unwrap();
        let mut c = Client::start(&dir_share("w", dir.as_path(), false));
        assert_eq!(c.mkdir("made"), 0);
        assert!(dir.as_path().join("made").is_dir());
        let mut ro = Client::start(&dir_share("r", dir.as_path(), true));
        assert_eq!(ro.mkdir("refused"), -libc::EROFS);
        assert!(!dir.as_path().join("refused").exists());
        // The helper ends with its socket: gone once the device is.
        let pid = c.fs._helper.as_ref().unwrap().id();
        drop(c);
        let t0 = std::time::Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}/exe")).exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "virtiofsd {pid} stayed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
