"""The progress bar of routing and calibration (route.py on a file, --calibrate): queries done, the
rate, and what the run decided so far."""
from __future__ import annotations

import sys


class RouteProgress:
    """A tqdm bar on stderr for routing and calibration: queries done of the total, the rate (tqdm's
    queries/s), the share routed to the target so far and the error rows; or, for calibration, the draft's
    and the target's accuracy so far.  Created before the bar starts so a refused resume prints no bar."""

    def __init__(self, desc: str, *, total: int):
        self.desc, self.total, self.bar = desc, total, None
        self.routed = self.decided = self.errors = 0

    def start(self, *, already: int = 0) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=self.total, initial=already, desc=self.desc, unit="query", dynamic_ncols=True,
                        file=sys.stderr)

    def row(self, row: dict) -> None:
        """One routed-file row written: an error row, or a query the policy kept or routed."""
        if row.get("error") and not row.get("fallback"):
            self.errors += 1
        else:
            self.decided += 1
            self.routed += row.get("route") == "target"
        self.update(1, routed=f"{self.routed / max(1, self.decided):.0%}", errors=self.errors)

    def update(self, n: int, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
