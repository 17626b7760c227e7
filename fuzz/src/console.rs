//! The `console` target: virtio-console's transmit queue into a sink that
//! records what reaches the host.
//!
//! Input: `flags u8` (bit 0: the host writer fails, as when the reader of
//! kvmini's stdout went away), the transmit queue ([`QueueSpec`], at most
//! [`MAX_QUEUE`] entries), pokes ([`guest::parse_pokes`]: the output),
//! then ops until the input ends, one byte each (`% 3`): `0` run the
//! queue, `1` publish one more entry, `2` publish all. The queue runs
//! once more at the end. The receive queue is valid and empty.
//!
//! Checks: the generic ones of [`guest`], and stricter: the device changes
//! no guest byte but the transmit used ring (never its buffers, never
//! the receive queue); used lengths are 0; the host gets exactly the bytes
//! of the chains in used-ring order when every one of them is readable, in
//! guest memory and clear of the rings (at most their bytes otherwise),
//! and nothing once its writer failed.
//!
//! The queue is capped at [`MAX_QUEUE`] entries because one available
//! entry can make the device copy gigabytes (an indirect table looping on
//! one large buffer: issue 16, item 2); 16 keeps the worst input to a few
//! seconds and the rest fast.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use kvmini::devices::output::Output;
use kvmini::devices::virtio::console::{Console, MAX_CHAIN_BYTES};
use kvmini::devices::virtio::queue::Stop;
use kvmini::devices::virtio::{feature, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use kvmini::seccomp::Seccomp;

use crate::guest::{self, Driver, Layout, QueueInfo, QueueSpec, Report};
use crate::input::Input;

pub const MAX_QUEUE: u16 = 16;
/// The sink keeps this much of the output; beyond it, only the length.
const KEEP: usize = 1 << 20;

#[derive(Default)]
struct Recorded {
    head: Vec<u8>,
    len: u64,
}

impl Recorded {
    fn push(&mut self, b: &[u8]) {
        let room = KEEP.saturating_sub(self.head.len()).min(b.len());
        self.head.extend_from_slice(&b[..room]);
        self.len += b.len() as u64;
    }
}

#[derive(Clone)]
struct Sink {
    out: Arc<Mutex<Recorded>>,
    broken: bool,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.out.lock().unwrap_or_else(|e| e.into_inner()).push(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn run(data: &[u8]) {
    run_report(data);
}

/// [`run`], telling what happened.
pub fn run_report(data: &[u8]) -> Report {
    let mut inp = Input::new(data);
    let broken = inp.bool();
    let tx_spec = QueueSpec::parse(&mut inp, 0, MAX_QUEUE);
    let rx_spec = QueueSpec::parse(&mut Input::new(&[]), 1, 1);
    let pokes = guest::parse_pokes(&mut inp);

    guest::with_memory(|mem| {
        guest::apply_pokes(mem, &pokes);
        let sink = Sink {
            out: Arc::default(),
            broken,
        };
        // The device writes into a buffer a writer thread drains into the
        // sink, as in kvmini; room enough that backpressure never pauses it.
        let output = Output::new("fuzz", 64 << 20).expect("console output");
        let writer = output
            .start_writer(Box::new(sink.clone()), Seccomp::Off)
            .expect("console writer");
        let mut console = Console::new(output).expect("virtio-console");
        let handler = console.event_handler().expect("console event handler");
        let txq = tx_spec.install(mem);
        let rxq = rx_spec.install(mem);
        let mut driver = Driver::new(&tx_spec);
        let tx = QueueInfo::new(mem, tx_spec, &txq);
        // What each chain would print, if all of it can be printed and
        // nothing changes those bytes first (the device's used ring
        // writes, the driver's avail.idx).
        let changing = [tx.used_ring(), tx.avail_ring()];
        let expected: Vec<(u16, Option<Vec<u8>>)> = tx
            .chains
            .iter()
            .map(|(&h, c)| {
                let stable = !c.readable().any(|r| changing.iter().any(|x| r.overlaps(x)));
                // One chain prints at most MAX_CHAIN_BYTES; the rest is dropped.
                let bytes = c.read_all(mem, KEEP).filter(|_| stable).map(|mut b| {
                    b.truncate(MAX_CHAIN_BYTES);
                    b
                });
                (h, bytes)
            })
            .collect();
        let layout = Layout::new(mem, vec![tx]);
        let irq = Arc::new(Interrupt::new().expect("eventfd"));
        console
            .activate(
                mem.clone(),
                feature(VIRTIO_F_VERSION_1),
                vec![rxq, txq],
                irq,
            )
            .expect("activate virtio-console");

        while !inp.is_empty() {
            match inp.u8() % 3 {
                0 => {
                    handler.process();
                }
                1 => driver.publish(mem, 1),
                _ => driver.publish(mem, u16::MAX),
            }
        }
        while handler.process() == Some(Stop::Budget) {}
        // Everything the device buffered reaches the sink.
        assert!(writer.finish(None), "the writer did not finish");

        layout.check(mem, false);
        layout.check_offered(mem, 0, &driver);
        let out = sink.out.lock().unwrap_or_else(|e| e.into_inner());
        let report = layout.report(mem, out.len);
        if broken {
            assert_eq!(out.len, 0, "a failed writer was written");
        }
        if !layout.strict || broken {
            return report;
        }
        let tx = &layout.queues[0];
        let (_, used) = tx.used_entries(mem);
        let mut want = Vec::new();
        let mut exact = true;
        let mut bound = 0u64;
        for &(id, len) in &used {
            assert_eq!(len, 0, "transmit head {id} returned with length {len}");
            let chain = &tx.chains[&(id as u16)];
            bound += chain
                .readable()
                .map(|r| r.end - r.start)
                .sum::<u64>()
                .min(MAX_CHAIN_BYTES as u64);
            match expected.iter().find(|(h, _)| u32::from(*h) == id) {
                Some((_, Some(b))) if exact && want.len() + b.len() <= KEEP => {
                    want.extend_from_slice(b)
                }
                _ => exact = false,
            }
        }
        assert!(
            out.len <= bound,
            "{} bytes of output from chains of {bound} readable bytes",
            out.len
        );
        if exact {
            assert_eq!(out.len, want.len() as u64, "output length");
            assert!(out.head == want, "output differs from the chains' bytes");
        }
        report
    })
}
