//! One recipe for a training run: the browser API's option objects (as the
//! page sends them, JSON) and the CLI's flags make the same adapter config and
//! the same run, and options left out take the recipe's one set of defaults
//! (PEFT's LoRA: r 8, alpha 8, dropout 0 on q_proj and v_proj).

use webpeft::model::config::Config;
use webpeft::peft::TargetModules;
use webpeft::train::recipe::{AdapterRecipe, LoraRecipe, Method, TrainRecipe};
use webpeft::web::options::{
    AdaLoraOptions, BottleneckOptions, Ia3Options, LoraOptions, PTuningOptions, PrefixTuningOptions,
    PromptTuningOptions, TrainOptions,
};
use webpeft::Error;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn model_config() -> Config {
    Config::from_json(&std::fs::read(format!("{}/config.json", fixture("llama_gqa"))).unwrap()).unwrap()
}

/// The `adapter_config.json` the browser API's `addLora(name, options)`,
/// `addIa3(name, options)` (options tagged `"ia3": true` here) or
/// `addBottleneck(name, options)` makes, for a model picked as folder `llama_gqa`.
fn browser_adapter_config(options: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(options).unwrap();
    let recipe = if value.as_object_mut().unwrap().remove("adalora").is_some() {
        serde_json::from_value::<AdaLoraOptions>(value).unwrap().to_recipe().unwrap()
    } else if value.as_object_mut().unwrap().remove("ia3").is_some() {
        serde_json::from_value::<Ia3Options>(value).unwrap().to_recipe().unwrap()
    } else if value.as_object_mut().unwrap().remove("prefix_tuning").is_some() {
        serde_json::from_value::<PrefixTuningOptions>(value).unwrap().to_recipe().unwrap()
    } else if value.as_object_mut().unwrap().remove("p_tuning").is_some() {
        serde_json::from_value::<PTuningOptions>(value).unwrap().to_recipe().unwrap()
    } else if value.as_object_mut().unwrap().remove("prompt_tuning").is_some() {
        serde_json::from_value::<PromptTuningOptions>(value).unwrap().to_recipe().unwrap()
    } else if value.get("method").is_some() {
        serde_json::from_value::<BottleneckOptions>(value).unwrap().to_recipe().unwrap()
    } else {
        serde_json::from_value::<LoraOptions>(value).unwrap().to_recipe().unwrap()
    };
    let model = model_config();
    recipe.config(&model, Some("llama_gqa".into())).unwrap().to_json(&model)
}

#[test]
fn browser_options_left_out_are_the_recipe_defaults() {
    let t: TrainOptions = serde_json::from_str(r#"{"lr": 2e-4}"#).unwrap();
    assert_eq!(t.to_recipe().unwrap(), TrainRecipe { lr: 2e-4, ..TrainRecipe::default() });
    let l: LoraOptions = serde_json::from_str("{}").unwrap();
    let recipe = l.to_recipe().unwrap();
    assert_eq!(recipe, AdapterRecipe::new(Method::Lora));
    let AdapterRecipe::Lora(LoraRecipe { r, alpha, dropout, targets, use_rslora, .. }) = recipe else {
        panic!("{recipe:?}")
    };
    assert_eq!((r, alpha, dropout, use_rslora), (8, 8.0, 0.0, false), "PEFT's LoraConfig defaults");
    assert_eq!(targets, TargetModules::List(vec!["q_proj".into(), "v_proj".into()]));
}

#[test]
fn a_bad_browser_option_is_named() {
    let bad = |json: &str| {
        let t: TrainOptions = serde_json::from_str(json).unwrap();
        match t.to_recipe() {
            Err(Error::TrainOption { option, .. }) => option,
            other => panic!("{json}: {other:?}"),
        }
    };
    assert_eq!(bad(r#"{"lr": 1e-3, "seqLen": 0}"#), "seq_len");
    assert_eq!(bad(r#"{"lr": 1e-3, "batchSize": 0}"#), "batch_size");
    assert_eq!(bad(r#"{"lr": -1}"#), "lr");
    assert_eq!(bad(r#"{"lr": 1e-3, "schedule": "step"}"#), "schedule");
    assert_eq!(bad(r#"{"lr": 1e-3, "loraplusLrRatio": 0}"#), "loraplus_lr_ratio");
    let t: TrainOptions = serde_json::from_str(r#"{"lr": 1e-3, "loraplusLrRatio": 16}"#).unwrap();
    assert_eq!(t.to_recipe().unwrap().optimizer.loraplus_lr_ratio, Some(16.0));
    let a: AdaLoraOptions = serde_json::from_str(r#"{"initR": 6}"#).unwrap();
    assert!(matches!(a.to_recipe(), Err(Error::TrainOption { option: "total_step", .. })));
    let b: BottleneckOptions = serde_json::from_str(r#"{"method": "lora"}"#).unwrap();
    assert!(matches!(b.to_recipe(), Err(Error::TrainOption { option: "method", .. })));
    // Adapter options are checked as adapter_config.json fields, as the page expects.
    let l: LoraOptions = serde_json::from_str(r#"{"r": 0}"#).unwrap();
    let e = l.to_recipe().unwrap().config(&model_config(), None).unwrap_err();
    assert!(matches!(&e, Error::AdapterConfig { field, .. } if field == "r"), "{e}");
}

#[cfg(feature = "cli")]
mod cli {
    use super::*;

    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("webpeft-recipe-{tag}-{}", std::process::id()));
            std::fs::remove_dir_all(&dir).ok();
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }

    /// The folder `webpeft train <args> --stop-after 0` writes: the fresh
    /// adapter and its training state, before any step.
    fn cli_fresh_run(dir: &TempDir, tag: &str, args: &[&str]) -> std::path::PathBuf {
        let data = dir.0.join("train.jsonl");
        let lines = ["The cat sat on the mat and looked at the door.", "A small dog ran across the green field."];
        let jsonl: String = if args.iter().any(|a| ["dpo", "orpo", "cpo", "kto", "reward"].contains(a)) {
            let pair = r#"{"prompt": "The cat", "chosen": " sat on the mat.", "rejected": " ran across the field."}"#;
            format!("{pair}\n").repeat(4)
        } else {
            lines.iter().cycle().take(8).map(|t| format!("{{\"text\": \"{t}\"}}\n")).collect()
        };
        std::fs::write(&data, jsonl).unwrap();
        let out = dir.0.join(tag);
        let model = fixture("llama_gqa");
        let mut all = vec!["train", "--model", &model, "--data", data.to_str().unwrap(), "--lr", "1e-3"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--stop-after", "0", "--out", out.to_str().unwrap()]);
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_webpeft")).args(&all).output().unwrap();
        assert!(run.status.success(), "{all:?}: {}", String::from_utf8_lossy(&run.stderr));
        out
    }

    #[test]
    fn cli_and_browser_make_the_same_adapter_config() {
        let dir = TempDir::new("adapters");
        // (CLI flags, the browser's options object): the same adapter, said twice.
        let cases: [(&[&str], &str); 17] = [
            (&["--method", "lora"], "{}"),
            (
                &[
                    "--method",
                    "lora",
                    "--target-regex",
                    r".*\.(q_proj|v_proj)",
                    "--exclude-modules",
                    "layers.0.self_attn.q_proj",
                ],
                r#"{"targets": ".*\\.(q_proj|v_proj)", "excludeModules": ["layers.0.self_attn.q_proj"]}"#,
            ),
            (
                &["--method", "lora", "--targets", "all-linear", "--exclude-regex", r".*\.1\..*"],
                r#"{"targets": "all-linear", "excludeModules": ".*\\.1\\..*"}"#,
            ),
            (
                &[
                    "--method",
                    "lora",
                    "--targets",
                    "all-linear",
                    "--rank-pattern",
                    r"q_proj=2,layers\.1\..*=6",
                    "--alpha-pattern",
                    "o_proj=16",
                ],
                r#"{"targets": "all-linear", "rankPattern": {"q_proj": 2, "layers\\.1\\..*": 6},
                    "alphaPattern": {"o_proj": 16}}"#,
            ),
            (
                &[
                    "--method",
                    "lora",
                    "--r",
                    "4",
                    "--alpha",
                    "32",
                    "--dropout",
                    "0.1",
                    "--targets",
                    "q_proj,k_proj,down_proj",
                    "--rslora",
                ],
                r#"{"r": 4, "alpha": 32, "dropout": 0.1, "targets": ["q_proj", "k_proj", "down_proj"], "rslora": true}"#,
            ),
            (&["--method", "lora", "--targets", "all-linear"], r#"{"targets": "all-linear"}"#),
            (&["--method", "lora", "--use-dora", "--r", "4"], r#"{"useDora": true, "r": 4}"#),
            (&["--method", "seq_bn"], r#"{"method": "seq_bn"}"#),
            (&["--method", "ia3"], r#"{"ia3": true}"#),
            (
                &["--method", "ia3", "--targets", "q_proj,up_proj", "--feedforward-modules", "up_proj"],
                r#"{"ia3": true, "targets": ["q_proj", "up_proj"], "feedforwardModules": ["up_proj"]}"#,
            ),
            (
                &["--method", "par_bn", "--reduction-factor", "4", "--non-linearity", "silu", "--dropout", "0.1"],
                r#"{"method": "par_bn", "reductionFactor": 4, "nonLinearity": "silu", "dropout": 0.1}"#,
            ),
            (&["--method", "prompt_tuning"], r#"{"prompt_tuning": true}"#),
            (
                &[
                    "--method",
                    "prompt_tuning",
                    "--num-virtual-tokens",
                    "6",
                    "--prompt-init",
                    "text",
                    "--prompt-init-text",
                    "Hi there",
                ],
                r#"{"prompt_tuning": true, "numVirtualTokens": 6, "init": "text", "initText": "Hi there"}"#,
            ),
            (
                &["--method", "prefix_tuning", "--num-virtual-tokens", "5"],
                r#"{"prefix_tuning": true, "numVirtualTokens": 5}"#,
            ),
            // The CLI's total_step is its run's: 8 rows, batch 1, one epoch.
            (
                &[
                    "--method",
                    "adalora",
                    "--init-r",
                    "6",
                    "--target-r",
                    "3",
                    "--tinit",
                    "1",
                    "--tfinal",
                    "2",
                    "--delta-t",
                    "2",
                    "--alpha",
                    "16",
                    "--targets",
                    "all-linear",
                ],
                r#"{"adalora": true, "initR": 6, "targetR": 3, "tinit": 1, "tfinal": 2, "deltaT": 2, "alpha": 16,
                    "targets": "all-linear", "totalStep": 8}"#,
            ),
            (
                &["--method", "prefix_tuning", "--prefix-projection", "--encoder-hidden-size", "12"],
                r#"{"prefix_tuning": true, "prefixProjection": true, "encoderHiddenSize": 12}"#,
            ),
            (&["--method", "p_tuning", "--num-virtual-tokens", "3"], r#"{"p_tuning": true, "numVirtualTokens": 3}"#),
        ];
        for (i, (flags, options)) in cases.into_iter().enumerate() {
            let out = cli_fresh_run(&dir, &format!("a{i}"), flags);
            let cli = std::fs::read_to_string(out.join("adapter_config.json")).unwrap();
            assert_eq!(cli, browser_adapter_config(options), "CLI {flags:?} vs browser {options}");
        }
        // And the defaults are PEFT's.
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.0.join("a0/adapter_config.json")).unwrap()).unwrap();
        assert_eq!((config["r"].as_u64(), config["lora_alpha"].as_f64()), (Some(8), Some(8.0)), "{config}");
        assert_eq!(config["lora_dropout"].as_f64(), Some(0.0), "{config}");
    }

    #[test]
    fn cli_and_browser_make_the_same_run() {
        use webpeft::train::checkpoint::read_checkpoint;
        let dir = TempDir::new("run");
        let check = |tag: &str, flags: &[&str], options: &str| {
            let out = cli_fresh_run(&dir, tag, flags);
            let saved = read_checkpoint(&std::fs::read(out.join("training_state.safetensors")).unwrap()).unwrap();
            let t: TrainOptions = serde_json::from_str(options).unwrap();
            let browser = t.to_recipe().unwrap();
            let p = &saved.progress;
            let o = &p["options"];
            let run = webpeft::train::run::Run::config_from(p).unwrap();
            let cli = TrainRecipe {
                lr: p["lr"].as_f64().unwrap(),
                schedule: run.schedule,
                warmup_steps: run.warmup_steps,
                // The checkpoint keeps the warmup's steps, a ratio resolved.
                warmup_ratio: 0.0,
                steps: p["total_steps"].as_u64(),
                grad_accum: p["grad_accum"].as_u64().unwrap() as usize,
                optimizer: saved.optimizer.clone(),
                batch_size: o["batch_size"].as_u64().unwrap() as usize,
                seq_len: o["seq_len"].as_u64().unwrap() as usize,
                packing: o["packing"].as_bool().unwrap(),
                shuffle: o["shuffle"].as_bool().unwrap(),
                seed: o["seed"].as_u64().unwrap(),
                // Not in the checkpoint: how long a run of `steps` steps lasts is its steps.
                epochs: browser.epochs,
                gradient_checkpointing: browser.gradient_checkpointing,
                neftune_noise_alpha: o["neftune_noise_alpha"].as_f64().map(|v| v as f32),
                loss_masks: webpeft::train::data::LossMasks {
                    completion_only: o["completion_only_loss"].as_bool().unwrap(),
                    assistant_only: o["assistant_only_loss"].as_bool().unwrap(),
                },
                precompute_ref_log_probs: o["precompute_ref_log_probs"].as_bool().unwrap(),
                disable_dropout: o["disable_dropout"].as_bool(),
                objective: webpeft::train::preference::Objective::from_options(
                    o["objective"].as_str().unwrap(),
                    &webpeft::train::preference::PreferenceOptions {
                        beta: o["beta"].as_f64().map(|v| v as f32),
                        label_smoothing: o["label_smoothing"].as_f64().map(|v| v as f32),
                        loss_type: o["loss_type"].as_str().map(str::to_string),
                        loss_weights: o["loss_weights"]
                            .as_array()
                            .map(|w| w.iter().map(|v| v.as_f64().unwrap() as f32).collect()),
                        rpo_alpha: o["rpo_alpha"].as_f64().map(|v| v as f32),
                        discopop_tau: o["discopop_tau"].as_f64().map(|v| v as f32),
                        reference_free: o["reference_free"].as_bool().filter(|&b| b),
                        f_divergence_type: o["f_divergence_type"].as_str().map(str::to_string),
                        f_alpha_divergence_coef: o["f_alpha_divergence_coef"].as_f64().map(|v| v as f32),
                        cpo_alpha: o["cpo_alpha"].as_f64().map(|v| v as f32),
                        simpo_gamma: o["simpo_gamma"].as_f64().map(|v| v as f32),
                        alphapo_alpha: o["alphapo_alpha"].as_f64().map(|v| v as f32),
                        desirable_weight: o["desirable_weight"].as_f64().map(|v| v as f32),
                        undesirable_weight: o["undesirable_weight"].as_f64().map(|v| v as f32),
                        center_rewards_coefficient: o["center_rewards_coefficient"].as_f64().map(|v| v as f32),
                    },
                )
                .unwrap(),
            };
            // The checkpoint keeps the row length in effect (capped at the model's 128 positions).
            let warmup_steps = browser.run_config().warmup_steps_for(run.steps.unwrap()).unwrap();
            let browser = TrainRecipe { seq_len: browser.seq_len_for(128), warmup_steps, warmup_ratio: 0.0, ..browser };
            assert_eq!(cli, browser, "CLI {flags:?} vs browser {options}");
        };
        check("defaults", &["--method", "lora", "--steps", "3"], r#"{"lr": 1e-3, "steps": 3}"#);
        // The preference objectives' settings, as flags after `--method lora --steps 3` and as options.
        let preference: [(&str, &[&str], &str); 9] = [
            (
                "alphapo",
                &["--objective", "cpo", "--loss-type", "alphapo", "--alphapo-alpha", "0.25", "--beta", "2.5"],
                r#"{"objective": "cpo", "lossType": "alphapo", "alphapoAlpha": 0.25, "beta": 2.5}"#,
            ),
            (
                "mpo",
                &["--objective", "dpo", "--loss-type", "sigmoid,bco_pair,sft", "--loss-weights", "0.8,0.2,1"],
                r#"{"objective": "dpo", "lossType": ["sigmoid", "bco_pair", "sft"], "lossWeights": [0.8, 0.2, 1]}"#,
            ),
            (
                "dpo",
                &["--objective", "dpo", "--loss-type", "ipo", "--rpo-alpha", "0.5", "--reference-free"],
                r#"{"objective": "dpo", "lossType": "ipo", "rpoAlpha": 0.5, "referenceFree": true}"#,
            ),
            (
                "dropout_kept",
                &["--objective", "dpo", "--disable-dropout", "false"],
                r#"{"objective": "dpo", "disableDropout": false}"#,
            ),
            (
                "reward",
                &["--objective", "reward", "--center-rewards-coefficient", "0.01"],
                r#"{"objective": "reward", "centerRewardsCoefficient": 0.01}"#,
            ),
            (
                "f_divergence",
                &["--objective", "dpo", "--f-divergence-type", "alpha_divergence", "--f-alpha-divergence-coef", "0.5"],
                r#"{"objective": "dpo", "fDivergenceType": "alpha_divergence", "fAlphaDivergenceCoef": 0.5}"#,
            ),
            (
                "simpo",
                &[
                    "--objective",
                    "cpo",
                    "--loss-type",
                    "simpo",
                    "--cpo-alpha",
                    "0",
                    "--simpo-gamma",
                    "1.5",
                    "--beta",
                    "2",
                ],
                r#"{"objective": "cpo", "lossType": "simpo", "cpoAlpha": 0, "simpoGamma": 1.5, "beta": 2}"#,
            ),
            (
                "kto",
                &["--objective", "kto", "--desirable-weight", "1.2", "--batch-size", "2", "--precompute-ref-log-probs"],
                r#"{"objective": "kto", "desirableWeight": 1.2, "batchSize": 2, "precomputeRefLogProbs": true}"#,
            ),
            (
                "discopop",
                &["--objective", "dpo", "--loss-type", "discopop", "--discopop-tau", "0.2"],
                r#"{"objective": "dpo", "lossType": "discopop", "discopopTau": 0.2}"#,
            ),
        ];
        check(
            "warmup_ratio",
            &[
                "--method",
                "lora",
                "--steps",
                "3",
                "--warmup-ratio",
                "0.5",
                "--schedule",
                "warmup_stable_decay",
                "--schedule-kwargs",
                r#"{"num_decay_steps": 1, "decay_type": "1-sqrt"}"#,
            ],
            r#"{"lr": 1e-3, "steps": 3, "warmupRatio": 0.5, "schedule": "warmup_stable_decay",
                "scheduleKwargs": {"num_decay_steps": 1, "decay_type": "1-sqrt"}}"#,
        );
        for (tag, flags, options) in preference {
            let options = options.replacen('{', r#"{"lr": 1e-3, "steps": 3, "#, 1);
            check(tag, &[&["--method", "lora", "--steps", "3"][..], flags].concat(), &options);
        }
        check(
            "given",
            &[
                "--method",
                "lora",
                "--steps",
                "5",
                "--batch-size",
                "2",
                "--seq-len",
                "16",
                "--grad-accum",
                "2",
                "--warmup",
                "1",
                "--schedule",
                "cosine_with_restarts",
                "--schedule-kwargs",
                r#"{"num_cycles": 2}"#,
                "--weight-decay",
                "0.01",
                "--max-grad-norm",
                "0.5",
                "--loraplus-lr-ratio",
                "16",
                "--packing",
                "--no-shuffle",
                "--seed",
                "7",
                "--neftune-noise-alpha",
                "5",
                "--completion-only-loss",
                "false",
                "--assistant-only-loss",
                "false",
            ],
            r#"{"lr": 1e-3, "steps": 5, "batchSize": 2, "seqLen": 16, "gradAccum": 2, "warmup": 1, "neftuneNoiseAlpha": 5,
                "completionOnlyLoss": false, "assistantOnlyLoss": false,
                "schedule": "cosine_with_restarts", "scheduleKwargs": {"num_cycles": 2}, "weightDecay": 0.01, "maxGradNorm": 0.5, "loraplusLrRatio": 16, "packing": true,
                "shuffle": false, "seed": 7}"#,
        );
    }
}

/// TRL's SFT loss masks belong to SFT: with a preference objective they are refused, by name.
#[test]
fn sft_loss_masks_are_refused_beside_a_preference_objective() {
    use webpeft::train::data::LossMasks;
    use webpeft::train::preference::{Objective, PreferenceOptions};
    let dpo = Objective::from_options("dpo", &PreferenceOptions::default()).unwrap();
    for (masks, option) in [
        (LossMasks { completion_only: false, assistant_only: true }, "completion_only_loss"),
        (LossMasks { completion_only: true, assistant_only: false }, "assistant_only_loss"),
    ] {
        let e = TrainRecipe { loss_masks: masks, objective: dpo, ..TrainRecipe::default() }.validate().unwrap_err();
        assert!(matches!(e, Error::TrainOption { option: o, .. } if o == option), "{e}");
        TrainRecipe { loss_masks: masks, ..TrainRecipe::default() }.validate().unwrap();
    }
}

#[test]
fn packing_refuses_adapters_with_virtual_tokens() {
    let packed = TrainRecipe { packing: true, ..TrainRecipe::default() };
    for method in [Method::PromptTuning, Method::PrefixTuning, Method::PTuning] {
        let before = AdapterRecipe::new(method).virtual_tokens();
        match packed.check_positions_before(before) {
            Err(Error::TrainOption { option: "packing", detail }) => {
                assert!(detail.contains("virtual tokens"), "{detail}")
            }
            other => panic!("{method:?}: expected a packing TrainOption error, got {other:?}"),
        }
        TrainRecipe::default().check_positions_before(before).unwrap();
    }
    packed.check_positions_before(AdapterRecipe::new(Method::Lora).virtual_tokens()).unwrap();
}
