#!/bin/sh
# Writes a P-256 leaf for NAMES, signed by a test CA in CADIR (made on first use), into OUTDIR the
# way a certmesh renewal does: cert.pem, ca.pem, fullchain.pem and key.pem, each by rename.
# usage: mkcert.sh OUTDIR CADIR NAMES...
set -e
out=$1; ca=$2; shift 2
mkdir -p "$out" "$ca"
if [ ! -f "$ca/ca.key" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$ca/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$ca/ca.key" -subj "/CN=test root" -days 30 -out "$ca/ca.pem" 2>/dev/null
fi
san=""
for n in "$@"; do san="${san:+$san,}DNS:$n"; done
tmp=$(mktemp -d)
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/key.pem" 2>/dev/null
openssl req -new -key "$tmp/key.pem" -subj "/CN=$1" -out "$tmp/req.csr" 2>/dev/null
printf "subjectAltName=%s\n" "$san" > "$tmp/ext"
openssl x509 -req -in "$tmp/req.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca.key" -CAcreateserial -days 10 -extfile "$tmp/ext" -out "$tmp/cert.pem" 2>/dev/null
cat "$tmp/cert.pem" "$ca/ca.pem" > "$tmp/fullchain.pem"
cp "$ca/ca.pem" "$tmp/ca.pem"
for f in cert.pem ca.pem fullchain.pem key.pem; do cp "$tmp/$f" "$out/.$f.tmp"; mv "$out/.$f.tmp" "$out/$f"; done
rm -rf "$tmp"
