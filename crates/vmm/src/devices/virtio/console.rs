//! A single-port virtio-console (virtio 1.2, 5.3) whose output goes to a
//! host writer: the guest sees /dev/hvcN, whatever it writes there reaches
//! the writer unchanged. `kvmini exec` uses four of them to bring back the
//! command's stdout, stderr, exit status and share archive as separate byte
//! streams.
//!
//! Output goes through a bounded [`Output`] buffer that a writer thread
//! drains, with backpressure: a chain is taken only while the buffer has
//! room for the most one chain may produce ([`MAX_CHAIN_BYTES`]); when it
//! has not, the transmit queue is left alone (the guest's write waits,
//! nothing is lost) until the writer signals room on its eventfd. The
//! event loop never waits for the host's reader.
//!
//! Only the transmit queue is served; nothing is ever offered on the receive
//! queue (the guest reads end-of-nothing, never blocks the VMM).

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::bus::lock;
use crate::devices::output::Output;
use crate::devices::virtio::queue::{self, Step, Stop};
use crate::devices::virtio::{
    activation, feature, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};

pub use crate::devices::virtio::TYPE_CONSOLE;
pub const QUEUE_SIZE: u16 = 256;
/// Queue 0 is receiveq (never used), queue 1 transmitq.
const TX: usize = 1;
/// `struct virtio_console_config`: cols, rows, max_nr_ports, emerg_wr. No
/// feature that gives them meaning is offered, so they read as zero.
const CONFIG_LEN: usize = 12;
/// Bytes copied from guest memory per step: a guest descriptor may claim up
/// to 4 GiB, and the VMM must not allocate what the guest asks for.
const CHUNK: usize = 64 << 10;
/// The most one transmit chain produces; the rest of a longer chain is
/// dropped and counted. Linux writes at most 32 KiB per buffer, but an
/// indirect table behind one 16-byte ring entry can claim up to 4 GiB.
pub const MAX_CHAIN_BYTES: usize = 64 << 10;

pub struct Console {
    queue_evts: [EventFd; 2],
    /// The transmit queue's eventfd again, for the worker to re-arm it:
    /// made here, because activation runs on a vCPU thread, whose seccomp
    /// filter does not allow duplicating descriptors.
    tx_kick: Arc<EventFd>,
    output: Output,
    worker: Arc<Mutex<Option<Worker>>>,
}

impl Console {
    /// A console whose output goes to `output` (see [`Output::spawn`]).
    pub fn new(output: Output) -> io::Result<Self> {
        let tx = EventFd::new(EFD_NONBLOCK)?;
        Ok(Self {
            tx_kick: Arc::new(tx.try_clone()?),
            queue_evts: [EventFd::new(EFD_NONBLOCK)?, tx],
            output,
            worker: Arc::new(Mutex::new(None)),
        })
    }

    /// The event-loop subscriber that serves the transmit queue.
    pub fn event_handler(&self) -> io::Result<ConsoleHandler> {
        Ok(ConsoleHandler {
            tx_evt: self.queue_evts[TX].try_clone()?,
            space_evt: self.output.space_event().try_clone()?,
            worker: self.worker.clone(),
        })
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn config_space(&self) -> &[u8] {
        &[0; CONFIG_LEN]
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _acked_features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let ([_rx, tx], mut worker) = activation::<_, 2>(queues, &self.worker)?;
        *worker = Some(Worker {
            mem,
            tx,
            kick: self.tx_kick.clone(),
            output: self.output.clone(),
            interrupt,
            broken: false,
            bad_chains: 0,
            truncated_bytes: 0,
        });
        drop(worker);
        // Output queued before DRIVER_OK is written right away.
        self.queue_evts[TX].write(1).map_err(ActivateError::Io)
    }

    fn reset(&mut self) {
        lock(&self.worker).take();
    }
}

/// The active transmit path.
pub struct Worker {
    mem: GuestMemoryMmap,
    tx: Queue,
    /// The transmit queue's eventfd, re-armed when a batch leaves more.
    kick: Arc<EventFd>,
    output: Output,
    interrupt: Arc<Interrupt>,
    /// The queue itself is corrupt; nothing more is done until a reset.
    broken: bool,
    /// Chains with device-writable or unreadable descriptors, dropped.
    pub bad_chains: u64,
    /// Bytes past [`MAX_CHAIN_BYTES`] in a chain, dropped.
    pub truncated_bytes: u64,
}

impl Worker {
    /// Serves a batch of transmit chains while the output has room.
    pub fn process_tx(&mut self) -> Stop {
        if self.broken {
            return Stop::Empty;
        }
        let (mem, out) = (&self.mem, &self.output);
        let (bad, truncated) = (&mut self.bad_chains, &mut self.truncated_bytes);
        let result = queue::drain(&mut self.tx, mem, &self.kick, |chain| {
            if !out.reserve(MAX_CHAIN_BYTES) {
                // The writer signals room; the chain waits in the ring.
                return Step::NotNow;
            }
            match write_chain(mem, chain, out) {
                Ok(cut) => *truncated += cut,
                Err(e) => {
                    *bad += 1;
                    log::debug!("virtio-console: dropped a bad transmit chain: {e}");
                }
            }
            Step::Used(0)
        });
        match result {
            Ok(d) => {
                if d.interrupt {
                    if let Err(e) = self.interrupt.signal_used_queue() {
                        log::error!("virtio-console: cannot interrupt the guest: {e}");
                    }
                }
                d.stop
            }
            Err(e) => {
                log::error!("virtio-console: transmit queue is corrupt ({e}); device needs reset");
                self.broken = true;
                self.interrupt.set_needs_reset();
                Stop::Empty
            }
        }
    }
}

/// Copies the readable descriptors of one transmit chain to `out`, in
/// bounded chunks, at most [`MAX_CHAIN_BYTES`] in all; returns the bytes
/// cut off past that. A device-writable descriptor or one outside guest
/// memory ends the chain with an error (what was before it is kept).
fn write_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    out: &Output,
) -> Result<u64, String> {
    let mut buf = vec![0u8; CHUNK];
    let mut room = MAX_CHAIN_BYTES;
    let mut cut = 0u64;
    for desc in chain {
        if desc.is_write_only() {
            return Err("device-writable descriptor in a transmit chain".into());
        }
        let len = desc.len() as usize;
        let keep = len.min(room);
        cut += (len - keep) as u64;
        let mut done = 0usize;
        while done < keep {
            let n = (keep - done).min(CHUNK);
            let addr = desc
                .addr()
                .checked_add(done as u64)
                .ok_or("descriptor wraps around the address space")?;
            mem.read_slice(&mut buf[..n], addr)
                .map_err(|e| format!("descriptor outside guest memory: {e}"))?;
            out.push(&buf[..n]);
            done += n;
        }
        room -= keep;
    }
    Ok(cut)
}

/// Event-loop subscriber: runs the transmit path when the driver kicks it
/// or when the output has room again.
pub struct ConsoleHandler {
    tx_evt: EventFd,
    space_evt: EventFd,
    worker: Arc<Mutex<Option<Worker>>>,
}

impl ConsoleHandler {
    pub fn process(&self) -> Option<Stop> {
        lock(&self.worker).as_mut().map(Worker::process_tx)
    }
}

impl MutEventSubscriber for ConsoleHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.tx_evt.as_raw_fd() {
            let _ = self.tx_evt.read();
        } else if events.fd() == self.space_evt.as_raw_fd() {
            let _ = self.space_evt.read();
        } else {
            return;
        }
        ConsoleHandler::process(self);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for evt in [&self.tx_evt, &self.space_evt] {
            if let Err(e) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("virtio-console: cannot watch the transmit queue: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
