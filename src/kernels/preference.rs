//! The DPO, ORPO and CPO losses on per-sequence log-probabilities
//! (`shaders/preference.wgsl`), for a micro-batch of P pairs laid out as TRL
//! concatenates them: S = 2P sequences (the chosen ones, then the rejected
//! ones), each T' rows long.
//!
//! ```text
//! sequence_logps:       logps[s] = −Σ_r lp_weight[r]·CE[r]     nll[s] = Σ_r nll_weight[r]·CE[r]
//! preference_loss:      stats += scale·[loss, rewards/chosen, rewards/rejected, rewards/accuracies,
//!                                       rewards/margins, nll_loss, log_odds_ratio, log_odds_chosen,
//!                                       logps/chosen, logps/rejected, (DPO, train::preference_loss:)
//!                                       logits/chosen, logits/rejected]
//!                       dlogp[s] = ∂(scale·loss)/∂logps[s]
//! preference_row_scale: row_scale[r] = nll_scale·nll_weight[r] − dlogp[s(r)]·lp_weight[r]
//! ```
//!
//! KTO (TRL's `kto_loss`): S = 2B rows, B examples then their KL rows;
//! kl = max(0, mean over the KL rows of π − ref) (no gradient), each example's
//! loss w_d·(1 − σ(β·(c − kl))) if desirable, else w_u·(1 − σ(β·(kl − c))),
//! c = π − ref; stats: [loss, rewards/chosen_sum, rewards/rejected_sum, kl,
//! logps/chosen_sum, logps/rejected_sum, count/chosen, count/rejected, 0, 0].
//! DPO (TRL's `dpo_loss`): with the log-ratios c = π_c − ref_c, r = π_r − ref_r
//! and h = c − r, loss = mean ℓ(c, r) over the pairs for the [`DpoLossType`]'s ℓ
//! (sigmoid: −(1−ε)·logσ(β·h) − ε·logσ(−β·h)), plus `rpo_alpha`·NLL of the
//! chosen completions where set (RPO); rewards β·(π − ref).
//! ORPO (TRL's `odds_ratio_loss`): π are mean completion log-probs,
//! lo = (π_c − π_r) − (log(1 − e^π_c) − log(1 − e^π_r)), loss = NLL − β·mean logσ(lo),
//! rewards β·π. CPO (TRL's `cpo_loss`): DPO's sigmoid, hinge and IPO forms
//! (and SimPO's, h − γ/β) on h = π_c − π_r without a reference, plus
//! `cpo_alpha`·NLL of the chosen completions; rewards β·π. The row factor is what multiplies (softmax − onehot) in the
//! logits' gradient: CE's own backward with a per-row scale
//! ([`cross_entropy_backward_rows_inplace`](super::cross_entropy::cross_entropy_backward_rows_inplace)).

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, u32_count};
use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 64;

/// Values in a preference step's statistics (see the module docs for their order).
pub const STATS: usize = 12;

/// DPO's `loss_type` (TRL's `DPOConfig.loss_type`): what the loss makes of
/// the log-ratios c = π_c − ref_c and r = π_r − ref_r of a pair, h = c − r.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpoLossType {
    /// −(1−ε)·logσ(βh) − ε·logσ(−βh) (DPO; cDPO with label smoothing ε).
    Sigmoid,
    /// (−(1−ε)·logσ(βh) + ε·logσ(−βh)) / (1 − 2ε) (Robust DPO).
    Robust,
    /// σ(βh)·(logσ(βh) − log(1−ε)) + σ(−βh)·(logσ(−βh) − log ε), ε 1e-3 where 0 (EXO, pairwise).
    ExoPair,
    /// relu(1 − βh) (SLiC).
    Hinge,
    /// (h − 1/(2β))², π and ref the mean log-probabilities of the completion (IPO).
    Ipo,
    /// (c − 1/(2β))² + (r + 1/(2β))² (SPPO, hard labels).
    SppoHard,
    /// −logσ(βc) − ½·logσ(−βc) − ½·logσ(−βr) (NCA, pairwise).
    NcaPair,
    /// 1 − σ(βc) + σ(βr) (APO-zero).
    ApoZero,
    /// σ(βc) + 1 − σ(βh) (APO-down).
    ApoDown,
    /// −logσ(βh)·(1 − m) + e^(−βh)·m, m = σ(βh/τ) (DiscoPOP).
    Discopop,
    /// Sigmoid's form on δ_k = sort(π_c − π_r)_k − sort(ref_c − ref_r)_k,
    /// the batch's k-th smallest of each (AOT, paired).
    Aot,
    /// Sigmoid's form on δ_k = sort(c)_k − sort(r)_k (AOT, unpaired).
    AotPair,
    /// −logσ(βc − δ) − logσ(−(βr − δ)), δ the running mean over the steps'
    /// micro-batches of the mean reward β·[c; r] (BCO, pairwise; no gradient through δ).
    BcoPair,
    /// The NLL of the chosen completions (MPO's generation term; TRL's `sft`).
    Sft,
}

impl DpoLossType {
    /// Every loss type, in the order of their codes in `shaders/preference.wgsl`.
    pub const ALL: [DpoLossType; 14] = [
        DpoLossType::Sigmoid,
        DpoLossType::Robust,
        DpoLossType::ExoPair,
        DpoLossType::Hinge,
        DpoLossType::Ipo,
        DpoLossType::SppoHard,
        DpoLossType::NcaPair,
        DpoLossType::ApoZero,
        DpoLossType::ApoDown,
        DpoLossType::Discopop,
        DpoLossType::Aot,
        DpoLossType::AotPair,
        DpoLossType::BcoPair,
        DpoLossType::Sft,
    ];

    /// TRL's name: "sigmoid", "robust", "exo_pair", "hinge", "ipo", "sppo_hard",
    /// "nca_pair", "apo_zero", "apo_down", "discopop", "aot", "aot_pair",
    /// "bco_pair", "sft".
    pub fn name(self) -> &'static str {
        match self {
            DpoLossType::Sigmoid => "sigmoid",
            DpoLossType::Robust => "robust",
            DpoLossType::ExoPair => "exo_pair",
            DpoLossType::Hinge => "hinge",
            DpoLossType::Ipo => "ipo",
            DpoLossType::SppoHard => "sppo_hard",
            DpoLossType::NcaPair => "nca_pair",
            DpoLossType::ApoZero => "apo_zero",
            DpoLossType::ApoDown => "apo_down",
            DpoLossType::Discopop => "discopop",
            DpoLossType::Aot => "aot",
            DpoLossType::AotPair => "aot_pair",
            DpoLossType::BcoPair => "bco_pair",
            DpoLossType::Sft => "sft",
        }
    }

    /// Whether the loss reads the label smoothing ε (TRL ignores it for the others).
    pub fn smooths(self) -> bool {
        matches!(
            self,
            DpoLossType::Sigmoid | DpoLossType::Robust | DpoLossType::ExoPair | DpoLossType::Aot | DpoLossType::AotPair
        )
    }

    /// Whether TRL's `dpo_loss` reads the reference log-probabilities
    /// directly in this loss, `reference_free` or not.
    pub fn reads_reference(self) -> bool {
        matches!(
            self,
            DpoLossType::SppoHard
                | DpoLossType::NcaPair
                | DpoLossType::Discopop
                | DpoLossType::Aot
                | DpoLossType::AotPair
                | DpoLossType::BcoPair
        )
    }

    /// The code `shaders/preference.wgsl` knows it by (10 is CPO's SimPO).
    fn code(self) -> u32 {
        match DpoLossType::ALL.iter().position(|&t| t == self).unwrap_or(0) as u32 {
            i if i < 10 => i,
            i => i + 1,
        }
    }
}

/// The most pairs a micro-batch may hold for aot and aot_pair, which sort
/// them in workgroup memory (`shaders/preference.wgsl`'s `MAX_SORTED`).
pub const MAX_SORTED_PAIRS: usize = 1024;

/// The most loss types one DPO run sums (MPO's three, and one more).
pub const MAX_LOSS_TYPES: usize = 4;

/// DPO's `loss_type` with its `loss_weights` (TRL 0.24): one type, or a list
/// whose losses (and rewards metrics) are summed with their weights, as
/// `DPOTrainer.get_batch_loss_metrics` does (MPO: sigmoid, bco_pair and sft,
/// 0.8, 0.2 and 1). Made from one type it is that type at weight 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpoLossTypes {
    types: [DpoLossType; MAX_LOSS_TYPES],
    weights: [f32; MAX_LOSS_TYPES],
    len: usize,
    /// Whether `loss_weights` was given (it is written back only then).
    weighted: bool,
}

impl From<DpoLossType> for DpoLossTypes {
    fn from(t: DpoLossType) -> DpoLossTypes {
        DpoLossTypes::one(t)
    }
}

impl DpoLossTypes {
    /// One loss type at weight 1.
    pub const fn one(t: DpoLossType) -> DpoLossTypes {
        DpoLossTypes { types: [t; MAX_LOSS_TYPES], weights: [1.0; MAX_LOSS_TYPES], len: 1, weighted: false }
    }

    /// `types` summed with `weights` (each 1 when `None`): at least one type,
    /// at most [`MAX_LOSS_TYPES`], and as many weights as types.
    pub fn new(types: &[DpoLossType], weights: Option<&[f32]>) -> std::result::Result<DpoLossTypes, String> {
        if types.is_empty() || types.len() > MAX_LOSS_TYPES {
            return Err(format!("takes 1 to {MAX_LOSS_TYPES} loss types, got {}", types.len()));
        }
        if let Some(w) = weights {
            if w.len() != types.len() {
                return Err(format!("{} loss weights for {} loss types: give one for each", w.len(), types.len()));
            }
        }
        let mut out = DpoLossTypes::one(types[0]);
        for (i, &t) in types.iter().enumerate() {
            out.types[i] = t;
            out.weights[i] = weights.map_or(1.0, |w| w[i]);
        }
        (out.len, out.weighted) = (types.len(), weights.is_some());
        Ok(out)
    }

    /// Each type with its weight, in the list's order.
    pub fn terms(&self) -> impl Iterator<Item = (DpoLossType, f32)> + '_ {
        self.types[..self.len].iter().copied().zip(self.weights[..self.len].iter().copied())
    }

    pub fn contains(&self, t: DpoLossType) -> bool {
        self.types[..self.len].contains(&t)
    }

    /// The one type, when it is one.
    pub fn single(&self) -> Option<DpoLossType> {
        (self.len == 1).then_some(self.types[0])
    }

    /// The types' names, comma-separated (as the CLI takes them).
    pub fn names(&self) -> String {
        self.types[..self.len].iter().map(|t| t.name()).collect::<Vec<_>>().join(",")
    }

    /// `loss_weights`, where given.
    pub fn weights(&self) -> Option<&[f32]> {
        self.weighted.then(|| &self.weights[..self.len])
    }

    /// Whether some loss reads the label smoothing ε.
    pub fn smooths(&self) -> bool {
        self.terms().any(|(t, _)| t.smooths())
    }

    /// The weight of the chosen completions' NLL in the loss (`sft`'s).
    pub fn sft_weight(&self) -> Option<f32> {
        self.contains(DpoLossType::Sft)
            .then(|| self.terms().filter(|(t, _)| *t == DpoLossType::Sft).map(|(_, w)| w).sum())
    }
}

/// DPO's settings, as `DPOConfig` names them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DpoLoss {
    /// β, the loss's temperature (IPO's τ).
    pub beta: f32,
    /// ε, the chance a label is flipped (sigmoid, robust, exo_pair, aot and aot_pair).
    pub label_smoothing: f32,
    /// `loss_type` and `loss_weights`.
    pub loss_type: DpoLossTypes,
    /// RPO: adds this times the NLL of the chosen completions (`rpo_alpha`; TRL's default None).
    pub rpo_alpha: Option<f32>,
    /// DiscoPOP's τ (`discopop_tau`).
    pub discopop_tau: f32,
    /// `reference_free`: the loss reads the policy's log-probabilities alone
    /// (the reference's still give the rewards, as TRL logs them; sppo_hard,
    /// nca_pair and discopop read the reference directly in TRL, so here too).
    pub reference_free: bool,
    /// `f_divergence_type` (with `f_alpha_divergence_coef`): what the losses
    /// of h alone (sigmoid, robust, exo_pair, hinge, ipo) take for h.
    pub f_divergence: FDivergence,
}

/// DPO's `f_divergence_type`: the h = c − r of the losses of h alone, from
/// the log-ratios c and r of a pair (TRL's `dpo_loss`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FDivergence {
    /// h = c − r (TRL's default).
    ReverseKl,
    /// Jensen–Shannon: h = (c − r) − (softplus(c) − softplus(r)).
    Js,
    /// α-divergence with coefficient α > 0: h = (e^(−α·r) − e^(−α·c)) / α, each
    /// exponent capped at ln(f32::MAX) (TRL's `cap_exp`).
    Alpha(f32),
}

impl FDivergence {
    /// TRL's name: "reverse_kl", "js_divergence", "alpha_divergence".
    pub fn name(self) -> &'static str {
        match self {
            FDivergence::ReverseKl => "reverse_kl",
            FDivergence::Js => "js_divergence",
            FDivergence::Alpha(_) => "alpha_divergence",
        }
    }

    fn code(self) -> (u32, f32) {
        match self {
            FDivergence::ReverseKl => (0, 0.0),
            FDivergence::Js => (1, 0.0),
            FDivergence::Alpha(a) => (2, a),
        }
    }
}

impl DpoLossType {
    /// Whether the loss is one of h alone, which the f-divergence changes.
    pub fn of_h(self) -> bool {
        matches!(
            self,
            DpoLossType::Sigmoid | DpoLossType::Robust | DpoLossType::ExoPair | DpoLossType::Hinge | DpoLossType::Ipo
        )
    }
}

impl DpoLoss {
    /// TRL's defaults: β 0.1, no label smoothing, the sigmoid loss, no RPO term, τ 0.05.
    pub const TRL: DpoLoss = DpoLoss {
        beta: 0.1,
        label_smoothing: 0.0,
        loss_type: DpoLossTypes::one(DpoLossType::Sigmoid),
        rpo_alpha: None,
        discopop_tau: 0.05,
        reference_free: false,
        f_divergence: FDivergence::ReverseKl,
    };
}

/// CPO's `loss_type` (TRL's `CPOConfig.loss_type`): the DPO forms on the
/// policy's own log-probabilities, h = π_c − π_r (no reference model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpoLossType {
    /// −(1−ε)·logσ(βh) − ε·logσ(−βh) (CPO).
    Sigmoid,
    /// relu(1 − βh).
    Hinge,
    /// (h − 1/(2β))², π the mean completion log-probabilities.
    Ipo,
    /// −(1−ε)·logσ(βh − γ) − ε·logσ(γ − βh), π the mean completion log-probabilities (SimPO).
    Simpo,
}

impl CpoLossType {
    pub const ALL: [CpoLossType; 4] = [CpoLossType::Sigmoid, CpoLossType::Hinge, CpoLossType::Ipo, CpoLossType::Simpo];

    /// TRL's name: "sigmoid", "hinge", "ipo", "simpo".
    pub fn name(self) -> &'static str {
        match self {
            CpoLossType::Sigmoid => "sigmoid",
            CpoLossType::Hinge => "hinge",
            CpoLossType::Ipo => "ipo",
            CpoLossType::Simpo => "simpo",
        }
    }

    /// Whether the loss reads the label smoothing ε.
    pub fn smooths(self) -> bool {
        matches!(self, CpoLossType::Sigmoid | CpoLossType::Simpo)
    }

    /// Whether π are means over the completion rather than sums.
    pub fn averages(self) -> bool {
        matches!(self, CpoLossType::Ipo | CpoLossType::Simpo)
    }

    fn code(self) -> u32 {
        match self {
            CpoLossType::Sigmoid => 0,
            CpoLossType::Hinge => 3,
            CpoLossType::Ipo => 4,
            CpoLossType::Simpo => 10,
        }
    }
}

/// CPO's settings, as `CPOConfig` names them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpoLoss {
    pub beta: f32,
    /// ε (sigmoid and simpo).
    pub label_smoothing: f32,
    pub loss_type: CpoLossType,
    /// The NLL of the chosen completions' weight (`cpo_alpha`; 0 with SimPO as its paper trains).
    pub cpo_alpha: f32,
    /// SimPO's target reward margin γ (`simpo_gamma`).
    pub simpo_gamma: f32,
    /// AlphaPO's α (`alpha`): where not 0 the losses read each answer's
    /// reward r = (1 − p^−α)/α, p = e^π, in place of π.
    pub alpha: f32,
}

impl CpoLoss {
    /// TRL's defaults: β 0.1, no label smoothing, the sigmoid loss, `cpo_alpha` 1, γ 0.5.
    pub const TRL: CpoLoss = CpoLoss {
        beta: 0.1,
        label_smoothing: 0.0,
        loss_type: CpoLossType::Sigmoid,
        cpo_alpha: 1.0,
        simpo_gamma: 0.5,
        alpha: 0.0,
    };
}

/// KTO's `loss_type` (TRL's `KTOConfig.loss_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KtoLossType {
    /// 1 − σ(β·(c − kl)) desirable, 1 − σ(β·(kl − c)) not, against the KL
    /// estimate from each example's KL row (KTO).
    Kto,
    /// 1 − σ(β·c) desirable, σ(β·c) not: no KL estimate and no KL rows
    /// (APO-zero, unpaired).
    ApoZeroUnpaired,
}

impl KtoLossType {
    pub const ALL: [KtoLossType; 2] = [KtoLossType::Kto, KtoLossType::ApoZeroUnpaired];

    /// TRL's name: "kto", "apo_zero_unpaired".
    pub fn name(self) -> &'static str {
        match self {
            KtoLossType::Kto => "kto",
            KtoLossType::ApoZeroUnpaired => "apo_zero_unpaired",
        }
    }

    /// Whether the loss reads the KL estimate, so each example travels with
    /// its KL row (TRL's `calculate_KL`).
    pub fn uses_kl(self) -> bool {
        self == KtoLossType::Kto
    }
}

/// KTO's settings, as `KTOConfig` names them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KtoLoss {
    pub beta: f32,
    /// The weight of a desirable example's loss (`desirable_weight`).
    pub desirable_weight: f32,
    /// The weight of an undesirable example's loss (`undesirable_weight`).
    pub undesirable_weight: f32,
    pub loss_type: KtoLossType,
}

impl KtoLoss {
    /// TRL's defaults: β 0.1, both weights 1, the kto loss.
    pub const TRL: KtoLoss =
        KtoLoss { beta: 0.1, desirable_weight: 1.0, undesirable_weight: 1.0, loss_type: KtoLossType::Kto };
}

/// A preference loss and its settings, as TRL names them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PreferenceLoss {
    /// DPO and its loss types against the reference model (the base with the adapter off).
    Dpo(DpoLoss),
    /// ORPO: NLL on the chosen rows plus β times the odds-ratio term; no reference.
    Orpo { beta: f32 },
    /// CPO (and SimPO): a DPO-style loss on the policy alone plus `cpo_alpha` times the chosen NLL.
    Cpo(CpoLoss),
    /// KTO on unpaired examples: each example's log-ratio against the batch's
    /// KL estimate (its prompts with other examples' completions).
    Kto(KtoLoss),
}

impl PreferenceLoss {
    /// TRL's DPO defaults ([`DpoLoss::TRL`]).
    pub const DPO: PreferenceLoss = PreferenceLoss::Dpo(DpoLoss::TRL);
    /// TRL's default `ORPOConfig.beta` (λ in the paper) 0.1.
    pub const ORPO: PreferenceLoss = PreferenceLoss::Orpo { beta: 0.1 };

    pub fn beta(self) -> f32 {
        match self {
            PreferenceLoss::Dpo(d) => d.beta,
            PreferenceLoss::Orpo { beta } => beta,
            PreferenceLoss::Cpo(c) => c.beta,
            PreferenceLoss::Kto(k) => k.beta,
        }
    }

    /// Whether the loss needs the reference log-probabilities.
    pub fn needs_reference(self) -> bool {
        matches!(self, PreferenceLoss::Dpo(_) | PreferenceLoss::Kto(_))
    }

    /// Whether the sequence log-probabilities are means over the completion
    /// (ORPO, IPO, SimPO) rather than sums.
    pub fn averages(self) -> bool {
        match self {
            PreferenceLoss::Dpo(d) => d.loss_type.contains(DpoLossType::Ipo),
            PreferenceLoss::Orpo { .. } => true,
            PreferenceLoss::Cpo(c) => c.loss_type.averages(),
            PreferenceLoss::Kto(_) => false,
        }
    }

    /// What multiplies the NLL term in the loss: ORPO's 1, DPO's `rpo_alpha`
    /// plus its `sft` losses' weights, CPO's `cpo_alpha`; None where the loss
    /// has no NLL term.
    pub fn nll_alpha(self) -> Option<f32> {
        match self {
            PreferenceLoss::Dpo(d) => match (d.rpo_alpha, d.loss_type.sft_weight()) {
                (None, None) => None,
                (a, w) => Some(a.unwrap_or(0.0) + w.unwrap_or(0.0)),
            },
            PreferenceLoss::Orpo { .. } => Some(1.0),
            PreferenceLoss::Cpo(c) => Some(c.cpo_alpha),
            PreferenceLoss::Kto(_) => None,
        }
    }

    /// How a pair becomes token rows for this loss: `DPOTrainer.tokenize_row`'s,
    /// or the one `ORPOTrainer` and `CPOTrainer` share (KTO's unpaired data has
    /// its own, `train::kto`, whose answers are joined the same way).
    pub fn tokenization(self) -> PairTokenization {
        match self {
            PreferenceLoss::Dpo(_) => PairTokenization::Separate,
            PreferenceLoss::Orpo { .. } | PreferenceLoss::Cpo(_) | PreferenceLoss::Kto(_) => PairTokenization::Joined,
        }
    }
}

/// How TRL turns a pair's texts into token rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairTokenization {
    /// `DPOTrainer.tokenize_row`: the prompt and each answer encoded apart, no
    /// special tokens added, the eos id after each answer.
    Separate,
    /// `ORPOTrainer`'s and `CPOTrainer`'s `tokenize_row`: each answer is what
    /// encoding prompt + answer adds to the prompt's tokens
    /// (`build_tokenized_answer`), with the bos id before the prompt and the
    /// eos id after the answer where they are not there already.
    Joined,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    seqs: u32,
    rows_per_seq: u32,
    objective: u32,
    pairs: u32,
    beta: f32,
    label_smoothing: f32,
    scale: f32,
    nll_alpha: f32,
    loss_type: u32,
    discopop_tau: f32,
    simpo_gamma: f32,
    desirable_weight: f32,
    undesirable_weight: f32,
    reference_free: u32,
    /// DPO's losses: how many, then each one's code and weight (for KTO
    /// `pairs` is the examples, and the rows after them their KL rows).
    terms: u32,
    alpha: f32,
    /// DPO's f-divergence (0 reverse KL, 1 JS, 2 α) and its α.
    f_divergence: u32,
    f_alpha: f32,
    _pad: [u32; 2],
    codes: [u32; 4],
    weights: [f32; 4],
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Preference, entry).with("WG", Const::U32(WG))
}

fn params(seqs: usize, rows_per_seq: usize, loss: Option<PreferenceLoss>, scale: f32) -> Params {
    let mut p = Params {
        seqs: seqs as u32,
        rows_per_seq: rows_per_seq as u32,
        objective: 0,
        pairs: (seqs / 2) as u32,
        beta: 0.0,
        label_smoothing: 0.0,
        scale,
        nll_alpha: loss.and_then(|l| l.nll_alpha()).unwrap_or(0.0),
        loss_type: 0,
        discopop_tau: 1.0,
        simpo_gamma: 0.0,
        desirable_weight: 0.0,
        undesirable_weight: 0.0,
        reference_free: 0,
        terms: 0,
        alpha: 0.0,
        f_divergence: 0,
        f_alpha: 0.0,
        _pad: [0; 2],
        codes: [0; 4],
        weights: [0.0; 4],
    };
    match loss {
        Some(PreferenceLoss::Dpo(d)) => {
            p.beta = d.beta;
            // (exo_pair reads a zero ε as 1e-3, as TRL's dpo_loss: in the shader.)
            p.label_smoothing = d.label_smoothing;
            for (i, (t, w)) in d.loss_type.terms().enumerate() {
                (p.codes[i], p.weights[i]) = (t.code(), w);
            }
            p.terms = d.loss_type.len as u32;
            p.discopop_tau = d.discopop_tau;
            p.reference_free = u32::from(d.reference_free);
            (p.f_divergence, p.f_alpha) = d.f_divergence.code();
        }
        Some(PreferenceLoss::Orpo { beta }) => (p.objective, p.beta) = (1, beta),
        Some(PreferenceLoss::Kto(k)) => {
            (p.objective, p.beta) = (3, k.beta);
            (p.desirable_weight, p.undesirable_weight) = (k.desirable_weight, k.undesirable_weight);
            p.loss_type = u32::from(!k.loss_type.uses_kl());
            p.pairs = if k.loss_type.uses_kl() { (seqs / 2) as u32 } else { seqs as u32 };
        }
        Some(PreferenceLoss::Cpo(c)) => {
            (p.objective, p.beta, p.loss_type, p.simpo_gamma) = (2, c.beta, c.loss_type.code(), c.simpo_gamma);
            p.alpha = c.alpha;
            p.label_smoothing = if c.loss_type.smooths() { c.label_smoothing } else { 0.0 };
        }
        None => {}
    }
    p
}

/// The rows per sequence of `seqs` sequences over weights of `rows` rows, checked.
fn rows_per_seq(op: &'static str, rows: usize, seqs: usize) -> Result<usize> {
    if seqs == 0 || rows % seqs != 0 {
        return Err(Error::shape(op, format!("{rows} rows do not split into {seqs} (> 0) sequences")));
    }
    u32_count(op, "row count", rows)?;
    Ok(rows / seqs)
}

fn same_rows(op: &'static str, tensors: &[(&'static str, &Tensor)]) -> Result<usize> {
    all_f32(op, tensors)?;
    let rows = tensors[0].1.numel();
    for (name, t) in tensors {
        if t.shape() != [rows] {
            return Err(Error::shape(op, format!("{name} {:?} must be ({rows})", t.shape())));
        }
    }
    Ok(rows)
}

/// `(logps, nll)`, both (S): each sequence's weighted sums of its rows' cross-entropies.
///
/// - token_loss, lp_weight, nll_weight: (S·T')
pub fn sequence_logps(
    rec: &mut Recorder,
    token_loss: &Tensor,
    lp_weight: &Tensor,
    nll_weight: &Tensor,
    seqs: usize,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "sequence_logps";
    let rows = same_rows(OP, &[("token_loss", token_loss), ("lp_weight", lp_weight), ("nll_weight", nll_weight)])?;
    let per = rows_per_seq(OP, rows, seqs)?;
    let logps = rec.alloc(&[seqs], DType::F32)?;
    let nll = rec.alloc(&[seqs], DType::F32)?;
    let p = params(seqs, per, None, 0.0);
    let bound = [(1, token_loss), (2, lp_weight), (3, nll_weight), (4, &logps), (5, &nll)];
    rec.dispatch_bound(&key(OP), &p, &bound, grid_1d(seqs))?;
    Ok((logps, nll))
}

/// What [`preference_loss`] reads of a micro-batch's S sequences.
#[derive(Clone, Copy)]
pub struct Scores<'a> {
    /// (S) the log-probabilities under the adapter, from [`sequence_logps`].
    pub policy: &'a Tensor,
    /// (S) the adapter-off log-probabilities (DPO, KTO; ORPO and CPO read none).
    pub reference: Option<&'a Tensor>,
    /// (S) the NLL terms, from [`sequence_logps`].
    pub nll: &'a Tensor,
    /// (S/2) KTO's labels, 1 for a desirable example and 0 for an undesirable
    /// one (its S rows: the examples', then their KL rows); the others read none.
    pub desirable: Option<&'a Tensor>,
    /// (2) bco_pair's running reward mean and its count across the run's
    /// micro-batches, updated in place (TRL's `RunningMoments`); the others read none.
    pub running: Option<&'a Tensor>,
}

/// Records `loss` on a micro-batch's sequence log-probabilities: adds
/// `scale` times the loss and TRL's metrics into `stats` ([`STATS`]) and
/// returns dlogp (S) = ∂(scale·loss)/∂logps.
///
/// See [`Scores`] for the inputs.
pub fn preference_loss(
    rec: &mut Recorder,
    loss: PreferenceLoss,
    scores: Scores,
    scale: f32,
    stats: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "preference_loss";
    let Scores { policy, reference, nll, desirable, running } = scores;
    let reference = match (loss.needs_reference(), reference) {
        (true, Some(r)) => r,
        (true, None) => return Err(Error::invalid(OP, "DPO and KTO need the reference log-probabilities")),
        (false, _) => policy,
    };
    let seqs = same_rows(OP, &[("policy", policy), ("reference", reference), ("nll", nll)])?;
    // A pair's rows (KTO: an example's and its KL row) come two by two; KTO without KL rows one by one.
    let single = matches!(loss, PreferenceLoss::Kto(k) if !k.loss_type.uses_kl());
    if seqs == 0 || (seqs % 2 != 0 && !single) {
        return Err(Error::shape(OP, format!("{seqs} sequences are not an even number (> 0), two a pair")));
    }
    let examples = if single { seqs } else { seqs / 2 };
    all_f32(OP, &[("stats", stats)])?;
    if stats.shape() != [STATS] {
        return Err(Error::shape(OP, format!("stats {:?} must be ({STATS})", stats.shape())));
    }
    let labels = match (matches!(loss, PreferenceLoss::Kto(_)), desirable) {
        (true, Some(d)) => {
            all_f32(OP, &[("desirable", d)])?;
            if d.shape() != [examples] {
                return Err(Error::shape(OP, format!("desirable {:?} must be ({examples})", d.shape())));
            }
            d
        }
        (true, None) => return Err(Error::invalid(OP, "KTO needs each example's label")),
        (false, _) => nll,
    };
    let sorts = |d: &DpoLoss| d.loss_type.contains(DpoLossType::Aot) || d.loss_type.contains(DpoLossType::AotPair);
    if matches!(&loss, PreferenceLoss::Dpo(d) if sorts(d)) && seqs / 2 > MAX_SORTED_PAIRS {
        let detail = format!("aot and aot_pair sort at most {MAX_SORTED_PAIRS} pairs a micro-batch, got {}", seqs / 2);
        return Err(Error::invalid(OP, detail));
    }
    let bco = matches!(loss, PreferenceLoss::Dpo(d) if d.loss_type.contains(DpoLossType::BcoPair));
    let unused;
    let running = match (bco, running) {
        (true, Some(r)) => {
            all_f32(OP, &[("running", r)])?;
            if r.shape() != [2] {
                return Err(Error::shape(OP, format!("running {:?} must be (2)", r.shape())));
            }
            r
        }
        (true, None) => return Err(Error::invalid(OP, "bco_pair needs its running reward mean")),
        (false, _) => {
            unused = rec.alloc(&[2], DType::F32)?; // not read
            &unused
        }
    };
    let dlogp = rec.alloc(&[seqs], DType::F32)?;
    let p = params(seqs, 1, Some(loss), scale);
    let bound = [(6, policy), (7, reference), (8, nll), (9, stats), (10, &dlogp), (13, labels), (14, running)];
    rec.dispatch_bound(&key(OP), &p, &bound, [1, 1, 1])?;
    Ok(dlogp)
}

/// row_scale (S·T') = nll_scale·nll_weight − dlogp[s(r)]·lp_weight: each
/// row's factor of (softmax − onehot) in ∂(scale·loss)/∂logits, where
/// nll_scale is `scale` times the loss's NLL factor
/// ([`PreferenceLoss::nll_alpha`]).
pub fn preference_row_scale(
    rec: &mut Recorder,
    dlogp: &Tensor,
    lp_weight: &Tensor,
    nll_weight: &Tensor,
    nll_scale: f32,
) -> Result<Tensor> {
    const OP: &str = "preference_row_scale";
    let rows = same_rows(OP, &[("lp_weight", lp_weight), ("nll_weight", nll_weight)])?;
    all_f32(OP, &[("dlogp", dlogp)])?;
    let seqs = dlogp.numel();
    let per = rows_per_seq(OP, rows, seqs)?;
    let row_scale = rec.alloc(&[rows], DType::F32)?;
    let p = params(seqs, per, None, nll_scale);
    let bound = [(2, lp_weight), (3, nll_weight), (11, dlogp), (12, &row_scale)];
    rec.dispatch_bound(&key(OP), &p, &bound, grid_1d(rows.div_ceil(WG as usize)))?;
    Ok(row_scale)
}

/// The metrics [`reward_loss`] adds into its `stats`: the loss, then
/// TRL's `accuracy`, `margin`, `min_reward`, `mean_reward`, `max_reward`.
pub const REWARD_STATS: usize = 6;

/// TRL's `RewardTrainer` loss on one micro-batch of P pairs: adds `scale`
/// times the loss and [`REWARD_STATS`] metrics into `stats` and returns
/// dscores (2P) = ∂(scale·loss)/∂scores (`shaders/preference.wgsl`,
/// `reward_loss`).
///
/// - scores: (2P) f32, the score head's at each sequence's last non-pad
///   token, the P chosen then the P rejected (TRL's collator's order)
/// - margins: (P) f32, each pair's `margin` (zeros without)
/// - center: `center_rewards_coefficient` γ (0: none), finite
/// - stats: ([`REWARD_STATS`] or more) f32, added to
pub fn reward_loss(
    rec: &mut Recorder,
    (scores, margins): (&Tensor, &Tensor),
    center: f32,
    (stats, scale): (&Tensor, f32),
) -> Result<Tensor> {
    const OP: &str = "reward_loss";
    all_f32(OP, &[("scores", scores), ("margins", margins), ("stats", stats)])?;
    let seqs = scores.numel();
    if seqs == 0 || seqs % 2 != 0 || margins.numel() * 2 != seqs {
        return Err(Error::shape(
            OP,
            format!("{seqs} scores and {} margins: need 2P scores (> 0) and P margins", margins.numel()),
        ));
    }
    if stats.numel() < REWARD_STATS {
        return Err(Error::shape(OP, format!("stats {:?} must hold {REWARD_STATS} values", stats.shape())));
    }
    if !(center.is_finite() && scale.is_finite()) {
        return Err(Error::invalid(
            OP,
            format!("center_rewards_coefficient {center} and scale {scale} must be finite"),
        ));
    }
    u32_count(OP, "scores", seqs)?;
    let dscores = rec.alloc(&[seqs], DType::F32)?;
    let mut p = params(seqs, 1, None, scale);
    p.beta = center;
    let bound = [(6, scores), (9, stats), (10, &dscores), (13, margins)];
    rec.dispatch_bound(&key(OP), &p, &bound, [1, 1, 1])?;
    Ok(dscores)
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["sequence_logps", "preference_loss", "preference_row_scale", "reward_loss"].map(key).to_vec()
}
