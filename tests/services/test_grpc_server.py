"""services.grpc_server without Ray: the address it binds and its refusal of a taken one."""

from __future__ import annotations

import asyncio
import socket

import pytest

from services import grpc_server
from services.local import LocalHandle


def test_a_taken_port_is_an_oserror_naming_the_address():
    async def main():
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
                await grpc_server.start(LocalHandle(None), "127.0.0.1", port)

    asyncio.run(main())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost"])
def test_the_server_binds_the_host_it_is_given(host):
    async def main():
        server, port = await grpc_server.start(LocalHandle(None), host, 0)
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            address = "::1" if ":" in host else "127.0.0.1"
            with socket.socket(family) as s:
                assert s.connect_ex((address, port)) == 0
        finally:
            await server.stop(None)

    asyncio.run(main())
