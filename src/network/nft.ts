/** Applies compiled rulesets: one `nft -f -` run is one kernel transaction (all or nothing). */
import { ErrorCodes, MvmError } from '../core/errors.js';
import { run } from './exec.js';

export class NftApplier {
  constructor(private readonly o: { netns?: string; nft?: string } = {}) {}

  private get bin(): string {
    return this.o.nft ?? 'nft';
  }

  private opts(input?: string): { netns?: string; input?: string; timeoutMs: number } {
    return { ...(this.o.netns ? { netns: this.o.netns } : {}), ...(input !== undefined ? { input } : {}), timeoutMs: 30_000 };
  }

  /** Apply atomically; on error the kernel keeps the previous ruleset. */
  async apply(text: string): Promise<void> {
    const r = await run(this.bin, ['-f', '-'], this.opts(text));
    if (r.code !== 0) {
      throw new MvmError(ErrorCodes.INTERNAL, `nft transaction rejected: ${r.stderr.trim().split('\n').slice(0, 6).join(' | ')}`, {
        details: { stderr: r.stderr.trim() },
      });
    }
  }

  /** Parse-and-evaluate only (`nft -c`), nothing changes. */
  async check(text: string): Promise<void> {
    const r = await run(this.bin, ['-c', '-f', '-'], this.opts(text));
    if (r.code !== 0) throw new MvmError(ErrorCodes.INTERNAL, `nft check failed: ${r.stderr.trim()}`, { details: { stderr: r.stderr.trim() } });
  }

  /** `nft list table <family> <name>` text, or '' when the table does not exist. */
  async listTable(family: 'inet' | 'bridge' | 'ip', name: string): Promise<string> {
    const r = await run(this.bin, ['list', 'table', family, name], this.opts());
    return r.code === 0 ? r.stdout : '';
  }
}
