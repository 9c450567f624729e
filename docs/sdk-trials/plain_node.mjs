// Baseline: Node's built-in fetch, and node:http for the unix socket.
// Run: NODE_EXTRA_CA_CERTS=/work/sdk-trials/gw.crt node plain_node.mjs
import http from 'node:http';

const show = (label, status, body) =>
  console.log(`${label}: HTTP ${status} ErrorCode=${body.ErrorCode} ${JSON.stringify(body).slice(0, 160)}`);

async function viaFetch(base, cmd, body) {
  const r = await fetch(`${base}/v4/${cmd}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return [r.status, await r.json()];
}

// built-in fetch (undici) has no unix-socket option without the undici package: use node:http.
function viaSocket(socketPath, cmd, body) {
  return new Promise((resolve, reject) => {
    const data = JSON.stringify(body);
    const req = http.request(
      { socketPath, path: `/v4/${cmd}`, method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } },
      (res) => {
        let s = '';
        res.on('data', (c) => (s += c));
        res.on('end', () => resolve([res.statusCode, JSON.parse(s)]));
      });
    req.on('error', reject);
    req.end(data);
  });
}

const IMPORT = ['im_open_login_svc/account_import', { UserID: 'node_plain' }];
const CHECK = ['im_open_login_svc/account_check', { CheckItem: [{ UserID: 'node_plain' }] }];
const ROBOTS = ['openim_robot_http_svc/get_all_robots', {}];

for (const [cmd, body] of [IMPORT, CHECK, ROBOTS]) show(`fetch http   ${cmd}`, ...(await viaFetch('http://127.0.0.1:18460', cmd, body)));
for (const [cmd, body] of [CHECK]) show(`fetch https  ${cmd}`, ...(await viaFetch('https://127.0.0.1:18463', cmd, body)));
for (const [cmd, body] of [CHECK, ROBOTS]) show(`http unix    ${cmd}`, ...(await viaSocket('/work/sdk-trials/gw.sock', cmd, body)));
