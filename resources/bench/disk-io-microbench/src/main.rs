//! Disk-read microbenchmark for issue 16's choice of disk I/O model: a
//! disk thread doing one pread64 per request (kvmini's model) against
//! io_uring keeping `depth` reads in flight (Cloud Hypervisor's), on the
//! same file (read it once first so it is in the page cache: kvmini does
//! not use O_DIRECT), same buffers, same random offsets, same sizes.
//! Figures and the conclusion: docs/architecture.md, "Disk I/O".
use io_uring::{opcode, types, IoUring};
use std::os::fd::AsRawFd;
use std::time::Instant;

fn rnd(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: disk-io-microbench FILE (a file of at least 16 MiB)");
    let f = std::fs::File::open(&path).unwrap();
    let size = f.metadata().unwrap().len();
    let fd = f.as_raw_fd();
    for &(bs, depth, total) in &[
        (4096usize, 16usize, 400_000usize),
        (4096, 128, 400_000),
        (1 << 20, 4, 4000),
        (1 << 20, 64, 4000),
    ] {
        let mut bufs: Vec<Vec<u8>> = (0..depth).map(|_| vec![0u8; bs]).collect();
        let blocks = size / bs as u64;
        // pread: one request after the other (a disk thread serving its ring).
        let mut s = 0x1234_5678u64;
        let t = Instant::now();
        for i in 0..total {
            let off = (rnd(&mut s) % blocks) * bs as u64;
            let b = &mut bufs[i % depth];
            // SAFETY: valid buffer of bs bytes.
            let n = unsafe { libc::pread64(fd, b.as_mut_ptr().cast(), bs, off as i64) };
            assert_eq!(n as usize, bs);
        }
        let pread_s = t.elapsed().as_secs_f64();
        // io_uring: keep `depth` reads in flight.
        let mut ring = IoUring::new(depth as u32 * 2).unwrap();
        let mut s = 0x1234_5678u64;
        let t = Instant::now();
        let (mut submitted, mut done) = (0usize, 0usize);
        let mut free: Vec<usize> = (0..depth).collect();
        while done < total {
            while submitted < total {
                let Some(slot) = free.pop() else { break };
                let off = (rnd(&mut s) % blocks) * bs as u64;
                let e = opcode::Read::new(types::Fd(fd), bufs[slot].as_mut_ptr(), bs as u32)
                    .offset(off)
                    .build()
                    .user_data(slot as u64);
                // SAFETY: the buffer outlives the request.
                unsafe { ring.submission().push(&e).unwrap() };
                submitted += 1;
            }
            ring.submit_and_wait(1).unwrap();
            for c in ring.completion() {
                assert_eq!(c.result() as usize, bs);
                free.push(c.user_data() as usize);
                done += 1;
            }
        }
        let uring_s = t.elapsed().as_secs_f64();
        let unit = if bs == 4096 { "IOPS" } else { "MiB/s" };
        let rate = |secs: f64| {
            if bs == 4096 {
                total as f64 / secs
            } else {
                (total * bs) as f64 / secs / (1 << 20) as f64
            }
        };
        println!(
            "bs={bs} depth={depth}: pread thread {:.0} {unit}, io_uring {:.0} {unit} (ratio io_uring/pread {:.2})",
            rate(pread_s), rate(uring_s), pread_s / uring_s
        );
    }
}
