//! virtio-blk over a raw disk image: [`device`] (the `VirtioDevice` and its
//! event-loop handler), [`request`] (parsing untrusted request chains) and
//! [`backend`] (the image file).

pub mod backend;
pub mod device;
pub mod request;

pub use device::{Block, BlockConfig, BlockHandler, Error};

#[cfg(test)]
mod tests;
