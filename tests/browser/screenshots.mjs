// The README's screenshots of the demo page (docs/screenshots/), taken in the same headless Chromium as the
// tests: the default run trained, "Try it" before and after, one chat turn with the base model beside the adapter,
// a classifier trained on the default labelled texts and its verdict on a text, and the page at phone width. Not a test; run after scripts/build-web.sh:
//
//   node tests/browser/screenshots.mjs
import fs from "node:fs";
import path from "node:path";
import { serve } from "../../www/serve.mjs";
import { root, launch, open } from "./common.mjs";

const dir = path.join(root, "docs", "screenshots");
fs.mkdirSync(dir, { recursive: true });
const server = await serve(0);
const url = `http://127.0.0.1:${server.address().port}/`;
const browser = await launch();
try {
  const { page, problems } = await open(browser, url);
  await page.setViewportSize({ width: 1200, height: 900 });
  await page.waitForSelector("body[data-model=loaded][data-phase=idle]", { timeout: 120_000 });
  await page.click("#train");
  await page.waitForSelector("body[data-trained=done][data-phase=idle]", { timeout: 600_000 });
  await page.click("#generate");
  await page.waitForSelector("body[data-after=done][data-phase=idle]", { timeout: 300_000 });
  await page.locator("#train-section").screenshot({ path: path.join(dir, "train.png") });
  await page.locator("#try-section").screenshot({ path: path.join(dir, "try-it.png") });

  await page.selectOption("#chat-left-adapter", "base");
  await page.selectOption("#chat-right-adapter", "trained");
  await page.fill("#chat-max-tokens", "24");
  await page.fill("#chat-input", "Describe the little robot.");
  await page.press("#chat-input", "Enter");
  await page.waitForFunction(() => ["turn-1", "failed"].includes(document.body.dataset.chat), null, { timeout: 300_000 });
  await page.locator("#chat-section").screenshot({ path: path.join(dir, "chat.png") });

  await page.selectOption("#config [name=objective]", "classification");
  await page.waitForFunction(() => document.getElementById("cls-data").value.length > 0);
  await page.evaluate(() => { delete document.body.dataset.trained; });
  await page.click("#train");
  await page.waitForSelector("body[data-trained=done][data-phase=idle]", { timeout: 600_000 });
  await page.click("#judge");
  await page.waitForSelector("body[data-judged][data-phase=idle]", { timeout: 120_000 });
  await page.locator("#train-section").screenshot({ path: path.join(dir, "classify-train.png") });
  await page.locator("#try-section").screenshot({ path: path.join(dir, "classify-try.png") });

  await page.setViewportSize({ width: 390, height: 844 });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(dir, "phone.png") });
  if (problems.length) throw new Error(problems.join("\n"));
  for (const f of fs.readdirSync(dir)) console.log(f, fs.statSync(path.join(dir, f)).size, "bytes");
} finally {
  await browser.close();
  server.close();
}
