#!/usr/bin/env node
/**
 * mvm-images: build the default guest images.
 *
 *   node dist/src/cmd/mvm-images.js build [--cache-dir DIR] [--json]
 */
import { buildDefaultImages, defaultCacheDir } from '../storage/default-images.js';

const USAGE = 'usage: mvm-images build [--cache-dir DIR] [--json]';

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === '-h' || cmd === '--help' || cmd === 'help') {
    console.log(USAGE);
    return 0;
  }
  if (cmd !== 'build') {
    console.error(USAGE);
    return 2;
  }
  let cacheDir = defaultCacheDir();
  let json = false;
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i];
    if (a === '--cache-dir' && rest[i + 1]) cacheDir = rest[++i] as string;
    else if (a?.startsWith('--cache-dir=')) cacheDir = a.slice('--cache-dir='.length);
    else if (a === '--json') json = true;
    else {
      console.error(`mvm-images: unknown argument ${a}\n${USAGE}`);
      return 2;
    }
  }
  const started = Date.now();
  const img = await buildDefaultImages({ cacheDir, log: (m) => console.error(`mvm-images: ${m}`) });
  if (json) {
    console.log(JSON.stringify(img, null, 2));
  } else {
    console.log(`kernel:  ${img.kernelPath} (${img.kernelVersion})`);
    console.log(`initrd:  ${img.initrdPath}`);
    console.log(`rootfs:  ${img.rootfsPath} (${img.rootfsDigest})`);
    console.log(`entry:   ${img.dir} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  }
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(`mvm-images: error: ${e instanceof Error ? e.message : String(e)}`);
    process.exit(1);
  },
);
