//! The chart of throughput and p99 latency against concurrency (SVG, plotters).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// One line of the chart: a label and (concurrency, sagas/s, p99 ms) points.
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points in concurrency order.
    pub points: Vec<(usize, f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

/// Draw two panels (sagas/s; p99 ms, both against concurrency on a log axis) into `path`.
pub fn draw(path: &Path, title: &str, series: &[Series]) -> Result<()> {
    let e = |x: &dyn std::fmt::Display| anyhow!("drawing {}: {x}", path.display());
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(|x| e(&x))?;
    let (left, right) = root.split_horizontally(550);
    let cmax = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1024)
        .max(2) as f64;
    let ymax_tp = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.1;
    let ymax_p99 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.2))
        .fold(1.0f64, f64::max)
        * 1.5;
    for (area, panel) in [(left, 0), (right, 1)] {
        let (cap, ylabel) = if panel == 0 {
            ("throughput", "sagas/s")
        } else {
            ("p99 latency", "p99 ms (log)")
        };
        let xr = (1f64..cmax * 1.3).log_scale();
        if panel == 0 {
            let mut chart = ChartBuilder::on(&area)
                .caption(cap, ("sans-serif", 15))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(xr, 0f64..ymax_tp)
                .map_err(|x| e(&x))?;
            chart
                .configure_mesh()
                .x_desc("concurrency (sagas in flight)")
                .y_desc(ylabel)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .draw()
                .map_err(|x| e(&x))?;
            for (i, s) in series.iter().enumerate() {
                let c = COLORS[i % COLORS.len()];
                let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (p.0 as f64, p.1)).collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(|x| e(&x))?
                    .label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c));
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                    .map_err(|x| e(&x))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 11))
                .draw()
                .map_err(|x| e(&x))?;
        } else {
            let mut chart = ChartBuilder::on(&area)
                .caption(cap, ("sans-serif", 15))
                .margin(12)
                .x_label_area_size(36)
                .y_label_area_size(60)
                .build_cartesian_2d(xr, (0.1f64..ymax_p99).log_scale())
                .map_err(|x| e(&x))?;
            chart
                .configure_mesh()
                .x_desc("concurrency (sagas in flight)")
                .y_desc(ylabel)
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| format!("{v}"))
                .draw()
                .map_err(|x| e(&x))?;
            for (i, s) in series.iter().enumerate() {
                let c = COLORS[i % COLORS.len()];
                let pts: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .map(|p| (p.0 as f64, p.2.max(0.1)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
                    .map_err(|x| e(&x))?;
                chart
                    .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                    .map_err(|x| e(&x))?;
            }
        }
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
