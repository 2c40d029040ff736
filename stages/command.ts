// Built-in stage type `command`: runs a shell command. It makes `pipe` useful for any
// script (and lets the runner be tested without ML). The command sees:
//   PIPE_OUT      empty directory to write outputs into (metrics.json there becomes the metrics)
//   PIPE_IN       directory with one read-only entry per needed stage, named after it
//   PIPE_PARAMS   path of a JSON file with all of the stage's settings
//   PIPE_PARAM_X  each top-level setting, upper snake case (strings raw, others as JSON)
// Lines printed as `::progress DONE/TOTAL [UNIT]` drive the progress bar.
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import type { StageContext, StageType } from '../runner/stage-type.js';

interface CommandSettings {
  run: string;
  inputs: string[];
  outputs: string[];
  cwd: string;
  shell: string;
  resources?: { cpu?: number; gpu?: number; memory_mb?: number };
  [setting: string]: unknown;
}

const RESERVED = new Set(['run', 'inputs', 'outputs', 'cwd', 'shell', 'resources']);

export function envName(setting: string): string {
  return `PIPE_PARAM_${setting.replace(/([a-z0-9])([A-Z])/g, '$1_$2').replace(/[^A-Za-z0-9]+/g, '_').toUpperCase()}`;
}

async function run(ctx: StageContext<CommandSettings>): Promise<void> {
  const s = ctx.settings;
  const inDir = join(ctx.scratchDir, 'in');
  await fs.mkdir(inDir);
  for (const [name, dir] of Object.entries(ctx.inputs)) await fs.symlink(dir, join(inDir, name));
  const paramsFile = join(ctx.scratchDir, 'params.json');
  const params = Object.fromEntries(Object.entries(s).filter(([k]) => !RESERVED.has(k)));
  await fs.writeFile(paramsFile, JSON.stringify(params, null, 2));
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    PIPE_OUT: ctx.outDir,
    PIPE_IN: inDir,
    PIPE_PARAMS: paramsFile,
    PIPE_EXPERIMENT: ctx.experiment,
    PIPE_STAGE: ctx.stageName,
  };
  for (const [k, v] of Object.entries(params)) env[envName(k)] = typeof v === 'string' ? v : JSON.stringify(v);

  const child = spawn(s.shell, ['-c', s.run], { cwd: s.cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const tail: string[] = [];
  const onLine = (line: string) => {
    const m = /^::progress\s+(\d+(?:\.\d+)?)(?:\/(\d+(?:\.\d+)?))?(?:\s+(\S+))?\s*$/.exec(line);
    if (m) return ctx.progress(Number(m[1]), m[2] ? Number(m[2]) : undefined, m[3]);
    ctx.log(line);
    tail.push(line);
    if (tail.length > 20) tail.shift();
  };
  lines(child.stdout!, onLine);
  lines(child.stderr!, onLine);
  // The command runs in its own process group so that Ctrl-C stops everything it started.
  const kill = () => {
    try {
      process.kill(-child.pid!, 'SIGTERM');
      setTimeout(() => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }, 3000).unref();
    } catch {
      /* already gone */
    }
  };
  ctx.signal.addEventListener('abort', kill, { once: true });
  const code = await new Promise<number | string>((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (c, sig) => {
      // Processes the command left behind (in its group) must not outlive the stage or keep
      // its output pipes open.
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* none left */
      }
      const code = c ?? sig ?? -1;
      if (child.stdout!.readableEnded && child.stderr!.readableEnded) resolve(code);
      else child.on('close', () => resolve(code));
    });
  }).finally(() => ctx.signal.removeEventListener('abort', kill));
  if (code !== 0) {
    throw new Error(`command exited with ${typeof code === 'string' ? `signal ${code}` : `code ${code}`}: ${s.run}${tail.length ? `\n  last output:\n    ${tail.slice(-8).join('\n    ')}` : ''}`);
  }
  const missing = [];
  for (const o of s.outputs) {
    try {
      await fs.access(join(ctx.outDir, o));
    } catch {
      missing.push(o);
    }
  }
  if (missing.length) throw new Error(`declared outputs missing from $PIPE_OUT: ${missing.join(', ')}`);
}

function lines(stream: NodeJS.ReadableStream, onLine: (l: string) => void): void {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      onLine(buf.slice(0, i));
      buf = buf.slice(i + 1);
    }
  });
  stream.on('end', () => {
    if (buf) onLine(buf);
  });
}

export default {
  name: 'command',
  description: 'Run a shell command with declared inputs; outputs go to $PIPE_OUT',
  module: import.meta.url,
  schema: {
    type: 'object',
    required: ['run'],
    additionalProperties: true,
    properties: {
      run: { type: 'string', minLength: 1, description: 'Shell command (run with `shell -c`)' },
      inputs: {
        type: 'array',
        items: { type: 'string' },
        'x-path': true,
        default: [],
        description: 'Files or directories (relative to the YAML file) whose content goes into the cache key',
      },
      outputs: { type: 'array', items: { type: 'string' }, default: [], description: 'Paths the command must create under $PIPE_OUT' },
      cwd: { type: 'string', 'x-path': true, default: '.', description: 'Working directory (relative to the YAML file)' },
      shell: { type: 'string', default: '/bin/sh' },
      resources: {
        type: 'object',
        additionalProperties: false,
        properties: { cpu: { type: 'number', minimum: 0 }, gpu: { type: 'number', minimum: 0 }, memory_mb: { type: 'number', minimum: 0 } },
        description: 'Slots held while running',
      },
    },
  },
  volatileSettings: ['resources'],
  resources: (s) => ({ cpu: s.resources?.cpu ?? 1, gpu: s.resources?.gpu ?? 0, memoryMb: s.resources?.memory_mb ?? 256 }),
  externalInputs: (s) => s.inputs,
  run,
} satisfies StageType<CommandSettings>;
