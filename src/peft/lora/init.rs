//! LoRA initialisation as PEFT 0.21 does it (`peft/tuners/lora/layer.py`,
//! `LoraLayer.reset_lora_parameters`), drawn from our seeded [`Rng`]: the
//! distributions of PyTorch's, not its bits.
//!
//! - `init_lora_weights = true`: A `kaiming_uniform_(a=√5)`, i.e.
//!   U(−1/√in, 1/√in); B zeros (the adapter starts as a no-op).
//! - `"gaussian"`: A ~ N(0, (1/r)²) (`normal_(std=1/r)`); B zeros.
//! - `false`: A and B keep `nn.Linear`'s default init, kaiming-uniform (a=√5)
//!   with their own fan-in: U(−1/√in, 1/√in) for A, U(−1/√r, 1/√r) for B.
//! - LoRA on `embed_tokens` (PEFT's `lora.Embedding`): A zeros, B N(0, 1) (both
//!   N(0, 1) with `false`): the other way round, as loralib's `Embedding`.
//!
//! Bottleneck adapters' initialisations are in
//! [`BottleneckWeights::init`](crate::peft::bottleneck::BottleneckWeights::init).

use super::config::OuterModule;
use super::{InitLoraWeights, LoraWeights};
use crate::peft::torch_init::kaiming_uniform_sqrt5;
use crate::util::rng::Rng;
use crate::{Error, Result};

/// Fills every module's A and B of `weights` as PEFT's `reset_lora_parameters`
/// with `init`, module by module in name order, A before B. PiSSA, OLoRA and
/// LoftQ start from the base weights instead
/// ([`base_init`](super::base_init)): an error here.
pub fn init_lora(weights: &mut LoraWeights, init: InitLoraWeights, rng: &mut Rng) -> Result<()> {
    if init.adjusts_base() {
        return Err(Error::invalid(
            "init_lora",
            format!("init_lora_weights {} starts from the base weights (peft::lora::base_init)", init.to_value()),
        ));
    }
    for (name, pair) in weights.modules.iter_mut() {
        let r = pair.r;
        let (n_a, n_b) = (r * pair.in_features, pair.out_features * r);
        if name == OuterModule::Embedding.name() {
            // lora.Embedding: A zeros and B N(0, 1) (true and "gaussian" alike); `false` keeps
            // update_layer's torch.randn for both.
            pair.a = if init == InitLoraWeights::Random { rng.normal_vec(n_a, 1.0) } else { vec![0.0; n_a] };
            pair.b = rng.normal_vec(n_b, 1.0);
            continue;
        }
        pair.a = match init {
            InitLoraWeights::Gaussian => rng.normal_vec(n_a, (1.0 / r.max(1) as f64) as f32),
            _ => kaiming_uniform_sqrt5(n_a, pair.in_features, rng),
        };
        pair.b = match init {
            // lora_B is nn.Linear(r, out, bias=False): fan_in = r.
            InitLoraWeights::Random => kaiming_uniform_sqrt5(n_b, r, rng),
            _ => vec![0.0; n_b],
        };
    }
    Ok(())
}
