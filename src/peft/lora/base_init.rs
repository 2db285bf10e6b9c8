//! PiSSA, OLoRA and LoftQ on a loaded model: each adapted Linear's weight is
//! read to the CPU as f32, split by [`super::init_weight`] into A, B and a
//! new base weight, and the model's weight is replaced by that base in the
//! model's own storage format, one Linear at a time (PEFT's `update_layer`
//! does the same to `base_layer.weight`).
//!
//! The float weight comes from the model when its Linears are f32 or f16 (as
//! PEFT reads an f32/f16 model). On a Q8_0 or NF4 base, PEFT refuses PiSSA
//! and OLoRA ("initialize under float, then re-quantize the residual");
//! webpeft does exactly that in one go: it reads the float weight from the
//! checkpoint files again and quantizes the residual. LoftQ's base is the
//! NF4 quantization of the residual whatever the storage: kept as that NF4
//! on an NF4 base, dequantized on an f32/f16 one (PEFT's float model); a
//! Q8_0 base would quantize it again and is refused. A pre-quantized folder
//! has no float weights to start from and is refused.

use std::sync::Arc;

use super::adapter::{module_name, LoraAdapter};
use super::init_weight::{loftq, olora, pissa, pissa_lowrank, WeightInit};
use super::merge::linear_weights;
use super::{InitLoraWeights, LoraConfig, LoraWeights};
use crate::gpu::Gpu;
use crate::kernels::qmatmul::QWeight;
use crate::model::quantized::stored_format;
use crate::model::{Checkpoint, Model, ModelFiles};
use crate::quant::QuantFormat;
use crate::util::rng::Rng;
use crate::{Error, Result};

fn refuse(detail: impl Into<String>) -> Error {
    Error::AdapterUnsupported { field: "init_lora_weights".into(), detail: detail.into() }
}

/// A fresh LoRA adapter whose `config.init_lora_weights` starts from the base
/// weights (PiSSA, `pissa_niter_K`, OLoRA, LoftQ), with `model`'s adapted
/// weights replaced as PEFT replaces them. `files` are the model's files,
/// needed only on a Q8_0 or NF4 base (the float weights come from there);
/// `seed` draws `pissa_niter_K`'s test matrices. `weights` are the zero
/// factors of every module (their shapes checked by the caller).
pub async fn init_from_base<F: ModelFiles>(
    gpu: &Gpu,
    model: &mut Model,
    files: Option<&F>,
    config: LoraConfig,
    mut weights: LoraWeights,
    seed: u64,
) -> Result<LoraAdapter> {
    let init = config.init_lora_weights;
    if !init.adjusts_base() {
        return Err(Error::invalid("init_from_base", format!("{init:?} does not start from the base weights")));
    }
    let quantized = matches!(model.format, QuantFormat::Q8_0 | QuantFormat::Nf4);
    if matches!(init, InitLoraWeights::Loftq { .. }) && model.format == QuantFormat::Q8_0 {
        return Err(refuse("\"loftq\" makes an NF4 base: load the model with quant nf4 (or f32/f16), not q8_0"));
    }
    let checkpoint = match (quantized, files) {
        (false, _) => None,
        (true, None) => {
            return Err(refuse(format!(
                "{}: on a {:?} base the float weights are read from the model's files again, and none were given",
                init.to_value(),
                model.format
            )))
        }
        (true, Some(files)) => {
            let c = Checkpoint::open(files).await?;
            if let Some(f) = stored_format(&c)? {
                return Err(refuse(format!(
                    "{}: {} is pre-quantized ({f:?}) and has no float weights to start from; use the original checkpoint",
                    init.to_value(),
                    c.location()
                )));
            }
            c.check(&model.config)?;
            Some(c)
        }
    };
    let mut rng = Rng::new(seed);
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for (j, w) in linear_weights(layer).into_iter().enumerate() {
            let name = module_name(i, j);
            let Some(pair) = weights.modules.get_mut(&name) else { continue };
            let (out, inp, r, scaling) = (w.rows, w.cols, pair.r, config.scaling_of(&name));
            let float = match &checkpoint {
                Some(c) => c.read_f32(&format!("{name}.weight")).await?,
                None => w.to_f32(gpu).await?,
            };
            let WeightInit { a, b, base } = match init {
                InitLoraWeights::Pissa => pissa(&float, out, inp, r, scaling),
                InitLoraWeights::PissaNiter(k) => pissa_lowrank(&float, out, inp, r, scaling, k, &mut rng),
                InitLoraWeights::Olora => olora(&float, out, inp, r, scaling),
                InitLoraWeights::Loftq { iter } => loftq(&float, out, inp, r, iter),
                _ => unreachable!("adjusts_base() was checked"),
            };
            (pair.a, pair.b) = (a, b);
            let compute = w.compute();
            let mut replaced = QWeight::from_f32(gpu, &base, out, inp, w.format)?;
            replaced.set_compute(gpu, compute)?;
            *w = replaced;
        }
    }
    let mut adapter = LoraAdapter::upload(gpu, config, &weights, &model.config)?;
    if init.converts_on_save() {
        adapter.initial = Some(Arc::new(weights));
    }
    Ok(adapter)
}
