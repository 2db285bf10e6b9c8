// The model section's presets: real models in one click, each with its
// download size and the memory planner's verdict for this GPU, computed from
// the config.json embedded in presets.json before anything is downloaded;
// and the check of a typed model URL. The worker plans (it holds the GPU):
// this module asks with a `plan-configs` message and shows the `planned` reply.

export const FORMATS = ["f32", "f16", "bf16", "q8", "nf4"];
const EXAMPLE = "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/resolve/main/";

/** The base URL the library loads a Hub repo from. */
export const hubUrl = (repo, revision = "main") => `https://huggingface.co/${repo}/resolve/${revision}/`;

export const mib = (bytes) => `${(bytes / 2 ** 20).toFixed(1)} MiB`;
/** Downloads in decimal units, as the Hub shows file sizes. */
export const downloadSize = (bytes) => (bytes >= 1e9 ? `${(bytes / 1e9).toFixed(2)} GB` : `${(bytes / 1e6).toFixed(1)} MB`);

const FILE = /\.(json|safetensors|bin|gguf|model|txt)$/i;

/**
 * A model folder's base URL from what the user typed: any http(s) folder
 * URL; on the Hub only the `…/resolve/<revision>/` form, which serves the
 * files themselves. Other shapes throw, naming the URL to use instead.
 */
export function modelBaseUrl(text) {
  const typed = text.trim();
  if (!typed) throw new Error(`enter the model's base URL (the folder holding config.json), e.g. ${EXAMPLE}`);
  let u;
  try {
    u = new URL(typed);
  } catch {
    throw new Error(`"${typed}" is not a URL: enter the folder holding config.json, e.g. ${EXAMPLE}`);
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") throw new Error(`a ${u.protocol} URL cannot be fetched: use an https:// one, e.g. ${EXAMPLE}`);
  const slash = (path) => (path.endsWith("/") ? path : path + "/");
  const folder = (path) => u.origin + slash(path);
  if (u.hostname !== "huggingface.co" && u.hostname !== "hf.co") {
    const last = u.pathname.split("/").at(-1);
    if (FILE.test(last)) throw new Error(`${typed} is a file: use the folder holding it, ${folder(u.pathname.slice(0, -last.length))}`);
    return folder(u.pathname);
  }
  const [owner, name, kind, revision, ...rest] = u.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  const shape = "https://huggingface.co/<owner>/<model>/resolve/main/";
  if (owner === "datasets" || owner === "spaces") throw new Error(`${typed} is a ${owner === "datasets" ? "dataset" : "Space"}, not a model: use ${shape}`);
  if (!owner || !name) throw new Error(`${typed} names no model repository: use ${shape}`);
  const sub = rest.length && FILE.test(rest.at(-1)) ? rest.slice(0, -1) : rest;
  const resolve = hubUrl(`${owner}/${name}`, revision ?? "main") + sub.map((s) => `${encodeURIComponent(s)}/`).join("");
  if (!kind) throw new Error(`${typed} is the model's page on the Hub, not its files: use ${resolve}`);
  if (kind === "tree" || kind === "blob") {
    throw new Error(`${typed} is a /${kind}/ link (a page for reading the repository on the Hub, not its files): use ${resolve}`);
  }
  if (kind !== "resolve" || !revision) throw new Error(`${typed} is not a model folder on the Hub: use ${resolve}`);
  if (sub.length !== rest.length) throw new Error(`${typed} is a file: use the folder holding it, ${resolve}`);
  return `https://huggingface.co${slash(u.pathname)}`;
}

/**
 * Renders `presets.json` as a list in `root`. `settings()` gives what the
 * plan depends on: {quant, method, r, batchSize, seqLen}; `send` posts a
 * message to the worker; `choose(preset)` loads one. Returns `plan()`, to
 * call when the GPU is ready or a setting changes, and `planned(msg)` for the
 * worker's reply.
 */
export async function presetList({ root, settings, send, choose }) {
  const { presets } = await (await fetch(new URL("presets.json", import.meta.url))).json();
  const items = new Map();
  for (const p of presets) {
    const li = document.createElement("li");
    li.dataset.preset = p.id;
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `Load ${p.name}`;
    button.onclick = () => choose(p);
    const what = document.createElement("span");
    what.className = "note";
    what.textContent = ` ${p.repo} (${p.files.map((f) => f.name).join(", ")}, ${p.files[0].dtype})` +
      (p.gated ? ` · gated: accept the ${p.licence} on its Hub page, then paste an access token below` : "");
    const verdict = document.createElement("p");
    verdict.className = "verdict";
    const download = p.files.reduce((sum, f) => sum + f.bytes, 0);
    verdict.textContent = `download ${downloadSize(download)}; waiting for the GPU to plan…`;
    const weights = document.createElement("p");
    weights.className = "note weights";
    li.append(button, what, verdict, weights);
    root.append(li);
    items.set(p.id, { preset: p, li, verdict, weights, download });
  }

  let asked = 0;
  let current = null;
  function plan() {
    current = settings();
    const configs = presets.flatMap((p) => FORMATS.map((quant) => ({ key: p.id, quant, config: JSON.stringify(p.config) })));
    send({ type: "plan-configs", id: ++asked, settings: current, items: configs });
  }

  function planned(msg) {
    if (msg.id !== asked) return; // an answer to settings since changed
    for (const { key, quant, plan, error } of msg.plans) {
      const it = items.get(key);
      if (!it) continue;
      it[quant] = plan ?? { error };
    }
    for (const it of items.values()) show(it, current);
    root.dataset.planned = String(msg.id);
  }

  function show(it, s) {
    const p = it[s.quant];
    const { li, verdict, weights } = it;
    if (p.error) {
      verdict.textContent = `cannot plan: ${p.error}`;
      li.dataset.fits = "unknown";
      return;
    }
    li.dataset.totalBytes = p.totalBytes;
    li.dataset.fits = p.fits;
    verdict.textContent = `download ${downloadSize(it.download)}; as ${s.quant} (${s.method}, r ${s.r}, batch ${s.batchSize} × ${s.seqLen} tokens) ` +
      `needs ${mib(p.totalBytes)} on the GPU ` +
      `(weights ${mib(p.weightBytes)} / adapter ${mib(p.adapterBytes)} / optimizer ${mib(p.optimizerBytes)} / ` +
      `activations ${mib(p.activationBytes)}); ` +
      (p.fits
        ? `fits — largest buffer ${mib(p.largestBufferBytes)} of this GPU's ${mib(p.bindingLimitBytes)} per binding.`
        : `does not fit because its largest buffer, ${mib(p.largestBufferBytes)}, is over this GPU's ${mib(p.bindingLimitBytes)} ` +
          "per binding: lower the batch or the sequence length.");
    weights.textContent = "weights on the GPU by base format: " +
      FORMATS.map((q) => `${q} ${it[q].error ? "?" : mib(it[q].weightBytes)}`).join(" · ");
  }

  return { plan, planned };
}
