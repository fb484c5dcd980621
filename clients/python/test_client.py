"""An independent client: drives a running crossgate with Python grpcio and
stubs generated from proto/ at test time. It publishes, queries, is denied and
throttled, and reads the audit log, all over mutual TLS.

Run from the project root after building crossgate:
    python clients/python/test_client.py [path/to/crossgate]
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


_GIVEN = set()


def free_port():
    """A port free now, below the kernel's range for outgoing connections (as
    crossgate-testing's free_port): a port the kernel hands out would be free
    when asked, but may be some connection's own by the time crossgate binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            first_ephemeral = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    candidates = list(range(20000, first_ephemeral)) if first_ephemeral > 22000 else []
    random.shuffle(candidates)
    for port in candidates:
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(port, seconds=30):
    until = time.time() + seconds
    while time.time() < until:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def generate_stubs(out):
    from grpc_tools import protoc

    protos = [os.path.join("crossgate", "v1", f) for f in os.listdir(os.path.join(ROOT, "proto", "crossgate", "v1"))]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(["protoc", f"-I{os.path.join(ROOT, 'proto')}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if code != 0:
        raise SystemExit("grpc_tools.protoc failed")
    sys.path.insert(0, out)


def config_copy(d):
    """deploy/local with every address on a free port, certificates, log and a tight limit for education."""
    src = os.path.join(ROOT, "deploy", "local")
    shutil.copytree(os.path.join(src, "departments"), os.path.join(d, "departments"))
    shutil.copytree(os.path.join(src, "fixtures"), os.path.join(d, "fixtures"))
    shutil.copy(os.path.join(src, "catalog.toml"), d)
    partners = open(os.path.join(src, "partners.toml"), encoding="utf-8").read()
    partners = re.sub(r'adapter = "127\.0\.0\.1:\d+"', lambda _: f'adapter = "127.0.0.1:{free_port()}"', partners)
    open(os.path.join(d, "partners.toml"), "w", encoding="utf-8").write(partners)
    broker = free_port()
    open(os.path.join(d, "broker.toml"), "w").write(
        f'listen = "127.0.0.1:{broker}"\ncerts = "{d}/certs"\n[audit]\nstore = "sqlite:{d}/audit.db"\n'
    )
    open(os.path.join(d, "limits.toml"), "w").write(
        '[default]\nrate = "200/s"\nburst = 100\n[partner.education]\nrate = "1/min"\nburst = 5\n'
    )
    return broker


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "crossgate")
    work = tempfile.mkdtemp(prefix="crossgate-python-")
    os.makedirs(os.path.join(work, "stubs"))
    generate_stubs(os.path.join(work, "stubs"))
    import grpc
    from crossgate.v1 import audit_pb2, audit_pb2_grpc, broker_pb2, broker_pb2_grpc, record_pb2

    config = os.path.join(work, "config")
    os.makedirs(config)
    broker_port = config_copy(config)
    # Its own folder for the adapters' delivery ids, not the checkout's .crossgate.
    state = os.path.join(work, "state")
    up = subprocess.Popen([binary, "up", "--config", config, "--state", state], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    failures = []

    def check(name, ok, detail=""):
        print(("ok      " if ok else "FAILED  ") + name + (f": {detail}" if detail and not ok else ""))
        if not ok:
            failures.append(name)

    try:
        wait_for(broker_port)
        certs = os.path.join(config, "certs")

        def stub(party, kind):
            read = lambda name: open(os.path.join(certs, name), "rb").read()
            creds = grpc.ssl_channel_credentials(read("ca.pem"), read(f"{party}.key"), read(f"{party}.pem"))
            channel = grpc.secure_channel(f"127.0.0.1:{broker_port}", creds, options=[("grpc.ssl_target_name_override", "broker.crossgate")])
            return kind(channel)

        # Publish: customs' declaration reaches border inspection and commerce.
        declaration = {
            "declaration_id": "440663864056324842", "direction": "import", "declared_on": "2025-07-22",
            "trader_uscc": "91110105MAMLQQMQFA", "port_code": "6508",
            "transport": {"mode": "road", "vehicle_plate": "D96371"},
            "goods": [{"line": 1, "hs_code": "6746284797", "quantity": 191, "unit": "kg"}],
        }
        customs = stub("customs", broker_pb2_grpc.BrokerStub)
        reply = customs.Publish(broker_pb2.PublishRequest(record=record_pb2.Record(
            record_type="customs-declaration.v1", record_id="1", json=json.dumps(declaration).encode())))
        receivers = sorted((d.receiver, d.outcome) for d in reply.deliveries)
        delivered = broker_pb2.DELIVERY_OUTCOME_DELIVERED
        check("publish reaches both receivers", receivers == [("border-inspection", delivered), ("commerce", delivered)], str(receivers))

        # An invalid record: every fault, as INVALID_ARGUMENT.
        try:
            customs.Publish(broker_pb2.PublishRequest(record=record_pb2.Record(
                record_type="customs-declaration.v1", record_id="2", json=b'{"direction": "sideways"}')))
            check("an invalid record is refused", False, "accepted")
        except grpc.RpcError as e:
            check("an invalid record is refused", e.code() == grpc.StatusCode.INVALID_ARGUMENT, str(e.code()))

        # Query with purpose and approval: only released fields, masked identity numbers.
        education = stub("education", broker_pb2_grpc.BrokerStub)
        query = lambda purpose: broker_pb2.QueryRequest(
            provider="public-security", record_type="household.v1", purpose=purpose, approval_reference="EDU-2025-0001",
            criteria=[record_pb2.Criterion(path="/household_id", value="11010567397679")])
        answer = education.Query(query("school-enrolment"))
        doc = json.loads(answer.records[0].json)
        check("query returns the household, masked", doc["members"][0]["id_number"].startswith("****"), str(doc))

        # Denied with the wrong purpose.
        try:
            education.Query(query("marketing"))
            check("a wrong purpose is denied", False, "allowed")
        except grpc.RpcError as e:
            check("a wrong purpose is denied", e.code() == grpc.StatusCode.PERMISSION_DENIED and "marketing" in e.details(), e.details())

        # Need to know: a child looked up by the identity number education holds comes back with
        # name, birth date and address only, under an opaque reference, never the number.
        child = "540202198107103540"
        person = lambda criteria: broker_pb2.QueryRequest(
            provider="public-security", record_type="person.v1", purpose="school-enrolment",
            criteria=[record_pb2.Criterion(path=p, value=v) for p, v in criteria])
        found = education.Query(person([("/id_number", child)])).records[0]
        check("a person comes back with name, birth date and address only",
              sorted(json.loads(found.json)) == ["birth_date", "name", "registered_address"], found.json)
        check("its record_id is an opaque reference, not the identity number",
              len(found.record_id) == 32 and child not in found.record_id and child.encode() not in found.json,
              found.record_id)
        # Without criteria: refused, naming the rule.
        try:
            education.Query(person([]))
            check("a query without criteria is refused", False, "allowed")
        except grpc.RpcError as e:
            check("a query without criteria is refused naming the rule",
                  e.code() == grpc.StatusCode.PERMISSION_DENIED and "education-person" in e.details(), e.details())
        # The approval opens its own household and no other.
        try:
            education.Query(broker_pb2.QueryRequest(
                provider="public-security", record_type="household.v1", purpose="school-enrolment",
                approval_reference="EDU-2025-0001",
                criteria=[record_pb2.Criterion(path="/household_id", value="54020239576099")]))
            check("EDU-2025-0001 opens no other household", False, "allowed")
        except grpc.RpcError as e:
            check("EDU-2025-0001 opens no other household",
                  e.code() == grpc.StatusCode.PERMISSION_DENIED and "covers household 11010567397679" in e.details(),
                  e.details())

        # Throttled: education's burst of 5 per minute is spent.
        codes, details = [], []
        for _ in range(6):
            try:
                education.Query(query("school-enrolment"))
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append(e.code().name)
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    details.append("grpc-status-details-bin" in dict(e.trailing_metadata() or ()))
        check("a burst over the limit is throttled", "RESOURCE_EXHAUSTED" in codes, str(codes))
        check("a throttled call carries google.rpc details (RetryInfo)", bool(details) and all(details))

        # The audit log, as the auditor; a partner may not read it.
        auditor = stub("audit-office", audit_pb2_grpc.AuditStub)
        # Throttled calls are counted into one entry per partner and second,
        # written within a second.
        for _ in range(30):
            entries = list(auditor.Search(audit_pb2.SearchRequest(consumer="education")))
            decisions = {e.decision for e in entries}
            if "throttled" in decisions:
                break
            time.sleep(0.1)
        check("the auditor finds education's requests", {"allowed", "denied", "throttled"} <= decisions, str(decisions))
        check("entries hold digests, not records", all("9582" not in e.reason for e in entries))
        verdict = auditor.Verify(audit_pb2.VerifyRequest())
        check("the log verifies", verdict.ok and verdict.entries_checked > 0, str(verdict))
        try:
            list(stub("customs", audit_pb2_grpc.AuditStub).Search(audit_pb2.SearchRequest()))
            check("a partner cannot read the log", False, "allowed")
        except grpc.RpcError as e:
            check("a partner cannot read the log", e.code() == grpc.StatusCode.PERMISSION_DENIED, str(e.code()))
    finally:
        up.send_signal(signal.SIGINT)
        try:
            out, _ = up.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            up.kill()
            out, _ = up.communicate()
        if failures or up.returncode != 0:
            print(out.decode(errors="replace"))
        check("crossgate up stops cleanly on Ctrl-C", up.returncode == 0, str(up.returncode))
        shutil.rmtree(work, ignore_errors=True)
    if failures:
        raise SystemExit(f"{len(failures)} check(s) failed")
    print("the Python client saw everything it expected")


if __name__ == "__main__":
    main()
