//! Embeds kvmini's guest build recipes (`resources/`, but for benchmark test
//! data) into the binary, so an installed kvmini (`cargo install`, the
//! source tree gone) can still build its default guest: `src/guest.rs`
//! writes them out on first use. Generates `$OUT_DIR/resources.rs`: a list
//! of (relative path, executable, bytes).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, bool, PathBuf)>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = path
            .strip_prefix(base)
            .unwrap_or_else(|_| panic!("{} outside resources/", path.display()))
            .to_string_lossy()
            .into_owned();
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if meta.is_dir() {
            if rel != "bench/testdata" {
                walk(&path, base, out);
            }
        } else {
            out.push((rel, meta.permissions().mode() & 0o111 != 0, path));
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let resources = root.join("resources");
    println!("cargo:rerun-if-changed=resources");
    let mut files = Vec::new();
    walk(&resources, &resources, &mut files);
    let mut code = String::from("&[\n");
    for (rel, exec, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        code += &format!(
            "    ({rel:?}, {exec}, include_bytes!({:?})),\n",
            path.display().to_string()
        );
    }
    code += "]\n";
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("resources.rs");
    fs::write(&out, code).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}
