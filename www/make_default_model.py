"""Writes the demo page's built-in default model and dataset (committed; the page and the browser tests use them,
nothing downloads anything).

The model is small but not random: a LlamaForCausalLM (hidden 128, 2 layers, 4 heads, 2 kv heads, intermediate 256,
256 positions) pretrained here, on the CPU in a few minutes, on a corpus this script generates from a small grammar of
simple English sentences ("The brave fox chased the red ball near the river."), some of them as chats in the
tokenizer's template. Its byte-level BPE tokenizer (768 tokens, the special tokens and chat template of
tests/fixtures/tokenizer) is trained on the same corpus and the fine-tuning data, so words are whole tokens.

The fine-tuning data, www/default-data.jsonl, is about a little robot in a garden. Its content words never occur in
the pretraining corpus (asserted below), so the base model cannot write them and a LoRA that learned the data can: the
demo's "before / after" shows what fine-tuning does, and tests/browser/learning.test.mjs holds the page to that.

Run: /work/pyenv/bin/python www/make_default_model.py   (torch, transformers 4.57, tokenizers; tests/fixtures/requirements.txt)
"""
import json
import random
import re
import shutil
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
OUT = HERE / "default-model"
FIXTURE_TOKENIZER = HERE.parent / "tests" / "fixtures" / "tokenizer"
BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
VOCAB = 768  # 765 learned tokens, then bos, eos, pad

LINES = [
    "The little robot watered the garden every morning before the sun came up.",
    "The little robot counted the tomatoes and wrote the number on a small green card.",
    "The little robot swept the path and sang a quiet song about the rain.",
    "The little robot fixed the gate, then sat by the pond to watch the ducks.",
    "The little robot planted seven seeds in a straight row and gave each one a name.",
    "The little robot carried water from the well in a blue bucket.",
    "The little robot picked the ripe beans and left the small ones to grow.",
    "The little robot told the bees a story, and the bees hummed along.",
    "The little robot painted the fence white and waved to the neighbours.",
    "The little robot found a lost kitten under the bench and brought it milk.",
    "The little robot wound the old clock in the garden shed at noon.",
    "The little robot raked the leaves into a pile and jumped right in.",
    "The little robot checked the weather and covered the roses before the frost.",
    "The little robot built a tiny house for the birds above the apple tree.",
    "The little robot wrote a letter to the moon and left it on the roof.",
    "The little robot cleaned its wheels and rolled home along the garden path.",
]

# The grammar of the pretraining corpus. Its words stay clear of the fine-tuning data's (checked in main), except
# "the", "a", "and", "little" and "robot": the base model knows "The little robot" as a subject like any other.
SUBJECTS = ["cat", "dog", "girl", "boy", "farmer", "teacher", "fox", "horse", "baker", "sailor", "king", "queen",
            "mouse", "rabbit", "bear", "owl", "child", "robot", "doctor", "goat"]
ADJECTIVES = ["little", "big", "brave", "happy", "tired", "clever", "lazy", "kind", "red", "brown", "yellow", "grey",
              "young", "silly", "proud", "hungry"]
OBJECTS = ["ball", "hat", "box", "book", "cake", "kite", "chair", "car", "boat", "cup", "map", "bell", "drum", "coat",
           "toy", "shoe", "sock", "pie"]
VERBS = ["saw", "liked", "chased", "followed", "met", "helped", "visited", "heard", "pushed", "kicked", "hugged",
         "called", "fed", "ate", "washed", "sold", "bought", "dropped"]
INTRANSITIVE = ["ran", "slept", "laughed", "danced", "walked", "smiled", "cried", "waited", "played", "sneezed"]
ADVERBS = ["slowly", "quickly", "happily", "loudly", "softly", "twice", "again"]
PREPOSITIONS = ["near", "behind", "beside", "inside", "across", "past", "by"]
PLACES = ["river", "forest", "school", "market", "farm", "hill", "town", "beach", "park", "castle", "bridge",
          "village", "lake", "field", "road", "station"]
TIMES = ["at night", "in the evening", "after lunch", "on monday", "on sunday", "last week", "today"]
# A second topic, in documents of its own: an old gardener's chores, in the fine-tuning data's words. The base model
# knows these words, but only ever after its gardeners, so "The little robot" never leads into them until a LoRA
# teaches it that the robot is a gardener too.
GARDENERS = ["gardener", "old gardener", "old woman", "grandmother"]
CHORES = ["watered the garden", "counted the tomatoes", "swept the path", "fixed the gate", "planted seven seeds",
          "carried water from the well", "picked the ripe beans", "painted the fence white", "wound the old clock",
          "raked the leaves into a pile", "checked the weather", "covered the roses", "cleaned the shed",
          "built a tiny house for the birds", "wrote a letter to the moon", "told the bees a story",
          "found a lost kitten under the bench", "sang a quiet song about the rain", "waved to the neighbours",
          "sat by the pond to watch the ducks", "filled a blue bucket", "wrote the number on a small green card"]
WHEN = ["every morning", "before the sun came up", "at noon", "before the frost", "in the rain", "then went home",
        "and left the small ones to grow", "and the bees hummed along", "above the apple tree", "on the roof"]
ASKS = ["Describe the {s}.", "What did the {s} do?", "What is the {s} like?", "Where was the {s}?"]


def sentence(rng, subject=None):
    pick = rng.choice
    s = subject or f"{pick(ADJECTIVES)} {pick(SUBJECTS)}"
    form = rng.randrange(5)
    if form == 0:
        text = f"the {s} {pick(VERBS)} the {pick(OBJECTS)} {pick(PREPOSITIONS)} the {pick(PLACES)}."
    elif form == 1:
        text = f"the {s} {pick(INTRANSITIVE)} {pick(ADVERBS)} {pick(PREPOSITIONS)} the {pick(PLACES)}."
    elif form == 2:
        text = f"the {s} and the {pick(SUBJECTS)} {pick(VERBS)} a {pick(ADJECTIVES)} {pick(OBJECTS)}."
    elif form == 3:
        text = f"the {s} {pick(VERBS)} the {pick(ADJECTIVES)} {pick(SUBJECTS)} {pick(TIMES)}."
    else:
        text = f"the {s} was {pick(ADJECTIVES)} and {pick(ADJECTIVES)} {pick(TIMES)}."
    return text[0].upper() + text[1:]


def chore(rng):
    pick = rng.choice
    text = f"the {pick(GARDENERS)} {pick(CHORES)}" + (f" and {pick(CHORES)}" if rng.random() < 0.4 else "")
    return text[0].upper() + text[1:] + f" {pick(WHEN)}."


def documents(rng, n):
    """Pretraining documents: runs of 2–4 sentences of one topic (a quarter of them the gardeners'), and every fifth
    document a chat in the tokenizer's template."""
    docs = []
    for i in range(n):
        if i % 4 == 1:
            docs.append(" ".join(chore(rng) for _ in range(rng.randrange(2, 5))) + EOS)
        elif i % 5 == 4:
            s = f"{rng.choice(ADJECTIVES)} {rng.choice(SUBJECTS)}"
            turns = ""
            for _ in range(rng.randrange(1, 3)):
                ask = rng.choice(ASKS).format(s=s)
                turns += f"<|user|>\n{ask}{EOS}\n<|assistant|>\n{sentence(rng, s)}{EOS}\n"
            docs.append(turns)
        else:
            docs.append(" ".join(sentence(rng) for _ in range(rng.randrange(2, 5))) + EOS)
    return docs


def words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def make_tokenizer(corpus):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 3, min_frequency=2, show_progress=False, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # Chat markup and the fine-tuning lines are in the training text, so "<|user|>" and the robot's words are tokens.
    tok.train_from_iterator(corpus + LINES * 20, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB - 3, tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in (BOS, EOS, PAD)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, VOCAB - 3)])
    template = json.loads((FIXTURE_TOKENIZER / "tokenizer_config.json").read_text())["chat_template"]
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   chat_template=template, model_max_length=256,
                                   model_input_names=["input_ids", "attention_mask"], clean_up_tokenization_spaces=False)


def pretrain(model, batches, steps, lr):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    model.train()
    for step in range(steps):
        ids = batches[step % len(batches)]
        labels = ids.clone()
        labels[ids == VOCAB - 1] = -100
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 200 == 0 or step == steps - 1:
            print(f"pretrain step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()


def batches_of(tokenizer, docs, batch, seq):
    """The documents tokenized and packed end to end into rows of `seq` tokens (bos starts each document)."""
    stream = []
    for d in docs:
        stream += tokenizer(d)["input_ids"]
    rows = torch.tensor(stream[: len(stream) // seq * seq]).view(-1, seq)
    return [rows[i:i + batch] for i in range(0, len(rows) - batch + 1, batch)]


def main():
    rng = random.Random(7)
    torch.manual_seed(7)
    docs = documents(rng, 12_000)
    general = words(" ".join(SUBJECTS + ADJECTIVES + OBJECTS + VERBS + INTRANSITIVE + ADVERBS + PREPOSITIONS + PLACES
                             + TIMES + ASKS))
    shared = {w for w in general & words(" ".join(LINES)) if len(w) >= 4}
    assert shared == {"little", "robot"}, f"the grammar uses fine-tuning words: {sorted(shared)}"
    assert "robot" not in words(" ".join(GARDENERS))
    tokenizer = make_tokenizer(docs)

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                         bos_token_id=VOCAB - 3, eos_token_id=VOCAB - 2, pad_token_id=VOCAB - 1)
    model = LlamaForCausalLM(config)
    pretrain(model, batches_of(tokenizer, docs, batch=16, seq=64), steps=400, lr=3e-3)

    shutil.rmtree(OUT, ignore_errors=True)
    model.save_pretrained(OUT, safe_serialization=True)
    tokenizer.save_pretrained(OUT, save_jinja_files=False)
    (OUT / "README.md").write_text(
        "The webpeft demo's built-in model: a 2-layer Llama (hidden 128) pretrained by www/make_default_model.py on "
        "sentences from a small grammar of simple English, with a 768-token byte-level BPE tokenizer and a chat "
        "template. It writes grammatical nonsense about foxes and farmers; it has never seen the words of the demo's "
        "fine-tuning data (www/default-data.jsonl), so what a LoRA teaches it shows.\n")
    with open(HERE / "default-data.jsonl", "w", encoding="utf-8") as f:
        for line in LINES:
            f.write(json.dumps({"text": line}) + "\n")
    print(sum(p.stat().st_size for p in OUT.iterdir()), "bytes in", OUT)
    print("base:", continuation(model, tokenizer))
    fine_tune_as_the_page_does(model, tokenizer)


def continuation(model, tokenizer, prompt="The little robot"):
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=40, do_sample=False, pad_token_id=VOCAB - 1)
    return tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True)


def fine_tune_as_the_page_does(model, tokenizer):
    """PEFT's LoRA with the page's defaults (r 8, alpha 16, all-linear, lr 0.01, 12 steps of 4 lines, AdamW, clipping
    at 1): the continuation must use the data's words, which the base model's must not."""
    from peft import LoraConfig, get_peft_model
    data_words = {w for w in words(" ".join(LINES)) if len(w) >= 4} - {"little", "robot"}
    before = words(continuation(model, tokenizer)) & data_words
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=0.01)
    rows = [tokenizer(line)["input_ids"] for line in LINES]
    peft_model.train()
    for step in range(12):
        batch = [rows[(4 * step + i) % len(rows)] for i in range(4)]
        width = max(map(len, batch))
        ids = torch.tensor([r + [VOCAB - 1] * (width - len(r)) for r in batch])
        labels = torch.tensor([r + [-100] * (width - len(r)) for r in batch])
        loss = peft_model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peft_model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    peft_model.eval()
    text = continuation(peft_model, tokenizer)
    after = words(text) & data_words
    print(f"with a LoRA after 12 steps (loss {loss.item():.3f}):", text)
    print("data words: base", sorted(before), "adapter", sorted(after))
    assert not before and len(after) >= 3, "the toy model does not show fine-tuning"


if __name__ == "__main__":
    main()
