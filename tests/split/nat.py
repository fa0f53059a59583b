"""Workers behind a NAT, for real: two network namespaces and two veth pairs.

    host (platform)          router namespace                  fleet namespace (workers)
    HOST_ADDR/30 ---veth--- ROUTER_UP/30 | ROUTER_LAN/24 ---veth--- FLEET_ADDR/24
                             masquerades out of its uplink      default route via ROUTER_LAN

The platform listens on HOST_ADDR. The host has no route to the fleet's
network (its packets for it would leave by its own default route), so the
platform cannot reach a worker; the workers dial out and the platform sees
every connection come from ROUTER_UP. Forwarding is turned on inside the
router namespace only (`net.ipv4.ip_forward` is per namespace), and the NAT
rule lives there too (iptables, else nft), so the host's own settings are not
touched. `cut()` takes the router's LAN side down: the fleet keeps its address
and route, and every packet between it and the platform is dropped until
`restore()`.

Needs root, `ip` (iproute2) and `iptables` or `nft`; `missing()` says what is
not there, for the tests to skip loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Final

HOST_ADDR: Final = "10.231.23.1"
ROUTER_UP: Final = "10.231.23.2"
ROUTER_LAN: Final = "192.168.231.1"
FLEET_ADDR: Final = "192.168.231.2"
FLEET_NET: Final = "192.168.231.0/24"


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def missing() -> str | None:
    """What this machine lacks to build the NAT (None: nothing)."""
    if os.geteuid() != 0:
        return "network namespaces and veth pairs need root (run the tests as root)"
    if shutil.which("ip") is None or shutil.which("ss") is None:
        return "the `ip` or `ss` command is missing (apt-get install -y iproute2)"
    if shutil.which("iptables") is None and shutil.which("nft") is None:
        return "neither iptables nor nft is installed (apt-get install -y iptables)"
    probe = f"cnprobe{os.getpid() % 100000}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


class Nat:
    """The namespaces and links of the module docstring, named after this process's pid
    (so two test runs on one machine do not collide; the addresses are fixed, so they
    would, and `setup` removes what a crashed earlier run of this pid left)."""

    def __init__(self) -> None:
        tag = str(os.getpid() % 100000)
        self.router = f"cnr{tag}"
        self.fleet = f"cnf{tag}"
        self.host_if = f"cnh{tag}"
        self.up_if = f"cnu{tag}"
        self.lan_if = f"cnl{tag}"
        self.fleet_if = f"cnw{tag}"

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a process in the fleet namespace."""
        return ["ip", "netns", "exec", self.fleet]

    def setup(self) -> Nat:
        self.teardown()
        r, f = self.router, self.fleet
        _run("ip", "netns", "add", r)
        _run("ip", "netns", "add", f)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.up_if, "netns", r)
        _run("ip", "addr", "add", f"{HOST_ADDR}/30", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run("ip", "-n", r, "addr", "add", f"{ROUTER_UP}/30", "dev", self.up_if)
        _run("ip", "-n", r, "link", "set", self.up_if, "up")
        _run("ip", "-n", r, "link", "set", "lo", "up")
        _run("ip", "-n", r, "link", "add", self.lan_if, "type", "veth", "peer", "name", self.fleet_if, "netns", f)
        _run("ip", "-n", r, "addr", "add", f"{ROUTER_LAN}/24", "dev", self.lan_if)
        _run("ip", "-n", r, "link", "set", self.lan_if, "up")
        _run("ip", "-n", f, "addr", "add", f"{FLEET_ADDR}/24", "dev", self.fleet_if)
        _run("ip", "-n", f, "link", "set", self.fleet_if, "up")
        _run("ip", "-n", f, "link", "set", "lo", "up")
        _run("ip", "-n", f, "route", "add", "default", "via", ROUTER_LAN)
        _run("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if shutil.which("iptables"):
            _run(
                "ip",
                "netns",
                "exec",
                r,
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                self.up_if,
                "-j",
                "MASQUERADE",
            )
        else:
            nft = ["ip", "netns", "exec", r, "nft"]
            _run(*nft, "add", "table", "ip", "nat")
            _run(*nft, "add chain ip nat post { type nat hook postrouting priority 100 ; }")
            _run(*nft, "add", "rule", "ip", "nat", "post", "oifname", self.up_if, "masquerade")
        return self

    def host_routes_to_fleet(self) -> bool:
        """Whether the host would send a packet for the fleet through the router."""
        route = _run("ip", "route", "get", FLEET_ADDR, check=False).stdout
        return self.host_if in route

    def cut(self) -> None:
        _run("ip", "-n", self.router, "link", "set", self.lan_if, "down")

    def restore(self) -> None:
        _run("ip", "-n", self.router, "link", "set", self.lan_if, "up")
        _run("ip", "-n", self.fleet, "route", "replace", "default", "via", ROUTER_LAN)

    def teardown(self) -> None:
        for ns in (self.fleet, self.router):
            _run("ip", "netns", "del", ns, check=False)
        _run("ip", "link", "del", self.host_if, check=False)
