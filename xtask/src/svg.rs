//! A small bar-chart writer: side-by-side panels, each with its own y axis (the quantities shown
//! differ by orders of magnitude), one labelled bar per category. Plain SVG 1.1 text, no scripts,
//! so any browser or `rsvg-convert` renders it.

use std::fmt::Write;

/// One bar: its category label, its value and its fill colour (`#rrggbb`).
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    pub color: &'static str,
}

/// One panel: a title and its bars, drawn against an axis from 0 to a round number above the
/// largest value.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    pub title: String,
    /// How each bar's value is written above it (e.g. 1 or 3 decimals).
    pub decimals: usize,
    pub bars: Vec<Bar>,
}

const PANEL_WIDTH: f64 = 340.0;
const PANEL_GAP: f64 = 40.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const TOP: f64 = 104.0;
const PLOT_HEIGHT: f64 = 260.0;
const BOTTOM: f64 = 60.0;
const TICKS: usize = 5;

/// The whole chart: a title, a subtitle line and the panels left to right.
pub fn bar_chart(title: &str, subtitle: &str, panels: &[Panel]) -> String {
    let count = panels.len().max(1) as f64;
    let width = MARGIN_LEFT
        + count * PANEL_WIDTH
        + (count - 1.0) * (PANEL_GAP + MARGIN_LEFT)
        + MARGIN_RIGHT;
    let height = TOP + PLOT_HEIGHT + BOTTOM;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Arial, sans-serif">"##,
        w = num(width, 0),
        h = num(height, 0),
    );
    let _ = writeln!(
        svg,
        r##"<rect x="0" y="0" width="{}" height="{}" fill="white"/>"##,
        num(width, 0),
        num(height, 0)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="30" font-size="20" font-weight="bold" text-anchor="middle">{}</text>"##,
        num(width / 2.0, 1),
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="52" font-size="13" fill="#444" text-anchor="middle">{}</text>"##,
        num(width / 2.0, 1),
        escape(subtitle)
    );
    for (i, panel) in panels.iter().enumerate() {
        let left = MARGIN_LEFT + i as f64 * (PANEL_WIDTH + PANEL_GAP + MARGIN_LEFT);
        draw_panel(&mut svg, panel, left);
    }
    svg.push_str("</svg>\n");
    svg
}

fn draw_panel(svg: &mut String, panel: &Panel, left: f64) {
    let bottom = TOP + PLOT_HEIGHT;
    let largest = panel
        .bars
        .iter()
        .map(|b| finite(b.value))
        .fold(0.0, f64::max);
    let top_value = nice_ceiling(largest);
    let y_of = |v: f64| bottom - finite(v).max(0.0) / top_value * PLOT_HEIGHT;

    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"##,
        num(left + PANEL_WIDTH / 2.0, 1),
        // High enough above the plot that a full-height bar's value label stays clear of it.
        num(TOP - 28.0, 1),
        escape(&panel.title)
    );
    // Grid lines and tick labels: TICKS equal steps from 0 to the round top value.
    for t in 0..=TICKS {
        let value = top_value * t as f64 / TICKS as f64;
        let y = y_of(value);
        let _ = writeln!(
            svg,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="1"/>"##,
            num(left, 1),
            num(left + PANEL_WIDTH, 1),
            if t == 0 { "#333" } else { "#ddd" },
            y = num(y, 1),
        );
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" font-size="11" fill="#444" text-anchor="end">{}</text>"##,
            num(left - 6.0, 1),
            num(y + 4.0, 1),
            tick_label(value, top_value)
        );
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#333" stroke-width="1"/>"##,
        num(TOP, 1),
        num(bottom, 1),
        x = num(left, 1),
    );
    let slots = panel.bars.len().max(1) as f64;
    let slot = PANEL_WIDTH / slots;
    let bar_width = slot * 0.6;
    for (i, bar) in panel.bars.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar_width) / 2.0;
        let y = y_of(bar.value);
        let _ = writeln!(
            svg,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>"##,
            num(x, 1),
            num(y, 1),
            num(bar_width, 1),
            num(bottom - y, 1),
            bar.color
        );
        let center = num(x + bar_width / 2.0, 1);
        let _ = writeln!(
            svg,
            r##"<text x="{center}" y="{}" font-size="12" text-anchor="middle">{}</text>"##,
            num(y - 5.0, 1),
            num(bar.value, panel.decimals)
        );
        let _ = writeln!(
            svg,
            r##"<text x="{center}" y="{}" font-size="13" text-anchor="middle">{}</text>"##,
            num(bottom + 20.0, 1),
            escape(&bar.label)
        );
    }
}

/// 0 for NaN and infinities, so no `NaN` ever reaches the SVG text.
fn finite(v: f64) -> f64 {
    if v.is_finite() {
        v
    } else {
        0.0
    }
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten that is at least `v` (1 for zero or less):
/// an axis top whose fifths are round numbers.
pub fn nice_ceiling(v: f64) -> f64 {
    let v = finite(v);
    if v <= 0.0 {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&top| top >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * power)
}

/// A tick label with as many decimals as the axis needs.
fn tick_label(value: f64, top: f64) -> String {
    let step = top / TICKS as f64;
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    num(value, decimals)
}

/// A number with `decimals` decimals; 0 for NaN and infinities.
fn num(v: f64, decimals: usize) -> String {
    format!("{:.*}", decimals, finite(v))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panel(values: &[f64]) -> Panel {
        Panel {
            title: "t".into(),
            decimals: 1,
            bars: values
                .iter()
                .enumerate()
                .map(|(i, &value)| Bar {
                    label: format!("m{i}"),
                    value,
                    color: "#123456",
                })
                .collect(),
        }
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(-3.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        assert_eq!(nice_ceiling(2.3), 2.5);
        assert_eq!(nice_ceiling(3.01), 5.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(4321.0), 5000.0);
        assert!((nice_ceiling(0.013) - 0.02).abs() < 1e-12);
    }

    #[test]
    fn bars_scale_to_the_axis() {
        // Values 50 and 100 on an axis to 100: the second bar is PLOT_HEIGHT tall, the first half.
        let svg = bar_chart("T", "s", &[panel(&[50.0, 100.0])]);
        assert!(svg.contains(r##"height="130.0" fill="#123456""##), "{svg}");
        assert!(svg.contains(r##"height="260.0" fill="#123456""##), "{svg}");
        assert!(svg.contains(">m0</text>") && svg.contains(">m1</text>"));
        assert!(svg.contains(">100.0</text>"));
    }

    #[test]
    fn zero_and_bad_values_draw_without_nan() {
        let svg = bar_chart(
            "T",
            "s",
            &[panel(&[0.0, 0.0]), panel(&[f64::NAN, f64::INFINITY])],
        );
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert!(svg.contains(r##"height="0.0" fill="#123456""##));
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn text_is_escaped() {
        let svg = bar_chart("a<b & \"c\"", "s", &[]);
        assert!(svg.contains("a&lt;b &amp; &quot;c&quot;"));
    }

    #[test]
    fn tick_labels_get_the_decimals_the_step_needs() {
        assert_eq!(tick_label(400.0, 1000.0), "400");
        assert_eq!(tick_label(0.004, 0.01), "0.004");
        assert_eq!(tick_label(0.5, 2.5), "0.5");
        assert_eq!(tick_label(0.1, 0.25), "0.10");
    }
}
