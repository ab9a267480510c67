"""The sweep's progress: tqdm's bar on a terminal, one line per item (tqdm's meter and the item) into a log file."""

import sys
import time

from tqdm import tqdm


class Progress:
    """Counts finished items out of ``total`` on stderr, with the current item's label."""

    def __init__(self, total: int, description: str = ""):
        self.total = total
        self.description = description
        self.done = 0
        self._start = time.monotonic()
        self._stream = sys.stderr
        self._bar = None
        if self._stream.isatty():
            self._bar = tqdm(total=total, desc=description, file=self._stream, dynamic_ncols=True)

    def update(self, label: str) -> None:
        """Mark one more item done; ``label`` names it."""
        self.done += 1
        if self._bar is not None:
            self._bar.set_postfix_str(label, refresh=False)
            self._bar.update(1)
            return
        meter = tqdm.format_meter(
            self.done, self.total, time.monotonic() - self._start, prefix=self.description, ascii=True
        )
        self._stream.write(f"{meter} | {label}\n")
        self._stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
