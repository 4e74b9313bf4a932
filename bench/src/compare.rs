//! `compare`: etcd and ringkv side by side on the same machine.
//!
//! Both systems are started fresh (temporary data directories, 127.0.0.1 ports, the same
//! flags) and stay up for the whole comparison. For each repetition, each workload runs on one
//! system and then on the other, so slow drifts of a shared machine hit both alike. The report
//! gives the median of the repetitions per metric, and the ratio ringkv / etcd.
//!
//! Output in `--out`: `report.md` (tables), `throughput.svg` (ops/s bars),
//! `cdf-<workload>.svg` (latency CDFs of all repetitions merged) and `runs.json` (every run).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use plotters::prelude::*;

use crate::cli::{CompareArgs, Consistency, Global};
use crate::hist::Recorder;
use crate::load::{self, EtcdClient, KeyGen, Mixed, Plan, Put, RangeLoad, TxnPut, run_workload};
use crate::report::LoadReport;
use crate::server::{Cluster, start_cluster};

/// What a compare workload runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Put,
    Range(Consistency),
    TxnPut,
    Mixed(f64),
}

/// One named workload of `compare`.
#[derive(Clone, Copy, Debug)]
struct Spec {
    name: &'static str,
    clients: u32,
    conns: u32,
    kind: Kind,
}

/// The default list (issue 7): put 1 client; put 1000 clients / 100 conns; range l and s at
/// 1000 clients; txn-put; mixed 95/5.
const SPECS: [Spec; 6] = [
    Spec {
        name: "put-1",
        clients: 1,
        conns: 1,
        kind: Kind::Put,
    },
    Spec {
        name: "put-1000",
        clients: 1000,
        conns: 100,
        kind: Kind::Put,
    },
    Spec {
        name: "range-l-1000",
        clients: 1000,
        conns: 100,
        kind: Kind::Range(Consistency::Linearizable),
    },
    Spec {
        name: "range-s-1000",
        clients: 1000,
        conns: 100,
        kind: Kind::Range(Consistency::Serializable),
    },
    Spec {
        name: "txn-put",
        clients: 100,
        conns: 10,
        kind: Kind::TxnPut,
    },
    Spec {
        name: "mixed-95",
        clients: 100,
        conns: 10,
        kind: Kind::Mixed(0.95),
    },
];

/// Key and value shape of every compare workload (etcd's performance docs use 8 B keys and
/// 256 B values).
const KEY_SIZE: usize = 8;
const VAL_SIZE: usize = 256;
const KEY_SPACE: u64 = 100_000;
/// The key the range workloads read (written before the first range run).
const RANGE_KEY: &str = "compare/range";

/// A system under test.
struct System {
    label: String,
    cluster: Cluster,
}

/// One run's result.
struct Run {
    report: LoadReport,
    rec: Recorder,
}

fn specs(names: &[String]) -> Result<Vec<Spec>, String> {
    if names.is_empty() {
        return Ok(SPECS.to_vec());
    }
    names
        .iter()
        .map(|n| {
            SPECS.iter().copied().find(|s| s.name == n).ok_or_else(|| {
                let all: Vec<&str> = SPECS.iter().map(|s| s.name).collect();
                format!("unknown workload {n:?}; known: {}", all.join(", "))
            })
        })
        .collect()
}

pub fn run_compare(g: &Global, a: &CompareArgs) -> Result<(), String> {
    let specs = specs(&a.workloads)?;
    if !(1..=3).contains(&a.members) || a.members == 2 {
        return Err(format!("--members must be 1 or 3, got {}", a.members));
    }
    if a.repeat == 0 {
        return Err("--repeat must be at least 1".to_owned());
    }
    if !a.run_seconds.is_finite() || a.run_seconds <= 0.0 {
        return Err("--run-seconds must be positive".to_owned());
    }
    if a.ringkv_bin.is_some() && a.etcd_label == a.ringkv_label {
        return Err(format!(
            "--etcd-label and --ringkv-label are both {:?}; the systems need distinct names",
            a.etcd_label
        ));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| format!("cannot create --out {}: {e}", a.out.display()))?;
    let mut systems = vec![System {
        label: a.etcd_label.clone(),
        cluster: start_cluster(&a.etcd_bin, a.members, None)?,
    }];
    if let Some(bin) = &a.ringkv_bin {
        systems.push(System {
            label: a.ringkv_label.clone(),
            cluster: start_cluster(bin, a.members, None)?,
        });
    }
    let rt = load::runtime()?;
    let plan = Plan::new(0, Some(Duration::from_secs_f64(a.run_seconds)), 0.0)?;
    // runs[workload][system] = every repetition.
    let mut runs: BTreeMap<&str, BTreeMap<&str, Vec<Run>>> = BTreeMap::new();
    for rep in 0..a.repeat {
        for spec in &specs {
            for sys in &systems {
                if !g.json {
                    eprintln!("[{}/{}] {} on {}", rep + 1, a.repeat, spec.name, sys.label);
                }
                let run = rt.block_on(run_spec(g, spec, &sys.cluster, plan))?;
                if g.json {
                    let mut v = serde_json::to_value(&run.report)
                        .map_err(|e| format!("cannot encode JSON: {e}"))?;
                    v["system"] = serde_json::Value::from(sys.label.as_str());
                    println!("{v}");
                }
                runs.entry(spec.name)
                    .or_default()
                    .entry(sys.label.as_str())
                    .or_default()
                    .push(run);
            }
        }
    }
    let labels: Vec<&str> = systems.iter().map(|s| s.label.as_str()).collect();
    let md = markdown(a, &specs, &labels, &runs);
    let path = a.out.join("report.md");
    std::fs::write(&path, &md).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    throughput_svg(&a.out.join("throughput.svg"), &specs, &labels, &runs)?;
    for spec in &specs {
        cdf_svg(
            &a.out.join(format!("cdf-{}.svg", spec.name)),
            spec.name,
            &labels,
            &runs[spec.name],
        )?;
    }
    let all: Vec<serde_json::Value> = runs
        .values()
        .flat_map(|by_sys| {
            by_sys.iter().flat_map(|(sys, rs)| {
                rs.iter().map(move |r| {
                    let mut v = serde_json::to_value(&r.report).unwrap_or_default();
                    v["system"] = serde_json::Value::from(*sys);
                    v
                })
            })
        })
        .collect();
    let path = a.out.join("runs.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&all).map_err(|e| format!("cannot encode JSON: {e}"))?,
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if !g.json {
        print!("{md}");
        println!("report: {}", a.out.join("report.md").display());
    }
    Ok(())
}

async fn run_spec(g: &Global, spec: &Spec, cluster: &Cluster, plan: Plan) -> Result<Run, String> {
    let mut gg = g.clone();
    gg.endpoints = cluster
        .members
        .iter()
        .map(|m| m.client_addr.clone())
        .collect();
    gg.clients = spec.clients;
    gg.conns = spec.conns;
    gg.target_leader = matches!(spec.kind, Kind::Put | Kind::TxnPut) && cluster.members.len() > 1;
    gg.target_followers = g.target_followers && !gg.target_leader && cluster.members.len() > 1;
    gg.sample = false;
    gg.json = true; // no progress bars inside a comparison
    let conns = load::connect(&gg).await?;
    let pids: Vec<u32> = cluster.members.iter().map(|m| m.pid()).collect();
    let keys = KeyGen {
        size: KEY_SIZE,
        space: KEY_SPACE,
        sequential: false,
    };
    let value = load::value(VAL_SIZE);
    let (report, rec) = match spec.kind {
        Kind::Put => {
            let w = Put {
                keys,
                value,
                last_rev: Default::default(),
            };
            run_workload(spec.name, &w, &gg, plan, &conns, &pids).await?
        }
        Kind::Range(c) => {
            let mut client: EtcdClient = conns[0].clone();
            client
                .put(Bytes::from_static(RANGE_KEY.as_bytes()), value)
                .await
                .map_err(|e| format!("cannot write the range key: {e}"))?;
            let w = RangeLoad::new(RANGE_KEY, None, c, 0);
            run_workload(spec.name, &w, &gg, plan, &conns, &pids).await?
        }
        Kind::TxnPut => {
            let w = TxnPut::new(keys, value, 1)?;
            run_workload(spec.name, &w, &gg, plan, &conns, &pids).await?
        }
        Kind::Mixed(read_ratio) => {
            let w = Mixed {
                keys,
                value,
                read_ratio,
                serializable: false,
            };
            run_workload(spec.name, &w, &gg, plan, &conns, &pids).await?
        }
    };
    Ok(Run { report, rec })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A row of the report table: its name and how to read it off a run.
type Metric = (&'static str, fn(&LoadReport) -> f64);

const METRICS: [Metric; 7] = [
    ("ops/s", |r| r.ops_per_sec),
    ("p50 µs", |r| r.p50_us),
    ("p99 µs", |r| r.p99_us),
    ("p99.9 µs", |r| r.p999_us),
    ("server CPU µs/op", |r| {
        r.server_cpu_us_per_op.unwrap_or(f64::NAN)
    }),
    ("peak RSS MiB", |r| {
        r.server_peak_rss_bytes
            .map_or(f64::NAN, |b| b as f64 / 1048576.0)
    }),
    ("client CPU µs/op", |r| r.client_cpu_us_per_op),
];

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "–".to_owned()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn markdown(
    a: &CompareArgs,
    specs: &[Spec],
    labels: &[&str],
    runs: &BTreeMap<&str, BTreeMap<&str, Vec<Run>>>,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# ringkv-bench compare\n");
    let _ = writeln!(
        md,
        "Members: {}; {} run(s) of {} s per workload and system, alternating; medians. \
         Keys {KEY_SIZE} B (random in {KEY_SPACE}), values {VAL_SIZE} B.\n",
        a.members, a.repeat, a.run_seconds
    );
    let _ = write!(md, "Binaries: {} `{}`", a.etcd_label, a.etcd_bin.display());
    if let Some(r) = &a.ringkv_bin {
        let _ = write!(md, ", {} `{}`", a.ringkv_label, r.display());
    }
    md.push('\n');
    let _ = writeln!(
        md,
        "\nThroughput: ![throughput](throughput.svg)\n\nErrors are counted per run. Peak RSS is each server's high-water mark since it started \
         (VmHWM), so it only grows along the run order.\n"
    );
    for spec in specs {
        let by_sys = &runs[spec.name];
        let _ = writeln!(
            md,
            "## {} ({} clients, {} conns)\n",
            spec.name, spec.clients, spec.conns
        );
        let mut header = vec!["metric".to_owned()];
        header.extend(labels.iter().map(|l| (*l).to_owned()));
        if labels.len() == 2 {
            header.push(format!("{} / {}", labels[1], labels[0]));
        }
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
        for (name, get) in METRICS {
            let meds: Vec<f64> = labels
                .iter()
                .map(|l| median(by_sys[l].iter().map(|r| get(&r.report)).collect()))
                .collect();
            let mut row = vec![name.to_owned()];
            row.extend(meds.iter().map(|v| fmt_num(*v)));
            if meds.len() == 2 {
                row.push(if meds[0] > 0.0 && !meds[1].is_nan() {
                    format!("{:.2}×", meds[1] / meds[0])
                } else {
                    "–".to_owned()
                });
            }
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
        let errors: Vec<String> = labels
            .iter()
            .map(|l| {
                let e: u64 = by_sys[l].iter().map(|r| r.report.errors).sum();
                format!("{l}: {e}")
            })
            .collect();
        let _ = writeln!(
            md,
            "\nErrors (all runs): {}. Latency CDF: ![cdf](cdf-{}.svg)\n",
            errors.join(", "),
            spec.name
        );
    }
    md
}

/// Colours of the systems, in label order.
const COLOURS: [RGBColor; 2] = [RGBColor(66, 133, 244), RGBColor(219, 68, 55)];

fn throughput_svg(
    path: &Path,
    specs: &[Spec],
    labels: &[&str],
    runs: &BTreeMap<&str, BTreeMap<&str, Vec<Run>>>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: cannot draw: {e}", path.display());
    let meds: Vec<Vec<f64>> = specs
        .iter()
        .map(|s| {
            labels
                .iter()
                .map(|l| {
                    median(
                        runs[s.name][l]
                            .iter()
                            .map(|r| r.report.ops_per_sec)
                            .collect(),
                    )
                })
                .collect()
        })
        .collect();
    let top = meds.iter().flatten().copied().fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(path, (160 * specs.len() as u32 + 120, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let n = specs.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption("throughput (median ops/s)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)
        .map_err(|e| err(&e))?;
    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(specs.len())
        .x_label_formatter(&|v| {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].to_owned()
            } else {
                String::new()
            }
        })
        .y_desc("ops/s")
        .draw()
        .map_err(|e| err(&e))?;
    let width = 0.8 / labels.len() as f64;
    for (si, label) in labels.iter().enumerate() {
        let colour = COLOURS[si % COLOURS.len()];
        chart
            .draw_series(meds.iter().enumerate().map(|(wi, m)| {
                let x0 = wi as f64 - 0.4 + si as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.95, m[si])], colour.filled())
            }))
            .map_err(|e| err(&e))?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

fn cdf_svg(
    path: &Path,
    name: &str,
    labels: &[&str],
    by_sys: &BTreeMap<&str, Vec<Run>>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| format!("{}: cannot draw: {e}", path.display());
    let curves: Vec<Vec<(f64, f64)>> = labels
        .iter()
        .map(|l| {
            let mut all = Recorder::new(None);
            for r in &by_sys[l] {
                all.merge(&r.rec);
            }
            all.cdf_points()
        })
        .collect();
    let pts = curves.iter().flatten();
    let lo = pts.clone().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = pts.map(|p| p.0).fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo.max(0.1) * 0.9, hi * 1.1)
    } else {
        (1.0, 10.0)
    };
    let root = SVGBackend::new(path, (640, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{name}: latency CDF"), ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("latency (µs, log)")
        .y_desc("fraction of requests ≤")
        .draw()
        .map_err(|e| err(&e))?;
    for (si, (label, curve)) in labels.iter().zip(&curves).enumerate() {
        let colour = COLOURS[si % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(
                curve.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_resolve() {
        assert_eq!(specs(&[]).unwrap().len(), 6);
        let s = specs(&["mixed-95".to_owned(), "put-1".to_owned()]).unwrap();
        assert_eq!(s[0].kind, Kind::Mixed(0.95));
        assert_eq!(s[1].clients, 1);
        let e = specs(&["scan".to_owned()]).unwrap_err();
        assert!(e.contains("known: put-1, put-1000"), "{e}");
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
