// Builds the static demo site into client/site/: index.html, demo.css and
// demo.js (the demo with the SDK bundled in). The Worker serves it as static
// assets in local development (wrangler.toml [assets]).
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const site = join(root, "site");

await rm(site, { recursive: true, force: true });
await mkdir(site, { recursive: true });
await build({
  entryPoints: [join(root, "demo", "main.ts")],
  bundle: true,
  format: "esm",
  target: "es2022",
  sourcemap: true,
  minify: true,
  outfile: join(site, "demo.js"),
  logLevel: "warning",
});
await copyFile(join(root, "demo", "index.html"), join(site, "index.html"));
await copyFile(join(root, "demo", "demo.css"), join(site, "demo.css"));
console.log(`demo site built in ${site}`);
