import { useState, type FormEvent } from 'react';
import { connect, localProblem } from '../api';
import { ProblemAlert } from './common';

export function SignIn({ onSignedIn }: { onSignedIn: (token: string) => void }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState<unknown>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(undefined);
    if (!token.trim()) {
      setError(localProblem('Token required', 'VALIDATION_FAILED', 'Paste an API token or the admin token.'));
      return;
    }
    setBusy(true);
    try {
      await connect(token.trim()).microvms.list({ limit: 1 });
      onSignedIn(token.trim());
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main id="main" className="signin">
      <h1>MicroVM Service</h1>
      <form onSubmit={submit} aria-describedby="signin-help">
        <label htmlFor="token">API token</label>
        <input
          id="token"
          name="token"
          type="password"
          autoComplete="current-password"
          value={token}
          onChange={(e) => setToken(e.target.value)}
          aria-invalid={error ? true : undefined}
          required
        />
        <p id="signin-help" className="hint">
          On the service's host the admin token is in <code>/var/lib/mvm/admin.token</code>. It is kept in this tab only.
        </p>
        <button type="submit" className="primary" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
      <ProblemAlert error={error} />
    </main>
  );
}
