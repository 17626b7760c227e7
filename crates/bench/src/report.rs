//! The bench report: what was measured where, as a readable table and as
//! JSON. Every cell is a measured summary, a visible skip with its reason,
//! or a failure with its reason: never a silent zero.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::env::EnvKind;
use super::stats::{ratio, Summary};

/// One cell of the table: one metric in one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Cell {
    Measured(Summary),
    /// Not run, and why (a missing tool, an environment that cannot exist).
    Skipped {
        reason: String,
    },
    /// Run, but it did not produce a number; why.
    Failed {
        reason: String,
    },
}

impl Cell {
    pub fn summary(&self) -> Option<&Summary> {
        match self {
            Self::Measured(s) => Some(s),
            _ => None,
        }
    }
}

/// One metric across the environments.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: String,
    pub metric: String,
    pub unit: String,
    /// Whether a smaller number is better (times, memory) or not
    /// (throughput, instance counts).
    pub lower_is_better: bool,
    pub cells: BTreeMap<EnvKind, Cell>,
}

impl Row {
    /// `median(env) / median(host)`, when both were measured.
    pub fn ratio_to_host(&self, env: EnvKind) -> Option<f64> {
        let v = self.cells.get(&env)?.summary()?;
        let h = self.cells.get(&EnvKind::Host)?.summary()?;
        ratio(v.median, h.median)
    }
}

/// Where and how the run happened, so numbers are never read without it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Meta {
    pub command: String,
    pub kvmini_version: String,
    pub started_unix: u64,
    pub duration_s: f64,
    pub host: HostInfo,
    /// How the VM ran: "kvm" (hardware), "emulated", ... and what that
    /// means for its absolute figures.
    pub vm_mode: String,
    pub vm_mode_note: String,
    pub settings: BTreeMap<String, String>,
    /// Per environment: what it is (versions, limits) or why it was skipped.
    pub environments: BTreeMap<EnvKind, String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HostInfo {
    pub hostname: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub mem_total_mib: u64,
    pub hw_virt: bool,
    /// True when the CPU is QEMU's software emulation (the nested rig):
    /// every absolute figure is emulated; only ratios count.
    pub emulated_cpu: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub envs: Vec<EnvKind>,
    pub rows: Vec<Row>,
}

/// Compact number: about three significant digits.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn fmt_ratio(r: f64) -> String {
    format!("x{}", fmt_num(r))
}

impl Report {
    /// Whether any cell failed (the run's exit status says so).
    pub fn any_failed(&self) -> bool {
        self.rows
            .iter()
            .flat_map(|r| r.cells.values())
            .any(|c| matches!(c, Cell::Failed { .. }))
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// The human-readable table, with footnotes for skips and failures.
    pub fn to_table(&self) -> String {
        let m = &self.meta;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "kvmini bench: a kvmini VM vs a container vs the bare host"
        );
        let _ = writeln!(
            out,
            "host: {} | Linux {} | {} | {} CPUs | {} MiB | hardware virtualization: {}",
            m.host.hostname,
            m.host.kernel,
            m.host.cpu_model,
            m.host.cpus,
            m.host.mem_total_mib,
            if m.host.hw_virt { "yes" } else { "no" }
        );
        if m.host.emulated_cpu {
            let _ = writeln!(
                out,
                "NOTE: this CPU is QEMU's software emulation (nested rig): every absolute \
                 figure is emulated; only ratios between columns count."
            );
        }
        let _ = writeln!(out, "vm: {} ({})", m.vm_mode, m.vm_mode_note);
        for (env, what) in &m.environments {
            let _ = writeln!(out, "{}: {what}", env.name());
        }
        let settings: Vec<String> = m.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "settings: {}", settings.join(" "));
        let _ = writeln!(
            out,
            "cells: median [min..max] of the measured repeats (warm-ups discarded), \
             xN = median / host median\n"
        );

        let mut notes: Vec<String> = Vec::new();
        let mut note = |text: String| -> usize {
            match notes.iter().position(|n| *n == text) {
                Some(i) => i + 1,
                None => {
                    notes.push(text);
                    notes.len()
                }
            }
        };
        let mut header = vec!["workload".to_string(), "metric".into(), "unit".into()];
        header.extend(self.envs.iter().map(|e| e.name().to_string()));
        let mut lines = vec![header];
        for row in &self.rows {
            let mut line = vec![row.workload.clone(), row.metric.clone(), row.unit.clone()];
            for env in &self.envs {
                let text = match row.cells.get(env) {
                    Some(Cell::Measured(s)) => {
                        let mut t = if s.n > 1 {
                            format!(
                                "{} [{}..{}]",
                                fmt_num(s.median),
                                fmt_num(s.min),
                                fmt_num(s.max)
                            )
                        } else {
                            fmt_num(s.median)
                        };
                        if *env != EnvKind::Host {
                            if let Some(r) = row.ratio_to_host(*env) {
                                let _ = write!(t, " {}", fmt_ratio(r));
                            }
                        }
                        t
                    }
                    Some(Cell::Skipped { reason }) => {
                        format!("not run [{}]", note(format!("{}: {reason}", env.name())))
                    }
                    Some(Cell::Failed { reason }) => {
                        format!("FAILED [{}]", note(format!("{}: {reason}", env.name())))
                    }
                    None => "-".into(),
                };
                line.push(text);
            }
            lines.push(line);
        }
        let cols = lines[0].len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for (i, line) in lines.iter().enumerate() {
            let cells: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(t, w)| format!("{t:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                let _ = writeln!(out, "{}", rule.join("  "));
            }
        }
        if !notes.is_empty() {
            let _ = writeln!(out);
            for (i, n) in notes.iter().enumerate() {
                let _ = writeln!(out, "[{}] {n}", i + 1);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut cells = BTreeMap::new();
        cells.insert(
            EnvKind::Vm,
            Cell::Measured(Summary::of(&[30.0, 10.0, 20.0]).unwrap()),
        );
        cells.insert(
            EnvKind::Container,
            Cell::Skipped {
                reason: "crun is not installed".into(),
            },
        );
        cells.insert(EnvKind::Host, Cell::Measured(Summary::of(&[2.0]).unwrap()));
        let mut net = BTreeMap::new();
        net.insert(
            EnvKind::Vm,
            Cell::Skipped {
                reason: "the network workload (kvmini --net over a TAP) is not wired into kvmini bench yet".into(),
            },
        );
        net.insert(
            EnvKind::Container,
            Cell::Skipped {
                reason: "crun is not installed".into(),
            },
        );
        net.insert(
            EnvKind::Host,
            Cell::Failed {
                reason: "iperf3 exited 1".into(),
            },
        );
        Report {
            meta: Meta {
                vm_mode: "kvm".into(),
                ..Meta::default()
            },
            envs: vec![EnvKind::Vm, EnvKind::Container, EnvKind::Host],
            rows: vec![
                Row {
                    workload: "startup".into(),
                    metric: "launch to exit".into(),
                    unit: "ms".into(),
                    lower_is_better: true,
                    cells,
                },
                Row {
                    workload: "network".into(),
                    metric: "TCP throughput".into(),
                    unit: "Mbit/s".into(),
                    lower_is_better: false,
                    cells: net,
                },
            ],
        }
    }

    #[test]
    fn table_has_numbers_ratios_and_footnotes() {
        let t = sample().to_table();
        assert!(t.contains("20.0 [10.0..30.0] x10.0"), "{t}");
        // A single sample shows no range; the host has no ratio to itself.
        let startup = t.lines().find(|l| l.starts_with("startup")).unwrap();
        assert!(startup.trim_end().ends_with("2.00"), "{startup}");
        // The same reason gets one footnote, shared by both rows.
        assert!(t.contains("[1] container: crun is not installed"), "{t}");
        assert!(
            t.contains("[2] vm: the network workload (kvmini --net over a TAP) is not wired into kvmini bench yet"),
            "{t}"
        );
        assert!(t.contains("FAILED [3]"), "{t}");
        assert!(t.contains("[3] host: iperf3 exited 1"), "{t}");
        assert!(!t.contains("[4]"), "{t}");
    }

    #[test]
    fn json_names_every_cell_status() {
        let r = sample();
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let cells = &v["rows"][0]["cells"];
        assert_eq!(cells["vm"]["status"], "measured");
        assert_eq!(cells["vm"]["median"], 20.0);
        assert_eq!(
            cells["vm"]["samples"],
            serde_json::json!([30.0, 10.0, 20.0])
        );
        assert_eq!(cells["container"]["status"], "skipped");
        assert_eq!(cells["container"]["reason"], "crun is not installed");
        assert_eq!(v["rows"][1]["cells"]["host"]["status"], "failed");
        assert_eq!(v["envs"], serde_json::json!(["vm", "container", "host"]));
        assert!(r.any_failed());
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(1.2345), "1.23");
        assert_eq!(fmt_num(0.012345), "0.012");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_ratio(1.234), "x1.23");
        assert_eq!(fmt_ratio(1234.0), "x1234");
        assert_eq!(fmt_ratio(0.0019), "x0.002", "small ratios keep a digit");
    }
}
