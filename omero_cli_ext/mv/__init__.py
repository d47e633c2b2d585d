"""The core of `omero mv`: plans of file moves and link retargets (plan), journaled (store),
executed idempotently (execute) and verified, from request to result (engine), inside one
command's journal, lock and passes (command).

No omero-py or rich here: the CLI glue is omero_cli_ext/cli/mv_run.py.
"""
