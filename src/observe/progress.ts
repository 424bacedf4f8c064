import { formatBytes } from './log.js';

/**
 * A one-line progress display on a terminal (bytes, rate, elapsed), redrawn at most twice a
 * second. Does nothing when stderr is not a TTY.
 */
export class Progress {
  private bytes = 0;
  private readonly started = Date.now();
  private timer: NodeJS.Timeout | undefined;
  constructor(
    private readonly label: string,
    private readonly enabled: boolean,
    private readonly write: (s: string) => void = (s) => process.stderr.write(s),
  ) {
    if (enabled) {
      this.timer = setInterval(() => this.draw(), 500);
      this.timer.unref();
    }
  }
  update(bytes: number): void {
    this.bytes = bytes;
  }
  private draw(): void {
    const secs = (Date.now() - this.started) / 1000;
    const rate = secs > 0 ? this.bytes / secs : 0;
    this.write(`\r\x1b[2K${this.label} ${formatBytes(this.bytes)}  ${formatBytes(rate)}/s  ${secs.toFixed(0)}s`);
  }
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.enabled) this.write('\r\x1b[2K');
  }
}
