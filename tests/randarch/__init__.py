"""Random small architectures (CNN and transformer) that know their own channels: each
draw comes with the final masks DESIGN.md implies for its random user masks, derived by
the generator's own code (see channels.py, heads.py), never by slimc's."""
from .draw import Draw, draw
from .masks import apply_masks

__all__ = ["Draw", "apply_masks", "draw"]
