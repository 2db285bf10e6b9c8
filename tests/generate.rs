//! Generation: greedy tokens against transformers (refs/<model>/greedy.json),
//! the cached forward against the uncached one, seeded sampling, the length
//! limit as a typed error, and reading a step's result after the next step
//! is submitted (greedy decoding's pipelining).

mod common;

use common::{block_on, fixture, gpu};
use webpeft::gpu::Recorder;
use webpeft::kernels::reference::sample::{no_repeat_ngram, repetition_penalty, sample_row};
use webpeft::kernels::sample::CANDIDATES;
use webpeft::model::llama::{GenerationChoices, GenerationConfig, Hooks, KvCache, NoHooks, Proj, Saved};
use webpeft::model::stop_strings::StopStrings;
use webpeft::model::{DirFiles, Model};
use webpeft::quant::QuantFormat;
use webpeft::{DType, Error, Gpu, GpuOptions, KernelFamily, Tensor};

const MODELS: [&str; 5] = ["llama_gqa", "qwen2_tied", "mistral_f16", "qwen3_tiny", "smollm3_tiny"];

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

/// A decoding step of qwen2_tied (q, k and v with biases) makes one launch a
/// Linear, in both kernel families: the biases go in with the products as
/// they store y (the output op, not a k = 1 product of its own), up_proj's
/// product gates itself with SwiGLU (no launch of SwiGLU's own), and o_proj
/// and down_proj add themselves into the residual stream (no add); with the
/// two norms, RoPE and the attention, 11 a layer (12 where the attention is
/// split over the keys), and the embedding, the final norm and the head.
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
        assert_eq!(count(&|k| k.starts_with("swiglu/")), 0, "no SwiGLU of its own: {ran:?}");
        assert_eq!(products, 7 * layers + 1, "one launch a Linear and the head: {ran:?}");
        assert_eq!(count(&|k| k.ends_with("+bias")), 3 * layers, "q, k, v add their biases: {ran:?}");
        assert_eq!(count(&|k| k.ends_with("+gate")), layers, "up_proj gates: {ran:?}");
        assert_eq!(all - attention, 10 * layers + 3, "{ran:?}");
    }
}

/// Sampled decoding on the real-GPU family's device submits step n + 1
/// before it reads token n: the GPU's draw feeds it, also where the kept set
/// is wider than the draw's candidates (temperature 4 and top-p 0.99 over
/// 384 tokens, and a top-k of 300: its bisections over the whole row). A CPU
/// rasterizer's kernel family draws on the CPU after each step. Every way, the tokens
/// are those of a plain loop that runs one step, reads its logits, draws with
/// the reference sampler and only then records the next step (same seed).
#[test]
fn sampled_decoding_feeds_each_draw_to_the_next_step() {
    let (prompt, _) = greedy_ref("llama_gqa");
    let penalized = |c: GenerationConfig, repetition_penalty| GenerationConfig { repetition_penalty, ..c };
    let settings = [
        GenerationConfig::sampling(10, 1.3, 0, 1.0, 5),
        GenerationConfig::sampling(9, 0.8, 12, 0.9, 9),
        GenerationConfig::sampling(8, 4.0, 0, 0.99, 11),
        GenerationConfig::sampling(6, 1.0, 300, 1.0, 13),
        penalized(GenerationConfig::sampling(10, 0.7, 50, 0.95, 17), 1.8),
        penalized(GenerationConfig::sampling(8, 1.0, 0, 1.0, 19), 0.6),
        GenerationConfig { min_p: 0.05, ..GenerationConfig::sampling(8, 1.5, 0, 1.0, 23) },
        GenerationConfig { no_repeat_ngram_size: 2, ..GenerationConfig::sampling(10, 0.5, 0, 1.0, 29) },
        GenerationConfig {
            no_repeat_ngram_size: 1,
            repetition_penalty: 1.5,
            ..GenerationConfig::sampling(10, 0.7, 40, 0.95, 31)
        },
        // Half the vocabulary ends the generation, but not in its first 4 tokens.
        GenerationConfig {
            eos_token_ids: (0..192).collect(),
            min_new_tokens: 4,
            ..GenerationConfig::sampling(10, 1.0, 0, 1.0, 37)
        },
    ];
    for (gpu, config) in
        [common::gpu(), common::gpu_family()].into_iter().flat_map(|g| settings.iter().map(move |c| (g, c)))
    {
        let model = load(gpu, "llama_gqa");
        let v = model.config.vocab_size;
        let got = block_on(model.generate(gpu, &prompt, config, |_| true)).unwrap();
        let cache = KvCache::new(gpu, &model, 1, prompt.len() + config.max_new_tokens).unwrap();
        let (mut ids, mut offset, mut want, mut widest) = (prompt.clone(), 0, Vec::new(), 0);
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
            let mut row = block_on(logits.to_vec::<f32>(gpu)).unwrap();
            assert_eq!(row.len(), v);
            if config.repetition_penalty != 1.0 {
                row = repetition_penalty(&row, &[prompt.as_slice(), &want].concat(), config.repetition_penalty);
            }
            row = no_repeat_ngram(&row, &[prompt.as_slice(), &want].concat(), config.no_repeat_ngram_size);
            if want.len() < config.min_new_tokens {
                for &eos in &config.eos_token_ids {
                    row[eos as usize] = f32::NEG_INFINITY;
                }
            }
            offset += ids.len();
            let draw = sample_row(&row, &config.draw_settings(want.len() as u32));
            widest = widest.max(draw.kept.len());
            let token = draw.token.unwrap();
            want.push(token);
            ids = vec![token];
            if config.eos_token_ids.contains(&token) {
                break;
            }
        }
        assert_eq!(got, want, "{:?} kernels, {config:?}", gpu.kernel_family());
        if config.temperature == 4.0 || config.top_k > CANDIDATES {
            assert!(widest > CANDIDATES, "a kept set of {widest} tokens never passed the candidates");
        }
    }
}

/// The runs of a `generation/` fixture: each run's record, prompt and new tokens.
fn generation_runs(file: &str) -> Vec<(serde_json::Value, Vec<u32>, Vec<u32>)> {
    let path = if file.contains('/') { fixture(file) } else { fixture(&format!("generation/{file}")) };
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let ids = |x: &serde_json::Value| x.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
    let runs = v["runs"].as_array().unwrap();
    runs.iter().map(|run| (run.clone(), ids(&run["prompt_ids"]), ids(&run["new_ids"]))).collect()
}

/// Greedy decoding with a repetition penalty (1.3 on the three models, 0.8
/// on llama_gqa) gives transformers' 20 tokens (`make_fixtures.py
/// generation`: every id of the sequence, prompt included, penalized before
/// the argmax), through both kernel families.
#[test]
fn repetition_penalty_matches_transformers() {
    let runs = generation_runs("repetition_penalty.json");
    assert_eq!(runs.len(), 4);
    for gpu in [common::gpu(), common::gpu_family()] {
        for (run, prompt, want) in &runs {
            let (name, penalty) = (run["model"].as_str().unwrap(), run["repetition_penalty"].as_f64().unwrap() as f32);
            let model = load(gpu, name);
            let config = GenerationConfig { repetition_penalty: penalty, ..GenerationConfig::greedy(want.len()) };
            let got = block_on(model.generate(gpu, prompt, &config, |_| true)).unwrap();
            assert_eq!(&got, want, "{name} θ {penalty}, {:?} kernels", gpu.kernel_family());
            let plain = block_on(model.generate(gpu, prompt, &GenerationConfig::greedy(want.len()), |_| true)).unwrap();
            assert_ne!(&plain, want, "{name}: the penalty changes the tokens");
        }
    }
}

/// Greedy decoding with no_repeat_ngram_size (2 and 3 on llama_gqa, 2
/// after a repetition penalty of 1.3, 2 on Qwen2, 1 on Mistral) gives
/// transformers' 20 tokens (`make_fixtures.py generation`: no token may
/// complete an n-gram the sequence, prompt included, already holds),
/// through both kernel families.
#[test]
fn no_repeat_ngram_size_matches_transformers() {
    let runs = generation_runs("no_repeat_ngram.json");
    assert_eq!(runs.len(), 5);
    for gpu in [common::gpu(), common::gpu_family()] {
        for (run, prompt, want) in &runs {
            let name = run["model"].as_str().unwrap();
            let ngram = run["no_repeat_ngram_size"].as_u64().unwrap() as usize;
            let penalty = run["repetition_penalty"].as_f64().unwrap() as f32;
            let model = load(gpu, name);
            let config = GenerationConfig {
                no_repeat_ngram_size: ngram,
                repetition_penalty: penalty,
                ..GenerationConfig::greedy(want.len())
            };
            let got = block_on(model.generate(gpu, prompt, &config, |_| true)).unwrap();
            assert_eq!(&got, want, "{name} n {ngram} θ {penalty}, {:?} kernels", gpu.kernel_family());
            // No generated token completes an n-gram that came before it.
            let sequence = [prompt.as_slice(), &got].concat();
            for end in prompt.len().max(ngram - 1)..sequence.len() {
                let gram = &sequence[end + 1 - ngram..=end];
                let before = sequence[..end].windows(ngram).any(|g| g == gram);
                assert!(!before, "{name} n {ngram}: {gram:?} at {end} repeats in {sequence:?}");
            }
        }
    }
}

/// Greedy decoding with stop_strings gives transformers' tokens
/// (`make_fixtures.py stop_strings`: strings cut from the plain
/// continuation's text, across two tokens, inside one, from the prompt into
/// the first new token, and in the prompt only), the watcher stopping the
/// pipelined loop through `on_token`.
#[test]
fn stop_strings_match_transformers() {
    let runs = generation_runs("stop_strings/runs.json");
    assert_eq!(runs.len(), 8);
    let gpu = gpu();
    let files = DirFiles::new(fixture("llama_gqa")).unwrap();
    let tokenizer = block_on(webpeft::model::tokenizer::Tokenizer::load(&files)).unwrap();
    for (run, prompt, want) in &runs {
        let name = run["model"].as_str().unwrap();
        let strings: Vec<String> =
            run["stop_strings"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        let model = load(gpu, name);
        let mut stop = StopStrings::new(&tokenizer, &strings, prompt).unwrap();
        let got =
            block_on(model.generate(gpu, prompt, &GenerationConfig::greedy(20), |id| !stop.push(id).unwrap())).unwrap();
        assert_eq!(&got, want, "{name} {strings:?}");
    }
    let lengths: std::collections::BTreeSet<usize> = runs.iter().map(|r| r.2.len()).collect();
    assert!(lengths.len() > 2 && lengths.contains(&20), "{lengths:?}: some stop early, at different tokens, some not");
}

/// Greedy decoding with bad_words_ids (one token, two, three from the
/// prompt's last token on, an eos alone beside another word),
/// suppress_tokens and begin_suppress_tokens gives transformers' tokens
/// (`make_fixtures.py bad_words`), through both kernel families; sampled
/// decoding (drawn on the CPU here) never completes a bad word either.
#[test]
fn bad_words_match_transformers() {
    let runs = generation_runs("bad_words/runs.json");
    assert_eq!(runs.len(), 12);
    let list = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array().map_or(Vec::new(), |a| a.iter().map(|i| i.as_u64().unwrap() as u32).collect())
    };
    for gpu in [common::gpu(), common::gpu_family()] {
        for (run, prompt, want) in &runs {
            let name = run["model"].as_str().unwrap();
            let bad_words_ids: Vec<Vec<u32>> =
                run["bad_words_ids"].as_array().map_or(Vec::new(), |w| w.iter().map(list).collect());
            let config = GenerationConfig {
                bad_words_ids,
                suppress_tokens: list(&run["suppress_tokens"]),
                begin_suppress_tokens: list(&run["begin_suppress_tokens"]),
                eos_token_ids: run["eos_token_id"].as_u64().map(|e| vec![e as u32]).unwrap_or_default(),
                ..GenerationConfig::greedy(20)
            };
            let model = load(gpu, name);
            let got = block_on(model.generate(gpu, prompt, &config, |_| true)).unwrap();
            assert_eq!(&got, want, "{name} {config:?}, {:?} kernels", gpu.kernel_family());
        }
    }
    let gpu = gpu();
    let model = load(gpu, "llama_gqa");
    let prompt = &runs[0].1;
    let plain =
        block_on(model.generate(gpu, prompt, &GenerationConfig::sampling(20, 1.5, 0, 1.0, 9), |_| true)).unwrap();
    let words = vec![vec![plain[3]], plain[6..8].to_vec(), [&prompt[prompt.len() - 1..], &plain[..2]].concat()];
    let config = GenerationConfig { bad_words_ids: words.clone(), ..GenerationConfig::sampling(20, 1.5, 0, 1.0, 9) };
    let got = block_on(model.generate(gpu, prompt, &config, |_| true)).unwrap();
    assert_ne!(got, plain);
    let sequence = [prompt.as_slice(), &got].concat();
    for w in &words {
        let found = sequence.windows(w.len()).enumerate().any(|(i, g)| g == w && i + w.len() > prompt.len());
        assert!(!found, "{w:?} in {got:?}");
    }
    let too_big = GenerationConfig { bad_words_ids: vec![vec![1], vec![2, 384]], ..GenerationConfig::greedy(3) };
    let e = block_on(model.generate(gpu, prompt, &too_big, |_| true)).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("bad_words_ids[1] holds token 384"),
        "{e}"
    );
    let empty = GenerationConfig { bad_words_ids: vec![vec![]], ..GenerationConfig::greedy(3) };
    assert!(block_on(model.generate(gpu, prompt, &empty, |_| true))
        .unwrap_err()
        .to_string()
        .contains("bad_words_ids[0] is empty"));
}

/// Greedy decoding with min_new_tokens or min_length, a token of the plain
/// continuation made the eos, gives transformers' tokens (`make_fixtures.py
/// generation`: the eos banned until the bound, then the stop at it),
/// through both kernel families.
#[test]
fn min_new_tokens_matches_transformers() {
    let runs = generation_runs("min_new_tokens.json");
    assert_eq!(runs.len(), 3);
    for gpu in [common::gpu(), common::gpu_family()] {
        for (run, prompt, want) in &runs {
            let name = run["model"].as_str().unwrap();
            let model = load(gpu, name);
            let eos = run["eos_token_id"].as_u64().unwrap() as u32;
            let bound = |k: &str| run.get(k).map_or(0, |n| n.as_u64().unwrap() as usize);
            let config = GenerationConfig {
                eos_token_ids: vec![eos],
                min_new_tokens: bound("min_new_tokens"),
                min_length: bound("min_length"),
                ..GenerationConfig::greedy(20)
            };
            let got = block_on(model.generate(gpu, prompt, &config, |_| true)).unwrap();
            assert_eq!(&got, want, "{name} eos {eos}, {:?} kernels", gpu.kernel_family());
            let free = GenerationConfig { min_new_tokens: 0, min_length: 0, ..config.clone() };
            let early = block_on(model.generate(gpu, prompt, &free, |_| true)).unwrap();
            assert!(
                early.len() < want.len() && early.last() == Some(&eos),
                "{name}: the bound defers the eos {early:?}"
            );
        }
    }
}

/// A model's generation_config.json gives transformers' settings
/// (`GenerationConfig.from_pretrained`, `make_fixtures.py generation`):
/// Llama 3.2 Instruct's and Qwen2.5 Instruct's files, the fixtures' plain
/// one (transformers' defaults: greedy, top-k 50), top_k null and 0,
/// warpers beside do_sample false, min_p and the lengths, the bans and stop
/// strings (and the settings webpeft does not apply, named); values generation
/// would refuse are typed errors naming the file and field.
#[test]
fn generation_config_defaults_are_transformers() {
    use webpeft::model::config::GenerationDefaults;
    let path = fixture("generation/generation_configs.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = v.as_object().unwrap();
    assert_eq!(cases.len(), 9);
    for (name, case) in cases {
        let got = GenerationDefaults::from_json(case["file"].to_string().as_bytes()).unwrap();
        let num = |k: &str| case[k].as_f64().unwrap() as f32;
        assert_eq!(got.do_sample, case["do_sample"].as_bool().unwrap(), "{name}");
        assert_eq!(
            (got.temperature, got.top_p, got.repetition_penalty),
            (num("temperature"), num("top_p"), num("repetition_penalty")),
            "{name}"
        );
        assert_eq!(got.top_k, case["top_k"].as_u64().unwrap_or(0) as usize, "{name}");
        // min_p null is off (0); the lengths are the file's, where transformers' max_length falls back to 20.
        assert_eq!(got.min_p, case["min_p"].as_f64().unwrap_or(0.0) as f32, "{name}");
        assert_eq!(got.no_repeat_ngram_size as u64, case["no_repeat_ngram_size"].as_u64().unwrap(), "{name}");
        let min_new = case["min_new_tokens"].as_u64().unwrap_or(0);
        assert_eq!((got.min_new_tokens as u64, got.min_length as u64), (min_new, case["min_length"].as_u64().unwrap()));
        assert_eq!(got.max_new_tokens, case["max_new_tokens"].as_u64().map(|n| n as usize), "{name}");
        let file_length = case["file"].get("max_length").is_some();
        let length = case["max_length"].as_u64().map(|n| n as usize);
        assert_eq!(got.max_length, if file_length { length } else { None }, "{name}");
        assert!(file_length || length == Some(20), "{name}: transformers' default max_length {length:?}");
        let eos = &case["file"]["eos_token_id"];
        let want_eos: Vec<u32> = match eos {
            serde_json::Value::Array(a) => a.iter().map(|i| i.as_u64().unwrap() as u32).collect(),
            serde_json::Value::Null => Vec::new(),
            one => vec![one.as_u64().unwrap() as u32],
        };
        assert_eq!(got.eos_token_ids, want_eos, "{name}");
        // The bans and stop strings as transformers reads them (null: none).
        let lists = |k: &str| -> Vec<Vec<u32>> {
            case[k].as_array().map_or(Vec::new(), |a| {
                a.iter().map(|w| w.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect()).collect()
            })
        };
        let ids = |k: &str| -> Vec<u32> {
            case[k].as_array().map_or(Vec::new(), |a| a.iter().map(|i| i.as_u64().unwrap() as u32).collect())
        };
        assert_eq!(got.bad_words_ids, lists("bad_words_ids"), "{name}");
        assert_eq!(
            (&got.suppress_tokens, &got.begin_suppress_tokens),
            (&ids("suppress_tokens"), &ids("begin_suppress_tokens"))
        );
        let stops: Vec<String> = case["stop_strings"]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().map(|s| s.as_str().unwrap().into()).collect());
        assert_eq!(got.stop_strings, stops, "{name}");
        // typical_p as transformers resolves it; what transformers would do and webpeft does not is named.
        assert_eq!(got.typical_p, case["typical_p"].as_f64().unwrap() as f32, "{name}");
        let beams = case["num_beams"].as_u64().unwrap();
        let unsupported = match beams {
            1 => Vec::<String>::new(),
            _ => vec![format!("num_beams {beams}"), "forced_eos_token_id 382".into()],
        };
        assert_eq!(got.unsupported, unsupported, "{name}");
        let config = GenerationConfig::from_defaults(&got, 7);
        assert_eq!((config.greedy, config.max_new_tokens, config.seed), (!got.do_sample, 7, 0), "{name}");
        config.validate().unwrap();
    }
    assert_eq!(GenerationDefaults::default(), GenerationDefaults::from_json(b"{}").unwrap());
    // A caller's choices over the model's settings (the CLI's flags, the browser's options).
    let qwen = GenerationDefaults::from_json(cases["qwen25_instruct"]["file"].to_string().as_bytes()).unwrap();
    let own = GenerationConfig::from_defaults(&qwen, 5);
    assert_eq!(own.clone().with_choices(&GenerationChoices::default()), own);
    let hotter = own.clone().with_choices(&GenerationChoices { temperature: Some(0.9), ..Default::default() });
    assert_eq!((hotter.greedy, hotter.temperature, hotter.top_k, hotter.top_p), (false, 0.9, 20, 0.8));
    let greedy = GenerationChoices { greedy: Some(true), temperature: Some(0.5), seed: Some(4), ..Default::default() };
    let greedy = own.clone().with_choices(&greedy);
    assert_eq!((greedy.greedy, greedy.repetition_penalty, greedy.seed), (true, 1.05, 4));
    // Without a file, a temperature samples with transformers' top-k of 50.
    let plain = GenerationConfig::from_defaults(&GenerationDefaults::default(), 5).with_choices(&GenerationChoices {
        temperature: Some(0.7),
        top_p: Some(0.9),
        ..Default::default()
    });
    assert_eq!((plain.greedy, plain.temperature, plain.top_k, plain.top_p), (false, 0.7, 50, 0.9));
    // min_p from the file, or the caller's over it.
    let min_p = GenerationDefaults::from_json(cases["min_p_and_length"]["file"].to_string().as_bytes()).unwrap();
    let own = GenerationConfig::from_defaults(&min_p, 5);
    assert_eq!((own.min_p, own.top_k, own.draw_settings(0).min_p, own.no_repeat_ngram_size), (0.05, 0, 0.05, 3));
    assert_eq!((own.min_new_tokens, own.min_length), (2, 5));
    assert_eq!(own.with_choices(&GenerationChoices { min_p: Some(0.2), ..Default::default() }).min_p, 0.2);
    // The new tokens, as transformers counts them: max_new_tokens over max_length; max_length less the
    // prompt, at least one; the caller's own length where the file gives neither.
    assert_eq!((min_p.new_tokens(10), min_p.new_tokens(70)), (Some(128), Some(128)));
    let long = GenerationDefaults::from_json(cases["max_length_only"]["file"].to_string().as_bytes()).unwrap();
    assert_eq!((long.new_tokens(96), long.new_tokens(4096), long.new_tokens(5000)), (Some(4000), Some(1), Some(1)));
    assert_eq!((qwen.new_tokens(10), GenerationDefaults::default().new_tokens(10)), (None, None));
    for (file, field) in [
        (r#"{"do_sample": true, "temperature": 0}"#, "temperature"),
        (r#"{"top_p": 1.5}"#, "top_p"),
        (r#"{"top_p": 0}"#, "top_p"),
        (r#"{"repetition_penalty": 0}"#, "repetition_penalty"),
        (r#"{"min_p": 1.5}"#, "min_p"),
        (r#"{"min_p": -0.1}"#, "min_p"),
        (r#"{"max_new_tokens": -5}"#, "max_new_tokens"),
        (r#"{"no_repeat_ngram_size": 1.5}"#, "no_repeat_ngram_size"),
        (r#"{"max_length": "long"}"#, "max_length"),
        (r#"{"top_k": -1}"#, "top_k"),
        (r#"{"do_sample": "yes"}"#, "do_sample"),
        (r#"{"bad_words_ids": [5, 6]}"#, "bad_words_ids[0]"),
        (r#"{"bad_words_ids": [[5], []]}"#, "bad_words_ids[1]"),
        (r#"{"bad_words_ids": [[5, -6]]}"#, "bad_words_ids[0][1]"),
        (r#"{"suppress_tokens": ["a"]}"#, "suppress_tokens[0]"),
        (r#"{"stop_strings": 5}"#, "stop_strings"),
        (r#"{"stop_strings": ["ok", ""]}"#, "stop_strings[1]"),
        (r#"[1]"#, "(file)"),
    ] {
        match GenerationDefaults::from_json(file.as_bytes()) {
            Err(Error::File { file: f, detail }) => {
                assert!(f == "generation_config.json" && detail.starts_with(field), "{file}: {f}: {detail}")
            }
            other => panic!("{file}: {other:?}"),
        }
    }
    // do_sample false: the warpers' values are not checked (transformers ignores them).
    GenerationDefaults::from_json(br#"{"do_sample": false, "temperature": 0.0}"#).unwrap();
    let bad = GenerationConfig { repetition_penalty: 0.0, ..GenerationConfig::greedy(3) };
    assert!(matches!(bad.validate(), Err(Error::InvalidArgument { .. })));
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
    config.eos_token_ids.extend(block_on(Config::generation_defaults(&files)).unwrap().eos_token_ids);
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
    // Greedy, and two samplings that keep only the argmax (drawn on the
    // real-GPU family's GPU, on the CPU elsewhere): top-k 1, and top-k 300
    // with top-p 1e-4 (the GPU's bisections over the whole row).
    let greedy = GenerationConfig::greedy(expected.len());
    let top_1 = GenerationConfig { greedy: false, top_k: 1, ..greedy.clone() };
    let wide = GenerationConfig { greedy: false, top_k: 300, top_p: 1e-4, ..greedy.clone() };
    for gpu in [gpu(), common::gpu_family()] {
        let model = load(gpu, "llama_gqa");
        let configs = [greedy.clone(), top_1.clone(), wide.clone()];
        for (step, cfg) in [1, 2, 5].into_iter().flat_map(|s| configs.clone().map(|c| (s, c))) {
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
