//! Helper processes that serve a device's backend (passt for `--net user`,
//! virtiofsd for `--fs dir=`): each gets one socket of ours as its
//! descriptor 3, nothing else of ours, and dies with kvmini.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// A helper program: `$env` when set (it must be an executable file), else
/// `name` on `PATH`, else the first of `fallbacks` that is there. The error
/// says where it looked.
pub fn find_program(env: &str, name: &str, fallbacks: &[&str]) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!("{env}={} is not an executable file", p.display()))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            let mut places = vec!["PATH".to_string()];
            places.extend(fallbacks.iter().map(|f| f.to_string()));
            format!("no {name} in {}", places.join(" or "))
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Spawns `cmd` with `sock` as its descriptor 3 and no other descriptor of
/// ours beyond the stdio `cmd` sets up: a helper faces the guest (or the
/// network) and must not hold the VM's irqfds, ioeventfds or disks. In a
/// process group of its own (a Ctrl-C at the terminal is for kvmini, which
/// may be shutting a guest down gracefully), and killed if kvmini dies
/// while it still runs as kvmini's user; once it changed its user the
/// kernel drops that, and it quits when its socket's other end closes
/// (ours closes with us, however we go).
pub fn spawn_with_fd3(cmd: &mut Command, sock: &impl AsRawFd) -> io::Result<Child> {
    // The socket at 3 or above in the child, where its stdio set-up (which
    // runs before pre_exec) cannot clobber it.
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the caller owns returns a new
    // one (or -1), which OwnedFd then owns alone.
    let theirs = unsafe {
        let fd = libc::fcntl(sock.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        OwnedFd::from_raw_fd(fd)
    };
    let fd = theirs.as_raw_fd();
    cmd.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only async-signal-safe functions (dup2, fcntl, close_range, prctl) on
    // descriptors of the child.
    unsafe {
        cmd.pre_exec(move || {
            // The socket at 3, inheritable (dup2 clears CLOEXEC; with fd
            // already 3 clear it by hand).
            if fd == 3 {
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(io::Error::last_os_error());
            }
            // Close-on-exec rather than closed: std's own pipe, which
            // tells the parent that exec failed, must live until the exec.
            if libc::syscall(
                libc::SYS_close_range,
                4u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(theirs);
    child
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::process::Stdio;

    /// A helper that cannot be started is an error here, not a silent
    /// child exit.
    #[test]
    fn a_failed_exec_is_reported() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut cmd = Command::new("/nonexistent/helper");
        let e = spawn_with_fd3(&mut cmd, &a).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    /// The helper has our socket at 3 and nothing of ours above it.
    #[test]
    fn the_socket_is_fd_3_and_nothing_else_leaks() {
        let (a, _b) = UnixStream::pair().unwrap();
        let _other = std::fs::File::open("/dev/null").unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "ls /proc/self/fd; readlink /proc/self/fd/3"])
            .stdout(Stdio::piped());
        let out = spawn_with_fd3(&mut cmd, &a)
            .unwrap()
            .wait_with_output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines: Vec<&str> = text.lines().collect();
        let target = lines.pop().unwrap();
        assert!(target.starts_with("socket:"), "{text}");
        // 0-2, 3, and the descriptor ls has open on /proc/self/fd.
        let fds: Vec<u32> = lines.iter().map(|l| l.parse().unwrap()).collect();
        assert!(fds.iter().filter(|&&f| f > 3).count() <= 1, "{fds:?}");
    }
}
