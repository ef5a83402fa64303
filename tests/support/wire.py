"""A transport that records what an SMTP server writes; the test hands the server the client's bytes."""

from __future__ import annotations

import asyncio


class Wire(asyncio.Transport):
    """A transport that records what the server writes; the test hands it the client's bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.closed = False

    def write(self, data) -> None:
        self.out += data

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 4025), "sockname": ("127.0.0.1", 25)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
