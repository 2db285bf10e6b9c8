//! `webpeft generate`: text from a prompt, streamed token by token.

use std::io::Write;
use std::path::Path;

use webpeft::model::config::Config;
use webpeft::model::llama::{GenerationChoices, GenerationConfig};
use webpeft::model::source::DirFiles;
use webpeft::model::stop_strings::StopStrings;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::peft::adapter::hooks_of;
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::train::chat::{ChatTemplate, Message};

use crate::{cli_gpu, load_adapter, load_model};

/// The command line's generation settings.
pub struct Settings {
    pub max_new_tokens: Option<usize>,
    pub choices: GenerationChoices,
    pub stop_strings: Vec<String>,
    pub bad_words: Vec<String>,
    /// `--chat-template-kwargs`, as given.
    pub chat_template_kwargs: Option<String>,
}

pub async fn generate(
    dir: &std::path::Path,
    base: (QuantFormat, ComputeDtype),
    prompt: &str,
    chat: bool,
    Settings { max_new_tokens, mut choices, stop_strings, bad_words, chat_template_kwargs }: Settings,
    adapter: Option<&Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    if chat_template_kwargs.is_some() && !chat {
        return Err("--chat-template-kwargs applies to --chat's template: add --chat".into());
    }
    let gpu = cli_gpu(webpeft::KernelFamily::Auto, true).await?;
    let files = DirFiles::new(dir)?;
    let tokenizer = Tokenizer::load(&files).await?;
    tokenizer.check_model(&Config::load(&files).await?)?;
    let model = load_model(&gpu, &files, base).await?;
    let adapter = match adapter {
        Some(a) => Some(load_adapter(&gpu, a, &model).await?),
        None => None,
    };
    if adapter.as_ref().is_some_and(|a| a.task_type() == webpeft::peft::TaskType::SeqCls) {
        return Err("--adapter is a reward model or classifier (task_type SEQ_CLS): it scores text, it does not \
                    write it (`webpeft score`, `webpeft classify`)"
            .into());
    }
    let ids = if chat {
        let mut template = ChatTemplate::from_tokenizer(&tokenizer)?.ok_or_else(|| {
            format!("--chat: {} has no chat_template (tokenizer_config.json); leave --chat out", dir.display())
        })?;
        if let Some(json) = &chat_template_kwargs {
            let kwargs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
                .map_err(|e| format!("--chat-template-kwargs {json:?}: not a JSON object: {e}"))?;
            template = template.with_kwargs(&kwargs)?;
        }
        // The template writes the bos itself.
        let text = template.generation_prompt(&[Message { role: "user".into(), content: prompt.into() }])?;
        tokenizer.encode(&text, false)?
    } else {
        tokenizer.encode(prompt, true)?
    };
    // The model's own settings (generation_config.json), then the command line's.
    let defaults = Config::generation_defaults(&files).await?;
    if !defaults.unsupported.is_empty() {
        eprintln!(
            "note: generation_config.json sets {}, which webpeft does not apply (transformers would)",
            defaults.unsupported.join(", ")
        );
    }
    if !bad_words.is_empty() {
        let words = bad_words.iter().map(|w| tokenizer.encode(w, false)).collect::<Result<Vec<_>, _>>()?;
        if let Some(i) = words.iter().position(Vec::is_empty) {
            return Err(format!("--bad-word {:?} has no tokens", bad_words[i]).into());
        }
        choices.bad_words_ids = Some(words);
    }
    // The command line's length as given (too long: a typed error); the model's up to where its context ends.
    let hooks = hooks_of(adapter.as_ref());
    let context =
        model.config.max_position_embeddings.saturating_sub(ids.len() + hooks.virtual_tokens() + hooks.prefix_len());
    let new_tokens = max_new_tokens.or_else(|| defaults.new_tokens(ids.len()).map(|n| n.min(context))).unwrap_or(64);
    let mut config = GenerationConfig::from_defaults(&defaults, new_tokens).with_choices(&choices);
    // Stop at config.json's, the tokenizer's and generation_config.json's eos ids (a chat model's end of turn).
    config.eos_token_ids.extend(&model.config.eos_token_ids);
    config.eos_token_ids.extend(tokenizer.eos_ids());
    // The command line's stop strings, else the model's.
    let stop_strings = if stop_strings.is_empty() { defaults.stop_strings.clone() } else { stop_strings };
    let mut stop = StopStrings::new(&tokenizer, &stop_strings, &ids)?;
    let mut decoder = tokenizer.stream_decoder(true);
    let mut stdout = std::io::stdout();
    let mut failed = None;
    let start = std::time::Instant::now();
    let out = model
        .generate_adapted(&gpu, &ids, &config, hooks, |id| {
            let stopped = decoder.step(id).and_then(|piece| {
                if let Some(piece) = piece {
                    let _ = write!(stdout, "{piece}");
                    let _ = stdout.flush();
                }
                stop.push(id)
            });
            match stopped {
                Ok(stopped) => !stopped,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        })
        .await?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    out!("{}", decoder.flush()?);
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{} tokens in {:.2} s ({:.1} tokens/s, prompt {} tokens)",
        out.len(),
        secs,
        out.len() as f64 / secs,
        ids.len()
    );
    Ok(())
}
