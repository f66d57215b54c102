"""A SCRAM message as PostgreSQL's server reads it (auth-scram.c: read_attr_value, read_any_attr, sanitize_char,
sanitize_str), for ScramServer (protocol/auth.py): the same order of checks, the same words in each refusal."""

from __future__ import annotations

from pgdoorman.protocol.auth_error import malformed


class Reader:
    """A SCRAM message read as PostgreSQL's server reads it (read_attr_value, read_any_attr): one byte a
    character (latin-1, so that any bytes pass and hash as sent), attributes `x=value` up to a comma."""

    __slots__ = ("text", "pos")

    def __init__(self, data: bytes) -> None:
        if not data:
            raise malformed("The message is empty.")
        if b"\0" in data:
            raise malformed("Message length does not match input length.")
        self.text = data.decode("latin-1")
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def end(self) -> bool:
        return self.pos >= len(self.text)

    def char(self) -> str:
        """The character here as PostgreSQL's sanitize_char shows it in an error."""
        c = self.peek()
        return f"'{c}'" if c and 0x21 <= ord(c) <= 0x7E else f"0x{ord(c) if c else 0:02x}"

    def _value(self) -> str:
        end = self.text.find(",", self.pos)
        if end < 0:
            value, self.pos = self.text[self.pos :], len(self.text)
        else:
            value, self.pos = self.text[self.pos : end], end + 1
        return value

    def attr(self, name: str) -> str:
        if self.peek() != name:
            raise malformed(f'Expected attribute "{name}" but found "{self.char()}".')
        self.pos += 1
        if self.peek() != "=":
            raise malformed(f'Expected character "=" for attribute "{name}".')
        self.pos += 1
        return self._value()

    def any_attr(self) -> tuple[str, str]:
        name = self.peek()
        if not name:
            raise malformed("Attribute expected, but found end of string.")
        if not ("A" <= name <= "Z" or "a" <= name <= "z"):
            raise malformed(f'Attribute expected, but found invalid character "{self.char()}".')
        self.pos += 1
        if self.peek() != "=":
            raise malformed(f'Expected character "=" for attribute "{name}".')
        self.pos += 1
        return name, self._value()


def sanitize_str(s: str) -> str:
    """PostgreSQL's sanitize_str: unprintable characters as '?', at most 30 of them."""
    return "".join(c if 0x21 <= ord(c) <= 0x7E else "?" for c in s[:30])
