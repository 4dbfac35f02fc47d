import { defineConfig } from 'vite';

// Static build embedded into the cairn binary: hashed file names under assets/, no source maps.
export default defineConfig({
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    sourcemap: false,
    target: 'es2022',
    // xterm.js (the console, ~330 KB, 83 KB gzip) is its own lazily loaded chunk.
    chunkSizeWarningLimit: 400,
  },
  server: {
    proxy: { '/api': { target: 'https://127.0.0.1:8443', secure: false } },
  },
});
