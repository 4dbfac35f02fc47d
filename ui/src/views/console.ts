// The VM serial console: xterm.js over the node's WebSocket (/api/v1/vms/NAME/console/ws).
// xterm is loaded only when a console opens, so the first page load stays small. Binary frames
// are console bytes; text frames are JSON notes from the node (hello, error, closed).
import { useEffect, useRef, useState } from 'preact/hooks';
import { html, ErrorBox } from '../ui';

type Status = 'connecting' | 'live' | 'closed';

export function Console({ vm, node, onClose }: { vm: string; node?: string | null; onClose: () => void }) {
  const box = useRef<HTMLDivElement>(null);
  const [status, setStatus] = useState<Status>('connecting');
  const [canType, setCanType] = useState(false);
  const [error, setError] = useState<string | null>(null);
  useEffect(() => {
    let ws: WebSocket | null = null;
    let term: any = null;
    let fit: (() => void) | null = null;
    let gone = false;
    (async () => {
      const { Terminal } = await import('../term');
      if (gone || !box.current) return;
      term = new Terminal({ convertEol: true, scrollback: 5000, fontSize: 14, disableStdin: true, screenReaderMode: false, rows: 24 });
      term.open(box.current);
      // Fit the column count to the box width (phones get fewer columns).
      fit = () => {
        const w = box.current?.clientWidth ?? 0;
        const cell = 8.5; // px per column of a 14px monospace font
        const cols = Math.max(20, Math.floor((w - 16) / cell));
        if (cols !== term.cols) term.resize(cols, 24);
      };
      fit();
      window.addEventListener('resize', fit);
      const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
      ws = new WebSocket(`${proto}//${location.host}/api/v1/vms/${encodeURIComponent(vm)}/console/ws`);
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => setStatus('live');
      ws.onmessage = (ev) => {
        if (typeof ev.data === 'string') {
          let m: any = null;
          try {
            m = JSON.parse(ev.data);
          } catch {
            return;
          }
          if (m.type === 'hello') {
            setCanType(!!m.can_type);
            term.options.disableStdin = !m.can_type;
          } else if (m.type === 'error') setError(`The console refused that: ${m.message}.`);
          else if (m.type === 'closed') setError(`The console closed: ${m.message}.`);
          return;
        }
        const bytes = new Uint8Array(ev.data as ArrayBuffer);
        term.write(bytes);
        box.current?.setAttribute('data-bytes', String(Number(box.current.getAttribute('data-bytes') ?? 0) + bytes.length));
      };
      ws.onclose = (ev) => {
        setStatus('closed');
        // Before the upgrade the node answers in JSON, which a browser hides; say what usually causes it.
        if (ev.code === 1006 && !gone) setError((e) => e ?? 'Could not connect to the console. The VM may have been deleted or your session may have ended; reload the page.');
      };
      term.onData((d: string) => {
        if (ws && ws.readyState === WebSocket.OPEN) ws.send(new TextEncoder().encode(d));
      });
    })().catch((e) => setError(`The console could not load: ${e}.`));
    return () => {
      gone = true;
      if (fit) window.removeEventListener('resize', fit);
      ws?.close();
      term?.dispose();
    };
  }, [vm]);
  const where = node ? ` (runs on member ${node}, through this node)` : '';
  const label = { connecting: 'connecting…', live: (canType ? 'live — click in the console to type' : 'live — watching only (your role cannot type)') + where, closed: 'disconnected' }[status];
  return html`<section class="console" aria-labelledby="con-h">
    <div class="console-head">
      <h3 id="con-h">Console of ${vm}</h3>
      <span class=${'muted console-status ' + status} role="status">${label}</span>
      <button type="button" onClick=${onClose}>Close console</button>
    </div>
    <${ErrorBox} error=${error} />
    <div class="term" ref=${box} role="group" aria-label=${`serial console of ${vm}`} data-bytes="0"></div>
  </section>`;
}
