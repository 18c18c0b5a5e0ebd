//! PCI function addresses: segment, bus, device, function.

use core::fmt;
use core::str::FromStr;

/// Devices per bus (5-bit device number, PCI Local Bus 3.0 §3.2.2.3.2).
pub const DEVICES_PER_BUS: u8 = 32;
/// Functions per device (3-bit function number, same section).
pub const FUNCTIONS_PER_DEVICE: u8 = 8;

/// The address of one PCI function. Fields are private so that device < 32 and function < 8
/// always hold; build one with [`Bdf::new`], [`Bdf::from_requester_id`] or by parsing
/// `"00:03.0"` / `"0001:00:03.0"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    segment: u16,
    bus: u8,
    device: u8,
    function: u8,
}

impl Bdf {
    /// `None` when `device >= 32` or `function >= 8`.
    pub const fn new(segment: u16, bus: u8, device: u8, function: u8) -> Option<Bdf> {
        if device >= DEVICES_PER_BUS || function >= FUNCTIONS_PER_DEVICE {
            return None;
        }
        Some(Bdf {
            segment,
            bus,
            device,
            function,
        })
    }

    /// The function addressed by a 16-bit requester ID (bus[15:8], device[7:3], function[2:0];
    /// PCIe Base 4.0 §2.2.6.2, VT-d 3.x §3.4.1 source-id) in `segment`.
    pub const fn from_requester_id(segment: u16, requester_id: u16) -> Bdf {
        Bdf {
            segment,
            bus: (requester_id >> 8) as u8,
            device: ((requester_id >> 3) & 0x1F) as u8,
            function: (requester_id & 0x7) as u8,
        }
    }

    /// The 16-bit requester ID this function puts on its transactions (the VT-d source-id).
    pub const fn requester_id(self) -> u16 {
        (self.bus as u16) << 8 | (self.device as u16) << 3 | self.function as u16
    }

    pub const fn segment(self) -> u16 {
        self.segment
    }
    pub const fn bus(self) -> u8 {
        self.bus
    }
    pub const fn device(self) -> u8 {
        self.device
    }
    pub const fn function(self) -> u8 {
        self.function
    }
    /// Device and function as the 8-bit `devfn` used by VT-d context tables.
    pub const fn devfn(self) -> u8 {
        self.device << 3 | self.function
    }
    /// The same device's function `function` (`None` when `function >= 8`).
    pub const fn with_function(self, function: u8) -> Option<Bdf> {
        Bdf::new(self.segment, self.bus, self.device, function)
    }
}

impl fmt::Display for Bdf {
    /// `00:03.0`, or `0001:00:03.0` outside segment 0 (the form `lspci` prints).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.segment != 0 {
            write!(f, "{:04x}:", self.segment)?;
        }
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// Why a BDF string did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseBdfError;

impl fmt::Display for ParseBdfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a PCI address like 00:03.0 or 0000:00:03.0")
    }
}

impl FromStr for Bdf {
    type Err = ParseBdfError;

    /// Accepts `BB:DD.F` and `SSSS:BB:DD.F` in hex, as `lspci -D` prints them.
    fn from_str(s: &str) -> Result<Bdf, ParseBdfError> {
        let (head, function) = s.rsplit_once('.').ok_or(ParseBdfError)?;
        let mut parts = head.rsplit(':');
        let device = parts.next().ok_or(ParseBdfError)?;
        let bus = parts.next().ok_or(ParseBdfError)?;
        let segment = parts.next();
        if parts.next().is_some() {
            return Err(ParseBdfError);
        }
        let hex = |text: &str, max_digits: usize| -> Result<u32, ParseBdfError> {
            if text.is_empty() || text.len() > max_digits {
                return Err(ParseBdfError);
            }
            u32::from_str_radix(text, 16).map_err(|_| ParseBdfError)
        };
        let segment = match segment {
            Some(text) => hex(text, 4)? as u16,
            None => 0,
        };
        let bus = hex(bus, 2)? as u8;
        let device = hex(device, 2)?;
        let function = hex(function, 1)?;
        if device > u8::MAX as u32 || function > u8::MAX as u32 {
            return Err(ParseBdfError);
        }
        Bdf::new(segment, bus, device as u8, function as u8).ok_or(ParseBdfError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn rejects_out_of_range_device_and_function() {
        assert!(Bdf::new(0, 0, 31, 7).is_some());
        assert!(Bdf::new(0, 0, 32, 0).is_none());
        assert!(Bdf::new(0, 0, 0, 8).is_none());
    }

    #[test]
    fn display_hides_segment_zero() {
        assert_eq!(Bdf::new(0, 0, 3, 0).unwrap().to_string(), "00:03.0");
        assert_eq!(Bdf::new(0, 0xab, 0x1f, 7).unwrap().to_string(), "ab:1f.7");
        assert_eq!(Bdf::new(1, 0, 3, 0).unwrap().to_string(), "0001:00:03.0");
    }

    #[test]
    fn requester_id_packs_bus_device_function() {
        // 02:1f.3 -> 0x02 << 8 | 0x1f << 3 | 3 = 0x02fb (PCIe Base §2.2.6.2).
        let bdf = Bdf::new(0, 2, 0x1f, 3).unwrap();
        assert_eq!(bdf.requester_id(), 0x02fb);
        assert_eq!(bdf.devfn(), 0xfb);
        assert_eq!(Bdf::from_requester_id(0, 0x02fb), bdf);
        assert_eq!(
            Bdf::from_requester_id(5, 0x0018).to_string(),
            "0005:00:03.0"
        );
    }

    #[test]
    fn parses_lspci_forms() {
        assert_eq!("00:03.0".parse(), Ok(Bdf::new(0, 0, 3, 0).unwrap()));
        assert_eq!(
            "0001:0a:1f.7".parse(),
            Ok(Bdf::new(1, 0xa, 0x1f, 7).unwrap())
        );
        for bad in [
            "",
            "00:03",
            "00:20.0",
            "00:03.8",
            "1:2:3:4.0",
            "00:03.x",
            "000:0:0.00",
        ] {
            assert_eq!(bad.parse::<Bdf>(), Err(ParseBdfError), "{bad}");
        }
    }
}
