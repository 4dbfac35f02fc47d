import { useState } from 'preact/hooks';
import { api, fmtTime } from '../api';
import { html, ErrorBox, Note, Progress, useAction, useLoad, Field } from '../ui';

export function Settings({ role }: { role: string }) {
  const cert = useLoad<any>('/certificate');
  const act = useAction(() => cert.reload());
  const [pem, setPem] = useState({ cert_pem: '', key_pem: '' });
  const c = cert.data;
  return html`<section aria-labelledby="set-h">
    <h2 id="set-h">Settings</h2>
    <h3>TLS certificate</h3>
    <${ErrorBox} error=${cert.error || act.error} />
    <${Note} text=${act.done} />
    <${Progress} running=${act.running} />
    ${c ? html`<dl class="facts">
      <dt>Subject</dt><dd>${c.subject}</dd>
      <dt>Issuer</dt><dd>${c.issuer}${c.self_signed ? ' (self-signed)' : ''}</dd>
      <dt>Names</dt><dd>${c.names.join(', ')}</dd>
      <dt>Valid</dt><dd>${fmtTime(c.not_before_unix)} to ${fmtTime(c.not_after_unix)}</dd>
      <dt>SHA-256</dt><dd class="mono">${c.sha256_fingerprint}</dd>
      ${c.key_sha256 ? html`<dt>Key SHA-256</dt><dd class="mono" title="Stays the same when the node re-issues its own certificate for a new address">${c.key_sha256}</dd>` : null}
    </dl>` : null}
    ${role === 'admin' ? html`<form aria-label="replace the certificate" onSubmit=${(e: Event) => { e.preventDefault(); act.run('Replace certificate', () => api('PUT', '/certificate', pem)); }}>
      <p class="muted">Paste a PEM certificate chain and its private key. They are checked first; a bad pair is refused and the current certificate stays.</p>
      <${Field} label="Certificate chain (PEM)" id="cert-pem"><textarea id="cert-pem" rows="6" value=${pem.cert_pem} onInput=${(e: any) => setPem({ ...pem, cert_pem: e.currentTarget.value })} required></textarea></${Field}>
      <${Field} label="Private key (PEM)" id="key-pem"><textarea id="key-pem" rows="6" value=${pem.key_pem} onInput=${(e: any) => setPem({ ...pem, key_pem: e.currentTarget.value })} required></textarea></${Field}>
      <button type="submit">Upload certificate</button>
    </form>` : null}
  </section>`;
}
