//! Sampling figures: one token drawn from a row of Llama 3's 128,256 logits,
//! as a decoding step pays for it from logits on the GPU to the token on the
//! CPU. On the GPU (`sample_rows`, reading back the token) against on the
//! CPU (reading back the row, then `model::llama::sample`). The row is shaped
//! like a language model's: token of rank r has logit −1.1 · ln r (a Zipf
//! law), in a shuffled order; `shape` names how many tokens top-p keeps.
//! One setting adds transformers' repetition penalty over 500 tokens seen
//! (on the GPU one more launch, `repetition_penalty`; on the CPU
//! `penalize_seen` before the draw).

use std::time::Instant;

use super::{median, Figure};
use crate::error::Result;
use crate::gpu::{Gpu, Recorder, Tensor};
use crate::kernels::reference::sample::{repetition_penalty as penalty_reference, sample_row};
use crate::kernels::sample::{repetition_penalty, sample_rows, seen_tokens, seen_words, CANDIDATES};
use crate::model::llama::{penalize_seen, sample, GenerationConfig};
use crate::util::rng::Rng;

/// Llama 3's vocabulary.
const VOCAB: usize = 128_256;

/// Per draw, median of `repeats` rounds of 20 draws: (temperature 0.7,
/// top-p 0.9), (top-k 50), (temperature 1), (temperature 1, top-p 0.95,
/// whose nucleus is past the candidates) and (temperature 0.7, top-p 0.9
/// after a repetition penalty of 1.1 over 500 tokens) each on the GPU and
/// the CPU.
pub async fn sample_figures(gpu: &Gpu, repeats: usize, report: &mut dyn FnMut(&Figure)) -> Result<Vec<Figure>> {
    let mut rng = Rng::new(3);
    let mut logits: Vec<f32> = (1..=VOCAB).map(|rank| -1.1 * (rank as f32).ln()).collect();
    for i in (1..VOCAB).rev() {
        logits.swap(i, rng.below(i + 1));
    }
    let row = Tensor::from_slice(gpu, &[1, VOCAB], &logits)?;
    // The tokens a penalty counts: 500 of the row's, in its order (it penalizes
    // the same ones again each draw; the time is the same).
    let seen_ids: Vec<u32> = (0..500).map(|i| (i * 251 % VOCAB) as u32).collect();
    let seen = seen_tokens(&[&seen_ids], VOCAB)?;
    let seen_gpu = Tensor::from_slice(gpu, &[1, seen_words(VOCAB)], &seen)?;
    let penalized_row = Tensor::from_slice(gpu, &[1, VOCAB], &logits)?;
    let penalized = GenerationConfig { repetition_penalty: 1.1, ..GenerationConfig::sampling(1, 0.7, 0, 0.9, 1) };
    let mut out = Vec::new();
    for (name, config) in [
        ("T 0.7, top-p 0.9", GenerationConfig::sampling(1, 0.7, 0, 0.9, 1)),
        ("top-k 50", GenerationConfig::sampling(1, 1.0, 50, 1.0, 1)),
        ("T 1", GenerationConfig::sampling(1, 1.0, 0, 1.0, 1)),
        ("T 1, top-p 0.95", GenerationConfig::sampling(1, 1.0, 0, 0.95, 1)),
        ("T 0.7, top-p 0.9, penalty 1.1 on 500", penalized),
    ] {
        let penalty = config.repetition_penalty;
        let row = if penalty != 1.0 { &penalized_row } else { &row };
        let scored = match penalty != 1.0 {
            true => penalty_reference(&logits, &seen_ids, penalty),
            false => logits.clone(),
        };
        let kept = sample_row(&scored, &config.draw_settings(0)).kept.len();
        let shape = format!("{VOCAB} logits, {name} ({kept} kept)");
        let mut on_gpu = Vec::new();
        let mut on_cpu = Vec::new();
        for _ in 0..repeats + 1 {
            let start = Instant::now();
            for draw in 0..20 {
                let mut rec = Recorder::new(gpu);
                if penalty != 1.0 {
                    repetition_penalty(&mut rec, row, &seen_gpu, None, penalty)?;
                }
                let picked = sample_rows(&mut rec, row, &config.draw_settings(draw))?;
                let read = rec.read_after(&picked)?;
                rec.submit()?;
                read.read(gpu).await?;
            }
            on_gpu.push(start.elapsed().as_secs_f64() / 20.0);
            let start = Instant::now();
            for draw in 0..20 {
                let mut rec = Recorder::new(gpu);
                let read = rec.read_after(row)?;
                rec.submit()?;
                let mut values: Vec<f32> = bytemuck::pod_collect_to_vec(&read.read(gpu).await?);
                if penalty != 1.0 {
                    penalize_seen(&mut values, &seen, penalty);
                }
                sample(&values, &config, draw)?;
            }
            on_cpu.push(start.elapsed().as_secs_f64() / 20.0);
        }
        // The first round builds the pipelines: left out.
        // A top-k or top-p past the candidates is sample_wide's bisection.
        let wide = (CANDIDATES..VOCAB).contains(&kept);
        let gpu_kernel = format!("sample on the GPU{}", if wide { " (wide)" } else { "" });
        for (kernel, times) in [(gpu_kernel, on_gpu), ("sample on the CPU".into(), on_cpu)] {
            out.push(Figure {
                kernel,
                shape: shape.clone(),
                gflops: 0.0,
                ms_per_call: median(times[1..].to_vec()) * 1e3,
                m: 1,
                n: VOCAB,
                k: 0,
                op: "sample",
                weight_gbps: None,
            });
            report(&out[out.len() - 1]);
        }
    }
    Ok(out)
}
