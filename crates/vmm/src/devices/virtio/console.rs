//! A single-port virtio-console (virtio 1.2, 5.3) whose output goes to a
//! host writer: the guest sees /dev/hvcN, whatever it writes there reaches
//! the writer unchanged. `kvmini exec` uses four of them to bring back the
//! command's stdout, stderr, exit status and share archive as separate byte
//! streams.
//!
//! Only the transmit queue is served; nothing is ever offered on the receive
//! queue (the guest reads end-of-nothing, never blocks the VMM).

use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::devices::bus::lock;
use crate::devices::virtio::{
    activation, feature, queue, ActivateError, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
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

/// Where the guest's output goes, shared with the queue handler.
type Sink = Arc<Mutex<Box<dyn Write + Send>>>;

pub struct Console {
    queue_evts: [EventFd; 2],
    sink: Sink,
    worker: Arc<Mutex<Option<Worker>>>,
}

impl Console {
    pub fn new(sink: Box<dyn Write + Send>) -> io::Result<Self> {
        Ok(Self {
            queue_evts: [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?],
            sink: Arc::new(Mutex::new(sink)),
            worker: Arc::new(Mutex::new(None)),
        })
    }

    /// The event-loop subscriber that serves the transmit queue.
    pub fn event_handler(&self) -> io::Result<ConsoleHandler> {
        Ok(ConsoleHandler {
            tx_evt: self.queue_evts[TX].try_clone()?,
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
            sink: self.sink.clone(),
            interrupt,
            broken: false,
            sink_failed: false,
            bad_chains: 0,
        });
        drop(worker);
        // Output queued before DRIVER_OK is written right away.
        self.queue_evts[TX].write(1).map_err(ActivateError::Io)
    }

    fn reset(&mut self) {
        lock(&self.worker).take();
        let _ = lock(&self.sink).flush();
    }
}

/// The active transmit path.
pub struct Worker {
    mem: GuestMemoryMmap,
    tx: Queue,
    sink: Sink,
    interrupt: Arc<Interrupt>,
    /// The queue itself is corrupt; nothing more is done until a reset.
    broken: bool,
    /// The host writer failed (e.g. the reader of our stdout went away):
    /// further output is consumed and dropped so the guest never stalls.
    sink_failed: bool,
    /// Chains with device-writable or unreadable descriptors, dropped.
    pub bad_chains: u64,
}

impl Worker {
    pub fn process_tx(&mut self) {
        if self.broken {
            return;
        }
        let mut sink = lock(&self.sink);
        let (mem, failed, bad) = (&self.mem, &mut self.sink_failed, &mut self.bad_chains);
        let result = queue::drain(&mut self.tx, mem, |chain| {
            if let Err(e) = write_chain(mem, chain, &mut **sink, failed) {
                *bad += 1;
                log::debug!("virtio-console: dropped a bad transmit chain: {e}");
            }
            0
        });
        let _ = sink.flush();
        drop(sink);
        match result {
            Ok(true) => {
                if let Err(e) = self.interrupt.signal_used_queue() {
                    log::error!("virtio-console: cannot interrupt the guest: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => {
                log::error!("virtio-console: transmit queue is corrupt ({e}); device needs reset");
                self.broken = true;
                self.interrupt.set_needs_reset();
            }
        }
    }
}

/// Copies the readable descriptors of one transmit chain to `sink`, in
/// bounded chunks. A device-writable descriptor or one outside guest memory
/// ends the chain with an error (what was before it has been written).
fn write_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    sink: &mut dyn Write,
    sink_failed: &mut bool,
) -> Result<(), String> {
    let mut buf = vec![0u8; CHUNK];
    for desc in chain {
        if desc.is_write_only() {
            return Err("device-writable descriptor in a transmit chain".into());
        }
        let mut done = 0usize;
        let len = desc.len() as usize;
        while done < len {
            let n = (len - done).min(CHUNK);
            let addr = desc
                .addr()
                .checked_add(done as u64)
                .ok_or("descriptor wraps around the address space")?;
            mem.read_slice(&mut buf[..n], addr)
                .map_err(|e| format!("descriptor outside guest memory: {e}"))?;
            if !*sink_failed {
                if let Err(e) = sink.write_all(&buf[..n]) {
                    log::warn!("virtio-console: output dropped from now on: {e}");
                    *sink_failed = true;
                }
            }
            done += n;
        }
    }
    Ok(())
}

/// Event-loop subscriber: runs the transmit path when the driver kicks it.
pub struct ConsoleHandler {
    tx_evt: EventFd,
    worker: Arc<Mutex<Option<Worker>>>,
}

impl ConsoleHandler {
    pub fn process(&self) {
        if let Some(w) = lock(&self.worker).as_mut() {
            w.process_tx();
        }
    }
}

impl MutEventSubscriber for ConsoleHandler {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() != self.tx_evt.as_raw_fd() {
            return;
        }
        let _ = self.tx_evt.read();
        ConsoleHandler::process(self);
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.tx_evt, EventSet::IN)) {
            log::error!("virtio-console: cannot watch the transmit queue: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::VRING_DESC_F_NEXT;
    use crate::devices::virtio::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;

    /// A writer the test can look into.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    /// Activates a console on `mem` with the chains `chains` (each a list of
    /// (addr, len, device-writable)) made available on its transmit queue.
    fn run(
        mem: &GuestMemoryMmap,
        sink: Box<dyn Write + Send>,
        chains: &[&[(u64, u32, bool)]],
    ) -> (Console, Arc<Interrupt>, u16) {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let tx: Queue = vq.create_queue().unwrap();
        let mut descs = Vec::new();
        for chain in chains {
            let start = descs.len();
            for (i, &(addr, len, w)) in chain.iter().enumerate() {
                let last = i + 1 == chain.len();
                let mut flags = if w { VRING_DESC_F_WRITE } else { 0 };
                if !last {
                    flags |= VRING_DESC_F_NEXT;
                }
                let next = if last { 0 } else { (start + i + 1) as u16 };
                descs.push(RawDescriptor::from(SplitDescriptor::new(
                    addr, len, flags, next,
                )));
            }
        }
        vq.add_desc_chains(&descs, 0).unwrap();
        // The receive queue's rings live apart from the transmit queue's.
        let rx: Queue = MockSplitQueue::create(mem, GuestAddress(0x8_0000), QUEUE_SIZE)
            .create_queue()
            .unwrap();
        let mut console = Console::new(sink).unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        console
            .activate(
                mem.clone(),
                feature(VIRTIO_F_VERSION_1),
                vec![rx, tx],
                irq.clone(),
            )
            .unwrap();
        console.event_handler().unwrap().process();
        let used = vq.used().idx().load();
        (console, irq, used)
    }

    #[test]
    fn transmit_chains_reach_the_sink_in_order() {
        let m = mem();
        m.write_slice(b"hello, ", GuestAddress(0x10_1000)).unwrap();
        m.write_slice(b"world\n\0\xff", GuestAddress(0x10_2000))
            .unwrap();
        m.write_slice(b"second", GuestAddress(0x10_3000)).unwrap();
        let out = Shared::default();
        let (_, irq, used) = run(
            &m,
            Box::new(out.clone()),
            &[
                &[(0x10_1000, 7, false), (0x10_2000, 8, false)],
                &[(0x10_3000, 6, false)],
            ],
        );
        assert_eq!(&*lock(&out.0), b"hello, world\n\0\xffsecond");
        assert_eq!(used, 2);
        assert_eq!(
            irq.status() & crate::devices::virtio::VIRTIO_MMIO_INT_VRING,
            1
        );
    }

    #[test]
    fn large_descriptor_is_copied_in_chunks() {
        let m = mem();
        let data: Vec<u8> = (0..(3 * CHUNK + 5)).map(|i| (i % 251) as u8).collect();
        m.write_slice(&data, GuestAddress(0x20_0000)).unwrap();
        let out = Shared::default();
        run(
            &m,
            Box::new(out.clone()),
            &[&[(0x20_0000, data.len() as u32, false)]],
        );
        assert_eq!(*lock(&out.0), data);
    }

    #[test]
    fn bad_chains_are_dropped_not_fatal() {
        let m = mem();
        m.write_slice(b"ok", GuestAddress(0x10_1000)).unwrap();
        let out = Shared::default();
        let (console, irq, used) = run(
            &m,
            Box::new(out.clone()),
            &[
                // Device-writable descriptor in a transmit chain.
                &[(0x10_1000, 2, true)],
                // Past the end of guest memory.
                &[(0xff_fff0, 0x100, false)],
                &[(0x10_1000, 2, false)],
            ],
        );
        assert_eq!(&*lock(&out.0), b"ok", "only the good chain is written");
        assert_eq!(used, 3, "bad chains are still returned to the driver");
        assert!(!irq.needs_reset());
        let bad = lock(&console.worker).as_ref().unwrap().bad_chains;
        assert_eq!(bad, 2);
    }

    #[test]
    fn failing_sink_does_not_stall_the_guest() {
        let m = mem();
        let (_, _, used) = run(
            &m,
            Box::new(Broken),
            &[&[(0x10_1000, 4, false)], &[(0x10_1000, 4, false)]],
        );
        assert_eq!(used, 2);
    }

    #[test]
    fn wrong_queue_count_is_refused() {
        let m = mem();
        let mut c = Console::new(Box::new(io::sink())).unwrap();
        let q: Queue = MockSplitQueue::new(&m, QUEUE_SIZE).create_queue().unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        assert!(matches!(
            c.activate(m.clone(), 0, vec![q], irq),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        assert!(c.queue_max_sizes().len() == 2 && c.device_type() == TYPE_CONSOLE);
        let mut cfg = [0xaau8; 12];
        c.read_config(0, &mut cfg);
        assert_eq!(cfg, [0; 12]);
    }
}
