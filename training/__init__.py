"""What both trainers do around their loops: set-up (prepare), per-evaluation bookkeeping (recorder)
and the saved run (finish). Sits above data_load/ and utils/, below the entry points."""
