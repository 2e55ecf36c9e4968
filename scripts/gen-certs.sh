#!/usr/bin/env bash
# Generate the TLS material and SuperNode authentication keys of an iotad federation.
#
#   gen-certs.sh [--force] [--metrics] [--dns NAME]... [--devices N | --device NAME...] OUTDIR
#
# OUTDIR/ca.crt, ca.key          private CA that signs the aggregator certificate
# OUTDIR/server.pem, server.key  aggregator (SuperLink) certificate; SANs: every --dns NAME
#                                (default "aggregator") plus DNS:localhost and IP:127.0.0.1, because the
#                                SuperLink's own components and the local `flwr` CLI connect over loopback.
# OUTDIR/devices/<name>/node_key, node_key.pub
#                                one ECDSA P-384 key pair per device, OpenSSH format: the format
#                                `flower-supernode --auth-supernode-private-key` (load_ssh_private_key) and
#                                `flwr supernode register` (load_ssh_public_key) read in flwr 1.39.
# With --metrics, for /metrics over HTTPS with client-certificate auth (docs/monitoring.md):
# OUTDIR/devices/<name>/metrics.pem, metrics.key
#                                the device exporter's certificate; SANs DNS:<name>, DNS:device,
#                                DNS:localhost, IP:127.0.0.1 (the aggregator's exporter uses server.pem)
# OUTDIR/prometheus/client.pem, client.key
#                                Prometheus's client certificate (clientAuth): the only certificate the
#                                exporters accept, as the CA's other certificates are for servers only
#
# --devices N names the devices device-0 .. device-(N-1); --device NAME (repeatable) names them explicitly.
# Idempotent: existing files are kept (a device key pair is kept as a pair); --force regenerates everything
# asked for. Private keys are mode 600. Prints one line per file: "created" or "kept".
set -euo pipefail

usage() {
    sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

force=0
metrics=0
dns_names=()
devices=()
n_devices=""
outdir=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) force=1; shift ;;
        --metrics) metrics=1; shift ;;
        --dns) [[ $# -ge 2 ]] || usage; dns_names+=("$2"); shift 2 ;;
        --devices) [[ $# -ge 2 ]] || usage; n_devices="$2"; shift 2 ;;
        --device) [[ $# -ge 2 ]] || usage; devices+=("$2"); shift 2 ;;
        -h|--help) usage ;;
        -*) echo "gen-certs.sh: unknown option $1" >&2; usage ;;
        *) [[ -z "$outdir" ]] || usage; outdir="$1"; shift ;;
    esac
done
[[ -n "$outdir" ]] || usage
if [[ -n "$n_devices" ]]; then
    [[ ${#devices[@]} -eq 0 ]] || { echo "gen-certs.sh: --devices and --device are exclusive" >&2; exit 2; }
    [[ "$n_devices" =~ ^[0-9]+$ ]] || { echo "gen-certs.sh: --devices needs a number" >&2; exit 2; }
    for ((i = 0; i < n_devices; i++)); do devices+=("device-$i"); done
fi
for name in "${devices[@]}"; do
    [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || { echo "gen-certs.sh: bad device name '$name'" >&2; exit 2; }
done
[[ ${#dns_names[@]} -gt 0 ]] || dns_names=("aggregator")

command -v openssl >/dev/null || { echo "gen-certs.sh: openssl not found" >&2; exit 1; }
if [[ ${#devices[@]} -gt 0 ]]; then
    command -v ssh-keygen >/dev/null || { echo "gen-certs.sh: ssh-keygen not found (openssh-client)" >&2; exit 1; }
fi

umask 077
mkdir -p "$outdir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

report() { printf '%-8s %s\n' "$1" "$2"; }

# --- CA ------------------------------------------------------------------------------------------
regen_ca=0
if [[ $force -eq 1 || ! -s "$outdir/ca.crt" || ! -s "$outdir/ca.key" ]]; then
    openssl ecparam -name secp384r1 -genkey -noout -out "$tmp/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$tmp/ca.key" -sha384 -days 3650 -subj "/CN=iotad federation CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out "$tmp/ca.crt" 2>/dev/null
    mv "$tmp/ca.key" "$outdir/ca.key"
    mv "$tmp/ca.crt" "$outdir/ca.crt"
    regen_ca=1
    report created "$outdir/ca.crt"
    report created "$outdir/ca.key"
else
    report kept "$outdir/ca.crt"
    report kept "$outdir/ca.key"
fi

# --- aggregator certificate ----------------------------------------------------------------------
san="DNS:localhost,IP:127.0.0.1"
for name in "${dns_names[@]}"; do
    if [[ "$name" =~ ^[0-9]+(\.[0-9]+){3}$ ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
done
# A kept certificate whose SANs differ from the request (or that a new CA did not sign) is stale.
server_ok=0
if [[ $force -eq 0 && $regen_ca -eq 0 && -s "$outdir/server.pem" && -s "$outdir/server.key" ]]; then
    server_ok=1
    have="$(openssl x509 -in "$outdir/server.pem" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -d ' ')"
    IFS=',' read -ra want <<<"$san"
    for entry in "${want[@]}"; do
        # openssl prints "IP Address:" where the config says "IP:".
        printable="${entry/#IP:/IPAddress:}"
        [[ ",$have," == *",$printable,"* ]] || server_ok=0
    done
    openssl verify -CAfile "$outdir/ca.crt" "$outdir/server.pem" >/dev/null 2>&1 || server_ok=0
fi
if [[ $server_ok -eq 0 ]]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/server.key" 2>/dev/null
    openssl req -new -key "$tmp/server.key" -subj "/CN=${dns_names[0]}" -out "$tmp/server.csr" 2>/dev/null
    cat >"$tmp/server.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san
EOF
    openssl x509 -req -in "$tmp/server.csr" -CA "$outdir/ca.crt" -CAkey "$outdir/ca.key" \
        -CAcreateserial -CAserial "$tmp/ca.srl" -days 825 -sha384 -extfile "$tmp/server.ext" \
        -out "$tmp/server.pem" 2>/dev/null
    mv "$tmp/server.key" "$outdir/server.key"
    mv "$tmp/server.pem" "$outdir/server.pem"
    report created "$outdir/server.pem ($san)"
    report created "$outdir/server.key"
else
    report kept "$outdir/server.pem"
    report kept "$outdir/server.key"
fi

# --- device keys ---------------------------------------------------------------------------------
for name in "${devices[@]}"; do
    ddir="$outdir/devices/$name"
    mkdir -p "$ddir"
    if [[ $force -eq 1 || ! -s "$ddir/node_key" || ! -s "$ddir/node_key.pub" ]]; then
        rm -f "$ddir/node_key" "$ddir/node_key.pub"
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "iotad-$name" -f "$ddir/node_key"
        report created "$ddir/node_key"
        report created "$ddir/node_key.pub"
    else
        report kept "$ddir/node_key"
        report kept "$ddir/node_key.pub"
    fi
done

# --- metrics TLS (--metrics) -----------------------------------------------------------------------
# issue KEY PEM SUBJECT SAN|- EKU: a certificate the CA signs, kept when present, signed by this CA and
# (unless --force) not older than the CA.
issue() {
    local key="$1" pem="$2" subject="$3" san="$4" eku="$5"
    if [[ $force -eq 0 && $regen_ca -eq 0 && -s "$pem" && -s "$key" ]] &&
        openssl verify -CAfile "$outdir/ca.crt" "$pem" >/dev/null 2>&1; then
        report kept "$pem"
        return
    fi
    openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/leaf.key" 2>/dev/null
    openssl req -new -key "$tmp/leaf.key" -subj "$subject" -out "$tmp/leaf.csr" 2>/dev/null
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$eku"
        [[ "$san" == "-" ]] || echo "subjectAltName=$san"
    } >"$tmp/leaf.ext"
    openssl x509 -req -in "$tmp/leaf.csr" -CA "$outdir/ca.crt" -CAkey "$outdir/ca.key" \
        -CAcreateserial -CAserial "$tmp/ca.srl" -days 825 -sha384 -extfile "$tmp/leaf.ext" \
        -out "$tmp/leaf.pem" 2>/dev/null
    mv "$tmp/leaf.key" "$key"
    mv "$tmp/leaf.pem" "$pem"
    chmod 600 "$key"
    chmod 644 "$pem"
    report created "$pem"
}
if [[ $metrics -eq 1 ]]; then
    mkdir -p "$outdir/prometheus"
    issue "$outdir/prometheus/client.key" "$outdir/prometheus/client.pem" "/CN=prometheus" - clientAuth
    for name in "${devices[@]}"; do
        issue "$outdir/devices/$name/metrics.key" "$outdir/devices/$name/metrics.pem" "/CN=$name" \
            "DNS:$name,DNS:device,DNS:localhost,IP:127.0.0.1" serverAuth
    done
    chmod 755 "$outdir/prometheus"
fi

# Private keys 600; certificates, public keys and directories readable (shared with devices and the CLI).
chmod 755 "$outdir"; [[ ! -d "$outdir/devices" ]] || chmod 755 "$outdir/devices"
chmod 600 "$outdir/ca.key" "$outdir/server.key"
chmod 644 "$outdir/ca.crt" "$outdir/server.pem"
for name in "${devices[@]}"; do
    chmod 755 "$outdir/devices/$name"
    chmod 600 "$outdir/devices/$name/node_key"
    chmod 644 "$outdir/devices/$name/node_key.pub"
done
