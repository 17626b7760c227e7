//! virtio-console tests: transmit chains built with virtio-queue's mocks
//! in a GuestMemoryMmap, output through a real [`Output`] and its writer
//! thread (seccomp off: the test harness is not a VMM thread).

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::output::OutputWriter;
use crate::devices::virtio::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use crate::seccomp::Seccomp;

use crate::testutil::Shared;

struct Broken;

impl Write for Broken {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Blocks every write until its gate opens: a reader that is not reading.
#[derive(Clone)]
struct Gated(Arc<(Mutex<bool>, Condvar)>, Shared);

impl Gated {
    fn new() -> Self {
        Self(
            Arc::new((Mutex::new(false), Condvar::new())),
            Shared::default(),
        )
    }
    fn open(&self) {
        *lock(&self.0 .0) = true;
        self.0 .1.notify_all();
    }
}

impl Write for Gated {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let mut open = lock(&self.0 .0);
        while !*open {
            open = self.0 .1.wait(open).unwrap();
        }
        drop(open);
        self.1.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// A chain: (addr, len, device-writable) per descriptor.
type Chain<'a> = &'a [(u64, u32, bool)];

fn descriptors(chains: &[Chain]) -> Vec<RawDescriptor> {
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
    descs
}

struct Env<'a> {
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    console: Console,
    handler: ConsoleHandler,
    irq: Arc<Interrupt>,
    writer: Option<OutputWriter>,
}

impl<'a> Env<'a> {
    /// An active console on `mem` writing to `sink` through a `cap`-byte
    /// buffer, with `chains` available on its transmit queue (not served).
    fn new(
        mem: &'a GuestMemoryMmap,
        sink: Box<dyn Write + Send>,
        cap: usize,
        chains: &[Chain],
    ) -> Self {
        let vq = MockSplitQueue::new(mem, QUEUE_SIZE);
        let tx: Queue = vq.create_queue().unwrap();
        vq.add_desc_chains(&descriptors(chains), 0).unwrap();
        // The receive queue's rings live apart from the transmit queue's.
        let rx: Queue = MockSplitQueue::create(mem, GuestAddress(0x8_0000), QUEUE_SIZE)
            .create_queue()
            .unwrap();
        let (output, writer) = Output::spawn("test", sink, cap, Seccomp::Off).unwrap();
        let mut console = Console::new(output).unwrap();
        let handler = console.event_handler().unwrap();
        let irq = Arc::new(Interrupt::new().unwrap());
        console
            .activate(
                mem.clone(),
                feature(VIRTIO_F_VERSION_1),
                vec![rx, tx],
                irq.clone(),
            )
            .unwrap();
        Self {
            vq,
            console,
            handler,
            irq,
            writer: Some(writer),
        }
    }

    fn used(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// Writes out everything buffered.
    fn finish(&mut self) {
        assert!(self
            .writer
            .take()
            .unwrap()
            .finish(Some(Instant::now() + Duration::from_secs(10))));
    }
}

/// Runs `chains` through a console into `sink`; returns the env, finished.
fn run<'a>(mem: &'a GuestMemoryMmap, sink: Box<dyn Write + Send>, chains: &[Chain]) -> Env<'a> {
    let mut env = Env::new(mem, sink, 1 << 20, chains);
    assert_eq!(env.handler.process(), Some(Stop::Empty));
    env.finish();
    env
}

#[test]
fn transmit_chains_reach_the_sink_in_order() {
    let m = mem();
    m.write_slice(b"hello, ", GuestAddress(0x10_1000)).unwrap();
    m.write_slice(b"world\n\0\xff", GuestAddress(0x10_2000))
        .unwrap();
    m.write_slice(b"second", GuestAddress(0x10_3000)).unwrap();
    let out = Shared::default();
    let env = run(
        &m,
        Box::new(out.clone()),
        &[
            &[(0x10_1000, 7, false), (0x10_2000, 8, false)],
            &[(0x10_3000, 6, false)],
        ],
    );
    assert_eq!(&*lock(&out.0), b"hello, world\n\0\xffsecond");
    assert_eq!(env.used(), 2);
    assert_eq!(
        env.irq.status() & crate::devices::virtio::VIRTIO_MMIO_INT_VRING,
        1
    );
}

#[test]
fn large_descriptor_is_copied_in_chunks() {
    let m = mem();
    let data: Vec<u8> = (0..(MAX_CHAIN_BYTES - 3))
        .map(|i| (i % 251) as u8)
        .collect();
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
fn one_chain_produces_at_most_max_chain_bytes() {
    // Three descriptors claiming 8 MiB each (an indirect table could claim
    // 4 GiB): the console takes 64 KiB and drops the rest, counted.
    let m = mem();
    let out = Shared::default();
    let env = run(
        &m,
        Box::new(out.clone()),
        &[&[
            (0x10_0000, 8 << 20, false),
            (0x10_0000, 8 << 20, false),
            (0x10_0000, 8 << 20, false),
        ]],
    );
    assert_eq!(lock(&out.0).len(), MAX_CHAIN_BYTES);
    assert_eq!(env.used(), 1);
    let cut = lock(&env.console.worker).as_ref().unwrap().truncated_bytes;
    assert_eq!(cut, 3 * (8 << 20) - MAX_CHAIN_BYTES as u64);
}

#[test]
fn bad_chains_are_dropped_not_fatal() {
    let m = mem();
    m.write_slice(b"ok", GuestAddress(0x10_1000)).unwrap();
    let out = Shared::default();
    let env = run(
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
    assert_eq!(env.used(), 3, "bad chains are still returned to the driver");
    assert!(!env.irq.needs_reset());
    let bad = lock(&env.console.worker).as_ref().unwrap().bad_chains;
    assert_eq!(bad, 2);
}

#[test]
fn failing_sink_does_not_stall_the_guest() {
    let m = mem();
    let env = run(
        &m,
        Box::new(Broken),
        &[&[(0x10_1000, 4, false)], &[(0x10_1000, 4, false)]],
    );
    assert_eq!(env.used(), 2);
}

#[test]
fn a_full_buffer_pauses_the_queue_until_the_writer_makes_room() {
    // Buffer room for two chains' worth; the reader is not reading.
    let m = mem();
    let sink = Gated::new();
    let chains: Vec<Vec<(u64, u32, bool)>> = (0..5)
        .map(|_| vec![(0x20_0000, MAX_CHAIN_BYTES as u32, false)])
        .collect();
    let refs: Vec<Chain> = chains.iter().map(Vec::as_slice).collect();
    let mut env = Env::new(&m, Box::new(sink.clone()), 2 * MAX_CHAIN_BYTES, &refs);
    let start = Instant::now();
    // The writer takes the first chain into its hands and blocks; two more
    // fill the buffer; the fourth waits in the ring.
    let mut served = 0;
    while served < 3 {
        assert_eq!(env.handler.process(), Some(Stop::Paused));
        served = env.used();
        assert!(start.elapsed() < Duration::from_secs(5), "served {served}");
    }
    assert_eq!(
        env.used(),
        3,
        "nothing more is taken while the buffer is full"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "and nothing waited for the reader"
    );
    // The reader reads: the writer drains, signals room, the queue resumes.
    sink.open();
    let space = env.handler.space_evt.try_clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.used() < 5 {
        assert!(Instant::now() < deadline, "the queue never resumed");
        if space.read().is_ok() {
            env.handler.process();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    env.finish();
    assert_eq!(lock(&sink.1 .0).len(), 5 * MAX_CHAIN_BYTES, "nothing lost");
}

#[test]
fn a_flood_is_served_in_batches_that_rearm_the_queue() {
    let m = mem();
    let one: Vec<(u64, u32, bool)> = vec![(0x10_1000, 1, false)];
    let refs: Vec<Chain> = (0..200).map(|_| one.as_slice()).collect();
    let mut env = Env::new(&m, Box::new(Shared::default()), 1 << 20, &refs);
    // Activation kicked the queue once; consume that.
    env.handler.tx_evt.read().unwrap();
    assert_eq!(env.handler.process(), Some(Stop::Budget));
    assert_eq!(usize::from(env.used()), queue::BATCH);
    assert_eq!(
        env.handler.tx_evt.read().unwrap(),
        1,
        "the queue re-armed itself"
    );
    while env.handler.process() == Some(Stop::Budget) {}
    assert_eq!(env.used(), 200);
    env.finish();
}

#[test]
fn wrong_queue_count_is_refused() {
    let m = mem();
    let (output, writer) = Output::spawn("t", Box::new(io::sink()), 16, Seccomp::Off).unwrap();
    let mut c = Console::new(output).unwrap();
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
    assert!(writer.finish(None));
}
