// Save and load tfjs LayersModels as model.json + weights.bin (the standard tfjs format a
// browser loads with tf.loadLayersModel('…/model.json')), without tfjs-node's file:// handler,
// which the wasm backend does not have.
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type * as TF from '@tensorflow/tfjs';

type Tf = typeof import('@tensorflow/tfjs');

export async function saveModel(tf: Tf, model: TF.LayersModel, dir: string, userDefinedMetadata?: Record<string, unknown>): Promise<void> {
  await fs.mkdir(dir, { recursive: true });
  await model.save(
    tf.io.withSaveHandler(async (artifacts) => {
      const weights = artifacts.weightData instanceof ArrayBuffer ? new Uint8Array(artifacts.weightData) : concatBuffers(artifacts.weightData as ArrayBuffer[]);
      const modelJson = {
        format: 'layers-model',
        generatedBy: `TensorFlow.js tfjs-layers v${tf.version_layers}`,
        convertedBy: null,
        modelTopology: artifacts.modelTopology,
        weightsManifest: [{ paths: ['weights.bin'], weights: artifacts.weightSpecs }],
        ...(userDefinedMetadata ? { userDefinedMetadata } : {}),
      };
      await fs.writeFile(join(dir, 'model.json'), JSON.stringify(modelJson));
      await fs.writeFile(join(dir, 'weights.bin'), weights);
      return { modelArtifactsInfo: { dateSaved: new Date(0), modelTopologyType: 'JSON', weightDataBytes: weights.byteLength } };
    }),
  );
}

export async function loadModel(tf: Tf, dir: string): Promise<TF.LayersModel> {
  let json: { modelTopology: object; weightsManifest: { paths: string[]; weights: TF.io.WeightsManifestEntry[] }[] };
  try {
    json = JSON.parse(await fs.readFile(join(dir, 'model.json'), 'utf8'));
  } catch (err) {
    throw new Error(`cannot read model ${join(dir, 'model.json')}: ${(err as Error).message}`);
  }
  const specs = json.weightsManifest.flatMap((g) => g.weights);
  const buffers = await Promise.all(json.weightsManifest.flatMap((g) => g.paths).map((p) => fs.readFile(join(dir, p))));
  const data = Buffer.concat(buffers);
  return tf.loadLayersModel(
    tf.io.fromMemory({
      modelTopology: json.modelTopology,
      weightSpecs: specs,
      weightData: data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength),
    }),
  );
}

function concatBuffers(parts: ArrayBuffer[]): Uint8Array {
  const total = parts.reduce((n, p) => n + p.byteLength, 0);
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(new Uint8Array(p), o);
    o += p.byteLength;
  }
  return out;
}
