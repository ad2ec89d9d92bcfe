"""The README's "Security" recipe: nginx in front of the SuperLink (deploy/nginx/).

The SuperLink runs with ``--enable-supernode-auth``. A SuperNode whose key the admin
registered on the SuperLink's loopback port reaches the Fleet API through the proxy and
joins; a client that has the CA certificate and the proxy's address -- everything but
the admin's access to the SuperLink's own machine -- can neither submit a run nor
register a node key, and a SuperNode with that unregistered key is refused through the
proxy.
Skipped where nginx is not installed (``apt-get install nginx-light``).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from server.deployment.certificates import make_certificates
from server.deployment.flower_processes import (
    LOOPBACK,
    ManagedProcess,
    flower_env,
    flower_executable,
    free_port,
    wait_for_health,
)
from server.deployment.flwr_cli import CONNECTION, FlwrCli, stage_app
from server.deployment.local_federation import PROJECT_ROOT
from server.deployment.node_keys import make_node_keys

NGINX = shutil.which("nginx") or (
    "/usr/sbin/nginx" if shutil.os.path.exists("/usr/sbin/nginx") else None
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        NGINX is None, reason="nginx is not installed (apt-get install nginx-light)"
    ),
]
TEMPLATE = PROJECT_ROOT / "deploy" / "nginx" / "superlink-proxy.conf"


def _proxy_config(prefix, *, listen: str, superlink: str, certs) -> str:
    text = TEMPLATE.read_text()
    for name, value in {
        "@PREFIX@": str(prefix),
        "@LISTEN@": listen,
        "@SUPERLINK@": superlink,
        "@CERTS@": str(certs),
        "@NODE_ALLOW@": f"allow {LOOPBACK};",
    }.items():
        text = text.replace(name, value)
    assert "@" not in re.sub(r"#.*", "", text)  # every placeholder filled
    return text


def _supernode(name: str, *, proxy: str, certs, key, tmp_path) -> ManagedProcess:
    """A SuperNode whose only route to the SuperLink is the proxy, signing with ``key``."""
    return ManagedProcess(
        name,
        [
            flower_executable("flower-supernode"),
            "--superlink",
            proxy,
            "--root-certificates",
            str(certs.ca_cert),
            "--auth-supernode-private-key",
            str(key),
            "--port",
            str(free_port()),
            "--node-config",
            "partition-id=0 num-partitions=1",
        ],
        log_path=tmp_path / "logs" / f"{name}.log",
        env=flower_env(tmp_path / f"{name}-home"),
    )


@pytest.mark.timeout(180)
def test_registered_nodes_pass_the_proxy_and_nobody_else_gets_through_it(tmp_path):
    certs = make_certificates(tmp_path / "certs", hosts=["localhost", LOOPBACK])
    link_port, proxy_port = free_port(), free_port()
    link, proxy = f"{LOOPBACK}:{link_port}", f"{LOOPBACK}:{proxy_port}"
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    config = prefix / "nginx.conf"
    config.write_text(
        _proxy_config(prefix, listen=proxy, superlink=link, certs=certs.ca_cert.parent)
    )
    tls = ["--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile", str(certs.server_cert)]
    tls += ["--ssl-keyfile", str(certs.server_key)]
    processes: list[ManagedProcess] = []
    try:
        superlink = ManagedProcess(
            "SuperLink",
            [
                flower_executable("flower-superlink"),
                "--host",
                LOOPBACK,
                "--port",
                str(link_port),
                "--disable-runtime-dependency-installation",
                "--enable-supernode-auth",
                *tls,
            ],
            log_path=tmp_path / "logs" / "superlink.log",
            env=flower_env(tmp_path / "superlink-home"),
        )
        processes.append(superlink)
        nginx = ManagedProcess(
            "nginx",
            [NGINX, "-p", str(prefix), "-c", str(config)],
            log_path=tmp_path / "logs" / "nginx.log",
            env={"PATH": "/usr/sbin:/usr/bin"},
        )
        processes.append(nginx)
        wait_for_health(superlink, link, timeout=60, ca_cert=certs.ca_cert)

        # The admin, on the SuperLink's machine (its loopback port, not the proxy),
        # registers the key the node's operator made with `fedmodel make-node-key`.
        admin = FlwrCli(tmp_path / "admin", link, root_certificates=certs.ca_cert)
        node_key = make_node_keys(tmp_path / "keys", name="node-0")
        admin.register(node_key.public_key, "node-0")
        node = _supernode(
            "node-0", proxy=proxy, certs=certs, key=node_key.private_key, tmp_path=tmp_path
        )
        processes.append(node)
        node_id = node.wait_for_log(r"SuperNode ID: (\d+)", timeout=60).group(1)

        # An outsider with the CA certificate and the proxy's address: refused.
        outsider = FlwrCli(tmp_path / "outsider", proxy, root_certificates=certs.ca_cert)
        app = stage_app(PROJECT_ROOT, tmp_path / "fedmodel")
        submit = subprocess.run(
            [flower_executable("flwr"), "run", str(app), CONNECTION],
            capture_output=True,
            text=True,
            env=outsider.env,
            timeout=60,
        )
        assert submit.returncode != 0, submit.stdout
        intruder_key = make_node_keys(tmp_path / "keys", name="intruder")
        register = subprocess.run(
            [
                flower_executable("flwr"),
                "supernode",
                "register",
                str(intruder_key.public_key),
                CONNECTION,
            ],
            capture_output=True,
            text=True,
            env=outsider.env,
            timeout=60,
        )
        assert register.returncode != 0, register.stdout

        # A SuperNode signing with the key the outsider could not register: the
        # SuperLink, reached through the proxy, refuses it, and it exits.
        intruder = _supernode(
            "intruder", proxy=proxy, certs=certs, key=intruder_key.private_key, tmp_path=tmp_path
        )
        processes.append(intruder)
        try:
            code = intruder.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        assert code not in (None, 0), intruder.log()
        assert "Failed to activate SuperNode" in intruder.log(), intruder.log()
        assert "No SuperNode found with the given public key" in superlink.log()
        access = (prefix / "access.log").read_text()
        assert re.search(r'"POST /v1/control/start-run HTTP/[\d.]+" 403', access), access
        assert re.search(r'"POST /v1/control/register-node HTTP/[\d.]+" 403', access), access
        # node-0 activated through the proxy, the intruder was answered 412 by the SuperLink.
        activations = re.findall(r'"POST /v1/fleet/activate-node HTTP/[\d.]+" (\d+)', access)
        assert activations == ["200", "412"], access

        # The SuperLink knows one node: the registered one, online.
        nodes = admin.list_nodes()
        assert [(n["node-id"], n["status"]) for n in nodes] == [(node_id, "online")], nodes
    finally:
        for process in reversed(processes):
            process.stop()
