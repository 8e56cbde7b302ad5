"""migrate tasks (wired into tasks.py)."""

from __future__ import annotations

from invoke import Collection

ns = Collection("migrate")
