// A real OpenID Connect provider for s3gate's tests: oauth2-mock-server's
// issuer and request handler (discovery, JWKS, token endpoint, tokens
// signed with jose) on 127.0.0.1, plus a small control API for the tests.
//
//   node tests/idp/server.js --ready-file FILE [--port N] [--keys-file FILE]
//                            [--tls-cert PEM --tls-key PEM]
//
// Once listening it writes {"issuer": "http://127.0.0.1:PORT", "port": PORT,
// "addr": "127.0.0.1:PORT"} (https with --tls-cert)
// to the ready file (atomically) and prints "ready <issuer>".
//
// Control API (JSON, under /_control/, never part of what s3gate reads):
//   POST   /_control/token   {claims, drop, kid, expires_in, header} -> {token}
//          claims are merged into the payload the library builds (iss, iat,
//          exp, nbf); drop removes claims; kid picks the signing key; header
//          fields are merged into the JOSE header (alg stays the key's).
//   POST   /_control/keys    {alg, kid} -> the new public JWK
//   DELETE /_control/keys/KID            -> {keys: [remaining kids]}
//   GET    /_control/stats               -> {hits: {path: count}}
//
// With --keys-file the private keys are kept in that file, so a restart on
// the same --port serves the same keys (an IdP that went away and came back).

import { createServer } from "node:http";
import { createServer as createTlsServer } from "node:https";
import { readFileSync, renameSync, writeFileSync, existsSync } from "node:fs";
import { parseArgs } from "node:util";
import { OAuth2Issuer, OAuth2Service } from "oauth2-mock-server";

const { values: args } = parseArgs({
  options: {
    "ready-file": { type: "string" },
    "keys-file": { type: "string" },
    port: { type: "string", default: "0" },
    "tls-cert": { type: "string" },
    "tls-key": { type: "string" },
  },
});

let issuerUrl;
let issuer;
let service;
const hits = {};

// A fresh issuer holding `privateKeys` (JWKs with their private parts):
// oauth2-mock-server's key store cannot remove a key, so removal builds a
// new issuer and service with the keys that remain.
async function install(privateKeys) {
  const next = new OAuth2Issuer();
  next.url = issuerUrl;
  for (const jwk of privateKeys) {
    await next.keys.add(jwk);
  }
  issuer = next;
  service = new OAuth2Service(next);
  save();
}

function save() {
  if (args["keys-file"]) {
    const tmp = `${args["keys-file"]}.tmp`;
    writeFileSync(tmp, JSON.stringify(issuer.keys.toJSON(true)));
    renameSync(tmp, args["keys-file"]);
  }
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8");
      try {
        resolve(text ? JSON.parse(text) : {});
      } catch (e) {
        reject(e);
      }
    });
    req.on("error", reject);
  });
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json" });
  res.end(text);
}

async function control(req, res, path) {
  if (req.method === "POST" && path === "/_control/token") {
    const body = await readBody(req);
    const token = await issuer.buildToken({
      kid: body.kid,
      expiresIn: body.expires_in,
      scopesOrTransform: (header, payload) => {
        Object.assign(header, body.header ?? {});
        Object.assign(payload, body.claims ?? {});
        for (const name of body.drop ?? []) delete payload[name];
      },
    });
    return reply(res, 200, { token });
  }
  if (req.method === "POST" && path === "/_control/keys") {
    const body = await readBody(req);
    await issuer.keys.generate(body.alg ?? "RS256", { kid: body.kid });
    save();
    const jwk = issuer.keys.toJSON().find((k) => k.kid === body.kid);
    return reply(res, 200, jwk ?? {});
  }
  if (req.method === "DELETE" && path.startsWith("/_control/keys/")) {
    const kid = decodeURIComponent(path.slice("/_control/keys/".length));
    const remaining = issuer.keys.toJSON(true).filter((k) => k.kid !== kid);
    await install(remaining);
    return reply(res, 200, { keys: remaining.map((k) => k.kid) });
  }
  if (req.method === "GET" && path === "/_control/stats") {
    return reply(res, 200, { hits });
  }
  return reply(res, 404, { error: "no such control endpoint" });
}

const tls = args["tls-cert"]
  ? { cert: readFileSync(args["tls-cert"]), key: readFileSync(args["tls-key"]) }
  : null;

const handler = (req, res) => {
  const path = new URL(req.url, "http://x").pathname;
  if (path.startsWith("/_control/")) {
    control(req, res, path).catch((e) => reply(res, 400, { error: String(e) }));
    return;
  }
  hits[path] = (hits[path] ?? 0) + 1;
  service.requestHandler(req, res);
};
const server = tls ? createTlsServer(tls, handler) : createServer(handler);

server.listen(Number(args.port), "127.0.0.1", async () => {
  const { port } = server.address();
  issuerUrl = `${tls ? "https" : "http"}://127.0.0.1:${port}`;
  const keysFile = args["keys-file"];
  if (keysFile && existsSync(keysFile)) {
    await install(JSON.parse(readFileSync(keysFile, "utf8")));
  } else {
    await install([]);
    await issuer.keys.generate("RS256", { kid: "k1" });
    save();
  }
  const ready = JSON.stringify({ issuer: issuerUrl, port, addr: `127.0.0.1:${port}` });
  if (args["ready-file"]) {
    const tmp = `${args["ready-file"]}.tmp`;
    writeFileSync(tmp, ready);
    renameSync(tmp, args["ready-file"]);
  }
  console.log(`ready ${issuerUrl}`);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
