//! A sequence classifier's loss on its pooled logits
//! (`shaders/classification.wgsl`), transformers'
//! `ForSequenceClassificationLoss` for each `problem_type`:
//!
//! ```text
//! regression                   mean (z − y)²                       over the B·L values
//! single_label_classification  mean logsumexp(z) − z[c]            over the rows whose label c is not −100
//! multi_label_classification   mean BCE-with-logits(z, y)          over the B·L values
//! ```
//!
//! The one launch adds `scale` times the loss (and, single-label, the rows
//! predicted right and the rows counted) into `stats` and returns
//! dz = ∂(scale·loss)/∂z.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, u32_count};
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 64;

/// Values [`classification_loss`] adds into its `stats`: the loss, the rows
/// whose first maximum is their label, the rows with a label (the last two
/// single-label only).
pub const CLASSIFICATION_STATS: usize = 3;

/// transformers' `config.problem_type`: what the labels are and which loss
/// fits them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// Real-valued targets, L of them a row (one with num_labels 1): MSE.
    Regression,
    /// One class index a row (−100: no label): cross-entropy.
    SingleLabelClassification,
    /// L independent 0/1 (or soft) targets a row: BCE with logits.
    MultiLabelClassification,
}

impl ProblemType {
    pub const ALL: [ProblemType; 3] =
        [ProblemType::Regression, ProblemType::SingleLabelClassification, ProblemType::MultiLabelClassification];

    /// transformers' name ("regression", "single_label_classification", "multi_label_classification").
    pub fn name(self) -> &'static str {
        match self {
            ProblemType::Regression => "regression",
            ProblemType::SingleLabelClassification => "single_label_classification",
            ProblemType::MultiLabelClassification => "multi_label_classification",
        }
    }

    pub fn from_name(name: &str) -> Option<ProblemType> {
        ProblemType::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The kernel's code (the shader's constants).
    fn code(self) -> u32 {
        match self {
            ProblemType::Regression => 0,
            ProblemType::SingleLabelClassification => 1,
            ProblemType::MultiLabelClassification => 2,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    labels: u32,
    problem: u32,
    scale: f32,
}

/// The loss of `problem` on one micro-batch (see the module docs): adds
/// `scale` times it (and the single-label counts) into `stats`, returns dz.
///
/// - logits: (B, L) f32, the score head's at each row's pooled token
/// - targets: (B, L) f32 (regression, multi-label), or (B) class indices
///   as f32, −100 for a row without a label (single-label)
/// - stats: ([`CLASSIFICATION_STATS`] or more) f32, added to
pub fn classification_loss(
    rec: &mut Recorder,
    (logits, targets): (&Tensor, &Tensor),
    problem: ProblemType,
    (stats, scale): (&Tensor, f32),
) -> Result<Tensor> {
    const OP: &str = "classification_loss";
    all_f32(OP, &[("logits", logits), ("targets", targets), ("stats", stats)])?;
    let [rows, labels] = logits.shape() else {
        return Err(Error::shape(OP, format!("logits {:?} must be (B, L)", logits.shape())));
    };
    let (rows, labels) = (*rows, *labels);
    let want = if problem == ProblemType::SingleLabelClassification { rows } else { rows * labels };
    if rows == 0 || labels == 0 || targets.numel() != want {
        return Err(Error::shape(
            OP,
            format!(
                "logits {:?} and {} targets for {}: need B, L > 0 and {want} targets",
                logits.shape(),
                targets.numel(),
                problem.name()
            ),
        ));
    }
    if problem == ProblemType::SingleLabelClassification && labels < 2 {
        return Err(Error::shape(OP, "single_label_classification needs at least 2 labels"));
    }
    if stats.numel() < CLASSIFICATION_STATS {
        return Err(Error::shape(OP, format!("stats {:?} must hold {CLASSIFICATION_STATS} values", stats.shape())));
    }
    if !scale.is_finite() {
        return Err(Error::invalid(OP, format!("scale {scale} must be finite")));
    }
    u32_count(OP, "logits", rows * labels)?;
    let dlogits = rec.alloc(&[rows, labels], DType::F32)?;
    let p = Params { rows: rows as u32, labels: labels as u32, problem: problem.code(), scale };
    let bound = [(1, logits), (2, targets), (3, stats), (4, &dlogits)];
    rec.dispatch_bound(&key("classification_loss"), &p, &bound, [1, 1, 1])?;
    Ok(dlogits)
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Classification, entry).with("WG", Const::U32(WG))
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    vec![key("classification_loss")]
}
