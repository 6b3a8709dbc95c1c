//! Calibration: pick the knob value that meets a target on a validation sweep.
//!
//! Pure functions over the [`Point`]s of a sweep ([`super::curve::CurveReport::curve`]) computed on a
//! validation set (never the test set). The chosen setting is one the router can run: a sweep
//! point, not a random mix of two.

use serde::{Deserialize, Serialize};

use super::curve::Point;

/// What the route promises.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The most quality at a mean cost per request of at most this many US dollars.
    MaxMeanCost(f64),
    /// The least cost at a mean quality of at least this.
    MinMeanQuality(f64),
    /// The most quality with at most this share (0..1) of requests sent to the premium candidate.
    MaxPremiumShare(f64),
}

/// The knob setting that meets a target, with what it gave on the validation set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Calibrated {
    /// The knob value (tolerance or cost weight).
    pub knob: f64,
    /// Mean cost per request on the validation set, US dollars.
    pub cost_usd: f64,
    /// Mean quality on the validation set.
    pub quality: f64,
    /// Share of requests sent to the premium candidate.
    pub premium_share: f64,
}

impl From<&Point> for Calibrated {
    fn from(p: &Point) -> Self {
        Calibrated {
            knob: p.knob,
            cost_usd: p.cost_usd,
            quality: p.quality,
            premium_share: p.premium_share,
        }
    }
}

/// The sweep point that meets `target` best, or `None` when no point meets it.
///
/// * `MaxMeanCost`: highest quality among points within the cost (ties: cheaper, then earlier).
/// * `MinMeanQuality`: lowest cost among points at or above the quality (ties: better, then earlier).
/// * `MaxPremiumShare`: highest quality among points within the share (ties: cheaper, then earlier).
pub fn calibrate(sweep: &[Point], target: Target) -> Option<Calibrated> {
    let finite = |p: &&Point| p.cost_usd.is_finite() && p.quality.is_finite();
    let better_quality = |a: &Point, b: &Point| {
        b.quality > a.quality || (b.quality == a.quality && b.cost_usd < a.cost_usd)
    };
    let chosen =
        match target {
            Target::MaxMeanCost(usd) => sweep
                .iter()
                .filter(finite)
                .filter(|p| p.cost_usd <= usd)
                .fold(None::<&Point>, |acc, p| match acc {
                    Some(a) if !better_quality(a, p) => Some(a),
                    _ => Some(p),
                }),
            Target::MinMeanQuality(q) => sweep
                .iter()
                .filter(finite)
                .filter(|p| p.quality >= q)
                .fold(None::<&Point>, |acc, p| match acc {
                    Some(a)
                        if !(p.cost_usd < a.cost_usd
                            || (p.cost_usd == a.cost_usd && p.quality > a.quality)) =>
                    {
                        Some(a)
                    }
                    _ => Some(p),
                }),
            Target::MaxPremiumShare(s) => sweep
                .iter()
                .filter(finite)
                .filter(|p| p.premium_share <= s)
                .fold(None::<&Point>, |acc, p| match acc {
                    Some(a) if !better_quality(a, p) => Some(a),
                    _ => Some(p),
                }),
        };
    chosen.map(Calibrated::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(knob: f64, cost_usd: f64, quality: f64, premium_share: f64) -> Point {
        Point {
            knob,
            cost_usd,
            quality,
            premium_share,
        }
    }

    fn sweep() -> Vec<Point> {
        vec![
            p(0.0, 10.0, 0.90, 1.0),
            p(1.0, 6.0, 0.90, 0.5),
            p(2.0, 3.0, 0.80, 0.2),
            p(3.0, 1.0, 0.60, 0.0),
        ]
    }

    #[test]
    fn max_mean_cost() {
        let c = calibrate(&sweep(), Target::MaxMeanCost(7.0)).unwrap();
        assert_eq!(c.knob, 1.0);
        let c = calibrate(&sweep(), Target::MaxMeanCost(100.0)).unwrap();
        assert_eq!(c.knob, 1.0, "same quality, cheaper");
        assert!(calibrate(&sweep(), Target::MaxMeanCost(0.5)).is_none());
    }

    #[test]
    fn min_mean_quality() {
        let c = calibrate(&sweep(), Target::MinMeanQuality(0.75)).unwrap();
        assert_eq!(c.knob, 2.0);
        assert_eq!(c.cost_usd, 3.0);
        assert!(calibrate(&sweep(), Target::MinMeanQuality(0.95)).is_none());
    }

    #[test]
    fn max_premium_share() {
        let c = calibrate(&sweep(), Target::MaxPremiumShare(0.3)).unwrap();
        assert_eq!(c.knob, 2.0);
        let c = calibrate(&sweep(), Target::MaxPremiumShare(0.0)).unwrap();
        assert_eq!(c.knob, 3.0);
    }

    #[test]
    fn target_serialises() {
        let t: Target = serde_json::from_str(r#"{"max_mean_cost": 0.002}"#).unwrap();
        assert_eq!(t, Target::MaxMeanCost(0.002));
    }
}
