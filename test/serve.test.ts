// `pipe serve`: the server's path list and binding, and the page in real headless Chromium
// on a fake webcam (a .y4m file): a synthesized face must be found, a blank frame must not.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { startServer } from '../cli/serve.js';
import { iou, type Box } from '../stages/lib/boxes.js';
import { makeLayout } from '../stages/lib/grid-layout.js';
import { planSynthRows, renderSynthRow, SYNTH_DEFAULTS } from '../stages/synthesize-imdb-wiki.js';
import { quickstartFile, quickstartStore, testArtifacts } from './fixtures.js';
import { pipeBin, pipeSync, repoRoot, tempDir } from './helpers.js';

const CHROMIUM = '/usr/bin/chromium';

// ------------------------------------------------------------------ YUV4MPEG2 from RGB

/**
 * A YUV4MPEG2 (C420, 4:2:0 planar) video of `frames` copies of an RGB image, for Chromium's
 * --use-file-for-fake-video-capture. BT.601 limited range, as Chromium reads I420 by default;
 * chroma is the mean of each 2x2 block. Odd sides lose their last row/column.
 */
export function y4mFromRgb(img: { width: number; height: number; data: Uint8Array }, frames: number): Buffer {
  const w = img.width & ~1;
  const h = img.height & ~1;
  const yPlane = Buffer.alloc(w * h);
  const uPlane = Buffer.alloc((w / 2) * (h / 2));
  const vPlane = Buffer.alloc((w / 2) * (h / 2));
  const clamp = (v: number) => Math.max(0, Math.min(255, Math.round(v)));
  for (let y = 0; y < h; y += 2) {
    for (let x = 0; x < w; x += 2) {
      let cb = 0;
      let cr = 0;
      for (const [dx, dy] of [[0, 0], [1, 0], [0, 1], [1, 1]] as const) {
        const o = ((y + dy) * img.width + (x + dx)) * 3;
        const r = img.data[o]!;
        const g = img.data[o + 1]!;
        const b = img.data[o + 2]!;
        yPlane[(y + dy) * w + x + dx] = clamp(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255);
        cb += 128 + (-37.797 * r - 74.203 * g + 112 * b) / 255;
        cr += 128 + (112 * r - 93.786 * g - 18.214 * b) / 255;
      }
      uPlane[(y / 2) * (w / 2) + x / 2] = clamp(cb / 4);
      vPlane[(y / 2) * (w / 2) + x / 2] = clamp(cr / 4);
    }
  }
  const header = Buffer.from(`YUV4MPEG2 W${w} H${h} F30:1 Ip A1:1 C420jpeg\n`, 'ascii');
  const frame = Buffer.concat([Buffer.from('FRAME\n', 'ascii'), yPlane, uPlane, vPlane]);
  return Buffer.concat([header, ...Array.from({ length: frames }, () => frame)]);
}

test('y4mFromRgb writes a C420 header and planar frames of the right size and colour', () => {
  const img = { width: 5, height: 4, data: new Uint8Array(5 * 4 * 3).fill(255) };
  const v = y4mFromRgb(img, 2);
  const header = 'YUV4MPEG2 W4 H4 F30:1 Ip A1:1 C420jpeg\n';
  assert.equal(v.subarray(0, header.length).toString('ascii'), header);
  const frameBytes = 6 + 16 + 4 + 4;
  assert.equal(v.length, header.length + 2 * frameBytes);
  const f = v.subarray(header.length);
  assert.equal(f.subarray(0, 6).toString('ascii'), 'FRAME\n');
  assert.equal(f[6], 235); // white → Y 235 (limited range)
  assert.equal(f[6 + 16], 128); // no chroma
  assert.equal(f[6 + 16 + 4], 128);
});

// ------------------------------------------------------------------ the server alone

function get(url: string, path: string, method = 'GET'): Promise<{ status: number; type: string; body: Buffer }> {
  // node:http sends `path` exactly as given (no dot-segment normalisation), like a hostile client.
  const u = new URL(url);
  return new Promise((ok, fail) => {
    const req = request({ host: u.hostname, port: u.port, path, method }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('end', () => ok({ status: res.statusCode!, type: String(res.headers['content-type'] ?? ''), body: Buffer.concat(parts) }));
    });
    req.on('error', fail);
    req.end();
  });
}

test('the server binds to 127.0.0.1 by default and serves only its list of paths', async () => {
  const dir = tempDir('pipe-serve-');
  const modelDir = join(dir, 'model');
  mkdirSync(modelDir);
  writeFileSync(join(modelDir, 'model.json'), '{"format":"layers-model"}');
  writeFileSync(join(modelDir, 'weights.bin'), Buffer.from([1, 2, 3, 4]));
  writeFileSync(join(dir, 'secret.txt'), 'not for the browser');
  const layout = makeLayout({ inputSize: 64, blocks: 4, sqrtWh: true, relative: false });
  const s = await startServer({ modelDir, layout, port: 0 });
  try {
    assert.equal(s.host, '127.0.0.1');
    assert.match(s.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    assert.ok(s.port > 0);

    const index = await get(s.url, '/');
    assert.equal(index.status, 200);
    assert.match(index.type, /^text\/html/);
    assert.match(index.body.toString(), /src="\/app\.js"/);
    for (const p of ['/app.js', '/lib/grid-layout.js', '/lib/boxes.js']) {
      const r = await get(s.url, p);
      assert.equal(r.status, 200, p);
      assert.match(r.type, /^text\/javascript/, p);
    }
    assert.match((await get(s.url, '/lib/grid-layout.js')).body.toString(), /export function detect/);
    const tfHead = await get(s.url, '/tf.min.js', 'HEAD');
    assert.equal(tfHead.status, 200);
    assert.match(tfHead.type, /^text\/javascript/);
    assert.deepEqual(JSON.parse((await get(s.url, '/layout.json')).body.toString()), layout);
    assert.deepEqual((await get(s.url, '/model/weights.bin')).body, Buffer.from([1, 2, 3, 4]));
    assert.equal((await get(s.url, '/model/model.json?v=2')).status, 200); // a query does not matter

    for (const p of [
      '/../package.json',
      '/%2e%2e/package.json',
      '/model/../../package.json',
      '/model/..%2f..%2fpackage.json',
      '/package.json',
      '/web/app.js',
      '/dist/stages/lib/boxes.js',
      '/lib/face-dataset.js',
      '/model/',
      '/model/../secret.txt',
      '/secret.txt',
      '//etc/passwd',
    ]) {
      const r = await get(s.url, p);
      assert.equal(r.status, 404, `${p} → ${r.status}`);
      assert.doesNotMatch(r.body.toString(), /not for the browser|"name"/, p);
    }
    assert.equal((await get(s.url, '/', 'POST')).status, 405);

    await assert.rejects(startServer({ modelDir, layout, port: s.port }), /in use/);
  } finally {
    await s.close();
  }
});

test('pipe serve names `pipe run FILE` when the model is not cached', { skip: existsSync(quickstartFile) ? false : 'experiments/quickstart.yaml is absent' }, () => {
  const store = tempDir('pipe-serve-store-');
  const r = pipeSync(['serve', '--experiment', quickstartFile, '--store', store, '--port', '0'], { cwd: repoRoot });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /not cached.*pipe run .*quickstart\.yaml/);
});

// ------------------------------------------------------------------ the page in Chromium

/** Start `pipe serve` and read its URL from stdout. */
function startPipeServe(args: string[], env: Record<string, string>): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const child = spawn(process.execPath, [pipeBin, 'serve', ...args], { cwd: repoRoot, env: { ...process.env, CI: '1', ...env } });
  let out = '';
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`pipe serve printed no URL in 60 s:\n${out}`)), 60_000);
    const onData = (d: Buffer) => {
      out += d;
      const m = /serving on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        ok({ child, url: m[1]!, output: () => out });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (d: Buffer) => (out += d));
    child.on('exit', (code) => {
      clearTimeout(timer);
      fail(new Error(`pipe serve exited (${code}) before serving:\n${out}`));
    });
  });
}

interface PageState {
  frames: number;
  lastDetections: { box: Box; confidence: number; genderLabel: string; ageLabel: string }[];
  fps: number;
  ready: boolean;
  error: string | null;
  backend: string;
  detectionsSeen: number;
  videoSize: [number, number];
}

/** Open the page with a fake camera playing `video`; wait for `frames` processed frames. */
async function runPage<T = undefined>(
  url: string,
  video: string,
  frames: number,
  o: { screenshot?: string; evaluate?: (page: import('playwright-core').Page) => Promise<T>; args?: string[] } = {},
): Promise<{ state: PageState; consoleErrors: string[]; extra?: T }> {
  const { chromium } = await import('playwright-core');
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-video-capture=${video}`,
      ...(o.args ?? []),
    ],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1000, height: 800 } });
    const consoleErrors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push(`pageerror: ${e.message}`));
    page.on('requestfailed', (r) => consoleErrors.push(`request failed: ${r.url()}`));
    await page.goto(url);
    await page.waitForFunction((n) => {
      const s = (window as any).__pipe;
      return s && (s.error || s.frames >= n);
    }, frames, { timeout: 120_000, polling: 100 });
    const state = (await page.evaluate(() => (window as any).__pipe)) as PageState;
    if (o.screenshot) await page.screenshot({ path: o.screenshot });
    const extra = o.evaluate ? await o.evaluate(page) : undefined;
    return { state, consoleErrors, extra };
  } finally {
    await browser.close();
  }
}

test('the page finds a synthesized face on a fake webcam and nothing on a blank one', { timeout: 600_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) return t.skip(`${CHROMIUM} is absent (install Debian chromium to run the browser test)`);
  if (!existsSync(quickstartFile)) return t.skip('experiments/quickstart.yaml is absent');
  const qs = quickstartStore();

  // A held-out face (a seed the quickstart did not train on), large enough to be found.
  const rows = planSynthRows({ ...SYNTH_DEFAULTS, count: 40, seed: 12345, bad_rows: false });
  const row = rows.find((r) => r.box && r.box.width >= 0.45 * Math.min(r.width, r.height) && r.box.left >= 0 && r.box.top >= 0)!;
  assert.ok(row, 'a synthesized row with a large face');
  const img = renderSynthRow(row);
  const dir = tempDir('pipe-serve-video-');
  const faceVideo = join(dir, 'face.y4m');
  writeFileSync(faceVideo, y4mFromRgb(img, 3));
  const blankVideo = join(dir, 'blank.y4m');
  writeFileSync(blankVideo, y4mFromRgb({ width: 320, height: 240, data: new Uint8Array(320 * 240 * 3).fill(128) }, 3));
  const truth: Box = [row.box!.left, row.box!.top, row.box!.left + row.box!.width, row.box!.top + row.box!.height];

  const server = await startPipeServe(['--experiment', qs.file, '--port', '0', '--store', qs.store], qs.env);
  const exited = new Promise<number | null>((ok) => server.child.on('exit', (code) => ok(code)));
  try {
    assert.match(server.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    mkdirSync(testArtifacts, { recursive: true });
    const shot = join(testArtifacts, 'serve.png');

    const face = await runPage(server.url, faceVideo, 6, {
      screenshot: shot,
      // Tensors must not pile up frame after frame (tidy + dispose in the loop).
      evaluate: async (page) => {
        // A frame in flight holds its output tensor for a moment: take the fewest of a few samples,
        // which a real leak (one or more tensors per frame) would still raise.
        const count = () =>
          page.evaluate(async () => {
            let tensors = Infinity;
            for (let i = 0; i < 8; i++) {
              tensors = Math.min(tensors, (window as any).tf.memory().numTensors as number);
              await new Promise((r) => setTimeout(r, 15));
            }
            return { tensors, frames: (window as any).__pipe.frames as number };
          });
        // Let one-time allocations (backend caches, lazily built constants) happen first.
        const warm = await count();
        await page.waitForFunction((n) => (window as any).__pipe.frames >= n, warm.frames + 3, { timeout: 60_000 });
        const before = await count();
        await page.waitForFunction((n) => (window as any).__pipe.frames >= n, before.frames + 5, { timeout: 60_000 });
        return { before, after: await count() };
      },
    });
    assert.ok(face.extra!.after.frames >= face.extra!.before.frames + 5);
    // A frame in flight may hold its output tensor when sampled (±1); a leak of even one tensor a
    // frame would add at least 5 over these 5 frames.
    assert.ok(Math.abs(face.extra!.after.tensors - face.extra!.before.tensors) <= 1, `tensors leak from frame to frame: ${face.extra!.before.tensors} → ${face.extra!.after.tensors}`);
    assert.equal(face.state.error, null);
    assert.deepEqual(face.consoleErrors, []);
    assert.ok(face.state.ready);
    assert.ok(face.state.frames >= 6);
    assert.ok(face.state.fps > 0, `fps ${face.state.fps}`);
    assert.ok(existsSync(shot) && readFileSync(shot).length > 1000, 'screenshot written');
    // The video may reach the page rescaled: compare in the page's video pixels.
    const [vw, vh] = face.state.videoSize;
    const sx = vw / (img.width & ~1);
    const sy = vh / (img.height & ~1);
    const truthInVideo: Box = [truth[0] * sx, truth[1] * sy, truth[2] * sx, truth[3] * sy];
    const dets = face.state.lastDetections;
    assert.ok(dets.length >= 1, `no detection on the face video (backend ${face.state.backend}, ${face.state.frames} frames)`);
    const best = Math.max(...dets.map((d) => iou(d.box, truthInVideo)));
    assert.ok(best > 0.3, `best IoU with the drawn face ${best.toFixed(2)}: ${JSON.stringify(dets.map((d) => d.box))} vs ${JSON.stringify(truthInVideo)}`);
    t.diagnostic(`face: ${dets.length} detection(s), best IoU ${best.toFixed(2)}, ${face.state.fps.toFixed(1)} fps on ${face.state.backend}, video ${vw}x${vh}`);
    for (const d of dets) {
      assert.ok(d.confidence > 0.7);
      assert.ok(['female', 'male'].includes(d.genderLabel));
      assert.match(d.ageLabel, /^\d\d-\d\d$/);
    }

    const blank = await runPage(server.url, blankVideo, 8);
    assert.equal(blank.state.error, null);
    assert.deepEqual(blank.consoleErrors, []);
    assert.ok(blank.state.frames >= 8);
    assert.equal(blank.state.detectionsSeen, 0, `detections on a blank frame: ${JSON.stringify(blank.state.lastDetections)}`);
  } finally {
    server.child.kill('SIGINT');
  }
  assert.equal(await exited, 0, `pipe serve did not stop cleanly on SIGINT:\n${server.output()}`);
  assert.match(server.output(), /SIGINT: stopping the server/);
});

test('the page runs a passthrough-head model: its PipeSpaceToDepth gives Node\'s outputs on WebGL and on the CPU fallback', { timeout: 300_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) return t.skip(`${CHROMIUM} is absent (install Debian chromium to run the browser test)`);
  const tf = await import('@tensorflow/tfjs');
  await tf.setBackend('cpu');
  const { buildGridModel } = await import('../stages/lib/grid-net.js');
  const { saveModel } = await import('../stages/lib/tf-model-io.js');
  // 36 px → maps 18, 9, 5: the reorg pads the odd 9x9 map, the path most likely to differ.
  const size = 36;
  const model = buildGridModel(tf, { filters: [[4], [4], [6]], head: 'passthrough', denseUnits: 8, seed: 3, inputSize: size });
  assert.ok(model.layers.some((l) => l.getClassName() === 'PipeSpaceToDepth'));
  const dir = tempDir('pipe-serve-passthrough-');
  await saveModel(tf, model, join(dir, 'model'));
  const input = Array.from({ length: size * size * 3 }, (_, i) => ((i * 37) % 251) / 251);
  const expected = Array.from(tf.tidy(() => (model.predict(tf.tensor4d(input, [1, size, size, 3])) as import('@tensorflow/tfjs').Tensor).dataSync()));
  model.dispose();

  const video = join(dir, 'blank.y4m');
  writeFileSync(video, y4mFromRgb({ width: 160, height: 120, data: new Uint8Array(160 * 120 * 3).fill(90) }, 2));
  const layout = makeLayout({ inputSize: size, blocks: 3, sqrtWh: true, relative: false });
  const s = await startServer({ modelDir: join(dir, 'model'), layout, port: 0 });
  try {
    // As launched (WebGL through SwiftShader where Chromium offers it), then with no 3D APIs
    // at all, where the page must fall back to the CPU backend by itself.
    for (const run of [{ args: [] as string[], backend: undefined }, { args: ['--disable-3d-apis'], backend: 'cpu' }]) {
      const r = await runPage(s.url, video, 3, {
        args: run.args,
        evaluate: (page) =>
          page.evaluate(async ({ input, size }) => {
            const tfb = (window as any).tf;
            const m = await tfb.loadLayersModel('/model/model.json');
            const out = m.predict(tfb.tensor4d(input, [1, size, size, 3]));
            const values = Array.from(await out.data()) as number[];
            out.dispose();
            return { values, shape: out.shape as number[] };
          }, { input, size }),
      });
      const what = `${run.args.join(' ') || 'default flags'} (backend ${r.state.backend})`;
      assert.equal(r.state.error, null, what);
      assert.deepEqual(r.consoleErrors, [], what);
      assert.ok(r.state.frames >= 3 && r.state.fps > 0, what);
      if (run.backend) assert.equal(r.state.backend, run.backend);
      assert.deepEqual(r.extra!.shape, [1, 5, 5, 14]);
      assert.equal(r.extra!.values.length, expected.length);
      const worst = Math.max(...expected.map((v, i) => Math.abs(v - r.extra!.values[i]!)));
      assert.ok(worst < 1e-4, `${what}: browser and Node outputs differ by up to ${worst}`);
      t.diagnostic(`${what}: largest difference from Node ${worst.toExponential(2)}`);
    }
  } finally {
    await s.close();
  }
});
