//! Logistic regression per model, fitted along a path of L2 strengths by a majorise-minimise
//! Newton method (one Cholesky factor per strength).

#![allow(clippy::needless_range_loop)]

use super::TrainOptions;
use super::numerics::{cholesky, cholesky_solve, dot, logit, sigmoid};
use super::train::Data;
use std::collections::BTreeMap;

pub(super) struct LogisticPath {
    /// Training mean of the embedding.
    pub(super) mean: Vec<f32>,
    pub(super) d: usize,
    /// Standardisation of the log prompt length (`None`: the length feature is off).
    pub(super) length: Option<(f32, f32)>,
    /// Per strength: `m × width` with `width = d (+ 1 for the length) + 1 (bias)`: weights on
    /// the centred vector, the length coefficient, then the bias.
    pub(super) thetas: Vec<Vec<f64>>,
}

impl LogisticPath {
    pub(super) fn width(&self) -> usize {
        self.d + usize::from(self.length.is_some()) + 1
    }

    pub(super) fn logit(&self, theta: &[f64], j: usize, x: &[f32], log_chars: f32) -> f32 {
        let w = self.width();
        let t = &theta[j * w..(j + 1) * w];
        let mut s = t[w - 1];
        for a in 0..self.d {
            s += t[a] * f64::from(x[a] - self.mean[a]);
        }
        if let Some((mu, sd)) = self.length {
            s += t[self.d] * f64::from((log_chars - mu) / sd);
        }
        s as f32
    }
}

/// Fits logistic regressions for every model on `rows`, for each relative strength in `l2s`
/// (in the order given, each warm-started from the previous).
pub(super) fn fit_logistic_path(
    data: &Data<'_>,
    rows: &[usize],
    l2s: &[f64],
    options: &TrainOptions,
) -> LogisticPath {
    let (d, m) = (data.d, data.m);
    let nt = rows.len();
    let mut mean = vec![0.0f64; d];
    for &i in rows {
        for (acc, v) in mean.iter_mut().zip(&data.x[i * d..(i + 1) * d]) {
            *acc += f64::from(*v);
        }
    }
    let mean: Vec<f32> = mean.iter().map(|v| (v / nt.max(1) as f64) as f32).collect();
    let length = options.length_feature.then(|| {
        let vals: Vec<f64> = rows.iter().map(|&i| f64::from(data.log_chars[i])).collect();
        let mu = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
        let var = vals.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / vals.len().max(1) as f64;
        (mu as f32, var.sqrt().max(1e-3) as f32)
    });
    let e = usize::from(length.is_some());
    let p = d + e; // columns of z
    let w = p + 1; // parameters per model
    let mut z = vec![0.0f32; nt * p];
    let mut trace = 0.0f64;
    for (r, &i) in rows.iter().enumerate() {
        for a in 0..d {
            let v = data.x[i * d + a] - mean[a];
            z[r * p + a] = v;
            trace += f64::from(v) * f64::from(v);
        }
        if let Some((mu, sd)) = length {
            z[r * p + d] = (data.log_chars[i] - mu) / sd;
        }
    }
    let scale = (trace / d as f64).max(1e-12);

    // Models with the same graded rows share a Gram matrix.
    let mut groups: BTreeMap<Vec<u32>, Vec<usize>> = BTreeMap::new();
    for j in 0..m {
        let local: Vec<u32> = rows
            .iter()
            .enumerate()
            .filter(|(_, i)| data.y[**i * m + j].is_finite())
            .map(|(r, _)| r as u32)
            .collect();
        groups.entry(local).or_default().push(j);
    }

    let mut thetas = vec![vec![0.0f64; m * w]; l2s.len()];
    for (local, group) in &groups {
        let labels: Vec<Vec<f32>> = group
            .iter()
            .map(|&j| {
                local
                    .iter()
                    .map(|&r| data.y[rows[r as usize] * m + j])
                    .collect()
            })
            .collect();
        let mut theta: Vec<Vec<f64>> = labels
            .iter()
            .map(|ys| {
                let mut t = vec![0.0f64; w];
                let mean_y = if ys.is_empty() {
                    0.5
                } else {
                    ys.iter().map(|&v| f64::from(v)).sum::<f64>() / ys.len() as f64
                };
                t[w - 1] = f64::from(logit(mean_y as f32));
                t
            })
            .collect();
        if local.is_empty() {
            for (a, _) in l2s.iter().enumerate() {
                for (g, &j) in group.iter().enumerate() {
                    thetas[a][j * w..(j + 1) * w].copy_from_slice(&theta[g]);
                }
            }
            continue;
        }
        let gram = augmented_gram(&z, p, local);
        for (a, &l2) in l2s.iter().enumerate() {
            let lambda = l2 * scale;
            // Majoriser of the Hessian: a little over ¼ of the Gram matrix, plus the penalty
            // (and a whisker on the unpenalised length column, keeping it definite).
            let mut b = gram.iter().map(|v| v * 0.2505).collect::<Vec<f64>>();
            for t in 0..d {
                b[t * w + t] += lambda;
            }
            for t in d..p {
                b[t * w + t] += 1e-6 * local.len() as f64;
            }
            let chol = cholesky(&mut b, w);
            debug_assert!(chol, "majoriser is positive definite");
            mm_fit(&z, p, d, local, &labels, &mut theta, &b, lambda, options);
            for (g, &j) in group.iter().enumerate() {
                thetas[a][j * w..(j + 1) * w].copy_from_slice(&theta[g]);
            }
        }
    }
    LogisticPath {
        mean,
        d,
        length,
        thetas,
    }
}

/// `(d+1) × (d+1)` Gram matrix of the rows `local` of `z` (`d` columns) with a constant column
/// appended.
pub(super) fn augmented_gram(z: &[f32], d: usize, local: &[u32]) -> Vec<f64> {
    let w = d + 1;
    let mut gram = vec![0.0f64; w * w];
    let mut block = vec![0.0f32; d * d];
    let mut sums = vec![0.0f64; d];
    let flush = |block: &mut Vec<f32>, gram: &mut Vec<f64>| {
        for a in 0..d {
            for b in a..d {
                gram[a * w + b] += f64::from(block[a * d + b]);
            }
        }
        block.iter_mut().for_each(|v| *v = 0.0);
    };
    for (cnt, chunk) in local.chunks(4).enumerate() {
        let rows: Vec<&[f32]> = chunk
            .iter()
            .map(|&r| &z[r as usize * d..(r as usize + 1) * d])
            .collect();
        for row in &rows {
            for (s, v) in sums.iter_mut().zip(row.iter()) {
                *s += f64::from(*v);
            }
        }
        if rows.len() == 4 {
            let (r0, r1, r2, r3) = (rows[0], rows[1], rows[2], rows[3]);
            for a in 0..d {
                let (c0, c1, c2, c3) = (r0[a], r1[a], r2[a], r3[a]);
                let out = &mut block[a * d + a..(a + 1) * d];
                for ((((o, x0), x1), x2), x3) in out
                    .iter_mut()
                    .zip(&r0[a..])
                    .zip(&r1[a..])
                    .zip(&r2[a..])
                    .zip(&r3[a..])
                {
                    *o += c0 * x0 + c1 * x1 + c2 * x2 + c3 * x3;
                }
            }
        } else {
            for row in &rows {
                for a in 0..d {
                    let c = row[a];
                    let out = &mut block[a * d + a..(a + 1) * d];
                    for (o, x) in out.iter_mut().zip(&row[a..]) {
                        *o += c * x;
                    }
                }
            }
        }
        if cnt % 64 == 63 {
            flush(&mut block, &mut gram);
        }
    }
    flush(&mut block, &mut gram);
    for a in 0..d {
        for b in 0..a {
            gram[a * w + b] = gram[b * w + a];
        }
        gram[a * w + d] = sums[a];
        gram[d * w + a] = sums[a];
    }
    gram[d * w + d] = local.len() as f64;
    gram
}

/// Accelerated majorise–minimise for the logistic fits of a group of models sharing rows:
/// `z` has `d` columns, the first `penalised` of them under the L2 penalty `lambda`; `chol`
/// holds the Cholesky factor of the majoriser.
#[allow(clippy::too_many_arguments)]
pub(super) fn mm_fit(
    z: &[f32],
    d: usize,
    penalised: usize,
    local: &[u32],
    labels: &[Vec<f32>],
    theta: &mut [Vec<f64>],
    chol: &[f64],
    lambda: f64,
    options: &TrainOptions,
) {
    let g_count = labels.len();
    let w = d + 1;
    let n_rows = local.len() as f64;
    // Per model: the iterate x, the extrapolated point y, the momentum t, whether active.
    let mut x: Vec<Vec<f64>> = theta.to_vec();
    let mut yv: Vec<Vec<f64>> = theta.to_vec();
    let mut t = vec![1.0f64; g_count];
    let mut active: Vec<usize> = (0..g_count).collect();
    let mut w32 = vec![0.0f32; g_count * w];
    let mut grad = vec![0.0f64; g_count * w];
    let mut block = vec![0.0f32; g_count * w];
    for _iter in 0..options.max_iterations.max(1) {
        if active.is_empty() {
            break;
        }
        for &g in &active {
            for a in 0..w {
                w32[g * w + a] = yv[g][a] as f32;
            }
        }
        grad.iter_mut().for_each(|v| *v = 0.0);
        block.iter_mut().for_each(|v| *v = 0.0);
        for (cnt, &r) in local.iter().enumerate() {
            let zi = &z[r as usize * d..(r as usize + 1) * d];
            for &g in &active {
                let wg = &w32[g * w..g * w + d];
                let s = dot(wg, zi) + w32[g * w + d];
                let res = sigmoid(s) - labels[g][cnt];
                let out = &mut block[g * w..(g + 1) * w];
                for (o, v) in out[..d].iter_mut().zip(zi) {
                    *o += res * v;
                }
                out[d] += res;
            }
            if cnt % 128 == 127 {
                for &g in &active {
                    for a in 0..w {
                        grad[g * w + a] += f64::from(block[g * w + a]);
                        block[g * w + a] = 0.0;
                    }
                }
            }
        }
        for &g in &active {
            for a in 0..w {
                grad[g * w + a] += f64::from(block[g * w + a]);
            }
        }
        let mut still = Vec::with_capacity(active.len());
        for &g in &active {
            let gr = &mut grad[g * w..(g + 1) * w];
            for a in 0..penalised {
                gr[a] += lambda * yv[g][a];
            }
            let mut step = gr.to_vec();
            cholesky_solve(chol, w, &mut step);
            let decrement: f64 = gr.iter().zip(&step).map(|(a, b)| a * b).sum();
            let x_new: Vec<f64> = yv[g].iter().zip(&step).map(|(a, b)| a - b).collect();
            if decrement <= options.tolerance * n_rows.max(1.0) {
                x[g] = x_new;
                continue;
            }
            // Gradient restart (O'Donoghue & Candès): drop momentum when it points uphill.
            let uphill: f64 = gr
                .iter()
                .zip(x_new.iter().zip(&x[g]))
                .map(|(gv, (a, b))| gv * (a - b))
                .sum();
            if uphill > 0.0 {
                t[g] = 1.0;
                yv[g] = x_new.clone();
            } else {
                let t_next = (1.0 + (1.0 + 4.0 * t[g] * t[g]).sqrt()) / 2.0;
                let beta = (t[g] - 1.0) / t_next;
                yv[g] = x_new
                    .iter()
                    .zip(&x[g])
                    .map(|(a, b)| a + beta * (a - b))
                    .collect();
                t[g] = t_next;
            }
            x[g] = x_new;
            still.push(g);
        }
        active = still;
    }
    for (g, th) in theta.iter_mut().enumerate() {
        th.clone_from(&x[g]);
    }
}
