// A real OpenID Connect provider (panva/oidc-provider) for pgward's integration tests; loopback only.
// usage: node server.js CONFIG_FILE
// CONFIG_FILE (JSON): {"port", "issuer", "keys_file", "audience", "access_token_ttl",
//   "clients": [{client_id, client_secret?, grant_types, redirect_uris?, groups?, username?}],
//   "accounts": {ID: {"username", "groups"}}}
// The config file is re-read for every claim lookup, so a test changes a user's groups by
// rewriting it; keys_file (a private JWKS) is read only at start, so rotating keys means a restart.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const configFile = process.argv[2];
const load = () => JSON.parse(readFileSync(configFile, 'utf8'));
const initial = load();
const keys = JSON.parse(readFileSync(initial.keys_file, 'utf8'));
const ttl = initial.access_token_ttl ?? 3600;
const RESOURCE_SCOPE = 'pgward';

function clientMetadata(c) {
  const meta = {
    client_id: c.client_id,
    grant_types: c.grant_types,
    redirect_uris: c.redirect_uris ?? [],
    response_types: (c.grant_types ?? []).includes('authorization_code') ? ['code'] : [],
    token_endpoint_auth_method: c.client_secret ? 'client_secret_basic' : 'none',
  };
  if (c.client_secret) meta.client_secret = c.client_secret;
  if (!c.client_secret) meta.application_type = 'native';
  return meta;
}

function accountClaims(id) {
  const account = load().accounts[id];
  if (!account) return undefined;
  return { preferred_username: account.username ?? id, groups: account.groups ?? [] };
}

function clientClaims(clientId) {
  const client = load().clients.find((c) => c.client_id === clientId);
  if (!client) return {};
  const claims = {};
  if (client.groups) claims.groups = client.groups;
  if (client.username) claims.preferred_username = client.username;
  return claims;
}

const provider = new Provider(initial.issuer, {
  clients: initial.clients.map(clientMetadata),
  jwks: keys,
  scopes: ['openid', 'offline_access', 'profile', 'groups', RESOURCE_SCOPE],
  claims: { openid: ['sub'], profile: ['preferred_username'], groups: ['groups'] },
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => initial.resource ?? 'urn:pgward:gateway',
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: RESOURCE_SCOPE,
        audience: initial.audience,
        accessTokenTTL: ttl,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: keys.keys[0].alg ?? 'RS256' } },
      }),
    },
  },
  pkce: { required: () => true },
  ttl: { AccessToken: ttl, ClientCredentials: ttl, DeviceCode: 600, IdToken: ttl, RefreshToken: 86400, Grant: 86400, Session: 86400, Interaction: 600 },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  async findAccount(ctx, id) {
    if (!accountClaims(id)) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...accountClaims(id) }) };
  },
  async extraTokenClaims(ctx, token) {
    if (token.accountId) return accountClaims(token.accountId) ?? {};
    return clientClaims(token.clientId);
  },
});

// One line per JWKS request: the tests count them to prove pgward never fetches per connection.
provider.use(async (ctx, next) => {
  if (ctx.path === '/jwks') console.log(`JWKS_REQUEST ${new Date().toISOString()}`);
  await next();
});

const server = provider.listen(initial.port, '127.0.0.1', () => {
  console.log(`READY ${initial.issuer}`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
