//! virtio-blk over a raw disk image: [`device`] (the `VirtioDevice` and its
//! event-loop handler), [`request`] (parsing untrusted request chains) and
//! [`backend`] (the image file).

pub mod backend;
pub mod device;
pub mod request;

pub use device::{Block, BlockConfig, BlockHandler, Error};

/// The name Linux gives the `index`-th virtio disk: /dev/vda, /dev/vdb, ...
/// (in the order the devices are found; at most 26 here).
pub fn guest_device(index: usize) -> String {
    let letter = u8::try_from(index).map_or(b'?', |i| b'a'.saturating_add(i));
    format!("/dev/vd{}", letter as char)
}

impl BlockConfig {
    /// This disk as a `--disk` argument: `path=PATH[,readonly=on]` (commas
    /// in the path doubled, see [`crate::config::parse_kv`]).
    pub fn to_arg(&self) -> String {
        let ro = if self.readonly { ",readonly=on" } else { "" };
        let path = crate::config::kv_escape(&self.path.to_string_lossy());
        format!("path={path}{ro}")
    }
}

#[cfg(test)]
mod tests;
