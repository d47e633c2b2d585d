"""`omero import --resume`: plan filesets, import them in journaled chunks, finish after any failure.

Pure core (no omero-py, no rich): `plan` (importer `-f` listings, chunking), `results` (importer
output), `store` (the job journal's tables), `reconcile` (the server decides filesets in doubt),
`driver` (workers, retries, leases), `progress` (what `omero status imports` reads). `importer`
starts the real Java importer; `identity` (what a job is bound to), `outcome` (exit codes, summary);
`arguments` (the command line checked); `job` (a job planned or continued, checked, and handed to
the driver); the CLI glue lives in
`omero_cli_ext/cli/import_resume.py` and `import_view.py`.
"""
