// The playground page in a real browser: type a prompt with the keyboard, check the decision it
// shows, and save screenshots (wide and narrow) as test artifacts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const url = process.env.POINTSMAN_URL;
const shots = process.env.SCREENSHOT_DIR || ".";
const apiKey = process.env.POINTSMAN_API_KEY;

test("the playground routes a typed prompt and shows why", async () => {
  assert.ok(url && apiKey, "POINTSMAN_URL or POINTSMAN_API_KEY is not set (run scripts/browser-test.sh)");
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
    await page.goto(url);
    // the routes view loads from /v1/routes
    await page.locator("#routes table").waitFor({ state: "attached" });
    // keyboard only: focus the prompt, type, Ctrl+Enter
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement.id), "prompt");
    await page.keyboard.type("Where is my order #12345?");
    await page.keyboard.press("Control+Enter");
    // the server asks for an API key: the page says so and moves to the key field
    await page.locator(".tag.error", { hasText: "unauthorized" }).waitFor();
    assert.equal(await page.evaluate(() => document.activeElement.id), "apikey");
    await page.keyboard.type(apiKey);
    await page.keyboard.press("Enter");
    await page.locator("#decided-model").waitFor();
    assert.equal(await page.locator("#decided-route").textContent(), "order_status");
    assert.equal(await page.locator("#decided-model").textContent(), "llama-3.1-8b-instruct");
    // one bar per scored route, the winner passing its threshold
    const bars = page.locator("#bars .bar");
    assert.ok((await bars.count()) >= 2);
    assert.match(await bars.first().locator(".track").getAttribute("aria-label"), /order_status: score .* passes/);
    assert.match(await page.locator("#candidates").textContent(), /llama-3\.1-8b-instruct.*chosen/);
    assert.match(await page.locator("#neighbours").textContent(), /Where is my order #12345\?/);
    await page.screenshot({ path: `${shots}/playground.png`, fullPage: true });

    // the key is kept for the tab: a reload routes without asking again
    await page.reload();
    await page.locator("#prompt").fill("Where is my order #12345?");
    await page.locator("#go").click();
    await page.locator("#decided-route").waitFor();

    // an unrelated prompt falls back, shown as such
    await page.locator("#prompt").fill("What is the best season to plant tomatoes in my garden?");
    await page.locator("#go").click();
    await page.locator(".tag.fallback").waitFor();

    // a narrow screen: nothing wider than the viewport
    await page.setViewportSize({ width: 360, height: 800 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `page is ${overflow}px wider than a 360px screen`);
    await page.screenshot({ path: `${shots}/playground-narrow.png`, fullPage: true });
  } finally {
    await browser.close();
  }
});
