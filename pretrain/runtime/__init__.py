"""What keeps a days-long run safe: checkpoints (``checkpoint``), one run per folder
(``run_folder``), atomic writes (``fileio``), process groups (``distributed``), and fault
injection for the reliability tests (``faults``)."""
