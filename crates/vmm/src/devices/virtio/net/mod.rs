//! virtio-net: [`device`] (the `VirtioDevice`, its queue worker and
//! event-loop handler), [`frame`] (the virtio-net header and untrusted
//! descriptor chains), its two backends behind [`tap::FrameIo`]: [`tap`] (a
//! Linux TAP interface) and [`passt`] (user-mode networking through a
//! passt process), and [`mac`] (MAC addresses).

pub mod device;
pub mod frame;
pub mod mac;
pub mod passt;
pub mod tap;

pub use device::{Error, Net, NetBackend, NetConfig, NetHandler, NetStats};
pub use mac::MacAddr;
pub use passt::PortForward;

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
