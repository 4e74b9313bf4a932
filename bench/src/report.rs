//! Run results and how they are printed: a human table, or one JSON object per line (`--json`).
//!
//! The JSON field names are an interface (scripts, `compare`, the integration tests read them):
//! add fields freely, never rename or remove one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cpu::{CpuUsed, us_per_op};
use crate::hist::Recorder;

/// The result of one network workload run (`put`, `range`, …).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    pub workload: String,
    pub clients: u32,
    pub conns: u32,
    /// Successful operations.
    pub total: u64,
    /// Failed operations (all kinds).
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub duration_s: f64,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// This tool's own CPU (user + system, all threads) per successful operation.
    pub client_cpu_us_per_op: f64,
    /// The server's CPU per successful operation, with `--server-pid`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub server_cpu_us_per_op: Option<f64>,
    /// Peak RSS of the server process, with `--server-pid`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub server_peak_rss_bytes: Option<u64>,
    /// Per-second series, with `--sample`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub samples: Option<Vec<Sample>>,
}

/// One second of the `--sample` series.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// Whole seconds since the start of the run.
    pub second: u64,
    pub ops: u64,
    pub mean_us: f64,
    pub max_us: f64,
}

impl LoadReport {
    /// Builds the report of a run that lasted `elapsed` and used `cpu`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        workload: &str,
        clients: u32,
        conns: u32,
        rec: &Recorder,
        elapsed: Duration,
        cpu: CpuUsed,
        server_peak_rss_bytes: Option<u64>,
        with_samples: bool,
    ) -> Self {
        let total = rec.count();
        let secs = elapsed.as_secs_f64();
        LoadReport {
            workload: workload.to_owned(),
            clients,
            conns,
            total,
            errors: rec.error_total(),
            errors_by_kind: rec.errors().clone(),
            duration_s: secs,
            ops_per_sec: if secs > 0.0 { total as f64 / secs } else { 0.0 },
            mean_us: rec.mean_us(),
            p50_us: rec.quantile_us(0.50),
            p90_us: rec.quantile_us(0.90),
            p99_us: rec.quantile_us(0.99),
            p999_us: rec.quantile_us(0.999),
            max_us: rec.max_us(),
            client_cpu_us_per_op: us_per_op(cpu.client, total),
            server_cpu_us_per_op: cpu.server.map(|s| us_per_op(s, total)),
            server_peak_rss_bytes,
            samples: with_samples.then(|| {
                rec.samples()
                    .iter()
                    .enumerate()
                    .map(|(i, s)| Sample {
                        second: i as u64,
                        ops: s.ops,
                        mean_us: if s.ops == 0 {
                            0.0
                        } else {
                            s.sum_ns as f64 / s.ops as f64 / 1000.0
                        },
                        max_us: s.max_ns as f64 / 1000.0,
                    })
                    .collect()
            }),
        }
    }

    /// The human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Summary ({}):", self.workload);
        let _ = writeln!(
            s,
            "  Clients/conns: {} / {}",
            self.clients.max(1),
            self.conns.max(1)
        );
        let _ = writeln!(
            s,
            "  Total:         {} ok in {:.3} s",
            self.total, self.duration_s
        );
        let _ = writeln!(s, "  Throughput:    {:.1} ops/s", self.ops_per_sec);
        let _ = writeln!(
            s,
            "  Latency (µs):  mean {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_us(self.mean_us),
            fmt_us(self.p50_us),
            fmt_us(self.p90_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            fmt_us(self.max_us)
        );
        if self.errors == 0 {
            let _ = writeln!(s, "  Errors:        none");
        } else {
            let kinds: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(s, "  Errors:        {} ({})", self.errors, kinds.join(", "));
        }
        let _ = write!(
            s,
            "  CPU (µs/op):   client {:.2}",
            self.client_cpu_us_per_op
        );
        if let Some(server) = self.server_cpu_us_per_op {
            let _ = write!(s, "  server {server:.2}");
        }
        s.push('\n');
        if let Some(rss) = self.server_peak_rss_bytes {
            let _ = writeln!(s, "  Server peak RSS: {:.1} MiB", rss as f64 / 1048576.0);
        }
        if let Some(samples) = &self.samples {
            let mut t = Table::new(&["second", "ops", "mean µs", "max µs"]);
            for x in samples {
                t.row(vec![
                    x.second.to_string(),
                    x.ops.to_string(),
                    fmt_us(x.mean_us),
                    fmt_us(x.max_us),
                ]);
            }
            s.push_str(&t.render());
        }
        s
    }
}

/// One row of `disk fsync` / `disk wal` output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskReport {
    /// `ringkv`, `raft-engine` or `raw`.
    pub engine: String,
    /// The I/O implementation (`uring` or `std`); `raft-engine` always uses its own std I/O.
    pub io: String,
    pub writers: u32,
    /// Payload bytes per record (for `disk fsync`: the write size).
    pub record_size: u64,
    /// Records appended and acknowledged as durable.
    pub total: u64,
    pub duration_s: f64,
    pub ops_per_sec: f64,
    /// Payload bytes per second made durable.
    pub mb_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// fdatasync calls issued during the run.
    pub syncs: u64,
    /// `total / syncs`: how many records one fdatasync made durable on average.
    pub records_per_sync: f64,
    /// This process's CPU per record (the engine runs in-process, so this is the engine's).
    pub cpu_us_per_op: f64,
    pub errors: u64,
}

impl DiskReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: &str,
        io: &str,
        writers: u32,
        record_size: u64,
        rec: &Recorder,
        elapsed: Duration,
        syncs: u64,
        cpu: Duration,
    ) -> Self {
        let total = rec.count();
        let secs = elapsed.as_secs_f64();
        let ops = if secs > 0.0 { total as f64 / secs } else { 0.0 };
        DiskReport {
            engine: engine.to_owned(),
            io: io.to_owned(),
            writers,
            record_size,
            total,
            duration_s: secs,
            ops_per_sec: ops,
            mb_per_sec: ops * record_size as f64 / 1e6,
            p50_us: rec.quantile_us(0.50),
            p99_us: rec.quantile_us(0.99),
            p999_us: rec.quantile_us(0.999),
            max_us: rec.max_us(),
            syncs,
            records_per_sync: if syncs == 0 {
                0.0
            } else {
                total as f64 / syncs as f64
            },
            cpu_us_per_op: us_per_op(cpu, total),
            errors: rec.error_total(),
        }
    }

    pub const TABLE_HEADER: [&'static str; 12] = [
        "engine",
        "io",
        "writers",
        "record B",
        "ops/s",
        "MB/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "recs/sync",
        "cpu µs/op",
        "errors",
    ];

    pub fn table_row(&self) -> Vec<String> {
        vec![
            self.engine.clone(),
            self.io.clone(),
            self.writers.to_string(),
            self.record_size.to_string(),
            format!("{:.0}", self.ops_per_sec),
            format!("{:.2}", self.mb_per_sec),
            fmt_us(self.p50_us),
            fmt_us(self.p99_us),
            fmt_us(self.p999_us),
            format!("{:.2}", self.records_per_sync),
            format!("{:.2}", self.cpu_us_per_op),
            self.errors.to_string(),
        ]
    }
}

/// Renders many disk reports as one aligned table.
pub fn disk_table(rows: &[DiskReport]) -> String {
    let mut t = Table::new(&DiskReport::TABLE_HEADER);
    for r in rows {
        t.row(r.table_row());
    }
    t.render()
}

/// Microseconds with precision that suits their size.
pub fn fmt_us(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2}")
    } else if us < 1000.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// A plain text table: a header, rows, columns right-aligned except the first.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have as many cells as the header.
    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "table row width");
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(self.header[i].chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.header.len()).map(width).collect();
        let mut out = String::new();
        let mut line = |cells: &[String]| {
            for (i, c) in cells.iter().enumerate() {
                let pad = widths[i] - c.chars().count();
                if i == 0 {
                    out.push_str(c);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str("  ");
                    out.push_str(&" ".repeat(pad));
                    out.push_str(c);
                }
            }
            out.push('\n');
        };
        line(&self.header);
        for r in &self.rows {
            line(r);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn recorder(lat_us: &[u64], errors: &[&str]) -> Recorder {
        let t0 = Instant::now();
        let mut r = Recorder::new(Some(t0));
        for &us in lat_us {
            r.record(Duration::from_micros(us), t0);
        }
        for e in errors {
            r.error(e);
        }
        r
    }

    #[test]
    fn load_report_fields_and_json_names() {
        let rec = recorder(&[100, 200, 300, 400], &["Unavailable"]);
        let cpu = CpuUsed {
            client: Duration::from_micros(20),
            server: Some(Duration::from_micros(400)),
        };
        let r = LoadReport::new(
            "put",
            8,
            2,
            &rec,
            Duration::from_secs(2),
            cpu,
            Some(1 << 20),
            false,
        );
        assert_eq!(r.total, 4);
        assert_eq!(r.errors, 1);
        assert_eq!(r.ops_per_sec, 2.0);
        assert_eq!(r.client_cpu_us_per_op, 5.0);
        assert_eq!(r.server_cpu_us_per_op, Some(100.0));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "workload",
            "clients",
            "conns",
            "total",
            "errors",
            "ops_per_sec",
            "p50_us",
            "p90_us",
            "p99_us",
            "p999_us",
            "max_us",
            "server_cpu_us_per_op",
            "client_cpu_us_per_op",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert!(v.get("samples").is_none());
        let back: LoadReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn server_fields_absent_without_server_pid() {
        let rec = recorder(&[10], &[]);
        let cpu = CpuUsed {
            client: Duration::ZERO,
            server: None,
        };
        let r = LoadReport::new("range", 1, 1, &rec, Duration::from_secs(1), cpu, None, true);
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("server_cpu_us_per_op").is_none());
        assert_eq!(v["samples"][0]["ops"], 1);
        let text = r.to_text();
        assert!(text.contains("Errors:        none"), "{text}");
        assert!(!text.contains("server"), "{text}");
    }

    #[test]
    fn text_lists_errors_by_kind() {
        let rec = recorder(&[10], &["Unavailable", "Unavailable", "Internal"]);
        let cpu = CpuUsed {
            client: Duration::ZERO,
            server: Some(Duration::from_micros(7)),
        };
        let r = LoadReport::new("put", 1, 1, &rec, Duration::from_secs(1), cpu, None, false);
        let text = r.to_text();
        assert!(
            text.contains("Errors:        3 (Internal: 1, Unavailable: 2)"),
            "{text}"
        );
        assert!(text.contains("server 7.00"), "{text}");
    }

    #[test]
    fn disk_report_records_per_sync() {
        let rec = recorder(&[90; 100], &[]);
        let r = DiskReport::new(
            "ringkv",
            "std",
            4,
            256,
            &rec,
            Duration::from_secs(1),
            25,
            Duration::from_millis(1),
        );
        assert_eq!(r.records_per_sync, 4.0);
        assert_eq!(r.ops_per_sec, 100.0);
        assert_eq!(r.cpu_us_per_op, 10.0);
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "engine",
            "writers",
            "record_size",
            "ops_per_sec",
            "p50_us",
            "p99_us",
            "p999_us",
            "records_per_sync",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        let zero = DiskReport::new(
            "raw",
            "std",
            1,
            4096,
            &rec,
            Duration::ZERO,
            0,
            Duration::ZERO,
        );
        assert_eq!(zero.records_per_sync, 0.0);
        assert_eq!(zero.ops_per_sec, 0.0);
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["name", "n"]);
        t.row(vec!["a".into(), "1000".into()]);
        t.row(vec!["longer".into(), "2".into()]);
        assert_eq!(t.render(), "name       n\na       1000\nlonger     2\n");
    }

    #[test]
    fn us_formatting() {
        assert_eq!(fmt_us(1.234), "1.23");
        assert_eq!(fmt_us(123.45), "123.5");
        assert_eq!(fmt_us(12345.6), "12346");
    }
}
