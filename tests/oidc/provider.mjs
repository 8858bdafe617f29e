// A real OpenID provider (npm `oidc-provider`, pinned in package.json) for the test suite.
//
//   node tests/oidc/provider.mjs CONFIG.json
//
// CONFIG.json (written by tests/realparts/oidc.py):
//   {
//     "host": "127.0.0.1", "port": 12345,
//     "issuer": "http://127.0.0.1:12345",          // used verbatim (no slash is added/removed)
//     "audience": "http://127.0.0.1/lrs-gateway",  // the one resource server (the gateway)
//     "scopes": ["lrs:all", ...],                  // scopes the resource server accepts
//     "access_token_ttl": 300,                     // default access-token lifetime, seconds
//     "clients": [{
//       "client_id": "lms-a", "client_secret": "...",
//       "token_endpoint_auth_method": "client_secret_basic",  // or client_secret_post
//       "access_token_ttl": 300,                   // optional, overrides the default
//       "alg": "RS256",                            // optional: RS256 | PS256 | ES256 | EdDSA
//       "scopes": null                             // optional subset of "scopes" (null: all)
//     }],
//     "public_clients": [{                          // optional: Authorization Code + PKCE
//       "client_id": "admin-ui",
//       "redirect_uris": ["http://127.0.0.1/admin/callback"],  // loopback: any port matches
//       "scopes": null                             // resource scopes it may get (null: all)
//     }],
//     "accounts": {"alice": {"groups": ["lrs-admins"]}}  // optional: extra ID token claims
//   }
//
// Public clients are native-type (RFC 8252: a loopback redirect URI matches on any port),
// with no secret and PKCE (S256) required; people sign in on the provider's own
// development login page (any login name is an account, the password is not checked)
// and consent on its page, then the ID token carries `sub` = the login name plus the
// account's claims from "accounts" (released by the `groups` scope), and the access token
// is a JWT for `audience` with the granted resource scopes.
//
// The client_credentials grant serves the confidential clients. Resource indicators are on and every token
// request resolves to `audience` (the default resource when the request names none; any
// other `resource` is refused with invalid_target), so access tokens are JWTs
// (`typ: at+jwt`) with iss = issuer, aud = audience, sub = client_id = the client id and
// `scope` = the granted scopes (space separated; requested scopes outside the client's
// allowed set are dropped, not refused). Signing keys (RSA 2048, EC P-256, Ed25519) are
// generated at every start, with fresh random `kid`s. Logs go to stdout/stderr.

import { randomBytes, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import process from 'node:process';

import Provider, { errors } from 'oidc-provider';

const ALGS = new Set(['RS256', 'PS256', 'ES256', 'EdDSA']);

function log(message) {
  process.stdout.write(`${new Date().toISOString()} oidc: ${message}\n`);
}

function fail(message) {
  process.stderr.write(`oidc: error: ${message}\n`);
  process.exit(2);
}

function loadConfig(path) {
  let config;
  try {
    config = JSON.parse(readFileSync(path, 'utf8'));
  } catch (error) {
    fail(`cannot read config ${path}: ${error.message}`);
  }
  for (const key of ['host', 'port', 'issuer', 'audience', 'scopes', 'clients']) {
    if (config[key] === undefined) fail(`config ${path} lacks "${key}"`);
  }
  const scopes = new Set(config.scopes);
  for (const client of config.clients) {
    if (!client.client_id || !client.client_secret) fail('every client needs client_id and client_secret');
    if (client.alg !== undefined && client.alg !== null && !ALGS.has(client.alg)) {
      fail(`client ${client.client_id}: alg ${client.alg} is not one of ${[...ALGS].join(', ')}`);
    }
    for (const scope of client.scopes ?? []) {
      if (!scopes.has(scope)) fail(`client ${client.client_id}: scope ${scope} is not in "scopes"`);
    }
  }
  for (const client of config.public_clients ?? []) {
    if (!client.client_id || !Array.isArray(client.redirect_uris) || !client.redirect_uris.length) {
      fail('every public client needs client_id and redirect_uris');
    }
    for (const scope of client.scopes ?? []) {
      if (!scopes.has(scope)) fail(`client ${client.client_id}: scope ${scope} is not in "scopes"`);
    }
  }
  return config;
}

function signingKeys() {
  const kid = (kind) => `${kind}-${randomBytes(8).toString('hex')}`;
  const jwk = (type, options) => generateKeyPairSync(type, options).privateKey.export({ format: 'jwk' });
  return [
    { ...jwk('rsa', { modulusLength: 2048 }), kid: kid('rsa'), use: 'sig' },
    { ...jwk('ec', { namedCurve: 'P-256' }), kid: kid('ec'), use: 'sig' },
    { ...jwk('ed25519', {}), kid: kid('ed25519'), use: 'sig' },
  ];
}

const configPath = process.argv[2];
if (!configPath) fail('usage: node provider.mjs CONFIG.json');
const config = loadConfig(configPath);
const defaultTtl = config.access_token_ttl ?? 300;
const publicClients = config.public_clients ?? [];
const clientsById = new Map(
  [...config.clients, ...publicClients].map((client) => [client.client_id, client]),
);
const accounts = config.accounts ?? {};
const keys = signingKeys();

const provider = new Provider(config.issuer, {
  clients: config.clients.map((client) => ({
    client_id: client.client_id,
    client_secret: client.client_secret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: client.token_endpoint_auth_method ?? 'client_secret_basic',
  })).concat(publicClients.map((client) => ({
    client_id: client.client_id,
    application_type: 'native',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: client.redirect_uris,
    token_endpoint_auth_method: 'none',
  }))),
  pkce: { required: () => true },
  // Claims in the ID token from the token endpoint too (not only from userinfo), as the
  // admin-claim check reads them there.
  conformIdTokenClaims: false,
  claims: { openid: ['sub'], groups: ['groups', 'dept'] },
  findAccount: (_ctx, id) => ({
    accountId: id,
    claims: () => ({ ...(accounts[id] ?? {}), sub: id }),
  }),
  jwks: { keys },
  // Listed in discovery's scopes_supported; clients carry no `scope` metadata, so this does
  // not restrict them (the resource server's scope list below does, by dropping).
  scopes: ['openid', 'offline_access', 'groups', ...config.scopes],
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: publicClients.length > 0 },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator, client) => {
        if (resourceIndicator !== config.audience) {
          throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        const settings = clientsById.get(client.clientId) ?? {};
        return {
          scope: (settings.scopes ?? config.scopes).join(' '),
          audience: config.audience,
          accessTokenTTL: settings.access_token_ttl ?? defaultTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: settings.alg ?? 'RS256' } },
        };
      },
    },
  },
  ttl: {
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? defaultTtl,
  },
});

// One line per request (never bodies or headers: they carry client secrets).
provider.use(async (ctx, next) => {
  const started = Date.now();
  await next();
  log(`${ctx.method} ${ctx.path} ${ctx.status} ${Date.now() - started}ms`);
});
provider.on('authorization.success', (ctx) => {
  log(`authorization.success client=${ctx.oidc.client?.clientId} account=${ctx.oidc.session?.accountId}`);
});
provider.on('authorization.error', (ctx, error) => {
  log(`authorization.error client=${ctx.oidc?.client?.clientId} ${error.error ?? error.name}: ${error.error_description ?? error.message}`);
});
provider.on('grant.success', (ctx) => {
  log(`grant.success client=${ctx.oidc.client?.clientId} scope=${JSON.stringify(ctx.body?.scope ?? '')}`);
});
provider.on('grant.error', (ctx, error) => {
  log(`grant.error client=${ctx.oidc?.client?.clientId} ${error.error ?? error.name}: ${error.error_description ?? error.message}`);
});
for (const event of ['server_error', 'discovery.error', 'jwks.error', 'introspection.error']) {
  provider.on(event, (_ctx, error) => log(`${event}: ${error.stack ?? error}`));
}

const server = createServer(provider.callback());
server.on('error', (error) => fail(`cannot listen on ${config.host}:${config.port}: ${error.message}`));
server.listen(config.port, config.host, () => {
  const kids = keys.map((key) => key.kid).join(', ');
  log(`oidc-provider listening on http://${config.host}:${config.port}, issuer ${provider.issuer}, kids ${kids}`);
});

function shutdown(signal) {
  log(`${signal}: stopping`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
