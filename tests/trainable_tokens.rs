//! PEFT's trainable tokens (`trainable_token_indices` beside a LoRA): the
//! token-row kernels against the CPU reference on seeded odd shapes, on both
//! kernel families; then against PEFT (`make_fixtures.py trainable_tokens`)
//! on an untied model (llama_gqa: the embedding only) and a tied one
//! (qwen2_tied: lm_head's rows follow): logits, loss, every gradient (the
//! rows' included), 10 AdamW steps, greedy decoding, the rows PEFT starts
//! from, the files PEFT writes; and the bad inputs.

mod common;
use common::{block_on, fixture, gpu, randn, Fixture};
use webpeft::gpu::Recorder;
use webpeft::kernels::reference::matmul::matmul;
use webpeft::kernels::reference::token_rows::{embedding_backward, merged_table, rows_of};
use webpeft::kernels::reference::{assert_close, embedding as cpu_embedding};
use webpeft::kernels::token_rows::{
    token_columns_backward, token_columns_forward, token_rows_backward, token_rows_forward, TokenRows,
};
use webpeft::model::MemoryFiles;
use webpeft::peft::adapter::AdapterConfig;
use webpeft::peft::trainable_tokens::DELTA_KEY;
use webpeft::peft::Adapter;
use webpeft::{Error, Gpu, Tensor};

const INDICES: [u32; 5] = [58, 3, 91, 0, 17];

fn upload(gpu: &Gpu, shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_slice(gpu, shape, v).unwrap()
}

fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec::<f32>(gpu)).unwrap()
}

#[test]
fn token_row_kernels_match_the_reference() {
    for gpu in [gpu(), common::gpu_family()] {
        kernels_on(gpu);
    }
}

fn kernels_on(gpu: &Gpu) {
    let (vocab, dim, n) = (97, 23, 41);
    let k = INDICES.len();
    let table = randn(1, vocab * dim);
    let delta = randn(2, k * dim);
    let merged = merged_table(&table, &INDICES, &delta, dim);
    // Every trainable id at least once (58 three times), others, and one id past the vocabulary.
    let mut ids: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 11) % vocab as u32).collect();
    ids[..7].copy_from_slice(&[58, 3, 91, 0, 17, 58, 96]);
    ids[30] = 58;
    ids[12] = vocab as u32 + 3;
    let mut slots = vec![-1i32; vocab];
    for (j, &id) in INDICES.iter().enumerate() {
        slots[id as usize] = j as i32;
    }
    let (t_delta, t_indices, t_slots) = (
        upload(gpu, &[k, dim], &delta),
        Tensor::from_slice(gpu, &[k], &INDICES).unwrap(),
        Tensor::from_slice(gpu, &[vocab], &slots).unwrap(),
    );
    let rows = TokenRows { delta: &t_delta, indices: &t_indices, slots: &t_slots };
    let t_ids = Tensor::from_slice(gpu, &[n], &ids).unwrap();
    let in_vocab: Vec<usize> = (0..n).filter(|&t| ids[t] < vocab as u32).collect();

    // Embedding: the frozen rows gathered (the id past the vocabulary keeps what x held), then the trainable ones.
    let before = randn(3, n * dim);
    let mut x = before.clone();
    for &t in &in_vocab {
        x[t * dim..(t + 1) * dim].copy_from_slice(&table[ids[t] as usize * dim..(ids[t] as usize + 1) * dim]);
    }
    let t_x = upload(gpu, &[n, dim], &x);
    let mut rec = Recorder::new(gpu);
    token_rows_forward(&mut rec, rows, &t_ids, &t_x).unwrap();
    rec.submit().unwrap();
    let got = read(gpu, &t_x);
    let kept: Vec<u32> = in_vocab.iter().map(|&t| ids[t]).collect();
    let want = cpu_embedding::embedding_forward(&kept, &merged, vocab, dim);
    let got_kept: Vec<f32> = in_vocab.iter().flat_map(|&t| got[t * dim..(t + 1) * dim].to_vec()).collect();
    assert_close("rows_forward", &got_kept, &want, 0.0, 0.0);
    assert_eq!(&got[12 * dim..13 * dim], &before[12 * dim..13 * dim], "an id past the vocabulary reads nothing");

    // Its backward: the rows' share of dx, added to what grad holds.
    let dx = randn(4, n * dim);
    let g0 = randn(5, k * dim);
    let t_grad = upload(gpu, &[k, dim], &g0);
    let mut rec = Recorder::new(gpu);
    token_rows_backward(&mut rec, rows, &t_ids, &upload(gpu, &[n, dim], &dx), &t_grad).unwrap();
    rec.submit().unwrap();
    let dx_kept: Vec<f32> = in_vocab.iter().flat_map(|&t| dx[t * dim..(t + 1) * dim].to_vec()).collect();
    let share = rows_of(&embedding_backward(&kept, &dx_kept, vocab, dim), &INDICES, dim);
    let want: Vec<f32> = g0.iter().zip(&share).map(|(a, b)| a + b).collect();
    assert_close("rows_backward", &read(gpu, &t_grad), &want, 1e-6, 1e-6);

    // The tied head: logits = x·W'ᵀ, from the frozen product x·Wᵀ.
    let h = randn(6, n * dim);
    let mut base = vec![0.0; n * vocab];
    matmul(&h, &table, &mut base, n, vocab, dim, false, true, false);
    let mut want = vec![0.0; n * vocab];
    matmul(&h, &merged, &mut want, n, vocab, dim, false, true, false);
    let t_h = upload(gpu, &[n, dim], &h);
    let t_logits = upload(gpu, &[n, vocab], &base);
    let mut rec = Recorder::new(gpu);
    token_columns_forward(&mut rec, rows, &t_h, &t_logits).unwrap();
    rec.submit().unwrap();
    assert_close("columns_forward", &read(gpu, &t_logits), &want, 1e-5, 1e-5);

    // Its backward: dx = dlogits·W' and dW'ᵀ's rows, the frozen product seeing zeros where the rows were replaced.
    let dlogits = randn(7, n * vocab);
    let t_dlogits = upload(gpu, &[n, vocab], &dlogits);
    let t_dx = upload(gpu, &[n, dim], &vec![0.0; n * dim]);
    let t_grad = upload(gpu, &[k, dim], &g0);
    let mut rec = Recorder::new(gpu);
    token_columns_backward(&mut rec, rows, &t_h, &t_dlogits, &t_dx, &t_grad).unwrap();
    rec.submit().unwrap();
    let taken = read(gpu, &t_dlogits);
    for r in 0..n {
        for c in 0..vocab {
            let want = if INDICES.contains(&(c as u32)) { 0.0 } else { dlogits[r * vocab + c] };
            assert_eq!(taken[r * vocab + c], want, "dlogits[{r}, {c}] after the take");
        }
    }
    let mut dx = read(gpu, &t_dx);
    matmul(&taken, &table, &mut dx, n, dim, vocab, false, false, true); // the frozen head's share
    let mut want_dx = vec![0.0; n * dim];
    matmul(&dlogits, &merged, &mut want_dx, n, dim, vocab, false, false, false);
    assert_close("columns_backward dx", &dx, &want_dx, 1e-5, 1e-5);
    let mut dw = vec![0.0; vocab * dim];
    matmul(&dlogits, &h, &mut dw, vocab, dim, n, true, false, false);
    let want: Vec<f32> = g0.iter().zip(rows_of(&dw, &INDICES, dim)).map(|(a, b)| a + b).collect();
    assert_close("columns_backward grad", &read(gpu, &t_grad), &want, 1e-5, 1e-5);

    // Shapes that do not fit are typed errors, and record nothing.
    let mut rec = Recorder::new(gpu);
    let wrong = upload(gpu, &[n, dim + 1], &vec![0.0; n * (dim + 1)]);
    assert!(matches!(token_rows_forward(&mut rec, rows, &t_ids, &wrong), Err(Error::Shape { .. })));
    let short = upload(gpu, &[n, vocab - 1], &vec![0.0; n * (vocab - 1)]);
    assert!(matches!(token_columns_forward(&mut rec, rows, &t_h, &short), Err(Error::Shape { .. })));
}

fn load(gpu: &Gpu, model: &webpeft::model::Model, dir: &str) -> Adapter {
    common::fixture_adapter(gpu, model, dir, "lora")
}

/// Against PEFT on an untied and a tied model.
#[test]
fn trainable_tokens_match_peft() {
    for gpu in [gpu(), common::gpu_family()] {
        trainable_tokens_on(gpu);
    }
}

fn trainable_tokens_on(gpu: &Gpu) {
    for name in ["llama_gqa", "qwen2_tied"] {
        let model = common::fixture_model(gpu, name);
        assert_eq!(model.lm_head_is_tied(), name == "qwen2_tied");
        let dir = format!("trainable_tokens/{name}");
        let fx = Fixture::open(&format!("{dir}/reference.safetensors"));
        let initial = || load(gpu, &model, &format!("{dir}/initial_adapter"));
        let Adapter::Lora(l) = initial() else { unreachable!() };
        let want_ids: Vec<u32> = fx.i64("token_indices").iter().map(|&i| i as u32).collect();
        assert_eq!(l.tokens.as_ref().map(|t| t.indices.clone()), Some(want_ids.clone()));
        common::check_logits_training_and_greedy(gpu, &model, name, &initial, &fx, &fx.f32("logits"), 0);

        // A fresh adapter starts from the embedding's rows, as PEFT's.
        let mut config = l.config.clone();
        config.inference_mode = false;
        let fresh = Adapter::new_for_model(gpu, AdapterConfig::Lora(config.clone()), &model, None, 0).unwrap();
        let Adapter::Lora(f) = &fresh else { unreachable!() };
        assert_eq!(read(gpu, &f.tokens.as_ref().unwrap().delta), fx.f32("original_rows"), "{name}: starting rows");
        assert!(matches!(
            Adapter::new(gpu, AdapterConfig::Lora(config), &model.config, 0),
            Err(Error::InvalidArgument { .. })
        ));

        // The files: PEFT's own (config and tensors, byte for byte).
        common::assert_files_are_peft(gpu, &initial(), &model.config, &format!("{dir}/initial_adapter"));
    }
}

/// PEFT's TRAINABLE_TOKENS by itself (`trainable_tokens/alone`): logits,
/// loss, the rows' gradient, 10 AdamW steps, greedy decoding, the starting
/// rows, and PEFT's files (on the tied model the rows twice, under
/// embed_tokens' and lm_head's keys), on both kernel families.
#[test]
fn trainable_tokens_alone_match_peft() {
    for gpu in [gpu(), common::gpu_family()] {
        for name in ["llama_gqa", "qwen2_tied"] {
            let model = common::fixture_model(gpu, name);
            let dir = format!("trainable_tokens/alone/{name}");
            let fx = Fixture::open(&format!("{dir}/reference.safetensors"));
            let initial =
                || common::fixture_adapter(gpu, &model, &format!("{dir}/initial_adapter"), "trainable_tokens");
            common::check_logits_training_and_greedy(gpu, &model, name, &initial, &fx, &fx.f32("logits"), 0);
            common::assert_files_are_peft(gpu, &initial(), &model.config, &format!("{dir}/initial_adapter"));
            let Adapter::TrainableTokens(t) = initial() else { unreachable!() };
            let mut config = t.config.clone();
            config.inference_mode = false;
            let fresh = Adapter::new_for_model(gpu, AdapterConfig::TrainableTokens(config), &model, None, 0).unwrap();
            let Adapter::TrainableTokens(f) = &fresh else { unreachable!() };
            let original =
                Fixture::open(&format!("trainable_tokens/{name}/reference.safetensors")).f32("original_rows");
            assert_eq!(read(gpu, &f.tokens.delta), original, "{name}: starting rows");
        }
    }
}

/// Token rows change generation through the embedding (and a tied head):
/// with the rows set to the embedding's own, the adapter's logits are the
/// LoRA's alone.
#[test]
fn rows_equal_to_the_embedding_change_nothing() {
    let gpu = gpu();
    let model = common::fixture_model(gpu, "qwen2_tied");
    let fx = Fixture::open("trainable_tokens/qwen2_tied/reference.safetensors");
    let ad = load(gpu, &model, "trainable_tokens/qwen2_tied/initial_adapter");
    let Adapter::Lora(l) = &ad else { unreachable!() };
    let ids = common::fixture_batch(&fx, 0..2).input_ids;
    let with_rows = common::adapted_logits(gpu, &model, Some(&ad), &ids);
    l.tokens.as_ref().unwrap().delta.write(gpu, &fx.f32("original_rows")).unwrap();
    let plain = common::adapted_logits(gpu, &model, Some(&ad), &ids);
    let mut lora_only = l.clone();
    lora_only.tokens = None;
    let want = common::adapted_logits(gpu, &model, Some(&Adapter::Lora(lora_only)), &ids);
    assert_close("original rows", &plain, &want, 1e-6, 1e-6);
    assert!(common::max_abs_diff(&with_rows, &plain) > 1e-3, "the trained rows changed nothing");
}

/// Bad configs and files are typed errors naming the field or tensor.
#[test]
fn bad_trainable_tokens_are_typed_errors() {
    let gpu = gpu();
    let model = common::fixture_model(gpu, "llama_gqa");
    let dir = fixture("trainable_tokens/llama_gqa/initial_adapter");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let files = |c: &serde_json::Value| {
        let mut mem = MemoryFiles::new();
        mem.insert("adapter_config.json", serde_json::to_vec(c).unwrap());
        mem.insert("adapter_model.safetensors", weights.clone());
        mem
    };
    let with = |indices: serde_json::Value| {
        let mut c = config.clone();
        c["trainable_token_indices"] = indices;
        block_on(Adapter::load(gpu, &files(&c), &model.config)).unwrap_err().to_string()
    };
    // The README's bad-input rows print what the user sees.
    let e = with(serde_json::json!([258, 5, 82, 5, 274]));
    eprintln!("ROW | trainable_token_indices listing an id twice | {e}");
    assert!(e.contains("trainable_token_indices[3]") && e.contains("listed twice"), "{e}");
    let e = with(serde_json::json!([258, 5, 82, 40, 384]));
    eprintln!("ROW | trainable_token_indices past the vocabulary | {e}");
    assert!(e.contains("trainable_token_indices[4]") && e.contains("vocab_size 384"), "{e}");
    let e = with(serde_json::json!({"embed_tokens": [258, "x"]}));
    assert!(e.contains("trainable_token_indices.embed_tokens[1]") && e.contains("token id"), "{e}");
    let e = with(serde_json::json!({"norm": [1, 2]}));
    assert!(e.contains("embed_tokens and lm_head"), "{e}");
    // The head's rows named, but the file holds the embedding's only.
    let e = with(serde_json::json!({"lm_head": [1, 2]}));
    assert!(e.contains("trainable_tokens_delta") && e.contains("names no such module"), "{e}");
    // On a tied model the head's rows are the embedding's.
    let tied = common::fixture_model(gpu, "qwen2_tied");
    let mut c = config.clone();
    c["trainable_token_indices"] = serde_json::json!({"embed_tokens": [5, 82, 258, 40, 274], "lm_head": [1, 2]});
    let dir = fixture("trainable_tokens/qwen2_tied/initial_adapter");
    let mut mem = MemoryFiles::new();
    mem.insert("adapter_config.json", serde_json::to_vec(&c).unwrap());
    mem.insert("adapter_model.safetensors", std::fs::read(dir.join("adapter_model.safetensors")).unwrap());
    let e = block_on(Adapter::load(gpu, &mem, &tied.config)).unwrap_err().to_string();
    assert!(e.contains("lm_head is the embedding") || e.contains("lm_head"), "{e}");
    let e = with(serde_json::json!([]));
    assert!(e.contains("empty list"), "{e}");
    let e = with(serde_json::json!("5"));
    assert!(e.contains("trainable_token_indices"), "{e}");
    let e = with(serde_json::json!([258, 5, 82]));
    assert!(e.contains(DELTA_KEY) && e.contains("shape [5, 64]"), "{e}");
    let e = with(serde_json::Value::Null);
    assert!(e.contains(DELTA_KEY) && e.contains("`trainable_token_indices` names no such module"), "{e}");
    // The dict form names the embedding.
    let mut c = config.clone();
    c["trainable_token_indices"] = serde_json::json!({"embed_tokens": [258, 5, 82, 40, 274]});
    block_on(Adapter::load(gpu, &files(&c), &model.config)).unwrap();

    // TRAINABLE_TOKENS by itself: its embedding only, its ids required, no tied head's rows on an untied model.
    let alone = fixture("trainable_tokens/alone/qwen2_tied/initial_adapter");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(alone.join("adapter_config.json")).unwrap()).unwrap();
    let tied_rows = std::fs::read(alone.join("adapter_model.safetensors")).unwrap();
    let load_alone = |c: &serde_json::Value, model: &webpeft::model::Model| {
        let mut mem = MemoryFiles::new();
        mem.insert("adapter_config.json", serde_json::to_vec(c).unwrap());
        mem.insert("adapter_model.safetensors", tied_rows.clone());
        block_on(Adapter::load(gpu, &mem, &model.config)).map(|_| ()).unwrap_err().to_string()
    };
    let mut c = config.clone();
    c["target_modules"] = serde_json::json!("lm_head");
    let e = load_alone(&c, &model);
    assert!(e.contains("target_modules") && e.contains("of lm_head beside it"), "{e}");
    let mut c = config.clone();
    c.as_object_mut().unwrap().remove("token_indices");
    let e = load_alone(&c, &model);
    assert!(e.contains("token_indices") && e.contains("missing"), "{e}");
    let e = load_alone(&config, &model); // llama_gqa's head is not tied
    assert!(e.contains("base_model.model.lm_head.trainable_tokens_delta") && e.contains("not tied"), "{e}");
}

/// `webpeft merge` folds the rows into the embedding (and so into a tied
/// head): the merged model alone gives the adapter's logits; the unmerge
/// puts the embedding's own rows back.
#[test]
fn merge_writes_the_rows_into_the_embedding() {
    use webpeft::peft::lora::merge::{merge_lora, unmerge_lora};
    let gpu = gpu();
    for name in ["llama_gqa", "qwen2_tied"] {
        let mut model = common::fixture_model(gpu, name);
        let fx = Fixture::open(&format!("trainable_tokens/{name}/reference.safetensors"));
        let ad = load(gpu, &model, &format!("trainable_tokens/{name}/initial_adapter"));
        let Adapter::Lora(l) = &ad else { unreachable!() };
        let ids = common::fixture_batch(&fx, 0..2).input_ids;
        let base = common::adapted_logits(gpu, &model, None, &ids);
        let adapted = common::adapted_logits(gpu, &model, Some(&ad), &ids);
        let merged = merge_lora(gpu, &mut model, l).unwrap();
        let d = common::max_abs_diff(&common::adapted_logits(gpu, &model, None, &ids), &adapted);
        assert!(d <= 1e-4, "{name}: merged logits {d:e}");
        unmerge_lora(gpu, &mut model, l, &merged).unwrap();
        let d = common::max_abs_diff(&common::adapted_logits(gpu, &model, None, &ids), &base);
        assert!(d <= 1e-4, "{name}: unmerged logits {d:e}");
        let own = webpeft::kernels::reference::token_rows::rows_of(
            &block_on(model.embed_tokens.to_f32(gpu)).unwrap(),
            &l.tokens.as_ref().unwrap().indices,
            64,
        );
        assert_eq!(own, fx.f32("original_rows"), "{name}: the embedding's own rows back");
    }
}

/// What webpeft saves after training loads in PEFT (`trainable_tokens/webpeft_saved`,
/// see [`common::check_saved_in_peft`]).
#[test]
fn saved_adapters_load_in_peft() {
    common::check_saved_in_peft(gpu(), "trainable_tokens");
}

/// An untied head's own rows beside the embedding's (the dict form,
/// `{"embed_tokens": [...], "lm_head": [...]}`, ids overlapping in one)
/// against PEFT (`make_fixtures.py trainable_tokens_head`) on both kernel
/// families: logits, loss, every gradient, 10 AdamW steps, greedy decoding
/// through the KV cache; the files byte for byte; merge into the head; a
/// fresh adapter's rows are the head's own; on a tied model it is refused.
#[test]
fn untied_head_rows_match_peft() {
    use webpeft::peft::lora::merge::{merge_lora, unmerge_lora};
    let dir = "trainable_tokens/head/llama_gqa";
    for gpu in [gpu(), common::gpu_family()] {
        let model = common::fixture_model(gpu, "llama_gqa");
        let fx = Fixture::open(&format!("{dir}/reference.safetensors"));
        let initial = || load(gpu, &model, &format!("{dir}/initial_adapter"));
        let Adapter::Lora(l) = initial() else { unreachable!() };
        assert_eq!(l.head_tokens.as_ref().map(|t| t.indices.len()), Some(5));
        common::check_logits_training_and_greedy(
            gpu,
            &model,
            "llama_gqa head rows",
            &initial,
            &fx,
            &fx.f32("logits"),
            0,
        );
    }
    let gpu = gpu();
    let mut model = common::fixture_model(gpu, "llama_gqa");
    let ad = load(gpu, &model, &format!("{dir}/initial_adapter"));
    let files = block_on(ad.to_files(gpu, &model.config)).unwrap();
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    let peft = fixture(dir).join("initial_adapter");
    assert_eq!(json(&files[0].1), json(&std::fs::read(peft.join("adapter_config.json")).unwrap()));
    assert_eq!(files[1].1, std::fs::read(peft.join("adapter_model.safetensors")).unwrap());
    // Merged into the head (and the embedding); unmerged, the model's own rows are back.
    let Adapter::Lora(l) = &ad else { unreachable!() };
    let ids = vec![vec![5u32, 82, 274, 7, 258, 40, 99]];
    let (base, adapted) =
        (common::adapted_logits(gpu, &model, None, &ids), common::adapted_logits(gpu, &model, Some(&ad), &ids));
    let head_before = block_on(model.lm_head.to_f32(gpu)).unwrap();
    let merged = merge_lora(gpu, &mut model, l).unwrap();
    let d = common::max_abs_diff(&common::adapted_logits(gpu, &model, None, &ids), &adapted);
    assert!(d <= 1e-4, "merged logits {d:e}");
    unmerge_lora(gpu, &mut model, l, &merged).unwrap();
    assert!(common::max_abs_diff(&common::adapted_logits(gpu, &model, None, &ids), &base) <= 1e-4);
    assert_eq!(block_on(model.lm_head.to_f32(gpu)).unwrap(), head_before, "the head's own rows back");
    // A fresh adapter's head rows are the head's own: the base model's logits.
    use webpeft::train::recipe::{AdapterRecipe, LoraRecipe};
    let recipe = |name: &str| {
        let m = common::fixture_model(gpu, name);
        let l = LoraRecipe { trainable_token_indices: Some(vec![5, 82]), lm_head_rows: true, ..Default::default() };
        AdapterRecipe::Lora(l).build(gpu, &m, None, None, 3).map(|a| (m, a))
    };
    let (m, fresh) = recipe("llama_gqa").unwrap();
    let d = common::max_abs_diff(
        &common::adapted_logits(gpu, &m, Some(&fresh), &ids),
        &common::adapted_logits(gpu, &m, None, &ids),
    );
    assert!(d <= 1e-5, "a fresh adapter changed the logits by {d:e}");
    let e = recipe("qwen2_tied").map(|_| ()).unwrap_err().to_string();
    assert!(e.contains("lm_head_rows") && e.contains("embedding"), "{e}");
}

/// What webpeft saves after training with an untied head's rows loads in PEFT
/// (`trainable_tokens/head/webpeft_saved`).
#[test]
fn saved_head_rows_load_in_peft() {
    common::check_saved_cases_in_peft(gpu(), "trainable_tokens/head", &["llama_gqa"]);
}

/// PEFT's TRAINABLE_TOKENS by itself with `target_modules` ["embed_tokens",
/// "lm_head"] on an untied model: the embedding's rows and the head's own,
/// against PEFT (`trainable_tokens/head/alone`) on both kernel families, the
/// files byte for byte, a fresh adapter starting from both modules' rows,
/// and a checkpoint that resumes both.
#[test]
fn trainable_tokens_alone_in_an_untied_head_match_peft() {
    use webpeft::peft::trainable_tokens::TrainableTokensConfig;
    let dir = "trainable_tokens/head/alone/llama_gqa";
    for gpu in [gpu(), common::gpu_family()] {
        let model = common::fixture_model(gpu, "llama_gqa");
        let fx = Fixture::open(&format!("{dir}/reference.safetensors"));
        let initial = || common::fixture_adapter(gpu, &model, &format!("{dir}/initial_adapter"), "trainable_tokens");
        let Adapter::TrainableTokens(t) = initial() else { unreachable!() };
        assert!(t.head.is_some() && t.config.lm_head);
        common::check_logits_training_and_greedy(gpu, &model, "alone, head rows", &initial, &fx, &fx.f32("logits"), 0);
    }
    let gpu = gpu();
    let model = common::fixture_model(gpu, "llama_gqa");
    let ad = common::fixture_adapter(gpu, &model, &format!("{dir}/initial_adapter"), "trainable_tokens");
    let files = block_on(ad.to_files(gpu, &model.config)).unwrap();
    let peft = fixture(dir).join("initial_adapter");
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    assert_eq!(json(&files[0].1), json(&std::fs::read(peft.join("adapter_config.json")).unwrap()));
    assert_eq!(files[1].1, std::fs::read(peft.join("adapter_model.safetensors")).unwrap());
    // Fresh: both modules' own rows, so the base model's logits.
    let mut c = TrainableTokensConfig::new(vec![5, 82, 7]).unwrap();
    c.lm_head = true;
    let fresh = Adapter::new_for_model(gpu, AdapterConfig::TrainableTokens(c), &model, None, 0).unwrap();
    let ids = vec![vec![5u32, 82, 274, 7, 258, 40, 99]];
    let d = common::max_abs_diff(
        &common::adapted_logits(gpu, &model, Some(&fresh), &ids),
        &common::adapted_logits(gpu, &model, None, &ids),
    );
    assert!(d <= 1e-5, "a fresh adapter changed the logits by {d:e}");
    // A checkpoint holds both.
    use webpeft::train::checkpoint::{load_checkpoint, save_checkpoint};
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let fx = Fixture::open(&format!("{dir}/reference.safetensors"));
    let batch = common::fixture_batch(&fx, 0..2);
    let mut t = Trainer::new(gpu, ad, OptimizerConfig::default(), 0).unwrap();
    block_on(t.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
    let bytes = block_on(save_checkpoint(gpu, &t, &model.config, &serde_json::json!({}))).unwrap();
    let (resumed, _) = load_checkpoint(gpu, &bytes, &model.config).unwrap();
    assert_eq!(common::adapter_values(gpu, &resumed.adapter), common::adapter_values(gpu, &t.adapter));
    assert_eq!(resumed.adapter.tensors().len(), 2);
}
