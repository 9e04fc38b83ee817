#!/bin/sh
# Once, after the 3 members are up: a root user, and a gitedge user that may read
# and write /gitedge/ (and the ref logs under /gitedge.refs/) only; then auth on.
# docs/etcd.md has why. Run with the operator's client certificate.
set -eu
E="etcdctl --endpoints=https://etcd-1.internal:2379,https://etcd-2.internal:2379,https://etcd-3.internal:2379 --cacert=/etc/etcd/tls/ca.pem --cert=/etc/etcd/tls/operator.pem --key=/etc/etcd/tls/operator-key.pem"
$E user add root --new-user-password="$(cat /etc/etcd/root-password)"
$E user grant-role root root
$E role add gitedge
$E role grant-permission gitedge --prefix=true readwrite /gitedge/
$E role grant-permission gitedge --prefix=true readwrite /gitedge.refs/
$E user add gitedge --new-user-password="$(cat /etc/gitedge/etcd/password)"
$E user grant-role gitedge gitedge
$E auth enable
