#!/usr/bin/env python3
"""Write the seed corpora of fuzz/seeds/<target>/ from the repository's own
files (deploy/local/, schemas/): each seed is a selector byte, then the input.
Run from fuzz/: python3 seeds/make_seeds.py"""
import json, os, pathlib

FUZZ = pathlib.Path(__file__).resolve().parent.parent
REPO = FUZZ.parent
LOCAL = REPO / "deploy" / "local"
SEEDS = FUZZ / "seeds"


def write(target, name, sel, body):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(body, str):
        body = body.encode()
    (d / name).write_bytes(bytes([sel]) + body)


def lines(path, n=3):
    with open(path, encoding="utf-8") as f:
        return [l.strip() for l in f if l.strip()][:n]


def compact(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


# Record types in the registry's (name) order; native record mappings in the
# order the mapping target lists them (department files by name).
TYPES = sorted(p.name[:-5] for p in (REPO / "schemas").glob("*.json"))
CANONICAL = {
    "birth.v1": {
        "certificate_number": "Q315668221",
        "child": {"name": "郭艳", "sex": "female", "born_at": "2025-07-07T17:29:00+08:00", "weight_grams": 3097},
        "mother": {"id_number": "11010519491231002X", "name": "m"},
        "place": {"division_code": "310115", "facility": "h"},
    },
    "business.v1": {
        "uscc": "91110105MAMLQQMQFA", "name": "x", "kind": "limited-company",
        "established_on": "2025-02-28",
        "registered_capital": {"amount": 1000000, "currency": "CNY"},
    },
    "customs-declaration.v1": {
        "declaration_id": "440663864056324842", "direction": "import", "declared_on": "2025-07-22",
        "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508",
        "transport": {"mode": "road", "vehicle_plate": "藏D96371", "driver_id_number": "110108198912063214"},
        "goods": [{"line": 1, "hs_code": "6746284797", "name": "手工地毯", "quantity": 191, "unit": "kg",
                   "value": {"amount": 16340.78, "currency": "CNY"}}],
    },
    "household.v1": {
        "household_id": "1", "registered_address": {"division_code": "110105"},
        "members": [{"id_number": "11010519491231002X", "name": "n", "relation": "head"},
                    {"id_number": "34052419800101001X", "name": "n", "relation": "spouse"}],
    },
    "person.v1": {
        "id_number": "11010519491231002X", "name": "张三", "sex": "female",
        "birth_date": "1949-12-31", "ethnicity": "01",
        "registered_address": {"division_code": "110105", "text": "北京市朝阳区"},
    },
}
RECORDS = [  # (fixture file, record type) in the mapping target's order
    ("customs/declarations", "customs-declaration.v1"),
    ("health/births", "birth.v1"),
    ("market-regulation/businesses", "business.v1"),
    ("public-security/persons", "person.v1"),
    ("public-security/households", "household.v1"),
]

# json_guard_validate: a canonical record of each type, and native fixtures.
for i, t in enumerate(TYPES):
    write("json_guard_validate", f"{t}.json", i, compact(CANONICAL[t]))
for j, (fixture, t) in enumerate(RECORDS):
    for k, kind in enumerate(["valid", "invalid"]):
        path = LOCAL / "fixtures" / f"{fixture}.{kind}.jsonl"
        if path.exists():
            for n, line in enumerate(lines(path, 2)):
                write("json_guard_validate", f"{fixture.replace('/', '-')}.{kind}.{n}", TYPES.index(t), line)

# mapping: mode 0 native records, mode 1 canonical records, mode 2 texts, mode 3 lookups.
for j, (fixture, t) in enumerate(RECORDS):
    for kind in ["valid", "invalid"]:
        path = LOCAL / "fixtures" / f"{fixture}.{kind}.jsonl"
        if path.exists():
            for n, line in enumerate(lines(path, 2)):
                write("mapping", f"native.{fixture.replace('/', '-')}.{kind}.{n}", j, line)
    write("mapping", f"canonical.{t}", 0x40 | j, compact(CANONICAL[t]))
    write("mapping", f"lookup.{t}", 0xC0 | j, "/transport/driver_id_number=110108198912063214")
for n, text in enumerate(["100万元人民币", "50万美元", "1000.5万元", "3,000,000元", "0.5港币", "20250722",
                          "2025/07/22", "2025-07-07T17:29:00+08:00", "2025-07-07 17:29:00 +0800", " 1 ", "Y", "9",
                          "0.000001,元"]):
    write("mapping", f"text.{n}", 0x80 | n, text)

# toml_configs: 0 broker, 1 partners, 2 catalog, 3 limits, 4 department, 5 overrides.
for sel, name in [(0, "broker.toml"), (1, "partners.toml"), (2, "catalog.toml"), (3, "limits.toml")]:
    write("toml_configs", name, sel, (LOCAL / name).read_text(encoding="utf-8"))
for p in sorted((LOCAL / "departments").glob("*.toml")):
    if "[[record]]" in p.read_text(encoding="utf-8"):
        write("toml_configs", f"departments.{p.name}", 4, p.read_text(encoding="utf-8"))
# A date format asking for an hour: chrono cannot write it for a date (it panicked once).
customs = (LOCAL / "departments" / "customs.toml").read_text(encoding="utf-8")
write("toml_configs", "date-with-hour", 4, customs.replace('date = "%Y%m%d"', 'date = "%Y%m%d%H"'))
write("toml_configs", "limits.overrides.toml", 5,
      '[partner.education]\nrate = "20/s"\nburst = 10\n\n[partner.education.publish]\nrate = "20/s"\nburst = 10\n\n'
      '[partner.education.query]\nrate = "5/min"\nburst = 1\n')
write("toml_configs", "broker.server.toml", 0,
      'default_deadline = "5s"\n[server]\nhandshake_timeout = "10s"\nmax_connections = 4096\n'
      '[delivery]\nretry = ["1s", "5s", "30s"]\ngive_up_after = "24h"\nconcurrency = 16\n')

# parsers: 0 rate, 1 duration, 2 offset, 3 window, 4 mode, 5 mask, 6 pointers.
for n, (sel, text) in enumerate([
    (0, "200/s"), (0, "12000/min"), (0, "3600/h"), (8, "4294967295/hour"),
    (1, "500ms"), (1, "2s"), (1, "5min"), (1, "1h"), (1, "7d"),
    (2, "+08:00"), (2, "-05:30"), (2, "Z"), (2, "UTC"),
    (3, "07:00-08:00"), (3, "22:00-02:00"), (3, "08:00–10:00"),
    (4, "publish"), (4, "query"),
    (5, "keep-last-4|11010519491231002X"), (5, "keep-first-6|张秀英"),
    (6, "/household_id\n/members/-/id_number\n/registered_address\n/a~1b/~0c"),
]):
    write("parsers", f"seed.{n}", sel, text)

# grpc_timeout: header values (no selector byte).
d = SEEDS / "grpc_timeout"
d.mkdir(parents=True, exist_ok=True)
for n, text in enumerate(["1H", "2M", "30S", "250m", "7u", "0n", "99999999H", "00000005S"]):
    (d / f"seed.{n}").write_bytes(text.encode())

# audit_entry: 0 words, 1 checkpoint, 2 message bytes.
for n, w in enumerate(["publish", "query", "admin", "audit", "allowed", "denied", "changed", "queued", "dead"]):
    write("audit_entry", f"word.{n}", 0, w)
write("audit_entry", "checkpoint", 1, json.dumps({
    "format": "crossgate-checkpoint/1", "signed_by": "broker", "signed_at": "2026-11-23T00:00:00Z",
    "key": "ed25519:" + "ab" * 32,
    "heads": [{"writer": "broker-1", "sequence": 7, "hash": "09" * 32}],
    "signature": "00" * 64,
}, indent=2))
write("audit_entry", "message", 2, bytes(range(256)) * 2)
