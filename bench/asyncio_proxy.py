"""A plain asyncio TCP proxy: the baseline "what Python alone gets you" for bench/l4_compare.py.

One event loop (stdlib asyncio, no uvloop), asyncio streams, one upstream connection per
client connection, bytes copied in both directions with half-close: when one side sends
FIN, the proxy sends FIN to the other side and keeps copying the opposite direction.

    python bench/asyncio_proxy.py --listen 127.0.0.1:9000 --connect 127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

# asyncio's selector transport receives at most 256 KiB per read; matching the stream
# limit to it lets one read() hand over everything one recv() got.
CHUNK = 256 * 1024


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    while data := await src.read(CHUNK):
        dst.write(data)
        await dst.drain()
    # Forward the FIN but keep the socket open: the other direction may still be flowing.
    if dst.can_write_eof():
        dst.write_eof()


async def _serve(
    upstream: tuple[str, int], client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
) -> None:
    try:
        up_r, up_w = await asyncio.open_connection(*upstream, limit=CHUNK)
    except OSError:
        client_w.close()
        return
    pumps = [asyncio.ensure_future(_pump(client_r, up_w)), asyncio.ensure_future(_pump(up_r, client_w))]
    try:
        # A reset on either side ends the whole connection, so stop at the first error.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for pump in pumps:
            pump.cancel()
        # Collect the outcomes (errors included) so none is reported as never retrieved.
        await asyncio.gather(*pumps, return_exceptions=True)
        for writer in (client_w, up_w):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _main(listen: tuple[str, int], upstream: tuple[str, int]) -> None:
    server = await asyncio.start_server(
        lambda r, w: _serve(upstream, r, w), listen[0], listen[1], limit=CHUNK, backlog=1024
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--listen", required=True, type=_hostport, help="HOST:PORT to accept on")
    parser.add_argument("--connect", required=True, type=_hostport, help="HOST:PORT of the upstream")
    args = parser.parse_args()
    # SIGTERM (how the benchmark stops us) needs no handler: nothing here must outlive the process.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.listen, args.connect))


if __name__ == "__main__":
    main()
