//! The issue-16 guarantee, measured: while a guest floods a console queue
//! on the event loop and a disk with 4 MiB reads on its I/O thread, a
//! SIGTERM (its eventfd) and `exec --timeout`'s deadline are served within
//! 50 ms, and every loop stops within 50 ms. The harshest layout is
//! tested: signals and deadline on the flooded event loop itself (in the
//! VMM they have their own thread), so this is the batch budget at work.
//! Before it, one `drain` served a re-posting guest for seconds (2.3-2.7 s
//! for this SIGTERM stand-in, measured in the issue).
//!
//! The 50 ms are the loops' own CPU time (their thread CPU clocks), not
//! wall time: the floods keep 6 threads busy, and on a 2-CPU machine that
//! also runs the other tests a loop can wait on a run queue longer than
//! its batch takes (CI once saw 51 ms of wall time where the loop's work
//! took microseconds). Wall time is still bounded, at 1 s, well below the
//! seconds an unbudgeted drain takes.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::SubscriberOps;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::console::HostSignals;
use super::loop_thread::{LoopThread, RunningLoop};
use super::{Deadline, GracefulStop};
use crate::devices::output::Output;
use crate::devices::virtio::block::{Block, BlockConfig, RateLimit};
use crate::devices::virtio::console::Console;
use crate::devices::virtio::test_guest::{Flooder, FLOOD_QUEUE_SIZE};
use crate::devices::virtio::{
    feature, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use crate::exit::{ExitSignal, VmExit};
use crate::seccomp::{Seccomp, ThreadKind};
use crate::thread::clock_time;

/// What a loop may spend on a CPU before it serves the event or stops.
const LIMIT: Duration = Duration::from_millis(50);
/// What it may take by the wall clock, run-queue waits included.
const WALL_LIMIT: Duration = Duration::from_secs(1);

/// The two floods keep 6 threads busy: one test at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for `exit` to be raised; how long it took.
fn wait_raised(exit: &ExitSignal, within: Duration) -> Duration {
    let start = Instant::now();
    let mut pfd = libc::pollfd {
        fd: exit.eventfd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, within.as_millis() as i32) };
    assert_eq!(n, 1, "not raised within {within:?}");
    start.elapsed()
}

/// Stops both loops; how long that took by the wall clock and on the
/// busier loop's CPU (sampled until each loop ends: a thread's clock is
/// gone once it exits, so the last sample before that counts).
fn stop_loops(loops: [RunningLoop; 2]) -> (Duration, Duration) {
    let clocks = loops.each_ref().map(|l| l.cpu_clock().unwrap());
    let before = clocks.map(|c| clock_time(c).unwrap());
    let mut last = before;
    let start = Instant::now();
    for l in &loops {
        l.stop();
    }
    while loops.iter().any(|l| !l.is_finished()) && start.elapsed() < Duration::from_secs(5) {
        for (i, l) in loops.iter().enumerate() {
            if !l.is_finished() {
                if let Ok(t) = clock_time(clocks[i]) {
                    last[i] = t;
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for l in loops {
        l.join_within(Duration::from_secs(5)).unwrap();
    }
    let wall = start.elapsed();
    let on_cpu = (0..2).map(|i| last[i] - before[i]).max().unwrap();
    (wall, on_cpu)
}

/// A queue on the mock at `base`, sized for flooding.
fn queue(vq: &MockSplitQueue<GuestMemoryMmap>) -> Queue {
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_size(FLOOD_QUEUE_SIZE);
    q
}

struct Flood {
    _console: Console,
    _block: Block,
    floods: Vec<Flooder>,
}

/// Starts the two floods: a console's transmit queue (32 KiB chains, what
/// Linux writes at most) served by `event_loop`, and a disk's request
/// queue (4 MiB reads) served by `disk_loop`.
fn flood(
    mem: &GuestMemoryMmap,
    image: &TempFile,
    exit: &Arc<ExitSignal>,
    event_loop: &mut LoopThread,
) -> (Flood, LoopThread) {
    // The console: transmit queue at 0x1_0000, receive queue at 0x2_0000.
    let tx = MockSplitQueue::create(mem, GuestAddress(0x1_0000), 256);
    tx.add_desc_chains(
        &[RawDescriptor::from(SplitDescriptor::new(
            0x100_0000,
            32 << 10,
            0,
            0,
        ))],
        0,
    )
    .unwrap();
    let rx = MockSplitQueue::create(mem, GuestAddress(0x2_0000), 256);
    let (out, writer) =
        Output::spawn("hvc0", Box::new(io::sink()), 256 << 10, Seccomp::Off).unwrap();
    std::mem::forget(writer); // ends with the test process
    let mut console = Console::new(out).unwrap();
    event_loop
        .events()
        .add_subscriber(Box::new(console.event_handler().unwrap()));
    let irq = Arc::new(Interrupt::new().unwrap());
    console
        .activate(
            mem.clone(),
            feature(VIRTIO_F_VERSION_1),
            vec![rx.create_queue().unwrap(), queue(&tx)],
            irq,
        )
        .unwrap();

    // The disk: 4 x 1 MiB reads per request, request queue at 0x3_0000.
    let mut block = Block::new(&BlockConfig {
        path: image.as_path().into(),
        readonly: false,
        limit: RateLimit::default(),
    })
    .unwrap();
    let handler = block.event_handler().unwrap();
    // As the VMM builds it: the loop's stop flag is the one the disk's
    // requests watch between segments.
    let mut disk_loop = LoopThread::new(
        "disk0".into(),
        ThreadKind::DiskIo,
        Some(handler.stop_flag()),
        exit.clone(),
    )
    .unwrap();
    disk_loop.events().add_subscriber(Box::new(handler));
    let bq = MockSplitQueue::create(mem, GuestAddress(0x3_0000), 256);
    mem.write_slice(&[0u8; 16], GuestAddress(0x4_0000)).unwrap(); // VIRTIO_BLK_T_IN, sector 0
    let mut descs = vec![RawDescriptor::from(SplitDescriptor::new(
        0x4_0000,
        16,
        VRING_DESC_F_NEXT,
        1,
    ))];
    for i in 0..4u16 {
        descs.push(RawDescriptor::from(SplitDescriptor::new(
            0x200_0000 + (u64::from(i) << 20),
            1 << 20,
            VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
            i + 2,
        )));
    }
    descs.push(RawDescriptor::from(SplitDescriptor::new(
        0x4_1000,
        1,
        VRING_DESC_F_WRITE,
        0,
    )));
    bq.add_desc_chains(&descs, 0).unwrap();
    let irq = Arc::new(Interrupt::new().unwrap());
    block
        .activate(
            mem.clone(),
            feature(VIRTIO_F_VERSION_1),
            vec![queue(&bq)],
            irq,
        )
        .unwrap();

    let floods = vec![
        Flooder::start(
            mem.clone(),
            tx.avail_addr(),
            tx.used_addr(),
            FLOOD_QUEUE_SIZE,
            0,
            console.queue_events()[1].try_clone().unwrap(),
        ),
        Flooder::start(
            mem.clone(),
            bq.avail_addr(),
            bq.used_addr(),
            FLOOD_QUEUE_SIZE,
            0,
            block.queue_events()[0].try_clone().unwrap(),
        ),
    ];
    let f = Flood {
        _console: console,
        _block: block,
        floods,
    };
    (f, disk_loop)
}

fn setup() -> (GuestMemoryMmap, TempFile, Arc<ExitSignal>, LoopThread) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x400_0000)]).unwrap();
    let image = TempFile::new().unwrap();
    image.as_file().set_len(8 << 20).unwrap();
    let exit = Arc::new(ExitSignal::new().unwrap());
    let event_loop = LoopThread::new(
        "event-loop".into(),
        ThreadKind::EventLoop,
        None,
        exit.clone(),
    )
    .unwrap();
    (mem, image, exit, event_loop)
}

/// Lets the floods run until both devices have served plenty.
fn until_flooding(f: &Flood) {
    let deadline = Instant::now() + Duration::from_secs(10);
    // Two rings' worth served on each (the first ring is posted at once).
    while f
        .floods
        .iter()
        .any(|fl| fl.posted() < 3 * u64::from(FLOOD_QUEUE_SIZE))
    {
        assert!(Instant::now() < deadline, "the floods do not flow");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_is_served_within_50ms_while_the_guest_floods() {
    let _one = crate::sync::lock(&ONE_AT_A_TIME);
    let (mem, image, exit, mut event_loop) = setup();
    let (f, disk_loop) = flood(&mem, &image, &exit, &mut event_loop);
    let (signals, sigterm) = HostSignals::for_test(exit.clone(), None);
    event_loop.events().add_subscriber(Box::new(signals));
    let event_loop = event_loop.spawn(Seccomp::Off).unwrap();
    let disk_loop = disk_loop.spawn(Seccomp::Off).unwrap();
    until_flooding(&f);
    // SIGTERM: what the handler does is write this eventfd.
    let clock = event_loop.cpu_clock().unwrap();
    let cpu_before = clock_time(clock).unwrap();
    super::console::set_last_signal(libc::SIGTERM);
    sigterm.write(1).unwrap();
    let served = wait_raised(&exit, Duration::from_secs(5));
    let on_cpu = clock_time(clock).unwrap() - cpu_before;
    assert!(
        on_cpu < LIMIT && served < WALL_LIMIT,
        "SIGTERM served after {on_cpu:?} of the event loop's CPU time, {served:?} of wall time"
    );
    assert_eq!(exit.reason(), Some(VmExit::HostSignal(libc::SIGTERM)));
    let (stopped, stop_cpu) = stop_loops([event_loop, disk_loop]);
    assert!(
        stop_cpu < LIMIT && stopped < WALL_LIMIT,
        "the loops stopped after {stop_cpu:?} of CPU time, {stopped:?} of wall time"
    );
    eprintln!(
        "SIGTERM served in {served:?} ({on_cpu:?} on the loop's CPU), \
         loops stopped in {stopped:?} ({stop_cpu:?})"
    );
}

#[test]
fn the_exec_deadline_is_served_within_50ms_while_the_guest_floods() {
    let _one = crate::sync::lock(&ONE_AT_A_TIME);
    let (mem, image, exit, mut event_loop) = setup();
    let (f, disk_loop) = flood(&mem, &image, &exit, &mut event_loop);
    let limit = Duration::from_secs(2);
    let graceful = GracefulStop {
        press: Box::new(|_| false),
        timeout: Duration::from_secs(30),
    };
    let start = Instant::now();
    event_loop.events().add_subscriber(Box::new(
        Deadline::new(limit, limit, exit.clone(), graceful).unwrap(),
    ));
    let event_loop = event_loop.spawn(Seccomp::Off).unwrap();
    let disk_loop = disk_loop.spawn(Seccomp::Off).unwrap();
    until_flooding(&f);
    assert!(
        !exit.is_raised(),
        "the floods took longer than the deadline to start"
    );
    let posted: Vec<u64> = f.floods.iter().map(Flooder::posted).collect();
    // The loop's CPU time from the deadline on (sampled when this thread
    // wakes at the deadline, so never more than the loop really spent).
    let clock = event_loop.cpu_clock().unwrap();
    std::thread::sleep((start + limit).saturating_duration_since(Instant::now()));
    let cpu_at_deadline = clock_time(clock).unwrap();
    wait_raised(&exit, Duration::from_secs(5));
    let at = start.elapsed();
    let on_cpu = clock_time(clock).unwrap() - cpu_at_deadline;
    assert!(
        f.floods
            .iter()
            .zip(posted)
            .all(|(fl, before)| fl.posted() > before),
        "both floods went on until the deadline"
    );
    assert!(
        at >= limit && on_cpu < LIMIT && at < limit + WALL_LIMIT,
        "the deadline was served at {at:?}, after {on_cpu:?} of the event loop's CPU time"
    );
    assert_eq!(exit.reason(), Some(VmExit::TimedOut(limit)));
    let (stopped, stop_cpu) = stop_loops([event_loop, disk_loop]);
    assert!(
        stop_cpu < LIMIT && stopped < WALL_LIMIT,
        "the loops stopped after {stop_cpu:?} of CPU time, {stopped:?} of wall time"
    );
    eprintln!(
        "deadline of {limit:?} served at {at:?} ({on_cpu:?} on the loop's CPU), \
         loops stopped in {stopped:?} ({stop_cpu:?})"
    );
}
