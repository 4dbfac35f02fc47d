import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, explain } from '../api';
import { html, ErrorBox } from '../ui';

// Placeholder until the node has VM endpoints: asks for /vms and says so when there are none.
export function Vms() {
  const [state, setState] = useState<{ items: any[] | null; error: string | null }>({ items: null, error: null });
  useEffect(() => {
    api<any>('GET', '/vms')
      .then((d) => setState({ items: d.items ?? [], error: null }))
      .catch((e) => setState({ items: [], error: e instanceof ApiError && e.status === 404 ? null : explain(e) }));
  }, []);
  return html`<section aria-labelledby="vms-h">
    <h2 id="vms-h">Virtual machines</h2>
    <${ErrorBox} error=${state.error} />
    ${state.items && state.items.length === 0 ? html`<p class="empty">No VMs yet.</p>` : null}
    ${state.items && state.items.length > 0 ? html`<ul>${state.items.map((v) => html`<li>${v.name}</li>`)}</ul>` : null}
  </section>`;
}
