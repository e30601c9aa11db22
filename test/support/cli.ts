/** Runs the `mvm` CLI (the compiled bin) against a test service, as a user with a throw-away HOME. */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { CLI_BIN, type TestService } from './service.js';

export interface CliResult {
  code: number;
  out: string;
  err: string;
}

/**
 * `mvm(...args)` with `--server` the URL of the service `svc()` returns (asked at each call, since
 * the service starts in `before`), HOME and XDG_CONFIG_HOME under `home`, and MVM_DATA_DIR the
 * service's. No --token: on the service's host the CLI finds the admin token in MVM_DATA_DIR by itself.
 */
export function cliRunner(svc: () => TestService, home: string, timeoutMs = 60_000): (...args: string[]) => CliResult {
  return (...args) => {
    const s = svc();
    const r = spawnSync(process.execPath, [CLI_BIN, '--server', s.url, ...args], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH, HOME: home, XDG_CONFIG_HOME: join(home, '.config'), MVM_DATA_DIR: s.dataDir },
      timeout: timeoutMs,
    });
    return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
  };
}
