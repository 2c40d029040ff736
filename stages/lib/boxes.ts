// Box geometry shared by training, evaluation, `pipe detect` and the browser page.
// Boxes are [x1, y1, x2, y2] in pixels. No dependencies: this file is also served to browsers.

export type Box = [number, number, number, number];

export function area(b: Box): number {
  return Math.max(0, b[2] - b[0]) * Math.max(0, b[3] - b[1]);
}

export function iou(a: Box, b: Box): number {
  const ix = Math.max(0, Math.min(a[2], b[2]) - Math.max(a[0], b[0]));
  const iy = Math.max(0, Math.min(a[3], b[3]) - Math.max(a[1], b[1]));
  const inter = ix * iy;
  const union = area(a) + area(b) - inter;
  return union > 0 ? inter / union : 0;
}

/** Greedy non-max suppression: keep the most confident, drop those overlapping it by > threshold. */
export function nms<T extends { box: Box; confidence: number }>(items: T[], threshold: number): T[] {
  const sorted = [...items].sort((a, b) => b.confidence - a.confidence);
  const kept: T[] = [];
  for (const it of sorted) if (kept.every((k) => iou(k.box, it.box) <= threshold)) kept.push(it);
  return kept;
}

/**
 * Match predictions to true boxes greedily by descending confidence: each truth is matched at
 * most once, to the most confident prediction with IoU above `minIou` (the best-overlapping
 * free truth wins). Returns, per truth, the index of its prediction or -1.
 */
export function matchBoxes(preds: { box: Box; confidence: number }[], truths: Box[], minIou: number): { truthToPred: number[]; predToTruth: number[] } {
  const truthToPred = truths.map(() => -1);
  const predToTruth = preds.map(() => -1);
  const order = preds.map((_, i) => i).sort((a, b) => preds[b]!.confidence - preds[a]!.confidence);
  for (const p of order) {
    let best = -1;
    let bestIou = minIou;
    truths.forEach((t, ti) => {
      if (truthToPred[ti] !== -1) return;
      const v = iou(preds[p]!.box, t);
      if (v > bestIou) {
        bestIou = v;
        best = ti;
      }
    });
    if (best >= 0) {
      truthToPred[best] = p;
      predToTruth[p] = best;
    }
  }
  return { truthToPred, predToTruth };
}

/**
 * Average precision at an IoU threshold over a set of images (all-point interpolation, as in
 * PASCAL VOC 2010+): predictions of all images ranked by confidence.
 */
export function averagePrecision(images: { preds: { box: Box; confidence: number }[]; truths: Box[] }[], minIou: number): number {
  const ranked: { confidence: number; tp: boolean }[] = [];
  let totalTruths = 0;
  for (const img of images) {
    totalTruths += img.truths.length;
    const { predToTruth } = matchBoxes(img.preds, img.truths, minIou);
    img.preds.forEach((p, i) => ranked.push({ confidence: p.confidence, tp: predToTruth[i]! >= 0 }));
  }
  if (totalTruths === 0) return 0;
  ranked.sort((a, b) => b.confidence - a.confidence);
  const precision: number[] = [];
  const recall: number[] = [];
  let tp = 0;
  ranked.forEach((r, i) => {
    if (r.tp) tp++;
    precision.push(tp / (i + 1));
    recall.push(tp / totalTruths);
  });
  // Precision envelope, then area under the step curve.
  for (let i = precision.length - 2; i >= 0; i--) precision[i] = Math.max(precision[i]!, precision[i + 1]!);
  let ap = 0;
  let prevRecall = 0;
  for (let i = 0; i < ranked.length; i++) {
    if (recall[i]! > prevRecall) {
      ap += (recall[i]! - prevRecall) * precision[i]!;
      prevRecall = recall[i]!;
    }
  }
  return ap;
}
