"""A gateway's background traffic around its sensors: TLS, HTTP dashboard, DNS, NTP, ARP, ICMP echo, refused TCP."""

from __future__ import annotations

import numpy as np

from iotad.data.schema import NORMAL
from iotad.data.synthetic import packets as pkt
from iotad.data.synthetic.packets import PayloadPool, Rows, Step, Values, conversation, handshake, ints
from iotad.data.synthetic.profiles import Network


def tls_streams(
    rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool, *, kind: str = NORMAL,
    bulk: float = 0.25, segments: int = 16, port: int = 8883, server_ip: str | None = None,
) -> Rows:
    """Mid-stream encrypted uploads from the gateway (telemetry, log/camera sync): data + ACKs.

    A share ``bulk`` of streams are bulk transfers of full 1448-byte segments deep into a
    stream; the rest are small telemetry records.
    """
    s = len(start)
    is_bulk = rng.random(s) < bulk
    nseg = rng.integers(3, segments + 1, s)
    seq0 = np.where(is_bulk, rng.integers(1, 3_000_000, s), rng.integers(1, 60_000, s))
    steps = []
    for j in range(segments):
        sent = nseg > j
        small = np.clip(rng.lognormal(5.0, 0.9, s), 29, 1448).astype(np.int64)
        length = np.where(is_bulk & (rng.random(s) < 0.85), 1448, small)
        payload = pool.take(length)
        steps.append(Step(True, pkt.PSH | pkt.ACK, length, payload, gap=0.02 if j else 0.0, mask=sent))
        steps.append(Step(False, pkt.ACK, mask=sent & (rng.random(s) < 0.7), gap=0.004))
        reply = sent & (rng.random(s) < 0.15)
        rlen = rng.integers(29, 120, s)
        steps.append(Step(False, pkt.PSH | pkt.ACK, rlen, pool.take(rlen), mask=reply, gap=0.01))
    return conversation(rng, start, steps, client_ip=net.broker, server_ip=server_ip or net.cloud,
                        client_port=rng.integers(40000, 61000, s), server_port=port, kind=kind,
                        client_seq0=seq0, server_seq0=rng.integers(1, 40_000, s))


def http_exchange(
    rng: np.random.Generator, start: np.ndarray, *, client_ip: np.ndarray | str, server_ip: str,
    method: np.ndarray, version: np.ndarray | str, referer: np.ndarray | str, req_len: np.ndarray,
    content_length: np.ndarray | None, resp_len: np.ndarray, resp_content_length: np.ndarray,
    uri: np.ndarray, pool: PayloadPool, kind: str, close_rst: float = 0.0, server_port: int = 80,
) -> Rows:
    """One HTTP request/response per TCP connection (with handshake and teardown)."""
    s = len(start)
    req_fields: dict[str, Values] = {
        "http.request.method": method, "http.request.version": version, "http.referer": referer,
        "http.request.full_uri": np.array([f"http://{server_ip}{u}" for u in uri], dtype=object),
        "http.request.uri.query": np.array([u.partition("?")[2] for u in uri], dtype=object),
    }
    if content_length is not None:
        req_fields["http.content_length"] = ints(content_length)
    resp_fields: dict[str, Values] = {
        "http.response": "1", "http.request.version": version,
        "http.content_length": ints(resp_content_length),
    }
    rst = rng.random(s) < close_rst
    steps = [
        *handshake(),
        Step(True, pkt.PSH | pkt.ACK, req_len, pool.take(req_len), req_fields, gap=0.001),
        Step(False, pkt.ACK, mask=rng.random(s) < 0.6, gap=0.0003),
        Step(False, pkt.PSH | pkt.ACK, resp_len, pool.take(resp_len), resp_fields, gap=0.004),
        Step(True, pkt.ACK, gap=0.0005),
        Step(True, pkt.FIN | pkt.ACK, mask=~rst, gap=0.01),
        Step(False, pkt.FIN | pkt.ACK, mask=~rst),
        Step(True, pkt.ACK, mask=~rst),
        Step(True, pkt.RST | pkt.ACK, mask=rst, gap=0.005),
    ]
    return conversation(rng, start, steps, client_ip=client_ip, server_ip=server_ip,
                        client_port=rng.integers(32768, 61000, s), server_port=server_port, kind=kind)


def http_dashboard(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """The gateway's local web dashboard polled by an operator's browser."""
    s = len(start)
    paths = np.array(["/", "/index.html", "/api/status", "/api/sensors?since=60", "/favicon.ico",
                      "/static/app.js", "/dashboard"], dtype=object)
    uri = rng.choice(paths, s)
    method = np.where(rng.random(s) < 0.9, "GET", "POST").astype(object)
    post = method == "POST"
    return http_exchange(
        rng, start, client_ip=net.sensors[3], server_ip=net.broker, method=method,
        version=np.where(rng.random(s) < 0.95, "HTTP/1.1", "HTTP/1.0").astype(object),
        referer=np.where(rng.random(s) < 0.3, "127.0.0.1", "").astype(object),
        req_len=rng.integers(180, 480, s) + post * rng.integers(20, 200, s),
        content_length=np.where(post, rng.integers(20, 200, s), 0),
        resp_len=np.clip(rng.lognormal(6.3, 0.8, s), 150, 1448).astype(np.int64),
        resp_content_length=np.clip(rng.lognormal(7.0, 1.0, s), 40, 20_000).astype(np.int64),
        uri=uri, pool=pool, kind=NORMAL,
    )


DNS_NAMES = np.array(
    ["0.debian.pool.ntp.org", "_googlecast._tcp.local", "raspberrypi.local", "1"], dtype=object
)


def dns_rows(rng: np.random.Generator, t: np.ndarray, net: Network, stream0: int, kind: str = NORMAL,
             retrans_share: float = 0.02) -> Rows:
    """DNS / mDNS queries and responses (one UDP stream per exchange).

    As in the release, ``dns.qry.name.len`` carries the query name and ``dns.qry.name``
    a number (the two columns are swapped in the export).
    """
    n = len(t)
    name = rng.choice(DNS_NAMES, n, p=[0.45, 0.25, 0.2, 0.1])
    mdns = (name == "_googlecast._tcp.local") | (name == "raspberrypi.local")
    response = rng.random(n) < 0.45
    qtype = np.where(mdns, rng.choice([12, 255, 1, 28], n), rng.choice([1, 28], n, p=[0.7, 0.3]))
    retrans = rng.random(n) < retrans_share
    stream = stream0 + np.cumsum(~response)
    rows = Rows(t, kind).set(
        ip__src_host=np.where(response, net.router, net.broker).astype(object),
        ip__dst_host=np.where(response, net.broker, net.router).astype(object),
        udp__port=np.where(mdns, 5353, 53), udp__stream=stream,
        udp__time_delta=np.where(response, rng.exponential(0.01, n), 0.0),
        dns__qry__name=np.array([len(x) for x in name]), dns__qry__name__len=name,
        dns__qry__qu=(mdns & (rng.random(n) < 0.5)).astype(int), dns__qry__type=qtype,
        dns__retransmission=retrans.astype(int),
        dns__retransmit_request=(retrans & ~response).astype(int),
        dns__retransmit_request_in=np.where(retrans & response, rng.integers(1, 5000, n), 0),
    )
    return rows


def ntp_rows(rng: np.random.Generator, t: np.ndarray, net: Network, stream: int) -> Rows:
    n = len(t)
    return Rows(t, NORMAL).set(
        ip__src_host=net.broker, ip__dst_host=net.router, udp__port=123,
        udp__stream=stream + (np.arange(n) % 3), udp__time_delta=rng.normal(64.0, 0.5, n).clip(0),
    )


def arp_rows(rng: np.random.Generator, t: np.ndarray, net: Network, kind: str = NORMAL,
             reply_share: float = 0.5) -> Rows:
    n = len(t)
    hosts = np.array([net.broker, net.router, net.plc, *net.sensors], dtype=object)
    reply = rng.random(n) < reply_share
    return Rows(t, kind).set(
        arp__opcode=np.where(reply, 2, 1), arp__hw__size=6,
        arp__src__proto_ipv4=rng.choice(hosts, n), arp__dst__proto_ipv4=rng.choice(hosts, n),
    )


def byteswap16(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.int64) % 65536
    return ((x & 0xFF) << 8) | (x >> 8)


def icmp_echo_rows(rng: np.random.Generator, t: np.ndarray, net: Network) -> Rows:
    """The gateway's health-check pings (small, incrementing sequence numbers)."""
    n = len(t)
    seq = 1 + np.arange(n) % 300
    return Rows(t, NORMAL).set(
        ip__src_host=net.broker, ip__dst_host=rng.choice(np.array([net.router, net.plc], dtype=object), n),
        icmp__checksum=rng.integers(0, 65536, n), icmp__seq_le=byteswap16(seq),
    )


def refused_rows(rng: np.random.Generator, start: np.ndarray, net: Network) -> Rows:
    """Sensors retrying a service that is down: SYN answered by RST-ACK."""
    s = len(start)
    steps = [Step(True, pkt.SYN, options="020405b40402080a"), Step(False, pkt.RST | pkt.ACK, gap=0.0003)]
    return conversation(rng, start, steps, client_ip=rng.choice(np.array(net.sensors, dtype=object), s),
                        server_ip=net.broker, client_port=rng.integers(32768, 61000, s),
                        server_port=rng.choice([1883, 8080, 502], s), kind=NORMAL)


BACKGROUND = ("tls", "http", "dns", "ntp", "arp", "icmp", "refused")


BACKGROUND_SHARE = np.array([0.4, 0.18, 0.2, 0.04, 0.1, 0.015, 0.065])
