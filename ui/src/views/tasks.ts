import { fmtTime } from '../api';
import { html, ErrorBox, useLoad } from '../ui';

export function Tasks() {
  const tasks = useLoad<any>('/tasks?limit=50', 2000);
  const audit = useLoad<any>('/audit?limit=100', 5000);
  const events = useLoad<any>('/events?limit=20', 5000);
  return html`<section aria-labelledby="tasks-h">
    <h2 id="tasks-h">Tasks and audit log</h2>
    <h3>Tasks</h3>
    <${ErrorBox} error=${tasks.error} />
    <div class="table-wrap"><table>
      <thead><tr><th scope="col">#</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">By</th><th scope="col">State</th><th scope="col">Started</th><th scope="col">Result</th></tr></thead>
      <tbody>${(tasks.data?.items ?? []).map((t: any) => html`<tr>
        <td>${t.id}</td><td>${t.action}</td><td>${t.target}</td><td>${t.user}</td>
        <td class=${t.state}>${t.state === 'running' ? html`<span class="spinner" aria-hidden="true"></span> running` : t.state}</td>
        <td>${fmtTime(t.started_unix)}</td><td>${t.error ? t.error.message : ''}</td></tr>`)}</tbody>
    </table></div>
    <h3>Events</h3>
    <ul class="events">${(events.data?.items ?? []).map((e: any) => html`<li class=${e.severity}>${fmtTime(e.time_unix)}: ${e.message}</li>`)}</ul>
    <h3>Audit log</h3>
    <${ErrorBox} error=${audit.error} />
    <div class="table-wrap"><table>
      <thead><tr><th scope="col">When</th><th scope="col">Who</th><th scope="col">Via</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">Result</th></tr></thead>
      <tbody>${(audit.data?.items ?? []).map((e: any) => html`<tr>
        <td>${fmtTime(e.time_unix)}</td><td>${e.user}</td><td>${e.via} ${e.source}</td><td>${e.action}</td><td>${e.target}</td>
        <td class=${e.result === 'ok' ? 'ok' : 'bad'} title=${e.message}>${e.result}</td></tr>`)}</tbody>
    </table></div>
  </section>`;
}
