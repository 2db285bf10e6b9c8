//! The TypeScript declarations of every option object and event the JS API
//! takes or gives (emitted into the generated `.d.ts`), and the Rust structs
//! they deserialize into (those that make an adapter or a run are in
//! `options.rs`, which compiles natively too).

use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** The adapter the GPU context runs on, and its limits. */
export interface GpuInfo {
  name: string; backend: string; deviceType: string; driver: string;
  subgroups: boolean; shaderF16: boolean; maxBufferSize: number; maxStorageBufferBindingSize: number;
  maxStorageBuffersPerShaderStage: number; maxComputeWorkgroupStorageSize: number;
  maxComputeInvocationsPerWorkgroup: number; kernels: KernelFamily;
}
/** The matmul kernels: "auto" picks by the adapter (a software renderer such as SwiftShader gets
 * kernels made for CPUs, a real GPU the workgroup-memory ones); "cpu" and "gpu" force a family. */
export type KernelFamily = "auto" | "cpu" | "gpu";
export interface GpuOptions { kernels?: KernelFamily; }
/** Live and peak bytes of webpeft's GPU buffers. */
export interface MemoryStats { liveBytes: number; peakBytes: number; liveBuffers: number; }
export type Quant = "f32" | "f16" | "bf16" | "q8" | "nf4";
/** The arithmetic of the frozen Linears (bitsandbytes' `bnb_4bit_compute_dtype`): "f16" applies to
 * quantized and f16 bases where the GPU has shader-f16, and is "f32" elsewhere. */
export type ComputeDtype = "f32" | "f16";
/** `note`: said of a tensor stored in another format than asked (Q8_0 rows not a multiple of 32 stay f16). */
export interface LoadProgress { tensor: string; loadedBytes: number; totalBytes: number; note?: string; }
export interface LoadOptions {
  quant?: Quant; computeDtype?: ComputeDtype; onProgress?: (progress: LoadProgress) => void;
  /** With quant "nf4" on a float checkpoint: bitsandbytes' `bnb_4bit_quant_type` ("nf4", the default, or "fp4")
   * and `bnb_4bit_use_double_quant` (absmaxes stored in 8 bits). A `-bnb-4bit` folder loads as it was saved. */
  quantType?: "nf4" | "fp4"; doubleQuant?: boolean;
  /** What exported adapters name as their base (`base_model_name_or_path`, AdapterHub's `model_name`).
   * Default: the repo of a Hugging Face URL (`org/name`), another URL itself, or the picked folder's name. */
  name?: string;
}
export interface ModelInfo {
  modelType: string; vocabSize: number; hiddenSize: number; layers: number; parameters: number;
  quant: Quant; computeDtype: ComputeDtype; weightBytes: number; maxPositionEmbeddings: number; hasTokenizer: boolean; hasChatTemplate: boolean;
  /** The chat template's own variables, which `chatTemplateKwargs` can set (Qwen3's `enable_thinking`); sorted. */
  chatTemplateVariables: string[];
  /** The model's own generation settings (generation_config.json as transformers reads it; its defaults without the
   * file): what `generate` does where its options are silent. */
  generation: {
    doSample: boolean; temperature: number; topK: number; topP: number; minP: number; repetitionPenalty: number;
    typicalP: number; epsilonCutoff: number; etaCutoff: number;
    noRepeatNgramSize: number; minNewTokens: number; minLength: number;
    /** Generation ends after the token that completes one of these (none: []). */
    stopStrings: string[];
    /** Token sequences never generated, tokens banned at every step and at the first new token (none: []). */
    badWordsIds: number[][]; suppressTokens: number[]; beginSuppressTokens: number[];
    /** Settings the file gives that transformers would act on and webpeft does not ("num_beams 4"); none: []. */
    unsupported: string[];
    /** Where the file gives them: new tokens, or the length of prompt and answer together (transformers' order). */
    maxNewTokens?: number; maxLength?: number;
  };
}
export type LoraTarget = "q_proj" | "k_proj" | "v_proj" | "o_proj" | "gate_proj" | "up_proj" | "down_proj";
/** LoRA's targets: the layers' Linears, and outside the layers `embed_tokens` (PEFT's lora.Embedding) and `lm_head`. */
export type LoraModuleTarget = LoraTarget | "embed_tokens" | "lm_head";
/** Left out: PEFT's LoraConfig defaults (r 8, alpha 8, dropout 0, targets q_proj and v_proj, init "kaiming"), seed 42. */
/** DPO's losses (TRL's loss_type): a list of up to 4 sums them (`lossWeights`). */
export type DpoLossType = "sigmoid" | "robust" | "exo_pair" | "hinge" | "ipo" | "sppo_hard" | "nca_pair" | "apo_zero"
  | "apo_down" | "discopop" | "aot" | "aot_pair" | "bco_pair" | "sft";
export interface LoraOptions {
  r?: number; alpha?: number; dropout?: number; rslora?: boolean;
  /** Module names, "all-linear", or any other string: a regex PEFT matches against whole module names
   * (`".*\\.(q_proj|v_proj)"`). */
  targets?: LoraModuleTarget[] | "all-linear" | string;
  /** PEFT's `rank_pattern` and `alpha_pattern`: a module's own rank and alpha, keyed by a regex of its name's tail
   * (`{"q_proj": 16, "layers\\.0\\..*": 4}`), the first key in sorted order that matches; r and alpha elsewhere. */
  rankPattern?: Record<string, number>; alphaPattern?: Record<string, number>;
  /** PEFT's `exclude_modules`: modules left out of `targets`' match, by name or suffix, or a regex (a string). */
  excludeModules?: string[] | string;
  /** DoRA (PEFT's use_dora): a magnitude per adapted Linear. */
  useDora?: boolean;
  /** PEFT's task_type: "SEQ_CLS" makes a sequence classifier, whose `score` head (numLabels rows of the model's
   * hidden size) is trained whole through modules_to_save (PEFT adds "classifier" and "score"): with one label a
   * reward model (objective "reward", rate texts with `score()`), or a classifier (objective "classification",
   * `classify()`). Left out: "CAUSAL_LM". */
  taskType?: "CAUSAL_LM" | "SEQ_CLS";
  /** SEQ_CLS: the score head's labels, transformers' num_labels (left out: a classifier checkpoint's own, else 1). */
  numLabels?: number;
  /** addLora takes "kaiming" and "gaussian"; initLora the inits that replace the base weights (PEFT's PiSSA,
   * `pissa_niter_${K}`, OLoRA, LoftQ with `loftqIter` iterations, default 1). */
  init?: "kaiming" | "gaussian" | "pissa" | `pissa_niter_${number}` | "olora" | "loftq"; loftqIter?: number;
  layersToTransform?: number[];
  /** PEFT's `trainable_token_indices`: these token ids' embedding rows are trained beside the LoRA (and a tied
   * lm_head's rows with them); saved as `…embed_tokens.token_adapter.trainable_tokens_delta`. */
  trainableTokenIndices?: number[];
  /** The same by the tokens' text, as the vocabulary spells them (`"<|im_start|>"`), each one token; after those. */
  trainableTokens?: string[];
  /** On a model whose lm_head is not its embedding: the trainable tokens' lm_head rows are trained too (PEFT's
   * `{"embed_tokens": ids, "lm_head": ids}`, saved as `…lm_head.token_adapter.trainable_tokens_delta`). */
  lmHeadRows?: boolean;
  /** PEFT's `modules_to_save`: these modules are trained whole beside the LoRA (a copy of the model's vocab × hidden
   * weight each), saved as `base_model.model.model.embed_tokens.weight` / `base_model.model.lm_head.weight`. */
  modulesToSave?: ("embed_tokens" | "lm_head")[];
  /** PEFT's `ensure_weight_tying`: on a model whose lm_head is its embedding, one trained copy for both. */
  ensureWeightTying?: boolean;
  seed?: number;
}
/** Left out: PEFT's IA3Config defaults for the model (Llama, Mistral: k_proj, v_proj, down_proj; Qwen2: q_proj,
 * v_proj, down_proj; down_proj feed-forward, i.e. its input scaled), seed 42 (vectors start at ones). */
export interface AdaLoraOptions { initR?: number; targetR?: number; alpha?: number; dropout?: number; targets?: LoraTarget[] | "all-linear"; tinit?: number; tfinal?: number; deltaT?: number; beta1?: number; beta2?: number; orthRegWeight?: number; totalStep: number; seed?: number; }
export interface Ia3Options { targets?: LoraTarget[] | "all-linear"; feedforwardModules?: LoraTarget[]; seed?: number; }
/** PEFT's TRAINABLE_TOKENS by itself: these token ids' embedding rows are trained (a tied lm_head's rows with them),
 * starting as the embedding's own; saved as `…embed_tokens.trainable_tokens_delta`. */
export interface TrainableTokensOptions {
  /** The ids whose rows are trained, and/or the tokens by their text (each one token of the vocabulary): at least one. */
  tokenIndices?: number[]; tokens?: string[];
  /** On a model whose lm_head is not its embedding: the same ids' lm_head rows are trained too (PEFT's
   * target_modules ["embed_tokens", "lm_head"], saved as `…lm_head.token_adapter.trainable_tokens_delta`). */
  lmHeadRows?: boolean;
}
/** Left out: 20 virtual tokens, PEFT's "random" init (N(0, 1)), seed 42. "text" starts from the embeddings of
 * `initText`'s tokens (repeated to the number of virtual tokens), "sample_vocab" from random tokens'. */
export interface PromptTuningOptions {
  numVirtualTokens?: number; init?: "random" | "sample_vocab" | "text"; initText?: string; seed?: number;
}
/** Left out: 20 virtual tokens (every layer's keys and values before the input's, N(0, 1) as PEFT), seed 42.
 * `prefixProjection` trains PEFT's MLP that makes them instead, `encoderHiddenSize` wide (default: token_dim). */
export interface PrefixTuningOptions {
  numVirtualTokens?: number; prefixProjection?: boolean; encoderHiddenSize?: number; seed?: number;
}
/** Left out: 20 virtual tokens made by PEFT's MLP prompt encoder as wide as the model, seed 42. */
export interface PTuningOptions { numVirtualTokens?: number; encoderHiddenSize?: number; seed?: number; }
export type BottleneckMethod = "seq_bn" | "double_seq_bn" | "par_bn";
export interface BottleneckOptions {
  method: BottleneckMethod; reductionFactor?: number; nonLinearity?: "relu" | "silu" | "gelu" | "tanh";
  dropout?: number; seed?: number;
}
export type TrainingRecord =
  | { text: string }
  | { prompt: string; completion: string }
  | { messages: { role: string; content: string }[] }
  | { input_ids: number[]; labels?: number[] }
  | PreferenceRecord
  | UnpairedPreferenceRecord
  | ClassificationRecord;
/** A labelled text for objective "classification": a class index (single-label; -100: none), a number
 * (regression), or numLabels numbers (multi-label, or regression of several values); or pre-tokenized ids. */
export type ClassificationRecord =
  | { text: string; label: number | number[] }
  | { input_ids: number[]; label: number | number[] };
/** An unpaired example for objective "kto" (TRL's shape): label true for a desirable completion. */
export type UnpairedPreferenceRecord =
  | { prompt: string; completion: string; label: boolean }
  | { prompt: ChatMessage[]; completion: ChatMessage[]; label: boolean };
/** A preference pair for objective "dpo", "orpo", "cpo" or "kto" (TRL's shape): three strings, or a prompt of messages
 * ending with a user turn and the two answers as assistant messages. */
export type PreferenceRecord =
  | { prompt: string; chosen: string; rejected: string }
  | { prompt: ChatMessage[]; chosen: ChatMessage[]; rejected: ChatMessage[] }
  | RewardRecord;
/** A preference pair for objective "reward" (TRL's RewardTrainer): the prompt is optional (each answer may hold its
 * own), and `margin` (on every record, or none) is subtracted from the score difference in the loss. */
export type RewardRecord =
  | { prompt?: string; chosen: string; rejected: string; margin?: number }
  | { prompt?: ChatMessage[]; chosen: ChatMessage[]; rejected: ChatMessage[]; margin?: number };
export interface ChatMessage { role: string; content: string; }
/** JSONL text (one record per line) or an array of records. */
export type TrainingData = string | TrainingRecord[];
/** Left out: one epoch, batchSize 1, seqLen 512 (capped at the model's context), gradAccum 1, warmup 0,
 * "linear", weightDecay 0, maxGradNorm 1, seed 42, shuffled, not packed (the CLI's defaults too). */
export interface TrainOptions {
  lr: number; steps?: number; epochs?: number; batchSize?: number; seqLen?: number; gradAccum?: number;
  warmup?: number; weightDecay?: number; maxGradNorm?: number;
  /** The fraction of the run's steps that warm up, instead of warmup (transformers' warmup_ratio: ceil(steps ×
   * ratio)). */
  warmupRatio?: number;
  /** transformers' lr_scheduler_type ("constant" has no warmup, "constant_with_warmup" has); scheduleKwargs its
   * lr_scheduler_kwargs: { num_cycles } (cosine, cosine_with_restarts), { lr_end, power } (polynomial),
   * { min_lr | min_lr_rate, num_cycles, warmup_lr_rate } (cosine_with_min_lr, cosine_warmup_with_min_lr),
   * { num_decay_steps, num_stable_steps, warmup_type, decay_type, min_lr_ratio, num_cycles } (warmup_stable_decay). */
  schedule?: "linear" | "cosine" | "cosine_with_restarts" | "polynomial" | "constant" | "constant_with_warmup"
    | "inverse_sqrt" | "cosine_with_min_lr" | "cosine_warmup_with_min_lr" | "warmup_stable_decay";
  scheduleKwargs?: Record<string, number | string | null>;
  seed?: number; shuffle?: boolean; packing?: boolean;
  /** LoRA+: B's learning rate is this many times lr (PEFT's create_loraplus_optimizer). Left out: off. */
  loraplusLrRatio?: number;
  /** LoRA+: the learning rate of a LoRA on embed_tokens at the schedule's peak (PEFT's loraplus_lr_embedding). Left
   * out: 1e-6, as PEFT. */
  loraplusLrEmbedding?: number;
  /** Recompute each layer's activations in the backward: far less memory, about a third more time. */
  gradientCheckpointing?: boolean;
  /** NEFTune (SFT): uniform noise of magnitude neftuneNoiseAlpha/√(T·hidden) on the embeddings in training, as
   * transformers' neftune_noise_alpha (the paper uses 5). Left out: off. */
  neftuneNoiseAlpha?: number;
  /** SFT: prompt/completion records train only the completion (TRL's completion_only_loss), messages records only
   * the assistant turns (TRL's assistant_only_loss, whose default there is false). Left out: both true. */
  completionOnlyLoss?: boolean; assistantOnlyLoss?: boolean;
  /** DPO and KTO: score the reference model once for every row before the first step instead of in every step
   * (TRL's precompute_ref_log_probs): the same numbers, a forward less a step. Left out: false. */
  precomputeRefLogProbs?: boolean;
  /** "dpo", "orpo" or "cpo": train on preference pairs ({prompt, chosen, rejected}, text or messages); "kto" on
   * unpaired examples ({prompt, completion, label}, or pairs, which are unpaired); "reward": a reward model (a LoRA
   * added with taskType "SEQ_CLS") on pairs (RewardRecord), TRL's RewardTrainer; "classification": a classifier (a
   * LoRA added with taskType "SEQ_CLS" and numLabels) on labelled texts (ClassificationRecord), transformers'
   * Trainer. Left out: "sft". */
  objective?: "sft" | "dpo" | "orpo" | "cpo" | "kto" | "reward" | "classification";
  /** Classification: transformers' problem_type. Left out: inferred as transformers does (one label: regression;
   * integer labels: single-label; lists: multi-label). */
  problemType?: "regression" | "single_label_classification" | "multi_label_classification";
  /** Reward: TRL's center_rewards_coefficient, the weight of mean (r_chosen + r_rejected)² in the loss (off). */
  centerRewardsCoefficient?: number;
  /** TRL's disable_dropout: no dropout in the steps, the adapter's included. Left out: true for "dpo", "orpo", "cpo",
   * "kto" and "reward" (their TRL configs' default), false for "sft". */
  disableDropout?: boolean;
  /** The beta of DPO, ORPO and CPO (TRL's default 0.1); labelSmoothing in [0, 0.5] (default 0; DPO's sigmoid,
   * robust, exo_pair, aot and aot_pair losses, CPO's sigmoid and simpo). */
  beta?: number; labelSmoothing?: number;
  /** The objective's loss (TRL's loss_type). SFT's "nll" (the default) or "dft" (Dynamic Fine-Tuning: each token's
   * cross-entropy weighted by its probability, held constant in the gradient; not with virtual tokens).
   * DPO's or CPO's (default "sigmoid"): "ipo" and "simpo" score answers by their mean
   * log-probability; "simpo" and "alphapo" are CPO's only, "kto" (the default there) and "apo_zero_unpaired" KTO's,
   * the others but "hinge" and "ipo" DPO's only. */
  lossType?: "nll" | "dft" | DpoLossType | "simpo" | "alphapo" | "kto" | "apo_zero_unpaired" | DpoLossType[];
  /** DPO: the weight of each loss a `lossType` list names (TRL's loss_weights; MPO: [0.8, 0.2, 1] for
   * ["sigmoid", "bco_pair", "sft"]), 1 each when left out. */
  lossWeights?: number[];
  /** DPO: adds rpoAlpha times the chosen answers' NLL (RPO; default off). discopopTau: the discopop loss's τ (0.05). */
  rpoAlpha?: number; discopopTau?: number;
  /** DPO's loss without the reference model (TRL's reference_free; the rewards still use it). */
  referenceFree?: boolean;
  /** DPO's f_divergence_type for the sigmoid, robust, exo_pair, hinge and ipo losses ("reverse_kl", TRL's default)
   * and the alpha_divergence's coefficient (f_alpha_divergence_coef, 1). */
  fDivergenceType?: "reverse_kl" | "js_divergence" | "alpha_divergence"; fAlphaDivergenceCoef?: number;
  /** CPO: the chosen answers' NLL weight (TRL's cpo_alpha, default 1; SimPO's paper: 0); simpoGamma: SimPO's
   * target margin γ (0.5); alphapoAlpha: AlphaPO's α (TRL's CPOConfig.alpha: each answer's reward (1 − p^−α)/α in
   * place of its log-probability; 0, off), with lossType "alphapo" (simpo, cpoAlpha 0) as its paper trains. */
  cpoAlpha?: number; simpoGamma?: number; alphapoAlpha?: number;
  /** KTO: the weights of desirable and undesirable examples' losses (TRL's desirable_weight, undesirable_weight; 1). */
  desirableWeight?: number; undesirableWeight?: number;
}
export interface StepEvent {
  step: number; totalSteps: number; loss: number; lr: number; gradNorm: number; tokens: number;
  tokensPerSecond: number; stepSeconds: number; etaSeconds: number;
  /** SFT: TRL's entropy and mean_token_accuracy (each micro-batch's mean over its tokens, averaged over the
   * micro-batches) and num_tokens (the tokens trained on so far, padding left out). */
  entropy?: number; meanTokenAccuracy?: number; numTokens?: number;
  /** DPO, ORPO and CPO: TRL's rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins (DPO also logits/chosen, logits/rejected),
   * logps/chosen, logps/rejected, and nll_loss (ORPO, CPO, and DPO with rpoAlpha). */
  rewards?: { chosen: number; rejected: number; accuracies: number; margins: number; logpsChosen: number;
    logpsRejected: number; logitsChosen?: number; logitsRejected?: number; nllLoss?: number };
  /** KTO: TRL's kl, rewards/chosen_sum, rewards/rejected_sum, logps/chosen_sum, logps/rejected_sum, count/chosen,
   * count/rejected. */
  kto?: { kl: number; rewardsChosenSum: number; rewardsRejectedSum: number; logpsChosenSum: number;
    logpsRejectedSum: number; countChosen: number; countRejected: number };
  /** Reward: TRL's accuracy (the pairs whose chosen answer scores higher), margin (mean r_chosen − r_rejected) and
   * min_reward, mean_reward, max_reward over the scores; each micro-batch's, averaged over the micro-batches. */
  reward?: { accuracy: number; margin: number; minReward: number; meanReward: number; maxReward: number };
}
export interface TrainSummary { steps: number; totalSteps: number; state: "done" | "cancelled"; }
/** startGrpo's options: the optimizer and schedule as TrainOptions names them (steps required), and TRL's GRPOConfig
 * settings. Left out: 8 generations a prompt, batchSize 8 (completions a micro-batch), gradAccum 1, completions of at
 * most 256 tokens, prompts' first 512, temperature 1, topP 1, topK 0 (off), scaleRewards "group", lossType "dapo",
 * beta 0 (no reference model), each reward function weighted 1. A generation's rows (batchSize × stepsPerGeneration)
 * must be a multiple of numGenerations. */
export interface GrpoOptions {
  lr: number; steps: number; batchSize?: number; gradAccum?: number; warmup?: number; warmupRatio?: number;
  schedule?: TrainOptions["schedule"]; scheduleKwargs?: Record<string, number | string | null>;
  weightDecay?: number; maxGradNorm?: number; seed?: number; shuffle?: boolean; gradientCheckpointing?: boolean;
  numGenerations?: number; maxCompletionLength?: number; maxPromptLength?: number; rewardWeights?: number[];
  scaleRewards?: "group" | "batch" | "none"; temperature?: number; topP?: number; topK?: number;
  /** Leave completions that ran out of tokens (no eos) out of the loss (TRL's mask_truncated_completions). */
  maskTruncatedCompletions?: boolean;
  /** The KL coefficient against the base (the adapter off); lossType TRL's GRPO loss_type. */
  beta?: number; lossType?: "grpo" | "bnpo" | "dr_grpo" | "dapo";
  /** A generation is stepsPerGeneration micro-batches of batchSize completions (TRL's steps_per_generation, a
   * multiple of gradAccum; gradAccum when left out), feeding stepsPerGeneration / gradAccum optimizer steps, each on
   * its own completions; numIterations passes over it (TRL's num_iterations, 1). Past a generation's first step the
   * importance ratio to the policy that sampled it is clipped to [1 − epsilon, 1 + epsilonHigh] (0.2 each) and, with
   * delta, capped at delta; importanceSamplingLevel "sequence" (GSPO) takes one ratio a completion, the exponential
   * of its tokens' mean log-ratio, instead of one a token ("token"). Each step() is one generation.
   * generationBatchSize (TRL's generation_batch_size, a multiple of batchSize) gives a generation's completions
   * instead of stepsPerGeneration: stepsPerGeneration = generationBatchSize / batchSize. */
  stepsPerGeneration?: number; generationBatchSize?: number; numIterations?: number;
  importanceSamplingLevel?: "token" | "sequence";
  epsilon?: number; epsilonHigh?: number; delta?: number;
  /** Keep the policy term only on each micro-batch's completion tokens whose entropy is in its top
   * topEntropyQuantile (TRL's top_entropy_quantile ρ in [0, 1]: 0.2 in "Beyond the 80/20 rule"; 1, the default,
   * keeps every token); β's KL keeps them all. */
  topEntropyQuantile?: number;
  /** "rloo": TRL's RLOOTrainer instead of its GRPOTrainer, on the same prompts, rewards and generations: each
   * advantage the reward less the mean of its group's others, beta's KL of each completion (default 0.05) taken
   * from its reward, one importance ratio a completion (the exponential of its tokens' summed log-ratios), each
   * completion's loss averaged; 2 generations a prompt when numGenerations is left out. lossType, scaleRewards,
   * importanceSamplingLevel, delta and topEntropyQuantile are GRPO's; normalizeAdvantages (the advantages less
   * their mean, over their std + 1e-4) and rewardClipRange ([low, high], each combined reward clamped to it
   * before the KL) are RLOO's. */
  objective?: "grpo" | "rloo";
  normalizeAdvantages?: boolean; rewardClipRange?: [number, number];
  /** TRL's disable_dropout (GRPOConfig's and RLOOConfig's default: false, the adapter's dropout kept). */
  disableDropout?: boolean;
}
/** A GRPO prompt: a text, or messages ending with a user turn (rendered by the chat template with its generation
 * prompt); its other fields reach the reward functions as `fields`. */
export interface GrpoPromptRecord { prompt: string | ChatMessage[]; [field: string]: unknown; }
/** A sampled completion as a reward function sees it: the prompt's text (rendered by the chat template for
 * messages), the completion's text and token ids, and the prompt record's other fields (an answer to check, …). */
export interface GrpoCompletion { prompt: string; completion: string; completionIds: number[];
  fields: Record<string, unknown>; }
/** One reward a completion, or null for none (TRL's None: left out of the weighted sum). */
export type RewardFunction = (completions: GrpoCompletion[]) => (number | null)[] | Promise<(number | null)[]>;
/** A reward of startGrpo's list: a function, or the name of a reward model among the model's adapters (one added with
 * taskType "SEQ_CLS" and trained with objective "reward"), which scores the prompt and completion as TRL's
 * GRPOTrainer scores with a reward model. */
export type Reward = RewardFunction | string;
/** A GRPO (or RLOO) step: TRL's loss, reward, reward_std, frac_reward_zero_std, rewards/<function>/mean and /std (rewardMeans,
 * rewardStds, in the functions' order; NaN where a function scored fewer than one and two completions),
 * completions/mean_length, min_length, max_length, clipped_ratio, mean_, min_ and max_terminated_length, num_tokens
 * (prompt and completion tokens of every generation so far), entropy and kl (with beta: GRPO's of the step, RLOO's
 * of the generation, the policy's log-probabilities less the reference's), and the step's
 * completions with their combined rewards. */
export interface GrpoStepEvent {
  step: number; totalSteps: number; loss: number; lr: number; gradNorm: number; reward: number; rewardStd: number;
  fracRewardZeroStd: number; rewardMeans: number[]; rewardStds: number[]; meanLength: number; minLength: number;
  maxLength: number; clippedRatio: number; meanTerminatedLength: number; minTerminatedLength: number;
  maxTerminatedLength: number; numTokens: number; kl?: number;
  entropy: number;
  /** TRL's clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean (of the last optimizer step). */
  clipRatio: [number, number, number];
  tokens: number; stepSeconds: number; etaSeconds: number;
  /** The generation's completions: each with its combined reward and its advantage (TRL's log_completions). */
  completions: { prompt: string; completion: string; reward: number; advantage: number }[];
}
/** GrpoRun.evaluate()'s result: TRL's eval_ metrics of GRPO or RLOO (without the prefix, in camelCase), each the mean
 * of the evaluation batches' (loss: their rows-weighted mean), and the completions evaluated. */
export interface GrpoEvalResult {
  loss: number; reward: number; rewardStd: number; fracRewardZeroStd: number; rewardMeans: number[]; rewardStds: number[];
  meanLength: number; minLength: number; maxLength: number; clippedRatio: number; meanTerminatedLength: number;
  minTerminatedLength: number; maxTerminatedLength: number; numTokens: number; kl?: number; entropy: number;
  clipRatio: [number, number, number]; completions: number;
}
export interface EvalOptions { adapter?: string | null; batchSize?: number; seqLen?: number; }
/** score's options: the reward model to score with (absent: the active adapter; null: none, the model being a
 * …ForSequenceClassification checkpoint of one label). */
export interface ScoreOptions { adapter?: string | null; }
/** classify's options: the classifier (absent: the active adapter; null: none, the model being a
 * …ForSequenceClassification checkpoint), and how its logits are read (left out: the checkpoint's problem_type, else
 * regression with one label, else single-label). */
export interface ClassifyOptions {
  adapter?: string | null; problemType?: "regression" | "single_label_classification" | "multi_label_classification";
}
/** A classifier's verdict on a text, as transformers' text-classification pipeline's top label: the label of the
 * highest logit and its score (softmax probability; sigmoid for multi-label; the logit for regression). */
export interface Prediction { label: number; score: number; logits: number[]; }
/** evaluateClassifier's options: the held-out rows' batch and length, and the problem type as TrainOptions'. */
export interface ClassifierEvalOptions extends ClassifyOptions { batchSize?: number; seqLen?: number; }
/** Trainer.evaluate()'s eval_loss (each batch's mean, weighted by its rows) and, single-label, the accuracy of the
 * highest logit (null otherwise). */
export interface ClassifierEvalResult { loss: number; accuracy: number | null; rows: number; batches: number; }
/** evaluatePreference's options: the objective and its settings, as TrainOptions takes them. */
export interface PreferenceEvalOptions extends EvalOptions {
  objective: "dpo" | "orpo" | "cpo" | "kto" | "reward";
  centerRewardsCoefficient?: number;
  beta?: number; labelSmoothing?: number; lossType?: string | string[]; lossWeights?: number[]; rpoAlpha?: number;
  discopopTau?: number; referenceFree?: boolean; fDivergenceType?: string; fAlphaDivergenceCoef?: number;
  cpoAlpha?: number; simpoGamma?: number; alphapoAlpha?: number; desirableWeight?: number; undesirableWeight?: number;
}
/** SFTTrainer.evaluate()'s eval_loss (each batch's mean, weighted by its rows), its exp, the labelled tokens,
 * and TRL's eval_entropy and eval_mean_token_accuracy (each batch's, averaged over the batches). */
export interface EvalResult {
  loss: number; perplexity: number; tokens: number; entropy: number; meanTokenAccuracy: number;
}
/** TRL's eval_loss (batches weighted by their pairs) and its metrics without the "eval_" prefix
 * ("rewards/chosen", "rewards/accuracies", …). */
export interface PreferenceEvalResult { loss: number; metrics: Record<string, number>; batches: number; }
/** `generate`'s options. Left out: the model's own settings, its generation_config.json as transformers reads it
 * (without the file: greedy, topK 50, topP 1, minP 0, repetitionPenalty 1; its maxNewTokens, else its maxLength
 * less the prompt, else 64 new tokens, fewer where the context ends), and seed 0. A temperature samples at it
 * unless `greedy` is true. topK 0, topP 1 and minP 0 are off; minP keeps the tokens at least minP times as
 * likely as the most likely one; repetitionPenalty (greedy or sampled) divides the logits of tokens already in the text (multiplies the
 * negative ones), 1 = off. */
export interface GenerateOptions {
  maxNewTokens?: number; temperature?: number; topK?: number; topP?: number; minP?: number; seed?: number;
  greedy?: boolean; repetitionPenalty?: number;
  /** transformers' typical_p (1 = off), epsilon_cutoff and eta_cutoff (0 = off), applied after minP in that order.
   * The GPU's pick does not have them: a generation with one reads each step's logits back and picks on the CPU. */
  typicalP?: number; epsilonCutoff?: number; etaCutoff?: number;
  /** No token may complete an n-gram of this size that the text (prompt included) already holds; 0 = off. */
  noRepeatNgramSize?: number;
  /** The eos may not end the answer before this many new tokens. */
  minNewTokens?: number;
  /** Generation ends after the token that completes one of these texts (kept in the text), as transformers'
   * `stop_strings`: one that ends inside the newest token, its start anywhere before. [] = none. */
  stopStrings?: string | string[];
  /** transformers' `bad_words_ids`: no answer holds one of these token sequences (the last token of one is banned
   * where the others end the text; a one-token word everywhere). [] = none. */
  badWordsIds?: number[][];
  /** transformers' `suppress_tokens`: tokens never generated. [] = none. */
  suppressTokens?: number[];
  /** The adapter to run with; null = the base model; absent = the active adapter. */
  adapter?: string | null;
  /** With a string prompt: render it as one user turn with the tokenizer's chat template. */
  chat?: boolean;
  /** The chat template's own variables, as `apply_chat_template(…, **kwargs)` passes them: Qwen3's
   * `{ enable_thinking: false }` answers without a reasoning block. */
  chatTemplateKwargs?: Record<string, unknown>;
  /** Each piece of text as it is decoded; returning `false` stops the generation after this piece. */
  onToken?: (text: string) => boolean | void;
  /** Aborting it stops the generation after the token in flight (the result keeps the text so far). */
  signal?: AbortSignal;
}
/** Why a generation ended: an end-of-sequence token (config.json's, generation_config.json's or the
 * tokenizer's eos, which for chat templates is usually the end of the turn), a stop string completed,
 * `maxNewTokens` (or the model's context) reached, or stopped by `signal` or `onToken`. */
export type StopReason = "eos" | "stopString" | "maxTokens" | "stopped";
/** `tokenIds`: the generated tokens (an ending eos included); `promptTokens`: the prompt's length in tokens
 * (for a conversation, the whole rendered chat). */
export interface GenerateResult { text: string; tokenIds: number[]; promptTokens: number; stopReason: StopReason; seconds: number; }
export interface PlanOptions {
  quant?: Quant; doubleQuant?: boolean;
  method?: "lora" | "adalora" | "ia3" | "prompt_tuning" | "prefix_tuning" | "p_tuning" | "trainable_tokens" | BottleneckMethod;
  r?: number; targets?: LoraModuleTarget[] | "all-linear"; feedforwardModules?: LoraTarget[]; numVirtualTokens?: number;
  prefixProjection?: boolean; encoderHiddenSize?: number;
  reductionFactor?: number; batchSize?: number; seqLen?: number; gradAccum?: number;
  loraDropout?: number; useDora?: boolean; gradientCheckpointing?: boolean;
  /** The ids of trainable_tokens (or of a LoRA's trainable tokens). */
  trainableTokenIndices?: number[];
  /** A LoRA's `modules_to_save` and `ensure_weight_tying`: the copies' memory counts. */
  modulesToSave?: ("embed_tokens" | "lm_head")[]; ensureWeightTying?: boolean;
}
export interface MemoryPlan {
  /** `doubleQuantSavedBytes`: what double quantization saves on the weights (0 without it). */
  weightBytes: number; doubleQuantSavedBytes: number; adapterBytes: number; optimizerBytes: number; activationBytes: number; totalBytes: number;
  largestBufferBytes: number; bindingLimitBytes: number; fits: boolean;
}
/** `Model.exportGguf`: "merged" (the model with the LoRA folded in, W + scaling·B·A) or "lora" (the adapter
 * alone, for llama.cpp's `--lora`). Left out: "merged", type "f16" ("f32" only for "lora"), name the model's
 * folder or URL's last part; `tokenizerPre` names a pre-tokenizer llama.cpp's hash table lacks
 * (`tokenizer.ggml.pre`, e.g. "llama-bpe", "gpt-2", "qwen2"). Plain LoRA only (no DoRA, no other method). */
export interface GgufOptions {
  kind?: "merged" | "lora"; type?: "f16" | "q8_0" | "f32"; name?: string; tokenizerPre?: string;
  /** The size of each chunk given to the callback (the last is shorter). Left out: 4 MiB. */
  chunkBytes?: number;
}
/** An adapter folder: file name → bytes. */
export type AdapterFiles = Record<string, Uint8Array>;
"#;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct LoadOptions {
    pub quant: Option<String>,
    pub quant_type: Option<String>,
    pub double_quant: Option<bool>,
    pub compute_dtype: Option<String>,
    pub name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct GenerateOptions {
    pub max_new_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub min_p: Option<f32>,
    pub typical_p: Option<f32>,
    pub epsilon_cutoff: Option<f32>,
    pub eta_cutoff: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub no_repeat_ngram_size: Option<usize>,
    pub min_new_tokens: Option<usize>,
    pub stop_strings: Option<OneOrMany>,
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    pub suppress_tokens: Option<Vec<u32>>,
    pub seed: Option<u64>,
    pub greedy: Option<bool>,
    pub chat: Option<bool>,
}

/// A string, or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepEvent {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f32,
    pub tokens: usize,
    pub tokens_per_second: f64,
    /// SFT: TRL's `entropy`, `mean_token_accuracy` and `num_tokens` (the tokens trained on so far).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_token_accuracy: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_tokens: Option<u64>,
    pub step_seconds: f64,
    pub eta_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Rewards>,
    /// A KTO step's metrics, as TRL logs them (`kl`, `rewards/chosen_sum`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kto: Option<crate::train::trainer::KtoStats>,
    /// A reward model's step metrics, as TRL's `RewardTrainer` logs them
    /// (`accuracy`, `margin`, `minReward`, `meanReward`, `maxReward`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reward: Option<crate::train::reward::RewardStats>,
}

/// A preference step's rewards, as TRL logs them (`rewards/chosen`, …).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rewards {
    pub chosen: f32,
    pub rejected: f32,
    pub accuracies: f32,
    pub margins: f32,
    /// `logps/chosen`, `logps/rejected`: the policy's log-probabilities.
    pub logps_chosen: f32,
    pub logps_rejected: f32,
    /// DPO: `logits/chosen`, `logits/rejected`, the mean logits over the completions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits_chosen: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits_rejected: Option<f32>,
    /// ORPO's and CPO's NLL, or DPO's with `rpoAlpha`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nll_loss: Option<f32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainSummary {
    pub steps: u64,
    pub total_steps: u64,
    pub state: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelInfo {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub parameters: u64,
    pub quant: &'static str,
    pub compute_dtype: &'static str,
    pub weight_bytes: u64,
    pub max_position_embeddings: usize,
    pub has_tokenizer: bool,
    pub has_chat_template: bool,
    pub chat_template_variables: Vec<String>,
    pub generation: GenerationInfo,
}

/// `ModelInfo.generation`: the model's generation_config.json settings.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationInfo {
    pub do_sample: bool,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub typical_p: f32,
    pub epsilon_cutoff: f32,
    pub eta_cutoff: f32,
    pub repetition_penalty: f32,
    pub no_repeat_ngram_size: usize,
    pub min_new_tokens: usize,
    pub min_length: usize,
    pub stop_strings: Vec<String>,
    pub bad_words_ids: Vec<Vec<u32>>,
    pub suppress_tokens: Vec<u32>,
    pub begin_suppress_tokens: Vec<u32>,
    pub unsupported: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResult {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub stop_reason: &'static str,
    pub seconds: f64,
}

/// `Gpu.create`'s options.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuCreateOptions {
    pub kernels: Option<String>,
}
