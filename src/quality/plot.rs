//! An SVG picture of a [`CurveReport`]: what the router buys at each budget, against the single
//! models, the random mix and the oracle.
//!
//! x is the mean cost per request (US dollars), y the mean quality. Drawn: the router's envelope
//! (bold line) and its sweep settings (faint dots); each single model as a labelled dot; the random
//! mix of the cheapest and the best model (dashed); the oracle (a marked point); the best single
//! model's quality as a horizontal guide; ticks, axis labels and a legend. 800 × 500 pixels. Text
//! is plain SVG `<text>` (no font is needed to write it; the viewer picks a sans-serif font).

use plotters::coord::Shift;
use plotters::element::{Circle, Cross, EmptyElement, PathElement, Rectangle, Text};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::curve::CurveReport;

const WIDTH: u32 = 800;
/// Room right of the plot for the legend.
const LEGEND_PANEL: u32 = 205;
const HEIGHT: u32 = 500;

const ROUTER: RGBColor = RGBColor(31, 119, 180);
const MODEL: RGBColor = RGBColor(80, 80, 80);
const RANDOM: RGBColor = RGBColor(150, 150, 150);
const ORACLE: RGBColor = RGBColor(214, 39, 40);
const BEST: RGBColor = RGBColor(44, 160, 44);

/// The report as an 800 × 500 SVG document titled `title`.
pub fn svg(report: &CurveReport, title: &str) -> String {
    let mut buf = String::new();
    let drawn = {
        let root = SVGBackend::with_string(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, report, title).and_then(|()| root.present().map_err(|e| e.to_string()))
    };
    match drawn {
        Ok(()) => buf,
        Err(e) => format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\"><text x=\"10\" y=\"20\">cannot draw the curve: {}</text></svg>",
            escape(&e)
        ),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" tick step near `span / 6`.
fn nice_step(span: f64) -> f64 {
    let raw = span / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn money(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("${v:.decimals$}")
}

fn draw(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    r: &CurveReport,
    title: &str,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(err)?;
    let b = &r.baselines;

    // Ranges: every model, the oracle and the curve, with a margin.
    let xs = b
        .per_model
        .iter()
        .map(|m| m.cost_usd)
        .chain(r.curve.iter().map(|p| p.cost_usd))
        .chain([b.oracle.cost_usd, 0.0])
        .filter(|v| v.is_finite());
    let ys = b
        .per_model
        .iter()
        .map(|m| m.quality)
        .chain(r.curve.iter().map(|p| p.quality))
        .chain([b.oracle.quality])
        .filter(|v| v.is_finite());
    let (xmin, xmax) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let (ymin, ymax) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    let xspan = (xmax - xmin).max(1e-9);
    let yspan = (ymax - ymin).max(1e-3);
    let x_range = (xmin - 0.02 * xspan)..(xmax + 0.2 * xspan);
    let y_range = (ymin - 0.06 * yspan).max(0.0)..(ymax + 0.06 * yspan).min(1.0 + 1e-9);
    let xstep = nice_step(x_range.end - x_range.start);

    // Title, and the metrics as a subtitle.
    let (head, body) = root.split_vertically(56);
    let centre = |size: u32, color: RGBColor| {
        ("sans-serif", size)
            .into_font()
            .color(&color)
            .pos(Pos::new(HPos::Center, VPos::Center))
    };
    let mid = (WIDTH / 2) as i32;
    head.draw(&Text::new(title.to_string(), (mid, 18), centre(21, BLACK)))
        .map_err(err)?;
    let share = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{:.0} %", 100.0 * v));
    let subtitle = format!(
        "APGR {:.3} · reaches {}'s quality at {} of its extra cost · 50 % / 80 % of the gap at {} / {} · {} prompts",
        r.apgr,
        short(&b.best_single.model),
        share(r.matches_best_at_cost_share),
        share(r.cpt50),
        share(r.cpt80),
        r.rows
    );
    head.draw(&Text::new(
        subtitle,
        (mid, 42),
        centre(13, RGBColor(70, 70, 70)),
    ))
    .map_err(err)?;

    let mut chart = ChartBuilder::on(&body)
        .margin(14)
        .margin_top(4)
        .margin_right(LEGEND_PANEL)
        .x_label_area_size(48)
        .y_label_area_size(58)
        .build_cartesian_2d(x_range.clone(), y_range.clone())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("mean cost per request (USD)")
        .y_desc("mean quality")
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|v| money(*v, xstep))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(err)?;

    // Best single model's quality: horizontal guide.
    let best_q = b.best_single.quality;
    chart
        .draw_series(DashedLineSeries::new(
            [(x_range.start, best_q), (x_range.end, best_q)],
            2,
            4,
            BEST.stroke_width(1),
        ))
        .map_err(err)?;

    // Random mix of the cheapest and the best.
    chart
        .draw_series(DashedLineSeries::new(
            [
                (b.cheapest.cost_usd, b.cheapest.quality),
                (b.best_single.cost_usd, b.best_single.quality),
            ],
            7,
            5,
            RANDOM.stroke_width(2),
        ))
        .map_err(err)?;

    // Sweep settings, faint.
    chart
        .draw_series(
            r.curve
                .iter()
                .map(|p| Circle::new((p.cost_usd, p.quality), 2, ROUTER.mix(0.25).filled())),
        )
        .map_err(err)?;

    // The router's envelope, extended flat to the right edge.
    let mut env: Vec<(f64, f64)> = r.envelope.iter().map(|p| (p.cost_usd, p.quality)).collect();
    if let Some(&(_, y)) = env.last() {
        env.push((x_range.end, y));
    }
    chart
        .draw_series(LineSeries::new(env, ROUTER.stroke_width(3)))
        .map_err(err)?;

    // Single models: dots with labels, nudged apart.
    chart
        .draw_series(
            b.per_model
                .iter()
                .map(|m| Circle::new((m.cost_usd, m.quality), 4, MODEL.filled())),
        )
        .map_err(err)?;
    let plot_area = chart.plotting_area().clone();
    let (px_range, py_range) = plot_area.get_pixel_range();
    let to_px = |x: f64, y: f64| plot_area.map_coordinate(&(x, y));

    // Obstacles for labels and the legend: the envelope (sampled every few pixels), the
    // guide line, the sweep, the models and the oracle.
    let mut marks: Vec<(i32, i32)> = Vec::new();
    let env_px: Vec<(i32, i32)> = r
        .envelope
        .iter()
        .map(|p| to_px(p.cost_usd, p.quality))
        .chain(r.envelope.last().map(|p| to_px(x_range.end, p.quality)))
        .collect();
    for w2 in env_px.windows(2) {
        let ((x0, y0), (x1, y1)) = (w2[0], w2[1]);
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) / 3).max(1);
        for s2 in 0..=steps {
            let t = f64::from(s2) / f64::from(steps);
            marks.push((
                x0 + (f64::from(x1 - x0) * t) as i32,
                y0 + (f64::from(y1 - y0) * t) as i32,
            ));
        }
    }
    let guide_y = to_px(x_range.start, best_q).1;
    let mut x = px_range.start;
    while x < px_range.end {
        marks.push((x, guide_y));
        x += 3;
    }
    marks.extend(r.curve.iter().map(|p| to_px(p.cost_usd, p.quality)));
    // Dots (and their labels' room) must not hide under the legend.
    let mut points: Vec<(i32, i32)> = b
        .per_model
        .iter()
        .map(|m| to_px(m.cost_usd, m.quality))
        .collect();
    points.push(to_px(b.oracle.cost_usd, b.oracle.quality));
    for &(x2, y2) in &points.clone() {
        points.push((x2 + 60, y2));
    }
    marks.extend(points.iter().copied());

    let inside = |(x, y): (i32, i32), (x0, y0, x1, y1): (i32, i32, i32, i32)| {
        x >= x0 && x <= x1 && y >= y0 && y <= y1
    };
    // Labels: try a few spots around each dot, take the one that covers least.
    let mut placed: Vec<(i32, i32, i32, i32)> = Vec::new();
    let font = ("sans-serif", 12).into_font().color(&MODEL);
    let mut order: Vec<usize> = (0..b.per_model.len()).collect();
    order.sort_by(|&a, &c| b.per_model[c].quality.total_cmp(&b.per_model[a].quality));
    for &i in &order {
        let m = &b.per_model[i];
        let (px, py) = to_px(m.cost_usd, m.quality);
        let label = short(&m.model);
        let w = (label.chars().count() as f64 * 6.6) as i32 + 4;
        let h = 14;
        let mut spots: Vec<(i32, i32)> = Vec::new();
        for dy in [0, 1, -1, 2, -2, 3, -3, 4, -4] {
            spots.push((px + 7, py - h / 2 + dy * h));
            spots.push((px - 7 - w, py - h / 2 + dy * h));
        }
        let cost = |&(x0, y0): &(i32, i32)| -> usize {
            let rect = (x0, y0, x0 + w, y0 + h);
            let off = usize::from(
                x0 < px_range.start
                    || x0 + w > px_range.end
                    || y0 < py_range.start
                    || y0 + h > py_range.end,
            );
            let hits = placed
                .iter()
                .filter(|&&(a, b2, c, d)| x0 < c && a < x0 + w && y0 < d && b2 < y0 + h)
                .count();
            let covered = marks.iter().filter(|&&mk| inside(mk, rect)).count();
            1000 * off + 100 * hits + covered
        };
        let (x0, y0) = spots
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|(k, s2)| (cost(s2), *k))
            .map(|(_, s2)| s2)
            .unwrap_or((px + 7, py - h / 2));
        placed.push((x0, y0, x0 + w, y0 + h));
        let style = font.clone().pos(Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(label, (x0 + 2, y0 + h / 2), style))
            .map_err(err)?;
        if (y0 + h / 2 - py).abs() > h / 2 {
            let lx = if x0 > px { x0 } else { x0 + w };
            root.draw(&PathElement::new(
                vec![(px, py), (lx, y0 + h / 2)],
                MODEL.mix(0.4).stroke_width(1),
            ))
            .map_err(err)?;
        }
    }

    // The oracle.
    let o = (b.oracle.cost_usd, b.oracle.quality);
    chart
        .draw_series(std::iter::once(
            EmptyElement::at(o)
                + Cross::new((0, 0), 6, ORACLE.stroke_width(2))
                + Text::new(
                    "oracle",
                    (8, -14),
                    ("sans-serif", 12).into_font().color(&ORACLE),
                ),
        ))
        .map_err(err)?;

    // The legend, in its own panel right of the plot.
    let (lx, mut ly) = (px_range.end + 14, py_range.start + 8);
    let text = |t: &str, x: i32, y: i32| {
        Text::new(
            t.to_string(),
            (x, y),
            ("sans-serif", 12)
                .into_font()
                .color(&RGBColor(40, 40, 40))
                .pos(Pos::new(HPos::Left, VPos::Center)),
        )
    };
    let entries: [(&str, u8); 6] = [
        ("router: envelope", 0),
        ("router: each setting", 1),
        ("single models", 2),
        ("random mix cheapest ↔ best", 3),
        ("best model's quality", 4),
        ("oracle (cheapest best answer)", 5),
    ];
    for (label, kind) in entries {
        let (a, c) = ((lx, ly), (lx + 22, ly));
        match kind {
            0 => root.draw(&PathElement::new(vec![a, c], ROUTER.stroke_width(3))),
            1 => root.draw(&Circle::new((lx + 11, ly), 2, ROUTER.mix(0.4).filled())),
            2 => root.draw(&Circle::new((lx + 11, ly), 4, MODEL.filled())),
            3 => root
                .draw(&PathElement::new(
                    vec![a, (lx + 9, ly)],
                    RANDOM.stroke_width(2),
                ))
                .and_then(|()| {
                    root.draw(&PathElement::new(
                        vec![(lx + 13, ly), c],
                        RANDOM.stroke_width(2),
                    ))
                }),
            4 => (0..4).try_for_each(|k| {
                let x0 = lx + k * 6;
                root.draw(&PathElement::new(
                    vec![(x0, ly), (x0 + 2, ly)],
                    BEST.stroke_width(1),
                ))
            }),
            _ => root.draw(&Cross::new((lx + 11, ly), 5, ORACLE.stroke_width(2))),
        }
        .map_err(err)?;
        root.draw(&text(label, lx + 28, ly)).map_err(err)?;
        ly += 20;
    }
    // The numbers behind the picture.
    ly += 14;
    let facts = [
        format!("best: {}", short(&b.best_single.model)),
        format!(
            "  {:.3} at {}",
            b.best_single.quality,
            money(b.best_single.cost_usd, 1e-5)
        ),
        format!("cheapest: {}", short(&b.cheapest.model)),
        format!(
            "  {:.3} at {}",
            b.cheapest.quality,
            money(b.cheapest.cost_usd, 1e-5)
        ),
        format!(
            "oracle: {:.3} at {}",
            b.oracle.quality,
            money(b.oracle.cost_usd, 1e-5)
        ),
        "APGR of the best model per budget:".to_string(),
        format!(
            "  {:.3} (random mix: {:.3})",
            b.best_single_per_budget_apgr, b.random_mix_apgr
        ),
        format!(
            "savings at best's quality: {}",
            r.savings_at_equal_quality
                .map_or("-".to_string(), |v| format!("{:.0} %", 100.0 * v))
        ),
    ];
    for f in facts {
        root.draw(&text(&f, lx, ly)).map_err(err)?;
        ly += 17;
    }
    // A thin frame around the plotting area.
    root.draw(&Rectangle::new(
        [
            (px_range.start, py_range.start),
            (px_range.end, py_range.end),
        ],
        RGBColor(160, 160, 160).stroke_width(1),
    ))
    .map_err(err)?;
    Ok(())
}

/// The model name without an organisation prefix (`mistralai/mixtral` → `mixtral`).
fn short(model: &str) -> String {
    model.rsplit('/').next().unwrap_or(model).to_string()
}

#[cfg(test)]
mod tests {
    use super::super::choose::KnobKind;
    use super::super::curve::{CurveOptions, EvalSet, evaluate};
    use super::*;

    #[test]
    fn draws_every_part() {
        let models: Vec<String> = ["org/big", "mid", "small"].map(String::from).to_vec();
        let mut q = Vec::new();
        let mut c = Vec::new();
        let mut p = Vec::new();
        for i in 0..60 {
            q.extend([
                1.0,
                if i % 3 == 0 { 0.0 } else { 1.0 },
                f32::from(i % 2 == 0),
            ]);
            c.extend([0.01, 0.003, 0.001]);
            p.extend([0.9, 0.6 + (i % 5) as f32 * 0.05, 0.3 + (i % 7) as f32 * 0.1]);
        }
        let set = EvalSet {
            models: &models,
            predicted: &p,
            quality: &q,
            cost_usd: &c,
            decision_cost_usd: &c,
        };
        let r = evaluate(&set, KnobKind::CostWeight, &CurveOptions::default()).unwrap();
        let s = svg(&r, "test & <curve>");
        assert!(s.starts_with("<svg"), "{}", &s[..100.min(s.len())]);
        for needle in [
            "big",
            "mid",
            "small",
            "oracle",
            "random mix",
            "mean quality",
            "mean cost per request (USD)",
        ] {
            assert!(s.contains(needle), "missing {needle}");
        }
        assert!(s.contains("stroke-dasharray") || s.matches("<polyline").count() > 3);
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(6.0), 1.0);
        assert_eq!(nice_step(0.012), 0.002);
        assert_eq!(money(0.0025, 0.001), "$0.003");
    }
}
