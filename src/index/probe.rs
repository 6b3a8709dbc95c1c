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
//! The result is approximate: a true neighbour in a partition whose centroid ranks low is
//! missed. Recall of the reported neighbours against the exact scan, on CLINC150 validation
//! prompts (`benches/scale.sh`): 0.987 at 15,000 utterances, 0.950 at 100,000 (docs/speed.md).
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
    /// The members' vectors as [`Code`]s, in `members` order (a partition's are contiguous).
    codes: Codes,
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

/// Candidates ranked by their codes whose exact similarity is then computed: the `k` reported
/// come from these.
const RESCORED_PER_NEIGHBOUR: usize = 4;

impl Partitions {
    /// Partitions row-major `vectors` whose rows belong to `labels` (one route each).
    pub(super) fn new(vectors: &[f32], dim: usize, labels: &[usize], routes: usize) -> Self {
        let mut by_route: Vec<Vec<u32>> = vec![Vec::new(); routes];
        for (id, &route) in labels.iter().enumerate() {
            by_route[route].push(id as u32);
        }
        let mut out = Partitions {
            offsets: vec![0],
            centroids: Codes::new(dim),
            codes: Codes::new(dim),
            ..Partitions::default()
        };
        let row = |id: u32| &vectors[id as usize * dim..(id as usize + 1) * dim];
        for ids in by_route.into_iter().filter(|ids| !ids.is_empty()) {
            let mut parts = Vec::new();
            bisect(ids, dim, &row, &mut parts);
            for part in parts {
                out.centroids.push(&centroid(&part, dim, &row));
                for &id in &part {
                    out.codes.push(row(id));
                }
                out.members.extend(&part);
                out.offsets.push(out.members.len());
            }
        }
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
        let (q, _) = quantise(query);
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
