// Resource slots that stage types declare (cpu, gpu, memory). A stage waits until all it
// needs is free, so two trainings never fight for one GPU. A request larger than the whole
// pool is clamped to the pool, so it runs alone rather than never.
import { cpus, totalmem } from 'node:os';
import type { StageResources } from './stage-type.js';

export interface Capacity {
  cpu: number;
  gpu: number;
  memoryMb: number;
}

export function defaultCapacity(): Capacity {
  return {
    cpu: cpus().length,
    // One exclusive accelerator slot by default (or what PIPE_GPU_SLOTS says): on a CPU-only
    // machine it still keeps two trainings from splitting the cores between them.
    gpu: Number(process.env.PIPE_GPU_SLOTS ?? 1),
    memoryMb: Math.floor((totalmem() / 2 ** 20) * 0.8),
  };
}

export class ResourcePool {
  private free: Capacity;
  private waiters: { need: Capacity; resolve: () => void }[] = [];

  constructor(readonly capacity: Capacity) {
    this.free = { ...capacity };
  }

  private clamp(r: StageResources): Capacity {
    return {
      cpu: Math.min(r.cpu ?? 1, this.capacity.cpu),
      gpu: Math.min(r.gpu ?? 0, this.capacity.gpu),
      memoryMb: Math.min(r.memoryMb ?? 256, this.capacity.memoryMb),
    };
  }

  private fits(n: Capacity): boolean {
    return n.cpu <= this.free.cpu && n.gpu <= this.free.gpu && n.memoryMb <= this.free.memoryMb;
  }

  async acquire(r: StageResources): Promise<() => void> {
    const need = this.clamp(r);
    if (this.waiters.length === 0 && this.fits(need)) this.take(need, -1);
    else await new Promise<void>((resolve) => this.waiters.push({ need, resolve })); // wake() took it for us
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.take(need, +1);
      this.wake();
    };
  }

  private take(n: Capacity, sign: number): void {
    this.free.cpu += sign * n.cpu;
    this.free.gpu += sign * n.gpu;
    this.free.memoryMb += sign * n.memoryMb;
  }

  private wake(): void {
    // First come, first served, but a smaller later request may pass one that does not fit yet.
    for (let i = 0; i < this.waiters.length; ) {
      const w = this.waiters[i]!;
      if (this.fits(w.need)) {
        this.waiters.splice(i, 1);
        this.take(w.need, -1);
        w.resolve();
      } else i++;
    }
  }
}
