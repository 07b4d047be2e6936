"""One module per DVC stage, each a thin ``main()``: read params, call the library, write outputs.

Nothing imports this package: a stage is a leaf of the import graph.
"""
