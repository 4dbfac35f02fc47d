import { useState } from 'preact/hooks';
import { api, fmtTime } from '../api';
import { html, ErrorBox, Note, Progress, useAction, useLoad, Field } from '../ui';

const ROLES = [
  ['admin', 'Admin: everything'],
  ['operator', 'Operator: disks, snapshots, VMs'],
  ['read_only', 'Read-only: look, do not touch'],
];

export function Users({ me }: { me: any }) {
  const admin = me.role === 'admin';
  const users = useLoad<any>(admin ? '/users?limit=1000' : null);
  const tokens = useLoad<any>('/tokens?limit=1000');
  const act = useAction(() => {
    users.reload();
    tokens.reload();
  });
  const [nu, setNu] = useState({ name: '', role: 'operator', password: '' });
  const [nt, setNt] = useState({ name: '', role: me.role, days: '90' });
  const [secret, setSecret] = useState<string | null>(null);
  const [pw, setPw] = useState('');
  const createToken = (e: Event) => {
    e.preventDefault();
    act.run(`Create token ${nt.name}`, async () => {
      const t = await api('POST', '/tokens', { name: nt.name, role: nt.role, expires_in_secs: Math.round(Number(nt.days) * 86400) });
      setSecret(t.token);
    });
  };
  return html`<section aria-labelledby="users-h">
    <h2 id="users-h">Users and tokens</h2>
    <${ErrorBox} error=${act.error} />
    <${Note} text=${act.done} />
    <${Progress} running=${act.running} />
    ${admin ? html`
      <h3>Users</h3>
      <${ErrorBox} error=${users.error} />
      <div class="table-wrap"><table>
        <thead><tr><th scope="col">Name</th><th scope="col">Role</th><th scope="col">Created</th><th scope="col">Actions</th></tr></thead>
        <tbody>${(users.data?.items ?? []).map((u: any) => html`<tr>
          <td>${u.name}</td><td>${u.role}</td><td>${fmtTime(u.created_unix)}</td>
          <td>${u.name !== me.user ? html`<button class="danger" onClick=${() => confirm(`Delete user ${u.name}? Their tokens stop working.`) && act.run(`Delete ${u.name}`, () => api('DELETE', `/users/${encodeURIComponent(u.name)}`))}>Delete</button>` : html`<span class="muted">you</span>`}</td>
        </tr>`)}</tbody>
      </table></div>
      <form class="inline" aria-label="add a user" onSubmit=${(e: Event) => { e.preventDefault(); act.run(`Add user ${nu.name}`, () => api('POST', '/users', nu)); }}>
        <${Field} label="User name" id="nu-name"><input id="nu-name" value=${nu.name} onInput=${(e: any) => setNu({ ...nu, name: e.currentTarget.value })} required /></${Field}>
        <${Field} label="Role" id="nu-role"><select id="nu-role" value=${nu.role} onChange=${(e: any) => setNu({ ...nu, role: e.currentTarget.value })}>${ROLES.map(([v, l]) => html`<option value=${v}>${l}</option>`)}</select></${Field}>
        <${Field} label="Password" id="nu-pw" hint="at least 12 characters"><input id="nu-pw" type="password" autocomplete="new-password" value=${nu.password} onInput=${(e: any) => setNu({ ...nu, password: e.currentTarget.value })} required minlength="12" /></${Field}>
        <button type="submit">Add user</button>
      </form>` : null}
    <form class="inline" aria-label="change my password" onSubmit=${(e: Event) => { e.preventDefault(); act.run('Change password', () => api('PATCH', `/users/${encodeURIComponent(me.user)}`, { password: pw })).then(() => setPw('')); }}>
      <${Field} label="New password for you" id="my-pw" hint="at least 12 characters; you will log in again"><input id="my-pw" type="password" autocomplete="new-password" value=${pw} onInput=${(e: any) => setPw(e.currentTarget.value)} required minlength="12" /></${Field}>
      <button type="submit">Change my password</button>
    </form>
    <h3>API tokens</h3>
    <p class="muted">Tokens let scripts and the CLI use the API. A token's secret is shown once.</p>
    ${secret ? html`<div class="secret" role="status"><p>Copy this token now; it will not be shown again:</p><code id="token-secret">${secret}</code> <button onClick=${() => setSecret(null)}>I copied it</button></div>` : null}
    <${ErrorBox} error=${tokens.error} />
    <div class="table-wrap"><table>
      <thead><tr><th scope="col">Name</th><th scope="col">Owner</th><th scope="col">Role</th><th scope="col">Expires</th><th scope="col">State</th><th scope="col">Actions</th></tr></thead>
      <tbody>${(tokens.data?.items ?? []).map((t: any) => html`<tr>
        <td>${t.name}</td><td>${t.owner}</td><td>${t.role}</td><td>${fmtTime(t.expires_unix)}</td><td>${t.revoked ? 'revoked' : t.expires_unix * 1000 < Date.now() ? 'expired' : 'active'}</td>
        <td>${!t.revoked ? html`<button class="danger" onClick=${() => act.run(`Revoke token ${t.name}`, () => api('DELETE', `/tokens/${t.id}`))}>Revoke</button>` : null}</td></tr>`)}</tbody>
    </table></div>
    <form class="inline" aria-label="create a token" onSubmit=${createToken}>
      <${Field} label="Token name" id="nt-name"><input id="nt-name" value=${nt.name} onInput=${(e: any) => setNt({ ...nt, name: e.currentTarget.value })} required /></${Field}>
      <${Field} label="Role" id="nt-role"><select id="nt-role" value=${nt.role} onChange=${(e: any) => setNt({ ...nt, role: e.currentTarget.value })}>${ROLES.map(([v, l]) => html`<option value=${v}>${l}</option>`)}</select></${Field}>
      <${Field} label="Valid for (days)" id="nt-days"><input id="nt-days" type="number" min="1" max="366" value=${nt.days} onInput=${(e: any) => setNt({ ...nt, days: e.currentTarget.value })} required /></${Field}>
      <button type="submit">Create token</button>
    </form>
  </section>`;
}
