//! The virtio-net device: features and config space for the transport, and
//! the worker that moves frames between the guest's receive/transmit queues
//! and the backend, driven by [`NetHandler`] on the event loop. The backend
//! is a TAP or a passt process ([`NetBackend`]); "the TAP" below is either.
//!
//! Nothing busy-waits. Receive: frames are read from the TAP only while the
//! guest has buffers; when it has none the frame in hand is kept, the TAP
//! is no longer polled for input, and the guest's next receive-queue kick
//! resumes. Transmit: when the TAP would block, the frame in hand is kept,
//! the transmit queue is left alone, and the TAP's writability resumes.

use std::fmt;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::frame::{self, ChainError, ETH_HLEN, MAX_BUFFER_LEN, VNET_HDR_LEN};
use super::mac::MacAddr;
use super::passt::{self, Passt, PortForward};
use super::tap::{self, FrameIo, Tap};
use crate::devices::bus::lock;
use crate::devices::rate_limiter::{self, RateLimit, RateLimiter};
use crate::devices::virtio::queue::{self, Step};
use crate::devices::virtio::{
    activation, feature, ActivateError, Interrupt, VirtioDevice, TYPE_NET, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

// Feature bits (virtio 1.2, 5.1.3).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
pub const VIRTIO_NET_F_MAC: u32 = 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
pub const VIRTIO_NET_F_GUEST_ECN: u32 = 9;
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
pub const VIRTIO_NET_F_HOST_ECN: u32 = 13;
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
pub const VIRTIO_NET_F_STATUS: u32 = 16;

/// `status` in config space: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;
/// Frames read from the TAP per event, so a flood cannot starve the rest of
/// the event loop (the TAP stays readable and is polled again).
pub const RX_BATCH: usize = 64;

/// `mac[6]` and `status` of `struct virtio_net_config`.
pub const CONFIG_LEN: usize = 8;

/// Where a NIC's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// `tap=NAME`: a host TAP interface (opened, or created if kvmini may).
    Tap(String),
    /// `user`: a passt process kvmini starts, forwarding these host ports.
    User(Vec<PortForward>),
}

/// A NIC as configured by the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub backend: NetBackend,
    pub mac: MacAddr,
    /// `bw=`: bytes per second, in each direction.
    pub bw: Option<u64>,
}

#[derive(Debug)]
pub enum Error {
    Tap(tap::Error),
    Passt(passt::Error),
    EventFd(io::Error),
    RateLimiter(rate_limiter::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tap(e) => write!(f, "--net: {e}"),
            Self::Passt(e) => write!(f, "--net user: {e}"),
            Self::EventFd(e) => write!(f, "cannot create the network queue eventfds: {e}"),
            Self::RateLimiter(e) => write!(f, "--net: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Tap(e) => Some(e),
            Self::Passt(e) => Some(e),
            Self::EventFd(e) => Some(e),
            Self::RateLimiter(e) => Some(e),
        }
    }
}

/// What the device has done; frames it refused, and why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from the TAP the guest never got: too large for the buffers
    /// it offers, shorter than an Ethernet header, or their buffers were bad.
    pub rx_dropped: u64,
    /// Receive chains returned unused: wrong direction, outside guest
    /// memory, looping, or too small for the header.
    pub rx_bad_chains: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Transmit chains dropped: wrong direction, outside guest memory,
    /// looping, too short, or a header asking for offloads not negotiated.
    pub tx_bad_chains: u64,
    /// Transmit chains longer than the largest frame.
    pub tx_too_large: u64,
    /// Frames the TAP refused, and failed TAP reads.
    pub tap_errors: u64,
}

pub struct Net {
    name: String,
    io: Arc<dyn FrameIo>,
    features: u64,
    config: [u8; CONFIG_LEN],
    queue_evts: [EventFd; 2],
    /// The data path while the device is active; shared with the
    /// [`NetHandler`] (event loop) and locked by the transport only on
    /// activate and reset.
    worker: Arc<Mutex<Option<Worker>>>,
    /// Bytes per second in each direction (`bw=`).
    bw: Option<u64>,
    /// The transmit queue's eventfd again, for the worker to re-arm it:
    /// made here, because activation runs on a vCPU thread, whose seccomp
    /// filter does not allow duplicating descriptors.
    tx_kick: Arc<EventFd>,
}

impl Net {
    /// Opens (or creates) the TAP named in `config`, or starts its passt.
    pub fn new(config: &NetConfig) -> Result<Self, Error> {
        let (name, io): (String, Arc<dyn FrameIo>) = match &config.backend {
            NetBackend::Tap(name) => (name.clone(), Arc::new(Tap::open(name).map_err(Error::Tap)?)),
            NetBackend::User(forwards) => {
                let bin = passt::preflight(forwards).map_err(Error::Passt)?;
                let p = Passt::start(&bin, forwards).map_err(Error::Passt)?;
                (
                    format!("user (passt pid {})", p.pid().unwrap_or(0)),
                    Arc::new(p),
                )
            }
        };
        let mut net = Self::with_backend(name, config.mac, io)?;
        net.bw = config.bw;
        Ok(net)
    }

    /// Limits each direction to `bw` bytes per second (`None`: no limit);
    /// before [`Self::event_handler`].
    pub fn set_bandwidth(&mut self, bw: Option<u64>) {
        self.bw = bw;
    }

    /// A device over any frame backend (the tests use a socketpair).
    /// Offloads are offered only if the backend passes the virtio-net
    /// header through ([`FrameIo::vnet_hdr`]).
    pub fn with_backend(name: String, mac: MacAddr, io: Arc<dyn FrameIo>) -> Result<Self, Error> {
        let base = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_F_RING_EVENT_IDX)
            | feature(VIRTIO_F_RING_INDIRECT_DESC)
            | feature(VIRTIO_NET_F_MAC)
            | feature(VIRTIO_NET_F_STATUS)
            | feature(VIRTIO_NET_F_MRG_RXBUF);
        let offloads = feature(VIRTIO_NET_F_CSUM)
            | feature(VIRTIO_NET_F_GUEST_CSUM)
            | feature(VIRTIO_NET_F_GUEST_TSO4)
            | feature(VIRTIO_NET_F_GUEST_TSO6)
            | feature(VIRTIO_NET_F_GUEST_ECN)
            | feature(VIRTIO_NET_F_HOST_TSO4)
            | feature(VIRTIO_NET_F_HOST_TSO6)
            | feature(VIRTIO_NET_F_HOST_ECN);
        let features = if io.vnet_hdr() {
            base | offloads
        } else if io.checksums_valid() {
            base | feature(VIRTIO_NET_F_GUEST_CSUM)
        } else {
            base
        };
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac.octets());
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd);
        let tx = evt()?;
        let tx_kick = Arc::new(tx.try_clone().map_err(Error::EventFd)?);
        Ok(Self {
            name,
            io,
            features,
            config,
            queue_evts: [evt()?, tx],
            worker: Arc::new(Mutex::new(None)),
            bw: None,
            tx_kick,
        })
    }

    /// The event-loop subscriber that runs both queues and the TAP; add it
    /// to the event manager once, before the guest runs.
    pub fn event_handler(&self) -> Result<NetHandler, Error> {
        let limiter = || {
            self.bw
                .map(|bw| {
                    RateLimiter::new(RateLimit {
                        ops: None,
                        bytes: Some(bw),
                    })
                })
                .transpose()
                .map_err(Error::RateLimiter)
        };
        Ok(NetHandler {
            rx_evt: self.queue_evts[RX_QUEUE]
                .try_clone()
                .map_err(Error::EventFd)?,
            tx_evt: self.queue_evts[TX_QUEUE]
                .try_clone()
                .map_err(Error::EventFd)?,
            io: self.io.clone(),
            name: self.name.clone(),
            worker: self.worker.clone(),
            interest: None,
            rx_limiter: limiter()?,
            tx_limiter: limiter()?,
        })
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
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
        let ([rx, tx], mut worker) = activation::<_, 2>(queues, &self.worker)?;
        let rx_next_used = rx.next_used();
        // The transport refuses unoffered features; be safe without it too.
        let acked = acked_features & self.features;
        let offload = frame::tap_offload_flags(acked);
        self.io.set_offload(offload).map_err(|e| {
            ActivateError::Backend(format!(
                "TAP '{}': cannot set offloads {offload:#x}: {e}",
                self.name
            ))
        })?;
        *worker = Some(Worker {
            name: self.name.clone(),
            mem,
            rx,
            tx,
            tx_kick: self.tx_kick.clone(),
            io: self.io.clone(),
            interrupt,
            acked,
            mergeable: acked & feature(VIRTIO_NET_F_MRG_RXBUF) != 0,
            rx_buf: vec![0; MAX_BUFFER_LEN],
            rx_pending: None,
            rx_signalled: rx_next_used,
            tx_buf: vec![0; MAX_BUFFER_LEN],
            tx_pending: None,
            stats: NetStats::default(),
            broken: false,
        });
        drop(worker);
        // Start the TAP polling, and send what the driver queued before
        // DRIVER_OK.
        for evt in &self.queue_evts {
            evt.write(1).map_err(ActivateError::Io)?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        lock(&self.worker).take();
        // Until a driver negotiates again, no offloaded frames.
        if let Err(e) = self.io.set_offload(0) {
            log::debug!("virtio-net {}: cannot clear offloads: {e}", self.name);
        }
    }
}

/// What became of one frame from the TAP.
enum Delivery {
    Delivered,
    /// Dropped without touching the queue.
    Dropped,
    /// Dropped, and the buffers taken for it returned empty.
    Returned,
    /// The guest has not enough buffers yet: keep the frame.
    NoBuffers,
}

/// The active data path.
pub struct Worker {
    name: String,
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    /// The transmit queue's eventfd, re-armed when a batch leaves more.
    tx_kick: Arc<EventFd>,
    io: Arc<dyn FrameIo>,
    interrupt: Arc<Interrupt>,
    acked: u64,
    mergeable: bool,
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` waiting for guest buffers.
    rx_pending: Option<usize>,
    /// The receive queue's used index when we last decided about an
    /// interrupt (receive entries go in through `queue::add_used_batch`,
    /// which virtio-queue's own interrupt accounting does not see).
    rx_signalled: u16,
    tx_buf: Vec<u8>,
    /// Length of the frame in `tx_buf` waiting for the TAP to take it.
    tx_pending: Option<usize>,
    stats: NetStats,
    /// A queue is corrupt; nothing more is done until a reset.
    broken: bool,
}

impl Worker {
    /// What the TAP should be polled for now.
    pub fn tap_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.broken {
            return set;
        }
        if self.rx_pending.is_none() {
            set |= EventSet::IN;
        }
        if self.tx_pending.is_some() || self.io.backlog() {
            set |= EventSet::OUT;
        }
        set
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Moves frames from the TAP into the guest's receive buffers: the one
    /// kept from last time first, then up to [`RX_BATCH`] more, each
    /// admitted by `limiter` if there is one (a refused frame is kept, and
    /// the limiter's timer resumes).
    pub fn process_rx(&mut self, mut limiter: Option<&mut RateLimiter>) {
        if self.broken {
            return;
        }
        for _ in 0..RX_BATCH {
            let len = match self.rx_pending.take() {
                Some(len) => len,
                None => match self.io.recv(&mut self.rx_buf) {
                    Ok(n) if n < VNET_HDR_LEN + ETH_HLEN => {
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    // TUN returns a frame's whole length even when only the
                    // start of it fitted the buffer: that frame is cut short.
                    Ok(n) if n > self.rx_buf.len() => {
                        log::debug!(
                            "virtio-net {}: dropped a {n}-byte frame larger than {}",
                            self.name,
                            self.rx_buf.len()
                        );
                        self.stats.rx_dropped += 1;
                        continue;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.stats.tap_errors += 1;
                        log::debug!("virtio-net {}: TAP read failed: {e}", self.name);
                        break;
                    }
                },
            };
            if let Some(l) = limiter.as_deref_mut() {
                if !l.consume((len - VNET_HDR_LEN) as u64) {
                    self.rx_pending = Some(len);
                    break;
                }
            }
            match self.deliver(len) {
                Ok(Delivery::Delivered | Delivery::Returned | Delivery::Dropped) => {}
                Ok(Delivery::NoBuffers) => {
                    self.rx_pending = Some(len);
                    break;
                }
                Err(e) => return self.fail("receive", e),
            }
        }
        match queue::needs_interrupt_since(&self.rx, &self.mem, self.rx_signalled) {
            Ok(true) => self.signal(),
            Ok(false) => {}
            Err(e) => self.fail("receive", e),
        }
        self.rx_signalled = self.rx.next_used();
    }

    /// Puts the frame in `rx_buf[..len]` into as many receive buffers as it
    /// needs (one without MRG_RXBUF).
    fn deliver(&mut self, len: usize) -> Result<Delivery, virtio_queue::Error> {
        let mut bufs: Vec<frame::RxBuffer> = Vec::new();
        let mut capacity = 0u64;
        let mut exhausted = false;
        while capacity < len as u64 && (self.mergeable || bufs.is_empty()) {
            let Some(chain) = self.rx.iter(&self.mem)?.next() else {
                // Out of buffers: ask the driver for a kick when it adds
                // some, unless it did so meanwhile. Done while the popped
                // chains are still counted, so that with EVENT_IDX the kick
                // comes for a buffer we have not seen.
                if self.rx.enable_notification(&self.mem)? {
                    continue;
                }
                exhausted = true;
                break;
            };
            let head = chain.head_index();
            match frame::rx_buffer(chain) {
                Ok(b) if self.mergeable && b.capacity < VNET_HDR_LEN as u64 => {
                    return self.drop_with_bad_chain(&bufs, head, ChainError::TooShort(b.capacity));
                }
                Ok(b) => {
                    capacity += b.capacity;
                    bufs.push(b);
                }
                Err(e) => return self.drop_with_bad_chain(&bufs, head, e),
            }
        }
        if capacity < len as u64 {
            for _ in 0..bufs.len() {
                self.rx.go_to_previous_position();
            }
            // A whole ring of buffers too small for the frame will not grow:
            // drop it rather than wait forever.
            if exhausted && bufs.len() < usize::from(self.rx.size()) {
                return Ok(Delivery::NoBuffers);
            }
            log::debug!(
                "virtio-net {}: {len}-byte frame does not fit the guest's buffers ({capacity} bytes)",
                self.name
            );
            self.stats.rx_dropped += 1;
            return Ok(Delivery::Dropped);
        }
        self.rx.disable_notification(&self.mem)?;
        let count = if self.mergeable { bufs.len() } else { 1 };
        // At most the queue size (256) buffers.
        frame::set_num_buffers(&mut self.rx_buf, count as u16);
        let mut at = 0;
        let mut used = Vec::with_capacity(bufs.len());
        for b in &bufs {
            let n = match frame::write_rx_buffer(&self.mem, b, &self.rx_buf[at..len]) {
                Ok(n) => n,
                Err(e) => {
                    // Checked in rx_buffer(); only a shrinking guest gets here.
                    log::debug!("virtio-net {}: receive buffer: {e}", self.name);
                    0
                }
            };
            at += n;
            // n <= the chain's length, which fits a u32.
            used.push((b.head, n as u32));
        }
        // The whole frame at once: the driver must never see only its
        // first buffers (see queue::add_used_batch).
        queue::add_used_batch(&mut self.rx, &self.mem, &used)?;
        self.stats.rx_frames += 1;
        self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
        Ok(Delivery::Delivered)
    }

    /// A receive chain was bad: it and the buffers already taken for the
    /// frame go back to the driver empty (in order), and the frame is lost.
    fn drop_with_bad_chain(
        &mut self,
        taken: &[frame::RxBuffer],
        bad_head: u16,
        e: ChainError,
    ) -> Result<Delivery, virtio_queue::Error> {
        log::debug!("virtio-net {}: bad receive chain: {e}", self.name);
        self.stats.rx_bad_chains += 1;
        self.stats.rx_dropped += 1;
        let empty: Vec<(u16, u32)> = taken
            .iter()
            .map(|b| (b.head, 0))
            .chain(std::iter::once((bad_head, 0)))
            .collect();
        queue::add_used_batch(&mut self.rx, &self.mem, &empty)?;
        Ok(Delivery::Returned)
    }

    /// Sends a batch of the guest's frames to the TAP, until the queue is
    /// empty, the TAP would block, or `limiter` (if any) refuses one (its
    /// timer then resumes).
    pub fn process_tx(&mut self, mut limiter: Option<&mut RateLimiter>) {
        if self.broken {
            return;
        }
        // The rest of a frame a stream backend took only part of goes first.
        match self.io.flush() {
            Err(e) if would_block(&e) => return,
            Err(e) => {
                self.stats.tap_errors += 1;
                log::debug!("virtio-net {}: backend failed to send: {e}", self.name);
            }
            Ok(()) => {}
        }
        if let Some(len) = self.tx_pending {
            match self.io.send(&self.tx_buf[..len]) {
                Err(e) if would_block(&e) => return,
                Ok(_) => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += (len - VNET_HDR_LEN) as u64;
                }
                Err(e) => {
                    self.stats.tap_errors += 1;
                    log::debug!("virtio-net {}: TAP refused a frame: {e}", self.name);
                }
            }
            self.tx_pending = None;
        }
        let Self {
            name,
            mem,
            tx,
            tx_kick,
            io,
            acked,
            tx_buf,
            tx_pending,
            stats,
            ..
        } = self;
        let result = queue::drain(tx, mem, tx_kick, |chain| {
            let len = match frame::read_tx_chain(chain, tx_buf, *acked) {
                Ok(len) => len,
                Err(e) => {
                    log::debug!("virtio-net {name}: transmit chain dropped: {e}");
                    match e {
                        ChainError::TooLarge(_) => stats.tx_too_large += 1,
                        _ => stats.tx_bad_chains += 1,
                    }
                    return Step::Used(0);
                }
            };
            if let Some(l) = limiter.as_deref_mut() {
                if !l.consume((len - VNET_HDR_LEN) as u64) {
                    return Step::NotNow;
                }
            }
            match io.send(&tx_buf[..len]) {
                Ok(_) => {
                    stats.tx_frames += 1;
                    stats.tx_bytes += (len - VNET_HDR_LEN) as u64;
                    Step::Used(0)
                }
                Err(e) if would_block(&e) => {
                    *tx_pending = Some(len);
                    Step::UsedThenPause(0)
                }
                Err(e) => {
                    stats.tap_errors += 1;
                    log::debug!("virtio-net {name}: TAP refused a frame: {e}");
                    Step::Used(0)
                }
            }
        });
        match result {
            Ok(d) if d.interrupt => self.signal(),
            Ok(_) => {}
            Err(e) => self.fail("transmit", e),
        }
    }

    fn signal(&self) {
        if let Err(e) = self.interrupt.signal_used_queue() {
            log::error!("virtio-net {}: cannot interrupt the guest: {e}", self.name);
        }
    }

    fn fail(&mut self, which: &str, e: virtio_queue::Error) {
        log::error!(
            "virtio-net {}: {which} queue is corrupt ({e}); device needs reset",
            self.name
        );
        self.broken = true;
        self.interrupt.set_needs_reset();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let s = &self.stats;
        log::info!(
            "virtio-net {}: rx {} frames {} bytes (dropped {}, bad chains {}), tx {} frames \
             {} bytes (bad chains {}, too large {}), TAP errors {}",
            self.name,
            s.rx_frames,
            s.rx_bytes,
            s.rx_dropped,
            s.rx_bad_chains,
            s.tx_frames,
            s.tx_bytes,
            s.tx_bad_chains,
            s.tx_too_large,
            s.tap_errors
        );
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Event-loop subscriber for one NIC: the receive queue's kick (the guest
/// added buffers), the transmit queue's kick, and the TAP, polled for input
/// only while the guest has room and for output only while a frame waits.
pub struct NetHandler {
    rx_evt: EventFd,
    tx_evt: EventFd,
    io: Arc<dyn FrameIo>,
    name: String,
    worker: Arc<Mutex<Option<Worker>>>,
    /// What the TAP is registered for; `None` if it is not (any more).
    interest: Option<EventSet>,
    /// `bw=` per direction; their timers are watched here.
    rx_limiter: Option<RateLimiter>,
    tx_limiter: Option<RateLimiter>,
}

impl NetHandler {
    /// One pass over the receive side, as on a kick or a readable TAP.
    pub fn process_rx(&mut self) {
        if let Some(w) = lock(&self.worker).as_mut() {
            w.process_rx(self.rx_limiter.as_mut());
        }
    }

    /// One pass over the transmit side, as on a kick or a writable TAP.
    pub fn process_tx(&mut self) {
        if let Some(w) = lock(&self.worker).as_mut() {
            w.process_tx(self.tx_limiter.as_mut());
        }
    }

    /// The worker's counters, if the device is active.
    pub fn stats(&self) -> Option<NetStats> {
        lock(&self.worker).as_ref().map(Worker::stats)
    }

    /// What the TAP is polled for now (`None`: not at all).
    pub fn tap_interest(&self) -> Option<EventSet> {
        self.interest
    }

    fn update_interest(&mut self, ops: &mut EventOps, want: EventSet) {
        match self.interest {
            Some(have) if have != want => {
                match ops.modify(Events::new_raw(self.io.as_raw_fd(), want)) {
                    Ok(()) => self.interest = Some(want),
                    Err(e) => log::error!("virtio-net {}: cannot poll the TAP: {e}", self.name),
                }
            }
            _ => {}
        }
    }
}

impl MutEventSubscriber for NetHandler {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        let want = {
            let mut guard = lock(&self.worker);
            let worker = guard.as_mut();
            let (rx_limiter, tx_limiter) = (&mut self.rx_limiter, &mut self.tx_limiter);
            // A throttled direction waits for its timer, not for kicks.
            let throttled = |l: &Option<RateLimiter>| l.as_ref().is_some_and(|l| l.is_throttled());
            if fd == self.rx_evt.as_raw_fd() {
                // Nonblocking; a failed read just means a spurious wakeup.
                let _ = self.rx_evt.read();
                if let Some(w) = worker.filter(|_| !throttled(rx_limiter)) {
                    w.process_rx(rx_limiter.as_mut());
                }
            } else if fd == self.tx_evt.as_raw_fd() {
                let _ = self.tx_evt.read();
                if let Some(w) = worker.filter(|_| !throttled(tx_limiter)) {
                    w.process_tx(tx_limiter.as_mut());
                }
            } else if let Some(l) = rx_limiter.as_mut().filter(|l| l.as_raw_fd() == fd) {
                l.timer_fired();
                if let Some(w) = worker {
                    w.process_rx(Some(l));
                }
            } else if let Some(l) = tx_limiter.as_mut().filter(|l| l.as_raw_fd() == fd) {
                l.timer_fired();
                if let Some(w) = worker {
                    w.process_tx(Some(l));
                }
            } else if fd == self.io.as_raw_fd() {
                if set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    log::error!(
                        "virtio-net {}: the TAP device failed or passt went away; the NIC is cut off",
                        self.name
                    );
                    if let Err(e) = ops.remove(Events::empty_raw(self.io.as_raw_fd())) {
                        log::debug!("virtio-net {}: {e}", self.name);
                    }
                    self.interest = None;
                    return;
                }
                if let Some(w) = worker {
                    if set.contains(EventSet::IN) {
                        w.process_rx(rx_limiter.as_mut());
                    }
                    if set.contains(EventSet::OUT) {
                        w.process_tx(tx_limiter.as_mut());
                    }
                }
            }
            guard
                .as_ref()
                .map_or(EventSet::empty(), Worker::tap_interest)
        };
        self.update_interest(ops, want);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for evt in [&self.rx_evt, &self.tx_evt] {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-net {}: cannot watch a queue: {e}", self.name);
            }
        }
        for l in [&self.rx_limiter, &self.tx_limiter].into_iter().flatten() {
            if let Err(e) = ops.add(Events::new_raw(l.as_raw_fd(), EventSet::IN)) {
                log::error!(
                    "virtio-net {}: cannot watch the rate limiter: {e}",
                    self.name
                );
            }
        }
        // Registered with no interest until the device is active.
        match ops.add(Events::new_raw(self.io.as_raw_fd(), EventSet::empty())) {
            Ok(()) => self.interest = Some(EventSet::empty()),
            Err(e) => log::error!("virtio-net {}: cannot watch the TAP: {e}", self.name),
        }
    }
}
