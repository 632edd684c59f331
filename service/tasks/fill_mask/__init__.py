"""Fill-mask (a language diff with its MLM head, alone): tokens for each mask."""

from service.tasks.fill_mask.io import FillMask

__all__ = ["FillMask"]
