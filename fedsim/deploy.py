"""``fedsim deploy``: a Flower deployment (SuperLink + SuperNodes) with TLS and node authentication.

Everything lives in one *deployment folder* that the commands share::

    pki/ca.crt ca.key             the certificate authority (keep ca.key private)
    pki/server.pem server.key     the SuperLink's certificate, a subject name per host
    keys/<node> keys/<node>.pub   SuperNode key pairs (EC P-384, OpenSSH format)
    superlink/home/               the SuperLink's FLWR_HOME (state.db keeps registrations)
    superlink/superlink.log
    nodes/<node>/home/            each SuperNode's FLWR_HOME
    nodes/<node>/supernode.log    (and executor.log with the warm ClientApp executor)
    cli/config.toml               the `flwr` CLI connection entry (FLWR_HOME=<folder>/cli)
    run/<label>.json              one record per started process, for ``stop``

Subcommands: ``init`` (CA, server certificate, node keys), ``superlink``,
``register`` (node public keys), ``supernode``, ``stop``. On another host,
copy ``pki/ca.crt`` and that node's ``keys/<node>`` into a folder of the same
layout and run ``fedsim deploy supernode`` there.

Per-message latency. By default a Flower 1.41 SuperNode starts a fresh
``flwr-clientapp`` process for every message, which re-imports torch,
scikit-learn, datasets and fedsim (7-15 s here). ``--clientapp warm`` (the
default of ``fedsim deploy supernode``) runs the SuperNode with
``--isolation process`` and a long-lived executor of ours that has those
libraries imported already and forks one child per message; the child purges
the project's own modules and loads the ClientApp from the run's FAB as
Flower does. Measurements: ``experiments/deploy/README.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import errno
import importlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SUPERLINK_PORT = 9092
DEFAULT_RUNTIME_PORT = 9094
DEFAULT_CONNECTION = "fedsim"
DEFAULT_PRELOAD = ("torch", "torch._dynamo", "numpy", "scipy", "sklearn", "pandas", "datasets", "flwr_datasets",
                   "flwr.supernode.runtime.run_clientapp", "fedsim.client_app", "fedsim.data.federation",
                   "fedsim.clustering", "fedsim.tasks", "clients.local_train")
"""Modules the warm executor imports once. Project modules among them are imported to pull in their
libraries, then dropped from every task process, which loads the app's code from the run's FAB.
``torch._dynamo`` is imported lazily by the first ``torch.optim`` optimizer: 3 s of every train message."""

SUPERNODE_FAILURES = (
    (re.compile(r"hostname mismatch|IP address mismatch|doesn't match", re.I),
     "TLS handshake failed: the SuperLink's certificate has no subject name for {address} (rerun `fedsim "
     "deploy init` on the SuperLink's host with --host for it, and restart the SuperLink)"),
    (re.compile(r"certificate verify failed|SSL/TLS handshake error", re.I),
     "TLS handshake failed: the SuperLink's certificate is not signed by {ca} (wrong CA file?)"),
    (re.compile(r"\[code: 2004\]|public key.*not|not.*(registered|authorized|recognized)|unauthori[sz]ed", re.I),
     "the SuperLink refused to activate the node: its public key {pub} is not registered there "
     "(run: fedsim deploy register {folder} {name})"),
    (re.compile(r"Failed to initialize the connection", re.I), "the SuperLink refused the connection"),
    (re.compile(r"Exit Code: \d+", re.I), "flower-supernode exited"),
)
"""(log pattern, message) pairs that ``start_supernode`` turns into one clear error, first match wins."""


class DeployError(Exception):
    """A deployment problem; the message is one line and says what to do."""


@dataclass
class Started:
    """A process started by this module."""

    label: str
    pid: int
    log: Path
    address: str


# -- PKI ---------------------------------------------------------------------------------------


def init_pki(folder: str | Path, hosts: list[str], days: int = 365) -> dict[str, Path]:
    """Create a CA (once) and a SuperLink certificate for ``hosts``, signed by it.

    Parameters
    ----------
    folder : str or Path
        The deployment folder; files go to ``<folder>/pki``.
    hosts : list of str
        IP addresses and DNS names the SuperLink is reached at. ``127.0.0.1``
        and ``localhost`` are always added: the SuperLink's own runtime
        connects to itself through them.
    days : int
        Validity of the server certificate (the CA gets ten times as long).

    Returns
    -------
    dict
        Paths ``ca``, ``ca_key``, ``cert``, ``key``.

    Notes
    -----
    An existing CA is kept (nodes that trust it go on working); the server
    certificate is always re-issued, so adding a host is rerunning ``init``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki = Path(folder).resolve() / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    paths = {"ca": pki / "ca.crt", "ca_key": pki / "ca.key", "cert": pki / "server.pem", "key": pki / "server.key"}
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    if paths["ca"].is_file() and paths["ca_key"].is_file():
        ca_key = serialization.load_pem_private_key(paths["ca_key"].read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedsim deployment CA")])
        ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=10 * days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(paths["ca_key"], ca_key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
        paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    names = []
    for host in [*hosts, "127.0.0.1", "localhost"]:
        host = host.strip().strip("[]")
        if not host or host in ("0.0.0.0", "::"):
            continue
        try:
            entry = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(names[0].value))]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths["key"], key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return paths


def make_node_key(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Create a SuperNode key pair ``<folder>/keys/<name>`` (+ ``.pub``), unless it exists.

    Parameters
    ----------
    folder : str or Path
        The deployment folder.
    name : str
        The node's name (letters, digits, ``-``, ``_``, ``.``).

    Returns
    -------
    tuple of Path
        ``(private key, public key)``: EC P-384, OpenSSH format, as
        ``flower-supernode --auth-supernode-private-key`` and
        ``flwr supernode register`` expect.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not re.fullmatch(r"[\w.\-]+", name):
        raise DeployError(f"node name '{name}' may only have letters, digits, '-', '_' and '.'")
    keys = Path(folder).resolve() / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    private, public = keys / name, keys / f"{name}.pub"
    if private.is_file() and public.is_file():
        return private, public
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return private, public


def certificate_names(cert_file: str | Path) -> list[str]:
    """The subject alternative names (IPs and DNS names) of a PEM certificate."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


# -- ports, addresses, processes ------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``."""
    found = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", address.strip())
    if not found:
        raise DeployError(f"'{address}' is not an address of the form host:port")
    return found.group(1), int(found.group(2))


def join_address(host: str, port: int) -> str:
    """``host:port``, with brackets for IPv6."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_holder(port: int) -> str:
    """Who listens on TCP ``port``, as ``"name (pid N)"`` if ``ss`` can tell, else ``""``."""
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    users = re.findall(r'\("([^"]+)",pid=(\d+)', out)
    return ", ".join(f"{_cmdline(int(pid)) or name} (pid {pid})" for name, pid in dict.fromkeys(users))


def check_port_free(host: str, port: int, what: str = "port") -> None:
    """Raise :class:`DeployError` naming the holder if ``host:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                holder = port_holder(port)
                raise DeployError(f"{what} {join_address(host, port)} is taken"
                                  f"{' by ' + holder if holder else ''}: stop it or choose another port") from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise DeployError(f"{host} is not an address of this machine (cannot listen on "
                                  f"{join_address(host, port)})") from None
            raise DeployError(f"cannot listen on {join_address(host, port)}: {err.strerror}") from None


def check_reachable(address: str, timeout: float = 10.0, refused_for: float = 2.0) -> None:
    """Raise ``DeployError("SuperLink <address> unreachable: ...")`` unless a TCP connection opens.

    Parameters
    ----------
    address : str
        ``host:port``.
    timeout : float
        Seconds to keep trying while connections time out or the network is unreachable.
    refused_for : float
        Seconds to keep trying while connections are refused (nothing listens there).
    """
    host, port = split_address(address)
    t0 = time.monotonic()
    error: OSError | None = None
    for _ in range(100):  # bounded in count and by the deadlines
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            break
        try:
            with socket.create_connection((host, port), timeout=min(left, 3.0)):
                return
        except OSError as err:
            error = err
            if isinstance(err, ConnectionRefusedError) and time.monotonic() - t0 >= refused_for:
                break
            time.sleep(0.25)
    reason = (error.strerror or str(error)) if error else "timed out"
    raise DeployError(f"SuperLink {address} unreachable: {reason} (is it running, and is the address right?)")


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state, ppid, pgrp, ...), or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _cmdline(pid: int) -> str:
    try:
        parts = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    parts = [p.decode(errors="replace") for p in parts if p]
    if len(parts) > 2 and Path(parts[0]).name.startswith("python") and parts[1] == "-m":
        return f"python -m {parts[2]}"
    if len(parts) > 1 and Path(parts[0]).name.startswith("python"):
        parts = parts[1:]  # a console script: "python /path/flower-superlink ..."
    return Path(parts[0]).name if parts else ""


def _alive(pid: int, start: str | None = None) -> bool:
    """``pid`` runs (not a zombie) and, given ``start``, is the process that started then."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and (start is None or stat[19] == start)


def _descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every descendant of ``pid``."""
    children: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
            starts[int(entry.name)] = stat[19]
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append((child, starts[child]))
        todo.extend(children.get(child, []))
    return found


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


def _tool(name: str) -> str:
    """The path of a Flower console script next to this Python, else the bare name (found on PATH)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.is_file() else name


def _env(folder: Path, flwr_home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    from fedsim.cli import flower_env

    env = flower_env(folder, dict(os.environ))
    env.pop("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", None)
    env["FLWR_HOME"] = str(flwr_home)
    env.update(extra or {})
    return env


def _spawn(folder: Path, label: str, argv: list[str], env: dict[str, str], log: Path, address: str) -> Started:
    """Start ``argv`` in its own session, output to ``log``, and record it under ``<folder>/run``."""
    record = folder / "run" / f"{label}.json"
    if record.is_file():
        old = json.loads(record.read_text())
        if _alive(old["pid"], old.get("start")):
            raise DeployError(f"{label} of {folder} already runs (pid {old['pid']}): "
                              f"stop it first (fedsim deploy stop {folder})")
    record.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n--- {dt.datetime.now():%Y-%m-%d %H:%M:%S} {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=str(folder), start_new_session=True)
    stat = _proc_stat(proc.pid)
    record.write_text(json.dumps({"label": label, "pid": proc.pid, "start": stat[19] if stat else None,
                                  "argv": argv, "log": str(log), "address": address}, indent=1) + "\n")
    return Started(label, proc.pid, log, address)


def _wait_listening(started: Started, host: str, port: int, timeout: float, what: str) -> None:
    """Wait (at most ``timeout`` s) until ``started`` accepts TCP connections on ``host:port``."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(started.pid):
            _reap(started.pid)
            raise DeployError(f"{what} exited at start: {_tail(started.log, 4)}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise DeployError(f"{what} did not listen on {join_address(host, port)} within {timeout:.0f} s; "
                      f"stopped it. Log: {_tail(started.log, 4)}")


# -- SuperLink ----------------------------------------------------------------------------------------


def start_superlink(folder: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_SUPERLINK_PORT,
                    insecure: bool = False, auth: bool | None = None, ready_timeout: float = 90.0,
                    task_poll_interval: float | None = 0.2) -> Started:
    """Start ``flower-superlink`` for the deployment folder and wait until it accepts connections.

    Parameters
    ----------
    folder : str or Path
        The deployment folder (``init`` first, unless ``insecure``).
    host, port : str, int
        Where the SuperLink listens (Fleet, Control and Runtime API on one port).
        ``0.0.0.0`` listens everywhere.
    insecure : bool
        Plain HTTP, no TLS. Only when asked for.
    auth : bool, optional
        SuperNode authentication (only registered node keys may connect).
        Default: on with TLS; it needs TLS.
    ready_timeout : float
        Seconds to wait for the SuperLink to listen; then it is stopped and
        :class:`DeployError` carries the end of its log.
    task_poll_interval : float, optional
        ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` of the SuperLink's runtime (how
        often it looks for a run to start; Flower's default 1 s). None keeps
        Flower's default.

    Returns
    -------
    Started
        Its pid, log file and address.

    Raises
    ------
    DeployError
        The port is taken (naming the process), a certificate file is missing,
        the certificate has no subject name for ``host``, or it did not start.
    """
    folder = Path(folder).resolve()
    auth = (not insecure) if auth is None else auth
    if auth and insecure:
        raise DeployError("SuperNode authentication needs TLS: drop --insecure, or add --no-auth")
    tls: list[str] = ["--insecure"]
    if not insecure:
        pki = folder / "pki"
        files = {"--ssl-ca-certfile": pki / "ca.crt", "--ssl-certfile": pki / "server.pem",
                 "--ssl-keyfile": pki / "server.key"}
        for path in files.values():
            if not path.is_file():
                raise DeployError(f"TLS needs {path}, which does not exist: run `fedsim deploy init {folder} "
                                  f"--host {host}` first (or start with --insecure)")
        names = certificate_names(files["--ssl-certfile"])
        if host not in ("0.0.0.0", "::") and host not in names:
            raise DeployError(f"the SuperLink certificate {files['--ssl-certfile']} has no subject name for {host} "
                              f"(it has {', '.join(names)}): rerun `fedsim deploy init {folder} --host {host}`")
        tls = [item for flag, path in files.items() for item in (flag, str(path))]
    check_port_free(host, port, "SuperLink port")
    home = folder / "superlink" / "home"
    home.mkdir(parents=True, exist_ok=True)
    argv = [_tool("flower-superlink"), "--host", host, "--port", str(port), *tls,
            "--disable-runtime-dependency-installation", "--database", str(folder / "superlink" / "state.db")]
    if auth:
        argv.append("--enable-supernode-auth")
    extra = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(task_poll_interval)} if task_poll_interval else {}
    started = _spawn(folder, "superlink", argv, _env(folder, home, extra), folder / "superlink" / "superlink.log",
                     join_address(host, port))
    try:
        _wait_listening(started, host, port, ready_timeout, "flower-superlink")
    except DeployError:
        _forget(folder, [started])
        raise
    return started


def _forget(folder: Path, started: list[Started]) -> None:
    """Stop processes that failed to start properly and drop their records."""
    for proc in reversed(started):
        _stop_pid(proc.pid, None, 5.0)
        (folder / "run" / f"{proc.label}.json").unlink(missing_ok=True)


def write_connection(flwr_home: str | Path, name: str, address: str, root_certificates: str | Path | None = None,
                     insecure: bool = False, default: bool = True) -> Path:
    """Write the ``flwr`` CLI's SuperLink connection ``[superlink.<name>]`` into ``<flwr_home>/config.toml``.

    Parameters
    ----------
    flwr_home : str or Path
        The CLI's Flower home (``FLWR_HOME`` of ``flwr run``).
    name : str
        Connection name (``flwr run . <name>``).
    address : str
        The SuperLink's ``host:port``.
    root_certificates : str or Path, optional
        The CA certificate (required unless ``insecure``).
    insecure : bool
        Plain HTTP.
    default : bool
        Also make it the default connection.

    Returns
    -------
    Path
        The configuration file. Other connections in it are kept.
    """
    import tomli_w

    if not insecure and root_certificates is None:
        raise DeployError("a TLS connection needs the CA certificate (root-certificates), or insecure")
    if root_certificates is not None and not Path(root_certificates).is_file():
        raise DeployError(f"CA certificate {root_certificates} does not exist")
    path = Path(flwr_home).resolve() / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        config = tomllib.loads(path.read_text()) if path.is_file() else {}
    except tomllib.TOMLDecodeError as err:
        raise DeployError(f"{path} is not valid TOML: {err}") from None
    links = config.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if insecure:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(Path(root_certificates).resolve())
    links[name] = entry
    if default or "default" not in links:
        links["default"] = name
    links = {"default": links.pop("default"), **links}  # `default` first, as Flower writes it
    config["superlink"] = links
    path.write_text(tomli_w.dumps(config))
    return path


def register_node(folder: str | Path, name: str, connection: str = DEFAULT_CONNECTION,
                  flwr_home: str | Path | None = None, timeout: float = 120.0) -> str | None:
    """Register the public key of node ``name`` with the SuperLink (``flwr supernode register``).

    Parameters
    ----------
    folder : str or Path
        The deployment folder (``keys/<name>.pub``; ``name`` may also be a path to a ``.pub`` file).
    name : str
        The node.
    connection : str
        The CLI connection entry to use.
    flwr_home : str or Path, optional
        The CLI's Flower home; default ``<folder>/cli``.
    timeout : float
        Seconds before giving up.

    Returns
    -------
    str or None
        The node id the SuperLink gave it; None if the key was registered already.
    """
    folder = Path(folder).resolve()
    public = Path(name) if name.endswith(".pub") else folder / "keys" / f"{name}.pub"
    if not public.is_file():
        raise DeployError(f"public key {public} does not exist: run `fedsim deploy init {folder} --node {name}`")
    home = Path(flwr_home) if flwr_home else folder / "cli"
    argv = [_tool("flwr"), "supernode", "register", str(public), connection, "--name", public.stem,
            "--format", "json"]
    try:
        proc = subprocess.run(argv, env=_env(folder, home), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeployError(f"`flwr supernode register` did not finish within {timeout:.0f} s") from None
    out = (proc.stdout + proc.stderr).strip()
    if "Public key already in use" in out:
        return None
    found = re.search(r'"node[_-]id"\s*:\s*"?(\d+)', out) or re.search(r"SuperNode (\d+)", out)
    if proc.returncode != 0 or not found:
        text = " ".join(out.split())
        raise DeployError(f"registering {public.name} failed: {text[-400:] or 'no output'}")
    return found.group(1)


# -- SuperNode ----------------------------------------------------------------------------------------


def start_supernode(folder: str | Path, superlink_address: str, partition_id: int, num_partitions: int,
                    port: int | None = None, key: str | Path | None = None,
                    root_certificates: str | Path | None = None, insecure: bool = False, name: str | None = None,
                    clientapp: str = "warm", node_config: str = "", connect_timeout: float = 90.0,
                    max_wait_time: float | None = 600.0, poll_interval: float | None = 0.2,
                    preload: tuple[str, ...] = DEFAULT_PRELOAD) -> list[Started]:
    """Start ``flower-supernode`` for one partition and wait until the SuperLink accepted it.

    Parameters
    ----------
    folder : str or Path
        The deployment folder on this host.
    superlink_address : str
        ``host:port`` of the SuperLink.
    partition_id, num_partitions : int
        Passed as ``--node-config "partition-id=I num-partitions=N"``.
    port : int, optional
        The node's Runtime API port on 127.0.0.1; default ``9094 + partition_id``
        (nodes on one host need distinct ports).
    key : str or Path, optional
        Private key for SuperNode authentication; default ``keys/<name>`` if it exists.
    root_certificates : str or Path, optional
        CA certificate to verify the SuperLink; default ``pki/ca.crt``.
    insecure : bool
        Plain HTTP (and no authentication).
    name : str, optional
        The node's name; default ``node<partition_id>``.
    clientapp : {"warm", "fresh"}
        ``fresh``: Flower's default, a new ``flwr-clientapp`` process per
        message. ``warm``: ``--isolation process`` and this module's
        long-lived executor (:func:`serve_clientapps`).
    node_config : str
        More ``key=value`` pairs for ``--node-config``.
    connect_timeout : float
        Seconds to wait for the SuperLink to accept the node. A TLS or
        authentication failure, an exit, or no success in time stops it and
        raises :class:`DeployError`.
    max_wait_time : float, optional
        ``--max-wait-time``: a node that loses the SuperLink gives up after
        this many seconds instead of retrying forever. None: forever.
    poll_interval : float, optional
        Seconds between task requests of the warm executor, or of Flower's
        SuperExec (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``, Flower's default 1 s
        when None).
    preload : tuple of str
        Modules the warm executor imports once.

    Returns
    -------
    list of Started
        The SuperNode (and the warm executor).
    """
    folder = Path(folder).resolve()
    name = name or f"node{partition_id}"
    port = DEFAULT_RUNTIME_PORT + partition_id if port is None else port
    if clientapp not in ("warm", "fresh"):
        raise DeployError(f"clientapp must be 'warm' or 'fresh', not '{clientapp}'")
    if not 0 <= partition_id < num_partitions:
        raise DeployError(f"partition-id {partition_id} is not in 0..{num_partitions - 1}")
    tls = ["--insecure"]
    key_path = None
    ca = None
    if not insecure:
        ca = Path(root_certificates) if root_certificates else folder / "pki" / "ca.crt"
        if not ca.is_file():
            raise DeployError(f"the CA certificate {ca} does not exist: copy pki/ca.crt of the deployment here "
                              f"(or pass --root-certificates)")
        tls = ["--root-certificates", str(ca.resolve())]
        key_path = Path(key) if key else folder / "keys" / name
        if key and not key_path.is_file():
            raise DeployError(f"the node key {key_path} does not exist")
        if key_path.is_file():
            tls += ["--auth-supernode-private-key", str(key_path.resolve())]
        else:
            key_path = None
    elif key:
        raise DeployError("node authentication needs TLS: drop --insecure or the key")
    check_port_free("127.0.0.1", port, f"Runtime API port of {name}")
    check_reachable(superlink_address)
    home = folder / "nodes" / name / "home"
    home.mkdir(parents=True, exist_ok=True)
    argv = [_tool("flower-supernode"), "--superlink", superlink_address, *tls, "--port", str(port),
            "--node-config", f"partition-id={partition_id} num-partitions={num_partitions} {node_config}".strip()]
    if max_wait_time:
        argv += ["--max-wait-time", str(max_wait_time)]
    if clientapp == "warm":
        argv += ["--isolation", "process"]
    env = _env(folder, home, {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(poll_interval)} if poll_interval else {})
    log = folder / "nodes" / name / "supernode.log"
    node = _spawn(folder, f"supernode-{name}", argv, env, log, superlink_address)
    started = [node]
    if clientapp == "warm":
        executor = [sys.executable, "-m", "fedsim.deploy", "executor", "--runtime-api-address",
                    f"127.0.0.1:{port}", "--parent-pid", str(node.pid), "--poll-interval", str(poll_interval or 0.2),
                    "--preload", ",".join(preload)]
        started.append(_spawn(folder, f"executor-{name}", executor, env, folder / "nodes" / name / "executor.log",
                              f"127.0.0.1:{port}"))
    try:
        _wait_connected(node, log, connect_timeout, {"address": superlink_address, "ca": ca, "name": name,
                                                     "pub": f"{key_path}.pub" if key_path else "(none)",
                                                     "folder": folder})
        if clientapp == "warm":
            _wait_serving(started[1], connect_timeout)
    except DeployError:
        _forget(folder, started)
        raise
    return started


def _wait_for_log(started: Started, log: Path, timeout: float, what: str, ready: Callable[[str], bool]) -> bool:
    """Poll what this start of ``started`` wrote to ``log`` (after its header, see :func:`_spawn`) until
    ``ready(text)``: True then, False after ``timeout`` s. ``ready`` may raise; so does an exit meanwhile."""
    start = max(log.read_text(errors="replace").rfind("\n--- "), 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready(log.read_text(errors="replace")[start:]):
            return True
        if not _alive(started.pid):
            _reap(started.pid)
            raise DeployError(f"{what} exited at start: {_tail(log, 4)}")
        time.sleep(0.3)
    return False


def _wait_connected(node: Started, log: Path, timeout: float, names: dict[str, object]) -> None:
    """Wait for "SuperNode ID" in the node's log; turn a known failure line into a one-line error."""
    what = f"SuperNode {names['name']}"

    def accepted(text: str) -> bool:
        if re.search(r"SuperNode ID: \d+", text):
            return True
        for pattern, message in SUPERNODE_FAILURES:
            if pattern.search(text):
                raise DeployError(f"{what}: {message.format(**names)} [{_failure_line(text)}]")
        return False

    if not _wait_for_log(node, log, timeout, what, accepted):
        raise DeployError(f"{what} was not accepted by the SuperLink {names['address']} within {timeout:.0f} s; "
                          f"stopped it. Log: {_tail(log, 4)}")


def _wait_serving(executor: Started, timeout: float) -> None:
    """Wait until the warm executor has its libraries imported and serves tasks."""
    what = "the warm ClientApp executor"
    if not _wait_for_log(executor, executor.log, timeout, what, lambda text: "serving ClientApp tasks" in text):
        raise DeployError(f"{what} was not ready within {timeout:.0f} s; stopped the node. "
                          f"Log: {_tail(executor.log, 4)}")


def _failure_line(text: str) -> str:
    """The most telling line of a failed SuperNode start."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pattern in (r"\[code: ", r"certificate verify failed", r"Failed to initialize", r"Exit Code", r"ERROR"):
        for line in lines:
            if re.search(pattern, line):
                return re.sub(r"\x1b\[[0-9;]*m", "", line)[:200]
    return lines[-1][:200] if lines else ""


# -- the warm ClientApp executor -----------------------------------------------------------------------


def serve_clientapps(runtime_api_address: str, parent_pid: int | None = None, poll_interval: float = 0.2,
                     preload: tuple[str, ...] = DEFAULT_PRELOAD, ready_timeout: float = 120.0) -> None:
    """Run ClientApp tasks of a SuperNode started with ``--isolation process``, from a warm process.

    The process imports ``preload`` once, then asks the SuperNode's Runtime API
    for a ClientApp task every ``poll_interval`` s (Flower's ``AcquireTask``,
    as ``flower-superexec`` does). For each task it forks a child that drops
    the project's own modules (those outside the Python installation, so the
    app's code comes from the run's FAB as usual) and runs Flower's
    ``run_clientapp`` with the task's token: one process per message as in
    Flower, without its start-up cost.

    Parameters
    ----------
    runtime_api_address : str
        The SuperNode's Runtime API (``127.0.0.1:<--port>``).
    parent_pid : int, optional
        Exit when this process (the SuperNode) is gone.
    poll_interval : float
        Seconds between task requests.
    preload : tuple of str
        Modules to import first (missing ones are skipped).
    ready_timeout : float
        Seconds to wait for the Runtime API to listen.
    """
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    t0 = time.monotonic()
    for module in preload:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - a missing optional library only costs time
            _say(f"preload {module} skipped: {err}")
    project = _project_modules()
    _say(f"preloaded {len(sys.modules)} modules in {time.monotonic() - t0:.1f} s "
         f"({len(project)} project modules will be loaded from the FAB per task)")
    host, port = split_address(runtime_api_address)
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            break
        except OSError:
            if time.monotonic() > deadline or (parent_pid and not _alive(parent_pid)):
                _say(f"Runtime API {runtime_api_address} not reachable; exiting")
                return
            time.sleep(0.2)
    retry = make_simple_http_retry_invoker()
    retry.max_time = 30.0  # then the loop checks whether the SuperNode is still there
    client = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")], retry_invoker=retry,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    children: dict[int, tuple[int, float]] = {}  # pid -> (task id, start)
    _say(f"serving ClientApp tasks of {runtime_api_address}")
    try:
        while parent_pid is None or _alive(parent_pid):
            for child, (task_id, t_start) in list(children.items()):
                done, status = os.waitpid(child, os.WNOHANG)
                if done:
                    del children[child]
                    _say(f"task {task_id} done in {time.monotonic() - t_start:.2f} s (exit {status >> 8})")
            try:
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value]))
            except Exception as err:  # noqa: BLE001 - the SuperNode went away or restarts
                _say(f"no answer from the Runtime API ({err}); retrying while the SuperNode runs")
                time.sleep(1.0)
                continue
            if res.HasField("task") and res.token:
                _say(f"task {res.task.task_id} of run {res.task.run_id}")
                pid = os.fork()
                if pid == 0:
                    _run_task(runtime_api_address, res.token)  # never returns
                children[pid] = (res.task.task_id, time.monotonic())
            time.sleep(poll_interval)
    finally:
        for child in list(children):
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass
        client.close()


def _say(text: str) -> None:
    print(f"[fedsim executor {dt.datetime.now():%H:%M:%S.%f}] {text}", flush=True)


def _project_modules() -> list[str]:
    """Loaded modules whose files are not under the Python installation (the project's own code)."""
    roots = tuple(str(Path(p).resolve()) + os.sep for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    names = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name != "__main__" and path and not str(Path(path).resolve()).startswith(roots):
            names.append(name)
    return names


def _run_task(runtime_api_address: str, token: str) -> None:
    """In the forked child: forget the project's modules, run one ClientApp task, exit."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for name in _project_modules():
            del sys.modules[name]
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(runtime_api_address=runtime_api_address, token=token, insecure=True, certificates=None,
                      parent_pid=os.getppid(), runtime_dependency_install=False)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# -- stop -----------------------------------------------------------------------------------------------


def _stop_pid(pid: int, start: str | None, timeout: float) -> bool:
    """Stop one process tree (see :func:`_stop_all`); True if it was running."""
    return bool(_stop_all([(pid, start)], timeout))


def _stop_all(leaders: list[tuple[int, str | None]], timeout: float) -> list[int]:
    """SIGTERM the process groups and descendants of ``leaders``, wait at most ``timeout`` s, then SIGKILL.

    A leader counts only if it is the same process (pid and start time); returns those that ran.
    """
    ran = [(pid, start or _proc_stat(pid)[19]) for pid, start in leaders if _alive(pid, start)]
    for pid, _ in leaders:
        _reap(pid)
    targets = [t for pid, start in ran for t in [(pid, start), *_descendants(pid)]]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 3.0)):
        if not any(_alive(p, s) for p, s in targets):
            break
        for pid, _ in ran:
            try:
                if os.getpgid(pid) == pid:  # started in its own session: the whole group is ours
                    os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid, start in targets:
            if _alive(pid, start):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p, s) for p, s in targets):
            for pid, _ in ran:
                _reap(pid)
            time.sleep(0.1)
    for pid, _ in ran:
        _reap(pid)
    return [pid for pid, _ in ran]


def stop(folder: str | Path, timeout: float = 15.0) -> list[str]:
    """Stop the processes recorded in ``<folder>/run``: first the nodes, then the SuperLink.

    Only the recorded processes (checked by pid and start time), their
    process groups and their descendants are signalled: SIGTERM, a bounded
    wait of ``timeout`` s per group, then SIGKILL.

    Returns
    -------
    list of str
        One line per record: what was stopped, or that it was not running.
    """
    folder = Path(folder).resolve()
    infos = []
    for record in sorted((folder / "run").glob("*.json")):
        try:
            infos.append((record, json.loads(record.read_text())))
        except (OSError, ValueError):
            record.unlink(missing_ok=True)
    done = []
    for last in (False, True):
        group = [(record, info) for record, info in infos if (info["label"] == "superlink") == last]
        ran = _stop_all([(int(info["pid"]), info.get("start")) for _, info in group], timeout)
        for record, info in group:
            state = "stopped" if info["pid"] in ran else "was not running"
            done.append(f"{info['label']} (pid {info['pid']}): {state}")
            record.unlink(missing_ok=True)
    return done


def running(folder: str | Path) -> dict[str, int]:
    """Labels and pids of the recorded processes that still run."""
    out = {}
    for record in sorted((Path(folder).resolve() / "run").glob("*.json")):
        info = json.loads(record.read_text())
        if _alive(int(info["pid"]), info.get("start")):
            out[info["label"]] = int(info["pid"])
    return out


# -- command line ---------------------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    folder = Path(args.folder).resolve()
    hosts = args.host or ["127.0.0.1"]
    had_ca = (folder / "pki" / "ca.crt").is_file()
    paths = init_pki(folder, hosts, days=args.days)
    print(f"{'kept' if had_ca else 'created'} CA {paths['ca']} (private key {paths['ca_key']})")
    print(f"issued SuperLink certificate {paths['cert']} for {', '.join(certificate_names(paths['cert']))}")
    nodes = args.node or [f"node{i}" for i in range(args.nodes)]
    for name in nodes:
        private, public = make_node_key(folder, name)
        print(f"node key {private} (public {public.name})")
    print(f"next: fedsim deploy superlink {folder} --host {hosts[0]} --port {DEFAULT_SUPERLINK_PORT}")
    return 0


def _cmd_superlink(args: argparse.Namespace) -> int:
    folder = Path(args.folder).resolve()
    auth = False if (args.no_auth or args.insecure) else None
    started = start_superlink(folder, args.host, args.port, insecure=args.insecure, auth=auth)
    mode = "insecure (no TLS, no node authentication)" if args.insecure else \
        f"TLS{', SuperNode authentication' if auth is None else ', no node authentication'}"
    print(f"SuperLink up on {started.address}, {mode}: pid {started.pid}, log {started.log}")
    cli_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    config = write_connection(folder / "cli", args.connection, join_address(cli_host, args.port),
                              None if args.insecure else folder / "pki" / "ca.crt", insecure=args.insecure)
    print(f"CLI connection '{args.connection}' written to {config} (use FLWR_HOME={folder / 'cli'})")
    results = os.environ.get("FEDSIM_RESULTS_ROOT", str(folder))
    print(f"runs write their results on this host, under {results} for a relative results-dir")
    keys = sorted(p.stem for p in (folder / "keys").glob("*.pub"))
    if auth is None:
        print(f"next: fedsim deploy register {folder} {' '.join(keys) or '<node>'}")
    else:
        print(f"next: fedsim deploy supernode {folder} --superlink {join_address(cli_host, args.port)} "
              f"--partition-id 0 --num-partitions N{' --insecure' if args.insecure else ''}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    folder = Path(args.folder).resolve()
    home = folder / "cli"
    if args.superlink:
        write_connection(home, args.connection, args.superlink,
                         None if args.insecure else (args.root_certificates or folder / "pki" / "ca.crt"),
                         insecure=args.insecure)
    names = args.names or sorted(p.stem for p in (folder / "keys").glob("*.pub"))
    if not names:
        raise DeployError(f"no node keys in {folder / 'keys'}: run `fedsim deploy init {folder} --nodes N` first")
    with cf.ThreadPoolExecutor(min(len(names), 4)) as pool:  # each is a `flwr` process: start them together
        ids = list(pool.map(lambda name: register_node(folder, name, args.connection, home), names))
    for name, node_id in zip(names, ids):
        print(f"registered {name}: SuperNode id {node_id}" if node_id else f"{name} was registered already")
    address = _connection_address(home, args.connection)
    print(f"next, on each node's host: fedsim deploy supernode {folder} --superlink {address} "
          f"--partition-id I --num-partitions {len(names)}")
    return 0


def _connection_address(home: Path, name: str) -> str:
    try:
        return tomllib.loads((home / "config.toml").read_text())["superlink"][name]["address"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "<superlink host:port>"


def _cmd_supernode(args: argparse.Namespace) -> int:
    folder = Path(args.folder).resolve()
    started = start_supernode(
        folder, args.superlink, args.partition_id, args.num_partitions, port=args.port, key=args.key,
        root_certificates=args.root_certificates, insecure=args.insecure, name=args.name, clientapp=args.clientapp,
        node_config=args.node_config, max_wait_time=args.max_wait_time or None,
    )
    node = started[0]
    print(f"SuperNode {node.label.removeprefix('supernode-')} (partition {args.partition_id} of "
          f"{args.num_partitions}) joined {args.superlink}: pid {node.pid}, log {node.log}")
    if len(started) > 1:
        print(f"warm ClientApp executor: pid {started[1].pid}, log {started[1].log}")
    print(f"next, when all nodes are up: FLWR_HOME={folder / 'cli'} fedsim run . --federation {DEFAULT_CONNECTION} "
          f"-c \"strategy='fedavg' min-available-nodes={args.num_partitions}\"")
    print(f"stop: fedsim deploy stop {folder}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    lines = stop(args.folder, timeout=args.timeout)
    for line in lines:
        print(line)
    if not lines:
        print(f"nothing was started from {Path(args.folder).resolve()}")
    return 0


def _run(func):
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except DeployError as err:
            print(f"fedsim: error: {err}", file=sys.stderr)
            return 2

    return wrapped


def add_deploy_parser(sub) -> argparse.ArgumentParser:
    """Add ``fedsim deploy init|superlink|register|supernode|stop`` to the ``fedsim`` subparsers ``sub``."""
    deploy = sub.add_parser("deploy", help="a real Flower deployment: certificates, SuperLink, SuperNodes",
                            description=__doc__.split("\n\n")[0])
    cmds = deploy.add_subparsers(dest="deploy_command", required=True)

    init = cmds.add_parser("init", help="create a CA, the SuperLink certificate and SuperNode key pairs")
    init.add_argument("folder", help="the deployment folder")
    init.add_argument("--host", action="append", help="IP or DNS name of the SuperLink (repeatable; "
                                                      "127.0.0.1 and localhost are always included)")
    init.add_argument("--nodes", type=int, default=2, help="key pairs node0..node<N-1> (default 2)")
    init.add_argument("--node", action="append", help="key pair with this name (repeatable; instead of --nodes)")
    init.add_argument("--days", type=int, default=365, help="validity of the server certificate (default 365)")
    init.set_defaults(func=_run(_cmd_init))

    link = cmds.add_parser("superlink", help="start the SuperLink (TLS and node authentication unless asked)")
    link.add_argument("folder")
    link.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    link.add_argument("--port", type=int, default=DEFAULT_SUPERLINK_PORT, help=f"default {DEFAULT_SUPERLINK_PORT}")
    link.add_argument("--insecure", action="store_true", help="plain HTTP, no node authentication")
    link.add_argument("--no-auth", action="store_true", help="TLS, but any node may connect")
    link.add_argument("--connection", default=DEFAULT_CONNECTION, help="name of the CLI connection entry")
    link.set_defaults(func=_run(_cmd_superlink))

    reg = cmds.add_parser("register", help="register SuperNode public keys with the SuperLink")
    reg.add_argument("folder")
    reg.add_argument("names", nargs="*", help="node names (keys/<name>.pub) or .pub files; default all keys")
    reg.add_argument("--connection", default=DEFAULT_CONNECTION)
    reg.add_argument("--superlink", default="", help="write the connection entry first: host:port of the SuperLink")
    reg.add_argument("--root-certificates", default=None, help="CA certificate (default <folder>/pki/ca.crt)")
    reg.add_argument("--insecure", action="store_true")
    reg.set_defaults(func=_run(_cmd_register))

    node = cmds.add_parser("supernode", help="start a SuperNode for one data partition")
    node.add_argument("folder")
    node.add_argument("--superlink", required=True, help="host:port of the SuperLink")
    node.add_argument("--partition-id", type=int, required=True)
    node.add_argument("--num-partitions", type=int, required=True)
    node.add_argument("--port", type=int, default=None, help="Runtime API port (default 9094 + partition id)")
    node.add_argument("--name", default=None, help="node name (default node<partition id>)")
    node.add_argument("--key", default=None, help="private key (default <folder>/keys/<name>)")
    node.add_argument("--root-certificates", default=None, help="CA certificate (default <folder>/pki/ca.crt)")
    node.add_argument("--insecure", action="store_true")
    node.add_argument("--clientapp", choices=("warm", "fresh"), default="warm",
                      help="warm (default): a long-lived process runs the ClientApp; fresh: Flower's default, "
                           "a new process per message")
    node.add_argument("--node-config", default="", help="more key=value pairs for the node config")
    node.add_argument("--max-wait-time", type=float, default=600.0,
                      help="give up after this many seconds without the SuperLink (0: never; default 600)")
    node.set_defaults(func=_run(_cmd_supernode))

    halt = cmds.add_parser("stop", help="stop the processes started from this folder")
    halt.add_argument("folder")
    halt.add_argument("--timeout", type=float, default=15.0, help="seconds before SIGKILL (default 15)")
    halt.set_defaults(func=_run(_cmd_stop))
    return deploy


def _main(argv: list[str] | None = None) -> int:
    """``python -m fedsim.deploy executor ...``: the warm ClientApp executor (started by ``supernode``)."""
    parser = argparse.ArgumentParser(prog="python -m fedsim.deploy")
    cmds = parser.add_subparsers(dest="command", required=True)
    ex = cmds.add_parser("executor", help="serve ClientApp tasks of a SuperNode with --isolation process")
    ex.add_argument("--runtime-api-address", required=True)
    ex.add_argument("--parent-pid", type=int, default=None)
    ex.add_argument("--poll-interval", type=float, default=0.2)
    ex.add_argument("--preload", default=",".join(DEFAULT_PRELOAD))
    args = parser.parse_args(argv)
    serve_clientapps(args.runtime_api_address, args.parent_pid, args.poll_interval,
                     tuple(m for m in args.preload.split(",") if m))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
