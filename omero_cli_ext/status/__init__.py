"""`omero status imports`: what each import is doing, told from the signals that really change.

classify  stage and state of each server-side import (pure: port dataclasses in, ImportStatus out)
jobs      local `omero import --resume` jobs read from their journals
snapshot  one look at the server (a fixed number of paged port calls) and the jobs; summaries, --check
views     table rows and JSON records; metrics: Prometheus textfile
"""
