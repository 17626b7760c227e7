//! The network workload: iperf3 (TCP, both directions) and ping from the
//! environment to an iperf3 server on the host, and what it takes to
//! connect each environment to the host:
//!
//! - vm: a TAP interface the bench creates (persistent, deleted after the
//!   run), the host side addressed from a private /30, the guest configured
//!   by the kernel's `ip=` parameter;
//! - container: a veth pair whose inner end lives in a network namespace
//!   held by a sleeping process of ours (crun joins it through
//!   `/proc/PID/ns/net`); killing the holder destroys the namespace and the
//!   pair with it, also if kvmini dies;
//! - host: loopback.
//!
//! Everything created is removed by [`Link`]'s and [`Server`]'s `Drop`, on
//! success and failure alike.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_val};

use super::env::{host_output, tree_command, EnvKind};
use kvmini_vmm::devices::virtio::net::tap::{interface_exists, tap_ifreq};

/// The markers between the parts of the network script's output.
pub const UP: &str = "@@kvmini-bench-iperf3-up";
pub const DOWN: &str = "@@kvmini-bench-iperf3-down";
pub const PING: &str = "@@kvmini-bench-ping";

/// Pings per measurement (0.2 s apart).
pub const PINGS: u32 = 5;

/// The workload script: iperf3 to the server ($BENCH_SERVER:$BENCH_PORT)
/// for `secs` s each way, then ping it. Each part is announced by a marker.
pub fn script(secs: u64) -> String {
    format!(
        "echo {UP}; iperf3 -c \"$BENCH_SERVER\" -p \"$BENCH_PORT\" -t {secs} -J || exit 1; \
         echo {DOWN}; iperf3 -c \"$BENCH_SERVER\" -p \"$BENCH_PORT\" -t {secs} -J -R || exit 1; \
         echo {PING}; ping -c {PINGS} -i 0.2 \"$BENCH_SERVER\""
    )
}

/// The lines after `marker` up to the next marker line.
fn section<'a>(lines: &[&'a str], marker: &str) -> Option<Vec<&'a str>> {
    let i = lines.iter().position(|l| l.trim() == marker)?;
    Some(
        lines[i + 1..]
            .iter()
            .take_while(|l| !l.starts_with("@@kvmini-bench-"))
            .copied()
            .collect(),
    )
}

/// The three network rows from the script's output: Mbit/s to the host,
/// Mbit/s from the host, ping RTT in ms.
pub fn parse(lines: &[&str]) -> Result<[f64; 3], String> {
    let part = |m: &str, what: &str| {
        section(lines, m)
            .map(|l| l.join("\n"))
            .ok_or_else(|| format!("the workload did not get to {what}"))
    };
    Ok([
        iperf3_mbits(&part(UP, "iperf3 to the host")?)?,
        iperf3_mbits(&part(DOWN, "iperf3 from the host (-R)")?)?,
        ping_avg_ms(&part(PING, "ping")?)?,
    ])
}

/// What the iperf3 client received (`-J` output): for a normal run the
/// server's count of what arrived, for `-R` what the client got; Mbit/s.
pub fn iperf3_mbits(text: &str) -> Result<f64, String> {
    let start = text.find('{').ok_or("iperf3 printed no JSON report")?;
    let end = text.rfind('}').ok_or("iperf3's JSON report is cut short")?;
    if end < start {
        return Err("iperf3's JSON report is cut short".into());
    }
    let v: Value = serde_json::from_str(&text[start..=end])
        .map_err(|e| format!("cannot parse iperf3's JSON report: {e}"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or("iperf3's report has no end.sum_received.bits_per_second")?;
    if bps <= 0.0 {
        return Err("iperf3 moved no data".into());
    }
    Ok(bps / 1e6)
}

/// The average of busybox's (or iputils') "min/avg/max... = a/b/c ms".
pub fn ping_avg_ms(text: &str) -> Result<f64, String> {
    let line = text
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .ok_or_else(|| {
            let loss = text.lines().find(|l| l.contains("packet loss"));
            format!(
                "ping got no replies ({})",
                loss.map_or("no summary", str::trim)
            )
        })?;
    let figures = line
        .split('=')
        .nth(1)
        .ok_or_else(|| format!("unexpected ping summary '{line}'"))?;
    figures
        .trim()
        .split('/')
        .nth(1)
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("unexpected ping summary '{line}'"))
}

/// linux/capability.h.
const CAP_NET_ADMIN: u32 = 12;

/// Whether we have CAP_NET_ADMIN (effective), from /proc/self/status.
pub fn has_net_admin() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// The reason shown when we lack CAP_NET_ADMIN.
pub const NEEDS_NET_ADMIN: &str = "needs CAP_NET_ADMIN (run as root)";

/// An IPv4 network: address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Net {
    fn mask(len: u8) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
    }

    /// Whether the two networks share any address.
    pub fn overlaps(&self, other: &Net) -> bool {
        let m = Self::mask(self.len.min(other.len));
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    /// The n-th address in the network (n = 1: the first host).
    pub fn host(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(n))
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(Self::mask(self.len))
    }
}

/// The routes in a /proc/net/route text (little-endian hex fields),
/// without default routes (they overlap everything).
pub fn parse_routes(text: &str) -> Vec<Net> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_le_bytes);
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = hex(f.get(1)?)?;
            let mask = u32::from_be_bytes(hex(f.get(7)?)?);
            (mask != 0).then(|| Net {
                addr: Ipv4Addr::from(dest),
                len: mask.leading_ones() as u8,
            })
        })
        .collect()
}

/// The first pool of /30s we take from: 10.213.0.0/16.
const POOL: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
const POOL_SLOTS: u32 = 1 << 14;

/// `n` private /30s from 10.213.0.0/16 that overlap none of `taken`,
/// starting at slot `start` (e.g. from our pid, so two benches at once do
/// not pick the same ones).
pub fn choose_nets(taken: &[Net], start: u32, n: usize) -> Result<Vec<Net>, String> {
    let mut out = Vec::new();
    for i in 0..POOL_SLOTS {
        let slot = (start.wrapping_add(i)) % POOL_SLOTS;
        let net = Net {
            addr: Ipv4Addr::from(u32::from(POOL) + slot * 4),
            len: 30,
        };
        if !taken.iter().any(|t| t.overlaps(&net)) {
            out.push(net);
            if out.len() == n {
                return Ok(out);
            }
        }
    }
    Err("no free /30 in 10.213.0.0/16: every one overlaps a host route".into())
}

/// /30s for this run, avoiding the host's routes.
pub fn host_nets(n: usize) -> Result<Vec<Net>, String> {
    let routes = std::fs::read_to_string("/proc/net/route")
        .map(|t| parse_routes(&t))
        .unwrap_or_default();
    choose_nets(&routes, std::process::id().wrapping_mul(2), n)
}

/// `ip ARGS` on the host, or inside the network namespace of `pid`.
fn ip(netns_pid: Option<u32>, args: &[&str]) -> Result<(), String> {
    match netns_pid {
        None => host_output("ip", args).map(drop),
        Some(pid) => {
            let t = pid.to_string();
            let mut a = vec!["-t", t.as_str(), "-n", "ip"];
            a.extend_from_slice(args);
            host_output("nsenter", &a).map(drop)
        }
    }
}

/// Makes the TAP interface `name` persistent (`persist`) or not: a new one
/// is created by attaching; dropping persistence on close deletes it.
fn tap_persist(name: &str, persist: bool) -> Result<(), String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| format!("cannot open /dev/net/tun: {e}"))?;
    let mut ifr = tap_ifreq(name).map_err(|e| e.to_string())?;
    // SAFETY: TUNSETIFF reads and may update `ifr`, a valid ifreq that lives
    // across the call; `file` is an open TUN fd.
    if unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(format!(
            "cannot attach TAP {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: TUNSETPERSIST takes its argument by value; `file` is the TUN
    // fd attached to `name` just above.
    if unsafe { ioctl_with_val(&file, libc::TUNSETPERSIST, u64::from(persist) as _) } < 0 {
        return Err(format!(
            "cannot set TAP {name} persistence: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Whether interface `name` is administratively up (IFF_UP in its flags).
fn interface_up(name: &str) -> bool {
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & libc::IFF_UP as u32 != 0)
}

/// How an environment reaches the host, and what to undo afterwards.
#[derive(Debug, Default)]
pub struct Link {
    /// The address of the host side (the iperf3 server binds to it).
    pub host: Option<Ipv4Addr>,
    /// VM: the TAP, and the guest's `ip=` kernel parameter.
    pub tap: Option<String>,
    pub guest_ip_param: Option<String>,
    /// Container: the namespace holder (crun joins its namespace).
    holder: Option<Child>,
    /// The host-side veth end, deleted in case the holder's death has not
    /// taken it away yet.
    veth: Option<String>,
}

impl Link {
    /// Container: `/proc/HOLDER/ns/net`.
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.holder
            .as_ref()
            .map(|h| PathBuf::from(format!("/proc/{}/ns/net", h.id())))
    }

    /// The link for `kind`, using `net` (a /30) where one is needed; `root`
    /// is the tree whose busybox holds the container's namespace.
    pub fn create(kind: EnvKind, net: Net, tag: &str, root: &Path) -> Result<Self, String> {
        let mut link = Link::default();
        match kind {
            EnvKind::Host => {
                if !interface_up("lo") {
                    return Err("the host's loopback interface is down (ip link set lo up)".into());
                }
                link.host = Some(Ipv4Addr::LOCALHOST);
            }
            EnvKind::Vm => {
                let tap = format!("kbt{tag}");
                if interface_exists(&tap) {
                    return Err(format!("interface {tap} exists already"));
                }
                tap_persist(&tap, true)?;
                link.tap = Some(tap.clone());
                let (h, g) = (net.host(1), net.host(2));
                ip(
                    None,
                    &["addr", "add", &format!("{h}/{}", net.len), "dev", &tap],
                )?;
                ip(None, &["link", "set", &tap, "up"])?;
                link.host = Some(h);
                link.guest_ip_param = Some(format!("ip={g}::{h}:{}::eth0:off", net.netmask()));
            }
            EnvKind::Container => {
                let veth = format!("kbv{tag}");
                if interface_exists(&veth) {
                    return Err(format!("interface {veth} exists already"));
                }
                let mut holder = Command::new(root.join("bin/busybox"));
                holder
                    .args(["sleep", "2147483"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                // SAFETY: the closure runs in the child between fork and
                // exec and only makes two system calls (async-signal-safe),
                // touching no memory of ours.
                unsafe {
                    holder.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                            || libc::unshare(libc::CLONE_NEWNET) != 0
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let holder = holder
                    .spawn()
                    .map_err(|e| format!("cannot start a network namespace holder: {e}"))?;
                let pid = holder.id();
                link.holder = Some(holder);
                // Both ends are made inside the new namespace, where the
                // peer's automatic name (veth0) cannot clash (busybox ip
                // ignores `peer name`); the host end is renamed and moved
                // out to our namespace.
                let me = std::process::id().to_string();
                ip(Some(pid), &["link", "add", "eth0", "type", "veth"])?;
                ip(Some(pid), &["link", "set", "veth0", "name", &veth])?;
                ip(Some(pid), &["link", "set", &veth, "netns", &me])?;
                link.veth = Some(veth.clone());
                let (h, c) = (net.host(1), net.host(2));
                ip(
                    None,
                    &["addr", "add", &format!("{h}/{}", net.len), "dev", &veth],
                )?;
                ip(None, &["link", "set", &veth, "up"])?;
                ip(
                    Some(pid),
                    &["addr", "add", &format!("{c}/{}", net.len), "dev", "eth0"],
                )?;
                ip(Some(pid), &["link", "set", "eth0", "up"])?;
                ip(Some(pid), &["link", "set", "lo", "up"])?;
                link.host = Some(h);
            }
        }
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        if let Some(v) = self.veth.take() {
            // Gone with the namespace normally; the kernel may lag.
            let deadline = Instant::now() + Duration::from_secs(2);
            while interface_exists(&v) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if interface_exists(&v) {
                if let Err(e) = ip(None, &["link", "del", &v]) {
                    eprintln!("kvmini bench: warning: cannot delete veth {v}: {e}");
                }
            }
        }
        if let Some(t) = self.tap.take() {
            if let Err(e) = tap_persist(&t, false) {
                eprintln!("kvmini bench: warning: cannot delete TAP {t}: {e}");
            }
        }
    }
}

/// An iperf3 server on the host (the tree's iperf3), stopped on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

/// Whether /proc/net/tcp lists a listening socket on `port`.
pub fn listening(tcp_table: &str, port: u16) -> bool {
    let want = format!(":{port:04X}");
    tcp_table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1).is_some_and(|a| a.ends_with(&want)) && f.get(3) == Some(&"0A")
    })
}

impl Server {
    pub fn start(root: &Path, addr: Ipv4Addr) -> Result<Self, String> {
        let port = TcpListener::bind((addr, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("cannot find a free port on {addr}: {e}"))?
            .port();
        let mut cmd = tree_command(root, "iperf3").ok_or("the root filesystem has no iperf3")?;
        cmd.args(["-s", "-B", &addr.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and
        // makes one system call (async-signal-safe).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the iperf3 server: {e}"))?;
        let mut server = Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
            if listening(&table, port) {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "the iperf3 server exited ({status}): {}",
                    err.trim()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the iperf3 server is not listening on {addr}:{port}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP_JSON: &str = include_str!("../../../resources/bench/testdata/iperf3-up.json");
    const DOWN_JSON: &str = include_str!("../../../resources/bench/testdata/iperf3-reverse.json");
    const PING_TXT: &str = include_str!("../../../resources/bench/testdata/ping-busybox.txt");

    #[test]
    fn iperf3_reports() {
        // Real iperf3 3.12 -J reports (loopback, 1 s).
        let up = iperf3_mbits(UP_JSON).unwrap();
        assert!((up - 18742.223739129307).abs() < 1e-6, "{up}");
        let down = iperf3_mbits(DOWN_JSON).unwrap();
        assert!((down - 18017.248994024143).abs() < 1e-6, "{down}");
        assert!(iperf3_mbits("iperf3: error").is_err());
        let e = iperf3_mbits("{\"start\": {}, \"error\": \"unable to connect to server\"}");
        assert_eq!(e.unwrap_err(), "iperf3: unable to connect to server");
    }

    #[test]
    fn ping_summaries() {
        assert_eq!(ping_avg_ms(PING_TXT).unwrap(), 0.095);
        // iputils' wording.
        let iputils = "rtt min/avg/max/mdev = 0.031/0.045/0.060/0.012 ms";
        assert_eq!(ping_avg_ms(iputils).unwrap(), 0.045);
        let lost = "3 packets transmitted, 0 packets received, 100% packet loss";
        assert!(ping_avg_ms(lost).unwrap_err().contains("100% packet loss"));
        assert!(ping_avg_ms("round-trip min/avg/max = x").is_err());
    }

    #[test]
    fn whole_output() {
        let out = format!("{UP}\n{UP_JSON}\n{DOWN}\n{DOWN_JSON}\n{PING}\n{PING_TXT}");
        let lines: Vec<&str> = out.lines().collect();
        let [a, b, c] = parse(&lines).unwrap();
        assert!(a > 18000.0 && b > 18000.0 && a != b);
        assert_eq!(c, 0.095);
        let cut = format!("{UP}\n{UP_JSON}\n");
        let lines: Vec<&str> = cut.lines().collect();
        assert!(parse(&lines).unwrap_err().contains("-R"));
        assert!(script(3).contains("-t 3 -J -R"));
    }

    #[test]
    fn routes_and_address_choice() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            br0\t0000D50A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let routes = parse_routes(table);
        assert_eq!(
            routes,
            [
                Net {
                    addr: Ipv4Addr::new(192, 168, 0, 0),
                    len: 24
                },
                Net {
                    addr: Ipv4Addr::new(10, 213, 0, 0),
                    len: 16
                }
            ]
        );
        // All of 10.213/16 is taken: no choice.
        assert!(choose_nets(&routes, 0, 2).is_err());
        let some = [Net {
            addr: Ipv4Addr::new(10, 213, 0, 0),
            len: 29,
        }];
        let nets = choose_nets(&some, 0, 2).unwrap();
        assert_eq!(nets[0].addr, Ipv4Addr::new(10, 213, 0, 8));
        assert_eq!(nets[1].addr, Ipv4Addr::new(10, 213, 0, 12));
        assert_eq!(nets[0].host(1), Ipv4Addr::new(10, 213, 0, 9));
        assert_eq!(nets[0].netmask(), Ipv4Addr::new(255, 255, 255, 252));
        // The start wraps around the pool.
        let last = choose_nets(&[], POOL_SLOTS - 1, 2).unwrap();
        assert_eq!(last[0].addr, Ipv4Addr::new(10, 213, 255, 252));
        assert_eq!(last[1].addr, Ipv4Addr::new(10, 213, 0, 0));
    }

    #[test]
    fn listening_sockets() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue\n\
           0: 0100007F:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
           1: 0100007F:1452 0100007F:9C40 01 00000000:00000000 00:00000000 00000000\n";
        assert!(listening(t, 0x1451));
        assert!(!listening(t, 0x1452), "established, not listening");
        assert!(!listening(t, 80));
    }

    #[test]
    fn a_link_without_privilege_fails_cleanly() {
        assert!(
            Path::new("/dev/net/tun").exists(),
            "TEST NOT RUN: /dev/net/tun is missing (sudo modprobe tun)"
        );
        assert!(
            !interface_exists("kbtt0"),
            "TEST NOT RUN: interface kbtt0 exists already"
        );
        let net = choose_nets(&[], 0, 1).unwrap()[0];
        let create = || Link::create(EnvKind::Vm, net, "t0", Path::new("/nonexistent"));
        // As root, this thread drops CAP_NET_ADMIN: the refusal is real.
        let result = if kvmini_vmm::testutil::thread_has_net_admin() {
            kvmini_vmm::testutil::without_net_admin(create)
        } else {
            create()
        };
        let e = result.expect_err("a TAP was made without CAP_NET_ADMIN");
        assert!(
            e.contains("Operation not permitted") || e.contains("Permission denied"),
            "not refused for lack of privilege: {e}"
        );
        assert!(!interface_exists("kbtt0"));
    }

    #[test]
    fn a_failed_container_link_leaves_nothing() {
        // No busybox to hold the namespace: fails before creating anything,
        // with or without privilege.
        let net = choose_nets(&[], 0, 1).unwrap()[0];
        let e = Link::create(EnvKind::Container, net, "t1", Path::new("/nonexistent")).unwrap_err();
        assert!(e.contains("namespace holder"), "{e}");
        assert!(!interface_exists("kbvt1"));
    }

    #[test]
    fn host_link_is_loopback() {
        assert!(!interface_up("no-such-if0"));
        assert!(
            interface_up("lo"),
            "TEST NOT RUN: the loopback interface is down in this network namespace \
             (ip link set lo up)"
        );
        let l = Link::create(
            EnvKind::Host,
            choose_nets(&[], 0, 1).unwrap()[0],
            "x",
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(l.host, Some(Ipv4Addr::LOCALHOST));
        assert!(l.tap.is_none() && l.netns_path().is_none());
    }
}
