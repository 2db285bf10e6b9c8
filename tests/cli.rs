//! The native CLI, run as a user would (built with `--features cli`).
#![cfg(feature = "cli")]

mod common;

use std::process::Command;

use common::Fixture;

fn webpeft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_webpeft")).args(args).output().expect("the CLI runs")
}

/// `webpeft logits` on the llama_gqa fixture.
fn logits_of_llama(tokens: &std::path::Path, out: &std::path::Path) -> std::process::Output {
    let model = fixture("llama_gqa");
    webpeft(&["logits", "--model", &model, "--tokens", tokens.to_str().unwrap(), "--out", out.to_str().unwrap()])
}

/// Whether the tests' adapter is a CPU rasterizer (lavapipe in CI).
fn gpu_is_software() -> bool {
    pollster::block_on(webpeft::Gpu::new()).map(|g| g.info().device_type == "Cpu").unwrap_or(false)
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `webpeft info --json` on a fixture folder.
fn info_json(folder: &str) -> serde_json::Value {
    let out = webpeft(&["info", "--model", &fixture(folder), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn info_describes_a_model_folder() {
    let v = info_json("llama_gqa");
    assert_eq!(v["stored"], serde_json::Value::Null);
    assert_eq!(v["model_type"], "llama");
    assert_eq!(v["parameters"], 135_488);
    assert_eq!(v["kv_heads"], 2);
    assert_eq!(v["head_dim"], 24);
    assert_eq!((&v["sliding_window"], &v["sliding_layers"]), (&serde_json::Value::Null, &serde_json::json!(0)));
    let bytes = &v["weight_bytes"];
    assert!(
        bytes["nf4"].as_u64() < bytes["q8_0"].as_u64() && bytes["q8_0"].as_u64() < bytes["f32"].as_u64(),
        "{bytes}"
    );
}

#[test]
fn info_names_a_bitsandbytes_folder() {
    let v = info_json("bnb4/fp4_dq");
    assert_eq!(v["stored"], "bitsandbytes 4-bit fp4, double-quantized");
    assert_eq!(v["parameters"], 135_488);
    assert_eq!(info_json("bnb4/nf4")["stored"], "bitsandbytes 4-bit nf4");
}

#[test]
fn info_on_a_missing_folder_is_a_clear_error() {
    let out = webpeft(&["info", "--model", "/no/such/model"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("/no/such/model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn logits_match_transformers_and_write_safetensors() {
    let fx = Fixture::open("refs/llama_gqa/reference.safetensors");
    let shape = fx.shape("input_ids");
    let ids: Vec<i64> = fx.i64("input_ids");
    let rows: Vec<Vec<i64>> = ids.chunks(shape[1]).map(|r| r.to_vec()).collect();
    let dir = std::env::temp_dir().join(format!("webpeft-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("ids.json");
    std::fs::write(&tokens, serde_json::json!({ "input_ids": rows }).to_string()).unwrap();
    let out_file = dir.join("logits.safetensors");
    let out = logits_of_llama(&tokens, &out_file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&out_file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let logits = st.tensor("logits").unwrap();
    assert_eq!(logits.shape(), [shape[0], shape[1], 384]);
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(logits.data());
    let want = fx.f32("logits");
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-4, "logits differ from transformers by {worst}");
    let loss: Vec<f32> = bytemuck::pod_collect_to_vec(st.tensor("loss").unwrap().data());
    assert!((loss[0] - fx.f32("loss")[0]).abs() < 1e-5, "loss {} vs {}", loss[0], fx.f32("loss")[0]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn logits_with_ragged_rows_is_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("webpeft-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("ids.json");
    std::fs::write(&tokens, "[[1, 2, 3], [4]]").unwrap();
    let out = logits_of_llama(&tokens, std::path::Path::new("/dev/null"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("row 1") && !err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn quantize_then_generate_from_the_packed_folder() {
    let dir = std::env::temp_dir().join(format!("webpeft-cli-q-{}", std::process::id()));
    let out =
        webpeft(&["quantize", "--model", &fixture("llama_gqa"), "--quant", "nf4", "--out", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(dir.join(name).is_file(), "{name} missing from the quantized folder");
    }
    let packed = std::fs::metadata(dir.join("model.safetensors")).unwrap().len();
    assert!(packed < 300_000, "{packed} bytes");
    let gen = webpeft(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--quant",
        "nf4",
        "--prompt",
        "The cat",
        "--max-new-tokens",
        "5",
    ]);
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    let err = String::from_utf8_lossy(&gen.stderr);
    assert!(err.contains("tokens/s"), "{err}");
    // The wrong format for a packed folder is a clear error, not a panic.
    let bad = webpeft(&["generate", "--model", dir.to_str().unwrap(), "--quant", "q8", "--prompt", "x"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("stored as nf4"));
    std::fs::remove_dir_all(&dir).ok();
}

/// The count `generate` prints on stderr ("N tokens in …").
fn generated_tokens(out: &std::process::Output) -> usize {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let line = err.lines().find(|l| l.contains(" tokens in ")).unwrap_or_else(|| panic!("no token count in {err}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// `generate --chat` answers one user turn through the tokenizer's chat template and ends at the turn's eos;
/// generation also stops at generation_config.json's eos ids (a chat model's end of turn, such as Llama 3's
/// `<|eot_id|>`), not only config.json's.
#[test]
fn generate_chat_and_generation_config_eos() {
    let toy = format!("{}/www/default-model", env!("CARGO_MANIFEST_DIR"));
    let chat = webpeft(&[
        "generate",
        "--model",
        &toy,
        "--chat",
        "--prompt",
        "Describe the brave fox.",
        "--max-new-tokens",
        "40",
    ]);
    let answer = String::from_utf8_lossy(&chat.stdout).to_string();
    assert!(generated_tokens(&chat) < 40, "the answer ends at the template's eos: {answer:?}");
    assert!(answer.trim_end().ends_with('.'), "the toy was pretrained on chats answered by one sentence: {answer:?}");
    // The template's own variables: a variable the toy's template does not read changes nothing; bad ones are refused.
    let with = |kwargs: &str, chat: bool| {
        let mut a = vec!["generate", "--model", &toy, "--prompt", "Describe the brave fox.", "--max-new-tokens", "40"];
        if chat {
            a.push("--chat");
        }
        a.extend(["--chat-template-kwargs", kwargs]);
        webpeft(&a)
    };
    assert_eq!(String::from_utf8_lossy(&with(r#"{"enable_thinking": false}"#, true).stdout), answer);
    for (kwargs, chat, says) in [
        (r#"{"enable_thinking": false}"#, false, "add --chat"),
        ("[1]", true, "not a JSON object"),
        (r#"{"bos_token": "x"}"#, true, "\"bos_token\" is one the render sets itself"),
    ] {
        let out = with(kwargs, chat);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{kwargs}: {err}");
    }

    let dir = TempDir::new("generation-eos");
    for f in std::fs::read_dir(&toy).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.0.join(f.file_name().unwrap())).unwrap();
    }
    // "." (id 13 in the toy's tokenizer) as a second end of sequence, named in generation_config.json only.
    std::fs::write(dir.0.join("generation_config.json"), r#"{"eos_token_id": [766, 13]}"#).unwrap();
    let args = |model: &str| {
        ["generate", "--model", model, "--prompt", "The little robot", "--max-new-tokens", "20"].map(str::to_string)
    };
    let plain = webpeft(&args(&toy).each_ref().map(String::as_str));
    let stopped = webpeft(&args(dir.0.to_str().unwrap()).each_ref().map(String::as_str));
    let (plain_text, stopped_text) = (String::from_utf8_lossy(&plain.stdout), String::from_utf8_lossy(&stopped.stdout));
    assert_eq!(generated_tokens(&plain), 20, "{plain_text:?}");
    assert!(generated_tokens(&stopped) < 20, "{stopped_text:?}");
    assert!(
        plain_text.starts_with(stopped_text.trim_end()),
        "{stopped_text:?} is where {plain_text:?} meets its first '.'"
    );

    // --chat on a tokenizer without a chat template: a clear error, exit code 1, no panic.
    let config_path = dir.0.join("tokenizer_config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let refused = webpeft(&["generate", "--model", dir.0.to_str().unwrap(), "--chat", "--prompt", "Hi"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("has no chat_template (tokenizer_config.json); leave --chat out"), "{err}");
}

/// The first run of a `generation/` fixture (llama_gqa's greedy tokens with a setting): the run, its tokens up
/// to the eos (the CLI stops there) and llama_gqa's tokenizer.
fn greedy_fixture(file: &str) -> (serde_json::Value, Vec<u32>, webpeft::model::tokenizer::Tokenizer) {
    use webpeft::model::{source::DirFiles, tokenizer::Tokenizer};
    let refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("generation/{file}"))).unwrap()).unwrap();
    let run = refs["runs"][0].clone();
    let mut want: Vec<u32> = run["new_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
    if let Some(eos) = want.iter().position(|&t| t == 382) {
        want.truncate(eos + 1);
    }
    let tokenizer = pollster::block_on(Tokenizer::load(&DirFiles::new(fixture("llama_gqa")).unwrap())).unwrap();
    (run, want, tokenizer)
}

/// `generate --repetition-penalty` gives transformers' greedy text with that penalty (to its eos), and a
/// model whose generation_config.json names a penalty gets it without the flag (transformers' defaults from
/// the file), while `--repetition-penalty 1` turns it off again; the file's length applies the same way.
#[test]
fn generate_with_the_models_repetition_penalty() {
    let model = fixture("llama_gqa");
    let (run, want, tokenizer) = greedy_fixture("repetition_penalty.json");
    assert_eq!((run["model"].as_str(), run["repetition_penalty"].as_f64()), (Some("llama_gqa"), Some(1.3)));
    let want_text = tokenizer.decode(&want, true).unwrap();
    let args = |model: &str, extra: &[&str]| {
        let mut a = vec!["generate", "--model", model, "--prompt", "In the spring the river", "--max-new-tokens", "20"];
        a.extend(extra);
        a.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let text = |out: &std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string()
    };
    let run = |a: Vec<String>| webpeft(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let flagged = run(args(&model, &["--repetition-penalty", "1.3"]));
    assert_eq!(text(&flagged), want_text);
    assert_eq!(generated_tokens(&flagged), want.len());

    let dir = TempDir::copy_of(&model, "repetition-penalty");
    std::fs::write(dir.0.join("generation_config.json"), r#"{"eos_token_id": 382, "repetition_penalty": 1.3}"#)
        .unwrap();
    let folder = dir.0.to_str().unwrap();
    assert_eq!(text(&run(args(folder, &[]))), want_text, "the file's penalty is the default");
    let off = text(&run(args(folder, &["--repetition-penalty", "1"])));
    assert_eq!(off, text(&run(args(&model, &[]))), "--repetition-penalty 1 is plain greedy");
    assert_ne!(off, want_text);

    // Without --max-new-tokens, the file's length: max_new_tokens, else max_length less the prompt.
    let prompt = "In the spring the river";
    let prompt_len = tokenizer.encode(prompt, true).unwrap().len();
    assert!(want.len() > 4, "the reference ends at its eos within 4 tokens: {want:?}");
    let lengths = [
        (r#""max_new_tokens": 4, "max_length": 2"#.to_string(), 4),
        (format!(r#""max_length": {}"#, prompt_len + 3), 3),
    ];
    for (length, n) in lengths {
        let file = format!(r#"{{"eos_token_id": 382, "repetition_penalty": 1.3, {length}}}"#);
        std::fs::write(dir.0.join("generation_config.json"), &file).unwrap();
        let out = webpeft(&["generate", "--model", folder, "--prompt", prompt]);
        assert_eq!((text(&out), generated_tokens(&out)), (tokenizer.decode(&want[..n], true).unwrap(), n), "{file}");
    }
}

/// `generate --no-repeat-ngram-size 2` gives transformers' greedy text with that setting (to its eos),
/// `--min-new-tokens 3` defers an eos as transformers' `min_new_tokens` does, and sampling with `--min-p 1`
/// keeps only the most likely token: greedy's text.
#[test]
fn generate_with_ngram_bans_min_new_tokens_and_min_p() {
    let model = fixture("llama_gqa");
    let (run, want, tokenizer) = greedy_fixture("no_repeat_ngram.json");
    assert_eq!((run["model"].as_str(), run["no_repeat_ngram_size"].as_u64()), (Some("llama_gqa"), Some(2)));
    let prompt = "In the spring the river";
    let out = webpeft(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        prompt,
        "--max-new-tokens",
        "20",
        "--no-repeat-ngram-size",
        "2",
    ]);
    let text = |out: &std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string()
    };
    assert_eq!((text(&out), generated_tokens(&out)), (tokenizer.decode(&want, true).unwrap(), want.len()));

    // The eos of min_new_tokens.json's first run (the first greedy token), named in generation_config.json.
    let (run, want, _) = greedy_fixture("min_new_tokens.json");
    assert_eq!((run["model"].as_str(), run["min_new_tokens"].as_u64()), (Some("llama_gqa"), Some(3)));
    let dir = TempDir::copy_of(&model, "min-new-tokens");
    std::fs::write(dir.0.join("generation_config.json"), format!(r#"{{"eos_token_id": {}}}"#, run["eos_token_id"]))
        .unwrap();
    let folder = dir.0.to_str().unwrap();
    let args = |extra: &[&'static str]| [&["generate", "--model", folder, "--prompt", prompt][..], extra].concat();
    assert_eq!(generated_tokens(&webpeft(&args(&[]))), 1, "without the bound: the eos first");
    let deferred = webpeft(&args(&["--min-new-tokens", "3"]));
    assert_eq!((text(&deferred), generated_tokens(&deferred)), (tokenizer.decode(&want, true).unwrap(), want.len()));

    let greedy = text(&webpeft(&["generate", "--model", &model, "--prompt", prompt, "--max-new-tokens", "8"]));
    let sampled = ["--max-new-tokens", "8", "--temperature", "1.5", "--top-k", "0", "--min-p", "1", "--seed", "3"];
    let min_p_1 = webpeft(&[&["generate", "--model", &model, "--prompt", prompt][..], &sampled[..]].concat());
    assert_eq!(text(&min_p_1), greedy, "min-p 1 keeps only the most likely token");
    let hot = webpeft(&[&["generate", "--model", &model, "--prompt", prompt][..], &sampled[..6]].concat());
    assert_ne!(text(&hot), greedy, "the same draws without min-p leave greedy's tokens");
    // epsilon_cutoff 0.99 drops every token but the most likely (on a real GPU too: the CPU picks).
    let eps = [&sampled[..6], &["--epsilon-cutoff", "0.99"]].concat();
    let eps = webpeft(&[&["generate", "--model", &model, "--prompt", prompt][..], &eps[..]].concat());
    assert_eq!(text(&eps), greedy, "epsilon_cutoff 0.99 keeps only the most likely token");
    let typical = [&sampled[..6], &["--typical-p", "0.5", "--eta-cutoff", "0.001"]].concat();
    let typical = webpeft(&[&["generate", "--model", &model, "--prompt", prompt][..], &typical[..]].concat());
    assert!(!text(&typical).is_empty());
    let bad = webpeft(&["generate", "--model", &model, "--prompt", prompt, "--temperature", "1", "--typical-p", "1.5"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("typical_p must be in (0, 1] (1: off), got 1.5"), "{err}");
}

/// `generate --stop` ends after the token that completes the text, where transformers' stop_strings does
/// (`make_fixtures.py stop_strings`), the text keeping it; generation_config.json's stop_strings (a list here)
/// apply without the flag.
#[test]
fn generate_stops_at_stop_strings() {
    let model = fixture("llama_gqa");
    let runs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("stop_strings/runs.json")).unwrap()).unwrap();
    let run = &runs["runs"][0];
    let stop = run["stop_strings"][0].as_str().unwrap();
    assert_eq!((run["model"].as_str(), run["stop_strings"].as_array().unwrap().len()), (Some("llama_gqa"), 1));
    let want: Vec<u32> = run["new_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
    assert!(want.len() < 20);
    let tokenizer = greedy_fixture("no_repeat_ngram.json").2;
    let want_text = tokenizer.decode(&want, true).unwrap();
    assert!(want_text.contains(stop), "{want_text:?} holds {stop:?}");
    let prompt = "In the spring the river";
    let text = |out: &std::process::Output| {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string()
    };
    let flagged =
        webpeft(&["generate", "--model", &model, "--prompt", prompt, "--max-new-tokens", "20", "--stop", stop]);
    assert_eq!((text(&flagged), generated_tokens(&flagged)), (want_text.clone(), want.len()));

    let dir = TempDir::copy_of(&model, "stop-strings");
    // Beside a setting webpeft does not apply, which it names.
    let config = serde_json::json!({"stop_strings": ["never in this text", stop], "num_beams": 4});
    std::fs::write(dir.0.join("generation_config.json"), config.to_string()).unwrap();
    let folder = dir.0.to_str().unwrap();
    let from_file = webpeft(&["generate", "--model", folder, "--prompt", prompt, "--max-new-tokens", "20"]);
    assert_eq!((text(&from_file), generated_tokens(&from_file)), (want_text, want.len()));
    let err = String::from_utf8_lossy(&from_file.stderr);
    assert!(err.contains("note: generation_config.json sets num_beams 4, which webpeft does not apply"), "{err}");
}

/// `generate --bad-word` bans the text's tokens as transformers' bad_words_ids does (`make_fixtures.py
/// bad_words`: token 20, "5", banned on llama_gqa), to the eos the CLI stops at.
#[test]
fn generate_with_bad_words() {
    let model = fixture("llama_gqa");
    let runs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("bad_words/runs.json")).unwrap()).unwrap();
    let run = &runs["runs"][0];
    assert_eq!((run["model"].as_str(), run["bad_words_ids"].to_string().as_str()), (Some("llama_gqa"), "[[20]]"));
    let mut want: Vec<u32> = run["new_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
    if let Some(eos) = want.iter().position(|&t| t == 382) {
        want.truncate(eos + 1);
    }
    let tokenizer = greedy_fixture("no_repeat_ngram.json").2;
    assert_eq!(tokenizer.encode("5", false).unwrap(), [20]);
    let out = webpeft(&["generate", "--model", &model, "--prompt", "In the spring the river", "--bad-word", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).trim_end_matches('\n').to_string();
    assert_eq!((text, generated_tokens(&out)), (tokenizer.decode(&want, true).unwrap(), want.len()));
}

/// A fresh folder under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("webpeft-cli-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A fresh folder holding a copy of the files of the model folder `model`.
    fn copy_of(model: &str, tag: &str) -> TempDir {
        let dir = TempDir::new(tag);
        for f in std::fs::read_dir(model).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                std::fs::copy(&f, dir.0.join(f.file_name().unwrap())).unwrap();
            }
        }
        dir
    }

    /// `name` inside the folder, as a string for the command line.
    fn join(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// Six lines of plain text and one prompt/completion pair.
const TRAIN_JSONL: &str = r#"{"text": "The cat sat on the mat and looked at the door."}
{"text": "A small dog ran across the green field in the morning."}
{"text": "She opened the window to let the cool air into the room."}
{"text": "The old man told a story about the sea and the stars."}
{"text": "We walked to the market to buy bread, milk and apples."}
{"text": "The children played in the park until the sun went down."}
{"prompt": "Q: What color is the sky?\nA:", "completion": " The sky is blue."}
"#;

/// `dir/train.jsonl` with [`TRAIN_JSONL`].
fn write_data(dir: &TempDir) -> String {
    let path = dir.join("train.jsonl");
    std::fs::write(&path, TRAIN_JSONL).unwrap();
    path
}

/// `webpeft train` on the llama_gqa fixture with `args` after the model and data.
fn train(data: &str, args: &[&str]) -> std::process::Output {
    let model = fixture("llama_gqa");
    let mut all = vec!["train", "--model", &model, "--data", data, "--seq-len", "32"];
    all.extend_from_slice(args);
    webpeft(&all)
}

/// The step lines `train` printed, checked for their keys.
fn step_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"))).collect();
    for l in &lines {
        if l.get("eval_loss").is_none() && l.get("best_step").is_none() {
            for key in ["step", "loss", "lr", "grad_norm", "tokens_per_s"] {
                assert!(l[key].is_number(), "{key} in {l}");
            }
        }
    }
    lines
}

/// The stderr of a run that must fail with exit code 1 and no panic.
fn failure(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    // (lavapipe may print its own `error: XDG_RUNTIME_DIR …` lines first.)
    assert!(err.lines().any(|l| l.starts_with("error: ") && !l.contains("XDG_RUNTIME_DIR")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn ok(out: &std::process::Output) {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The step lines of a run that must succeed, without their timing (for comparing two runs).
fn untimed(out: &std::process::Output) -> Vec<serde_json::Value> {
    ok(out);
    let mut lines = step_lines(out);
    lines.iter_mut().for_each(|l| drop(l.as_object_mut().unwrap().remove("tokens_per_s")));
    lines
}

/// `train --init-lora-weights loftq` writes the base the adapter trains on beside it (`loftq_base/`, a model
/// folder): on an NF4 base with q_proj and v_proj adapted, those two are replaced and every other tensor is
/// the checkpoint's own; webpeft loads the folder. Other inits write no base.
#[test]
fn train_with_loftq_writes_its_base_beside_the_adapter() {
    use webpeft::model::{Checkpoint, DirFiles};
    let dir = TempDir::new("loftq");
    let data = write_data(&dir);
    let out_dir = dir.join("out");
    let args = ["--method", "lora", "--init-lora-weights", "loftq", "--quant", "nf4", "--targets", "q_proj,v_proj"];
    let out = train(&data, &[&args[..], &["--steps", "1", "--lr", "1e-3", "--out", &out_dir]].concat());
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loftq_base: the LoftQ base this adapter belongs with"), "{err}");
    let base = dir.0.join("out/loftq_base");
    for file in ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert!(base.join(file).is_file(), "{file} in {}", base.display());
    }
    let open = |d: &std::path::Path| pollster::block_on(Checkpoint::open(&DirFiles::new(d).unwrap())).unwrap();
    let (written, original) = (open(&base), open(&std::path::PathBuf::from(fixture("llama_gqa"))));
    let mut replaced = 0;
    for name in original.names() {
        let read = |c: &Checkpoint<_>| pollster::block_on(c.read_f32(name)).unwrap();
        if name.contains("q_proj") || name.contains("v_proj") {
            assert_ne!(read(&written), read(&original), "{name} is LoftQ's");
            replaced += 1;
        } else {
            assert_eq!(read(&written), read(&original), "{name} is the checkpoint's");
        }
    }
    assert_eq!((replaced, written.names().count()), (4, original.names().count()));
    let gpu = pollster::block_on(webpeft::Gpu::new()).unwrap();
    let files = DirFiles::new(&base).unwrap();
    pollster::block_on(webpeft::model::Model::load(&gpu, &files, webpeft::quant::QuantFormat::Nf4)).unwrap();
    // PiSSA's adapter is saved converted to the original model: no base of its own.
    let pissa = ["--method", "lora", "--init-lora-weights", "pissa", "--steps", "1", "--lr", "1e-3"];
    let out = train(&data, &[&pissa[..], &["--out", &dir.join("p")]].concat());
    ok(&out);
    assert!(!dir.0.join("p/loftq_base").exists());
}

#[test]
fn train_lora_all_linear_then_generate_with_it() {
    let dir = TempDir::new("train-lora");
    let data = write_data(&dir);
    let out_dir = dir.join("out");
    let out = train(
        &data,
        &[
            "--method",
            "lora",
            "--targets",
            "all-linear",
            "--steps",
            "6",
            "--lr",
            "1e-2",
            "--eval-data",
            &data,
            "--out",
            &out_dir,
        ],
    );
    ok(&out);
    // The first step's compiling is announced, not silent (lavapipe: a software renderer).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("first step: compiling") && err.contains("GPU programs built"), "{err}");
    assert_eq!(err.contains("software renderer"), gpu_is_software(), "{err}");
    let mut lines = step_lines(&out);
    let eval = lines.pop().unwrap();
    assert!(eval["eval_loss"].as_f64().unwrap().is_finite() && eval["eval_tokens"].as_u64() > Some(50), "{eval}");
    let perplexity = eval["eval_perplexity"].as_f64().unwrap();
    assert!((perplexity.ln() - eval["eval_loss"].as_f64().unwrap()).abs() < 1e-5, "{eval}");
    assert_eq!(lines.len(), 6, "{lines:?}");
    // TRL's SFT metrics: the entropy near ln V for a random model, accuracies in [0, 1], and the tokens
    // trained on so far (6 steps of the same 4 rows), which the evaluation line repeats.
    for l in &lines {
        let (h, acc) = (l["entropy"].as_f64().unwrap(), l["mean_token_accuracy"].as_f64().unwrap());
        assert!(h > 0.0 && h <= (384f64).ln() + 1e-4 && (0.0..=1.0).contains(&acc), "{l}");
    }
    let tokens: Vec<u64> = lines.iter().map(|l| l["num_tokens"].as_u64().unwrap()).collect();
    assert!(tokens[0] > 0 && tokens.windows(2).all(|w| w[1] > w[0]), "{tokens:?}");
    assert_eq!(eval["eval_num_tokens"].as_u64(), Some(tokens[5]), "{eval}");
    assert!(eval["eval_entropy"].as_f64().unwrap() > 0.0, "{eval}");
    assert!((0.0..=1.0).contains(&eval["eval_mean_token_accuracy"].as_f64().unwrap()), "{eval}");
    let losses: Vec<f64> = lines.iter().map(|l| l["loss"].as_f64().unwrap()).collect();
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[5] < losses[0], "the loss did not go down: {losses:?}");
    assert_eq!(lines[5]["step"], 6);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("out/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 8);
    assert_eq!(config["lora_alpha"].as_f64(), Some(8.0), "PEFT's default alpha");
    assert_eq!(config["target_modules"], "all-linear", "{config}");
    assert_eq!(config["base_model_name_or_path"], "llama_gqa");
    for name in ["adapter_model.safetensors", "training_state.safetensors"] {
        assert!(dir.0.join("out").join(name).is_file(), "{name} missing");
    }
    let gen = webpeft(&[
        "generate",
        "--model",
        &fixture("llama_gqa"),
        "--adapter",
        &out_dir,
        "--prompt",
        "The cat",
        "--max-new-tokens",
        "4",
    ]);
    ok(&gen);
}

/// Trains `method` 4 steps into `dir/whole`, and 2 then 2 more through
/// `--resume` into `dir/half`: the step losses must be the same. Returns the
/// uninterrupted run's folder.
fn stop_resume_equals_uninterrupted(dir: &TempDir, data: &str, method: &[&str]) -> String {
    let (half, whole) = (dir.join("half"), dir.join("whole"));
    let run = |out: &str, stop: Option<&str>| {
        let mut a: Vec<&str> = method.to_vec();
        a.extend(["--steps", "4", "--lr", "1e-2", "--no-shuffle", "--out", out]);
        a.extend(stop.map(|s| ["--stop-after", s]).into_iter().flatten());
        train(data, &a)
    };
    let uninterrupted = run(&whole, None);
    ok(&uninterrupted);
    let first = run(&half, Some("2"));
    ok(&first);
    let resumed = webpeft(&["train", "--model", &fixture("llama_gqa"), "--resume", &half, "--out", &half]);
    ok(&resumed);
    // The loss and TRL's metrics, num_tokens counting on from the checkpoint.
    let fields = ["loss", "entropy", "mean_token_accuracy", "num_tokens"];
    let losses = |o: &std::process::Output| {
        step_lines(o).iter().map(|l| fields.map(|f| l[f].to_string()).join(" ")).collect::<Vec<_>>()
    };
    let both: Vec<String> = losses(&first).into_iter().chain(losses(&resumed)).collect();
    assert_eq!(both[0].contains("null"), method.contains(&"--objective"), "SFT's metrics: {both:?}");
    assert_eq!(both, losses(&uninterrupted), "{method:?}: stopped and resumed vs uninterrupted");
    whole
}

/// TRL's SFT loss_type "dft": its losses are the probability-weighted cross-entropies, far below the nll's
/// ln V ≈ 6 of a random model, and a resumed run keeps it from the checkpoint.
#[test]
fn train_sft_with_the_dft_loss_stop_resume() {
    let dir = TempDir::new("train-dft");
    let data = write_data(&dir);
    stop_resume_equals_uninterrupted(&dir, &data, &["--method", "lora", "--loss-type", "dft"]);
    let out = train(
        &data,
        &["--method", "lora", "--loss-type", "dft", "--steps", "1", "--lr", "1e-2", "--out", &dir.join("one")],
    );
    ok(&out);
    let loss = column(&step_lines(&out), "loss")[0];
    assert!(loss > 0.0 && loss < 0.1, "dft's first loss: {loss}");
    // With prompt tuning's virtual tokens it is refused by its option, before the model loads.
    let pt =
        ["--method", "prompt_tuning", "--loss-type", "dft", "--steps", "1", "--lr", "1e-2", "--out", &dir.join("pt")];
    let out = train(&data, &pt);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--loss-type: dft with the adapter's 20 virtual tokens"), "{e}");
}

#[test]
fn train_ia3_on_an_nf4_base_stop_resume_and_generate() {
    let dir = TempDir::new("train-ia3");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &["--method", "ia3", "--quant", "nf4"]);
    // PEFT's files, PEFT's defaults for a Llama.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "IA3");
    assert_eq!(config["target_modules"], serde_json::json!(["down_proj", "k_proj", "v_proj"]), "{config}");
    assert_eq!(config["feedforward_modules"], serde_json::json!(["down_proj"]), "{config}");
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert_eq!(st.tensor("base_model.model.model.layers.1.mlp.down_proj.ia3_l").unwrap().shape(), [1, 128]);
    assert_eq!(st.tensor("base_model.model.model.layers.0.self_attn.v_proj.ia3_l").unwrap().shape(), [48, 1]);
    ok(&webpeft(&["generate", "--model", &model, "--adapter", &whole, "--prompt", "The cat", "--max-new-tokens", "3"]));
    // LoRA's options are refused, naming what --method ia3 takes.
    let err = failure(&train(
        &data,
        &["--method", "ia3", "--r", "4", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("x")],
    ));
    assert!(err.contains("--r is not an option of --method ia3") && err.contains("--feedforward-modules"), "{err}");
}

#[test]
fn train_dora_on_an_nf4_base_stop_resume_and_merge() {
    let dir = TempDir::new("train-dora");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    let method =
        ["--method", "lora", "--use-dora", "--r", "4", "--targets", "q_proj,v_proj,down_proj", "--quant", "nf4"];
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &method);
    // PEFT's files: use_dora and a magnitude per module, shape (out).
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["use_dora"].as_bool()), (Some("LORA"), Some(true)), "{config}");
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert_eq!(st.len(), 2 * 3 * 3, "A, B and m on 3 modules of 2 layers");
    assert_eq!(st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_magnitude_vector").unwrap().shape(), [64]);
    // Merged, the model computes what base + DoRA adapter did.
    let merged = dir.join("merged");
    ok(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &merged]));
    ok(&webpeft(&["generate", "--model", &merged, "--prompt", "The cat", "--max-new-tokens", "3"]));
}

#[test]
fn train_lora_with_trainable_tokens_stop_resume_merge_and_refuse_a_gguf_adapter() {
    let dir = TempDir::new("train-tokens");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    // Ids, and tokens by their text ("<|begin_of_text|>" is 381 in the fixture's tokenizer).
    let method = [
        "--method",
        "lora",
        "--r",
        "4",
        "--trainable-token-indices",
        "5,82",
        "--trainable-tokens",
        "<|begin_of_text|>",
        "--lm-head-rows",
        "--quant",
        "nf4",
    ];
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &method);
    // PEFT's files: the ids in the config, the rows beside the factors.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
    // The head's rows too (--lm-head-rows on this untied model): PEFT's dict form.
    let ids = serde_json::json!([5, 82, 381]);
    assert_eq!(config["trainable_token_indices"], serde_json::json!({"embed_tokens": ids, "lm_head": ids}), "{config}");
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let rows = st.tensor("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta").unwrap();
    let head = st.tensor("base_model.model.lm_head.token_adapter.trainable_tokens_delta").unwrap();
    assert_eq!((st.len(), rows.shape(), head.shape()), (2 * 2 * 2 + 2, &[3, 64][..], &[3, 64][..]));
    // Merged into an f32 copy; a GGUF LoRA cannot hold the rows.
    let merged = dir.join("merged");
    ok(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &merged]));
    ok(&webpeft(&["generate", "--model", &merged, "--prompt", "The cat", "--max-new-tokens", "3"]));
    let gguf = dir.join("a.gguf");
    let err =
        failure(&webpeft(&["export-gguf", "--model", &model, "--adapter", &whole, "--lora-only", "--out", &gguf]));
    assert!(err.contains("trainable_token_indices"), "{err}");
    // An id past the vocabulary is refused before training.
    let bad = ["--method", "lora", "--trainable-token-indices", "5,384", "--steps", "1", "--lr", "1e-3"];
    let err = failure(&train(&data, &[&bad[..], &["--out", &dir.join("x")]].concat()));
    assert!(err.contains("--trainable-token-indices") && err.contains("384"), "{err}");
    // A text that is not one token says what it encodes as.
    let bad = ["--method", "lora", "--trainable-tokens", "The cat", "--steps", "1", "--lr", "1e-3"];
    let err = failure(&train(&data, &[&bad[..], &["--out", &dir.join("x")]].concat()));
    assert!(err.contains("\"The cat\" is not one token of the vocabulary (it encodes as ["), "{err}");
}

#[test]
fn train_lora_with_modules_to_save_on_an_nf4_base_stop_resume_merge_and_refuse_a_gguf_adapter() {
    let dir = TempDir::new("train-modules-to-save");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    let method = ["--method", "lora", "--r", "4", "--modules-to-save", "embed_tokens,lm_head", "--quant", "nf4"];
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &method);
    // PEFT's files: the list in the config, each copy under its module's own key.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["modules_to_save"], serde_json::json!(["embed_tokens", "lm_head"]), "{config}");
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    for key in ["base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"] {
        assert_eq!(st.tensor(key).unwrap().shape(), [384, 64], "{key}");
    }
    assert_eq!(st.len(), 2 * 2 * 2 + 2);
    // Merged: the copies are the model's, in a folder or a merged GGUF; a GGUF LoRA cannot hold them.
    let merged = dir.join("merged");
    ok(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &merged]));
    ok(&webpeft(&["generate", "--model", &merged, "--prompt", "The cat", "--max-new-tokens", "3"]));
    let gguf = dir.join("a.gguf");
    let pre = ["--tokenizer-pre", "llama-bpe"];
    ok(&webpeft(&[&["export-gguf", "--model", &model, "--adapter", &whole, "--out", &gguf][..], &pre].concat()));
    assert!(std::fs::metadata(&gguf).unwrap().len() > 200_000);
    let err =
        failure(&webpeft(&["export-gguf", "--model", &model, "--adapter", &whole, "--lora-only", "--out", &gguf]));
    assert!(err.contains("modules_to_save"), "{err}");
    // A module webpeft does not train whole is refused by the flag's name.
    let bad = ["--method", "lora", "--modules-to-save", "embed_tokens,norm", "--steps", "1", "--lr", "1e-3"];
    let err = failure(&train(&data, &[&bad[..], &["--out", &dir.join("x")]].concat()));
    assert!(err.contains("--modules-to-save") && err.contains("norm"), "{err}");
}

/// PEFT's rank_pattern and alpha_pattern from the command line: each
/// module at its own rank, stopped and resumed as one run, merged; a GGUF
/// LoRA, whose one alpha cannot hold alpha_pattern, refused; a bad entry
/// named by its flag.
#[test]
fn train_lora_with_rank_and_alpha_patterns_stop_resume_merge_and_refuse_a_gguf_adapter() {
    let dir = TempDir::new("train-rank-pattern");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    let method = ["--method", "lora", "--r", "4", "--targets", "q_proj,v_proj,down_proj", "--rank-pattern"];
    let method = [&method[..], &[r"v_proj=2,layers\.1\.mlp\..*=6", "--alpha-pattern", "down_proj=16"]].concat();
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &method);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["rank_pattern"], serde_json::json!({"v_proj": 2, r"layers\.1\.mlp\..*": 6}), "{config}");
    assert_eq!(config["alpha_pattern"], serde_json::json!({"down_proj": 16}), "{config}");
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let rank = |m: &str| st.tensor(&format!("base_model.model.model.layers.{m}.lora_A.weight")).unwrap().shape()[0];
    let ranks =
        [rank("0.self_attn.q_proj"), rank("0.self_attn.v_proj"), rank("0.mlp.down_proj"), rank("1.mlp.down_proj")];
    assert_eq!(ranks, [4, 2, 4, 6]);
    let merged = dir.join("merged");
    ok(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &merged]));
    ok(&webpeft(&["generate", "--model", &merged, "--prompt", "The cat", "--max-new-tokens", "3"]));
    let gguf = dir.join("a.gguf");
    let err =
        failure(&webpeft(&["export-gguf", "--model", &model, "--adapter", &whole, "--lora-only", "--out", &gguf]));
    assert!(err.contains("one alpha"), "{err}");
    let bad = ["--method", "lora", "--rank-pattern", "q_proj:4", "--steps", "1", "--lr", "1e-3"];
    let err = failure(&train(&data, &[&bad[..], &["--out", &dir.join("x")]].concat()));
    assert!(err.contains("--rank-pattern") && err.contains("PATTERN=VALUE"), "{err}");
    let bad = ["--method", "lora", "--rank-pattern", "q_proj=0", "--steps", "1", "--lr", "1e-3"];
    let err = failure(&train(&data, &[&bad[..], &["--out", &dir.join("x")]].concat()));
    assert!(err.contains("--rank-pattern") && err.contains("at least 1"), "{err}");
}

#[test]
fn train_trainable_tokens_alone_stop_resume_and_merge() {
    let dir = TempDir::new("train-tokens-alone");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    // The untied head's own rows too (PEFT's target_modules ["embed_tokens", "lm_head"]).
    let method =
        ["--method", "trainable_tokens", "--trainable-token-indices", "5,82,381", "--lm-head-rows", "--quant", "nf4"];
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &method);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "TRAINABLE_TOKENS", "{config}");
    assert_eq!(config["token_indices"], serde_json::json!([5, 82, 381]), "{config}");
    assert_eq!(config["target_modules"], serde_json::json!(["embed_tokens", "lm_head"]), "{config}");
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        [
            "base_model.model.lm_head.trainable_tokens_delta",
            "base_model.model.model.embed_tokens.trainable_tokens_delta"
        ]
    );
    let merged = dir.join("merged");
    ok(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &merged]));
    ok(&webpeft(&["generate", "--model", &merged, "--prompt", "The cat", "--max-new-tokens", "3"]));
    // Its one option is required, and the others are refused.
    let err = failure(&train(
        &data,
        &["--method", "trainable_tokens", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("x")],
    ));
    assert!(err.contains("--trainable-token-indices") && err.contains("needs the ids"), "{err}");
    let bad = ["--method", "trainable_tokens", "--trainable-token-indices", "5", "--r", "4", "--steps", "1"];
    let err = failure(&train(&data, &[&bad[..], &["--lr", "1e-3", "--out", &dir.join("x")]].concat()));
    assert!(
        err.contains(
            "--r is not an option of --method trainable_tokens, which takes --lm-head-rows, --trainable-token-indices \
             and --trainable-tokens"
        ),
        "{err}"
    );
}

#[test]
fn train_lora_on_the_embedding_and_the_head_stop_resume_merge_and_generate() {
    let dir = TempDir::new("train-outer");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    let method = ["--method", "lora", "--r", "4", "--targets", "q_proj,embed_tokens,lm_head", "--quant", "nf4"];
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &method);
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert_eq!(st.tensor("base_model.model.model.embed_tokens.lora_embedding_A").unwrap().shape(), [4, 384]);
    assert_eq!(st.tensor("base_model.model.lm_head.lora_B.weight").unwrap().shape(), [384, 4]);
    let merged = dir.join("merged");
    ok(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &merged]));
    ok(&webpeft(&["generate", "--model", &merged, "--prompt", "The cat", "--max-new-tokens", "3"]));
    ok(&webpeft(&["generate", "--model", &model, "--adapter", &whole, "--prompt", "The cat", "--max-new-tokens", "3"]));
    // llama.cpp's adapters hold a LoRA of the embedding and the head, and a merged file holds it folded in.
    for (kind, path) in [("--lora-only", dir.join("a.gguf")), ("--tokenizer-pre", dir.join("m.gguf"))] {
        let mut args = vec!["export-gguf", "--model", &model, "--adapter", &whole, "--out", &path, kind];
        if kind == "--tokenizer-pre" {
            args.push("llama-bpe");
        }
        ok(&webpeft(&args));
        let bytes = std::fs::read(&path).unwrap();
        let has = |name: &str| bytes.windows(name.len()).any(|w| w == name.as_bytes());
        assert_eq!(has("token_embd.weight.lora_a"), kind == "--lora-only", "{kind}");
    }
}

#[test]
fn train_prompt_tuning_from_text_stop_resume_generate_and_refuse_merge() {
    let dir = TempDir::new("train-pt");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    let method = [
        "--method",
        "prompt_tuning",
        "--num-virtual-tokens",
        "4",
        "--prompt-init",
        "text",
        "--prompt-init-text",
        "The book",
    ];
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &method);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "PROMPT_TUNING");
    assert_eq!((config["num_virtual_tokens"].as_u64(), config["token_dim"].as_u64()), (Some(4), Some(64)), "{config}");
    assert_eq!(
        (config["prompt_tuning_init"].as_str(), config["prompt_tuning_init_text"].as_str()),
        (Some("TEXT"), Some("The book"))
    );
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    assert_eq!(
        safetensors::SafeTensors::deserialize(&st).unwrap().tensor("prompt_embeddings").unwrap().shape(),
        [4, 64]
    );
    ok(&webpeft(&["generate", "--model", &model, "--adapter", &whole, "--prompt", "The cat", "--max-new-tokens", "3"]));
    let err = failure(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &dir.join("merged")]));
    assert!(err.contains("cannot be merged"), "{err}");
    let err = failure(&train(
        &data,
        &["--method", "prompt_tuning", "--r", "4", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("x")],
    ));
    assert!(
        err.contains("--r is not an option of --method prompt_tuning") && err.contains("--num-virtual-tokens"),
        "{err}"
    );
    let err = failure(&train(
        &data,
        &[
            "--method",
            "prompt_tuning",
            "--num-virtual-tokens",
            "0",
            "--steps",
            "1",
            "--lr",
            "1e-3",
            "--out",
            &dir.join("x"),
        ],
    ));
    eprintln!("ROW | prompt tuning with 0 virtual tokens | {}", err.lines().last().unwrap_or_default());
    assert!(err.contains("--num-virtual-tokens") && err.contains("at least 1"), "{err}");
}

#[test]
fn train_prefix_tuning_stop_resume_generate_and_refuse_merge() {
    let dir = TempDir::new("train-prefix");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    let whole =
        stop_resume_equals_uninterrupted(&dir, &data, &["--method", "prefix_tuning", "--num-virtual-tokens", "3"]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "PREFIX_TUNING");
    // PEFT's grouped-query shapes: token_dim = KV heads × head_dim = 2 × 24.
    assert_eq!((config["token_dim"].as_u64(), config["num_attention_heads"].as_u64()), (Some(48), Some(2)), "{config}");
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    assert_eq!(st.tensor("prompt_embeddings").unwrap().shape(), [3, 2 * 2 * 48]);
    ok(&webpeft(&["generate", "--model", &model, "--adapter", &whole, "--prompt", "The cat", "--max-new-tokens", "3"]));
    let err = failure(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &dir.join("merged")]));
    assert!(err.contains("cannot be merged"), "{err}");
}

/// The checkpoint's tensor names in `folder`, without the `param.` / `exp_avg*.` prefixes.
fn checkpoint_keys(folder: &str) -> Vec<String> {
    let bytes = std::fs::read(std::path::Path::new(folder).join("training_state.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut keys: Vec<String> =
        st.names().iter().filter_map(|n| n.strip_prefix("param.")).map(str::to_string).collect();
    keys.sort();
    keys
}

#[test]
fn train_prefix_projection_and_p_tuning_through_their_mlps_stop_resume_and_generate() {
    let model = fixture("llama_gqa");
    let runs: [(&str, &[&str], &str, [usize; 2]); 2] = [
        (
            "projection",
            &[
                "--method",
                "prefix_tuning",
                "--prefix-projection",
                "--encoder-hidden-size",
                "16",
                "--num-virtual-tokens",
                "3",
            ],
            "transform",
            [3, 2 * 2 * 48],
        ),
        (
            "ptuning",
            &["--method", "p_tuning", "--encoder-hidden-size", "16", "--num-virtual-tokens", "3"],
            "mlp_head",
            [3, 64],
        ),
    ];
    for (tag, method, mlp, shape) in runs {
        let dir = TempDir::new(&format!("train-{tag}"));
        let data = write_data(&dir);
        // The checkpoint keeps the MLP: stopped and resumed equals uninterrupted.
        let whole = stop_resume_equals_uninterrupted(&dir, &data, method);
        let keys = checkpoint_keys(&whole);
        assert!(keys.contains(&"prompt_encoder.embedding.weight".to_string()), "{tag}: {keys:?}");
        assert!(keys.contains(&format!("prompt_encoder.{mlp}.0.weight")), "{tag}: {keys:?}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
        assert_eq!(config["encoder_hidden_size"], 16, "{config}");
        // PEFT's file: only the prompt the MLP makes.
        let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&st).unwrap();
        assert_eq!(st.names(), ["prompt_embeddings"]);
        assert_eq!(st.tensor("prompt_embeddings").unwrap().shape(), shape);
        ok(&webpeft(&[
            "generate",
            "--model",
            &model,
            "--adapter",
            &whole,
            "--prompt",
            "The cat",
            "--max-new-tokens",
            "3",
        ]));
    }
    // Folders PEFT trained through the MLPs hold only the prompt: they go on training it directly, and resume so.
    for (tag, method, folder) in [
        ("projection-init", "prefix_tuning", "prefix_projection/llama_gqa/final_adapter"),
        ("ptuning-init", "p_tuning", "p_tuning/llama_gqa/final_adapter"),
    ] {
        let dir = TempDir::new(&format!("train-{tag}"));
        let data = write_data(&dir);
        let init = fixture(folder);
        let whole = stop_resume_equals_uninterrupted(&dir, &data, &["--method", method, "--init-adapter", &init]);
        assert!(checkpoint_keys(&whole).iter().all(|k| !k.starts_with("prompt_encoder")), "{tag}");
    }
    let dir = TempDir::new("train-reparam-bad");
    let data = write_data(&dir);
    let out = dir.join("x");
    let common = ["--steps", "1", "--lr", "1e-3", "--out", &out];
    let err =
        failure(&train(&data, &[&["--method", "prefix_tuning", "--encoder-hidden-size", "8"][..], &common].concat()));
    eprintln!("ROW | --encoder-hidden-size without --prefix-projection | {}", err.lines().last().unwrap_or_default());
    assert!(err.contains("--encoder-hidden-size") && err.contains("prefix_projection"), "{err}");
    let err = failure(&train(&data, &[&["--method", "p_tuning", "--prefix-projection"][..], &common].concat()));
    assert!(err.contains("--prefix-projection is not an option of --method p_tuning"), "{err}");
}

#[test]
fn train_adalora_on_an_nf4_base_stop_resume_merge_and_generate() {
    let dir = TempDir::new("train-adalora");
    let data = write_data(&dir);
    let model = fixture("llama_gqa");
    // 4 steps: the budget falls from init_r to target_r over the run (total_step is the run's
    // steps), the last step keeps the final budget; the allocator's state crosses the resume.
    let method =
        ["--method", "adalora", "--quant", "nf4", "--init-r", "4", "--target-r", "2", "--targets", "all-linear"];
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &method);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("whole/adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["total_step"].as_u64()), (Some("ADALORA"), Some(4)), "{config}");
    let pattern = config["rank_pattern"].as_object().expect("the run allocated ranks");
    assert_eq!(pattern.len(), 14, "{config}");
    let kept: usize =
        pattern.values().map(|v| v.as_array().unwrap().iter().filter(|f| f.as_bool() == Some(true)).count()).sum();
    assert_eq!(kept, 2 * 14, "target_r 2 on 14 modules");
    let st = std::fs::read(dir.0.join("whole/adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let ranks: usize =
        st.names().iter().filter(|n| n.ends_with("lora_E")).map(|n| st.tensor(n).unwrap().shape()[0]).sum();
    assert_eq!(ranks, 28, "only the kept ranks are saved");
    ok(&webpeft(&["generate", "--model", &model, "--adapter", &whole, "--prompt", "The cat", "--max-new-tokens", "3"]));
    ok(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &dir.join("merged")]));
    let err = failure(&train(
        &data,
        &[
            "--method",
            "adalora",
            "--init-r",
            "2",
            "--target-r",
            "3",
            "--steps",
            "2",
            "--lr",
            "1e-3",
            "--out",
            &dir.join("x"),
        ],
    ));
    eprintln!("ROW | AdaLoRA with target_r above init_r | {}", err.lines().last().unwrap_or_default());
    assert!(err.contains("target_r") && err.contains("init_r"), "{err}");
}

/// `--eval-steps 1 --early-stopping-patience 2 --load-best-at-end` at a learning rate that
/// overshoots: the run stops two evaluations after the best one, and the adapter it writes is
/// the best evaluation's, byte for byte what a run stopped at that step writes.
#[test]
fn early_stopping_keeps_the_best_evaluation() {
    let dir = TempDir::new("early-stop");
    let data = write_data(&dir);
    let run = |out: &str, extra: &[&str]| {
        let mut a = vec!["--method", "lora", "--targets", "all-linear", "--r", "4", "--lr", "0.5", "--steps", "12"];
        a.extend(["--schedule", "constant"]);
        a.extend(["--no-shuffle", "--out", out]);
        a.extend_from_slice(extra);
        train(&data, &a)
    };
    let steering = ["--eval-data", &data, "--eval-steps", "1", "--early-stopping-patience", "2", "--load-best-at-end"];
    let out = run(&dir.join("steered"), &steering);
    ok(&out);
    let lines = step_lines(&out);
    let steps = lines.iter().filter(|l| l.get("loss").is_some()).count();
    let evals: Vec<f64> = lines.iter().filter_map(|l| l["eval_loss"].as_f64()).collect();
    let best = lines.iter().find(|l| l.get("best_step").is_some()).expect("a best_step line");
    let best_step = best["best_step"].as_u64().unwrap() as usize;
    assert_eq!(evals.len(), steps, "one evaluation a step: {lines:?}");
    assert!(steps < 12 && best_step + 2 == steps, "stopped at {steps}, best {best_step}: {lines:?}");
    let min = evals.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!((best["best_eval_loss"].as_f64().unwrap() - min).abs() < 1e-6 && evals[best_step - 1] == min, "{lines:?}");
    // The same run stopped at the best step writes the same adapter.
    let stop = best_step.to_string();
    ok(&run(&dir.join("plain"), &["--stop-after", &stop]));
    let file = "adapter_model.safetensors";
    let (a, b) = (std::fs::read(dir.0.join("steered").join(file)), std::fs::read(dir.0.join("plain").join(file)));
    assert!(a.unwrap() == b.unwrap(), "the best evaluation's adapter is not the one written");
    let args = ["--method", "lora", "--early-stopping-patience", "2", "--lr", "1e-3", "--out", &dir.join("x")];
    let err = failure_usage(&train(&data, &args));
    assert!(err.contains("--eval-steps"), "{err}");
}

/// The stderr of a command line clap refuses (exit code 2).
fn failure_usage(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    err
}

#[test]
fn train_each_bottleneck_method_on_a_quantized_base() {
    let dir = TempDir::new("train-bn");
    let data = write_data(&dir);
    for (method, quant) in [("seq_bn", "nf4"), ("double_seq_bn", "q8"), ("par_bn", "nf4")] {
        let out_dir = dir.join(method);
        let out =
            train(&data, &["--method", method, "--quant", quant, "--steps", "3", "--lr", "1e-3", "--out", &out_dir]);
        ok(&out);
        let lines = step_lines(&out);
        assert_eq!(lines.len(), 3, "{method}: {lines:?}");
        assert!(lines.iter().all(|l| l["loss"].as_f64().unwrap().is_finite()), "{method}: {lines:?}");
        let folder = dir.0.join(method);
        assert!(folder.join("adapter.safetensors").is_file(), "{method}: adapter.safetensors missing");
        assert!(folder.join("training_state.safetensors").is_file(), "{method}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(folder.join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(config["model_name"], "llama_gqa", "{method}: {config}");
    }
}

#[test]
fn resuming_equals_an_uninterrupted_run() {
    let dir = TempDir::new("resume");
    let data = write_data(&dir);
    // Dropout and NEFTune's noise make the RNG state part of what must be resumed; the cosine
    // schedule with restarts and its kwargs, warmed up over a ratio of the
    // steps, the schedule's position; an NF4 base, 2-row batches accumulated
    // twice and a seed of its own, options the resumed run must take from the
    // checkpoint, not from the defaults.
    let common = [
        "--method",
        "lora",
        "--dropout",
        "0.1",
        "--lr",
        "1e-2",
        "--schedule",
        "cosine_with_restarts",
        "--schedule-kwargs",
        r#"{"num_cycles": 2}"#,
        "--warmup-ratio",
        "0.25",
        "--neftune-noise-alpha",
        "5",
        "--quant",
        "nf4",
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--seed",
        "3",
    ];
    let run = |extra: &[&str]| {
        let mut args = common.to_vec();
        args.extend_from_slice(extra);
        let out = train(&data, &args);
        ok(&out);
        step_lines(&out)
    };
    let (whole, half) = (dir.join("whole"), dir.join("half"));
    let uninterrupted = run(&["--steps", "4", "--out", &whole]);
    let first = run(&["--steps", "4", "--stop-after", "2", "--out", &half]);
    let model = fixture("llama_gqa");
    // Only --resume: the checkpoint knows the rest.
    let resumed = webpeft(&["train", "--model", &model, "--resume", &half, "--out", &half]);
    ok(&resumed);
    let rest = step_lines(&resumed);
    let losses = |lines: &[serde_json::Value]| lines.iter().map(|l| l["loss"].to_string()).collect::<Vec<_>>();
    assert_eq!(rest[0]["step"], 3);
    let all: Vec<String> = losses(&first).into_iter().chain(losses(&rest)).collect();
    assert_eq!(all, losses(&uninterrupted));
    let grads = |lines: &[serde_json::Value]| lines.iter().map(|l| l["grad_norm"].to_string()).collect::<Vec<_>>();
    assert_eq!(grads(&first).into_iter().chain(grads(&rest)).collect::<Vec<_>>(), grads(&uninterrupted));
    let weights = |d: &str| std::fs::read(std::path::Path::new(d).join("adapter_model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&half), "the resumed adapter differs from the uninterrupted one");

    // Options that agree with the checkpoint are fine; one that contradicts it
    // is refused, naming both values, and the checkpoint is left as it was.
    let state = |d: &str| std::fs::read(std::path::Path::new(d).join("training_state.safetensors")).unwrap();
    let before = state(&whole);
    for (flag, value, saved) in [
        ("--batch-size", "4", "2"),
        ("--quant", "f32", "nf4"),
        ("--seed", "42", "3"),
        ("--lr", "1e-3", "1e-2"),
        ("--r", "4", "8"),
        ("--schedule-kwargs", r#"{"num_cycles": 3}"#, r#"{"num_cycles":2.0}"#),
        ("--warmup-ratio", "0.5", "--warmup 1"),
        ("--schedule", "cosine", "cosine_with_restarts"),
        ("--neftune-noise-alpha", "3", "5"),
    ] {
        let out = webpeft(&["train", "--model", &model, "--resume", &whole, "--out", &whole, flag, value]);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{flag} {value}")) && err.contains(saved), "{flag}: {err}");
    }
    assert!(state(&whole) == before, "a refused resume changed the checkpoint");
    let agreeing = webpeft(&[
        "train",
        "--model",
        &model,
        "--data",
        &data,
        "--resume",
        &whole,
        "--out",
        &whole,
        "--batch-size",
        "2",
        "--quant",
        "nf4",
    ]);
    ok(&agreeing);
    assert!(step_lines(&agreeing).is_empty(), "the run was already complete");
}

/// Logits (B·T·V) of `webpeft logits` on the ids in `tokens`.
fn logits_of(model: &str, tokens: &str, out: &str, adapter: Option<&str>) -> Vec<f32> {
    let mut args = vec!["logits", "--model", model, "--tokens", tokens, "--out", out];
    if let Some(a) = adapter {
        args.extend(["--adapter", a]);
    }
    ok(&webpeft(&args));
    let bytes = std::fs::read(out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    bytemuck::pod_collect_to_vec(st.tensor("logits").unwrap().data())
}

#[test]
fn merged_model_computes_what_base_plus_adapter_did() {
    let dir = TempDir::new("merge");
    let tokens = dir.join("ids.json");
    std::fs::write(&tokens, "[[1, 17, 250, 42, 99, 3, 7, 300], [5, 6, 7, 8, 9, 10, 11, 12]]").unwrap();
    let base = logits_of(&fixture("llama_gqa"), &tokens, &dir.join("b.safetensors"), None);
    for (tag, adapter) in [("lora", fixture("lora/initial_adapter")), ("ia3", fixture("ia3/llama_gqa/final_adapter"))] {
        let merged = dir.join(&format!("merged-{tag}"));
        let out = webpeft(&["merge", "--model", &fixture("llama_gqa"), "--adapter", &adapter, "--out", &merged]);
        ok(&out);
        for name in
            ["model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
        {
            assert!(
                dir.0.join(format!("merged-{tag}")).join(name).is_file(),
                "{tag}: {name} missing from the merged folder"
            );
        }
        let adapted = logits_of(&fixture("llama_gqa"), &tokens, &dir.join("a.safetensors"), Some(&adapter));
        let folded = logits_of(&merged, &tokens, &dir.join("m.safetensors"), None);
        let worst = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert_eq!(adapted.len(), 2 * 8 * 384);
        assert!(worst(&adapted, &folded) < 1e-4, "{tag}: merged vs adapted: {}", worst(&adapted, &folded));
        assert!(worst(&adapted, &base) > 1e-3, "{tag}: the adapter changes nothing: {}", worst(&adapted, &base));
    }
}

#[test]
fn train_stops_on_a_non_finite_loss_and_keeps_the_last_good_state() {
    let dir = TempDir::new("nan");
    let data = write_data(&dir);
    let out_dir = dir.join("out");
    let out = train(&data, &["--method", "lora", "--steps", "4", "--lr", "3e38", "--out", &out_dir]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("error: training step") && !err.contains("panicked"), "{err}");
    let lines = step_lines(&out);
    assert!(!lines.is_empty() && lines.len() < 4, "{lines:?}");
    for name in ["adapter_config.json", "adapter_model.safetensors", "training_state.safetensors"] {
        assert!(dir.0.join("out").join(name).is_file(), "{name} missing");
    }
}

#[test]
fn train_on_a_malformed_line_names_it() {
    let dir = TempDir::new("bad-line");
    let data = dir.join("bad.jsonl");
    std::fs::write(&data, "{\"text\": \"fine\"}\n{\"text\": \"also fine\"}\n{\"text\": oops}\n").unwrap();
    let err = failure(&train(&data, &["--method", "lora", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")]));
    assert!(err.contains("bad.jsonl, line 3") && err.contains("not valid JSON"), "{err}");
}

#[test]
fn train_on_an_empty_file_says_it_is_empty() {
    let dir = TempDir::new("empty");
    let data = dir.join("empty.jsonl");
    std::fs::write(&data, "\n").unwrap();
    let err = failure(&train(&data, &["--method", "lora", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")]));
    assert!(err.contains("empty.jsonl") && err.contains("empty"), "{err}");
}

#[test]
fn train_with_an_unknown_target_lists_the_modules() {
    let dir = TempDir::new("targets");
    let data = write_data(&dir);
    let args = ["--method", "lora", "--targets", "nonexistent_proj", "--steps", "1", "--lr", "1e-3", "--out"];
    let err = failure(&train(&data, &[&args[..], &[&dir.join("o")]].concat()));
    assert!(err.contains("--targets") && err.contains("nonexistent_proj") && err.contains("q_proj"), "{err}");
}

#[test]
fn train_with_rank_zero_is_refused() {
    let dir = TempDir::new("r0");
    let data = write_data(&dir);
    let err = failure(&train(
        &data,
        &["--method", "lora", "--r", "0", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")],
    ));
    assert!(err.contains("--r") && err.contains("at least 1"), "{err}");
    assert!(!dir.0.join("o").exists(), "a refused run left its --out folder behind");
}

#[test]
fn train_with_an_out_of_range_option_names_its_flag() {
    let dir = TempDir::new("batch0");
    let data = write_data(&dir);
    for (flag, value) in [("--batch-size", "0"), ("--grad-accum", "0"), ("--max-grad-norm", "-1")] {
        let given = format!("{flag}={value}");
        let out = train(&data, &["--method", "lora", &given, "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")]);
        let err = failure(&out);
        assert!(err.contains(&format!("{flag}: ")), "{err}");
        assert!(!dir.0.join("o").exists(), "a refused run left its --out folder behind");
    }
}

#[test]
fn train_on_a_folder_without_config_names_config_json() {
    let dir = TempDir::new("noconfig");
    let data = write_data(&dir);
    let empty = dir.join("empty-model");
    std::fs::create_dir_all(&empty).unwrap();
    let out = webpeft(&[
        "train",
        "--model",
        &empty,
        "--data",
        &data,
        "--method",
        "lora",
        "--lr",
        "1e-3",
        "--out",
        &dir.join("o"),
    ]);
    let err = failure(&out);
    assert!(err.contains("config.json") && !err.contains("tokenizer.json"), "{err}");
}

#[test]
fn train_with_an_unknown_method_lists_the_methods() {
    let dir = TempDir::new("method");
    let data = write_data(&dir);
    let out = train(&data, &["--method", "foo", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("foo") && err.contains("seq_bn") && err.contains("lora"), "{err}");
}

#[test]
fn train_from_an_adapter_of_another_peft_type_is_refused() {
    let dir = TempDir::new("ia3");
    let data = write_data(&dir);
    let ia3 = dir.join("ia3");
    std::fs::create_dir_all(&ia3).unwrap();
    std::fs::write(dir.0.join("ia3/adapter_config.json"), r#"{"peft_type": "LOHA", "r": 8, "task_type": "CAUSAL_LM"}"#)
        .unwrap();
    std::fs::copy(
        format!("{}/adapter_model.safetensors", fixture("lora/initial_adapter")),
        dir.0.join("ia3/adapter_model.safetensors"),
    )
    .unwrap();
    let args = ["--method", "lora", "--init-adapter", &ia3, "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")];
    let err = failure(&train(&data, &args));
    assert!(err.contains("--init-adapter") && err.contains("LOHA") && err.contains("LORA"), "{err}");
    // PEFT's (IA)³ folder with --method lora names both methods.
    let peft_ia3 = fixture("ia3/llama_gqa/initial_adapter");
    let args =
        ["--method", "lora", "--init-adapter", &peft_ia3, "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")];
    let err = failure(&train(&data, &args));
    assert!(err.contains("holds a ia3 adapter, but --method is lora"), "{err}");
    // A LoRA folder with a bottleneck --method names both.
    let lora = fixture("lora/initial_adapter");
    let args = ["--method", "seq_bn", "--init-adapter", &lora, "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")];
    let err = failure(&train(&data, &args));
    assert!(err.contains("holds a lora adapter, but --method is seq_bn"), "{err}");
}

#[test]
fn merging_a_bottleneck_adapter_is_refused() {
    let dir = TempDir::new("merge-bn");
    let out = webpeft(&[
        "merge",
        "--model",
        &fixture("llama_gqa"),
        "--adapter",
        &fixture("bottleneck/seq_bn/initial_adapter"),
        "--out",
        &dir.join("merged"),
    ]);
    let err = failure(&out);
    assert!(
        err.contains(
            "merge applies to LoRA and (IA)³ adapters; bottleneck adapters cannot be folded into the base weights"
        ),
        "{err}"
    );
    assert!(!dir.0.join("merged").exists());
}

#[test]
fn train_on_a_directory_or_a_symlink_loop_names_the_path() {
    let dir = TempDir::new("notafile");
    let folder = dir.join("data_dir");
    std::fs::create_dir_all(&folder).unwrap();
    let err = failure(&train(&folder, &["--method", "lora", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")]));
    eprintln!("ROW | --data pointing to a directory | {}", err.lines().last().unwrap_or_default());
    assert!(err.contains("data_dir") && err.to_lowercase().contains("directory"), "{err}");
    let (a, b) = (dir.join("loop_a"), dir.join("loop_b"));
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let err = failure(&train(&a, &["--method", "lora", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")]));
    eprintln!("ROW | --data pointing to a symlink loop | {}", err.lines().last().unwrap_or_default());
    assert!(err.contains("loop_a") && err.contains("symbolic links"), "{err}");
}

/// The first step's pipelines are kept in the cache folder for the next run,
/// where the adapter has wgpu's pipeline cache (Vulkan). Mesa's own shader
/// cache stays where it was (a cold one would compile everything again).
#[test]
fn train_keeps_compiled_pipelines_in_the_cache_folder() {
    let dir = TempDir::new("pipecache");
    let data = write_data(&dir);
    let cache = dir.0.join("cache");
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let mesa = std::env::var("XDG_CACHE_HOME").unwrap_or_else(|_| format!("{home}/.cache"));
    let model = fixture("llama_gqa");
    let out = Command::new(env!("CARGO_BIN_EXE_webpeft"))
        .args(["train", "--model", &model, "--data", &data, "--seq-len", "32", "--method", "lora", "--steps", "1"])
        .args(["--lr", "1e-3", "--out", &dir.join("o")])
        .env("XDG_CACHE_HOME", &cache)
        .env("MESA_SHADER_CACHE_DIR", &mesa) // Mesa adds mesa_shader_cache/ itself
        .output()
        .unwrap();
    ok(&out);
    let options = webpeft::GpuOptions { pipeline_cache_dir: Some(dir.0.join("probe")), ..Default::default() };
    let gpu = pollster::block_on(webpeft::Gpu::with_options(options)).unwrap();
    let has_cache = gpu.features().contains(wgpu::Features::PIPELINE_CACHE) && gpu.info().backend == "vulkan";
    let files: Vec<_> = std::fs::read_dir(cache.join("webpeft/pipelines"))
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.metadata().is_ok_and(|m| m.len() > 0)).collect())
        .unwrap_or_default();
    assert_eq!(!files.is_empty(), has_cache, "pipeline cache files {files:?} (adapter has one: {has_cache})");
}

/// Two text preference pairs (TRL's `{"prompt", "chosen", "rejected"}`).
const PAIRS_JSONL: &str = r#"{"prompt": "The little robot", "chosen": " walked home in the rain", "rejected": " ate a blue stone quickly"}
{"prompt": "Once upon a time", "chosen": " a girl found a map", "rejected": " the the the dog"}
"#;

/// `webpeft train --objective dpo|orpo` with `args` on [`PAIRS_JSONL`], both pairs in every batch.
fn train_pairs(dir: &TempDir, args: &[&str]) -> std::process::Output {
    let data = dir.join("pairs.jsonl");
    std::fs::write(&data, PAIRS_JSONL).unwrap();
    let out_dir = dir.join("out");
    let common = ["--method", "lora", "--batch-size", "2", "--lr", "1e-2", "--schedule", "constant", "--out", &out_dir];
    train(&data, &[args, &common].concat())
}

/// The step lines' values of `key`.
fn column(lines: &[serde_json::Value], key: &str) -> Vec<f64> {
    lines.iter().map(|l| l[key].as_f64().unwrap_or_else(|| panic!("{key} in {l}"))).collect()
}

/// MPO (TRL's loss_type list sigmoid, bco_pair, sft with loss_weights 0.8, 0.2, 1): at step 1 the
/// policy is the reference (c = r = 0, bco_pair's running mean 0), so the loss is 0.8·ln 2 + 0.2·2 ln 2
/// + nll_loss; stopped and resumed, the run goes on as one (bco_pair's running mean is in the checkpoint).
#[test]
fn train_mpo_stop_resume_equals_uninterrupted() {
    let dir = TempDir::new("mpo");
    let data = dir.join("pairs.jsonl");
    std::fs::write(&data, PAIRS_JSONL).unwrap();
    let mpo = ["--objective", "dpo", "--loss-type", "sigmoid,bco_pair,sft", "--loss-weights", "0.8,0.2,1"];
    let method = [&["--method", "lora", "--batch-size", "2"][..], &mpo].concat();
    let whole = stop_resume_equals_uninterrupted(&dir, &data, &method);
    assert!(std::path::Path::new(&whole).join("adapter_model.safetensors").is_file());
    let out = train_pairs(&dir, &[&mpo[..], &["--steps", "2"]].concat());
    ok(&out);
    let lines = step_lines(&out);
    let (loss, nll) = (column(&lines, "loss"), column(&lines, "nll_loss"));
    let want = 1.2 * std::f64::consts::LN_2 + nll[0];
    assert!((loss[0] - want).abs() < 1e-5 * want, "{lines:?}");
    // A list's weights: one each.
    let bad = [&mpo[..4], &["--loss-weights", "1,2", "--steps", "1"]].concat();
    let err = failure(&train_pairs(&dir, &bad));
    assert!(err.contains("--loss-weights: 2 loss weights for 3 loss types"), "{err}");
}

#[test]
fn train_dpo_prints_trls_reward_fields_and_the_margin_grows() {
    let dir = TempDir::new("dpo");
    let out = train_pairs(&dir, &["--objective", "dpo", "--label-smoothing", "0.1", "--steps", "4"]);
    ok(&out);
    let lines = step_lines(&out);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let (loss, margins) = (column(&lines, "loss"), column(&lines, "rewards/margins"));
    let (chosen, rejected) = (column(&lines, "rewards/chosen"), column(&lines, "rewards/rejected"));
    let accuracies = column(&lines, "rewards/accuracies");
    // logps/*: the policy's log-probs, below 0.
    assert!(column(&lines, "logps/chosen").iter().chain(&column(&lines, "logps/rejected")).all(|&l| l < 0.0));
    // logits/*: the policy's mean logits over the completions (a random model's: near 0, never exactly).
    let logits = [column(&lines, "logits/chosen"), column(&lines, "logits/rejected")].concat();
    assert!(logits.iter().all(|&l| l != 0.0 && l.abs() < 1.0), "{logits:?}");
    // Step 1 is measured before any update: the LoRA's B is 0, the policy is the reference,
    // every reward 0 and the loss log 2 (label smoothing does not change it at h = 0).
    assert!((loss[0] - std::f64::consts::LN_2).abs() < 1e-6, "{loss:?}");
    assert_eq!((chosen[0], rejected[0], margins[0], accuracies[0]), (0.0, 0.0, 0.0, 0.0), "{lines:?}");
    for s in 1..4 {
        assert!((margins[s] - (chosen[s] - rejected[s])).abs() < 1e-5, "margins = chosen − rejected: {lines:?}");
        assert!(margins[s] > margins[s - 1] && loss[s] < loss[s - 1], "step {}: {lines:?}", s + 1);
    }
    assert_eq!(accuracies[3], 1.0, "{lines:?}");
    assert!(chosen[3] > 0.0 && rejected[3] < 0.0, "{lines:?}");
    let state = dir.0.join("out/training_state.safetensors");
    assert!(dir.0.join("out/adapter_model.safetensors").is_file() && state.is_file());
    // --precompute-ref-log-probs scores the reference once: the same lines, bit for bit.
    let args = ["--objective", "dpo", "--label-smoothing", "0.1", "--steps", "4", "--precompute-ref-log-probs"];
    let out = train_pairs(&dir, &args);
    ok(&out);
    let precomputed = step_lines(&out);
    for key in ["loss", "rewards/margins", "rewards/chosen", "grad_norm"] {
        assert_eq!(column(&precomputed, key), column(&lines, key), "{key}");
    }
    // Held-out pairs: TRL's eval_loss and eval_rewards/*, every step and for early stopping.
    let pairs = dir.0.join("pairs.jsonl");
    let pairs = pairs.to_str().unwrap();
    let out = train_pairs(&dir, &["--objective", "dpo", "--steps", "2", "--eval-data", pairs, "--eval-steps", "1"]);
    ok(&out);
    let evals: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l.get("eval_loss").is_some())
        .collect();
    assert_eq!(evals.len(), 2, "{evals:?}");
    for key in ["eval_rewards/chosen", "eval_rewards/accuracies", "eval_rewards/margins", "eval_logps/rejected"] {
        assert!(evals.iter().all(|e| e[key].is_f64()), "{key}: {evals:?}");
    }
    let out = train_pairs(&dir, &["--objective", "orpo", "--precompute-ref-log-probs", "--steps", "1"]);
    let err = failure(&out);
    assert!(err.contains("--precompute-ref-log-probs") && err.contains("no reference model"), "{err}");
    // ORPO's lines add its own terms; loss = nll_loss − β·log_odds_ratio (TRL's sign).
    let out = train_pairs(&dir, &["--objective", "orpo", "--beta", "0.2", "--steps", "2"]);
    ok(&out);
    let lines = step_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (loss, nll, ratio) = (column(&lines, "loss"), column(&lines, "nll_loss"), column(&lines, "log_odds_ratio"));
    for key in ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "log_odds_chosen"] {
        assert!(column(&lines, key).iter().all(|v| v.is_finite()), "{key}: {lines:?}");
    }
    for s in 0..2 {
        assert!((loss[s] - (nll[s] - 0.2 * ratio[s])).abs() < 1e-4 * loss[s].abs(), "{lines:?}");
    }
    // IPO with RPO's NLL term: at step 1 (policy = reference) h = 0, so loss = (1/(2β))² + α·nll_loss.
    let out = train_pairs(&dir, &["--objective", "dpo", "--loss-type", "ipo", "--rpo-alpha", "0.5", "--steps", "3"]);
    ok(&out);
    let lines = step_lines(&out);
    let (loss, nll) = (column(&lines, "loss"), column(&lines, "nll_loss"));
    assert!((loss[0] - (25.0 + 0.5 * nll[0])).abs() < 1e-4 * loss[0], "{lines:?}");
    assert!(loss[2] < loss[0] && column(&lines, "rewards/margins")[2] > 0.0, "{lines:?}");
    // SimPO (CPO without its NLL term): loss = mean −logσ(β·h − γ), rewards β·π; TRL logs nll_loss 0.
    let out = train_pairs(&dir, &["--objective", "cpo", "--loss-type", "simpo", "--cpo-alpha", "0", "--steps", "3"]);
    ok(&out);
    let lines = step_lines(&out);
    let (loss, margins) = (column(&lines, "loss"), column(&lines, "rewards/margins"));
    assert_eq!(column(&lines, "nll_loss"), [0.0; 3], "{lines:?}");
    for s in 0..3 {
        // The mean margin is β·h − … averaged over the two pairs (β 0.1, γ 0.5: TRL's defaults); the loss, a
        // mean of a convex function of each pair's, is at least its value at the mean (Jensen), and close to it.
        let at_mean = (1.0 + (0.5 - margins[s]).exp()).ln();
        assert!(loss[s] >= at_mean - 1e-6 && loss[s] < at_mean + 0.01, "step {}: {lines:?}", s + 1);
    }
    assert!(loss[2] < loss[0] && margins[2] > margins[0], "{lines:?}");
    // KTO on one desirable and one undesirable example: TRL's KTO fields.
    let data = dir.join("unpaired.jsonl");
    let unpaired =
        "{\"prompt\": \"The little robot\", \"completion\": \" walked home in the rain\", \"label\": true}\n\
                    {\"prompt\": \"Once upon a time\", \"completion\": \" the the the dog\", \"label\": false}\n";
    std::fs::write(&data, unpaired).unwrap();
    let kto = ["--objective", "kto", "--undesirable-weight", "1.5", "--steps", "3", "--batch-size", "2"];
    let out = train(&data, &[&kto[..], &["--method", "lora", "--lr", "1e-2", "--out", &dir.join("kto")]].concat());
    ok(&out);
    let lines = step_lines(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for key in ["kl", "rewards/chosen_sum", "rewards/rejected_sum", "logps/chosen_sum", "logps/rejected_sum"] {
        assert!(column(&lines, key).iter().all(|v| v.is_finite()), "{key}: {lines:?}");
    }
    assert_eq!(column(&lines, "count/chosen"), [1.0; 3], "a batch of 2 holds one of each: {lines:?}");
    assert!(lines.iter().all(|l| l.get("rewards/margins").is_none()), "{lines:?}");
    // Step 1: policy = reference, every log-ratio and the KL estimate 0, each loss 1 − σ(0) = ½ (times its weight).
    let loss = column(&lines, "loss");
    assert!((loss[0] - (0.5 + 1.5 * 0.5) / 2.0).abs() < 1e-6, "{lines:?}");
    assert!(loss[2] < loss[0], "{lines:?}");
    // loss_type apo_zero_unpaired: no KL rows, so a batch of one works; kl is 0, the step-1 loss the same ½s.
    let apo = ["--objective", "kto", "--loss-type", "apo_zero_unpaired", "--undesirable-weight", "1.5", "--steps", "2"];
    let tail = ["--method", "lora", "--batch-size", "1", "--lr", "1e-2", "--out", &dir.join("apo")];
    let out = train(&data, &[&apo[..], &tail].concat());
    ok(&out);
    let lines = step_lines(&out);
    assert_eq!(column(&lines, "kl"), [0.0; 2], "{lines:?}");
    let loss = column(&lines, "loss");
    // One example a step: the desirable one's 1 − σ(0), then the undesirable one's 1.5·σ(β·c), β·c its reward.
    let reward = column(&lines, "rewards/rejected_sum")[1];
    let want = 1.5 / (1.0 + (-reward).exp());
    assert!((loss[0] - 0.5).abs() < 1e-6 && (loss[1] - want).abs() < 1e-6, "{lines:?}");
}

#[test]
fn preference_options_and_lines_that_do_not_fit_are_refused() {
    let dir = TempDir::new("dpo-bad");
    let refused = |args: &[&str], data: Option<&str>| {
        let out = match data {
            Some(text) => {
                let path = dir.join("bad_pairs.jsonl");
                std::fs::write(&path, text).unwrap();
                train(
                    &path,
                    &[args, &["--method", "lora", "--steps", "1", "--lr", "1e-3", "--out", &dir.join("o")]].concat(),
                )
            }
            None => train_pairs(&dir, &[args, &["--steps", "1"]].concat()),
        };
        let err = failure(&out);
        let line = err.lines().rfind(|l| l.starts_with("error: ")).unwrap().to_string();
        eprintln!("ROW | {args:?} | {line}");
        assert!(!dir.0.join("o").exists() && !dir.0.join("out").exists(), "a refused run left its --out folder behind");
        line
    };
    let missing =
        "{\"prompt\": \"a\", \"chosen\": \" b\", \"rejected\": \" c\"}\n{\"prompt\": \"a\", \"chosen\": \" b\"}\n";
    let line = refused(&["--objective", "dpo"], Some(missing));
    assert!(line.ends_with("bad_pairs.jsonl, line 2: missing the `rejected` field of a preference pair"), "{line}");
    let empty = "{\"prompt\": \"a\", \"chosen\": \"\", \"rejected\": \" c\"}\n";
    let line = refused(&["--objective", "orpo"], Some(empty));
    assert!(line.ends_with("bad_pairs.jsonl, line 1: `chosen` is empty: a preference needs two answers"), "{line}");
    let line = refused(&["--objective", "dpo"], Some(TRAIN_JSONL));
    assert!(line.ends_with("bad_pairs.jsonl, line 1: missing the `prompt` field of a preference pair"), "{line}");
    for (args, want) in [
        (&["--objective", "sft", "--beta", "0.2"][..], "error: --beta: applies to dpo, orpo, cpo, kto and grpo"),
        (&["--objective", "sft", "--loss-type", "sigmoid"], "error: --loss-type: expected one of nll, dft for sft, got \"sigmoid\""),
        (
            &["--objective", "orpo", "--loss-type", "dft"],
            "error: --loss-type: applies to sft, dpo, cpo, kto and grpo",
        ),
        (&["--objective", "orpo", "--label-smoothing", "0.1"], "error: --label-smoothing: applies to dpo and cpo"),
        (
            &["--objective", "dpo", "--label-smoothing", "0.7"],
            "error: --label-smoothing: must be in [0, 0.5] (cDPO), got 0.7",
        ),
        (&["--objective", "dpo", "--beta", "0"], "error: --beta: must be a finite number > 0, got 0"),
        (
            &["--objective", "dpo", "--loss-type", "ipo", "--label-smoothing", "0.1"],
            "error: --label-smoothing: applies to the sigmoid, robust, exo_pair, aot and aot_pair losses, not ipo (TRL ignores it there)",
        ),
        (
            &["--objective", "dpo", "--loss-type", "robust", "--label-smoothing", "0.5"],
            "error: --label-smoothing: must be in [0, 0.5) (robust divides by 1 − 2ε), got 0.5",
        ),
        (&["--objective", "dpo", "--discopop-tau", "0.1"], "error: --discopop-tau: applies to the discopop loss, not sigmoid"),
        (&["--objective", "orpo", "--rpo-alpha", "1"], "error: --rpo-alpha: applies to dpo only"),
        (&["--objective", "dpo", "--cpo-alpha", "0"], "error: --cpo-alpha: applies to cpo only"),

        (
            &["--objective", "dpo", "--loss-type", "simpo"],
            "error: --loss-type: expected one of sigmoid, robust, exo_pair, hinge, ipo, sppo_hard, nca_pair, apo_zero, \
             apo_down, discopop, aot, aot_pair, bco_pair, sft for dpo, got \"simpo\"",
        ),
        (&["--objective", "cpo", "--simpo-gamma", "1"], "error: --simpo-gamma: applies to the simpo loss, not sigmoid"),
        (
            &["--objective", "cpo", "--loss-type", "hinge", "--label-smoothing", "0.1"],
            "error: --label-smoothing: applies to the sigmoid and simpo losses, not hinge (TRL ignores it there)",
        ),
        (&["--objective", "dpo", "--rpo-alpha", "inf"], "error: --rpo-alpha: must be a finite number ≥ 0, got inf"),
        (&["--objective", "dpo", "--packing"], "error: --packing: does not apply to dpo: a pair's rows stay whole"),
    ] {
        assert_eq!(refused(args, None), want);
    }
    let line = refused(&["--objective", "kto", "--batch-size", "1"], Some(PAIRS_JSONL));
    assert_eq!(
        line,
        "error: --batch-size: KTO needs at least 2 examples a batch (its KL term pairs each prompt with another \
         example's completion), got 1"
    );
    let sft = write_data(&dir);
    // Held-out data is read as the objective reads its training data: SFT lines are not pairs.
    let line = refused(&["--objective", "dpo", "--eval-data", &sft], None);
    assert_eq!(line, format!("error: {sft}, line 1: missing the `prompt` field of a preference pair"));
}

/// A failed `export-gguf` leaves no file behind (it had created the output
/// before the export found the tokenizer it cannot name), and says why.
#[test]
fn export_gguf_failure_removes_its_partial_file() {
    let dir = TempDir::new("gguf");
    let out = dir.join("model.gguf");
    let err = failure(&webpeft(&["export-gguf", "--model", &fixture("llama_gqa"), "--type", "f16", "--out", &out]));
    assert!(err.contains("chkhsh 9441b621") && err.contains("--tokenizer-pre"), "{err}");
    assert!(!std::path::Path::new(&out).exists(), "{out} was left behind");
    // The same export with the pre-tokenizer named writes the file.
    let args = ["export-gguf", "--model", &fixture("llama_gqa"), "--type", "f16", "--tokenizer-pre", "llama-bpe"];
    ok(&webpeft(&[&args[..], &["--out", &out]].concat()));
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
    // Failing over an existing file removes it too: its old bytes were already truncated.
    let err = failure(&webpeft(&["export-gguf", "--model", &fixture("llama_gqa"), "--type", "q8_0", "--out", &out]));
    assert!(err.contains("chkhsh"), "{err}");
    assert!(!std::path::Path::new(&out).exists(), "{out} was left behind");
}

/// A GRPO run stopped after 2 of its 4 steps (--stop-after) and resumed with only --resume goes on as the
/// run that was not stopped: the same step lines (its sampled completions' rewards, losses and gradient
/// norms: the run's generator, the epoch's prompt order and the dropout's generator come back) and the same
/// adapter, bit for bit; a GRPO flag that contradicts the checkpoint is refused.
#[test]
fn a_grpo_run_resumes_as_if_never_stopped() {
    let dir = TempDir::new("grpo_resume");
    let data = dir.join("prompts.jsonl");
    std::fs::write(&data, "{\"prompt\": \"The river rose and\"}\n{\"prompt\": \"Once\"}\n{\"prompt\": \"The fox\"}\n")
        .unwrap();
    // The first token's id mod 5: rewards that differ within a group, so the steps move the adapter.
    let first_id = r#"cmd:awk '{ s=$0; sub(/.*"completion_ids":\[/, "", s); split(s, a, ","); print a[1] % 5 }'"#;
    let common = [
        "--objective",
        "grpo",
        "--num-generations",
        "2",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--max-completion-length",
        "5",
        "--reward",
        first_id,
        "--method",
        "lora",
        "--dropout",
        "0.1",
        "--lr",
        "5e-2",
    ];
    let run = |extra: &[&str]| {
        let out = train(&data, &[&common[..], extra].concat());
        ok(&out);
        step_lines(&out)
    };
    // The lines without their timings.
    let untimed = |lines: Vec<serde_json::Value>| {
        lines
            .into_iter()
            .map(|mut l| {
                l.as_object_mut().unwrap().remove("tokens_per_s");
                l
            })
            .collect::<Vec<_>>()
    };
    let (whole, half) = (dir.join("whole"), dir.join("half"));
    let uninterrupted = untimed(run(&["--out", &whole]));
    let first = untimed(run(&["--stop-after", "2", "--out", &half]));
    let model = fixture("llama_gqa");
    let resumed = webpeft(&["train", "--model", &model, "--resume", &half, "--out", &half]);
    ok(&resumed);
    let rest = untimed(step_lines(&resumed));
    assert_eq!(rest[0]["step"], 3);
    let moved = uninterrupted.iter().filter(|l| l["grad_norm"].as_f64().unwrap() > 0.0).count();
    assert!(moved >= 2, "steps that moved the adapter: {uninterrupted:?}");
    assert_eq!(first.into_iter().chain(rest).collect::<Vec<_>>(), uninterrupted);
    let weights = |d: &str| std::fs::read(std::path::Path::new(d).join("adapter_model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&half), "the resumed adapter differs from the uninterrupted one");
    for (flag, value, saved) in [("--num-generations", "4", "2"), ("--reward", "think_format", "cmd:awk")] {
        let out = webpeft(&["train", "--model", &model, "--resume", &whole, "--out", &whole, flag, value]);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{flag} {value}")) && err.contains(saved), "{flag}: {err}");
    }
}

/// `train --objective grpo`: prompts of text and of messages, think_format and a shell command
/// (awk: the completion's token count) as rewards, β 0.04: each step's line carries TRL's GRPO
/// metrics, the command's rewards reach the step (its mean is the tokens'), and the adapter
/// files are PEFT's; misused flags are refused by name.
#[test]
fn train_grpo_samples_scores_and_steps() {
    let dir = TempDir::new("grpo");
    let data = dir.join("prompts.jsonl");
    let prompts = "{\"prompt\": \"The river rose and\", \"answer\": \"1\"}\n\
                   {\"prompt\": [{\"role\": \"user\", \"content\": \"Name a number.\"}]}\n";
    std::fs::write(&data, prompts).unwrap();
    let count =
        r#"cmd:awk '{ s=$0; sub(/.*"completion_ids":\[/, "", s); sub(/\].*/, "", s); print split(s, a, ",") }'"#;
    let grpo = [
        "--objective",
        "grpo",
        "--num-generations",
        "3",
        "--batch-size",
        "3",
        "--grad-accum",
        "2",
        "--steps",
        "2",
        "--max-completion-length",
        "6",
        "--reward",
        "think_format",
        "--reward",
        count,
        "--reward-weights",
        "1,0.5",
        "--beta",
        "0.04",
        "--loss-type",
        "grpo",
    ];
    let held_out = dir.join("held_out.jsonl");
    std::fs::write(&held_out, "{\"prompt\": \"The fox\"}\n{\"prompt\": \"Numbers:\"}\n{\"prompt\": \"Once\"}\n")
        .unwrap();
    let tail = ["--method", "lora", "--lr", "1e-2", "--eval-data", &held_out, "--out", &dir.join("out")];
    let out = train(&data, &[&grpo[..], &tail].concat());
    ok(&out);
    let mut lines = step_lines(&out);
    // TRL's evaluate() at the end: the held-out prompts' completions in batches of 3, its eval_ metrics.
    let eval = lines.pop().unwrap();
    for key in
        ["eval_loss", "eval_reward", "eval_reward_std", "eval_kl", "eval_entropy", "eval_completions/mean_length"]
    {
        assert!(eval[key].as_f64().is_some_and(f64::is_finite), "{key}: {eval}");
    }
    assert_eq!(eval["eval_rewards/cmd_1/mean"], eval["eval_completions/mean_length"], "{eval}");
    assert_eq!(eval["eval_num_tokens"], lines[1]["num_tokens"], "{eval}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    for key in ["reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "kl", "rewards/cmd_1/std"] {
        assert!(column(&lines, key).iter().all(|v| v.is_finite()), "{key}: {lines:?}");
    }
    // TRL's completions/* and num_tokens, which counts on over the generations.
    let (min, max) = (column(&lines, "completions/min_length"), column(&lines, "completions/max_length"));
    let terminated = column(&lines, "completions/max_terminated_length");
    assert!((0..2).all(|i| min[i] <= max[i] && max[i] <= 6.0 && terminated[i] <= max[i]), "{lines:?}");
    let tokens = column(&lines, "num_tokens");
    assert!(tokens[0] > 4.0 * min[0] && tokens[1] > tokens[0], "{lines:?}");
    assert_eq!(column(&lines, "rewards/think_format_reward/mean"), [0.0; 2], "{lines:?}");
    assert_eq!(column(&lines, "rewards/cmd_1/mean"), column(&lines, "completions/mean_length"), "{lines:?}");
    assert_eq!(column(&lines, "kl")[0], 0.0, "step 1: the adapter's B is 0, the policy is the reference");
    let written = |f: &str| std::path::Path::new(&dir.join(f)).exists();
    assert!(written("out/adapter_model.safetensors") && written("out/adapter_config.json"));
    // steps_per_generation 2 (generation_batch_size 6 over batches of 3) over accumulation 1 and num_iterations
    // 2, GSPO's sequence-level ratios, the policy term on the top half of the tokens by entropy: four optimizer
    // steps on each generation of 2 prompts × 3 completions (the last generation takes the one step left), its
    // metrics on each line; the ratios move past the first and the clip ratios are logged.
    let iterations = [
        "--objective",
        "grpo",
        "--num-generations",
        "3",
        "--batch-size",
        "3",
        "--generation-batch-size",
        "6",
        "--importance-sampling-level",
        "sequence",
        "--top-entropy-quantile",
        "0.5",
        "--steps",
        "5",
        "--max-completion-length",
        "6",
        "--reward",
        count,
        "--num-iterations",
        "2",
        "--epsilon",
        "0.1",
        "--delta",
        "1.5",
    ];
    let out =
        train(&data, &[&iterations[..], &["--method", "lora", "--lr", "5e-2", "--out", &dir.join("mu")]].concat());
    ok(&out);
    let lines = step_lines(&out);
    assert_eq!(column(&lines, "step"), [1.0, 2.0, 3.0, 4.0, 5.0], "{lines:?}");
    assert!(lines[1..4].iter().all(|l| l["reward"] == lines[0]["reward"]), "one generation, four steps: {lines:?}");
    for key in ["clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"] {
        assert!(column(&lines, key).iter().all(|v| (0.0..=1.0).contains(v)), "{key}: {lines:?}");
    }
    assert_eq!(column(&lines, "clip_ratio/region_mean")[0], 0.0, "the first iteration's ratio is 1: {lines:?}");

    // Each refusal: the base run (2 completions a prompt, batches of 2) with one flag changed or added.
    let refused = |flags: &[&str], needle: &str| {
        let base = ["--objective", "grpo", "--batch-size", "2", "--steps", "1"];
        let out_dir = dir.join("x");
        let tail = ["--lr", "1e-2", "--out", &out_dir];
        let mut all = base.to_vec();
        for defaults in [
            ["--num-generations", "2"],
            ["--reward", "think_format"],
            ["--method", "lora"],
            ["--max-completion-length", "4"],
        ] {
            if !flags.contains(&defaults[0]) {
                all.extend(defaults);
            }
        }
        let out = train(&data, &[&all[..], flags, &tail].concat());
        assert!(!out.status.success(), "{flags:?}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(needle), "{flags:?}: {e}");
    };
    refused(&["--num-generations", "4"], "--num-generations: GRPO needs at least 2 completions a prompt (got 4)");
    refused(
        &["--grad-accum", "2", "--steps-per-generation", "3"],
        "--steps-per-generation: 3 must be a positive multiple",
    );
    refused(&["--importance-sampling-level", "seq"], "--importance-sampling-level: expected token or sequence");
    refused(
        &["--generation-batch-size", "3"],
        "--generation-batch-size: 3 must be a positive multiple of batch_size (2)",
    );
    refused(&["--generation-batch-size", "4", "--steps-per-generation", "2"], "--generation-batch-size: give it or");
    refused(&["--top-entropy-quantile", "1.5"], "--top-entropy-quantile: must be in [0, 1], got 1.5");
    refused(
        &["--num-generations", "3", "--grad-accum", "3", "--eval-data", &data],
        "--eval-data: an evaluation batch (--batch-size 2) must be a multiple of --num-generations (3)",
    );
    refused(&["--reward", "accuracy"], "--reward \"accuracy\"");
    refused(&["--reward-weights", "1,2"], "--reward-weights");
    refused(&["--scale-rewards", "mean"], "--scale-rewards: expected group, batch or none");
    refused(&["--method", "prompt_tuning"], "virtual tokens");
    refused(&["--reward", "cmd:echo 1"], "wrote 1 rewards for 2 completions");
    refused(&["--max-completion-length", "128"], "--max-completion-length: 128 leaves no room for a prompt");
    let sft = train(&data, &["--num-generations", "4", "--method", "lora", "--lr", "1e-2", "--out", &dir.join("y")]);
    assert!(
        String::from_utf8_lossy(&sft.stderr).contains("--num-generations applies to --objective grpo and rloo only")
    );
}

/// `train --objective rloo`: TRL's RLOOTrainer on the same prompts and rewards (2 completions a prompt
/// and β 0.05 by default, normalised advantages, rewards clipped): each step's line carries its
/// metrics and the generation's kl; a run stopped after its first step and resumed with only --resume
/// goes on as RLOO to the same lines and adapter; GRPO's flags are refused for it and its own for GRPO.
#[test]
fn train_rloo_samples_scores_and_steps() {
    let dir = TempDir::new("rloo");
    let data = dir.join("prompts.jsonl");
    std::fs::write(&data, "{\"prompt\": \"The river rose and\"}\n{\"prompt\": \"Once\"}\n").unwrap();
    let count =
        r#"cmd:awk '{ s=$0; sub(/.*"completion_ids":\[/, "", s); sub(/\].*/, "", s); print split(s, a, ",") }'"#;
    let rloo = [
        "--objective",
        "rloo",
        "--batch-size",
        "2",
        "--steps",
        "3",
        "--max-completion-length",
        "6",
        "--reward",
        count,
        "--normalize-advantages",
        "--reward-clip-range",
        "1,5",
        "--method",
        "lora",
        "--lr",
        "5e-2",
    ];
    let (whole, half) = (dir.join("whole"), dir.join("half"));
    // TRL's log_completions on stderr: the first of each generation's two, with its reward and advantage.
    let out =
        train(&data, &[&rloo[..], &["--out", &whole, "--log-completions", "--num-completions-to-print", "1"]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    let logged: Vec<&str> = err.lines().filter(|l| l.contains(" → ") && l.contains("cmd_0 ")).collect();
    assert!(err.contains("completions of step 1 (prompt → completion: rewards, advantage):"), "{err}");
    assert_eq!(logged.len(), 3, "three steps, one completion each: {err}");
    assert!(logged.iter().all(|l| l.contains(", advantage ")), "{err}");
    let lines = untimed(&out);
    assert_eq!(column(&lines, "step"), [1.0, 2.0, 3.0], "{lines:?}");
    for key in ["reward", "reward_std", "kl", "entropy", "clip_ratio/region_mean", "completions/mean_length"] {
        assert!(column(&lines, key).iter().all(|v| v.is_finite()), "{key}: {lines:?}");
    }
    assert_eq!(column(&lines, "kl")[0], 0.0, "step 1: the adapter's B is 0, the policy is the reference");
    assert!(column(&lines, "kl")[1..].iter().any(|&k| k != 0.0), "β's KL once the policy moved: {lines:?}");
    assert!(lines[0]["grad_norm"].as_f64().unwrap() > 0.0, "{lines:?}");
    let first = untimed(&train(&data, &[&rloo[..], &["--stop-after", "1", "--out", &half]].concat()));
    let model = fixture("llama_gqa");
    let rest = untimed(&webpeft(&["train", "--model", &model, "--resume", &half, "--out", &half]));
    assert_eq!(first.into_iter().chain(rest).collect::<Vec<_>>(), lines);
    let weights = |d: &str| std::fs::read(std::path::Path::new(d).join("adapter_model.safetensors")).unwrap();
    assert!(weights(&whole) == weights(&half), "the resumed adapter differs from the uninterrupted one");

    let refused = |objective: &str, flags: &[&str], needle: &str| {
        let base = ["--objective", objective, "--batch-size", "2", "--steps", "1", "--reward", "think_format"];
        let out =
            train(&data, &[&base[..], flags, &["--method", "lora", "--lr", "1e-2", "--out", &dir.join("x")]].concat());
        assert!(!out.status.success(), "{objective} {flags:?}");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(needle), "{objective} {flags:?}: {e}");
    };
    refused("rloo", &["--loss-type", "grpo"], "--loss-type applies to --objective grpo, not rloo");
    refused("rloo", &["--delta", "1.5"], "--delta applies to --objective grpo, not rloo");
    refused(
        "grpo",
        &["--num-generations", "2", "--normalize-advantages"],
        "--normalize-advantages applies to --objective rloo",
    );
    refused("rloo", &["--reward-clip-range", "1,2,3"], "--reward-clip-range: expected LOW,HIGH, got 3 numbers");
    refused("rloo", &["--reward-clip-range", "2,1"], "--reward-clip-range: (2, 1): two finite numbers");
    refused("rloo", &["--num-generations", "1"], "at least 2 completions a prompt");
    refused(
        "rloo",
        &["--num-completions-to-print", "2"],
        "--num-completions-to-print: prints with --log-completions only",
    );
}

/// `train --objective reward` (TRL's RewardTrainer) on the reward fixture's pairs with margins: step
/// lines with TRL's reward metrics, an eval line, a SEQ_CLS adapter with its score head that PEFT's
/// config names; stopped and resumed it goes on as one run; `score` rates texts and held-out pairs;
/// what does not apply to a reward model is refused.
#[test]
fn train_a_reward_model_stop_resume_score_and_refuse_what_does_not_apply() {
    let dir = TempDir::new("reward");
    let data = fixture("reward/margin_center.jsonl");
    let model = fixture("llama_gqa");
    // (Rows of up to 128 tokens: a pair with a longer answer would be left out.)
    let train = |data: &str, args: &[&str]| {
        webpeft(&[&["train", "--model", &model, "--data", data, "--seq-len", "128"][..], args].concat())
    };
    let args = [
        "--objective",
        "reward",
        "--method",
        "lora",
        "--center-rewards-coefficient",
        "0.01",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--lr",
        "2e-2",
        "--no-shuffle",
        "--r",
        "4",
    ];
    let (whole, half) = (dir.join("whole"), dir.join("half"));
    let lines = untimed(&train(&data, &[&args[..], &["--out", &whole, "--eval-data", &data]].concat()));
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("step").is_some()).collect();
    assert_eq!(steps.len(), 4, "{lines:?}");
    for key in ["min_reward", "mean_reward", "max_reward", "accuracy", "margin", "num_tokens"] {
        assert!(steps.iter().all(|l| l[key].as_f64().is_some_and(f64::is_finite)), "{key}: {lines:?}");
    }
    let eval = lines.last().unwrap();
    for key in ["eval_loss", "eval_accuracy", "eval_margin", "eval_min_reward", "eval_mean_reward", "eval_max_reward"] {
        assert!(eval[key].as_f64().is_some_and(f64::is_finite), "{key}: {eval}");
    }
    assert_eq!(
        eval["eval_num_tokens"].as_f64(),
        steps[3]["num_tokens"].as_f64(),
        "TRL's eval_num_tokens: the tokens so far"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(std::path::Path::new(&whole).join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS", "{config}");
    assert_eq!(config["modules_to_save"], serde_json::json!(["classifier", "score"]), "{config}");
    let first = untimed(&train(&data, &[&args[..], &["--stop-after", "2", "--out", &half]].concat()));
    let rest = untimed(&webpeft(&["train", "--model", &fixture("llama_gqa"), "--resume", &half, "--out", &half]));
    let trained: Vec<serde_json::Value> = first.into_iter().chain(rest).collect();
    assert_eq!(trained, steps.iter().map(|l| (*l).clone()).collect::<Vec<_>>(), "stopped and resumed vs whole");

    // `score`: texts and pairs, one JSON line each; the accuracy on stderr.
    let out = webpeft(&["score", "--model", &model, "--adapter", &whole, "--text", "Hello world!", "--data", &data]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let scored: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(scored.len(), 9, "a text and eight pairs: {text}");
    assert!(scored[0]["reward"].as_f64().is_some_and(f64::is_finite), "{text}");
    assert!(scored[1..].iter().all(|p| p["chosen"].is_number() && p["rejected"].is_number()), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pairs"), "the accuracy line");

    // The reward model as GRPO's reward (RLOO here): its rewards named by its folder, beside a command's.
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(
        &prompts,
        "{\"prompt\": \"The river rose and\"}\n{\"prompt\": [{\"role\": \"user\", \"content\": \"Once\"}]}\n",
    )
    .unwrap();
    let rm = format!("model:{whole}");
    let rl = [
        &["--objective", "rloo", "--method", "lora", "--batch-size", "2", "--steps", "2"][..],
        &["--max-completion-length", "4", "--reward", &rm, "--reward", "cmd:awk '{print 1}'", "--lr", "1e-2"],
    ]
    .concat();
    let lines = untimed(&train(&prompts, &[&rl[..], &["--out", &dir.join("rl")]].concat()));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines.iter().all(|l| l["rewards/whole/mean"].as_f64().is_some_and(f64::is_finite)), "{lines:?}");
    assert!(lines.iter().all(|l| l["rewards/cmd_1/mean"] == 1.0), "{lines:?}");
    let not_rm = format!("model:{}", fixture("lora/initial_adapter"));
    let e = failure(&train(
        &prompts,
        &[&rl[..10], &["--reward", &not_rm, "--lr", "1e-2", "--out", &dir.join("x")]].concat(),
    ));
    assert!(e.contains("not a reward model"), "{e}");

    // What does not apply to a reward model.
    let refused = |flags: &[&str], needle: &str| {
        let e = failure(&train(&data, &[flags, &["--steps", "1", "--lr", "1e-2", "--out", &dir.join("x")]].concat()));
        assert!(e.contains(needle), "{flags:?}: {e}");
    };
    refused(&["--objective", "reward", "--method", "ia3"], "SEQ_CLS");
    refused(&["--objective", "reward", "--method", "lora", "--beta", "0.1"], "applies to dpo");
    refused(
        &["--objective", "dpo", "--method", "lora", "--center-rewards-coefficient", "0.1"],
        "applies to reward only",
    );
    refused(&["--objective", "dpo", "--method", "lora", "--init-adapter", &whole], "reward model");
    // Merged, a reward model is a classifier checkpoint of one label: it scores alone as it did as an adapter.
    let merged = dir.join("merged");
    ok(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &merged]));
    let reward = |args: &[&str]| -> f64 {
        let out = webpeft(&[&["score", "--text", "Hello world!"][..], args].concat());
        ok(&out);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["reward"].as_f64().unwrap()
    };
    let (adapted, alone) = (reward(&["--model", &model, "--adapter", &whole]), reward(&["--model", &merged]));
    assert!((adapted - alone).abs() <= 1e-5, "merged {alone} vs adapter {adapted}");
    let e = failure(&webpeft(&["generate", "--model", &model, "--adapter", &whole, "--prompt", "The"]));
    assert!(e.contains("webpeft score"), "{e}");
    let e =
        failure(&webpeft(&["score", "--model", &model, "--adapter", &fixture("lora/initial_adapter"), "--text", "x"]));
    assert!(e.contains("not a reward model"), "{e}");
}

/// `train --objective classification`: a 3-label classifier on labelled texts (transformers' Trainer;
/// step and eval lines), stopped and resumed as one run, its folder a SEQ_CLS LoRA with a (3, hidden)
/// score head; `classify` on texts and on the labelled rows (the loss and accuracy on stderr);
/// what does not apply refused by name.
#[test]
fn train_a_classifier_resume_classify_and_refuse_what_does_not_apply() {
    let dir = TempDir::new("classification");
    let data = fixture("classification/single_label.jsonl");
    let model = fixture("llama_gqa");
    let train =
        |data: &str, args: &[&str]| webpeft(&[&["train", "--model", &model, "--data", data][..], args].concat());
    let args = [
        "--objective",
        "classification",
        "--num-labels",
        "3",
        "--method",
        "lora",
        "--batch-size",
        "2",
        "--steps",
        "4",
        "--lr",
        "2e-2",
        "--no-shuffle",
        "--r",
        "4",
    ];
    let (whole, half) = (dir.join("whole"), dir.join("half"));
    let lines = untimed(&train(&data, &[&args[..], &["--out", &whole, "--eval-data", &data]].concat()));
    let steps: Vec<&serde_json::Value> = lines.iter().filter(|l| l.get("step").is_some()).collect();
    assert_eq!(steps.len(), 4, "{lines:?}");
    assert!(steps.iter().all(|l| l["loss"].as_f64().is_some_and(f64::is_finite)), "{lines:?}");
    let eval = lines.last().unwrap();
    for key in ["eval_loss", "eval_accuracy"] {
        assert!(eval[key].as_f64().is_some_and(f64::is_finite), "{key}: {eval}");
    }
    let folder = std::path::Path::new(&whole);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["task_type"], "SEQ_CLS", "{config}");
    let bytes = std::fs::read(folder.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("base_model.model.score.weight").unwrap().shape(), &[3, 64]);
    let first = untimed(&train(&data, &[&args[..], &["--stop-after", "2", "--out", &half]].concat()));
    let rest = untimed(&webpeft(&["train", "--model", &model, "--resume", &half, "--out", &half]));
    let trained: Vec<serde_json::Value> = first.into_iter().chain(rest).collect();
    assert_eq!(trained, steps.iter().map(|l| (*l).clone()).collect::<Vec<_>>(), "stopped and resumed vs whole");

    // `classify`: a text and the eight labelled rows, one JSON line each; the loss and accuracy on stderr.
    let out = webpeft(&["classify", "--model", &model, "--adapter", &whole, "--text", "Hello world!", "--data", &data]);
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 9, "a text and eight rows: {text}");
    for r in &rows {
        let logits = r["logits"].as_array().unwrap();
        assert_eq!(logits.len(), 3, "{r}");
        assert!(r["label"].as_u64().is_some_and(|l| l < 3) && r["score"].as_f64().is_some_and(|s| s > 0.0 && s <= 1.0));
    }
    assert_eq!(rows[4]["target"], -100, "the unlabelled row");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("single_label_classification (8 rows): loss") && stderr.contains("accuracy"), "{stderr}");

    // What does not apply.
    let refused = |flags: &[&str], needle: &str| {
        let e = failure(&train(&data, &[flags, &["--steps", "1", "--lr", "1e-2", "--out", &dir.join("x")]].concat()));
        assert!(e.contains(needle), "{flags:?}: {e}");
    };
    refused(&["--objective", "classification", "--num-labels", "3", "--method", "ia3"], "SEQ_CLS");
    refused(&["--objective", "sft", "--method", "lora", "--num-labels", "3"], "applies to --objective classification");
    refused(&["--objective", "classification", "--num-labels", "2", "--method", "lora"], "not a class of 0..2");
    refused(
        &["--objective", "classification", "--num-labels", "4", "--method", "lora", "--init-adapter", &whole],
        "--num-labels: 4, but the adapter's score head has 3 label(s)",
    );
    let pairs = fixture("reward/text.jsonl");
    let e = failure(&train(
        &pairs,
        &[
            "--objective",
            "reward",
            "--method",
            "lora",
            "--init-adapter",
            &whole,
            "--steps",
            "1",
            "--lr",
            "1e-2",
            "--out",
            &dir.join("x"),
        ],
    ));
    assert!(e.contains("one label"), "{e}");
    let e = failure(&webpeft(&["score", "--model", &model, "--adapter", &whole, "--text", "x"]));
    assert!(e.contains("a classifier of 3 labels"), "{e}");
    // Merged, it is a classifier checkpoint (LlamaForSequenceClassification, 3 labels) giving the same logits.
    let merged = dir.join("merged");
    ok(&webpeft(&["merge", "--model", &model, "--adapter", &whole, "--out", &merged]));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(std::path::Path::new(&merged).join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"], serde_json::json!(["LlamaForSequenceClassification"]), "{config}");
    assert_eq!(config["id2label"].as_object().map(|l| l.len()), Some(3), "{config}");
    let logits = |args: &[&str]| -> Vec<f64> {
        let out = webpeft(&[&["classify", "--text", "Hello world!"][..], args].concat());
        ok(&out);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    };
    let (adapted, alone) = (logits(&["--model", &model, "--adapter", &whole]), logits(&["--model", &merged]));
    assert!(adapted.iter().zip(&alone).all(|(a, b)| (a - b).abs() <= 1e-5), "merged {alone:?} vs adapter {adapted:?}");

    // A classifier checkpoint (LlamaForSequenceClassification, 3 labels): classify with its own head, train a
    // LoRA on it (its labels by default), and refuse what needs an lm_head.
    let cls = fixture("llama_gqa_cls");
    let out = webpeft(&["classify", "--model", &cls, "--text", "Hello world!"]);
    ok(&out);
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["logits"].as_array().map(Vec::len), Some(3), "{verdict}");
    let on_cls = dir.join("on_cls");
    let lines = untimed(&webpeft(
        &[
            &["train", "--model", &cls, "--data", &data, "--objective", "classification", "--method", "lora"][..],
            &["--steps", "1", "--lr", "1e-2", "--out", &on_cls],
        ]
        .concat(),
    ));
    assert_eq!(lines.len(), 1, "{lines:?}");
    let e = failure(&webpeft(&["generate", "--model", &cls, "--prompt", "The"]));
    assert!(e.contains("sequence classifier") && e.contains("no lm_head"), "{e}");
    let e = failure(&webpeft(&["score", "--model", &cls, "--text", "x"]));
    assert!(e.contains("--model: a classifier of 3 labels"), "{e}");

    // A reward model checkpoint of its own (Qwen2ForSequenceClassification, one label) as RLOO's reward, on the
    // llama_gqa policy; scored by `score` without an adapter. A causal LM's folder is no reward model.
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"The river rose and\"}\n{\"prompt\": \"Once\"}\n").unwrap();
    let rl = |reward: &str, out: &str| {
        let args = ["--objective", "rloo", "--method", "lora", "--batch-size", "2", "--steps", "1", "--lr", "1e-2"];
        webpeft(
            &[&["train", "--model", &model, "--data", &prompts][..], &args, &["--max-completion-length", "4"]]
                .concat()
                .iter()
                .copied()
                .chain(["--reward", reward, "--out", out])
                .collect::<Vec<_>>(),
        )
    };
    let rm = fixture("qwen2_rm");
    let lines = untimed(&rl(&format!("model:{rm}"), &dir.join("rl")));
    assert!(lines.len() == 1 && lines[0]["rewards/qwen2_rm/mean"].as_f64().is_some_and(f64::is_finite), "{lines:?}");
    let out = webpeft(&["score", "--model", &rm, "--text", "Hello world!"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"reward\""), "{out:?}");
    let e = failure(&rl(&format!("model:{model}"), &dir.join("rl2")));
    assert!(e.contains("a causal LM's folder, not a reward model"), "{e}");
    let e = failure(&webpeft(&[
        "classify",
        "--model",
        &model,
        "--adapter",
        &fixture("lora/initial_adapter"),
        "--text",
        "x",
    ]));
    assert!(e.contains("not a sequence classifier"), "{e}");
}
