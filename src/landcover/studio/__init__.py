"""The studio (#29): a local page over a raster of any size, where a person sees a map over its imagery.

`landcover.studio(images, out, ...)` starts its server and returns the page's address (what a notebook shows in
an IFrame): the package itself is callable, so the name means the same whether or not its modules were imported.
"""

from __future__ import annotations

import sys
import types


class _StudioPackage(types.ModuleType):
    def __call__(self, *args, **kwargs) -> str:
        from landcover.studio.server import studio

        return studio(*args, **kwargs)


sys.modules[__name__].__class__ = _StudioPackage
