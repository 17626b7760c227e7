//! virtio-net over a Linux TAP interface: [`device`] (the `VirtioDevice`,
//! its queue worker and event-loop handler), [`frame`] (the virtio-net
//! header and untrusted descriptor chains), [`tap`] (the TAP backend) and
//! [`mac`] (MAC addresses).

pub mod device;
pub mod frame;
pub mod mac;
pub mod tap;

pub use device::{Error, Net, NetConfig, NetHandler, NetStats};
pub use mac::MacAddr;

#[cfg(test)]
mod prop_tests;
#[cfg(test)]
mod tests;
