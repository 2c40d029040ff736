// Three listeners for run events: JSON lines (--json), plain lines (CI, pipes) and live
// progress bars (TTY). They only consume events; none of them can change what runs.
import cliProgress from 'cli-progress';
import type { RunEvent, RunEvents } from '../runner/events.js';

type Out = (line: string) => void;

export function jsonReporter(events: RunEvents, out: Out): void {
  events.on((e) => {
    if (e.type === 'stage-end') {
      out(
        JSON.stringify({
          type: 'stage',
          experiment: e.experiment,
          stage: e.stage,
          key: e.key,
          status: e.status,
          seconds: round(e.seconds),
          outputs: e.outputs ?? null,
          ...(e.error ? { error: e.error } : {}),
          ...(e.sharedWith ? { shared_with: e.sharedWith } : {}),
        }),
      );
    } else if (e.type === 'run-end') {
      out(JSON.stringify({ type: 'summary', ran: e.ran, cached: e.cached, failed: e.failed, skipped: e.skipped, seconds: round(e.seconds), aborted: e.aborted }));
    }
  });
}

const name = (e: { experiment: string; stage: string }) => `${e.experiment}/${e.stage}`;

/** The last lines each stage logged, shown when it fails (without --verbose). */
class LogTails {
  private tails = new Map<string, string[]>();

  add(stage: string, line: string): void {
    const t = this.tails.get(stage) ?? [];
    t.push(line);
    if (t.length > 15) t.shift();
    this.tails.set(stage, t);
  }

  failure(stage: string, error: string | undefined, verbose: boolean): string[] {
    const lines = [`        error: ${error}`];
    const tail = this.tails.get(stage);
    if (tail?.length && !verbose) lines.push(`        last log lines:\n          ${tail.join('\n          ')}`);
    return lines;
  }
}

export function plainReporter(events: RunEvents, out: Out, opts: { verbose: boolean }): void {
  const lastProgress = new Map<string, number>();
  const logTails = new LogTails();
  events.on((e: RunEvent) => {
    switch (e.type) {
      case 'stage-start':
        out(`start   ${name(e)}  ${e.key.slice(0, 12)}`);
        break;
      case 'stage-wait':
        out(`wait    ${name(e)}  another pipe (${e.holder}) is computing it`);
        break;
      case 'stage-progress': {
        // Plain output is read by people scrolling CI logs: one progress line per 10 s is plenty.
        const now = Date.now();
        if (now - (lastProgress.get(name(e)) ?? 0) < 10_000 && e.done !== e.total) break;
        lastProgress.set(name(e), now);
        out(`        ${name(e)}  ${e.done}${e.total ? `/${e.total}` : ''} ${e.unit ?? ''}`.trimEnd());
        break;
      }
      case 'stage-log':
        if (opts.verbose) out(`  ${name(e)} | ${e.line}`);
        logTails.add(name(e), e.line);
        break;
      case 'stage-end': {
        const label = e.status.padEnd(7);
        const extra = e.status === 'cached' && e.sharedWith ? `  (computed by ${e.sharedWith})` : '';
        out(`${label} ${name(e)}  ${round(e.seconds)}s${extra}`);
        if (e.status === 'failed') for (const l of logTails.failure(name(e), e.error, opts.verbose)) out(l);
        else if (e.status === 'skipped' && e.error) out(`        ${e.error}`);
        break;
      }
      case 'run-end':
        out(`${e.aborted ? 'aborted: ' : ''}${e.ran} ran, ${e.cached} cached, ${e.failed} failed, ${e.skipped} skipped in ${round(e.seconds)}s`);
        break;
    }
  });
}

export function ttyReporter(events: RunEvents, stream: NodeJS.WriteStream, opts: { verbose: boolean }): void {
  const multi = new cliProgress.MultiBar(
    {
      stream,
      clearOnComplete: true,
      hideCursor: true,
      autopadding: true,
      format: ' {bar} {percentage}% | {name} | {value}/{total} {unit}',
      barsize: 24,
      etaBuffer: 20,
    },
    cliProgress.Presets.shades_classic,
  );
  let overall: cliProgress.SingleBar | undefined;
  let done = 0;
  const bars = new Map<string, cliProgress.SingleBar>();
  const logTails = new LogTails();
  const println = (line: string) => multi.log(`${line}\n`);
  events.on((e: RunEvent) => {
    switch (e.type) {
      case 'run-start':
        overall = multi.create(e.stages, 0, { name: 'all stages', unit: 'stages' });
        break;
      case 'stage-start':
        bars.set(name(e), multi.create(1, 0, { name: name(e), unit: '' }));
        break;
      case 'stage-wait':
        println(`wait    ${name(e)}: another pipe (${e.holder}) is computing it`);
        break;
      case 'stage-progress': {
        const bar = bars.get(name(e));
        if (!bar) break;
        if (e.total) bar.setTotal(e.total);
        bar.update(e.done, { unit: e.unit ?? '' });
        break;
      }
      case 'stage-log':
        if (opts.verbose) println(`  ${name(e)} | ${e.line}`);
        logTails.add(name(e), e.line);
        break;
      case 'stage-end': {
        const bar = bars.get(name(e));
        if (bar) {
          multi.remove(bar);
          bars.delete(name(e));
        }
        overall?.update(++done);
        if (e.status === 'ran' || e.status === 'failed' || e.status === 'skipped') {
          println(`${e.status.padEnd(7)} ${name(e)}  ${round(e.seconds)}s`);
        }
        if (e.status === 'failed') for (const l of logTails.failure(name(e), e.error, opts.verbose)) println(l);
        break;
      }
      case 'run-end':
        multi.stop();
        stream.write(`${e.aborted ? 'aborted: ' : ''}${e.ran} ran, ${e.cached} cached, ${e.failed} failed, ${e.skipped} skipped in ${round(e.seconds)}s\n`);
        break;
    }
  });
}

function round(s: number): number {
  return Math.round(s * 1000) / 1000;
}
