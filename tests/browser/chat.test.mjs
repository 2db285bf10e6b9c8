// The demo page's chat panel ("4. Chat", www/chat.js and www/chat-worker.js) in headless Chromium with
// WebGPU on SwiftShader: two trained adapters (one kept under a name), a two-turn chat with the base model
// on the left and the kept adapter on the right, checked against the library's own generation of the same
// conversation in a plain page; Stop; switching the right column to the other adapter without a reload.
//
//   node --test --test-timeout=900000 tests/browser/chat.test.mjs
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { serve } from "../../www/serve.mjs";
import { root, outDir, launch, open } from "./common.mjs";

const out = outDir("chat");
// The toy model without its chat template, served beside the page (same origin, as a model URL).
const noTemplate = path.join(out, "no-template");
fs.cpSync(path.join(root, "www", "default-model"), noTemplate, { recursive: true });
const tokenizerConfig = JSON.parse(fs.readFileSync(path.join(noTemplate, "tokenizer_config.json"), "utf8"));
delete tokenizerConfig.chat_template;
fs.writeFileSync(path.join(noTemplate, "tokenizer_config.json"), JSON.stringify(tokenizerConfig));
// The toy model with a template switched by a variable of its own, as Qwen3's by enable_thinking: off, the
// generation prompt gains a word.
const thinking = path.join(out, "thinking");
fs.cpSync(path.join(root, "www", "default-model"), thinking, { recursive: true });
const thinkingConfig = JSON.parse(fs.readFileSync(path.join(thinking, "tokenizer_config.json"), "utf8"));
thinkingConfig.chat_template = thinkingConfig.chat_template.replace("{{ '<|assistant|>\\n' }}",
  "{{ '<|assistant|>\\n' }}{% if enable_thinking is defined and enable_thinking is false %}{{ 'Briefly,' }}{% endif %}");
assert.ok(thinkingConfig.chat_template.includes("enable_thinking"));
fs.writeFileSync(path.join(thinking, "tokenizer_config.json"), JSON.stringify(thinkingConfig));
const server = await serve(0, [["/pkg/", path.join(root, "pkg")], ["/no-template/", noTemplate], ["/thinking/", thinking],
  ["/", path.join(root, "www")]]);
const base = `http://127.0.0.1:${server.address().port}/`;
// A plain page with the package, for reference generations (the demo page's CSP keeps wasm to its worker).
fs.writeFileSync(path.join(out, "index.html"), `<!doctype html><link rel="icon" href="data:,"><title>reference</title>`);
const plain = await serve(0, [["/pkg/", path.join(root, "pkg")], ["/model/", path.join(root, "www", "default-model")],
  ["/thinking/", thinking], ["/", out]]);
test.after(() => { server.close(); plain.close(); });

const USER = ["Hello, who are you?", "Tell me about the garden."];
const MAX = 24;

/** Counts the worker's load-progress messages (a reload of the base would post some). */
function countLoads() {
  const Base = window.Worker;
  window.loadProgressEvents = 0;
  window.Worker = class extends Base {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => { if (e.data?.type === "load-progress") window.loadProgressEvents += 1; });
    }
  };
}

/** Each column's assistant answers: text and what the library said about them. */
const answers = (page) => page.evaluate(() => Object.fromEntries(["left", "right"].map((side) => [side,
  [...document.querySelectorAll(`#chat-${side} .assistant`)].map((b) => ({ text: b.textContent, ...b.dataset }))])));

async function train(page, { seed, data }) {
  await page.evaluate(() => { delete document.body.dataset.trained; });
  const form = page.locator("#config");
  await form.locator("[name=steps]").fill("6");
  await form.locator("[name=lr]").fill("0.05");
  await form.locator("[name=seed]").fill(String(seed));
  await page.fill("#data", data);
  await page.click("#train");
  await page.waitForSelector("body[data-trained=done][data-phase=idle]", { timeout: 600_000 });
}

/** Waits for the chat's turn `turn` to end; fails at once if it failed. */
async function turnEnds(page, turn) {
  await page.waitForFunction((turn) => [`turn-${turn}`, "failed"].includes(document.body.dataset.chat), turn, { timeout: 300_000 });
  assert.equal(await page.getAttribute("body", "data-chat"), `turn-${turn}`, `chat error: ${await page.textContent("#chat-error")}`);
}

async function say(page, text, turn) {
  await page.fill("#chat-input", text);
  await page.press("#chat-input", "Enter"); // the keyboard sends
  await turnEnds(page, turn);
}

test("chat: two turns side by side (base vs a kept adapter) as the library generates them, streamed, stoppable, switchable without a reload", async () => {
  const browser = await launch();
  try {
    const { page, problems } = await open(browser, base, { initScript: countLoads });
    await page.waitForSelector("body[data-model=loaded][data-phase=idle]", { timeout: 120_000 });
    assert.equal(await page.isVisible("#chat-panel"), true, "the toy model has a chat template: the panel shows");
    assert.equal(await page.isVisible("#chat-unavailable"), false);
    assert.equal(await page.isDisabled("#keep-adapter"), true, "nothing to keep before training");

    const robot = fs.readFileSync(path.join(root, "www", "default-data.jsonl"), "utf8");
    await train(page, { seed: 42, data: robot });
    await page.fill("#keep-name", "first");
    await page.click("#keep-adapter");
    await page.waitForSelector(`body[data-kept='["first"]'][data-phase=idle]`);
    const cat = Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `The cat number ${i} slept on the warm blue mat all day.` })).join("\n");
    await train(page, { seed: 7, data: cat });
    const loadsBefore = await page.evaluate(() => window.loadProgressEvents);
    assert.ok(loadsBefore > 0, "the count sees the first load");

    await page.selectOption("#chat-left-adapter", "base");
    await page.selectOption("#chat-right-adapter", "kept:first");
    await page.fill("#chat-temperature", "0");
    await page.fill("#chat-max-tokens", String(MAX));
    await say(page, USER[0], 1);
    await say(page, USER[1], 2);
    const two = await answers(page);
    for (const side of ["left", "right"]) {
      assert.deepEqual(await page.locator(`#chat-${side} .user`).allTextContents(), USER, `${side}: the same user turns`);
    }
    await page.screenshot({ path: path.join(out, "chat-two-turns.png"), fullPage: true });
    for (const side of ["left", "right"]) {
      assert.equal(two[side].length, 2, `${side}: two answers`);
      for (const a of two[side]) {
        assert.ok(Number(a.newTokens) >= 1 && Number(a.newTokens) <= MAX, `${side}: ${JSON.stringify(a)}`);
        assert.ok(["eos", "maxTokens"].includes(a.stopReason), `${side}: ${JSON.stringify(a)}`);
        // Pieces arrive as they are decoded, before the result.
        if (Number(a.newTokens) > 2) assert.ok(Number(a.tokenEvents) > 1, `${side}: streamed in pieces: ${JSON.stringify(a)}`);
      }
      assert.ok(Number(two[side][1].promptTokens) > Number(two[side][0].promptTokens) + Number(two[side][0].newTokens),
        `${side}: the second turn's prompt holds the first turn: ${JSON.stringify(two[side])}`);
    }
    assert.ok(two.right.some((a) => Number(a.tokenEvents) > 1), "some answer streamed in several pieces");
    assert.notDeepEqual(two.right.map((a) => a.text), two.left.map((a) => a.text), "the kept adapter answers otherwise than the base");

    // The left column is the base model, greedy: the library, given the same conversation, says the same.
    const ref = await browser.newPage();
    await ref.goto(`http://127.0.0.1:${plain.address().port}/index.html`);
    const conversation = [{ role: "user", content: USER[0] }, { role: "assistant", content: two.left[0].text }, { role: "user", content: USER[1] }];
    const expected = await ref.evaluate(async ({ conversation, max }) => {
      const { default: init, Gpu, Model } = await import("/pkg/webpeft.js");
      await init();
      const model = await Model.fromUrl(await Gpu.create(), new URL("/model/", location.href).href);
      const full = await model.generate(conversation, { adapter: null, greedy: true, maxNewTokens: max });
      const last = await model.generate(conversation.slice(2), { adapter: null, greedy: true, maxNewTokens: max });
      const penalized = await model.generate(conversation.slice(0, 1), { adapter: null, greedy: true, maxNewTokens: max, repetitionPenalty: 1.5 });
      // A generation stopped by its signal after a few pieces ends cleanly with them.
      const stop = new AbortController();
      let pieces = 0;
      const stopped = await model.generate(conversation, { adapter: null, greedy: true, maxNewTokens: 100, signal: stop.signal,
        onToken: () => { if (++pieces === 3) stop.abort(); } });
      // No repeated 2-grams, and then also a stop text cut from that answer.
      const ngram = await model.generate(conversation.slice(0, 1), { adapter: null, greedy: true, maxNewTokens: max, noRepeatNgramSize: 2 });
      const stopAt = ngram.text.slice(3, 6);
      const ngramStop = await model.generate(conversation.slice(0, 1), { adapter: null, greedy: true, maxNewTokens: max, noRepeatNgramSize: 2, stopStrings: [stopAt] });
      return { full, lastOnly: last.promptTokens, stopped, pieces, penalized, ngram, stopAt, ngramStop };
    }, { conversation, max: MAX });
    assert.equal(two.left[1].text, expected.full.text, "left = the library's base greedy answer to the whole conversation");
    assert.equal(Number(two.left[1].promptTokens), expected.full.promptTokens);
    assert.ok(expected.lastOnly < expected.full.promptTokens, "the history is part of the prompt");
    assert.equal(expected.stopped.stopReason, "stopped");
    // A piece may take more than one token (a character split across byte tokens), never fewer.
    assert.ok(expected.stopped.tokenIds.length >= 3 && expected.stopped.tokenIds.length < 100, `stopped after the third piece: ${JSON.stringify(expected.stopped)}`);
    assert.equal(expected.pieces, 3);
    await ref.close();

    // The repetition penalty field (the model's own, 1, after the load) goes with each turn, greedy too.
    assert.equal(await page.inputValue("#chat-repetition-penalty"), "1");
    await page.click("#chat-clear");
    await page.fill("#chat-repetition-penalty", "1.5");
    await say(page, USER[0], 1);
    assert.equal((await answers(page)).left[0].text, expected.penalized.text, "left = the library's answer with repetitionPenalty 1.5");
    assert.notEqual(expected.penalized.text, two.left[0].text, "the penalty changes the toy's answer");
    await page.fill("#chat-repetition-penalty", "1");

    // The n-gram field (the model's own, 0, after the load) and the stop text go with each turn.
    assert.equal(await page.inputValue("#chat-ngram"), "0");
    assert.equal(expected.stopAt.length, 3, JSON.stringify(expected.ngram));
    assert.equal(expected.ngramStop.stopReason, "stopString");
    assert.ok(expected.ngram.text.startsWith(expected.ngramStop.text) && expected.ngramStop.text.includes(expected.stopAt), JSON.stringify(expected));
    await page.click("#chat-clear");
    await page.fill("#chat-ngram", "2");
    await page.fill("#chat-stop-at", expected.stopAt);
    await say(page, USER[0], 1);
    const cut = (await answers(page)).left[0];
    assert.equal(cut.text, expected.ngramStop.text, "left = the library's answer with noRepeatNgramSize 2 and the stop text");
    assert.equal(cut.stopReason, "stopString", JSON.stringify(cut));
    await page.fill("#chat-ngram", "0");
    await page.fill("#chat-stop-at", "");

    // Stop: a long answer ends early with its text so far; the right column's answer is skipped. The answer is
    // held to at least 200 tokens (eos banned before them, the "at least" field), so that it is long whatever the
    // machine's speed: left alone, the toy's answer ends at eos after 14 tokens, which Stop can arrive after.
    await page.click("#chat-clear");
    await page.fill("#chat-max-tokens", "200");
    await page.fill("#chat-min-tokens", "200");
    await page.fill("#chat-input", USER[0]);
    await page.click("#chat-send");
    await page.waitForFunction(() => Number(document.querySelector("#chat-left .assistant")?.dataset.tokenEvents) >= 3, null, { timeout: 120_000 });
    assert.equal(await page.isEnabled("#chat-stop"), true, "Stop works while it generates");
    for (const id of ["#chat-send", "#chat-input", "#chat-right-adapter", "#keep-adapter", "#train", "#load", "#generate"]) {
      assert.equal(await page.isDisabled(id), true, `${id} waits for the chat`);
    }
    assert.equal(await page.evaluate(() => document.activeElement.id), "chat-stop", "the keyboard is on Stop");
    await page.keyboard.press("Enter");
    await turnEnds(page, 1);
    assert.equal(await page.evaluate(() => document.activeElement.id), "chat-input", "and back on the message box");
    const stopped = await answers(page);
    assert.equal(stopped.left[0].stopReason, "stopped", JSON.stringify(stopped.left));
    assert.ok(Number(stopped.left[0].newTokens) < 200 && stopped.left[0].text.length > 0, JSON.stringify(stopped.left));
    assert.equal(stopped.right[0].stopReason, "skipped", JSON.stringify(stopped.right));
    assert.equal(await page.isDisabled("#chat-stop"), true);
    await page.fill("#chat-min-tokens", "0");

    // The right column switches to the second adapter: other answers, no reload of the base.
    await page.click("#chat-clear");
    await page.fill("#chat-max-tokens", String(MAX));
    await page.selectOption("#chat-right-adapter", "trained");
    await say(page, USER[0], 1);
    const switched = await answers(page);
    assert.equal(switched.left[0].text, two.left[0].text, "the base answers as before");
    assert.equal(switched.right[0].adapter, "trained");
    assert.notEqual(switched.right[0].text, two.right[0].text, "the second adapter answers otherwise than the kept one");
    assert.equal(await page.evaluate(() => window.loadProgressEvents), loadsBefore, "the base was not loaded again");

    // Removing the kept adapter takes it out of the list and the columns' choices.
    await page.click("#kept-list button[aria-label='Remove kept adapter first']");
    await page.waitForSelector(`body[data-kept='[]']`);
    assert.equal(await page.locator("#chat-right-adapter option[value='kept:first']").count(), 0);
    await page.screenshot({ path: path.join(out, "chat-switched.png"), fullPage: true });
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }
});

test("chat: a model without a chat template gets a note saying why instead of the panel; Try it still continues text; a template's own enable_thinking gets a switch", async () => {
  const browser = await launch();
  try {
    const { page, problems } = await open(browser, base);
    await page.waitForSelector("body[data-model=loaded][data-phase=idle]", { timeout: 120_000 });
    await page.check("input[name=source][value=url]");
    await page.fill("#model-url", `${base}no-template/`);
    await page.click("#load");
    await page.waitForSelector("#chat-unavailable:not([hidden])", { timeout: 120_000 });
    assert.match(await page.textContent("#chat-unavailable"), /no chat template.*Try it/s);
    assert.equal(await page.isVisible("#chat-panel"), false);
    await page.waitForSelector("body[data-phase=idle]");
    await page.click("#generate");
    await page.waitForSelector("body[data-before=done]", { timeout: 120_000 });
    assert.ok((await page.textContent("#before")).length > 0, "plain continuation still works");

    // A template with its own enable_thinking gets a switch for it (checked: the template's default); off, each
    // turn renders with enable_thinking false, as the library's chatTemplateKwargs does.
    assert.equal(await page.isVisible("#chat-thinking"), false, "no switch for a template without the variable");
    await page.fill("#model-url", `${base}thinking/`);
    await page.click("#load");
    await page.waitForSelector("#chat-panel:not([hidden])", { timeout: 120_000 });
    await page.waitForSelector("body[data-phase=idle]");
    assert.equal(await page.isChecked("#chat-thinking"), true);
    await page.fill("#chat-temperature", "0");
    await page.fill("#chat-max-tokens", String(MAX));
    await page.uncheck("#chat-thinking");
    await say(page, USER[0], 1);
    const off = (await answers(page)).left[0];
    const ref = await browser.newPage();
    await ref.goto(`http://127.0.0.1:${plain.address().port}/index.html`);
    const want = await ref.evaluate(async ({ user, max }) => {
      const { default: init, Gpu, Model } = await import("/pkg/webpeft.js");
      await init();
      const model = await Model.fromUrl(await Gpu.create(), new URL("/thinking/", location.href).href);
      const chat = [{ role: "user", content: user }];
      const generate = (kwargs) => model.generate(chat, { adapter: null, greedy: true, maxNewTokens: max, chatTemplateKwargs: kwargs });
      return { variables: model.info().chatTemplateVariables, off: (await generate({ enable_thinking: false })).text,
        on: (await generate(undefined)).text };
    }, { user: USER[0], max: MAX });
    await ref.close();
    assert.deepEqual(want.variables, ["enable_thinking"]);
    assert.equal(off.text, want.off, "the page's answer with the switch off is the library's with enable_thinking false");
    assert.notEqual(want.off, want.on, "the variable changes the answer");
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
  }
});
