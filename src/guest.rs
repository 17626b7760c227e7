//! The project's default guest: kernel and initramfs built from Debian
//! packages by the scripts in `resources/` on first use, then cached (see
//! docs/testing.md). Used when `kvmini run` is given no `--kernel`.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the build scripts live: `$KVMINI_RESOURCES`, else the source tree
/// kvmini was built from.
pub fn resources_dir() -> PathBuf {
    std::env::var_os("KVMINI_RESOURCES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("resources"))
}

#[derive(Debug)]
pub enum GuestError {
    MissingScript(PathBuf),
    Spawn(PathBuf, std::io::Error),
    Failed(PathBuf, Option<i32>),
    NoOutput(PathBuf),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingScript(p) => write!(
                f,
                "no --kernel given and the default guest's build script '{}' is missing; \
                 pass --kernel, or set KVMINI_RESOURCES to kvmini's resources/ directory",
                p.display()
            ),
            Self::Spawn(p, e) => write!(f, "cannot run '{}': {e}", p.display()),
            Self::Failed(p, code) => write!(
                f,
                "building the default guest failed ('{}' exited {}); see its messages above",
                p.display(),
                code.map_or("on a signal".into(), |c| c.to_string())
            ),
            Self::NoOutput(p) => write!(f, "'{}' printed no existing artefact path", p.display()),
        }
    }
}

impl std::error::Error for GuestError {}

/// Runs `resources/<relative>` (a build script: progress on our stderr,
/// cached artefact path last on stdout) and returns that path, which must
/// exist. The tests build their artefacts through this too.
pub fn build_artefact(relative: &str) -> Result<PathBuf, GuestError> {
    build(&resources_dir().join(relative))
}

fn build(script: &Path) -> Result<PathBuf, GuestError> {
    if !script.is_file() {
        return Err(GuestError::MissingScript(script.to_path_buf()));
    }
    let mut child = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| GuestError::Spawn(script.to_path_buf(), e))?;
    // Progress goes to our stderr as it comes, except the "cached: PATH"
    // line every run would print: only first-use builds are news.
    let progress = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if !line.contains("] cached: ") {
                    eprintln!("{line}");
                }
            }
        })
    });
    let out = child
        .wait_with_output()
        .map_err(|e| GuestError::Spawn(script.to_path_buf(), e))?;
    if let Some(p) = progress {
        let _ = p.join();
    }
    if !out.status.success() {
        return Err(GuestError::Failed(script.to_path_buf(), out.status.code()));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.exists())
        .ok_or_else(|| GuestError::NoOutput(script.to_path_buf()))
}

/// The default guest kernel (vmlinux: no decompression, the fastest boot),
/// built or taken from the cache.
pub fn default_kernel() -> Result<PathBuf, GuestError> {
    Ok(build_artefact("kernel/build.sh")?.join("vmlinux"))
}

/// The default guest's busybox initramfs, built or taken from the cache.
pub fn default_initrd() -> Result<PathBuf, GuestError> {
    build_artefact("rootfs/build-initramfs.sh")
}

/// The default guest: [`default_kernel`] and [`default_initrd`].
pub fn default_guest() -> Result<(PathBuf, PathBuf), GuestError> {
    log::info!(
        "no --kernel given: using the default guest from {}",
        resources_dir().display()
    );
    Ok((default_kernel()?, default_initrd()?))
}
