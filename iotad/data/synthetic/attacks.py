"""The 14 attack families of Edge-IIoTset, as packets a gateway would capture.

Each family is ``make(rng, start, net, pool) -> Rows`` where ``len(start)`` is a number
of units (packets for floods and probes, TCP sessions otherwise), plus the mean rows
per unit and mean seconds between units, so the caller can size an episode. Floods and web
attacks are here, the families close to normal traffic in :mod:`iotad.data.synthetic.stealthy`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from iotad.data.synthetic.background import byteswap16
from iotad.data.synthetic.packets import (
    ACK,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    PayloadPool,
    Rows,
    Step,
    Values,
    conversation,
    handshake,
    hexs,
)
from iotad.data.synthetic.profiles import Network, attacker_ips, spoofed_ips
from iotad.data.synthetic.stealthy import backdoor, fingerprinting, mitm, password, port_scanning, ransomware

Maker = Callable[[np.random.Generator, np.ndarray, Network, PayloadPool], Rows]


# ------------------------------------------------------------------ floods (easy)


def ddos_udp(rng: np.random.Generator, t: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """Spoofed UDP flood: every packet opens a new stream far beyond normal stream counts."""
    n = len(t)
    return Rows(t, "DDoS_UDP").set(
        ip__src_host=spoofed_ips(rng, n), ip__dst_host=net.broker, udp__port=rng.integers(1, 65536, n),
        udp__stream=rng.integers(2_000, 40_000) + np.arange(n),
        udp__time_delta=np.where(rng.random(n) < 0.8, 0.0, rng.exponential(2e-5, n)),
    )


def ddos_icmp(rng: np.random.Generator, t: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """hping3 --icmp --flood: echo requests whose sequence numbers sweep the whole 16-bit range."""
    n = len(t)
    seq = rng.integers(0, 65536) + np.arange(n)
    return Rows(t, "DDoS_ICMP").set(
        ip__src_host=spoofed_ips(rng, n), ip__dst_host=net.broker,
        icmp__checksum=rng.integers(0, 65536, n), icmp__seq_le=byteswap16(seq),
        icmp__transmit_timestamp=np.where(rng.random(n) < 0.3, rng.integers(1, 86_400_000, n), 0),
    )


def ddos_tcp(rng: np.random.Generator, t: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """SYN flood, mostly carrying junk data in the SYN (hping3 -d); bare SYNs look like normal ones."""
    n = len(t)
    length = np.where(rng.random(n) < 0.3, 0, rng.choice([64, 120, 512, 1000, 1200], n))
    flags = np.where(rng.random(n) < 0.85, SYN, SYN | PSH | URG)
    return Rows(t, "DDoS_TCP").set(
        ip__src_host=spoofed_ips(rng, n), ip__dst_host=net.broker,
        tcp__srcport=rng.integers(1024, 65536, n), tcp__dstport=rng.choice([1883, 80, 502], n),
        tcp__flags=hexs(flags), tcp__connection__syn=1, tcp__flags__ack=0, tcp__seq=0, tcp__ack=0,
        tcp__ack_raw=0, tcp__checksum=hexs(rng.integers(0, 65536, n)), tcp__len=length,
        tcp__payload=pool.take(length),
    )


def ddos_http(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """HTTP GET flood: short crafted requests pipelined on keep-alive connections."""
    s = len(start)
    k = 20
    steps = [*handshake()]
    for j in range(k):
        length = rng.integers(60, 130, s)
        fields: dict[str, Values] = {
            "http.request.method": np.where(rng.random(s) < 0.85, "GET", "HEAD").astype(object),
            "http.request.version": np.where(rng.random(s) < 0.6, "HTTP/1.1", "HTTP/1.0").astype(object),
            "http.request.full_uri": f"http://{net.broker}/?{j}",
        }
        steps.append(Step(True, PSH | ACK, length, pool.take(length), fields, gap=0.0004))
        steps.append(Step(False, ACK, mask=rng.random(s) < 0.5, gap=0.0002))
        resp = rng.random(s) < 0.3
        steps.append(Step(False, PSH | ACK, 1448, pool.take(np.full(s, 1448)),
                          {"http.response": "1", "http.content_length": "10701",
                           "http.request.version": "HTTP/1.1"}, mask=resp, gap=0.001))
    steps.append(Step(True, RST | ACK, gap=0.001))
    return conversation(rng, start, steps, client_ip=spoofed_ips(rng, s), server_ip=net.broker,
                        client_port=rng.integers(1024, 65536, s), server_port=80, kind="DDoS_HTTP")


# ------------------------------------------------------------------ web attacks (easy / medium)

_SQLI = ("?id=1%27+OR+%271%27%3D%271&Submit=Submit", "?id=1%27+UNION+SELECT+user%2Cpassword+FROM+users--+",
         "?id=%27+AND+SLEEP%285%29--+&Submit=Submit", "?id=1%27%29%29+OR+1%3D1--")
_XSS = ("?name=%3Cscript%3Ealert%28document.cookie%29%3C%2Fscript%3E",
        "?name=%3Cimg+src%3Dx+onerror%3Dalert%281%29%3E", "?default=%3Csvg%2Fonload%3Dalert%28%27x%27%29%3E")


def _dvwa(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool, *, kind: str,
          path: str, queries: tuple[str, ...], req_len: tuple[int, int], post_share: float,
          post_len: tuple[int, int]) -> Rows:
    """Payload after payload against a DVWA page over one keep-alive connection (a browser or Burp on a
    logged-in session): long requests (cookies + payload, DVWA referer), ~5 kB pages back."""
    s = len(start)
    k = 6
    nreq = rng.integers(1, k + 1, s)
    steps = [*handshake()]
    for j in range(k):
        sent = nreq > j
        post = rng.random(s) < post_share
        uri = np.array([path + q for q in rng.choice(np.array(queries, dtype=object), s)], dtype=object)
        uri = np.where(post, path, uri).astype(object)
        body = rng.integers(*post_len, s)
        length = rng.integers(*req_len, s) + post * body
        req_fields: dict[str, Values] = {
            "http.request.method": np.where(post, "POST", "GET").astype(object),
            "http.request.version": "HTTP/1.1", "http.referer": "127.0.0.1",
            "http.request.full_uri": np.array([f"http://{net.broker}{u}" for u in uri], dtype=object),
            "http.request.uri.query": np.array([u.partition("?")[2] for u in uri], dtype=object),
            "http.content_length": np.where(post, body, 0),
        }
        resp_fields: dict[str, Values] = {
            "http.response": "1", "http.request.version": "HTTP/1.1",
            "http.content_length": rng.integers(4200, 5600, s),
        }
        steps.append(Step(True, PSH | ACK, length, pool.take(length), req_fields, mask=sent,
                          gap=0.001 if j == 0 else 0.3))
        steps.append(Step(False, ACK, mask=sent & (rng.random(s) < 0.6), gap=0.0003))
        steps.append(Step(False, PSH | ACK, 1448, pool.take(np.full(s, 1448)), resp_fields, mask=sent, gap=0.004))
        steps.append(Step(True, ACK, mask=sent, gap=0.0005))
    rst = rng.random(s) < 0.3
    steps += [Step(True, FIN | ACK, mask=~rst, gap=0.01), Step(False, FIN | ACK, mask=~rst),
              Step(True, ACK, mask=~rst), Step(True, RST | ACK, mask=rst, gap=0.005)]
    return conversation(rng, start, steps, client_ip=attacker_ips(rng, net, s), server_ip=net.broker,
                        client_port=rng.integers(32768, 61000, s), server_port=80, kind=kind)


def sql_injection(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """DVWA SQL injection: long GET/POST requests (session cookies + payload), referer set."""
    return _dvwa(rng, start, net, pool, kind="SQL_injection", path="/DVWA/vulnerabilities/sqli/",
                 queries=_SQLI, req_len=(560, 900), post_share=0.3, post_len=(40, 400))


def xss(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """DVWA reflected/stored XSS: even longer requests with script payloads."""
    return _dvwa(rng, start, net, pool, kind="XSS", path="/DVWA/vulnerabilities/xss_r/",
                 queries=_XSS, req_len=(650, 1000), post_share=0.4, post_len=(150, 440))


def uploading(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """Multipart file upload: a POST with a huge Content-Length, then full-size data segments."""
    s = len(start)
    k = 30
    size = rng.integers(50_000, 3_000_000, s)
    fields: dict[str, Values] = {
        "http.request.method": "POST", "http.request.version": "HTTP/1.1", "http.referer": "127.0.0.1",
        "http.content_length": size.astype(np.int64),
        "http.request.full_uri": f"http://{net.broker}/DVWA/vulnerabilities/upload/",
    }
    hlen = rng.integers(650, 820, s)
    steps = [*handshake(), Step(True, PSH | ACK, hlen, pool.take(hlen), fields)]
    nseg = rng.integers(10, k + 1, s)
    for j in range(k):
        sent = nseg > j
        steps.append(Step(True, ACK, 1448, pool.take(np.full(s, 1448)), mask=sent, gap=0.0003))
        steps.append(Step(False, ACK, mask=sent & (j % 2 == 1), gap=0.0001))
    steps.append(Step(False, PSH | ACK, 1448, pool.take(np.full(s, 1448)),
                      {"http.response": "1", "http.content_length": rng.integers(4500, 5200, s),
                       "http.request.version": "HTTP/1.1"}, gap=0.01))
    steps.append(Step(True, FIN | ACK, gap=0.01))
    steps.append(Step(False, FIN | ACK))
    return conversation(rng, start, steps, client_ip=attacker_ips(rng, net, s), server_ip=net.broker,
                        client_port=rng.integers(32768, 61000, s), server_port=80, kind="Uploading")


def vulnerability_scanner(
    rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool
) -> Rows:
    """Nikto/OpenVAS-style probing: many short requests pipelined on keep-alive connections (as Nikto's
    LibWhisker does), unusual methods, HTTP/1.0, small 404 pages; a share of connections are reset."""
    s = len(start)
    k = 12
    methods = np.array(["GET", "HEAD", "OPTIONS", "PROPFIND", "TRACE", "POST", "PUT", "DELETE"], dtype=object)
    paths = np.array(["/cgi-bin/test.cgi", "/admin/", "/.git/HEAD", "/phpmyadmin/", "/wp-login.php",
                      "/server-status", "/../../etc/passwd", "/backup.zip"], dtype=object)
    nreq = rng.integers(2, k + 1, s)
    steps = [*handshake()]
    for j in range(k):
        sent = nreq > j
        method = rng.choice(methods, s, p=[0.45, 0.15, 0.1, 0.06, 0.06, 0.1, 0.04, 0.04])
        version = np.where(rng.random(s) < 0.6, "HTTP/1.1", "HTTP/1.0").astype(object)
        req_len = rng.integers(110, 330, s)
        uri = rng.choice(paths, s)
        req_fields: dict[str, Values] = {
            "http.request.method": method, "http.request.version": version,
            "http.request.full_uri": np.array([f"http://{net.broker}{u}" for u in uri], dtype=object),
        }
        resp_len = rng.integers(280, 560, s)
        resp_fields: dict[str, Values] = {
            "http.response": "1", "http.request.version": version,
            "http.content_length": rng.integers(196, 320, s),
        }
        steps.append(Step(True, PSH | ACK, req_len, pool.take(req_len), req_fields, mask=sent, gap=0.002))
        steps.append(Step(False, ACK, mask=sent & (rng.random(s) < 0.3), gap=0.0003))
        steps.append(Step(False, PSH | ACK, resp_len, pool.take(resp_len), resp_fields, mask=sent, gap=0.002))
    rst = rng.random(s) < 0.5
    steps += [Step(True, RST | ACK, mask=rst, gap=0.002), Step(True, FIN | ACK, mask=~rst, gap=0.002),
              Step(False, FIN | ACK, mask=~rst), Step(True, ACK, mask=~rst)]
    return conversation(rng, start, steps, client_ip=attacker_ips(rng, net, s), server_ip=net.broker,
                        client_port=rng.integers(32768, 61000, s), server_port=80, kind="Vulnerability_scanner")


@dataclass(frozen=True)
class Family:
    make: Maker
    rows_per_unit: float  # mean rows one unit produces
    unit_gap: float  # mean seconds between units
    hard: bool


FAMILIES: dict[str, Family] = {
    "DDoS_UDP": Family(ddos_udp, 1, 2e-5, False),
    "DDoS_ICMP": Family(ddos_icmp, 1, 2e-5, False),
    "DDoS_TCP": Family(ddos_tcp, 1, 2e-5, False),
    "DDoS_HTTP": Family(ddos_http, 50, 0.002, False),
    "SQL_injection": Family(sql_injection, 18, 1.0, False),
    "XSS": Family(xss, 18, 1.0, False),
    "Uploading": Family(uploading, 48, 0.5, False),
    "Backdoor": Family(backdoor, 27, 2.0, True),
    "Password": Family(password, 10.5, 0.2, True),
    "Ransomware": Family(ransomware, 22, 1.0, True),
    "Port_Scanning": Family(port_scanning, 2.1, 1.0, True),
    "Vulnerability_scanner": Family(vulnerability_scanner, 24, 0.1, False),
    "Fingerprinting": Family(fingerprinting, 1, 0.05, True),
    "MITM": Family(mitm, 1, 0.5, True),
}
