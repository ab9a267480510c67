"""A progress bar for the sweep: tqdm when it is installed, else a plain text one (no extra dependency)."""

import sys
import time


class Progress:
    """Counts finished items out of ``total`` on stderr, with the current item's label.

    On a terminal: tqdm's bar, or without tqdm one line redrawn in place. Into a log file: one line per item.
    """

    def __init__(self, total: int, description: str = ""):
        self.total = total
        self.description = description
        self.done = 0
        self._start = time.monotonic()
        self._stream = sys.stderr
        self._bar = None
        if self._stream.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, desc=description, file=self._stream, dynamic_ncols=True)

    def update(self, label: str) -> None:
        """Mark one more item done; ``label`` names it."""
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)
            return
        line = self._text(label)
        if self._stream.isatty():
            self._stream.write("\r" + line[:200].ljust(120))
            if self.done == self.total:
                self._stream.write("\n")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def _text(self, label: str) -> str:
        width = 30
        filled = width * self.done // max(self.total, 1)
        elapsed = time.monotonic() - self._start
        remaining = elapsed / self.done * (self.total - self.done)
        return (
            f"{self.description} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{elapsed:.0f}s elapsed, ~{remaining:.0f}s left | {label}"
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._stream.isatty() and self.done < self.total:
            self._stream.write("\n")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
