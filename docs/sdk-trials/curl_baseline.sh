#!/bin/sh
# Baseline: curl through each listener of the trial gateways.
set -x
curl -s http://127.0.0.1:18460/v4/im_open_login_svc/account_import -d '{"UserID":"curl_user"}'; echo
curl -s http://127.0.0.1:18460/v4/openim_robot_http_svc/get_all_robots -d '{}'; echo
curl -s --unix-socket /work/sdk-trials/gw.sock http://localhost/v4/im_open_login_svc/account_check -d '{"CheckItem":[{"UserID":"curl_user"}]}'; echo
curl -s --cacert /work/sdk-trials/gw.crt https://127.0.0.1:18463/v4/im_open_login_svc/account_check -d '{"CheckItem":[{"UserID":"curl_user"}]}'; echo
curl -s --cacert /work/sdk-trials/gw.crt --resolve console.tim.qq.com:443:127.0.0.1 https://console.tim.qq.com/v4/im_open_login_svc/account_check -d '{"CheckItem":[{"UserID":"curl_user"}]}'; echo
