// Build the web app into dist/: the pages, and under dist/assets the scripts
// (bundled by esbuild with the centrifuge SDK), styles and icon. The pages
// refer to the assets with ?v=<content hash>, so browsers never mix versions.
//
// Usage: npm run build   (npm ci first). Writes dist.tmp/, then swaps it in.

import { createHash } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, 'src');
const out = join(here, 'dist.tmp');
const assets = join(out, 'assets');
const final = join(here, 'dist');

const PAGES = ['index.html', 'admin.html'];
const COPIED = ['style.css', 'admin.css', 'icon.svg'];

await rm(out, { recursive: true, force: true });
await mkdir(assets, { recursive: true });

await build({
  absWorkingDir: here,
  entryPoints: { app: 'src/app.js', admin: 'src/admin.js' },
  outdir: assets,
  bundle: true,
  format: 'esm',
  splitting: false,
  target: 'es2020',
  minify: true,
  sourcemap: 'linked',
  legalComments: 'linked',
  logLevel: 'warning',
});
for (const name of COPIED) await copyFile(join(src, name), join(assets, name));

const hash = createHash('sha256');
for (const name of (await readdir(assets)).sort()) {
  hash.update(name);
  hash.update(await readFile(join(assets, name)));
}
const version = hash.digest('hex').slice(0, 12);
for (const page of PAGES) {
  const html = await readFile(join(src, page), 'utf8');
  await writeFile(join(out, page), html.replaceAll('__VERSION__', version));
}

await rm(final, { recursive: true, force: true });
await rename(out, final);
console.log(`built ${final} (version ${version})`);
