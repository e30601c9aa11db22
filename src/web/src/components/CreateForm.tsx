import { useState, type FormEvent, type ReactNode } from 'react';
import type { CreateMicroVMRequestT } from '../../../core/schema';
import { MvmApiError, type Api, type MicroVM } from '../api';
import { parseLabels, validateCreate, type FieldErrors } from '../validate';
import { ProblemAlert } from './common';

function Field(props: { id: string; label: string; error?: string | undefined; hint?: string; children: ReactNode }) {
  return (
    <div className={`field${props.error ? ' invalid' : ''}`}>
      <label htmlFor={props.id}>{props.label}</label>
      {props.children}
      {props.hint && (
        <span className="hint" id={`${props.id}-hint`}>
          {props.hint}
        </span>
      )}
      {props.error && (
        <span className="field-error" id={`${props.id}-error`} role="status">
          {props.error}
        </span>
      )}
    </div>
  );
}

const describedBy = (id: string, hint: boolean, err?: string) => [hint ? `${id}-hint` : '', err ? `${id}-error` : ''].filter(Boolean).join(' ') || undefined;

export function CreateForm({ api, onCreated }: { api: Api; onCreated: (vm: MicroVM) => void }) {
  const [name, setName] = useState('');
  const [vcpu, setVcpu] = useState('1');
  const [memory, setMemory] = useState('128Mi');
  const [kernelImage, setKernelImage] = useState('');
  const [cmdline, setCmdline] = useState('');
  const [rootfsImage, setRootfsImage] = useState('');
  const [rootfsSize, setRootfsSize] = useState('');
  const [readOnly, setReadOnly] = useState(false);
  const [labels, setLabels] = useState('');
  const [start, setStart] = useState(true);
  const [errors, setErrors] = useState<FieldErrors>({});
  const [problem, setProblem] = useState<unknown>();
  const [busy, setBusy] = useState(false);

  const body = (): { req: CreateMicroVMRequestT; labelError?: string } => {
    const l = parseLabels(labels);
    const req: CreateMicroVMRequestT = {
      name: name.trim(),
      vcpu: /^\d+$/.test(vcpu.trim()) ? Number(vcpu) : (vcpu as unknown as number),
      memory: memory.trim(),
      start,
    };
    if (kernelImage.trim() || cmdline.trim()) req.kernel = { ...(kernelImage.trim() ? { image: kernelImage.trim() } : {}), ...(cmdline.trim() ? { cmdline: cmdline.trim() } : {}) };
    if (rootfsImage.trim() || rootfsSize.trim() || readOnly)
      req.rootfs = { ...(rootfsImage.trim() ? { image: rootfsImage.trim() } : {}), ...(rootfsSize.trim() ? { size: rootfsSize.trim() } : {}), ...(readOnly ? { readOnly } : {}) };
    if (Object.keys(l.labels).length) req.labels = l.labels;
    return { req, ...(l.error ? { labelError: l.error } : {}) };
  };

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setProblem(undefined);
    const { req, labelError } = body();
    const errs = validateCreate(req);
    if (labelError) errs.labels = labelError;
    setErrors(errs);
    if (Object.keys(errs).length) {
      const first = document.getElementById(`c-${Object.keys(errs)[0]!.split(/[.[]/)[0]}`);
      first?.focus();
      return;
    }
    setBusy(true);
    try {
      const vm = await api.microvms.create(req);
      onCreated(vm);
    } catch (err) {
      setProblem(err);
      if (err instanceof MvmApiError && err.violations.length) {
        const fe: FieldErrors = {};
        for (const v of err.violations) fe[v.field.split(/[.[]/)[0]!] ??= v.message;
        setErrors(fe);
      }
    } finally {
      setBusy(false);
    }
  };

  const err = (f: string) => errors[f] ?? Object.entries(errors).find(([k]) => k.startsWith(`${f}.`))?.[1];

  return (
    <section aria-labelledby="create-title">
      <div className="section-head">
        <h1 id="create-title">Create a microVM</h1>
        <a href="#/">Back to the list</a>
      </div>
      <form className="create" onSubmit={submit} noValidate>
        <fieldset>
          <legend>Machine</legend>
          <Field id="c-name" label="Name" error={err('name')} hint="DNS label: lowercase letters, digits, '-'; unique in your tenant">
            <input id="c-name" value={name} onChange={(e) => setName(e.target.value)} required maxLength={63} aria-invalid={!!err('name')} aria-describedby={describedBy('c-name', true, err('name'))} />
          </Field>
          <Field id="c-vcpu" label="vCPUs" error={err('vcpu')} hint="1 to 8">
            <input id="c-vcpu" type="number" inputMode="numeric" min={1} max={8} value={vcpu} onChange={(e) => setVcpu(e.target.value)} aria-invalid={!!err('vcpu')} aria-describedby={describedBy('c-vcpu', true, err('vcpu'))} />
          </Field>
          <Field id="c-memory" label="Memory" error={err('memory')} hint="128Mi to 8Gi, e.g. 256Mi or 1Gi">
            <input id="c-memory" value={memory} onChange={(e) => setMemory(e.target.value)} aria-invalid={!!err('memory')} aria-describedby={describedBy('c-memory', true, err('memory'))} />
          </Field>
        </fieldset>
        <fieldset>
          <legend>Boot</legend>
          <Field id="c-kernel" label="Kernel image" error={err('kernel')} hint="Empty: the built-in kernel">
            <input id="c-kernel" value={kernelImage} onChange={(e) => setKernelImage(e.target.value)} aria-invalid={!!err('kernel')} aria-describedby={describedBy('c-kernel', true, err('kernel'))} />
          </Field>
          <Field id="c-cmdline" label="Extra kernel command line" error={err('kernel.cmdline')}>
            <input id="c-cmdline" value={cmdline} onChange={(e) => setCmdline(e.target.value)} aria-invalid={!!err('kernel.cmdline')} />
          </Field>
          <Field id="c-rootfs" label="Root filesystem image" error={err('rootfs')} hint="Empty: the built-in image">
            <input id="c-rootfs" value={rootfsImage} onChange={(e) => setRootfsImage(e.target.value)} aria-invalid={!!err('rootfs')} aria-describedby={describedBy('c-rootfs', true, err('rootfs'))} />
          </Field>
          <Field id="c-rootfs-size" label="Root disk size" error={errors['rootfs.size']} hint="Optional, e.g. 1Gi">
            <input id="c-rootfs-size" value={rootfsSize} onChange={(e) => setRootfsSize(e.target.value)} aria-invalid={!!errors['rootfs.size']} aria-describedby={describedBy('c-rootfs-size', true, errors['rootfs.size'])} />
          </Field>
          <div className="check">
            <input id="c-readonly" type="checkbox" checked={readOnly} onChange={(e) => setReadOnly(e.target.checked)} />
            <label htmlFor="c-readonly">Attach the root image read-only</label>
          </div>
        </fieldset>
        <fieldset>
          <legend>Options</legend>
          <Field id="c-labels" label="Labels" error={err('labels')} hint="key=value, separated by commas or new lines">
            <textarea id="c-labels" rows={2} value={labels} onChange={(e) => setLabels(e.target.value)} aria-invalid={!!err('labels')} aria-describedby={describedBy('c-labels', true, err('labels'))} />
          </Field>
          <div className="check">
            <input id="c-start" type="checkbox" checked={start} onChange={(e) => setStart(e.target.checked)} />
            <label htmlFor="c-start">Start it now</label>
          </div>
        </fieldset>
        <ProblemAlert error={problem} />
        <div className="actions">
          <button type="submit" className="primary" disabled={busy}>
            {busy ? 'Creating…' : 'Create'}
          </button>
          <a href="#/">Cancel</a>
        </div>
      </form>
    </section>
  );
}
