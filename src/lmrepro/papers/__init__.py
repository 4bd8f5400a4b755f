"""Paper-specific orchestration called by the notebooks: which runs a pipeline trains and evaluates.

Generic logic lives elsewhere (models, train, eval, analysis); these modules only map a profile's
paper section onto it.
"""
