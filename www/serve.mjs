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
    };
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
