//! Preference data for DPO, ORPO and CPO: JSONL lines of TRL's preference
//! shape, tokenized as TRL 0.24's `DPOTrainer` (or `ORPOTrainer` and
//! `CPOTrainer`) does.
//!
//! Each line is `{"prompt", "chosen", "rejected"}`, either
//! - text: three strings, or
//! - conversational: `prompt` a list of messages ending with a user turn,
//!   `chosen` and `rejected` lists of assistant messages. As TRL's
//!   `apply_chat_template`: `prompt = render(prompt, add_generation_prompt)`,
//!   `chosen = render(prompt + chosen)` after the longest common prefix with
//!   the prompt, the same for `rejected` (whose common prefix also shortens
//!   the prompt).
//!
//! Then `DPOTrainer.tokenize_row(add_special_tokens=False)`: the prompt, the
//! chosen and the rejected text are encoded without special tokens (a bos the
//! template writes is in the text), each completion gets the eos id, the
//! prompt keeps its last [`MAX_PROMPT_LENGTH`] tokens. A pair becomes two
//! rows, `prompt + chosen` and `prompt + rejected`, whose labels are −100 on
//! the prompt: the loss sees only the completion tokens. A row longer than
//! `seq_len` keeps its last `seq_len` tokens (TRL's `max_length` with
//! `truncation_mode="keep_end"`).
//!
//! ORPO and CPO tokenize as their trainers' shared `tokenize_row` instead
//! ([`PairTokenization::Joined`]; see `tokenize_pair_joined`).
//!
//! A line without `rejected`, or with an empty completion, is a `Data` error
//! naming the line; a pair whose chosen and rejected are the same text is
//! kept with a warning (it gives the DPO loss no signal: its gradient is 0).

use serde_json::{Map, Value};

use super::chat::Message;
use super::data::{jsonl_lines, utf8_text, DataOptions, Dataset, Example, LossMasks, Parser};
use super::grpo::GrpoLoss;
use super::reward::RewardLoss;
use serde::Deserialize;

use crate::kernels::preference::{
    CpoLoss, CpoLossType, DpoLoss, DpoLossType, DpoLossTypes, FDivergence, KtoLoss, KtoLossType, PairTokenization,
    PreferenceLoss, MAX_LOSS_TYPES,
};
use crate::model::llama::{SftLoss, IGNORE_INDEX};
use crate::model::tokenizer::Tokenizer;
use crate::train::classification::ClassificationLoss;
use crate::{Error, Result};

/// `DPOConfig.max_prompt_length`'s default: a prompt keeps its last 512 tokens.
pub const MAX_PROMPT_LENGTH: usize = 512;

/// What a run minimises.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Objective {
    /// The causal-LM loss on the data's trained tokens (TRL's `SFTTrainer`,
    /// its `loss_type`).
    Sft(SftLoss),
    /// DPO, ORPO or CPO on preference pairs, KTO on unpaired examples.
    Preference(PreferenceLoss),
    /// GRPO (or RLOO, by its estimator) on sampled completions and their
    /// rewards (`train::grpo`).
    Grpo(GrpoLoss),
    /// A reward model's Bradley–Terry loss on preference pairs, scored by a
    /// SEQ_CLS adapter's `score` head (`train::reward`, TRL's `RewardTrainer`).
    Reward(RewardLoss),
    /// A sequence classifier's loss on labelled texts (transformers'
    /// `Trainer` on a SEQ_CLS adapter's `score` head, `train::classification`).
    Classification(ClassificationLoss),
}

impl Objective {
    /// Whether it is SFT (either token loss).
    pub fn is_sft(self) -> bool {
        matches!(self, Objective::Sft(_))
    }

    /// SFT's token loss, and the causal-LM loss (nll) the other objectives'
    /// SFT-style evaluation measures.
    pub fn sft_loss(self) -> SftLoss {
        match self {
            Objective::Sft(loss) => loss,
            _ => SftLoss::Nll,
        }
    }

    /// "sft", "dpo", "orpo", "cpo", "kto", "grpo", "rloo", "reward" or "classification".
    pub fn name(self) -> &'static str {
        match self {
            Objective::Sft(_) => "sft",
            Objective::Preference(PreferenceLoss::Dpo(_)) => "dpo",
            Objective::Preference(PreferenceLoss::Orpo { .. }) => "orpo",
            Objective::Preference(PreferenceLoss::Cpo(_)) => "cpo",
            Objective::Preference(PreferenceLoss::Kto(_)) => "kto",
            Objective::Grpo(loss) => loss.estimator.name(),
            Objective::Reward(_) => "reward",
            Objective::Classification(_) => "classification",
        }
    }

    /// The objective `name` with TRL's defaults ([`DpoLoss::TRL`], ORPO's beta 0.1, [`CpoLoss::TRL`]);
    /// "reward"'s pad id is 0 until the tokenizer gives it
    /// ([`TrainRecipe::set_pad_id`](crate::train::recipe::TrainRecipe::set_pad_id)).
    pub fn from_name(name: &str) -> Option<Objective> {
        match name {
            "sft" => Some(Objective::Sft(SftLoss::Nll)),
            "dpo" => Some(Objective::Preference(PreferenceLoss::DPO)),
            "orpo" => Some(Objective::Preference(PreferenceLoss::ORPO)),
            "cpo" => Some(Objective::Preference(PreferenceLoss::Cpo(CpoLoss::TRL))),
            "kto" => Some(Objective::Preference(PreferenceLoss::Kto(KtoLoss::TRL))),
            "reward" => Some(Objective::Reward(RewardLoss::new(0))),
            "classification" => Some(Objective::Classification(ClassificationLoss::new(1))),
            _ => None,
        }
    }

    /// The objective `name` with the settings `o` gives (TRL's defaults for
    /// the rest): the CLI's and the browser's options. A setting that does
    /// not apply to the objective (or to its loss type) is a `TrainOption`
    /// error naming it. Ranges are checked by the recipe.
    pub fn from_options(name: &str, o: &PreferenceOptions) -> Result<Objective> {
        let bad = |option, detail: String| Error::TrainOption { option, detail };
        let objective = Objective::from_name(name).ok_or_else(|| {
            bad("objective", format!("expected sft, dpo, orpo, cpo, kto, reward or classification, got {name:?}"))
        })?;
        // Each setting, whether it was given, and the objectives it belongs to.
        let settings: [(&'static str, bool, &[&str]); 15] = [
            ("beta", o.beta.is_some(), &["dpo", "orpo", "cpo", "kto", "grpo"]),
            ("label_smoothing", o.label_smoothing.is_some(), &["dpo", "cpo"]),
            ("loss_type", o.loss_type.is_some(), &["sft", "dpo", "cpo", "kto", "grpo"]),
            ("loss_weights", o.loss_weights.is_some(), &["dpo"]),
            ("rpo_alpha", o.rpo_alpha.is_some(), &["dpo"]),
            ("discopop_tau", o.discopop_tau.is_some(), &["dpo"]),
            ("reference_free", o.reference_free.is_some(), &["dpo"]),
            ("f_divergence_type", o.f_divergence_type.is_some(), &["dpo"]),
            ("f_alpha_divergence_coef", o.f_alpha_divergence_coef.is_some(), &["dpo"]),
            ("cpo_alpha", o.cpo_alpha.is_some(), &["cpo"]),
            ("simpo_gamma", o.simpo_gamma.is_some(), &["cpo"]),
            ("alphapo_alpha", o.alphapo_alpha.is_some(), &["cpo"]),
            ("desirable_weight", o.desirable_weight.is_some(), &["kto"]),
            ("undesirable_weight", o.undesirable_weight.is_some(), &["kto"]),
            ("center_rewards_coefficient", o.center_rewards_coefficient.is_some(), &["reward"]),
        ];
        let name = objective.name();
        if let Some((option, _, owners)) = settings.iter().find(|(_, given, owners)| *given && !owners.contains(&name))
        {
            let owners = match owners.split_last() {
                Some((last, [])) => format!("{last} only"),
                Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
                None => String::new(),
            };
            return Err(bad(option, format!("applies to {owners}")));
        }
        let smoothing = |smooths: bool, loss: &str, which: &str| {
            if o.label_smoothing.is_some() && !smooths {
                return Err(bad(
                    "label_smoothing",
                    format!("applies to the {which} losses, not {loss} (TRL ignores it there)"),
                ));
            }
            Ok(())
        };

        Ok(Objective::Preference(match objective {
            Objective::Sft(loss) => {
                return Ok(Objective::Sft(match &o.loss_type {
                    Some(t) => pick_loss_type(t, name, &SftLoss::ALL, SftLoss::name)?,
                    None => loss,
                }))
            }
            Objective::Grpo(_) => return Err(bad("objective", "GRPO's settings are train::grpo's".into())),
            Objective::Classification(loss) => return Ok(Objective::Classification(loss)),
            Objective::Reward(loss) => {
                let loss = RewardLoss { center_rewards_coefficient: o.center_rewards_coefficient, ..loss };
                loss.validate()?;
                return Ok(Objective::Reward(loss));
            }
            Objective::Preference(PreferenceLoss::Orpo { beta }) => {
                PreferenceLoss::Orpo { beta: o.beta.unwrap_or(beta) }
            }
            Objective::Preference(PreferenceLoss::Kto(k)) => PreferenceLoss::Kto(KtoLoss {
                beta: o.beta.unwrap_or(k.beta),
                desirable_weight: o.desirable_weight.unwrap_or(k.desirable_weight),
                undesirable_weight: o.undesirable_weight.unwrap_or(k.undesirable_weight),
                loss_type: match &o.loss_type {
                    Some(t) => pick_loss_type(t, name, &KtoLossType::ALL, KtoLossType::name)?,
                    None => k.loss_type,
                },
            }),
            Objective::Preference(PreferenceLoss::Dpo(d)) => {
                let loss_type = match &o.loss_type {
                    None => d.loss_type,
                    Some(list) => {
                        let types = list
                            .split(',')
                            .map(|t| pick_loss_type(t.trim(), name, &DpoLossType::ALL, DpoLossType::name))
                            .collect::<Result<Vec<_>>>()?;
                        if let Some(w) = o.loss_weights.iter().flatten().find(|w| !w.is_finite()) {
                            return Err(bad("loss_weights", format!("must be finite numbers, got {w}")));
                        }
                        DpoLossTypes::new(&types, o.loss_weights.as_deref()).map_err(|e| {
                            let option = if types.len() > MAX_LOSS_TYPES { "loss_type" } else { "loss_weights" };
                            bad(option, e)
                        })?
                    }
                };
                if o.loss_weights.is_some() && o.loss_type.is_none() {
                    return Err(bad("loss_weights", "weighs the losses loss_type lists: give loss_type too".into()));
                }
                let names = loss_type.names();
                smoothing(loss_type.smooths(), &names, "sigmoid, robust, exo_pair, aot and aot_pair")?;
                if o.discopop_tau.is_some() && !loss_type.contains(DpoLossType::Discopop) {
                    return Err(bad("discopop_tau", format!("applies to the discopop loss, not {names}")));
                }
                PreferenceLoss::Dpo(DpoLoss {
                    beta: o.beta.unwrap_or(d.beta),
                    label_smoothing: o.label_smoothing.unwrap_or(d.label_smoothing),
                    loss_type,
                    rpo_alpha: o.rpo_alpha.or(d.rpo_alpha),
                    discopop_tau: o.discopop_tau.unwrap_or(d.discopop_tau),
                    reference_free: o.reference_free.unwrap_or(d.reference_free),
                    f_divergence: f_divergence(o, &loss_type)?,
                })
            }
            Objective::Preference(PreferenceLoss::Cpo(c)) => {
                // TRL's "alphapo": simpo without the NLL term (cpo_alpha 0), its α given by alpha.
                let alphapo = o.loss_type.as_deref() == Some("alphapo");
                let loss_type = match &o.loss_type {
                    _ if alphapo => CpoLossType::Simpo,
                    Some(t) => pick_loss_type(t, name, &CpoLossType::ALL, CpoLossType::name).map_err(|e| match e {
                        Error::TrainOption { option, detail } => {
                            Error::TrainOption { option, detail: detail.replace(" for cpo", ", alphapo for cpo") }
                        }
                        e => e,
                    })?,
                    None => c.loss_type,
                };
                smoothing(loss_type.smooths(), loss_type.name(), "sigmoid and simpo")?;
                if o.simpo_gamma.is_some() && loss_type != CpoLossType::Simpo {
                    return Err(bad("simpo_gamma", format!("applies to the simpo loss, not {}", loss_type.name())));
                }
                PreferenceLoss::Cpo(CpoLoss {
                    beta: o.beta.unwrap_or(c.beta),
                    label_smoothing: o.label_smoothing.unwrap_or(c.label_smoothing),
                    loss_type,
                    cpo_alpha: if alphapo { 0.0 } else { o.cpo_alpha.unwrap_or(c.cpo_alpha) },
                    simpo_gamma: o.simpo_gamma.unwrap_or(c.simpo_gamma),
                    alpha: o.alphapo_alpha.unwrap_or(c.alpha),
                })
            }
        }))
    }
}

/// DPO's `f_divergence_type` and `f_alpha_divergence_coef` (TRL's default:
/// the reverse KL; the coefficient 1, for alpha_divergence only). A
/// divergence other than the reverse KL needs a loss of h alone among the
/// listed ones (TRL's dpo_loss ignores it in the others).
fn f_divergence(o: &PreferenceOptions, losses: &DpoLossTypes) -> Result<FDivergence> {
    let bad = |option, detail: String| Error::TrainOption { option, detail };
    let coef = o.f_alpha_divergence_coef;
    if let Some(c) = coef.filter(|c| !(c.is_finite() && *c > 0.0)) {
        return Err(bad("f_alpha_divergence_coef", format!("must be a finite number > 0, got {c}")));
    }
    let f = match o.f_divergence_type.as_deref() {
        None | Some("reverse_kl") => FDivergence::ReverseKl,
        Some("js_divergence") => FDivergence::Js,
        Some("alpha_divergence") => FDivergence::Alpha(coef.unwrap_or(1.0)),
        Some(other) => {
            return Err(bad(
                "f_divergence_type",
                format!("expected reverse_kl, js_divergence or alpha_divergence, got {other:?}"),
            ))
        }
    };
    if coef.is_some() && !matches!(f, FDivergence::Alpha(_)) {
        return Err(bad("f_alpha_divergence_coef", format!("applies to alpha_divergence, not {}", f.name())));
    }
    if f != FDivergence::ReverseKl && !losses.terms().any(|(t, _)| t.of_h()) {
        return Err(bad(
            "f_divergence_type",
            format!(
                "changes the sigmoid, robust, exo_pair, hinge and ipo losses, not {} (TRL ignores it there)",
                losses.names()
            ),
        ));
    }
    Ok(f)
}

/// The loss type named `t` among `all` (named by `type_name`); an unknown
/// name is a `TrainOption` error listing `objective`'s.
fn pick_loss_type<T: Copy>(t: &str, objective: &str, all: &[T], type_name: fn(T) -> &'static str) -> Result<T> {
    all.iter().copied().find(|&x| type_name(x) == t).ok_or_else(|| {
        let names: Vec<_> = all.iter().map(|&x| type_name(x)).collect();
        let detail = format!("expected one of {} for {objective}, got {t:?}", names.join(", "));
        Error::TrainOption { option: "loss_type", detail }
    })
}

/// The preference settings the CLI's flags and the browser's options give,
/// as TRL's `DPOConfig` and `CPOConfig` name them (the browser's in
/// camelCase); None: TRL's default.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PreferenceOptions {
    /// DPO's and CPO's β, ORPO's λ.
    pub beta: Option<f32>,
    pub label_smoothing: Option<f32>,
    /// DPO's or CPO's `loss_type` by TRL's name ("sigmoid", "ipo", "simpo", …);
    /// DPO's may list several, comma-separated ("sigmoid,bco_pair,sft"; the
    /// browser's may be a list), whose losses are summed.
    #[serde(deserialize_with = "names_or_list", default)]
    pub loss_type: Option<String>,
    /// DPO's `loss_weights`: one per listed loss type (TRL's default: 1 each).
    pub loss_weights: Option<Vec<f32>>,
    pub rpo_alpha: Option<f32>,
    pub discopop_tau: Option<f32>,
    /// DPO's `reference_free`: the loss without the reference model.
    pub reference_free: Option<bool>,
    /// DPO's `f_divergence_type` ("reverse_kl", "js_divergence", "alpha_divergence")
    /// and `f_alpha_divergence_coef`.
    pub f_divergence_type: Option<String>,
    pub f_alpha_divergence_coef: Option<f32>,
    pub cpo_alpha: Option<f32>,
    pub simpo_gamma: Option<f32>,
    /// CPO's AlphaPO α (TRL's `CPOConfig.alpha`): each answer's reward
    /// (1 − p^−α)/α in place of its log-probability (0: off).
    pub alphapo_alpha: Option<f32>,
    /// KTO's weights of desirable and undesirable examples' losses.
    pub desirable_weight: Option<f32>,
    pub undesirable_weight: Option<f32>,
    /// The reward trainer's `center_rewards_coefficient`.
    pub center_rewards_coefficient: Option<f32>,
}

/// A name, or a list of names joined by commas (`lossType: ["sigmoid", "sft"]`).
fn names_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Names {
        One(String),
        List(Vec<String>),
    }
    Ok(Option::<Names>::deserialize(d)?.map(|n| match n {
        Names::One(s) => s,
        Names::List(l) => l.join(","),
    }))
}

/// The text of a pair after the chat template: prompt, chosen, rejected.
struct PairText {
    prompt: String,
    chosen: String,
    rejected: String,
}

/// Preference pairs from JSONL bytes, as a [`Dataset`] of pairs with rows of
/// at most `opts.seq_len` tokens. `source_name` names the data in errors.
pub fn preference_dataset(
    source_name: &str,
    bytes: &[u8],
    tokenizer: Option<&Tokenizer>,
    opts: &DataOptions,
    pad_id: u32,
    tokenization: PairTokenization,
) -> Result<Dataset> {
    let text = utf8_text(source_name, bytes)?;
    let mut parser = Parser { source_name, tokenizer, template: None, masks: LossMasks::default() };
    let mut pairs = Vec::new();
    let mut warnings = Vec::new();
    for (n, line) in jsonl_lines(text) {
        let pair = pair_text(&mut parser, n, line)?;
        if pair.chosen == pair.rejected {
            warnings.push(format!(
                "{source_name}, line {n}: `chosen` and `rejected` are the same text; the pair gives no preference \
                 (its gradient is 0)"
            ));
        }
        pairs.push(match tokenization {
            PairTokenization::Separate => tokenize_pair(&parser, n, &pair, opts.seq_len)?,
            PairTokenization::Joined => tokenize_pair_joined(&parser, n, &pair, opts.seq_len)?,
        });
    }
    if pairs.is_empty() {
        return Err(Error::EmptyDataset { source_name: source_name.to_string(), detail: "no JSON lines".into() });
    }
    Ok(Dataset::from_pairs(pairs, opts, pad_id, warnings))
}

fn pair_text(parser: &mut Parser, line: usize, text: &str) -> Result<PairText> {
    let value: Value = serde_json::from_str(text).map_err(|e| parser.error(line, format!("not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(parser.error(line, "expected a JSON object with `prompt`, `chosen` and `rejected`"));
    };
    for field in ["prompt", "chosen", "rejected"] {
        if !map.contains_key(field) {
            return Err(parser.error(line, format!("missing the `{field}` field of a preference pair")));
        }
    }
    if map["prompt"].is_array() {
        conversational(parser, line, &map)
    } else {
        let field = |name| parser.string(line, &map, name).map(str::to_string);
        let pair = PairText { prompt: field("prompt")?, chosen: field("chosen")?, rejected: field("rejected")? };
        for (name, text) in [("chosen", &pair.chosen), ("rejected", &pair.rejected)] {
            if text.is_empty() {
                return Err(parser.error(line, format!("`{name}` is empty: a preference needs two answers")));
            }
        }
        Ok(pair)
    }
}

/// The longest common prefix of `a` and `b`, on a character boundary.
pub(super) fn common_prefix<'t>(a: &'t str, b: &str) -> &'t str {
    let end = a.char_indices().zip(b.chars()).find(|((_, x), y)| x != y).map_or(a.len().min(b.len()), |((i, _), _)| i);
    &a[..end]
}

/// A conversational line's renders, as TRL's `apply_chat_template` makes
/// them (with the line's `chat_template_kwargs` and `tools`): the `prompt`
/// messages with the generation prompt, and prompt + each of `answers`'
/// messages. The answer is what the second adds after their common prefix.
pub(super) fn chat_renders<const N: usize>(
    parser: &mut Parser,
    line: usize,
    map: &Map<String, Value>,
    answers: [&str; N],
) -> Result<(String, [String; N])> {
    let prompt = parser.message_list(line, map, "prompt")?;
    let answers = answers.map(|field| parser.message_list(line, map, field));
    if prompt.last().is_some_and(|m| m.role != "user") {
        return Err(parser.error(line, "the `prompt` messages must end with a user turn"));
    }
    let kwargs = parser.template_kwargs(line, map)?;
    let (_, template) = parser.template(line, "conversational preference")?;
    let render = |messages: &[Message], generation: bool| parser.render(line, &template, messages, generation, &kwargs);
    let mut joined = Vec::with_capacity(N);
    for answer in answers {
        joined.push(render(&[prompt.as_slice(), &answer?].concat(), false)?);
    }
    let joined: [String; N] =
        joined.try_into().map_err(|_| parser.error(line, "internal: an answer's render went missing"))?;
    Ok((render(&prompt, true)?, joined))
}

fn conversational(parser: &mut Parser, line: usize, map: &Map<String, Value>) -> Result<PairText> {
    let (prompt_text, [with_chosen, with_rejected]) = chat_renders(parser, line, map, ["chosen", "rejected"])?;
    let prompt_text = common_prefix(&prompt_text, &with_chosen);
    let chosen_text = with_chosen[prompt_text.len()..].to_string();
    let prompt_text = common_prefix(prompt_text, &with_rejected);
    let rejected_text = with_rejected[prompt_text.len()..].to_string();
    Ok(PairText { prompt: prompt_text.to_string(), chosen: chosen_text, rejected: rejected_text })
}

/// A row of `prompt` then `answer`, labels −100 on the prompt; refused when
/// no answer token is left to predict.
pub(super) fn pair_row(
    parser: &Parser,
    line: usize,
    prompt: &[u32],
    answer: &[u32],
    seq_len: usize,
) -> Result<Example> {
    let mut labels = vec![IGNORE_INDEX; prompt.len()];
    labels.extend(parser.labels(line, answer)?);
    let example = Example { input_ids: [prompt, answer].concat(), labels };
    if example.labels.iter().skip(1).all(|&l| l == IGNORE_INDEX) {
        return Err(parser.error(line, format!("a row of {seq_len} tokens keeps no completion token to predict")));
    }
    Ok(example)
}

pub(super) fn eos_id(parser: &Parser, line: usize, tokenizer: &Tokenizer) -> Result<u32> {
    tokenizer
        .eos_token()
        .map(|t| t.id)
        .ok_or_else(|| parser.error(line, "the tokenizer has no eos token, which TRL appends to every completion"))
}

/// The (chosen, rejected) rows of a pair as `ORPOTrainer.tokenize_row` and
/// `CPOTrainer.tokenize_row` make them (TRL 0.24), with `max_length` the row
/// length and `max_prompt_length` min(512, seq_len / 2), keeping the prompt's end:
/// - `build_tokenized_answer`: an answer's tokens are those of prompt + answer
///   after the prompt's own (one fewer prompt token where the two encodings
///   merge across the boundary);
/// - the bos id before each prompt and the eos id after each answer where
///   they are not there already;
/// - a pair too long keeps the last `max_prompt_length` prompt tokens, then
///   the first `seq_len − max_prompt_length` tokens of each answer.
fn tokenize_pair_joined(parser: &Parser, line: usize, pair: &PairText, seq_len: usize) -> Result<(Example, Example)> {
    let tokenizer = parser.tokenizer(line, "preference")?;
    let eos = eos_id(parser, line, tokenizer)?;
    let prompt = parser.encode(line, tokenizer, &pair.prompt, false)?;
    let split = |answer: &str| -> Result<(Vec<u32>, Vec<u32>)> {
        let full = parser.encode(line, tokenizer, &format!("{}{answer}", pair.prompt), false)?;
        if full.len() < prompt.len() {
            return Err(parser.error(line, "prompt + answer encodes to fewer tokens than the prompt alone"));
        }
        let start = if full[..prompt.len()] == prompt[..] { prompt.len() } else { prompt.len() - 1 };
        Ok((full[..start].to_vec(), full[start..].to_vec()))
    };
    let (mut chosen_prompt, mut chosen) = split(&pair.chosen)?;
    let (mut rejected_prompt, mut rejected) = split(&pair.rejected)?;
    let differ = chosen_prompt.iter().zip(&rejected_prompt).filter(|(a, b)| a != b).count();
    if differ > 1 || chosen_prompt.len().abs_diff(rejected_prompt.len()) > 1 {
        return Err(parser.error(
            line,
            "the prompt encodes differently before the chosen and the rejected answer beyond its last token              (TRL refuses such a pair)",
        ));
    }
    for p in [&mut chosen_prompt, &mut rejected_prompt] {
        if let Some(bos) = tokenizer.bos_id().filter(|&bos| p.first() != Some(&bos)) {
            p.insert(0, bos);
        }
    }
    for a in [&mut chosen, &mut rejected] {
        if a.last() != Some(&eos) {
            a.push(eos);
        }
    }
    let longer = chosen.len().max(rejected.len());
    let max_prompt = MAX_PROMPT_LENGTH.min(seq_len / 2);
    let row = |prompt: &mut Vec<u32>, answer: &mut Vec<u32>| {
        if prompt.len() + longer > seq_len {
            prompt.drain(..prompt.len().saturating_sub(max_prompt));
        }
        if prompt.len() + longer > seq_len {
            answer.truncate(seq_len - max_prompt);
        }
        pair_row(parser, line, prompt, answer, seq_len)
    };
    Ok((row(&mut chosen_prompt, &mut chosen)?, row(&mut rejected_prompt, &mut rejected)?))
}

/// The (chosen, rejected) rows of a pair: prompt ids + completion ids + eos,
/// labels −100 on the prompt, each row's last `seq_len` tokens.
fn tokenize_pair(parser: &Parser, line: usize, pair: &PairText, seq_len: usize) -> Result<(Example, Example)> {
    let tokenizer = parser.tokenizer(line, "preference")?;
    let eos = eos_id(parser, line, tokenizer)?;
    let mut prompt = parser.encode(line, tokenizer, &pair.prompt, false)?;
    prompt.drain(..prompt.len().saturating_sub(MAX_PROMPT_LENGTH));
    let row = |completion: &str| -> Result<Example> {
        let mut ids = parser.encode(line, tokenizer, completion, false)?;
        ids.push(eos);
        let input_ids = [prompt.as_slice(), &ids].concat();
        let cut = input_ids.len().saturating_sub(seq_len);
        // The row's last seq_len tokens: what is cut comes off the prompt first.
        let kept_prompt = &prompt[cut.min(prompt.len())..];
        pair_row(parser, line, kept_prompt, &input_ids[cut.max(prompt.len())..], seq_len)
    };
    Ok((row(&pair.chosen)?, row(&pair.rejected)?))
}
