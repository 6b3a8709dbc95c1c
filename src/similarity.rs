//! The one place that turns vectors into similarities and similarities into distances.
//!
//! Every vector pointsman stores or searches is L2-normalised, so cosine similarity is the dot
//! product. simsimd computes it with SIMD kernels picked at run time; `1 - similarity` is the
//! distance handed to the HNSW graph, clamped at zero because rounding can push the dot product
//! of a vector with itself above 1 (hnsw_rs asserts distances are non-negative).

use simsimd::SpatialSimilarity;

/// Cosine similarity of two L2-normalised vectors of equal length.
#[inline]
pub fn similarity(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match f32::dot(a, b) {
        Some(d) => d as f32,
        None => a.iter().zip(b).map(|(x, y)| x * y).sum(),
    }
}

/// Dot product of two `i8` code vectors of equal length.
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match <i8 as SpatialSimilarity>::dot(a, b) {
        Some(d) => d as f32,
        None => a
            .iter()
            .zip(b)
            .map(|(&x, &y)| f32::from(x) * f32::from(y))
            .sum(),
    }
}

/// Distance used by the HNSW graph: `1 - similarity`, never negative.
#[inline]
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    (1.0 - similarity(a, b)).max(0.0)
}

/// Converts a graph distance back to a similarity.
#[inline]
pub fn similarity_from_distance(d: f32) -> f32 {
    1.0 - d
}

/// Scales `v` to unit length in place; a zero vector stays zero.
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The HNSW distance: `1 - dot`, clamped at zero, for L2-normalised `f32` vectors.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnitDot;

impl anndists::dist::Distance<f32> for UnitDot {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        distance(va, vb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_unit_vectors_have_zero_distance() {
        let mut v: Vec<f32> = (0..384).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        normalise(&mut v);
        assert!((similarity(&v, &v) - 1.0).abs() < 1e-5);
        assert!(distance(&v, &v) >= 0.0);
        assert!(distance(&v, &v) < 1e-5);
    }

    #[test]
    fn opposite_vectors() {
        let a = [1.0, 0.0, 0.0];
        let b = [-1.0, 0.0, 0.0];
        assert!((similarity(&a, &b) + 1.0).abs() < 1e-6);
        assert!((distance(&a, &b) - 2.0).abs() < 1e-6);
        assert!((similarity_from_distance(distance(&a, &b)) + 1.0).abs() < 1e-6);
    }

    #[test]
    fn normalise_zero_is_noop() {
        let mut z = [0.0f32; 4];
        normalise(&mut z);
        assert_eq!(z, [0.0; 4]);
    }
}
