// The chat panel's half of the worker (worker.js imports it): multi-turn
// generation with the tokenizer's chat template, a stop that ends it with the
// text so far, and adapters kept under names beside the one being trained, so
// the chat can switch between them without loading the base again.
// Messages in: chat, chat-stop (acted on at once, not queued), keep-adapter, remove-kept.
// Messages out: chat-token, chat-done, kept (the kept names after a keep, a removal or a restore).
// The kept adapters' files stay here too, so `restore()` can put them on a model loaded again after a lost GPU.

/** A kept adapter's name in the model: apart from the trained one's. */
const KEPT = "kept:";

/**
 * The chat handlers over the worker's model: `model()` is the loaded model (or null), `trained` the name the
 * training adapter has there, `post` worker.js's. `handle(msg)` returns false for messages that are not the chat's.
 */
export function chatWorker({ model, trained, post }) {
  let stopping = null; // the AbortController of the generation in flight
  let stoppedTurn = null; // a stop that came before its turn's answer started (that one is queued) stops it too
  const keptFiles = new Map(); // name → the kept adapter's files (PEFT's), for restore()

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

  async function handle(msg) {
    switch (msg.type) {
      case "chat": {
        const m = model();
        if (!m) throw new Error("load a model first");
        // Temperature 0 is greedy decoding; otherwise sampled with the page's temperature, top-p and seed.
        const sampling = msg.temperature > 0 ? { temperature: msg.temperature, topP: msg.topP, seed: msg.seed } : { greedy: true };
        stopping = new AbortController();
        if (msg.turn === stoppedTurn) stopping.abort();
        try {
          let events = 0;
          const result = await m.generate(msg.messages, {
            ...sampling, maxNewTokens: msg.maxNewTokens, adapter: adapterOf(m, msg.adapter), signal: stopping.signal,
            onToken: (text) => post({ type: "chat-token", side: msg.side, text, events: ++events }),
          });
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
        if (keptNames(m).includes(name)) throw new Error(`an adapter is already kept as ${name}: remove it or pick another name`);
        // A copy, not the trained adapter itself: the next training run replaces that one.
        const files = await m.exportAdapter(adapterOf(m, "trained"));
        await m.importAdapter(KEPT + name, files);
        keptFiles.set(name, files);
        post({ type: "kept", names: keptNames(m), added: name });
        return true;
      }
      case "remove-kept": {
        const m = model();
        m.removeAdapter(KEPT + msg.name);
        keptFiles.delete(msg.name);
        post({ type: "kept", names: keptNames(m) });
        return true;
      }
      default:
        return false;
    }
  }
  /** Puts the kept adapters back on `model()`, the same base loaded again after a lost GPU. */
  async function restore() {
    const m = model();
    for (const [name, files] of keptFiles) await m.importAdapter(KEPT + name, files);
    post({ type: "kept", names: keptNames(m) });
  }

  /** Another base was loaded: its adapters are its own. */
  const forget = () => keptFiles.clear();

  return { handle, restore, forget };
}
