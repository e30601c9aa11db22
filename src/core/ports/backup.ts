/**
 * The backup port (ADR 0022): a consistent archive of a standalone service's state taken while it
 * runs — the state database (SQLite online backup), the files of its volumes and of its microVMs'
 * root disks, and its snapshots' metadata (their files too when asked). `mvm restore` reads it
 * back into a fresh data directory.
 */
import type { Readable } from 'node:stream';

export interface BackupOptions {
  /** Also the files of memory snapshots and volume snapshots (default: their metadata only). */
  includeSnapshots?: boolean;
}

export interface BackupArchive {
  /** A tar stream (GNU format, sparse files kept sparse); the staging files go when it ends or fails. */
  stream: Readable;
  filename: string;
  manifest: BackupManifest;
}

export interface BackupFileEntry {
  /** Path inside the archive. */
  path: string;
  bytes: number;
  /** Copied while a running guest was paused (after a guest `sync`), or from a stopped VM's files. */
  consistency: 'quiesced' | 'offline';
  pausedMs?: number;
  guestSynced?: boolean;
}

export interface BackupManifest {
  format: 'mvm-backup';
  formatVersion: 1;
  createdAt: string;
  serviceVersion: string;
  schemaVersion: number;
  /** The data directory the backup was taken from (restores rewrite paths that point into it). */
  sourceDataDir: string;
  node: string;
  includeSnapshots: boolean;
  volumes: Array<{ id: string; name: string; tenant: string; backend: string } & ({ file: BackupFileEntry } | { skipped: string })>;
  rootDisks: Array<{ vmId: string; file: BackupFileEntry }>;
  snapshots: Array<{ id: string; name: string; tenant: string; kind: 'snapshot' | 'volumesnapshot'; files: 'included' | 'metadata' | 'missing' }>;
  durationMs: number;
}

export interface BackupService {
  create(o?: BackupOptions): Promise<BackupArchive>;
}
