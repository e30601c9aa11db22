/** `mvm image ls|rm|gc` (admins): this node's image cache. */
import type { Command } from 'commander';
import { age, bytes, renderTable, serialize } from '../format.js';
import { parseIntArg, UsageError } from '../parse.js';
import { child, group, printList, removeCommand, type CommandGroupDeps } from './common.js';

export function registerImageCommands(deps: CommandGroupDeps): void {
  const { contextOf } = deps;
  const images = group(deps, 'image', "manage this node's image cache (admins)", ['mvm image ls', 'mvm image rm sha256:0123…', 'mvm image gc --max-idle 7d --max-bytes 10737418240']).alias('images');
  child(images, 'list', 'list cached root filesystems and kernels')
    .alias('ls')
    .action(async (_opts: unknown, command: Command) => {
      const ctx = contextOf(command);
      const items = await ctx.client.images.list();
      printList(
        ctx,
        items,
        undefined,
        'cached images',
        ['KIND', 'DIGEST', 'REFERENCES', 'SIZE', 'IN USE', 'LAST USED'],
        (image) => [image.kind, image.digest, image.references.join(',') || '-', bytes(image.sizeBytes), String(image.inUse), age(image.lastUsedAt)],
        (image) => image.digest,
      );
    });
  removeCommand(deps, images, 'rm <digest>', 'delete a cached image (refused while a microVM uses it)', 'image', (client, digest) => client.images.delete(digest), (digest) => `image ${digest} deleted\n`);
  child(images, 'gc', 'garbage-collect unused cached images now')
    .option('--max-idle <duration>', 'remove unused images idle longer, e.g. 10m, 7d (default: the node policy)')
    .option('--max-bytes <n>', 'then remove least recently used unused images until the cache fits')
    .action(async (opts: { maxIdle?: string; maxBytes?: string }, command: Command) => {
      if (opts.maxIdle !== undefined && !/^[0-9]+(ms|s|m|h|d)$/.test(opts.maxIdle)) throw new UsageError(`invalid --max-idle ${JSON.stringify(opts.maxIdle)} (expected e.g. 10m, 12h, 7d)`);
      const request = { ...(opts.maxIdle !== undefined ? { maxIdle: opts.maxIdle } : {}), ...(opts.maxBytes !== undefined ? { maxBytes: parseIntArg(opts.maxBytes, '--max-bytes', 0) } : {}) };
      const ctx = contextOf(command);
      const result = await ctx.client.images.gc(request);
      if (ctx.output !== 'table') ctx.io.stdout.write(serialize(result, ctx.output));
      else if (ctx.quiet) for (const removed of result.removed) ctx.io.stdout.write(`${removed.digest}\n`);
      else {
        ctx.io.stdout.write(`removed ${result.removed.length} image(s), freed ${bytes(result.freedBytes)}; kept ${result.keptInUse} in use; cache now ${bytes(result.remainingBytes)}\n`);
        if (result.removed.length) ctx.io.stdout.write(renderTable(['KIND', 'DIGEST', 'SIZE'], result.removed.map((removed) => [removed.kind, removed.digest, bytes(removed.sizeBytes)])));
      }
    });
}
