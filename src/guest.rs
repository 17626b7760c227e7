//! The project's default guest: kernel and initramfs built from Debian
//! packages by kvmini's build recipes on first use, then cached (see
//! docs/testing.md). Used when `run` or `exec` is given no `--kernel`.
//!
//! The recipes (`resources/`) travel inside the binary (see `build.rs`):
//! on first use they are written to the cache, under a directory named by
//! their content's hash, and run from there, so an installed kvmini needs
//! no source tree. `KVMINI_RESOURCES` points at another copy (a checkout
//! being worked on).

use std::fmt;
use std::fs;
use std::io::{self, BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The embedded recipes: (path relative to resources/, executable, bytes).
const RESOURCES: &[(&str, bool, &[u8])] = include!(concat!(env!("OUT_DIR"), "/resources.rs"));

/// `--quiet`: build progress is kept back and shown only if a build fails.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Lines of a failed build's output shown when progress was kept back.
const FAILURE_LINES: usize = 30;

/// Keeps first-use build progress off stderr (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Where the build scripts live: `$KVMINI_RESOURCES`, else the embedded
/// copy, written to the cache on first use.
pub fn resources_dir() -> Result<PathBuf, GuestError> {
    if let Some(dir) = std::env::var_os("KVMINI_RESOURCES") {
        return Ok(PathBuf::from(dir));
    }
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| unpack(&cache_root()).map_err(|e| e.to_string()))
        .clone()
        .map_err(GuestError::Unpack)
}

/// The artefact cache, as `resources/lib.sh` computes it.
fn cache_root() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("KVMINI_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("kvmini")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/kvmini")))
        .unwrap_or_else(|| std::env::temp_dir().join("kvmini-cache"))
}

/// FNV-1a over every embedded path, mode and content: names the unpacked
/// copy, so a kvmini with other recipes never uses this one's.
fn resources_hash() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, exec, bytes) in RESOURCES {
        for b in path
            .bytes()
            .chain([0, u8::from(*exec)])
            .chain(bytes.iter().copied())
            .chain((bytes.len() as u64).to_le_bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Writes the embedded recipes under `cache/resources/<hash>` unless they
/// are there already (written beside and renamed: never half a copy).
fn unpack(cache: &Path) -> io::Result<PathBuf> {
    let base = cache.join("resources");
    let dir = base.join(format!("{:016x}", resources_hash()));
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    fs::create_dir_all(&base)?;
    let tmp = base.join(format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    for (path, exec, bytes) in RESOURCES {
        let p = tmp.join(path);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&p, bytes)?;
        fs::set_permissions(
            &p,
            fs::Permissions::from_mode(if *exec { 0o755 } else { 0o644 }),
        )?;
    }
    fs::write(tmp.join(".complete"), "")?;
    match fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another kvmini unpacked the same recipes first.
        Err(_) if dir.join(".complete").is_file() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug)]
pub enum GuestError {
    Unpack(String),
    MissingScript(PathBuf),
    Spawn(PathBuf, std::io::Error),
    Failed(PathBuf, Option<i32>),
    NoOutput(PathBuf),
}

impl fmt::Display for GuestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unpack(e) => write!(
                f,
                "cannot write kvmini's guest build recipes into its cache ({e}); set \
                 KVMINI_CACHE_DIR to a writable directory"
            ),
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
    build(&resources_dir()?.join(relative))
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
    // Progress goes to our stderr as it comes (kept back with --quiet),
    // except the "cached: PATH" line every run would print: only first-use
    // builds are news.
    let quiet = QUIET.load(Ordering::Relaxed);
    let progress = child.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if quiet {
                    kept.push(line);
                } else if !line.contains("] cached: ") {
                    eprintln!("{line}");
                }
            }
            kept
        })
    });
    let out = child
        .wait_with_output()
        .map_err(|e| GuestError::Spawn(script.to_path_buf(), e))?;
    let kept = progress.and_then(|p| p.join().ok()).unwrap_or_default();
    if !out.status.success() {
        for line in &kept[kept.len().saturating_sub(FAILURE_LINES)..] {
            eprintln!("{line}");
        }
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
    log::info!("no --kernel given: using the default guest");
    Ok((default_kernel()?, default_initrd()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn every_recipe_travels_in_the_binary() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("resources");
        let mut on_disk = Vec::new();
        let mut stack = vec![src.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
                if p.is_dir() {
                    if rel != "bench/testdata" {
                        stack.push(p);
                    }
                } else {
                    on_disk.push((rel, fs::read(&p).unwrap()));
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<(String, Vec<u8>)> = RESOURCES
            .iter()
            .map(|(p, _, b)| (p.to_string(), b.to_vec()))
            .collect();
        embedded.sort();
        assert_eq!(
            embedded.iter().map(|e| &e.0).collect::<Vec<_>>(),
            on_disk.iter().map(|e| &e.0).collect::<Vec<_>>()
        );
        assert!(
            embedded == on_disk,
            "an embedded recipe differs from resources/"
        );
        assert!(RESOURCES
            .iter()
            .any(|(p, exec, _)| *p == "kernel/build.sh" && *exec));
    }

    #[test]
    fn unpacks_once_into_the_cache() {
        let cache = TempDir::new().unwrap();
        let dir = unpack(cache.as_path()).unwrap();
        let script = dir.join("kernel/build.sh");
        assert!(script.is_file());
        assert_ne!(
            fs::metadata(&script).unwrap().permissions().mode() & 0o111,
            0
        );
        assert_eq!(
            fs::read(dir.join("lib.sh")).unwrap(),
            fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/lib.sh")).unwrap()
        );
        // A second kvmini finds it there.
        fs::write(dir.join("marker"), "x").unwrap();
        assert_eq!(unpack(cache.as_path()).unwrap(), dir);
        assert!(dir.join("marker").exists());
    }
}
