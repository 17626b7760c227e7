//! Writes the seed corpus (`kvmini_fuzz::seeds`) to `corpus/<target>/`,
//! replacing what is there: `cargo run --example gen_corpus` in `fuzz/`.

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, _) in kvmini_fuzz::TARGETS {
        let dir = root.join(target);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(&dir)?;
    }
    let seeds = kvmini_fuzz::seeds::seeds();
    for (target, name, bytes) in &seeds {
        fs::write(root.join(target).join(name), bytes)?;
    }
    println!("{} seeds written under {}", seeds.len(), root.display());
    Ok(())
}
