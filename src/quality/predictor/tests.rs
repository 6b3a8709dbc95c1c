//! The predictor's tests: training, cross-validation and the fits checked on planted signals.

use super::cv::{assign_folds, splitmix64};
use super::logistic::fit_logistic_path;
use super::numerics::{cholesky, cholesky_solve};
use super::train::prepare;
use super::*;
use crate::quality::outcomes::Graded;

/// Deterministic pseudo-random unit vectors and grades from a planted linear signal.
pub(super) fn synthetic(
    n: usize,
    d: usize,
    m: usize,
    seed: u64,
) -> (Vec<f32>, Vec<Graded>, Vec<String>) {
    let mut st = seed;
    fn uniform(st: &mut u64) -> f64 {
        (splitmix64(st) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn gauss(st: &mut u64) -> f32 {
        let (u1, u2) = (uniform(st), uniform(st));
        ((-2.0 * (u1 + 1e-300).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    let models: Vec<String> = (0..m).map(|j| format!("model-{j}")).collect();
    let dirs: Vec<Vec<f32>> = (0..m)
        .map(|_| (0..d).map(|_| gauss(&mut st)).collect())
        .collect();
    let mut x = Vec::with_capacity(n * d);
    let mut graded = Vec::with_capacity(n);
    for i in 0..n {
        let mut v: Vec<f32> = (0..d).map(|_| gauss(&mut st)).collect();
        let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
        v.iter_mut().for_each(|a| *a /= norm);
        let mut quality = BTreeMap::new();
        let mut cost = BTreeMap::new();
        for (j, name) in models.iter().enumerate() {
            // Dearer models are better on average; each has its own strengths.
            let strength = dot(&dirs[j], &v) * 3.0 + (j as f32 - m as f32 / 2.0) * 0.4;
            let p = sigmoid(strength);
            let u = uniform(&mut st) as f32;
            quality.insert(name.clone(), if u < p { 1.0 } else { 0.0 });
            cost.insert(name.clone(), 0.0001 * (1.0 + j as f64 * j as f64));
        }
        x.extend_from_slice(&v);
        graded.push(Graded {
            prompt: format!("prompt {i}"),
            quality,
            cost_usd: cost,
            id: Some(format!("id-{i}")),
        });
    }
    (x, graded, models)
}

fn data_for<'a>(x: &'a [f32], d: usize, g: &[Graded], models: &[String]) -> Data<'a> {
    prepare(x, d, g, models, &TrainOptions::default()).unwrap()
}

/// Reference: plain Newton with the exact Hessian (small d only); `z` has `p` columns, the
/// first `penalised` under the penalty.
fn newton_reference(z: &[f32], p: usize, penalised: usize, y: &[f32], lambda: f64) -> Vec<f64> {
    let n = y.len();
    let w = p + 1;
    let mut th = vec![0.0f64; w];
    for _ in 0..50 {
        let mut g = vec![0.0f64; w];
        let mut h = vec![0.0f64; w * w];
        for i in 0..n {
            let zi: Vec<f64> = z[i * p..(i + 1) * p]
                .iter()
                .map(|&v| f64::from(v))
                .chain([1.0])
                .collect();
            let s: f64 = zi.iter().zip(&th).map(|(a, b)| a * b).sum();
            let q = 1.0 / (1.0 + (-s).exp());
            for a in 0..w {
                g[a] += (q - f64::from(y[i])) * zi[a];
                for b in 0..w {
                    h[a * w + b] += q * (1.0 - q) * zi[a] * zi[b];
                }
            }
        }
        for a in 0..penalised {
            g[a] += lambda * th[a];
            h[a * w + a] += lambda;
        }
        assert!(cholesky(&mut h, w));
        cholesky_solve(&h, w, &mut g);
        for a in 0..w {
            th[a] -= g[a];
        }
    }
    th
}

#[test]
fn majorise_minimise_matches_newton() {
    let (x, mut g, models) = synthetic(300, 12, 2, 7);
    // Prompts of varied length, so the length feature has something to fit.
    for (i, row) in g.iter_mut().enumerate() {
        row.prompt = "x".repeat(5 + (i * 37) % 200);
    }
    let data = data_for(&x, 12, &g, &models);
    let rows: Vec<usize> = (0..300).collect();
    for length_feature in [false, true] {
        let opts = TrainOptions {
            length_feature,
            ..TrainOptions::default()
        };
        let path = fit_logistic_path(&data, &rows, &[0.03, 0.3], &opts);
        let d = 12;
        let p = d + usize::from(length_feature);
        let mut z = vec![0.0f32; 300 * p];
        let mut trace = 0.0;
        for i in 0..300 {
            for a in 0..d {
                z[i * p + a] = x[i * d + a] - path.mean[a];
                trace += f64::from(z[i * p + a]).powi(2);
            }
            if let Some((mu, sd)) = path.length {
                z[i * p + d] = (data.log_chars[i] - mu) / sd;
            }
        }
        for (a, l2) in [0.03, 0.3].iter().enumerate() {
            let lambda = l2 * trace / d as f64;
            for j in 0..2 {
                let y: Vec<f32> = (0..300).map(|i| data.y[i * 2 + j]).collect();
                let reference = newton_reference(&z, p, d, &y, lambda);
                let got = &path.thetas[a][j * (p + 1)..(j + 1) * (p + 1)];
                for (r, v) in reference.iter().zip(got) {
                    assert!(
                        (r - v).abs() < 2e-3 * (1.0 + r.abs()),
                        "l2 {l2} model {j}: {reference:?} vs {got:?}"
                    );
                }
                // Predictions through the path agree with the reference too.
                let xi = &x[..d];
                let mut s = reference[p];
                for a2 in 0..d {
                    s += reference[a2] * f64::from(xi[a2] - path.mean[a2]);
                }
                if length_feature {
                    s += reference[d] * f64::from(z[d]);
                }
                let mine = path.logit(&path.thetas[a], j, xi, data.log_chars[0]);
                assert!((s as f32 - mine).abs() < 1e-2, "{s} vs {mine}");
            }
        }
    }
}

#[test]
fn cholesky_solves() {
    let mut a = vec![4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
    let orig = a.clone();
    assert!(cholesky(&mut a, 3));
    let mut b = vec![1.0, 2.0, 3.0];
    cholesky_solve(&a, 3, &mut b);
    for i in 0..3 {
        let r: f64 = (0..3).map(|k| orig[i * 3 + k] * b[k]).sum();
        assert!((r - [1.0, 2.0, 3.0][i]).abs() < 1e-12);
    }
    let mut bad = vec![1.0, 2.0, 2.0, 1.0];
    assert!(!cholesky(&mut bad, 2));
}

#[test]
fn folds_are_deterministic_and_balanced() {
    let f = assign_folds(103, 5, 42);
    assert_eq!(f, assign_folds(103, 5, 42));
    assert_ne!(f, assign_folds(103, 5, 43));
    for k in 0..5 {
        let c = f.iter().filter(|&&v| v == k).count();
        assert!((20..=21).contains(&c));
    }
}

#[test]
fn trains_and_beats_the_single_models() {
    let (x, g, models) = synthetic(600, 16, 3, 1);
    let (p, report) = train(&x, 16, &g, &models, &TrainOptions::default()).unwrap();
    assert!(report.chosen_score.unwrap() > 0.6, "{report:#?}");
    assert_eq!(report.candidates.len(), 8 + 5 + 3 + 1);
    assert_eq!(report.cv_repeats, 3);
    assert_eq!(p.models(), &models[..]);
    let q = p.predict(&x[..16]);
    assert_eq!(q.len(), 3);
    assert!(q.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(p.mean_cost_usd("model-2").unwrap() > p.mean_cost_usd("model-0").unwrap());
    assert_eq!(p.graded_count("model-1"), Some(600));
    let json = serde_json::to_string(&report).unwrap();
    assert!(json.contains("\"candidates\""));
}

#[test]
fn each_method_predicts_like_its_cross_validation() {
    let (x, g, models) = synthetic(400, 8, 2, 3);
    for method in [
        Method::Logistic { l2: 0.1 },
        Method::Knn { k: 10 },
        Method::Blend {
            logistic_weight: 0.5,
            l2: 0.1,
            k: 10,
        },
    ] {
        let opts = TrainOptions {
            fallback_method: method,
            folds: 200, // too many folds for 400 rows: CV is skipped
            ..TrainOptions::default()
        };
        let (p, report) = train(&x, 8, &g, &models, &opts).unwrap();
        assert!(report.cv_skipped.is_some());
        assert_eq!(p.method(), method);
        assert!(p.is_complete());
        // The predictor round-trips through JSON plus the vectors file.
        let mut back = QualityPredictor::from_json(&p.to_json()).unwrap();
        assert_eq!(back.needs_vectors(), method != Method::Logistic { l2: 0.1 });
        if back.needs_vectors() {
            assert!(!back.is_complete());
            let v = QualityPredictor::vectors_from_le_bytes(&p.vectors_le_bytes()).unwrap();
            back.set_training_vectors(v).unwrap();
        }
        for i in 0..5 {
            assert_eq!(
                back.predict(&x[i * 8..(i + 1) * 8]),
                p.predict(&x[i * 8..(i + 1) * 8])
            );
        }
    }
}

#[test]
fn knn_prediction_of_a_training_row_leans_on_itself() {
    let (x, g, models) = synthetic(200, 8, 2, 5);
    let opts = TrainOptions {
        fallback_method: Method::Knn { k: 1 },
        folds: 100,
        ..TrainOptions::default()
    };
    let (p, _) = train(&x, 8, &g, &models, &opts).unwrap();
    for i in 0..20 {
        let q = p.predict(&x[i * 8..(i + 1) * 8]);
        assert_eq!(q[0], g[i].quality["model-0"]);
    }
    let near = p.nearest_graded(&x[24..32], 3);
    assert_eq!(near[0].0, 3);
    assert!(near[0].1 > 0.999 && near[1].1 <= near[0].1);
    assert_eq!(p.examples().unwrap().ids[3].as_deref(), Some("id-3"));
}

#[test]
fn partial_grades_train_each_model_on_its_rows() {
    let (x, mut g, models) = synthetic(300, 8, 3, 9);
    for (i, row) in g.iter_mut().enumerate() {
        // Each line grades only two of the three models (like pairwise preferences).
        let drop = &models[i % 3];
        row.quality.remove(drop);
    }
    let (p, report) = train(&x, 8, &g, &models, &TrainOptions::default()).unwrap();
    assert_eq!(report.score, "negative_log_loss");
    assert_eq!(p.graded_count("model-0"), Some(200));
    assert!(p.predict(&x[..8]).iter().all(|v| v.is_finite()));
}

#[test]
fn bad_input_is_reported() {
    let (x, g, models) = synthetic(50, 4, 2, 1);
    let o = TrainOptions::default();
    assert!(matches!(
        train(&x[..10], 4, &g, &models, &o),
        Err(TrainError::Shape { .. })
    ));
    let mut bad = x.clone();
    bad[9] = f32::NAN;
    assert_eq!(
        train(&bad, 4, &g, &models, &o).unwrap_err(),
        TrainError::NonFinite { row: 2 }
    );
    let e = train(&x, 4, &g, &["nobody".to_string()], &o).unwrap_err();
    assert!(e.to_string().contains("`nobody` is graded on none"), "{e}");
    let twice = vec![models[0].clone(), models[0].clone()];
    assert!(matches!(
        train(&x, 4, &g, &twice, &o),
        Err(TrainError::Models { .. })
    ));
    let mut nocost = g.clone();
    nocost.iter_mut().for_each(|r| r.cost_usd.clear());
    let e = train(&x, 4, &nocost, &models, &o).unwrap_err();
    assert!(matches!(e, TrainError::NoCost { .. }), "{e}");
    let with_fallback = TrainOptions {
        fallback_cost_usd: models.iter().map(|m| (m.clone(), 0.01)).collect(),
        ..TrainOptions::default()
    };
    assert!(train(&x, 4, &nocost, &models, &with_fallback).is_ok());
}

#[test]
fn predictor_json_errors_say_where() {
    let e = QualityPredictor::from_json("{\"version\": 1,\n \"models\": 3}").unwrap_err();
    assert!(e.to_string().contains("line 2"), "{e}");
    assert!(QualityPredictor::vectors_from_le_bytes(&[0, 1, 2]).is_err());
}
