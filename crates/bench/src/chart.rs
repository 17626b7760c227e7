//! The PNG chart (plotters, bitmap backend): one panel per metric, a bar
//! per environment at its median with a min..max whisker, the number on
//! top; skipped or failed environments say so in place of a bar.
//!
//! Text needs a font: plotters' `ab_glyph` renderer with DejaVu Sans read
//! at run time (Debian's fonts-dejavu-core), no system font lookup.

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::env::EnvKind;
use super::report::{fmt_num, Cell, Report};

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const COLUMNS: usize = 3;
const PANEL: (u32, u32) = (420, 300);

fn colour(env: EnvKind) -> RGBColor {
    match env {
        EnvKind::Vm => RGBColor(0x1f, 0x77, 0xb4),
        EnvKind::Container => RGBColor(0xff, 0x7f, 0x0e),
        EnvKind::Host => RGBColor(0x2c, 0xa0, 0x2c),
    }
}

fn load_font() -> Result<(), String> {
    let path = std::env::var("KVMINI_BENCH_FONT")
        .ok()
        .or_else(|| {
            FONTS
                .iter()
                .find(|p| Path::new(p).exists())
                .map(|p| p.to_string())
        })
        .ok_or(
            "no DejaVu Sans font found for the chart's text (apt-get install \
                fonts-dejavu-core, or set KVMINI_BENCH_FONT to a .ttf file)",
        )?;
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read font {path}: {e}"))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| format!("{path} is not a usable TrueType font"))
}

/// Draws `report` into a PNG at `path`.
pub fn write_png(report: &Report, path: &Path) -> Result<(), String> {
    load_font()?;
    let rows = report.rows.len().max(1);
    let grid_rows = rows.div_ceil(COLUMNS);
    let size = (PANEL.0 * COLUMNS as u32, PANEL.1 * grid_rows as u32 + 70);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| format!("cannot draw {}: {e}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let (title, body) = root.split_vertically(70);
    let m = &report.meta;
    title
        .draw_text(
            "kvmini bench: VM vs container vs host (median, whisker = min..max)",
            &("sans-serif", 22).into_font().color(&BLACK),
            (10, 8),
        )
        .map_err(e)?;
    let mode = if m.host.emulated_cpu {
        format!(
            "vm: {} | NESTED RIG: absolute figures emulated, compare ratios",
            m.vm_mode
        )
    } else {
        format!(
            "vm: {} | host: {} ({})",
            m.vm_mode, m.host.hostname, m.host.kernel
        )
    };
    title
        .draw_text(
            &mode,
            &("sans-serif", 15).into_font().color(&BLACK),
            (10, 40),
        )
        .map_err(e)?;

    let panels = body.split_evenly((grid_rows, COLUMNS));
    let envs = report.envs.clone();
    let names: Vec<&'static str> = envs.iter().map(|e| e.name()).collect();
    for (row, area) in report.rows.iter().zip(panels.iter()) {
        let top = envs
            .iter()
            .filter_map(|e| row.cells.get(e).and_then(Cell::summary).map(|s| s.max))
            .fold(0.0f64, f64::max);
        let ymax = if top > 0.0 { top * 1.25 } else { 1.0 };
        // A segmented 0..k axis has k+1 slots: one per environment.
        let n = envs.len() as u32;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!("{}: {} ({})", row.workload, row.metric, row.unit),
                ("sans-serif", 14),
            )
            .margin(8)
            .x_label_area_size(22)
            .y_label_area_size(48)
            .build_cartesian_2d(
                (0u32..n.saturating_sub(1).max(1)).into_segmented(),
                0f64..ymax,
            )
            .map_err(e)?;
        let label = |v: &SegmentValue<u32>| match v {
            SegmentValue::CenterOf(i) => names.get(*i as usize).copied().unwrap_or("").into(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_label_formatter(&label)
            .y_label_formatter(&|v| fmt_num(*v))
            .label_style(("sans-serif", 12))
            .draw()
            .map_err(e)?;
        for (i, env) in envs.iter().enumerate() {
            let i = i as u32;
            let style = ("sans-serif", 12).into_font().color(&BLACK);
            match row.cells.get(env) {
                Some(Cell::Measured(s)) => {
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), s.median),
                        ],
                        colour(*env).filled(),
                    );
                    bar.set_margin(0, 0, 12, 12);
                    chart.draw_series(std::iter::once(bar)).map_err(e)?;
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![
                                (SegmentValue::CenterOf(i), s.min),
                                (SegmentValue::CenterOf(i), s.max),
                            ],
                            BLACK.stroke_width(2),
                        )))
                        .map_err(e)?;
                    chart
                        .draw_series(std::iter::once(Text::new(
                            fmt_num(s.median),
                            (SegmentValue::CenterOf(i), s.max.max(s.median) + ymax * 0.03),
                            style.clone(),
                        )))
                        .map_err(e)?;
                }
                other => {
                    let text = match other {
                        Some(Cell::Failed { .. }) => "failed",
                        _ => "not run",
                    };
                    chart
                        .draw_series(std::iter::once(Text::new(
                            text,
                            (SegmentValue::CenterOf(i), ymax * 0.1),
                            style.color(&RED),
                        )))
                        .map_err(e)?;
                }
            }
        }
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Row;
    use crate::stats::Summary;
    use std::collections::BTreeMap;

    #[test]
    fn draws_a_png_with_every_kind_of_cell() {
        // A missing font is not a pass: tests/run-all.sh installs it.
        if let Err(e) = load_font() {
            panic!("CHART TEST NOT RUN: {e}");
        }
        let mut cells = BTreeMap::new();
        cells.insert(
            EnvKind::Vm,
            Cell::Measured(Summary::of(&[3.0, 5.0]).unwrap()),
        );
        cells.insert(
            EnvKind::Container,
            Cell::Skipped {
                reason: "no crun".into(),
            },
        );
        cells.insert(EnvKind::Host, Cell::Failed { reason: "x".into() });
        let report = Report {
            envs: EnvKind::ALL.to_vec(),
            rows: vec![Row {
                workload: "cpu".into(),
                metric: "sha256".into(),
                unit: "s".into(),
                lower_is_better: true,
                cells,
            }],
            ..Report::default()
        };
        let dir = vmm_sys_util::tempdir::TempDir::new().unwrap();
        let png = dir.as_path().join("c.png");
        write_png(&report, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
