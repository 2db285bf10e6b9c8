//! Every pipeline the launchers can request, for `tests/pipelines.rs`: our
//! shaders compile without naga's runtime checks (see `gpu::pipelines`), so
//! each variant must at least compile everywhere it can be asked for. Each
//! launcher lists its own keys beside the code that builds them.

use super::{
    adalora, adamw, attention, classification, cross_entropy, dora, elementwise, embedding, grpo, matmul, preference,
    qmatmul,
};
use super::{quant, reduce, sample};
use super::{rmsnorm, rope, softmax, swiglu, token_rows, tune};
use crate::gpu::{Gpu, PipelineKey};

/// The distinct pipeline keys the launchers can request on `gpu`, for both
/// kernel families (either can be forced on any adapter); subgroup and f16
/// kernels only where the device runs them. Shape-dependent constants (the
/// attention tiles) are sampled so that every branch is reached; blocks of
/// an imported tuning file can be any that pass `Blocks::check`.
pub fn pipeline_keys(gpu: &Gpu) -> Vec<PipelineKey> {
    let blocks = tune::all_candidates(gpu);
    let all = [
        matmul::pipeline_keys(gpu, &blocks),
        qmatmul::pipeline_keys(gpu, &blocks),
        quant::pipeline_keys(),
        rmsnorm::pipeline_keys(),
        rope::pipeline_keys(),
        swiglu::pipeline_keys(),
        softmax::pipeline_keys(),
        attention::pipeline_keys(gpu),
        embedding::pipeline_keys(),
        token_rows::pipeline_keys(),
        elementwise::pipeline_keys(),
        cross_entropy::pipeline_keys(),
        reduce::pipeline_keys(),
        adamw::pipeline_keys(),
        adalora::pipeline_keys(),
        dora::pipeline_keys(),
        preference::pipeline_keys(),
        classification::pipeline_keys(),
        grpo::pipeline_keys(),
        sample::pipeline_keys(),
    ];
    let mut seen = std::collections::HashSet::new();
    all.into_iter().flatten().filter(|k| seen.insert(k.id())).collect()
}
