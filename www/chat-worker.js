// The chat panel's half of the worker (worker.js imports it): multi-turn
// generation with the tokenizer's chat template, a stop that ends it with the
// text so far, and adapters kept under names beside the one being trained, so
// the chat can switch between them without loading the base again.
// Messages in: chat, chat-stop (acted on at once, not queued), keep-adapter, remove-kept, download-kept.
// Messages out: chat-token, chat-done, kept (the kept names after a keep, a removal or a restore, with the saved
// ones that did not load; a restore's says `restored` and what went wrong), kept-zip.
// Kept adapters are saved in IndexedDB under their base (kept-store.js): `loaded()` imports the ones saved for
// the base just loaded. Their files also stay here, so a model loaded again after a lost GPU gets them back,
// those the storage refused included.
import { listKept, saveKept, deleteKept, KeptImportError } from "./kept-store.js";

/** A kept adapter's name in the model: apart from the trained one's. */
const KEPT = "kept:";

/**
 * The chat handlers over the worker's model: `model()` is the loaded model (or null), `trained` the name the
 * training adapter has there, `post` worker.js's, `isLoss(e)` whether a failed call came from a lost GPU (the
 * recovery redoes it), `generated()` runs after each answer (worker.js keeps the autotuner's choices then).
 * `handle(msg)` returns false for messages that are not the chat's.
 */
export function chatWorker({ model, trained, post, isLoss, generated = () => {} }) {
  let stopping = null; // the AbortController of the generation in flight
  let stoppedTurn = null; // a stop that came before its turn's answer started (that one is queued) stops it too
  let base = null; // the loaded base, as kept-store.js keys it
  let read = false; // whether the adapters saved for `base` are in keptFiles
  const keptFiles = new Map(); // name → the kept adapter's files (PEFT's), for a reload after a lost GPU
  const broken = new Map(); // name → why: saved for this base, but does not import on it

  /** "base", "trained" or "kept:<name>" → the adapter option of `generate`. */
  function adapterOf(m, choice) {
    if (choice === "base") return null;
    const name = choice === "trained" ? trained : choice;
    if (!m.adapterNames().includes(name)) {
      throw new Error(choice === "trained" ? "train an adapter first" : `no kept adapter named ${choice.slice(KEPT.length)}`);
    }
    return name;
  }

  const keptNames = (m) => m.adapterNames().filter((n) => n.startsWith(KEPT)).map((n) => n.slice(KEPT.length));
  const postKept = (m, more) => post({ type: "kept", names: keptNames(m),
    broken: [...broken].map(([name, reason]) => ({ name, reason })), ...more });

  /** Puts the kept adapter on the model; one that does not import is set aside in `broken`, its error returned. */
  async function importKept(m, name, files) {
    try {
      await m.importAdapter(KEPT + name, files);
      broken.delete(name);
      return null;
    } catch (e) {
      if (await isLoss(e)) throw e;
      if (m.adapterNames().includes(KEPT + name)) m.removeAdapter(KEPT + name);
      keptFiles.delete(name);
      broken.set(name, String(e?.message ?? e));
      return new KeptImportError(name, e);
    }
  }

  async function handle(msg) {
    switch (msg.type) {
      case "chat": {
        const m = model();
        if (!m) throw new Error("load a model first");
        // Temperature 0 is greedy decoding; otherwise sampled with the page's temperature, top-p, min-p and seed
        // (top-k is the model's own). The repetition penalty, the n-gram bans and the stop text apply to both.
        const sampling = msg.temperature > 0 ? { temperature: msg.temperature, topP: msg.topP, minP: msg.minP, seed: msg.seed } : { greedy: true };
        sampling.repetitionPenalty = msg.repetitionPenalty;
        sampling.noRepeatNgramSize = msg.noRepeatNgramSize;
        sampling.minNewTokens = msg.minNewTokens; // eos is banned before it (transformers' min_new_tokens)
        // A stop text of the page's, else the model's own stop_strings.
        if (msg.stopAt) sampling.stopStrings = [msg.stopAt];
        if (msg.chatTemplateKwargs) sampling.chatTemplateKwargs = msg.chatTemplateKwargs;
        stopping = new AbortController();
        if (msg.turn === stoppedTurn) stopping.abort();
        try {
          let events = 0;
          const result = await m.generate(msg.messages, {
            ...sampling, maxNewTokens: msg.maxNewTokens, adapter: adapterOf(m, msg.adapter), signal: stopping.signal,
            onToken: (text) => post({ type: "chat-token", side: msg.side, text, events: ++events }),
          });
          generated(); // e.g. keep what the autotuner timed during the answer
          post({ type: "chat-done", side: msg.side, result, events });
        } finally {
          stopping = null;
        }
        return true;
      }
      case "chat-stop":
        stoppedTurn = msg.turn;
        stopping?.abort();
        return true;
      case "keep-adapter": {
        const m = model();
        const name = String(msg.name ?? "").trim();
        if (!name) throw new Error("give the adapter a name to keep it under");
        if (keptNames(m).includes(name) || broken.has(name)) {
          throw new Error(`an adapter is already kept as ${name}: remove it or pick another name`);
        }
        // A copy, not the trained adapter itself: the next training run replaces that one.
        const files = await m.exportAdapter(adapterOf(m, "trained"));
        await m.importAdapter(KEPT + name, files);
        keptFiles.set(name, files);
        postKept(m, { added: name });
        // Kept in memory already: a storage that refuses it (full, or failing) is an error shown, not a lost adapter.
        await saveKept(base, name, files);
        return true;
      }
      case "remove-kept": {
        const m = model();
        if (m.adapterNames().includes(KEPT + msg.name)) m.removeAdapter(KEPT + msg.name);
        keptFiles.delete(msg.name);
        broken.delete(msg.name);
        postKept(m);
        await deleteKept(base, msg.name);
        return true;
      }
      case "download-kept": {
        const zip = await model().exportAdapterZip(KEPT + msg.name);
        post({ type: "kept-zip", name: msg.name, bytes: zip }, [zip.buffer]);
        return true;
      }
      default:
        return false;
    }
  }

  /** A base is being loaded (not the recovery's reload of the same one): the old base's kept adapters go. */
  function loading(key) {
    base = key;
    read = false;
    keptFiles.clear();
    broken.clear();
  }

  /**
   * The base is loaded (or loaded again after a lost GPU): the kept adapters go on it, those saved for it read first
   * (once). What fails is reported with the names, never fatal to the load: the chat goes on without those adapters.
   */
  async function loaded() {
    const problems = [];
    if (!read) {
      try {
        for (const saved of await listKept(base)) keptFiles.set(saved.name, saved.files);
        read = true;
      } catch (e) {
        problems.push(e.message);
      }
    }
    const m = model();
    for (const [name, files] of [...keptFiles]) {
      const e = await importKept(m, name, files);
      if (e) problems.push(e.message);
    }
    postKept(m, { restored: true, problems });
  }

  return { handle, loading, loaded };
}
