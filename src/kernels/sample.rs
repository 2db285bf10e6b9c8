//! Sampling a token from each row of logits on the GPU (`shaders/sample.wgsl`),
//! so sampled decoding reads back a token, not V logits, and submits the next
//! step before the draw is read, as greedy decoding does.
//!
//! The rule is transformers': scores = logits / temperature, then top-k (ties
//! at the k-th kept), then top-p (the smallest most-likely prefix reaching
//! top_p), then min-p (the tokens at least min_p times as likely as the most
//! likely), then a draw from the softmax of what is kept. The draw is the
//! Gumbel-max race: the kept token with the largest s − ln E, E a standard
//! exponential from [`pcg`] of (seed, draw, index) ([`race_noise`]). That is a
//! draw from softmax(s) over the kept set, needing no prefix sums, and the
//! CPU ([`crate::model::llama::sample`]) draws the same token from the same
//! (seed, draw) up to float rounding.
//!
//! Three launches: `sample_slices` (one workgroup per 2048 values of a
//! row) keeps each slice's [`CANDIDATES`] most likely values and its
//! statistics; `sample_pick` (one workgroup a row) sorts the row's
//! [`CANDIDATES`] most likely and decides where the kept set lies within
//! them; `sample_wide` (one workgroup a row) decides the other rows (a
//! top-k of [`CANDIDATES`] or more, ties at the k-th past them, a nucleus
//! or a min-p set wider than them) by bisection over the whole row, and returns at once
//! for a decided one. With neither top-k nor top-p the race runs over the
//! whole row in `sample_slices`.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, u32_count};
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Gpu, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 256;
/// Values a `sample_slices` workgroup covers (WG · 8).
const SLICE: usize = 2048;
/// The most likely values `sample_pick` sorts: top-k below this decides on the GPU.
pub const CANDIDATES: usize = 256;
// sample_pick gives each candidate one invocation of its workgroup.
const _: () = assert!(CANDIDATES <= WG as usize);
/// Words of statistics a slice.
const STATS: usize = 8;

/// A row's flag: its token was drawn.
pub const DECIDED: u32 = 0;
/// A row's flag: every value is NaN (or the row is empty).
pub const NO_TOKEN: u32 = 2;

/// The settings of one draw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Scores are logits / temperature (finite, > 0).
    pub temperature: f32,
    /// Keep the k most likely (ties at the k-th too); 0 = off.
    pub top_k: usize,
    /// Keep the smallest most-likely set reaching this probability, in (0, 1]; 1 = off.
    pub top_p: f32,
    /// Keep the tokens whose probability is at least this times the most
    /// likely's (transformers' `MinPLogitsWarper`: exp(s − max) ≥ min_p), in
    /// [0, 1]; 0 = off.
    pub min_p: f32,
    /// With `draw`, what the race's noise is hashed from.
    pub seed: u64,
    /// Which draw of the seed this is (a generation's token number); row r
    /// of a launch draws with `draw + r`.
    pub draw: u32,
}

impl Sampling {
    /// Checks temperature, top_p and min_p, naming `op` in the error.
    pub fn validate(&self, op: &'static str) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::invalid(op, format!("temperature must be finite and > 0, got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(op, format!("top_p must be in (0, 1], got {}", self.top_p)));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(Error::invalid(op, format!("min_p must be in [0, 1], got {}", self.min_p)));
        }
        Ok(())
    }
}

/// The PCG hash (Jarzynski and Olano, "Hash Functions for GPU Rendering", 2020).
pub fn pcg(v: u32) -> u32 {
    let s = v.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277_803_737);
    (w >> 22) ^ w
}

/// The hash a draw mixes each index into.
pub fn draw_base(seed: u64, draw: u32) -> u32 {
    pcg(pcg(pcg(seed as u32) ^ (seed >> 32) as u32) ^ draw)
}

/// ln E for the token at `index`: E = −ln U, U = (k + ½) / 2²³ from the top
/// 23 bits of `pcg(base ^ index)`, a standard exponential. The race's value
/// of a token is its score minus this.
pub fn race_noise(base: u32, index: u32) -> f64 {
    let k = (pcg(base ^ index) >> 9) as f64;
    let u = (k + 0.5) / 8_388_608.0;
    (-u.ln()).ln()
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    rows: u32,
    slices: u32,
    top_k: u32,
    top_p: f32,
    temperature: f32,
    seed_lo: u32,
    seed_hi: u32,
    draw: u32,
    penalty: f32,
    mark: u32,
    min_p: f32,
    ngram: u32,
    len: u32,
    cap: u32,
    words: u32,
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Sample, entry).with("WG", Const::U32(WG)).with("CANDIDATES", Const::U32(CANDIDATES as u32))
}

/// One token from each row of `logits` (rows, V) f32: a (2 · rows) u32
/// tensor, the tokens then their flags ([`DECIDED`], or [`NO_TOKEN`] with 0
/// for a row of NaNs). `reshape_prefix(&[rows])` views the tokens alone.
pub fn sample_rows(rec: &mut Recorder, logits: &Tensor, sampling: &Sampling) -> Result<Tensor> {
    const OP: &str = "sample_rows";
    all_f32(OP, &[("logits", logits)])?;
    let &[rows, n] = logits.shape() else {
        return Err(Error::shape(OP, format!("logits {:?} must be (rows, V)", logits.shape())));
    };
    sampling.validate(OP)?;
    u32_count(OP, "element count", rows * n)?;
    let slices = n.div_ceil(SLICE);
    let limit = rec.gpu().limits().max_compute_workgroups_per_dimension as usize;
    if rows > limit || slices > limit {
        return Err(Error::shape(
            OP,
            format!("logits {:?} need more workgroups than one dispatch holds", logits.shape()),
        ));
    }
    let tokens = rec.alloc(&[2 * rows], DType::U32)?;
    if rows == 0 {
        return Ok(tokens);
    }
    let cand = rec.alloc(&[(rows * slices * CANDIDATES).max(1), 2], DType::U32)?;
    let stats = rec.alloc(&[(rows * slices * STATS).max(1)], DType::U32)?;
    let p = Params {
        n: n as u32,
        rows: rows as u32,
        slices: slices as u32,
        top_k: u32::try_from(sampling.top_k).unwrap_or(u32::MAX),
        top_p: sampling.top_p,
        min_p: sampling.min_p,
        temperature: sampling.temperature,
        seed_lo: sampling.seed as u32,
        seed_hi: (sampling.seed >> 32) as u32,
        draw: sampling.draw,
        ..Params::zeroed()
    };
    if slices > 0 {
        let bound = [(1, logits), (2, &cand), (3, &stats)];
        rec.dispatch_bound(&key("sample_slices"), &p, &bound, [slices as u32, rows as u32, 1])?;
    }
    let bound = [(1, logits), (2, &cand), (3, &stats), (4, &tokens)];
    rec.dispatch_bound(&key("sample_pick"), &p, &bound, [rows as u32, 1, 1])?;
    rec.dispatch_bound(&key("sample_wide"), &p, &[(1, logits), (4, &tokens)], [rows as u32, 1, 1])?;
    Ok(tokens)
}

/// What binds as `last`: the previous tokens, or without them a word that is
/// never read (`mark` is 0).
fn bound_last(rec: &mut Recorder, last: Option<&Tensor>) -> Result<Tensor> {
    match last {
        Some(t) => Ok(t.clone()),
        None => rec.alloc(&[1], DType::U32),
    }
}

/// The (rows, V) of an f32 `logits` (rows, V).
fn logit_rows(op: &'static str, logits: &Tensor) -> Result<(usize, usize)> {
    all_f32(op, &[("logits", logits)])?;
    match *logits.shape() {
        [rows, n] => Ok((rows, n)),
        _ => Err(Error::shape(op, format!("logits {:?} must be (rows, V)", logits.shape()))),
    }
}

/// Checks `last`, each of `rows` rows' previous token, where given.
fn check_last(op: &'static str, last: Option<&Tensor>, rows: usize) -> Result<()> {
    match last {
        Some(last) if last.dtype() != DType::U32 || last.numel() < rows => {
            let detail = format!("last {:?} {} must hold {rows} u32 tokens", last.shape(), last.dtype().name());
            Err(Error::shape(op, detail))
        }
        _ => Ok(()),
    }
}

/// Checks a bans' sequence: `history` (rows, capacity) u32 holding `len`
/// tokens a row (at least `min_len`) for `logits`, and `last`; the capacity.
fn check_history(
    op: &'static str,
    (logits, rows): (&Tensor, usize),
    history: &Tensor,
    last: Option<&Tensor>,
    (len, min_len): (usize, usize),
) -> Result<usize> {
    let &[h_rows, cap] = history.shape() else {
        return Err(Error::shape(op, format!("history {:?} must be (rows, capacity)", history.shape())));
    };
    if history.dtype() != DType::U32 || h_rows != rows || len > cap || len < min_len {
        let detail = format!(
            "history {:?} {} must be ({rows}, ≥ {len}) u32 for logits {:?}, the sequence at least {min_len} tokens{}",
            history.shape(),
            history.dtype().name(),
            logits.shape(),
            if last.is_some() { ", with the last token its own" } else { "" }
        );
        return Err(Error::shape(op, detail));
    }
    check_last(op, last, rows)?;
    Ok(cap)
}

/// Words of a row's set of seen tokens for a vocabulary of `v`: bit i of
/// word i / 32 is token i.
pub fn seen_words(v: usize) -> usize {
    v.div_ceil(32)
}

/// The set of seen tokens of each row of `ids` (one row a sequence) for a
/// vocabulary of `v`, as [`repetition_penalty`] reads it: (rows,
/// [`seen_words`]`(v)`) u32. Ids of `v` or more are refused.
pub fn seen_tokens(ids: &[&[u32]], v: usize) -> Result<Vec<u32>> {
    let words = seen_words(v);
    let mut seen = vec![0u32; ids.len() * words];
    for (row, row_ids) in ids.iter().enumerate() {
        for &id in *row_ids {
            if id as usize >= v {
                return Err(Error::shape("repetition_penalty", format!("token {id} of row {row} is not below V {v}")));
            }
            seen[row * words + id as usize / 32] |= 1 << (id % 32);
        }
    }
    Ok(seen)
}

/// transformers' `RepetitionPenaltyLogitsProcessor` in place on `logits`
/// (rows, V) f32: each token in its row's set `seen` (rows,
/// [`seen_words`]`(V)`) u32 ([`seen_tokens`]) has its logit divided by
/// `penalty` where ≥ 0 and multiplied by it where negative. With `last`
/// (rows) u32, each row's previous token joins its set first (a decoding
/// step's, which the GPU picked). One launch; `penalty` must be finite and > 0.
pub fn repetition_penalty(
    rec: &mut Recorder,
    logits: &Tensor,
    seen: &Tensor,
    last: Option<&Tensor>,
    penalty: f32,
) -> Result<()> {
    const OP: &str = "repetition_penalty";
    let (rows, n) = logit_rows(OP, logits)?;
    if !(penalty.is_finite() && penalty > 0.0) {
        return Err(Error::invalid(OP, format!("repetition_penalty must be finite and > 0, got {penalty}")));
    }
    let words = seen_words(n);
    if seen.dtype() != DType::U32 || seen.numel() != rows * words {
        return Err(Error::shape(
            OP,
            format!(
                "seen {:?} {} must be ({rows}, {words}) u32 for logits {:?}",
                seen.shape(),
                seen.dtype().name(),
                logits.shape()
            ),
        ));
    }
    check_last(OP, last, rows)?;
    u32_count(OP, "element count", rows * n)?;
    let groups = n.div_ceil(WG as usize);
    let limit = rec.gpu().limits().max_compute_workgroups_per_dimension as usize;
    if groups > limit || rows > limit {
        return Err(Error::shape(
            OP,
            format!("logits {:?} need more workgroups than one dispatch holds", logits.shape()),
        ));
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let p = Params { n: n as u32, rows: rows as u32, penalty, mark: last.is_some() as u32, ..Params::zeroed() };
    let last = bound_last(rec, last)?;
    let bound = [(5, logits), (6, seen), (7, &last)];
    rec.dispatch_bound(&key(OP), &p, &bound, [groups as u32, rows as u32, 1])
}

/// transformers' `NoRepeatNGramLogitsProcessor` in place on `logits` (rows,
/// V) f32: in each row's sequence of `len` tokens, every n-gram (`ngram` =
/// n ≥ 1 tokens) whose first n − 1 tokens are the sequence's last n − 1
/// bans its last token (logit −∞); none while the sequence is shorter than
/// n − 1. `history` (rows, cap) u32 holds each row's first `len` tokens, or
/// with `last` (rows) u32 its first `len` − 1, `last` being token `len` − 1
/// (a decoding step's, which the GPU picked): the launch appends it to
/// `history`. One launch.
pub fn ban_repeated_ngrams(
    rec: &mut Recorder,
    logits: &Tensor,
    history: &Tensor,
    last: Option<&Tensor>,
    (len, ngram): (usize, usize),
) -> Result<()> {
    const OP: &str = "no_repeat_ngram_size";
    let (rows, n) = logit_rows(OP, logits)?;
    if ngram == 0 {
        return Err(Error::invalid(OP, "the n-gram size must be at least 1 (0 is off: no launch)"));
    }
    // With `last` appended, the sequence holds at least that token.
    let cap = check_history(OP, (logits, rows), history, last, (len, last.is_some() as usize))?;
    u32_count(OP, "element count", rows * n)?;
    u32_count(OP, "history", rows * cap)?;
    let starts = (len + 1).saturating_sub(ngram).max(1); // invocation 0 appends `last` even with no n-gram
    let groups = starts.div_ceil(WG as usize);
    let limit = rec.gpu().limits().max_compute_workgroups_per_dimension as usize;
    if groups > limit || rows > limit {
        return Err(Error::shape(
            OP,
            format!("{rows} rows of {len} tokens need more workgroups than one dispatch holds"),
        ));
    }
    if rows == 0 || n == 0 || len == 0 {
        return Ok(());
    }
    let p = Params {
        n: n as u32,
        rows: rows as u32,
        mark: last.is_some() as u32,
        ngram: u32::try_from(ngram).unwrap_or(u32::MAX),
        len: len as u32,
        cap: cap as u32,
        ..Params::zeroed()
    };
    let last = bound_last(rec, last)?;
    let bound = [(5, logits), (7, &last), (8, history)];
    rec.dispatch_bound(&key("ban_ngrams"), &p, &bound, [groups as u32, rows as u32, 1])
}

/// Each row's tokens in `ids` (rows, count) u32 get the logit −∞ in `logits`
/// (rows, V) f32, in place (an eos before `min_new_tokens`): the n-gram
/// launch with n = 1, which bans every token of its sequence.
pub fn ban_tokens(rec: &mut Recorder, logits: &Tensor, ids: &Tensor) -> Result<()> {
    let count = ids.shape().last().copied().unwrap_or(0);
    ban_repeated_ngrams(rec, logits, ids, None, (count, 1))
}

/// Words to ban, as [`ban_words`] reads them: (count + 1) offsets, then the
/// words' tokens one after another, in one u32 tensor.
#[derive(Clone, Debug)]
pub struct WordTable {
    pub table: Tensor,
    pub count: usize,
}

impl WordTable {
    /// Uploads `words` (each at least one token).
    pub fn new(gpu: &Gpu, words: &[Vec<u32>]) -> Result<WordTable> {
        const OP: &str = "bad_words_ids";
        if let Some(i) = words.iter().position(Vec::is_empty) {
            return Err(Error::invalid(OP, format!("word {i} is empty: each needs at least one token")));
        }
        let mut table = Vec::with_capacity(words.len() + 1 + words.iter().map(Vec::len).sum::<usize>());
        let mut at = 0usize;
        table.push(0);
        for w in words {
            at += w.len();
            table.push(u32::try_from(at).map_err(|_| Error::invalid(OP, "the words hold more than 2³² tokens"))?);
        }
        words.iter().for_each(|w| table.extend_from_slice(w));
        Ok(WordTable { table: Tensor::from_slice(gpu, &[table.len()], &table)?, count: words.len() })
    }
}

/// transformers' `NoBadWordsLogitsProcessor` in place on `logits` (rows, V)
/// f32: a word of L tokens whose first L − 1 are the last L − 1 of a row's
/// sequence of `len` tokens bans its last token (logit −∞) in that row; a
/// word of one token always, a word longer than the sequence never. The
/// sequence is read from `history` and `last`, and `last` appended to
/// `history`, as [`ban_repeated_ngrams`] does. One launch.
pub fn ban_words(
    rec: &mut Recorder,
    logits: &Tensor,
    words: &WordTable,
    history: &Tensor,
    last: Option<&Tensor>,
    len: usize,
) -> Result<()> {
    const OP: &str = "bad_words_ids";
    let (rows, n) = logit_rows(OP, logits)?;
    let cap = check_history(OP, (logits, rows), history, last, (len, 1))?;
    if words.table.dtype() != DType::U32 || words.table.numel() < words.count + 1 {
        let detail = format!("the word table {:?} must hold {} offsets", words.table.shape(), words.count + 1);
        return Err(Error::shape(OP, detail));
    }
    u32_count(OP, "element count", rows * n)?;
    u32_count(OP, "history", rows * cap)?;
    let groups = words.count.max(1).div_ceil(WG as usize);
    let limit = rec.gpu().limits().max_compute_workgroups_per_dimension as usize;
    if groups > limit || rows > limit {
        return Err(Error::shape(
            OP,
            format!("{rows} rows of {} words need more workgroups than one dispatch holds", words.count),
        ));
    }
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let p = Params {
        n: n as u32,
        rows: rows as u32,
        mark: last.is_some() as u32,
        len: len as u32,
        cap: cap as u32,
        words: words.count as u32,
        ..Params::zeroed()
    };
    let last = bound_last(rec, last)?;
    let bound = [(5, logits), (7, &last), (8, history), (9, &words.table)];
    rec.dispatch_bound(&key("ban_words"), &p, &bound, [groups as u32, rows as u32, 1])
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["sample_slices", "sample_pick", "sample_wide", "repetition_penalty", "ban_ngrams", "ban_words"].map(key).to_vec()
}
