// First-load benchmark of the web app on a running `repdiff serve` (run it through
// `scripts/test-frontend frontend/e2e/bench-load.mjs`): fresh browser contexts (empty cache), the time
// until the sign-in form is on screen, and until a signed-in user sees the runs table; plus what was
// transferred. Prints a table.
import { chromium } from "playwright-core";

const base = process.env.REPDIFF_URL;
const password = process.env.REPDIFF_PASSWORD;
const rounds = Number(process.env.ROUNDS ?? 10);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});

// One signed-in session to reuse for the "signed in" loads.
const setup = await browser.newContext();
const login = await setup.request.post(`${base}/api/v1/auth/login`, { data: { username: "admin", password } });
if (!login.ok()) throw new Error(`login: ${login.status()}`);
const state = await setup.storageState();

const signIn = [], runs = [];
let transfer = 0, wasmBody = 0;
for (let i = 0; i < rounds; i++) {
  const anon = await browser.newContext();
  const page = await anon.newPage();
  const t0 = performance.now();
  await page.goto(`${base}/runs`);
  await page.locator(".signin form").waitFor();
  signIn.push(performance.now() - t0);
  const resources = await page.evaluate(() => performance.getEntriesByType("resource").map((r) => r.toJSON()));
  const nav = await page.evaluate(() => performance.getEntriesByType("navigation")[0].toJSON());
  transfer = nav.transferSize + resources.reduce((n, r) => n + r.transferSize, 0);
  wasmBody = resources.filter((r) => r.name.endsWith(".wasm")).reduce((n, r) => n + r.decodedBodySize, 0);
  await anon.close();

  const signed = await browser.newContext({ storageState: state });
  const page2 = await signed.newPage();
  const t1 = performance.now();
  await page2.goto(`${base}/runs`);
  await page2.locator("h1", { hasText: "Runs" }).waitFor();
  await page2.locator("table.runs, p.empty").first().waitFor();
  runs.push(performance.now() - t1);
  await signed.close();
}
await browser.close();

const stat = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return { median: s[Math.floor(s.length / 2)], p90: s[Math.min(s.length - 1, Math.floor(s.length * 0.9))], min: s[0] };
};
const row = (name, xs) => {
  const { median, p90, min } = stat(xs);
  console.log(`| ${name} | ${rounds} | ${min.toFixed(0)} | ${median.toFixed(0)} | ${p90.toFixed(0)} |`);
};
console.log(`first load over loopback, empty cache; transferred ${(transfer / 1024).toFixed(0)} KiB in all (wasm ${(wasmBody / 1024).toFixed(0)} KiB unpacked)`);
console.log("| view | loads | min ms | median ms | p90 ms |");
console.log("|---|---|---|---|---|");
row("sign-in form shown (signed out)", signIn);
row("runs table shown (signed in)", runs);
