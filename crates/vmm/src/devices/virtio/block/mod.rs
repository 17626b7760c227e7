//! virtio-blk over a raw disk image: [`device`] (the `VirtioDevice` and its
//! event-loop handler), [`request`] (parsing untrusted request chains),
//! [`backend`] (the image file) and [`coalesce`] (when to hold the
//! interrupt back).

pub mod backend;
pub mod coalesce;
pub mod device;
pub mod request;

pub use crate::devices::rate_limiter::RateLimit;
pub use device::{Block, BlockConfig, BlockHandler, Error};

/// The name Linux gives the `index`-th virtio disk: /dev/vda, /dev/vdb, ...
/// (in the order the devices are found; at most 26 here).
pub fn guest_device(index: usize) -> String {
    let letter = u8::try_from(index).map_or(b'?', |i| b'a'.saturating_add(i));
    format!("/dev/vd{}", letter as char)
}

impl BlockConfig {
    /// This disk as a `--disk` argument:
    /// `path=PATH[,readonly=on][,iops=N][,bw=N]` (commas in the path
    /// doubled, see [`crate::config::parse_kv`]).
    pub fn to_arg(&self) -> String {
        let ro = if self.readonly { ",readonly=on" } else { "" };
        let path = crate::config::kv_escape(&self.path.to_string_lossy());
        let mut arg = format!("path={path}{ro}");
        if let Some(n) = self.limit.ops {
            arg.push_str(&format!(",iops={n}"));
        }
        if let Some(n) = self.limit.bytes {
            arg.push_str(&format!(",bw={n}"));
        }
        arg
    }
}

#[cfg(test)]
mod tests;
