//! Generation: greedy tokens against transformers (refs/<model>/greedy.json),
//! the cached forward against the uncached one, seeded sampling, the length
//! limit as a typed error, and reading a step's result after the next step
//! is submitted (greedy decoding's pipelining).

mod common;

use common::{block_on, fixture, gpu};
use webpeft::gpu::Recorder;
use webpeft::model::llama::{argmax, sample, GenerationConfig, Hooks, KvCache, NoHooks, Proj, Saved};
use webpeft::model::{DirFiles, Model};
use webpeft::quant::QuantFormat;
use webpeft::util::rng::Rng;
use webpeft::{DType, Error, Gpu, GpuOptions, KernelFamily, Tensor};

const MODELS: [&str; 3] = ["llama_gqa", "qwen2_tied", "mistral_f16"];

fn load(gpu: &Gpu, model: &str) -> Model {
    let files = DirFiles::new(fixture(model)).unwrap();
    block_on(Model::load(gpu, &files, QuantFormat::F32)).unwrap_or_else(|e| panic!("{model}: {e}"))
}

fn greedy_ref(model: &str) -> (Vec<u32>, Vec<u32>) {
    let path = fixture(&format!("refs/{model}/greedy.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let ids = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
    (ids("prompt_ids"), ids("new_ids"))
}

#[test]
fn greedy_matches_transformers() {
    let gpu = gpu();
    for name in MODELS {
        let model = load(gpu, name);
        let (prompt, expected) = greedy_ref(name);
        let mut streamed = Vec::new();
        let start = std::time::Instant::now();
        let got = block_on(model.generate(gpu, &prompt, &GenerationConfig::greedy(expected.len()), |t| {
            streamed.push(t);
            true
        }))
        .unwrap();
        let secs = start.elapsed().as_secs_f64();
        eprintln!("{name}: {} tokens in {:.1} ms ({:.1} tok/s)", got.len(), secs * 1e3, got.len() as f64 / secs);
        assert_eq!(got, expected, "{name}: greedy tokens differ from transformers");
        assert_eq!(streamed, got, "{name}: streamed tokens");
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn cached_logits_match_uncached() {
    let gpu = gpu();
    for name in MODELS {
        let model = load(gpu, name);
        let (prompt, new) = greedy_ref(name);
        let all: Vec<u32> = prompt.iter().chain(&new[..5]).copied().collect();
        let (full, _) = block_on(model.logits_and_loss(gpu, std::slice::from_ref(&all), None)).unwrap(); // (1, T, V)
        let v = model.config.vocab_size;
        let t = all.len();

        // Prefill the prompt (all positions), then one token at a time (last row).
        let cache = KvCache::new(gpu, &model, 1, t).unwrap();
        let mut rec = Recorder::new(gpu);
        let ids = model.input_ids(gpu, std::slice::from_ref(&prompt)).unwrap();
        let logits = model.forward_cached_all(&mut rec, &ids, &cache, 0, &NoHooks).unwrap();
        rec.submit().unwrap();
        let pre = block_on(logits.to_vec::<f32>(gpu)).unwrap();
        let d = max_abs_diff(&pre, &full[..prompt.len() * v]);
        assert!(d <= 1e-4, "{name}: prefill logits differ by {d}");
        for (i, &tok) in all.iter().enumerate().skip(prompt.len()) {
            let mut rec = Recorder::new(gpu);
            let ids = model.input_ids(gpu, &[vec![tok]]).unwrap();
            let logits = model.forward_cached(&mut rec, &ids, &cache, i, &NoHooks).unwrap();
            rec.submit().unwrap();
            let row = block_on(logits.to_vec::<f32>(gpu)).unwrap();
            let d = max_abs_diff(&row, &full[i * v..(i + 1) * v]);
            assert!(d <= 1e-4, "{name}: step logits at position {i} differ by {d}");
        }

        // forward_cached on the whole sequence: the last row.
        let cache = KvCache::new(gpu, &model, 1, t).unwrap();
        let mut rec = Recorder::new(gpu);
        let ids = model.input_ids(gpu, std::slice::from_ref(&all)).unwrap();
        let logits = model.forward_cached(&mut rec, &ids, &cache, 0, &NoHooks).unwrap();
        assert_eq!(logits.shape(), &[1, v]);
        rec.submit().unwrap();
        let row = block_on(logits.to_vec::<f32>(gpu)).unwrap();
        let d = max_abs_diff(&row, &full[(t - 1) * v..]);
        assert!(d <= 1e-4, "{name}: last-row logits differ by {d}");
        eprintln!("{name}: cached vs uncached ok");
    }
}

#[test]
fn sampling_is_seeded_and_top_k_1_is_greedy() {
    let gpu = gpu();
    let model = load(gpu, "llama_gqa");
    let (prompt, expected) = greedy_ref("llama_gqa");
    let run = |cfg: &GenerationConfig| block_on(model.generate(gpu, &prompt, cfg, |_| true)).unwrap();
    let cfg = GenerationConfig::sampling(12, 1.5, 20, 0.9, 7);
    let a = run(&cfg);
    let b = run(&cfg);
    assert_eq!(a.len(), 12);
    assert_eq!(a, b, "same seed, same tokens");
    let c = run(&GenerationConfig { seed: 8, ..cfg.clone() });
    eprintln!("seed 7: {a:?}\nseed 8: {c:?}");
    let k1 = run(&GenerationConfig::sampling(20, 0.7, 1, 1.0, 3));
    assert_eq!(k1, expected, "top_k = 1 is greedy");

    // Stops on eos (returned) and when the callback says so.
    let eos = GenerationConfig { eos_token_ids: vec![expected[3]], ..GenerationConfig::greedy(20) };
    assert_eq!(run(&eos), expected[..4].to_vec());
    let mut n = 0;
    let got = block_on(model.generate(gpu, &prompt, &GenerationConfig::greedy(20), |_| {
        n += 1;
        n < 5
    }))
    .unwrap();
    assert_eq!(got, expected[..5].to_vec());
}

#[test]
fn too_long_is_a_typed_error() {
    let gpu = gpu();
    let model = load(gpu, "llama_gqa");
    let max = model.config.max_position_embeddings;
    let prompt = vec![1u32; 10];
    let err = block_on(model.generate(gpu, &prompt, &GenerationConfig::greedy(max - 9), |_| true)).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err:?}");
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
    // Exactly at the limit is fine.
    let ok = block_on(model.generate(gpu, &prompt, &GenerationConfig::greedy(2), |_| true)).unwrap();
    assert_eq!(ok.len(), 2);
    let bad = GenerationConfig::sampling(2, 0.0, 0, 1.0, 0);
    assert!(matches!(block_on(model.generate(gpu, &prompt, &bad, |_| true)), Err(Error::InvalidArgument { .. })));
}

#[test]
fn sampler_on_the_cpu() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
    assert_eq!(argmax(&[]), None);
    let logits = [0.0f32, 2.0, 1.0, 2.0, -1.0];
    let mut rng = Rng::new(1);
    // top_k = 2 keeps the two tied maxima (1 and 3), never anything else.
    let cfg = GenerationConfig::sampling(1, 1.0, 2, 1.0, 0);
    let mut seen = [0usize; 5];
    for _ in 0..400 {
        seen[sample(&logits, &cfg, &mut rng).unwrap() as usize] += 1;
    }
    assert_eq!(seen[0] + seen[2] + seen[4], 0, "{seen:?}");
    assert!(seen[1] > 100 && seen[3] > 100, "{seen:?}");
    // top_p small keeps only the most likely (lowest index among ties first).
    let cfg = GenerationConfig::sampling(1, 1.0, 0, 0.01, 0);
    for _ in 0..50 {
        assert_eq!(sample(&logits, &cfg, &mut rng).unwrap(), 1);
    }
    // top_p = 0.9 on probs (0.5, 0.3, 0.15, 0.05): keeps the first three.
    let p = [0.5f32, 0.3, 0.15, 0.05];
    let l: Vec<f32> = p.iter().map(|x| x.ln()).collect();
    let cfg = GenerationConfig::sampling(1, 1.0, 0, 0.9, 0);
    let mut seen = [0usize; 4];
    for _ in 0..2000 {
        seen[sample(&l, &cfg, &mut rng).unwrap() as usize] += 1;
    }
    assert_eq!(seen[3], 0, "{seen:?}");
    assert!(seen[2] > 100, "{seen:?}");
    // Seeded: the same draws from the same seed.
    let cfg = GenerationConfig::sampling(1, 2.0, 0, 1.0, 0);
    let draw = |seed| {
        let mut r = Rng::new(seed);
        (0..30).map(|_| sample(&logits, &cfg, &mut r).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(draw(5), draw(5));
}

/// A decoding step of qwen2_tied (q, k and v with biases) makes one launch a
/// Linear, in both kernel families: the biases go in with the products as
/// they store y (a rank-1 term, not a k = 1 product of its own), and o_proj
/// and down_proj add themselves into the residual stream (no add); with the
/// two norms, RoPE, the attention and SwiGLU, 12 a layer
/// (13 where the attention is split over the keys), and the embedding, the
/// final norm and the head.
#[test]
fn a_decoding_step_makes_one_launch_a_linear() {
    // Devices of its own: profiling is the device's, and other tests run meanwhile.
    let family = |kernels| GpuOptions { kernels, ..Default::default() };
    let own = [KernelFamily::Auto, KernelFamily::Gpu].map(|k| block_on(Gpu::with_options(family(k))).unwrap());
    for gpu in &own {
        let model = load(gpu, "qwen2_tied");
        let layers = model.layers.len() as u64;
        let prompt: Vec<u32> = vec![5, 17, 99, 200];
        let cache = KvCache::new(gpu, &model, 1, prompt.len() + 1).unwrap();
        let mut rec = Recorder::new(gpu);
        model
            .forward_cached(
                &mut rec,
                &model.input_ids(gpu, std::slice::from_ref(&prompt)).unwrap(),
                &cache,
                0,
                &NoHooks,
            )
            .unwrap();
        rec.submit().unwrap();
        gpu.set_profiling(true).unwrap();
        let mut rec = Recorder::new(gpu);
        let token = Tensor::from_slice(gpu, &[1, 1], &[7u32]).unwrap();
        model.forward_cached(&mut rec, &token, &cache, prompt.len(), &NoHooks).unwrap();
        rec.submit().unwrap();
        gpu.set_profiling(false).unwrap();
        let ran = block_on(gpu.take_profile()).unwrap();
        let count = |f: &dyn Fn(&str) -> bool| ran.iter().filter(|k| f(&k.kernel)).map(|k| k.calls).sum::<u64>();
        let all = count(&|_| true);
        let products = count(&|k| k.contains("matmul"));
        let attention = count(&|k| k.starts_with("attention"));
        eprintln!("{:?} kernels: {ran:?}", gpu.kernel_family());
        assert_eq!(count(&|k| k.starts_with("elementwise/")), 0, "no adds: {ran:?}");
        assert_eq!(products, 7 * layers + 1, "one launch a Linear and the head: {ran:?}");
        assert_eq!(all - attention, 11 * layers + 3, "{ran:?}");
    }
}

/// The sampler as a full sort writes it: every candidate ordered by score
/// (lower index first on ties), top-k kept by value, weights and sums in
/// that order. `sample` must pick the same token from the same draw.
fn sample_by_full_sort(logits: &[f32], config: &GenerationConfig, rng: &mut Rng) -> Option<u32> {
    let top = argmax(logits)?;
    let scores: Vec<f32> = logits.iter().map(|&l| l / config.temperature).collect();
    let mut order: Vec<usize> = (0..scores.len()).filter(|&i| !scores[i].is_nan()).collect();
    order.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap().then(a.cmp(&b)));
    if config.top_k > 0 && config.top_k < order.len() {
        let kth = scores[order[config.top_k - 1]];
        order.retain(|&i| scores[i] >= kth);
    }
    let max = scores[order[0]];
    if !max.is_finite() {
        return Some(top as u32);
    }
    let weights: Vec<f64> = order.iter().map(|&i| ((scores[i] - max) as f64).exp()).collect();
    let sum: f64 = weights.iter().sum();
    let mut keep = weights.len();
    let mut cum = 0.0;
    for (n, w) in weights.iter().enumerate() {
        cum += w / sum;
        if config.top_p < 1.0 && cum >= config.top_p as f64 {
            keep = n + 1;
            break;
        }
    }
    let total: f64 = weights[..keep].iter().sum();
    let u = rng.uniform() * total;
    let mut acc = 0.0;
    for (n, w) in weights[..keep].iter().enumerate() {
        acc += w;
        if u < acc {
            return Some(order[n] as u32);
        }
    }
    Some(order[keep - 1] as u32)
}

/// Sampled decoding (on a real GPU: the real-GPU family's device) encodes
/// step n + 1 before it draws token n and writes the draw into that step's
/// input just before submitting it; on a CPU rasterizer it records step n + 1
/// after the draw. Either way the tokens are those of a plain loop that runs
/// one step, reads its logits, draws with the reference sampler and only
/// then records the next step (same seed).
#[test]
fn sampled_decoding_feeds_each_draw_to_the_next_step() {
    let (prompt, _) = greedy_ref("llama_gqa");
    let settings = [GenerationConfig::sampling(10, 1.3, 0, 1.0, 5), GenerationConfig::sampling(9, 0.8, 12, 0.9, 9)];
    for (gpu, config) in
        [common::gpu(), common::gpu_family()].into_iter().flat_map(|g| settings.iter().map(move |c| (g, c)))
    {
        let model = load(gpu, "llama_gqa");
        let v = model.config.vocab_size;
        let got = block_on(model.generate(gpu, &prompt, config, |_| true)).unwrap();
        let cache = KvCache::new(gpu, &model, 1, prompt.len() + config.max_new_tokens).unwrap();
        let mut rng = Rng::new(config.seed);
        let (mut ids, mut offset, mut want) = (prompt.clone(), 0, Vec::new());
        while want.len() < config.max_new_tokens {
            let mut rec = Recorder::new(gpu);
            let logits = model.forward_cached(
                &mut rec,
                &model.input_ids(gpu, &[ids.clone()]).unwrap(),
                &cache,
                offset,
                &NoHooks,
            );
            let logits = logits.unwrap();
            rec.submit().unwrap();
            let row = block_on(logits.to_vec::<f32>(gpu)).unwrap();
            assert_eq!(row.len(), v);
            offset += ids.len();
            let token = sample_by_full_sort(&row, config, &mut rng).unwrap();
            want.push(token);
            ids = vec![token];
        }
        assert_eq!(got, want, "{:?} kernels, {config:?}", gpu.kernel_family());
    }
}

/// `sample` ranks candidates by integer keys and finds top-k's k-th score
/// without sorting them all: on random rows with ties, NaNs, ±∞ and ±0, at
/// odd sizes and every kind of setting, it picks what a full sort picks.
#[test]
fn the_sampler_picks_what_a_full_sort_picks() {
    let mut gen = Rng::new(77);
    let specials = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0, 1.5, -1.5];
    // −0 and 0 tie: rows of them only, where every draw lands on one.
    let zeros = [vec![-0.0f32, 0.0, -0.0, 0.0, f32::NAN], vec![0.0, -0.0, -1.0, -0.0]];
    for case in 0..400 {
        let v = 1 + gen.below(300);
        let logits: Vec<f32> = match zeros.get(case as usize) {
            Some(row) => row.clone(),
            None => (0..v)
                .map(|_| match gen.below(10) {
                    0 => specials[gen.below(specials.len())],
                    1..=3 => (gen.below(5) as f32 - 2.0) * 0.5, // ties
                    _ => (gen.uniform() as f32 - 0.5) * 12.0,
                })
                .collect(),
        };
        let v = logits.len();
        let top_k = [0, 1, 2, 7, 50, v, v + 3][gen.below(7)];
        let top_p = [1.0, 0.9, 0.5, 0.05][gen.below(4)];
        let temperature = [1.0, 0.7, 1.9][gen.below(3)];
        let config = GenerationConfig::sampling(1, temperature, top_k, top_p, 0);
        let (mut a, mut b) = (Rng::new(case), Rng::new(case));
        for draw in 0..20 {
            let want = sample_by_full_sort(&logits, &config, &mut a);
            let got = sample(&logits, &config, &mut b).ok();
            assert_eq!(got, want, "case {case} draw {draw}: V {v}, top_k {top_k}, top_p {top_p}, T {temperature}");
        }
    }
}

/// The demo's built-in model (www/default-model): its prompt and chat encodings, the prompt's logits and the
/// greedy continuation and chat answer, each to its eos, are transformers' (`make_fixtures.py default_model`).
#[test]
fn default_model_matches_transformers() {
    use webpeft::model::tokenizer::Tokenizer;
    use webpeft::model::Config;
    use webpeft::train::chat::{ChatTemplate, Message};

    let gpu = gpu();
    let folder = format!("{}/www/default-model", env!("CARGO_MANIFEST_DIR"));
    let files = DirFiles::new(&folder).unwrap();
    let model = block_on(Model::load(gpu, &files, QuantFormat::F32)).unwrap();
    let tokenizer = block_on(Tokenizer::load(&files)).unwrap();
    let refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("default_model/greedy.json")).unwrap()).unwrap();
    let ids =
        |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();

    let text = tokenizer.encode("The little robot", true).unwrap();
    assert_eq!(text, ids(&refs["text"]["prompt_ids"]), "the prompt's ids");
    let template = ChatTemplate::from_tokenizer(&tokenizer).unwrap().expect("the toy has a chat template");
    let rendered = template.generation_prompt(&[Message::new("user", "Describe the brave fox.")]).unwrap();
    let chat = tokenizer.encode(&rendered, false).unwrap();
    assert_eq!(chat, ids(&refs["chat"]["prompt_ids"]), "the chat's ids: {rendered:?}");

    let (logits, _) = block_on(model.logits_and_loss(gpu, std::slice::from_ref(&text), None)).unwrap();
    let expected = common::Fixture::open("default_model/reference.safetensors").f32("logits");
    let d = max_abs_diff(&logits, &expected);
    assert!(d <= 1e-4, "the prompt's logits differ from transformers' by {d}");

    let mut config = GenerationConfig::greedy(48);
    config.eos_token_ids = model.config.eos_token_ids.clone();
    config.eos_token_ids.extend(tokenizer.eos_ids());
    config.eos_token_ids.extend(block_on(Config::generation_eos_ids(&files)).unwrap());
    for (name, prompt) in [("text", text), ("chat", chat)] {
        let got = block_on(model.generate(gpu, &prompt, &config, |_| true)).unwrap();
        assert_eq!(got, ids(&refs[name]["new_ids"]), "{name}: greedy tokens differ from transformers'");
    }
}

/// A read taken with `read_after` returns the tensor as its own submission
/// left it, though a later submission (the next decoding step) has already
/// overwritten it; reading before submitting is a typed error.
#[test]
fn read_after_returns_its_submissions_value() {
    let gpu = gpu();
    let (ones, twos) = (vec![1.0f32; 37], vec![2.0f32; 37]);
    let (src1, src2) = (Tensor::from_slice(gpu, &[37], &ones).unwrap(), Tensor::from_slice(gpu, &[37], &twos).unwrap());
    let t = Tensor::zeros(gpu, &[37], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    rec.copy(&src1, 0, &t, 0, 37 * 4).unwrap();
    let first = rec.read_after(&t).unwrap();
    rec.submit().unwrap();
    let mut rec = Recorder::new(gpu);
    rec.copy(&src2, 0, &t, 0, 37 * 4).unwrap();
    let second = rec.read_after(&t).unwrap();
    rec.submit().unwrap();
    let values = |b: Vec<u8>| bytemuck::pod_collect_to_vec::<u8, f32>(&b);
    assert_eq!(values(block_on(first.read(gpu)).unwrap()), ones);
    assert_eq!(values(block_on(second.read(gpu)).unwrap()), twos);

    let mut rec = Recorder::new(gpu);
    let early = rec.read_after(&t).unwrap();
    let err = block_on(early.read(gpu)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("never submitted"), "{err}");
    drop(rec);
}

/// Hooks that fail the `fail_at`-th Linear a forward records (counting from
/// 0 over the whole generation): a step that cannot be recorded.
struct FailAt {
    calls: std::cell::Cell<usize>,
    fail_at: usize,
}

impl Hooks for FailAt {
    fn linear_input(
        &self,
        _: &mut Recorder,
        _: usize,
        _: Proj,
        _: &Tensor,
    ) -> webpeft::Result<Option<(Tensor, Saved)>> {
        let n = self.calls.get();
        self.calls.set(n + 1);
        match n == self.fail_at {
            true => Err(Error::InvalidArgument { op: "FailAt", detail: format!("Linear {n}") }),
            false => Ok(None),
        }
    }
}

/// Decoding records step n + 1 before it reads token n: when that
/// recording fails, token n (computed) still reaches the callback before the
/// error comes back, so nothing computed is lost. llama_gqa records 14
/// Linears a step (2 layers of 7): failing Linear 14·s + 5 fails step s.
#[test]
fn a_step_that_cannot_be_recorded_keeps_the_token_before_it() {
    let (prompt, expected) = greedy_ref("llama_gqa");
    // Greedy, and sampling with top-k 1 (the same tokens, drawn on the CPU),
    // which on the real-GPU family's device encodes each step ahead too.
    let sampled = GenerationConfig { greedy: false, top_k: 1, ..GenerationConfig::greedy(expected.len()) };
    let greedy = GenerationConfig::greedy(expected.len());
    for gpu in [gpu(), common::gpu_family()] {
        let model = load(gpu, "llama_gqa");
        for (step, cfg) in [1, 2, 5].into_iter().flat_map(|s| [(s, greedy.clone()), (s, sampled.clone())]) {
            let hooks = FailAt { calls: std::cell::Cell::new(0), fail_at: 14 * step + 5 };
            let mut streamed = Vec::new();
            let err = block_on(model.generate_adapted(gpu, &prompt, &cfg, &hooks, |t| {
                streamed.push(t);
                true
            }))
            .unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { op: "FailAt", .. }), "{err}");
            assert_eq!(streamed, expected[..step], "step {step} failed: tokens 0..{step} were computed ({cfg:?})");
        }
    }
}
