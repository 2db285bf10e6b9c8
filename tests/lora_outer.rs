//! LoRA on the embedding and the head (`target_modules` with `embed_tokens`
//! and `lm_head`: PEFT's lora.Embedding and a lora.Linear on lm_head): the
//! id-indexed kernels against the CPU reference; against PEFT
//! (`make_fixtures.py lora_outer`) on an untied and a tied model, on both
//! kernel families: logits, loss, every gradient, 10 AdamW steps, greedy
//! decoding through the KV cache, PEFT's init of the embedding's factors,
//! the files; merge; and the combinations refused.

mod common;
use common::{block_on, gpu, randn, Fixture};
use webpeft::gpu::Recorder;
use webpeft::kernels::reference::assert_close;
use webpeft::kernels::reference::token_rows::{embedding_backward, ids_gather as cpu_gather};
use webpeft::kernels::token_rows::{ids_gather, ids_scatter};
use webpeft::peft::adapter::AdapterConfig;
use webpeft::peft::{Adapter, LoraConfig, TargetModules};
use webpeft::{Error, Gpu, Tensor};

fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec::<f32>(gpu)).unwrap()
}

#[test]
fn id_column_kernels_match_the_reference() {
    for gpu in [gpu(), common::gpu_family()] {
        let (r, vocab, n) = (5, 97, 43);
        let a = randn(1, r * vocab);
        let mut ids: Vec<u32> = (0..n as u32).map(|i| (i * 31 + 7) % vocab as u32).collect();
        ids[3] = ids[9];
        ids[11] = vocab as u32 + 2; // past the vocabulary: gathers zeros, adds nothing
        let t_ids = Tensor::from_slice(gpu, &[n], &ids).unwrap();
        let t_a = Tensor::from_slice(gpu, &[r, vocab], &a).unwrap();
        let mut rec = Recorder::new(gpu);
        let h = ids_gather(&mut rec, &t_a, &t_ids).unwrap();
        rec.submit().unwrap();
        assert_close("ids_gather", &read(gpu, &h), &cpu_gather(&a, &ids, r, vocab), 0.0, 0.0);

        let g = randn(2, n * r);
        let g0 = randn(3, r * vocab);
        let t_grad = Tensor::from_slice(gpu, &[r, vocab], &g0).unwrap();
        let mut rec = Recorder::new(gpu);
        ids_scatter(&mut rec, &Tensor::from_slice(gpu, &[n, r], &g).unwrap(), &t_ids, &t_grad).unwrap();
        rec.submit().unwrap();
        let kept: Vec<usize> = (0..n).filter(|&t| ids[t] < vocab as u32).collect();
        let kept_ids: Vec<u32> = kept.iter().map(|&t| ids[t]).collect();
        let kept_g: Vec<f32> = kept.iter().flat_map(|&t| g[t * r..(t + 1) * r].to_vec()).collect();
        let dw = embedding_backward(&kept_ids, &kept_g, vocab, r); // (vocab, r)
        let want: Vec<f32> = (0..r * vocab).map(|i| g0[i] + dw[(i % vocab) * r + i / vocab]).collect();
        assert_close("ids_scatter", &read(gpu, &t_grad), &want, 1e-6, 1e-6);

        let mut rec = Recorder::new(gpu);
        let wrong = Tensor::from_slice(gpu, &[n, r + 1], &vec![0.0; n * (r + 1)]).unwrap();
        assert!(matches!(ids_scatter(&mut rec, &wrong, &t_ids, &t_grad), Err(Error::Shape { .. })));
    }
}

fn load(gpu: &Gpu, model: &webpeft::model::Model, name: &str) -> Adapter {
    common::fixture_adapter(gpu, model, &format!("lora_outer/{name}/initial_adapter"), "lora")
}

/// Against PEFT, on both kernel families.
#[test]
fn lora_on_the_embedding_and_the_head_matches_peft() {
    for gpu in [gpu(), common::gpu_family()] {
        for name in ["llama_gqa", "qwen2_tied"] {
            let model = common::fixture_model(gpu, name);
            let fx = Fixture::open(&format!("lora_outer/{name}/reference.safetensors"));
            let initial = || load(gpu, &model, name);
            let Adapter::Lora(l) = initial() else { unreachable!() };
            assert!(l.embed.is_some() && l.head.is_some(), "{name}");
            common::check_logits_training_and_greedy(gpu, &model, name, &initial, &fx, &fx.f32("logits"), 0);
        }
    }
}

/// PEFT's files hold the embedding's and the head's own weights too
/// (`save_embedding_layers`); webpeft reads past them and does not write
/// them. Everything else is PEFT's, byte for byte.
#[test]
fn files_are_peft_less_the_base_copies() {
    let gpu = gpu();
    for name in ["llama_gqa", "qwen2_tied"] {
        let model = common::fixture_model(gpu, name);
        let dir = format!("lora_outer/{name}/initial_adapter");
        let extra = common::assert_files_are_peft_less_base_copies(gpu, &load(gpu, &model, name), &model.config, &dir);
        assert_eq!(
            extra,
            ["base_model.model.lm_head.base_layer.weight", "base_model.model.model.embed_tokens.base_layer.weight"]
        );
    }
}

/// A fresh adapter's embedding factors start as PEFT's: A zeros, B ~ N(0, 1).
#[test]
fn a_fresh_embedding_lora_starts_as_peft() {
    let gpu = gpu();
    let model = common::fixture_model(gpu, "llama_gqa");
    let fx = Fixture::open("lora_outer/llama_gqa/reference.safetensors");
    assert!(fx.f32("fresh_embedding_A").iter().all(|&v| v == 0.0));
    let targets = TargetModules::List(vec!["q_proj".into(), "embed_tokens".into(), "lm_head".into()]);
    let config = LoraConfig::new(4, 8.0, targets).unwrap();
    let ad = Adapter::new(gpu, AdapterConfig::Lora(config), &model.config, 7).unwrap();
    let Adapter::Lora(l) = &ad else { unreachable!() };
    let (a, b) = (read(gpu, &l.embed.as_ref().unwrap().a), read(gpu, &l.embed.as_ref().unwrap().b));
    assert!(a.iter().all(|&v| v == 0.0), "lora_embedding_A starts at zeros");
    let std = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    let peft_b = fx.f32("fresh_embedding_B");
    assert!(
        (std(&b) - 1.0).abs() < 0.15 && (std(&peft_b) - 1.0).abs() < 0.15,
        "{} vs PEFT's {}",
        std(&b),
        std(&peft_b)
    );
    assert!(read(gpu, &l.head.as_ref().unwrap().b).iter().all(|&v| v == 0.0), "the head's B starts at zeros");
    // Untrained, the embedding's term is zero and the head's too: the base model's logits.
    let ids = common::fixture_batch(&fx, 0..2).input_ids;
    let d = common::max_abs_diff(
        &common::adapted_logits(gpu, &model, Some(&ad), &ids),
        &common::adapted_logits(gpu, &model, None, &ids),
    );
    assert!(d <= 1e-5, "fresh adapter changed the logits by {d:e}");
}

/// `merge` folds both terms in on an untied model, and refuses a tied one.
#[test]
fn merge_folds_the_embedding_and_the_head() {
    use webpeft::peft::lora::merge::{merge_lora, unmerge_lora};
    let gpu = gpu();
    let mut model = common::fixture_model(gpu, "llama_gqa");
    let fx = Fixture::open("lora_outer/llama_gqa/reference.safetensors");
    let ad = load(gpu, &model, "llama_gqa");
    let Adapter::Lora(l) = &ad else { unreachable!() };
    let ids = common::fixture_batch(&fx, 0..2).input_ids;
    let (base, adapted) =
        (common::adapted_logits(gpu, &model, None, &ids), common::adapted_logits(gpu, &model, Some(&ad), &ids));
    let merged = merge_lora(gpu, &mut model, l).unwrap();
    let d = common::max_abs_diff(&common::adapted_logits(gpu, &model, None, &ids), &adapted);
    assert!(d <= 1e-4, "merged logits {d:e}");
    unmerge_lora(gpu, &mut model, l, &merged).unwrap();
    let d = common::max_abs_diff(&common::adapted_logits(gpu, &model, None, &ids), &base);
    assert!(d <= 1e-4, "unmerged logits {d:e}");
    let mut tied = common::fixture_model(gpu, "qwen2_tied");
    let Adapter::Lora(t) = load(gpu, &tied, "qwen2_tied") else { unreachable!() };
    let e = merge_lora(gpu, &mut tied, &t).unwrap_err().to_string();
    assert!(e.contains("merging would change both"), "{e}");
}

/// What does not combine is a typed error naming the field.
#[test]
fn refused_combinations_are_typed_errors() {
    let targets = |t: &[&str]| TargetModules::List(t.iter().map(|s| s.to_string()).collect());
    let mut c = LoraConfig::new(4, 8.0, targets(&["q_proj", "lm_head"])).unwrap();
    c.lora_dropout = 0.1;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("lora_dropout") && e.contains("lm_head"), "{e}");
    let mut c = LoraConfig::new(4, 8.0, targets(&["embed_tokens"])).unwrap();
    c.use_dora = true;
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("embed_tokens") && e.contains("DoRA"), "{e}");
    let mut c = LoraConfig::new(4, 8.0, targets(&["embed_tokens"])).unwrap();
    c.trainable_token_indices = Some(vec![5]);
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("trainable_token_indices"), "{e}");
    let e = LoraConfig::new(4, 8.0, targets(&["embed"])).unwrap();
    let gpu = gpu();
    let model = common::fixture_model(gpu, "qwen2_tied");
    let err = e.targets(&model.config).unwrap_err().to_string();
    assert!(err.contains("\"embed\" matches no module") && err.contains("embed_tokens, lm_head"), "{err}");
    // The tied head as a LoRA target beside trainable tokens, whose rows are that head's.
    let mut c = LoraConfig::new(4, 8.0, targets(&["q_proj", "lm_head"])).unwrap();
    c.trainable_token_indices = Some(vec![5]);
    let e = Adapter::new_for_model(gpu, AdapterConfig::Lora(c), &model, None, 0).unwrap_err().to_string();
    assert!(e.contains("trainable_token_indices") && e.contains("lm_head"), "{e}");
}

/// LoRA+ against PEFT's `create_loraplus_optimizer` (`lora_outer/llama_gqa/lora_plus.safetensors`):
/// the embedding's factors in a group of their own at `loraplus_lr_embedding`, the head's B with the
/// layers' at 4× the learning rate; 10 steps with clipping. The embedding's rate follows the schedule:
/// at half the peak rate (`base_lr` twice the step's) it is half the configured one.
#[test]
fn loraplus_groups_the_embedding_as_peft() {
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let gpu = gpu();
    let model = common::fixture_model(gpu, "llama_gqa");
    let fx = Fixture::open("lora_outer/llama_gqa/lora_plus.safetensors");
    let batch = common::fixture_batch(&Fixture::open("lora_outer/llama_gqa/reference.safetensors"), 0..2);
    let run = |embedding: f64, base_lr: Option<f64>| {
        let opt = OptimizerConfig {
            weight_decay: 0.01,
            loraplus_lr_ratio: Some(4.0),
            loraplus_lr_embedding: embedding,
            ..Default::default()
        };
        let mut trainer = Trainer::new(gpu, load(gpu, &model, "llama_gqa"), opt, 0).unwrap();
        trainer.base_lr = base_lr;
        let losses: Vec<f32> = (0..10)
            .map(|_| block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap().loss)
            .collect();
        (losses, common::adapter_values(gpu, &trainer.adapter))
    };
    for (embedding, base_lr) in [(1e-3, None), (2e-3, Some(2e-2))] {
        let (losses, values) = run(embedding, base_lr);
        let d = common::max_abs_diff(&losses, &fx.f32("losses"));
        assert!(d <= 1e-4, "{embedding} at base {base_lr:?}: losses {d:e}");
        for (key, got) in values {
            let d = common::max_abs_diff(&got, &fx.f32(&format!("final.{key}")));
            assert!(d <= 1e-4, "final {key}: {d:e}");
        }
        eprintln!("LoRA+ with the embedding at {embedding} (base {base_lr:?}): losses within {d:e}");
    }
    // PEFT's default, 1e-6, differs.
    let (losses, _) = run(1e-6, None);
    assert!((losses[9] - fx.f32("losses")[9]).abs() > 1e-3, "the embedding's rate changed nothing");
}

/// What webpeft saves after training (without PEFT's copies of the base
/// weights) loads in PEFT (`lora_outer/webpeft_saved`, see
/// [`common::check_saved_in_peft`]).
#[test]
fn saved_adapters_load_in_peft() {
    common::check_saved_in_peft(gpu(), "lora_outer");
}
