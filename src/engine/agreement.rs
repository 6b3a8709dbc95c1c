//! Whether this machine embeds an index's utterances as the machine that built it did.
//!
//! An index holds its utterances' vectors as the build machine computed them, while prompts are
//! embedded where the router runs. With the same model file these are the same vectors on the
//! same kind of CPU, but not always across kinds: the default model computes in int8, ONNX
//! Runtime's int8 kernels give other results with and without VNNI (AVX2's multiply-add
//! saturates its 16-bit sums), and dynamic quantisation amplifies any small difference in the
//! float kernels around them. "Where is my order #12345?" against "Where is my order?" is 0.7788
//! on AVX-512 VNNI, 0.8152 on an AMD EPYC with AVX2 and 0.7900 on AVX2 emulated by QEMU, and
//! thresholds and the classifier were fitted on the build machine's vectors. Nothing else would
//! show it: the model's sha256 is the same.
//!
//! So the commands that route on an index embed a few of its utterances again, here, and compare
//! them with the stored vectors ([`check`]). On the machine that built the index they agree to
//! float rounding: above 0.99999 on the example index with the default model, which embeds every
//! text alone; a batching model's padding moves a vector by rounding only.

use crate::embed::{EmbedError, Embedder, cpu_kind};
use crate::index::Index;
use crate::similarity::similarity;

/// Utterances embedded again: a few forward passes, spread over the table.
pub const SAMPLE: usize = 8;

/// Below this cosine between a stored vector and this machine's embedding of the same utterance,
/// the two machines do not compute the same vectors. Float rounding alone (another batch size, a
/// padded batch) stays above 0.99999; the default int8 model on AVX2 against AVX-512 VNNI gives
/// 0.988 to 0.997.
pub const MIN_COSINE: f32 = 0.999;

/// How this machine's embeddings of some of an index's utterances compare with the stored ones.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Agreement {
    /// Utterances embedded again.
    pub checked: usize,
    /// The lowest cosine between a stored vector and its utterance embedded here (1 when none
    /// was checked).
    pub lowest_cosine: f32,
    /// The utterance with that cosine.
    pub utterance: Option<String>,
}

impl Agreement {
    /// Whether this machine computes the index's vectors.
    pub fn holds(&self) -> bool {
        self.lowest_cosine >= MIN_COSINE
    }

    /// Logs [`Agreement::warning`], if there is one; the index is used all the same.
    pub fn warn_unless_held(&self, index: &Index) {
        if let Some(warning) = self.warning(index) {
            tracing::warn!(
                lowest_cosine = self.lowest_cosine,
                checked = self.checked,
                "{warning}"
            );
        }
    }

    /// What to tell the user when the vectors disagree, naming both machines' CPUs.
    pub fn warning(&self, index: &Index) -> Option<String> {
        if self.holds() {
            return None;
        }
        let built_on = index
            .manifest()
            .built_on
            .as_deref()
            .unwrap_or("a machine this index does not name");
        Some(format!(
            "index at {}: this machine embeds its utterances differently from the machine that \
             built it (lowest cosine {:.4} over {} utterances, at {:?}; built on {}, running on \
             {}). The model's kernels differ between these CPUs, so similarities shift and \
             the thresholds and classifier fitted at build time no longer fit. Rebuild the index \
             on this kind of machine with `pointsman build`, or build and serve with the fp32 \
             reference model (docs/models.md)",
            index.generation().display(),
            self.lowest_cosine,
            self.checked,
            self.utterance.as_deref().unwrap_or(""),
            built_on,
            cpu_kind(),
        ))
    }
}

/// Embeds [`SAMPLE`] of `index`'s utterances (evenly spaced; all of a smaller table) with
/// `embed`, which must run this machine's model on them (one vector per text, in order), and
/// compares them with the stored vectors.
pub fn check<E>(
    index: &Index,
    embed: impl FnOnce(&[&str]) -> Result<Vec<Vec<f32>>, E>,
) -> Result<Agreement, E> {
    let n = index.len();
    let take = n.min(SAMPLE);
    let ids: Vec<u32> = (0..take).map(|i| (i * n / take) as u32).collect();
    let texts: Vec<&str> = ids
        .iter()
        .map(|&id| index.utterance(id).text.as_str())
        .collect();
    let embedded = embed(&texts)?;
    let mut lowest: Option<(f32, u32)> = None;
    for (&id, here) in ids.iter().zip(&embedded) {
        // both are L2-normalised, as every vector here is: the cosine is their dot product
        let cosine = similarity(index.vector(id), here);
        if lowest.is_none_or(|(c, _)| cosine < c) {
            lowest = Some((cosine, id));
        }
    }
    Ok(Agreement {
        checked: ids.len().min(embedded.len()),
        lowest_cosine: lowest.map_or(1.0, |(c, _)| c),
        utterance: lowest.map(|(_, id)| index.utterance(id).text.clone()),
    })
}

/// [`check`] with `embedder`'s own forward passes (the offline commands' sessions).
pub fn check_embedder(index: &Index, embedder: &mut dyn Embedder) -> Result<Agreement, EmbedError> {
    check(index, |texts| {
        embedder
            .embed(texts)
            .map(|e| e.into_iter().map(|e| e.vector).collect())
    })
}
