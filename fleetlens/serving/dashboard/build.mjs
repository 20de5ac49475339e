// Bundles src/ into dist/: one script, one stylesheet (fonts included), index.html.
// Everything the page loads comes from dist/: no CDN at run time.
import { build } from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";

const dist = new URL("./dist/", import.meta.url);
await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await build({
  entryPoints: { app: "src/main.ts", styles: "src/styles.css" },
  outdir: "dist",
  bundle: true,
  minify: true,
  sourcemap: true,
  target: ["es2022"],
  format: "esm",
  loader: { ".woff2": "file", ".woff": "file" },
  assetNames: "assets/[name]-[hash]",
  legalComments: "linked",
  logLevel: "warning",
});
await copyFile(new URL("./src/index.html", import.meta.url), new URL("index.html", dist));
