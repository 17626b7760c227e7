//! What a guest makes each VMM thread do passes that thread's filter: the
//! paths the smoke guests never reach (virtio drivers activating and
//! resetting devices on vCPU threads, disk requests on a disk thread,
//! console and network traffic on the event loop, rate limits), run on
//! real threads of each kind with their filters on. A forbidden call
//! ends the process (SIGSYS handler, exit 159), so each case runs in a
//! child process (this test binary, re-run for one test), and the test
//! checks the child's status.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

use super::{Seccomp, ThreadKind};
use crate::devices::bus::BusDevice;
use crate::devices::legacy::pvpanic::PvPanic;
use crate::devices::output::Output;
use crate::devices::rate_limiter::RateLimit;
use crate::devices::virtio::block::{Block, BlockConfig};
use crate::devices::virtio::console::Console;
use crate::devices::virtio::net::tap::FrameIo;
use crate::devices::virtio::net::{MacAddr, Net};
use crate::devices::virtio::{
    feature, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use crate::exit::{ExitSignal, VmExit};
use crate::thread;
use crate::vmm::guest_state::{GuestState, PVPANIC_REPORT};

const CHILD: &str = "KVMINI_SECCOMP_GUEST_PATHS_CHILD";

/// In the parent: re-runs test `name` in a child that does the work, and
/// checks it ended well. In the child: `work()`.
fn in_child(name: &str, work: impl FnOnce()) {
    if std::env::var_os(CHILD).is_some() {
        work();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{name}: the child failed ({:?}):\n{err}",
        out.status
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{name}: the child ran no test"
    );
}

/// Runs `body` on a thread of `kind` under its filter; panics propagate.
fn on_thread<T: Send + 'static>(kind: ThreadKind, body: impl FnOnce() -> T + Send + 'static) -> T {
    thread::spawn("filtered".into(), kind, Seccomp::On, body)
        .unwrap()
        .join_within(std::time::Duration::from_secs(60))
        .expect("the filtered thread failed")
}

/// A frame backend on a socketpair, read and written with read(2) and
/// write(2) as a TAP is (a datagram socket keeps frame boundaries).
struct SockIo(std::fs::File);

impl SockIo {
    fn new(sock: UnixDatagram) -> Self {
        Self(std::fs::File::from(std::os::fd::OwnedFd::from(sock)))
    }
}

impl AsRawFd for SockIo {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameIo for SockIo {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut &self.0, buf)
    }
    fn send(&self, frame: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut &self.0, frame)
    }
    fn set_offload(&self, _: u32) -> io::Result<()> {
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

fn queue(mem: &GuestMemoryMmap, at: u64) -> Queue {
    MockSplitQueue::create(mem, GuestAddress(at), 16)
        .create_queue()
        .unwrap()
}

fn image() -> TempFile {
    let f = TempFile::new().unwrap();
    f.as_file().set_len(1 << 20).unwrap();
    f
}

fn disk(f: &TempFile) -> Block {
    Block::new(&BlockConfig {
        path: f.as_path().into(),
        readonly: false,
        limit: RateLimit {
            ops: Some(1000),
            bytes: Some(1 << 30),
        },
    })
    .unwrap()
}

#[test]
fn a_guest_panic_reported_on_a_vcpu_thread() {
    // pvpanic's "panicked" is written by the guest on a vCPU thread; the
    // grace before the VM stops once started a thread there, which the
    // vCPU filter forbids (a Debian guest's panic ended kvmini with
    // SIGSYS, issue 15 + 16). The wait is now the control loop's.
    in_child(
        "seccomp::guest_paths::a_guest_panic_reported_on_a_vcpu_thread",
        || {
            use event_manager::{EventManager, SubscriberOps};
            let exit = Arc::new(ExitSignal::new().unwrap());
            let state = Arc::new(GuestState::new(exit.clone()).unwrap());
            let mut control = EventManager::<crate::vmm::Subscriber>::new().unwrap();
            control.add_subscriber(Box::new(state.panic_timer().unwrap()));
            let mut pvpanic = PvPanic::new(state.clone());
            on_thread(ThreadKind::Vcpu, move || {
                let mut b = [0u8];
                pvpanic.read(0, &mut b); // the driver probes
                pvpanic.write(0, &[b[0] & 1]); // "panicked"
            });
            let t = std::time::Instant::now();
            while !exit.is_raised() {
                assert!(t.elapsed().as_secs() < 20, "no stop after the panic");
                control.run_with_timeout(100).unwrap();
            }
            assert_eq!(
                exit.reason(),
                Some(VmExit::GuestPanic(PVPANIC_REPORT.into()))
            );
        },
    );
}

#[test]
fn drivers_activate_and_reset_devices_on_a_vcpu_thread() {
    in_child(
        "seccomp::guest_paths::drivers_activate_and_reset_devices_on_a_vcpu_thread",
        || {
            let mem = memory();
            let img = image();
            let block = disk(&img);
            let (out, _writer) =
                Output::spawn("hvc0", Box::new(io::sink()), 1 << 16, Seccomp::On).unwrap();
            let console = Console::new(out).unwrap();
            let (a, _b) = UnixDatagram::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            let mut net = Net::with_backend(
                "t0".into(),
                MacAddr([0x52, 0, 0, 0, 0, 1]),
                Arc::new(SockIo::new(a)),
            )
            .unwrap();
            net.set_bandwidth(Some(1 << 20));
            // Interrupts (eventfds) are made with the transports, on the
            // main thread.
            let mut irqs: Vec<Arc<Interrupt>> = (0..6)
                .map(|_| Arc::new(Interrupt::new().unwrap()))
                .collect();
            on_thread(ThreadKind::Vcpu, move || {
                let (mut block, mut console, mut net) = (block, console, net);
                let mut irq = || irqs.pop().unwrap();
                for _ in 0..2 {
                    let v1 = feature(VIRTIO_F_VERSION_1);
                    block
                        .activate(mem.clone(), v1, vec![queue(&mem, 0x1_0000)], irq())
                        .unwrap();
                    console
                        .activate(
                            mem.clone(),
                            v1,
                            vec![queue(&mem, 0x2_0000), queue(&mem, 0x3_0000)],
                            irq(),
                        )
                        .unwrap();
                    net.activate(
                        mem.clone(),
                        v1,
                        vec![queue(&mem, 0x4_0000), queue(&mem, 0x5_0000)],
                        irq(),
                    )
                    .unwrap();
                    block.reset();
                    console.reset();
                    net.reset();
                }
                // The last vCPU to stop drops the buses and their devices.
                drop((block, console, net));
            });
        },
    );
}

/// A virtio-fs driver's activation and reset talk to the vhost-user
/// backend (sendmsg/recvmsg, descriptors passed) from the vCPU thread that
/// wrote DRIVER_OK; the backend's signals reach the event loop.
#[test]
fn virtio_fs_activation_and_signals_under_the_filters() {
    in_child(
        "seccomp::guest_paths::virtio_fs_activation_and_signals_under_the_filters",
        || {
            use crate::devices::virtio::fs::{testing::Backend, Fs, FsBackend, FsConfig};
            use crate::vmm::ram::GuestRam;
            use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
            let backend = Backend::start();
            let ram = GuestRam::new_shared(&[(GuestAddress(0), 0x100_0000)]).unwrap();
            let mem = ram.mem().clone();
            let mut fs = Fs::new(&FsConfig {
                tag: "t".into(),
                backend: FsBackend::Socket(backend.socket.clone()),
                mount: None,
            })
            .unwrap();
            let handler = fs.event_handler().unwrap();
            let irqs: Vec<Arc<Interrupt>> = (0..2)
                .map(|_| Arc::new(Interrupt::new().unwrap()))
                .collect();
            let last = irqs[1].clone();
            let watch = last.clone();
            let fs = on_thread(ThreadKind::VcpuVhostUser, move || {
                let v1 = feature(VIRTIO_F_VERSION_1);
                for irq in irqs {
                    let queues = vec![queue(&mem, 0x1_0000), queue(&mem, 0x2_0000)];
                    fs.activate(mem.clone(), v1, queues, irq).unwrap();
                    fs.reset();
                }
                let queues = vec![queue(&mem, 0x1_0000), queue(&mem, 0x2_0000)];
                fs.activate(mem.clone(), v1, queues, last).unwrap();
                fs
            });
            // The backend's signal (written here as virtiofsd would) is
            // relayed under the loop's filter into the interrupt.
            fs.call_event(1).write(1).unwrap();
            // Made here, as the VMM makes its loop on the main thread.
            let mut events = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
            events.add_subscriber(Box::new(handler));
            on_thread(ThreadKind::EventLoop, move || {
                events.run_with_timeout(1000).unwrap();
            });
            assert_eq!(
                watch.status(),
                crate::devices::virtio::VIRTIO_MMIO_INT_VRING
            );
            drop(fs);
        },
    );
}

#[test]
fn disk_requests_on_a_disk_thread() {
    in_child(
        "seccomp::guest_paths::disk_requests_on_a_disk_thread",
        || {
            let mem = memory();
            let img = image();
            let mut block = disk(&img);
            let mut handler = block.event_handler().unwrap();
            let vq = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
            let mut descs = Vec::new();
            // OUT, IN, FLUSH, GET_ID, WRITE_ZEROES: each header at its own
            // address, data at 0x20_0000, status bytes at 0x30_0000.
            use crate::devices::virtio::block::request::{
                VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
                VIRTIO_BLK_T_WRITE_ZEROES,
            };
            let kinds = [
                VIRTIO_BLK_T_OUT,
                VIRTIO_BLK_T_IN,
                VIRTIO_BLK_T_FLUSH,
                VIRTIO_BLK_T_GET_ID,
                VIRTIO_BLK_T_WRITE_ZEROES,
            ];
            for (i, kind) in kinds.into_iter().enumerate() {
                let hdr = 0x10_0000 + 0x100 * i as u64;
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&kind.to_le_bytes());
                mem.write_slice(&h, GuestAddress(hdr)).unwrap();
                let status = 0x30_0000 + i as u64;
                let base = descs.len() as u16;
                descs.push(RawDescriptor::from(SplitDescriptor::new(
                    hdr,
                    16,
                    VRING_DESC_F_NEXT,
                    base + 1,
                )));
                let data_flags = match kind {
                    VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => VRING_DESC_F_WRITE,
                    _ => 0,
                };
                if kind != VIRTIO_BLK_T_FLUSH {
                    // Write-zeroes' range (sector 0, 8 sectors) lives apart
                    // from the data the other requests read and write.
                    let (at, len) = if kind == VIRTIO_BLK_T_WRITE_ZEROES {
                        let mut r = [0u8; 16];
                        r[8..12].copy_from_slice(&8u32.to_le_bytes());
                        mem.write_slice(&r, GuestAddress(0x21_0000)).unwrap();
                        (0x21_0000, 16)
                    } else {
                        (0x20_0000, 4096)
                    };
                    descs.push(RawDescriptor::from(SplitDescriptor::new(
                        at,
                        len,
                        data_flags | VRING_DESC_F_NEXT,
                        descs.len() as u16 + 1,
                    )));
                }
                descs.push(RawDescriptor::from(SplitDescriptor::new(
                    status,
                    1,
                    VRING_DESC_F_WRITE,
                    0,
                )));
            }
            vq.add_desc_chains(&descs, 0).unwrap();
            let features = block.avail_features();
            block
                .activate(
                    mem.clone(),
                    features,
                    vec![vq.create_queue().unwrap()],
                    Arc::new(Interrupt::new().unwrap()),
                )
                .unwrap();
            on_thread(ThreadKind::DiskIo, move || {
                handler.process();
                drop(handler);
                // What `process` does to hold an interrupt back for the
                // coalescing window (only once batches show depth and a
                // pace, which this one batch does not).
                std::thread::sleep(crate::devices::virtio::block::coalesce::MIN_WINDOW);
            });
            for i in 0..kinds.len() as u64 {
                let st: u8 = mem.read_obj(GuestAddress(0x30_0000 + i)).unwrap();
                assert_eq!(st, 0, "request {i} failed");
            }
            drop(block);
        },
    );
}

#[test]
fn console_and_network_traffic_on_the_event_loop() {
    in_child(
        "seccomp::guest_paths::console_and_network_traffic_on_the_event_loop",
        || {
            let mem = memory();
            let (out, writer) =
                Output::spawn("hvc0", Box::new(io::sink()), 1 << 16, Seccomp::On).unwrap();
            let mut console = Console::new(out).unwrap();
            let cvq = MockSplitQueue::create(&mem, GuestAddress(0x3_0000), 16);
            mem.write_slice(b"hello", GuestAddress(0x20_0000)).unwrap();
            cvq.add_desc_chains(
                &[RawDescriptor::from(SplitDescriptor::new(
                    0x20_0000, 5, 0, 0,
                ))],
                0,
            )
            .unwrap();
            let v1 = feature(VIRTIO_F_VERSION_1);
            let irq = || Arc::new(Interrupt::new().unwrap());
            console
                .activate(
                    mem.clone(),
                    v1,
                    vec![queue(&mem, 0x2_0000), cvq.create_queue().unwrap()],
                    irq(),
                )
                .unwrap();
            let chandler = console.event_handler().unwrap();
            let (a, b) = UnixDatagram::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            let mut net = Net::with_backend(
                "t0".into(),
                MacAddr([0x52, 0, 0, 0, 0, 1]),
                Arc::new(SockIo::new(a)),
            )
            .unwrap();
            net.set_bandwidth(Some(100));
            let mut nhandler = net.event_handler().unwrap();
            let txq = MockSplitQueue::create(&mem, GuestAddress(0x5_0000), 16);
            // Two 1000-byte frames at 100 B/s: the second is throttled (the
            // limiter arms its timer).
            let frame = vec![0u8; 12 + 1000];
            mem.write_slice(&frame, GuestAddress(0x40_0000)).unwrap();
            txq.add_desc_chains(
                &[
                    RawDescriptor::from(SplitDescriptor::new(0x40_0000, 1012, 0, 0)),
                    RawDescriptor::from(SplitDescriptor::new(0x40_0000, 1012, 0, 0)),
                ],
                0,
            )
            .unwrap();
            net.activate(
                mem.clone(),
                v1,
                vec![queue(&mem, 0x4_0000), txq.create_queue().unwrap()],
                irq(),
            )
            .unwrap();
            b.send(&[0u8; 12 + 60]).unwrap();
            on_thread(ThreadKind::EventLoop, move || {
                chandler.process();
                nhandler.process_tx();
                nhandler.process_rx();
                drop((chandler, nhandler));
            });
            let mut buf = [0u8; 2048];
            assert_eq!(b.recv(&mut buf).unwrap(), 1012, "one frame went out");
            assert!(writer.finish(None));
            drop((console, net));
        },
    );
}

/// `--net user`: the passt backend's reads and writes on its stream, a
/// frame the stream took only in part finished later, all on the event
/// loop with its filter (a `UnixStream`'s own I/O is `recvfrom`/`sendto`).
#[test]
fn user_mode_network_traffic_on_the_event_loop() {
    in_child(
        "seccomp::guest_paths::user_mode_network_traffic_on_the_event_loop",
        || {
            use std::io::{Read, Write};
            use std::os::unix::net::UnixStream;

            use crate::devices::virtio::net::passt::Passt;

            let mem = memory();
            let (a, mut b) = UnixStream::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            let io = Arc::new(Passt::for_tests(a, None));
            let mut net =
                Net::with_backend("user".into(), MacAddr([0x52, 0, 0, 0, 0, 2]), io.clone())
                    .unwrap();
            let mut handler = net.event_handler().unwrap();
            let rxq = MockSplitQueue::create(&mem, GuestAddress(0x4_0000), 16);
            let txq = MockSplitQueue::create(&mem, GuestAddress(0x5_0000), 16);
            rxq.add_desc_chains(
                &[RawDescriptor::from(SplitDescriptor::new(
                    0x30_0000,
                    2048,
                    VRING_DESC_F_WRITE,
                    0,
                ))],
                0,
            )
            .unwrap();
            // 16 frames of 60,000 bytes: more than the socket takes at once.
            let mut frame = vec![7u8; 12 + 60_000];
            frame[..12].fill(0);
            mem.write_slice(&frame, GuestAddress(0x40_0000)).unwrap();
            let chains: Vec<RawDescriptor> = (0..16)
                .map(|_| RawDescriptor::from(SplitDescriptor::new(0x40_0000, 60_012, 0, 0)))
                .collect();
            txq.add_desc_chains(&chains, 0).unwrap();
            net.activate(
                mem.clone(),
                feature(VIRTIO_F_VERSION_1),
                vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
                Arc::new(Interrupt::new().unwrap()),
            )
            .unwrap();
            let mut framed = 60u32.to_be_bytes().to_vec();
            framed.extend([1u8; 60]);
            b.write_all(&framed).unwrap();
            let reader = std::thread::spawn(move || {
                let mut got = vec![0u8; 16 * (4 + 60_000)];
                b.read_exact(&mut got).unwrap();
                got
            });
            on_thread(ThreadKind::EventLoop, move || {
                handler.process_rx();
                // Until every frame is out: the backend's partial frames
                // are sent from here, as on a writable socket.
                let start = std::time::Instant::now();
                while io.backlog() || handler.stats().is_some_and(|s| s.tx_frames < 16) {
                    assert!(start.elapsed().as_secs() < 30, "the frames never went out");
                    handler.process_tx();
                }
                drop(handler);
            });
            let got = reader.join().unwrap();
            assert!(got
                .chunks(4 + 60_000)
                .all(|f| f[..4] == 60_000u32.to_be_bytes()));
            let mut rx = [0u8; 72];
            mem.read_slice(&mut rx, GuestAddress(0x30_0000)).unwrap();
            assert_eq!(
                &rx[12..],
                &[1u8; 60],
                "the frame from passt reached the guest"
            );
            drop(net);
        },
    );
}

/// The VM's devices may be dropped on a vCPU thread (the last holder of
/// the bus): a user-mode NIC's backend must not kill or wait for its passt
/// there (the vCPU filter has neither; passt quits when the socket closes).
#[test]
fn a_user_mode_nic_dropped_on_a_vcpu_thread() {
    in_child(
        "seccomp::guest_paths::a_user_mode_nic_dropped_on_a_vcpu_thread",
        || {
            use std::os::unix::net::UnixStream;

            use crate::devices::virtio::net::passt::Passt;

            let (a, b) = UnixStream::pair().unwrap();
            let stand_in = std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap();
            let pid = stand_in.id();
            let net = Net::with_backend(
                "user".into(),
                MacAddr([0x52, 0, 0, 0, 0, 3]),
                Arc::new(Passt::for_tests(a, Some(stand_in))),
            )
            .unwrap();
            on_thread(ThreadKind::Vcpu, move || drop(net));
            drop(b);
            // SAFETY: kill(2) with a pid we spawned; it only sends a signal.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        },
    );
}
