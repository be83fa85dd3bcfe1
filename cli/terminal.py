"""Text from elsewhere (a response body, a server's error message) made safe to show on a terminal.

A terminal acts on control characters: ESC starts ANSI/OSC sequences (colours, cursor moves, the
window title, hyperlinks, clipboard writes), BEL rings, CR and backspace overwrite what was shown.
``neutralize`` shows each such character as its escape (``\\x1b``), so the text reads the same and
does nothing. Newlines and tabs stay (a multi-line JSON body is still readable); CRLF line ends
become newlines (a lone CR, which would overwrite the line shown, is escaped).
"""

from __future__ import annotations

import codecs
import re
from typing import IO

# C0 controls but tab and newline, DEL, and the C1 controls (U+0080-U+009F: CSI, OSC as one character)
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}"


def neutralize(text: str) -> str:
    """``text`` with every control character but newline and tab shown as ``\\xNN``."""
    return _CONTROLS.sub(_escape, text.replace("\r\n", "\n"))


def is_terminal(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class TerminalWriter:
    """Bytes as they arrive (a stream's chunks), decoded as UTF-8 across chunk edges and written
    neutralized to a text stream on a terminal."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cr = ""  # a CR at a chunk's end waits for the next chunk: the first half of a CRLF?

    def write(self, data: bytes) -> None:
        text = self._cr + self._decoder.decode(data)
        self._cr = "\r" if text.endswith("\r") else ""
        self.out.write(neutralize(text[:-1] if self._cr else text))
        self.out.flush()

    def close(self) -> None:
        rest = self._cr + self._decoder.decode(b"", final=True)
        self._cr = ""
        if rest:
            self.out.write(neutralize(rest))
            self.out.flush()
