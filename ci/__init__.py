"""CI infrastructure for machines without an image registry: the offline stand-in images.

Not part of the operators' library (lib/stackops never imports it, and the ops image ships without
it). tasks.py offers its invoke collection as `invoke images.*` when this folder is present.
"""
