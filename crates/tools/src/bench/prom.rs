//! The server's own measurements: its `/metrics` page (Prometheus text
//! format) fetched with a bare HTTP/1.0 GET, and quantile estimates from a
//! histogram's buckets.

use anyhow::Context as _;
use serde::Serialize;
use std::{net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fetches `http://addr/metrics`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        // HTTP/1.0: the answer ends with the connection, never chunked.
        stream
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .context("GET /metrics timed out")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no HTTP header in the /metrics answer")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.split_whitespace().nth(1) == Some("200"),
        "GET /metrics: {}",
        head.lines().next().unwrap_or_default()
    );
    Ok(body.to_string())
}

/// One histogram series: cumulative counts by upper bound (seconds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// (le, cumulative count), ascending; the last bound is +Inf.
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// The series `name` whose labels include every pair of `labels`, from
    /// a metrics page; empty if it has no sample yet.
    pub fn parse(page: &str, name: &str, labels: &[(&str, &str)]) -> Histogram {
        let prefix = format!("{name}_bucket{{");
        let mut buckets = Vec::new();
        for line in page.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((inside, value)) = rest.rsplit_once('}') else {
                continue;
            };
            let pairs: Vec<(&str, &str)> = inside
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
                .collect();
            if !labels.iter().all(|want| pairs.contains(want)) {
                continue;
            }
            let le = match pairs.iter().find(|(k, _)| *k == "le").map(|(_, v)| *v) {
                Some("+Inf") => f64::INFINITY,
                Some(v) => match v.parse() {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                None => continue,
            };
            if let Ok(count) = value.trim().parse::<f64>() {
                buckets.push((le, count));
            }
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Histogram { buckets }
    }

    /// What was recorded after `earlier` (same series, a later scrape).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0)
        };
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, c)| (*le, (c - before(*le)).max(0.0)))
                .collect(),
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.last().map(|(_, c)| *c as u64).unwrap_or(0)
    }

    /// The upper bound (seconds) of the bucket holding the q-th quantile
    /// (0–1): the true quantile is at most this. None without samples.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count() as f64;
        if total == 0.0 {
            return None;
        }
        let want = (q * total).ceil().max(1.0);
        self.buckets
            .iter()
            .find(|(_, c)| *c >= want)
            .map(|(le, _)| *le)
    }

    /// p50/p99 bucket bounds, for the report.
    pub fn estimate(&self) -> BucketEstimate {
        let ms = |q| {
            self.quantile_bound(q)
                .map(|s| if s.is_finite() { s * 1000.0 } else { s })
        };
        BucketEstimate {
            count: self.count(),
            p50_le_ms: ms(0.5),
            p99_le_ms: ms(0.99),
        }
    }
}

/// Quantiles from a server histogram, as bucket upper bounds: "p50 ≤ 5 ms"
/// means the median fell in the bucket ending at 5 ms. None: no sample
/// (in JSON, null; also for the +Inf bucket).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BucketEstimate {
    pub count: u64,
    pub p50_le_ms: Option<f64>,
    pub p99_le_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# TYPE jobvisor_control_effect_seconds histogram
jobvisor_control_effect_seconds_bucket{op="pause",le="0.001"} 1
jobvisor_control_effect_seconds_bucket{op="pause",le="0.005"} 90
jobvisor_control_effect_seconds_bucket{op="pause",le="0.01"} 99
jobvisor_control_effect_seconds_bucket{op="pause",le="+Inf"} 100
jobvisor_control_effect_seconds_sum{op="pause"} 0.3
jobvisor_control_effect_seconds_count{op="pause"} 100
jobvisor_control_effect_seconds_bucket{op="cancel",le="0.001"} 0
jobvisor_control_effect_seconds_bucket{op="cancel",le="+Inf"} 3
"#;

    #[test]
    fn reads_one_series_and_its_quantile_bounds() {
        let h = Histogram::parse(PAGE, "jobvisor_control_effect_seconds", &[("op", "pause")]);
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_bound(0.5), Some(0.005));
        assert_eq!(h.quantile_bound(0.99), Some(0.01));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
        let c = Histogram::parse(PAGE, "jobvisor_control_effect_seconds", &[("op", "cancel")]);
        assert_eq!(c.count(), 3);
        let none = Histogram::parse(PAGE, "jobvisor_control_effect_seconds", &[("op", "x")]);
        assert_eq!(none.quantile_bound(0.5), None);
    }

    #[test]
    fn subtracts_an_earlier_scrape() {
        let later = Histogram::parse(PAGE, "jobvisor_control_effect_seconds", &[("op", "pause")]);
        let earlier = Histogram {
            buckets: vec![
                (0.001, 1.0),
                (0.005, 50.0),
                (0.01, 50.0),
                (f64::INFINITY, 50.0),
            ],
        };
        let d = later.since(&earlier);
        assert_eq!(d.count(), 50);
        assert_eq!(d.quantile_bound(0.5), Some(0.005));
    }
}
