"""Logging for training workers: rank 0 speaks, each line once, at a level the user sets.

``setup_logging(rank)`` gives the ``ardscale`` logger one stdout handler (and no propagation to
the root logger, whose handlers Ray or a notebook may have set: a second handler printed each
line twice). Records from other ranks pass only with ``extra={"all_ranks": True}``. The level
comes from ``ARDSCALE_LOG_LEVEL`` (DEBUG, INFO, WARNING; default INFO). Each line carries its
time and level: ``2026-11-29 16:44:29 INFO step 10 loss …``.
"""
from __future__ import annotations

import logging
import os
import sys


class RankFilter(logging.Filter):
    """Passes every record on rank 0; elsewhere only those marked ``all_ranks``."""

    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or getattr(record, "all_ranks", False)


def setup_logging(rank: int = 0, level: str | None = None) -> logging.Logger:
    """Configure the ``ardscale`` logger for this process (idempotent); returns it.

    Raises:
        ValueError: an unknown level name.
    """
    logger = logging.getLogger("ardscale")
    logger.setLevel((level or os.environ.get("ARDSCALE_LOG_LEVEL", "INFO")).upper())
    logger.propagate = False
    for h in [h for h in logger.handlers if getattr(h, "ardscale", False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout)
    handler.ardscale = True
    who = "" if rank == 0 else f"[rank {rank}] "
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {who}%(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(RankFilter(rank))
    logger.addHandler(handler)
    return logger
