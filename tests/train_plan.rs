//! The memory plan against what a training step really allocates (peak live
//! GPU bytes measured by the tensor accounting), for LoRA and a bottleneck
//! adapter on f32 and NF4 bases; and a step too big for the binding limit is
//! reported as not fitting before anything is loaded.

mod common;

use common::{block_on, gpu};
use webpeft::bench::train::{llama_config, random_model_files, train_figure};
use webpeft::model::Config;
use webpeft::quant::QuantFormat;
use webpeft::train::plan::{plan_memory, PlanAdapter, PlanInput};

fn check(vocab: usize, d: usize, inter: usize, layers: usize, batch: usize, seq: usize) {
    let gpu = gpu();
    let json = llama_config(vocab, d, inter, layers, 4, 2);
    let config = Config::from_json(json.as_bytes()).unwrap();
    let files = random_model_files(&json, 3).unwrap();
    let all: Vec<String> = webpeft::peft::LORA_MODULES.iter().map(|s| s.to_string()).collect();
    for (quant, method, adapter) in [
        (QuantFormat::F32, "lora", PlanAdapter::Lora { r: 8, targets: all.clone() }),
        (QuantFormat::Nf4, "seq_bn", PlanAdapter::Bottleneck { size: d / 16, units_per_layer: 1 }),
    ] {
        let plan = plan_memory(&config, &PlanInput { quant, adapter, batch, seq, grad_accum: 1 }, 128 << 20);
        let f = block_on(train_figure(gpu, "plan", &files, quant, method, batch, seq, 1)).unwrap();
        let ratio = f.peak_gpu_bytes as f64 / plan.total_bytes as f64;
        eprintln!(
            "V {vocab} D {d} {} {method}: planned {} B (weights {}, activations {}), measured peak {} B: {ratio:.3}",
            quant.name(),
            plan.total_bytes,
            plan.weight_bytes,
            plan.activation_bytes,
            f.peak_gpu_bytes
        );
        assert_eq!(plan.weight_bytes, f.weight_bytes, "weights are counted exactly");
        assert!((0.8..=1.25).contains(&ratio), "plan off by {ratio}");
        assert!(plan.fits);
    }
}

// One test: the peak counter belongs to the shared device, so the
// measurements must not overlap.
#[test]
fn plan_matches_the_measured_peak() {
    check(384, 64, 128, 2, 4, 32);
    check(1000, 128, 352, 2, 2, 48);
}

#[test]
fn activations_over_the_binding_limit_do_not_fit_and_logits_are_chunked() {
    // Llama-3.2-1B's shape: V 128,256, D 2048, I 8192, 16 layers.
    let json = llama_config(128256, 2048, 8192, 16, 32, 8);
    let config = Config::from_json(json.as_bytes()).unwrap();
    let input = PlanInput {
        quant: QuantFormat::Nf4,
        adapter: PlanAdapter::Lora {
            r: 16,
            targets: webpeft::peft::LORA_MODULES.iter().map(|s| s.to_string()).collect(),
        },
        batch: 1,
        seq: 512,
        grad_accum: 1,
    };
    let plan = plan_memory(&config, &input, 128 << 20);
    // The full logits would be 262 MB; a chunk stays within 16 MiB.
    assert!(plan.fits, "{plan:?}");
    assert!(plan.largest_buffer_bytes <= 128 << 20);
    eprintln!(
        "Llama-3.2-1B shape, NF4, LoRA r 16, 1×512: {:.2} GiB planned",
        plan.total_bytes as f64 / (1u64 << 30) as f64
    );
    let big = plan_memory(&config, &PlanInput { batch: 8, seq: 2048, ..input }, 128 << 20);
    assert!(!big.fits, "(16384, 8192) f32 MLP activations are 512 MiB: {big:?}");
    assert!(big.largest_buffer_bytes > big.binding_limit_bytes);
}
