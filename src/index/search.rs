//! Search: the exact SIMD scan, and the HNSW graph served by its own thread (hnsw_rs's reloaded
//! index borrows its loader, so the thread owns both; no `unsafe`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, mpsc};

use hnsw_rs::hnswio::HnswIo;

use super::{FileEntry, Hit, IndexError, read_verified};
use crate::similarity::{self, UnitDot};

/// Best first; ties broken by id so results are stable.
pub(super) fn by_similarity(a: &Hit, b: &Hit) -> std::cmp::Ordering {
    b.similarity
        .total_cmp(&a.similarity)
        .then_with(|| a.id.cmp(&b.id))
}

/// The `k` best of `hits`, best first, ties broken by id.
pub(super) fn best(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    if hits.len() > k {
        if k == 0 {
            return Vec::new();
        }
        hits.select_nth_unstable_by(k - 1, by_similarity);
        hits.truncate(k);
    }
    hits.sort_by(by_similarity);
    hits
}

/// Exact top-k by scanning every vector; the oracle the HNSW path is tested against.
pub fn exact_search(vectors: &[f32], dim: usize, query: &[f32], k: usize) -> Vec<Hit> {
    if k == 0 {
        return Vec::new();
    }
    let hits = vectors
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, v)| Hit {
            id: i as u32,
            similarity: similarity::similarity(query, v),
        })
        .collect();
    best(hits, k)
}

pub(super) struct GraphJob {
    query: Vec<f32>,
    k: usize,
    ef: usize,
    reply: mpsc::SyncSender<Vec<u32>>,
}

/// Where a graph's background load stands.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphState {
    /// Still loading; searches use the exact scan meanwhile.
    Loading,
    /// Loaded; searches use the graph.
    Ready,
    /// Could not be loaded; searches keep using the exact scan.
    Failed(String),
    /// Verified and left unloaded: the table's method does not decide on neighbours (it
    /// reports them from the route partitions), so the graph would only take memory.
    Unused,
}

/// A reloaded HNSW graph living on its own thread (it borrows its loader, so the thread owns
/// both); dropping the handle closes the channel and ends the thread. The graph loads in the
/// background, so a large index answers (by exact scan) as soon as its vectors are read.
pub(super) struct GraphHandle {
    jobs: mpsc::Sender<GraphJob>,
    state: Arc<(Mutex<GraphState>, Condvar)>,
}

impl GraphHandle {
    /// Loads the graph in the background; with `load` false, only verifies its files (so that
    /// a damaged artifact is still refused) and ends [`GraphState::Unused`].
    pub(super) fn load(
        generation: &Path,
        basename: &str,
        dim: usize,
        files: BTreeMap<String, FileEntry>,
        load: bool,
    ) -> Result<Self, IndexError> {
        let (jobs, rx) = mpsc::channel::<GraphJob>();
        let state = Arc::new((Mutex::new(GraphState::Loading), Condvar::new()));
        let dir = generation.to_path_buf();
        let basename = basename.to_string();
        let thread_state = Arc::clone(&state);
        let set = move |s: GraphState| {
            let (lock, cv) = &*thread_state;
            *lock.lock().expect("graph state lock") = s;
            cv.notify_all();
        };
        std::thread::Builder::new()
            .name("pointsman-hnsw".into())
            .spawn(move || {
                // verified before hnsw_rs reads them: its loader asserts on bad input
                for suffix in ["hnsw.graph", "hnsw.data"] {
                    if let Err(e) = read_verified(&dir, &format!("{basename}.{suffix}"), &files) {
                        tracing::error!(error = %e, "HNSW graph is damaged; searching by exact scan");
                        set(GraphState::Failed(e.to_string()));
                        return;
                    }
                }
                if !load {
                    set(GraphState::Unused);
                    return;
                }
                let io = HnswIo::new(&dir, &basename);
                let hnsw = match io.load_hnsw_with_dist::<f32, UnitDot>(UnitDot) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!(dir = %dir.display(), error = %e, "HNSW graph does not load; searching by exact scan");
                        set(GraphState::Failed(format!("{e:#}")));
                        return;
                    }
                };
                let got = hnsw.get_point_indexation().get_data_dimension();
                if got != dim {
                    set(GraphState::Failed(format!(
                        "graph dimension {got} differs from the manifest's {dim}"
                    )));
                    return;
                }
                set(GraphState::Ready);
                for job in rx {
                    let ids = hnsw
                        .search(&job.query, job.k.max(job.ef.min(job.k * 4)), job.ef)
                        .into_iter()
                        .map(|n| n.d_id as u32)
                        .collect();
                    let _ = job.reply.send(ids);
                }
            })
            .map_err(|e| IndexError::Graph(format!("cannot start the search thread: {e}")))?;
        Ok(GraphHandle { jobs, state })
    }

    pub(super) fn state(&self) -> GraphState {
        self.state.0.lock().expect("graph state lock").clone()
    }

    pub(super) fn wait(&self) -> GraphState {
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().expect("graph state lock");
        while *s == GraphState::Loading {
            s = cv.wait(s).expect("graph state lock");
        }
        s.clone()
    }

    pub(super) fn search(
        &self,
        query: Vec<f32>,
        k: usize,
        ef: usize,
    ) -> Result<Vec<u32>, IndexError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(GraphJob {
                query,
                k,
                ef,
                reply,
            })
            .map_err(|_| IndexError::Graph("search thread has stopped".into()))?;
        rx.recv()
            .map_err(|_| IndexError::Graph("search thread has stopped".into()))
    }
}
