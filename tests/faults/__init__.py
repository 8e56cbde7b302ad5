"""Fault injection: crashes, hostile input and failing servers; no row or file is ever lost."""
