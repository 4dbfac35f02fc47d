import { defineConfig, type Plugin } from 'vite';
import { brotliCompressSync, constants } from 'node:zlib';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

// Brotli copies (`name.br`) of the text files, at the best quality: the node embeds them next
// to the gzip copies its build makes and serves brotli to browsers that accept it (all current
// ones over HTTPS), about a sixth smaller than gzip for the scripts.
function brotli(): Plugin {
  return {
    name: 'cairn-brotli',
    apply: 'build',
    writeBundle(out, bundle) {
      const dir = out.dir ?? 'dist';
      for (const name of Object.keys(bundle)) {
        if (!/\.(js|css|html|json|svg)$/.test(name)) continue;
        const file = join(dir, name);
        const raw = readFileSync(file);
        if (raw.length <= 256) continue;
        const br = brotliCompressSync(raw, {
          params: {
            [constants.BROTLI_PARAM_MODE]: constants.BROTLI_MODE_TEXT,
            [constants.BROTLI_PARAM_QUALITY]: constants.BROTLI_MAX_QUALITY,
            [constants.BROTLI_PARAM_SIZE_HINT]: raw.length,
          },
        });
        writeFileSync(`${file}.br`, br);
      }
    },
  };
}

// Static build embedded into the cairn binary: hashed file names under assets/, no source maps.
export default defineConfig({
  plugins: [brotli()],
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
