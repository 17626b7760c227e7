//! The virtio-blk device: feature and config-space description for the
//! transport, and the queue worker that [`BlockHandler`] drives whenever
//! the driver notifies the request queue. The handler runs on the disk's
//! own I/O thread (its own small event loop: the queue's eventfd, the
//! rate limiter's timer, a stop eventfd; see `vmm::io_thread`), so a
//! guest's disk requests never hold up the event loop, host signals or
//! other devices, and the VM stops without waiting for them: a request in
//! progress gives up between its transfers (a system call of at most
//! 1 MiB each) once [`BlockHandler::stop_flag`] is set.

use std::fmt;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{self, DiskFile, SECTOR_SHIFT};
use super::coalesce::Coalesce;
use super::request::{self, Limits, Op, RangeLimits, VIRTIO_BLK_S_OK};
use crate::devices::bus::lock;
use crate::devices::rate_limiter::{self, RateLimit, RateLimiter};
use crate::devices::virtio::queue::{self, Drained, Step, Stop};
use crate::devices::virtio::{
    activation, feature, ActivateError, Interrupt, VirtioDevice, TYPE_BLOCK,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

// Feature bits (virtio 1.2, 5.2.3).
pub use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};

/// The one request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request: a chain never exceeds the queue size, and
/// two descriptors are the header and status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data descriptor accepted.
pub const SIZE_MAX: u32 = 1 << 20;
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
pub const MAX_DISCARD_SEG: u32 = 16;
/// Smaller than discard: without ZERO_RANGE the zeros are written out, and
/// the event loop should not stall for long.
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16;
pub const MAX_WRITE_ZEROES_SEG: u32 = 16;
/// A hint (4 KiB): ranges of any alignment are accepted.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;

/// Bytes of `struct virtio_blk_config` up to `write_zeroes_may_unmap`'s padding.
pub const CONFIG_LEN: usize = 60;

/// A disk as configured by the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub readonly: bool,
    /// `iops=` (requests per second) and `bw=` (bytes per second).
    pub limit: RateLimit,
}

#[derive(Debug)]
pub enum Error {
    Disk(backend::Error),
    EventFd(io::Error),
    RateLimiter(rate_limiter::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disk(e) => e.fmt(f),
            Self::EventFd(e) => write!(f, "cannot create the disk queue eventfd: {e}"),
            Self::RateLimiter(e) => write!(f, "disk: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Disk(e) => e.source(),
            Self::EventFd(e) => Some(e),
            Self::RateLimiter(e) => Some(e),
        }
    }
}

pub struct Block {
    disk: Arc<DiskFile>,
    features: u64,
    config: [u8; CONFIG_LEN],
    queue_evts: [EventFd; 1],
    /// The data path, present while the device is active. Shared with the
    /// [`BlockHandler`]; locked by the I/O thread per batch of requests and
    /// by the transport on activate/reset only.
    worker: Arc<Mutex<Option<Worker>>>,
    limit: RateLimit,
    /// The queue's eventfd again, for the worker to re-arm the queue: made
    /// here, because activation runs on a vCPU thread, whose seccomp filter
    /// does not allow duplicating descriptors.
    kick: Arc<EventFd>,
}

impl Block {
    pub fn new(config: &BlockConfig) -> Result<Self, Error> {
        let disk = DiskFile::open(&config.path, config.readonly).map_err(Error::Disk)?;
        let mut features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_F_RING_EVENT_IDX)
            | feature(VIRTIO_F_RING_INDIRECT_DESC)
            | feature(VIRTIO_BLK_F_SIZE_MAX)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_FLUSH);
        if disk.readonly() {
            features |= feature(VIRTIO_BLK_F_RO);
        } else {
            features |= feature(VIRTIO_BLK_F_WRITE_ZEROES);
            if disk.supports_discard() {
                features |= feature(VIRTIO_BLK_F_DISCARD);
            }
        }
        let space = config_space(disk.sectors(), disk.supports_discard());
        let evt = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        let kick = Arc::new(evt.try_clone().map_err(Error::EventFd)?);
        Ok(Self {
            disk: Arc::new(disk),
            features,
            config: space,
            queue_evts: [evt],
            worker: Arc::new(Mutex::new(None)),
            limit: config.limit,
            kick,
        })
    }

    /// The subscriber that processes the request queue; add it to the
    /// disk's I/O thread's event manager once, before the guest runs.
    pub fn event_handler(&self) -> Result<BlockHandler, Error> {
        let limiter = match self.limit.is_limited() {
            true => Some(RateLimiter::new(self.limit).map_err(Error::RateLimiter)?),
            false => None,
        };
        Ok(BlockHandler {
            queue_evt: self.queue_evts[0].try_clone().map_err(Error::EventFd)?,
            worker: self.worker.clone(),
            limiter,
            stopping: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn disk(&self) -> &DiskFile {
        &self.disk
    }
}

fn config_space(sectors: u64, discard: bool) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &sectors.to_le_bytes());
    put(8, &SIZE_MAX.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEG.to_le_bytes());
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
    put(56, &[u8::from(discard)]);
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
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
        let ([queue], mut worker) = activation::<_, 1>(queues, &self.worker)?;
        // The transport refuses unoffered features; be safe without it too.
        let acked = |bit| acked_features & self.features & feature(bit) != 0;
        let limits = Limits {
            capacity: self.disk.sectors(),
            readonly: self.disk.readonly(),
            max_segments: SEG_MAX as usize,
            max_segment_size: SIZE_MAX,
            discard: acked(VIRTIO_BLK_F_DISCARD).then_some(RangeLimits {
                max_sectors: MAX_DISCARD_SECTORS,
                max_segments: MAX_DISCARD_SEG as usize,
            }),
            write_zeroes: acked(VIRTIO_BLK_F_WRITE_ZEROES).then_some(RangeLimits {
                max_sectors: MAX_WRITE_ZEROES_SECTORS,
                max_segments: MAX_WRITE_ZEROES_SEG as usize,
            }),
        };
        *worker = Some(Worker {
            mem,
            queue,
            kick: self.kick.clone(),
            disk: self.disk.clone(),
            interrupt,
            limits,
            broken: false,
            coalesce: Coalesce::default(),
        });
        drop(worker);
        // Requests the driver queued before DRIVER_OK are served right away.
        self.queue_evts[0].write(1).map_err(ActivateError::Io)
    }

    fn reset(&mut self) {
        lock(&self.worker).take();
        if let Err(e) = self.disk.flush() {
            log::error!("{}: flush on reset failed: {e}", self.disk.path().display());
        }
    }
}

/// The active data path: one queue, the disk, the guest memory.
pub struct Worker {
    mem: GuestMemoryMmap,
    queue: Queue,
    /// The queue's eventfd, re-armed when a batch leaves requests waiting.
    kick: Arc<EventFd>,
    disk: Arc<DiskFile>,
    interrupt: Arc<Interrupt>,
    limits: Limits,
    /// The queue itself is corrupt; nothing more is done until a reset.
    broken: bool,
    /// When to hold the interrupt back (see [`super::coalesce`]).
    coalesce: Coalesce,
}

impl Worker {
    /// Serves a batch of requests (see [`queue::drain`]), each admitted by
    /// `limiter` if there is one, and interrupts the guest if it asked for
    /// it. If the queue is then empty, the interrupt may first be held
    /// back for a coalescing window (`wait` sleeps it; see
    /// [`super::coalesce`]), and the requests posted meanwhile are served
    /// before the one interrupt. Once `stopping` is set nothing more is
    /// served.
    pub fn process_queue(
        &mut self,
        limiter: Option<&mut RateLimiter>,
        stopping: &AtomicBool,
        wait: impl FnOnce(Duration),
    ) -> Stop {
        if self.broken {
            return Stop::Empty;
        }
        let mut limiter = limiter;
        let first = match self.serve(limiter.as_deref_mut(), stopping) {
            Ok(d) => d,
            Err(e) => {
                self.fail(e);
                return Stop::Empty;
            }
        };
        let mut stop = first.stop;
        let mut interrupt = first.interrupt;
        let held =
            first.interrupt && first.stop == Stop::Empty && !stopping.load(Ordering::Relaxed);
        if let Some(window) = held
            .then(|| self.coalesce.window(first.served, Instant::now))
            .flatten()
        {
            wait(window);
            // The kicks of the requests posted meanwhile: served now.
            let _ = self.kick.read();
            match self.serve(limiter, stopping) {
                Ok(d) => {
                    self.coalesce.caught(d.served);
                    interrupt |= d.interrupt;
                    stop = d.stop;
                }
                Err(e) => {
                    self.fail(e);
                    stop = Stop::Empty;
                }
            }
        }
        if interrupt {
            if let Err(e) = self.interrupt.signal_used_queue() {
                log::error!("virtio-blk: cannot interrupt the guest: {e}");
            }
        }
        stop
    }

    /// One [`queue::drain`] of the request queue.
    fn serve(
        &mut self,
        mut limiter: Option<&mut RateLimiter>,
        stopping: &AtomicBool,
    ) -> Result<Drained, virtio_queue::Error> {
        let (queue, mem, kick) = (&mut self.queue, &self.mem, &self.kick);
        let (disk, limits) = (&self.disk, &self.limits);
        queue::drain(queue, mem, kick, |chain| {
            if stopping.load(Ordering::Relaxed) {
                return Step::NotNow;
            }
            let parsed = request::parse(chain, limits);
            if let (Some(l), Ok(op)) = (limiter.as_deref_mut(), &parsed.request) {
                if !l.consume(op_bytes(op)) {
                    // The limiter's timer resumes the queue.
                    return Step::NotNow;
                }
            }
            Step::Used(handle(mem, disk, parsed, stopping))
        })
    }

    fn fail(&mut self, e: virtio_queue::Error) {
        log::error!(
            "virtio-blk {}: request queue is corrupt ({e}); device needs reset",
            self.disk.path().display()
        );
        self.broken = true;
        self.interrupt.set_needs_reset();
    }
}

/// What a request costs in `bw=` tokens: its data bytes.
fn op_bytes(op: &Op) -> u64 {
    let sum = |data: &[request::Segment]| data.iter().map(|s| u64::from(s.len)).sum();
    match op {
        Op::In { data, .. } | Op::Out { data, .. } => sum(data),
        _ => 0,
    }
}

/// Serves one request; returns the bytes written into the chain.
fn handle(
    mem: &GuestMemoryMmap,
    disk: &DiskFile,
    parsed: request::Parsed,
    stopping: &AtomicBool,
) -> u32 {
    let Some(status_addr) = parsed.status else {
        log::debug!("virtio-blk: request without status descriptor skipped");
        return 0;
    };
    let (status, written) = match parsed.request {
        Ok(op) => match execute(mem, disk, &op, stopping) {
            Ok(()) => (VIRTIO_BLK_S_OK, op.data_bytes_written()),
            Err(e) => {
                log::debug!("virtio-blk: {op:?} failed: {e}");
                (request::VIRTIO_BLK_S_IOERR, 0)
            }
        },
        Err(e) => {
            log::debug!("virtio-blk: bad request: {e}");
            (e.status(), 0)
        }
    };
    match mem.write_obj(status, status_addr) {
        Ok(()) => written.saturating_add(1),
        Err(e) => {
            // Checked during parsing, so the guest would have to shrink
            // its memory under us.
            log::debug!("virtio-blk: cannot write the status: {e}");
            0
        }
    }
}

/// Gives up between transfers (or ranges) once the VM is stopping.
fn check_stop(stopping: &AtomicBool) -> io::Result<()> {
    if stopping.load(Ordering::Relaxed) {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the VM is stopping",
        ));
    }
    Ok(())
}

fn execute(
    mem: &GuestMemoryMmap,
    disk: &DiskFile,
    op: &Op,
    stopping: &AtomicBool,
) -> io::Result<()> {
    match op {
        Op::In { sector, data } => {
            disk.read_into(mem, data, sector << SECTOR_SHIFT, || check_stop(stopping))
        }
        Op::Out { sector, data } => {
            disk.write_from(mem, data, sector << SECTOR_SHIFT, || check_stop(stopping))
        }
        Op::Flush => disk.flush(),
        Op::GetId { data } => {
            let mut id: &[u8] = disk.id();
            for s in data {
                let n = id.len().min(s.len as usize);
                mem.write_slice(&id[..n], s.addr)
                    .map_err(io::Error::other)?;
                id = &id[n..];
            }
            Ok(())
        }
        Op::Discard(ranges) => ranges.iter().try_for_each(|r| {
            check_stop(stopping)?;
            disk.discard(
                r.sector << SECTOR_SHIFT,
                u64::from(r.sectors) << SECTOR_SHIFT,
            )
        }),
        Op::WriteZeroes(ranges) => ranges.iter().try_for_each(|r| {
            check_stop(stopping)?;
            disk.write_zeroes(
                r.sector << SECTOR_SHIFT,
                u64::from(r.sectors) << SECTOR_SHIFT,
                r.unmap,
            )
        }),
    }
}

/// The subscriber for one disk, on its I/O thread: waits on the queue's
/// notify eventfd (signalled by KVM through the ioeventfd, by the
/// transport, or by the queue itself when a batch leaves more) and the
/// rate limiter's timer, and runs the worker if the device is active.
pub struct BlockHandler {
    queue_evt: EventFd,
    worker: Arc<Mutex<Option<Worker>>>,
    limiter: Option<RateLimiter>,
    stopping: Arc<AtomicBool>,
}

impl BlockHandler {
    /// One batch of the queue, as on a notification; `None` if inactive.
    pub fn process(&mut self) -> Option<Stop> {
        self.process_with(std::thread::sleep)
    }

    /// [`Self::process`], with `wait` holding the interrupt back for the
    /// coalescing window (the tests post requests from it).
    pub fn process_with(&mut self, wait: impl FnOnce(Duration)) -> Option<Stop> {
        let stopping = &self.stopping;
        let limiter = self.limiter.as_mut();
        lock(&self.worker)
            .as_mut()
            .map(|w| w.process_queue(limiter, stopping, wait))
    }

    /// Set when the VM stops: no new request starts, and one in progress
    /// gives up before its next transfer (at most 1 MiB).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    /// Times the rate limiter refused a request.
    pub fn throttled(&self) -> u64 {
        self.limiter.as_ref().map_or(0, |l| l.throttle_count)
    }
}

impl MutEventSubscriber for BlockHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.queue_evt.as_raw_fd() {
            // Nonblocking; a failed read just means a spurious wakeup.
            let _ = self.queue_evt.read();
            // A throttled queue waits for its timer, not for kicks.
            if self.limiter.as_ref().is_some_and(RateLimiter::is_throttled) {
                return;
            }
        } else if let Some(l) = self.limiter.as_mut().filter(|l| l.as_raw_fd() == fd) {
            l.timer_fired();
        } else {
            return;
        }
        BlockHandler::process(self);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.queue_evt, EventSet::IN)) {
            log::error!("virtio-blk: cannot watch the request queue: {e}");
        }
        if let Some(l) = &self.limiter {
            if let Err(e) = ops.add(Events::new_raw(l.as_raw_fd(), EventSet::IN)) {
                log::error!("virtio-blk: cannot watch the rate limiter: {e}");
            }
        }
    }
}
