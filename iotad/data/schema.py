"""The Edge-IIoTset raw schema and the authors' preprocessing choices.

Column names and order are those of the public release (63 columns). Which
columns are identifiers, categorical or numeric follows Ferrag et al. (IEEE
Access 2022), the dataset's authors.
"""

from __future__ import annotations

RAW_COLUMNS: tuple[str, ...] = (
    "frame.time", "ip.src_host", "ip.dst_host", "arp.dst.proto_ipv4", "arp.opcode",
    "arp.hw.size", "arp.src.proto_ipv4", "icmp.checksum", "icmp.seq_le",
    "icmp.transmit_timestamp", "icmp.unused", "http.file_data", "http.content_length",
    "http.request.uri.query", "http.request.method", "http.referer",
    "http.request.full_uri", "http.request.version", "http.response", "http.tls_port",
    "tcp.ack", "tcp.ack_raw", "tcp.checksum", "tcp.connection.fin", "tcp.connection.rst",
    "tcp.connection.syn", "tcp.connection.synack", "tcp.dstport", "tcp.flags",
    "tcp.flags.ack", "tcp.len", "tcp.options", "tcp.payload", "tcp.seq", "tcp.srcport",
    "udp.port", "udp.stream", "udp.time_delta", "dns.qry.name", "dns.qry.name.len",
    "dns.qry.qu", "dns.qry.type", "dns.retransmission", "dns.retransmit_request",
    "dns.retransmit_request_in", "mqtt.conack.flags", "mqtt.conflag.cleansess",
    "mqtt.conflags", "mqtt.hdrflags", "mqtt.len", "mqtt.msg_decoded_as", "mqtt.msg",
    "mqtt.msgtype", "mqtt.proto_len", "mqtt.protoname", "mqtt.topic", "mqtt.topic_len",
    "mqtt.ver", "mbtcp.len", "mbtcp.trans_id", "mbtcp.unit_id", "Attack_label",
    "Attack_type",
)

LABEL_COLUMN = "Attack_label"
TYPE_COLUMN = "Attack_type"

# Identifiers and free-form payloads: they name hosts, ports and captures, not behaviour.
DROPPED_COLUMNS: tuple[str, ...] = (
    "frame.time", "ip.src_host", "ip.dst_host", "arp.src.proto_ipv4", "arp.dst.proto_ipv4",
    "http.file_data", "http.request.full_uri", "icmp.transmit_timestamp",
    "http.request.uri.query", "tcp.options", "tcp.payload", "tcp.srcport", "tcp.dstport",
    "udp.port", "mqtt.msg",
)

# Identifiers the window stage keys its statistics by (and takes time deltas from); never features.
STREAM_COLUMNS: tuple[str, ...] = (
    "frame.time", "ip.src_host", "ip.dst_host", "arp.src.proto_ipv4", "arp.dst.proto_ipv4",
    "tcp.srcport", "tcp.dstport", "udp.port", "udp.stream",
)

# Fixed vocabularies: every device one-hot encodes identically without seeing the
# others' data. Values outside the vocabulary fall into an "other" bucket; an empty
# field encodes as all zeros.
CATEGORICAL_VOCAB: dict[str, tuple[str, ...]] = {
    "http.request.method": ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND"),
    "http.referer": ("127.0.0.1",),
    "http.request.version": ("HTTP/1.1", "HTTP/1.0"),
    "dns.qry.name.len": ("1", "0.debian.pool.ntp.org", "_googlecast._tcp.local", "raspberrypi.local"),
    "mqtt.conack.flags": (),
    "mqtt.protoname": ("MQTT",),
    "mqtt.topic": (
        "Temperature_and_Humidity", "Distance", "Water_Level", "pH", "Soil_Moisture",
        "Heart_Rate", "Flame", "IR", "Sound",
    ),
}
CATEGORICAL_COLUMNS: tuple[str, ...] = tuple(CATEGORICAL_VOCAB)

NUMERIC_COLUMNS: tuple[str, ...] = tuple(
    c for c in RAW_COLUMNS
    if c not in DROPPED_COLUMNS and c not in CATEGORICAL_VOCAB and c not in (LABEL_COLUMN, TYPE_COLUMN)
)

# Fields that can only be 0 or 1; any other value means the row's columns are shifted.
BINARY_COLUMNS: tuple[str, ...] = (
    "tcp.connection.fin", "tcp.connection.rst", "tcp.connection.syn", "tcp.connection.synack",
    "tcp.flags.ack", "dns.qry.qu", "dns.retransmission", "dns.retransmit_request",
    "mqtt.conflag.cleansess",
)

NORMAL = "Normal"
ATTACK_TYPES: tuple[str, ...] = (
    "DDoS_UDP", "DDoS_ICMP", "DDoS_TCP", "DDoS_HTTP", "SQL_injection", "XSS", "Uploading",
    "Backdoor", "Password", "Ransomware", "Port_Scanning", "Vulnerability_scanner",
    "Fingerprinting", "MITM",
)
TRAFFIC_TYPES: tuple[str, ...] = (NORMAL, *ATTACK_TYPES)

# Spellings of "no value" seen across captures ("0" in normal ones, "0.0" or
# "0x00000000" in attack ones). They must all mean the same thing, or the spelling
# alone gives the label away.
EMPTY_SPELLINGS: frozenset[str] = frozenset({"", "0", "0.0", "0x00000000", "nan", "NaN", "NA", "null"})

# The encoded feature layout every device shares: numeric columns, then per
# categorical column one slot per known value and one "other" slot.
FEATURE_NAMES: tuple[str, ...] = (
    *NUMERIC_COLUMNS,
    *(f"{col}={value}" for col, vocab in CATEGORICAL_VOCAB.items() for value in (*vocab, "<other>")),
)
N_FEATURES = len(FEATURE_NAMES)

# Kept rows whose label columns needed a decision (counted, never dropped: for an unsupervised detector
# the type is a report label only). unknown_type: an Attack_type none of TRAFFIC_TYPES, kept under its
# own name (or "Normal" when Attack_label is 0); label_type_mismatch: Attack_label and Attack_type
# disagree, the label wins; label_from_type: Attack_label unreadable, read from a known Attack_type.
LABEL_NOTES: tuple[str, ...] = ("unknown_type", "label_type_mismatch", "label_from_type")
#: The type of an attack row (Attack_label 1) whose Attack_type is empty or "Normal".
UNNAMED_ATTACK = "Unnamed_attack"

# Why a row can be rejected, in priority order: a row failing several checks counts under the first.
REJECT_REASONS: tuple[str, ...] = (
    "column_count", "non_numeric", "non_finite", "shifted", "bad_label", "duplicate",
)


class SchemaError(ValueError):
    """Input that is not an Edge-IIoTset CSV: missing file, wrong or missing header."""
