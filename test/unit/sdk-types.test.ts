/**
 * The SDKs' types are generated from the OpenAPI document the API serves (scripts/gen-sdk-types.mjs):
 * sdk/typescript/src/openapi.ts and sdk/python/src/mvm_sdk/models.py. A fresh generation must equal
 * the committed files, so neither SDK drifts from src/core/schema.ts and the routes.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO } from '../support/service.js';

test('the SDK types are up to date with the OpenAPI document', () => {
  const r = spawnSync(process.execPath, [join(REPO, 'scripts/gen-sdk-types.mjs'), '--check'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}\n(run make sdk-types and commit sdk/typescript/src/openapi.ts and sdk/python/src/mvm_sdk/models.py)`);
});
