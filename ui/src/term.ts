// Loaded on demand when a console opens: xterm.js and its stylesheet in their own chunk.
import '@xterm/xterm/css/xterm.css';
export { Terminal } from '@xterm/xterm';
