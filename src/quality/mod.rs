//! Quality-aware routing: predict how well each candidate model will answer a prompt, choose one
//! by a cost/quality knob, and measure and plot the resulting cost/quality curve.
//!
//! * [`outcomes`] reads graded prompts (JSONL: which model answered well, what it cost).
//! * [`predictor`] fits a per-model quality predictor on prompt embeddings, choosing the method
//!   and its hyperparameters by cross-validated APGR.
//! * [`choose`] picks a candidate for one prompt by a tolerance or a cost weight.
//! * [`curve`] sweeps the knob on a test set and computes APGR, CPT and the baselines.
//! * [`calibrate`] picks the knob value that meets a target on a validation sweep.
//! * [`plot`] draws a curve report as SVG.
//! * `stored`: the predictor as the index artifact holds it, and the route file's knob.

pub mod calibrate;
pub mod choose;
pub mod curve;
pub mod outcomes;
pub mod plot;
pub mod predictor;
mod stored;

pub use calibrate::{Calibrated, Target, calibrate};
pub use choose::{Explanation, Knob, KnobKind, Scored, choose, explain, rank};
pub use curve::{Baselines, CurveError, CurveOptions, CurveReport, EvalSet, Point, evaluate};
pub use outcomes::{Graded, OutcomeError};
pub use predictor::{Method, QualityPredictor, TrainError, TrainOptions, TrainReport, train};
pub use stored::{
    ExampleSummary, GradedNeighbour, OutcomeFile, QualityArtifact, QualityIndex, QualityManifest,
    default_knob, knob_of, prompt_start, render_training,
};
