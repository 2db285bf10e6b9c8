// The demo page's GRPO rewards: what the page offers to reward in the model's own completions. Each is a
// reward function as Model.startGrpo takes it (the step's completions in, one number each out), built here in the
// worker from the page's choice and its parameter, or the reward model trained on the page (its adapter's name, as
// startGrpo takes a reward model: TRL's reward_funcs with a model); the page lists them by their labels.

/** The name the worker keeps the page's last reward model under, beside the adapter being trained. */
export const REWARD_MODEL = "reward-model";
export const REWARDS = {
  word: { label: "mentions a word: 1 if the completion contains it (any case), else 0", arg: "word", fallback: "garden" },
  length: { label: "length near N tokens: 1 − |tokens − N| / N, at least 0", arg: "N", fallback: "8" },
  think: { label: "TRL's think_format_reward: 1 for <think>…</think> then an answer, else 0", arg: null, fallback: "" },
  model: { label: "the reward model trained on this page (objective reward): its score of the prompt and completion", arg: null,
    fallback: "", needsModel: true },
};

/** The reward function for the page's choice `reward` with its parameter `arg` (for "model", the reward model's adapter
 * name); throws on a bad parameter. */
export function rewardFunction(reward, arg) {
  switch (reward) {
    case "word": {
      const word = String(arg ?? "").trim().toLowerCase();
      if (!word) throw new Error("reward: name the word to mention");
      return (completions) => completions.map((c) => (c.completion.toLowerCase().includes(word) ? 1 : 0));
    }
    case "length": {
      const n = Number(arg);
      if (!(Number.isInteger(n) && n > 0)) throw new Error(`reward: N must be a whole number of tokens above 0, got ${arg}`);
      return (completions) => completions.map((c) => Math.max(0, 1 - Math.abs(c.completionIds.length - n) / n));
    }
    case "model":
      return REWARD_MODEL;
    case "think":
      // TRL's regex ^<think>(?!.*<think>)(.*?)</think>.*$ with DOTALL.
      return (completions) => completions.map((c) => (/^<think>(?![\s\S]*<think>)[\s\S]*?<\/think>[\s\S]*$/.test(c.completion) ? 1 : 0));
    default:
      throw new Error(`reward: unknown choice ${JSON.stringify(reward)}`);
  }
}
