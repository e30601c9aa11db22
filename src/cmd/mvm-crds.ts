#!/usr/bin/env node
/** Print the CRDs of cluster mode: `node dist/src/cmd/mvm-crds.js > deploy/crds/microvm.service_crds.yaml`. */
import { crdsYaml } from '../k8s/crd.js';

process.stdout.write(crdsYaml());
