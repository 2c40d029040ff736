// `pipe serve`: a small static server (node:http, no framework) for the browser page in web/
// that runs a cached grid model on the webcam stream. It serves a fixed list of paths only:
// the page, its script, the two dependency-free decoding modules compiled into dist/, the
// local tfjs bundle, the model files and the layout. Anything else is 404, so no request can
// reach another file (no path is ever joined from the URL).
import { createReadStream, existsSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Store } from '../artifacts/store.js';
import type { Experiment } from '../runner/config.js';
import type { GridLayout } from '../stages/lib/grid-layout.js';
import { UsageError } from './errors.js';
import { findGridModel } from './model-artifact.js';

/** Root of the pipe package (this file runs as dist/cli/serve.js). */
const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const JS = 'text/javascript; charset=utf-8';

interface Route {
  type: string;
  /** A file on disk, streamed per request (a rerun model is picked up by a reload)… */
  file?: string;
  /** …or a body held in memory. */
  body?: string;
}

export interface ServeOptions {
  modelDir: string;
  layout: GridLayout;
  /** Default 127.0.0.1: the page is for this machine unless asked otherwise. */
  host?: string;
  /** Default 8080; 0 picks any free port. */
  port?: number;
  /** Where web/ and dist/ are (default: this package). */
  root?: string;
}

export interface RunningServer {
  server: Server;
  url: string;
  host: string;
  port: number;
  /** The paths served, for tests and the startup message. */
  paths: string[];
  close(): Promise<void>;
}

/** The fixed table of served paths → files; every file is checked to exist before listening. */
export function serveRoutes(o: { modelDir: string; layout: GridLayout; root?: string }): Map<string, Route> {
  const root = o.root ?? packageRoot;
  let tfBundle: string;
  try {
    tfBundle = createRequire(join(root, 'package.json')).resolve('@tensorflow/tfjs/dist/tf.min.js');
  } catch {
    tfBundle = join(root, 'node_modules/@tensorflow/tfjs/dist/tf.min.js');
  }
  const routes = new Map<string, Route>([
    ['/', { type: 'text/html; charset=utf-8', file: join(root, 'web/index.html') }],
    ['/app.js', { type: JS, file: join(root, 'web/app.js') }],
    ['/lib/grid-layout.js', { type: JS, file: join(root, 'dist/stages/lib/grid-layout.js') }],
    ['/lib/boxes.js', { type: JS, file: join(root, 'dist/stages/lib/boxes.js') }],
    ['/tf.min.js', { type: JS, file: tfBundle }],
    ['/model/model.json', { type: 'application/json; charset=utf-8', file: join(o.modelDir, 'model.json') }],
    ['/model/weights.bin', { type: 'application/octet-stream', file: join(o.modelDir, 'weights.bin') }],
    ['/layout.json', { type: 'application/json; charset=utf-8', body: JSON.stringify(o.layout) }],
  ]);
  for (const [path, r] of routes) {
    if (r.file && !existsSync(r.file)) {
      const hint = r.file.includes(`${join('dist', 'stages')}`) ? ' (build it: npx tsc -p tsconfig.json)' : r.file.includes('tf.min.js') ? ' (npm install)' : '';
      throw new UsageError(`pipe serve: ${path} would be served from ${r.file}, which does not exist${hint}`);
    }
  }
  return routes;
}

function handle(routes: Map<string, Route>, req: IncomingMessage, res: ServerResponse): void {
  const send = (code: number, text: string, extra: Record<string, string> = {}) => {
    res.writeHead(code, { 'Content-Type': 'text/plain; charset=utf-8', 'Cache-Control': 'no-store', ...extra });
    res.end(req.method === 'HEAD' ? undefined : `${text}\n`);
  };
  if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'method not allowed', { Allow: 'GET, HEAD' });
  // Only origin-form targets ("/path?query"); "//host/x" must not be read as a host.
  const target = req.url ?? '';
  if (!target.startsWith('/')) return send(400, 'bad request');
  let pathname: string;
  try {
    pathname = new URL(`http://localhost${target}`).pathname;
  } catch {
    return send(400, 'bad request');
  }
  // Exact match against the table: a URL never becomes a file path.
  const route = routes.get(pathname === '/index.html' ? '/' : pathname);
  if (!route) return send(404, 'not found');
  const headers: Record<string, string> = {
    'Content-Type': route.type,
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
  };
  if (route.body !== undefined) {
    res.writeHead(200, { ...headers, 'Content-Length': String(Buffer.byteLength(route.body)) });
    res.end(req.method === 'HEAD' ? undefined : route.body);
    return;
  }
  let size: number;
  try {
    size = statSync(route.file!).size;
  } catch (err) {
    return send(500, `cannot read ${pathname}: ${(err as Error).message}`);
  }
  res.writeHead(200, { ...headers, 'Content-Length': String(size) });
  if (req.method === 'HEAD') return void res.end();
  const stream = createReadStream(route.file!);
  stream.on('error', () => res.destroy());
  stream.pipe(res);
}

export async function startServer(o: ServeOptions): Promise<RunningServer> {
  const routes = serveRoutes(o);
  const host = o.host ?? '127.0.0.1';
  const port = o.port ?? 8080;
  const server = createServer((req, res) => handle(routes, req, res));
  await new Promise<void>((ok, fail) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      fail(err.code === 'EADDRINUSE' ? new UsageError(`pipe serve: port ${port} on ${host} is in use; pick another with --port N (0 = any free port)`) : err);
    });
    server.listen(port, host, () => ok());
  });
  const addr = server.address() as AddressInfo;
  const urlHost = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    server,
    url: `http://${urlHost}:${addr.port}/`,
    host: addr.address,
    port: addr.port,
    paths: [...routes.keys()],
    close: () =>
      new Promise<void>((ok) => {
        server.close(() => ok());
        server.closeAllConnections();
      }),
  };
}

/** The `pipe serve` command: find the cached model, serve until SIGINT/SIGTERM. */
export async function serveCommand(o: {
  /** The experiment file (`--experiment FILE` or the first positional). */
  file: string | undefined;
  /** With a positional file: the experiment of a matrix to serve. */
  name?: string;
  stage?: string;
  port?: string;
  host?: string;
  load: (files: string[]) => Experiment[];
  openStore: () => Promise<Store>;
  projectRoot: string;
  out: (line: string) => void;
}): Promise<number> {
  if (!o.file) throw new UsageError('usage: pipe serve --experiment FILE [--stage NAME] [--port N] [--host H]');
  const port = o.port === undefined ? 8080 : Number(o.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new UsageError(`--port must be an integer from 0 to 65535, got ${o.port}`);
  let experiments = o.load([o.file]);
  if (o.name) {
    experiments = experiments.filter((e) => e.name === o.name);
    if (experiments.length === 0) throw new UsageError(`no experiment named ${o.name} in ${o.file}`);
  }
  const store = await o.openStore();
  const model = await findGridModel(experiments, o.file, store, o.projectRoot, o.stage);
  const running = await startServer({ modelDir: model.modelDir, layout: model.layout, host: o.host, port });
  o.out(`pipe serve: ${model.experiment}/${model.stage} (key ${model.key.slice(0, 12)}, input ${model.layout.inputSize}px, grid ${model.layout.grid}x${model.layout.grid})`);
  o.out(`serving on ${running.url}  (Ctrl-C to stop)`);
  if (!['127.0.0.1', '::1', 'localhost'].includes(running.host)) {
    // Browsers allow the webcam only in a secure context: localhost, or https.
    o.out(`note: bound to ${running.host}; browsers on other machines give a plain-http page no webcam (use an https proxy or an ssh tunnel to localhost)`);
  }
  await new Promise<void>((ok) => {
    const stop = (sig: NodeJS.Signals) => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      o.out(`${sig}: stopping the server`);
      void running.close().then(ok);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  return 0;
}
