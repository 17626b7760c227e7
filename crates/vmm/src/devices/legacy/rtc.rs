//! The CMOS real-time clock (MC146818) at ports 0x70 (index) / 0x71 (data),
//! `PNP0B00` in the DSDT: the guest reads the host's wall clock (UTC) from
//! its first instruction, whether or not it has kvm-clock.
//!
//! Time registers are computed from the host clock at every read, plus an
//! offset the guest sets by writing them (`hwclock --systohc`). Status
//! registers: A = 32.768 kHz base, 1024 Hz rate, never "update in
//! progress"; B = as the guest last wrote it (24-hour BCD at reset;
//! binary and 12-hour modes are honoured); C = no interrupt flags (this RTC
//! raises none); D = battery good. The rest of the 128 bytes is plain RAM.
//! No rust-vmm crate models an x86 CMOS.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::devices::bus::BusDevice;

/// Ports: index (and NMI mask, bit 7) at +0, data at +1.
pub const RTC_PORT_LEN: u64 = 2;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
/// Century, where the FADT's `CENTURY` field says.
const CENTURY: u8 = 0x32;

/// Divider 010 (32.768 kHz), rate 0110 (1024 Hz), UIP clear.
const STATUS_A_VALUE: u8 = 0x26;
/// 24-hour mode (bit 1); BCD (bit 2 clear); no interrupts.
const STATUS_B_24H: u8 = 1 << 1;
const STATUS_B_BINARY: u8 = 1 << 2;
/// Valid RAM and time (the battery is fine).
const STATUS_D_VRT: u8 = 1 << 7;
/// In 12-hour mode, the hour's PM bit.
const HOUR_PM: u8 = 1 << 7;

const CMOS_SIZE: usize = 128;

/// Broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    /// 0 = Sunday.
    weekday: u8,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let (m, d) = (i64::from(month), i64::from(day));
    let y = if m <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_epoch(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u8,
        minute: (rem / 60 % 60) as u8,
        second: (rem % 60) as u8,
        // 1970-01-01 was a Thursday.
        weekday: (days + 4).rem_euclid(7) as u8,
    }
}

fn epoch_from_civil(c: &Civil) -> i64 {
    days_from_civil(c.year, c.month, c.day) * 86_400
        + i64::from(c.hour) * 3600
        + i64::from(c.minute) * 60
        + i64::from(c.second)
}

fn to_bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0x0f)
}

/// The host's wall clock, seconds since the epoch.
fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub struct Rtc {
    index: u8,
    cmos: [u8; CMOS_SIZE],
    /// Guest time minus host time, seconds (set by the guest's writes).
    offset: i64,
    now: fn() -> i64,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    pub fn new() -> Self {
        Self::with_clock(host_now)
    }

    fn with_clock(now: fn() -> i64) -> Self {
        let mut cmos = [0u8; CMOS_SIZE];
        cmos[usize::from(STATUS_B)] = STATUS_B_24H;
        Self {
            index: 0,
            cmos,
            offset: 0,
            now,
        }
    }

    fn status_b(&self) -> u8 {
        self.cmos[usize::from(STATUS_B)]
    }

    fn binary(&self) -> bool {
        self.status_b() & STATUS_B_BINARY != 0
    }

    fn encode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u8 {
        if self.binary() {
            v
        } else {
            from_bcd(v)
        }
    }

    fn guest_time(&self) -> Civil {
        civil_from_epoch((self.now)() + self.offset)
    }

    fn encode_hour(&self, hour: u8) -> u8 {
        if self.status_b() & STATUS_B_24H != 0 {
            return self.encode(hour);
        }
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | if hour >= 12 { HOUR_PM } else { 0 }
    }

    fn decode_hour(&self, raw: u8) -> u8 {
        if self.status_b() & STATUS_B_24H != 0 {
            return self.decode(raw);
        }
        let h = self.decode(raw & !HOUR_PM) % 12;
        if raw & HOUR_PM != 0 {
            h + 12
        } else {
            h
        }
    }

    fn read_register(&self, index: u8) -> u8 {
        let t = self.guest_time();
        let year = t.year.rem_euclid(100) as u8;
        let century = t.year.div_euclid(100).clamp(0, 99) as u8;
        match index {
            SECONDS => self.encode(t.second),
            MINUTES => self.encode(t.minute),
            HOURS => self.encode_hour(t.hour),
            WEEKDAY => self.encode(t.weekday + 1),
            DAY => self.encode(t.day),
            MONTH => self.encode(t.month),
            YEAR => self.encode(year),
            CENTURY => self.encode(century),
            STATUS_A => STATUS_A_VALUE,
            STATUS_C => 0,
            STATUS_D => STATUS_D_VRT,
            other => self.cmos[usize::from(other) % CMOS_SIZE],
        }
    }

    /// A write to a time register sets that field of the guest's clock.
    fn write_register(&mut self, index: u8, value: u8) {
        let mut t = self.guest_time();
        match index {
            SECONDS => t.second = self.decode(value).min(59),
            MINUTES => t.minute = self.decode(value).min(59),
            HOURS => t.hour = self.decode_hour(value).min(23),
            DAY => t.day = self.decode(value).clamp(1, 31),
            MONTH => t.month = self.decode(value).clamp(1, 12),
            YEAR => t.year = t.year.div_euclid(100) * 100 + i64::from(self.decode(value) % 100),
            CENTURY => t.year = i64::from(self.decode(value)) * 100 + t.year.rem_euclid(100),
            // Read-only, or derived from the date.
            WEEKDAY | STATUS_A | STATUS_C | STATUS_D => return,
            other => {
                self.cmos[usize::from(other) % CMOS_SIZE] = value;
                return;
            }
        }
        self.offset = epoch_from_civil(&t) - (self.now)();
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if let (1, Some(b)) = (offset, data.first_mut()) {
            *b = self.read_register(self.index);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 masks NMIs on real hardware; it selects no register.
            0 => self.index = value & 0x7f,
            1 => self.write_register(self.index, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01 15:04:05 UTC, a Tuesday.
    const T: i64 = 1_796_137_445;

    fn rtc() -> Rtc {
        Rtc::with_clock(|| T)
    }

    fn get(rtc: &mut Rtc, index: u8) -> u8 {
        rtc.write(0, &[index | 0x80]);
        let mut b = [0u8];
        rtc.read(1, &mut b);
        b[0]
    }

    fn set(rtc: &mut Rtc, index: u8, value: u8) {
        rtc.write(0, &[index]);
        rtc.write(1, &[value]);
    }

    #[test]
    fn calendar_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for secs in [0, 951_782_400, 1_709_164_800, T, 4_102_444_799] {
            assert_eq!(epoch_from_civil(&civil_from_epoch(secs)), secs);
        }
        let c = civil_from_epoch(T);
        assert_eq!((c.year, c.month, c.day, c.weekday), (2026, 12, 1, 2));
        assert_eq!((c.hour, c.minute, c.second), (15, 4, 5));
        // A leap day.
        let leap = civil_from_epoch(1_709_164_800);
        assert_eq!((leap.year, leap.month, leap.day), (2024, 2, 29));
    }

    #[test]
    fn reads_the_host_time_in_bcd() {
        let mut r = rtc();
        let got: Vec<u8> = [SECONDS, MINUTES, HOURS, WEEKDAY, DAY, MONTH, YEAR, CENTURY]
            .iter()
            .map(|&i| get(&mut r, i))
            .collect();
        assert_eq!(got, vec![0x05, 0x04, 0x15, 0x03, 0x01, 0x12, 0x26, 0x20]);
        assert_eq!(get(&mut r, STATUS_A) & 0x80, 0, "never update-in-progress");
        assert_eq!(get(&mut r, STATUS_B), STATUS_B_24H);
        assert_eq!(get(&mut r, STATUS_C), 0);
        assert_eq!(get(&mut r, STATUS_D), STATUS_D_VRT);
    }

    #[test]
    fn binary_and_12_hour_modes() {
        let mut r = rtc();
        set(&mut r, STATUS_B, STATUS_B_BINARY | STATUS_B_24H);
        assert_eq!(get(&mut r, HOURS), 15);
        assert_eq!(get(&mut r, YEAR), 26);
        set(&mut r, STATUS_B, 0);
        assert_eq!(get(&mut r, HOURS), 0x03 | HOUR_PM);
    }

    #[test]
    fn guest_sets_its_clock() {
        let mut r = rtc();
        set(&mut r, STATUS_B, 0x80 | STATUS_B_24H); // SET: the guest updates
        set(&mut r, YEAR, 0x30);
        set(&mut r, MONTH, 0x01);
        set(&mut r, DAY, 0x02);
        set(&mut r, HOURS, 0x03);
        set(&mut r, MINUTES, 0x04);
        set(&mut r, SECONDS, 0x05);
        set(&mut r, STATUS_B, STATUS_B_24H);
        let want = epoch_from_civil(&Civil {
            year: 2030,
            month: 1,
            day: 2,
            hour: 3,
            minute: 4,
            second: 5,
            weekday: 0,
        });
        assert_eq!(r.offset, want - T);
        assert_eq!(get(&mut r, YEAR), 0x30);
        assert_eq!(get(&mut r, WEEKDAY), 0x04, "2030-01-02 is a Wednesday");
    }

    #[test]
    fn ram_and_odd_accesses() {
        let mut r = rtc();
        set(&mut r, 0x40, 0xab);
        assert_eq!(get(&mut r, 0x40), 0xab);
        set(&mut r, STATUS_D, 0);
        assert_eq!(get(&mut r, STATUS_D), STATUS_D_VRT);
        let mut b = [0u8; 2];
        r.read(0, &mut b);
        assert_eq!(b, [0xff, 0xff], "the index port reads as open bus");
        r.write(1, &[]);
    }
}
