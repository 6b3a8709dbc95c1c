//! Small numerics: dots, the sigmoid and logit, Cholesky factor and solve.

#![allow(clippy::needless_range_loop)]

/// Dot product with eight independent accumulators (vectorises; fixed summation order).
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]);
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

pub(super) fn sigmoid(s: f32) -> f32 {
    1.0 / (1.0 + (-s).exp())
}

pub(super) fn log_length(chars: f32) -> f32 {
    chars.max(1.0).ln()
}

pub(super) fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-4, 1.0 - 1e-4);
    (p / (1.0 - p)).ln()
}

/// In-place Cholesky factorisation (lower triangle) of the `n × n` matrix `a`; false if not
/// positive definite.
pub(super) fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut diag = a[j * n + j];
        for k in 0..j {
            diag -= a[j * n + k] * a[j * n + k];
        }
        if diag <= 0.0 || !diag.is_finite() {
            return false;
        }
        let l = diag.sqrt();
        a[j * n + j] = l;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            let (ri, rj) = (&a[i * n..i * n + j], &a[j * n..j * n + j]);
            for (x, y) in ri.iter().zip(rj) {
                s -= x * y;
            }
            a[i * n + j] = s / l;
        }
    }
    true
}

/// Solves `L Lᵀ x = b` in place with the factor from [`cholesky`].
pub(super) fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in i + 1..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}
