//! `webpeft train`: the flags parsed into the library's recipe
//! (`webpeft::train::recipe`), the run, its step lines and its files.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use webpeft::kernels::swiglu::Activation;
use webpeft::model::config::Config;
use webpeft::model::source::DirFiles;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::Model;
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::merge::export_loftq_base;
use webpeft::peft::lora::{LoraAdapter, LOFTQ_BASE_DIR};
use webpeft::peft::{InitLoraWeights, TargetModules, TaskType};
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::train::checkpoint::{load_checkpoint, read_checkpoint, save_checkpoint, CHECKPOINT_FILE};
use webpeft::train::classification::{evaluate_classification, ProblemType};
use webpeft::train::data::{DataOptions, Dataset, LossMasks};
use webpeft::train::early_stopping::EarlyStopping;
use webpeft::train::preference::{Objective, PreferenceOptions};
use webpeft::train::recipe::{AdapterRecipe, Method, TrainRecipe, DEFAULT_SEED};
use webpeft::train::reward::{check_adapter_for, evaluate_reward, RewardStats};

/// transformers' `PretrainedConfig.num_labels` default.
const DEFAULT_NUM_LABELS: usize = 2;
use webpeft::train::run::{Run, RunConfig};
use webpeft::train::schedule::{Schedule, SCHEDULE_NAMES};
use webpeft::train::trainer::{KtoStats, PreferenceStats};
use webpeft::Gpu;

use crate::{cli_gpu, load_model_4bit, resume, write_model_folder};

/// `webpeft train`'s options, parsed into the library's recipe
/// (`webpeft::train::recipe`), whose defaults these are. Adapter options left
/// out take the method's defaults; with --init-adapter or --resume the
/// adapter's own config wins.
#[derive(clap::Args)]
pub struct TrainArgs {
    /// The model folder (config.json, safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Training data, one JSON object a line: {"text"}, {"prompt", "completion"},
    /// {"messages"} or {"input_ids", "labels"} [with --resume: the checkpoint's].
    #[arg(long, required_unless_present = "resume")]
    pub data: Option<PathBuf>,
    /// lora, adalora, ia3, prompt_tuning, prefix_tuning, p_tuning, trainable_tokens, seq_bn, double_seq_bn or par_bn
    /// [with --resume: the checkpoint's].
    #[arg(long, value_parser = parse_method, required_unless_present = "resume")]
    pub method: Option<Method>,
    /// LoRA rank [default: 8, as PEFT].
    #[arg(long)]
    pub r: Option<usize>,
    /// AdaLoRA: every module's rank at the start [default: 12, as PEFT].
    #[arg(long)]
    pub init_r: Option<usize>,
    /// AdaLoRA: the average rank the allocator prunes down to [default: 8, as PEFT].
    #[arg(long)]
    pub target_r: Option<usize>,
    /// AdaLoRA: steps before the first rank allocation [default: 0].
    #[arg(long)]
    pub tinit: Option<usize>,
    /// AdaLoRA: steps after the last one, at the final budget [default: 0].
    #[arg(long)]
    pub tfinal: Option<usize>,
    /// AdaLoRA: steps between allocations [default: 1].
    #[arg(long)]
    pub delta_t: Option<usize>,
    /// AdaLoRA: weight of the orthogonality regulariser on A and B [default: 0.5].
    #[arg(long)]
    pub orth_reg_weight: Option<f64>,
    /// LoRA alpha: the LoRA term is scaled by alpha/r [default: 8, as PEFT].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Dropout on the adapter's input, in [0, 1) [default: 0].
    #[arg(long)]
    pub dropout: Option<f64>,
    /// LoRA or (IA)³ targets: comma-separated module names, or all-linear [default: LoRA
    /// q_proj,v_proj; (IA)³ PEFT's for the model: k_proj,v_proj,down_proj (Qwen2: q_proj,v_proj,down_proj)].
    #[arg(long, conflicts_with = "target_regex")]
    pub targets: Option<String>,
    /// LoRA targets as PEFT's string target_modules: a regex matched against whole module names
    /// ('.*\.(q_proj|v_proj)', 'model\.layers\.1\..*_proj').
    #[arg(long)]
    pub target_regex: Option<String>,
    /// LoRA: modules left out of the targets (PEFT's exclude_modules), comma-separated names or
    /// suffixes ("o_proj,layers.0.mlp.down_proj").
    #[arg(long, conflicts_with = "exclude_regex")]
    pub exclude_modules: Option<String>,
    /// LoRA: modules left out of the targets, as a regex matched against whole module names.
    #[arg(long)]
    pub exclude_regex: Option<String>,
    /// (IA)³: the targets whose input, not output, is scaled (comma-separated) [default: down_proj].
    #[arg(long)]
    pub feedforward_modules: Option<String>,
    /// Prompt, prefix or P-tuning: learned virtual tokens before every row [default: 20].
    #[arg(long)]
    pub num_virtual_tokens: Option<usize>,
    /// Prefix tuning: train PEFT's MLP that makes the prefix (prefix_projection) instead of the prefix itself.
    #[arg(long)]
    pub prefix_projection: bool,
    /// The MLP's width, for --prefix-projection and P-tuning [default: token_dim, as PEFT].
    #[arg(long)]
    pub encoder_hidden_size: Option<usize>,
    /// Prompt tuning's init: random (N(0, 1)), sample_vocab (embeddings of random tokens) or text
    /// (embeddings of --prompt-init-text's tokens) [default: random, as PEFT].
    #[arg(long)]
    pub prompt_init: Option<String>,
    /// The text --prompt-init text starts from.
    #[arg(long)]
    pub prompt_init_text: Option<String>,
    /// LoRA scaling alpha/√r instead of alpha/r.
    #[arg(long)]
    pub rslora: bool,
    /// DoRA: LoRA with a trained magnitude per output row (PEFT's use_dora).
    #[arg(long)]
    pub use_dora: bool,
    /// Token ids whose embedding rows are trained (PEFT's trainable_token_indices beside a LoRA, or
    /// --method trainable_tokens's token_indices), comma-separated; a tied lm_head's rows follow.
    #[arg(long, value_delimiter = ',')]
    pub trainable_token_indices: Option<Vec<u32>>,
    /// The same by the tokens' text, as the tokenizer spells them ("<|im_start|>,<|im_end|>"): each
    /// must be one token of the vocabulary (added tokens included); with --trainable-token-indices,
    /// after those.
    #[arg(long, value_delimiter = ',')]
    pub trainable_tokens: Option<Vec<String>>,
    /// With --trainable-token-indices or --trainable-tokens on a model whose lm_head is not its
    /// embedding: the same ids' lm_head rows are trained too (PEFT's {"embed_tokens": ids,
    /// "lm_head": ids} beside a LoRA; with --method trainable_tokens its target_modules
    /// ["embed_tokens", "lm_head"]), so the model learns to produce the tokens as well as to read them.
    #[arg(long)]
    pub lm_head_rows: bool,
    /// Whole modules trained beside a LoRA (PEFT's modules_to_save), comma-separated: embed_tokens,
    /// lm_head. Each is a trained copy of the model's (vocab × hidden) weight, saved in the adapter.
    #[arg(long, value_delimiter = ',')]
    pub modules_to_save: Option<Vec<String>>,
    /// Per-module LoRA ranks (PEFT's rank_pattern), comma-separated PATTERN=R: each pattern a regex
    /// of the module name's tail ("q_proj=16,layers\.0\..*=4"); r elsewhere.
    #[arg(long, value_delimiter = ',')]
    pub rank_pattern: Option<Vec<String>>,
    /// Per-module LoRA alphas (PEFT's alpha_pattern), as --rank-pattern: "o_proj=32".
    #[arg(long, value_delimiter = ',')]
    pub alpha_pattern: Option<Vec<String>>,
    /// With --modules-to-save on a model whose lm_head is its embedding: one trained copy for both
    /// (PEFT's ensure_weight_tying); without it each module gets its own, as PEFT's default.
    #[arg(long)]
    pub ensure_weight_tying: bool,
    /// LoRA's init_lora_weights: kaiming (PEFT's true), gaussian, pissa, pissa_niter_K, olora or
    /// loftq (NF4); pissa/olora/loftq replace the adapted base weights, and a pissa/olora adapter is
    /// saved converted to a rank-2r LoRA of the original model [default: kaiming, as PEFT].
    #[arg(long)]
    pub init_lora_weights: Option<String>,
    /// LoftQ's alternating quantize/SVD iterations (loftq_config.loftq_iter) [default: 1, as PEFT].
    #[arg(long)]
    pub loftq_iter: Option<usize>,
    /// Bottleneck width = hidden_size / this [default: AdapterHub's preset].
    #[arg(long)]
    pub reduction_factor: Option<f64>,
    /// Bottleneck activation: relu, silu, gelu or tanh [default: AdapterHub's preset].
    #[arg(long, value_parser = parse_activation)]
    pub non_linearity: Option<Activation>,
    /// How the frozen blocks' Linear weights are stored: f32, f16, bf16, q8 (Q8_0) or nf4.
    #[arg(long, default_value = "f32")]
    pub quant: QuantFormat,
    /// Arithmetic of the quantized or f16 Linears: f32, or f16 where the GPU has shader-f16
    /// (bitsandbytes' bnb_4bit_compute_dtype; f32 elsewhere, with a note).
    #[arg(long, default_value = "f32")]
    pub compute_dtype: ComputeDtype,
    /// With --quant nf4 on a float checkpoint: the 4-bit levels, nf4 or fp4 (bnb_4bit_quant_type).
    #[arg(long, default_value = "nf4", value_parser = ["nf4", "fp4"])]
    pub bnb_4bit_quant_type: String,
    /// With --quant nf4 on a float checkpoint: keep each block's absmax in 8 bits, about 0.37 bits
    /// a weight less (bnb_4bit_use_double_quant).
    #[arg(long)]
    pub double_quant: bool,
    /// Start from this adapter folder (PEFT LoRA or AdapterHub bottleneck) instead of a fresh one.
    #[arg(long, conflicts_with = "resume")]
    pub init_adapter: Option<PathBuf>,
    /// Optimizer steps in the whole run.
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Passes over the data (may be fractional) [default: 1 when --steps is not given].
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Peak learning rate (required unless --resume).
    #[arg(long, required_unless_present = "resume")]
    pub lr: Option<f64>,
    /// Rows per micro-batch.
    #[arg(long, default_value_t = TrainRecipe::default().batch_size)]
    pub batch_size: usize,
    /// Tokens per row [default: 512, capped at the model's max_position_embeddings].
    #[arg(long)]
    pub seq_len: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = TrainRecipe::default().grad_accum)]
    pub grad_accum: usize,
    /// Steps of linear warmup from 0.
    #[arg(long, default_value_t = TrainRecipe::default().warmup_steps)]
    pub warmup: u64,
    /// The fraction of the run's steps that warm up, instead of --warmup (transformers'
    /// warmup_ratio: ceil(steps × ratio)).
    #[arg(long, default_value_t = TrainRecipe::default().warmup_ratio)]
    pub warmup_ratio: f64,
    /// The lr schedule, by transformers' lr_scheduler_type: linear, cosine, cosine_with_restarts,
    /// polynomial, constant (no warmup), constant_with_warmup, inverse_sqrt, cosine_with_min_lr,
    /// cosine_warmup_with_min_lr or warmup_stable_decay.
    #[arg(long, default_value = TrainRecipe::default().schedule.name(), value_parser = parse_schedule)]
    pub schedule: String,
    /// The schedule's lr_scheduler_kwargs, a JSON object: '{"num_cycles": 2}' (cosine_with_restarts),
    /// '{"min_lr_rate": 0.1}' (cosine_with_min_lr), '{"num_decay_steps": 20}' (warmup_stable_decay).
    #[arg(long)]
    pub schedule_kwargs: Option<String>,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = TrainRecipe::default().optimizer.weight_decay)]
    pub weight_decay: f64,
    /// LoRA+: B's learning rate is this many times --lr (PEFT's create_loraplus_optimizer; the
    /// weight decay applies to both groups, as its loraplus_weight_decay) [default: off].
    #[arg(long)]
    pub loraplus_lr_ratio: Option<f64>,
    /// LoRA+: the learning rate of a LoRA on embed_tokens at the schedule's peak (PEFT's
    /// loraplus_lr_embedding; it follows the schedule as --lr does).
    #[arg(long, default_value_t = TrainRecipe::default().optimizer.loraplus_lr_embedding)]
    pub loraplus_lr_embedding: f64,
    /// Clip the global gradient norm to this (0 = off).
    #[arg(long, default_value_t = TrainRecipe::default().optimizer.max_grad_norm)]
    pub max_grad_norm: f32,
    /// Recompute each layer's activations in the backward instead of keeping
    /// them: far less memory, about a third more time, the same gradients.
    #[arg(long)]
    pub gradient_checkpointing: bool,
    /// NEFTune (SFT): uniform noise of magnitude alpha/sqrt(T·hidden) added to the embeddings in
    /// training, as transformers' neftune_noise_alpha (the paper uses 5) [default: off].
    #[arg(long)]
    pub neftune_noise_alpha: Option<f32>,
    /// prompt/completion lines train only the completion (TRL's completion_only_loss); false: every token.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub completion_only_loss: bool,
    /// messages lines train only the assistant turns (TRL's assistant_only_loss; TRL's default is
    /// false: every token).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub assistant_only_loss: bool,
    /// DPO and KTO: score the reference model once for every row before the first step instead
    /// of in every step (TRL's precompute_ref_log_probs; the same numbers, a forward less a step).
    #[arg(long)]
    pub precompute_ref_log_probs: bool,
    /// Keep the file's row order in every epoch.
    #[arg(long)]
    pub no_shuffle: bool,
    /// Several whole examples per row of at most --seq-len tokens (best fit,
    /// longest first); attention stays inside each example.
    #[arg(long)]
    pub packing: bool,
    /// What to minimise: sft (the data's trained tokens), or dpo, orpo or cpo on preference
    /// pairs, one {"prompt", "chosen", "rejected"} a line (text, or messages rendered with the chat
    /// template), or kto on unpaired examples, one {"prompt", "completion", "label"} a line (or pairs).
    /// grpo: TRL's GRPOTrainer on prompts, one {"prompt"} a line (a text or messages, other fields
    /// passed to the reward commands): --num-generations completions sampled per prompt, scored
    /// by each --reward. rloo: TRL's RLOOTrainer on the same data and options: leave-one-out
    /// advantages, β's KL taken from the rewards, one ratio a completion. reward: TRL's
    /// RewardTrainer, a reward model on pairs {"prompt"?, "chosen", "rejected", "margin"?} (text, or
    /// messages): a LoRA with task_type SEQ_CLS whose score head (modules_to_save) rates a
    /// sequence, trained so the chosen answer scores above the rejected one (score it with `webpeft score`).
    /// classification: transformers' Trainer on a SEQ_CLS LoRA of --num-labels labels, texts
    /// {"text", "label"} a line (label: a class index, a number, or a list of numbers), the loss
    /// by --problem-type (predict with `webpeft classify`).
    #[arg(
        long,
        default_value = "sft",
        value_parser = ["sft", "dpo", "orpo", "cpo", "kto", "grpo", "rloo", "reward", "classification"]
    )]
    pub objective: String,
    /// Classification: the score head's labels, transformers' num_labels [default: 2, as transformers'].
    #[arg(long)]
    pub num_labels: Option<usize>,
    /// Classification: transformers' problem_type [default: inferred as transformers infers it: one
    /// label regression, integer labels single_label_classification, lists multi_label_classification].
    #[arg(long, value_parser = ["regression", "single_label_classification", "multi_label_classification"])]
    pub problem_type: Option<String>,
    /// TRL's disable_dropout: true turns every dropout of the steps off, the adapter's included
    /// [default: true for dpo, orpo, cpo, kto and reward, as their TRL configs; false for sft, grpo
    /// and rloo].
    #[arg(long)]
    pub disable_dropout: Option<bool>,
    /// Reward: TRL's center_rewards_coefficient, the weight of mean (r_chosen + r_rejected)² in the
    /// loss, which keeps the scores near zero [default: off].
    #[arg(long)]
    pub center_rewards_coefficient: Option<f32>,
    /// GRPO and RLOO: completions sampled for each prompt, TRL's num_generations [default: 8; rloo: 2]; a
    /// generation's rows (--batch-size × --steps-per-generation) must be a multiple of it.
    #[arg(long)]
    pub num_generations: Option<usize>,
    /// GRPO: a completion's most tokens [default: 256].
    #[arg(long)]
    pub max_completion_length: Option<usize>,
    /// GRPO: a prompt's most tokens, its first kept [default: 512].
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    /// GRPO: a reward function, repeatable: `think_format` (TRL's think_format_reward) or
    /// `cmd:COMMAND`, a shell command that reads one JSON object a completion on stdin ({"prompt",
    /// "completion", "completion_ids"} and the prompt line's other fields) and writes one number
    /// (or null: no reward) a line; or `model:DIR`, a reward model: on the same --model a SEQ_CLS
    /// LoRA that --objective reward trained, or a …ForSequenceClassification checkpoint of one label
    /// with its own tokenizer, scoring prompt + completion as TRL's GRPOTrainer does.
    #[arg(long)]
    pub reward: Vec<String>,
    /// GRPO: each --reward's weight, comma-separated [default: 1 each].
    #[arg(long, value_delimiter = ',')]
    pub reward_weights: Option<Vec<f32>>,
    /// GRPO: what divides the advantages: group (the group's std), batch or none [default: group].
    #[arg(long)]
    pub scale_rewards: Option<String>,
    /// GRPO: the sampling temperature, at which log-probabilities are taken too [default: 1].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// GRPO: sampling's top-p [default: 1, off].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// GRPO: sampling's top-k [default: 0, off].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// GRPO: leave completions that ran out of tokens (no eos) out of the loss.
    #[arg(long)]
    pub mask_truncated_completions: bool,
    /// GRPO and RLOO: print each generation's completions to stderr, a line each with the prompt,
    /// every reward and the advantage (TRL's log_completions).
    #[arg(long)]
    pub log_completions: bool,
    /// GRPO and RLOO: with --log-completions, print the generation's first N completions only
    /// (TRL's num_completions_to_print, which samples N at random) [default: all].
    #[arg(long)]
    pub num_completions_to_print: Option<usize>,
    /// RLOO: the advantages less their mean over the generation, over their std + 1e-4
    /// (TRL's normalize_advantages).
    #[arg(long)]
    pub normalize_advantages: bool,
    /// RLOO: clamp each combined reward to LOW,HIGH before β's KL (TRL's reward_clip_range).
    #[arg(long, value_delimiter = ',', num_args = 1)]
    pub reward_clip_range: Option<Vec<f32>>,
    /// GRPO: passes over each generation's completions, TRL's num_iterations [default: 1].
    #[arg(long)]
    pub num_iterations: Option<usize>,
    /// GRPO: micro-batches of --batch-size rows a generation, TRL's steps_per_generation, a
    /// multiple of --grad-accum: a generation feeds that many over --grad-accum optimizer steps,
    /// each on its own rows [default: --grad-accum].
    #[arg(long)]
    pub steps_per_generation: Option<usize>,
    /// GRPO: completions a generation, a multiple of --batch-size, instead of
    /// --steps-per-generation (TRL's generation_batch_size): steps_per_generation =
    /// generation_batch_size / batch_size.
    #[arg(long)]
    pub generation_batch_size: Option<usize>,
    /// GRPO: token (a ratio to the sampling policy each token) or sequence (one a completion,
    /// GSPO), TRL's importance_sampling_level [default: token].
    #[arg(long)]
    pub importance_sampling_level: Option<String>,
    /// GRPO: the importance ratio's clip, [1 − ε, 1 + ε_high] [default: 0.2].
    #[arg(long)]
    pub epsilon: Option<f32>,
    /// GRPO: the clip's upper ε [default: --epsilon].
    #[arg(long)]
    pub epsilon_high: Option<f32>,
    /// GRPO: the two-sided cap of the ratio (TRL's delta) [default: none].
    #[arg(long)]
    pub delta: Option<f32>,
    /// GRPO: keep the policy term only on each micro-batch's completion tokens whose entropy is in
    /// its top ρ (TRL's top_entropy_quantile, in [0, 1]; β's KL keeps every token) [default: 1, all].
    #[arg(long)]
    pub top_entropy_quantile: Option<f64>,
    /// DPO, ORPO and CPO: β (DPO's and CPO's temperature, ORPO's λ) [default: 0.1, as TRL]; GRPO:
    /// the KL coefficient [default: 0, no reference].
    #[arg(long)]
    pub beta: Option<f32>,
    /// DPO and CPO: label smoothing ε in [0, 0.5], the chance a label is flipped (cDPO; DPO's
    /// sigmoid, robust, exo_pair, aot and aot_pair losses, CPO's sigmoid and simpo) [default: 0].
    #[arg(long)]
    pub label_smoothing: Option<f32>,
    /// The objective's loss, TRL's loss_type. SFT's nll [default] or dft (Dynamic Fine-Tuning: each
    /// token's cross-entropy weighted by its probability, held constant in the gradient). DPO's or
    /// CPO's [default: sigmoid]: DPO's sigmoid, robust, exo_pair,
    /// hinge, ipo, sppo_hard, nca_pair, apo_zero, apo_down, discopop, aot, aot_pair, bco_pair, sft;
    /// CPO's sigmoid, hinge, ipo, simpo, alphapo (simpo without the NLL term, with --alphapo-alpha;
    /// ipo and simpo score answers by their mean log-probability); KTO's kto, apo_zero_unpaired.
    /// GRPO's grpo, bnpo, dr_grpo, dapo [default: dapo].
    /// DPO's may list up to 4, comma-separated, whose losses are summed (MPO:
    /// sigmoid,bco_pair,sft with --loss-weights 0.8,0.2,1).
    #[arg(long)]
    pub loss_type: Option<String>,
    /// DPO: the weight of each loss --loss-type lists, comma-separated (TRL's loss_weights) [default: 1 each].
    #[arg(long, value_delimiter = ',')]
    pub loss_weights: Option<Vec<f32>>,
    /// CPO: the weight of the chosen answers' NLL (TRL's cpo_alpha; SimPO's paper: 0) [default: 1].
    #[arg(long)]
    pub cpo_alpha: Option<f32>,
    /// CPO: AlphaPO's α (TRL's CPOConfig.alpha): each answer's reward (1 − p^−α)/α, p its
    /// probability, in place of its log-probability; with --loss-type alphapo (simpo, no NLL
    /// term) as its paper trains [default: 0, off].
    #[arg(long)]
    pub alphapo_alpha: Option<f32>,
    /// CPO's simpo loss: the target reward margin γ (TRL's simpo_gamma) [default: 0.5].
    #[arg(long)]
    pub simpo_gamma: Option<f32>,
    /// KTO: the weight of a desirable example's loss (TRL's desirable_weight) [default: 1].
    #[arg(long)]
    pub desirable_weight: Option<f32>,
    /// KTO: the weight of an undesirable example's loss (TRL's undesirable_weight) [default: 1].
    #[arg(long)]
    pub undesirable_weight: Option<f32>,
    /// DPO: adds this times the NLL of the chosen answers (RPO; TRL's rpo_alpha) [default: off].
    #[arg(long)]
    pub rpo_alpha: Option<f32>,
    /// DPO's discopop loss: its temperature τ [default: 0.05, as TRL].
    #[arg(long)]
    pub discopop_tau: Option<f32>,
    /// DPO without the reference model in the loss (TRL's reference_free; the rewards still use it).
    #[arg(long)]
    pub reference_free: bool,
    /// DPO's f_divergence_type: reverse_kl (TRL's default), js_divergence or alpha_divergence, for
    /// the sigmoid, robust, exo_pair, hinge and ipo losses.
    #[arg(long)]
    pub f_divergence_type: Option<String>,
    /// DPO's alpha_divergence coefficient (TRL's f_alpha_divergence_coef) [default: 1].
    #[arg(long)]
    pub f_alpha_divergence_coef: Option<f32>,
    /// Seeds the adapter's initialisation, the shuffling and the dropout.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Held-out JSONL file: its loss and perplexity are printed after training (preference
    /// objectives: held-out pairs or examples, with TRL's eval_loss and eval_rewards/* metrics).
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Also evaluate on --eval-data every this many steps (a line with the step).
    #[arg(long, requires = "eval_data")]
    pub eval_steps: Option<u64>,
    /// Stop after this many evaluations in a row without a lower eval loss (transformers'
    /// EarlyStoppingCallback; needs --eval-steps).
    #[arg(long, requires = "eval_steps")]
    pub early_stopping_patience: Option<usize>,
    /// The least decrease of the eval loss that counts as an improvement [default: 0].
    #[arg(long, requires = "early_stopping_patience", default_value_t = 0.0)]
    pub early_stopping_threshold: f32,
    /// Write the adapter of the best evaluation to --out at the end, not the last one
    /// (transformers' load_best_model_at_end; needs --eval-steps). The training state
    /// stays the last step's, so --resume goes on from there.
    #[arg(long, requires = "eval_steps")]
    pub load_best_at_end: bool,
    /// Continue the run saved in this folder's training_state.safetensors:
    /// the same schedule, step total, learning rate and accumulation as when it
    /// started (those flags are then ignored), from the saved data position.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Stop after this many steps of this invocation, writing the adapter and
    /// the checkpoint as at the end (continue later with --resume).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Also write the adapter and the checkpoint every this many steps.
    #[arg(long)]
    pub save_steps: Option<u64>,
    /// The folder to write the adapter files and training_state.safetensors to.
    #[arg(long)]
    pub out: PathBuf,
    /// The options given on the command line, not defaulted (clap ids).
    #[arg(skip)]
    pub given: std::collections::BTreeSet<String>,
}

pub fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_name(s).map_err(|_| format!("expected {}", Method::NAMES))
}

/// `--targets`: "all-linear" or comma-separated module names.
fn parse_targets(t: &str) -> TargetModules {
    match t {
        "all-linear" => TargetModules::AllLinear,
        list => TargetModules::List(names(list)),
    }
}

/// `--rank-pattern` / `--alpha-pattern`'s PATTERN=VALUE entries.
fn pattern<T: std::str::FromStr>(flag: &str, entries: &Option<Vec<String>>) -> Result<BTreeMap<String, T>, String> {
    let mut out = BTreeMap::new();
    for e in entries.iter().flatten() {
        let parsed = e.rsplit_once('=').and_then(|(k, v)| Some((k.trim(), v.trim().parse::<T>().ok()?)));
        match parsed {
            Some((k, v)) if !k.is_empty() => out.insert(k.to_string(), v),
            _ => return Err(format!("{flag}: {e:?} is not PATTERN=VALUE (e.g. q_proj=16)")),
        };
    }
    Ok(out)
}

/// A comma-separated list of module names.
fn names(list: &str) -> Vec<String> {
    list.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect()
}

fn parse_activation(s: &str) -> Result<Activation, String> {
    Activation::from_name(s).ok_or_else(|| "expected relu, silu, gelu or tanh".to_string())
}

fn parse_schedule(s: &str) -> Result<String, String> {
    match SCHEDULE_NAMES.contains(&s) {
        true => Ok(s.to_string()),
        false => Err(format!("expected one of {}", SCHEDULE_NAMES.join(", "))),
    }
}

/// The schedule --schedule and --schedule-kwargs name.
pub fn schedule_of(name: &str, kwargs: Option<&str>) -> webpeft::Result<Schedule> {
    let kwargs = match kwargs {
        None => serde_json::Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| webpeft::Error::TrainOption { option: "schedule_kwargs", detail: format!("not JSON: {e}") })?,
    };
    Schedule::with_kwargs(name, &kwargs)
}

/// One `train` line per optimizer step (f32 fields print as f32).
#[derive(serde::Serialize)]
struct StepLine {
    step: u64,
    loss: f32,
    lr: f64,
    grad_norm: f32,
    tokens_per_s: f64,
    /// SFT: TRL's `entropy`, `mean_token_accuracy` and `num_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    entropy: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mean_token_accuracy: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_tokens: Option<u64>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    rewards: Option<RewardsLine>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    kto: Option<KtoLine>,
    /// Reward: TRL's min_reward, mean_reward, max_reward, accuracy, margin.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    reward: Option<RewardLine>,
}

/// A reward model's step metrics, named as TRL's `RewardTrainer` logs them.
#[derive(serde::Serialize)]
struct RewardLine {
    min_reward: f32,
    mean_reward: f32,
    max_reward: f32,
    accuracy: f32,
    margin: f32,
}

impl RewardLine {
    fn of(r: &RewardStats) -> RewardLine {
        RewardLine {
            min_reward: r.min_reward,
            mean_reward: r.mean_reward,
            max_reward: r.max_reward,
            accuracy: r.accuracy,
            margin: r.margin,
        }
    }
}

/// A KTO step's metrics, named as TRL logs them.
#[derive(serde::Serialize)]
struct KtoLine {
    kl: f32,
    #[serde(rename = "rewards/chosen_sum")]
    rewards_chosen_sum: f32,
    #[serde(rename = "rewards/rejected_sum")]
    rewards_rejected_sum: f32,
    #[serde(rename = "logps/chosen_sum")]
    logps_chosen_sum: f32,
    #[serde(rename = "logps/rejected_sum")]
    logps_rejected_sum: f32,
    #[serde(rename = "count/chosen")]
    count_chosen: f32,
    #[serde(rename = "count/rejected")]
    count_rejected: f32,
}

impl KtoLine {
    fn of(k: &KtoStats) -> KtoLine {
        KtoLine {
            kl: k.kl,
            rewards_chosen_sum: k.rewards_chosen_sum,
            rewards_rejected_sum: k.rewards_rejected_sum,
            logps_chosen_sum: k.logps_chosen_sum,
            logps_rejected_sum: k.logps_rejected_sum,
            count_chosen: k.count_chosen,
            count_rejected: k.count_rejected,
        }
    }
}

/// A preference step's metrics, named as TRL logs them.
#[derive(serde::Serialize)]
struct RewardsLine {
    #[serde(rename = "rewards/chosen")]
    chosen: f32,
    #[serde(rename = "rewards/rejected")]
    rejected: f32,
    #[serde(rename = "rewards/accuracies")]
    accuracies: f32,
    #[serde(rename = "rewards/margins")]
    margins: f32,
    #[serde(rename = "logps/chosen")]
    logps_chosen: f32,
    #[serde(rename = "logps/rejected")]
    logps_rejected: f32,
    #[serde(rename = "logits/chosen", skip_serializing_if = "Option::is_none")]
    logits_chosen: Option<f32>,
    #[serde(rename = "logits/rejected", skip_serializing_if = "Option::is_none")]
    logits_rejected: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nll_loss: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_odds_ratio: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_odds_chosen: Option<f32>,
}

impl RewardsLine {
    fn of(p: &PreferenceStats) -> RewardsLine {
        RewardsLine {
            chosen: p.rewards_chosen,
            rejected: p.rewards_rejected,
            accuracies: p.rewards_accuracies,
            margins: p.rewards_margins,
            logps_chosen: p.logps_chosen,
            logps_rejected: p.logps_rejected,
            logits_chosen: p.logits.map(|l| l[0]),
            logits_rejected: p.logits.map(|l| l[1]),
            nll_loss: p.orpo.map(|o| o[0]).or(p.nll_loss),
            log_odds_ratio: p.orpo.map(|o| o[1]),
            log_odds_chosen: p.orpo.map(|o| o[2]),
        }
    }
}

/// The `train` line after the run when --eval-data is given.
#[derive(serde::Serialize)]
struct EvalLine {
    /// The step it was measured after (none: the end of training).
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<u64>,
    eval_loss: f32,
    eval_perplexity: f64,
    eval_tokens: usize,
    /// TRL's `eval_entropy`, `eval_mean_token_accuracy` and `eval_num_tokens`
    /// (the tokens trained on so far).
    eval_entropy: f32,
    eval_mean_token_accuracy: f32,
    eval_num_tokens: u64,
}

/// A library error about an adapter option, reworded for the flag that set it
/// (`adapter_config.json: field r: …` → `--r: …`).
pub(crate) fn flag_error(e: webpeft::Error) -> String {
    let (field, detail) = match &e {
        webpeft::Error::AdapterConfig { field, detail }
        | webpeft::Error::AdapterUnsupported { field, detail }
        | webpeft::Error::BottleneckConfig { field, detail } => (field.as_str(), detail),
        // The recipe's names are the flags' with underscores.
        webpeft::Error::TrainOption { option, detail } => {
            return match *option {
                "warmup_steps" => format!("--warmup: {detail}"),
                "beta1" | "beta2" | "eps" => e.to_string(),
                o => format!("--{}: {detail}", o.replace('_', "-")),
            }
        }
        _ => return e.to_string(),
    };
    let flag = match field.strip_prefix("config.").unwrap_or(field) {
        "r" => "--r",
        "lora_alpha" => "--alpha",
        "lora_dropout" | "dropout" => "--dropout",
        "target_modules" => "--targets",
        "exclude_modules" => "--exclude-modules",
        "feedforward_modules" => "--feedforward-modules",
        "num_virtual_tokens" => "--num-virtual-tokens",
        "encoder_hidden_size" => "--encoder-hidden-size",
        "prompt_tuning_init_text" => "--prompt-init-text",
        "reduction_factor" => "--reduction-factor",
        "non_linearity" => "--non-linearity",
        "init_lora_weights" => "--init-lora-weights",
        "use_dora" => "--use-dora",
        f if f.starts_with("trainable_token_indices") => "--trainable-token-indices",
        f if f.starts_with("modules_to_save") => "--modules-to-save",
        f if f.starts_with("rank_pattern") => "--rank-pattern",
        f if f.starts_with("alpha_pattern") => "--alpha-pattern",
        "lm_head_rows" => "--lm-head-rows",
        "ensure_weight_tying" => "--ensure-weight-tying",
        "loftq_config.loftq_iter" => "--loftq-iter",
        _ => return e.to_string(),
    };
    format!("{flag}: {detail}")
}

/// The folder's own name (`base_model_name_or_path` / `model_name`).
fn model_name(dir: &Path) -> Option<String> {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(dir).or_else(|| std::fs::canonicalize(dir).ok().as_deref().and_then(named))
}

impl TrainArgs {
    /// `--bnb-4bit-quant-type` and `--double-quant`.
    pub(crate) fn four_bit(&self) -> webpeft::quant::FourBitOptions {
        let kind = match self.bnb_4bit_quant_type.as_str() {
            "fp4" => webpeft::quant::FourBit::Fp4,
            _ => webpeft::quant::FourBit::Nf4,
        };
        webpeft::quant::FourBitOptions { kind, double_quant: self.double_quant }
    }

    /// Every adapter option: its flag, whether it was given, and the methods
    /// that take it ("bn": the bottleneck kinds).
    fn adapter_flags(&self) -> [(&'static str, bool, &'static [&'static str]); 32] {
        [
            ("--target-regex", self.target_regex.is_some(), &["lora"]),
            ("--exclude-modules", self.exclude_modules.is_some(), &["lora"]),
            ("--exclude-regex", self.exclude_regex.is_some(), &["lora"]),
            ("--rank-pattern", self.rank_pattern.is_some(), &["lora"]),
            ("--alpha-pattern", self.alpha_pattern.is_some(), &["lora"]),
            ("--lm-head-rows", self.lm_head_rows, &["lora", "tokens"]),
            ("--modules-to-save", self.modules_to_save.is_some(), &["lora"]),
            ("--ensure-weight-tying", self.ensure_weight_tying, &["lora"]),
            ("--trainable-token-indices", self.trainable_token_indices.is_some(), &["lora", "tokens"]),
            ("--trainable-tokens", self.trainable_tokens.is_some(), &["lora", "tokens"]),
            ("--init-lora-weights", self.init_lora_weights.is_some(), &["lora"]),
            ("--loftq-iter", self.loftq_iter.is_some(), &["lora"]),
            ("--r", self.r.is_some(), &["lora"]),
            ("--alpha", self.alpha.is_some(), &["lora", "adalora"]),
            ("--rslora", self.rslora, &["lora"]),
            ("--use-dora", self.use_dora, &["lora"]),
            ("--targets", self.targets.is_some(), &["lora", "adalora", "ia3"]),
            ("--dropout", self.dropout.is_some(), &["lora", "adalora", "bn"]),
            ("--init-r", self.init_r.is_some(), &["adalora"]),
            ("--target-r", self.target_r.is_some(), &["adalora"]),
            ("--tinit", self.tinit.is_some(), &["adalora"]),
            ("--tfinal", self.tfinal.is_some(), &["adalora"]),
            ("--delta-t", self.delta_t.is_some(), &["adalora"]),
            ("--orth-reg-weight", self.orth_reg_weight.is_some(), &["adalora"]),
            ("--feedforward-modules", self.feedforward_modules.is_some(), &["ia3"]),
            ("--reduction-factor", self.reduction_factor.is_some(), &["bn"]),
            ("--non-linearity", self.non_linearity.is_some(), &["bn"]),
            ("--num-virtual-tokens", self.num_virtual_tokens.is_some(), &["pt", "prefix", "ptune"]),
            ("--prefix-projection", self.prefix_projection, &["prefix"]),
            ("--encoder-hidden-size", self.encoder_hidden_size.is_some(), &["prefix", "ptune"]),
            ("--prompt-init", self.prompt_init.is_some(), &["pt"]),
            ("--prompt-init-text", self.prompt_init_text.is_some(), &["pt"]),
        ]
    }

    /// The method (clap requires it unless --resume, which sets it).
    pub(crate) fn method(&self) -> Method {
        self.method.unwrap_or(Method::Lora)
    }

    /// Options that belong to another method are a mistake.
    pub(crate) fn check_method_options(&self) -> Result<(), String> {
        let method = self.method();
        let kind = match method {
            Method::Lora => "lora",
            Method::AdaLora => "adalora",
            Method::Ia3 => "ia3",
            Method::PromptTuning => "pt",
            Method::PrefixTuning => "prefix",
            Method::PTuning => "ptune",
            Method::TrainableTokens => "tokens",
            Method::Bottleneck(_) => "bn",
        };
        let flags = self.adapter_flags();
        let wrong: Vec<&str> =
            flags.iter().filter(|(_, given, takes)| *given && !takes.contains(&kind)).map(|f| f.0).collect();
        if wrong.is_empty() {
            return Ok(());
        }
        let takes: Vec<&str> = flags.iter().filter(|f| f.2.contains(&kind)).map(|f| f.0).collect();
        let (last, rest) = takes.split_last().expect("every method takes an option");
        let takes = if rest.is_empty() { format!("only {last}") } else { format!("{} and {last}", rest.join(", ")) };
        Err(format!(
            "{} {} not {} of --method {}, which takes {takes}",
            wrong.join(", "),
            if wrong.len() == 1 { "is" } else { "are" },
            if wrong.len() == 1 { "an option" } else { "options" },
            method.name(),
        ))
    }

    /// The adapter the command line's options describe (the rest at the recipe's defaults).
    pub(crate) fn adapter_recipe(&self) -> Result<AdapterRecipe, String> {
        let mut recipe = AdapterRecipe::new(self.method());
        match &mut recipe {
            AdapterRecipe::Lora(l) => {
                l.r = self.r.unwrap_or(l.r);
                l.alpha = self.alpha.unwrap_or(l.alpha);
                l.dropout = self.dropout.unwrap_or(l.dropout);
                if let Some(t) = self.targets.as_deref() {
                    l.targets = parse_targets(t);
                }
                l.use_rslora = self.rslora;
                l.use_dora = self.use_dora;
                l.trainable_token_indices = self.trainable_token_indices.clone();
                l.modules_to_save = self.modules_to_save.clone();
                l.lm_head_rows = self.lm_head_rows;
                l.ensure_weight_tying = self.ensure_weight_tying;
                if let Some(r) = &self.target_regex {
                    l.targets = TargetModules::Regex(r.clone());
                }
                l.exclude_modules = match (&self.exclude_modules, &self.exclude_regex) {
                    (Some(list), _) => Some(TargetModules::List(names(list))),
                    (_, Some(r)) => Some(TargetModules::Regex(r.clone())),
                    _ => None,
                };
                l.rank_pattern = pattern("--rank-pattern", &self.rank_pattern)?;
                l.alpha_pattern = pattern("--alpha-pattern", &self.alpha_pattern)?;
                l.init = match self.init_lora_weights.as_deref() {
                    Some(name) => InitLoraWeights::from_name(name, self.loftq_iter.unwrap_or(1)).map_err(flag_error)?,
                    None => l.init,
                };
                if self.loftq_iter.is_some() && !matches!(l.init, InitLoraWeights::Loftq { .. }) {
                    return Err("--loftq-iter: only with --init-lora-weights loftq".into());
                }
                if self.loftq_iter == Some(0) {
                    return Err("--loftq-iter: must be at least 1, got 0".into());
                }
                if self.objective == "reward" {
                    l.task_type = TaskType::SeqCls;
                }
                if self.objective == "classification" {
                    l.task_type = TaskType::SeqCls;
                    l.num_labels = Some(self.num_labels.unwrap_or(DEFAULT_NUM_LABELS));
                }
            }
            AdapterRecipe::AdaLora(a) => {
                a.lora.alpha = self.alpha.unwrap_or(a.lora.alpha);
                a.lora.dropout = self.dropout.unwrap_or(a.lora.dropout);
                if let Some(t) = self.targets.as_deref() {
                    a.lora.targets = parse_targets(t);
                }
                a.init_r = self.init_r.unwrap_or(a.init_r);
                a.target_r = self.target_r.unwrap_or(a.target_r);
                a.tinit = self.tinit.unwrap_or(a.tinit);
                a.tfinal = self.tfinal.unwrap_or(a.tfinal);
                a.delta_t = self.delta_t.unwrap_or(a.delta_t);
                a.orth_reg_weight = self.orth_reg_weight.unwrap_or(a.orth_reg_weight);
            }
            AdapterRecipe::Ia3(a) => {
                a.targets = self.targets.as_deref().map(parse_targets);
                a.feedforward = self.feedforward_modules.as_deref().map(names);
            }
            AdapterRecipe::PrefixTuning { num_virtual_tokens, prefix_projection, encoder_hidden_size } => {
                *num_virtual_tokens = self.num_virtual_tokens.unwrap_or(*num_virtual_tokens);
                *prefix_projection = self.prefix_projection;
                *encoder_hidden_size = self.encoder_hidden_size;
            }
            AdapterRecipe::PTuning { num_virtual_tokens, encoder_hidden_size } => {
                *num_virtual_tokens = self.num_virtual_tokens.unwrap_or(*num_virtual_tokens);
                *encoder_hidden_size = self.encoder_hidden_size;
            }
            AdapterRecipe::TrainableTokens { token_indices, lm_head_rows } => {
                *token_indices = self.trainable_token_indices.clone().unwrap_or_default();
                *lm_head_rows = self.lm_head_rows;
            }
            AdapterRecipe::PromptTuning(p) => {
                p.num_virtual_tokens = self.num_virtual_tokens.unwrap_or(p.num_virtual_tokens);
                let text = self.prompt_init_text.as_deref();
                match (self.prompt_init.as_deref(), text) {
                    (Some(init), _) => {
                        p.init = webpeft::web::options::prompt_init(init, text).map_err(|e| match e {
                            webpeft::Error::TrainOption { detail, .. } => format!("--prompt-init: {detail}"),
                            e => e.to_string(),
                        })?
                    }
                    (None, Some(t)) => p.init = webpeft::peft::prompt_tuning::PromptTuningInit::Text(t.to_string()),
                    (None, None) => {}
                }
            }
            AdapterRecipe::Bottleneck(b) => {
                b.reduction_factor = self.reduction_factor.unwrap_or(b.reduction_factor);
                b.non_linearity = self.non_linearity.unwrap_or(b.non_linearity);
                b.dropout = self.dropout.unwrap_or(b.dropout);
            }
        }
        Ok(recipe)
    }

    /// The GRPO options given, by flag.
    pub(crate) fn grpo_flags(&self) -> [(&'static str, bool); 22] {
        [
            ("--num-iterations", self.num_iterations.is_some()),
            ("--steps-per-generation", self.steps_per_generation.is_some()),
            ("--generation-batch-size", self.generation_batch_size.is_some()),
            ("--importance-sampling-level", self.importance_sampling_level.is_some()),
            ("--epsilon", self.epsilon.is_some()),
            ("--epsilon-high", self.epsilon_high.is_some()),
            ("--delta", self.delta.is_some()),
            ("--top-entropy-quantile", self.top_entropy_quantile.is_some()),
            ("--num-generations", self.num_generations.is_some()),
            ("--max-completion-length", self.max_completion_length.is_some()),
            ("--max-prompt-length", self.max_prompt_length.is_some()),
            ("--reward", !self.reward.is_empty()),
            ("--reward-weights", self.reward_weights.is_some()),
            ("--scale-rewards", self.scale_rewards.is_some()),
            ("--temperature", self.temperature.is_some()),
            ("--top-p", self.top_p.is_some()),
            ("--top-k", self.top_k.is_some()),
            ("--mask-truncated-completions", self.mask_truncated_completions),
            ("--normalize-advantages", self.normalize_advantages),
            ("--log-completions", self.log_completions),
            ("--num-completions-to-print", self.num_completions_to_print.is_some()),
            ("--reward-clip-range", self.reward_clip_range.is_some()),
        ]
    }

    /// Whether the objective samples groups of completions (grpo or rloo).
    pub(crate) fn samples_groups(&self) -> bool {
        matches!(self.objective.as_str(), "grpo" | "rloo")
    }

    /// GRPO's options given to another objective: refused, naming the first.
    fn refuse_grpo_options(&self) -> Result<(), String> {
        match self.grpo_flags().iter().find(|f| f.1) {
            Some((flag, _)) => Err(format!("{flag} applies to --objective grpo and rloo only")),
            None => Ok(()),
        }
    }

    /// How to train, from the command line's options (the rest at the recipe's defaults).
    pub(crate) fn train_recipe(&self) -> webpeft::Result<TrainRecipe> {
        let mut t = TrainRecipe::default();
        t.lr = self.lr.unwrap_or(t.lr);
        t.schedule = schedule_of(&self.schedule, self.schedule_kwargs.as_deref())?;
        t.warmup_steps = self.warmup;
        t.warmup_ratio = self.warmup_ratio;
        t.steps = self.steps;
        t.epochs = self.epochs.unwrap_or(t.epochs);
        t.grad_accum = self.grad_accum;
        t.optimizer.weight_decay = self.weight_decay;
        t.optimizer.max_grad_norm = self.max_grad_norm;
        t.optimizer.loraplus_lr_ratio = self.loraplus_lr_ratio;
        t.optimizer.loraplus_lr_embedding = self.loraplus_lr_embedding;
        t.batch_size = self.batch_size;
        t.seq_len = self.seq_len.unwrap_or(t.seq_len);
        t.packing = self.packing;
        t.shuffle = !self.no_shuffle;
        t.seed = self.seed;
        t.gradient_checkpointing = self.gradient_checkpointing;
        t.neftune_noise_alpha = self.neftune_noise_alpha;
        t.loss_masks =
            LossMasks { completion_only: self.completion_only_loss, assistant_only: self.assistant_only_loss };
        t.precompute_ref_log_probs = self.precompute_ref_log_probs;
        t.disable_dropout = self.disable_dropout;
        let preference = PreferenceOptions {
            beta: self.beta,
            label_smoothing: self.label_smoothing,
            loss_type: self.loss_type.clone(),
            loss_weights: self.loss_weights.clone(),
            rpo_alpha: self.rpo_alpha,
            discopop_tau: self.discopop_tau,
            reference_free: self.reference_free.then_some(true),
            f_divergence_type: self.f_divergence_type.clone(),
            f_alpha_divergence_coef: self.f_alpha_divergence_coef,
            cpo_alpha: self.cpo_alpha,
            simpo_gamma: self.simpo_gamma,
            alphapo_alpha: self.alphapo_alpha,
            desirable_weight: self.desirable_weight,
            undesirable_weight: self.undesirable_weight,
            center_rewards_coefficient: self.center_rewards_coefficient,
        };
        t.objective = Objective::from_options(&self.objective, &preference)?;
        match &mut t.objective {
            Objective::Classification(loss) => {
                loss.num_labels = self.num_labels.unwrap_or(DEFAULT_NUM_LABELS);
                loss.problem_type = self.problem_type.as_deref().and_then(ProblemType::from_name);
                loss.validate()?;
            }
            _ => {
                for (given, flag) in
                    [(self.num_labels.is_some(), "num_labels"), (self.problem_type.is_some(), "problem_type")]
                {
                    if given {
                        return Err(webpeft::Error::TrainOption {
                            option: flag,
                            detail: "applies to --objective classification only".into(),
                        });
                    }
                }
            }
        }
        Ok(t)
    }

    /// A fresh adapter from the command line's options, for a run of
    /// `total_steps` (PiSSA, OLoRA and LoftQ replace `model`'s adapted
    /// weights, read again from `files` on a quantized base).
    pub(crate) async fn new_adapter(
        &self,
        gpu: &Gpu,
        model: &mut Model,
        files: &DirFiles,
        tokenizer: &Tokenizer,
        total_steps: u64,
    ) -> Result<Adapter, String> {
        let texts = self.trainable_tokens.as_deref().unwrap_or_default();
        self.adapter_recipe()?
            .with_token_texts(texts, Some(tokenizer))
            .map_err(flag_error)?
            .for_run(total_steps)
            .build_adjusting_base(gpu, model, Some(files), Some(tokenizer), model_name(&self.model), self.seed)
            .await
            .map_err(flag_error)
    }

    /// Says on stderr which given adapter options `source`'s config overrides.
    pub(crate) fn note_ignored_options(&self, source: &str) {
        let given: Vec<&str> = self.adapter_flags().iter().filter(|f| f.1).map(|f| f.0).collect();
        if !given.is_empty() {
            eprintln!("note: {} ignored: the adapter config in {source} wins", given.join(", "));
        }
    }
}

/// A JSONL file's examples as rows, named by the file's path in errors.
/// The line an evaluation on `eval` prints, and its loss: SFT's loss,
/// perplexity and tokens, or a preference objective's `eval_loss` and TRL's
/// `eval_`-prefixed metrics (as its `evaluate()` names them).
async fn eval_line(
    gpu: &Gpu,
    run: &Run,
    model: &webpeft::model::Model,
    eval: &Dataset,
    step: Option<u64>,
) -> Result<(String, f32), Box<dyn std::error::Error>> {
    if run.trainer.objective.is_sft() {
        let stats = run.evaluate(gpu, model, eval).await?;
        let line = EvalLine {
            step,
            eval_loss: stats.loss,
            eval_perplexity: stats.perplexity,
            eval_tokens: stats.tokens,
            eval_entropy: stats.entropy,
            eval_mean_token_accuracy: stats.mean_token_accuracy,
            eval_num_tokens: run.trainer.tokens_seen,
        };
        return Ok((serde_json::to_string(&line)?, stats.loss));
    }
    let (loss, metrics): (f64, Vec<(String, f64)>) = match run.trainer.objective {
        Objective::Classification(c) => {
            let e = evaluate_classification(gpu, model, Some(&run.trainer.adapter), &eval.epoch(0), &c).await?;
            (e.loss as f64, e.accuracy.map(|a| ("accuracy".to_string(), a as f64)).into_iter().collect())
        }
        Objective::Reward(r) => {
            let e = evaluate_reward(gpu, model, Some(&run.trainer.adapter), &eval.epoch(0), &r).await?;
            let mut metrics: Vec<(String, f64)> =
                e.stats.metrics().iter().map(|(k, v)| (k.to_string(), *v as f64)).collect();
            // TRL logs the run's training tokens so far beside them (`eval_num_tokens`).
            metrics.push(("num_tokens".into(), run.trainer.tokens_seen as f64));
            (e.loss as f64, metrics)
        }
        _ => {
            let e = run.trainer.evaluate_preference(gpu, model, &eval.epoch(0)).await?;
            (e.loss, e.metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect())
        }
    };
    let mut fields: Vec<String> = step.map(|s| format!("\"step\":{s}")).into_iter().collect();
    // f32 fields print as f32, as the step lines' do.
    let number = |v: f64| serde_json::to_string(&(v as f32));
    fields.push(format!("\"eval_loss\":{}", number(loss)?));
    for (name, value) in &metrics {
        fields.push(format!("\"eval_{name}\":{}", number(*value)?));
    }
    Ok((format!("{{{}}}", fields.join(",")), loss as f32))
}

pub(crate) fn read_dataset(
    recipe: &TrainRecipe,
    path: &Path,
    tokenizer: &Tokenizer,
    opts: &DataOptions,
) -> Result<Dataset, Box<dyn std::error::Error>> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
    Ok(recipe.dataset(&name, &bytes, Some(tokenizer), opts)?)
}

/// Writes the base a LoftQ adapter trains on into `out`/loftq_base: a model
/// folder (f32 weights, the model's config and tokenizer files) to load with
/// bitsandbytes' NF4 and put the adapter on, as PEFT's LoftQ example does.
async fn write_loftq_base(
    gpu: &Gpu,
    model: &Model,
    lora: &LoraAdapter,
    files: &DirFiles,
    dir: &Path,
    out: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let bytes = export_loftq_base(gpu, model, lora, files).await?;
    let base = out.join(LOFTQ_BASE_DIR);
    write_model_folder(dir, &base, &bytes)?;
    eprintln!(
        "note: {}: the LoftQ base this adapter belongs with ({:.2} MiB f32); load it with bitsandbytes' nf4 and \
         the adapter on it",
        base.display(),
        bytes.len() as f64 / 1048576.0
    );
    Ok(())
}

/// Writes the adapter files and the training state of `run` into `out`.
async fn save_run(
    gpu: &Gpu,
    run: &Run,
    model: &Model,
    out: &Path,
    options: &serde_json::Value,
) -> Result<(), Box<dyn std::error::Error>> {
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    };
    for (name, bytes) in run.trainer.adapter.to_files(gpu, &model.config).await? {
        write(&name, &bytes)?;
    }
    let mut progress = run.progress();
    progress["options"] = options.clone();
    let state = save_checkpoint(gpu, &run.trainer, &model.config, &progress).await?;
    write(CHECKPOINT_FILE, &state)?;
    Ok(())
}

/// How a `train` run ended (other errors are `Err`).
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    Done,
    /// `--stop-after` steps ran; the run can go on with `--resume`.
    Paused,
    /// --early-stopping-patience evaluations in a row did not improve.
    NoImprovement,
    /// A step's loss or gradient norm was NaN or infinite: the error was
    /// printed and the last good state written.
    NonFinite,
}

/// `webpeft train`.
pub async fn train(mut a: TrainArgs) -> Result<Stopped, Box<dyn std::error::Error>> {
    // A GRPO (or RLOO) run's checkpoint goes on as one (a typed --objective is checked against it there).
    if !a.given.contains("objective") {
        if let Some(saved) =
            a.resume.as_deref().and_then(resume::saved_objective).filter(|o| o == "grpo" || o == "rloo")
        {
            a.objective = saved;
        }
    }
    if a.samples_groups() {
        return crate::grpo::train_grpo(a).await;
    }
    a.refuse_grpo_options()?;
    // A resumed run is the run its checkpoint holds (resume.rs).
    let (checkpoint, saved_config) = match a.resume.clone() {
        Some(dir) => {
            let path = dir.join(CHECKPOINT_FILE);
            let bytes = std::fs::read(&path).map_err(|e| format!("--resume: {}: {e}", path.display()))?;
            let saved = read_checkpoint(&bytes).map_err(|e| format!("--resume {}: {e}", dir.display()))?;
            resume::settle(&mut a, &saved, &dir)?;
            (Some(bytes), Some(saved.config))
        }
        None => (None, None),
    };
    a.check_method_options()?;
    // Prompt tuning's virtual tokens take positions of their own: rows are cut to fit beside them.
    let virtual_tokens = match (&saved_config, &a.init_adapter) {
        (Some(c), _) => c.virtual_tokens(),
        (None, Some(dir)) => folder_virtual_tokens(dir),
        (None, None) => a.adapter_recipe()?.virtual_tokens(),
    };
    if let Some(dir) = &a.init_adapter {
        a.note_ignored_options(&dir.display().to_string());
    }
    if a.objective == "classification" && a.num_labels.is_none() {
        // Where --init-adapter holds a classifier, its score head says how many labels.
        a.num_labels = a.init_adapter.as_deref().and_then(folder_num_labels);
    }
    let mut recipe = a.train_recipe().map_err(flag_error)?;
    recipe.validate().map_err(flag_error)?;
    recipe.check_positions_before(virtual_tokens).map_err(flag_error)?;
    let data_path = a.data.clone().ok_or("--data is required")?;
    let files = DirFiles::new(&a.model)?;
    // config.json first: a folder that is no model at all says so, not that its tokenizer is missing.
    let config = Config::load(&files).await?;
    let tokenizer = Tokenizer::load(&files).await?;
    tokenizer.check_model(&config)?;
    if let (Objective::Classification(loss), None, Some(own)) =
        (&mut recipe.objective, a.num_labels, config.head.num_labels())
    {
        // A classifier checkpoint's labels, unless --num-labels or --init-adapter said.
        if a.init_adapter.is_none() {
            a.num_labels = Some(own);
            loss.num_labels = own;
        }
    }
    recipe.set_pad_id(Some(&tokenizer));
    let max = config.max_position_embeddings.saturating_sub(virtual_tokens);
    if let Some(n) = a.seq_len.filter(|&n| n > max) {
        let beside =
            if virtual_tokens > 0 { format!(" less the {virtual_tokens} virtual tokens") } else { String::new() };
        eprintln!("note: --seq-len {n} capped at the model's max_position_embeddings{beside}, {max}");
    }
    let opts = recipe.data_options(max);
    let dataset = read_dataset(&recipe, &data_path, &tokenizer, &opts)?;
    for warning in dataset.warnings() {
        eprintln!("warning: {warning}");
    }
    let options = serde_json::to_value(resume::RunOptions::of(&a, opts.seq_len, &data_path))?;
    let eval = match &a.eval_data {
        Some(path) => Some(read_dataset(&recipe, path, &tokenizer, &recipe.eval_data_options(max))?),
        None => None,
    };
    let gpu = cli_gpu(webpeft::KernelFamily::Auto, true).await?;
    let mut model = load_model_4bit(&gpu, &files, (a.quant, a.compute_dtype), a.four_bit()).await?;
    let (trainer, progress) = match (&a.resume, &checkpoint) {
        (Some(dir), Some(bytes)) => {
            let (trainer, progress) =
                load_checkpoint(&gpu, bytes, &model.config).map_err(|e| format!("--resume {}: {e}", dir.display()))?;
            if let Adapter::Lora(l) = &trainer.adapter {
                if l.config.init_lora_weights.adjusts_base() {
                    return Err(format!(
                        "--resume {}: the run trains on the base PiSSA/OLoRA/LoftQ replaced, which a checkpoint does not hold; resuming it is not supported",
                        dir.display()
                    )
                    .into());
                }
            }
            (trainer, Some(progress))
        }
        _ => {
            let adapter = match &a.init_adapter {
                Some(dir) => init_adapter(&gpu, dir, a.method(), &model).await?,
                None => {
                    let total = recipe.run_config().total_steps(dataset.batches_per_epoch())?;
                    a.new_adapter(&gpu, &mut model, &files, &tokenizer, total).await?
                }
            };
            (webpeft::train::trainer::Trainer::new(&gpu, adapter, recipe.optimizer.clone(), recipe.seed)?, None)
        }
    };
    check_adapter_for(&recipe.objective, &trainer.adapter).map_err(flag_error)?;
    // The adapter and its options are valid: only now the output folder, so a
    // refused option (--r 0) leaves nothing behind.
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    if let Adapter::Lora(lora) = &trainer.adapter {
        if progress.is_none() && matches!(lora.config.init_lora_weights, InitLoraWeights::Loftq { .. }) {
            write_loftq_base(&gpu, &model, lora, &files, &a.model, &a.out).await?;
        }
    }
    let mut run_config = recipe.run_config();
    if let Some(progress) = &progress {
        // The run goes on as it started: its schedule spans its own step total.
        let saved = Run::config_from(progress).map_err(|e| format!("--resume: {e}"))?;
        if (saved.steps != a.steps && (a.steps.is_some() || a.epochs.is_some()))
            || a.lr.is_some_and(|lr| lr != saved.lr)
            || saved.schedule != run_config.schedule
            || saved.warmup_steps != a.warmup
            || saved.grad_accum != a.grad_accum
        {
            eprintln!(
                "note: resuming the checkpoint's run ({} steps, lr {:e}, {} schedule, warmup {}, grad-accum {}); \
                 the schedule flags given here are ignored",
                saved.steps.unwrap_or(0),
                saved.lr,
                saved.schedule.name(),
                saved.warmup_steps,
                saved.grad_accum
            );
        }
        run_config = RunConfig { precompute_ref_log_probs: recipe.precompute_ref_log_probs, ..saved };
    }
    let mut trainer = trainer;
    trainer.disable_dropout = recipe.disables_dropout();
    if trainer.disable_dropout && trainer.adapter.has_dropout() && a.disable_dropout.is_none() {
        eprintln!(
            "note: the adapter's dropout is off in these steps: TRL's {} config disables dropout by default \
             (--disable-dropout false keeps it)",
            a.objective
        );
    }
    trainer.gradient_checkpointing = recipe.gradient_checkpointing;
    trainer.neftune_noise_alpha = recipe.neftune_noise_alpha;
    trainer.objective = recipe.objective;
    let mut run = Run::new(dataset, trainer, &run_config)?;
    if let Some(progress) = &progress {
        run.seek(Run::position_from(progress)?)?;
        eprintln!("resuming at step {} of {}", run.trainer.step, run.total_steps());
    }
    eprintln!(
        "training {} ({} parameters) on {} rows of {}: {} steps of {}×{} rows, lr {:e} ({}), {} base",
        run.trainer.adapter.method(),
        run.trainer.adapter.num_params(),
        run.dataset.len(),
        data_path.display(),
        run.total_steps(),
        a.batch_size,
        a.grad_accum,
        run_config.lr,
        run_config.schedule.name(),
        model.format.name()
    );

    let mut stopped = Stopped::Done;
    let mut this_run = 0;
    let mut steering = EarlyStopping::new(a.early_stopping_patience, a.early_stopping_threshold);
    // The adapter files of the best evaluation, for --load-best-at-end.
    let mut best_files: Option<Vec<(String, Vec<u8>)>> = None;
    loop {
        if a.stop_after.is_some_and(|n| this_run >= n) {
            stopped = Stopped::Paused;
            break;
        }
        if this_run == 0 {
            // The first step builds every GPU program it runs: say so, since it can take a minute.
            let software =
                if gpu.info().device_type == "Cpu" { ", a software renderer: expect it to be slow" } else { "" };
            eprintln!("first step: compiling its GPU programs on {}{software}…", gpu.describe());
        }
        let start = std::time::Instant::now();
        match run.step(&gpu, &model).await {
            Ok(Some(s)) => {
                let secs = start.elapsed().as_secs_f64();
                if this_run == 0 {
                    eprintln!("first step done in {secs:.1} s ({} GPU programs built)", gpu.pipeline_count());
                }
                let line = StepLine {
                    step: s.step,
                    loss: s.loss,
                    lr: s.lr,
                    grad_norm: s.grad_norm,
                    tokens_per_s: s.tokens as f64 / secs.max(1e-9),
                    entropy: s.mean_token_accuracy.and(s.entropy),
                    mean_token_accuracy: s.mean_token_accuracy,
                    num_tokens: s.num_tokens,
                    rewards: s.preference.as_ref().map(RewardsLine::of),
                    kto: s.kto.as_ref().map(KtoLine::of),
                    reward: s.reward.as_ref().map(RewardLine::of),
                };
                out!("{}", serde_json::to_string(&line)?);
                this_run += 1;
                if a.save_steps.is_some_and(|n| n > 0 && s.step % n == 0) {
                    save_run(&gpu, &run, &model, &a.out, &options).await?;
                }
                if let (Some(eval), Some(n)) = (&eval, a.eval_steps.filter(|&n| n > 0)) {
                    if s.step % n == 0 {
                        let (line, loss) = eval_line(&gpu, &run, &model, eval, Some(s.step)).await?;
                        out!("{line}");
                        let verdict = steering.observe(s.step, loss);
                        if verdict.improved && a.load_best_at_end {
                            best_files = Some(run.trainer.adapter.to_files(&gpu, &model.config).await?);
                        }
                        if verdict.stop {
                            stopped = Stopped::NoImprovement;
                            break;
                        }
                    }
                }
            }
            Ok(None) => break,
            Err(e @ webpeft::Error::NonFinite { .. }) => {
                eprintln!("error: {e}");
                stopped = Stopped::NonFinite;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let (Some(eval), Stopped::Done, None) = (&eval, &stopped, a.eval_steps) {
        out!("{}", eval_line(&gpu, &run, &model, eval, None).await?.0);
    }
    save_run(&gpu, &run, &model, &a.out, &options).await?;
    if let Some((loss, step)) = steering.best {
        out!("{}", serde_json::json!({"best_step": step, "best_eval_loss": loss}));
        if matches!(stopped, Stopped::NoImprovement) {
            let patience = a.early_stopping_patience.unwrap_or(0);
            eprintln!("early stopping at step {}: {patience} evaluations without a lower eval loss", run.trainer.step);
        }
    }
    match best_files {
        Some(files) if a.load_best_at_end => {
            for (name, bytes) in files {
                let path = a.out.join(&name);
                std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let (_, best) = steering.best.unwrap_or_default();
            eprintln!(
                "wrote the best evaluation's adapter (step {best}) and {CHECKPOINT_FILE} (step {}) to {}",
                run.trainer.step,
                a.out.display()
            );
        }
        _ => eprintln!("wrote the adapter and {CHECKPOINT_FILE} (step {}) to {}", run.trainer.step, a.out.display()),
    }
    Ok(stopped)
}

/// The virtual tokens of the prompt-tuning adapter in folder `dir` (0 for any other).
pub(crate) fn folder_virtual_tokens(dir: &Path) -> usize {
    let config = std::fs::read(dir.join(webpeft::peft::ADAPTER_CONFIG_FILE)).ok();
    let value: Option<serde_json::Value> = config.and_then(|b| serde_json::from_slice(&b).ok());
    match value {
        Some(v) if ["PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING"].iter().any(|t| v["peft_type"] == *t) => {
            v["num_virtual_tokens"].as_u64().unwrap_or(0) as usize
        }
        _ => 0,
    }
}

/// The labels of a SEQ_CLS adapter folder's score head (the rows of its
/// saved `score.weight`), where it has one.
fn folder_num_labels(dir: &Path) -> Option<usize> {
    let bytes = std::fs::read(dir.join(webpeft::peft::ADAPTER_WEIGHTS_FILE)).ok()?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).ok()?;
    let info = meta.info(webpeft::peft::modules_to_save::SCORE_KEY)?;
    info.shape.first().copied()
}

/// `train --init-adapter`: the folder's adapter, of the kind --method names.
pub(crate) async fn init_adapter(
    gpu: &Gpu,
    dir: &Path,
    method: Method,
    model: &Model,
) -> Result<Adapter, Box<dyn std::error::Error>> {
    let at = || format!("--init-adapter {}", dir.display());
    // A PEFT config of a method webpeft does not train (LoHa, …) says so in peft_type.
    let config = dir.join(webpeft::peft::ADAPTER_CONFIG_FILE);
    if let Ok(bytes) = std::fs::read(&config) {
        let value: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if let Some(t) = value.as_ref().and_then(|v| v.get("peft_type")).and_then(|t| t.as_str()) {
            if !matches!(t, "LORA" | "IA3" | "PROMPT_TUNING" | "PREFIX_TUNING" | "P_TUNING") {
                return Err(format!(
                    "{}: adapter_config.json has peft_type \"{t}\"; webpeft trains LoRA (\"LORA\"), (IA)³ (\"IA3\"), prompt tuning (\"PROMPT_TUNING\"), prefix tuning (\"PREFIX_TUNING\"), P-tuning (\"P_TUNING\") and AdapterHub bottleneck adapters",
                    at()
                )
                .into());
            }
        }
    }
    let files = DirFiles::new(dir).map_err(|e| format!("{}: {e}", at()))?;
    let adapter = Adapter::load(gpu, &files, &model.config).await.map_err(|e| format!("{}: {e}", at()))?;
    if adapter.method() != method.name() {
        return Err(format!("{} holds a {} adapter, but --method is {}", at(), adapter.method(), method.name()).into());
    }
    Ok(adapter)
}
