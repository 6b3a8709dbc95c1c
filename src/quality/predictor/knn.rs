//! Similarity-weighted k nearest neighbours, and their out-of-fold predictions.

#![allow(clippy::needless_range_loop)]

use super::numerics::dot;
use super::train::Data;

/// Weight of a neighbour at cosine similarity `s`.
pub(super) fn knn_weight(s: f32) -> f32 {
    // Inverse cosine distance, bounded: near-duplicates count most, never infinitely.
    1.0 / (1.0 - s + 0.05)
}

/// Similarity-weighted mean label of the `k` most similar rows (among those `allowed`) per model.
pub(super) fn knn_predict(
    sims: &[f32],
    labels: &[f32],
    m: usize,
    k: usize,
    prior: &[f32],
    allowed: impl Fn(usize) -> bool,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(m);
    let mut cand: Vec<(f32, f32)> = Vec::with_capacity(sims.len());
    for j in 0..m {
        cand.clear();
        cand.extend(
            sims.iter()
                .enumerate()
                .filter(|&(i, _)| allowed(i) && labels[i * m + j] >= 0.0)
                .map(|(i, &s)| (s, labels[i * m + j])),
        );
        out.push(weighted_top_k(&mut cand, k).unwrap_or(prior[j]));
    }
    out
}

pub(super) fn weighted_top_k(cand: &mut [(f32, f32)], k: usize) -> Option<f32> {
    if cand.is_empty() {
        return None;
    }
    let k = k.min(cand.len());
    let cmp = |a: &(f32, f32), b: &(f32, f32)| b.0.total_cmp(&a.0);
    if k < cand.len() {
        cand.select_nth_unstable_by(k - 1, cmp);
    }
    let (mut s, mut wsum) = (0.0f32, 0.0f32);
    for &(sim, y) in &cand[..k] {
        let w = knn_weight(sim);
        s += w * y;
        wsum += w;
    }
    Some(s / wsum)
}

/// Out-of-fold kNN predictions for each `k` in `ks` (ascending): `ks.len()` matrices `n × m`.
pub(super) fn knn_out_of_fold(data: &Data<'_>, folds: &[usize], ks: &[usize]) -> Vec<Vec<f32>> {
    let (n, m, d) = (data.n, data.m, data.d);
    let kmax = *ks.last().unwrap_or(&1);
    let prior_by_fold: Vec<Vec<f32>> = (0..=*folds.iter().max().unwrap_or(&0))
        .map(|f| {
            (0..m)
                .map(|j| {
                    let (mut s, mut c) = (0.0f64, 0usize);
                    for i in 0..n {
                        let v = data.y[i * m + j];
                        if folds[i] != f && v.is_finite() {
                            s += f64::from(v);
                            c += 1;
                        }
                    }
                    if c == 0 { 0.5 } else { (s / c as f64) as f32 }
                })
                .collect()
        })
        .collect();
    let mut out = vec![vec![0.0f32; n * m]; ks.len()];
    // Similarities are computed for a block of query rows at a time, so each training vector is
    // read from memory once per block rather than once per query.
    const BLOCK: usize = 16;
    let mut block_sims = vec![0.0f32; BLOCK * n];
    let mut cand: Vec<(f32, f32)> = Vec::with_capacity(n);
    for i in 0..n {
        let slot = i % BLOCK;
        if slot == 0 {
            let queries: Vec<usize> = (i..(i + BLOCK).min(n)).collect();
            for r in 0..n {
                let xr = &data.x[r * d..(r + 1) * d];
                for (b, &q) in queries.iter().enumerate() {
                    block_sims[b * n + r] = if folds[r] == folds[q] {
                        f32::NEG_INFINITY
                    } else {
                        dot(xr, &data.x[q * d..(q + 1) * d])
                    };
                }
            }
        }
        let sims = &block_sims[slot * n..(slot + 1) * n];
        for j in 0..m {
            cand.clear();
            cand.extend(
                (0..n)
                    .filter(|&r| sims[r] > f32::NEG_INFINITY && data.y[r * m + j].is_finite())
                    .map(|r| (sims[r], data.y[r * m + j])),
            );
            let prior = prior_by_fold[folds[i]][j];
            if cand.is_empty() {
                for o in out.iter_mut() {
                    o[i * m + j] = prior;
                }
                continue;
            }
            let top = kmax.min(cand.len());
            let cmp = |a: &(f32, f32), b: &(f32, f32)| b.0.total_cmp(&a.0);
            if top < cand.len() {
                cand.select_nth_unstable_by(top - 1, cmp);
            }
            cand[..top].sort_by(cmp);
            let (mut s, mut wsum, mut taken) = (0.0f32, 0.0f32, 0usize);
            for (a, &kk) in ks.iter().enumerate() {
                while taken < kk.min(top) {
                    let (sim, y) = cand[taken];
                    let w = knn_weight(sim);
                    s += w * y;
                    wsum += w;
                    taken += 1;
                }
                out[a][i * m + j] = s / wsum;
            }
        }
    }
    out
}
