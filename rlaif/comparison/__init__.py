"""The pieces of ``rlaif-compare``: reading run folders, the comparison table, the plots.

``runs`` finds and reads run folders and labels them, ``table`` turns them into the comparison
table (CSV, markdown), ``plots`` draws the figures. ``rlaif.compare`` puts them together for the
CLI, the notebook and the Hydra callback, and re-exports their public names. Nothing in this package
writes to a run folder.
"""
