"""stackops: the data-lifecycle toolkit for the ImpactBot v2 docker-compose stack."""

__version__ = "0.1.0"
