// Real-browser tests of the demo page and the npm package: Debian's Chromium,
// headless, WebGPU on SwiftShader, driven by playwright-core. Run by
// scripts/test.sh after scripts/build-web.sh (pkg/) and the native test build
// (target/debug/webpeft, for the native-vs-browser comparison). Outputs
// (screenshot, downloaded zip, timings) go to tests/browser/out/demo/.
//
//   node --test tests/browser/run.mjs
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { serve } from "../../www/serve.mjs";
import { here, root, outDir, launch, open, unzip, safetensors, gguf } from "./common.mjs";

const out = outDir("demo");

const server = await serve(0);
const base = `http://127.0.0.1:${server.address().port}/`;
const timings = {};
test.after(() => {
  server.close();
  fs.writeFileSync(path.join(out, "timings.json"), JSON.stringify(timings, null, 2));
  console.log("timings:", JSON.stringify(timings));
});

test("the demo page loads the toy model, trains, generates and downloads an adapter equal to the native one", async () => {
  const browser = await launch();
  try {
    const { page, problems, external } = await open(browser, base);
    await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 }).catch(async (e) => {
      throw new Error(`${e.message}; page error: ${await page.textContent("#error")}`);
    });
    timings.browserLoadSeconds = Number(await page.getAttribute("body", "data-load-seconds"));
    // Held-out lines: their loss is measured every 4 steps (the form's default) and charted.
    await page.fill("#eval-data", '{"text": "The little robot walked home."}\n{"text": "A red ball rolled away."}');
    await page.click("#train");
    await page.waitForSelector("body[data-trained]", { timeout: 600_000 });
    const losses = JSON.parse(await page.getAttribute("body", "data-losses"));
    assert.equal(losses.length, 12);
    const evals = JSON.parse(await page.getAttribute("body", "data-eval-losses"));
    assert.deepEqual(evals.map(([s]) => s), [4, 8, 12], `held-out losses ${JSON.stringify(evals)}`);
    assert.ok(evals.every(([, l]) => Number.isFinite(l) && l > 0), `held-out losses ${JSON.stringify(evals)}`);
    assert.ok(losses.at(-1) < losses[0] - 0.1, `the loss falls: ${losses}`);
    timings.browserStepSeconds = Number(await page.getAttribute("body", "data-step-seconds"));
    timings.browserTokensPerSecond = JSON.parse(await page.getAttribute("body", "data-tokens-per-second"))
      .slice(1).reduce((a, b, _, xs) => a + b / xs.length, 0);
    await page.screenshot({ path: path.join(out, "demo-after-training.png"), fullPage: true });

    await page.click("#generate");
    await page.waitForSelector("body[data-after=done]", { timeout: 300_000 });
    const before = await page.textContent("#before");
    const after = await page.textContent("#after");
    assert.ok(before.length > 0 && after.length > 0, "both generations produced text");
    await page.screenshot({ path: path.join(out, "demo-after-generation.png"), fullPage: true });

    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
    const zipPath = path.join(out, "webpeft-adapter.zip");
    await download.saveAs(zipPath);
    const files = unzip(fs.readFileSync(zipPath));
    const config = JSON.parse(files["adapter_config.json"].toString("utf8"));
    assert.equal(config.peft_type, "LORA");
    assert.equal(config.r, 8);
    assert.match(config.base_model_name_or_path, /^http:\/\/127\.0\.0\.1:\d+\/default-model$/);
    assert.match(await page.textContent("#gpu-info"), /software renderer/, "SwiftShader is named as one");
    const web = safetensors(files["adapter_model.safetensors"]);
    assert.equal(Object.keys(web).length, 28);

    // The same adapter for llama.cpp: merged into the model (q8_0) and alone (f16), streamed out of the
    // worker; each file equals the native `export-gguf` of the adapter folder the zip holds, byte for byte.
    const adapterDir = path.join(out, "browser-adapter");
    fs.mkdirSync(adapterDir, { recursive: true });
    for (const [name, bytes] of Object.entries(files)) fs.writeFileSync(path.join(adapterDir, name), bytes);
    const ggufStart = Date.now();
    for (const [kind, type] of [["merged", "q8_0"], ["lora", "f16"]]) {
      assert.equal(await page.isDisabled("#download-gguf"), false);
      await page.selectOption("#gguf-kind", `${kind}:${type}`);
      const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#download-gguf")]);
      const file = path.join(out, dl.suggestedFilename());
      await dl.saveAs(file);
      const bytes = fs.readFileSync(file);
      const g = gguf(bytes);
      assert.equal(g.version, 3);
      assert.equal(g.kv.get("general.architecture"), "llama");
      assert.equal(g.kv.get("general.name"), "default-model");
      if (kind === "merged") {
        assert.equal(g.kv.get("general.type"), "model");
        assert.equal(g.kv.get("general.file_type"), 7, "MOSTLY_Q8_0");
        assert.equal(g.kv.get("tokenizer.ggml.pre"), "gpt-2");
        assert.equal(g.kv.get("tokenizer.ggml.tokens").length, 768);
        assert.equal(g.tensorCount, 21, "token_embd, 2 × 9 block tensors, output_norm, output");
        const q = g.tensors.find((t) => t.name === "blk.0.attn_q.weight");
        assert.deepEqual([q.ne, q.type], [[128, 128], 8], "blk.0.attn_q.weight: (in, out), Q8_0");
      } else {
        assert.equal(g.kv.get("general.type"), "adapter");
        assert.equal(g.kv.get("adapter.type"), "lora");
        assert.equal(g.kv.get("adapter.lora.alpha"), 16);
        assert.equal(g.tensorCount, 28, "lora_a and lora_b for 2 layers × 7 Linears");
        assert.ok(g.tensors.every((t) => /^blk\.[01]\.(attn_(q|k|v|output)|ffn_(gate|up|down))\.weight\.lora_[ab]$/.test(t.name)));
      }
      const native = path.join(out, `native-${kind}-${type}.gguf`);
      execFileSync(path.join(root, "target", "debug", "webpeft"), ["export-gguf", "--model", path.join(root, "www", "default-model"),
        "--adapter", adapterDir, ...(kind === "lora" ? ["--lora-only"] : []), "--type", type, "--name", "default-model",
        "--tokenizer-pre", "gpt-2", "--out", native], { env: { ...process.env, XDG_RUNTIME_DIR: "/tmp" }, stdio: ["ignore", "pipe", "pipe"] });
      assert.ok(bytes.equals(fs.readFileSync(native)), `${kind} ${type}: the browser's .gguf equals the native export`);
    }
    timings.ggufSeconds = (Date.now() - ggufStart) / 1000;

    // The native library, same seed, data and config.
    const nativeOut = path.join(out, "native");
    const start = Date.now();
    const lines = execFileSync(path.join(root, "target", "debug", "webpeft"), ["train", "--model", path.join(root, "www", "default-model"),
      "--data", path.join(root, "www", "default-data.jsonl"), "--method", "lora", "--targets", "all-linear", "--r", "8",
      "--alpha", "16", "--lr", "0.01", "--steps", "12", "--batch-size", "4", "--seq-len", "32", "--seed", "42",
      "--schedule", "constant", "--out", nativeOut], { env: { ...process.env, XDG_RUNTIME_DIR: "/tmp" }, stdio: ["ignore", "pipe", "pipe"] })
      .toString().trim().split("\n").map((l) => JSON.parse(l));
    timings.nativeTrainSeconds = (Date.now() - start) / 1000;
    // Steps 2.. (the first compiles pipelines); the same data, so the same tokens per step.
    const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
    timings.nativeTokensPerSecond = mean(lines.slice(1).map((l) => l.tokens_per_s));
    timings.nativeLosses = lines.map((l) => l.loss);
    timings.browserLosses = losses;
    const native = safetensors(fs.readFileSync(path.join(nativeOut, "adapter_model.safetensors")));
    let worst = 0;
    for (const [name, t] of Object.entries(native)) {
      assert.ok(web[name], `${name} in the download`);
      assert.deepEqual(web[name].shape, t.shape);
      for (let i = 0; i < t.data.length; i++) worst = Math.max(worst, Math.abs(t.data[i] - web[name].data[i]));
    }
    timings.maxAbsDiffBrowserVsNative = worst;
    // SwiftShader and Mesa's llvmpipe compile the same WGSL to different arithmetic (their exp, log
    // and FMA contraction differ), and twelve AdamW steps amplify it: a native run on wgpu's GL
    // backend, the browser's kernel family (no subgroups), is 1.2e-4 from the browser's adapter and
    // 2.6e-5 from native Vulkan's (2026-12-04); every run gives the same figures. The steps move a
    // weight by up to 12 × lr = 0.12, and 2.5e-4 is 0.2% of that. The losses must agree step by step
    // to 1e-4 of their size, so a real divergence shows at once.
    assert.ok(worst <= 2.5e-4, `browser vs native adapter: max |diff| ${worst}`);
    lines.forEach((l, i) => assert.ok(Math.abs(l.loss - losses[i]) <= 1e-4 * Math.abs(l.loss),
      `step ${i + 1}: native loss ${l.loss}, browser ${losses[i]}`));
    assert.deepEqual(problems, []);
    assert.deepEqual(external, [], "the page requested nothing but its own files");
  } finally {
    await browser.close();
  }
});

test("the controls follow one state: fresh, running, paused, finished and failed runs, errors next to their cause", async () => {
  const browser = await launch();
  try {
    const { page, problems } = await open(browser, base);
    const enabled = async () => Object.fromEntries(await Promise.all(["load", "train", "pause", "cancel", "generate", "download"]
      .map(async (id) => [id, !(await page.isDisabled(`#${id}`))])));
    const phase = (p) => page.waitForSelector(`body[data-phase=${p}]`, { timeout: 600_000 });
    await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
    await phase("idle");
    assert.deepEqual(await enabled(), { load: true, train: true, pause: false, cancel: false, generate: true, download: false });
    await page.click("#train");
    await phase("training");
    assert.deepEqual(await enabled(), { load: false, train: false, pause: true, cancel: true, generate: false, download: false });
    assert.match(await page.textContent("#train-status"), /compiles the GPU programs|^step \d/, "the first step is not silent");
    await page.click("#pause");
    await phase("paused");
    assert.equal(await page.textContent("#pause"), "Resume");
    assert.deepEqual(await enabled(), { load: false, train: false, pause: true, cancel: true, generate: false, download: false });
    await page.click("#pause");
    await phase("training");
    await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
    await phase("idle");
    assert.deepEqual(await enabled(), { load: true, train: true, pause: false, cancel: false, generate: true, download: true });

    // A refused option: the message sits under the Train button, in the form's words.
    await page.fill("#config [name=r]", "0");
    await page.click("#train");
    await page.waitForSelector("#train-error:not([hidden])");
    const trainError = await page.textContent("#train-error");
    assert.match(trainError, /^r: /);
    assert.doesNotMatch(trainError, /adapter_config|Run::new|Dataset::new/);
    assert.equal(await page.isHidden("#error"), true, "not in the box at the top of the page");
    await phase("idle");
    assert.equal((await enabled()).train, true, "the user can fix r and train again");
    const box = await page.locator("#train-error").boundingBox();
    const button = await page.locator("#train").boundingBox();
    assert.ok(Math.abs(box.y - button.y) < 120, `the message is next to the Train button (${box.y} vs ${button.y})`);
    await page.fill("#config [name=r]", "8");

    // Whole modules (modules_to_save) beside a method that does not take them: refused in the form's words.
    await page.selectOption("#config [name=method]", "ia3");
    await page.selectOption("#config [name=modulesToSave]", "embed_tokens,lm_head");
    await page.click("#train");
    await page.waitForSelector("#train-error:not([hidden])");
    assert.match(await page.textContent("#train-error"), /^train whole: only lora and dora/);
    await phase("idle");
    await page.selectOption("#config [name=modulesToSave]", "");

    // Trainable tokens by their text: one that is not a token is refused in the form's words; two that are train.
    await page.selectOption("#config [name=method]", "trainable_tokens");
    assert.match(await page.textContent("#method-note"), /^Trainable tokens/);
    await page.fill("#config [name=tokens]", "The cat");
    await page.click("#train");
    await page.waitForSelector("#train-error:not([hidden])");
    assert.match(await page.textContent("#train-error"), /^tokens to train: "The cat" is not one token of the vocabulary/);
    await phase("idle");
    await page.fill("#config [name=tokens]", "<|begin_of_text|>, <|end_of_text|>");
    await page.click("#train");
    await phase("training");
    await page.waitForFunction(() => document.body.dataset.phase === "idle" &&
      document.querySelector("#gguf-note").textContent.includes("this one is trainable_tokens"), null, { timeout: 600_000 });
    assert.equal(await page.isHidden("#train-error"), true);
    assert.equal(await page.isDisabled("#download"), false, "the trained rows download");
    await page.selectOption("#config [name=method]", "lora");
    await page.fill("#config [name=tokens]", "");

    // A model URL that does not answer: the message sits in the model section, nothing claims a model is loaded.
    await page.check("input[name=source][value=url]");
    await page.fill("#model-url", "http://127.0.0.1:9/no-model/");
    await page.click("#load");
    await page.waitForSelector("#model-error:not([hidden])", { timeout: 60_000 });
    assert.match(await page.textContent("#model-error"), /config\.json/);
    assert.equal(await page.textContent("#load-status"), "not loaded");
    assert.equal(await page.textContent("#plan"), "");
    await phase("idle");
    assert.deepEqual(await enabled(), { load: true, train: false, pause: false, cancel: false, generate: false, download: true });
    assert.deepEqual(problems.filter((p) => !/ERR_CONNECTION_REFUSED|Failed to fetch/.test(p)), []);
  } finally {
    await browser.close();
  }
});

test("preference mode: two sampled answers marked 👍/👎 by keyboard and mouse, pairs listed and removable, DPO makes the adapter prefer the 👍 answers; GRPO and RLOO on the page's own reward", async () => {
  const browser = await launch();
  try {
    const { page, problems } = await open(browser, base);
    await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
    await page.selectOption("#config [name=objective]", "dpo");
    assert.equal(await page.isVisible("#preference-panel"), true);
    assert.equal(await page.isVisible("#data"), false, "the SFT data box gives way to the pairs");
    await page.fill("#config [name=steps]", "4");
    await page.fill("#config [name=batchSize]", "3");
    await page.fill("#pref-tokens", "8");
    const answers = async (round, prompt) => {
      await page.fill("#pref-prompt", prompt);
      await page.click("#pref-generate");
      await page.waitForSelector(`body[data-answers='${round}']`, { timeout: 300_000 });
      const [a, b] = [await page.textContent("#answer-a"), await page.textContent("#answer-b")];
      assert.ok(a.length > 0 && b.length > 0 && a !== b, `two different answers: ${JSON.stringify([a, b])}`);
      return [a, b];
    };
    const pairs = async () => JSON.parse(await page.getAttribute("body", "data-pairs"));
    // Round 1, by keyboard: 👍 on A makes B the rejected one.
    const [a1, b1] = await answers(1, "The little robot");
    assert.equal(await page.isDisabled("#add-pair"), true, "nothing to add before a mark");
    await page.focus("#mark-a-good");
    await page.keyboard.press("Enter");
    assert.equal(await page.getAttribute("#mark-a-good", "aria-pressed"), "true");
    assert.equal(await page.getAttribute("#mark-b-bad", "aria-pressed"), "true");
    await page.focus("#add-pair");
    await page.keyboard.press("Enter");
    // Round 2, by mouse: 👎 on A makes B the chosen one; removed, then added again.
    const [a2, b2] = await answers(2, "Once upon a time");
    await page.click("#mark-a-bad");
    await page.click("#add-pair");
    assert.equal(await page.textContent("#pair-count"), "2");
    await page.click("#pairs li:nth-child(2) button[aria-label='Remove pair 2']");
    assert.equal((await pairs()).length, 1);
    await page.click("#mark-a-bad");
    await page.click("#add-pair");
    assert.deepEqual(await pairs(), [{ prompt: "The little robot", chosen: a1, rejected: b1 },
      { prompt: "Once upon a time", chosen: b2, rejected: a2 }]);
    assert.equal(await page.locator("#pairs li").count(), 2);
    // A pasted TRL line joins them: three pairs, one batch of three every step.
    await page.fill("#pref-data", '{"prompt": "A red ball", "chosen": " rolled down the hill.", "rejected": " ball ball ball"}');
    // A refused beta shows under the Train button in the form's words.
    await page.fill("#config [name=beta]", "0");
    await page.click("#train");
    await page.waitForSelector("#train-error:not([hidden])");
    assert.equal(await page.textContent("#train-error"), "beta: must be a finite number > 0, got 0");
    await page.waitForSelector("body[data-phase=idle]");
    await page.fill("#config [name=beta]", "0.1");
    await page.click("#train");
    await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
    const steps = JSON.parse(await page.getAttribute("body", "data-rewards"));
    timings.browserDpoSteps = steps;
    assert.equal(steps.length, 4);
    for (const s of steps) {
      for (const k of ["loss", "chosen", "rejected", "accuracies", "margins"]) assert.ok(Number.isFinite(s[k]), `${k} in ${JSON.stringify(s)}`);
    }
    // Step 1 is measured before any update: the fresh LoRA (B = 0) is the base model, DPO's reference,
    // so every reward is 0 and the loss log 2. Each update then widens the margin (chosen − rejected)
    // on the same three pairs; trained the wrong way it would shrink below 0.
    assert.ok(Math.abs(steps[0].loss - Math.LN2) < 1e-5 && Math.abs(steps[0].margins) < 1e-6, JSON.stringify(steps[0]));
    assert.equal(steps[0].accuracies, 0);
    for (let i = 1; i < 4; i++) {
      assert.ok(steps[i].margins > steps[i - 1].margins && steps[i].loss < steps[i - 1].loss, `step ${i + 1}: ${JSON.stringify(steps)}`);
    }
    assert.equal(steps[3].accuracies, 1, JSON.stringify(steps));
    assert.ok(steps[3].margins > 0.1, JSON.stringify(steps));
    assert.equal(await page.locator("#rewards tbody tr").count(), 4, "one table row per step");
    await page.screenshot({ path: path.join(out, "demo-preference.png"), fullPage: true });
    // The dpo loss picker reaches the library: one IPO step of a fresh adapter (h = 0) costs (1/(2β))² = 25.
    await page.selectOption("#config [name=lossType]", "ipo");
    await page.fill("#config [name=steps]", "1");
    await page.click("#train");
    await page.waitForFunction(() => document.body.dataset.trained === "done" &&
      JSON.parse(document.body.dataset.rewards).length === 1, null, { timeout: 600_000 });
    const [ipo] = JSON.parse(await page.getAttribute("body", "data-rewards"));
    assert.ok(Math.abs(ipo.loss - 25) < 1e-4, JSON.stringify(ipo));
    // KTO on the same pairs, unpaired (three 👍 and three 👎 examples, batches of three): TRL's KTO metrics in the
    // table; a fresh adapter's first step costs 1 − σ(0) = ½ an example with a KL estimate of 0.
    await page.selectOption("#config [name=objective]", "kto");
    await page.fill("#config [name=steps]", "2");
    await page.click("#train");
    await page.waitForFunction(() => document.body.dataset.trained === "done" &&
      JSON.parse(document.body.dataset.rewards).length === 2, null, { timeout: 600_000 });
    const kto = JSON.parse(await page.getAttribute("body", "data-rewards"));
    assert.ok(Math.abs(kto[0].loss - 0.5) < 1e-6 && kto[0].kl === 0, JSON.stringify(kto));
    for (const s of kto) assert.equal(s.countChosen + s.countRejected, 3, JSON.stringify(kto));
    assert.equal(await page.textContent("#rewards thead th:nth-child(3)"), "kl");
    // GRPO: the adapter's own completions of the prompts, 3 a prompt, scored in the page by "mentions a word"
    // ("the"): each step's completions listed with their rewards, whose mean is TRL's reward metric; an odd group
    // size is refused in the form's words first.
    await page.selectOption("#config [name=objective]", "grpo");
    assert.equal(await page.isVisible("#grpo-panel"), true);
    assert.equal(await page.isVisible("#preference-panel"), false);
    await page.fill("#grpo-prompts", "The little robot\nThe farmer");
    await page.selectOption("#grpo-reward", "word");
    await page.fill("#grpo-reward-arg", "young");
    await page.fill("#grpo-length", "6");
    await page.fill("#grpo-generations", "2");
    await page.click("#train");
    await page.waitForSelector("#train-error:not([hidden])");
    assert.match(await page.textContent("#train-error"), /^completions a prompt: GRPO needs at least 2 completions a prompt \(got 2\), and a generation's 3 rows \(batch × /);
    await page.waitForSelector("body[data-phase=idle]");
    await page.fill("#grpo-generations", "3");
    await page.click("#train");
    await page.waitForFunction(() => document.body.dataset.trained === "done" &&
      JSON.parse(document.body.dataset.rewards).filter((s) => s.completionRewards).length === 2, null, { timeout: 600_000 });
    const grpo = JSON.parse(await page.getAttribute("body", "data-rewards"));
    timings.browserGrpoSteps = grpo;
    for (const s of grpo) {
      assert.equal(s.completionRewards.length, 3, JSON.stringify(s));
      assert.ok(s.completionRewards.every((r) => r >= 0 && r <= 1), JSON.stringify(s));
      const mean = s.completionRewards.reduce((a, b) => a + b, 0) / 3;
      assert.ok(Math.abs(mean - s.reward) < 1e-6 && s.entropy > 0 && s.meanLength <= 6, JSON.stringify(s));
    }
    // (Seeded: the second step's group differs, so its advantages are not all 0.)
    assert.ok(grpo.some((s) => s.rewardStd > 0), `no group with different rewards: ${JSON.stringify(grpo)}`);
    assert.equal(await page.locator("#grpo-completions li").count(), 3);
    assert.match(await page.textContent("#grpo-completions li"), /^\d+\.\d\d \(advantage [+-]\d+\.\d\d\) "/);
    assert.equal(await page.textContent("#grpo-step"), "2");
    assert.equal(await page.textContent("#rewards thead th:nth-child(3)"), "reward");
    assert.equal(await page.locator("#rewards tbody tr").count(), 2);
    await page.screenshot({ path: path.join(out, "demo-grpo.png"), fullPage: true });
    // An RLOO run (the same panel, TRL's RLOOTrainer) autosaves as any other: reloaded after its step-4
    // checkpoint, the page offers to resume it, puts the objective, the prompts and the reward back, and the run
    // goes on from step 5 to its end.
    await page.selectOption("#config [name=objective]", "rloo");
    assert.equal(await page.isVisible("#grpo-panel"), true);
    assert.deepEqual([await page.isVisible("#rloo-about"), await page.isVisible("#grpo-about")], [true, false]);
    assert.equal(await page.isVisible("#preference-panel"), false);
    await page.fill("#config [name=steps]", "8");
    await page.click("#train");
    await page.waitForSelector("body[data-autosaved='4']", { timeout: 600_000 });
    await page.reload();
    await page.waitForSelector("#resume-banner:not([hidden])", { timeout: 60_000 });
    assert.match(await page.textContent("#resume-text"), /interrupted at step 4 of 8/);
    await page.click("#resume-run");
    await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
    assert.equal(await page.inputValue("#config [name=objective]"), "rloo");
    assert.equal(await page.inputValue("#grpo-reward-arg"), "young");
    assert.equal(await page.inputValue("#grpo-prompts"), "The little robot\nThe farmer");
    const resumed = JSON.parse(await page.getAttribute("body", "data-rewards"));
    assert.deepEqual(resumed.map((r) => r.step), [5, 6, 7, 8], JSON.stringify(resumed));
    assert.ok(resumed.every((r) => r.completionRewards.length === 3), JSON.stringify(resumed));
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }
});

test("classification and a reward model on the page: labelled texts and 👍/👎 pairs train SEQ_CLS LoRAs equal to the native ones, held-out accuracy, Try it classifies and scores; GRPO scores with the reward model, resumed after a reload", async () => {
  const browser = await launch();
  const cli = (args) => execFileSync(path.join(root, "target", "debug", "webpeft"), args,
    { env: { ...process.env, XDG_RUNTIME_DIR: "/tmp" }, stdio: ["ignore", "pipe", "pipe"] }).toString().trim().split("\n").map((l) => JSON.parse(l));
  const model = path.join(root, "www", "default-model");
  const settings = ["--method", "lora", "--targets", "all-linear", "--r", "8", "--alpha", "16", "--lr", "0.01", "--seq-len", "32",
    "--seed", "42", "--schedule", "constant"];
  /** The page's zip, unpacked into `dir`: its files by name. */
  const download = async (page, dir) => {
    const [dl] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
    const zip = path.join(out, `${path.basename(dir)}.zip`);
    await dl.saveAs(zip);
    const files = unzip(fs.readFileSync(zip));
    fs.mkdirSync(dir, { recursive: true });
    for (const [name, bytes] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), bytes);
    return files;
  };
  /** The largest |difference| between two adapters' tensors, each of the native one's in the browser's. */
  const worstDiff = (web, native) => {
    let worst = 0;
    for (const [name, t] of Object.entries(native)) {
      assert.ok(web[name], `${name} in the download`);
      assert.deepEqual(web[name].shape, t.shape, name);
      for (let i = 0; i < t.data.length; i++) worst = Math.max(worst, Math.abs(t.data[i] - web[name].data[i]));
    }
    return worst;
  };
  try {
    const { page, problems } = await open(browser, base);
    await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
    assert.equal(await page.isDisabled("#grpo-reward option[value=model]"), true, "no reward model to score with yet");
    await page.selectOption("#config [name=objective]", "classification");
    assert.deepEqual([await page.isVisible("#classify-panel"), await page.isVisible("#data"), await page.isVisible("#preference-panel")],
      [true, false, false], "the labelled texts take the place of the SFT data");
    await page.waitForFunction(() => document.getElementById("cls-data").value.length > 0);
    const texts = await page.inputValue("#cls-data");
    // Refused in the form's words, before and in the worker: a label the list does not name; a method with no score head.
    await page.fill("#cls-data", `${texts.trim()}\n{"text": "The owl slept.", "label": "sea"}`);
    await page.click("#train");
    await page.waitForSelector("#train-error:not([hidden])");
    assert.equal(await page.textContent("#train-error"), 'labelled texts, line 17: label "sea" is not one of garden, town (nor an index below 2)');
    await page.fill("#cls-data", texts);
    await page.selectOption("#config [name=method]", "ia3");
    await page.click("#train");
    await page.waitForSelector("#train-error:not([hidden])");
    assert.equal(await page.textContent("#train-error"), "classification: trains a LoRA or DoRA with a score head (PEFT's SEQ_CLS task), not ia3");
    await page.waitForSelector("body[data-phase=idle]");
    await page.selectOption("#config [name=method]", "lora");
    await page.click("#train");
    await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
    const losses = JSON.parse(await page.getAttribute("body", "data-losses"));
    assert.equal(losses.length, 12);
    // The two held-out texts every 4 steps: transformers' eval_loss and the accuracy of the highest logit.
    const evalLosses = JSON.parse(await page.getAttribute("body", "data-eval-losses"));
    const accuracies = JSON.parse(await page.getAttribute("body", "data-eval-accuracies"));
    timings.browserClassification = { losses, evalLosses, accuracies };
    assert.deepEqual(accuracies.map(([s]) => s), [4, 8, 12]);
    assert.ok(evalLosses.at(-1)[1] < evalLosses[0][1], `the held-out loss falls: ${JSON.stringify(evalLosses)}`);
    assert.equal(accuracies.at(-1)[1], 1, `both held-out texts labelled right: ${JSON.stringify(accuracies)}`);
    assert.match(await page.textContent("#train-status"), /held-out accuracy 100%/);
    // Try it: the classifier labels a text; it writes none, and llama.cpp has no form for it.
    assert.equal(await page.isVisible("#judge-row"), true);
    assert.equal(await page.textContent("#judge"), "Classify");
    assert.equal(await page.isDisabled("#download-gguf"), true);
    assert.match(await page.textContent("#gguf-note"), /llama\.cpp runs language models, not classifiers/);
    assert.equal(await page.isDisabled("#keep-adapter"), true, "a classifier is not kept for the chat");
    await page.fill("#judge-text", "The grandmother checked the weather.");
    await page.click("#judge");
    await page.waitForSelector("body[data-judged]", { timeout: 120_000 });
    const verdict = JSON.parse(await page.getAttribute("body", "data-judged"));
    assert.equal(verdict.label, 0, JSON.stringify(verdict));
    assert.match(await page.textContent("#judge-result"), /^garden 0\.\d{3} · town 0\.\d{3}$/);
    await page.click("#generate");
    await page.waitForSelector("body[data-before=done]", { timeout: 300_000 });
    await page.waitForSelector("body[data-phase=idle]");
    assert.match(await page.textContent("#after"), /does not write them/);
    await page.screenshot({ path: path.join(out, "demo-classification.png"), fullPage: true });
    // PEFT's files: a SEQ_CLS LoRA whose score head (2 labels × hidden 128) is trained whole.
    const clsDir = path.join(out, "browser-classifier");
    const files = await download(page, clsDir);
    const config = JSON.parse(files["adapter_config.json"].toString("utf8"));
    assert.equal(config.task_type, "SEQ_CLS");
    assert.ok(config.modules_to_save.includes("score"), JSON.stringify(config.modules_to_save));
    const web = safetensors(files["adapter_model.safetensors"]);
    assert.deepEqual(web["base_model.model.score.weight"]?.shape, [2, 128], Object.keys(web).join(" "));
    // The native library on the same texts (the page's label names as the class indices it sends), same settings.
    const labelled = path.join(out, "labelled.jsonl");
    fs.writeFileSync(labelled, texts.trim().split("\n").map((l) => JSON.parse(l))
      .map((r) => JSON.stringify({ text: r.text, label: ["garden", "town"].indexOf(r.label) })).join("\n"));
    const nativeCls = path.join(out, "native-classifier");
    const lines = cli(["train", "--model", model, "--data", labelled, "--objective", "classification", "--num-labels", "2",
      ...settings, "--steps", "12", "--batch-size", "4", "--out", nativeCls]);
    const clsWorst = worstDiff(web, safetensors(fs.readFileSync(path.join(nativeCls, "adapter_model.safetensors"))));
    timings.maxAbsDiffClassifierBrowserVsNative = clsWorst;
    // As the SFT run's tolerance (see the first test): SwiftShader's and llvmpipe's arithmetic, through AdamW.
    assert.ok(clsWorst <= 2.5e-4, `browser vs native classifier: max |diff| ${clsWorst}`);
    // The loss falls to ~3e-4 (the labels are easy): there 1e-4 of it is below f32 logits' rounding, so 1e-6 absolute.
    lines.forEach((l, i) => assert.ok(Math.abs(l.loss - losses[i]) <= 1e-4 * Math.abs(l.loss) + 1e-6,
      `step ${i + 1}: native loss ${l.loss}, browser ${losses[i]}`));
    // The browser's classifier, read natively, gives the page's logits.
    const [native] = cli(["classify", "--model", model, "--adapter", clsDir, "--text", "The grandmother checked the weather."]);
    assert.equal(native.label, verdict.label);
    native.logits.forEach((l, i) => assert.ok(Math.abs(l - verdict.logits[i]) <= 1e-4, `logits ${native.logits} vs ${verdict.logits}`));

    // A reward model on pasted pairs (TRL's RewardTrainer): its metrics in the table, Try it scores a text.
    await page.selectOption("#config [name=objective]", "reward");
    assert.deepEqual([await page.isVisible("#preference-panel"), await page.isVisible("#classify-panel")], [true, false]);
    const pairs = [
      { prompt: "The little robot", chosen: " watered the garden at noon.", rejected: " ball ball ball ball" },
      { prompt: "The old gardener", chosen: " covered the roses before the frost.", rejected: " the the the" },
      { prompt: "The brave fox", chosen: " chased the red ball near the river.", rejected: " fox fox fox" },
      { prompt: "The grandmother", chosen: " swept the path.", rejected: " path path" },
    ];
    await page.fill("#pref-data", pairs.map((p) => JSON.stringify(p)).join("\n"));
    await page.fill("#config [name=steps]", "4");
    await page.fill("#config [name=batchSize]", "2");
    await page.click("#train");
    await page.waitForFunction(() => document.body.dataset.trained === "done" &&
      JSON.parse(document.body.dataset.rewards).length === 4, null, { timeout: 600_000 });
    const steps = JSON.parse(await page.getAttribute("body", "data-rewards"));
    timings.browserRewardSteps = steps;
    for (const s of steps) {
      for (const k of ["loss", "accuracy", "margin", "minReward", "meanReward", "maxReward"]) assert.ok(Number.isFinite(s[k]), `${k} in ${JSON.stringify(s)}`);
    }
    assert.equal(await page.textContent("#rewards thead th:nth-child(3)"), "accuracy");
    assert.equal(await page.locator("#rewards tbody tr").count(), 4);
    assert.equal(await page.textContent("#judge"), "Score");
    await page.fill("#judge-text", "The little robot watered the garden at noon.");
    await page.click("#judge");
    await page.waitForSelector("body[data-judged]", { timeout: 120_000 });
    const { score } = JSON.parse(await page.getAttribute("body", "data-judged"));
    assert.match(await page.textContent("#judge-result"), /^score -?\d+\.\d{4} \(the reward model's logit/);
    const rmDir = path.join(out, "browser-reward-model");
    const rmWeb = safetensors((await download(page, rmDir))["adapter_model.safetensors"]);
    assert.deepEqual(rmWeb["base_model.model.score.weight"]?.shape, [1, 128]);
    const pairsFile = path.join(out, "pairs.jsonl");
    fs.writeFileSync(pairsFile, pairs.map((p) => JSON.stringify(p)).join("\n"));
    const nativeRm = path.join(out, "native-reward-model");
    const rmLines = cli(["train", "--model", model, "--data", pairsFile, "--objective", "reward", ...settings, "--steps", "4",
      "--batch-size", "2", "--out", nativeRm]);
    const rmWorst = worstDiff(rmWeb, safetensors(fs.readFileSync(path.join(nativeRm, "adapter_model.safetensors"))));
    timings.maxAbsDiffRewardModelBrowserVsNative = rmWorst;
    assert.ok(rmWorst <= 2.5e-4, `browser vs native reward model: max |diff| ${rmWorst}`);
    rmLines.forEach((l, i) => assert.ok(Math.abs(l.loss - steps[i].loss) <= 1e-4 * Math.abs(l.loss) + 1e-6,
      `step ${i + 1}: native loss ${l.loss}, browser ${steps[i].loss}`));
    const [scored] = cli(["score", "--model", model, "--adapter", rmDir, "--text", "The little robot watered the garden at noon."]);
    assert.ok(Math.abs(scored.reward - score) <= 1e-4, `native score ${scored.reward}, browser ${score}`);
    await page.screenshot({ path: path.join(out, "demo-reward-model.png"), fullPage: true });

    // GRPO with the reward model just trained as its reward (TRL's reward_funcs with a model): each completion's
    // reward is the model's logit, not one of the page's 0/1 functions. Reloaded after the step-4 autosave, the run
    // resumes with the reward model from the autosave (the reload forgot the worker's copy).
    await page.selectOption("#config [name=objective]", "grpo");
    assert.equal(await page.isDisabled("#grpo-reward option[value=model]"), false);
    await page.selectOption("#grpo-reward", "model");
    await page.fill("#grpo-prompts", "The little robot\nThe old gardener");
    await page.fill("#grpo-generations", "2");
    await page.fill("#grpo-length", "6");
    await page.fill("#config [name=steps]", "8");
    await page.click("#train");
    await page.waitForSelector("body[data-autosaved='4']", { timeout: 600_000 });
    // Paused, so the run cannot end before the reload (steps are fast here): the autosave stays step 4's.
    await page.click("#pause");
    await page.waitForSelector("body[data-phase=paused]", { timeout: 120_000 });
    // The table's mean reward of each step so far: the page's own rewards would make 0, ½ or 1 of two completions.
    const means = (await page.locator("#rewards tbody tr td:nth-child(3)").allTextContents()).map(Number);
    timings.browserGrpoRewardModelMeans = means;
    assert.ok(means.length >= 4 && means.every(Number.isFinite), `mean rewards ${means}`);
    assert.ok(means.some((r) => ![0, 0.5, 1].includes(r)), `mean rewards ${means}`);
    await page.reload();
    await page.waitForSelector("#resume-banner:not([hidden])", { timeout: 60_000 });
    await page.click("#resume-run");
    await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
    assert.equal(await page.inputValue("#grpo-reward"), "model");
    const resumed = JSON.parse(await page.getAttribute("body", "data-rewards"));
    assert.deepEqual(resumed.map((r) => r.step), [5, 6, 7, 8], JSON.stringify(resumed));
    const again = resumed.flatMap((r) => r.completionRewards);
    assert.ok(again.every((r) => Number.isFinite(r) && !Number.isInteger(r)), JSON.stringify(resumed));
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }
});

test("a reload mid-training offers to resume from the autosave, and the resumed adapter equals an uninterrupted run's within 1e-6", async () => {
  const uninterrupted = path.join(out, "webpeft-adapter.zip");
  assert.ok(fs.existsSync(uninterrupted), "the demo test ran first");
  const browser = await launch();
  try {
    const { page, problems } = await open(browser, base);
    await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
    await page.click("#train");
    await page.waitForSelector("body[data-autosaved='8']", { timeout: 600_000 });
    await page.reload();
    await page.waitForSelector("#resume-banner:not([hidden])", { timeout: 60_000 });
    assert.match(await page.textContent("#resume-text"), /interrupted at step 8 of 12/);
    await page.click("#resume-run");
    // Resumed, it is a running run like any other: Pause and Cancel work, nothing else does.
    await page.waitForSelector("body[data-phase=training]", { timeout: 120_000 });
    for (const [id, on] of [["pause", true], ["cancel", true], ["train", false], ["load", false], ["generate", false]]) {
      assert.equal(!(await page.isDisabled(`#${id}`)), on, `#${id} while the resumed run trains`);
    }
    await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
    const zipPath = path.join(out, "webpeft-adapter-resumed.zip");
    await download.saveAs(zipPath);
    const resumed = safetensors(unzip(fs.readFileSync(zipPath))["adapter_model.safetensors"]);
    const whole = safetensors(unzip(fs.readFileSync(uninterrupted))["adapter_model.safetensors"]);
    let worst = 0;
    for (const [name, t] of Object.entries(whole)) {
      for (let i = 0; i < t.data.length; i++) worst = Math.max(worst, Math.abs(t.data[i] - resumed[name].data[i]));
    }
    timings.maxAbsDiffResumedVsUninterrupted = worst;
    assert.ok(worst <= 1e-6, `resumed vs uninterrupted: max |diff| ${worst}`);
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }
});

test("without WebGPU the page shows a readable error", async () => {
  const browser = await launch(false);
  try {
    const { page } = await open(browser, base);
    await page.waitForSelector("#error:not([hidden])", { timeout: 60_000 });
    const text = await page.textContent("#error");
    assert.match(text, /WebGPU/);
  } finally {
    await browser.close();
  }
});

test("the npm package, installed from its tarball into a plain page, trains, checkpoints, resumes, exports and imports, loads f16 and bf16 bases and a bitsandbytes 4-bit folder, initialises PiSSA", async () => {
  const scratch = path.join(out, "npm-scratch");
  fs.mkdirSync(scratch, { recursive: true });
  const tarball = execFileSync("npm", ["pack", "--silent", "--pack-destination", out], { cwd: path.join(root, "pkg") }).toString().trim();
  fs.writeFileSync(path.join(scratch, "package.json"), JSON.stringify({ name: "scratch", private: true, type: "module" }));
  execFileSync("npm", ["install", "--silent", "--no-audit", "--no-fund", path.join(out, tarball)], { cwd: scratch });
  fs.writeFileSync(path.join(scratch, "index.html"),
    `<!doctype html><link rel="icon" href="data:,"><script type="module" src="main.js"></script>`);
  fs.writeFileSync(path.join(scratch, "main.js"), `
    import init, { Gpu, Model } from "./node_modules/webpeft/webpeft.js";
    try {
      await init();
      const gpu = await Gpu.create();
      const model = await Model.fromUrl(gpu, new URL("/model/", location.href).href, { quant: "nf4" });
      model.addLora("a", { r: 4, alpha: 8 });
      const data = [{ text: "The little robot watered the garden." }, { prompt: "The robot", completion: " sang." }];
      // transformers' warmup_stable_decay: ceil(3 × 0.4) = 2 warmup steps from 0, then 1 step of 1-sqrt decay.
      const opts = { lr: 0.01, steps: 3, seqLen: 16, batchSize: 2, warmupRatio: 0.4, schedule: "warmup_stable_decay",
        scheduleKwargs: { num_decay_steps: 1, decay_type: "1-sqrt" } };
      const run = model.startTraining("a", data, opts);
      const e = await run.step();
      // Checkpoint after one step, then go on both ways: the two runs agree bit for bit.
      const ckpt = await run.saveCheckpoint();
      const tail = [await run.step(), await run.step()];
      const rest = tail.map((x) => x.loss);
      const lrs = [e.lr, ...tail.map((x) => x.lr)];
      if (JSON.stringify(lrs) !== "[0,0.005,0.01]") throw new Error("warmup_stable_decay's lrs " + lrs);
      const again = model.resumeTraining("b", ckpt, data, opts);
      let paused = false;
      again.pause(); paused = again.isPaused(); again.resume();
      const resumed = [];
      let resumedTokens = 0;
      const summary = await again.train((x) => { resumed.push(x.loss); resumedTokens = x.numTokens; });
      if (JSON.stringify(rest) !== JSON.stringify(resumed)) throw new Error("resume differs: " + rest + " vs " + resumed);
      // TRL's SFT metrics: each step trains on both rows, and num_tokens counts on through the checkpoint.
      if (!(e.entropy > 0) || !(e.meanTokenAccuracy >= 0 && e.meanTokenAccuracy <= 1) || !(e.numTokens > 0) ||
          tail[1].numTokens !== 3 * e.numTokens || resumedTokens !== tail[1].numTokens) {
        throw new Error("SFT metrics " + JSON.stringify({ e, tail, resumedTokens }));
      }
      // TRL's loss_type "dft": the probability-weighted cross-entropy, far below the nll's first loss.
      model.addLora("d", { r: 4, alpha: 8 });
      const dft = await model.startTraining("d", data, { lr: 0.01, steps: 1, seqLen: 16, batchSize: 2, lossType: "dft" }).step();
      if (!(dft.loss > 0 && dft.loss < e.loss / 10)) throw new Error("dft's step " + JSON.stringify({ dft, nll: e.loss }));
      model.removeAdapter("d");
      // Held-out pairs under DPO: TRL's eval_loss and reward metrics.
      const heldOut = [{ prompt: "The robot", chosen: " watered the garden.", rejected: " sang." },
        { prompt: "The little robot", chosen: " sang.", rejected: " the the." }];
      const judged = await model.evaluatePreference(heldOut, { objective: "dpo", batchSize: 2, adapter: "b" });
      if (judged.batches !== 1 || !Number.isFinite(judged.loss) || !["rewards/chosen", "rewards/rejected", "rewards/accuracies",
        "rewards/margins", "logps/chosen", "logps/rejected"].every((k) => Number.isFinite(judged.metrics[k]))) {
        throw new Error("evaluatePreference " + JSON.stringify(judged));
      }
      const sftOnly = await model.evaluate(heldOut, { objective: "dpo" }).then(() => "no error", (e) => e.message);
      if (!sftOnly.includes("evaluatePreference")) throw new Error("evaluate with a preference objective: " + sftOnly);
      // A reward model (TRL's RewardTrainer): a SEQ_CLS LoRA trained on pairs with margins; its steps carry TRL's
      // reward metrics; score() rates texts and conversations; evaluatePreference measures it; it saves as PEFT's
      // SEQ_CLS adapter; other objectives refuse it, and score refuses an adapter without a score head.
      model.addLora("rm", { r: 4, alpha: 8, taskType: "SEQ_CLS" });
      const rpairs = heldOut.map((p, i) => ({ ...p, margin: i * 0.5 }));
      const rev = [];
      await model.startTraining("rm", rpairs, { lr: 0.02, steps: 2, batchSize: 2, objective: "reward",
        centerRewardsCoefficient: 0.01 }).train((x) => rev.push(x));
      const rscores = await model.score(["The robot watered the garden.",
        [{ role: "user", content: "Hi" }, { role: "assistant", content: "Hello." }]], { adapter: "rm" });
      const rjudged = await model.evaluatePreference(rpairs, { objective: "reward", adapter: "rm" });
      const rconfig = JSON.parse(new TextDecoder().decode((await model.exportAdapter("rm"))["adapter_config.json"]));
      const r0 = rev[0] && rev[0].reward;
      if (rev.length !== 2 || !r0 || !(r0.accuracy >= 0 && r0.accuracy <= 1) || !(r0.minReward <= r0.meanReward &&
          r0.meanReward <= r0.maxReward) || !(rev[1].numTokens > rev[0].numTokens) || rscores.length !== 2 ||
          !rscores.every(Number.isFinite) || !Number.isFinite(rjudged.loss) || !Number.isFinite(rjudged.metrics.accuracy) ||
          rconfig.task_type !== "SEQ_CLS" || !rconfig.modules_to_save.includes("score")) {
        throw new Error("reward model " + JSON.stringify({ rev, rscores, rjudged, rconfig }));
      }
      // The reward model as GRPO's reward, by its adapter's name: TRL's GRPOTrainer with a reward model.
      model.addLora("rg", { r: 4, alpha: 8 });
      const rgPrompts = [{ prompt: "The robot" }, { prompt: [{ role: "user", content: "Describe the fox." }] }];
      const rgOpts = { lr: 0.01, steps: 1, numGenerations: 2, batchSize: 4, maxCompletionLength: 4 };
      const rg = await model.startGrpo("rg", rgPrompts, rgOpts, ["rm"]).step().then((x) => x, (e) => ({ error: e.message }));
      const notRm = (() => { try { model.startGrpo("rg", rgPrompts, rgOpts, ["b"]); return "no error"; }
        catch (e) { return e.message; } })();
      if (rg.step !== 1 || rg.rewardMeans.length !== 1 || !Number.isFinite(rg.rewardMeans[0]) || !notRm.includes("not a reward model")) {
        throw new Error("a reward model as GRPO's reward: " + JSON.stringify({ ...rg, completions: undefined }) + " / " + notRm);
      }
      model.removeAdapter("rg");
      const sftOnReward = (() => { try { model.startTraining("rm", data, { lr: 0.01, steps: 1 }); return "no error"; }
        catch (e) { return e.message; } })();
      const scoreWithout = await model.score(["x"], { adapter: "b" }).then(() => "no error", (e) => e.message);
      if (!sftOnReward.includes("reward model") || !scoreWithout.includes("score")) {
        throw new Error("what a reward model refuses: " + sftOnReward + " / " + scoreWithout);
      }
      model.removeAdapter("rm");
      // A classifier (transformers' Trainer on a SEQ_CLS LoRA of 3 labels): labelled texts, classify() as the
      // text-classification pipeline reads the logits, evaluateClassifier; saved with a (3, hidden) score head; score()
      // refuses a classifier of several labels.
      model.addLora("cls", { r: 4, alpha: 8, taskType: "SEQ_CLS", numLabels: 3 });
      const labelled = [{ text: "The robot watered the garden.", label: 0 }, { text: "12345 #@$%", label: 2 },
        { text: "The fox ran.", label: 1 }, { text: "Hello world", label: -100 }];
      const cev = [];
      await model.startTraining("cls", labelled, { lr: 0.02, steps: 2, batchSize: 2, objective: "classification" })
        .train((x) => cev.push(x));
      const verdicts = await model.classify(["The robot watered the garden.", "Hi"], { adapter: "cls" });
      const cjudged = await model.evaluateClassifier(labelled, { adapter: "cls", batchSize: 2 });
      const cfiles = await model.exportAdapter("cls");
      const cconfig = JSON.parse(new TextDecoder().decode(cfiles["adapter_config.json"]));
      const scoreCls = await model.score(["x"], { adapter: "cls" }).then(() => "no error", (e) => e.message);
      const v0 = verdicts[0];
      if (cev.length !== 2 || !cev.every((e) => Number.isFinite(e.loss)) || verdicts.length !== 2 || v0.logits.length !== 3 ||
          !(v0.label >= 0 && v0.label < 3) || !(v0.score > 0 && v0.score <= 1) || cjudged.rows !== 4 || cjudged.batches !== 2 ||
          !Number.isFinite(cjudged.loss) || !(cjudged.accuracy >= 0 && cjudged.accuracy <= 1) || cconfig.task_type !== "SEQ_CLS" ||
          !scoreCls.includes("a classifier of 3 labels")) {
        throw new Error("classifier " + JSON.stringify({ cev, verdicts, cjudged, cconfig, scoreCls }));
      }
      model.removeAdapter("cls");
      // GRPO with two JS rewards (an async one, the completions' token counts; one giving null for a few): 2 prompts
      // (text with a field, messages) × 2 completions a step, 2 steps, beta 0.04.
      model.addLora("g", { r: 4, alpha: 8 });
      model.addLora("g2", { r: 4, alpha: 8 });
      let rewardCalls = 0;
      let seenCompletion = null;
      const lengthReward = async (cs) => { rewardCalls++; seenCompletion = cs[0]; return cs.map((c) => c.completionIds.length); };
      const partial = (cs) => cs.map((c, i) => (i === 0 ? null : 0));
      const prompts = [{ prompt: "The robot", answer: "yes" }, { prompt: [{ role: "user", content: "Describe the fox." }] }];
      const gopts = { lr: 0.01, steps: 2, numGenerations: 2, batchSize: 2, gradAccum: 2, maxCompletionLength: 6, beta: 0.04 };
      // A generation of two micro-batches a step each (stepsPerGeneration 2, gradAccum 1), two passes over it
      // (numIterations 2), GSPO's sequence-level ratios: one step() takes four optimizer steps (its event the
      // fourth's, with the clip ratios).
      const gspo = { ...gopts, steps: 4, gradAccum: 1, generationBatchSize: 4, numIterations: 2, importanceSamplingLevel: "sequence",
        topEntropyQuantile: 0.5 };
      const mu = await model.startGrpo("g2", prompts, gspo, [lengthReward]).step().then(
        (x) => x, (e) => ({ error: e.message }));
      if (mu.step !== 4 || mu.clipRatio.length !== 3 || !mu.clipRatio.every((v) => v >= 0 && v <= 1)) {
        throw new Error("GRPO with stepsPerGeneration 2, numIterations 2: " + JSON.stringify({ ...mu, completions: undefined }));
      }
      // RLOO (TRL's RLOOTrainer) through the same call: a generation of two prompts' two completions in two
      // micro-batches, normalised advantages, clipped rewards; its kl the generation's (0: B is 0, the policy is
      // the base); GRPO's options refused for it.
      model.addLora("r", { r: 4, alpha: 8 });
      const ropts = { ...gopts, steps: 1, objective: "rloo", normalizeAdvantages: true, rewardClipRange: [1, 5] };
      delete ropts.beta;
      const rl = await model.startGrpo("r", prompts, ropts, [lengthReward]).step().then((x) => x, (e) => ({ error: e.message }));
      if (rl.step !== 1 || !(Math.abs(rl.kl) < 1e-6) || !(rl.entropy > 0) || rl.clipRatio[2] !== 0 || !(rl.gradNorm >= 0)) {
        throw new Error("RLOO's step: " + JSON.stringify({ ...rl, completions: undefined }));
      }
      let rlooLossType = "no error";
      try { model.startGrpo("r", prompts, { ...ropts, lossType: "grpo" }, [lengthReward]); } catch (e) { rlooLossType = e.message; }
      if (!rlooLossType.includes("lossType")) throw new Error("RLOO with lossType: " + rlooLossType);
      model.removeAdapter("r");
      rewardCalls = 0;
      const grpo = model.startGrpo("g", prompts, gopts, [lengthReward, partial]);
      const gev = [];
      const gsum = await grpo.train((x) => gev.push(x));
      const g0 = gev[0];
      if (gsum.state !== "done" || gev.length !== 2 || rewardCalls !== 2 || g0.completions.length !== 4 ||
          g0.rewardMeans.length !== 2 || Math.abs(g0.rewardMeans[0] - g0.meanLength) > 1e-6 || g0.rewardMeans[1] !== 0 ||
          g0.rewardStds.length !== 2 || g0.rewardStds[1] !== 0 || !(g0.numTokens > 4 * g0.meanLength) ||
          !(g0.minLength <= g0.meanLength && g0.meanLength <= g0.maxLength) ||
          !(Math.abs(g0.kl) < 1e-6) || !Number.isFinite(gev[1].kl) || !(g0.entropy > 0) || typeof seenCompletion.prompt !== "string" ||
          !g0.completions.every((c) => Number.isFinite(c.advantage)) ||
          !Array.isArray(seenCompletion.completionIds) || typeof seenCompletion.fields !== "object") {
        throw new Error("GRPO events " + JSON.stringify(gev.map((x) => ({ ...x, completions: x.completions.length }))) +
          " calls " + rewardCalls + " seen " + JSON.stringify(seenCompletion));
      }
      // TRL's evaluate() on held-out prompts: three prompts' two completions each, in batches of 2, scored by the run's
      // rewards (the length reward's mean is the completions' mean length).
      const evaluated = await grpo.evaluate([{ prompt: "The fox" }, { prompt: "Once" }, { prompt: "The little robot" }]);
      if (evaluated.completions !== 6 || Math.abs(evaluated.rewardMeans[0] - evaluated.meanLength) > 1e-5 ||
          !Number.isFinite(evaluated.loss) || !Number.isFinite(evaluated.kl) || !(evaluated.entropy > 0) ||
          evaluated.clipRatio.some((c) => c !== 0)) {
        throw new Error("GrpoRun.evaluate " + JSON.stringify(evaluated));
      }
      const shortReward = await model.startGrpo("g", prompts, gopts, [(cs) => [1]]).step().then(() => "no error", (e) => e.message);
      if (!shortReward.includes("returned 1 rewards for 4 completions")) throw new Error("a short reward list: " + shortReward);
      let oddGroups = "no error";
      try { model.startGrpo("g", prompts, { ...gopts, numGenerations: 3 }, [lengthReward]); } catch (e) { oddGroups = e.message; }
      if (!oddGroups.includes("num_generations")) throw new Error("numGenerations 3 with rows of 4: " + oddGroups);
      // A GRPO run checkpointed after its first step and resumed under another name ends as the run that was not
      // stopped: the same second step and the same adapter bytes (rewards from the first token's id, so the steps move it).
      const firstId = (cs) => cs.map((c) => c.completionIds[0] % 5);
      for (const n of ["k1", "k2"]) model.addLora(n, { r: 4, alpha: 8 });
      const kopts = { ...gopts, gradAccum: 1, batchSize: 4 };
      const whole = model.startGrpo("k1", prompts, kopts, [firstId]);
      await whole.step();
      const wholeLast = await whole.step();
      const half = model.startGrpo("k2", prompts, kopts, [firstId]);
      await half.step();
      const grpoCkpt = await half.saveCheckpoint();
      const resumedLast = await model.resumeGrpo("k3", grpoCkpt, prompts, kopts, [firstId]).step();
      const adapterBytes = async (n) => Array.from((await model.exportAdapter(n))["adapter_model.safetensors"]);
      const sameAdapter = JSON.stringify(await adapterBytes("k1")) === JSON.stringify(await adapterBytes("k3"));
      if (resumedLast.step !== 2 || resumedLast.loss !== wholeLast.loss || resumedLast.reward !== wholeLast.reward ||
          !(wholeLast.gradNorm > 0) || !sameAdapter) {
        throw new Error("GRPO resumed from its checkpoint: " + JSON.stringify({ sameAdapter, whole: { ...wholeLast, completions: undefined },
          resumed: { ...resumedLast, completions: undefined } }));
      }
      for (const n of ["k1", "k2", "k3"]) model.removeAdapter(n);
      model.removeAdapter("g");
      model.removeAdapter("g2");
      // Export as a zip, import under a new name, generate with it.
      const zip = await model.exportAdapterZip("b");
      await model.importAdapter("c", zip);
      const files = await model.exportAdapter("c");
      const base = JSON.parse(new TextDecoder().decode(files["adapter_config.json"])).base_model_name_or_path;
      if (!base.startsWith("http://127.0.0.1:") || !base.endsWith("/model")) throw new Error("base_model_name_or_path " + base);
      const g = await model.generate("The robot", { maxNewTokens: 4, adapter: "c" });
      // The LoRA merged into the nf4-loaded model as an f16 GGUF, in 64 KiB chunks: the base is re-read from its
      // files (an nf4 GPU copy could not give f16 weights), and every chunk but the last is full.
      const chunks = [];
      const ggufLen = await model.exportGguf("b", { kind: "merged", tokenizerPre: "gpt-2", chunkBytes: 65536 }, (c) => chunks.push(c));
      const head = new TextDecoder().decode(chunks[0].subarray(0, 4));
      if (head !== "GGUF" || chunks.length < 10 || chunks.slice(0, -1).some((c) => c.length !== 65536) ||
        chunks.reduce((n, c) => n + c.length, 0) !== ggufLen) throw new Error("gguf chunks " + chunks.map((c) => c.length) + " of " + ggufLen);
      // An unknown type is a typed error, not a file.
      const notLora = await model.exportGguf("c", { kind: "lora", type: "bf16" }, () => {}).then(() => "no error", (e) => e.message);
      if (!notLora.includes("\\"bf16\\"")) throw new Error("exportGguf with type bf16: " + notLora);
      // (IA)³ with PEFT's defaults: trained, exported as PEFT's files, imported again with the same loss.
      model.addIa3("i", {});
      const il = [];
      await model.startTraining("i", data, { lr: 0.01, steps: 2, seqLen: 16, batchSize: 2 }).train((x) => il.push(x.loss));
      const ifiles = await model.exportAdapter("i");
      const icfg = JSON.parse(new TextDecoder().decode(ifiles["adapter_config.json"]));
      if (icfg.peft_type !== "IA3" || JSON.stringify(icfg.feedforward_modules) !== '["down_proj"]') throw new Error("ia3 config " + JSON.stringify(icfg));
      await model.importAdapter("i2", ifiles);
      const [li, li2] = [(await model.evaluate(data, { adapter: "i" })).loss, (await model.evaluate(data, { adapter: "i2" })).loss];
      if (il.length !== 2 || !Number.isFinite(il[1]) || li !== li2) throw new Error("ia3: losses " + il + ", eval " + li + " vs imported " + li2);
      const ia3Gguf = await model.exportGguf("i", { kind: "lora" }, () => {}).then(() => "no error", (e) => e.message);
      if (!ia3Gguf.includes("GGUF adapters are LoRA only")) throw new Error("exportGguf of (IA)³: " + ia3Gguf);
      // Prompt tuning from a text: trained, exported as PEFT's files, imported again; generation goes through the prompt.
      model.addPromptTuning("p", { numVirtualTokens: 4, init: "text", initText: "The robot" });
      const pl = [];
      await model.startTraining("p", data, { lr: 0.01, steps: 2, seqLen: 16, batchSize: 2 }).train((x) => pl.push(x.loss));
      const pfiles = await model.exportAdapter("p");
      const pcfg = JSON.parse(new TextDecoder().decode(pfiles["adapter_config.json"]));
      if (pcfg.peft_type !== "PROMPT_TUNING" || pcfg.num_virtual_tokens !== 4 || pcfg.prompt_tuning_init !== "TEXT") throw new Error("prompt config " + JSON.stringify(pcfg));
      await model.importAdapter("p2", pfiles);
      const [lp, lp2] = [(await model.evaluate(data, { adapter: "p" })).loss, (await model.evaluate(data, { adapter: "p2" })).loss];
      const gp = await model.generate("The robot", { maxNewTokens: 3, adapter: "p2" });
      if (pl.length !== 2 || lp !== lp2 || gp.tokenIds.length !== 3) throw new Error("prompt tuning: losses " + pl + ", eval " + lp + " vs " + lp2 + ", " + gp.tokenIds);
      // Prefix tuning: trained, exported as PEFT's files, imported again; generation starts from the prefix in the cache.
      model.addPrefixTuning("x", { numVirtualTokens: 3 });
      await model.startTraining("x", data, { lr: 0.01, steps: 2, seqLen: 16, batchSize: 2 }).train(() => {});
      const xfiles = await model.exportAdapter("x");
      const xcfg = JSON.parse(new TextDecoder().decode(xfiles["adapter_config.json"]));
      if (xcfg.peft_type !== "PREFIX_TUNING" || xcfg.num_virtual_tokens !== 3) throw new Error("prefix config " + JSON.stringify(xcfg));
      await model.importAdapter("x2", xfiles);
      const [lx, lx2] = [(await model.evaluate(data, { adapter: "x" })).loss, (await model.evaluate(data, { adapter: "x2" })).loss];
      const gx = await model.generate("The robot", { maxNewTokens: 3, adapter: "x2" });
      if (lx !== lx2 || gx.tokenIds.length !== 3) throw new Error("prefix tuning: eval " + lx + " vs " + lx2 + ", " + gx.tokenIds);
      // Through PEFT's MLPs (prefix_projection, P-tuning): trained, exported as the prompt the MLP makes (PEFT's
      // files), imported again as that prompt with the same loss.
      model.addPrefixTuning("xp", { numVirtualTokens: 3, prefixProjection: true, encoderHiddenSize: 8 });
      model.addPTuning("pt", { numVirtualTokens: 3, encoderHiddenSize: 8 });
      for (const [name, type] of [["xp", "PREFIX_TUNING"], ["pt", "P_TUNING"]]) {
        await model.startTraining(name, data, { lr: 0.01, steps: 2, seqLen: 16, batchSize: 2 }).train(() => {});
        const rfiles = await model.exportAdapter(name);
        const rcfg = JSON.parse(new TextDecoder().decode(rfiles["adapter_config.json"]));
        if (rcfg.peft_type !== type || rcfg.encoder_hidden_size !== 8) throw new Error(name + " config " + JSON.stringify(rcfg));
        await model.importAdapter(name + "2", rfiles);
        const [lr, lr2] = [(await model.evaluate(data, { adapter: name })).loss, (await model.evaluate(data, { adapter: name + "2" })).loss];
        if (lr !== lr2) throw new Error(name + ": eval " + lr + " vs imported " + lr2);
      }
      // AdaLoRA over a 2-step run: the last step allocates the final budget, so the exported
      // folder holds PEFT's rank_pattern and only the kept ranks; imported again, the same loss.
      model.addAdaLora("ad", { initR: 4, targetR: 2, targets: "all-linear", totalStep: 2 });
      await model.startTraining("ad", data, { lr: 0.01, steps: 2, seqLen: 16, batchSize: 2 }).train(() => {});
      const afiles = await model.exportAdapter("ad");
      const acfg = JSON.parse(new TextDecoder().decode(afiles["adapter_config.json"]));
      const kept = Object.values(acfg.rank_pattern ?? {}).flat().filter((k) => k).length;
      if (acfg.peft_type !== "ADALORA" || acfg.total_step !== 2 || kept !== 2 * 14) throw new Error("adalora config " + JSON.stringify(acfg));
      await model.importAdapter("ad2", afiles);
      const [la, la2] = [(await model.evaluate(data, { adapter: "ad" })).loss, (await model.evaluate(data, { adapter: "ad2" })).loss];
      if (!(Math.abs(la - la2) < 1e-5)) throw new Error("adalora: eval " + la + " vs imported " + la2);
      const ev = await model.evaluate(data, { adapter: "c" });
      if (!(ev.entropy > 0) || !(ev.meanTokenAccuracy >= 0 && ev.meanTokenAccuracy <= 1)) {
        throw new Error("evaluate's metrics " + JSON.stringify(ev));
      }
      // An f16 base (unpack2x16float, no shader-f16 needed) against an f32 one.
      const url = new URL("/model/", location.href).href;
      const [m32, m16] = [await Model.fromUrl(gpu, url, { quant: "f32" }), await Model.fromUrl(gpu, url, { quant: "f16" })];
      const [l32, l16] = [(await m32.evaluate(data)).loss, (await m16.evaluate(data)).loss];
      if (m16.info().quant !== "f16" || !(Math.abs(l32 - l16) < 2e-4)) throw new Error("f16 base: loss " + l16 + " vs f32 " + l32);
      // A bf16 base: the f32 weights rounded to bf16 (8 significant bits) on the GPU, widened back in the kernels.
      const mb = await Model.fromUrl(gpu, url, { quant: "bf16" });
      const lb = (await mb.evaluate(data)).loss;
      if (mb.info().quant !== "bf16" || !(mb.info().weightBytes < m32.info().weightBytes) || !(Math.abs(l32 - lb) < 2e-2) || lb === l32) {
        throw new Error("bf16 base: loss " + lb + " vs f32 " + l32 + ", " + mb.info().weightBytes + " bytes");
      }
      // f16 compute where the GPU has shader-f16, f32 (the same numbers) where it has not (SwiftShader).
      const mh = await Model.fromUrl(gpu, url, { quant: "f16", computeDtype: "f16" });
      const lh = (await mh.evaluate(data)).loss;
      // The model's own generation settings: the built-in model's generation_config.json names none, so transformers'
      // defaults (greedy, top-k 50), which generate uses where its options are silent.
      const gen = JSON.stringify(m32.info().generation);
      if (gen !== JSON.stringify({ doSample: false, temperature: 1, topK: 50, topP: 1, minP: 0, typicalP: 1, epsilonCutoff: 0, etaCutoff: 0, repetitionPenalty: 1, noRepeatNgramSize: 0, minNewTokens: 0, minLength: 0, stopStrings: [], badWordsIds: [], suppressTokens: [], beginSuppressTokens: [], unsupported: [] })) throw new Error("generation " + gen);
      const want = gpu.info().shaderF16 ? "f16" : "f32";
      if (mh.info().computeDtype !== want || mh.setComputeDtype("f16") !== want) throw new Error("compute " + mh.info().computeDtype);
      if (want === "f32" ? lh !== l16 : !(Math.abs(lh - l16) < 1e-2)) throw new Error("f16 compute: loss " + lh + " vs " + l16);
      // The kernels of real GPUs (workgroup-memory GEMM, decoding GEMV, flash attention), compiled by the
      // browser's own shader compiler: the same loss, training step and greedy tokens (with and without
      // the LoRA) as the kernels SwiftShader gets. A text of more than 16 tokens, so that attention runs its flash kernels (rows
      // of 16 queries or more) forward and backward.
      const gk = await Gpu.create({ kernels: "gpu" });
      if (gk.info().kernels !== "gpu" || gpu.info().kernels !== "cpu") throw new Error("kernels " + gk.info().kernels);
      const [mg, mc] = [await Model.fromUrl(gk, url, { quant: "nf4" }), await Model.fromUrl(gpu, url, { quant: "nf4" })];
      const both = async (f) => [await f(mg), await f(mc)];
      const longer = [{ text: "The little robot watered the garden, and then the robot sang to the flowers." }, ...data];
      const [eg, ec] = await both(async (m) => (await m.evaluate(longer)).loss);
      const [tg, tc] = await both(async (m) => {
        m.addLora("k", { r: 4, alpha: 8 });
        const losses = [];
        await m.startTraining("k", longer, { lr: 0.01, steps: 2, seqLen: 16, batchSize: 2 }).train((x) => losses.push(x.loss));
        return losses[1];
      });
      const [gg, gc] = await both(async (m) => (await m.generate("The robot", { maxNewTokens: 6, adapter: null })).tokenIds.join());
      // Through the trained LoRA: decoding's GEMV adds its term as it stores y (shaders/low_rank.wgsl).
      const [ga, ca] = await both(async (m) => (await m.generate("The robot", { maxNewTokens: 6, adapter: "k" })).tokenIds.join());
      // Sampled: drawn on the GPU (shaders/sample.wgsl) with the real-GPU kernels, on the CPU with SwiftShader's,
      // by one rule: the same tokens from the same seed.
      const sampling = { maxNewTokens: 8, adapter: "k", temperature: 0.8, topP: 0.9, seed: 3 };
      const [gs, cs] = await both(async (m) => (await m.generate("The robot", sampling)).tokenIds.join());
      // transformers' repetition penalty: on the GPU before either pick (greedy, and the real-GPU kernels' draw),
      // on the CPU before SwiftShader's draw.
      const [gr, cr] = await both(async (m) => (await m.generate("The robot", { maxNewTokens: 8, adapter: "k", repetitionPenalty: 1.5 })).tokenIds.join());
      const [gq, cq] = await both(async (m) => (await m.generate("The robot", { ...sampling, repetitionPenalty: 1.5 })).tokenIds.join());
      // min-p: 0.1 cuts the hot draw's tail the same way on both; 1 keeps only the most likely token, greedy's.
      const hot = { ...sampling, temperature: 1.5, topP: 1, minP: 0.1 };
      const [gm, cm] = await both(async (m) => (await m.generate("The robot", hot)).tokenIds.join());
      const [g1, c1] = await both(async (m) => (await m.generate("The robot", { ...hot, maxNewTokens: 6, minP: 1 })).tokenIds.join());
      // no_repeat_ngram_size 1: greedy, and no token twice.
      const [gn, cn] = await both(async (m) => (await m.generate("The robot", { maxNewTokens: 8, adapter: "k", noRepeatNgramSize: 1 })).tokenIds.join());
      // stopStrings: generation ends after the token that completes one (kept in the text); an empty one is refused.
      const full = await mc.generate("The robot", { maxNewTokens: 6, adapter: null });
      const stop = full.text.slice(1, 4);
      const cut = await mc.generate("The robot", { maxNewTokens: 6, adapter: null, stopStrings: ["never here", stop] });
      // badWordsIds and suppressTokens: the greedy answer's second token never follows its first, its first never comes.
      const ids = full.tokenIds;
      const banned = await mc.generate("The robot", { maxNewTokens: 6, adapter: null, badWordsIds: [[ids[0], ids[1]]] });
      const suppressed = await mc.generate("The robot", { maxNewTokens: 6, adapter: null, suppressTokens: [ids[0]] });
      if (banned.tokenIds[0] !== ids[0] || banned.tokenIds[1] === ids[1] || suppressed.tokenIds.includes(ids[0])) {
        throw new Error("bad words: " + JSON.stringify([ids, banned.tokenIds, suppressed.tokenIds]));
      }
      // chatTemplateKwargs reach the template (the toy's ignores enable_thinking; a name the render sets is refused).
      const turn = [{ role: "user", content: "Hi" }];
      let refusedKwarg = "";
      try { mc.applyChatTemplate(turn, true, { messages: [] }); } catch (err) { refusedKwarg = err.message; }
      if (mc.applyChatTemplate(turn, true, { enable_thinking: false }) !== mc.applyChatTemplate(turn) || !refusedKwarg.includes('"messages"')) {
        throw new Error("chat template kwargs: " + refusedKwarg);
      }
      let refusedStop = "";
      try { await mc.generate("The robot", { maxNewTokens: 2, stopStrings: "" }); } catch (err) { refusedStop = err.message; }
      if (stop.length !== 3 || cut.stopReason !== "stopString" || !cut.text.includes(stop) || !full.text.startsWith(cut.text) ||
          !full.tokenIds.join().startsWith(cut.tokenIds.join()) || !(cut.tokenIds.length < 6) || !refusedStop.includes("empty")) {
        throw new Error("stop strings: " + JSON.stringify([full.text, stop, cut, refusedStop]));
      }
      if (!(Math.abs(eg - ec) < 1e-4 && Math.abs(tg - tc) < 1e-4) || gg !== gc || ga !== ca || gs !== cs || gr !== cr || gq !== cq ||
          gm !== cm || g1 !== ga || c1 !== ca || gn !== cn || new Set(gn.split(",")).size !== gn.split(",").length) {
        throw new Error("gpu kernels: loss " + eg + " vs " + ec + ", trained " + tg + " vs " + tc + ", tokens " + gg + " vs " + gc +
          ", through the LoRA " + ga + " vs " + ca + ", sampled " + gs + " vs " + cs + ", penalized " + gr + " vs " + cr +
          ", penalized and sampled " + gq + " vs " + cq + ", min-p 0.1 " + gm + " vs " + cm + ", min-p 1 " + g1 + " and " + c1 +
          ", no repeated token " + gn + " vs " + cn);
      }
      // PiSSA in the page (initLora): the base becomes the residual, so the untrained adapter keeps the
      // model's loss; it trains, and its files are a plain LoRA of the original model (rank 2r, as PEFT converts).
      const mp = await Model.fromUrl(gpu, url, { quant: "f32" });
      await mp.initLora("pi", { r: 4, alpha: 8, init: "pissa", targets: "all-linear" });
      const lpi = (await mp.evaluate(data, { adapter: "pi" })).loss;
      await mp.startTraining("pi", data, { lr: 0.01, steps: 1, seqLen: 16, batchSize: 2 }).train(() => {});
      const picfg = JSON.parse(new TextDecoder().decode((await mp.exportAdapter("pi"))["adapter_config.json"]));
      let refusedInit = "";
      try { await mc.initLora("z", { init: "olora" }); } catch (err) { refusedInit = err.message; }
      if (!(Math.abs(lpi - l32) < 1e-4) || picfg.r !== 8 || picfg.init_lora_weights !== true || !refusedInit.includes("remove the model's adapters")) {
        throw new Error("pissa: loss " + lpi + " vs " + l32 + ", config " + JSON.stringify(picfg) + ", refused " + refusedInit);
      }
      // A bitsandbytes -bnb-4bit folder (FP4, double-quantized absmaxes) loads as saved, and a DoRA step
      // through it lowers the loss; a float model quantized on load the same way trains too.
      const bnb = await Model.fromUrl(gpu, new URL("/bnb/", location.href).href, { quant: "nf4" });
      bnb.addLora("d", { r: 4, alpha: 8, useDora: true });
      const before = (await bnb.evaluate(data, { adapter: "d" })).loss;
      await bnb.startTraining("d", data, { lr: 0.01, steps: 1, seqLen: 16, batchSize: 2 }).train(() => {});
      const after = (await bnb.evaluate(data, { adapter: "d" })).loss;
      if (bnb.info().quant !== "nf4" || !(after < before)) throw new Error("bnb-4bit DoRA: loss " + before + " -> " + after);
      // Trainable tokens beside a LoRA (PEFT's trainable_token_indices): the rows train and are saved under PEFT's key;
      // on this untied model the head's rows too (lmHeadRows: PEFT's {"embed_tokens": ids, "lm_head": ids}).
      bnb.addLora("t", { r: 4, alpha: 8, trainableTokenIndices: [5, 82, 17], lmHeadRows: true });
      await bnb.startTraining("t", data, { lr: 0.01, steps: 1, seqLen: 16, batchSize: 2 }).train(() => {});
      const tfiles = await bnb.exportAdapter("t");
      const tcfg = JSON.parse(new TextDecoder().decode(tfiles["adapter_config.json"]));
      const tst = new TextDecoder().decode(tfiles["adapter_model.safetensors"].slice(0, 2048));
      if (JSON.stringify(tcfg.trainable_token_indices) !== '{"embed_tokens":[5,82,17],"lm_head":[5,82,17]}' ||
          !tst.includes("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta") ||
          !tst.includes("base_model.model.lm_head.token_adapter.trainable_tokens_delta")) {
        throw new Error("trainable tokens: config " + JSON.stringify(tcfg.trainable_token_indices) + ", header " + tst.slice(0, 200));
      }
      // PEFT's modules_to_save: whole copies of the embedding and the head train beside the LoRA, start as the
      // model's (the untrained adapter keeps its loss), and are saved under the modules' own keys.
      bnb.addLora("w", { r: 4, alpha: 8, modulesToSave: ["embed_tokens", "lm_head"] });
      const wBefore = (await bnb.evaluate(data, { adapter: "w" })).loss;
      await bnb.startTraining("w", data, { lr: 0.01, steps: 1, seqLen: 16, batchSize: 2 }).train(() => {});
      const wAfter = (await bnb.evaluate(data, { adapter: "w" })).loss;
      const wfiles = await bnb.exportAdapter("w");
      const wcfg = JSON.parse(new TextDecoder().decode(wfiles["adapter_config.json"]));
      const wst = new TextDecoder().decode(wfiles["adapter_model.safetensors"].slice(0, 4096));
      if (JSON.stringify(wcfg.modules_to_save) !== '["embed_tokens","lm_head"]' || !(Math.abs(wBefore - before) < 1e-4) ||
          !(wAfter < wBefore) || !wst.includes('"base_model.model.lm_head.weight"') ||
          !wst.includes('"base_model.model.model.embed_tokens.weight"')) {
        throw new Error("modules_to_save: config " + JSON.stringify(wcfg.modules_to_save) + ", loss " + wBefore + " -> " +
          wAfter + " (base " + before + "), header " + wst.slice(0, 300));
      }
      bnb.removeAdapter("w");
      // PEFT's TRAINABLE_TOKENS by itself.
      bnb.addTrainableTokens("tt", { tokenIndices: [5, 17] });
      const ttBefore = (await bnb.evaluate(data, { adapter: "tt" })).loss;
      await bnb.startTraining("tt", data, { lr: 0.05, steps: 1, seqLen: 16, batchSize: 2 }).train(() => {});
      const ttcfg = JSON.parse(new TextDecoder().decode((await bnb.exportAdapter("tt"))["adapter_config.json"]));
      if (ttcfg.peft_type !== "TRAINABLE_TOKENS" || JSON.stringify(ttcfg.token_indices) !== "[5,17]" ||
          !(Math.abs(ttBefore - before) < 1e-4)) {
        throw new Error("trainable_tokens: " + JSON.stringify(ttcfg) + ", untrained loss " + ttBefore + " vs " + before);
      }
      const dq = await Model.fromUrl(gpu, url, { quant: "nf4", quantType: "fp4", doubleQuant: true });
      const ldq = (await dq.evaluate(data)).loss;
      if (!(Math.abs(ldq - l32) < 0.5)) throw new Error("fp4 double-quantized on load: loss " + ldq + " vs f32 " + l32);
      document.title = "step " + e.step + " loss " + e.loss + " | " + summary.state + " " + paused + " " +
        Object.keys(files).sort().join(",") + " " + g.tokenIds.length + " " + ev.tokens;    } catch (e) { document.title = "error: " + e.message; }
  `);
  // The bitsandbytes fixture folder with the tokenizer of the model it was quantized from.
  fs.mkdirSync(path.join(scratch, "bnb"), { recursive: true });
  for (const [dir, f] of [["bnb4/fp4_dq", "config.json"], ["bnb4/fp4_dq", "model.safetensors"],
    ["llama_gqa", "tokenizer.json"], ["llama_gqa", "tokenizer_config.json"]]) {
    fs.copyFileSync(path.join(root, "tests", "fixtures", dir, f), path.join(scratch, "bnb", f));
  }
  const s = await serve(0, [["/model/", path.join(root, "www", "default-model")], ["/", scratch]]);
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const pageErrors = [];
    page.on("pageerror", (e) => pageErrors.push(e.message)); // a script that does not even parse never sets the title
    await page.goto(`http://127.0.0.1:${s.address().port}/index.html`);
    await page.waitForFunction(() => document.title.startsWith("step") || document.title.startsWith("error"), null, { timeout: 120_000 })
      .catch(async (e) => { throw new Error(`${e.message}; title ${JSON.stringify(await page.title())}; page errors: ${pageErrors}`); });
    const title = await page.title();
    assert.match(title, /^step 1 loss \d.* \| done true adapter_config.json,adapter_model.safetensors \d+ \d+$/, title);
  } finally {
    await browser.close();
    s.close();
  }
});

test("the package's .d.ts types every option and event: a strict TypeScript program compiles, with no `any`", () => {
  const dts = fs.readFileSync(path.join(root, "pkg", "webpeft.d.ts"), "utf8");
  assert.doesNotMatch(dts, /\bany\b/);
  for (const t of ["LoraOptions", "TrainOptions", "StepEvent", "GenerateOptions", "MemoryPlan", "LoadProgress", "GrpoOptions",
    "GrpoStepEvent", "RewardFunction"]) {
    assert.match(dts, new RegExp(`export (interface|type) ${t}\\b`), t);
  }
  execFileSync(path.join(here, "node_modules", ".bin", "tsc"), ["--strict", "--noEmit", "--target", "es2022", "--module", "es2022",
    "--moduleResolution", "bundler", "--lib", "esnext,dom", path.join(here, "usage.ts")], { stdio: "inherit" });
});

test("the page's Content-Security-Policy blocks requests to other origins, in the page and in the worker", async () => {
  const page = await fetch(base);
  const csp = page.headers.get("content-security-policy");
  assert.match(csp, /connect-src 'self';/);
  assert.match(csp, /script-src 'self' 'wasm-unsafe-eval';/, "no inline scripts, no eval (WebAssembly may compile)");
  const html = await page.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/, "no inline <script>");
  for (const f of fs.readdirSync(path.join(root, "www")).filter((n) => n.endsWith(".js"))) {
    assert.doesNotMatch(fs.readFileSync(path.join(root, "www", f), "utf8"), /\beval\(|new Function\(/, `${f} has no eval`);
  }
  const worker = (await fetch(`${base}worker.js`)).headers.get("content-security-policy");
  assert.equal(worker, "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'");
  const chosen = (await fetch(`${base}worker.js?connect=${encodeURIComponent("https://huggingface.co/x/resolve/main/")}`))
    .headers.get("content-security-policy");
  assert.match(chosen, /connect-src 'self' https:\/\/huggingface.co https:\/\/\*\.huggingface.co https:\/\/\*\.hf.co$/);
  const browser = await launch();
  try {
    const { page: p } = await open(browser, base);
    const violated = await p.evaluate(() => new Promise((ok) => {
      document.addEventListener("securitypolicyviolation", (e) => ok(e.violatedDirective));
      fetch("http://127.0.0.2:9/leak").catch(() => {});
      setTimeout(() => ok(null), 5000);
    }));
    assert.equal(violated, "connect-src");
  } finally {
    await browser.close();
  }
});
