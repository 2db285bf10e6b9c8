// The demo's default run shows what fine-tuning does: with no network and the page's default settings, the
// built-in model (pretrained by www/make_default_model.py on a grammar that never puts the fine-tuning data's
// words after a robot) continues "The little robot" without them, and after the default 12 LoRA steps with them.
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { serve } from "../../www/serve.mjs";
import { root, outDir, launch, open } from "./common.mjs";

const out = outDir("learning");
const words = (text) => new Set(text.toLowerCase().match(/[a-z]+/g) ?? []);

test("the default run visibly learns: the adapter's continuation uses the training data's words, the base model's does not", async () => {
  const server = await serve(0);
  const browser = await launch();
  try {
    const { page, problems, external } = await open(browser, `http://127.0.0.1:${server.address().port}/`);
    await page.waitForSelector("body[data-model=loaded]", { timeout: 120_000 });
    const started = Date.now();
    await page.click("#train");
    await page.waitForSelector("body[data-trained=done]", { timeout: 600_000 });
    const trainSeconds = (Date.now() - started) / 1000;
    assert.equal(await page.isVisible("#rewards"), false, "the preference rewards table stays hidden in an SFT run");
    const prompt = await page.inputValue("#prompt");
    await page.click("#generate");
    await page.waitForSelector("body[data-after=done]", { timeout: 300_000 });
    const before = await page.textContent("#before");
    const after = await page.textContent("#after");
    await page.screenshot({ path: path.join(out, "before-and-after.png"), fullPage: true });

    // The data's content words: four letters or more, not in the prompt ("the", "and" and "little" are not evidence).
    const data = fs.readFileSync(path.join(root, "www", "default-data.jsonl"), "utf8").trim().split("\n")
      .map((l) => JSON.parse(l).text).join(" ");
    const asked = words(prompt);
    const taught = [...words(data)].filter((w) => w.length >= 4 && !asked.has(w));
    const used = (text) => taught.filter((w) => words(text).has(w));
    fs.writeFileSync(path.join(out, "generations.json"), JSON.stringify({ prompt, before, after, trainSeconds }, null, 2));
    assert.ok(before.trim().split(/\s+/).length >= 8, `the base model writes a sentence: ${JSON.stringify(before)}`);
    assert.deepEqual(used(before), [], `the base model's continuation: ${JSON.stringify(before)}`);
    assert.ok(used(after).length >= 3, `the adapter's continuation uses the data's words: ${JSON.stringify(after)} (${used(after)})`);
    assert.deepEqual(problems, []);
    assert.deepEqual(external, [], "nothing was fetched from the network");
  } finally {
    await browser.close();
    server.close();
  }
});
