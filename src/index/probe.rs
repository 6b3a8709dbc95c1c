//! The neighbours a decision reports, found at a cost that barely grows with the index.
//!
//! The vectors are split into partitions that never cross a route: a route's utterances form one
//! partition, or, for a route of more than [`PART_MAX`] utterances, parts of at most that many
//! found by repeated spherical 2-means. A search ranks the partitions by their centroids, ranks
//! the members of the best partitions by `i8` codes until it has looked at [`PROBE_VECTORS`]
//! vectors, and computes the exact similarity of the best few (an inverted file index whose
//! lists are the routes themselves). The scan is bounded by that budget and one partition; the
//! centroids cost one `i8` dot product per partition (a 384th of the vectors' bytes at most).
//!
//! The codes the scan ranks by are of the vectors projected onto their [`Projection`]: half as
//! many directions, those that carry most of the vectors' energy, so the scan reads half the
//! bytes. It reads them from memory, not from caches (the forward pass has just filled those),
//! and its cost is their size: at 100,050 utterances the probe took 73 µs instead of 96 after the
//! caches were flushed, for a recall@5 of 0.942 instead of 0.947 (`benches/scale.rs search`, 1,000
//! CLINC150 validation prompts; at 15,000, 71 µs instead of 85, recall 0.986 instead of 0.987).
//!
//! The result is approximate: a true neighbour in a partition whose centroid ranks low is
//! missed. Recall of the reported neighbours against the exact scan, on CLINC150 validation
//! prompts (`benches/scale.sh`): 0.986 at 15,000 utterances, 0.942 at 100,050 (docs/speed.md).
//! Tables whose method decides on neighbours (`neighbours`) keep the exact scan or the HNSW
//! graph and build no partitions; the others only report neighbours, and report these.

use super::Hit;
use super::search::best;
use crate::similarity;

/// A route with more utterances than this is split into parts of at most this many.
pub const PART_MAX: usize = 384;
/// A search scans the best partitions until it has looked at this many vectors.
pub const PROBE_VECTORS: usize = 1024;
/// Lloyd iterations of each 2-means split of a large route.
const KMEANS_ROUNDS: usize = 6;

/// Partitions of an index's vectors, each within one route.
#[derive(Debug, Clone, Default)]
pub(super) struct Partitions {
    /// Vector ids, grouped by partition.
    members: Vec<u32>,
    /// Partition `p` holds `members[offsets[p]..offsets[p + 1]]`.
    offsets: Vec<usize>,
    /// One centroid per partition, as [`Code`]s.
    centroids: Codes,
    /// The members' projected vectors as [`Code`]s, in `members` order (a partition's are
    /// contiguous).
    codes: Codes,
    /// What the centroids and codes are projected by.
    projection: Projection,
}

/// Vectors quantised to `i8` with a scale each (`x ≈ code × scale`): a quarter of the bytes of
/// `f32`, for ranking candidates before their exact similarity is computed. A scan after a
/// forward pass reads them from memory, not from the caches the pass has filled.
#[derive(Debug, Clone, Default)]
struct Codes {
    dim: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
}

impl Codes {
    fn new(dim: usize) -> Self {
        Codes {
            dim,
            ..Codes::default()
        }
    }

    fn push(&mut self, v: &[f32]) {
        let (codes, scale) = quantise(v);
        self.codes.extend(codes);
        self.scales.push(scale);
    }

    /// Approximate dot product of code `i` with a quantised query (up to the query's scale).
    #[inline]
    fn dot(&self, i: usize, query: &[i8]) -> f32 {
        let code = &self.codes[i * self.dim..(i + 1) * self.dim];
        similarity::dot_i8(code, query) * self.scales[i]
    }
}

/// `v` as `i8` codes and the scale that maps them back.
fn quantise(v: &[f32]) -> (Vec<i8>, f32) {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return (vec![0; v.len()], 0.0);
    }
    let scale = max / 127.0;
    let codes = v.iter().map(|x| (x / scale).round() as i8).collect();
    (codes, scale)
}

/// Vectors of at least this many dimensions are ranked by codes of half as many...
const PROJECT_FROM_DIM: usize = 256;
/// ...in a table of more than this many: in a smaller one the probe reads most of the codes
/// anyway, few bytes, and opening it need not find directions.
const PROJECT_FROM_VECTORS: usize = 4 * PROBE_VECTORS;
/// Vectors sampled to find a [`Projection`]'s directions.
const PROJECTION_SAMPLE: usize = 8192;
/// Rounds of orthogonal iteration that find them.
const PROJECTION_ROUNDS: usize = 24;

/// A linear map of the vectors onto fewer orthonormal directions: the principal directions of
/// their second moment about zero, which lose the least of dot products with them (a query and
/// a vector both projected have nearly the dot product they had). The identity below
/// [`PROJECT_FROM_DIM`] dimensions or [`PROJECT_FROM_VECTORS`] vectors.
#[derive(Debug, Clone, Default)]
struct Projection {
    /// Row-major, `out_dim × dim`: exact, to project what the index stores.
    directions: Vec<f32>,
    /// The same rows as codes: a query is projected with these, a quarter of the bytes to read.
    codes: Codes,
    dim: usize,
}

impl Projection {
    fn new(vectors: &[f32], dim: usize) -> Self {
        if dim >= PROJECT_FROM_DIM && vectors.len() / dim > PROJECT_FROM_VECTORS {
            Projection::fitted(vectors, dim)
        } else {
            Projection::from_directions(Vec::new(), dim)
        }
    }

    /// Onto `dim / 2` principal directions of `vectors`, whatever their number.
    fn fitted(vectors: &[f32], dim: usize) -> Self {
        Projection::from_directions(principal_directions(vectors, dim, dim / 2), dim)
    }

    fn from_directions(directions: Vec<f32>, dim: usize) -> Self {
        let mut codes = Codes::new(dim);
        for d in directions.chunks_exact(dim) {
            codes.push(d);
        }
        Projection {
            directions,
            codes,
            dim,
        }
    }

    fn out_dim(&self) -> usize {
        if self.directions.is_empty() {
            self.dim
        } else {
            self.directions.len() / self.dim
        }
    }

    /// `v` projected exactly.
    fn apply(&self, v: &[f32]) -> Vec<f32> {
        if self.directions.is_empty() {
            return v.to_vec();
        }
        self.directions
            .chunks_exact(self.dim)
            .map(|d| similarity::similarity(d, v))
            .collect()
    }

    /// A query projected and quantised, as the codes are searched with.
    fn query(&self, query: &[f32]) -> Vec<i8> {
        let (q, _) = quantise(query);
        if self.directions.is_empty() {
            return q;
        }
        let projected: Vec<f32> = (0..self.out_dim()).map(|j| self.codes.dot(j, &q)).collect();
        quantise(&projected).0
    }
}

/// `out` orthonormal directions (row-major) that span the most of the rows' second moment, by
/// orthogonal iteration on the second moment of a sample of them: deterministic, so the same
/// vectors always give the same directions. The later rows converge more slowly, which costs
/// the ranking a little and the answer nothing (the best codes are re-scored exactly).
fn principal_directions(vectors: &[f32], dim: usize, out: usize) -> Vec<f32> {
    let step = (vectors.len() / dim).div_ceil(PROJECTION_SAMPLE).max(1);
    let mut moment = vec![0.0f32; dim * dim];
    for x in vectors.chunks_exact(dim).step_by(step) {
        for (i, &xi) in x.iter().enumerate() {
            moment[i * dim + i..(i + 1) * dim]
                .iter_mut()
                .zip(&x[i..])
                .for_each(|(m, y)| *m += xi * y);
        }
    }
    for i in 0..dim {
        for j in 0..i {
            moment[i * dim + j] = moment[j * dim + i];
        }
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut basis: Vec<f32> = (0..out * dim)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        })
        .collect();
    let mut next = vec![0.0f32; out * dim];
    for _ in 0..PROJECTION_ROUNDS {
        for (n, b) in next.chunks_exact_mut(dim).zip(basis.chunks_exact(dim)) {
            for (i, ni) in n.iter_mut().enumerate() {
                *ni = similarity::similarity(&moment[i * dim..(i + 1) * dim], b);
            }
        }
        // Gram-Schmidt in order: the first rows settle on the strongest directions
        for k in 0..out {
            let (done, rest) = next.split_at_mut(k * dim);
            let row = &mut rest[..dim];
            for d in done.chunks_exact(dim) {
                let p = similarity::similarity(d, row);
                row.iter_mut().zip(d).for_each(|(a, b)| *a -= p * b);
            }
            similarity::normalise(row);
        }
        std::mem::swap(&mut basis, &mut next);
    }
    basis
}

/// Candidates ranked by their codes whose exact similarity is then computed: the `k` reported
/// come from these.
const RESCORED_PER_NEIGHBOUR: usize = 4;

impl Partitions {
    /// Partitions row-major `vectors` whose rows belong to `labels` (one route each).
    pub(super) fn new(vectors: &[f32], dim: usize, labels: &[usize], routes: usize) -> Self {
        Partitions::projected(vectors, dim, labels, routes, Projection::new(vectors, dim))
    }

    fn projected(
        vectors: &[f32],
        dim: usize,
        labels: &[usize],
        routes: usize,
        projection: Projection,
    ) -> Self {
        let mut by_route: Vec<Vec<u32>> = vec![Vec::new(); routes];
        for (id, &route) in labels.iter().enumerate() {
            by_route[route].push(id as u32);
        }
        let mut out = Partitions {
            offsets: vec![0],
            centroids: Codes::new(projection.out_dim()),
            codes: Codes::new(projection.out_dim()),
            ..Partitions::default()
        };
        let row = |id: u32| &vectors[id as usize * dim..(id as usize + 1) * dim];
        for ids in by_route.into_iter().filter(|ids| !ids.is_empty()) {
            let mut parts = Vec::new();
            bisect(ids, dim, &row, &mut parts);
            for part in parts {
                out.centroids
                    .push(&projection.apply(&centroid(&part, dim, &row)));
                for &id in &part {
                    out.codes.push(&projection.apply(row(id)));
                }
                out.members.extend(&part);
                out.offsets.push(out.members.len());
            }
        }
        out.projection = projection;
        out
    }

    /// Number of partitions.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// About the `k` nearest members of the partitions nearest to `query`: the best partitions
    /// are scanned (by codes) until at least `budget` vectors have been looked at, and the best
    /// few by codes are re-scored exactly against `vectors`. Best first, ties by id.
    pub(super) fn search(
        &self,
        vectors: &[f32],
        dim: usize,
        query: &[f32],
        k: usize,
        budget: usize,
    ) -> Vec<Hit> {
        if k == 0 || self.members.is_empty() {
            return Vec::new();
        }
        let q = self.projection.query(query);
        let parts = self.offsets.len() - 1;
        let mut order: Vec<(f32, usize)> =
            (0..parts).map(|p| (self.centroids.dot(p, &q), p)).collect();
        let mut ranked: Vec<(f32, usize)> = Vec::with_capacity(budget.min(self.members.len()));
        for p in best_first(&mut order) {
            if ranked.len() >= budget.max(k) {
                break;
            }
            ranked
                .extend((self.offsets[p]..self.offsets[p + 1]).map(|j| (self.codes.dot(j, &q), j)));
        }
        let keep = k.saturating_mul(RESCORED_PER_NEIGHBOUR).max(32);
        if ranked.len() > keep {
            ranked.select_nth_unstable_by(keep - 1, |a, b| b.0.total_cmp(&a.0));
            ranked.truncate(keep);
        }
        let hits = ranked
            .into_iter()
            .map(|(_, j)| {
                let id = self.members[j];
                Hit {
                    id,
                    similarity: similarity::similarity(
                        query,
                        &vectors[id as usize * dim..(id as usize + 1) * dim],
                    ),
                }
            })
            .collect();
        best(hits, k)
    }
}

/// The partitions of `scored` (score, partition), best score first, ties by partition: the
/// order of sorting them all, but put in order a few at a time as the caller takes them (a
/// search takes the first few of hundreds).
fn best_first(scored: &mut [(f32, usize)]) -> impl Iterator<Item = usize> + '_ {
    let cmp = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    let mut in_order = 0;
    (0..scored.len()).map(move |next| {
        if next == in_order {
            let rest = &mut scored[in_order..];
            let take = (in_order * 2).max(8).min(rest.len());
            if take < rest.len() {
                rest.select_nth_unstable_by(take - 1, cmp);
            }
            rest[..take].sort_unstable_by(cmp);
            in_order += take;
        }
        scored[next].1
    })
}

/// The unit mean of `ids`' rows.
fn centroid<'a>(ids: &[u32], dim: usize, row: &impl Fn(u32) -> &'a [f32]) -> Vec<f32> {
    let mut c = vec![0.0f32; dim];
    for &id in ids {
        c.iter_mut().zip(row(id)).for_each(|(a, b)| *a += b);
    }
    similarity::normalise(&mut c);
    c
}

/// Splits `ids` in two by spherical 2-means, again and again, until every part holds at most
/// [`PART_MAX`]: about `n log n` dot products (k-means into `n / PART_MAX` parts at once would
/// cost `n² / PART_MAX`). Starts from the first and middle members, so the same vectors always give
/// the same parts; a split that leaves one side empty cuts the list in half instead.
fn bisect<'a>(ids: Vec<u32>, dim: usize, row: &impl Fn(u32) -> &'a [f32], out: &mut Vec<Vec<u32>>) {
    if ids.len() <= PART_MAX {
        out.push(ids);
        return;
    }
    let mut centres = [row(ids[0]).to_vec(), row(ids[ids.len() / 2]).to_vec()];
    let mut sides: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..KMEANS_ROUNDS {
        sides = [Vec::new(), Vec::new()];
        for &id in &ids {
            let v = row(id);
            let right =
                similarity::similarity(v, &centres[1]) > similarity::similarity(v, &centres[0]);
            sides[usize::from(right)].push(id);
        }
        for (c, side) in centres.iter_mut().zip(&sides) {
            if !side.is_empty() {
                *c = centroid(side, dim, row);
            }
        }
    }
    let [mut left, mut right] = sides;
    if left.is_empty() || right.is_empty() {
        let mut all = ids;
        right = all.split_off(all.len() / 2);
        left = all;
    }
    bisect(left, dim, row, out);
    bisect(right, dim, row, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::exact_search;

    /// `n` unit vectors in `clusters` tight clusters of `dim` dimensions, deterministic.
    fn clustered(n: usize, clusters: usize, dim: usize) -> (Vec<f32>, Vec<usize>) {
        let mut seed = 0x9e37_79b9_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..clusters)
            .map(|_| (0..dim).map(|_| next()).collect())
            .collect();
        let mut vectors = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % clusters;
            let mut v: Vec<f32> = centres[c].iter().map(|x| x + 0.3 * next()).collect();
            similarity::normalise(&mut v);
            vectors.extend(v);
            labels.push(c);
        }
        (vectors, labels)
    }

    #[test]
    fn every_vector_is_in_exactly_one_partition_of_its_own_route() {
        let dim = 16;
        // route 0 is large enough to be split, route 1 is not, route 2 is empty
        let (vectors, _) = clustered(1_000, 4, dim);
        let labels: Vec<usize> = (0..1_000).map(|i| usize::from(i >= 900)).collect();
        let p = Partitions::new(&vectors, dim, &labels, 3);
        let split = p.len() - 1;
        assert!(split >= 900usize.div_ceil(PART_MAX), "{split} parts");
        let mut seen = p.members.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..1_000).collect::<Vec<u32>>());
        for w in p.offsets.windows(2) {
            let part = &p.members[w[0]..w[1]];
            assert!(!part.is_empty() && part.len() <= PART_MAX);
            assert!(
                part.iter()
                    .all(|&id| labels[id as usize] == labels[part[0] as usize])
            );
        }
        // deterministic
        let again = Partitions::new(&vectors, dim, &labels, 3);
        assert_eq!((p.members, p.offsets), (again.members, again.offsets));
    }

    #[test]
    fn one_huge_route_is_split_quickly_into_bounded_parts() {
        let dim = 16;
        let (vectors, _) = clustered(60_000, 50, dim);
        let labels = vec![0; 60_000];
        let started = std::time::Instant::now();
        let p = Partitions::new(&vectors, dim, &labels, 1);
        assert!(
            p.offsets
                .windows(2)
                .all(|w| (1..=PART_MAX).contains(&(w[1] - w[0])))
        );
        assert_eq!(p.members.len(), 60_000);
        // about n log n dot products: a route this large must not hold up opening the index
        assert!(started.elapsed().as_secs() < 20, "{:?}", started.elapsed());
    }

    #[test]
    fn a_projection_keeps_the_dot_products_of_vectors_near_their_principal_directions() {
        let dim = PROJECT_FROM_DIM;
        let (vectors, _) = clustered(4_000, 30, dim);
        let p = Projection::fitted(&vectors, dim);
        assert_eq!(p.out_dim(), dim / 2);
        // orthonormal rows
        for (i, a) in p.directions.chunks_exact(dim).enumerate() {
            for (j, b) in p.directions.chunks_exact(dim).enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (similarity::similarity(a, b) - want).abs() < 1e-3,
                    "{i} {j}"
                );
            }
        }
        // dot products of projected pairs stay close to the originals (30 cluster centres span
        // far fewer than dim / 2 directions); a random half of the axes would lose half of each
        let rows: Vec<&[f32]> = vectors.chunks_exact(dim).step_by(37).collect();
        let mut worst = 0.0f32;
        for a in &rows {
            for b in &rows {
                let exact = similarity::similarity(a, b);
                let projected = similarity::similarity(&p.apply(a), &p.apply(b));
                worst = worst.max((exact - projected).abs());
            }
        }
        assert!(worst < 0.05, "worst error {worst}");
        // the same vectors, the same directions
        assert_eq!(Projection::fitted(&vectors, dim).directions, p.directions);
        // small vectors, and small tables, are not projected; large tables are
        let (small, _) = clustered(500, 5, 64);
        assert_eq!(Projection::new(&small, 64).out_dim(), 64);
        assert_eq!(Projection::new(&vectors, dim).out_dim(), dim);
        let (large, _) = clustered(PROJECT_FROM_VECTORS + 1, 30, dim);
        assert_eq!(Projection::new(&large, dim).out_dim(), dim / 2);
    }

    #[test]
    fn partitions_come_best_first_as_a_full_sort_orders_them() {
        for n in [0, 1, 7, 8, 9, 40, 300, 1_000] {
            // ties on purpose: a few distinct scores
            let scored: Vec<(f32, usize)> = (0..n)
                .map(|p| (((p * 7919) % 13) as f32 / 13.0, p))
                .collect();
            let mut sorted = scored.clone();
            sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let want: Vec<usize> = sorted.iter().map(|s| s.1).collect();
            let mut lazy = scored.clone();
            assert_eq!(best_first(&mut lazy).collect::<Vec<_>>(), want, "{n}");
            // and a prefix, as a search takes it
            let mut lazy = scored.clone();
            let some: Vec<usize> = best_first(&mut lazy).take(n / 3).collect();
            assert_eq!(some, want[..n / 3], "{n}");
        }
    }

    #[test]
    fn a_search_of_every_partition_finds_the_exact_neighbours() {
        let dim = 16;
        let (vectors, labels) = clustered(2_000, 10, dim);
        let p = Partitions::new(&vectors, dim, &labels, 10);
        for q in vectors.chunks_exact(dim).step_by(97) {
            assert_eq!(
                p.search(&vectors, dim, q, 10, usize::MAX),
                exact_search(&vectors, dim, q, 10)
            );
        }
    }

    #[test]
    fn a_projected_search_of_every_partition_finds_the_exact_neighbours() {
        // fewer vectors than directions kept: they lie in the projection's span, so projected
        // dot products are the exact ones but for rounding, and the re-score sets them right
        let dim = PROJECT_FROM_DIM;
        let (vectors, labels) = clustered(100, 4, dim);
        let projection = Projection::fitted(&vectors, dim);
        let p = Partitions::projected(&vectors, dim, &labels, 4, projection);
        assert_eq!(p.projection.out_dim(), dim / 2);
        for q in vectors.chunks_exact(dim).step_by(7) {
            assert_eq!(
                p.search(&vectors, dim, q, 5, usize::MAX),
                exact_search(&vectors, dim, q, 5)
            );
        }
    }

    #[test]
    fn a_bounded_search_finds_most_true_neighbours_on_clustered_data() {
        let dim = 32;
        let (vectors, labels) = clustered(20_000, 40, dim);
        let p = Partitions::new(&vectors, dim, &labels, 40);
        let (mut found, mut total) = (0, 0);
        for q in vectors.chunks_exact(dim).step_by(211) {
            let exact = exact_search(&vectors, dim, q, 10);
            let probed = p.search(&vectors, dim, q, 10, PROBE_VECTORS);
            assert!(
                probed.len() == 10
                    && probed
                        .windows(2)
                        .all(|w| w[0].similarity >= w[1].similarity)
            );
            found += probed.iter().filter(|h| exact.contains(h)).count();
            total += exact.len();
        }
        let recall = found as f64 / total as f64;
        assert!(recall > 0.9, "recall@10 {recall}");
    }
}
