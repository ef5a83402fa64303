"""An SMTP client on asyncio streams that can stop anywhere: a DATA transfer left unterminated, a
connection dropped mid-message. Implicit TLS (the smtps listener), AUTH PLAIN with an API key."""

from __future__ import annotations

import asyncio
import base64
import ssl


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RawSMTP:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def transaction(cls, port: int, key: str, sender: str = "app@example.com",
                          rcpt: str = "someone@dest.org") -> RawSMTP:
        """Connected over implicit TLS, authenticated, MAIL and RCPT accepted: ready for DATA."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls())
        c = cls(reader, writer)
        assert (await c.reply())[0] == 220
        assert (await c.cmd("EHLO client.test"))[0] == 250
        token = base64.b64encode(f"\0apikey\0{key}".encode()).decode()
        assert (await c.cmd(f"AUTH PLAIN {token}"))[0] == 235
        assert (await c.cmd(f"MAIL FROM:<{sender}>"))[0] == 250
        assert (await c.cmd(f"RCPT TO:<{rcpt}>"))[0] == 250
        return c

    async def reply(self) -> tuple[int, str]:
        """The (last line of the) next reply; (0, "") when the server closed the connection."""
        while True:
            line = await self.reader.readline()
            if not line:
                return 0, ""
            if line[3:4] != b"-":
                return int(line[:3]), line[4:].decode().strip()

    async def cmd(self, text: str) -> tuple[int, str]:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def drop(self) -> None:
        """Close the connection without QUIT (mid-DATA: the message is lost)."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
