"""Attack families close to normal traffic (the hard ones): backdoor, password, ransomware, scans, MITM."""

from __future__ import annotations

import numpy as np

from iotad.data.synthetic import packets as pkt
from iotad.data.synthetic.background import byteswap16, dns_rows, tls_streams
from iotad.data.synthetic.packets import PayloadPool, Rows, Step, conversation, handshake, hexs
from iotad.data.synthetic.profiles import CONNACK_FIELDS, Network, attacker_ips, mqtt_connect


def backdoor(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """A reverse shell from a compromised sensor: small interactive PSH/ACK segments and ACKs."""
    s = len(start)
    k = 14
    steps = [*handshake()]
    nmsg = rng.integers(4, k + 1, s)
    for j in range(k):
        sent = nmsg > j
        cmd = rng.integers(4, 60, s)
        out = np.clip(rng.lognormal(4.5, 1.0, s), 20, 1448).astype(np.int64)
        steps.append(Step(False, pkt.PSH | pkt.ACK, cmd, pool.take(cmd), mask=sent, gap=0.4))
        steps.append(Step(True, pkt.ACK, mask=sent & (rng.random(s) < 0.6), gap=0.0003))
        steps.append(Step(True, pkt.PSH | pkt.ACK, out, pool.take(out), mask=sent, gap=0.01))
        steps.append(Step(False, pkt.ACK, mask=sent & (rng.random(s) < 0.7), gap=0.0003))
    steps += [Step(True, pkt.FIN | pkt.ACK, gap=0.1), Step(False, pkt.FIN | pkt.ACK), Step(True, pkt.ACK)]
    return conversation(rng, start, steps, client_ip=rng.choice(np.array(net.sensors, dtype=object), s),
                        server_ip=attacker_ips(rng, net, s), client_port=rng.integers(32768, 61000, s),
                        server_port=rng.choice([4444, 8883, 443], s), kind="Backdoor")


def password(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """MQTT credential brute force: authenticated CONNECTs refused by the broker (return code 5)."""
    s = len(start)
    conn_len, conn_fields, conn_payload = mqtt_connect(
        rng, s, client_id_len=int(rng.choice([0, 6, 8, 12])), auth=True,
        user_len=rng.integers(4, 12, s), pass_len=rng.integers(6, 17, s),
    )
    steps = [
        *handshake(),
        Step(True, pkt.PSH | pkt.ACK, conn_len, conn_payload, conn_fields, gap=0.002),
        Step(False, pkt.ACK, mask=rng.random(s) < 0.5, gap=0.0002),
        Step(False, pkt.PSH | pkt.ACK, 4, "20020005", CONNACK_FIELDS, gap=0.0005),
        Step(False, pkt.FIN | pkt.ACK, gap=0.0003),
        Step(True, pkt.ACK, gap=0.0005),
        Step(True, pkt.FIN | pkt.ACK, gap=0.0003),
        Step(False, pkt.ACK, gap=0.0002),
    ]
    return conversation(rng, start, steps, client_ip=attacker_ips(rng, net, s), server_ip=net.broker,
                        client_port=rng.integers(32768, 61000, s), server_port=1883, kind="Password")


def ransomware(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """Exfiltration of encrypted files before/while encrypting: bulk encrypted segments to a peer."""
    return tls_streams(rng, start, net, pool, kind="Ransomware", bulk=0.7, segments=20,
                       port=int(rng.choice([443, 445, 8883])), server_ip=net.attackers[0])


def port_scanning(rng: np.random.Generator, start: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """Slow half-open SYN scan: SYN, then RST-ACK (closed) or SYN-ACK + RST (open)."""
    s = len(start)
    open_ = rng.random(s) < 0.1
    steps = [
        Step(True, pkt.SYN, options="020405b4"),
        Step(False, pkt.RST | pkt.ACK, mask=~open_, gap=0.0003),
        Step(False, pkt.SYN | pkt.ACK, mask=open_, options="020405b40101040201030307", gap=0.0003),
        Step(True, pkt.RST, mask=open_, gap=0.0002),
    ]
    target = rng.choice(np.array([net.broker, net.plc, *net.sensors], dtype=object), s)
    return conversation(rng, start, steps, client_ip=attacker_ips(rng, net, s), server_ip=target,
                        client_port=int(rng.integers(40000, 65000)), server_port=rng.integers(1, 10000, s),
                        kind="Port_Scanning")


def fingerprinting(rng: np.random.Generator, t: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """nmap -O probes and replies: most are ordinary SYN/SYN-ACK/RST/ICMP packets, a few odd flag sets."""
    n = len(t)
    probe = rng.choice(9, n, p=[0.3, 0.18, 0.14, 0.08, 0.06, 0.06, 0.06, 0.06, 0.06])
    flags = np.array([pkt.SYN, pkt.SYN | pkt.ACK, pkt.RST, pkt.ACK, pkt.SYN | pkt.ECE | pkt.CWR, 0,
                      pkt.SYN | pkt.FIN | pkt.PSH | pkt.URG, pkt.FIN | pkt.PSH | pkt.URG, 0])[probe]
    tcp = probe < 8
    icmp = probe == 8
    has_ack = (flags & pkt.ACK) > 0
    rows = Rows(t, "Fingerprinting")
    rows.set(
        ip__src_host=attacker_ips(rng, net, n), ip__dst_host=net.broker,
        tcp__flags=np.where(tcp, hexs(flags), "").astype(object),
        tcp__srcport=np.where(tcp, rng.integers(40000, 65000, n), 0),
        tcp__dstport=np.where(tcp, rng.choice([1883, 22, 80, 31337], n), 0),
        tcp__connection__syn=(((flags & pkt.SYN) > 0) & ~has_ack).astype(int),
        tcp__connection__synack=(((flags & pkt.SYN) > 0) & has_ack).astype(int),
        tcp__connection__rst=((flags & pkt.RST) > 0).astype(int),
        tcp__connection__fin=((flags & pkt.FIN) > 0).astype(int),
        tcp__flags__ack=has_ack.astype(int), tcp__seq=0,
        tcp__ack=np.where(has_ack, 1, 0), tcp__ack_raw=np.where(has_ack, rng.integers(1, 2**32, n), 0),
        tcp__checksum=np.where(tcp, hexs(rng.integers(0, 65536, n)), "").astype(object),
        tcp__options=np.where((flags & pkt.SYN) > 0, "03030a0102040578040205b4080affffffff000000000402", ""
                              ).astype(object),
        icmp__checksum=np.where(icmp, rng.integers(0, 65536, n), 0),
        icmp__seq_le=np.where(icmp, byteswap16(rng.choice([295, 296], n)), 0),
    )
    return rows


def mitm(rng: np.random.Generator, t: np.ndarray, net: Network, pool: PayloadPool) -> Rows:
    """ARP spoofing (unsolicited replies naming the attacker's MAC) plus spoofed DNS answers."""
    n = len(t)
    arp = rng.random(n) < 0.85
    hosts = np.array([net.broker, net.router, *net.sensors], dtype=object)
    arp_rows = Rows(t[arp], "MITM").set(
        arp__opcode=np.where(rng.random(int(arp.sum())) < 0.9, 2, 1), arp__hw__size=6,
        arp__src__proto_ipv4=rng.choice(hosts, int(arp.sum())),
        arp__dst__proto_ipv4=rng.choice(hosts, int(arp.sum())),
    )
    # The forged answer races the real one: the victim sees two answers to one query, which Wireshark marks
    # as a retransmission far more often than in normal traffic.
    dns = dns_rows(rng, t[~arp], net, stream0=int(rng.integers(0, 50)), kind="MITM", retrans_share=0.5)
    return Rows.concat([arp_rows, dns], "MITM")
