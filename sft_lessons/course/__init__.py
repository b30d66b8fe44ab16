"""Course tooling: the command line, notebook runner, slides, bench, exercises, figures and plots.

Nothing in a lesson module imports from here.
"""
