"""Fakes for fast tests (in addition to the real simulator, sockets and files)."""

from __future__ import annotations


class FakeI2CBus:
    """Records PCA9685 register writes; can be told to fail writes to one register."""

    def __init__(self, fail_register: int | None = None):
        self.regs: dict[int, int] = {}
        self.writes: list[tuple[int, list[int]]] = []
        self.fail_register = fail_register
        self.closed = False

    def write_byte_data(self, addr: int, register: int, value: int) -> None:
        self.regs[register] = value
        self.writes.append((register, [value]))

    def read_byte_data(self, addr: int, register: int) -> int:
        return self.regs.get(register, 0)

    def write_i2c_block_data(self, addr: int, register: int, data: list[int]) -> None:
        if register == self.fail_register:
            raise OSError(121, "Remote I/O error")
        for i, v in enumerate(data):
            self.regs[register + i] = v
        self.writes.append((register, list(data)))

    def close(self) -> None:
        self.closed = True

    def channel_off(self, channel: int) -> int:
        base = 0x06 + 4 * channel
        return self.regs.get(base + 2, 0) | (self.regs.get(base + 3, 0) << 8)
