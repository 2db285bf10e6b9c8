// The demo page's GRPO and RLOO mode: prompts, a reward the page computes from each sampled completion (rewards.js), and
// each step's completions listed with their rewards. The run is the library's Model.startGrpo, in worker.js.
import { REWARDS } from "./rewards.js";

const $ = (id) => document.getElementById(id);

/** Whether an objective trains on sampled groups of completions and their rewards (TRL's GRPO and RLOO). */
export const samplesGroups = (objective) => objective === "grpo" || objective === "rloo";

/** Wires the panel. */
export function grpoPanel() {
  const picker = $("grpo-reward");
  picker.replaceChildren(...Object.entries(REWARDS).map(([key, r]) => {
    const option = document.createElement("option");
    option.value = key;
    option.textContent = r.label;
    option.disabled = Boolean(r.needsModel); // until the page has trained a reward model
    return option;
  }));
  const showArg = () => {
    const r = REWARDS[picker.value];
    $("grpo-arg-label").hidden = !r.arg;
    $("grpo-arg-name").textContent = r.arg ?? "";
    $("grpo-reward-arg").value = r.fallback;
  };
  picker.addEventListener("change", showArg);
  showArg();
  return {
    /** Offers the reward model trained on this page as the reward (or stops offering it: a new base). */
    rewardModel(ready) {
      for (const option of picker.options) if (REWARDS[option.value].needsModel) option.disabled = !ready;
      if (!ready && REWARDS[picker.value].needsModel) { picker.value = "word"; showArg(); }
    },
    /** Shows the panel for grpo and rloo only, with the objective's note. */
    show(objective) {
      $("grpo-panel").hidden = !samplesGroups(objective);
      $("grpo-about").hidden = objective !== "grpo";
      $("rloo-about").hidden = objective !== "rloo";
    },
    /** The run's GRPO settings from the panel. */
    settings() {
      const n = (id) => Number($(id).value);
      return { reward: picker.value, rewardArg: $("grpo-reward-arg").value, numGenerations: n("grpo-generations"),
        maxCompletionLength: n("grpo-length"), temperature: n("grpo-temperature") };
    },
    /** The prompts as GRPO's JSONL, one {"prompt"} a line: JSONL lines as they are, other lines as texts. */
    data() {
      const lines = $("grpo-prompts").value.split("\n").map((l) => l.trim()).filter(Boolean);
      if (lines.length === 0) throw new Error("no prompts: write one a line for the model to complete");
      return lines.map((l) => (l.startsWith("{") ? l : JSON.stringify({ prompt: l }))).join("\n");
    },
    /** A resumed run's prompts and settings back in the panel. */
    restore(jsonl, settings) {
      $("grpo-prompts").value = jsonl.split("\n").map((l) => JSON.parse(l)).map((r) =>
        (typeof r.prompt === "string" && Object.keys(r).length === 1 ? r.prompt : JSON.stringify(r))).join("\n");
      picker.value = settings.reward;
      showArg();
      $("grpo-reward-arg").value = settings.rewardArg;
      $("grpo-generations").value = settings.numGenerations;
      $("grpo-length").value = settings.maxCompletionLength;
      $("grpo-temperature").value = settings.temperature;
    },
    /** A step's sampled completions with their rewards. */
    step(ev) {
      $("grpo-completions").replaceChildren(...ev.completions.map((c) => {
        const li = document.createElement("li");
        const reward = document.createElement("span");
        reward.className = "reward";
        reward.textContent = c.reward.toFixed(2);
        const advantage = document.createElement("span");
        advantage.className = "advantage";
        advantage.textContent = ` (advantage ${c.advantage >= 0 ? "+" : ""}${c.advantage.toFixed(2)})`;
        const text = document.createElement("span");
        text.textContent = ` ${JSON.stringify(c.prompt)} → ${JSON.stringify(c.completion)}`;
        li.append(reward, advantage, text);
        return li;
      }));
      $("grpo-step").textContent = String(ev.step);
    },
  };
}
