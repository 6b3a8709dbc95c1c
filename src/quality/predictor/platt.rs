//! Platt calibration per model, cross-fitted.

#![allow(clippy::needless_range_loop)]

use super::numerics::logit;
use super::train::Data;

/// Per model `(a, b)` minimising the cross-entropy of `σ(a·logit(p) + b)` on the rows `use_row`
/// accepts (Newton on two parameters, with a tiny ridge keeping it defined).
pub(super) fn fit_platt(
    data: &Data<'_>,
    pred: &[f32],
    use_row: impl Fn(usize) -> bool,
) -> Vec<(f32, f32)> {
    let (n, m) = (data.n, data.m);
    (0..m)
        .map(|j| {
            let pts: Vec<(f64, f64)> = (0..n)
                .filter(|&i| use_row(i) && data.y[i * m + j].is_finite())
                .map(|i| {
                    (
                        f64::from(logit(pred[i * m + j])),
                        f64::from(data.y[i * m + j]),
                    )
                })
                .collect();
            if pts.len() < 2 {
                return (1.0, 0.0);
            }
            let (mut a, mut b) = (1.0f64, 0.0f64);
            let ridge = 1e-3;
            for _ in 0..50 {
                let (mut ga, mut gb, mut haa, mut hab, mut hbb) =
                    (ridge * (a - 1.0), ridge * b, ridge, 0.0, ridge);
                for &(s, y) in &pts {
                    let p = 1.0 / (1.0 + (-(a * s + b)).exp());
                    let r = p - y;
                    let h = (p * (1.0 - p)).max(1e-12);
                    ga += r * s;
                    gb += r;
                    haa += h * s * s;
                    hab += h * s;
                    hbb += h;
                }
                let det = haa * hbb - hab * hab;
                if det <= 0.0 || !det.is_finite() {
                    break;
                }
                let da = (hbb * ga - hab * gb) / det;
                let db = (haa * gb - hab * ga) / det;
                a -= da;
                b -= db;
                if da.abs() + db.abs() < 1e-9 {
                    break;
                }
            }
            if a.is_finite() && b.is_finite() {
                (a as f32, b as f32)
            } else {
                (1.0, 0.0)
            }
        })
        .collect()
}
