//! Ethernet MAC addresses: parsing, printing, and the default a NIC gets.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered address in QEMU's 52:54:00 range, different
    /// for each NIC of a VM (`index`) and, through `pid`, for VMs started
    /// at the same time on one bridge.
    pub fn generated(pid: u32, index: u8) -> Self {
        let [_, _, hi, lo] = pid.to_be_bytes();
        Self([0x52, 0x54, 0x00, hi, lo, index])
    }

    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = String;

    /// Six hex octets separated by `:`; a unicast address other than
    /// 00:00:00:00:00:00 (a guest NIC cannot have any other).
    fn from_str(s: &str) -> Result<Self, String> {
        let err = || format!("'{s}' is not a MAC address such as 52:54:00:12:34:56");
        let mut o = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut o {
            let p = parts.next().ok_or_else(err)?;
            if p.is_empty() || p.len() > 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        if o[0] & 1 != 0 {
            return Err(format!(
                "{s} is a multicast address; a NIC needs a unicast one"
            ));
        }
        if o == [0; 6] {
            return Err("00:00:00:00:00:00 is not a usable MAC address".into());
        }
        Ok(Self(o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let m: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        assert_eq!(m.octets(), [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(m.to_string(), "52:54:00:12:34:56");
        assert_eq!(
            "2:0:A:b:c:D".parse::<MacAddr>().unwrap().to_string(),
            "02:00:0a:0b:0c:0d"
        );
        for bad in [
            "",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "52:54:00:12:34:5g",
            "52:54:00:12:34:567",
            "52::00:12:34:56",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn generated_differ_per_nic_and_process() {
        let a = MacAddr::generated(4242, 0);
        assert_ne!(a, MacAddr::generated(4242, 1));
        assert_ne!(a, MacAddr::generated(4243, 0));
        // Unicast, locally administered, and parseable back.
        assert_eq!(a.0[0] & 3, 2);
        assert_eq!(a.to_string().parse::<MacAddr>().unwrap(), a);
    }
}
