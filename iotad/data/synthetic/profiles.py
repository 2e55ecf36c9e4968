"""Normal traffic: the dataset's sensor profiles (MQTT, Modbus) and gateway background."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from iotad.data.schema import NORMAL
from iotad.data.synthetic.packets import (
    ACK,
    FIN,
    PSH,
    RST,
    Rows,
    Step,
    Values,
    conversation,
    handshake,
    hexs,
    ints,
    text_hex,
)

Messages = Callable[[np.random.Generator, int], np.ndarray]


@dataclass(frozen=True)
class Network:
    """Addresses one edge gateway sees (192.168.x.y, per device)."""

    broker: str  # the MQTT broker / gateway
    sensors: tuple[str, ...]
    plc: str  # Modbus server
    router: str  # DNS resolver, default gateway
    cloud: str  # upstream TLS peer seen through the gateway
    attackers: tuple[str, ...]


def make_network(rng: np.random.Generator, device: int) -> Network:
    subnet = device % 2  # the real captures use 192.168.0.x and 192.168.1.x
    host = rng.choice(np.arange(100, 160), 8, replace=False)
    return Network(
        broker=f"192.168.{subnet}.128",
        sensors=tuple(f"192.168.{subnet}.{h}" for h in host[:4]),
        plc=f"192.168.{subnet}.{host[4]}",
        router=f"192.168.{subnet}.1",
        cloud=f"192.168.{subnet}.{host[5]}",
        attackers=tuple(f"192.168.{subnet}.{h}" for h in rng.integers(170, 200, 3)),
    )


def _fmt(template: str, *columns: np.ndarray) -> np.ndarray:
    return np.array([template.format(*vals) for vals in zip(*columns, strict=True)], dtype=object)


def _walk(rng: np.random.Generator, n: int, mean: float, sd: float, step: float) -> np.ndarray:
    """A sensor reading drifting around ``mean`` (so consecutive values are correlated)."""
    drift = np.cumsum(rng.normal(0.0, step, n))
    return mean + sd * np.tanh(drift / max(sd, 1e-9)) + rng.normal(0.0, step, n)


@dataclass(frozen=True)
class SensorProfile:
    """One MQTT sensor type of the dataset (or Modbus when ``topic`` is None)."""

    name: str
    topic: str | None
    messages: Messages | None
    publishes: tuple[int, int] = (1, 1)  # publishes per connection, inclusive
    publish_gap: float = 0.5
    qos: int = 0
    auth: bool = False
    client_id_len: int = 0
    ping: float = 0.0  # share of connections that send PINGREQ
    session_gap: float = 0.05  # mean seconds between connections
    user_len: int = 6  # configured MQTT credentials (when ``auth``): same on every connection
    pass_len: int = 12


PROFILES: tuple[SensorProfile, ...] = (
    SensorProfile(
        "temperature_humidity", "Temperature_and_Humidity",
        lambda r, n: _fmt("Temperature: {:.1f} C Humidity: {:.1f} %", _walk(r, n, 24, 3, 0.2),
                          _walk(r, n, 45, 10, 0.5)),
        publishes=(1, 3), client_id_len=0,
    ),
    SensorProfile(
        "distance", "Distance",
        lambda r, n: _fmt("Distance: {} cm\r\n", np.rint(_walk(r, n, 170, 25, 2)).astype(int)),
    ),
    SensorProfile(
        "water_level", "Water_Level",
        lambda r, n: _fmt("Water level: {}", np.clip(np.rint(_walk(r, n, 420, 200, 8)), 0, 1023).astype(int)),
        publishes=(2, 6), qos=1, auth=True, client_id_len=12, ping=0.3, user_len=7, pass_len=16,
    ),
    SensorProfile(
        "ph", "pH", lambda r, n: _fmt("pH: {:.2f}", _walk(r, n, 7.0, 0.8, 0.03)),
        publishes=(1, 2), auth=True, client_id_len=8, user_len=4, pass_len=10,
    ),
    SensorProfile(
        "soil_moisture", "Soil_Moisture",
        lambda r, n: _fmt("Soil moisture: {} %",
                          np.clip(np.rint(_walk(r, n, 50, 30, 1)), 0, 100).astype(int)),
        publishes=(1, 4), client_id_len=10,
    ),
    SensorProfile(
        "heart_rate", "Heart_Rate",
        lambda r, n: _fmt("Heart rate: {} bpm", np.rint(_walk(r, n, 75, 18, 1.5)).astype(int)),
        publishes=(4, 10), publish_gap=0.25, auth=True, client_id_len=16, ping=0.5, user_len=9, pass_len=14,
    ),
    SensorProfile(
        "flame", "Flame",
        lambda r, n: _fmt("Flame: {}", np.clip(np.rint(_walk(r, n, 980, 60, 5)), 0, 1023).astype(int)),
        publishes=(1, 3), qos=1, client_id_len=5,
    ),
    SensorProfile(
        "ir", "IR", lambda r, n: _fmt("IR: {}", (r.random(n) < 0.15).astype(int)),
        publishes=(1, 2),
    ),
    SensorProfile(
        "sound", "Sound",
        lambda r, n: _fmt("Sound: {} dB", np.rint(_walk(r, n, 45, 15, 1)).astype(int)),
        publishes=(2, 8), publish_gap=0.2, client_id_len=6, ping=0.2,
    ),
    SensorProfile("modbus", None, None, session_gap=0.2),
)


def device_profiles(device: int) -> tuple[SensorProfile, SensorProfile]:
    """Device ``k`` takes two profiles round-robin (five devices cover all ten)."""
    p = len(PROFILES)
    return PROFILES[(2 * device) % p], PROFILES[(2 * device + 1) % p]


def mqtt_connect(
    rng: np.random.Generator, s: int, *, client_id_len: int, auth: bool | np.ndarray,
    user_len: np.ndarray | None = None, pass_len: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Values], np.ndarray]:
    """(tcp.len, mqtt.* fields, payload hex) of ``s`` CONNECT packets."""
    auth_arr = np.broadcast_to(np.asarray(auth, dtype=bool), (s,))
    ulen = rng.integers(4, 12, s) if user_len is None else user_len
    plen = rng.integers(6, 17, s) if pass_len is None else pass_len
    mlen = 12 + client_id_len + np.where(auth_arr, 4 + ulen + plen, 0)
    conflags = np.where(auth_arr, 0xC2, 0x02)
    payload = np.array(
        [
            f"10{m:02x}00044d51545404{f:02x}003c{client_id_len:04x}" + "65" * client_id_len
            + (f"{u:04x}" + "75" * u + f"{p:04x}" + "70" * p if a else "")
            for m, f, u, p, a in zip(mlen, conflags, ulen, plen, auth_arr, strict=True)
        ],
        dtype=object,
    )
    fields: dict[str, Values] = {
        "mqtt.hdrflags": "0x00000010", "mqtt.msgtype": "1", "mqtt.len": ints(mlen),
        "mqtt.conflags": hexs(conflags), "mqtt.conflag.cleansess": "1", "mqtt.proto_len": "4",
        "mqtt.protoname": "MQTT", "mqtt.ver": "4",
    }
    return mlen + 2, fields, payload


CONNACK_FIELDS: dict[str, Values] = {
    "mqtt.hdrflags": "0x00000020", "mqtt.msgtype": "2", "mqtt.len": "2", "mqtt.conack.flags": "0x00000000",
}


def mqtt_sessions(
    rng: np.random.Generator, prof: SensorProfile, start: np.ndarray, net: Network, kind: str = NORMAL
) -> Rows:
    """Connect, publish, (ping), disconnect sessions of one MQTT sensor to the broker on 1883."""
    assert prof.topic is not None and prof.messages is not None
    s = len(start)
    lo, hi = prof.publishes
    npub = rng.integers(lo, hi + 1, s)
    client_ip = rng.choice(np.array(net.sensors[:2], dtype=object), s)
    cport = rng.integers(32768, 61000, s) + np.arange(s) % 200
    # A deployed sensor always logs in with the same (configured) credentials.
    conn_len, conn_fields, conn_payload = mqtt_connect(
        rng, s, client_id_len=prof.client_id_len, auth=prof.auth,
        user_len=np.full(s, prof.user_len), pass_len=np.full(s, prof.pass_len),
    )
    steps = [*handshake()]
    steps.append(Step(True, PSH | ACK, conn_len, conn_payload, conn_fields, gap=0.003))
    steps.append(Step(False, ACK, mask=rng.random(s) < 0.5, gap=0.0002))
    steps.append(Step(False, PSH | ACK, 4, "20020000", CONNACK_FIELDS, gap=0.0005))
    topic_hex = prof.topic.encode().hex()
    tlen = len(prof.topic)
    msgs = prof.messages(rng, s * hi).reshape(s, hi)
    for j in range(hi):
        sent = npub > j
        msg = msgs[:, j]
        msg_hex = text_hex(msg)
        mlen = 2 + tlen + np.array([len(m) for m in msg]) + (2 if prof.qos else 0)
        msgid = (np.arange(s) * 7 + j + 1) % 65535 + 1
        hdr = 0x30 | (prof.qos << 1)
        payload = np.array(
            [f"{hdr:02x}{m:02x}{tlen:04x}{topic_hex}" + (f"{i:04x}" if prof.qos else "") + h
             for m, i, h in zip(mlen, msgid, msg_hex, strict=True)],
            dtype=object,
        )
        fields: dict[str, Values] = {
            "mqtt.hdrflags": hexs(np.full(s, hdr)), "mqtt.msgtype": "3", "mqtt.len": ints(mlen),
            "mqtt.topic": prof.topic, "mqtt.topic_len": str(tlen), "mqtt.msg": msg_hex,
        }
        gap = 0.003 if j == 0 else prof.publish_gap
        steps.append(Step(True, PSH | ACK, mlen + 2, payload, fields, gap=gap, mask=sent))
        if prof.qos:
            steps.append(Step(False, PSH | ACK, 4, np.array([f"4002{i:04x}" for i in msgid], dtype=object),
                              {"mqtt.hdrflags": "0x00000040", "mqtt.msgtype": "4", "mqtt.len": "2"},
                              mask=sent))
        else:
            steps.append(Step(False, ACK, mask=sent & (rng.random(s) < 0.8), gap=0.0001))
    ping = rng.random(s) < prof.ping
    steps.append(Step(True, PSH | ACK, 2, "c000", {"mqtt.hdrflags": "0x000000c0", "mqtt.msgtype": "12"},
                      mask=ping, gap=prof.publish_gap))
    steps.append(Step(False, PSH | ACK, 2, "d000", {"mqtt.hdrflags": "0x000000d0", "mqtt.msgtype": "13"},
                      mask=ping))
    fin_with_disconnect = rng.random(s) < 0.7
    disc = {"mqtt.hdrflags": "0x000000e0", "mqtt.msgtype": "14"}
    steps.append(Step(True, FIN | PSH | ACK, 2, "e000", disc, mask=fin_with_disconnect))
    steps.append(Step(True, PSH | ACK, 2, "e000", disc, mask=~fin_with_disconnect))
    steps.append(Step(True, FIN | ACK, mask=~fin_with_disconnect, gap=0.0002))
    steps.append(Step(False, FIN | ACK, gap=0.0002))
    steps.append(Step(True, ACK, gap=0.003))
    steps.append(Step(False, RST, mask=rng.random(s) < 0.6, gap=0.01))
    return conversation(rng, start, steps, client_ip=client_ip, server_ip=net.broker,
                        client_port=cport, server_port=1883, kind=kind)


def modbus_sessions(rng: np.random.Generator, start: np.ndarray, net: Network, kind: str = NORMAL) -> Rows:
    """A gateway polling a Modbus TCP server on 502 (read holding registers, some writes)."""
    s = len(start)
    polls = rng.integers(2, 13, s)
    unit = rng.choice(np.array([1, 1, 1, 2, 17, 247]), s)
    tid0 = rng.integers(0, 60000, s)
    steps = [*handshake()]
    for j in range(12):
        sent = polls > j
        write = rng.random(s) < 0.15
        count = rng.integers(1, 11, s)
        req_len = np.full(s, 6)
        resp_len = np.where(write, 6, 3 + 2 * count)
        tid = tid0 + j
        addr = rng.integers(0, 200, s)
        fc = np.where(write, 6, 3)
        req_payload = np.array(
            [f"{t:04x}0000{6:04x}{u:02x}{f:02x}{a:04x}{c:04x}"
             for t, u, f, a, c in zip(tid, unit, fc, addr, count, strict=True)], dtype=object)
        resp_payload = np.array(
            [f"{t:04x}0000{m:04x}{u:02x}{f:02x}" + "00" * (m - 2)
             for t, m, u, f in zip(tid, resp_len, unit, fc, strict=True)], dtype=object)
        common = {"mbtcp.trans_id": ints(tid), "mbtcp.unit_id": ints(unit)}
        steps.append(Step(True, PSH | ACK, req_len + 6, req_payload,
                          {**common, "mbtcp.len": ints(req_len)}, gap=0.1 if j else 0.002, mask=sent))
        steps.append(Step(False, PSH | ACK, resp_len + 6, resp_payload,
                          {**common, "mbtcp.len": ints(resp_len)}, gap=0.004, mask=sent))
        steps.append(Step(True, ACK, mask=sent & (rng.random(s) < 0.5), gap=0.001))
    steps += [Step(True, FIN | ACK, gap=0.05), Step(False, FIN | ACK), Step(True, ACK)]
    cport = rng.integers(40000, 61000, s)
    return conversation(rng, start, steps, client_ip=net.broker, server_ip=net.plc,
                        client_port=cport, server_port=502, kind=kind)


def profile_sessions(rng: np.random.Generator, prof: SensorProfile, start: np.ndarray, net: Network) -> Rows:
    if prof.topic is None:
        return modbus_sessions(rng, start, net)
    return mqtt_sessions(rng, prof, start, net)


def attacker_ips(rng: np.random.Generator, net: Network, n: int) -> np.ndarray:
    """Source addresses of ``n`` attack units, drawn from the network's attacker hosts."""
    return rng.choice(np.array(net.attackers, dtype=object), n)


def spoofed_ips(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` forged source addresses in the gateway's private ranges (floods)."""
    a, b = rng.integers(0, 2, n), rng.integers(2, 255, n)
    return np.array([f"192.168.{x}.{y}" for x, y in zip(a, b, strict=True)], dtype=object)
