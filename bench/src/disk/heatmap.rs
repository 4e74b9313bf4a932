//! The SVG heat map of `disk wal --sweep`: one panel per engine, record size across, writers
//! down; colour is log(ops/s) on a scale shared by all panels, and each cell is labelled with
//! its ops/s and records per fdatasync.

use std::path::Path;

use plotters::prelude::*;

use crate::report::DiskReport;

/// Writes the heat map of `rows` (any mix of engines, writers and sizes) to `path`.
pub fn write_heatmap_svg(path: &Path, rows: &[DiskReport]) -> Result<(), String> {
    let mut engines: Vec<&str> = Vec::new();
    let mut sizes: Vec<u64> = Vec::new();
    let mut writers: Vec<u32> = Vec::new();
    for r in rows {
        if !engines.contains(&r.engine.as_str()) {
            engines.push(&r.engine);
        }
        if !sizes.contains(&r.record_size) {
            sizes.push(r.record_size);
        }
        if !writers.contains(&r.writers) {
            writers.push(r.writers);
        }
    }
    if rows.is_empty() {
        return Err("no results to plot".to_owned());
    }
    sizes.sort_unstable();
    writers.sort_unstable();
    let positive = rows.iter().map(|r| r.ops_per_sec).filter(|v| *v > 0.0);
    let lo = positive.clone().fold(f64::INFINITY, f64::min).max(1.0).ln();
    let hi = positive.fold(0.0, f64::max).max(1.0).ln();

    let panel_w = 110 * sizes.len() as u32 + 110;
    let panel_h = 42 * writers.len() as u32 + 110;
    let root = SVGBackend::new(path, (panel_w * engines.len() as u32, panel_h)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| format!("{}: cannot draw: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((1, engines.len()));
    let (nx, ny) = (sizes.len() as f64, writers.len() as f64);
    for (panel, engine) in panels.iter().zip(&engines) {
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("{engine}: ops/s (records per fdatasync)"),
                ("sans-serif", 16),
            )
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-0.5..nx - 0.5, -0.5..ny - 0.5)
            .map_err(|e| err(&e))?;
        let label = |values: &dyn Fn(usize) -> String, v: &f64, n: usize| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                values(i as usize)
            } else {
                String::new()
            }
        };
        let size_label = |i: usize| human_bytes(sizes[i]);
        let writer_label = |i: usize| writers[i].to_string();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(sizes.len())
            .y_labels(writers.len())
            .x_desc("record size")
            .y_desc("writers")
            .x_label_formatter(&|v| label(&size_label, v, sizes.len()))
            .y_label_formatter(&|v| label(&writer_label, v, writers.len()))
            .draw()
            .map_err(|e| err(&e))?;
        let cells: Vec<(f64, f64, &DiskReport)> = rows
            .iter()
            .filter(|r| r.engine == *engine)
            .map(|r| {
                let x = sizes.iter().position(|s| *s == r.record_size).unwrap_or(0) as f64;
                let y = writers.iter().position(|w| *w == r.writers).unwrap_or(0) as f64;
                (x, y, r)
            })
            .collect();
        chart
            .draw_series(cells.iter().map(|(x, y, r)| {
                let t = if hi > lo {
                    (r.ops_per_sec.max(1.0).ln() - lo) / (hi - lo)
                } else {
                    1.0
                };
                Rectangle::new([(x - 0.5, y - 0.5), (x + 0.5, y + 0.5)], heat(t).filled())
            }))
            .map_err(|e| err(&e))?;
        chart
            .draw_series(cells.iter().map(|(x, y, r)| {
                Text::new(
                    format!("{} ({:.1})", human_count(r.ops_per_sec), r.records_per_sync),
                    (x - 0.42, *y),
                    ("sans-serif", 11).into_font().color(&BLACK),
                )
            }))
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A light-yellow → dark-orange → red ramp for `t` in 0..=1 (text stays readable on it).
fn heat(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(255.0, 230.0), lerp(245.0, 90.0), lerp(200.0, 60.0))
}

/// 64, 256, 1K, 64K, 1M.
pub fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{}K", n >> 10)
    } else {
        n.to_string()
    }
}

/// 950, 12.3k, 1.2M.
pub fn human_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hist::Recorder;

    fn row(engine: &str, writers: u32, size: u64, ops: u64) -> DiskReport {
        let mut rec = Recorder::new(None);
        let t0 = std::time::Instant::now();
        for _ in 0..ops {
            rec.record(Duration::from_micros(100), t0);
        }
        DiskReport::new(
            engine,
            "std",
            writers,
            size,
            &rec,
            Duration::from_secs(1),
            ops / writers as u64,
            Duration::ZERO,
        )
    }

    #[test]
    fn svg_has_a_cell_and_label_per_result() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heat.svg");
        let mut rows = Vec::new();
        for engine in ["ringkv", "raw"] {
            for w in [1, 2, 4] {
                for s in [64, 4096] {
                    rows.push(row(engine, w, s, 1000 * w as u64));
                }
            }
        }
        write_heatmap_svg(&path, &rows).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("ringkv: ops/s"));
        assert!(svg.contains("raw: ops/s"));
        assert!(svg.contains("4.0k (4.0)"), "label of the 4-writer cells");
        assert!(svg.contains("\n4K\n"), "size axis label");
        assert!(svg.matches("<rect").count() > rows.len());
    }

    #[test]
    fn empty_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_heatmap_svg(&dir.path().join("x.svg"), &[]).is_err());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(64), "64");
        assert_eq!(human_bytes(65536), "64K");
        assert_eq!(human_bytes(1 << 20), "1M");
        assert_eq!(human_count(950.0), "950");
        assert_eq!(human_count(1234.0), "1.2k");
        assert_eq!(human_count(12345.0), "12k");
        assert_eq!(human_count(2_500_000.0), "2.5M");
    }
}
