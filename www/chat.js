// The demo page's chat panel ("4. Chat"): a conversation rendered with the
// model's chat template, answered in two columns side by side, each with its
// own choice of adapter (the base model, the adapter just trained, or one kept
// under a name) and its own history of the same user turns. Tokens stream into
// the answer as they come; Stop ends the answer in flight with its text so far
// (and skips the other column's). Kept adapters are saved in this browser
// and come back with their base model; each can be downloaded or removed.
// The worker's side is chat-worker.js.
const $ = (id) => document.getElementById(id);
const SIDES = ["left", "right"];

/** Wires the panel; `send` posts to the worker, `setPhase`, `showError` and `save(blob, name)` are app.js's. */
export function chatPanel({ send, setPhase, showError, save }) {
  const st = {
    hasTemplate: false, loaded: false, trained: false, phase: "starting", kept: [],
    broken: [], // [{ name, reason }]: saved for this base, but they did not import
    history: { left: [], right: [] }, // each column's messages, the same user turns in both
    running: null, // the turn in flight: { user, queue: sides still to answer, side, bubble, stop }
    turns: 0,
    asked: 0, // turns asked since the page opened (never reset): names a turn to the worker's stop
  };

  // ---- what each column runs with ------------------------------------------------------------------
  function renderChoices() {
    for (const side of SIDES) {
      const select = $(`chat-${side}-adapter`);
      const was = select.value || (side === "right" && st.trained ? "trained" : "base");
      const option = (value, label, disabled = false) => Object.assign(document.createElement("option"), { value, textContent: label, disabled });
      select.replaceChildren(option("base", "base model"),
        option("trained", st.trained ? "the adapter just trained" : "the adapter being trained (train one first)", !st.trained),
        ...st.kept.map((name) => option(`kept:${name}`, `kept: ${name}`)));
      const still = [...select.options].some((o) => o.value === was && !o.disabled);
      select.value = still ? was : "base";
    }
    const button = (label, name, onclick) => {
      const b = Object.assign(document.createElement("button"), { type: "button", textContent: label, onclick });
      b.setAttribute("aria-label", `${label} kept adapter ${name}`);
      return b;
    };
    const item = (name, broken) => {
      const li = document.createElement("li");
      const remove = button("Remove", name, () => { hideError(); send({ type: "remove-kept", context: "chat", name }); });
      remove.className = "remove-kept";
      if (broken) {
        li.className = "broken";
        li.append(`${name} (saved, but does not load on this model: ${broken.reason}) `, remove);
      } else {
        li.append(`${name} `, button("Download", name, () => { hideError(); send({ type: "download-kept", context: "chat", name }); }), " ", remove);
      }
      return li;
    };
    $("kept-list").replaceChildren(...st.kept.map((name) => item(name, null)), ...st.broken.map((b) => item(b.name, b)));
    document.body.dataset.kept = JSON.stringify(st.kept);
    controls(st.phase);
  }

  // ---- the conversation ----------------------------------------------------------------------------
  function bubble(side, role, text) {
    const li = document.createElement("li");
    li.className = `bubble ${role}`;
    li.dataset.role = role;
    li.textContent = text;
    $(`chat-${side}`).append(li);
    return li;
  }

  function clearChat() {
    st.history = { left: [], right: [] };
    for (const side of SIDES) $(`chat-${side}`).replaceChildren();
    st.turns = 0;
    delete document.body.dataset.chat;
  }

  const number = (id) => Number($(id).value);
  function sendTurn() {
    hideError();
    const user = $("chat-input").value.trim();
    if (!user) return;
    const temperature = number("chat-temperature");
    const topP = number("chat-top-p");
    const minP = number("chat-min-p");
    const repetitionPenalty = number("chat-repetition-penalty");
    const maxNewTokens = number("chat-max-tokens");
    const minNewTokens = number("chat-min-tokens");
    const noRepeatNgramSize = number("chat-ngram");
    const stopAt = $("chat-stop-at").value;
    // A template with its own enable_thinking (Qwen3's): off, each turn renders with enable_thinking false.
    const chatTemplateKwargs = st.thinkingSwitch && !$("chat-thinking").checked ? { enable_thinking: false } : undefined;
    if (!(temperature >= 0 && temperature <= 2)) return error("temperature: between 0 (greedy) and 2");
    if (!(topP > 0 && topP <= 1)) return error("top-p: above 0, at most 1 (1 keeps every token)");
    if (!(minP >= 0 && minP <= 1)) return error("min-p: from 0 (keeps every token) to 1 (only the most likely)");
    if (!(repetitionPenalty > 0 && repetitionPenalty <= 2)) return error("repetition penalty: above 0, at most 2 (1 = off)");
    if (!(Number.isInteger(maxNewTokens) && maxNewTokens >= 1 && maxNewTokens <= 256)) return error("max new tokens: a whole number from 1 to 256");
    if (!(Number.isInteger(minNewTokens) && minNewTokens >= 0 && minNewTokens <= maxNewTokens)) return error("at least: a whole number from 0 (off) to the max new tokens");
    if (!(Number.isInteger(noRepeatNgramSize) && noRepeatNgramSize >= 0 && noRepeatNgramSize <= 16)) return error("no repeated n-grams: a whole number from 0 (off) to 16");
    $("chat-input").value = "";
    st.turns += 1;
    st.asked += 1;
    // One seed per turn, the same in both columns: a sampled chat is repeatable.
    st.running = { user, queue: [...SIDES], sampling: { temperature, topP, minP, repetitionPenalty, noRepeatNgramSize, stopAt, chatTemplateKwargs, maxNewTokens, minNewTokens, seed: st.turns }, stop: false };
    for (const side of SIDES) bubble(side, "user", user);
    document.body.dataset.chat = "running";
    setPhase("generating");
    $("chat-stop").focus(); // the keyboard stops with Enter or Space, then comes back to the message box
    next();
  }

  /** Asks the worker for the next column's answer, or ends the turn. */
  function next() {
    const r = st.running;
    const side = r.queue.shift();
    if (!side) {
      st.running = null;
      document.body.dataset.chat = `turn-${st.turns}`;
      setPhase("idle");
      $("chat-input").focus();
      return;
    }
    r.side = side;
    r.bubble = bubble(side, "assistant", "");
    r.bubble.setAttribute("aria-busy", "true");
    if (r.stop) return answered({ text: "", skipped: true });
    const messages = [...st.history[side], { role: "user", content: r.user }];
    send({ type: "chat", context: "chat", turn: st.asked, side, messages, adapter: $(`chat-${side}-adapter`).value, ...r.sampling });
  }

  /** Records the column's answer (the skipped one too: both columns keep the same user turns). */
  function answered({ text, skipped, result, events }) {
    const r = st.running;
    const b = r.bubble;
    b.removeAttribute("aria-busy");
    b.textContent = text;
    if (skipped) {
      b.classList.add("skipped");
      b.dataset.stopReason = "skipped";
      b.setAttribute("aria-label", "not answered: stopped");
    } else {
      Object.assign(b.dataset, { stopReason: result.stopReason, promptTokens: result.promptTokens,
        newTokens: result.tokenIds.length, tokenEvents: events, adapter: $(`chat-${r.side}-adapter`).value });
      b.title = `${result.promptTokens} prompt tokens, ${result.tokenIds.length} new (${result.stopReason}), ` +
        `${result.seconds.toFixed(2)} s`;
    }
    st.history[r.side].push({ role: "user", content: r.user }, { role: "assistant", content: text });
    next();
  }

  // ---- controls --------------------------------------------------------------------------------------
  function controls(phase) {
    st.phase = phase;
    // An error (or anything else) that ends the phase mid-turn ends the turn: the answers so far stay.
    if (st.running && phase !== "generating") {
      st.running.bubble?.removeAttribute("aria-busy");
      st.running = null;
      document.body.dataset.chat = "failed";
    }
    const ready = phase === "idle" && st.loaded && st.hasTemplate;
    for (const id of ["chat-input", "chat-send", "chat-clear", "chat-left-adapter", "chat-right-adapter", "chat-temperature",
      "chat-top-p", "chat-min-p", "chat-repetition-penalty", "chat-max-tokens", "chat-min-tokens", "chat-ngram", "chat-stop-at", "chat-thinking", "keep-name"]) $(id).disabled = !ready;
    $("keep-adapter").disabled = !ready || !st.trained;
    for (const b of document.querySelectorAll("#kept-list button")) b.disabled = !ready;
    $("chat-stop").disabled = !st.running || st.running.stop;
    for (const side of SIDES) $(`chat-${side}`).setAttribute("aria-busy", String(st.running?.side === side));
  }

  /** The model's own settings (its generation_config.json) fill the fields: sampled models start sampled. */
  function modelSettings(g) {
    $("chat-temperature").value = g.doSample ? g.temperature : 0;
    if (g.doSample) $("chat-top-p").value = g.topP;
    if (g.doSample) $("chat-min-p").value = g.minP;
    $("chat-repetition-penalty").value = g.repetitionPenalty;
    $("chat-ngram").value = g.noRepeatNgramSize;
    $("chat-min-tokens").value = g.minNewTokens;
  }

  const error = (message) => showError("chat", message);
  const hideError = () => { $("chat-error").hidden = true; $("chat-error").textContent = ""; };

  $("chat-form").addEventListener("submit", (e) => { e.preventDefault(); if (!$("chat-send").disabled) sendTurn(); });
  $("chat-stop").onclick = () => {
    if (!st.running) return;
    st.running.stop = true;
    send({ type: "chat-stop", turn: st.asked });
    controls(st.phase);
  };
  $("chat-clear").onclick = () => { hideError(); clearChat(); };
  $("keep-adapter").onclick = () => {
    hideError();
    const name = $("keep-name").value.trim();
    if (!name) return error("give the adapter a name to keep it under");
    if (st.kept.includes(name) || st.broken.some((b) => b.name === name)) return error(`an adapter is already kept as ${name}: remove it or pick another name`);
    setPhase("exporting");
    send({ type: "keep-adapter", context: "chat", name });
  };

  /** The worker's messages: the chat's own are handled here (true); others are watched and left to app.js (false). */
  function message(m) {
    switch (m.type) {
      case "chat-token": {
        const b = st.running?.bubble;
        if (b) { b.textContent += m.text; b.dataset.tokenEvents = m.events; }
        return true;
      }
      case "chat-done":
        if (st.running) answered({ text: m.result.text, result: m.result, events: m.events });
        return true;
      case "kept":
        st.kept = m.names;
        st.broken = m.broken;
        if (m.added) { $("keep-name").value = ""; setPhase("idle"); }
        renderChoices();
        // What went wrong bringing saved adapters back is said, without ending anything: the chat goes on without them.
        if (m.problems?.length) {
          $("chat-error").hidden = false;
          $("chat-error").textContent = m.problems.join("\n");
        }
        if (m.restored) document.body.dataset.keptRestored = "true";
        return true;
      case "kept-zip":
        save(new Blob([m.bytes], { type: "application/zip" }), `webpeft-kept-${m.name.replace(/[^\w.-]+/g, "_")}.zip`);
        return true;
      case "loaded":
        // A new base: no trained adapter, a new conversation; its saved kept adapters come next ("kept").
        st.loaded = true;
        st.hasTemplate = m.info.hasChatTemplate;
        st.thinkingSwitch = m.info.chatTemplateVariables.includes("enable_thinking");
        $("chat-thinking-row").hidden = !st.thinkingSwitch;
        $("chat-thinking").checked = true;
        st.trained = false;
        st.kept = [];
        st.broken = [];
        delete document.body.dataset.keptRestored;
        hideError();
        clearChat();
        modelSettings(m.info.generation);
        $("chat-panel").hidden = !st.hasTemplate;
        $("chat-unavailable").hidden = st.hasTemplate;
        $("chat-unavailable").textContent = m.info.hasTokenizer ?
          "This model's tokenizer has no chat template (chat_template in tokenizer_config.json), so it cannot be chatted with: " +
          "its turns would have no format the model knows. Plain continuation still works in “3. Try it”." :
          "This model has no tokenizer.json, so it cannot be chatted with (nor generate text in “3. Try it”).";
        renderChoices();
        return false;
      case "trained":
        // A classifier or a reward model writes no text: the chat keeps to the base model and the kept adapters.
        st.trained = !m.judge;
        renderChoices();
        // The right column shows the new adapter unless it was set to something other than the base.
        if (st.trained && $("chat-right-adapter").value === "base") $("chat-right-adapter").value = "trained";
        return false;
      default:
        return false;
    }
  }

  return { message, controls };
}
