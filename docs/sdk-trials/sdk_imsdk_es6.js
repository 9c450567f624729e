// imsdk-restapi-nodejs-es6-sdk 1.0.1 (npm) through tim-gateway.
//
// The SDK hard-codes `https://console.tim.qq.com` (lib/TIMRestAPI.js) and posts with axios 0.16.2.
// It signs with Tencent's *old* ECDSA scheme (privateKeyPath, accountType) and sends no `random`.
// Through the gateway none of that matters: the gateway drops the whole query string and signs itself.
//
// Modes:
//   hosts        SDK untouched; /etc/hosts maps console.tim.qq.com -> 127.0.0.1; gateway TLS on :443
//                with allowed_hosts = ["console.tim.qq.com"]; NODE_EXTRA_CA_CERTS=/work/sdk-trials/gw.crt
//   interceptor  an axios request interceptor rewrites the URL to the plain-HTTP listener
//   direct       control: the SDK's own UserSig straight to the sandbox (HTTPS 9443), no gateway
//
// Run (from /work/sdk-trials/npm/proj):
//   NODE_EXTRA_CA_CERTS=/work/sdk-trials/gw.crt node sdk_imsdk_es6.js hosts
//   node sdk_imsdk_es6.js interceptor
//   NODE_EXTRA_CA_CERTS=/work/sdk-trials/ca.pem node sdk_imsdk_es6.js direct
const TIMRestAPI = require('imsdk-restapi-nodejs-es6-sdk');
// the SDK's own axios instance (nested under the SDK's node_modules)
const axios = require(require.resolve('axios', { paths: [require.resolve('imsdk-restapi-nodejs-es6-sdk')] }));

const mode = process.argv[2] || 'hosts';

if (mode === 'interceptor') {
  axios.interceptors.request.use((config) => {
    config.url = config.url.replace('https://console.tim.qq.com', 'http://127.0.0.1:18460');
    return config;
  });
}
if (mode === 'direct') {
  axios.interceptors.request.use((config) => {
    config.url = config.url.replace('https://console.tim.qq.com', 'https://127.0.0.1:9443');
    return config;
  });
}

const api = new TIMRestAPI({
  sdkAppid: 1400000000,
  identifier: 'administrator',
  accountType: '0',                                  // legacy field, meaningless to the gateway
  privateKeyPath: '/work/sdk-trials/npm/dummy_ec_key.pem', // a throw-away key made with openssl
  expireAfter: 3600,
});
api.init();

(async () => {
  const user = `imsdkes6_${mode}`;
  const calls = [
    ['im_open_login_svc', 'account_import', { UserID: user, Nick: 'es6' }],
    ['im_open_login_svc', 'account_check', { CheckItem: [{ UserID: user }] }],
    ['openim_robot_http_svc', 'get_all_robots', {}],
  ];
  for (const [svc, cmd, body] of calls) {
    try {
      const r = await api.request(svc, cmd, body);
      console.log(`[${mode}] ${svc}/${cmd}: HTTP ${r.status} ${JSON.stringify(r.data)}`);
    } catch (e) {
      console.log(`[${mode}] ${svc}/${cmd}: failed ${e.code || ''} ${e.message} ${e.response ? JSON.stringify(e.response.data) : ''}`);
    }
  }
})();
