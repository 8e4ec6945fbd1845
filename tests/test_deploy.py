"""``fedsim deploy``: certificates, keys and clear errors (fast), then real deployments (slow).

The slow tests start real processes: a SuperLink with TLS and SuperNode
authentication and three SuperNodes, first on loopback, then as separate hosts
in network namespaces made here. Every process is stopped in a finaliser,
every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key, load_ssh_public_key

from fedsim import deploy
from fedsim.cli import main
from fedsim.deploy import DeployError

ROOT = Path(__file__).resolve().parents[1]
FEDSIM = [sys.executable, "-m", "fedsim.cli"]
JOB_TIMEOUT = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# -- PKI and keys ---------------------------------------------------------------------------------------


def _tls_handshake(cert: Path, key: Path, ca: Path, server_hostname: str) -> None:
    """A real TLS handshake over a socket pair: server with cert/key, client trusting ``ca``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    errors = []

    def serve():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as err:
            errors.append(err)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as tls:
            assert tls.recv(2) == b"ok"
    finally:
        thread.join(10)
        a.close()


def test_server_certificate_names_every_host_and_chains_to_the_ca(tmp_path):
    paths = deploy.init_pki(tmp_path, ["10.213.7.1", "link.example.org"])
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    names = deploy.certificate_names(paths["cert"])
    assert set(names) == {"10.213.7.1", "127.0.0.1", "link.example.org", "localhost"}
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = load_pem_private_key(paths["key"].read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    assert (paths["key"].stat().st_mode & 0o777) == 0o600 and (paths["ca_key"].stat().st_mode & 0o777) == 0o600

    for host in ("127.0.0.1", "localhost"):  # the names the SuperLink is reached at verify
        _tls_handshake(paths["cert"], paths["key"], paths["ca"], host)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _tls_handshake(paths["cert"], paths["key"], paths["ca"], "10.0.0.9")
    other = deploy.init_pki(tmp_path / "other", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _tls_handshake(paths["cert"], paths["key"], other["ca"], "127.0.0.1")


def test_init_again_keeps_the_ca_and_reissues_the_server_certificate(tmp_path):
    first = deploy.init_pki(tmp_path, ["127.0.0.1"])
    ca_before, cert_before = first["ca"].read_bytes(), first["cert"].read_bytes()
    second = deploy.init_pki(tmp_path, ["192.168.5.5"])
    assert second["ca"].read_bytes() == ca_before
    assert second["cert"].read_bytes() != cert_before
    assert "192.168.5.5" in deploy.certificate_names(second["cert"])
    ca = x509.load_pem_x509_certificate(second["ca"].read_bytes())
    x509.load_pem_x509_certificate(second["cert"].read_bytes()).verify_directly_issued_by(ca)


def test_node_key_is_an_openssh_ec_p384_pair(tmp_path):
    private, public = deploy.make_node_key(tmp_path, "node0")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert private.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert (private.stat().st_mode & 0o777) == 0o600
    assert deploy.make_node_key(tmp_path, "node0") == (private, public)  # kept, not replaced
    assert load_ssh_private_key(private.read_bytes(), None).private_numbers() == key.private_numbers()
    with pytest.raises(DeployError, match="may only have"):
        deploy.make_node_key(tmp_path, "../evil")


def test_connection_entry_is_read_by_flower_and_keeps_other_entries(tmp_path):
    from flwr.cli.flower_config import parse_superlink_connection

    (tmp_path / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    ca = deploy.init_pki(tmp_path, ["127.0.0.1"])["ca"]
    path = deploy.write_connection(tmp_path, "lab", "10.1.2.3:9092", ca)
    config = tomllib.loads(path.read_text())
    assert config["superlink"]["default"] == "lab" and config["superlink"]["local"] == {"address": ":local:"}
    conn = parse_superlink_connection(config["superlink"]["lab"], "lab")
    assert conn.address == "10.1.2.3:9092" and conn.root_certificates == str(ca) and not conn.insecure
    deploy.write_connection(tmp_path, "plain", "127.0.0.1:9", insecure=True, default=False)
    config = tomllib.loads(path.read_text())
    assert config["superlink"]["plain"] == {"address": "127.0.0.1:9", "insecure": True}
    assert config["superlink"]["default"] == "lab"
    with pytest.raises(DeployError, match="needs the CA certificate"):
        deploy.write_connection(tmp_path, "x", "127.0.0.1:9")


# -- clear errors, nothing started ------------------------------------------------------------------------


def test_a_taken_port_is_reported_with_its_holder_and_nothing_starts(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(DeployError) as err:
            deploy.start_superlink(tmp_path, "127.0.0.1", port, insecure=True)
        message = str(err.value)
        assert f"SuperLink port 127.0.0.1:{port} is taken" in message and "\n" not in message
        if shutil.which("ss"):
            assert f"pid {os.getpid()}" in message
        with pytest.raises(DeployError, match=f"Runtime API port of node0 127.0.0.1:{port} is taken"):
            deploy.start_supernode(tmp_path, "127.0.0.1:1", 0, 1, port=port, insecure=True)
    assert not list((tmp_path / "run").glob("*.json"))


def test_missing_certificate_files_are_named(tmp_path, capsys):
    port = _free_port()
    with pytest.raises(DeployError, match=re.escape(f"TLS needs {tmp_path / 'pki' / 'ca.crt'}, which does not exist")):
        deploy.start_superlink(tmp_path, "127.0.0.1", port)
    deploy.init_pki(tmp_path, ["127.0.0.1"])
    (tmp_path / "pki" / "server.key").unlink()
    with pytest.raises(DeployError, match=re.escape(f"TLS needs {tmp_path / 'pki' / 'server.key'}")):
        deploy.start_superlink(tmp_path, "127.0.0.1", port)
    deploy.init_pki(tmp_path, ["127.0.0.1"])
    with pytest.raises(DeployError, match="has no subject name for 10.213.9.9"):
        deploy.start_superlink(tmp_path, "10.213.9.9", port)
    missing_ca = tmp_path / "elsewhere" / "pki" / "ca.crt"
    with pytest.raises(DeployError, match=re.escape(f"the CA certificate {missing_ca} does not exist")):
        deploy.start_supernode(tmp_path / "elsewhere", f"127.0.0.1:{port}", 0, 2)
    with pytest.raises(DeployError, match="the node key .*nokey does not exist"):
        deploy.start_supernode(tmp_path, f"127.0.0.1:{port}", 0, 2, key=tmp_path / "nokey")
    with pytest.raises(DeployError, match="needs TLS"):
        deploy.start_superlink(tmp_path, "127.0.0.1", port, insecure=True, auth=True)
    assert not list((tmp_path / "run").glob("*.json"))

    # the same through the command line: exit code 2 and one line
    assert main(["deploy", "superlink", str(tmp_path / "new"), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedsim: error: TLS needs") and "\n" not in err


def test_an_unreachable_superlink_is_reported_at_once(tmp_path, capsys):
    deploy.init_pki(tmp_path, ["127.0.0.1"])
    port, runtime = _free_ports(2)
    t0 = time.monotonic()
    with pytest.raises(DeployError, match=f"SuperLink 127.0.0.1:{port} unreachable: Connection refused"):
        deploy.start_supernode(tmp_path, f"127.0.0.1:{port}", 0, 2, port=runtime)
    assert time.monotonic() - t0 < 30
    assert not list((tmp_path / "run").glob("*.json"))
    assert main(["deploy", "supernode", str(tmp_path), "--superlink", f"127.0.0.1:{port}", "--partition-id", "0",
                 "--num-partitions", "2", "--port", str(runtime)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unreachable" in err and "\n" not in err


@pytest.mark.parametrize("line, message", [
    ("SSLError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch, certificate is "
     "not valid for '10.0.0.9'. (_ssl.c:1006)", "has no subject name for 10.0.0.9:9092"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate",
     "is not signed by /x/ca.crt (wrong CA file?)"),
    ("[code: 2004] Failed to activate SuperNode.", "its public key /x/n.pub is not registered there (run: "
                                                   "fedsim deploy register /x n)"),
    ("Exit Code: 300", "flower-supernode exited"),
    ("INFO : nothing yet", "was not accepted by the SuperLink 10.0.0.9:9092 within 1 s"),
])
def test_supernode_start_failures_become_one_line(tmp_path, line, message):
    log = tmp_path / "supernode.log"
    log.write_text(f"SuperNode ID: 1 (an earlier start)\n--- 2026-01-01 00:00:00 flower-supernode\n{line}\n")
    me = deploy.Started("supernode-n", os.getpid(), log, "10.0.0.9:9092")
    names = {"address": "10.0.0.9:9092", "ca": "/x/ca.crt", "pub": "/x/n.pub", "name": "n", "folder": "/x"}
    with pytest.raises(DeployError) as err:
        deploy._wait_connected(me, log, 1.0, names)
    assert message in str(err.value) and "\n" not in str(err.value)
    log.write_text(log.read_text() + "INFO : SuperNode ID: 42\n")
    if "nothing yet" in line:
        deploy._wait_connected(me, log, 1.0, names)  # accepted


def test_stop_ends_exactly_the_recorded_process_tree(tmp_path):
    bystander = subprocess.Popen(["sleep", "60"])
    started = deploy._spawn(tmp_path, "tree", ["sh", "-c", "sleep 60 & sleep 60 & wait"], dict(os.environ),
                            tmp_path / "tree.log", "-")
    try:
        deadline = time.monotonic() + 10
        while len(deploy._descendants(started.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        children = deploy._descendants(started.pid)
        assert len(children) == 2
        assert deploy.running(tmp_path) == {"tree": started.pid}
        assert deploy.stop(tmp_path, timeout=5) == [f"tree (pid {started.pid}): stopped"]
        assert not deploy._alive(started.pid) and not any(deploy._alive(p, s) for p, s in children)
        assert bystander.poll() is None  # not ours to stop
        assert deploy.stop(tmp_path) == []
    finally:
        bystander.kill()
        bystander.wait(5)
        deploy._stop_pid(started.pid, None, 2)


# -- real deployments ------------------------------------------------------------------------------------


def _run_config(rounds: int, nodes: int, results: Path, name: str) -> str:
    # checkpointing stays on (the default): a deployed run checkpoints arrays received over the network
    return (f"strategy='fedavg' partitioning='iid' samples-per-client=60 num-server-rounds={rounds} "
            f"min-available-nodes={nodes} round-timeout=180.0 results-dir='{results}' run-name='{name}'")


def _flwr_job(cli_home: Path, connection: str, run_config: str, prefix: list[str] = ()) -> tuple[str, str]:
    """``flwr run`` the project on a deployment; returns (output, final status of the run)."""
    env = {**os.environ, "FLWR_HOME": str(cli_home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    flwr = deploy._tool("flwr")
    proc = subprocess.run([*prefix, flwr, "run", str(ROOT), connection, "--stream", "--run-config", run_config],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, out[-3000:]
    run_id = re.search(r"Successfully started run (\d+)", out).group(1)
    ls = subprocess.run([*prefix, flwr, "ls", connection, "--run-id", run_id, "--format", "json"], env=env,
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    return out, json.loads(ls.stdout)["runs"][0]["status"]


def _start_nodes(starts) -> None:
    """Run the SuperNode starts (callables) in parallel; re-raise the first failure."""
    with cf.ThreadPoolExecutor(len(starts)) as pool:
        for future in [pool.submit(start) for start in starts]:
            future.result(timeout=300)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A SuperLink (TLS + node authentication) and three registered SuperNodes on loopback."""
    folder = tmp_path_factory.mktemp("deploy")
    link_port, *node_ports = _free_ports(6)
    try:
        deploy.init_pki(folder, ["127.0.0.1"])
        for name in ("node0", "node1", "node2", "intruder"):
            deploy.make_node_key(folder, name)
        link = deploy.start_superlink(folder, "127.0.0.1", link_port)
        deploy.write_connection(folder / "cli", "lab", link.address, folder / "pki" / "ca.crt")
        with cf.ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda i: deploy.register_node(folder, f"node{i}", "lab"), range(3)))
        _start_nodes([lambda i=i: deploy.start_supernode(folder, link.address, i, 3, port=node_ports[i])
                      for i in range(3)])
        yield {"folder": folder, "address": link.address, "spare_ports": node_ports[3:]}
    finally:
        deploy.stop(folder)
        assert deploy.running(folder) == {}


@pytest.mark.slow
def test_fedavg_job_over_tls_with_node_authentication_runs_to_the_end(lab, tmp_path):
    folder = lab["folder"]
    argv = json.loads((folder / "run" / "superlink.json").read_text())["argv"]
    assert "--enable-supernode-auth" in argv and "--ssl-certfile" in argv and "--insecure" not in argv
    assert set(deploy.running(folder)) == {"superlink", *(f"{r}-node{i}" for r in ("supernode", "executor")
                                                           for i in range(3))}
    host, port = deploy.split_address(lab["address"])
    with socket.create_connection((host, port), timeout=10) as raw:  # the SuperLink speaks TLS with our CA
        ctx = ssl.create_default_context(cafile=str(folder / "pki" / "ca.crt"))
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

    out, status = _flwr_job(folder / "cli", "lab", _run_config(2, 3, tmp_path, "job"))
    assert status == "finished:completed", out[-3000:]
    rounds = [json.loads(line) for line in (tmp_path / "job" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["messages-up"] == 6  # 3 train + 3 evaluate replies (round 1 also has the 3 discovery replies)
    assert 0 < rounds[-1]["eval-accuracy"] <= 1
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["num-nodes"] == 3
    for i in range(3):  # each node ran its ClientApp in the warm executor's forks
        assert re.search(r"task \d+ done in [\d.]+ s \(exit 0\)",
                         (folder / "nodes" / f"node{i}" / "executor.log").read_text())


@pytest.mark.slow
def test_an_unregistered_node_is_refused_with_a_clear_error(lab):
    folder = lab["folder"]
    t0 = time.monotonic()
    with pytest.raises(DeployError) as err:
        deploy.start_supernode(folder, lab["address"], 0, 3, name="intruder", port=lab["spare_ports"][0],
                               clientapp="fresh", connect_timeout=120)
    message = str(err.value)
    assert "intruder" in message and "is not registered" in message and "\n" not in message, message
    assert time.monotonic() - t0 < 120
    assert not any("intruder" in label for label in deploy.running(folder))


@pytest.mark.slow
def test_a_wrong_ca_fails_with_a_clear_error(lab, tmp_path):
    other_ca = deploy.init_pki(tmp_path, ["127.0.0.1"])["ca"]
    t0 = time.monotonic()
    with pytest.raises(DeployError) as err:
        deploy.start_supernode(lab["folder"], lab["address"], 1, 3, name="wrong-ca", port=lab["spare_ports"][1],
                               key=lab["folder"] / "keys" / "node1", root_certificates=other_ca,
                               clientapp="fresh", connect_timeout=120)
    message = str(err.value)
    assert "TLS handshake failed" in message and str(other_ca) in message and "\n" not in message, message
    assert time.monotonic() - t0 < 120
    assert not any("wrong-ca" in label for label in deploy.running(lab["folder"]))


@pytest.mark.slow
def test_a_client_killed_mid_run_is_recorded_and_a_restarted_one_rejoins(lab, tmp_path):
    """Runs last on the lab: node2 (SuperNode and executor) is killed once round 1 is recorded and started again
    once round 2 is; the run finishes, records partition 2 as left out while it was down, and uses it again."""
    folder = lab["folder"]
    keys = _run_config(5, 3, tmp_path, "kill").replace("round-timeout=180.0", "round-timeout=45.0")
    job = cf.ThreadPoolExecutor(1).submit(_flwr_job, folder / "cli", "lab", keys)
    rounds_file = tmp_path / "kill" / "rounds.jsonl"

    def wait_for_rounds(count: int) -> None:
        deadline = time.monotonic() + JOB_TIMEOUT
        while time.monotonic() < deadline:
            if rounds_file.is_file() and len(rounds_file.read_text().splitlines()) >= count:
                return
            assert not job.done(), job.result()[0][-3000:]
            time.sleep(0.5)
        raise AssertionError(f"round {count} not recorded within {JOB_TIMEOUT} s")

    wait_for_rounds(1)
    for label, pid in deploy.running(folder).items():
        if label.endswith("-node2"):
            os.kill(pid, signal.SIGKILL)
    wait_for_rounds(2)
    deploy.start_supernode(folder, lab["address"], 2, 3, port=lab["spare_ports"][0])
    out, status = job.result(timeout=JOB_TIMEOUT)
    assert status == "finished:completed", out[-3000:]
    rounds = [json.loads(line) for line in rounds_file.read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]

    def left_out(record):
        return {(e["event"], e["stage"]) for e in record["events"] if e.get("partition-id") == 2}

    assert not left_out(rounds[0])
    assert {stage for _, stage in left_out(rounds[1])} == {"train", "evaluate"}, rounds[1]["events"]
    assert not left_out(rounds[-1]), rounds[-1]["events"]  # the restarted node is back (a new node id)
    assert all(0 < r["eval-accuracy"] <= 1 for r in rounds)  # every round completed


# -- separate hosts: network namespaces ------------------------------------------------------------------


class Netns:
    """Network namespaces on a private bridge (10.213.<n>.0/24), all made and removed here."""

    def __init__(self, members: list[str]) -> None:
        self.token = secrets.token_hex(3)
        host = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
        self.subnet = next(n for n in (1 + secrets.randbelow(254) for _ in range(100)) if f"10.213.{n}." not in host)
        self.subnet_prefix = f"10.213.{self.subnet}."
        self.hub = f"fsim{self.token}hub"
        self.names = {m: f"fsim{self.token}{m}" for m in members}
        self.ips = {m: f"10.213.{self.subnet}.{i + 1}" for i, m in enumerate(members)}
        self.made: list[str] = []

    def ip(self, *args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

    def create(self) -> None:
        for ns in [self.hub, *self.names.values()]:
            self.ip("netns", "add", ns)
            self.made.append(ns)
            self.ip("-n", ns, "link", "set", "lo", "up")
        self.ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self.ip("-n", self.hub, "link", "set", "br0", "up")
        for i, (member, ns) in enumerate(self.names.items()):
            self.ip("-n", self.hub, "link", "add", f"port{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.ip("-n", self.hub, "link", "set", f"port{i}", "master", "br0", "up")
            self.ip("-n", ns, "addr", "add", f"{self.ips[member]}/24", "dev", "eth0")
            self.ip("-n", ns, "link", "set", "eth0", "up")

    def exec(self, member: str) -> list[str]:
        return ["ip", "netns", "exec", self.names[member]]

    def pids(self, ns: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout
        return [int(p) for p in out.split()]

    def remove(self) -> list[int]:
        """Delete the namespaces; returns the pids that were still in them (and are killed first)."""
        leftovers = []
        for ns in self.made:
            for pid in self.pids(ns):
                leftovers.append(pid)
                deploy._stop_pid(pid, None, 3)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        return leftovers


@pytest.fixture
def netns():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2 (`ip netns add`)")
    spaces = Netns(["link", "node0", "node1", "node2", "cli"])
    try:
        spaces.create()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        spaces.remove()
        pytest.skip(f"cannot create network namespaces here: {err}")
    yield spaces
    assert spaces.remove() == [], "processes were left in the test's namespaces"


@pytest.mark.slow
def test_fedavg_job_across_network_namespaces(netns, tmp_path):
    """SuperLink, three SuperNodes and the CLI each in its own namespace ("host"), linked by a private bridge."""
    link_dir, port = tmp_path / "link", 9092
    address = f"{netns.ips['link']}:{port}"
    node_dirs = [tmp_path / f"host{i}" for i in range(3)]

    def fedsim(member: str, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([*netns.exec(member), *FEDSIM, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
        return proc.stdout

    try:
        out = fedsim("link", "deploy", "init", str(link_dir), "--host", netns.ips["link"], "--nodes", "3")
        assert f"for {netns.ips['link']}, 127.0.0.1, localhost" in out
        for i, host in enumerate(node_dirs):  # what a node's host needs: the CA and its own key
            (host / "pki").mkdir(parents=True)
            (host / "keys").mkdir()
            shutil.copy(link_dir / "pki" / "ca.crt", host / "pki")
            shutil.copy2(link_dir / "keys" / f"node{i}", host / "keys")
        out = fedsim("link", "deploy", "superlink", str(link_dir), "--host", netns.ips["link"], "--port", str(port))
        assert f"SuperLink up on {address}, TLS, SuperNode authentication" in out

        listening = subprocess.run([*netns.exec("link"), "ss", "-ltnH"], capture_output=True, text=True,
                                   timeout=30).stdout
        assert f"{address} " in listening  # the SuperLink listens inside its namespace, on the private link
        assert netns.subnet_prefix not in subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True,
                                                         timeout=30).stdout  # and the host has no such address

        out = fedsim("cli", "deploy", "register", str(link_dir))
        assert out.count("registered node") == 3
        _start_nodes([lambda i=i: fedsim(f"node{i}", "deploy", "supernode", str(node_dirs[i]), "--superlink",
                                         address, "--partition-id", str(i), "--num-partitions", "3")
                      for i in range(3)])
        for i in range(3):
            assert set(deploy.running(node_dirs[i])) == {f"supernode-node{i}", f"executor-node{i}"}

        out, status = _flwr_job(link_dir / "cli", "fedsim", _run_config(2, 3, tmp_path / "results", "ns-job"),
                                netns.exec("cli"))
        assert status == "finished:completed", out[-3000:]
        rounds = [json.loads(line) for line in (tmp_path / "results" / "ns-job" / "rounds.jsonl").read_text()
                  .splitlines()]
        assert [r["round"] for r in rounds] == [1, 2] and rounds[-1]["messages-up"] == 6
        for i in range(3):
            assert deploy.running(node_dirs[i])
            log = (node_dirs[i] / "nodes" / f"node{i}" / "supernode.log").read_text()
            assert f"--superlink {address}" in log and "Sent successfully" in log
    finally:
        for host in node_dirs:
            if host.exists():
                fedsim_stop = deploy.stop(host)
                assert all("stopped" in line or "not running" in line for line in fedsim_stop)
        deploy.stop(link_dir)
