// Load one of the UI's pure TypeScript modules (no imports of its own) in node: transpiled in
// memory with the project's own `typescript`, so the unit tests need no extra framework.
import { readFileSync, mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import ts from 'typescript';

export async function loadTs(rel) {
  const src = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', rel), 'utf8');
  const js = ts.transpileModule(src, { compilerOptions: { module: ts.ModuleKind.ES2022, target: ts.ScriptTarget.ES2022 } }).outputText;
  const dir = mkdtempSync(join(tmpdir(), 'cairn-ui-test-'));
  try {
    writeFileSync(join(dir, 'mod.mjs'), js);
    return await import(pathToFileURL(join(dir, 'mod.mjs')).href);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
