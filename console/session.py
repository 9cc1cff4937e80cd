"""Provides the console's connection to one cluster: the tunnel, the store client and its health."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from aetcd import rpc

from clustertui.backend.etcd import Endpoint, EtcdClient, EtcdError, make_client, typed_error
from clustertui.console.config import ClusterSettings
from clustertui.console.tunnel import Tunnel, TunnelState, open_tunnel

STATUS_TIMEOUT = 3.0


@dataclass(frozen=True)
class StoreStatus:
    """What the header shows about the store: revision, the member answering, the leader."""

    revision: int
    member: str = ""
    leader: str = ""


class Session:
    """One cluster connection; the tunnel is opened before the UI, the client inside its loop."""

    def __init__(self, settings: ClusterSettings, tunnel: Tunnel | None = None) -> None:
        self.settings = settings
        self.tunnel = tunnel
        self._client: EtcdClient | None = None

    async def open_tunnel(self) -> None:
        """Open the SSH tunnel, if the settings ask for one; raises :class:`TunnelError`."""
        if self.settings.tunnel and self.tunnel is None:
            self.tunnel = await open_tunnel(
                self.settings.tunnel,
                list(self.settings.endpoints),
                identity=self.settings.identity,
                known_hosts=self.settings.known_hosts_file,
                strict=self.settings.strict_host_key_checking,
                username=self.settings.ssh_username,
            )

    def watch_tunnel(self, callback: Callable[[TunnelState, int], None] | None) -> None:
        """Send the tunnel's state changes to ``callback(state, attempt)``; None stops it."""
        if self.tunnel is not None:
            self.tunnel.on_state = callback

    @property
    def endpoints(self) -> list[str]:
        """The URLs the client dials: local forwards when tunnelled."""
        return self.tunnel.endpoints if self.tunnel else list(self.settings.endpoints)

    @property
    def endpoint_label(self) -> str:
        """The store endpoint as the user gave it."""
        return ",".join(self.settings.endpoints)

    @property
    def via(self) -> str:
        """``user@host[:port]`` of the tunnel, or empty."""
        if self.tunnel is None:
            return ""
        port = f":{self.tunnel.spec.port}" if self.tunnel.spec.port else ""
        return f"{self.tunnel.who}{port}"

    @property
    def client(self) -> EtcdClient:
        """The store client, made on first use so its channel belongs to the running loop."""
        if self._client is None:
            # Through a tunnel the client dials 127.0.0.1, but TLS must check the real name.
            server_name = Endpoint.parse(self.settings.endpoints[0]).host if self.tunnel else None
            self._client = make_client(
                self.endpoints,
                cacert=self.settings.cacert,
                cert=self.settings.cert,
                key=self.settings.key,
                timeout=5.0,
                server_name=server_name,
            )
        return self._client

    async def status(self) -> StoreStatus:
        """The store's revision, answering member and leader; raises :class:`EtcdError`."""
        client = self.client
        await client.connect()
        try:
            status = await client.maintenancestub.Status(
                rpc.StatusRequest(), timeout=STATUS_TIMEOUT, metadata=client.metadata
            )
        except Exception as error:
            raise typed_error(error) from error
        names: dict[int, str] = {}
        # Member names make the header readable; a store without the cluster API still works.
        with contextlib.suppress(Exception):
            members = await client.clusterstub.MemberList(
                rpc.MemberListRequest(), timeout=3.0, metadata=client.metadata
            )
            names = {member.ID: member.name or f"{member.ID:x}" for member in members.members}
        member_id = status.header.member_id
        return StoreStatus(
            revision=status.header.revision,
            member=names.get(member_id, f"{member_id:x}" if member_id else ""),
            leader=names.get(status.leader, f"{status.leader:x}" if status.leader else ""),
        )

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(EtcdError, Exception):
                await self._client.close()
            self._client = None
        if self.tunnel is not None:
            await self.tunnel.close()
