/** The command groups of `mvm` beyond the microVM verbs of main.ts, one file each, in help order. */
import type { CommandGroupDeps } from './common.js';
import { registerApiKeyCommands } from './api-key.js';
import { registerAuditCommand } from './audit.js';
import { registerBackupCommands } from './backup.js';
import { registerGuestCommands } from './guest.js';
import { registerImageCommands } from './image.js';
import { registerSecurityGroupCommands } from './security-group.js';
import { registerSnapshotCommands } from './snapshot.js';
import { registerTemplateCommands } from './template.js';
import { registerTenantCommands } from './tenant.js';
import { registerVolumeCommands } from './volume.js';

export type { About, CommandContext, CommandGroupDeps } from './common.js';

export function registerCommandGroups(deps: CommandGroupDeps): void {
  registerGuestCommands(deps);
  registerVolumeCommands(deps);
  registerSnapshotCommands(deps);
  registerTemplateCommands(deps);
  registerSecurityGroupCommands(deps);
  registerTenantCommands(deps);
  registerApiKeyCommands(deps);
  registerAuditCommand(deps);
  registerImageCommands(deps);
  registerBackupCommands(deps);
}
