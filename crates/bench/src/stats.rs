//! Summary statistics of repeated measurements: min, median, max.
//!
//! Warm-up runs never reach this module: the runner drops them before
//! recording (see [`super::Runner`]).

use serde::Serialize;

/// The summary of one cell's samples (at least one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// The samples in the order they were measured.
    pub samples: Vec<f64>,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none or one is not a
    /// finite number (a measurement that produced NaN is a failure, not a
    /// value to average away).
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            n,
            min: sorted[0],
            median,
            max: sorted[n - 1],
            samples: samples.to_vec(),
        })
    }
}

/// `value / base`, when both are usable (a zero or negative base has no
/// meaningful ratio).
pub fn ratio(value: f64, base: f64) -> Option<f64> {
    (base > 0.0 && value.is_finite() && base.is_finite()).then(|| value / base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (3, 1.0, 2.0, 3.0));
        assert_eq!(s.samples, [3.0, 1.0, 2.0], "measurement order is kept");
        let s = Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 4.0));
        let s = Summary::of(&[7.5]).unwrap();
        assert_eq!((s.n, s.min, s.median, s.max), (1, 7.5, 7.5, 7.5));
    }

    #[test]
    fn nothing_or_nan_is_no_summary() {
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
        assert!(Summary::of(&[f64::INFINITY]).is_none());
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(3.0, 1.5), Some(2.0));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }
}
