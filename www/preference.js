// The demo page's preference mode (DPO, ORPO, CPO, KTO): two sampled answers to a
// prompt, marked 👍 preferred and 👎 rejected, collected as TRL-shaped pairs
// ({prompt, chosen, rejected}) and trained on with the page's own controls;
// each step's reward metrics in a table. The answers come from the base
// model (no adapter), which is also DPO's reference.
import { samplesGroups } from "./grpo.js";

const $ = (id) => document.getElementById(id);

/** Wires the panel; `send` posts to the worker, `setPhase` and `showError` are app.js's. */
export function preferences({ send, setPhase, showError }) {
  // mark: which answer is preferred ("a" or "b"), null until the user says.
  const st = { pairs: [], answers: null, mark: null, round: 0, idle: false };

  function render() {
    for (const [side, other] of [["a", "b"], ["b", "a"]]) {
      const good = st.mark === side;
      const bad = st.mark === other;
      $(`mark-${side}-good`).setAttribute("aria-pressed", String(good));
      $(`mark-${side}-bad`).setAttribute("aria-pressed", String(bad));
      $(`mark-${side}-good`).disabled = $(`mark-${side}-bad`).disabled = !st.idle || !st.answers;
      $(`answer-${side}-mark`).textContent = good ? "👍 preferred" : bad ? "👎 rejected" : "";
      if (st.mark) $(`answer-${side}-box`).dataset.mark = good ? "chosen" : "rejected";
      else delete $(`answer-${side}-box`).dataset.mark;
    }
    $("add-pair").disabled = !st.idle || !st.mark;
    $("pair-count").textContent = st.pairs.length;
    document.body.dataset.pairs = JSON.stringify(st.pairs);
    const list = $("pairs");
    list.replaceChildren(...st.pairs.map((p, i) => {
      const li = document.createElement("li");
      const line = (cls, label, text) => {
        const span = document.createElement("span");
        span.className = cls;
        span.textContent = `${label} ${JSON.stringify(text)}`;
        return span;
      };
      const remove = document.createElement("button");
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove pair ${i + 1}`);
      remove.onclick = () => { st.pairs.splice(i, 1); render(); };
      li.append(line("prompt", "prompt", p.prompt), document.createElement("br"), line("chosen", "👍", p.chosen),
        document.createElement("br"), line("rejected", "👎", p.rejected), " ", remove);
      return li;
    }));
  }

  const error = (message) => showError("pairs", message);
  const hideError = () => { $("pref-error").hidden = true; $("pref-error").textContent = ""; };

  $("pref-generate").onclick = () => {
    hideError();
    const prompt = $("pref-prompt").value;
    if (!prompt.trim()) return error("enter a prompt for the two answers");
    const form = $("config").elements;
    // Two seeds per round, different every round, from the form's seed: the page is repeatable.
    const seed = Number(form.seed.value) + 2 * st.round++;
    const sampling = { temperature: Number($("pref-temperature").value), seed };
    st.answers = null;
    st.mark = null;
    st.pending = { prompt, maxNewTokens: Number($("pref-tokens").value), sampling };
    $("answer-a").textContent = $("answer-b").textContent = "";
    delete document.body.dataset.answers;
    setPhase("generating");
    send({ type: "generate", context: "pairs", which: "answer-a", prompt, maxNewTokens: st.pending.maxNewTokens, sampling });
  };

  for (const [side, other] of [["a", "b"], ["b", "a"]]) {
    $(`mark-${side}-good`).onclick = () => { hideError(); st.mark = side; render(); };
    $(`mark-${side}-bad`).onclick = () => { hideError(); st.mark = other; render(); };
  }

  $("add-pair").onclick = () => {
    hideError();
    const [a, b] = st.answers;
    const [chosen, rejected] = st.mark === "a" ? [a, b] : [b, a];
    if (!a || !b) return error(`answer ${a ? "B" : "A"} is empty (the model ended it at once): generate again`);
    if (a === b) return error("the two answers are the same text, which teaches no preference: generate again");
    const pair = { prompt: st.prompt, chosen, rejected };
    if (st.pairs.some((p) => JSON.stringify(p) === JSON.stringify(pair))) return error("this pair is already in the list");
    st.pairs.push(pair);
    st.mark = null;
    render();
  };

  return {
    /** Enables the panel's controls for the page's phase. */
    controls(idle, loaded) {
      st.idle = idle;
      $("pref-generate").disabled = !idle || !loaded;
      render();
    },
    /** A finished generation of one of the two answers: true when it was one. */
    generated(m) {
      if (m.which === "answer-a") {
        const p = st.pending;
        send({ type: "generate", context: "pairs", which: "answer-b", prompt: p.prompt, maxNewTokens: p.maxNewTokens,
          sampling: { ...p.sampling, seed: p.sampling.seed + 1 } });
        st.firstAnswer = m.result.text;
        return true;
      }
      if (m.which !== "answer-b") return false;
      st.answers = [st.firstAnswer, m.result.text];
      st.prompt = st.pending.prompt;
      document.body.dataset.answers = st.round;
      setPhase("idle");
      return true;
    },
    /** Shows the panel for the preference objectives (dpo, orpo, cpo, kto, reward), the SFT data for sft. */
    showObjective(objective) {
      $("preference-panel").hidden = objective === "sft" || objective === "classification" || samplesGroups(objective);
      $("sft-data").hidden = objective !== "sft";
    },
    /** The pairs in the list and those pasted, as one JSONL text; throws when there are none. */
    data() {
      const pasted = $("pref-data").value.trim();
      const lines = [...st.pairs.map((p) => JSON.stringify(p)), ...(pasted ? [pasted] : [])];
      if (lines.length === 0) {
        throw new Error("no preference pairs: generate two answers and mark them, or paste TRL's JSONL");
      }
      return lines.join("\n");
    },
    /** Puts a resumed run's pairs where they can be seen: the pasted-pairs box. */
    restore(jsonl) { st.pairs = []; $("pref-data").value = jsonl; render(); },
  };
}

/** TRL's columns: DPOTrainer's (and ORPO's, CPO's), KTOTrainer's, GRPOTrainer's, or RewardTrainer's. */
const CAPTIONS = {
  reward: "a reward model's metrics per step (TRL's RewardTrainer: how often, and by how much, the 👍 answer scores above the 👎 one)",
  pairs: "rewards per step (TRL's metrics, measured before the step's update: β·(log-probability with the adapter − without))",
  kto: "rewards per step (TRL's KTO metrics, measured before the step's update: β·(log-probability with the adapter − without))",
  grpo: "rewards per step (TRL's GRPO metrics of the step's sampled completions, scored before its update)",
};
const COLUMNS = {
  pairs: ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"],
  kto: ["kl", "rewards/chosen_sum", "rewards/rejected_sum", "count/chosen", "count/rejected"],
  grpo: ["reward", "reward_std", "frac_reward_zero_std", "entropy", "completions/mean_length"],
  reward: ["accuracy", "margin", "min_reward", "mean_reward", "max_reward"],
};

/** Which trainer's metrics a step event carries. */
export const metricsKind = (ev) => (ev.kto ? "kto" : ev.rewards ? "pairs" : ev.rewardStd !== undefined ? "grpo"
  : typeof ev.reward === "object" ? "reward" : null);

/** The reward table under the loss chart: one row per step of a DPO, ORPO, CPO, KTO, GRPO or reward model's run. */
export const rewardTable = {
  reset() {
    $("rewards").hidden = true;
    $("rewards").tBodies[0].replaceChildren();
  },
  add(ev) {
    const kind = metricsKind(ev);
    const head = $("rewards").tHead.rows[0];
    $("rewards").caption.textContent = CAPTIONS[kind];
    if (head.cells[2].textContent !== COLUMNS[kind][0]) {
      head.replaceChildren(...["step", "loss", ...COLUMNS[kind]].map((name) => {
        const th = document.createElement("th");
        th.scope = "col";
        th.textContent = name;
        return th;
      }));
    }
    const k = ev.kto;
    const values = {
      kto: () => [k.kl, k.rewardsChosenSum, k.rewardsRejectedSum, k.countChosen, k.countRejected],
      pairs: () => [ev.rewards.chosen, ev.rewards.rejected, ev.rewards.accuracies, ev.rewards.margins],
      grpo: () => [ev.reward, ev.rewardStd, ev.fracRewardZeroStd, ev.entropy, ev.meanLength],
      reward: () => [ev.reward.accuracy, ev.reward.margin, ev.reward.minReward, ev.reward.meanReward, ev.reward.maxReward],
    }[kind]();
    const row = $("rewards").tBodies[0].insertRow();
    row.insertCell().textContent = String(ev.step);
    for (const v of [ev.loss, ...values]) row.insertCell().textContent = v.toFixed(4);
    $("rewards").hidden = false;
  },
  /** Drops the rows after `step` (a run resumed from its checkpoint computes them again). */
  truncate(step) {
    for (const row of [...$("rewards").tBodies[0].rows]) if (Number(row.cells[0].textContent) > step) row.remove();
  },
};
