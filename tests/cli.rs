//! The native CLI, run as a user would (built with `--features cli`).
#![cfg(feature = "cli")]

use std::process::Command;

fn webpeft(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_webpeft")).args(args).output().expect("the CLI runs")
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
