"""``--ip-masq``: flannel's masquerade rules, in an nftables table of our own.

For the overlay network N and this host's subnet S (flannel's four rules, in order):

* N -> N: return (overlay to overlay keeps the container's source address);
* N -> anything but multicast: masquerade (containers reach the outside as the host);
* not N -> S: return (traffic into this host's containers is left alone);
* not N -> N: masquerade (a host reaching other hosts' containers does so as itself).

The table ``ip clusterd-overlay`` is replaced atomically on start (which also clears one
left by a killed run) and deleted on exit. Nothing outside it is touched.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil

from clustertui.backend.overlay.dataplane import DataPlaneError

log = logging.getLogger("clusterd.overlay")

TABLE = "clusterd-overlay"


def ruleset(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> str:
    return (
        f"table ip {TABLE} {{}}\n"
        f"delete table ip {TABLE}\n"
        f"table ip {TABLE} {{\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {network} ip daddr {network} return\n"
        f"    ip saddr {network} ip daddr != 224.0.0.0/4 masquerade fully-random\n"
        f"    ip saddr != {network} ip daddr {subnet} return\n"
        f"    ip saddr != {network} ip daddr {network} masquerade fully-random\n"
        f"  }}\n"
        f"}}\n"
    )


class Masquerade:
    """Installs and removes the rules through ``nft`` (Debian 12's default firewall)."""

    def __init__(self) -> None:
        nft = shutil.which("nft")
        if nft is None:
            raise DataPlaneError(
                "--ip-masq needs nftables' nft command: install it (apt-get install nftables)"
            )
        self.nft = nft
        self.installed = False

    async def _run(self, script: str) -> None:
        process = await asyncio.create_subprocess_exec(
            self.nft,
            "-f",
            "-",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate(script.encode())
        if process.returncode != 0:
            raise DataPlaneError(f"nft refused the masquerade rules: {err.decode().strip()}")

    async def install(self, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> None:
        await self._run(ruleset(network, subnet))
        self.installed = True
        log.info("masquerading traffic from %s leaving it (nft table ip %s)", network, TABLE)

    async def remove(self) -> None:
        if not self.installed:
            return
        try:
            await self._run(f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n")
        except (DataPlaneError, OSError) as error:
            log.error("could not remove the masquerade rules: %s", error)
        else:
            self.installed = False
            log.info("masquerade rules removed")
