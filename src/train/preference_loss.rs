//! The preference losses inside a training step (see `kernels::preference`
//! for the math and `train::preference` for the data).
//!
//! A micro-batch of P pairs is 2P rows, the chosen ones then the rejected
//! ones (TRL's `concatenated_forward`). In the step's one submission:
//!
//! ```text
//! DPO:  xr = model(ids) with every adapter hook off       (TRL: the PEFT model under disable_adapter())
//!       ref[s] = Σ_completion log p                        (no gradient, no copy of the weights)
//! xn = model(ids) with the adapter
//! CE[r], lse[r] = cross-entropy of each row's next token   (in row chunks: never all (rows, V) logits)
//! π[s] = Σ_r lp_weight[r]·(−CE[r])                         (DPO: sum over the completion; ORPO: its mean)
//! loss, metrics += …;  dπ[s] = ∂loss/∂π[s]                 (preference_loss)
//! dlogits[r] = (softmax − onehot)·(scale·nll_weight[r] − dπ[s(r)]·lp_weight[r])
//! dxn = dlogits · lm_head                                  (the logits recomputed chunk by chunk)
//! ```
//!
//! KTO's micro-batch is B examples then their B KL rows (the same prompts
//! with other examples' completions): both forwards score all 2B rows, and
//! the KL rows get no gradient (TRL computes them under `no_grad`).
//!
//! ORPO's NLL is `ORPOTrainer`'s: the mean cross-entropy over every token of
//! the chosen rows (prompt and completion), through `nll_weight`; DPO's RPO
//! term (`rpo_alpha`) is `DPOTrainer`'s: the chosen completions' tokens.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::cross_entropy::{
    cross_entropy_backward_rows_inplace, cross_entropy_entropy, cross_entropy_forward,
};
use crate::kernels::elementwise::{fill, scale_inplace};
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::preference::{
    preference_loss, preference_row_scale, sequence_logps, PreferenceLoss, Scores, STATS,
};
use crate::model::llama::loss::logits_chunk_rows;
use crate::model::llama::Head;
use crate::model::llama::{shift_labels_after, Hooks, ModelSaved, NoHooks, IGNORE_INDEX};
use crate::model::Model;
use crate::train::data::{Batch, Dataset};

/// A micro-batch of pairs' per-row targets and weights, made on the CPU from
/// its labels (−100 on prompt and padding), in the row layout of the model's
/// output for `virtual_tokens` (one more row per sequence with prompt learning).
#[derive(Clone, Debug)]
pub struct PairRows {
    /// (S·T') the next token where a loss term counts it, −100 elsewhere.
    pub targets: Vec<i32>,
    /// (S·T') the row's weight in its sequence's log-probability: 1 (DPO) or
    /// 1/completion tokens (ORPO, IPO, SimPO) on completion rows, 0 elsewhere.
    pub lp_weight: Vec<f32>,
    /// (S·T') ORPO: 1/N on every predicted row of the chosen sequences (N of
    /// them); DPO with `rpo_alpha`: 1/N on the chosen completions' rows whose
    /// target is not id 0; CPO: 1/N on the chosen completions' rows; otherwise 0.
    pub nll_weight: Vec<f32>,
    /// KTO: (S/2) each example's label, 1 desirable, 0 not; `None` elsewhere.
    pub desirable: Option<Vec<f32>>,
    /// S = 2P.
    pub seqs: usize,
    /// Completion tokens of the micro-batch.
    pub completion_tokens: usize,
    /// DPO: (M, STATS), each completion row's share of TRL's `logits/chosen`
    /// (column 10) or `logits/rejected` (11), the mean of the logits over
    /// the chosen (rejected) completions' positions and the vocabulary: 1 /
    /// (their rows · V). Empty for the other objectives, whose means TRL
    /// takes over padded positions too.
    pub logit_weight: Vec<f32>,
}

impl PairRows {
    pub fn new(batch: &Batch, vocab: usize, virtual_tokens: usize, loss: PreferenceLoss) -> Result<PairRows> {
        const OP: &str = "preference loss";
        let seqs = batch.labels.len();
        // KTO without KL rows (apo_zero_unpaired): one row an example.
        let single = matches!(loss, PreferenceLoss::Kto(k) if !k.loss_type.uses_kl());
        if seqs == 0 || (seqs % 2 != 0 && !single) || batch.input_ids.len() != seqs {
            return Err(Error::shape(OP, format!("a batch of pairs needs an even number of rows, got {seqs}")));
        }
        let (mut targets, _) = shift_labels_after(&batch.labels, vocab, virtual_tokens)?;
        let per = targets.len() / seqs;
        // TRL scores a row from its second token on: the last virtual position predicts nothing.
        if virtual_tokens > 0 {
            targets.iter_mut().step_by(per).for_each(|t| *t = IGNORE_INDEX);
        }
        let mut lp_weight = vec![0.0f32; targets.len()];
        let mut completion_tokens = 0;
        for (s, (w, t)) in lp_weight.chunks_mut(per).zip(targets.chunks(per)).enumerate() {
            let n = t.iter().filter(|&&t| t != IGNORE_INDEX).count();
            if n == 0 {
                return Err(Error::invalid(OP, format!("row {s} of the batch has no completion token to score")));
            }
            completion_tokens += n;
            let weight = if loss.averages() { 1.0 / n as f32 } else { 1.0 };
            w.iter_mut().zip(t).filter(|(_, &t)| t != IGNORE_INDEX).for_each(|(w, _)| *w = weight);
        }
        let mut nll_weight = vec![0.0f32; targets.len()];
        let chosen_completions = |skip_id0: bool| {
            let counts = |t: &i32| *t != IGNORE_INDEX && !(skip_id0 && *t == 0);
            let chosen = &targets[..seqs / 2 * per];
            let count = chosen.iter().filter(|t| counts(t)).count();
            let mut w = vec![0.0f32; targets.len()];
            w.iter_mut().zip(chosen).filter(|(_, t)| counts(t)).for_each(|(w, _)| *w = 1.0 / count as f32);
            w
        };
        match loss {
            // TRL's RPO term: the mean cross-entropy over the chosen completions' tokens, whose cross_entropy
            // call (ignore_index=0, the id it gives masked labels) leaves out every target of id 0 too.
            // (MPO's sft loss is the same term.)
            PreferenceLoss::Dpo(_) if loss.nll_alpha().is_some() => nll_weight = chosen_completions(true),
            // CPO's: the same tokens through nn.CrossEntropyLoss (its labels −100 on the prompt).
            // (with cpo_alpha 0 TRL computes no NLL and logs 0).
            PreferenceLoss::Cpo(c) if c.cpo_alpha != 0.0 => nll_weight = chosen_completions(false),
            _ => {}
        }
        if let PreferenceLoss::Orpo { .. } = loss {
            // The chosen rows' every token up to the end of the completion (the padding excluded).
            let whole: Vec<Vec<i32>> = batch.input_ids[..seqs / 2]
                .iter()
                .zip(&batch.labels)
                .map(|(ids, labels)| {
                    let end = labels.iter().rposition(|&l| l != IGNORE_INDEX).map_or(0, |i| i + 1);
                    ids.iter().enumerate().map(|(i, &id)| if i < end { id as i32 } else { IGNORE_INDEX }).collect()
                })
                .collect();
            let (mut chosen, count) = shift_labels_after(&whole, vocab, virtual_tokens)?;
            if virtual_tokens > 0 {
                chosen.iter_mut().step_by(per).for_each(|t| *t = IGNORE_INDEX);
            }
            let count = chosen.iter().filter(|&&t| t != IGNORE_INDEX).count().min(count);
            for (r, &t) in chosen.iter().enumerate().filter(|(_, &t)| t != IGNORE_INDEX) {
                targets[r] = t;
                nll_weight[r] = 1.0 / count as f32;
            }
        }
        let desirable = match (loss, &batch.desirable) {
            (PreferenceLoss::Kto(_), Some(d)) if d.len() == if single { seqs } else { seqs / 2 } => {
                Some(d.iter().map(|&good| if good { 1.0 } else { 0.0 }).collect())
            }
            (PreferenceLoss::Kto(_), _) => {
                return Err(Error::invalid(OP, "a KTO batch needs its examples' labels (from train::kto's data)"))
            }
            _ => None,
        };
        let mut logit_weight = Vec::new();
        if let PreferenceLoss::Dpo(_) = loss {
            logit_weight = vec![0.0f32; lp_weight.len() * STATS];
            let half = seqs / 2 * per;
            for (side, range) in [(0, 0..half), (1, half..lp_weight.len())] {
                let rows: Vec<usize> = range.filter(|&r| lp_weight[r] != 0.0).collect();
                for &r in &rows {
                    logit_weight[r * STATS + 10 + side] = 1.0 / (rows.len() * vocab) as f32;
                }
            }
        }
        Ok(PairRows { targets, lp_weight, nll_weight, desirable, seqs, completion_tokens, logit_weight })
    }

    fn upload(&self, gpu: &Gpu) -> Result<[Tensor; 3]> {
        let n = self.targets.len();
        Ok([
            Tensor::from_slice(gpu, &[n], &self.targets)?,
            Tensor::from_slice(gpu, &[n], &self.lp_weight)?,
            Tensor::from_slice(gpu, &[n], &self.nll_weight)?,
        ])
    }
}

/// Each row's cross-entropy and logsumexp, both (M), for hidden states xn
/// (M, D): the logits in row chunks, as the SFT loss computes them, divided
/// by `temperature` first where it is not 1 (GRPO's sampling temperature).
pub(crate) fn token_losses(
    rec: &mut Recorder,
    xn: &Tensor,
    head: Head,
    targets: &Tensor,
    temperature: f32,
) -> Result<(Tensor, Tensor)> {
    let s = scored_rows(rec, xn, head, (targets, temperature), (false, false))?;
    Ok((s.token_loss, s.lse))
}

/// Each row's cross-entropy and logsumexp ([`token_losses`]) and, where
/// asked, its softmax entropy (M) (0 on ignored rows) and the sum of its
/// logits (M) (DPO's `logits/*` metrics).
pub(crate) struct ScoredRows {
    pub token_loss: Tensor,
    pub lse: Tensor,
    pub entropy: Option<Tensor>,
    pub logit_sums: Option<Tensor>,
}

/// [`ScoredRows`] of xn (M, D) (`entropy`, `logit_sums`: whether to find those).
pub(crate) fn scored_rows(
    rec: &mut Recorder,
    xn: &Tensor,
    head: Head,
    (targets, temperature): (&Tensor, f32),
    (entropy, logit_sums): (bool, bool),
) -> Result<ScoredRows> {
    let m = targets.numel();
    let token_loss = rec.alloc(&[m], DType::F32)?;
    let lse = rec.alloc(&[m], DType::F32)?;
    let entropies = if entropy { Some(rec.alloc(&[m], DType::F32)?) } else { None };
    let sums = if logit_sums { Some(rec.alloc(&[m, 1], DType::F32)?) } else { None };
    let ones = if logit_sums { Some(rec.gpu().ones(head.vocab())?.reshape(&[head.vocab(), 1])?) } else { None };
    for_each_chunk(rec, xn, &head, targets, |rec, start, _, logits, t| {
        if temperature != 1.0 {
            scale_inplace(rec, logits, 1.0 / temperature)?;
        }
        let (loss_c, lse_c) = cross_entropy_forward(rec, logits, t)?;
        let n = t.numel() as u64 * 4;
        if let Some(h) = &entropies {
            let h_c = cross_entropy_entropy(rec, logits, t, &lse_c)?;
            rec.copy(&h_c, 0, h, start as u64 * 4, n)?;
        }
        if let (Some(sums), Some(ones)) = (&sums, &ones) {
            let rows = t.numel();
            let sums_c = rec.alloc(&[rows, 1], DType::F32)?;
            gemm(rec, &Gemm::new(rows, 1, head.vocab(), false, false), logits, ones, &sums_c)?; // Σ_v logits
            rec.copy(&sums_c, 0, sums, start as u64 * 4, n)?;
        }
        rec.copy(&loss_c, 0, &token_loss, start as u64 * 4, n)?;
        rec.copy(&lse_c, 0, &lse, start as u64 * 4, n)
    })?;
    Ok(ScoredRows { token_loss, lse, entropy: entropies, logit_sums: sums })
}

/// Runs `f(rec, first row, x (n, D), logits (n, V), targets (n))` on each
/// row chunk x of xn (M, D) and its logits, reusing one logits buffer.
fn for_each_chunk(
    rec: &mut Recorder,
    xn: &Tensor,
    head: &Head,
    targets: &Tensor,
    mut f: impl FnMut(&mut Recorder, usize, &Tensor, &Tensor, &Tensor) -> Result<()>,
) -> Result<()> {
    let (d, v, m) = (head.dim(), head.vocab(), targets.numel());
    if xn.shape() != [m, d] {
        return Err(Error::shape("preference loss", format!("xn {:?} for {m} rows of a ({v}, {d}) head", xn.shape())));
    }
    let chunk = logits_chunk_rows(v, rec.gpu().max_binding_bytes()).min(m.max(1));
    let x_c = rec.alloc(&[chunk, d], DType::F32)?;
    let logits = rec.alloc(&[chunk, v], DType::F32)?;
    let t_c = rec.alloc(&[chunk], DType::I32)?;
    let row = d as u64 * 4;
    let mut start = 0;
    while start < m {
        let n = chunk.min(m - start);
        let (x_n, logits_n, t_n) =
            (x_c.reshape_prefix(&[n, d])?, logits.reshape_prefix(&[n, v])?, t_c.reshape_prefix(&[n])?);
        rec.copy(xn, start as u64 * row, &x_c, 0, n as u64 * row)?;
        rec.copy(targets, start as u64 * 4, &t_c, 0, n as u64 * 4)?;
        fill(rec, &logits_n, 0.0)?;
        head.logits_into(rec, &x_n, &logits_n)?; // logits_c = x_c·Wᵀ
        f(rec, start, &x_n, &logits_n, &t_n)?;
        start += n;
    }
    Ok(())
}

/// A forward's per-sequence scores and what its backward needs.
struct Scored {
    /// (S) the sequences' log-probabilities; nll (S) their ORPO NLL terms.
    logps: Tensor,
    nll: Tensor,
    /// (M) each row's logsumexp; xn (M, D) the normed hidden states; saved: the model's activations.
    lse: Tensor,
    xn: Tensor,
    saved: ModelSaved,
    /// (M, 1) each row's Σ of its logits, where asked (DPO's `logits/*`).
    logit_sums: Option<Tensor>,
}

#[allow(clippy::too_many_arguments)] // one forward: the model, its rows, and what to keep of its logits
fn score(
    rec: &mut Recorder,
    model: &Model,
    ids: &Tensor,
    hooks: &dyn Hooks,
    checkpoint: bool,
    rows: &PairRows,
    uploaded: &[Tensor; 3],
    logit_sums: bool,
) -> Result<Scored> {
    let (xn, saved) = model.hidden_checkpointed(rec, ids, hooks, checkpoint)?; // (S, T', D)
    let d = model.config.hidden_size;
    if xn.numel() != rows.targets.len() * d {
        return Err(Error::shape("preference loss", "the model's rows do not match the batch's labels"));
    }
    let xn = xn.reshape(&[rows.targets.len(), d])?;
    let [targets, lp_weight, nll_weight] = uploaded;
    let s = scored_rows(rec, &xn, model.head(hooks)?, (targets, 1.0), (false, logit_sums))?;
    let (logps, nll) = sequence_logps(rec, &s.token_loss, lp_weight, nll_weight, rows.seqs)?;
    Ok(Scored { logps, nll, lse: s.lse, xn, saved, logit_sums: s.logit_sums })
}

/// The DPO reference: the micro-batch's completion log-probabilities (S)
/// with every adapter hook off (sums, or IPO's means, as `loss` scores the policy).
fn reference_logps(
    rec: &mut Recorder,
    model: &Model,
    ids: &Tensor,
    batch: &Batch,
    vocab: usize,
    loss: PreferenceLoss,
) -> Result<Tensor> {
    let rows = PairRows::new(batch, vocab, 0, loss)?;
    let uploaded = rows.upload(rec.gpu())?;
    Ok(score(rec, model, ids, &NoHooks, false, &rows, &uploaded, false)?.logps)
}

/// Records one micro-batch of pairs: the reference forward (DPO), the
/// adapter's forward, the loss (`scale` times it and its metrics added into
/// `stats`, bco_pair's `running` mean updated) and the backward into the
/// adapter's gradients through `hooks`.
#[allow(clippy::too_many_arguments)] // one micro-batch: its data, the pass, and the step's shared accumulators
pub(crate) fn record_preference_micro(
    rec: &mut Recorder,
    model: &Model,
    loss: PreferenceLoss,
    batch: &Batch,
    rows: &PairRows,
    hooks: &dyn Hooks,
    checkpoint: bool,
    (scale, stats, running): (f32, &Tensor, &Tensor),
) -> Result<()> {
    let s = forward_scores(rec, model, loss, batch, rows, hooks, checkpoint)?;
    let dlogp = s.loss(rec, loss, running, scale, stats)?;
    let [targets, lp_weight, nll_weight] = &s.uploaded;
    let nll_scale = scale * loss.nll_alpha().unwrap_or(0.0);
    let row_scale = preference_row_scale(rec, &dlogp, lp_weight, nll_weight, nll_scale)?;
    let (m, d) = (rows.targets.len(), model.config.hidden_size);
    let s = s.scored;
    let dxn = rows_backward(rec, &s.xn, model.head(hooks)?, targets, (&s.lse, &row_scale), 1.0)?;
    let shape = [rows.seqs, m / rows.seqs, d];
    model.backward_from_hidden(rec, &dxn.reshape(&shape)?, &s.saved, hooks)
}

/// dxn (M, D) for the logits of xn (M, D) (divided by `temperature` as
/// [`token_losses`] divides them) when each row's dlogits is
/// `(softmax − onehot)·row_scale[r]`, `lse` the forward's logsumexp (M).
pub(crate) fn rows_backward(
    rec: &mut Recorder,
    xn: &Tensor,
    head: Head,
    targets: &Tensor,
    (lse, row_scale): (&Tensor, &Tensor),
    temperature: f32,
) -> Result<Tensor> {
    let (m, d) = (targets.numel(), head.dim());
    let dxn = rec.alloc(&[m, d], DType::F32)?;
    let row = d as u64 * 4;
    for_each_chunk(rec, xn, &head, targets, |rec, start, x, logits, t| {
        let n = t.numel();
        if temperature != 1.0 {
            scale_inplace(rec, logits, 1.0 / temperature)?;
        }
        let lse_c = rec.alloc(&[n], DType::F32)?;
        let scale = rec.alloc(&[n], DType::F32)?;
        rec.copy(lse, start as u64 * 4, &lse_c, 0, n as u64 * 4)?;
        rec.copy(row_scale, start as u64 * 4, &scale, 0, n as u64 * 4)?;
        cross_entropy_backward_rows_inplace(rec, logits, t, &lse_c, &scale)?; // logits become dlogits
        let dx = rec.zeros(&[n, d], DType::F32)?;
        head.backward_into(rec, x, logits, &dx)?; // dxn_c = dlogits_c·W
        rec.copy(&dx, 0, &dxn, start as u64 * row, n as u64 * row)
    })?;
    Ok(dxn)
}

/// Records one batch's preference loss and TRL's metrics into `stats`
/// (STATS values, the loss first, each the batch's as a step of one
/// micro-batch logs it) with no backward: an evaluation. bco_pair's
/// `running` mean moves as a step would move it.
pub(crate) fn record_preference_eval(
    rec: &mut Recorder,
    model: &Model,
    loss: PreferenceLoss,
    batch: &Batch,
    hooks: &dyn Hooks,
    (stats, running): (&Tensor, &Tensor),
) -> Result<()> {
    let rows = PairRows::new(batch, model.config.vocab_size, hooks.virtual_tokens(), loss)?;
    forward_scores(rec, model, loss, batch, &rows, hooks, false)?.loss(rec, loss, running, 1.0, stats)?;
    Ok(())
}

/// The policy's forward with what it is scored against.
struct Forward {
    scored: Scored,
    /// targets, lp_weight, nll_weight on the GPU.
    uploaded: [Tensor; 3],
    /// (S) the reference's log-probabilities (none without a reference).
    reference: Option<Tensor>,
    /// KTO: each example's label.
    desirable: Option<Tensor>,
    /// DPO: (M, STATS) each row's share of `logits/chosen` and `logits/rejected` (PairRows::logit_weight).
    logit_weight: Option<Tensor>,
}

impl Forward {
    /// The loss (`scale` times it and its metrics added into `stats`,
    /// bco_pair's `running` mean updated) and ∂loss/∂π (S).
    fn loss(
        &self,
        rec: &mut Recorder,
        loss: PreferenceLoss,
        running: &Tensor,
        scale: f32,
        stats: &Tensor,
    ) -> Result<Tensor> {
        let scores = Scores {
            policy: &self.scored.logps,
            reference: self.reference.as_ref(),
            nll: &self.scored.nll,
            desirable: self.desirable.as_ref(),
            running: Some(running),
        };
        let dlogp = preference_loss(rec, loss, scores, scale, stats)?;
        if let (Some(sums), Some(w)) = (&self.scored.logit_sums, &self.logit_weight) {
            // stats (1, STATS) += scale · sumsᵀ (1, M) · w (M, STATS): DPO's mean logits into [10], [11].
            let m = sums.numel();
            let add = Gemm::new(1, STATS, m, false, false).alpha(scale).accumulate(true);
            gemm(rec, &add, &sums.reshape(&[1, m])?, w, &stats.reshape(&[1, STATS])?)?;
        }
        Ok(dlogp)
    }
}

/// A micro-batch's policy forward through `hooks`, with its reference
/// log-probabilities (precomputed, or scored with every hook off) and
/// KTO's labels on the GPU.
fn forward_scores(
    rec: &mut Recorder,
    model: &Model,
    loss: PreferenceLoss,
    batch: &Batch,
    rows: &PairRows,
    hooks: &dyn Hooks,
    checkpoint: bool,
) -> Result<Forward> {
    let gpu = rec.gpu();
    let vocab = model.config.vocab_size;
    let ids = &model.input_ids(gpu, &batch.input_ids)?;
    let reference = match (&batch.reference_logps, loss.needs_reference()) {
        (Some(precomputed), true) if precomputed.len() == rows.seqs => {
            Some(Tensor::from_slice(gpu, &[rows.seqs], precomputed)?)
        }
        (Some(precomputed), true) => {
            return Err(Error::shape(
                "preference loss",
                format!("{} precomputed reference log-probabilities for {} rows", precomputed.len(), rows.seqs),
            ))
        }
        (None, true) => Some(reference_logps(rec, model, ids, batch, vocab, loss)?),
        (_, false) => None,
    };
    let uploaded = rows.upload(gpu)?;
    let logit_weight = match rows.logit_weight.is_empty() {
        true => None,
        false => Some(Tensor::from_slice(gpu, &[rows.targets.len(), STATS], &rows.logit_weight)?),
    };
    let scored = score(rec, model, ids, hooks, checkpoint, rows, &uploaded, logit_weight.is_some())?;
    let desirable = match &rows.desirable {
        Some(d) => Some(Tensor::from_slice(gpu, &[d.len()], d)?),
        None => None,
    };
    Ok(Forward { scored, uploaded, reference, desirable, logit_weight })
}

/// TRL's `precompute_ref_log_probs`: every row's reference log-probability
/// (the base model, every adapter hook off), computed once in file order,
/// `batch_size` units at a time (one submission and one read-back each), and
/// kept in `data`, whose batches then carry theirs: the steps score the
/// reference no more. The values are the ones each step would compute.
pub async fn precompute_reference(gpu: &Gpu, model: &Model, data: &mut Dataset, loss: PreferenceLoss) -> Result<()> {
    if !loss.needs_reference() {
        return Err(Error::invalid("precompute_reference", "this objective has no reference model to precompute"));
    }
    let vocab = model.config.vocab_size;
    let mut values = vec![0.0f32; data.rows().len()];
    for (indices, batch) in data.in_file_order() {
        let mut rec = Recorder::new(gpu);
        let ids = model.input_ids(gpu, &batch.input_ids)?;
        let logps = reference_logps(&mut rec, model, &ids, &batch, vocab, loss)?;
        rec.submit()?;
        for (&i, v) in indices.iter().zip(logps.to_vec::<f32>(gpu).await?) {
            values[i] = v;
        }
    }
    data.set_reference(values)
}

/// Each sequence's log-probability under the adapter (`hooks`) and, for
/// DPO, under the base alone, read back: `(policy, reference)`, both (S),
/// as TRL's `concatenated_forward` computes them (ORPO: means over the completion).
pub async fn preference_logps(
    gpu: &Gpu,
    model: &Model,
    hooks: &dyn Hooks,
    batch: &Batch,
    loss: PreferenceLoss,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let vocab = model.config.vocab_size;
    let rows = PairRows::new(batch, vocab, hooks.virtual_tokens(), loss)?;
    let mut rec = Recorder::new(gpu);
    let ids = model.input_ids(gpu, &batch.input_ids)?;
    let reference =
        if loss.needs_reference() { Some(reference_logps(&mut rec, model, &ids, batch, vocab, loss)?) } else { None };
    let uploaded = rows.upload(gpu)?;
    let policy = score(&mut rec, model, &ids, hooks, false, &rows, &uploaded, false)?.logps;
    rec.submit()?;
    let reference = match reference {
        Some(r) => Some(r.to_vec::<f32>(gpu).await?),
        None => None,
    };
    Ok((policy.to_vec::<f32>(gpu).await?, reference))
}
