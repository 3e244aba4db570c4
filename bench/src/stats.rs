//! Percentiles by nearest rank, shared by every subcommand.

use std::time::Duration;

/// The `p`-th percentile (0 < p <= 100) of `sorted` (ascending) by nearest rank: the smallest
/// value such that at least p% of the values are at or below it. None when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Values to summarize, kept in arrival order until asked for percentiles.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    values: Vec<f64>,
    sorted: bool,
}

impl Samples {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one value.
    pub fn push(&mut self, value: f64) {
        self.values.push(value);
        self.sorted = false;
    }

    /// Adds one duration, in milliseconds.
    pub fn push_ms(&mut self, d: Duration) {
        self.push(d.as_secs_f64() * 1e3);
    }

    /// Adds the values of `other`.
    pub fn extend(&mut self, other: Samples) {
        self.values.extend(other.values);
        self.sorted = false;
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `p`-th percentile by nearest rank.
    pub fn percentile(&mut self, p: f64) -> Option<f64> {
        if !self.sorted {
            self.values.sort_by(f64::total_cmp);
            self.sorted = true;
        }
        percentile(&self.values, p)
    }

    /// `p50 X{unit} p99 Y{unit}` with three decimals (`-` when there are no values).
    pub fn p50_p99(&mut self, unit: &str) -> String {
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.3}{unit}"));
        format!(
            "p50 {} p99 {}",
            show(self.percentile(50.0)),
            show(self.percentile(99.0))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.1), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 50.0), Some(3.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn samples_sort_lazily() {
        let mut s = Samples::new();
        for v in [5.0, 1.0, 4.0, 2.0, 3.0] {
            s.push(v);
        }
        assert_eq!(s.percentile(50.0), Some(3.0));
        s.push(0.5);
        assert_eq!(s.percentile(1.0), Some(0.5));
        assert_eq!(s.len(), 6);
        assert_eq!(s.p50_p99(" ms"), "p50 2.000 ms p99 5.000 ms");
        assert_eq!(Samples::new().p50_p99(""), "p50 - p99 -");
    }
}
