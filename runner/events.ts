// Typed run events. Loggers (progress bars, plain lines, JSON lines) and tests listen;
// a listener cannot change what runs: emit() ignores return values and swallows throws.

export type StageStatus = 'ran' | 'cached' | 'failed' | 'skipped';

export type RunEvent =
  | { type: 'run-start'; experiments: string[]; stages: number }
  | { type: 'stage-start'; experiment: string; stage: string; key: string }
  | { type: 'stage-wait'; experiment: string; stage: string; key: string; holder: string }
  | { type: 'stage-progress'; experiment: string; stage: string; done: number; total?: number; unit?: string }
  | { type: 'stage-log'; experiment: string; stage: string; line: string }
  | {
      type: 'stage-end';
      experiment: string;
      stage: string;
      key: string | null;
      status: StageStatus;
      seconds: number;
      /** Directory holding the stage's outputs (read-only), when it has them. */
      outputs?: string;
      error?: string;
      /** For `cached`: which experiment computed it in this run, if one did. */
      sharedWith?: string;
    }
  | { type: 'run-end'; ran: number; cached: number; failed: number; skipped: number; seconds: number; aborted: boolean };

export type Listener = (e: RunEvent) => void;

export class RunEvents {
  private listeners: Listener[] = [];

  on(listener: Listener): () => void {
    this.listeners.push(listener);
    return () => {
      this.listeners = this.listeners.filter((l) => l !== listener);
    };
  }

  emit(e: RunEvent): void {
    for (const l of this.listeners) {
      try {
        l(e);
      } catch {
        // a broken display must never stop or steer a run
      }
    }
  }
}
