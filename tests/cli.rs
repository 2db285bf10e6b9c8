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

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn info_describes_a_model_folder() {
    let out = webpeft(&["info", "--model", &fixture("llama_gqa"), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model_type"], "llama");
    assert_eq!(v["parameters"], 135_488);
    assert_eq!(v["kv_heads"], 2);
    assert_eq!(v["head_dim"], 24);
    let bytes = &v["weight_bytes"];
    assert!(
        bytes["nf4"].as_u64() < bytes["q8_0"].as_u64() && bytes["q8_0"].as_u64() < bytes["f32"].as_u64(),
        "{bytes}"
    );
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
