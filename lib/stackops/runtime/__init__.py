"""How the services run: the contract (``base``), one module per implementation (``local``,
``external``, ``compose``), the helpers they share (``binaries``, ``docker``), and the choice of one
(``select``). Capabilities import ``Runtime`` from here or from ``base``; never an implementation.
"""

from __future__ import annotations

from stackops.runtime.base import Runtime, ServiceStatus

__all__ = ["Runtime", "ServiceStatus"]
