// Browser test of RepDiff's frontend against a running `repdiff serve` (scripts/test-frontend starts one):
// sign in, create a dataset, upload phantom DICOMs (and one broken file), edit a label, launch a tiny
// representation-conditional pretrain run and watch it live, check its loss chart against the API's
// numbers, sample variations of the dataset's scans from it, fine-tune a class-conditional model from it
// (its weight-transfer table), browse the gallery, compare runs. Screenshots of every page go to $SHOTS.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const base = process.env.REPDIFF_URL;
const user = process.env.REPDIFF_USER ?? "admin";
const password = process.env.REPDIFF_PASSWORD;
const phantoms = process.env.PHANTOMS;
const shots = process.env.SHOTS ?? "screenshots";
assert.ok(base && password && phantoms, "REPDIFF_URL, REPDIFF_PASSWORD and PHANTOMS are required");
fs.mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu"],
});
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
const browserErrors = [];
page.on("pageerror", (e) => browserErrors.push(String(e)));
page.on("console", (m) => { if (m.type() === "error") browserErrors.push(m.text()); });
page.setDefaultTimeout(20_000);

let shotNo = 0;
async function shot(name) {
  shotNo += 1;
  const file = path.join(shots, `${String(shotNo).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  console.log(`  screenshot ${file}`);
}
function step(what) { console.log(`- ${what}`); }
async function api(p) {
  const reply = await page.request.get(`${base}/api/v1${p}`);
  assert.equal(reply.status(), 200, `GET ${p}: ${reply.status()} ${await reply.text()}`);
  return reply.json();
}
async function waitState(state, timeout) {
  await page.locator(`.titlebar .badge.state-${state}`).waitFor({ timeout });
}

try {
  step("first load and sign-in (keyboard only)");
  const t0 = Date.now();
  await page.goto(`${base}/datasets`);
  await page.locator(".signin form").waitFor();
  const firstLoad = Date.now() - t0;
  const nav = await page.evaluate(() => performance.getEntriesByType("navigation")[0].toJSON());
  const wasm = await page.evaluate(() => performance.getEntriesByType("resource").filter((r) => r.name.endsWith(".wasm")).map((r) => ({ name: r.name, transfer: r.transferSize, body: r.decodedBodySize, ms: r.duration })));
  console.log(`  first load: sign-in form shown after ${firstLoad} ms (DOMContentLoaded ${nav.domContentLoadedEventEnd.toFixed(0)} ms); wasm ${JSON.stringify(wasm)}`);
  await shot("sign-in");
  await page.keyboard.type(user);
  await page.keyboard.press("Tab");
  await page.keyboard.type("wrong password");
  await page.keyboard.press("Enter");
  await page.locator(".signin .error").waitFor();
  await page.fill("input[name=password]", password);
  await page.keyboard.press("Enter");
  // The address asked for before signing in is kept.
  await page.locator("h1", { hasText: "Datasets" }).waitFor();
  assert.ok(page.url().endsWith("/datasets"));

  step("create a dataset");
  await page.fill("input[name=name]", "   ");
  await page.click("button:has-text('Create')");
  await page.locator(".card .error").waitFor();
  const name = `phantoms ${Date.now()}`;
  await page.fill("input[name=name]", name);
  await page.click("button:has-text('Create')");
  await page.waitForURL(/\/datasets\/\d+$/);
  const datasetId = Number(page.url().split("/").pop());

  step("upload phantom DICOMs with their labels, and one broken file");
  const files = fs.readdirSync(phantoms).filter((f) => f.endsWith(".dcm")).sort().map((f) => path.join(phantoms, f));
  const broken = path.join(phantoms, "broken.dcm.bin");
  fs.writeFileSync(broken, "this is not a DICOM file");
  await page.setInputFiles("input[name=labels]", path.join(phantoms, "labels.csv"));
  await page.setInputFiles("input[name=files]", [...files, broken]);
  await page.click(`button:has-text('Upload ${files.length + 1} files')`);
  await page.locator(`text=${files.length} of ${files.length + 1} files stored, 1 refused or failed`).waitFor({ timeout: 60_000 });
  const refused = page.locator("li.file.bad");
  assert.equal(await refused.count(), 1);
  assert.match(await refused.innerText(), /broken\.dcm\.bin[\s\S]*refused: /);
  await shot("dataset-uploaded");
  let dataset = await api(`/datasets/${datasetId}`);
  assert.equal(dataset.scans, files.length, "every phantom slice stored");
  // Retry sends the failed file alone: nothing else is sent again.
  await page.click("button:has-text('Retry 1 failed')");
  await page.locator("button:has-text('Retry 1 failed')").waitFor();
  assert.equal(await page.locator("li.file.done").count(), files.length);
  assert.equal((await api(`/datasets/${datasetId}`)).scans, files.length);
  const labelled = await api(`/datasets/${datasetId}/scans?limit=1000`);
  // The scan browser refreshes after the last upload: wait for it (a busy machine lags).
  await page.locator(".thumbs .thumb").nth(labelled.length - 1).waitFor();
  assert.equal(await page.locator(".thumbs .thumb").count(), labelled.length);
  assert.equal(labelled.filter((s) => s.hematoma).length, dataset.hematoma);

  step("windowing presets and label editing");
  await page.click("button.chip:has-text('bone')");
  await page.waitForURL(/window=bone/);
  assert.match(await page.locator(".thumbs img").first().getAttribute("src"), /window=bone/);
  const first = labelled[0];
  await page.locator(".thumbs .thumb").first().click();
  await page.locator(".dialog").waitFor();
  await shot("scan-editor");
  const blend = page.locator(".dialog input[name='blend sign']");
  const wasBlend = await blend.isChecked();
  await blend.setChecked(!wasBlend);
  await page.fill(".dialog input[name=site]", "3");
  await page.click(".dialog button:has-text('Save labels')");
  await page.locator(".dialog .ok").waitFor();
  const edited = await api(`/scans/${first.id}`);
  assert.equal(edited.blend_sign, !wasBlend);
  assert.equal(edited.site, 3);
  await page.keyboard.press("Escape");
  await page.locator(".dialog").waitFor({ state: "detached" });

  step("series: the phantoms' patients as DICOM series, one opened as a stack and stepped through");
  dataset = await api(`/datasets/${datasetId}`);
  const series = await api(`/datasets/${datasetId}/series`);
  assert.equal(series.length, files.length / 4, "four slices per phantom series");
  assert.equal(dataset.series, series.length);
  assert.equal(dataset.patients, series.length, "one series per phantom patient");
  assert.ok(series.every((s) => /^ANON-[0-9A-F]{16}$/.test(s.patient)), "patients are pseudonyms");
  await page.locator("p.muted", { hasText: `${series.length} patients, ${series.length} series` }).waitFor();
  const stack = series[0];
  await page.locator("table.series button[name=open-series]").first().click();
  await page.waitForURL(/series=/);
  const slice = page.locator(".stack img.full");
  const shown = async () => Number(await slice.getAttribute("data-scan"));
  await page.locator(".stack .stack-position", { hasText: `slice 1 of ${stack.slices}` }).waitFor();
  assert.equal(await shown(), stack.scan_ids[0]);
  await page.click(".stack button[name=stack-next]");
  await page.locator(".stack .stack-position", { hasText: `slice 2 of ${stack.slices}` }).waitFor();
  assert.equal(await shown(), stack.scan_ids[1]);
  await page.locator(".stack").press("ArrowUp");
  await page.locator(".stack .stack-position", { hasText: `slice 3 of ${stack.slices}` }).waitFor();
  assert.equal(await shown(), stack.scan_ids[2]);
  await page.locator(".stack").press("End");
  await page.locator(".stack .stack-position", { hasText: `slice ${stack.slices} of ${stack.slices}` }).waitFor();
  assert.ok(await page.locator(".stack button[name=stack-next]").isDisabled());
  // The stack is in slice order: instance numbers 1, 2, 3, ...
  const instances = [];
  for (const id of stack.scan_ids) instances.push((await api(`/scans/${id}`)).instance);
  assert.deepEqual(instances, [...instances].sort((a, b) => a - b));
  await page.waitForFunction(() => { const i = document.querySelector(".stack img.full"); return i && i.complete && i.naturalWidth > 0; });
  await shot("dataset-series-stack");
  await page.locator(".stack").press("Escape");
  await page.locator(".stack").waitFor({ state: "detached" });

  step("split summary, by patient and by slice");
  await page.fill("input[name=downstream_site]", "3");
  await page.locator("input[name=downstream_site]").press("Enter");
  await page.locator("input[name=downstream_site]").blur();
  await page.waitForURL(/downstream_site=3/);
  const split = await api(`/datasets/${datasetId}/split?downstream_site=3&seed=0`);
  assert.equal(split.unit, "patient");
  assert.equal(split.patients_in_two_parts, 0);
  const total = split.parts.reduce((n, p) => n + p.hematoma + p.no_hematoma, 0);
  await page.locator("table.split tr.total td:last-child", { hasText: String(total) }).waitFor();
  await page.locator(".caveat", { hasText: "split by patient: no patient has slices in two parts" }).waitFor();
  await page.click("button.chip[name=split_unit]:has-text('slice')");
  await page.waitForURL(/unit=slice/);
  await page.locator(".caveat", { hasText: "slices of one patient may be in both" }).waitFor();
  await shot("dataset-split");
  // One site: every slice split into train, validation and test, none pre-trains.
  await page.check("input[name=single_site]");
  await page.waitForURL(/design=single/);
  assert.equal((await api(`/datasets/${datasetId}/split?unit=slice`)).parts.find((p) => p.part === "pretrain").hematoma, 0);
  await page.locator("table.split tbody tr", { hasText: "pretrain" }).locator("td:last-child", { hasText: /^0$/ }).waitFor();
  await page.uncheck("input[name=single_site]");
  await page.locator("input[name=downstream_site]").waitFor();

  step("launch a tiny representation-conditional pretrain run on the dataset");
  await page.click("nav >> text=Runs");
  await page.click("a:has-text('New run')");
  await page.waitForURL(/\/runs\/new/);
  await page.selectOption("select[name=dataset]", String(datasetId));
  await page.fill("input[name=steps]", "abc");
  await page.locator(".problems", { hasText: "Steps" }).waitFor();
  assert.ok(await page.locator("button[type=submit]:has-text('Launch')").isDisabled());
  await page.selectOption("select[name=conditioning]", "representation");
  await page.fill("input[name=steps]", "80");
  await page.fill("input[name=checkpoint_every]", "40");
  await page.fill("input[name=batch_size]", "8");
  // Generation metrics of the last checkpoint (the random Inception: no weights here).
  await page.fill("input[name=eval_every]", "80");
  await page.fill("input[name=ckpt_num]", "8");
  await page.selectOption("select[name=extractor]", "random");
  await page.fill("input[name=tags]", "e2e, tiny, e2e");
  await shot("launch-pretrain");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const trainId = Number(page.url().split("/").pop());
  assert.deepEqual((await api(`/jobs/${trainId}`)).tags, ["e2e", "tiny"]);

  step("watch it live (server-sent events) until it succeeds");
  const seen = new Set();
  const deadline = Date.now() + 240_000;
  while (Date.now() < deadline) {
    seen.add(await page.locator(".progress-text").innerText());
    if (await page.locator(".titlebar .badge.state-succeeded").count()) break;
    if (await page.locator(".titlebar .badge.state-failed").count()) throw new Error(`run failed: ${await page.locator(".error").allInnerTexts()}`);
    await page.waitForTimeout(200);
  }
  await waitState("succeeded", 1000);
  const steps = [...seen].filter((t) => /^\d+ \/ 80/.test(t));
  console.log(`  progress seen: ${[...seen].join(" | ")}`);
  assert.ok(steps.length >= 2, "the page moved with the run without a reload");
  assert.ok(!(await page.locator("button:has-text('Cancel')").count()), "no cancel on a finished run");

  step("tags: add one on the run page");
  await page.fill("input[name=add_tag]", "keep");
  await page.locator("input[name=add_tag]").press("Enter");
  await page.locator(".tags .tagchip", { hasText: "keep" }).waitFor();
  assert.deepEqual((await api(`/jobs/${trainId}`)).tags, ["e2e", "tiny", "keep"]);

  step("the loss chart draws the API's numbers");
  const metrics = await api(`/jobs/${trainId}/metrics?name=loss`);
  assert.equal(metrics.length, 1);
  const loss = metrics[0];
  await page.locator(".chart-main[data-metric=loss] svg.chart path.raw").waitFor();
  // The chart refreshes with the run; wait until it has every point.
  await page.waitForFunction((n) => {
    const d = document.querySelector(".chart-main svg.chart path.raw")?.getAttribute("d") ?? "";
    return (d.match(/[ML]/g) ?? []).length === n;
  }, loss.steps.length);
  const drawn = await page.locator(".chart-main svg.chart").evaluate((s) => ({
    x0: +s.dataset.xMin, x1: +s.dataset.xMax, y0: +s.dataset.yMin, y1: +s.dataset.yMax,
    plot: s.dataset.plot.split(" ").map(Number),
    d: s.querySelector("path.raw").getAttribute("d"),
    smoothed: !!s.querySelector("path.smoothed"),
  }));
  const [left, top, width, height] = drawn.plot;
  const points = [...drawn.d.matchAll(/[ML]([-\d.]+) ([-\d.]+)/g)].map((m) => [
    drawn.x0 + ((+m[1] - left) / width) * (drawn.x1 - drawn.x0),
    drawn.y1 - ((+m[2] - top) / height) * (drawn.y1 - drawn.y0),
  ]);
  assert.equal(points.length, loss.steps.length);
  const xTol = (0.006 / width) * (drawn.x1 - drawn.x0);
  const yTol = (0.006 / height) * (drawn.y1 - drawn.y0);
  points.forEach(([x, y], i) => {
    assert.ok(Math.abs(x - loss.steps[i]) <= xTol, `point ${i}: step ${x} drawn, ${loss.steps[i]} in the API`);
    assert.ok(Math.abs(y - loss.values[i]) <= yTol, `point ${i}: loss ${y} drawn, ${loss.values[i]} in the API`);
  });
  assert.ok(drawn.smoothed, "a smoothed curve over the raw one by default");
  await shot("run-finished");

  step("its checkpoint's generation metrics: the table shows the API's numbers");
  const fdRandom = (await api(`/jobs/${trainId}/metrics?name=fd_random`))[0];
  assert.deepEqual(fdRandom.steps, [80]);
  const row = page.locator("#checkpoint-metrics tbody tr");
  await row.first().waitFor();
  assert.equal(await row.count(), 1);
  const cells = await row.first().locator("td").allInnerTexts();
  assert.equal(cells[0], "80");
  assert.equal(cells[1].replace("★", "").trim(), fdRandom.values[0].toFixed(3));
  assert.equal(await page.locator("#checkpoint-metrics thead th").nth(1).innerText(), "FD (random)");
  await page.locator("#checkpoint-metrics").scrollIntoViewIfNeeded();
  await shot("run-checkpoint-metrics");
  // The smoothing is in the address: a shared link shows the same chart.
  await page.goto(`${base}/runs/${trainId}?smooth=0&metric=loss`);
  await page.locator(".chart-main svg.chart path.raw").waitFor();
  assert.equal(await page.locator(".chart-main svg.chart path.smoothed").count(), 0);
  await page.locator(".chart-main svg.chart").hover({ position: { x: 400, y: 100 } });
  await page.locator(".chart-main svg.chart text.readout").waitFor();

  step("sample variations of the dataset's scans from its checkpoint");
  await page.click("a:has-text('Sample from it')");
  await page.waitForURL(/kind=sample/);
  await page.locator(`select[name=checkpoint] option[value="${trainId}"]`).waitFor({ state: "attached" });
  assert.equal(await page.locator("select[name=checkpoint]").inputValue(), String(trainId));
  await page.selectOption("select[name=references]", "dataset");
  await page.selectOption("select[name=dataset]", String(datasetId));
  await page.fill("input[name=num]", "6");
  await page.fill("input[name=sample_steps]", "10");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const sampleId = Number(page.url().split("/").pop());
  await waitState("succeeded", 120_000);
  await page.locator("#samples .thumbs img").first().waitFor();
  assert.equal(await page.locator("#samples .thumbs img").count(), 6);
  await shot("sample-run");

  step("fine-tune a class-conditional model from it");
  await page.goto(`${base}/runs/${trainId}`);
  await page.click("a:has-text('Fine-tune from it')");
  await page.waitForURL(/kind=finetune/);
  await page.locator(`select[name=checkpoint] option[value="${trainId}"]`).waitFor({ state: "attached" });
  assert.equal(await page.locator("select[name=checkpoint]").inputValue(), String(trainId));
  await page.selectOption("select[name=dataset]", String(datasetId));
  await page.fill("input[name=steps]", "10");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const finetuneId = Number(page.url().split("/").pop());
  await waitState("succeeded", 120_000);
  const transfer = page.locator(".report pre", { hasText: "reshaped  x_embedder.proj.weight" });
  await transfer.waitFor();
  assert.match(await transfer.innerText(), /\d+ loaded, 1 reshaped, \d+ dropped, 1 new/);
  assert.equal((await api(`/jobs/${finetuneId}`)).result.transfer.reshaped, 1);
  await shot("finetune-run");

  step("classify zero-shot with the fine-tuned model on the split's validation and test parts, stopping early");
  // 24 phantoms over 12 sites leave no site with validation and test slices: move them all to site 0
  // (an edit through the API), then its 8:1:1 split has both.
  for (const scan of await api(`/datasets/${datasetId}/scans?limit=1000`)) {
    // With the session cookie, a write names its origin (as the browser does for the app's own calls).
    const reply = await page.request.patch(`${base}/api/v1/scans/${scan.id}`, { data: { site: 0 }, headers: { Origin: base } });
    assert.equal(reply.status(), 200, await reply.text());
  }
  // Six phantom patients are too few for an 8:1:1 split by patient (no stratum has ten): these baselines
  // split per slice, as the paper did, and say so.
  const parts = (await api(`/datasets/${datasetId}/split?downstream_site=0&seed=0&unit=slice`)).parts;
  const count = (name) => parts.filter((p) => p.part === name).reduce((n, p) => n + p.hematoma + p.no_hematoma, 0);
  assert.ok(count("validation") > 0 && count("test") > 0, JSON.stringify(parts));
  const site = 0;
  await page.goto(`${base}/runs/new?kind=classify&checkpoint=${finetuneId}`);
  await page.locator(`select[name=checkpoint] option[value="${finetuneId}"]`).waitFor({ state: "attached" });
  assert.equal(await page.locator("select[name=checkpoint]").inputValue(), String(finetuneId));
  await page.selectOption("select[name=data]", "dataset");
  await page.selectOption("select[name=dataset]", String(datasetId));
  await page.check("input[name=split_on]");
  await page.fill("input[name=downstream_site]", String(site));
  await page.selectOption("select[name=split_unit]", "slice");
  await page.locator("text=The test part of the dataset's split").waitFor();
  await page.fill("input[name=timesteps]", "100,300,1000");
  await page.locator(".problems", { hasText: "Timesteps #3: is 0 to 999, got 1000" }).waitFor();
  await page.fill("input[name=timesteps]", "100,300,500");
  await page.fill("input[name=draws]", "4");
  await page.selectOption("select[name=stopping]", "sequential");
  await page.selectOption("select[name=stop_rule]", "confidence");
  await page.fill("input[name=min_draws]", "2");
  await page.selectOption("select[name=agreement]", "yes");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const classifyId = Number(page.url().split("/").pop());
  await waitState("succeeded", 120_000);
  const report = (await api(`/jobs/${classifyId}`)).result;
  await page.locator("#classification h2", { hasText: `timestep ${report.chosen_t} chosen` }).waitFor();
  assert.equal(await page.locator("table.sweep tbody tr").count(), 3);
  assert.equal(await page.locator("table.sweep tr.chosen td").first().innerText(), String(report.chosen_t));
  // The F1 chart over t, with the chosen t drawn where it belongs.
  const chart = page.locator(".chart-main[data-metric=val_f1] svg.chart");
  await chart.locator("line.marker").waitFor({ state: "attached" });
  const [x1, plot, x0, xMax] = await chart.evaluate((s) => [
    +s.querySelector("line.marker").getAttribute("x1"), s.dataset.plot.split(" ").map(Number), +s.dataset.xMin, +s.dataset.xMax]);
  const markedT = x0 + ((x1 - plot[0]) / plot[2]) * (xMax - x0);
  assert.ok(Math.abs(markedT - report.chosen_t) < 0.5, `marker at t ${markedT}, chosen ${report.chosen_t}`);
  // The test metrics are one point each (at the chosen t): not small charts of a dot (the test table has
  // them), but in the metric menu, where the chosen one is drawn as a dot, not an empty line.
  await page.locator(".small-multiples figcaption", { hasText: "val_accuracy" }).waitFor();
  assert.equal(await page.locator(".small-multiples figcaption", { hasText: "test_" }).count(), 0);
  await page.selectOption("select[name=metric]", "test_accuracy");
  await page.locator(".chart-main[data-metric=test_accuracy] svg.chart circle.point").waitFor({ state: "attached" });
  const tickLabels = await page.locator(".chart-main svg.chart text[text-anchor=middle]").allTextContents();
  assert.ok(tickLabels.length >= 2 && new Set(tickLabels).size === tickLabels.length, `x tick labels, each once: ${tickLabels}`);
  await page.selectOption("select[name=metric]", "val_f1");
  await chart.locator("line.marker").waitFor({ state: "attached" });
  // The test part at the chosen t: metrics with bootstrap intervals, the sequential run's agreement.
  const job = await api(`/jobs/${classifyId}`);
  assert.equal(job.params.validation.dataset.split.part, "validation");
  assert.equal(job.params.test.dataset.split.part, "test");
  const test = report.test;
  assert.ok(test && test.intervals && test.agreement, JSON.stringify(report));
  const pct = (v) => (v * 100).toFixed(1);
  const accuracyRow = page.locator(".test-result table.test-metrics tr", { hasText: "accuracy" });
  await accuracyRow.locator("td", { hasText: `${pct(test.intervals.accuracy[0])} - ${pct(test.intervals.accuracy[1])}` }).waitFor();
  await page.locator(".test-result .agreement", { hasText: `with ${pct(test.agreement.forwards_fraction)}% of their forward passes` }).waitFor();
  // The rule chosen in the form, and what both rules would have spent on the same draws.
  assert.equal(job.params.stopping.rule, "confidence");
  assert.equal(await page.locator(".test-result table.stopping-rules tbody tr").count(), 8);
  const chosenRule = test.agreement.alternatives.find((p) => p.rule === "confidence" && p.alpha === 0.01);
  assert.equal(chosenRule.forwards_fraction, test.agreement.forwards_fraction);
  await shot("classify-run");

  step("the linear-probe baseline on the pre-trained representation encoder, over the same split");
  await page.goto(`${base}/runs/new?kind=probe&checkpoint=${trainId}`);
  await page.locator(`select[name=checkpoint] option[value="${trainId}"]`).waitFor({ state: "attached" });
  await page.selectOption("select[name=data]", "dataset");
  await page.selectOption("select[name=dataset]", String(datasetId));
  // Without the split the probe has no validation data: Launch waits until it has.
  await page.locator(".problems", { hasText: "Validation latents" }).waitFor();
  assert.ok(await page.locator("button:has-text('Launch')").isDisabled());
  await page.check("input[name=split_on]");
  await page.fill("input[name=downstream_site]", String(site));
  await page.selectOption("select[name=split_unit]", "slice");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const probeId = Number(page.url().split("/").pop());
  await waitState("succeeded", 120_000);
  const probe = (await api(`/jobs/${probeId}`)).result;
  await page.locator("#probe h2", { hasText: `L2 strength ${probe.lambda} chosen` }).waitFor();
  const lo = (probe.test.intervals.accuracy[0] * 100).toFixed(1);
  await page.locator("#probe table.test-metrics tr", { hasText: "accuracy" }).locator("td", { hasText: `${lo} - ` }).waitFor();
  await shot("probe-run");
  // Both baselines' test results side by side, with their intervals (Table 6).
  await page.goto(`${base}/compare?runs=${classifyId},${probeId}`);
  await page.locator("#test-results tbody tr").nth(1).waitFor();
  const classifyAcc = (report.test.metrics.accuracy * 100).toFixed(1);
  await page.locator("#test-results tbody tr", { hasText: `#${classifyId}` }).locator("td", { hasText: `${classifyAcc} [` }).first().waitFor();
  // The best of each metric is marked where the runs differ (ties are not broken at random).
  const differing = ["accuracy", "precision", "recall", "f1"].filter((k) => report.test.metrics[k] !== probe.test.metrics[k]).length;
  assert.equal(await page.locator("#test-results td.best").count(), differing);
  await shot("compare-test-results");

  step("counterfactuals of two test scans, and trajectories of the fine-tuned model's samples");
  await page.goto(`${base}/runs/new?kind=counterfactual&checkpoint=${finetuneId}`);
  await page.locator(`select[name=checkpoint] option[value="${finetuneId}"]`).waitFor({ state: "attached" });
  await page.selectOption("select[name=data]", "dataset");
  await page.selectOption("select[name=dataset]", String(datasetId));
  await page.fill("input[name=num]", "2");
  await page.fill("input[name=noise_t]", "1200");
  await page.locator(".problems", { hasText: "Noise level t: is 1 to 999, got 1200" }).waitFor();
  await page.fill("input[name=noise_t]", "300");
  await page.fill("input[name=sample_steps]", "10");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const cfId = Number(page.url().split("/").pop());
  await waitState("succeeded", 120_000);
  assert.equal((await api(`/jobs/${cfId}`)).result.t, 300);
  await page.locator("#samples h2", { hasText: "Counterfactuals" }).waitFor();
  await page.locator("#samples img.grid-image").waitFor();
  assert.ok(await page.locator("#samples img.grid-image").evaluate((img) => img.complete && img.naturalWidth > 0));
  // The grid is the figure: its rows (kept one by one for the gallery) and its JSON report (the run's
  // result) are listed as artifacts, not shown again as cards.
  await page.locator("td a", { hasText: "counterfactuals.json" }).waitFor();
  assert.equal(await page.locator("section.figure").count(), 0);
  assert.equal(await page.locator("section.report").count(), 0);
  await shot("counterfactual-run");
  await page.goto(`${base}/runs/new?kind=sample&checkpoint=${finetuneId}`);
  await page.locator(`select[name=checkpoint] option[value="${finetuneId}"]`).waitFor({ state: "attached" });
  await page.fill("input[name=num]", "2");
  await page.fill("input[name=sample_steps]", "8");
  await page.fill("input[name=frames]", "4");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  await waitState("succeeded", 120_000);
  await page.locator("#trajectory img.grid-image").waitFor();
  await page.locator("#trajectory p", { hasText: "at t = [" }).waitFor();

  step("the supervised baseline: a tiny ViT from scratch on the same split, its epoch chosen on validation");
  await page.goto(`${base}/runs/new?kind=supervised`);
  await page.selectOption("select[name=architecture]", "tiny");
  await page.fill("input[name=patch]", "4");
  await page.fill("input[name=epochs]", "3");
  await page.fill("input[name=size]", "16");
  await page.selectOption("select[name=data]", "dataset");
  await page.selectOption("select[name=dataset]", String(datasetId));
  await page.check("input[name=split_on]");
  await page.fill("input[name=downstream_site]", String(site));
  await page.selectOption("select[name=split_unit]", "slice");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const supervisedId = Number(page.url().split("/").pop());
  await waitState("succeeded", 120_000);
  const supervised = (await api(`/jobs/${supervisedId}`)).result;
  await page.locator("#supervised h2", { hasText: `epoch ${supervised.best_epoch} of 3 kept` }).waitFor();
  await page.locator("#supervised table.test-metrics tr", { hasText: "accuracy" }).waitFor();
  await shot("supervised-run");
  await page.goto(`${base}/compare?runs=${classifyId},${probeId},${supervisedId}`);
  await page.locator("#test-results tbody tr", { hasText: "supervised" }).waitFor();
  // The same baseline on synthetic phantoms: no upload, the split of the phantoms' sites.
  await page.goto(`${base}/runs/new?kind=supervised`);
  await page.selectOption("select[name=architecture]", "tiny");
  await page.fill("input[name=patch]", "4");
  await page.fill("input[name=epochs]", "1");
  await page.fill("input[name=size]", "16");
  await page.selectOption("select[name=data]", "phantoms");
  await page.check("input[name=split_on]");
  await page.fill("input[name=downstream_site]", "1");
  await page.fill("input[name=phantom_num]", "60");
  await page.fill("input[name=phantom_downstream]", "2000000");
  await page.locator(".problems", { hasText: "Phantoms from site 1: is 0 to" }).waitFor();
  await page.fill("input[name=phantom_downstream]", "150");
  await page.fill("input[name=phantom_size]", "32");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const phantomId = Number(page.url().split("/").pop());
  await waitState("succeeded", 120_000);
  const phantomParams = (await api(`/jobs/${phantomId}`)).params;
  assert.deepEqual(phantomParams.test.phantoms, { num: 60, downstream: 150, size: 32, seed: 0,
    split: { downstream_site: 1, part: "test", seed: 0, unit: "patient" } });

  step("generation metrics of both models against the dataset's slices, with the t-SNE histograms");
  await page.goto(`${base}/runs/new?kind=evaluate`);
  await page.locator(`#models input[value="${finetuneId}"]`).waitFor();
  await page.locator(".problems", { hasText: "Models: tick" }).waitFor();
  await page.check(`#models input[value="${finetuneId}"]`);
  await page.check(`#models input[value="${trainId}"]`);
  await page.fill("input[name=eval_num]", "10");
  await page.fill("input[name=sample_steps]", "5");
  await page.fill("input[name=histogram]", "10");
  await page.selectOption("select[name=data]", "dataset");
  await page.selectOption("select[name=dataset]", String(datasetId));
  await page.fill("input[name=max_real]", "20");
  // It waits on the fine-tune (finished already, so it runs at once); a bad list keeps Launch disabled.
  await page.fill("input[name=after]", "the fine-tune");
  await page.locator(".problems", { hasText: "Run after: run ids" }).waitFor();
  await page.fill("input[name=after]", `#${finetuneId}`);
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const evalId = Number(page.url().split("/").pop());
  assert.deepEqual((await api(`/jobs/${evalId}`)).depends_on, [finetuneId]);
  await page.locator(`p.muted a[href="/runs/${finetuneId}"]`, { hasText: `#${finetuneId}` }).waitFor();
  await waitState("succeeded", 180_000);
  const evaluation = (await api(`/jobs/${evalId}`)).result;
  assert.equal(evaluation.results.length, 2);
  // Unnamed models are named by their run and kind, not by a storage key.
  assert.deepEqual(evaluation.results.map((r) => r.name).sort(), [`#${finetuneId} class-conditional`, `#${trainId} representation-conditional`].sort());
  assert.equal(evaluation.pretrained, false);
  assert.equal(evaluation.real, 20, "20 of the 24 slices, evenly spaced");
  // No pretrained Inception here: the columns say so instead of claiming FID.
  await page.locator("#evaluation th", { hasText: /^FD \(random\)$/ }).waitFor();
  assert.equal(await page.locator("#evaluation th", { hasText: /^FID$/ }).count(), 0);
  const fd = evaluation.results[0].fid.toFixed(3);
  await page.locator("#evaluation tbody tr").first().locator("td", { hasText: fd }).waitFor();
  // One histogram curve per set: real and both models.
  await page.locator("#evaluation svg.chart").waitFor();
  assert.equal(await page.locator("#evaluation svg.chart path.raw").count(), 3);
  await shot("evaluate-run");
  await page.goto(`${base}/compare?runs=${evalId}`);
  await page.locator("#generation-results tbody tr").nth(1).waitFor();
  assert.equal(await page.locator("#generation-results tbody tr").count(), 2);
  await shot("compare-generation");

  step("the paper's whole pipeline as one run over two seeds, on phantoms with every stage cut short: the spread, Tables 6 and 5 on its page");
  await page.goto(`${base}/runs/new?kind=reproduce`);
  for (const [name, value] of [["phantoms", "96"], ["pretrain_steps", "4"], ["finetune_steps", "2"], ["supervised_epochs", "1"],
    ["pipeline_draws", "2"], ["eval_samples", "10"], ["class_samples", "2"], ["seeds", "2"]]) {
    await page.fill(`input[name=${name}]`, value);
  }
  await page.selectOption("select[name=matmul_precision]", "bf16");
  await page.click("button:has-text('Launch')");
  await page.waitForURL(/\/runs\/\d+$/);
  const reproduceId = Number(page.url().split("/").pop());
  const reproduceParams = (await api(`/jobs/${reproduceId}`)).params;
  assert.equal(reproduceParams.matmul_precision, "bf16");
  assert.equal(reproduceParams.seeds, 2);
  await waitState("succeeded", 600_000);
  const pipeline = (await api(`/jobs/${reproduceId}`)).result;
  assert.equal(pipeline.table6.length, 5);
  assert.deepEqual(pipeline.across_seeds.seeds, [0, 1]);
  assert.equal(await page.locator("#across-seeds table.seeds tbody tr").count(), 5);
  const spread = pipeline.across_seeds.table6[1].accuracy;
  const perSeed = spread.values.map((v) => (v * 100).toFixed(1)).join(" / ");
  await page.locator("#across-seeds table.seeds tbody tr").nth(1).locator("td", { hasText: perSeed }).first().waitFor();
  await page.locator("#across-seeds p.difference", { hasText: /ahead in \d of 2 seeds/ }).waitFor();
  assert.equal(await page.locator("#across-seeds table.seeds-table5 tbody tr").count(), 2);
  assert.equal(await page.locator("#table6 tbody tr").count(), 5);
  const f1 = (pipeline.table6[1].metrics.f1 * 100).toFixed(1);
  await page.locator("#table6 tbody tr").nth(1).locator("td", { hasText: new RegExp(`^${f1} \\[`) }).waitFor();
  assert.equal(await page.locator("#class-fidelity tbody tr").count(), 4);
  assert.equal(await page.locator("#table5 tbody tr").count(), 2);
  await page.locator("section.figure img").waitFor();
  // Its stages, each a run of its own, with what each waits on.
  const stages = (await api(`/jobs?pipeline=${reproduceId}&limit=200`)).jobs;
  assert.equal(stages.length, 38);
  assert.equal(await page.locator("#stages tbody tr").count(), 38);
  await page.locator("#stages p", { hasText: "38 stages: 38 succeeded" }).waitFor();
  const finetune = stages.find((j) => j.stage === "seed-1/finetune-rep");
  await page.locator("#stages tbody tr", { hasText: "seed-1/finetune-rep" }).locator("td", { hasText: "pretrain-rep" }).waitFor();
  await page.goto(`${base}/runs/${finetune.id}`);
  await page.locator("p.muted", { hasText: "stage seed-1/finetune-rep of pipeline" }).waitFor();
  await page.locator("#charts svg.chart").first().waitFor();
  await page.goto(`${base}/runs/${reproduceId}`);
  await shot("reproduce-run");

  step("gallery");
  await page.goto(`${base}/gallery?from_job=${trainId}`);
  await page.locator(".class-row img").first().waitFor();
  const apiSamples = await api(`/samples?from_job=${trainId}`);
  assert.equal(await page.locator(".class-row img").count(), apiSamples.length);
  await page.locator(".class-row .thumb").first().click();
  await page.waitForURL(/image=\d+/);
  await page.locator(".overlay .dialog img.full").waitFor();
  await shot("gallery-full-size");
  await page.locator(".overlay").press("ArrowRight");
  await page.locator(".overlay").press("Escape");
  await page.locator(".overlay").waitFor({ state: "detached" });
  await shot("gallery");
  // The fine-tuned run's gallery also holds the counterfactual pairs and the trajectory made from it.
  await page.goto(`${base}/gallery?from_job=${finetuneId}`);
  await page.locator("#counterfactuals figure img").first().waitFor();
  assert.equal((await api(`/samples?from_job=${finetuneId}&kind=counterfactual`)).length, 2);
  assert.equal(await page.locator("#counterfactuals figure").count(), 2);
  await page.locator("#counterfactuals figcaption", { hasText: "t = 300" }).first().waitFor();
  await page.locator("#trajectories figure img").first().waitFor();
  assert.equal(await page.locator("#trajectories figure").count(), 1);
  await shot("gallery-counterfactuals");
  // A counterfactual opens in the full-size view, which steps on to the trajectory.
  await page.locator("#counterfactuals figure button").last().click();
  await page.locator(".overlay .dialog p", { hasText: "counterfactual: scan 1" }).waitFor();
  await page.locator(".overlay").press("ArrowRight");
  await page.locator(".overlay .dialog p", { hasText: "trajectory: t = " }).waitFor();
  await page.locator(".overlay").press("Escape");

  step("runs table: sort, filter, compare");
  await page.goto(`${base}/runs`);
  await page.locator(`tr[data-run="${trainId}"]`).waitFor();
  await page.locator(`tr[data-run="${sampleId}"]`).waitFor();
  await page.click("button.sort:has-text('Run')");
  await page.waitForURL(/sort=id/);
  const order = await page.locator("tr[data-run]").evaluateAll((rows) => rows.map((r) => +r.dataset.run));
  assert.deepEqual(order, [...order].sort((a, b) => a - b));
  // Text in any column: the sampling run's references (a run's stored parameters carry every default,
  // so "sample" would also find the training run's eval.sampler).
  await page.fill("input[name=q]", "references");
  await page.locator(`tr[data-run="${trainId}"]`).waitFor({ state: "detached" });
  await page.locator(`tr[data-run="${sampleId}"]`).waitFor();
  await page.fill("input[name=q]", "");
  await page.locator(`tr[data-run="${trainId}"] button.tagchip`, { hasText: "keep" }).click();
  await page.waitForURL(/tag=keep/);
  await page.locator(`tr[data-run="${sampleId}"]`).waitFor({ state: "detached" });
  await page.locator(`tr[data-run="${trainId}"]`).waitFor();
  await page.click("button[aria-label='remove the tag filter']");
  await page.locator(`tr[data-run="${sampleId}"]`).waitFor();
  await page.check(`tr[data-run="${trainId}"] input[type=checkbox]`);
  await page.check(`tr[data-run="${sampleId}"] input[type=checkbox]`);
  await shot("runs");
  await page.click("button:has-text('Compare')");
  await page.waitForURL(/\/compare\?runs=/);
  await page.locator("table.compare tbody tr").nth(1).waitFor();
  assert.equal(await page.locator("table.compare tbody tr").count(), 2);
  await shot("compare");

  step("experiments");
  await page.click("nav >> text=Experiments");
  await page.fill("input[name=name]", "e2e experiment");
  await page.click("button:has-text('Create experiment')");
  await page.locator("td a", { hasText: "e2e experiment" }).waitFor();
  await shot("experiments");

  step("a laptop screen: nothing wider than the window");
  await page.setViewportSize({ width: 1366, height: 768 });
  for (const view of [`/runs/${trainId}`, `/datasets/${datasetId}`, "/runs", `/gallery?from_job=${trainId}`, "/runs/new"]) {
    await page.goto(`${base}${view}`);
    await page.locator("main h1").first().waitFor();
    await page.waitForTimeout(300);
    const [scroll, inner] = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
    assert.ok(scroll <= inner, `${view}: the page is ${scroll} px wide in a ${inner} px window`);
  }
  await page.goto(`${base}/runs/${trainId}`);
  await page.locator(".chart-main svg.chart").waitFor();
  await shot("run-laptop-1366");

  step("an unknown run shows an error where it happened");
  await page.goto(`${base}/runs/999999`);
  await page.locator(".error", { hasText: "does not exist" }).waitFor();
  assert.equal(await page.locator(".error").count(), 1, "one error, no empty sections under it");

  // The browser logs every non-2xx reply; those of the wrong password (401), the unknown run (404) and
  // the blank dataset name are the test's own doing. Anything else is a bug.
  assert.deepEqual(browserErrors.filter((e) => !/Failed to load resource: the server responded with a status of (401|404)/.test(e)), [], "no errors in the browser console");
  console.log("frontend browser test passed");
} catch (e) {
  await shot("failure").catch(() => {});
  console.error(e);
  console.error("browser errors:", browserErrors);
  process.exitCode = 1;
} finally {
  await browser.close();
}
