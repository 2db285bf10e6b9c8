// A static file server for the demo page and the browser tests: www/ at /,
// the built package (pkg/) at /pkg/. It answers Range requests (the library
// reads model files by range) and serves .wasm as application/wasm.
// Usage: node www/serve.mjs [port]   (default 8080; 0 picks a free port)
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const defaultRoots = [["/pkg/", path.join(here, "..", "pkg")], ["/", here]];
const types = {
  ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript",
  ".wasm": "application/wasm", ".json": "application/json", ".css": "text/css",
  ".jsonl": "text/plain; charset=utf-8", ".safetensors": "application/octet-stream", ".ts": "text/plain",
};

function resolve(roots, urlPath) {
  for (const [prefix, dir] of roots) {
    if (urlPath.startsWith(prefix)) {
      const file = path.normalize(path.join(dir, decodeURIComponent(urlPath.slice(prefix.length))));
      if (!file.startsWith(dir)) return null;
      return file;
    }
  }
  return null;
}

/** Serves `roots` ([url prefix, folder] pairs, first match wins) on 127.0.0.1:port. */
// The page may talk to its own origin only; the worker (where the library
// fetches model files) also to the one model origin the user chose, passed as
// worker.js?connect=<origin> (Hugging Face's CDN hosts come with huggingface.co).
const PAGE_CSP = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; connect-src 'self'; " +
  "img-src 'self' data: blob:; style-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
function workerCsp(url) {
  let extra = "";
  const asked = url.searchParams.get("connect");
  if (asked) {
    try {
      const o = new URL(asked);
      if (o.protocol === "https:" || o.protocol === "http:") {
        extra = " " + o.origin;
        if (o.hostname === "huggingface.co" || o.hostname.endsWith(".huggingface.co")) {
          extra += " https://*.huggingface.co https://*.hf.co";
        }
      }
    } catch { /* not a URL: nothing extra */ }
  }
  return `default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; connect-src 'self'${extra}`;
}

export function serve(port = 8080, roots = defaultRoots) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://localhost");
    let file = resolve(roots, url.pathname);
    if (file && fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
    if (!file || !fs.existsSync(file)) {
      res.writeHead(404, { "Content-Type": "text/plain" });
      res.end("not found");
      return;
    }
    const size = fs.statSync(file).size;
    const headers = {
      "Content-Type": types[path.extname(file)] ?? "application/octet-stream",
      "Accept-Ranges": "bytes",
      "Cache-Control": "no-cache",
      "X-Content-Type-Options": "nosniff",
    };
    if (file.endsWith(".html")) headers["Content-Security-Policy"] = PAGE_CSP;
    if (path.basename(file) === "worker.js") headers["Content-Security-Policy"] = workerCsp(url);
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
    if (range) {
      const start = Number(range[1]);
      const end = range[2] === "" ? size - 1 : Math.min(Number(range[2]), size - 1);
      if (start >= size || end < start) {
        res.writeHead(416, { "Content-Range": `bytes */${size}` });
        res.end();
        return;
      }
      res.writeHead(206, { ...headers, "Content-Range": `bytes ${start}-${end}/${size}`, "Content-Length": end - start + 1 });
      fs.createReadStream(file, { start, end }).pipe(res);
      return;
    }
    res.writeHead(200, { ...headers, "Content-Length": size });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((ok) => server.listen(port, "127.0.0.1", () => ok(server)));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const server = await serve(Number(process.argv[2] ?? 8080));
  console.log(`webpeft demo: http://127.0.0.1:${server.address().port}/`);
}
