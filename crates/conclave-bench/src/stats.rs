//! Percentiles and the report: a table for people, one JSON document with `--json`.

use serde_json::{json, Map, Value};

/// The `p`-th percentile (0–100) of sorted values, nearest rank.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency summary of nanosecond samples, in milliseconds.
pub fn latency(samples: &mut [u64]) -> Value {
    samples.sort_unstable();
    let ms = |ns: u64| (ns as f64 / 1e6 * 1000.0).round() / 1000.0;
    json!({
        "samples": samples.len(),
        "min_ms": ms(samples.first().copied().unwrap_or(0)),
        "p50_ms": ms(percentile(samples, 50.0)),
        "p90_ms": ms(percentile(samples, 90.0)),
        "p99_ms": ms(percentile(samples, 99.0)),
        "p999_ms": ms(percentile(samples, 99.9)),
        "max_ms": ms(samples.last().copied().unwrap_or(0)),
    })
}

/// One scenario's results, in the order they were added.
#[derive(Default)]
pub struct Report {
    rows: Vec<(String, Value)>,
}

impl Report {
    /// Adds a result.
    pub fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.rows.push((key.to_owned(), value.into()));
    }

    /// The results as a JSON object.
    pub fn to_json(&self, scenario: &str, command: &str) -> Value {
        let mut m = Map::new();
        m.insert("scenario".into(), scenario.into());
        m.insert("command".into(), command.into());
        m.insert("date".into(), chrono_like_now().into());
        for (k, v) in &self.rows {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// The results as a two-column table.
    pub fn to_table(&self, scenario: &str) -> String {
        let mut out = format!("{scenario}\n");
        let width = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.rows {
            out.push_str(&format!("  {k:<width$}  {}\n", show(v)));
        }
        out
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={}", show(v))).collect::<Vec<_>>().join(" "),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() != 0.0 => format!("{f:.3}"),
            Some(f) if n.is_f64() => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The UTC date and time, for the record.
fn chrono_like_now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[7], 99.9), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }
}
