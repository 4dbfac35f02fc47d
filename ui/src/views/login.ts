import { useState } from 'preact/hooks';
import { api, explain, setCsrf } from '../api';
import { html, ErrorBox } from '../ui';

export function Login({ onLogin }: { onLogin: (me: any) => void }) {
  const [user, setUser] = useState('admin');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const me = await api('POST', '/auth/login', { user, password });
      setCsrf(me.csrf_token);
      onLogin(me);
    } catch (err) {
      setError(explain(err));
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="login">
    <form onSubmit=${submit} aria-labelledby="login-title">
      <h1 id="login-title">Cairn</h1>
      <p>Log in to manage this node.</p>
      <label for="login-user">User name</label>
      <input id="login-user" name="user" autocomplete="username" value=${user}
        onInput=${(e: any) => setUser(e.currentTarget.value)} required />
      <label for="login-password">Password</label>
      <input id="login-password" name="password" type="password" autocomplete="current-password"
        value=${password} onInput=${(e: any) => setPassword(e.currentTarget.value)} required />
      <${ErrorBox} error=${error} />
      <button type="submit" disabled=${busy}>${busy ? 'Logging in…' : 'Log in'}</button>
    </form>
  </main>`;
}
