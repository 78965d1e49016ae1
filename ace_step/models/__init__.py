"""The networks, one file per network; every constructor takes `dtype`, `device`, `operations` and, where it
attends, `attention` (see `operations.py`)."""
