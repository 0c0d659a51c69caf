// Bundles the web app: src/app.js (+ the CSS it imports) -> <outdir>/app.js and app.css.
// Usage: node build.mjs [outdir]   (default: dist). The output is deterministic, so the
// committed dist/ can be checked against the sources by building into a temporary dir.
import { build } from "esbuild";

const outdir = process.argv[2] || "dist";
await build({
  entryPoints: ["src/app.js"],
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  legalComments: "eof",
  charset: "utf8",
  outdir,
  entryNames: "[name]",
  logLevel: "warning",
});
