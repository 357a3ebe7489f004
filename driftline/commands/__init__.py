"""Commands: the ``driftline`` CLI and what its subcommands run (the dev stack, the demo, training,
backfill). They wire the core, the adapters, the feature worker (``agents``) and the scorer
(``serving``) together; nothing below them imports from here.
"""
