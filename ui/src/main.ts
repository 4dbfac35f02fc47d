// Cairn web UI: log in, then one view per area, chosen by the URL hash (#/vdisks, ...).
import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { api, setCsrf, setOnUnauthorized } from './api';
import { html } from './ui';
import { Login } from './views/login';
import { Dashboard } from './views/dashboard';
import { Disks } from './views/disks';
import { Cluster } from './views/cluster';
import { Vdisks } from './views/vdisks';
import { Vms } from './views/vms';
import { Tasks } from './views/tasks';
import { SystemLog } from './views/syslog';
import { Users } from './views/users';
import { Settings } from './views/settings';
import './style.css';

const VIEWS: [string, string][] = [
  ['dashboard', 'Dashboard'],
  ['disks', 'Nodes & disks'],
  ['cluster', 'Cluster'],
  ['vdisks', 'Virtual disks'],
  ['vms', 'VMs'],
  ['tasks', 'Tasks & audit'],
  ['log', 'System log'],
  ['users', 'Users & tokens'],
  ['settings', 'Settings'],
];

function currentView(): string {
  const v = location.hash.replace(/^#\/?/, '');
  return VIEWS.some(([k]) => k === v) ? v : 'dashboard';
}

function App() {
  const [me, setMe] = useState<any | null | undefined>(undefined);
  const [view, setView] = useState(currentView());
  const [menu, setMenu] = useState(false);
  useEffect(() => {
    setOnUnauthorized(() => setMe(null));
    api('GET', '/auth/me')
      .then((m) => {
        setCsrf(m.csrf_token ?? null);
        setMe(m);
      })
      .catch(() => setMe(null));
    const onHash = () => {
      setView(currentView());
      setMenu(false);
    };
    window.addEventListener('hashchange', onHash);
    return () => window.removeEventListener('hashchange', onHash);
  }, []);
  useEffect(() => {
    const label = VIEWS.find(([k]) => k === view)?.[1] ?? '';
    document.title = `${label} · Cairn`;
  }, [view]);
  if (me === undefined) return html`<p class="loading">Loading…</p>`;
  if (me === null) return html`<${Login} onLogin=${(m: any) => setMe(m)} />`;
  const logout = async () => {
    try {
      await api('POST', '/auth/logout', {});
    } finally {
      setCsrf(null);
      setMe(null);
    }
  };
  let body;
  switch (view) {
    case 'disks': body = html`<${Disks} role=${me.role} />`; break;
    case 'cluster': body = html`<${Cluster} role=${me.role} />`; break;
    case 'vdisks': body = html`<${Vdisks} role=${me.role} />`; break;
    case 'vms': body = html`<${Vms} role=${me.role} />`; break;
    case 'tasks': body = html`<${Tasks} />`; break;
    case 'log': body = html`<${SystemLog} />`; break;
    case 'users': body = html`<${Users} me=${me} />`; break;
    case 'settings': body = html`<${Settings} role=${me.role} />`; break;
    default: body = html`<${Dashboard} />`;
  }
  return html`<div class="shell">
    <a class="skip" href="#main">Skip to content</a>
    <header>
      <span class="brand">Cairn</span>
      <button class="menu-toggle" aria-expanded=${menu} aria-controls="nav" onClick=${() => setMenu(!menu)}>Menu</button>
      <nav id="nav" class=${menu ? 'open' : ''} aria-label="main">
        ${VIEWS.map(([k, label]) => html`<a href=${'#/' + k} aria-current=${view === k ? 'page' : undefined}>${label}</a>`)}
      </nav>
      <span class="who">${me.user} (${me.role.replace('_', '-')})</span>
      <button onClick=${logout}>Log out</button>
    </header>
    <main id="main" tabindex="-1">${body}</main>
  </div>`;
}

render(html`<${App} />`, document.getElementById('app')!);
