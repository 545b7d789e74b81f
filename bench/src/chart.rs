//! The warm reads as a chart: throughput and p99 latency against concurrency, one line per
//! thing measured (the service with its row cache on and off, pgbench, the HTTP floor), in
//! two panels side by side of one SVG file. Drawn with `plotters`' SVG backend alone: the
//! text is SVG `<text>`, laid out by the viewer's fonts, so no font is needed here.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::report::{Reads, ReadsAt};

/// One line of the chart.
pub struct Series {
    pub name: &'static str,
    pub color: RGBColor,
    /// `(concurrency, tps, p99 ms)`, by concurrency.
    pub points: Vec<(usize, f64, f64)>,
}

/// The warm reads' four lines.
pub fn warm_reads(reads: &[ReadsAt]) -> Vec<Series> {
    let series = |name, color, of: fn(&ReadsAt) -> &Reads| Series {
        name,
        color,
        points: reads
            .iter()
            .map(|r| (r.concurrency, of(r).tps, of(r).latency.p99_ms))
            .collect(),
    };
    vec![
        series("service, row cache on", RGBColor(31, 119, 180), |r| {
            &r.service_row_cache_on
        }),
        series("service, row cache off", RGBColor(255, 127, 14), |r| {
            &r.service_row_cache_off
        }),
        series("pgbench", RGBColor(44, 160, 44), |r| &r.pgbench),
        series("HTTP floor", RGBColor(127, 127, 127), |r| &r.http_floor),
    ]
}

/// Writes `series` to `path` as an SVG: throughput on the left, p99 on the right, under
/// `caption`. Concurrency is on a log₂ axis (the measured ones are powers of two or
/// close).
pub fn write(path: &Path, caption: &str, series: &[Series]) -> anyhow::Result<()> {
    let mut svg = String::new();
    draw(&mut svg, caption, series).context("drawing the chart")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

fn draw(svg: &mut String, caption: &str, series: &[Series]) -> anyhow::Result<()> {
    let root = SVGBackend::with_string(svg, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(caption, ("sans-serif", 22))?;
    let (left, right) = root.split_horizontally(600);
    panel(&left, "Throughput", "requests/s", series, |&(_, tps, _)| {
        tps
    })?;
    panel(&right, "p99 latency", "ms", series, |&(_, _, p99)| p99)?;
    root.present()?;
    Ok(())
}

/// One panel: `value` of every series against log₂ of the concurrency.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    series: &[Series],
    value: fn(&(usize, f64, f64)) -> f64,
) -> anyhow::Result<()> {
    let points = || series.iter().flat_map(|s| &s.points);
    let log2 = |c: usize| (c.max(1) as f64).log2();
    let (x_min, x_max) = points().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(log2(p.0)), hi.max(log2(p.0)))
    });
    let (x_min, x_max) = if x_min > x_max {
        (0.0, 1.0)
    } else {
        (x_min.floor() - 0.5, x_max.ceil() + 0.5)
    };
    let y_max = points().map(value).fold(0.0, f64::max) * 1.1;
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, 0.0..y_max)?;
    // Labels only where log₂ of the concurrency is whole: 1, 2, 4, 8, ...
    let x_label = |x: &f64| {
        if (x - x.round()).abs() < 1e-9 {
            format!("{}", 2f64.powf(x.round()))
        } else {
            String::new()
        }
    };
    let y_label = |y: &f64| format!("{y:.*}", if y_max >= 10.0 { 0 } else { 2 });
    chart
        .configure_mesh()
        .x_desc("concurrency")
        .y_desc(unit)
        .x_labels((x_max - x_min).round() as usize + 1)
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .draw()?;
    for s in series {
        let color = s.color;
        chart
            .draw_series(
                LineSeries::new(
                    s.points.iter().map(|p| (log2(p.0), value(p))),
                    color.stroke_width(2),
                )
                .point_size(4),
            )?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_of_sample_figures_is_an_svg_naming_every_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("reads.svg");
        let line = |name, color, scale: f64| Series {
            name,
            color,
            points: [4, 16, 64]
                .iter()
                .map(|&c| (c, c as f64 * 1000.0 * scale, c as f64 / 20.0 * scale))
                .collect(),
        };
        let series = [
            line("service, row cache on", RGBColor(31, 119, 180), 1.5),
            line("service, row cache off", RGBColor(255, 127, 14), 0.6),
            line("pgbench", RGBColor(44, 160, 44), 1.0),
            line("HTTP floor", RGBColor(127, 127, 127), 3.0),
        ];

        write(&path, "Warm reads (sample)", &series).unwrap();

        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "Warm reads (sample)",
            "Throughput",
            "p99 latency",
            "concurrency",
            "service, row cache on",
            "service, row cache off",
            "pgbench",
            "HTTP floor",
        ] {
            assert!(svg.contains(text), "no {text:?} in the chart");
        }
        // Concurrency labels on the log₂ axis (plotters writes each text on a line of its own).
        for label in ["4", "16", "64"] {
            assert!(
                svg.lines().any(|l| l.trim() == label),
                "no label {label} in the chart"
            );
        }
    }
}
