//! Files webpeft writes load in the Hugging Face stack. This test writes
//! adapters (two LoRA, three bottleneck) with `Adapter::to_files` and checks
//! them against `tests/fixtures/webpeft_saved/`, which holds the same files
//! plus webpeft's logits with each adapter. `make_fixtures.py` loads those
//! folders with `PeftModel.from_pretrained` / `adapters`' `load_adapter`,
//! asserts no missing or unexpected keys and logits within 1e-4 of webpeft's,
//! and records what it checked (with each file's sha256) in
//! `webpeft_saved/python_check.json`, which this test requires to match.
//!
//! To rewrite the folder after a deliberate format change:
//! `WEBPEFT_WRITE_FIXTURES=1 cargo test --test roundtrip`, then rerun the
//! fixture script.

mod common;

use std::collections::BTreeMap;

use common::{block_on, fixture, gpu, Fixture};
use webpeft::gpu::Recorder;
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::{BnInit, BottleneckConfig, BottleneckKind, InitLoraWeights, LoraConfig, TargetModules};
use webpeft::quant::QuantFormat;
use webpeft::Gpu;

fn adapters(gpu: &Gpu, model: &Model) -> Vec<(&'static str, Adapter)> {
    let mut all = LoraConfig::new(4, 8.0, TargetModules::AllLinear).unwrap();
    all.init_lora_weights = InitLoraWeights::Random;
    all.base_model_name_or_path = Some("llama_gqa".into());
    let mut qv = LoraConfig::new(2, 5.0, TargetModules::List(vec!["q_proj".into(), "v_proj".into()])).unwrap();
    qv.init_lora_weights = InitLoraWeights::Random;
    qv.use_rslora = true;
    qv.lora_dropout = 0.05;
    qv.layers_to_transform = Some(vec![1]);
    qv.base_model_name_or_path = Some("llama_gqa".into());
    let bn = |kind| {
        let mut c = BottleneckConfig::new(kind);
        c.init_weights = BnInit::Bert; // non-zero up-projection: the adapter changes the logits
        c.model_name = Some("llama_gqa".into());
        c
    };
    vec![
        ("lora_all_linear", Adapter::new_lora(gpu, all, &model.config, 21).unwrap()),
        ("lora_qv_rslora_layer1", Adapter::new_lora(gpu, qv, &model.config, 22).unwrap()),
        ("seq_bn", Adapter::new_bottleneck(gpu, bn(BottleneckKind::SeqBn), &model.config, 23).unwrap()),
        ("double_seq_bn", Adapter::new_bottleneck(gpu, bn(BottleneckKind::DoubleSeqBn), &model.config, 24).unwrap()),
        ("par_bn", Adapter::new_bottleneck(gpu, bn(BottleneckKind::ParBn), &model.config, 25).unwrap()),
    ]
}

fn sha256_hex(bytes: &[u8]) -> String {
    // A small SHA-256 (FIPS 180-4) so the test needs no extra crate.
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = bytes.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((bytes.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let mut v = h;
        for i in 0..64 {
            let s1 = v[4].rotate_right(6) ^ v[4].rotate_right(11) ^ v[4].rotate_right(25);
            let ch = (v[4] & v[5]) ^ (!v[4] & v[6]);
            let t1 = v[7].wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = v[0].rotate_right(2) ^ v[0].rotate_right(13) ^ v[0].rotate_right(22);
            let maj = (v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]);
            let t2 = s0.wrapping_add(maj);
            v = [t1.wrapping_add(t2), v[0], v[1], v[2], v[3].wrapping_add(t1), v[4], v[5], v[6]];
        }
        for (a, b) in h.iter_mut().zip(v) {
            *a = a.wrapping_add(b);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[test]
fn saved_adapters_match_the_files_the_hugging_face_stack_checked() {
    let gpu = gpu();
    let model = block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap();
    let refs = Fixture::open("refs/llama_gqa/reference.safetensors");
    let t = refs.shape("input_ids")[1];
    let ids: Vec<Vec<u32>> = refs.i64("input_ids").chunks(t).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let ids = model.input_ids(gpu, &ids).unwrap();
    let root = fixture("webpeft_saved");
    let write = std::env::var_os("WEBPEFT_WRITE_FIXTURES").is_some();
    let mut logits_out: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let check: serde_json::Value = if write {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(
            &std::fs::read(root.join("python_check.json")).expect("python_check.json: run make_fixtures.py"),
        )
        .unwrap()
    };
    for (name, adapter) in adapters(gpu, &model) {
        let files = block_on(adapter.to_files(gpu, &model.config)).unwrap();
        let mut rec = Recorder::new(gpu);
        let (logits, _) = model.forward_adapted(&mut rec, &ids, Some(&adapter), None).unwrap();
        rec.submit().unwrap();
        let logits = block_on(logits.to_vec::<f32>(gpu)).unwrap();
        let dir = root.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            for (file, bytes) in &files {
                std::fs::write(dir.join(file), bytes).unwrap();
            }
            logits_out.insert(name.to_string(), logits);
            continue;
        }
        for (file, bytes) in &files {
            let committed = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
            assert!(committed == *bytes, "{name}/{file}: webpeft now writes different bytes (see the module doc)");
            let checked = &check["adapters"][name]["sha256"][file];
            assert_eq!(
                checked.as_str(),
                Some(sha256_hex(bytes).as_str()),
                "{name}/{file}: not the file Python checked"
            );
        }
        let py = &check["adapters"][name];
        assert_eq!(py["missing_keys"], serde_json::json!([]), "{name}");
        assert_eq!(py["unexpected_keys"], serde_json::json!([]), "{name}");
        let want = Fixture::open("webpeft_saved/logits.safetensors").f32(name);
        let d = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: logits vs committed {d:e}; Python's max |diff| {}", py["max_abs_diff"]);
        assert!(d <= 1e-5, "{name}: {d:e}");
        assert!(py["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{name}");
    }
    if write {
        let views: Vec<(String, safetensors::tensor::TensorView)> = logits_out
            .iter()
            .map(|(k, v)| {
                let shape = vec![2, t, 384];
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, bytemuck::cast_slice(v))
                        .unwrap(),
                )
            })
            .collect();
        std::fs::write(root.join("logits.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
        eprintln!("wrote {}; now run make_fixtures.py", root.display());
    }
}
