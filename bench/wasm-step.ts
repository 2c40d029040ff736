// ms per training step of a 5-block conv net (16,32,64,128,256 filters,
// 3x3 SAME conv + bias + relu + 2x2 max-pool each, then dense softmax) with
// Adam, batch 8, on the backend chosen by initBackend (wasm here).
//
//   npx tsc -p tsconfig.json && node dist/bench/wasm-step.js [sizes=64,256] [steps=5] [--profile]
//
// --profile also prints the kernels that took the most time in one step.

import { initBackend } from '../stages/lib/tf-backend.js';

type Tf = Awaited<ReturnType<typeof initBackend>>['tf'];
type Tensor4D = import('@tensorflow/tfjs').Tensor4D;

const FILTERS = [16, 32, 64, 128, 256];
const BATCH = 8;
const CLASSES = 10;

function buildNet(tf: Tf, size: number) {
  const vars: import('@tensorflow/tfjs').Variable[] = [];
  let cin = 3;
  let s = size;
  const convs: { w: import('@tensorflow/tfjs').Variable; b: import('@tensorflow/tfjs').Variable }[] = [];
  for (const f of FILTERS) {
    const w = tf.variable(tf.randomNormal([3, 3, cin, f], 0, Math.sqrt(2 / (9 * cin)), 'float32', 1 + f));
    const b = tf.variable(tf.zeros([f]));
    convs.push({ w, b });
    vars.push(w, b);
    cin = f;
    s = Math.ceil(s / 2);
  }
  const flat = s * s * cin;
  const dw = tf.variable(tf.randomNormal([flat, CLASSES], 0, Math.sqrt(1 / flat), 'float32', 7));
  const db = tf.variable(tf.zeros([CLASSES]));
  vars.push(dw, db);
  const loss = (x: import('@tensorflow/tfjs').Tensor4D, labels: import('@tensorflow/tfjs').Tensor2D) => {
    let h = x;
    for (const { w, b } of convs) {
      const z = tf.relu(tf.add(tf.conv2d(h, w as Tensor4D, 1, 'same'), b)) as Tensor4D;
      h = tf.maxPool(z, 2, 2, 'same');
    }
    const logits = tf.add(tf.matMul(tf.reshape(h, [BATCH, flat]), dw as import('@tensorflow/tfjs').Tensor2D), db);
    return tf.losses.softmaxCrossEntropy(labels, logits) as import('@tensorflow/tfjs').Scalar;
  };
  return { vars, loss };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const profile = args.includes('--profile');
  const pos = args.filter((a) => !a.startsWith('--'));
  const sizes = (pos[0] ?? '64,256').split(',').map(Number);
  const steps = Number(pos[1] ?? 5);
  const { tf, info } = await initBackend('auto');
  console.log(`backend ${info.name} ${info.version} threads=${info.threads} simd=${info.simd}`);
  for (const size of sizes) {
    const net = buildNet(tf, size);
    const opt = tf.train.adam(1e-3);
    const x = tf.randomUniform([BATCH, size, size, 3], 0, 1, 'float32', 3) as import('@tensorflow/tfjs').Tensor4D;
    const labels = tf.oneHot(tf.tensor1d([0, 1, 2, 3, 4, 5, 6, 7], 'int32'), CLASSES).toFloat() as import('@tensorflow/tfjs').Tensor2D;
    const step = () => {
      const l = opt.minimize(() => net.loss(x, labels), true, net.vars);
      const v = l!.dataSync()[0]!;
      l!.dispose();
      return v;
    };
    const t0 = performance.now();
    step(); // warm-up: creates XNNPACK operators and Adam slots
    const warm = performance.now() - t0;
    const before = tf.memory().numTensors;
    const times: number[] = [];
    let loss = 0;
    for (let i = 0; i < steps; i++) {
      const t = performance.now();
      loss = step();
      times.push(performance.now() - t);
    }
    const leaked = tf.memory().numTensors - before;
    times.sort((a, b) => a - b);
    const median = times[Math.floor(times.length / 2)]!;
    console.log(`${size}x${size} batch ${BATCH}: median ${median.toFixed(0)} ms/step ` +
      `(min ${times[0]!.toFixed(0)}, max ${times[times.length - 1]!.toFixed(0)}, first step ${warm.toFixed(0)} ms, ` +
      `${steps} steps, loss ${loss.toFixed(4)}, tensors leaked/step ${leaked / steps})`);
    if (profile) {
      const p = await tf.profile(() => { step(); });
      const byKernel = new Map<string, number>();
      for (const k of p.kernels) byKernel.set(k.name, (byKernel.get(k.name) ?? 0) + (k.kernelTimeMs as number));
      const top = [...byKernel.entries()].sort((a, b) => b[1] - a[1]).slice(0, 12);
      console.log('  top kernels: ' + top.map(([n, ms]) => `${n} ${ms.toFixed(0)}`).join(', '));
    }
    opt.dispose();
    tf.dispose([x, labels, ...net.vars]);
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
