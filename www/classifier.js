// The demo page's classification mode: labels named in a list, texts labelled with them, and a held-out set whose
// loss and accuracy are measured as the run goes. The run is the library's startTraining with objective
// "classification" on a SEQ_CLS LoRA (transformers' Trainer on PEFT's sequence classifier), in worker.js; the
// page turns label names into the class indices the library takes (the list's order).

const $ = (id) => document.getElementById(id);

/** The label names in the list, in order (their index is the class index); throws on an unusable list. */
export function labelNames(text) {
  const names = String(text).split(",").map((n) => n.trim());
  if (names.length < 2 || names.some((n) => !n)) {
    throw new Error("labels: name two or more, separated by commas (e.g. garden, town)");
  }
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new Error(`labels: ${JSON.stringify(twice)} is named twice`);
  return names;
}

/**
 * `jsonl`'s lines ({"text", "label"}, the label a name from `names` or its index) as the library's classification
 * records, the label an index; throws naming the line of a record that is not one. `what` names the box.
 */
export function labelled(jsonl, names, what) {
  const lines = String(jsonl).split("\n").map((l) => l.trim()).filter(Boolean);
  return lines.map((line, i) => {
    const at = `${what}, line ${i + 1}`;
    let row;
    try {
      row = JSON.parse(line);
    } catch (e) {
      throw new Error(`${at}: not JSON (${e.message})`);
    }
    if (typeof row?.text !== "string") throw new Error(`${at}: needs a "text" string`);
    const label = row.label;
    const index = typeof label === "string" ? names.indexOf(label) : label;
    if (!(Number.isInteger(index) && index >= 0 && index < names.length)) {
      throw new Error(`${at}: label ${JSON.stringify(label)} is not one of ${names.join(", ")} (nor an index below ${names.length})`);
    }
    return JSON.stringify({ text: row.text, label: index });
  }).join("\n");
}

/** Wires the panel. */
export function classifierPanel() {
  return {
    /** Shows the panel for objective "classification" only. */
    show(objective) { $("classify-panel").hidden = objective !== "classification"; },
    /** The run's settings: the label names. */
    settings() { return { labels: $("cls-labels").value }; },
    /** The labelled texts as the library's JSONL (class indices); throws on none or on a bad line. */
    data() {
      const names = labelNames($("cls-labels").value);
      const data = labelled($("cls-data").value, names, "labelled texts");
      if (!data) throw new Error("no labelled texts: write {\"text\", \"label\"} a line");
      return data;
    },
    /** The held-out texts as the library's JSONL, or null when the box is empty. */
    evalData() {
      const data = labelled($("cls-eval").value, labelNames($("cls-labels").value), "held-out texts");
      return data || null;
    },
    /** A resumed run's texts and labels back in the panel (the texts as the library took them: class indices). */
    restore(jsonl, settings) {
      $("cls-labels").value = settings.labels;
      $("cls-data").value = jsonl;
    },
    /** The default labelled texts, unless the box has some already. */
    fill(text) { if (!$("cls-data").value) $("cls-data").value = text; },
  };
}

/**
 * A classifier's verdict as the try panel shows it: each label with its probability (softmax over the logits),
 * likeliest first.
 */
export function verdictText(prediction, names) {
  const top = Math.max(...prediction.logits);
  const e = prediction.logits.map((l) => Math.exp(l - top));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v, i) => [names[i] ?? `label ${i}`, v / sum]).sort((a, b) => b[1] - a[1])
    .map(([name, p]) => `${name} ${p.toFixed(3)}`).join(" · ");
}

/** Whether an objective trains a sequence classifier (PEFT's SEQ_CLS): a classifier, or a reward model of one label. */
export const judges = (objective) => objective === "classification" || objective === "reward";
